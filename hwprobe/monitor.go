package hwprobe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Condition kinds, as NodeCondition.kind spells them.
const (
	// ConditionGPUXid: the GPU reported an Xid that needs a GPU reset or a
	// reboot (see ResetXids). It lasts until the agent restarts, which a
	// reboot does; a reset without a reboot is cleared by an operator's
	// uncordon, and the agent's restart.
	ConditionGPUXid = "gpu_xid"
	// ConditionGPUECC: uncorrectable ECC errors since the driver loaded,
	// or NVML's double-bit ECC event.
	ConditionGPUECC = "gpu_ecc_uncorrectable"
	// ConditionGPUThermal: the GPU slowed its clocks for heat (or the
	// board's hardware slowdown) at every sample for MonitorOptions.ThermalSustain.
	ConditionGPUThermal = "gpu_thermal"
	// ConditionDiskPressure: the data volume's free space is below
	// MonitorOptions.DiskMinFreeBytes or DiskMinFreeRatio of its size.
	ConditionDiskPressure = "disk_pressure"
)

// ResetXids are the Xid codes that make a GPU unfit to serve until it is
// reset or the machine rebooted, after NVIDIA's Xid catalogue: 48 a
// double-bit ECC error; 63 and 64 a row remap (or page retirement) pending
// or failed, which takes effect only at the next reset; 74 an NVLink
// error; 79 the GPU fell off the bus; 92 a high single-bit ECC rate, which
// foretells a failing memory; 94 and 95 contained and uncontained ECC
// errors, whose row is remapped at the next reset. Other Xids (13 and 31,
// an application's bad access; 43, a stopped application) are the fault
// of the program and leave the GPU fit.
var ResetXids = map[uint64]string{
	48: "double-bit ECC error",
	63: "ECC page retirement or row remap pending",
	64: "ECC page retirement or row remap failed",
	74: "NVLink error",
	79: "GPU has fallen off the bus",
	92: "high single-bit ECC error rate",
	94: "contained ECC error",
	95: "uncontained ECC error",
}

// Throttle reason bits (NVML's nvmlClocksThrottleReason*) that count as
// thermal throttling: hardware slowdown (thermal or power brake), software
// and hardware thermal slowdown.
const (
	throttleHWSlowdown        = 0x8
	throttleSWThermalSlowdown = 0x20
	throttleHWThermalSlowdown = 0x40
	thermalThrottleMask       = throttleHWSlowdown | throttleSWThermalSlowdown | throttleHWThermalSlowdown
)

