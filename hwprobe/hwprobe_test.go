package hwprobe

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// stubProber is a prober whose behaviour a test chooses.
type stubProber struct {
	name  string
	probe func(inv *Inventory) error
}

func (p stubProber) Name() string { return p.name }
func (p stubProber) Probe(_ context.Context, _ *Env, inv *Inventory) error {
	return p.probe(inv)
}

func TestOptionsValidate(t *testing.T) {
	ok := stubProber{name: "a", probe: func(*Inventory) error { return nil }}
	tests := []struct {
		name    string
		opts    Options
		wantErr string // empty: valid
	}{
		{"default", DefaultOptions(), ""},
		{"no data dir", Options{Root: "/"}, ""},
		{"empty root", Options{}, "Root is empty"},
		{"relative data dir", Options{Root: "/", DataDir: "data"}, "not absolute"},
		{"nil prober", Options{Root: "/", Probers: []Prober{ok, nil}}, "Probers[1] is nil"},
		{"duplicate names", Options{Root: "/", Probers: []Prober{ok, ok}}, `two probers named "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate = %v, want ErrInvalidOptions with %q", err, tt.wantErr)
			}
			if _, err := Probe(context.Background(), tt.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Fatalf("Probe = %v, want ErrInvalidOptions", err)
			}
		})
	}
}

func TestDefaultProbers(t *testing.T) {
	if err := (Options{Root: "/", Probers: DefaultProbers()}).Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range DefaultProbers() {
		names = append(names, p.Name())
	}
	if got, want := strings.Join(names, ","), "host,cpu,memory,container,disk,board,gpu"; got != want {
		t.Errorf("DefaultProbers = %s, want %s", got, want)
	}
}

// A prober that fails or panics costs a warning; the probers after it
// still run and the probe succeeds.
func TestProbeIsolatesProbers(t *testing.T) {
	var ran []string
	record := func(name string, err error) Prober {
		return stubProber{name: name, probe: func(inv *Inventory) error {
			ran = append(ran, name)
			return err
		}}
	}
	panicky := stubProber{name: "panicky", probe: func(inv *Inventory) error {
		ran = append(ran, "panicky")
		panic("index out of range")
	}}
	opts := Options{Root: t.TempDir(), Probers: []Prober{
		record("first", nil),
		record("failing", errors.New("sensor on fire")),
		panicky,
		record("last", nil),
	}}
	inv, err := Probe(context.Background(), opts)
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if got := strings.Join(ran, ","); got != "first,failing,panicky,last" {
		t.Errorf("ran %s", got)
	}
	if len(inv.Warnings) != 2 {
		t.Fatalf("warnings = %v, want 2", inv.Warnings)
	}
	if w := inv.Warnings[0]; w != (Warning{Probe: "failing", Message: "sensor on fire"}) {
		t.Errorf("warning 0 = %v", w)
	}
	if w := inv.Warnings[1]; w.Probe != "panicky" || !strings.HasPrefix(w.Message, "panic: ") {
		t.Errorf("warning 1 = %v", w)
	}
}

func TestProbeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	never := stubProber{name: "never", probe: func(*Inventory) error {
		t.Error("prober ran after cancel")
		return nil
	}}
	if _, err := Probe(ctx, Options{Root: "/", Probers: []Prober{never}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Probe = %v, want context.Canceled", err)
	}
}

// This machine, whatever it is, probes without error: the agent's
// `probe` command must work on a laptop as well as on a GPU server.
func TestProbeThisMachine(t *testing.T) {
	opts := DefaultOptions()
	opts.DataDir = t.TempDir()
	inv, err := Probe(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.GPUProbe.Available && inv.GPUProbe.Reason == "" {
		t.Error("no GPUs and no reason")
	}
	t.Logf("summary: %s", inv.Summary())
	t.Logf("gpu probe: %+v", inv.GPUProbe)
	for _, w := range inv.Warnings {
		t.Logf("warning: %s", w)
	}
}

func TestSummary(t *testing.T) {
	h100s := func(n int) []GPU {
		var gpus []GPU
		for i := range n {
			gpus = append(gpus, GPU{Index: i, UUID: "GPU-" + string(rune('a'+i)), Name: "NVIDIA H100 80GB HBM3"})
		}
		// MIG instances are not counted as GPUs of their own.
		return append(gpus, GPU{Index: 3, UUID: "MIG-1", Name: "NVIDIA H100 80GB HBM3 MIG 3g.40gb", ParentUUID: "GPU-d"})
	}
	tests := []struct {
		tree string
		gpus []GPU
		want string
	}{
		{"x86-server", h100s(8), "8× NVIDIA H100 80GB HBM3, 2× Intel Xeon Gold 5420+, 112 threads, 2.0 TiB RAM"},
		{"x86-server", nil, "2× Intel Xeon Gold 5420+, 112 threads, 2.0 TiB RAM"},
		{"x86-server", []GPU{{Name: "NVIDIA L4"}, {Name: "NVIDIA A10"}, {Name: "NVIDIA L4"}},
			"2× NVIDIA L4, 1× NVIDIA A10, 2× Intel Xeon Gold 5420+, 112 threads, 2.0 TiB RAM"},
		{"jetson-orin", nil, "NVIDIA Jetson AGX Orin Developer Kit (L4T 36.3.0), ARM Cortex-A78AE, 12 threads, 61.4 GiB RAM"},
		{"rpi5", nil, "Raspberry Pi 5 Model B Rev 1.0, ARM Cortex-A76, 4 threads, 7.9 GiB RAM"},
		{"container", nil, "AMD EPYC 9354P 32-Core Processor, 64 threads, 251.5 GiB RAM, limited to 2.5 CPUs and 4.0 GiB"},
	}
	for _, tt := range tests {
		inv := probeTree(t, tt.tree)
		inv.GPUs = tt.gpus
		if got := inv.Summary(); got != tt.want {
			t.Errorf("%s Summary =\n%q, want\n%q", tt.tree, got, tt.want)
		}
	}
	if got := (&Inventory{}).Summary(); got != "" {
		t.Errorf("empty Summary = %q", got)
	}
}
