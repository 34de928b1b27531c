//go:build cgo

package hwprobe

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// probeGPUs runs only the GPU prober against lib.
func probeGPUs(t *testing.T, lib NVML) *Inventory {
	t.Helper()
	inv, err := Probe(context.Background(), Options{Root: t.TempDir(), NVML: lib, Probers: []Prober{gpuProber{}}})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	return inv
}

func warningTexts(inv *Inventory) []string {
	var out []string
	for _, w := range inv.Warnings {
		out = append(out, w.String())
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func TestGPUProbeH100Server(t *testing.T) {
	lib := h100Server()
	inv := probeGPUs(t, lib)

	wantProbe := GPUProbe{Available: true, DriverVersion: "550.54.15", CUDADriverVersion: "12.4"}
	if inv.GPUProbe != wantProbe {
		t.Errorf("GPUProbe = %+v, want %+v", inv.GPUProbe, wantProbe)
	}
	if len(inv.GPUs) != 10 {
		t.Fatalf("got %d GPUs, want 8 GPUs and 2 MIG instances: %+v", len(inv.GPUs), inv.GPUs)
	}
	for i, g := range inv.GPUs[:8] {
		if g.Index != i || g.UUID != h100UUID(i) || g.Name != "NVIDIA H100 80GB HBM3" ||
			g.MemoryTotalBytes != 81559*mib || g.ComputeCapability != "9.0" || g.PowerLimitMilliwatts != 700000 ||
			g.ParentUUID != "" || g.PCIBusID == "" {
			t.Errorf("GPU %d = %+v", i, g)
		}
		wantMIG := MIGMode{Current: i == 3, Pending: i == 3}
		if g.MIG == nil || *g.MIG != wantMIG {
			t.Errorf("GPU %d MIG = %+v, want %+v", i, g.MIG, wantMIG)
		}
		want := GPUSample{Index: i, UUID: h100UUID(i), MemoryUsedBytes: ptr[uint64](512 * mib),
			PowerDrawMilliwatts: ptr(71000 + uint32(i)*1000), TemperatureC: ptr(30 + uint32(i)),
			UtilizationGPU: ptr(10 * uint32(i)), UtilizationMemory: ptr(5 * uint32(i)),
			SMClockMHz: ptr[uint32](1980), ThrottleReasons: ptr[uint64](1),
			ECCCorrected: ptr[uint64](0), ECCUncorrected: ptr[uint64](0)}
		if i == 3 {
			want.UtilizationGPU, want.UtilizationMemory = nil, nil
		}
		if !reflect.DeepEqual(g.Sample, &want) {
			t.Errorf("GPU %d sample = %s, want %s", i, jsonString(g.Sample), jsonString(want))
		}
	}
	if got := inv.GPUs[3].PCIBusID; got != "00000000:5D:00.0" {
		t.Errorf("GPU 3 PCI bus id = %q", got)
	}
	for j, m := range inv.GPUs[8:] {
		want := GPU{Index: 3, UUID: "MIG-5e2c0d17-7f4a-5b3c-9d1e-00000000000" + string(rune('1'+j)),
			Name: "NVIDIA H100 80GB HBM3 MIG 3g.40gb", MemoryTotalBytes: 40448 * mib,
			ComputeCapability: "9.0", ParentUUID: h100UUID(3)}
		if !reflect.DeepEqual(m, want) {
			t.Errorf("MIG instance %d = %+v, want %+v", j, m, want)
		}
	}
	if got, want := warningTexts(inv), []string{"gpu: GPU 3: utilization: ERROR_NOT_SUPPORTED"}; !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %q, want %q", got, want)
	}
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times, want 1", n)
	}

	// The whole inventory of the server, from files and NVML together.
	full, err := Probe(context.Background(), Options{Root: filepath.Join("testdata", "x86-server"), NVML: h100Server()})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := full.Summary(), "8× NVIDIA H100 80GB HBM3, 2× Intel Xeon Gold 5420+, 112 threads, 2.0 TiB RAM"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
}

