package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// store is the chunks a fake source can serve, by digest.
type store map[artifact.Digest][]byte

// buildVersion writes files to a directory, builds their manifest with
// small chunks (so a few KiB make many chunks) and adds the chunks to s.
func buildVersion(t *testing.T, s store, files map[string][]byte) *droverv1.Manifest {
	t.Helper()
	src := t.TempDir()
	for name, b := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, refs, err := artifact.BuildManifest(context.Background(), src, artifact.BuildOptions{Chunker: artifact.ChunkerParamsForAverage(1024)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		b, err := artifact.ReadChunk(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		s[r.Digest] = b
	}
	return m
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func digests(m *droverv1.Manifest) map[artifact.Digest]bool {
	out := make(map[artifact.Digest]bool)
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			d, _ := artifact.DigestFromBytes(c.GetDigest())
			out[d] = true
		}
	}
	return out
}

// checkTree fails unless dir holds exactly files.
func checkTree(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		want, ok := files[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: content differs (%d bytes, want %d)", rel, len(got), len(want))
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(files) {
		t.Errorf("%s holds %d files, want %d", dir, seen, len(files))
	}
}

// fakeSource serves chunks from a store and counts what it was asked.
type fakeSource struct {
	name  string
	store store
	// serve, if set, decides each request: nil serves the right bytes,
	// errCorrupt flips a byte, errBlock waits until the pull is cancelled,
	// anything else fails the request.
	serve func(n int, d artifact.Digest) error

	mu      sync.Mutex // guards the fields below
	calls   int
	fetches map[artifact.Digest]int
}

var (
	errCorrupt = errors.New("serve corrupt bytes")
	errBlock   = errors.New("block until cancelled")
)

func newSource(name string, s store) *fakeSource {
	return &fakeSource{name: name, store: s, fetches: make(map[artifact.Digest]int)}
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error) {
	f.mu.Lock()
	n := f.calls
	f.calls++
	f.fetches[d]++
	f.mu.Unlock()
	b, ok := f.store[d]
	if !ok {
		return nil, fmt.Errorf("%s: no chunk %s", f.name, d)
	}
	var err error
	if f.serve != nil {
		err = f.serve(n, d)
	}
	switch err {
	case nil:
		return io.NopCloser(bytes.NewReader(b)), nil
	case errCorrupt:
		bad := bytes.Clone(b)
		bad[len(bad)/2] ^= 0xff
		return io.NopCloser(bytes.NewReader(bad)), nil
	case errBlock:
		<-ctx.Done()
		return nil, ctx.Err()
	default:
		return nil, err
	}
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeSource) fetched() map[artifact.Digest]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[artifact.Digest]int, len(f.fetches))
	for d, n := range f.fetches {
		out[d] = n
	}
	return out
}

