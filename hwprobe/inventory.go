package hwprobe

import (
	"fmt"
	"strings"
	"time"

	"github.com/droverhq/drover/internal/units"
)

// Inventory is everything the probers found. It is plain data with JSON
// tags, kept flat and free of interfaces so that mapping it onto the wire
// protobuf is field by field. Zero values mean "not found"; a reading that
// can legitimately be zero but was not read is a nil pointer.
type Inventory struct {
	Host      Host            `json:"host"`
	CPU       CPU             `json:"cpu"`
	Memory    Memory          `json:"memory"`
	Disks     []Disk          `json:"disks,omitempty"`
	Container ContainerLimits `json:"container"`
	Board     *Board          `json:"board,omitempty"`
	GPUProbe  GPUProbe        `json:"gpu_probe"`
	// GPUs lists physical GPUs and, after them, the MIG instances of GPUs
	// in MIG mode, each with ParentUUID set: a MIG instance is what a
	// workload is placed on, so it is listed as a device of its own.
	GPUs     []GPU     `json:"gpus,omitempty"`
	Warnings []Warning `json:"warnings,omitempty"`
}

// Host identifies the machine and its operating system.
type Host struct {
	Hostname  string `json:"hostname"`
	OS        string `json:"os"` // PRETTY_NAME from os-release
	OSID      string `json:"os_id,omitempty"`
	OSVersion string `json:"os_version,omitempty"`
	Kernel    string `json:"kernel"`
	// Arch is the agent binary's GOARCH, which is what runtime builds and
	// model formats are chosen by.
	Arch   string `json:"arch"`
	BootID string `json:"boot_id,omitempty"`
}

// CPU describes the processors as the kernel sees them, before any
// container limit (see Inventory.EffectiveCPUs).
type CPU struct {
	Model   string  `json:"model"`
	Vendor  string  `json:"vendor,omitempty"`
	Sockets int     `json:"sockets"`
	Cores   int     `json:"cores"`
	Threads int     `json:"threads"`
	MHz     float64 `json:"mhz,omitempty"` // maximum frequency where known
	// Flags holds only the instruction-set extensions that inference
	// runtimes pick kernels by, sorted.
	Flags []string `json:"flags,omitempty"`
}

// Memory is system memory, before any container limit (see
// Inventory.EffectiveMemory).
type Memory struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// Disk is the filesystem that holds a directory the agent writes to.
type Disk struct {
	Path       string `json:"path"`
	MountPoint string `json:"mount_point,omitempty"`
	FSType     string `json:"fs_type,omitempty"`
	TotalBytes uint64 `json:"total_bytes"`
	FreeBytes  uint64 `json:"free_bytes"` // available to unprivileged users
}

// ContainerLimits are the cgroup v2 limits on the agent's own cgroup and its
// ancestors: a container's, or a systemd unit's. Zero means unlimited.
type ContainerLimits struct {
	CgroupVersion  int     `json:"cgroup_version,omitempty"`
	CgroupPath     string  `json:"cgroup_path,omitempty"`
	CPUQuota       float64 `json:"cpu_quota,omitempty"` // in CPUs, from cpu.max
	CPUSetCPUs     int     `json:"cpuset_cpus,omitempty"`
	MemoryMaxBytes uint64  `json:"memory_max_bytes,omitempty"`
}

// Board is an edge board identified by its device tree.
type Board struct {
	Model      string   `json:"model"`
	Compatible []string `json:"compatible,omitempty"`
	Family     string   `json:"family,omitempty"` // "jetson", "raspberry-pi"
	// L4TRelease is the Jetson Linux release ("36.3.0"), which decides
	// which CUDA and TensorRT builds run on the board.
	L4TRelease string `json:"l4t_release,omitempty"`
}

// Board families.
const (
	FamilyJetson      = "jetson"
	FamilyRaspberryPi = "raspberry-pi"
)

// GPUProbe says whether GPUs could be looked for, and if not, why.
type GPUProbe struct {
	// Available means NVML initialised and listed devices (possibly none).
	Available         bool   `json:"available"`
	Reason            string `json:"reason,omitempty"`
	DriverVersion     string `json:"driver_version,omitempty"`
	CUDADriverVersion string `json:"cuda_driver_version,omitempty"` // "12.4"
}

// GPU is one NVIDIA GPU or MIG instance: the facts that do not change while
// the driver is loaded, plus the readings taken when it was probed.
type GPU struct {
	Index                int    `json:"index"` // the parent's index for a MIG instance
	UUID                 string `json:"uuid"`
	Name                 string `json:"name"`
	PCIBusID             string `json:"pci_bus_id,omitempty"`
	MemoryTotalBytes     uint64 `json:"memory_total_bytes"`
	ComputeCapability    string `json:"compute_capability,omitempty"` // "9.0"
	PowerLimitMilliwatts uint32 `json:"power_limit_mw,omitempty"`
	// MIG is nil for a GPU without MIG support.
	MIG *MIGMode `json:"mig,omitempty"`
	// ParentUUID is set on MIG instances only.
	ParentUUID string `json:"parent_uuid,omitempty"`
	// Sample holds the dynamic readings taken during the probe; nil for
	// MIG instances, whose readings belong to the parent.
	Sample *GPUSample `json:"sample,omitempty"`
}

// MIGMode is a GPU's MIG mode; Pending differs from Current until the GPU is
// reset.
type MIGMode struct {
	Current bool `json:"current"`
	Pending bool `json:"pending"`
}

