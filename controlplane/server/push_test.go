package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/tls"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// artifactClient returns an ArtifactService client for node n that sends
// the cluster's token on unary calls and streams alike.
func artifactClient(t testing.TB, c *cluster.Cluster, n *cluster.Node) droverv1connect.ArtifactServiceClient {
	t.Helper()
	return artifactClientWith(t, c, n, c.Token())
}

func artifactClientWith(t testing.TB, c *cluster.Cluster, n *cluster.Node, token string) droverv1connect.ArtifactServiceClient {
	t.Helper()
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+token)
	return droverv1connect.NewArtifactServiceClient(&http.Client{Transport: headerTransport{base: h2, hdr: hdr}}, "https://"+n.APIAddr())
}

// modelTree is a generated model directory and its manifest, cut into
// small chunks so that a few MiB make dozens of them.
type modelTree struct {
	root   string // the directory the tree was built from
	signed *droverv1.SignedManifest
	refs   map[artifact.Digest]artifact.ChunkRef
	keys   []artifact.Digest // distinct chunks, in manifest order
}

func makeTree(t *testing.T, seed uint64) *modelTree {
	t.Helper()
	root := t.TempDir()
	rng := rand.New(rand.NewPCG(seed, seed))
	files := map[string]int{"model.safetensors": 3 << 20, "config.json": 600, "tokenizer/vocab.txt": 300 << 10}
	for name, size := range files {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, refs, err := artifact.BuildManifest(context.Background(), root, artifact.BuildOptions{Chunker: artifact.ChunkerParamsForAverage(64 << 10)})
	if err != nil {
		t.Fatalf("build manifest: %v", err)
	}
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		t.Fatalf("marshal manifest: %v", err)
	}
	tr := &modelTree{root: root, signed: &droverv1.SignedManifest{Manifest: b}, refs: make(map[artifact.Digest]artifact.ChunkRef)}
	for _, r := range refs {
		if _, ok := tr.refs[r.Digest]; !ok {
			tr.refs[r.Digest] = r
			tr.keys = append(tr.keys, r.Digest)
		}
	}
	if len(tr.keys) < 20 {
		t.Fatalf("the tree made %d chunks; the test wants many", len(tr.keys))
	}
	return tr
}

// chunk reads one chunk's bytes from the tree.
func (tr *modelTree) chunk(t testing.TB, d artifact.Digest) []byte {
	t.Helper()
	b, err := artifact.ReadChunk(tr.refs[d], nil)
	if err != nil {
		t.Fatalf("read chunk %s: %v", d, err)
	}
	return b
}

// upload sends the given chunks in pieces of 16 KiB; tamper, when set,
// changes the bytes of the first chunk.
func upload(ctx context.Context, t testing.TB, ac droverv1connect.ArtifactServiceClient, tr *modelTree, pushID string, digests [][]byte, tamper bool) (*droverv1.UploadChunksResponse, error) {
	t.Helper()
	stream := ac.UploadChunks(ctx)
	for i, db := range digests {
		d, err := artifact.DigestFromBytes(db)
		if err != nil {
			t.Fatal(err)
		}
		data := tr.chunk(t, d)
		if tamper && i == 0 {
			data[len(data)/2] ^= 1
		}
		const pieceSize = 16 << 10
		for off := 0; off < len(data); off += pieceSize {
			req := &droverv1.UploadChunksRequest{PushId: pushID, Data: data[off:min(off+pieceSize, len(data))]}
			if off == 0 {
				req.Digest, req.Size = d[:], uint64(len(data))
			}
			if err := stream.Send(req); err != nil {
				break // the server ended the call; CloseAndReceive says why
			}
		}
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// push runs StartPush, uploads what is missing and finishes the push.
func push(ctx context.Context, t testing.TB, ac droverv1connect.ArtifactServiceClient, tr *modelTree, model string) (*droverv1.StartPushResponse, *droverv1.FinishPushResponse) {
	t.Helper()
	start, err := ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: model, Manifest: tr.signed}))
	if err != nil {
		t.Fatalf("StartPush: %v", err)
	}
	if len(start.Msg.GetMissing()) > 0 {
		if _, err := upload(ctx, t, ac, tr, start.Msg.GetPushId(), start.Msg.GetMissing(), false); err != nil {
			t.Fatalf("UploadChunks: %v", err)
		}
	}
	fin, err := ac.FinishPush(ctx, connect.NewRequest(&droverv1.FinishPushRequest{
		Model: model, Manifest: tr.signed, Card: "pushed in a test", Alias: "candidate",
	}))
	if err != nil {
		t.Fatalf("FinishPush: %v", err)
	}
	return start.Msg, fin.Msg
}