func openCache(t *testing.T, dir string, budget int64) *Cache {
	t.Helper()
	c, err := OpenCache(dir, budget)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sampleFiles(seed uint64) map[string][]byte {
	return map[string][]byte{
		"model.bin":        randomBytes(seed, 96<<10),
		"config.json":      []byte(`{"layers": 12}`),
		"tokenizer/vocab":  randomBytes(seed+1, 20<<10),
		"tokenizer/merges": randomBytes(seed+2, 5<<10),
	}
}

func TestPullFromTwoSources(t *testing.T) {
	s := store{}
	files := sampleFiles(1)
	m := buildVersion(t, s, files)
	a, b := newSource("a", s), newSource("b", s)
	cache := openCache(t, t.TempDir(), 0)
	dst := filepath.Join(t.TempDir(), "v1")

	var mu sync.Mutex
	var last, total int64
	calls := 0
	st, err := Pull(context.Background(), m, dst, []Source{a, b}, Options{
		Cache: cache,
		Progress: func(done, tot int64) {
			mu.Lock()
			defer mu.Unlock()
			if done < last {
				t.Errorf("progress went back from %d to %d", last, done)
			}
			last, total = done, tot
			calls++
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	n := len(digests(m))
	if st.ChunksFetched != n || st.ChunksFromCache != 0 {
		t.Errorf("fetched %d chunks, %d from cache; want %d and 0", st.ChunksFetched, st.ChunksFromCache, n)
	}
	if st.BytesBySource["a"] == 0 || st.BytesBySource["b"] == 0 {
		t.Errorf("requests not spread over both sources: %v", st.BytesBySource)
	}
	if st.BytesBySource["a"]+st.BytesBySource["b"] != st.BytesFetched {
		t.Errorf("bytes by source %v do not add up to %d", st.BytesBySource, st.BytesFetched)
	}
	if a.count()+b.count() != n {
		t.Errorf("%d requests for %d chunks", a.count()+b.count(), n)
	}
	if last != total || total != st.BytesFetched || calls != n+1 {
		t.Errorf("progress ended at %d/%d after %d calls; want %d/%d after %d", last, total, calls, st.BytesFetched, st.BytesFetched, n+1)
	}
	if st.CorruptChunks != 0 || st.Retries != 0 || len(st.DroppedSources) != 0 {
		t.Errorf("stats report trouble on a clean pull: %+v", st)
	}
}

func TestPullDeltaFetchesOnlyNewChunks(t *testing.T) {
	s := store{}
	v1 := sampleFiles(2)
	m1 := buildVersion(t, s, v1)
	v2 := sampleFiles(2)
	model := bytes.Clone(v2["model.bin"])
	copy(model[40<<10:], randomBytes(99, 4<<10)) // one region retrained
	v2["model.bin"] = model
	v2["config.json"] = []byte(`{"layers": 12, "rev": 2}`)
	m2 := buildVersion(t, s, v2)

	cache := openCache(t, t.TempDir(), 0)
	dst := filepath.Join(t.TempDir(), "current")
	if _, err := Pull(context.Background(), m1, dst, []Source{newSource("a", s)}, Options{Cache: cache}); err != nil {
		t.Fatal(err)
	}
	src := newSource("a", s)
	st, err := Pull(context.Background(), m2, dst, []Source{src}, Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, v2)

	old, now := digests(m1), digests(m2)
	wantNew := 0
	for d := range now {
		if !old[d] {
			wantNew++
		}
	}
	if wantNew == 0 || wantNew > len(now)/2 {
		t.Fatalf("test setup: %d of %d chunks new, want a small delta", wantNew, len(now))
	}
	for d, n := range src.fetched() {
		if old[d] || n != 1 {
			t.Errorf("chunk %s fetched %d times, though v1 had it: %v", d, n, old[d])
		}
	}
	if st.ChunksFetched != wantNew || st.ChunksFromCache != len(now)-wantNew {
		t.Errorf("fetched %d, from cache %d; want %d and %d", st.ChunksFetched, st.ChunksFromCache, wantNew, len(now)-wantNew)
	}
}

func TestPullAvoidsCorruptSource(t *testing.T) {
	s := store{}
	files := sampleFiles(3)
	m := buildVersion(t, s, files)
	bad := newSource("bad", s)
	bad.serve = func(int, artifact.Digest) error { return errCorrupt }
	good := newSource("good", s)
	cache := openCache(t, t.TempDir(), 0)
	dst := filepath.Join(t.TempDir(), "v")

	st, err := Pull(context.Background(), m, dst, []Source{bad, good}, Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	if st.CorruptChunks == 0 || st.CorruptChunks > DefaultInFlight {
		t.Errorf("%d corrupt chunks counted; the bad source should be dropped after its first", st.CorruptChunks)
	}
	if st.CorruptChunks != bad.count() {
		t.Errorf("bad source served %d requests, %d counted corrupt", bad.count(), st.CorruptChunks)
	}
	if n := len(digests(m)); bad.count() >= n/2 {
		t.Errorf("bad source still asked for %d of %d chunks after serving corrupt bytes", bad.count(), n)
	}
	if st.BytesBySource["bad"] != 0 || st.Retries != st.CorruptChunks {
		t.Errorf("stats %+v: want no bytes credited to bad, one retry per corrupt chunk", st)
	}
	if len(st.DroppedSources) != 1 || st.DroppedSources[0] != "bad" {
		t.Errorf("dropped %v, want [bad]", st.DroppedSources)
	}
	// Nothing corrupt was cached.
	for d := range digests(m) {
		rc, err := cache.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if artifact.Sum(b) != d {
			t.Errorf("cached chunk %s has the wrong bytes", d)
		}
	}
}

func TestPullAllSourcesFail(t *testing.T) {
	s := store{}
	m := buildVersion(t, s, sampleFiles(4))
	down := func(int, artifact.Digest) error { return errors.New("connection refused") }
	a, b := newSource("a", s), newSource("b", s)
	a.serve, b.serve = down, down
	cache := openCache(t, t.TempDir(), 0)
	dst := filepath.Join(t.TempDir(), "v")

	_, err := Pull(context.Background(), m, dst, []Source{a, b}, Options{Cache: cache, RetryDelay: time.Millisecond})
	if !errors.Is(err, ErrNoSource) {
		t.Fatalf("pull from failing sources: %v, want ErrNoSource", err)
	}
	if !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error %q does not say why the sources failed", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destination exists after a failed pull: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dst))
	if len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
	// Sources that keep failing are dropped, not asked forever.
	if a.count() > 3*sourceFailLimit || b.count() > 3*sourceFailLimit {
		t.Errorf("failing sources asked %d and %d times", a.count(), b.count())
	}
}

func TestPullWithoutSources(t *testing.T) {
	s := store{}
	m := buildVersion(t, s, sampleFiles(5))
	_, err := Pull(context.Background(), m, filepath.Join(t.TempDir(), "v"), nil, Options{Cache: openCache(t, t.TempDir(), 0)})
	if !errors.Is(err, ErrNoSource) {
		t.Fatalf("pull without sources: %v, want ErrNoSource", err)
	}
}

func TestPullResumesAfterCancel(t *testing.T) {
	s := store{}
	files := sampleFiles(6)
	m := buildVersion(t, s, files)
	cacheDir := t.TempDir()
	dst := filepath.Join(t.TempDir(), "v")
	const served = 10
	n := len(digests(m))
	if n < 2*served {
		t.Fatalf("test setup: only %d chunks", n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := newSource("a", s)
	first.serve = func(n int, _ artifact.Digest) error {
		if n < served {
			return nil
		}
		return errBlock
	}
	var mu sync.Mutex
	done := 0
	_, err := Pull(ctx, m, dst, []Source{first}, Options{
		Cache: openCache(t, cacheDir, 0),
		Progress: func(_, _ int64) {
			mu.Lock()
			defer mu.Unlock()
			// The first call is the start, before any chunk.
			if done++; done == served+1 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("destination exists after a cancelled pull: %v", err)
	}
	// A write cut short by a kill leaves a temporary file.
	if err := os.WriteFile(filepath.Join(cacheDir, "tmp", "chunk-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The agent restarts: a new cache on the same directory.
	cache := openCache(t, cacheDir, 0)
	if _, err := os.Stat(filepath.Join(cacheDir, "tmp", "chunk-123")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary file survived a restart: %v", err)
	}
	atRestart := make(map[artifact.Digest]bool)
	for d := range digests(m) {
		if cache.Has(d) {
			atRestart[d] = true
		}
	}
	if len(atRestart) != served {
		t.Errorf("%d chunks cached after the cancelled pull, want the %d served", len(atRestart), served)
	}
	second := newSource("a", s)
	st, err := Pull(context.Background(), m, dst, []Source{second}, Options{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	if st.ChunksFromCache != served || st.ChunksFetched != n-served || second.count() != n-served {
		t.Errorf("resume: %d from cache, %d fetched in %d requests; want %d, %d, %d", st.ChunksFromCache, st.ChunksFetched, second.count(), served, n-served, n-served)
	}
	for d := range second.fetched() {
		if atRestart[d] {
			t.Errorf("chunk %s fetched again though the first pull cached it", d)
		}
	}
}

func TestPullRefusesWhenDiskFull(t *testing.T) {
	s := store{}
	files := sampleFiles(7)
	m := buildVersion(t, s, files)
	dst := filepath.Join(t.TempDir(), "current")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "old"), []byte("previous version"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := newSource("a", s)
	_, err := Pull(context.Background(), m, dst, []Source{src}, Options{
		Cache:     openCache(t, t.TempDir(), 0),
		FreeSpace: func(string) (uint64, uint64, error) { return 50 << 10, 1, nil },
	})
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("pull onto a full disk: %v, want ErrNoSpace", err)
	}
	for _, want := range []string{"50.0 KiB free", "needed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if src.count() != 0 {
		t.Errorf("%d chunks fetched before refusing", src.count())
	}
	checkTree(t, dst, map[string][]byte{"old": []byte("previous version")})
}

func TestPullBandwidthCap(t *testing.T) {
	s := store{}
	files := map[string][]byte{"w": randomBytes(8, 192<<10)}
	m := buildVersion(t, s, files)
	const bps = 256 << 10
	start := time.Now()
	_, err := Pull(context.Background(), m, filepath.Join(t.TempDir(), "v"), []Source{newSource("a", s), newSource("b", s)},
		Options{Cache: openCache(t, t.TempDir(), 0), BytesPerSecond: bps})
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	// The bucket starts full, so the first burst is free.
	floor := time.Duration(float64(time.Second) * float64(192<<10-rateChunk) / bps)
	if elapsed < floor {
		t.Errorf("pulled %d bytes at %d B/s in %v, faster than the floor %v", 192<<10, bps, elapsed, floor)
	}
}

func TestCacheEvictsLeastRecentlyUsedUnprotected(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir, 4000)
	var ds []artifact.Digest
	for i := range 6 {
		b := randomBytes(uint64(100+i), 1000)
		d := artifact.Sum(b)
		ds = append(ds, d)
		if i >= 4 {
			continue
		}
		if err := c.Put(d, 1000, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		// Use order on disk has a file system's time granularity.
		time.Sleep(10 * time.Millisecond)
	}
	put := func(i int) {
		t.Helper()
		if err := c.Put(ds[i], 1000, bytes.NewReader(randomBytes(uint64(100+i), 1000))); err != nil {
			t.Fatal(err)
		}
	}
	chunkList := func(idx ...int) *droverv1.Manifest {
		f := &droverv1.ManifestFile{}
		for _, i := range idx {
			f.Chunks = append(f.Chunks, &droverv1.ManifestChunk{Digest: ds[i][:], Size: 1000})
		}
		return &droverv1.Manifest{Files: []*droverv1.ManifestFile{f}}
	}
	c.Protect(chunkList(0), chunkList(1)) // current and previous version
	rc, err := c.Open(ds[2])
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	put(4) // over budget: 3 was used least recently, 0 and 1 are protected
	for i, want := range []bool{true, true, true, false, true} {
		if c.Has(ds[i]) != want {
			t.Errorf("after first eviction, chunk %d cached = %v, want %v", i, !want, want)
		}
	}
	time.Sleep(10 * time.Millisecond)
	put(5) // now 2 is the least recent unprotected
	for i, want := range []bool{true, true, false, false, true, true} {
		if c.Has(ds[i]) != want {
			t.Errorf("after second eviction, chunk %d cached = %v, want %v", i, !want, want)
		}
	}
	if c.Size() != 4000 {
		t.Errorf("cache size %d, want 4000", c.Size())
	}

	// A restart keeps the chunks and their use order.
	c = openCache(t, dir, 3000)
	if c.Size() != 4000 {
		t.Fatalf("reopened cache size %d, want 4000", c.Size())
	}
	c.Protect(chunkList(1))
	for i, want := range []bool{false, true, false, false, true, true} {
		if c.Has(ds[i]) != want {
			t.Errorf("after restart, chunk %d cached = %v, want %v", i, !want, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "chunks", fmt.Sprintf("%x", ds[0][:1]), fmt.Sprintf("%x", ds[0][:]))); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("evicted chunk still on disk: %v", err)
	}
}

func TestCachePutRefusesWrongBytes(t *testing.T) {
	c := openCache(t, t.TempDir(), 0)
	b := randomBytes(9, 500)
	d := artifact.Sum(b)
	for name, r := range map[string]io.Reader{
		"flipped": bytes.NewReader(append([]byte{b[0] ^ 1}, b[1:]...)),
		"short":   bytes.NewReader(b[:499]),
		"long":    io.MultiReader(bytes.NewReader(b), strings.NewReader("x")),
	} {
		if err := c.Put(d, 500, r); !errors.Is(err, artifact.ErrChunkCorrupt) {
			t.Errorf("%s: put %v, want ErrChunkCorrupt", name, err)
		}
		if c.Has(d) {
			t.Fatalf("%s: corrupt chunk cached", name)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(c.Dir(), "tmp"))
	if len(entries) != 0 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestPullRefetchesChunkRottedInCache(t *testing.T) {
	s := store{}
	files := sampleFiles(10)
	m := buildVersion(t, s, files)
	cache := openCache(t, t.TempDir(), 0)
	if _, err := Pull(context.Background(), m, filepath.Join(t.TempDir(), "v1"), []Source{newSource("a", s)}, Options{Cache: cache}); err != nil {
		t.Fatal(err)
	}
	var rotten artifact.Digest
	for d := range digests(m) {
		rotten = d
		break
	}
	if err := os.WriteFile(cache.path(rotten), bytes.Repeat([]byte{0}, len(s[rotten])), 0o644); err != nil {
		t.Fatal(err)
	}
	src := newSource("a", s)
	dst := filepath.Join(t.TempDir(), "v2")
	if _, err := Pull(context.Background(), m, dst, []Source{src}, Options{Cache: cache}); err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	if got := src.fetched(); len(got) != 1 || got[rotten] != 1 {
		t.Errorf("fetched %v, want only the rotten chunk once", got)
	}
}

func TestPullLargerThanCacheBudget(t *testing.T) {
	s := store{}
	files := sampleFiles(11)
	m := buildVersion(t, s, files)
	const budget = 8 << 10
	cache := openCache(t, t.TempDir(), budget)
	dst := filepath.Join(t.TempDir(), "v")
	// The version's chunks stay until it is assembled, budget or not.
	if _, err := Pull(context.Background(), m, dst, []Source{newSource("a", s)}, Options{Cache: cache}); err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	if cache.Size() > budget {
		t.Errorf("cache holds %d bytes after the pull, over its budget of %d", cache.Size(), budget)
	}
}

func TestFreeSpaceOfTempDir(t *testing.T) {
	free, _, err := freeSpace(t.TempDir())
	if errors.Is(err, errors.ErrUnsupported) {
		t.Skip("free space is not measured on this system")
	}
	if err != nil || free == 0 {
		t.Fatalf("free space of a temporary directory: %d, %v", free, err)
	}
}

func TestPullCacheFailureDoesNotBlameSources(t *testing.T) {
	s := store{}
	m := buildVersion(t, s, sampleFiles(12))
	cache := openCache(t, t.TempDir(), 0)
	// The cache's scratch directory is gone: every write fails here, on
	// this machine, whatever a source serves.
	tmp := filepath.Join(cache.Dir(), "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a, b := newSource("a", s), newSource("b", s)
	st, err := Pull(context.Background(), m, filepath.Join(t.TempDir(), "v"), []Source{a, b}, Options{Cache: cache})
	if err == nil || errors.Is(err, ErrNoSource) {
		t.Fatalf("pull into a broken cache: %v, want the cache's error", err)
	}
	if len(st.DroppedSources) != 0 || st.Retries != 0 {
		t.Errorf("sources blamed for a local failure: %+v", st)
	}
	if a.count()+b.count() > DefaultInFlight {
		t.Errorf("%d requests made after the cache failed", a.count()+b.count())
	}
}

// prioSource is a fakeSource with a priority.
type prioSource struct {
	*fakeSource
	prio int
}

func (p prioSource) Priority() int { return p.prio }

func TestPullAsksPrioritizedSourceFirstAndMovesOnAtDecline(t *testing.T) {
	s := store{}
	files := sampleFiles(7)
	m := buildVersion(t, s, files)
	// The preferred source declines every third chunk it is asked for.
	peer := prioSource{newSource("peer", s), 1}
	peer.serve = func(n int, _ artifact.Digest) error {
		if n%3 == 0 {
			return fmt.Errorf("not cached here: %w", ErrDecline)
		}
		return nil
	}
	server := newSource("server", s)
	cache := openCache(t, t.TempDir(), 0)
	dst := filepath.Join(t.TempDir(), "v1")
	st, err := Pull(context.Background(), m, dst, []Source{server, peer}, Options{Cache: cache, RetryDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, dst, files)
	n := len(digests(m))
	if peer.count() != n {
		t.Errorf("the prioritized source was asked %d times for %d chunks; want every chunk asked there first", peer.count(), n)
	}
	declined := (n + 2) / 3
	if server.count() != declined || st.BytesBySource["server"] == 0 {
		t.Errorf("the server was asked %d times; want only the %d declined chunks", server.count(), declined)
	}
	if st.Declines != declined || st.Retries != 0 || len(st.DroppedSources) != 0 {
		t.Errorf("declines %d, retries %d, dropped %v; want %d declines and no retry or drop", st.Declines, st.Retries, st.DroppedSources, declined)
	}
}

func TestPullFailsWhenEverySourceDeclines(t *testing.T) {
	s := store{}
	m := buildVersion(t, s, sampleFiles(8))
	a := newSource("a", s)
	a.serve = func(int, artifact.Digest) error { return ErrDecline }
	b := newSource("b", s)
	b.serve = func(int, artifact.Digest) error { return ErrDecline }
	_, err := Pull(context.Background(), m, filepath.Join(t.TempDir(), "v1"), []Source{a, b}, Options{Cache: openCache(t, t.TempDir(), 0), RetryDelay: time.Hour})
	if !errors.Is(err, ErrNoSource) {
		t.Fatalf("err = %v; want ErrNoSource", err)
	}
	// Each source declined each chunk it was asked for once, and was
	// never asked again for it.
	for d, k := range a.fetched() {
		if k != 1 || b.fetched()[d] > 1 {
			t.Errorf("chunk %s asked %d times of a and %d of b after declines; want once each", d, k, b.fetched()[d])
		}
	}
}

func TestPullRandomOrder(t *testing.T) {
	s := store{}
	files := sampleFiles(9)
	m := buildVersion(t, s, files)
	var manifestOrder []artifact.Digest
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			d, _ := artifact.DigestFromBytes(c.GetDigest())
			if !slices.Contains(manifestOrder, d) {
				manifestOrder = append(manifestOrder, d)
			}
		}
	}
	orders := map[string]bool{}
	for range 3 {
		var mu sync.Mutex
		var order []artifact.Digest
		src := newSource("a", s)
		src.serve = func(_ int, d artifact.Digest) error {
			mu.Lock()
			defer mu.Unlock()
			order = append(order, d)
			return nil
		}
		dst := filepath.Join(t.TempDir(), "v1")
		if _, err := Pull(context.Background(), m, dst, []Source{src}, Options{Cache: openCache(t, t.TempDir(), 0), InFlight: 1, RandomOrder: true}); err != nil {
			t.Fatal(err)
		}
		checkTree(t, dst, files)
		orders[fmt.Sprint(order)] = true
	}
	if len(orders) < 2 || orders[fmt.Sprint(manifestOrder)] {
		t.Errorf("%d distinct orders in 3 pulls of %d chunks, manifest order among them: %v; want random orders", len(orders), len(manifestOrder), orders[fmt.Sprint(manifestOrder)])
	}
}