func TestGPUProbeRTX4090(t *testing.T) {
	inv := probeGPUs(t, rtx4090())
	if !inv.GPUProbe.Available || inv.GPUProbe.CUDADriverVersion != "12.6" || inv.GPUProbe.DriverVersion != "560.35.03" {
		t.Errorf("GPUProbe = %+v", inv.GPUProbe)
	}
	if len(inv.GPUs) != 1 {
		t.Fatalf("GPUs = %+v", inv.GPUs)
	}
	g := inv.GPUs[0]
	if g.Name != "NVIDIA GeForce RTX 4090" || g.ComputeCapability != "8.9" || g.MemoryTotalBytes != 24564*mib || g.PCIBusID != "00000000:01:00.0" {
		t.Errorf("GPU = %+v", g)
	}
	if g.MIG != nil {
		t.Errorf("MIG = %+v, want nil for a GPU without MIG", g.MIG)
	}
	s := g.Sample
	if s.ECCCorrected != nil || s.ECCUncorrected != nil {
		t.Errorf("ECC counters present on a GPU without ECC: %s", jsonString(s))
	}
	if s.TemperatureC == nil || *s.TemperatureC != 41 || s.PowerDrawMilliwatts == nil || *s.PowerDrawMilliwatts != 31000 {
		t.Errorf("sample = %s", jsonString(s))
	}
	// One warning for ECC, not one per counter; none for MIG.
	if got, want := warningTexts(inv), []string{"gpu: GPU 0: ECC: ERROR_NOT_SUPPORTED"}; !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %q, want %q", got, want)
	}
}

func TestGPUProbeECCErrors(t *testing.T) {
	inv := probeGPUs(t, eccErrors())
	if len(inv.GPUs) != 1 || len(inv.Warnings) != 0 {
		t.Fatalf("GPUs = %+v, warnings = %v", inv.GPUs, inv.Warnings)
	}
	s := inv.GPUs[0].Sample
	if s.ECCCorrected == nil || *s.ECCCorrected != 1423 || s.ECCUncorrected == nil || *s.ECCUncorrected != 2 {
		t.Errorf("ECC = %s, want 1423 corrected, 2 uncorrected", jsonString(s))
	}
	if m := inv.GPUs[0].MIG; m == nil || m.Current || m.Pending {
		t.Errorf("MIG = %+v, want capable but off", m)
	}

	sampler, err := NewSampler(eccErrors())
	if err != nil {
		t.Fatal(err)
	}
	defer sampler.Close()
	samples, err := sampler.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 1 || *samples[0].ECCCorrected != 1423 || *samples[0].ECCUncorrected != 2 {
		t.Errorf("samples = %s", jsonString(samples))
	}
}

func TestGPUProbeInitFails(t *testing.T) {
	tests := []struct {
		name       string
		ret        nvml.Return
		wantReason string
		warns      bool // a broken driver warns; a missing one does not
	}{
		{"library not found", nvml.ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver (NVML init: ERROR_LIBRARY_NOT_FOUND)", false},
		{"driver not loaded", nvml.ERROR_DRIVER_NOT_LOADED, "no NVIDIA driver (NVML init: ERROR_DRIVER_NOT_LOADED)", false},
		{"version mismatch", nvml.ERROR_LIB_RM_VERSION_MISMATCH, "NVML init: ERROR_LIB_RM_VERSION_MISMATCH", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Only Init is filled in: any further call would panic.
			lib := &mock.Interface{InitFunc: func() nvml.Return { return tt.ret }}
			inv := probeGPUs(t, lib)
			if inv.GPUProbe.Available || inv.GPUProbe.Reason != tt.wantReason || len(inv.GPUs) != 0 {
				t.Errorf("GPUProbe = %+v, GPUs = %v; want unavailable with reason %q", inv.GPUProbe, inv.GPUs, tt.wantReason)
			}
			if got := len(inv.Warnings) > 0; got != tt.warns {
				t.Errorf("warnings = %v, want warnings: %v", inv.Warnings, tt.warns)
			}
			_, err := NewSampler(lib)
			if !errors.Is(err, ErrNVMLUnavailable) || !errors.Is(err, tt.ret) {
				t.Errorf("NewSampler = %v, want ErrNVMLUnavailable wrapping %v", err, tt.ret)
			}
		})
	}
	t.Run("profile", func(t *testing.T) {
		inv := probeGPUs(t, noLibrary())
		if inv.GPUProbe.Available || !strings.Contains(inv.GPUProbe.Reason, "ERROR_LIBRARY_NOT_FOUND") {
			t.Errorf("GPUProbe = %+v", inv.GPUProbe)
		}
	})
}

