//go:build cgo

package hwprobe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML is the part of go-nvml's nvml.Interface this package calls.
// Production passes SystemNVML (an nvml.Interface); tests pass a
// *mock.Interface with only these methods filled in.
type NVML interface {
	Init() nvml.Return
	Shutdown() nvml.Return
	SystemGetDriverVersion() (string, nvml.Return)
	SystemGetCudaDriverVersion() (int, nvml.Return)
	DeviceGetCount() (int, nvml.Return)
	DeviceGetHandleByIndex(index int) (nvml.Device, nvml.Return)
}

// NVMLEvents is the optional ability of an NVML handle to create event
// sets; Sampler.WatchEvents uses it where the handle has it.
type NVMLEvents interface {
	EventSetCreate() (nvml.EventSet, nvml.Return)
}

// nvmlDevice is the part of nvml.Device this package calls, listed so that
// a mock device needs only these methods.
type nvmlDevice interface {
	GetUUID() (string, nvml.Return)
	GetName() (string, nvml.Return)
	GetPciInfo() (nvml.PciInfo, nvml.Return)
	GetMemoryInfo() (nvml.Memory, nvml.Return)
	GetCudaComputeCapability() (int, int, nvml.Return)
	GetEnforcedPowerLimit() (uint32, nvml.Return)
	GetMigMode() (int, int, nvml.Return)
	GetMaxMigDeviceCount() (int, nvml.Return)
	GetMigDeviceHandleByIndex(index int) (nvml.Device, nvml.Return)
	GetPowerUsage() (uint32, nvml.Return)
	GetTemperature(nvml.TemperatureSensors) (uint32, nvml.Return)
	GetUtilizationRates() (nvml.Utilization, nvml.Return)
	GetClockInfo(nvml.ClockType) (uint32, nvml.Return)
	GetCurrentClocksThrottleReasons() (uint64, nvml.Return)
	GetTotalEccErrors(nvml.MemoryErrorType, nvml.EccCounterType) (uint64, nvml.Return)
	GetSupportedEventTypes() (uint64, nvml.Return)
	RegisterEvents(eventTypes uint64, set nvml.EventSet) nvml.Return
}

var (
	_ NVML       = nvml.Interface(nil)
	_ NVMLEvents = nvml.Interface(nil)
	_ nvmlDevice = nvml.Device(nil)
)

// SystemNVML returns a handle on the machine's NVML library. Making it
// loads nothing: Init dlopens libnvidia-ml.so.1, and reports
// ERROR_LIBRARY_NOT_FOUND where the driver is missing. Share one handle
// between Probe and NewSampler: go-nvml serialises loading per handle, but
// two handles loading at once race on the package's symbol table.
func SystemNVML() NVML { return nvml.New() }

// gpuProber lists NVIDIA GPUs and their MIG instances through NVML.
type gpuProber struct{}

var _ Prober = gpuProber{}

func (gpuProber) Name() string { return gpuProberName }

func (p gpuProber) Probe(ctx context.Context, env *Env, inv *Inventory) error {
	gp := &inv.GPUProbe
	lib := env.NVML
	if lib == nil {
		gp.Reason = "no NVML handle"
		return nil
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		// No driver is what every CPU-only machine looks like: a reason,
		// not a warning. Any other failure means a driver that is there
		// and broken, which an operator wants to hear about.
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED {
			gp.Reason = fmt.Sprintf("no NVIDIA driver (NVML init: %v)", ret)
			return nil
		}
		gp.Reason = fmt.Sprintf("NVML init: %v", ret)
		return fmt.Errorf("nvml init: %w", ret)
	}
	// Shutdown's result is of no use: the handle is not used again.
	defer lib.Shutdown()

	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		gp.DriverVersion = v
	} else {
		inv.AddWarning(p.Name(), fmt.Errorf("driver version: %w", ret))
	}
	if v, ret := lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		gp.CUDADriverVersion = fmt.Sprintf("%d.%d", v/1000, v%1000/10) // 12040 → "12.4"
	} else {
		inv.AddWarning(p.Name(), fmt.Errorf("CUDA driver version: %w", ret))
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		gp.Reason = fmt.Sprintf("NVML device count: %v", ret)
		return fmt.Errorf("device count: %w", ret)
	}
	gp.Available = true

	var migs []GPU
	for i := range n {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			inv.AddWarning(p.Name(), fmt.Errorf("GPU %d: skipped: handle: %w", i, ret))
			continue
		}
		g, instances, errs := probeGPU(i, h)
		for _, err := range errs {
			inv.AddWarning(p.Name(), err)
		}
		if g != nil {
			inv.GPUs = append(inv.GPUs, *g)
			migs = append(migs, instances...)
		}
	}
	inv.GPUs = append(inv.GPUs, migs...)
	return nil
}

