package blobstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestPutFaults makes each step of a Put fail in turn and checks that the
// Put reports it and leaves nothing behind: no chunk in the index, no file
// under the chunk's name, nothing in tmp/. It then takes what a power loss
// right after the failure could leave on disk and checks that a store
// opened on it holds only whole chunks, every one acknowledged before the
// failure among them. Finally the disk recovers and the same Put succeeds.
func TestPutFaults(t *testing.T) {
	// A chunk a little over two copy buffers, so that it takes three
	// writes and a failing write can come after others succeeded.
	const size = 600 << 10
	tmpPrefix := memDir + "/" + tmpDir + "/"
	chunkPrefix := memDir + "/" + chunksDir + "/"
	for _, step := range []struct {
		name string
		// fails reports whether the operation is the one to fail; n counts
		// the operations of the same kind seen so far in this Put.
		fails func(op errorfs.Op, n int) bool
	}{
		{"disk usage", func(op errorfs.Op, _ int) bool { return op.Kind == errorfs.OpGetDiskUsage }},
		{"create", func(op errorfs.Op, _ int) bool {
			return op.Kind == errorfs.OpCreate && strings.HasPrefix(op.Path, tmpPrefix)
		}},
		{"first write", func(op errorfs.Op, n int) bool { return op.Kind == errorfs.OpFileWrite && n == 1 }},
		{"third write", func(op errorfs.Op, n int) bool { return op.Kind == errorfs.OpFileWrite && n == 3 }},
		{"file sync", func(op errorfs.Op, _ int) bool {
			return op.Kind == errorfs.OpFileSync && strings.HasPrefix(op.Path, tmpPrefix)
		}},
		{"rename", func(op errorfs.Op, _ int) bool { return op.Kind == errorfs.OpRename }},
		{"directory sync", func(op errorfs.Op, _ int) bool {
			return op.Kind == errorfs.OpFileSync && strings.HasPrefix(op.Path, chunkPrefix)
		}},
	} {
		t.Run(step.name, func(t *testing.T) {
			seed := rand.Uint64()
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 1))
			mem := newMemFS()
			var failing atomic.Bool
			var fired atomic.Int32
			seen := map[errorfs.OpKind]int{} // only touched while failing, by the one Put
			injected := errors.New("injected: " + step.name + " failed")
			fsys := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
				if !failing.Load() {
					return nil
				}
				seen[op.Kind]++
				if step.fails(op, seen[op.Kind]) {
					fired.Add(1)
					return injected
				}
				return nil
			}))
			s := openStore(t, memDir, testOptions(t, fsys))
			var before []Key
			for i := range 5 {
				data, _ := chunk(uint64(100+i), 1000*(i+1))
				before = append(before, mustPut(t, s, data))
			}
			count, total := s.Count(), s.Size()

			data, k := chunk(1, size)
			failing.Store(true)
			err := s.Put(context.Background(), k, bytes.NewReader(data), size)
			failing.Store(false)
			t.Logf("Put: %v", err)
			if fired.Load() != 1 {
				t.Fatalf("the injected failure fired %d times, want once", fired.Load())
			}
			if !errors.Is(err, injected) {
				t.Fatalf("Put = %v, want the injected error", err)
			}
			if s.Has(k) || exists(t, mem, s.path(k)) {
				t.Fatal("a failed Put left its chunk in the store")
			}
			if s.Count() != count || s.Size() != total {
				t.Fatalf("Count, Size = %d, %d after a failed Put; want %d, %d", s.Count(), s.Size(), count, total)
			}
			checkDisk(t, s)

			// Power goes now. Whatever the disk kept, the store opened on it
			// holds whole chunks only, and every acknowledged one.
			for _, pct := range []int{0, 50, 100} {
				crashed := withSpace(mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(rng.Uint64(), 2))}), plentyFree)
				r, err := Open(memDir, testOptions(t, crashed))
				if err != nil {
					t.Fatalf("Open after power loss: %v", err)
				}
				checkDisk(t, r)
				if m := r.Missing(before); len(m) > 0 {
					t.Fatalf("after power loss, chunks acknowledged before the failure are missing: %v", m)
				}
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
			}

			if err := s.Put(context.Background(), k, bytes.NewReader(data), size); err != nil {
				t.Fatalf("Put once the disk recovered: %v", err)
			}
			if err := s.Verify(k); err != nil {
				t.Fatal(err)
			}
			checkDisk(t, s)
		})
	}
}

// TestOpenFaults checks that Open reports a file system that fails while it
// prepares the directory, and takes no lock it does not keep.
func TestOpenFaults(t *testing.T) {
	for name, kind := range map[string]errorfs.OpKind{
		"mkdir": errorfs.OpMkdirAll, "empty tmp": errorfs.OpRemoveAll, "list": errorfs.OpList,
		"stat": errorfs.OpStat, "sync directory": errorfs.OpFileSync,
	} {
		t.Run(name, func(t *testing.T) {
			mem := newMemFS()
			s := openStore(t, memDir, testOptions(t, mem))
			data, _ := chunk(1, 100)
			mustPut(t, s, data)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			injected := errors.New("injected: " + name + " failed")
			var failing atomic.Bool
			failing.Store(true)
			fsys := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
				if failing.Load() && op.Kind == kind {
					return injected
				}
				return nil
			}))
			if _, err := Open(memDir, testOptions(t, fsys)); !errors.Is(err, injected) {
				t.Fatalf("Open with a failing %s = %v, want the injected error", name, err)
			}
			failing.Store(false)
			openStore(t, memDir, testOptions(t, fsys)) // the lock was let go
		})
	}
}
