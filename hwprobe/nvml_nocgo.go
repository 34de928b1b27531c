//go:build !cgo

package hwprobe

import (
	"context"
	"fmt"
)

// NVML stands in for the NVML handle in builds without cgo, where go-nvml
// cannot be compiled. Nothing outside this package can implement it, so
// Options.NVML is always nil in such builds.
type NVML interface{ nvmlUnavailable() }

// noCgoReason is GPUProbe.Reason in builds without cgo.
const noCgoReason = "built without cgo: NVML unavailable"

// SystemNVML returns nil: there is no NVML without cgo.
func SystemNVML() NVML { return nil }

// gpuProber records why there are no GPUs: go-nvml loads libnvidia-ml with
// dlopen, which needs cgo.
type gpuProber struct{}

var _ Prober = gpuProber{}

func (gpuProber) Name() string { return gpuProberName }

func (gpuProber) Probe(_ context.Context, _ *Env, inv *Inventory) error {
	inv.GPUProbe.Reason = noCgoReason
	return nil
}

// Sampler samples nothing in builds without cgo; NewSampler says so.
type Sampler struct{}

// NewSampler fails with ErrNVMLUnavailable in builds without cgo.
func NewSampler(NVML) (*Sampler, error) {
	return nil, fmt.Errorf("new sampler: %w: built without cgo", ErrNVMLUnavailable)
}

// Sample fails with ErrNVMLUnavailable.
func (*Sampler) Sample(context.Context) ([]GPUSample, error) {
	return nil, fmt.Errorf("sample: %w: built without cgo", ErrNVMLUnavailable)
}

// WatchEvents returns a closed channel.
func (*Sampler) WatchEvents(context.Context) <-chan GPUEvent {
	ch := make(chan GPUEvent)
	close(ch)
	return ch
}

// Close does nothing.
func (*Sampler) Close() error { return nil }
