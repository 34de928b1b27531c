package placement

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Match reports whether node may run an instance of a deployment with
// selector sel and per-instance resources res, judged on the node's
// registered inventory, labels, site and status. When it may not, reasons
// say why, one line per failed constraint, in the order a reader checks
// them: status, site, labels, CPU and memory, disk, GPUs. sel and res are
// expected normalized (see [Normalize]); nil means no constraint.
func Match(sel *droverv1.NodeSelector, res *droverv1.Resources, node *droverv1.Node) (ok bool, reasons []string) {
	var r []string
	switch {
	case node.GetRevoked():
		r = append(r, "node is revoked")
	case node.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT:
		r = append(r, "node has left")
	case node.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN:
		r = append(r, "node is down")
	case node.GetStatus() == droverv1.NodeStatus_NODE_STATUS_INITIALIZING:
		r = append(r, "node is initializing: its agent has not registered its hardware yet")
	case node.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY:
		r = append(r, fmt.Sprintf("node status %v is not ready", node.GetStatus()))
	case node.GetDraining():
		r = append(r, "node is draining")
	case node.GetCordoned():
		r = append(r, "node is cordoned: "+node.GetCordonReason())
	}
	if sites := sel.GetSites(); len(sites) > 0 && !slices.Contains(sites, node.GetSite()) {
		site := node.GetSite()
		if site == "" {
			site = "(none)"
		}
		r = append(r, fmt.Sprintf("site %s not in [%s]", site, strings.Join(sites, " ")))
	}
	for _, k := range slices.Sorted(maps.Keys(sel.GetLabels())) {
		want := sel.GetLabels()[k]
		got, has := node.GetLabels()[k]
		switch {
		case !has:
			r = append(r, fmt.Sprintf("label %s=%s missing", k, want))
		case got != want:
			r = append(r, fmt.Sprintf("label %s is %q, want %q", k, got, want))
		}
	}
	inv := node.GetInventory()
	hw := sel.GetHardware()
	if arches := hw.GetCpuArch(); len(arches) > 0 {
		if a := inv.GetHost().GetArch(); !slices.Contains(arches, a) {
			r = append(r, fmt.Sprintf("CPU arch %s not in [%s]", orUnknown(a), strings.Join(arches, " ")))
		}
	}
	for _, f := range hw.GetCpuFlags() {
		if !slices.Contains(inv.GetCpu().GetFlags(), f) {
			r = append(r, fmt.Sprintf("CPU flag %s missing", f))
		}
	}
	if c := res.GetCpus(); c > 0 {
		if t := inv.GetCpu().GetThreads(); float64(t) < c {
			r = append(r, fmt.Sprintf("CPU threads %d < resources.cpus %g", t, c))
		}
	}
	mem := inv.GetMemory().GetTotalBytes()
	if m := hw.GetMinMemoryBytes(); m > 0 && mem < m {
		r = append(r, fmt.Sprintf("memory %s < required %s", size(mem), size(m)))
	}
	if m := res.GetMemoryBytes(); m > 0 && mem < m {
		r = append(r, fmt.Sprintf("memory %s < resources.memory %s", size(mem), size(m)))
	}
	if m := hw.GetMinFreeDiskBytes(); m > 0 {
		// The agent reports the disk of its data directory first.
		if disks := inv.GetDisks(); len(disks) == 0 {
			r = append(r, "free disk unknown: the node reported no disk")
		} else if free := disks[0].GetFreeBytes(); free < m {
			r = append(r, fmt.Sprintf("free disk %s < required %s", size(free), size(m)))
		}
	}
	r = append(r, matchGPUs(hw, res, inv)...)
	return len(r) == 0, r
}