func TestGPUProbeTemperatureNotSupported(t *testing.T) {
	inv := probeGPUs(t, noTemperature())
	if len(inv.GPUs) != 1 {
		t.Fatalf("GPUs = %+v", inv.GPUs)
	}
	g := inv.GPUs[0]
	s := g.Sample
	if s.TemperatureC != nil {
		t.Errorf("TemperatureC = %d, want nil", *s.TemperatureC)
	}
	if g.Name != "NVIDIA L4" || g.MemoryTotalBytes == 0 || s.PowerDrawMilliwatts == nil || s.UtilizationGPU == nil || s.MemoryUsedBytes == nil || s.ECCCorrected == nil {
		t.Errorf("other fields missing: %+v, sample %s", g, jsonString(s))
	}
	if got, want := warningTexts(inv), []string{"gpu: GPU 0: temperature: ERROR_NOT_SUPPORTED"}; !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %q, want %q", got, want)
	}
	if b := jsonString(g); strings.Contains(b, "temperature") {
		t.Errorf("JSON has a temperature: %s", b)
	}

	// A Sampler leaves the field out too, without an error: the probe
	// already said the sensor is missing.
	sampler, err := NewSampler(noTemperature())
	if err != nil {
		t.Fatal(err)
	}
	defer sampler.Close()
	samples, err := sampler.Sample(context.Background())
	if err != nil || len(samples) != 1 || samples[0].TemperatureC != nil || samples[0].PowerDrawMilliwatts == nil {
		t.Errorf("Sample = %s, %v", jsonString(samples), err)
	}
}

// A GPU that does not answer is left out; the others are listed.
func TestGPUProbeDeviceErrors(t *testing.T) {
	good := newMockGPU(gpuSpec{name: "NVIDIA L40S", uuid: "GPU-good", ccMajor: 8, ccMinor: 9})
	noUUID := newMockGPU(gpuSpec{name: "NVIDIA L40S", uuid: "GPU-lost", fail: map[string]nvml.Return{"uuid": nvml.ERROR_UNKNOWN}})
	lib := newMockNVML("550.54.15", 12040, good, nil, noUUID)
	lib.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		switch i {
		case 0:
			return good, nvml.SUCCESS
		case 1:
			return nil, nvml.ERROR_GPU_IS_LOST
		default:
			return noUUID, nvml.SUCCESS
		}
	}
	inv := probeGPUs(t, lib)
	if !inv.GPUProbe.Available || len(inv.GPUs) != 1 || inv.GPUs[0].UUID != "GPU-good" {
		t.Errorf("GPUProbe = %+v, GPUs = %+v; want GPU-good only", inv.GPUProbe, inv.GPUs)
	}
	want := []string{
		"gpu: GPU 1: skipped: handle: ERROR_GPU_IS_LOST",
		"gpu: GPU 2: skipped: uuid: ERROR_UNKNOWN",
	}
	if got := warningTexts(inv); !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %q, want %q", got, want)
	}

	// Device count failing is the whole GPU probe failing, with a reason.
	lib.DeviceGetCountFunc = func() (int, nvml.Return) { return 0, nvml.ERROR_UNKNOWN }
	inv = probeGPUs(t, lib)
	if inv.GPUProbe.Available || inv.GPUProbe.Reason == "" || len(inv.Warnings) != 1 {
		t.Errorf("GPUProbe = %+v, warnings = %v", inv.GPUProbe, inv.Warnings)
	}
}

