//go:build cgo

package hwprobe

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
)

// The mocks stand in for exactly the calls this package makes.
var (
	_ NVML       = (*mock.Interface)(nil)
	_ NVMLEvents = (*mock.Interface)(nil)
	_ nvmlDevice = (*mock.Device)(nil)
)

const mib = 1 << 20

// gpuSpec describes a mock GPU. fail makes named reads return an error
// instead: "uuid", "memory", "power", "temperature", "utilization", "ecc".
type gpuSpec struct {
	name           string
	uuid           string
	busID          string
	memTotal       uint64
	memUsed        uint64
	ccMajor        int
	ccMinor        int
	powerLimit     uint32 // mW
	powerDraw      uint32 // mW
	temperature    uint32
	util           nvml.Utilization
	eccCorrected   uint64
	eccUncorrected uint64
	migCapable     bool
	mig            []migSpec // MIG mode is on when non-empty
	fail           map[string]nvml.Return
}

type migSpec struct {
	uuid, name string
	memTotal   uint64
}

// newMockGPU builds a mock device that answers every call this package
// makes; a call it does not expect panics, as go-nvml's mocks do.
func newMockGPU(s gpuSpec) *mock.Device {
	ret := func(call string) nvml.Return {
		if r, ok := s.fail[call]; ok {
			return r
		}
		return nvml.SUCCESS
	}
	var busID [32]int8
	for i, c := range []byte(s.busID) {
		busID[i] = int8(c)
	}
	migDevices := make([]nvml.Device, len(s.mig))
	for i, m := range s.mig {
		migDevices[i] = &mock.Device{
			GetUUIDFunc:       func() (string, nvml.Return) { return m.uuid, nvml.SUCCESS },
			GetNameFunc:       func() (string, nvml.Return) { return m.name, nvml.SUCCESS },
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) { return nvml.Memory{Total: m.memTotal}, nvml.SUCCESS },
		}
	}
	return &mock.Device{
		GetUUIDFunc:    func() (string, nvml.Return) { return s.uuid, ret("uuid") },
		GetNameFunc:    func() (string, nvml.Return) { return s.name, nvml.SUCCESS },
		GetPciInfoFunc: func() (nvml.PciInfo, nvml.Return) { return nvml.PciInfo{BusId: busID}, nvml.SUCCESS },
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			return nvml.Memory{Total: s.memTotal, Used: s.memUsed, Free: s.memTotal - s.memUsed}, ret("memory")
		},
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return s.ccMajor, s.ccMinor, nvml.SUCCESS },
		GetEnforcedPowerLimitFunc:    func() (uint32, nvml.Return) { return s.powerLimit, nvml.SUCCESS },
		GetPowerUsageFunc:            func() (uint32, nvml.Return) { return s.powerDraw, ret("power") },
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			return s.temperature, ret("temperature")
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return s.util, ret("utilization") },
		GetClockInfoFunc:        func(nvml.ClockType) (uint32, nvml.Return) { return 1980, nvml.SUCCESS },
		GetCurrentClocksThrottleReasonsFunc: func() (uint64, nvml.Return) {
			return nvml.ClocksThrottleReasonGpuIdle, nvml.SUCCESS
		},
		GetTotalEccErrorsFunc: func(t nvml.MemoryErrorType, _ nvml.EccCounterType) (uint64, nvml.Return) {
			if t == nvml.MEMORY_ERROR_TYPE_CORRECTED {
				return s.eccCorrected, ret("ecc")
			}
			return s.eccUncorrected, ret("ecc")
		},
		GetMigModeFunc: func() (int, int, nvml.Return) {
			if !s.migCapable {
				return 0, 0, nvml.ERROR_NOT_SUPPORTED
			}
			if len(s.mig) > 0 {
				return nvml.DEVICE_MIG_ENABLE, nvml.DEVICE_MIG_ENABLE, nvml.SUCCESS
			}
			return nvml.DEVICE_MIG_DISABLE, nvml.DEVICE_MIG_DISABLE, nvml.SUCCESS
		},
		GetMaxMigDeviceCountFunc: func() (int, nvml.Return) { return 7, nvml.SUCCESS },
		GetMigDeviceHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < len(migDevices) {
				return migDevices[i], nvml.SUCCESS
			}
			return nil, nvml.ERROR_NOT_FOUND
		},
		GetSupportedEventTypesFunc: func() (uint64, nvml.Return) {
			return nvml.EventTypeXidCriticalError | nvml.EventTypeDoubleBitEccError | nvml.EventTypeSingleBitEccError | nvml.EventTypePState, nvml.SUCCESS
		},
		RegisterEventsFunc: func(uint64, nvml.EventSet) nvml.Return { return nvml.SUCCESS },
	}
}