// GPUSample is one reading of a GPU's dynamic facts. A nil field was not
// read: the GPU does not report it or the read failed.
type GPUSample struct {
	Index               int     `json:"index"`
	UUID                string  `json:"uuid"`
	MemoryUsedBytes     *uint64 `json:"memory_used_bytes,omitempty"`
	PowerDrawMilliwatts *uint32 `json:"power_draw_mw,omitempty"`
	TemperatureC        *uint32 `json:"temperature_c,omitempty"`
	UtilizationGPU      *uint32 `json:"utilization_gpu_pct,omitempty"`
	UtilizationMemory   *uint32 `json:"utilization_memory_pct,omitempty"`
	SMClockMHz          *uint32 `json:"sm_clock_mhz,omitempty"`
	// NVML's clock throttle reason bits (nvml.ClocksThrottleReason*).
	ThrottleReasons *uint64 `json:"throttle_reasons,omitempty"`
	// ECC error counts since the driver last loaded (NVML's volatile
	// counters).
	ECCCorrected   *uint64 `json:"ecc_corrected,omitempty"`
	ECCUncorrected *uint64 `json:"ecc_uncorrected,omitempty"`
}

// GPUEventKind names a kind of GPU health event.
type GPUEventKind string

// GPU event kinds.
const (
	// GPUEventXid is an Xid critical error; GPUEvent.Xid holds its code.
	GPUEventXid GPUEventKind = "xid"
	// GPUEventDoubleBitECC is an uncorrectable memory error.
	GPUEventDoubleBitECC GPUEventKind = "double_bit_ecc"
)

// GPUEvent is a GPU health event reported by the driver.
type GPUEvent struct {
	Time time.Time    `json:"time"`
	UUID string       `json:"uuid"`
	Kind GPUEventKind `json:"kind"`
	Xid  uint64       `json:"xid,omitempty"`
}

// Warning is something a prober could not read, and why.
type Warning struct {
	Probe   string `json:"probe"`
	Message string `json:"message"`
}

func (w Warning) String() string { return w.Probe + ": " + w.Message }

// AddWarning records that prober probe could not read something.
func (inv *Inventory) AddWarning(probe string, err error) {
	inv.Warnings = append(inv.Warnings, Warning{Probe: probe, Message: err.Error()})
}

// EffectiveCPUs is how many CPUs the agent can actually use: the CPU
// threads, cut down by the cgroup's cpuset and CPU quota.
func (inv *Inventory) EffectiveCPUs() float64 {
	n := float64(inv.CPU.Threads)
	for _, limit := range []float64{float64(inv.Container.CPUSetCPUs), inv.Container.CPUQuota} {
		if limit > 0 && (n == 0 || limit < n) {
			n = limit
		}
	}
	return n
}

// EffectiveMemory is how much memory the agent can actually use: system
// memory, cut down by the cgroup's memory.max.
func (inv *Inventory) EffectiveMemory() uint64 {
	n := inv.Memory.TotalBytes
	if m := inv.Container.MemoryMaxBytes; m > 0 && (n == 0 || m < n) {
		n = m
	}
	return n
}

// Summary is a one-line description for table output, such as
// "8× NVIDIA H100 80GB HBM3, 2× Intel Xeon Gold 5420+, 112 threads, 2.0 TiB RAM".
func (inv *Inventory) Summary() string {
	var parts []string
	if b := inv.Board; b != nil && b.Model != "" {
		s := b.Model
		if b.L4TRelease != "" {
			s += " (L4T " + b.L4TRelease + ")"
		}
		parts = append(parts, s)
	}
	parts = append(parts, gpuGroups(inv.GPUs)...)
	if m := shortCPUModel(inv.CPU.Model); m != "" {
		if inv.CPU.Sockets > 1 {
			m = fmt.Sprintf("%d× %s", inv.CPU.Sockets, m)
		}
		parts = append(parts, m)
	}
	if inv.CPU.Threads > 0 {
		parts = append(parts, fmt.Sprintf("%d threads", inv.CPU.Threads))
	}
	if inv.Memory.TotalBytes > 0 {
		parts = append(parts, units.Bytes(inv.Memory.TotalBytes)+" RAM")
	}
	var limits []string
	if c := inv.EffectiveCPUs(); c > 0 && c < float64(inv.CPU.Threads) {
		limits = append(limits, fmt.Sprintf("%g CPUs", c))
	}
	if m := inv.EffectiveMemory(); m > 0 && m < inv.Memory.TotalBytes {
		limits = append(limits, units.Bytes(m))
	}
	if len(limits) > 0 {
		parts = append(parts, "limited to "+strings.Join(limits, " and "))
	}
	return strings.Join(parts, ", ")
}

// gpuGroups counts physical GPUs by name, in order of first appearance.
func gpuGroups(gpus []GPU) []string {
	var names []string
	count := map[string]int{}
	for _, g := range gpus {
		if g.ParentUUID != "" {
			continue
		}
		if count[g.Name] == 0 {
			names = append(names, g.Name)
		}
		count[g.Name]++
	}
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = fmt.Sprintf("%d× %s", count[n], n)
	}
	return out
}

// shortCPUModel drops the trademark marks and clock suffix that make x86
// model names too long for a table.
func shortCPUModel(m string) string {
	if i := strings.Index(m, " @ "); i >= 0 {
		m = m[:i]
	}
	m = strings.NewReplacer("(R)", "", "(TM)", "", "(tm)", "", " CPU", "").Replace(m)
	return strings.Join(strings.Fields(m), " ")
}
