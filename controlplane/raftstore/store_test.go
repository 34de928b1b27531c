package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func TestLogRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		log  raft.Log
	}{
		{"empty command", raft.Log{Index: 1, Term: 1, Type: raft.LogCommand}},
		{"command", raft.Log{Index: 2, Term: 3, Type: raft.LogCommand, Data: []byte("set x=1")}},
		{"noop", raft.Log{Index: 3, Term: 3, Type: raft.LogNoop}},
		{"configuration", raft.Log{Index: 4, Term: 3, Type: raft.LogConfiguration, Data: []byte{0x81, 0xa7}}},
		{"extensions", raft.Log{Index: 5, Term: 4, Data: []byte("d"), Extensions: []byte("ext")}},
		{"appended at", raft.Log{Index: 6, Term: 4, Data: []byte("d"), AppendedAt: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}},
		{"appended before 1970", raft.Log{Index: 7, Term: 4, AppendedAt: time.Date(1969, 7, 20, 20, 17, 0, 0, time.UTC)}},
		{"large data", raft.Log{Index: 8, Term: 4, Data: bytes.Repeat([]byte("0123456789abcdef"), 1<<16)}},
		{"unknown type", raft.Log{Index: 9, Term: 4, Type: raft.LogType(200), Data: []byte("x")}},
		{"huge term", raft.Log{Index: 10, Term: math.MaxUint64, Data: []byte("x")}},
		{"huge index", raft.Log{Index: math.MaxUint64, Term: 1, Data: []byte("x")}},
	}
	s := openTest(t, t.TempDir())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.StoreLog(&tt.log); err != nil {
				t.Fatalf("StoreLog: %v", err)
			}
			var got raft.Log
			if err := s.GetLog(tt.log.Index, &got); err != nil {
				t.Fatalf("GetLog: %v", err)
			}
			if d := diffLog(&got, &tt.log); d != "" {
				t.Fatalf("GetLog: %s", d)
			}
		})
	}
}

func TestGetLogMissing(t *testing.T) {
	s := openTest(t, t.TempDir())
	if err := s.StoreLogs(entriesFor(5, 9)); err != nil {
		t.Fatal(err)
	}
	for _, idx := range []uint64{0, 1, 4, 10, math.MaxUint64} {
		var l raft.Log
		// Raft compares with ==, so the error must not be wrapped.
		if err := s.GetLog(idx, &l); err != raft.ErrLogNotFound {
			t.Errorf("GetLog(%d) = %v, want raft.ErrLogNotFound", idx, err)
		}
	}
}

func TestEmptyStore(t *testing.T) {
	s := openTest(t, t.TempDir())
	checkLog(t, s, 0, 0)
	if err := s.StoreLogs(nil); err != nil {
		t.Fatalf("StoreLogs(nil) = %v", err)
	}
	if err := s.DeleteRange(1, 10); err != nil {
		t.Fatalf("DeleteRange on empty store = %v", err)
	}
	checkLog(t, s, 0, 0)
}

func TestStoreLogsRejectsIndexZero(t *testing.T) {
	s := openTest(t, t.TempDir())
	err := s.StoreLogs([]*raft.Log{entryFor(1), {Index: 0, Term: 1}})
	if !errors.Is(err, ErrZeroIndex) {
		t.Fatalf("StoreLogs with index 0 = %v, want ErrZeroIndex", err)
	}
	// The batch is all or nothing.
	checkLog(t, s, 0, 0)
}

