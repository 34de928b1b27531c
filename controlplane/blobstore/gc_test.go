package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// liveSet is a set of live chunks for GC, safe for concurrent use.
type liveSet struct {
	mu sync.Mutex // guards m
	m  map[Key]bool
}

func (l *liveSet) set(k Key, v bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[Key]bool{}
	}
	l.m[k] = v
}

func (l *liveSet) live(k Key) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.m[k]
}

// gcOnce runs GC and checks that it removed want chunks.
func gcOnce(t *testing.T, s *Store, live func(Key) bool, want int) {
	t.Helper()
	removed, _, err := s.GC(context.Background(), live)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if removed != want {
		t.Fatalf("GC removed %d chunks, want %d", removed, want)
	}
}

// TestGCGrace walks a clock through the rules for what GC may remove: not
// live, not pinned, and untouched (not written, not unpinned, not found by
// Open) for GCGrace.
func TestGCGrace(t *testing.T) {
	const grace = time.Hour
	clk := newFakeClock()
	mem := newMemFS()
	opts := testOptions(t, mem)
	opts.Now = clk.Now
	opts.GCGrace = grace
	s, err := Open(memDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	var live liveSet
	put := func(seed uint64) Key {
		data, _ := chunk(seed, 1000+int(seed))
		return mustPut(t, s, data)
	}

	// Written, not live: kept for the grace period, then removed.
	a, b := put(1), put(2)
	live.set(b, true)
	gcOnce(t, s, live.live, 0)
	clk.Advance(grace - 1)
	gcOnce(t, s, live.live, 0)
	clk.Advance(1)
	removed, freed, err := s.GC(context.Background(), live.live)
	if err != nil || removed != 1 || freed != 1001 {
		t.Fatalf("GC = %d, %d, %v; want chunk a (1001 bytes) removed", removed, freed, err)
	}
	if s.Has(a) || !s.Has(b) || exists(t, mem, s.path(a)) {
		t.Fatal("GC removed the wrong chunk")
	}

	// Pinned before it was written, as a push does: kept however old,
	// then for the grace period after the pin is released.
	_, c := chunk(3, 1003)
	release := s.Pin(c)
	clk.Advance(time.Minute)
	put(3)
	clk.Advance(3 * grace)
	gcOnce(t, s, live.live, 0)
	if info, err := s.Stat(c); err != nil || !info.Pinned {
		t.Fatalf("Stat of a pinned chunk = %+v, %v", info, err)
	}
	release()
	if info, _ := s.Stat(c); info.Pinned || !info.Touched.Equal(clk.Now()) {
		t.Fatalf("Stat after release = %+v, want unpinned and touched now", info)
	}
	clk.Advance(grace - 1)
	gcOnce(t, s, live.live, 0)
	clk.Advance(1)
	gcOnce(t, s, live.live, 1)

	// Pins nest, and a release counts once however often it is called.
	d := put(4)
	r1, r2 := s.Pin(d), s.Pin(d)
	clk.Advance(2 * grace)
	r1()
	r1()
	clk.Advance(2 * grace)
	gcOnce(t, s, live.live, 0)
	r2()
	clk.Advance(grace)
	gcOnce(t, s, live.live, 1)

	// A live chunk stays however old; once no longer live it goes.
	clk.Advance(10 * grace)
	gcOnce(t, s, live.live, 0)
	live.set(b, false)
	gcOnce(t, s, live.live, 1)

	// A restart drops pins, so chunks found by Open start a new grace
	// period: a push in flight has that long to pin them again.
	e := put(5)
	clk.Advance(10 * grace)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, memDir, opts)
	if !s.Has(e) {
		t.Fatal("chunk lost on reopening")
	}
	gcOnce(t, s, live.live, 0)
	clk.Advance(grace)
	gcOnce(t, s, live.live, 1)
	if s.Count() != 0 || s.Size() != 0 {
		t.Fatalf("Count, Size = %d, %d; want an empty store", s.Count(), s.Size())
	}
	if c := s.Counters(); c.Removed != 1 || c.RemovedBytes != 1005 {
		t.Fatalf("Counters = %+v, want 1 chunk of 1005 bytes removed since reopening", c)
	}
	checkDisk(t, s)
}

