package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/agent/peer"
	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// chunkOrigin stands for the servers: it serves chunks from memory and
// counts the bytes.
type chunkOrigin struct {
	chunks map[artifact.Digest][]byte
	bytes  atomic.Int64
}

func (o *chunkOrigin) Name() string { return "servers" }

func (o *chunkOrigin) Chunk(_ context.Context, d artifact.Digest, _ int64) (io.ReadCloser, error) {
	b, ok := o.chunks[d]
	if !ok {
		return nil, fmt.Errorf("no chunk %s", d)
	}
	o.bytes.Add(int64(len(b)))
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (o *chunkOrigin) Sources(string, uint64) []fetch.Source { return []fetch.Source{o} }

type oneManifest struct{ m *droverv1.Manifest }

func (o oneManifest) Manifest(context.Context, string, uint64) (*droverv1.Manifest, error) {
	return o.m, nil
}

// Two agents of a site find each other's peer servers through the gossip
// pool and pull a version fetching it from the servers once; a node
// outside the pool is not served, even with a certificate of the cluster.
func TestSitePeersShareChunks(t *testing.T) {
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	data := make([]byte, 1<<20)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rnd.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "w.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	m, refs, err := artifact.BuildManifest(context.Background(), src, artifact.BuildOptions{Chunker: artifact.ChunkerParamsForAverage(16 << 10)})
	if err != nil {
		t.Fatal(err)
	}
	origin := &chunkOrigin{chunks: map[artifact.Digest][]byte{}}
	for _, r := range refs {
		if origin.chunks[r.Digest], err = artifact.ReadChunk(r, nil); err != nil {
			t.Fatal(err)
		}
	}

	key := newKey(t)
	type member struct {
		a     *Agent
		node  *peer.Node
		cache *fetch.Cache
	}
	start := func(name string, inPool bool) member {
		ag := &Agent{cfg: Config{PeerAddr: "127.0.0.1:0"}, log: slog.New(slog.DiscardHandler)}
		pool := newTestPool(t, name, "lab", key, nil)
		if inPool {
			ag.pool.Store(pool)
		}
		cache, err := fetch.OpenCache(t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ca.IssueClientCert(name, pki.RoleAgent, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pc := peerNodeConfig{ID: name, CA: ca.Certificate(), Certificate: func() *tls.Certificate { return &cert },
			Cache: cache, Manifests: oneManifest{m}, Upstream: origin}
		n, err := ag.startPeerNode(pc)
		if err != nil {
			t.Fatal(err)
		}
		if !inPool {
			if n != nil {
				t.Fatal("a peer node started without a gossip pool")
			}
			n, err = peer.New(peer.Config{ID: name, CA: pc.CA, Certificate: pc.Certificate, Cache: cache, Manifests: pc.Manifests})
			if err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { _ = n.Close() })
		return member{ag, n, cache}
	}
	a, b := start("n-a", true), start("n-b", true)
	if _, err := b.a.pool.Load().Join([]string{a.a.pool.Load().Addr()}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "both peer servers announced", func() error {
		for _, x := range []member{a, b} {
			if got := x.a.SitePeers(); len(got) != 2 {
				return fmt.Errorf("%s sees peers %v", x.node.ID(), got)
			}
		}
		return nil
	})
	pull := func(x member, sources ...fetch.Source) {
		t.Helper()
		dst := filepath.Join(t.TempDir(), "v")
		if _, err := fetch.Pull(context.Background(), m, dst, sources, fetch.Options{Cache: x.cache}); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(filepath.Join(dst, "w.bin")); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("pulled file differs (%v)", err)
		}
	}
	pull(a, origin, a.a.siteSource(a.node, "m", 1))
	pull(b, origin, b.a.siteSource(b.node, "m", 1))
	if got := origin.bytes.Load(); got != int64(len(data)) {
		t.Errorf("the servers sent %d bytes for two agents' pulls of %d", got, len(data))
	}
	if a.node.UploadedBytes() == 0 || b.node.UploadedBytes() == 0 {
		t.Errorf("uploads %d and %d: want each agent to serve the chunks it owns", a.node.UploadedBytes(), b.node.UploadedBytes())
	}

	// A node of the cluster outside the site's pool asks the site's
	// peers, is refused, and goes to the servers.
	outsider := start("n-x", false)
	before := a.node.UploadedBytes() + b.node.UploadedBytes()
	pull(outsider, origin, outsider.node.Source("m", 1, a.a.SitePeers))
	if after := a.node.UploadedBytes() + b.node.UploadedBytes(); after != before {
		t.Errorf("the site served %d bytes to a node outside its pool", after-before)
	}
}
