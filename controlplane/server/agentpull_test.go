package server_test

import (
	"bytes"
	"crypto/ed25519"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// An enrolled node pulls a pushed version with its certificate alone: it
// verifies the manifest against the keys GetClusterInfo publishes, and
// fetches the chunks from two servers, one of which holds none of them
// and copies each from a peer; the assembled tree is the pushed one.
func TestAgentPullsPushedVersion(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.NoChunkFill = true // one server keeps lacking the chunks, to be fetched on demand
	}})
	leader := c.Leader()
	follower := followerOf(t, c, leader)
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, c.Client(leader, false), "llama")
	tr := makeTree(t, 7)
	_, fin := push(ctx, t, artifactClient(t, c, leader), tr, "llama")
	version := fin.GetVersion().GetVersion()

	// FinishPush copies the chunks to a quorum only: one server lacks them.
	var lacking, holding *cluster.Node
	for _, n := range c.Nodes() {
		if n.Server().ChunkStore().Has(blobstore.Key(tr.keys[0])) {
			holding = n
		} else {
			lacking = n
		}
	}
	if lacking == nil || holding == nil {
		t.Fatalf("chunk %s is on %d servers, want exactly a quorum of 2", tr.keys[0], holders(c, tr.keys[0]))
	}

	tokens, _ := operator(t, c, leader)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{})
	a := newFakeAgent(t, c.CA.Pool())
	a.mustEnrollRegister(t, leader.APIAddr(), tok, "edge-1")

	info, err := a.client(t, follower.APIAddr(), nil).GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		t.Fatalf("GetClusterInfo: %v", err)
	}
	trusted := make(map[artifact.KeyID]ed25519.PublicKey)
	for id, pub := range info.Msg.GetManifestKeys() {
		trusted[artifact.KeyID(id)] = pub
	}
	// Through a follower, so the read is forwarded with the certificate.
	got, err := a.client(t, follower.APIAddr(), nil).GetManifest(ctx, connect.NewRequest(&droverv1.AgentGetManifestRequest{Model: "llama", Ref: "candidate"}))
	if err != nil {
		t.Fatalf("agent GetManifest: %v", err)
	}
	if got.Msg.GetVersion().GetVersion() != version {
		t.Errorf("agent GetManifest candidate = version %d, want %d", got.Msg.GetVersion().GetVersion(), version)
	}
	m, _, err := artifact.Verify(got.Msg.GetManifest(), trusted, artifact.DefaultLimits())
	if err != nil {
		t.Fatalf("verify the manifest an agent got against the cluster keys: %v", err)
	}

	cache, err := fetch.OpenCache(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	sources := []fetch.Source{
		fetch.NewServerSource(lacking.APIAddr(), a.client(t, lacking.APIAddr(), nil), "llama", version),
		fetch.NewServerSource(holding.APIAddr(), a.client(t, holding.APIAddr(), nil), "llama", version),
	}
	dst := filepath.Join(t.TempDir(), "llama")
	st, err := fetch.Pull(ctx, m, dst, sources, fetch.Options{Cache: cache})
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	if st.ChunksFetched != len(tr.keys) || st.CorruptChunks != 0 || len(st.DroppedSources) != 0 {
		t.Errorf("pull stats %+v, want all %d chunks fetched and nothing corrupt or dropped", st, len(tr.keys))
	}
	for _, s := range sources {
		if st.BytesBySource[s.Name()] == 0 {
			t.Errorf("pull fetched nothing from %s; bytes by source %v", s.Name(), st.BytesBySource)
		}
	}
	assertSameTree(t, tr.root, dst)

	// The same bytes, streamed (ChunkStreamPath), into a cache of their
	// own: the lacking server copies the rest from a peer first.
	cache2, err := fetch.OpenCache(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	hc := a.httpClient(t, nil)
	streamed := []fetch.Source{
		fetch.NewStreamSource(lacking.APIAddr(), hc, "llama", version),
		fetch.NewStreamSource(holding.APIAddr(), hc, "llama", version),
	}
	dst2 := filepath.Join(t.TempDir(), "llama")
	st, err = fetch.Pull(ctx, m, dst2, streamed, fetch.Options{Cache: cache2})
	if err != nil {
		t.Fatalf("streamed pull: %v", err)
	}
	if st.ChunksFetched != len(tr.keys) || st.CorruptChunks != 0 || len(st.DroppedSources) != 0 {
		t.Errorf("streamed pull stats %+v, want all %d chunks fetched and nothing corrupt or dropped", st, len(tr.keys))
	}
	assertSameTree(t, tr.root, dst2)
	// Streams are refused as the RPC is: a chunk the version does not
	// list, and a caller with an operator token but no certificate.
	other := artifact.Sum([]byte("not in the manifest"))
	if _, err := fetch.NewStreamSource(holding.APIAddr(), hc, "llama", version).Chunk(ctx, other, 10); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("streaming a chunk the version does not list: %v, want 404 Not Found", err)
	}
	tokenOnly := http.Header{}
	tokenOnly.Set("Authorization", "Bearer "+c.Token())
	if _, err := fetch.NewStreamSource(holding.APIAddr(), newFakeAgent(t, c.CA.Pool()).httpClient(t, tokenOnly), "llama", version).Chunk(ctx, tr.keys[0], 10); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("streaming a chunk with an operator token and no certificate: %v, want 401 Unauthorized", err)
	}

	// Agent calls take a node's certificate, not an operator's token.
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+c.Token())
	op := newFakeAgent(t, c.CA.Pool()).client(t, holding.APIAddr(), hdr)
	_, err = op.GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{Model: "llama", Version: version, Digest: tr.keys[0][:]}))
	wantErr(t, "agent GetChunk with an operator token", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL)

	// A chunk the version does not list is not served.
	_, err = a.client(t, holding.APIAddr(), nil).GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{Model: "llama", Version: version, Digest: other[:]}))
	wantErr(t, "agent GetChunk of a chunk the version does not list", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
}

// assertSameTree fails unless dir holds exactly the regular files of want,
// with the same bytes.
func assertSameTree(t *testing.T, want, dir string) {
	t.Helper()
	files := func(root string) map[string][]byte {
		out := make(map[string][]byte)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(p)
			out[rel] = b
			return err
		})
		if err != nil {
			t.Fatalf("walk %s: %v", root, err)
		}
		return out
	}
	w, g := files(want), files(dir)
	if len(g) != len(w) {
		t.Errorf("pulled tree has %d files, want %d", len(g), len(w))
	}
	for name, b := range w {
		if !bytes.Equal(g[name], b) {
			t.Errorf("pulled %s differs from the pushed file (%d bytes, want %d)", name, len(g[name]), len(b))
		}
	}
}