// TestGCAsksLiveWithChunkOutOfIndex checks the order GC works in: the
// chunk leaves the index (so Missing reports it and a push that pins it
// now writes it again) before live is asked, and a live chunk comes back.
func TestGCAsksLiveWithChunkOutOfIndex(t *testing.T) {
	opts := testOptions(t, newMemFS())
	opts.GCGrace = 0
	s := openStore(t, memDir, opts)
	data, _ := chunk(1, 100)
	k := mustPut(t, s, data)
	var asked int
	gcOnce(t, s, func(got Key) bool {
		asked++
		if got != k {
			t.Errorf("live asked about %s, want %s", got, k)
		}
		if m := s.Missing([]Key{k}); len(m) != 1 {
			t.Error("Missing does not report the chunk while live is asked")
		}
		if _, err := readChunk(s, k); err != nil {
			t.Errorf("reading the chunk while live is asked: %v", err)
		}
		return true
	}, 0)
	if asked != 1 || !s.Has(k) || s.Size() != 100 {
		t.Fatalf("after GC kept a live chunk: asked %d times, Has %v, Size %d", asked, s.Has(k), s.Size())
	}
	checkDisk(t, s)
}

// TestGCFaults checks that a removal that fails is reported and leaves the
// chunk stored, and that a cancelled GC stops.
func TestGCFaults(t *testing.T) {
	var failing atomic.Bool
	injected := errors.New("injected: remove failed")
	fsys := errorfs.Wrap(newMemFS(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && op.Kind == errorfs.OpRemove {
			return injected
		}
		return nil
	}))
	opts := testOptions(t, fsys)
	opts.GCGrace = 0
	s := openStore(t, memDir, opts)
	data, _ := chunk(1, 100)
	k := mustPut(t, s, data)
	dead := func(Key) bool { return false }

	failing.Store(true)
	if _, _, err := s.GC(context.Background(), dead); !errors.Is(err, injected) {
		t.Fatalf("GC with a failing remove = %v, want the injected error", err)
	}
	failing.Store(false)
	if !s.Has(k) || s.Count() != 1 || s.Size() != 100 {
		t.Fatal("a chunk GC failed to remove left the index")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, _, err := s.GC(ctx, dead); !errors.Is(err, context.Canceled) || n != 0 || !s.Has(k) {
		t.Fatalf("GC with a cancelled context = %d, %v", n, err)
	}
	gcOnce(t, s, dead, 1)
	checkDisk(t, s)
}

// removeWatchFS calls before ahead of every Remove, so a test sees each
// chunk GC removes at the moment it goes.
type removeWatchFS struct {
	vfs.FS
	before func(name string)
}

func (f removeWatchFS) Remove(name string) error {
	f.before(name)
	return f.FS.Remove(name)
}

// gcModel is what the rest of a server would know during TestGCRace: which
// chunks committed versions reference, and which chunks pushes in flight
// count on.
type gcModel struct {
	mu       sync.Mutex     // guards the fields below
	live     map[Key]int    // committed versions referencing each chunk
	relied   map[Key]int    // pushes holding a pin that were told the chunk is stored
	versions [][]Key        // committed versions not yet deleted
	bad      []string       // invariant violations seen
	stats    map[string]int // what happened, to show the test did its job
}

func (m *gcModel) isLive(k Key) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.live[k] > 0
}

func (m *gcModel) violation(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.violationLocked(format, args...)
}

func (m *gcModel) violationLocked(format string, args ...any) {
	if len(m.bad) < 20 {
		m.bad = append(m.bad, fmt.Sprintf(format, args...))
	}
}