// holders counts the running servers that hold chunk d.
func holders(c *cluster.Cluster, d artifact.Digest) int {
	n := 0
	for _, node := range c.Nodes() {
		if s := node.Server(); s != nil && s.ChunkStore().Has(blobstore.Key(d)) {
			n++
		}
	}
	return n
}

// A push through a follower makes every chunk durable on a quorum before
// the version exists; the version serves a manifest signed by the key
// GetClusterInfo publishes, and its chunks from any server.
func TestPushThroughFollower(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.NoChunkFill = true // one server keeps lacking the chunks, to be fetched on demand
	}})
	leader := c.Leader()
	follower := followerOf(t, c, leader)
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, c.Client(follower, false), "llama")
	ac := artifactClient(t, c, follower)
	tr := makeTree(t, 1)

	start, fin := push(ctx, t, ac, tr, "llama")
	if len(start.GetMissing()) != len(tr.keys) {
		t.Errorf("first StartPush reported %d missing chunks, want all %d", len(start.GetMissing()), len(tr.keys))
	}
	if want := artifact.Sum(tr.signed.GetManifest()).String(); start.GetArtifactDigest() != want || start.GetPushId() != want {
		t.Errorf("StartPush named the push %q (digest %q), want %q", start.GetPushId(), start.GetArtifactDigest(), want)
	}
	if len(fin.GetDurableOn()) < 2 {
		t.Errorf("durable on %v, want at least 2 servers", fin.GetDurableOn())
	}
	for _, d := range tr.keys {
		if n := holders(c, d); n < 2 {
			t.Fatalf("chunk %s is on %d servers after FinishPush, want at least 2", d, n)
		}
	}
	v := fin.GetVersion()
	if v.GetArtifact().GetFormat() != "safetensors" || v.GetArtifact().GetSigned() == nil || len(v.GetArtifact().GetFiles()) != 3 {
		t.Errorf("version artifact = format %q, %d files, signed %v", v.GetArtifact().GetFormat(), len(v.GetArtifact().GetFiles()), v.GetArtifact().GetSigned() != nil)
	}

	// The manifest verifies against the cluster's published keys.
	info, err := droverv1connect.NewAgentServiceClient(&http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}}}, "https://"+follower.APIAddr()).
		GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		t.Fatalf("GetClusterInfo: %v", err)
	}
	trusted := make(map[artifact.KeyID]ed25519.PublicKey)
	for id, pub := range info.Msg.GetManifestKeys() {
		trusted[artifact.KeyID(id)] = pub
	}
	if len(trusted) == 0 {
		t.Fatal("GetClusterInfo lists no manifest keys")
	}
	got, err := ac.GetManifest(ctx, connect.NewRequest(&droverv1.GetManifestRequest{Model: "llama", Ref: "candidate"}))
	if err != nil {
		t.Fatalf("GetManifest: %v", err)
	}
	if got.Msg.GetVersion().GetVersion() != v.GetVersion() {
		t.Errorf("GetManifest candidate = version %d, want %d", got.Msg.GetVersion().GetVersion(), v.GetVersion())
	}
	m, d, err := artifact.Verify(got.Msg.GetManifest(), trusted, artifact.DefaultLimits())
	if err != nil {
		t.Fatalf("verify the served manifest against the cluster keys: %v", err)
	}
	if d.String() != v.GetArtifact().GetDigest() || len(m.GetFiles()) != 3 {
		t.Errorf("served manifest has digest %s and %d files, want %s and 3", d, len(m.GetFiles()), v.GetArtifact().GetDigest())
	}

	// Every server serves every chunk, fetching from a peer those it lacks.
	// FinishPush copies a chunk to a quorum and no further, so one server
	// has none of them yet.
	if n := holders(c, tr.keys[0]); n != 2 {
		t.Fatalf("chunk %s is on %d servers, want exactly a quorum of 2", tr.keys[0], n)
	}
	// Status tells which server lacks them.
	for _, n := range c.Nodes() {
		info, err := c.Client(n, false).Cluster.GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(0)
		if !n.Server().ChunkStore().Has(blobstore.Key(tr.keys[0])) {
			want = uint64(len(tr.keys))
		}
		if got := info.Msg.GetInfo().GetChunksMissing(); got != want {
			t.Errorf("%s reports %d chunks missing, want %d", n.Name, got, want)
		}
	}
	for _, n := range c.Nodes() {
		nc := artifactClient(t, c, n)
		for _, d := range []artifact.Digest{tr.keys[0], tr.keys[len(tr.keys)/2], tr.keys[len(tr.keys)-1]} {
			res, err := nc.GetChunk(ctx, connect.NewRequest(&droverv1.GetChunkRequest{Model: "llama", Version: v.GetVersion(), Digest: d[:]}))
			if err != nil {
				t.Fatalf("GetChunk %s from %s: %v", d, n.Name, err)
			}
			if artifact.Sum(res.Msg.GetData()) != d {
				t.Fatalf("GetChunk %s from %s returned other bytes", d, n.Name)
			}
			if !n.Server().ChunkStore().Has(blobstore.Key(d)) {
				t.Errorf("%s served chunk %s but does not hold it now", n.Name, d)
			}
		}
	}
	// A chunk the version does not list is not served.
	other := artifact.Sum([]byte("not in the manifest"))
	_, err = ac.GetChunk(ctx, connect.NewRequest(&droverv1.GetChunkRequest{Model: "llama", Version: v.GetVersion(), Digest: other[:]}))
	wantErr(t, "GetChunk of a chunk the version does not list", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)

	// Pushing the same tree again sends nothing.
	again, err := artifactClient(t, c, leader).StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: tr.signed}))
	if err != nil {
		t.Fatalf("second StartPush: %v", err)
	}
	if len(again.Msg.GetMissing()) != 0 {
		t.Errorf("second StartPush of the same tree reported %d missing chunks, want none", len(again.Msg.GetMissing()))
	}
}

