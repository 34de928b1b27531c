package raftstore

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/hashicorp/raft"
)

// powerLossDir is where the tests keep the store on an in-memory file
// system.
const powerLossDir = "/raft"

// acked is what a writer has been told is durable: every StoreLogs up to
// last returned, and so did SetUint64(CurrentTerm, term) and
// DeleteRange(first, deleted).
type acked struct {
	mu      sync.Mutex // guards the fields below
	last    uint64
	term    uint64
	deleted uint64 // highest X of a DeleteRange(_, X) that returned
	delTry  uint64 // highest X of a DeleteRange(_, X) that was started
	writes  int
	changed chan struct{} // closed and replaced on every acknowledgement
}

func (a *acked) note(f func()) {
	a.mu.Lock()
	f()
	a.writes++
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// waitWrites waits until n writes have been acknowledged.
func (a *acked) waitWrites(n int) {
	for {
		a.mu.Lock()
		done, ch := a.writes >= n, a.changed
		a.mu.Unlock()
		if done {
			return
		}
		<-ch
	}
}

func (a *acked) snapshot() acked {
	a.mu.Lock()
	defer a.mu.Unlock()
	return acked{last: a.last, term: a.term, deleted: a.deleted, delTry: a.delTry, writes: a.writes}
}

// powerLossWriter writes to s until stop is closed, the way Raft does:
// batches of entries, now and then the current term, a flush (so that
// sstables, the manifest and WAL rotation are in play) and a truncation of
// the head of the log. It records in a what each write returned.
func powerLossWriter(t *testing.T, s *Store, rng *rand.Rand, a *acked, stop <-chan struct{}) {
	next := uint64(1)
	for batch := 0; ; batch++ {
		select {
		case <-stop:
			return
		default:
		}
		n := 1 + rng.Uint64N(16)
		if err := s.StoreLogs(entriesFor(next, next+n-1)); err != nil {
			t.Errorf("StoreLogs: %v", err)
			return
		}
		next += n
		a.note(func() { a.last = next - 1 })
		switch {
		case batch%7 == 6:
			if err := s.SetUint64([]byte(crashTermKey), next-1); err != nil {
				t.Errorf("SetUint64: %v", err)
				return
			}
			a.note(func() { a.term = next - 1 })
		case batch%23 == 22:
			if err := s.db.Flush(); err != nil {
				t.Errorf("Flush: %v", err)
				return
			}
		case batch%31 == 30 && next > 200:
			x := next - 100
			first, _ := s.FirstIndex()
			a.note(func() { a.delTry = x })
			if err := s.DeleteRange(first, x); err != nil {
				t.Errorf("DeleteRange: %v", err)
				return
			}
			a.note(func() { a.deleted = x })
		}
	}
}

// TestPowerLoss simulates power loss with Pebble's crash-simulating memory
// file system: at a random moment, while a writer is busy, it takes what a
// disk could hold after losing power (everything synced, and a random part
// of what was not), opens the store on that, and checks that every write
// acknowledged before the moment is there, and that every entry the store
// holds is whole.
func TestPowerLoss(t *testing.T) {
	iterations := 60
	if testing.Short() {
		iterations = 15
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	for i := range iterations {
		fs := vfs.NewCrashableMem()
		s, err := Open(powerLossDir, Options{FS: fs, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		var a acked
		a.changed = make(chan struct{})
		stop := make(chan struct{})
		var wg sync.WaitGroup
		writerRNG := rand.New(rand.NewPCG(rng.Uint64(), 4))
		wg.Go(func() { powerLossWriter(t, s, writerRNG, &a, stop) })

		a.waitWrites(1 + rng.IntN(300))
		before := a.snapshot() // acknowledged before the power goes
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 5))})
		close(stop)
		wg.Wait()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}

		r, err := Open(powerLossDir, Options{FS: crashed, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("iteration %d: Open after power loss (%d writes acknowledged): %v", i, before.writes, err)
		}
		first, _ := r.FirstIndex()
		last, _ := r.LastIndex()
		if last < before.last {
			t.Fatalf("iteration %d: LastIndex = %d after power loss, but entries up to %d were acknowledged", i, last, before.last)
		}
		if before.deleted > 0 && first <= before.deleted {
			t.Fatalf("iteration %d: FirstIndex = %d after power loss, but entries up to %d were deleted", i, first, before.deleted)
		}
		if before.delTry == 0 && first != 1 {
			t.Fatalf("iteration %d: FirstIndex = %d, but nothing was ever deleted", i, first)
		}
		checkLog(t, r, first, last)
		if before.term > 0 {
			if term, err := r.GetUint64([]byte(crashTermKey)); err != nil || term < before.term {
				t.Fatalf("iteration %d: GetUint64(CurrentTerm) = %d, %v after power loss; %d was acknowledged", i, term, err, before.term)
			}
		}
		// The recovered store takes writes and survives a second loss.
		if err := r.StoreLogs(entriesFor(last+1, last+3)); err != nil {
			t.Fatalf("iteration %d: StoreLogs after recovery: %v", i, err)
		}
		again := crashed.CrashClone(vfs.CrashCloneCfg{})
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		r, err = Open(powerLossDir, Options{FS: again, Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("iteration %d: Open after a second power loss: %v", i, err)
		}
		checkLog(t, r, first, last+3)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("iteration %d: power lost after %d acknowledged writes (log [%d, %d] acknowledged); recovered [%d, %d]",
			i, before.writes, before.deleted+1, before.last, first, last)
	}
}

// TestSyncFailure makes an fsync of the WAL fail and checks that the store
// never acts as if the write were durable: the write returns an error, the
// store reports the failure, and every later call fails, even once the disk
// would sync again, until the server restarts and recovers from what is
// really on disk.
func TestSyncFailure(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var failing atomic.Bool
	syncErr := errors.New("injected: fsync: input/output error")
	fs := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
			if failing.Load() && isWAL(op.Path) {
				return syncErr
			}
		}
		return nil
	}))
	s, err := Open(powerLossDir, Options{FS: fs, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entriesFor(1, 50)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte(crashTermKey), 2); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Failed():
		t.Fatal("Failed is closed before any write failed")
	default:
	}

	failing.Store(true)
	err = s.StoreLogs(entriesFor(51, 60))
	t.Logf("StoreLogs with a failing fsync: %v", err)
	// Pebble reports the failure through Fatalf, as text.
	if !errors.Is(err, ErrWriteFailed) || !strings.Contains(err.Error(), syncErr.Error()) {
		t.Fatalf("StoreLogs with a failing fsync = %v, want an error wrapping ErrWriteFailed that names the fsync error", err)
	}
	select {
	case <-s.Failed():
	default:
		t.Fatal("Failed is not closed after a failed write")
	}
	if !errors.Is(s.Err(), ErrWriteFailed) {
		t.Fatalf("Err = %v, want ErrWriteFailed", s.Err())
	}

	// The disk recovers; the store must not.
	failing.Store(false)
	var l raft.Log
	for name, call := range map[string]func() error{
		"StoreLogs": func() error { return s.StoreLogs(entriesFor(51, 60)) },
		"SetUint64": func() error { return s.SetUint64([]byte(crashTermKey), 3) },
		"DeleteRange": func() error {
			return s.DeleteRange(1, 10)
		},
		"GetLog":    func() error { return s.GetLog(5, &l) },
		"GetUint64": func() error { _, err := s.GetUint64([]byte(crashTermKey)); return err },
		"LastIndex": func() error { _, err := s.LastIndex(); return err },
	} {
		if err := call(); !errors.Is(err, ErrWriteFailed) {
			t.Errorf("%s after a failed fsync = %v, want ErrWriteFailed", name, err)
		}
	}
	_ = s.Close() // may report the failure again; must not hang or panic

	// What a restart finds is what reached the disk: every write
	// acknowledged before the failure.
	r, err := Open(powerLossDir, Options{FS: mem.CrashClone(vfs.CrashCloneCfg{}), Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open after the failure: %v", err)
	}
	defer r.Close()
	last, _ := r.LastIndex()
	if last != 50 {
		// The failed batch was never synced, so it is not on the disk the
		// crash clone keeps.
		t.Fatalf("LastIndex after restart = %d, want 50", last)
	}
	checkLog(t, r, 1, 50)
	if term, err := r.GetUint64([]byte(crashTermKey)); err != nil || term != 2 {
		t.Fatalf("GetUint64(CurrentTerm) after restart = %d, %v; want 2", term, err)
	}
}