// newMockNVML builds an initialised-looking NVML with the given devices.
// Event sets are not supported unless a test sets EventSetCreateFunc.
func newMockNVML(driver string, cuda int, devices ...*mock.Device) *mock.Interface {
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return driver, nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return cuda, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devices), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devices) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devices[i], nvml.SUCCESS
		},
		EventSetCreateFunc: func() (nvml.EventSet, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED },
	}
}

// h100Server is an HGX H100 box: eight H100 80GB, GPU 3 in MIG mode split
// into two 3g.40gb instances. As on real hardware, a GPU in MIG mode does
// not report whole-GPU utilization.
func h100Server() *mock.Interface {
	busIDs := []string{"00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0",
		"00000000:9A:00.0", "00000000:AB:00.0", "00000000:BA:00.0", "00000000:DB:00.0"}
	var devs []*mock.Device
	for i, bus := range busIDs {
		s := gpuSpec{
			name: "NVIDIA H100 80GB HBM3", uuid: h100UUID(i), busID: bus,
			memTotal: 81559 * mib, memUsed: 512 * mib, ccMajor: 9, ccMinor: 0,
			powerLimit: 700000, powerDraw: 71000 + uint32(i)*1000, temperature: 30 + uint32(i),
			util: nvml.Utilization{Gpu: 10 * uint32(i), Memory: 5 * uint32(i)}, migCapable: true,
		}
		if i == 3 {
			s.mig = []migSpec{
				{uuid: "MIG-5e2c0d17-7f4a-5b3c-9d1e-000000000001", name: "NVIDIA H100 80GB HBM3 MIG 3g.40gb", memTotal: 40448 * mib},
				{uuid: "MIG-5e2c0d17-7f4a-5b3c-9d1e-000000000002", name: "NVIDIA H100 80GB HBM3 MIG 3g.40gb", memTotal: 40448 * mib},
			}
			s.fail = map[string]nvml.Return{"utilization": nvml.ERROR_NOT_SUPPORTED}
		}
		devs = append(devs, newMockGPU(s))
	}
	return newMockNVML("550.54.15", 12040, devs...)
}

func h100UUID(i int) string { return fmt.Sprintf("GPU-3f8a2b1c-4d5e-6f70-8192-a3b4c5d6e7%02d", i) }

// rtx4090 is a workstation with one consumer card: no MIG, no ECC.
func rtx4090() *mock.Interface {
	return newMockNVML("560.35.03", 12060, newMockGPU(gpuSpec{
		name: "NVIDIA GeForce RTX 4090", uuid: "GPU-0b9e8d7c-6a5b-4c3d-2e1f-0a9b8c7d6e5f", busID: "00000000:01:00.0",
		memTotal: 24564 * mib, memUsed: 1024 * mib, ccMajor: 8, ccMinor: 9,
		powerLimit: 450000, powerDraw: 31000, temperature: 41, util: nvml.Utilization{Gpu: 3, Memory: 1},
		fail: map[string]nvml.Return{"ecc": nvml.ERROR_NOT_SUPPORTED},
	}))
}

// eccErrors is an A100 whose memory has been logging errors.
func eccErrors() *mock.Interface {
	return newMockNVML("535.183.01", 12020, newMockGPU(gpuSpec{
		name: "NVIDIA A100-SXM4-80GB", uuid: "GPU-a100ecc0-0000-4000-8000-000000000000", busID: "00000000:07:00.0",
		memTotal: 81920 * mib, ccMajor: 8, ccMinor: 0, powerLimit: 400000, powerDraw: 60000, temperature: 35,
		eccCorrected: 1423, eccUncorrected: 2, migCapable: true,
	}))
}

// noLibrary is a machine without the NVIDIA driver. Only Init is filled
// in, so any further call would panic.
func noLibrary() *mock.Interface {
	return &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
}

// noTemperature is a GPU whose temperature sensor NVML cannot read.
func noTemperature() *mock.Interface {
	return newMockNVML("550.54.15", 12040, newMockGPU(gpuSpec{
		name: "NVIDIA L4", uuid: "GPU-14141414-1414-4141-8141-141414141414", busID: "00000000:82:00.0",
		memTotal: 23034 * mib, memUsed: 300 * mib, ccMajor: 8, ccMinor: 9, powerLimit: 72000, powerDraw: 16000,
		util: nvml.Utilization{Gpu: 7, Memory: 2},
		fail: map[string]nvml.Return{"temperature": nvml.ERROR_NOT_SUPPORTED},
	}))
}