// FinishPush refuses a push whose chunks did not all arrive, and creates
// no version; a tampered chunk is refused at upload.
func TestPushRefusesIncompleteOrTamperedUploads(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	follower := followerOf(t, c, c.Leader())
	ctx := testCtx(t, 2*time.Minute)
	cl := c.Client(follower, false)
	mustCreateModel(t, cl, "llama")
	ac := artifactClient(t, c, follower)
	tr := makeTree(t, 2)

	_, err := ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "absent", Manifest: tr.signed}))
	wantErr(t, "StartPush to a model that does not exist", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)
	_, err = ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: &droverv1.SignedManifest{Manifest: []byte("junk")}}))
	wantErr(t, "StartPush of junk", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	// A signed manifest must be signed by a key the cluster trusts.
	stranger, err := artifact.GenerateSigningKey(crand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := artifact.Sign(tr.signed.GetManifest(), stranger)
	if err != nil {
		t.Fatal(err)
	}
	_, err = ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: &droverv1.SignedManifest{
		Manifest: tr.signed.GetManifest(), Signatures: []*droverv1.ManifestSignature{sig},
	}}))
	wantErr(t, "StartPush signed by an untrusted key", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)

	start, err := ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: tr.signed}))
	if err != nil {
		t.Fatalf("StartPush: %v", err)
	}
	missing := start.Msg.GetMissing()

	// A chunk whose bytes were changed is refused, and not stored.
	_, err = upload(ctx, t, ac, tr, start.Msg.GetPushId(), missing[:1], true)
	wantErr(t, "upload of a tampered chunk", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	first, _ := artifact.DigestFromBytes(missing[0])
	if holders(c, first) != 0 {
		t.Errorf("the tampered chunk was stored")
	}
	// An upload to a push this server never started is refused.
	_, err = upload(ctx, t, ac, tr, "sha256:"+"00"+start.Msg.GetPushId()[9:], missing[:1], false)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("upload to an unknown push: %v, want FailedPrecondition", err)
	}

	// Half the chunks: FinishPush refuses, and no version appears.
	if _, err := upload(ctx, t, ac, tr, start.Msg.GetPushId(), missing[:len(missing)/2], false); err != nil {
		t.Fatalf("upload half the chunks: %v", err)
	}
	_, err = ac.FinishPush(ctx, connect.NewRequest(&droverv1.FinishPushRequest{Model: "llama", Manifest: tr.signed}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("FinishPush before every chunk arrived: %v, want FailedPrecondition", err)
	}
	t.Logf("refused as it should be: %v", err)
	vs, err := cl.Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: "llama"}))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(vs.Msg.GetVersions()); n != 0 {
		t.Fatalf("a refused FinishPush left %d versions", n)
	}

	// The rest, and the push completes: only the missing half is sent.
	again, err := ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: tr.signed}))
	if err != nil {
		t.Fatalf("StartPush again: %v", err)
	}
	if got, want := len(again.Msg.GetMissing()), len(missing)-len(missing)/2; got != want {
		t.Errorf("resumed StartPush reports %d missing, want %d", got, want)
	}
	if _, err := upload(ctx, t, ac, tr, again.Msg.GetPushId(), again.Msg.GetMissing(), false); err != nil {
		t.Fatalf("upload the rest: %v", err)
	}
	if _, err := ac.FinishPush(ctx, connect.NewRequest(&droverv1.FinishPushRequest{Model: "llama", Manifest: tr.signed})); err != nil {
		t.Fatalf("FinishPush after the upload completed: %v", err)
	}
}

