package gpu

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const gib = 1 << 30

// inventory: two whole H100s (80 GiB), one L4 (24 GiB), and an A100 in MIG
// mode with two 1g.10gb instances and one 3g.40gb.
func inventory() []*droverv1.GPUInfo {
	return []*droverv1.GPUInfo{
		{Uuid: "GPU-h100-a", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib},
		{Uuid: "GPU-l4", Name: "NVIDIA L4", MemoryTotalBytes: 24 * gib},
		{Uuid: "GPU-h100-b", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 * gib},
		{Uuid: "GPU-a100", Name: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 80 * gib, MigEnabled: true},
		{Uuid: "MIG-1", Name: "NVIDIA A100-SXM4-80GB MIG 1g.10gb", MemoryTotalBytes: 10 * gib, ParentUuid: "GPU-a100"},
		{Uuid: "MIG-2", Name: "NVIDIA A100-SXM4-80GB MIG 1g.10gb", MemoryTotalBytes: 10 * gib, ParentUuid: "GPU-a100"},
		{Uuid: "MIG-3", Name: "NVIDIA A100-SXM4-80GB MIG 3g.40gb", MemoryTotalBytes: 40 * gib, ParentUuid: "GPU-a100"},
	}
}

func open(t *testing.T, path string) *Allocator {
	t.Helper()
	a, err := Open(path, inventory())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAllocateRules(t *testing.T) {
	a := open(t, filepath.Join(t.TempDir(), "gpus.json"))
	got, err := a.Allocate("small", Request{Count: 1})
	if err != nil || !slices.Equal(got, []string{"GPU-l4"}) {
		t.Fatalf("smallest whole GPU first: got %v, %v", got, err)
	}
	got, err = a.Allocate("big", Request{Count: 2, MinMemoryBytes: 40 * gib})
	if err != nil || !slices.Equal(got, []string{"GPU-h100-a", "GPU-h100-b"}) {
		t.Fatalf("two 40 GiB GPUs: got %v, %v", got, err)
	}
	// The A100 is in MIG mode: it is never handed out whole.
	_, err = a.Allocate("more", Request{Count: 1})
	if !errors.Is(err, ErrInsufficient) {
		t.Fatalf("a whole GPU with all whole ones held: %v", err)
	}
	t.Log(err)
	for _, want := range []string{"MIG MIG-1", "MIG MIG-3", "GPU-l4 by small"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	got, err = a.Allocate("m1", Request{Count: 1, MIGProfile: "3g.40gb"})
	if err != nil || !slices.Equal(got, []string{"MIG-3"}) {
		t.Fatalf("profile 3g.40gb: got %v, %v", got, err)
	}
	got, err = a.Allocate("m2", Request{Count: 2, MIGProfile: AnyMIG})
	if err != nil || !slices.Equal(got, []string{"MIG-1", "MIG-2"}) {
		t.Fatalf("any two MIG instances: got %v, %v", got, err)
	}
	if _, err := a.Allocate("m2", Request{Count: 1}); !errors.Is(err, ErrHolderExists) {
		t.Fatalf("second allocation for one holder: %v", err)
	}
	if free := a.Free(); len(free) != 0 {
		t.Fatalf("free after handing out everything: %v", free)
	}
	if err := a.Release("m2"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("m2"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if _, err := a.Allocate("m4", Request{Count: 1, MIGProfile: "2g.20gb"}); !errors.Is(err, ErrInsufficient) {
		t.Fatalf("a profile nobody has: %v", err)
	}
	if got, err := a.Allocate("none", Request{}); err != nil || got != nil {
		t.Fatalf("zero GPUs: %v, %v", got, err)
	}
	if _, err := a.Allocate("", Request{Count: 1}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("empty holder: %v", err)
	}
}

func TestParentAndChildrenExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	// The A100 left MIG mode while an instance kept MIG-1: the table still
	// says MIG-1 is held, so the A100 may not be handed out whole.
	a := open(t, path)
	if _, err := a.Allocate("old", Request{Count: 1, MIGProfile: "1g.10gb"}); err != nil {
		t.Fatal(err)
	}
	inv := inventory()
	inv[3].MigEnabled = false
	a.SetInventory(inv)
	got, err := a.Allocate("whole", Request{Count: 4})
	if !errors.Is(err, ErrInsufficient) {
		t.Fatalf("parent of a held MIG instance handed out whole: %v %v", got, err)
	}
	// And the other way: with the A100 held whole, its instances are not
	// free even if the inventory lists them.
	b := open(t, filepath.Join(t.TempDir(), "g2.json"))
	inv = inventory()
	inv[3].MigEnabled = false
	b.SetInventory(inv)
	if got, err := b.Allocate("whole", Request{Count: 4}); err != nil || !slices.Contains(got, "GPU-a100") {
		t.Fatalf("four whole GPUs: %v, %v", got, err)
	}
	b.SetInventory(inventory())
	if got, err := b.Allocate("mig", Request{Count: 1, MIGProfile: AnyMIG}); !errors.Is(err, ErrInsufficient) {
		t.Fatalf("MIG instance of a GPU held whole: %v, %v", got, err)
	}
}

func TestSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	a := open(t, path)
	held, err := a.Allocate("inst-1", Request{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	b := open(t, path)
	if b.HolderOf(held[0]) != "inst-1" || b.HolderOf("GPU-none") != "" {
		t.Fatalf("HolderOf after reopening: %q", b.HolderOf(held[0]))
	}
	if got := b.Held("inst-1"); !slices.Equal(got, held) {
		t.Fatalf("after reopening: inst-1 holds %v, want %v", got, held)
	}
	got, err := b.Allocate("inst-2", Request{Count: 1})
	if err != nil || slices.Contains(held, got[0]) {
		t.Fatalf("after reopening, handed out %v (held %v): %v", got, held, err)
	}
	if _, err := b.Allocate("inst-3", Request{Count: 1}); !errors.Is(err, ErrInsufficient) {
		t.Fatalf("all three whole GPUs are held: %v", err)
	}
}

func TestFailedWriteChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "gpus.json")
	a := open(t, path)
	if _, err := a.Allocate("x", Request{Count: 1}); err == nil {
		t.Fatal("allocation recorded in a missing directory")
	}
	if len(a.Holders()) != 0 || len(a.Free()) != 6 {
		t.Fatalf("after a failed write: holders %v, free %v", a.Holders(), a.Free())
	}
}

func TestCorruptTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	for _, body := range []string{"{", `{"version":2}`, `{"version":1,"holders":{"a":["GPU-l4"],"b":["GPU-l4"]}}`} {
		writeFile(t, path, body)
		if _, err := Open(path, inventory()); err == nil {
			t.Errorf("opened table %s", body)
		} else {
			t.Log(err)
		}
	}
}

// TestRandomNeverDoubleBooks runs random allocate and release sequences,
// with reopenings from disk and MIG mode changes, and checks after every
// step that no device is handed to two holders and that no GPU is held
// whole together with one of its MIG instances.
func TestRandomNeverDoubleBooks(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 1))
			path := filepath.Join(t.TempDir(), "gpus.json")
			inv := inventory()
			a, err := Open(path, inv)
			if err != nil {
				t.Fatal(err)
			}
			live := map[string][]string{} // our own record of grants
			for step := range 300 {
				holder := fmt.Sprintf("h%d", r.IntN(8))
				switch op := r.IntN(10); {
				case op < 5:
					req := Request{Count: r.IntN(3)}
					switch r.IntN(3) {
					case 1:
						req.MIGProfile = AnyMIG
					case 2:
						req.MIGProfile = []string{"1g.10gb", "3g.40gb"}[r.IntN(2)]
					}
					if r.IntN(4) == 0 {
						req.MinMemoryBytes = uint64(r.IntN(90)) * gib
					}
					got, err := a.Allocate(holder, req)
					if err == nil && req.Count > 0 {
						if _, ok := live[holder]; ok {
							t.Fatalf("step %d: %s allocated twice", step, holder)
						}
						live[holder] = got
					}
				case op < 8:
					if err := a.Release(holder); err != nil {
						t.Fatal(err)
					}
					delete(live, holder)
				case op < 9:
					if a, err = Open(path, inv); err != nil {
						t.Fatal(err)
					}
				default:
					// Flip the A100's MIG mode as a re-probe would see it.
					inv = inventory()
					if r.IntN(2) == 0 {
						inv[3].MigEnabled = false
						inv = inv[:4]
					}
					a.SetInventory(inv)
				}
				checkExclusive(t, step, live, a.Holders())
			}
		})
	}
}