// TestGCRace runs GC over and over while pushes pin, write and commit
// versions (some abort), and deletes retire them, with no grace period to
// hide behind. It checks at the moment of every removal that the chunk is
// neither live nor counted on by a push holding its pin; that each push
// reads back all its chunks just before it commits; that live chunks are
// on disk whenever a checker looks; and, once everything stops, that one
// GC leaves exactly the live chunks.
func TestGCRace(t *testing.T) {
	run := 2 * time.Second
	if testing.Short() {
		run = 500 * time.Millisecond
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)

	m := &gcModel{live: map[Key]int{}, relied: map[Key]int{}, stats: map[string]int{}}
	chunkPrefix := memDir + "/" + chunksDir + "/"
	fsys := removeWatchFS{FS: newMemFS(), before: func(name string) {
		if !strings.HasPrefix(name, chunkPrefix) {
			return // a temporary file
		}
		k, err := ParseKey(name[strings.LastIndexByte(name, '/')+1:])
		if err != nil {
			m.violation("removing %s, not a chunk", name)
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		m.stats["removed"]++
		if m.live[k] > 0 || m.relied[k] > 0 {
			m.violationLocked("GC removed %s, referenced by %d live versions and counted on by %d pushes", k, m.live[k], m.relied[k])
		}
	}}
	opts := testOptions(t, fsys)
	opts.GCGrace = 0
	s := openStore(t, memDir, opts)

	// A pool of chunks that versions share, so that pushes find some
	// stored already and GC finds some unreferenced.
	type blob struct {
		key  Key
		data []byte
	}
	pool := make([]blob, 150)
	for i := range pool {
		pool[i].data, pool[i].key = chunk(uint64(i), 512+i*37)
	}

	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for p := range 4 {
		rng := rand.New(rand.NewPCG(seed, uint64(p)))
		wg.Go(func() {
			for ctx.Err() == nil {
				var keys []Key
				for _, i := range rng.Perm(len(pool))[:3+rng.IntN(10)] {
					keys = append(keys, pool[i].key)
				}
				release := s.Pin(keys...)
				missing := s.Missing(keys)
				m.mu.Lock()
				for _, k := range keys {
					if !slices.Contains(missing, k) {
						m.relied[k]++
						m.stats["found stored"]++
					}
				}
				m.mu.Unlock()
				for _, k := range missing {
					b := pool[slices.IndexFunc(pool, func(b blob) bool { return b.key == k })]
					if err := s.Put(context.Background(), k, bytes.NewReader(b.data), int64(len(b.data))); err != nil {
						m.violation("Put: %v", err)
					}
					m.mu.Lock()
					m.relied[k]++
					m.stats["written"]++
					m.mu.Unlock()
				}
				// Just before the commit every chunk must be there.
				for _, k := range keys {
					if _, err := readChunk(s, k); err != nil {
						m.violation("a push lost a pinned chunk before committing: %v", err)
					}
				}
				m.mu.Lock()
				if rng.IntN(5) > 0 {
					for _, k := range keys {
						m.live[k]++
					}
					m.versions = append(m.versions, keys)
					m.stats["committed"]++
				} else {
					m.stats["aborted"]++
				}
				for _, k := range keys {
					m.relied[k]--
				}
				m.mu.Unlock()
				release()
			}
		})
	}
	wg.Go(func() { // deletes
		rng := rand.New(rand.NewPCG(seed, 100))
		for ctx.Err() == nil {
			m.mu.Lock()
			for len(m.versions) > 8 {
				i := rng.IntN(len(m.versions))
				for _, k := range m.versions[i] {
					m.live[k]--
				}
				m.versions = append(m.versions[:i], m.versions[i+1:]...)
				m.stats["deleted"]++
			}
			m.mu.Unlock()
			time.Sleep(100 * time.Microsecond)
		}
	})
	wg.Go(func() { // checks that live chunks are on disk
		for ctx.Err() == nil {
			m.mu.Lock()
			for k, n := range m.live {
				if n <= 0 {
					continue
				}
				if r, _, err := s.Open(k); err != nil {
					m.violationLocked("live chunk %s is not on disk: %v", k, err)
				} else {
					r.Close()
				}
			}
			m.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	})
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, _, err := s.GC(context.Background(), m.isLive); err != nil {
				m.violation("GC: %v", err)
			}
			m.mu.Lock()
			m.stats["gc runs"]++
			m.mu.Unlock()
		}
	})
	wg.Wait()
	t.Logf("%v", m.stats)
	for _, b := range m.bad {
		t.Error(b)
	}
	for _, what := range []string{"removed", "found stored", "written", "committed", "aborted", "deleted"} {
		if m.stats[what] == 0 {
			t.Errorf("nothing %s: the test did not exercise what it checks", what)
		}
	}

	// Quiet now, every pin released: one GC leaves exactly the live
	// chunks.
	if _, _, err := s.GC(context.Background(), m.isLive); err != nil {
		t.Fatal(err)
	}
	for _, b := range pool {
		if s.Has(b.key) != m.isLive(b.key) {
			t.Errorf("after a quiet GC chunk %s: stored %v, live %v", b.key, s.Has(b.key), m.isLive(b.key))
		}
	}
	checkDisk(t, s)
	m.mu.Lock()
	clear(m.live)
	m.mu.Unlock()
	if _, _, err := s.GC(context.Background(), m.isLive); err != nil {
		t.Fatal(err)
	}
	if s.Count() != 0 || s.Size() != 0 {
		t.Fatalf("with nothing live GC left %d chunks, %d bytes", s.Count(), s.Size())
	}
}