// With one server of three down, a push still reaches a quorum.
func TestPushWithOneServerDown(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	var followers []*cluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			followers = append(followers, n)
		}
	}
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, c.Client(followers[0], false), "llama")
	c.Kill(followers[1])
	tr := makeTree(t, 3)
	_, fin := push(ctx, t, artifactClient(t, c, followers[0]), tr, "llama")
	if len(fin.GetDurableOn()) != 2 {
		t.Errorf("durable on %v, want the two running servers", fin.GetDurableOn())
	}
	for _, d := range tr.keys {
		if n := holders(c, d); n < 2 {
			t.Fatalf("chunk %s is on %d servers, want 2", d, n)
		}
	}
	if !bytes.Equal(fin.GetVersion().GetArtifact().GetSigned().GetManifest(), tr.signed.GetManifest()) {
		t.Error("the version's manifest is not the bytes pushed")
	}
}

// A server refuses a version over max_version_bytes before any byte is
// sent, and a chunk that would eat into chunk_reserve_bytes, each with an
// error that names the limit.
func TestPushLimits(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	tr := makeTree(t, 4)

	small := cluster.Make(t, 1, cluster.Options{Configure: func(c *server.Config) { c.MaxVersionBytes = 1 << 20 }})
	n := small.Nodes()[0]
	mustCreateModel(t, small.Client(n, false), "llama")
	_, err := artifactClient(t, small, n).StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: tr.signed}))
	wantErr(t, "StartPush over max_version_bytes", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if _, d := apierror.Detail(err); !strings.Contains(d.GetHint(), "max_version_bytes") {
		t.Errorf("the refusal does not name max_version_bytes: %v (hint %q)", err, d.GetHint())
	}

	full := cluster.Make(t, 1, cluster.Options{Configure: func(c *server.Config) { c.ChunkReserveBytes = 1 << 62 }})
	n = full.Nodes()[0]
	mustCreateModel(t, full.Client(n, false), "llama")
	ac := artifactClient(t, full, n)
	start, err := ac.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{Model: "llama", Manifest: tr.signed}))
	if err != nil {
		t.Fatalf("StartPush: %v", err)
	}
	_, err = upload(ctx, t, ac, tr, start.Msg.GetPushId(), start.Msg.GetMissing()[:1], false)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "chunk_reserve_bytes") {
		t.Errorf("upload to a server without disk space: %v, want ResourceExhausted naming chunk_reserve_bytes", err)
	}
	t.Logf("refused as it should be: %v", err)

	// A token that may write other models only may not upload to this
	// push, though the call itself is one it may make.
	admin := clientsWith(t, full, n, full.Token(), false)
	if _, err := admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{
		Name: "vision-ci", Rules: []*droverv1.ACLRule{modelRule(droverv1.ACLAccess_ACL_ACCESS_WRITE, "vision-")},
	}})); err != nil {
		t.Fatal(err)
	}
	created, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{Name: "ci", Policies: []string{"vision-ci"}}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = upload(ctx, t, artifactClientWith(t, full, n, created.Msg.GetSecretId()), tr, start.Msg.GetPushId(), start.Msg.GetMissing()[:1], false)
	wantErr(t, "upload to another model's push", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	if !strings.Contains(err.Error(), "model/llama") {
		t.Errorf("the refusal does not name the model: %v", err)
	}

	// A chunk that is not in the push's manifest is refused.
	other := makeTree(t, 5)
	_, err = upload(ctx, t, ac, other, start.Msg.GetPushId(), [][]byte{other.keys[0][:]}, false)
	wantErr(t, "upload of a chunk the manifest does not list", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	t.Logf("refused as it should be: %v", err)
}

// Garbage collection removes the chunks of a deleted model's versions and
// keeps every chunk a live version lists, shared ones included.
func TestChunkGCKeepsLiveVersions(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.ChunkGCGrace = 0 // collectable as soon as unreferenced
	}})
	node := c.Nodes()[0]
	srv := node.Server()
	ctx := testCtx(t, time.Minute)
	admin := c.Client(node, false)
	mustCreateModel(t, admin, "keep")
	mustCreateModel(t, admin, "gone")
	kept, dropped := makeTree(t, 11), makeTree(t, 12)
	push(ctx, t, artifactClient(t, c, node), kept, "keep")
	push(ctx, t, artifactClient(t, c, node), dropped, "gone")
	// The same bytes under the model that goes too: shared chunks stay.
	push(ctx, t, artifactClient(t, c, node), kept, "gone")

	if removed, _, err := srv.CollectChunks(ctx); err != nil || removed != 0 {
		t.Fatalf("GC with every version live removed %d chunks (err %v)", removed, err)
	}
	if _, err := admin.Models.DeleteAlias(ctx, connect.NewRequest(&droverv1.DeleteAliasRequest{Model: "gone", Alias: "candidate"})); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Models.DeleteModel(ctx, connect.NewRequest(&droverv1.DeleteModelRequest{Name: "gone"})); err != nil {
		t.Fatal(err)
	}
	removed, freed, err := srv.CollectChunks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	store := srv.ChunkStore()
	for _, d := range kept.keys {
		if !store.Has(blobstore.Key(d)) {
			t.Fatalf("chunk %s of the live version keep@1 was removed", d)
		}
	}
	shared := map[artifact.Digest]bool{}
	for _, d := range kept.keys {
		shared[d] = true
	}
	want := 0
	for _, d := range dropped.keys {
		if shared[d] {
			continue
		}
		want++
		if store.Has(blobstore.Key(d)) {
			t.Errorf("chunk %s of the deleted model is still stored", d)
		}
	}
	if removed != want || freed <= 0 {
		t.Errorf("removed %d chunks (%d bytes), want the %d only the deleted model had", removed, freed, want)
	}
}