// probeGPU reads one GPU's static facts, a first sample, and its MIG
// instances. A GPU without a UUID cannot be told apart from its neighbours
// after a reboot reorders them, so it is skipped; any other failed read
// leaves its field empty and returns an error for the warnings.
func probeGPU(index int, d nvmlDevice) (*GPU, []GPU, []error) {
	uuid, ret := d.GetUUID()
	if ret != nvml.SUCCESS {
		return nil, nil, []error{fmt.Errorf("GPU %d: skipped: uuid: %w", index, ret)}
	}
	g := &GPU{Index: index, UUID: uuid}
	var errs []error
	fail := func(what string, ret nvml.Return) {
		errs = append(errs, fmt.Errorf("GPU %d: %s: %w", index, what, ret))
	}
	if v, ret := d.GetName(); ret == nvml.SUCCESS {
		g.Name = v
	} else {
		fail("name", ret)
	}
	if v, ret := d.GetPciInfo(); ret == nvml.SUCCESS {
		g.PCIBusID = cString(v.BusId[:])
	} else {
		fail("PCI info", ret)
	}
	if v, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
		g.MemoryTotalBytes = v.Total
	} else {
		fail("memory", ret)
	}
	if major, minor, ret := d.GetCudaComputeCapability(); ret == nvml.SUCCESS {
		g.ComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	} else {
		fail("compute capability", ret)
	}
	if v, ret := d.GetEnforcedPowerLimit(); ret == nvml.SUCCESS {
		g.PowerLimitMilliwatts = v
	} else {
		fail("power limit", ret)
	}
	// NOT_SUPPORTED is the answer for GPUs without MIG, not a failure.
	switch cur, pending, ret := d.GetMigMode(); ret {
	case nvml.SUCCESS:
		g.MIG = &MIGMode{Current: cur == nvml.DEVICE_MIG_ENABLE, Pending: pending == nvml.DEVICE_MIG_ENABLE}
	case nvml.ERROR_NOT_SUPPORTED:
	default:
		fail("MIG mode", ret)
	}
	s, serrs := readSample(index, uuid, d)
	g.Sample = &s
	errs = append(errs, serrs...)

	var instances []GPU
	if g.MIG != nil && g.MIG.Current {
		var merrs []error
		instances, merrs = migInstances(g, d)
		errs = append(errs, merrs...)
	}
	return g, instances, errs
}

// migInstances lists the MIG devices of a GPU in MIG mode. They inherit the
// parent's compute capability; their memory is their slice of it.
func migInstances(parent *GPU, d nvmlDevice) ([]GPU, []error) {
	n, ret := d.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, []error{fmt.Errorf("GPU %d: MIG device count: %w", parent.Index, ret)}
	}
	var out []GPU
	var errs []error
	for j := range n {
		h, ret := d.GetMigDeviceHandleByIndex(j)
		if ret == nvml.ERROR_NOT_FOUND {
			continue // an empty slot
		}
		fail := func(what string, ret nvml.Return) {
			errs = append(errs, fmt.Errorf("GPU %d MIG %d: %s: %w", parent.Index, j, what, ret))
		}
		if ret != nvml.SUCCESS {
			fail("skipped: handle", ret)
			continue
		}
		uuid, ret := h.GetUUID()
		if ret != nvml.SUCCESS {
			fail("skipped: uuid", ret)
			continue
		}
		m := GPU{Index: parent.Index, UUID: uuid, ParentUUID: parent.UUID, ComputeCapability: parent.ComputeCapability}
		if v, ret := h.GetName(); ret == nvml.SUCCESS {
			m.Name = v
		} else {
			fail("name", ret)
		}
		if v, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
			m.MemoryTotalBytes = v.Total
		} else {
			fail("memory", ret)
		}
		out = append(out, m)
	}
	return out, errs
}

