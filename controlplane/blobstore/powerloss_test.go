package blobstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// kept is the live set of TestPowerLoss: GC keeps the chunks whose key
// starts with an even byte and removes the rest.
func kept(k Key) bool { return k[0]%2 == 0 }

// powerLossSize is the size of TestPowerLoss's chunk n: mostly small, to
// keep the test quick under the race detector, and one in sixteen over a
// Put's copy buffer, so that power can go between two writes of a chunk.
func powerLossSize(n uint64) int {
	if n%16 == 0 {
		return 260<<10 + int(n)
	}
	return int(n * 2741 % (32 << 10))
}

// TestPowerLoss simulates power loss with Pebble's crash-simulating memory
// file system, as raftstore's test of the same name does: while writers
// put chunks (some the same chunk at once, some again after GC removed
// them) and GC removes the unreferenced ones, it takes what a disk could
// hold after losing power at a random moment (everything synced, and a
// random part of what was not), opens a store on that, and checks that
// every file under chunks/ is a whole chunk, that tmp/ was emptied, that
// the totals match the files, and that every chunk acknowledged before the
// moment and kept by GC is there. The recovered store must take writes and
// survive a second loss.
func TestPowerLoss(t *testing.T) {
	iterations := 40
	if testing.Short() {
		iterations = 10
	}
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	for i := range iterations {
		mem := newMemFS()
		opts := testOptions(t, mem)
		opts.GCGrace = 0
		s, err := Open(memDir, opts)
		if err != nil {
			t.Fatal(err)
		}

		var mu sync.Mutex // guards acked and the wakeup
		acked := map[Key]bool{}
		wake := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for w := range 3 {
			wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
			wg.Go(func() {
				for ctx.Err() == nil {
					// Few enough seeds that writers collide and rewrite.
					n := wrng.Uint64N(120)
					data, k := chunk(n, powerLossSize(n))
					if err := s.Put(context.Background(), k, bytes.NewReader(data), int64(len(data))); err != nil {
						t.Errorf("Put: %v", err)
						return
					}
					mu.Lock()
					acked[k] = true
					close(wake)
					wake = make(chan struct{})
					mu.Unlock()
				}
			})
		}
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, _, err := s.GC(context.Background(), kept); err != nil {
					t.Errorf("GC: %v", err)
					return
				}
			}
		})

		want := 1 + rng.IntN(60)
		var before []Key // acknowledged and kept when the power goes
		for {
			mu.Lock()
			n, ch := len(acked), wake
			if n >= want {
				for k := range acked {
					if kept(k) {
						before = append(before, k)
					}
				}
			}
			mu.Unlock()
			if n >= want {
				break
			}
			<-ch
		}
		pct := rng.IntN(101)
		crashed := withSpace(mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(rng.Uint64(), 5))}), plentyFree)
		cancel()
		wg.Wait()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}

		opts.FS = crashed
		r, err := Open(memDir, opts)
		if err != nil {
			t.Fatalf("iteration %d: Open after power loss: %v", i, err)
		}
		checkDisk(t, r)
		if m := r.Missing(before); len(m) > 0 {
			t.Fatalf("iteration %d: %d of %d acknowledged chunks lost: %v", i, len(m), len(before), m)
		}
		data, _ := chunk(rng.Uint64(), 1000)
		k := mustPut(t, r, data)
		again := withSpace(crashed.CrashClone(vfs.CrashCloneCfg{}), plentyFree)
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		opts.FS = again
		r, err = Open(memDir, opts)
		if err != nil {
			t.Fatalf("iteration %d: Open after a second power loss: %v", i, err)
		}
		checkDisk(t, r)
		if m := r.Missing(append(before, k)); len(m) > 0 {
			t.Fatalf("iteration %d: after a second power loss, acknowledged chunks lost: %v", i, m)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("iteration %d: power lost after %d chunks acknowledged (%d kept), %d%% of unsynced writes kept; recovered %d chunks",
			i, want, len(before), pct, r.Count())
	}
}
