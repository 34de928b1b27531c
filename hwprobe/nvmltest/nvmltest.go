//go:build cgo

// Package nvmltest builds go-nvml mocks of GPUs whose readings a test sets
// and whose Xid events a test injects, for tests of the sampler and of
// agents on machines without NVIDIA hardware.
package nvmltest

import (
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// Readings are one GPU's dynamic facts as the mock reports them.
type Readings struct {
	UtilizationPercent uint32
	MemoryUsedBytes    uint64
	TemperatureC       uint32
	PowerMilliwatts    uint32
	SMClockMHz         uint32
	// ThrottleReasons are NVML clock throttle reason bits.
	ThrottleReasons uint64
	// Volatile ECC counters.
	ECCCorrected, ECCUncorrected uint64
}

// GPU describes a mock GPU.
type GPU struct {
	UUID             string
	Name             string
	MemoryTotalBytes uint64
	Readings         Readings
}

// NVML is a mock NVML library holding some GPUs. Its methods are safe for
// concurrent use.
type NVML struct {
	*mock.Interface

	mu       sync.Mutex
	gpus     []GPU
	devices  []*mock.Device
	events   chan nvml.EventData // Xid events injected and not yet waited for
	watching bool                // some device registered for Xid events
}

// New returns a mock NVML with the given GPUs, initialised and healthy.
func New(gpus ...GPU) *NVML {
	n := &NVML{gpus: gpus, events: make(chan nvml.EventData, 64)}
	for i := range gpus {
		n.devices = append(n.devices, n.device(i))
	}
	n.Interface = &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(n.devices), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(n.devices) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return n.devices[i], nvml.SUCCESS
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return n.eventSet(), nvml.SUCCESS },
	}
	return n
}

// Set replaces GPU i's readings.
func (n *NVML) Set(i int, r Readings) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gpus[i].Readings = r
}

// Watching reports whether a watcher registered for Xid events, so a test
// injects its event only once someone listens.
func (n *NVML) Watching() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.watching
}

// InjectXid delivers an Xid critical error on GPU i to the next wait of an
// event set.
func (n *NVML) InjectXid(i int, xid uint64) {
	n.events <- nvml.EventData{Device: n.devices[i], EventType: nvml.EventTypeXidCriticalError, EventData: xid}
}

func (n *NVML) readings(i int) Readings {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.gpus[i].Readings
}

func (n *NVML) device(i int) *mock.Device {
	g := n.gpus[i]
	ok := nvml.SUCCESS
	return &mock.Device{
		GetUUIDFunc:    func() (string, nvml.Return) { return g.UUID, ok },
		GetNameFunc:    func() (string, nvml.Return) { return g.Name, ok },
		GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{}, ok },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			used := n.readings(i).MemoryUsedBytes
			return nvml.Memory{Total: g.MemoryTotalBytes, Used: used, Free: g.MemoryTotalBytes - used}, ok
		},
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 9, 0, ok },
		GetEnforcedPowerLimitFunc:    func() (uint32, nvml.Return) { return 700_000, ok },
		GetPowerUsageFunc:            func() (uint32, nvml.Return) { return n.readings(i).PowerMilliwatts, ok },
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			return n.readings(i).TemperatureC, ok
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: n.readings(i).UtilizationPercent}, ok
		},
		GetClockInfoFunc: func(nvml.ClockType) (uint32, nvml.Return) { return n.readings(i).SMClockMHz, ok },
		GetCurrentClocksThrottleReasonsFunc: func() (uint64, nvml.Return) {
			return n.readings(i).ThrottleReasons, ok
		},
		GetTotalEccErrorsFunc: func(t nvml.MemoryErrorType, _ nvml.EccCounterType) (uint64, nvml.Return) {
			r := n.readings(i)
			if t == nvml.MEMORY_ERROR_TYPE_CORRECTED {
				return r.ECCCorrected, ok
			}
			return r.ECCUncorrected, ok
		},
		GetMigModeFunc: func() (int, int, nvml.Return) { return 0, 0, nvml.ERROR_NOT_SUPPORTED },
		GetSupportedEventTypesFunc: func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError, ok
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.watching = true
			return ok
		},
	}
}

// eventSet waits on the injected events; every set shares them, as NVML
// delivers an event once per registration and tests watch with one.
func (n *NVML) eventSet() *mock.EventSet {
	return &mock.EventSet{
		WaitFunc: func(timeoutMs uint32) (nvml.EventData, nvml.Return) {
			t := time.NewTimer(time.Duration(timeoutMs) * time.Millisecond)
			defer t.Stop()
			select {
			case e := <-n.events:
				return e, nvml.SUCCESS
			case <-t.C:
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
}