func checkExclusive(t *testing.T, step int, live, table map[string][]string) {
	t.Helper()
	if len(live) != len(table) {
		t.Fatalf("step %d: table %v, grants %v", step, table, live)
	}
	owner := map[string]string{}
	for h, uuids := range table {
		if !slices.Equal(uuids, live[h]) {
			t.Fatalf("step %d: table says %s holds %v, it was granted %v", step, h, uuids, live[h])
		}
		for _, u := range uuids {
			if o, ok := owner[u]; ok {
				t.Fatalf("step %d: %s held by %s and %s", step, u, o, h)
			}
			owner[u] = h
		}
	}
	parents := map[string]string{}
	for _, g := range inventory() {
		if g.ParentUuid != "" {
			parents[g.Uuid] = g.ParentUuid
		}
	}
	for u := range owner {
		if p, ok := parents[u]; ok {
			if o, held := owner[p]; held {
				t.Fatalf("step %d: %s held whole by %s while its MIG instance %s is held by %s", step, p, o, u, owner[u])
			}
		}
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// FuzzOpen feeds Open arbitrary tables: it never panics, and a table it
// accepts never lets one device go to two holders.
func FuzzOpen(f *testing.F) {
	f.Add([]byte(`{"version":1,"holders":{"a":["GPU-l4"],"b":["MIG-1"]},"parents":{"MIG-1":"GPU-a100"}}`))
	f.Add([]byte(`{"version":1,"holders":{"a":["GPU-a100"]}}`))
	f.Add([]byte(`{"version":1,"holders":{"a":["x","x"]}}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "gpus.json")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		a, err := Open(path, inventory())
		if err != nil {
			return
		}
		got, err := a.Allocate("fuzz", Request{Count: 1, MIGProfile: AnyMIG})
		if err != nil {
			got, err = a.Allocate("fuzz", Request{Count: 1})
		}
		if err != nil {
			return
		}
		for h, uuids := range a.Holders() {
			if h != "fuzz" && slices.Contains(uuids, got[0]) {
				t.Fatalf("%s handed to fuzz while %s holds it", got[0], h)
			}
		}
	})
}
