package sketch

import (
	"errors"
	"fmt"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// MaxXidEventsPerGPU bounds the Xid events a merged GPU keeps; the rest
// are counted in XidDropped. A GPU in trouble reports a few; a flood of
// them is one condition, not a record worth unbounded memory.
const MaxXidEventsPerGPU = 256

// MaxGPUsPerNode bounds the GPUs a node metrics window may describe.
const MaxGPUsPerNode = 64

// checkNodeMetrics checks a node metrics window from the wire: every
// sketch present decodes, GPUs and their events are bounded.
func checkNodeMetrics(pb *droverv1.NodeMetrics) error {
	check := func(what string, s *droverv1.NumericSketch) error {
		if s == nil {
			return nil
		}
		if err := checkNumeric(s); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	}
	if err := errors.Join(check("cpu utilization", pb.CpuUtilization), check("memory used", pb.MemoryUsedBytes), check("disk free", pb.DiskFreeBytes)); err != nil {
		return err
	}
	if len(pb.Gpus) > MaxGPUsPerNode {
		return fmt.Errorf("%d GPUs, more than %d: %w", len(pb.Gpus), MaxGPUsPerNode, ErrInvalid)
	}
	for i, g := range pb.Gpus {
		if g.Uuid == "" || len(g.Uuid) > MaxLabelBytes || len(g.Model) > MaxLabelBytes {
			return fmt.Errorf("GPU %d: uuid of %d bytes and model of %d: want 1..%d and at most %d: %w", i, len(g.Uuid), len(g.Model), MaxLabelBytes, MaxLabelBytes, ErrInvalid)
		}
		if len(g.XidEvents) > MaxXidEventsPerGPU {
			return fmt.Errorf("GPU %s: %d Xid events, more than %d: %w", g.Uuid, len(g.XidEvents), MaxXidEventsPerGPU, ErrInvalid)
		}
		if err := errors.Join(check("utilization", g.UtilizationPercent), check("memory used", g.MemoryUsedBytes),
			check("temperature", g.TemperatureCelsius), check("power", g.PowerWatts), check("SM clock", g.SmClockMhz)); err != nil {
			return fmt.Errorf("GPU %s: %w", g.Uuid, err)
		}
	}
	return nil
}

// NodeMetrics merges nodes' metrics windows (droverv1.NodeMetrics): the
// numeric samples' sketches merge, GPUs are matched by UUID, ECC counts
// add up, throttle reasons are ORed and Xid events are kept up to a bound.
// Totals (memory, disk) keep the largest seen: a merge over several
// windows of one node must not multiply them.
type NodeMetrics struct {
	cpu, mem, disk      *Numeric
	memTotal, diskTotal uint64
	gpus                map[string]*droverv1.GPUMetrics
	gpuSketches         map[string]*gpuSketches
	order               []string
	XidDropped          uint64
}

type gpuSketches struct{ util, mem, temp, power, clock *Numeric }

// NewNodeMetrics returns an empty merge.
func NewNodeMetrics() *NodeMetrics {
	return &NodeMetrics{cpu: NewNumeric(), mem: NewNumeric(), disk: NewNumeric(),
		gpus: map[string]*droverv1.GPUMetrics{}, gpuSketches: map[string]*gpuSketches{}}
}

// mergeOptional merges pb into n when it holds values; a window without
// a sample of one metric leaves it unset.
func mergeOptional(n *Numeric, pb *droverv1.NumericSketch, what string) error {
	if pb.GetCount() == 0 {
		return nil
	}
	if err := n.MergeProto(pb); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// MergeProto merges one window's (or one merge's) node metrics into n. On
// an error n may hold part of pb.
func (n *NodeMetrics) MergeProto(pb *droverv1.NodeMetrics) error {
	if pb == nil {
		return nil
	}
	for _, m := range []struct {
		dst  *Numeric
		src  *droverv1.NumericSketch
		what string
	}{{n.cpu, pb.GetCpuUtilization(), "cpu utilization"}, {n.mem, pb.GetMemoryUsedBytes(), "memory used"}, {n.disk, pb.GetDiskFreeBytes(), "disk free"}} {
		if err := mergeOptional(m.dst, m.src, m.what); err != nil {
			return err
		}
	}
	n.memTotal = max(n.memTotal, pb.GetMemoryTotalBytes())
	n.diskTotal = max(n.diskTotal, pb.GetDiskTotalBytes())
	for _, g := range pb.GetGpus() {
		cur, ok := n.gpus[g.GetUuid()]
		if !ok {
			cur = &droverv1.GPUMetrics{Uuid: g.GetUuid(), Model: g.GetModel()}
			n.gpus[g.GetUuid()] = cur
			n.gpuSketches[g.GetUuid()] = &gpuSketches{NewNumeric(), NewNumeric(), NewNumeric(), NewNumeric(), NewNumeric()}
			n.order = append(n.order, g.GetUuid())
		}
		s := n.gpuSketches[g.GetUuid()]
		for _, m := range []struct {
			dst  *Numeric
			src  *droverv1.NumericSketch
			what string
		}{{s.util, g.GetUtilizationPercent(), "utilization"}, {s.mem, g.GetMemoryUsedBytes(), "memory used"},
			{s.temp, g.GetTemperatureCelsius(), "temperature"}, {s.power, g.GetPowerWatts(), "power"}, {s.clock, g.GetSmClockMhz(), "SM clock"}} {
			if err := mergeOptional(m.dst, m.src, "GPU "+g.GetUuid()+" "+m.what); err != nil {
				return err
			}
		}
		cur.ThrottleReasons |= g.GetThrottleReasons()
		cur.EccCorrected += g.GetEccCorrected()
		cur.EccUncorrected += g.GetEccUncorrected()
		for _, x := range g.GetXidEvents() {
			if len(cur.XidEvents) >= MaxXidEventsPerGPU {
				n.XidDropped++
				continue
			}
			cur.XidEvents = append(cur.XidEvents, x)
		}
	}
	return nil
}

// ToProto returns the merge; GPUs in the order they were first seen.
func (n *NodeMetrics) ToProto() *droverv1.NodeMetrics {
	optional := func(s *Numeric) *droverv1.NumericSketch {
		if s.Count() == 0 {
			return nil
		}
		return s.ToProto()
	}
	out := &droverv1.NodeMetrics{
		CpuUtilization: optional(n.cpu), MemoryUsedBytes: optional(n.mem), DiskFreeBytes: optional(n.disk),
		MemoryTotalBytes: n.memTotal, DiskTotalBytes: n.diskTotal,
	}
	for _, id := range n.order {
		g, s := n.gpus[id], n.gpuSketches[id]
		c := &droverv1.GPUMetrics{
			Uuid: g.GetUuid(), Model: g.GetModel(),
			UtilizationPercent: optional(s.util), MemoryUsedBytes: optional(s.mem), TemperatureCelsius: optional(s.temp),
			PowerWatts: optional(s.power), SmClockMhz: optional(s.clock),
			ThrottleReasons: g.GetThrottleReasons(), EccCorrected: g.GetEccCorrected(), EccUncorrected: g.GetEccUncorrected(),
			XidEvents: g.GetXidEvents(),
		}
		out.Gpus = append(out.Gpus, c)
	}
	return out
}

// Empty reports whether nothing was merged.
func (n *NodeMetrics) Empty() bool {
	return n.cpu.Count() == 0 && n.mem.Count() == 0 && n.disk.Count() == 0 && len(n.order) == 0 && n.memTotal == 0 && n.diskTotal == 0
}

// NodeMetricsEmpty reports whether a node metrics window holds nothing: no
// sample, no total, no GPU.
func NodeMetricsEmpty(pb *droverv1.NodeMetrics) bool {
	return pb.GetCpuUtilization().GetCount() == 0 && pb.GetMemoryUsedBytes().GetCount() == 0 &&
		pb.GetDiskFreeBytes().GetCount() == 0 && len(pb.GetGpus()) == 0 &&
		pb.GetMemoryTotalBytes() == 0 && pb.GetDiskTotalBytes() == 0
}