// readSample reads one GPU's dynamic facts. A failed read leaves its field
// nil and returns an error that wraps the nvml.Return, so callers can tell
// ERROR_NOT_SUPPORTED from real failures.
func readSample(index int, uuid string, d nvmlDevice) (GPUSample, []error) {
	s := GPUSample{Index: index, UUID: uuid}
	var errs []error
	fail := func(what string, ret nvml.Return) {
		errs = append(errs, fmt.Errorf("GPU %d: %s: %w", index, what, ret))
	}
	if v, ret := d.GetMemoryInfo(); ret == nvml.SUCCESS {
		s.MemoryUsedBytes = &v.Used
	} else {
		fail("memory", ret)
	}
	if v, ret := d.GetPowerUsage(); ret == nvml.SUCCESS {
		s.PowerDrawMilliwatts = &v
	} else {
		fail("power draw", ret)
	}
	if v, ret := d.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		s.TemperatureC = &v
	} else {
		fail("temperature", ret)
	}
	if v, ret := d.GetUtilizationRates(); ret == nvml.SUCCESS {
		s.UtilizationGPU, s.UtilizationMemory = &v.Gpu, &v.Memory
	} else {
		fail("utilization", ret)
	}
	if v, ret := d.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		s.SMClockMHz = &v
	} else {
		fail("SM clock", ret)
	}
	if v, ret := d.GetCurrentClocksThrottleReasons(); ret == nvml.SUCCESS {
		s.ThrottleReasons = &v
	} else {
		fail("throttle reasons", ret)
	}
	// One warning for a GPU without ECC, not one per counter.
	if v, ret := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_CORRECTED, nvml.VOLATILE_ECC); ret == nvml.SUCCESS {
		s.ECCCorrected = &v
		if v, ret := d.GetTotalEccErrors(nvml.MEMORY_ERROR_TYPE_UNCORRECTED, nvml.VOLATILE_ECC); ret == nvml.SUCCESS {
			s.ECCUncorrected = &v
		} else {
			fail("ECC uncorrected", ret)
		}
	} else {
		fail("ECC", ret)
	}
	return s, errs
}

// cString converts a NUL-terminated C char array.
func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// watchedEvents are the NVML events WatchEvents reports: the ones that mean
// a GPU needs attention.
const watchedEvents = nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError

// eventPollTimeout bounds each wait for an event, and so how long Close and
// a cancelled ctx wait for a watcher to notice.
const eventPollTimeout = time.Second

// Sampler reads the dynamic facts of the GPUs that answered when it was
// made, for telemetry, and streams their health events. It keeps NVML
// initialised until Close. Its methods are safe for concurrent use.
type Sampler struct {
	lib     NVML
	devices []sampledGPU // fixed by NewSampler
	stop    context.Context
	cancel  context.CancelFunc // ends every watcher

	mu     sync.RWMutex // guards the fields below; Sample holds it shared, so Close waits for samples in flight
	closed bool
	wg     sync.WaitGroup // counts watcher goroutines
}

type sampledGPU struct {
	index int
	uuid  string
	dev   nvmlDevice
}