// TestRanges stores and deletes ranges and checks the cached bounds against
// what is stored, after each step and again after reopening.
func TestRanges(t *testing.T) {
	type span struct{ lo, hi uint64 }
	tests := []struct {
		name    string
		store   []span
		delete  []span
		present []span // what must remain, in order; nothing else may
	}{
		{"one batch", []span{{1, 100}}, nil, []span{{1, 100}}},
		{"many batches", []span{{1, 10}, {11, 20}, {21, 300}}, nil, []span{{1, 300}}},
		{"delete prefix", []span{{1, 100}}, []span{{1, 40}}, []span{{41, 100}}},
		{"delete suffix", []span{{1, 100}}, []span{{61, 100}}, []span{{1, 60}}},
		{"delete suffix past the end", []span{{1, 100}}, []span{{61, math.MaxUint64}}, []span{{1, 60}}},
		{"delete everything", []span{{1, 100}}, []span{{1, 100}}, nil},
		{"delete a wider range", []span{{10, 100}}, []span{{1, 1000}}, nil},
		{"delete middle", []span{{1, 100}}, []span{{40, 60}}, []span{{1, 39}, {61, 100}}},
		{"delete prefix up to a gap", []span{{1, 100}}, []span{{40, 60}, {1, 39}}, []span{{61, 100}}},
		{"delete suffix down to a gap", []span{{1, 100}}, []span{{40, 60}, {61, 100}}, []span{{1, 39}}},
		{"delete outside", []span{{50, 60}}, []span{{1, 10}, {70, 80}}, []span{{50, 60}}},
		{"empty range", []span{{1, 10}}, []span{{8, 3}}, []span{{1, 10}}},
		{"start after snapshot", []span{{1000, 1010}}, nil, []span{{1000, 1010}}},
		{"gap after snapshot", []span{{1, 10}, {50, 60}}, []span{{1, 10}}, []span{{50, 60}}},
		{"store below first", []span{{50, 60}, {10, 20}}, nil, []span{{10, 20}, {50, 60}}},
		{"truncate then append", []span{{1, 100}, {50, 120}}, nil, []span{{1, 120}}},
		{"delete suffix then rewrite", []span{{1, 100}}, []span{{80, 100}}, []span{{1, 79}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			for _, sp := range tt.store {
				if err := s.StoreLogs(entriesFor(sp.lo, sp.hi)); err != nil {
					t.Fatalf("StoreLogs(%d-%d): %v", sp.lo, sp.hi, err)
				}
			}
			for _, sp := range tt.delete {
				if err := s.DeleteRange(sp.lo, sp.hi); err != nil {
					t.Fatalf("DeleteRange(%d, %d): %v", sp.lo, sp.hi, err)
				}
			}
			checkSpans := func(s *Store) {
				t.Helper()
				var first, last uint64
				if len(tt.present) > 0 {
					first, last = tt.present[0].lo, tt.present[len(tt.present)-1].hi
				}
				if f, _ := s.FirstIndex(); f != first {
					t.Fatalf("FirstIndex = %d, want %d", f, first)
				}
				if l, _ := s.LastIndex(); l != last {
					t.Fatalf("LastIndex = %d, want %d", l, last)
				}
				want := map[uint64]bool{}
				for _, sp := range tt.present {
					for i := sp.lo; i <= sp.hi; i++ {
						want[i] = true
					}
				}
				for i := uint64(1); i <= last+5; i++ {
					var l raft.Log
					err := s.GetLog(i, &l)
					switch {
					case want[i] && err != nil:
						t.Fatalf("GetLog(%d) = %v, want the entry", i, err)
					case want[i]:
						if d := diffLog(&l, entryFor(i)); d != "" {
							t.Fatalf("GetLog(%d): %s", i, d)
						}
					case err != raft.ErrLogNotFound:
						t.Fatalf("GetLog(%d) = %v, want raft.ErrLogNotFound", i, err)
					}
				}
			}
			checkSpans(s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openTest(t, dir)
			checkSpans(s)
		})
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entriesFor(1, 500)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 99); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("server-2")); err != nil {
		t.Fatal(err)
	}
	// Push part of the log into sstables, so that reopening reads both
	// sstables and the WAL.
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(entriesFor(501, 600)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir)
	checkLog(t, s, 100, 600)
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Fatalf("GetUint64(CurrentTerm) = %d, %v; want 7", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "server-2" {
		t.Fatalf("Get(LastVoteCand) = %q, %v; want server-2", v, err)
	}
}

// TestStableStore checks the stable store against what hashicorp/raft relies
// on, which is what raft-boltdb v2 does: a missing key is an error whose text
// is "not found", from Get and GetUint64 alike.
func TestStableStore(t *testing.T) {
	s := openTest(t, t.TempDir())

	if v, err := s.Get([]byte("missing")); err != ErrKeyNotFound || v != nil {
		t.Fatalf("Get(missing) = %q, %v; want nil, ErrKeyNotFound", v, err)
	}
	if v, err := s.GetUint64([]byte("missing")); err != ErrKeyNotFound || v != 0 {
		t.Fatalf("GetUint64(missing) = %d, %v; want 0, ErrKeyNotFound", v, err)
	}
	if ErrKeyNotFound.Error() != "not found" {
		t.Fatalf("ErrKeyNotFound says %q; hashicorp/raft matches the text \"not found\"", ErrKeyNotFound)
	}

	tests := []struct {
		name string
		key  []byte
		val  []byte
	}{
		{"plain", []byte("LastVoteCand"), []byte("server-1")},
		{"empty value", []byte("empty"), []byte{}},
		{"binary", []byte{0, 1, 2, 0xff}, []byte{0xff, 0, 0xfe}},
		{"empty key", []byte{}, []byte("v")},
		{"overwrite", []byte("LastVoteCand"), []byte("server-3")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.Set(tt.key, tt.val); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(tt.key)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if got == nil || !bytes.Equal(got, tt.val) {
				t.Fatalf("Get = %q, want %q", got, tt.val)
			}
		})
	}

	for _, v := range []uint64{0, 1, 1 << 40, math.MaxUint64} {
		if err := s.SetUint64([]byte("CurrentTerm"), v); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetUint64([]byte("CurrentTerm")); err != nil || got != v {
			t.Fatalf("GetUint64 = %d, %v; want %d", got, err, v)
		}
	}

	// A value of the wrong size is damage, not a number.
	if err := s.Set([]byte("short"), []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetUint64([]byte("short")); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("GetUint64 of a 3-byte value = %v, want ErrCorrupt", err)
	}

	// Stable keys and log entries live in separate key ranges.
	if err := s.Set([]byte("\x00\x00\x00\x00\x00\x00\x00\x01"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	checkLog(t, s, 0, 0)
}

func TestClosed(t *testing.T) {
	s, err := Open(t.TempDir(), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close = %v, want nil", err)
	}
	var l raft.Log
	_, getErr := s.Get([]byte("k"))
	_, getUintErr := s.GetUint64([]byte("k"))
	_, firstErr := s.FirstIndex()
	_, lastErr := s.LastIndex()
	for name, err := range map[string]error{
		"FirstIndex":  firstErr,
		"LastIndex":   lastErr,
		"GetLog":      s.GetLog(1, &l),
		"StoreLog":    s.StoreLog(entryFor(1)),
		"StoreLogs":   s.StoreLogs(entriesFor(1, 2)),
		"DeleteRange": s.DeleteRange(1, 2),
		"Set":         s.Set([]byte("k"), []byte("v")),
		"Get":         getErr,
		"SetUint64":   s.SetUint64([]byte("k"), 1),
		"GetUint64":   getUintErr,
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

func TestOpenTwice(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir)
	_, err := Open(dir, Options{Logger: testLogger(t)})
	if err == nil {
		t.Fatal("second Open of the same directory succeeded")
	}
	if errors.Is(err, ErrCorrupt) {
		t.Fatalf("second Open = %v; a held lock is not corruption", err)
	}
	t.Logf("second Open: %v", err)
}

// TestConcurrentUse runs writers, readers and a truncator together; run it
// with -race. Raft itself writes the log from one goroutine, but the store
// promises more.
func TestConcurrentUse(t *testing.T) {
	s := openTest(t, t.TempDir())
	const writers, perWriter, batch = 4, 25, 8
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range writers {
		wg.Go(func() {
			for b := range perWriter {
				lo := uint64(w*perWriter*batch + b*batch + 1)
				if err := s.StoreLogs(entriesFor(lo, lo+batch-1)); err != nil {
					errs <- err
					return
				}
				if err := s.SetUint64(fmt.Appendf(nil, "w%d", w), lo); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for i := uint64(1); i < 400; i++ {
				var l raft.Log
				err := s.GetLog(i, &l)
				if err == raft.ErrLogNotFound {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				if d := diffLog(&l, entryFor(i)); d != "" {
					errs <- fmt.Errorf("GetLog(%d): %s", i, d)
					return
				}
				if _, err := s.FirstIndex(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 10 {
			if err := s.DeleteRange(1, uint64(i*10)); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Whatever the interleaving, the bounds must match what is stored.
	first, last, err := s.seekBounds()
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := s.FirstIndex(); f != first {
		t.Errorf("FirstIndex = %d, stored first = %d", f, first)
	}
	if l, _ := s.LastIndex(); l != last {
		t.Errorf("LastIndex = %d, stored last = %d", l, last)
	}
	if last != writers*perWriter*batch {
		t.Errorf("last = %d, want %d", last, writers*perWriter*batch)
	}
}

// TestRaftOnStore runs a one-server hashicorp/raft on the store through a
// first start, some commands and a restart: the store must satisfy what Raft
// actually does, not just the interface.
func TestRaftOnStore(t *testing.T) {
	dir := t.TempDir()
	snaps := raft.NewInmemSnapshotStore()
	fsm := &countingFSM{}
	start := func() (*raft.Raft, *Store) {
		s, err := Open(dir, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		has, err := raft.HasExistingState(s, s, snaps)
		if err != nil {
			t.Fatalf("HasExistingState: %v", err)
		}
		conf := raft.DefaultConfig()
		conf.LocalID = "s1"
		conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Output: t.Output(), Level: hclog.Warn})
		conf.HeartbeatTimeout = 50 * time.Millisecond
		conf.ElectionTimeout = 50 * time.Millisecond
		conf.LeaderLeaseTimeout = 50 * time.Millisecond
		addr, trans := raft.NewInmemTransport("")
		if !has {
			cfg := raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}
			if err := raft.BootstrapCluster(conf, s, s, snaps, trans, cfg); err != nil {
				t.Fatalf("BootstrapCluster: %v", err)
			}
		}
		r, err := raft.NewRaft(conf, fsm, s, s, snaps, trans)
		if err != nil {
			t.Fatalf("NewRaft: %v", err)
		}
		return r, s
	}
	apply := func(r *raft.Raft, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for r.State() != raft.Leader {
			if time.Now().After(deadline) {
				t.Fatal("no leader after 10s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		for i := range n {
			if err := r.Apply(fmt.Appendf(nil, "cmd-%d", i), 5*time.Second).Error(); err != nil {
				t.Fatalf("Apply: %v", err)
			}
		}
	}

	r, s := start()
	apply(r, 20)
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	term, err := s.GetUint64([]byte("CurrentTerm"))
	if err != nil || term == 0 {
		t.Fatalf("CurrentTerm after first run = %d, %v", term, err)
	}
	last, _ := s.LastIndex()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	r, s = start()
	apply(r, 5)
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.LastIndex(); l <= last {
		t.Fatalf("LastIndex after restart = %d, want > %d", l, last)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The FSM saw every command of both runs at least once (the second run
	// replays the first run's log, since there is no snapshot).
	if n := fsm.count(); n < 25 {
		t.Fatalf("FSM applied %d commands, want at least 25", n)
	}
}

type countingFSM struct {
	mu sync.Mutex // guards n
	n  int
}

func (f *countingFSM) Apply(l *raft.Log) any {
	if !strings.HasPrefix(string(l.Data), "cmd-") {
		return fmt.Errorf("unexpected command %q", l.Data)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return nil
}

func (f *countingFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) {
	return nil, errors.New("snapshots are not used in this test")
}

func (f *countingFSM) Restore(rc io.ReadCloser) error {
	return rc.Close()
}

// TestVerify checks that Verify passes an intact store and finds damage in
// any entry, where Open checks only the first and last.
func TestVerify(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if err := s.StoreLogs(entriesFor(1, 100)); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 4); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("Verify of an intact store = %v", err)
	}
	b := encode(entryFor(50))
	b[len(b)/2] ^= 0x10
	key := logKey(50)
	if err := s.db.Set(key[:], b, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	err := s.Verify()
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "log 50") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Verify with entry 50 damaged = %v, want ErrCorrupt naming log 50 and %s", err, dir)
	}
}