func TestSampler(t *testing.T) {
	lib := h100Server()
	s, err := NewSampler(lib)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := s.Sample(context.Background())
	if err != nil {
		t.Fatalf("Sample: %v", err) // GPU 3's missing utilization is not an error
	}
	if len(samples) != 8 {
		t.Fatalf("got %d samples, want one per physical GPU", len(samples))
	}
	for i, smp := range samples {
		if smp.Index != i || smp.UUID != h100UUID(i) || *smp.PowerDrawMilliwatts != 71000+uint32(i)*1000 {
			t.Errorf("sample %d = %s", i, jsonString(smp))
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Sample(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Sample(cancelled) = %v", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := len(lib.ShutdownCalls()); n != 1 {
		t.Errorf("Shutdown called %d times, want 1", n)
	}
	if _, err := s.Sample(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Sample after Close = %v, want ErrClosed", err)
	}
	if _, ok := <-s.WatchEvents(context.Background()); ok {
		t.Error("WatchEvents after Close delivered an event")
	}
}

// Reads that fail for a reason other than "not supported" are the
// Sampler's error, and the samples still come back.
func TestSamplerReadErrors(t *testing.T) {
	lib := newMockNVML("550.54.15", 12040,
		newMockGPU(gpuSpec{name: "NVIDIA L4", uuid: "GPU-ok"}),
		newMockGPU(gpuSpec{name: "NVIDIA L4", uuid: "GPU-flaky", fail: map[string]nvml.Return{"power": nvml.ERROR_UNKNOWN}}))
	s, err := NewSampler(lib)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	samples, err := s.Sample(context.Background())
	if !errors.Is(err, nvml.ERROR_UNKNOWN) || !strings.Contains(err.Error(), "GPU 1: power draw") {
		t.Errorf("Sample error = %v, want GPU 1's power draw failure", err)
	}
	if len(samples) != 2 || samples[1].PowerDrawMilliwatts != nil || samples[1].TemperatureC == nil {
		t.Errorf("samples = %s", jsonString(samples))
	}
}

// mockEventSet returns an event set whose Wait delivers what the test sends
// on events, and times out as NVML does when nothing comes.
func mockEventSet(events <-chan nvml.EventData) *mock.EventSet {
	return &mock.EventSet{
		WaitFunc: func(timeoutMs uint32) (nvml.EventData, nvml.Return) {
			select {
			case e := <-events:
				return e, nvml.SUCCESS
			case <-time.After(time.Duration(timeoutMs) * time.Millisecond):
				return nvml.EventData{}, nvml.ERROR_TIMEOUT
			}
		},
		FreeFunc: func() nvml.Return { return nvml.SUCCESS },
	}
}

func TestWatchEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lib := h100Server()
		events := make(chan nvml.EventData)
		set := mockEventSet(events)
		lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
		s, err := NewSampler(lib)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithCancel(t.Context())
		ch := s.WatchEvents(ctx)

		dev2, _ := lib.DeviceGetHandleByIndex(2)
		dev5, _ := lib.DeviceGetHandleByIndex(5)
		time.Sleep(3 * time.Second) // a few empty waits first
		events <- nvml.EventData{Device: dev5, EventType: nvml.EventTypeXidCriticalError, EventData: 79}
		if got := <-ch; got.Kind != GPUEventXid || got.Xid != 79 || got.UUID != h100UUID(5) || got.Time.IsZero() {
			t.Errorf("event = %+v, want Xid 79 on GPU 5", got)
		}
		events <- nvml.EventData{Device: dev2, EventType: nvml.EventTypeDoubleBitEccError}
		if got := <-ch; got.Kind != GPUEventDoubleBitECC || got.UUID != h100UUID(2) {
			t.Errorf("event = %+v, want double-bit ECC on GPU 2", got)
		}

		// Only the events that mean trouble were asked for.
		calls := dev2.(*mock.Device).RegisterEventsCalls()
		if len(calls) != 1 || calls[0].V != nvml.EventTypeXidCriticalError|nvml.EventTypeDoubleBitEccError {
			t.Errorf("RegisterEvents calls = %+v", calls)
		}

		cancel()
		for e := range ch {
			t.Errorf("event after cancel: %+v", e)
		}
		if n := len(set.FreeCalls()); n != 1 {
			t.Errorf("event set freed %d times, want 1", n)
		}
	})
}

// Close ends every watcher before it shuts NVML down.
func TestWatchEventsClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		lib := rtx4090()
		set := mockEventSet(make(chan nvml.EventData))
		var order []string
		set.FreeFunc = func() nvml.Return { order = append(order, "free"); return nvml.SUCCESS }
		lib.ShutdownFunc = func() nvml.Return { order = append(order, "shutdown"); return nvml.SUCCESS }
		lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
		s, err := NewSampler(lib)
		if err != nil {
			t.Fatal(err)
		}
		ch := s.WatchEvents(t.Context())
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, ok := <-ch; ok {
			t.Error("event after Close")
		}
		if got := strings.Join(order, ","); got != "free,shutdown" {
			t.Errorf("order = %s, want free,shutdown", got)
		}
	})
}

// Where events are not supported the channel is closed at once.
func TestWatchEventsUnsupported(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*mock.Interface) NVML
	}{
		{"event sets not supported", func(lib *mock.Interface) NVML { return lib }},
		{"handle without event sets", func(lib *mock.Interface) NVML { return struct{ NVML }{lib} }},
		{"no GPU supports the events", func(lib *mock.Interface) NVML {
			set := mockEventSet(nil)
			lib.EventSetCreateFunc = func() (nvml.EventSet, nvml.Return) { return set, nvml.SUCCESS }
			dev, _ := lib.DeviceGetHandleByIndex(0)
			dev.(*mock.Device).GetSupportedEventTypesFunc = func() (uint64, nvml.Return) {
				return nvml.EventTypePState, nvml.SUCCESS
			}
			return lib
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSampler(tt.setup(rtx4090()))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, ok := <-s.WatchEvents(t.Context()); ok {
				t.Error("got an event")
			}
		})
	}
}

// On this machine, NVML is whatever is installed: with no driver the
// Sampler reports ErrNVMLUnavailable rather than panicking.
func TestSystemNVML(t *testing.T) {
	s, err := NewSampler(nil)
	if err != nil {
		if !errors.Is(err, ErrNVMLUnavailable) {
			t.Fatalf("NewSampler = %v, want ErrNVMLUnavailable", err)
		}
		t.Logf("no NVML here: %v", err)
		return
	}
	defer s.Close()
	samples, err := s.Sample(context.Background())
	t.Logf("samples: %s, err: %v", jsonString(samples), err)
}

func jsonString(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