// matchGPUs checks the GPU constraints. A node needs as many GPUs (or MIG
// instances of the profile) that each pass every per-GPU constraint as
// the larger of min_gpus and resources.gpus, and at least one when any
// per-GPU constraint is set.
func matchGPUs(hw *droverv1.HardwareConstraints, res *droverv1.Resources, inv *droverv1.NodeInventory) []string {
	need := max(hw.GetMinGpus(), res.GetGpus())
	perGPU := hw.GetMinGpuMemoryBytes() > 0 || hw.GetMinComputeCapability() != "" || len(hw.GetGpuModels()) > 0
	profile := hw.GetMigProfile()
	if profile == "" {
		profile = res.GetMigProfile()
	}
	if need == 0 && (perGPU || profile != "") {
		need = 1
	}
	if need == 0 {
		return nil
	}
	if len(inv.GetGpus()) == 0 {
		if pr := inv.GetGpuProbe(); pr != nil && !pr.GetAvailable() && pr.GetReason() != "" {
			return []string{fmt.Sprintf("no GPU (NVML: %s)", pr.GetReason())}
		}
		return []string{"no GPU"}
	}
	// The devices an instance could be given: MIG instances of the
	// profile, or whole GPUs not in MIG mode.
	var cands []*droverv1.GPUInfo
	migMode := 0
	for _, g := range inv.GetGpus() {
		isInstance := g.GetParentUuid() != ""
		if profile != "" {
			if isInstance && strings.Contains(strings.ToLower(g.GetName()), strings.ToLower(profile)) {
				cands = append(cands, g)
			}
			continue
		}
		if isInstance {
			continue
		}
		if g.GetMigEnabled() {
			migMode++
			continue
		}
		cands = append(cands, g)
	}
	kind := "GPU"
	if profile != "" {
		kind = "MIG " + profile + " instance"
	}
	if len(cands) == 0 {
		if profile != "" {
			return []string{fmt.Sprintf("no MIG instance of profile %s", profile)}
		}
		return []string{fmt.Sprintf("no whole GPU: all %d are in MIG mode; set mig_profile to use their instances", migMode)}
	}
	var reasons []string
	passing := 0
	var bestMem uint64
	bestCC, ccOK := "", 0
	models, modelOK := []string{}, 0
	memOK := 0
	wantMajor, wantMinor, _ := ParseComputeCapability(hw.GetMinComputeCapability())
	for _, g := range cands {
		okMem := g.GetMemoryTotalBytes() >= hw.GetMinGpuMemoryBytes()
		bestMem = max(bestMem, g.GetMemoryTotalBytes())
		okCC := true
		if hw.GetMinComputeCapability() != "" {
			ma, mi, err := ParseComputeCapability(g.GetComputeCapability())
			okCC = err == nil && (ma > wantMajor || ma == wantMajor && mi >= wantMinor)
			if bestCC == "" || err == nil && ccLess(bestCC, g.GetComputeCapability()) {
				bestCC = g.GetComputeCapability()
			}
		}
		okModel := len(hw.GetGpuModels()) == 0
		for _, m := range hw.GetGpuModels() {
			if strings.Contains(strings.ToLower(g.GetName()), strings.ToLower(m)) {
				okModel = true
			}
		}
		if !slices.Contains(models, g.GetName()) {
			models = append(models, g.GetName())
		}
		if okMem {
			memOK++
		}
		if okCC {
			ccOK++
		}
		if okModel {
			modelOK++
		}
		if okMem && okCC && okModel {
			passing++
		}
	}
	n := uint32(len(cands))
	if uint32(memOK) < need && hw.GetMinGpuMemoryBytes() > 0 {
		reasons = append(reasons, fmt.Sprintf("GPU memory %s < required %s", size(bestMem), size(hw.GetMinGpuMemoryBytes())))
	}
	if uint32(ccOK) < need && hw.GetMinComputeCapability() != "" {
		reasons = append(reasons, fmt.Sprintf("GPU compute capability %s < required %s", orUnknown(bestCC), hw.GetMinComputeCapability()))
	}
	if uint32(modelOK) < need && len(hw.GetGpuModels()) > 0 {
		reasons = append(reasons, fmt.Sprintf("GPU model %s not in [%s]", strings.Join(models, ", "), strings.Join(hw.GetGpuModels(), " ")))
	}
	if len(reasons) == 0 && uint32(passing) < need {
		switch {
		case n < need:
			reasons = append(reasons, fmt.Sprintf("%s count %d < required %d", kind, n, need))
		default:
			reasons = append(reasons, fmt.Sprintf("%d of %d %ss meet every constraint, %d required", passing, n, kind, need))
		}
	}
	return reasons
}

// ccLess reports whether compute capability a is below b.
func ccLess(a, b string) bool {
	am, an, aerr := ParseComputeCapability(a)
	bm, bn, berr := ParseComputeCapability(b)
	if aerr != nil || berr != nil {
		return aerr != nil && berr == nil
	}
	return am < bm || am == bm && an < bn
}

// size renders a byte count in binary units, without a decimal when the
// count is a whole number of them ("4 GiB", "3.7 GiB").
func size(n uint64) string {
	for _, u := range []struct {
		div  uint64
		name string
	}{{1 << 40, "TiB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}} {
		if n >= u.div && n%u.div == 0 {
			return fmt.Sprintf("%d %s", n/u.div, u.name)
		}
	}
	return units.Bytes(n)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
