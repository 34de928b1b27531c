package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const testModel = "llama"

// version is a built model version: its files, manifest and chunks.
type version struct {
	files  map[string][]byte
	m      *droverv1.Manifest
	chunks map[artifact.Digest][]byte
	size   int64
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

// buildVersion cuts files into chunks of about avg bytes.
func buildVersion(tb testing.TB, files map[string][]byte, avg int) *version {
	tb.Helper()
	src := tb.TempDir()
	v := &version{files: files, chunks: map[artifact.Digest][]byte{}}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(src, name), b, 0o644); err != nil {
			tb.Fatal(err)
		}
		v.size += int64(len(b))
	}
	m, refs, err := artifact.BuildManifest(context.Background(), src, artifact.BuildOptions{Chunker: artifact.ChunkerParamsForAverage(avg)})
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range refs {
		b, err := artifact.ReadChunk(r, nil)
		if err != nil {
			tb.Fatal(err)
		}
		v.chunks[r.Digest] = b
	}
	v.m = m
	return v
}

func (v *version) digests() []artifact.Digest {
	var out []artifact.Digest
	seen := map[artifact.Digest]bool{}
	for _, f := range v.m.GetFiles() {
		for _, c := range f.GetChunks() {
			d, _ := artifact.DigestFromBytes(c.GetDigest())
			if !seen[d] {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out
}

// manifests serves verified manifests by version number.
type manifests map[uint64]*droverv1.Manifest

func (m manifests) Manifest(_ context.Context, model string, v uint64) (*droverv1.Manifest, error) {
	if mf, ok := m[v]; ok && model == testModel {
		return mf, nil
	}
	return nil, fmt.Errorf("no version %d of %s", v, model)
}

// origin stands for the control-plane servers: it serves every chunk it
// knows and counts the bytes.
type origin struct {
	chunks map[artifact.Digest][]byte
	bytes  atomic.Int64
}

func (o *origin) Name() string { return "origin" }

func (o *origin) Chunk(_ context.Context, d artifact.Digest, _ int64) (io.ReadCloser, error) {
	b, ok := o.chunks[d]
	if !ok {
		return nil, fmt.Errorf("origin has no chunk %s", d)
	}
	o.bytes.Add(int64(len(b)))
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (o *origin) Sources(string, uint64) []fetch.Source { return []fetch.Source{o} }

func newOrigin(vs ...*version) *origin {
	o := &origin{chunks: map[artifact.Digest][]byte{}}
	for _, v := range vs {
		for d, b := range v.chunks {
			o.chunks[d] = b
		}
	}
	return o
}

// testNode is a node serving on loopback with its own cache.
type testNode struct {
	*Node
	cache *fetch.Cache
	dir   string
	peer  Peer
}

func newCA(tb testing.TB) *pki.CA {
	tb.Helper()
	ca, err := pki.NewCA("test cluster", time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

func agentCert(tb testing.TB, ca *pki.CA, id string) *tls.Certificate {
	tb.Helper()
	c, err := ca.IssueClientCert(id, pki.RoleAgent, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return &c
}

// startNode starts a node with id serving on loopback; tweak, if set,
// changes its configuration first.
func startNode(tb testing.TB, ca *pki.CA, id string, ms manifests, up Upstream, tweak func(*Config)) *testNode {
	tb.Helper()
	dir := tb.TempDir()
	cache, err := fetch.OpenCache(dir, 0)
	if err != nil {
		tb.Fatal(err)
	}
	cert := agentCert(tb, ca, id)
	cfg := Config{
		ID:          id,
		CA:          ca.Certificate(),
		Certificate: func() *tls.Certificate { return cert },
		Cache:       cache,
		Manifests:   ms,
		Upstream:    up,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	addr, err := n.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("close node %s: %v", id, err)
		}
	})
	return &testNode{Node: n, cache: cache, dir: dir, peer: Peer{ID: id, Addr: addr.String()}}
}

// checkTree fails unless dir holds exactly files.
func checkTree(tb testing.TB, dir string, files map[string][]byte) {
	tb.Helper()
	seen := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if want, ok := files[filepath.ToSlash(rel)]; !ok || !bytes.Equal(got, want) {
			tb.Errorf("%s: unexpected file or content", rel)
		}
		seen++
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if seen != len(files) {
		tb.Errorf("%s holds %d files, want %d", dir, seen, len(files))
	}
}

func peersOf(ns ...*testNode) func() []Peer {
	ps := make([]Peer, len(ns))
	for i, n := range ns {
		ps[i] = n.peer
	}
	return func() []Peer { return ps }
}

// corruptCache flips a byte in the middle of every chunk file of dir's
// cache: what a malicious or broken peer serves.
func corruptCache(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b[len(b)/2] ^= 0xff
		return os.WriteFile(p, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCorruptPeerIsAvoidedAcrossPulls(t *testing.T) {
	ca := newCA(t)
	v1 := buildVersion(t, map[string][]byte{"w.bin": randomBytes(1, 2<<20)}, 32<<10)
	v2 := buildVersion(t, map[string][]byte{"w.bin": randomBytes(2, 2<<20)}, 32<<10)
	ms := manifests{1: v1.m, 2: v2.m}
	o := newOrigin(v1, v2)
	a := startNode(t, ca, "node-a", ms, o, nil)
	bad := startNode(t, ca, "node-bad", ms, o, nil)
	c := startNode(t, ca, "node-c", ms, o, nil)
	peers := peersOf(a, bad, c)
	// The bad peer holds both versions, then its bytes rot.
	for _, v := range []*version{v1, v2} {
		for d, b := range v.chunks {
			if err := bad.cache.Put(d, int64(len(b)), bytes.NewReader(b)); err != nil {
				t.Fatal(err)
			}
		}
	}
	corruptCache(t, bad.dir)

	pull := func(v *version, n uint64) fetch.Stats {
		dst := filepath.Join(t.TempDir(), "v")
		st, err := fetch.Pull(context.Background(), v.m, dst, []fetch.Source{o, a.Source(testModel, n, peers)}, fetch.Options{Cache: a.cache})
		if err != nil {
			t.Fatal(err)
		}
		checkTree(t, dst, v.files)
		return st
	}
	st := pull(v1, 1)
	served := bad.UploadedBytes()
	if served == 0 {
		t.Fatal("the bad peer owned no chunk: the test proves nothing")
	}
	if !a.Avoided("node-bad") {
		t.Error("the peer that served corrupt bytes is not avoided")
	}
	if st.CorruptChunks != 0 || len(st.DroppedSources) != 0 {
		t.Errorf("corrupt bytes reached the pull (%d corrupt, dropped %v): the site source should have caught them", st.CorruptChunks, st.DroppedSources)
	}
	if st.BytesBySource["site peers"] == 0 {
		t.Errorf("nothing came from the good peers: %v", st.BytesBySource)
	}
	// The next pull does not ask the bad peer at all.
	pull(v2, 2)
	if got := bad.UploadedBytes(); got != served {
		t.Errorf("the bad peer served %d more bytes in the next pull", got-served)
	}
}

func TestPenaltiesExpireAndGrow(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newPenalties(Config{
		Now: func() time.Time { return now }, FailLimit: 2,
		FailPenalty: time.Minute, CorruptPenalty: 10 * time.Minute, MaxPenalty: 30 * time.Minute,
	})
	p.fail("x")
	if p.avoided("x") {
		t.Error("avoided after one failure; want after two in a row")
	}
	p.ok("x")
	p.fail("x")
	if p.avoided("x") {
		t.Error("a success between failures did not reset the count")
	}
	p.fail("x")
	if !p.avoided("x") {
		t.Error("not avoided after two failures in a row")
	}
	now = now.Add(time.Minute + time.Second)
	if p.avoided("x") {
		t.Error("still avoided after the failure penalty")
	}

	for i, want := range []time.Duration{10 * time.Minute, 20 * time.Minute, 30 * time.Minute} {
		until := p.corrupt("y")
		if got := until.Sub(now); got != want {
			t.Errorf("corrupt strike %d: avoided for %v, want %v", i+1, got, want)
		}
		now = until.Add(-time.Second)
		if !p.avoided("y") {
			t.Errorf("strike %d: not avoided a second before the penalty ends", i+1)
		}
		now = until.Add(time.Second)
		if p.avoided("y") {
			t.Errorf("strike %d: still avoided after the penalty", i+1)
		}
	}
}

func TestUnauthorizedClientsAreRefused(t *testing.T) {
	ca := newCA(t)
	v := buildVersion(t, map[string][]byte{"w.bin": randomBytes(3, 256<<10)}, 32<<10)
	ms := manifests{1: v.m}
	srv := startNode(t, ca, "node-a", ms, newOrigin(v), nil)
	d := v.digests()[0]
	size := int64(len(v.chunks[d]))

	// A client of the same cluster is served: the control.
	good := startNode(t, ca, "node-b", ms, nil, nil)
	if _, err := good.client.get(context.Background(), srv.peer, testModel, 1, d, size, true); err != nil {
		t.Fatalf("an agent of the cluster was refused: %v", err)
	}

	// Clients that trust the server whatever it presents, so that only
	// the server's checks stand between them and the chunk.
	other := newCA(t)
	serverCert, err := ca.IssueServerCert("server-1", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	operatorCert, err := ca.IssueClientCert("alice", pki.RoleOperator, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, cert := range map[string]*tls.Certificate{
		"another cluster's agent": agentCert(t, other, "node-b"),
		"a server certificate":    &serverCert,
		"an operator certificate": &operatorCert,
		"no certificate":          nil,
	} {
		cfg := Config{CA: ca.Certificate(), Certificate: func() *tls.Certificate { return cert },
			ResponseTimeout: 5 * time.Second, StallTimeout: 5 * time.Second}
		if cert == nil {
			cfg.Certificate = func() *tls.Certificate { return &tls.Certificate{} }
		}
		cl := newClient(cfg)
		cl.tr.TLSClientConfig.VerifyConnection = nil
		_, err := cl.get(context.Background(), srv.peer, testModel, 1, d, size, true)
		_ = cl.close()
		if err == nil {
			t.Errorf("%s was served", name)
		}
		t.Logf("%s: %v", name, err)
	}
	// Nor does a client trust a peer of another cluster.
	impostor := startNode(t, other, "node-a", ms, newOrigin(v), nil)
	if _, err := good.client.get(context.Background(), impostor.peer, testModel, 1, d, size, true); err == nil {
		t.Error("a peer with another cluster's certificate was trusted")
	}
	if srv.UploadedBytes() != size {
		t.Errorf("the server uploaded %d bytes; want the one chunk of %d to the one authorized client", srv.UploadedBytes(), size)
	}
	// Nor a peer that is not the node asked for.
	if _, err := good.client.get(context.Background(), Peer{ID: "node-z", Addr: srv.peer.Addr}, testModel, 1, d, size, true); err == nil {
		t.Error("a peer that is not the node named was trusted")
	}
}

func TestServesOnlyChunksOfTheVerifiedManifest(t *testing.T) {
	ca := newCA(t)
	v1 := buildVersion(t, map[string][]byte{"w.bin": randomBytes(4, 256<<10)}, 32<<10)
	v2 := buildVersion(t, map[string][]byte{"w.bin": randomBytes(5, 256<<10)}, 32<<10)
	// The server knows only version 1's manifest, and has version 2's
	// chunks cached.
	srv := startNode(t, ca, "node-a", manifests{1: v1.m}, newOrigin(v1, v2), nil)
	for d, b := range v2.chunks {
		if err := srv.cache.Put(d, int64(len(b)), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	cl := startNode(t, ca, "node-b", nil, nil, func(c *Config) { c.Manifests = manifests{} })
	ctx := context.Background()
	d2 := v2.digests()[0]
	if _, err := cl.client.get(ctx, srv.peer, testModel, 1, d2, int64(len(v2.chunks[d2])), false); !errors.Is(err, errRefused) {
		t.Errorf("a cached chunk that version 1 does not list: err = %v, want a refusal", err)
	}
	if _, err := cl.client.get(ctx, srv.peer, testModel, 2, d2, int64(len(v2.chunks[d2])), false); err == nil {
		t.Error("a chunk of a version whose manifest the server cannot get was served")
	}
	d1 := v1.digests()[0]
	if _, err := cl.client.get(ctx, srv.peer, testModel, 1, d1, int64(len(v1.chunks[d1])), false); !errors.Is(err, errNotHere) {
		t.Errorf("a listed chunk not cached, not asked of the owner: err = %v, want not here", err)
	}
	b, err := cl.client.get(ctx, srv.peer, testModel, 1, d1, int64(len(v1.chunks[d1])), true)
	if err != nil || !bytes.Equal(b, v1.chunks[d1]) {
		t.Errorf("a listed chunk asked of its owner: err = %v, right bytes %v", err, bytes.Equal(b, v1.chunks[d1]))
	}
	if srv.UploadedBytes() != int64(len(v1.chunks[d1])) {
		t.Errorf("uploaded %d bytes, want the one listed chunk's %d", srv.UploadedBytes(), len(v1.chunks[d1]))
	}
}

func TestUploadCapAndSlots(t *testing.T) {
	ca := newCA(t)
	v := buildVersion(t, map[string][]byte{"w.bin": randomBytes(6, 1<<20)}, 256<<10)
	o := newOrigin(v)
	const capBps = 512 << 10
	srv := startNode(t, ca, "node-a", manifests{1: v.m}, o, func(c *Config) {
		c.UploadBytesPerSecond = capBps
		c.MaxUploads = 1
		c.QueueTimeout = 50 * time.Millisecond
	})
	cl := startNode(t, ca, "node-b", manifests{}, nil, nil)
	ds := v.digests()
	// Warm the owner's cache, so that only uploads are timed.
	for _, d := range ds {
		if err := srv.ensure(context.Background(), testModel, 1, d, int64(len(v.chunks[d]))); err != nil {
			t.Fatal(err)
		}
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		busy  int
		total int64
	)
	start := time.Now()
	for _, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := cl.client.get(context.Background(), srv.peer, testModel, 1, d, int64(len(v.chunks[d])), false)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, errBusy):
				busy++
			case err != nil:
				t.Error(err)
			default:
				total += int64(len(b))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if busy == 0 || total == 0 {
		t.Errorf("%d requests refused as busy, %d bytes served; want both with one upload slot", busy, total)
	}
	if min := time.Duration(float64(total-uploadPiece) / capBps * float64(time.Second)); elapsed < min {
		t.Errorf("%d bytes uploaded in %v; the cap of %d B/s allows no less than %v", total, elapsed, capBps, min)
	}
	t.Logf("%d bytes in %v under a %d B/s cap; %d of %d requests refused as busy", total, elapsed, capBps, busy, len(ds))
}

func TestOwnerIsStableAndSpread(t *testing.T) {
	var peers []Peer
	for i := range 10 {
		peers = append(peers, Peer{ID: fmt.Sprintf("node-%d", i)})
	}
	owned := map[string]int{}
	moved := 0
	const chunks = 5000
	for i := range chunks {
		d := artifact.Sum([]byte(fmt.Sprint(i)))
		o, _ := Owner(d, peers)
		owned[o.ID]++
		// Without node-3, only node-3's chunks move.
		o2, _ := Owner(d, append(peers[:3:3], peers[4:]...))
		if o2.ID != o.ID {
			moved++
			if o.ID != "node-3" {
				t.Fatalf("chunk %d moved from %s to %s when node-3 left", i, o.ID, o2.ID)
			}
		}
	}
	for id, k := range owned {
		if k < chunks/10*7/10 || k > chunks/10*13/10 {
			t.Errorf("%s owns %d of %d chunks; want about a tenth", id, k, chunks)
		}
	}
	if moved != owned["node-3"] {
		t.Errorf("%d chunks moved, want node-3's %d", moved, owned["node-3"])
	}
	if _, ok := Owner(artifact.Digest{}, nil); ok {
		t.Error("an owner among no peers")
	}
}

// fanOut has n nodes pull v at once, each with its own cache, peer server
// and site source before a server source, from one origin. With p2p off
// each pulls from the origin alone. It returns the origin's bytes.
func fanOut(tb testing.TB, n int, v *version, p2p bool) int64 {
	tb.Helper()
	ca := newCA(tb)
	o := newOrigin(v)
	ms := manifests{1: v.m}
	nodes := make([]*testNode, n)
	reasons := &reasonLog{}
	for i := range nodes {
		nodes[i] = startNode(tb, ca, fmt.Sprintf("node-%02d", i), ms, o, func(c *Config) {
			c.Logger = slog.New(reasons)
		})
	}
	peers := peersOf(nodes...)
	dsts := make([]string, n)
	errs := make([]error, n)
	stats := make([]fetch.Stats, n)
	var wg sync.WaitGroup
	for i, nd := range nodes {
		dsts[i] = filepath.Join(tb.TempDir(), "v")
		srcs := []fetch.Source{o}
		if p2p {
			srcs = append(srcs, nd.Source(testModel, 1, peers))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i], errs[i] = fetch.Pull(context.Background(), v.m, dsts[i], srcs, fetch.Options{Cache: nd.cache, RandomOrder: true})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("node %d: %v", i, err)
		}
	}
	for _, dst := range dsts {
		checkTree(tb, dst, v.files)
	}
	var declines, retries int
	var direct int64
	for _, st := range stats {
		declines += st.Declines
		retries += st.Retries
		direct += st.BytesBySource[o.Name()]
	}
	if p2p {
		tb.Logf("%d agents: %d chunks declined by the site, %d retries; %d bytes from the origin straight, %d through owners",
			n, declines, retries, direct, o.bytes.Load()-direct)
		for _, r := range reasons.top(5) {
			tb.Logf("  decline: %s", r)
		}
	}
	return o.bytes.Load()
}

func TestFanOutSendsEachChunkToTheSiteAboutOnce(t *testing.T) {
	n, size, avg := 30, 64<<20, artifact.DefaultAverageChunkSize
	switch {
	case testing.Short():
		n, size = 8, 16<<20
	case raceEnabled:
		// As many chunks as the full run, for a quarter of the bytes.
		size, avg = 16<<20, avg/4
	}
	v := buildVersion(t, map[string][]byte{
		"model.safetensors": randomBytes(7, size-(64<<10)),
		"config.json":       randomBytes(8, 64<<10),
	}, avg)
	start := time.Now()
	got := fanOut(t, n, v, true)
	ratio := float64(got) / float64(v.size)
	t.Logf("%d agents pulled %d bytes (%d chunks) in %v; the origin sent %d bytes, %.2fx the version",
		n, v.size, len(v.chunks), time.Since(start), got, ratio)
	if ratio >= 1.5 {
		t.Errorf("the origin sent %.2fx the version to %d agents of one site; want under 1.5x", ratio, n)
	}
}

// BenchmarkFanOut times agents of one site pulling a 16 MiB version at
// once from one origin, with peer-to-peer sharing on and off, and reports
// the origin's bytes as a multiple of the version's.
func BenchmarkFanOut(b *testing.B) {
	const size = 16 << 20
	v := buildVersion(b, map[string][]byte{"model.safetensors": randomBytes(9, size)}, artifact.DefaultAverageChunkSize)
	for _, bc := range []struct {
		n   int
		p2p bool
	}{{8, false}, {8, true}, {30, false}, {30, true}} {
		n, p2p := bc.n, bc.p2p
		b.Run(fmt.Sprintf("agents=%d/p2p=%v", n, p2p), func(b *testing.B) {
			var origin int64
			for b.Loop() {
				origin += fanOut(b, n, v, p2p)
			}
			b.ReportMetric(float64(origin)/float64(b.N)/float64(v.size), "origin-x-version")
			b.ReportMetric(float64(origin)/float64(b.N), "origin-B/op")
			b.SetBytes(int64(n) * v.size)
		})
	}
}

// reasonLog collects why the site declined chunks, from the nodes' debug
// logs.
type reasonLog struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *reasonLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *reasonLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *reasonLog) WithGroup(string) slog.Handler            { return l }

func (l *reasonLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			// One line per reason: the addresses and digests vary.
			msg := regexp.MustCompile(`127\.0\.0\.1:\d+|node-\d+|digest=[^&]*|chunk [0-9a-z:]+`).ReplaceAllString(a.Value.String(), "…")
			l.mu.Lock()
			if l.n == nil {
				l.n = map[string]int{}
			}
			l.n[msg]++
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *reasonLog) top(k int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for msg, c := range l.n {
		out = append(out, fmt.Sprintf("%5d× %s", c, msg))
	}
	slices.Sort(out)
	slices.Reverse(out)
	return out[:min(k, len(out))]
}

func TestCloseCutsUploadsShort(t *testing.T) {
	ca := newCA(t)
	v := buildVersion(t, map[string][]byte{"w.bin": randomBytes(10, 1<<20)}, 256<<10)
	srv := startNode(t, ca, "node-a", manifests{1: v.m}, newOrigin(v), func(c *Config) {
		c.UploadBytesPerSecond = 64 << 10 // a chunk takes seconds
	})
	cl := startNode(t, ca, "node-b", manifests{}, nil, nil)
	d := v.digests()[0]
	got := make(chan error, 1)
	go func() {
		_, err := cl.client.get(context.Background(), srv.peer, testModel, 1, d, int64(len(v.chunks[d])), true)
		got <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for srv.cache.Size() == 0 || len(srv.slots) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the upload never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %v with an upload in progress", took)
	}
	if err := <-got; err == nil {
		t.Error("the upload completed although the server closed")
	}
}

// A peer that does not answer costs each chunk it owns one response
// timeout, until it is avoided; the pull completes from the servers and
// the other peers.
func TestSilentOwnerFallsBackAndIsAvoided(t *testing.T) {
	ca := newCA(t)
	v := buildVersion(t, map[string][]byte{"w.bin": randomBytes(11, 1<<20)}, 32<<10)
	o := newOrigin(v)
	ms := manifests{1: v.m}
	const timeout = 300 * time.Millisecond
	a := startNode(t, ca, "node-a", ms, o, func(c *Config) {
		c.ResponseTimeout = timeout
		c.FailPenalty = time.Hour
	})
	b := startNode(t, ca, "node-b", ms, o, nil)
	// A UDP socket that reads nothing: the peer's machine is up, its
	// agent hung.
	hole, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	silent := Peer{ID: "node-silent", Addr: hole.LocalAddr().String()}
	peers := []Peer{a.peer, b.peer, silent}
	owned := 0
	for _, d := range v.digests() {
		if o, _ := Owner(d, peers); o.ID == silent.ID {
			owned++
		}
	}
	if owned < DefaultFailLimit+1 {
		t.Fatalf("the silent peer owns %d chunks; the test needs more", owned)
	}
	dst := filepath.Join(t.TempDir(), "v")
	start := time.Now()
	st, err := fetch.Pull(context.Background(), v.m, dst, []fetch.Source{o, a.Source(testModel, 1, func() []Peer { return peers })},
		fetch.Options{Cache: a.cache})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	checkTree(t, dst, v.files)
	if !a.Avoided(silent.ID) {
		t.Error("the silent peer is not avoided")
	}
	// Each in-flight request may wait out one timeout before the peer is
	// avoided, and none after.
	if limit := time.Duration(DefaultFailLimit+fetch.DefaultInFlight) * timeout; st.Declines > DefaultFailLimit+fetch.DefaultInFlight || took > limit+5*time.Second {
		t.Errorf("%d chunks declined, pull took %v; want the silent peer avoided after about %d timeouts", st.Declines, took, DefaultFailLimit)
	}
	t.Logf("silent peer owned %d of %d chunks; %d declined to the servers; pull took %v", owned, len(v.digests()), st.Declines, took)
}
