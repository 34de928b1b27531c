package hwprobe

import "context"

// GPUSampler reads GPUs' dynamic facts. Telemetry depends on this rather
// than on *Sampler so that it can be tested with a fake.
type GPUSampler interface {
	Sample(ctx context.Context) ([]GPUSample, error)
}

// GPUEventWatcher is the optional ability to stream GPU health events. The
// channel closes when ctx ends, and at once where events are not supported.
type GPUEventWatcher interface {
	WatchEvents(ctx context.Context) <-chan GPUEvent
}

var (
	_ GPUSampler      = (*Sampler)(nil)
	_ GPUEventWatcher = (*Sampler)(nil)
)

// gpuProberName is the name GPU warnings are recorded under, with or
// without cgo.
const gpuProberName = "gpu"