// MonitorOptions configure a Monitor. Zero fields take the defaults.
type MonitorOptions struct {
	// Root stands for "/" when reading /proc; "" means "/".
	Root string
	// DataDir is the volume whose free space is watched; "" skips disk.
	DataDir string
	// GPUs samples GPUs; nil for a machine without NVML.
	GPUs GPUSampler
	// Interval between samples; default 5 s.
	Interval time.Duration
	// ThermalSustain is how long thermal throttle bits must be seen at
	// every sample to raise gpu_thermal; default 1 minute.
	ThermalSustain time.Duration
	// Disk pressure thresholds; defaults 1 GiB and 0.05. Either one
	// raises disk_pressure.
	DiskMinFreeBytes uint64
	DiskMinFreeRatio float64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// maxSamples bounds the samples a Monitor keeps for windows not yet taken:
// an hour at the default interval.
const maxSamples = 720

// Monitor samples a node's CPU, memory, data volume and GPUs, keeps the
// samples for telemetry windows, and derives the node's conditions. Its
// methods are safe for concurrent use.
type Monitor struct {
	opts MonitorOptions
	fsys fs.FS

	mu       sync.Mutex // guards the fields below
	samples  []nodeSample
	xids     []*droverv1.XidEvent
	prevCPU  cpuTimes
	memTotal uint64
	diskSize uint64
	gpuModel map[string]string
	eccSeen  map[string]uint64 // uncorrected count at the last sample, per GPU
	conds    map[condKey]*droverv1.NodeCondition
	hotSince map[string]time.Time // first sample of an unbroken run of thermal throttling, per GPU
}

type condKey struct{ kind, gpu string }

type nodeSample struct {
	at       time.Time
	cpu      float64 // -1 when unknown (first sample)
	memUsed  uint64
	diskFree uint64
	haveMem  bool
	haveDisk bool
	gpus     []gpuReading
}

type gpuReading struct {
	uuid                              string
	util, temp, power, clock, memUsed *float64
	throttle                          uint64
	eccCorrDelta, eccUncorrDelta      uint64
}

type cpuTimes struct{ busy, total uint64 }

// NewMonitor returns a Monitor; it samples nothing until Run or Sample.
func NewMonitor(opts MonitorOptions) *Monitor {
	if opts.Root == "" {
		opts.Root = "/"
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.ThermalSustain <= 0 {
		opts.ThermalSustain = time.Minute
	}
	if opts.DiskMinFreeBytes == 0 {
		opts.DiskMinFreeBytes = 1 << 30
	}
	if opts.DiskMinFreeRatio == 0 {
		opts.DiskMinFreeRatio = 0.05
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Monitor{
		opts:     opts,
		fsys:     os.DirFS(opts.Root),
		gpuModel: map[string]string{},
		eccSeen:  map[string]uint64{},
		conds:    map[condKey]*droverv1.NodeCondition{},
		hotSince: map[string]time.Time{},
	}
}

// Run samples every Interval and records GPU events until ctx ends. It
// returns nil then; it never fails, as a read that fails leaves its fact
// out of that sample.
func (m *Monitor) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	if w, ok := m.opts.GPUs.(GPUEventWatcher); ok {
		events := w.WatchEvents(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range events {
				m.Record(e)
			}
		}()
	}
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		m.Sample(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sample takes one sample now and updates the conditions.
func (m *Monitor) Sample(ctx context.Context) {
	now := m.opts.Now()
	cpu, cpuErr := readCPUTimes(m.fsys)
	memTotal, memAvail, memErr := readMeminfo(m.fsys)
	var disk diskUsage
	diskErr := errors.New("no data directory")
	if m.opts.DataDir != "" {
		disk, diskErr = statfs(m.opts.DataDir)
	}
	var gpus []GPUSample
	if m.opts.GPUs != nil {
		// A failed read leaves its field nil; the probe warns about it.
		gpus, _ = m.opts.GPUs.Sample(ctx)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	s := nodeSample{at: now, cpu: -1}
	if cpuErr == nil {
		if m.prevCPU.total != 0 && cpu.total > m.prevCPU.total && cpu.busy >= m.prevCPU.busy {
			s.cpu = float64(cpu.busy-m.prevCPU.busy) / float64(cpu.total-m.prevCPU.total)
		}
		m.prevCPU = cpu
	}
	if memErr == nil {
		m.memTotal = memTotal
		s.memUsed, s.haveMem = memTotal-min(memAvail, memTotal), true
	}
	if diskErr == nil {
		m.diskSize = disk.TotalBytes
		s.diskFree, s.haveDisk = disk.FreeBytes, true
		m.diskCondition(now, disk)
	}
	for _, g := range gpus {
		s.gpus = append(s.gpus, m.gpuReading(now, g))
	}
	m.samples = append(m.samples, s)
	if n := len(m.samples); n > maxSamples {
		m.samples = slices.Delete(m.samples, 0, n-maxSamples)
	}
}

func f64[T uint32 | uint64](p *T) *float64 {
	if p == nil {
		return nil
	}
	v := float64(*p)
	return &v
}

// gpuReading turns a GPU sample into a reading and updates the GPU's
// conditions; m.mu is held.
func (m *Monitor) gpuReading(now time.Time, g GPUSample) gpuReading {
	r := gpuReading{
		uuid: g.UUID, util: f64(g.UtilizationGPU), temp: f64(g.TemperatureC),
		clock: f64(g.SMClockMHz), memUsed: f64(g.MemoryUsedBytes),
	}
	if g.PowerDrawMilliwatts != nil {
		w := float64(*g.PowerDrawMilliwatts) / 1000
		r.power = &w
	}
	if g.ThrottleReasons != nil {
		r.throttle = *g.ThrottleReasons
		if r.throttle&thermalThrottleMask != 0 {
			first, ok := m.hotSince[g.UUID]
			if !ok {
				first = now
				m.hotSince[g.UUID] = now
			}
			if now.Sub(first) >= m.opts.ThermalSustain {
				m.raise(ConditionGPUThermal, g.UUID, first,
					fmt.Sprintf("clocks slowed for heat since %s (throttle reasons %#x)", first.UTC().Format(time.RFC3339), r.throttle), false)
			}
		} else {
			delete(m.hotSince, g.UUID)
			delete(m.conds, condKey{ConditionGPUThermal, g.UUID})
		}
	}
	if g.ECCUncorrected != nil {
		prev, seen := m.eccSeen[g.UUID]
		cur := *g.ECCUncorrected
		switch {
		case !seen:
			r.eccUncorrDelta = 0 // counted before this agent started: not this window's
		case cur >= prev:
			r.eccUncorrDelta = cur - prev
		default:
			r.eccUncorrDelta = cur // the driver reloaded and the counter restarted
		}
		m.eccSeen[g.UUID] = cur
		if cur > 0 && (!seen || cur > prev) {
			// Growth is a new occurrence; a count that stays is the same one.
			m.raise(ConditionGPUECC, g.UUID, now, fmt.Sprintf("%d uncorrectable ECC errors since the driver loaded", cur), true)
		} else if cur == 0 {
			delete(m.conds, condKey{ConditionGPUECC, g.UUID})
		}
	}
	if g.ECCCorrected != nil {
		key := g.UUID + "/corrected"
		prev, seen := m.eccSeen[key]
		if seen && *g.ECCCorrected >= prev {
			r.eccCorrDelta = *g.ECCCorrected - prev
		} else if seen {
			r.eccCorrDelta = *g.ECCCorrected
		}
		m.eccSeen[key] = *g.ECCCorrected
	}
	return r
}

// diskCondition raises or clears disk_pressure; m.mu is held.
func (m *Monitor) diskCondition(now time.Time, d diskUsage) {
	low := d.FreeBytes < m.opts.DiskMinFreeBytes ||
		(d.TotalBytes > 0 && float64(d.FreeBytes) < m.opts.DiskMinFreeRatio*float64(d.TotalBytes))
	if !low {
		delete(m.conds, condKey{ConditionDiskPressure, ""})
		return
	}
	m.raise(ConditionDiskPressure, "", now,
		fmt.Sprintf("%s free of %s on %s", formatBytes(d.FreeBytes), formatBytes(d.TotalBytes), m.opts.DataDir), false)
}

// raise records a condition. An existing one keeps its since unless renew
// says this is a new occurrence; its detail is refreshed. m.mu is held.
func (m *Monitor) raise(kind, gpu string, since time.Time, detail string, renew bool) {
	k := condKey{kind, gpu}
	if c, ok := m.conds[k]; ok && !renew {
		c.Detail = detail
		return
	}
	m.conds[k] = &droverv1.NodeCondition{Kind: kind, GpuUuid: gpu, Since: timestamppb.New(since), Detail: detail}
}

// Record takes a GPU event: every Xid is kept for the window it falls in,
// and one of ResetXids, or a double-bit ECC event, raises a condition as a
// new occurrence.
func (m *Monitor) Record(e GPUEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch e.Kind {
	case GPUEventXid:
		m.xids = append(m.xids, &droverv1.XidEvent{GpuUuid: e.UUID, Xid: e.Xid, At: timestamppb.New(e.Time)})
		if n := len(m.xids); n > maxSamples {
			m.xids = slices.Delete(m.xids, 0, n-maxSamples)
		}
		if what, ok := ResetXids[e.Xid]; ok {
			m.raise(ConditionGPUXid, e.UUID, e.Time, fmt.Sprintf("Xid %d: %s", e.Xid, what), true)
		}
	case GPUEventDoubleBitECC:
		m.raise(ConditionGPUECC, e.UUID, e.Time, "double-bit ECC error event", true)
	}
}

// Conditions are the node's current conditions, sorted by kind then GPU.
func (m *Monitor) Conditions() []*droverv1.NodeCondition {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*droverv1.NodeCondition, 0, len(m.conds))
	for _, c := range m.conds {
		out = append(out, &droverv1.NodeCondition{Kind: c.Kind, GpuUuid: c.GpuUuid, Since: c.Since, Detail: c.Detail})
	}
	SortConditions(out)
	return out
}

// SortConditions sorts conditions by kind then GPU, the order heartbeats
// and nodes carry them in.
func SortConditions(cs []*droverv1.NodeCondition) {
	slices.SortFunc(cs, func(a, b *droverv1.NodeCondition) int {
		if c := strings.Compare(a.GetKind(), b.GetKind()); c != 0 {
			return c
		}
		return strings.Compare(a.GetGpuUuid(), b.GetGpuUuid())
	})
}

// Window summarises the samples and Xid events in [start, end) and then
// forgets everything before end, so each sample is counted in one window.
// It returns nil when no sample fell in the window.
func (m *Monitor) Window(start, end time.Time) *droverv1.NodeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := func(t time.Time) bool { return !t.Before(start) && t.Before(end) }
	cpu, mem, disk := sketch.NewNumeric(), sketch.NewNumeric(), sketch.NewNumeric()
	type gpuAcc struct {
		out                           *droverv1.GPUMetrics
		util, mem, temp, power, clock *sketch.Numeric
	}
	gpus := map[string]*gpuAcc{}
	var order []string
	n := 0
	add := func(s *sketch.Numeric, v *float64) {
		if v != nil {
			_ = s.Add(*v) // finite readings only; a NaN is dropped
		}
	}
	for _, s := range m.samples {
		if !in(s.at) {
			continue
		}
		n++
		if s.cpu >= 0 {
			_ = cpu.Add(s.cpu)
		}
		if s.haveMem {
			_ = mem.Add(float64(s.memUsed))
		}
		if s.haveDisk {
			_ = disk.Add(float64(s.diskFree))
		}
		for _, g := range s.gpus {
			a := gpus[g.uuid]
			if a == nil {
				a = &gpuAcc{
					out:  &droverv1.GPUMetrics{Uuid: g.uuid, Model: m.gpuModel[g.uuid]},
					util: sketch.NewNumeric(), mem: sketch.NewNumeric(), temp: sketch.NewNumeric(),
					power: sketch.NewNumeric(), clock: sketch.NewNumeric(),
				}
				gpus[g.uuid] = a
				order = append(order, g.uuid)
			}
			add(a.util, g.util)
			add(a.mem, g.memUsed)
			add(a.temp, g.temp)
			add(a.power, g.power)
			add(a.clock, g.clock)
			a.out.ThrottleReasons |= g.throttle
			a.out.EccCorrected += g.eccCorrDelta
			a.out.EccUncorrected += g.eccUncorrDelta
		}
	}
	var xids []*droverv1.XidEvent
	for _, x := range m.xids {
		if in(x.GetAt().AsTime()) {
			xids = append(xids, x)
		}
	}
	m.samples = slices.DeleteFunc(m.samples, func(s nodeSample) bool { return s.at.Before(end) })
	m.xids = slices.DeleteFunc(m.xids, func(x *droverv1.XidEvent) bool { return x.GetAt().AsTime().Before(end) })
	if n == 0 && len(xids) == 0 {
		return nil
	}
	out := &droverv1.NodeMetrics{
		CpuUtilization: cpu.ToProto(), MemoryUsedBytes: mem.ToProto(), MemoryTotalBytes: m.memTotal,
		DiskFreeBytes: disk.ToProto(), DiskTotalBytes: m.diskSize,
	}
	for _, x := range xids {
		if _, ok := gpus[x.GetGpuUuid()]; !ok {
			gpus[x.GetGpuUuid()] = &gpuAcc{out: &droverv1.GPUMetrics{Uuid: x.GetGpuUuid(), Model: m.gpuModel[x.GetGpuUuid()]}}
			order = append(order, x.GetGpuUuid())
		}
		a := gpus[x.GetGpuUuid()]
		a.out.XidEvents = append(a.out.XidEvents, x)
	}
	slices.Sort(order)
	for _, u := range order {
		a := gpus[u]
		if a.util != nil {
			a.out.UtilizationPercent, a.out.MemoryUsedBytes = a.util.ToProto(), a.mem.ToProto()
			a.out.TemperatureCelsius, a.out.PowerWatts, a.out.SmClockMhz = a.temp.ToProto(), a.power.ToProto(), a.clock.ToProto()
		}
		out.Gpus = append(out.Gpus, a.out)
	}
	return out
}

// SetGPUModels names the GPUs' models for windows, by UUID, from the
// probe's inventory.
func (m *Monitor) SetGPUModels(inv *Inventory) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, g := range inv.GPUs {
		m.gpuModel[g.UUID] = g.Name
	}
}

// readCPUTimes reads the all-CPU line of /proc/stat: busy is every jiffy
// but idle and iowait.
func readCPUTimes(fsys fs.FS) (cpuTimes, error) {
	b, err := fs.ReadFile(fsys, "proc/stat")
	if err != nil {
		return cpuTimes{}, fmt.Errorf("cpu times: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 5 || f[0] != "cpu" {
		return cpuTimes{}, fmt.Errorf("cpu times: /proc/stat does not start with the cpu line")
	}
	var t cpuTimes
	// user nice system idle iowait irq softirq steal; guest time is
	// already counted in user and nice.
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTimes{}, fmt.Errorf("cpu times: field %d: %w", i+1, err)
		}
		t.total += v
		if i != 3 && i != 4 {
			t.busy += v
		}
	}
	return t, nil
}

// readMeminfo reads MemTotal and MemAvailable in bytes.
func readMeminfo(fsys fs.FS) (total, avail uint64, err error) {
	f, err := fsys.Open("proc/meminfo")
	if err != nil {
		return 0, 0, fmt.Errorf("meminfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "MemTotal" && key != "MemAvailable") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("meminfo %s: %w", key, err)
		}
		if key == "MemTotal" {
			total = kb * 1024
		} else {
			avail = kb * 1024
		}
	}
	if total == 0 {
		return 0, 0, fmt.Errorf("meminfo: no MemTotal in %s", filepath.Join("proc", "meminfo"))
	}
	return total, avail, sc.Err()
}

// formatBytes writes a size in binary units for details.
func formatBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