// NewSampler initialises NVML and finds the GPUs to sample; lib nil means
// the system library. It fails with ErrNVMLUnavailable where NVML cannot be
// initialised. GPUs that do not answer are left out (the probe's warnings
// say which), and so are MIG instances, whose readings are their parent's.
func NewSampler(lib NVML) (*Sampler, error) {
	if lib == nil {
		lib = SystemNVML()
	}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("new sampler: %w: %w", ErrNVMLUnavailable, ret)
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		lib.Shutdown()
		return nil, fmt.Errorf("new sampler: device count: %w", ret)
	}
	s := &Sampler{lib: lib}
	for i := range n {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			continue
		}
		uuid, ret := h.GetUUID()
		if ret != nvml.SUCCESS {
			continue
		}
		s.devices = append(s.devices, sampledGPU{index: i, uuid: uuid, dev: h})
	}
	s.stop, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Sample reads every GPU once. It returns a sample for each GPU even when
// some reads fail; the error then joins the failures. Facts a GPU does not
// report are simply left out, with no error, as the probe already warned.
func (s *Sampler) Sample(ctx context.Context) ([]GPUSample, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("sample: %w", ErrClosed)
	}
	out := make([]GPUSample, 0, len(s.devices))
	var errs []error
	for _, d := range s.devices {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("sample: %w", err)
		}
		smp, derrs := readSample(d.index, d.uuid, d.dev)
		out = append(out, smp)
		for _, err := range derrs {
			if !errors.Is(err, nvml.ERROR_NOT_SUPPORTED) {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return out, fmt.Errorf("sample: %w", errors.Join(errs...))
	}
	return out, nil
}

// WatchEvents streams Xid and double-bit ECC events until ctx ends or the
// Sampler closes. Where NVML has no event support (no NVMLEvents, or no GPU
// that supports these events) the channel is closed at once; it also closes
// if NVML stops delivering events, such as when a GPU falls off the bus.
// The reader must drain the channel or cancel ctx.
func (s *Sampler) WatchEvents(ctx context.Context) <-chan GPUEvent {
	out := make(chan GPUEvent)
	s.mu.Lock()
	defer s.mu.Unlock()
	ev, ok := s.lib.(NVMLEvents)
	if s.closed || !ok {
		close(out)
		return out
	}
	set, ret := ev.EventSetCreate()
	if ret != nvml.SUCCESS {
		close(out)
		return out
	}
	registered := 0
	for _, d := range s.devices {
		supported, ret := d.dev.GetSupportedEventTypes()
		if ret != nvml.SUCCESS {
			continue
		}
		if mask := supported & watchedEvents; mask != 0 && d.dev.RegisterEvents(mask, set) == nvml.SUCCESS {
			registered++
		}
	}
	if registered == 0 {
		set.Free()
		close(out)
		return out
	}
	s.wg.Add(1)
	go s.watch(ctx, set, out)
	return out
}

func (s *Sampler) watch(ctx context.Context, set nvml.EventSet, out chan<- GPUEvent) {
	defer s.wg.Done()
	defer close(out)
	defer set.Free()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(s.stop, cancel)()

	for ctx.Err() == nil {
		data, ret := set.Wait(uint32(eventPollTimeout / time.Millisecond))
		switch ret {
		case nvml.SUCCESS:
		case nvml.ERROR_TIMEOUT:
			continue
		default:
			return
		}
		e := GPUEvent{Time: time.Now()}
		switch {
		case data.EventType&nvml.EventTypeXidCriticalError != 0:
			e.Kind, e.Xid = GPUEventXid, data.EventData
		case data.EventType&nvml.EventTypeDoubleBitEccError != 0:
			e.Kind = GPUEventDoubleBitECC
		default:
			continue
		}
		if data.Device != nil {
			e.UUID, _ = data.Device.GetUUID()
		}
		select {
		case out <- e:
		case <-ctx.Done():
			return
		}
	}
}

// Close stops every watcher, waits for them, and shuts NVML down. It is
// idempotent; it may wait up to a second for a watcher blocked in NVML.
func (s *Sampler) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cancel()
	s.wg.Wait()
	if ret := s.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("close sampler: %w", ret)
	}
	return nil
}
