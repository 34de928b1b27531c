//go:build !cgo

package hwprobe

import (
	"context"
	"errors"
	"testing"
)

// Without cgo there is no NVML: the machine is a machine with no GPUs, and
// the inventory says why.
func TestNoCgo(t *testing.T) {
	inv, err := Probe(context.Background(), Options{Root: t.TempDir(), Probers: []Prober{gpuProber{}}})
	if err != nil {
		t.Fatal(err)
	}
	if inv.GPUProbe.Available || inv.GPUProbe.Reason != "built without cgo: NVML unavailable" || len(inv.GPUs) != 0 || len(inv.Warnings) != 0 {
		t.Errorf("GPUProbe = %+v, GPUs = %v, warnings = %v", inv.GPUProbe, inv.GPUs, inv.Warnings)
	}
	if _, err := NewSampler(nil); !errors.Is(err, ErrNVMLUnavailable) {
		t.Errorf("NewSampler = %v, want ErrNVMLUnavailable", err)
	}
	var s *Sampler
	if _, err := s.Sample(context.Background()); !errors.Is(err, ErrNVMLUnavailable) {
		t.Errorf("Sample = %v, want ErrNVMLUnavailable", err)
	}
	if _, ok := <-s.WatchEvents(context.Background()); ok {
		t.Error("WatchEvents delivered an event")
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}
