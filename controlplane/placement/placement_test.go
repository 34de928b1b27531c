package placement

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const gib = 1 << 30

// orin is a ready edge camera in Berlin with an Orin GPU of 8 GiB.
func orin() *droverv1.Node {
	return &droverv1.Node{
		Id: "n-orin", Name: "e-01", Site: "berlin", Status: droverv1.NodeStatus_NODE_STATUS_READY,
		Labels: map[string]string{"camera": "edge"},
		Inventory: &droverv1.NodeInventory{
			Host:     &droverv1.HostInfo{Arch: "arm64"},
			Cpu:      &droverv1.CPUInfo{Threads: 8, Flags: []string{"neon", "asimd"}},
			Memory:   &droverv1.MemoryInfo{TotalBytes: 16 * gib},
			Disks:    []*droverv1.DiskInfo{{Path: "/var/lib/drover", FreeBytes: 50 * gib}},
			GpuProbe: &droverv1.GPUProbe{Available: true},
			Gpus:     []*droverv1.GPUInfo{{Uuid: "GPU-1", Name: "Orin (nvgpu)", MemoryTotalBytes: 8 * gib, ComputeCapability: "8.7"}},
		},
	}
}

// a100 is a server with one A100 in MIG mode, split into two 1g.10gb
// instances, and one whole A100.
func a100() *droverv1.Node {
	n := orin()
	n.Id, n.Name, n.Site = "n-a100", "gpu-01", "lyon"
	n.Inventory.Host.Arch = "amd64"
	n.Inventory.Gpus = []*droverv1.GPUInfo{
		{Uuid: "GPU-A", Name: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 80 * gib, ComputeCapability: "8.0", MigEnabled: true},
		{Uuid: "MIG-1", ParentUuid: "GPU-A", Name: "NVIDIA A100-SXM4-80GB MIG 1g.10gb", MemoryTotalBytes: 10 * gib, ComputeCapability: "8.0"},
		{Uuid: "MIG-2", ParentUuid: "GPU-A", Name: "NVIDIA A100-SXM4-80GB MIG 1g.10gb", MemoryTotalBytes: 10 * gib, ComputeCapability: "8.0"},
		{Uuid: "GPU-B", Name: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 80 * gib, ComputeCapability: "8.0"},
	}
	return n
}

func TestMatch(t *testing.T) {
	noGPU := orin()
	noGPU.Inventory.Gpus = nil
	noGPU.Inventory.GpuProbe = &droverv1.GPUProbe{Reason: "driver not found"}
	small := orin()
	small.Inventory.Gpus[0].MemoryTotalBytes = 2 * gib
	down := orin()
	down.Status = droverv1.NodeStatus_NODE_STATUS_DOWN
	draining := orin()
	draining.Draining = true
	left := orin()
	left.Status = droverv1.NodeStatus_NODE_STATUS_LEFT
	otherLabel := orin()
	otherLabel.Labels["camera"] = "dome"

	edge4 := &droverv1.NodeSelector{
		Labels: map[string]string{"camera": "edge"},
		Sites:  []string{"berlin"},
		Hardware: &droverv1.HardwareConstraints{
			MinGpus: 1, MinGpuMemoryBytes: 4 * gib,
		},
	}
	for _, tc := range []struct {
		name string
		sel  *droverv1.NodeSelector
		res  *droverv1.Resources
		node *droverv1.Node
		want []string // nil: matches
	}{
		{name: "empty selector matches a ready node", node: orin()},
		{name: "edge camera in berlin", sel: edge4, node: orin()},
		{name: "GPU too small", sel: edge4, node: small, want: []string{"GPU memory 2 GiB < required 4 GiB"}},
		{name: "no GPU, NVML says why", sel: edge4, node: noGPU, want: []string{"no GPU (NVML: driver not found)"}},
		{name: "other site", sel: edge4, node: a100(), want: []string{"site lyon not in [berlin]"}},
		{name: "label differs", sel: &droverv1.NodeSelector{Labels: map[string]string{"camera": "edge"}}, node: otherLabel, want: []string{`label camera is "dome", want "edge"`}},
		{name: "down", sel: edge4, node: down, want: []string{"node is down"}},
		{name: "draining", node: draining, want: []string{"draining"}},
		{name: "left", node: left, want: []string{"node has left"}},
		{name: "arch", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{CpuArch: []string{"amd64"}}}, node: orin(),
			want: []string{"CPU arch arm64 not in [amd64]"}},
		{name: "cpu flag", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{CpuFlags: []string{"neon", "avx2"}}}, node: orin(),
			want: []string{"CPU flag avx2 missing"}},
		{name: "memory", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinMemoryBytes: 32 * gib}}, node: orin(),
			want: []string{"memory 16 GiB < required 32 GiB"}},
		{name: "disk", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinFreeDiskBytes: 100 * gib}}, node: orin(),
			want: []string{"free disk 50 GiB < required 100 GiB"}},
		{name: "compute capability", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinComputeCapability: "9.0"}}, node: orin(),
			want: []string{"GPU compute capability 8.7 < required 9.0"}},
		{name: "compute capability 8.10 is above 8.9", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinComputeCapability: "8.10"}}, node: orin(),
			want: []string{"GPU compute capability 8.7 < required 8.10"}},
		{name: "gpu model", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{GpuModels: []string{"a100", "H100"}}}, node: orin(),
			want: []string{"GPU model Orin (nvgpu) not in [a100 H100]"}},
		{name: "gpu model case-insensitive", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{GpuModels: []string{"orin"}}}, node: orin()},
		{name: "resources.gpus counts", res: &droverv1.Resources{Gpus: 2}, node: orin(), want: []string{"GPU count 1 < required 2"}},
		{name: "resources.memory", res: &droverv1.Resources{MemoryBytes: 20 * gib}, node: orin(), want: []string{"memory 16 GiB < resources.memory 20 GiB"}},
		{name: "MIG GPU is not whole", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinGpus: 2}}, node: a100(),
			want: []string{"GPU count 1 < required 2"}},
		{name: "MIG instances of a profile", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinGpus: 2, MigProfile: "1g.10gb"}}, node: a100()},
		{name: "MIG profile missing", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MigProfile: "3g.40gb"}}, node: a100(),
			want: []string{"no MIG instance of profile 3g.40gb"}},
		{name: "MIG instance memory", sel: &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MigProfile: "1g.10gb", MinGpuMemoryBytes: 20 * gib}}, node: a100(),
			want: []string{"GPU memory 10 GiB < required 20 GiB"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, reasons := Match(tc.sel, tc.res, tc.node)
			t.Logf("ok=%v reasons=%q", ok, reasons)
			if ok != (tc.want == nil) {
				t.Fatalf("Match = %v %q, want match %v", ok, reasons, tc.want == nil)
			}
			for _, w := range tc.want {
				if !slices.ContainsFunc(reasons, func(r string) bool { return strings.Contains(r, w) }) {
					t.Errorf("reasons %q lack %q", reasons, w)
				}
			}
		})
	}
}

func TestMatchListsEveryFailure(t *testing.T) {
	n := a100()
	n.Labels = nil
	ok, reasons := Match(&droverv1.NodeSelector{
		Labels: map[string]string{"camera": "edge", "zone": "a"},
		Sites:  []string{"berlin", "paris"},
	}, nil, n)
	want := []string{"site lyon not in [berlin paris]", "label camera=edge missing", "label zone=a missing"}
	if ok || !slices.Equal(reasons, want) {
		t.Errorf("Match = %v %q, want false %q", ok, reasons, want)
	}
}

func validSpec() *droverv1.DeploymentSpec {
	return &droverv1.DeploymentSpec{
		Name:    "defect-detector",
		Model:   "defect-detector@prod",
		Runtime: &droverv1.RuntimeSpec{Type: "onnx"},
	}
}

func TestNormalizeDefaults(t *testing.T) {
	s, err := Normalize(validSpec())
	if err != nil {
		t.Fatal(err)
	}
	st := s.GetStrategy()
	if st.GetMaxParallel() != DefaultMaxParallel || st.GetMaxUnavailablePerSite() != DefaultMaxUnavailablePerSite ||
		st.GetMinHealthyTime().AsDuration() != DefaultMinHealthyTime || st.GetProgressDeadline().AsDuration() != DefaultProgressDeadline {
		t.Errorf("strategy defaults: %v", st)
	}
	if rt := s.GetRuntime(); rt.GetRestart() != "on-failure" || rt.GetHealthPath() != ONNXHealthPath || rt.GetStartTimeout().AsDuration() != time.Minute {
		t.Errorf("runtime defaults: %v", rt)
	}
	// A set value stays; the input is not modified.
	in := validSpec()
	in.Strategy = &droverv1.RolloutStrategy{MaxParallel: 5, MinHealthyTime: durationpb.New(time.Minute)}
	in.Selector = &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinGpus: 2, MigProfile: "1g.10gb", MinGpuMemoryBytes: 9 * gib}}
	in.Resources = &droverv1.Resources{Gpus: 1}
	s, err = Normalize(in)
	if err != nil {
		t.Fatal(err)
	}
	if s.GetStrategy().GetMaxParallel() != 5 || s.GetStrategy().GetMinHealthyTime().AsDuration() != time.Minute {
		t.Errorf("set values changed: %v", s.GetStrategy())
	}
	// The agent hands out only devices of the selector's GPU memory.
	if r := s.GetResources(); r.GetGpus() != 2 || r.GetMigProfile() != "1g.10gb" || r.GetMinGpuMemoryBytes() != 9*gib {
		t.Errorf("resources not raised to the selector: %v", s.GetResources())
	}
	if in.GetResources().GetGpus() != 1 || in.GetStrategy().GetMaxUnavailablePerSite() != 0 {
		t.Errorf("Normalize modified its input: %v", in)
	}

	in = validSpec()
	in.Monitor = &droverv1.MonitorPolicy{Drift: &droverv1.DriftPolicy{}, Slo: &droverv1.SLOPolicy{MaxErrorRate: 0.1}}
	s, err = Normalize(in)
	if err != nil {
		t.Fatal(err)
	}
	d, slo := s.GetMonitor().GetDrift(), s.GetMonitor().GetSlo()
	if d.GetAction() != droverv1.PolicyAction_POLICY_ACTION_ALERT || d.GetWindows() != DefaultPolicyWindows ||
		d.GetReferenceWindows() != DefaultReferenceWindows || d.GetThresholds().GetPsiDrifted() != 0.25 || d.GetThresholds().GetMinCount() != 100 {
		t.Errorf("drift policy defaults: %v", d)
	}
	if slo.GetAction() != droverv1.PolicyAction_POLICY_ACTION_ALERT || slo.GetWindows() != DefaultPolicyWindows || slo.GetMinRequests() != DefaultSLOMinRequests {
		t.Errorf("slo policy defaults: %v", slo)
	}
	// An explicit 0 minimum healthy time stays 0: done once healthy.
	in = validSpec()
	in.Strategy = &droverv1.RolloutStrategy{MinHealthyTime: durationpb.New(0)}
	if s, err = Normalize(in); err != nil {
		t.Fatal(err)
	}
	if got := s.GetStrategy().GetMinHealthyTime(); got == nil || got.AsDuration() != 0 {
		t.Errorf("min_healthy_time 0 became %v", got)
	}
}

func TestNormalizeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *droverv1.DeploymentSpec)
		want   string
	}{
		{"bad name", func(s *droverv1.DeploymentSpec) { s.Name = "Defect Detector" }, "deployment name"},
		{"no ref", func(s *droverv1.DeploymentSpec) { s.Model = "defect-detector" }, "no version or alias"},
		{"latest", func(s *droverv1.DeploymentSpec) { s.Model = "defect-detector@latest" }, "follows no alias"},
		{"version 0", func(s *droverv1.DeploymentSpec) { s.Model = "m@0" }, "versions start at 1"},
		{"no runtime type", func(s *droverv1.DeploymentSpec) { s.Runtime.Type = "" }, "runtime.type: missing"},
		{"unknown runtime", func(s *droverv1.DeploymentSpec) { s.Runtime.Type = "docker" }, `"docker" is not a runtime`},
		{"exec without command", func(s *droverv1.DeploymentSpec) { s.Runtime.Type = "exec" }, "type exec needs a command"},
		{"onnx with command", func(s *droverv1.DeploymentSpec) { s.Runtime.Command = []string{"x"} }, "takes no command"},
		{"restart", func(s *droverv1.DeploymentSpec) { s.Runtime.Restart = "sometimes" }, "not a restart policy"},
		{"reserved env", func(s *droverv1.DeploymentSpec) { s.Runtime.Env = map[string]string{"DROVER_PORT": "1"} }, "reserved"},
		{"compute capability", func(s *droverv1.DeploymentSpec) {
			s.Selector = &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MinComputeCapability: "abc"}}
		}, `compute capability "abc" is not MAJOR.MINOR`},
		{"cpu arch", func(s *droverv1.DeploymentSpec) {
			s.Selector = &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{CpuArch: []string{"sparc64"}}}
		}, `"sparc64" is not a CPU architecture`},
		{"mig profile", func(s *droverv1.DeploymentSpec) {
			s.Selector = &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MigProfile: "10gb"}}
		}, "not a MIG profile"},
		{"mig profiles differ", func(s *droverv1.DeploymentSpec) {
			s.Selector = &droverv1.NodeSelector{Hardware: &droverv1.HardwareConstraints{MigProfile: "1g.10gb"}}
			s.Resources = &droverv1.Resources{MigProfile: "2g.20gb"}
		}, "differs"},
		{"label", func(s *droverv1.DeploymentSpec) {
			s.Selector = &droverv1.NodeSelector{Labels: map[string]string{"a b": "c"}}
		}, "label key"},
		{"site", func(s *droverv1.DeploymentSpec) { s.Selector = &droverv1.NodeSelector{Sites: []string{"Berlin!"}} }, "site name"},
		{"canary twice", func(s *droverv1.DeploymentSpec) { s.Strategy = &droverv1.RolloutStrategy{Canary: 1, CanaryPercent: 10} }, "both set"},
		{"percent", func(s *droverv1.DeploymentSpec) { s.Strategy = &droverv1.RolloutStrategy{CanaryPercent: 101} }, "more than 100"},
		{"deadline", func(s *droverv1.DeploymentSpec) {
			s.Strategy = &droverv1.RolloutStrategy{MinHealthyTime: durationpb.New(time.Hour)}
		}, "no batch could ever finish"},
		{"monitor cohort", func(s *droverv1.DeploymentSpec) { s.Monitor = &droverv1.MonitorPolicy{By: "colour"} }, `monitor.by: "colour": want site, gpu or label:KEY`},
		{"monitor webhook", func(s *droverv1.DeploymentSpec) { s.Monitor = &droverv1.MonitorPolicy{Webhook: "ftp://x/y"} }, "want an absolute https:// URL"},
		{"drift bands", func(s *droverv1.DeploymentSpec) {
			s.Monitor = &droverv1.MonitorPolicy{Drift: &droverv1.DriftPolicy{Thresholds: &droverv1.DriftThresholds{PsiModerate: 0.5, PsiDrifted: 0.2}}}
		}, "psi thresholds 0.5 and 0.2"},
		{"slo checks nothing", func(s *droverv1.DeploymentSpec) { s.Monitor = &droverv1.MonitorPolicy{Slo: &droverv1.SLOPolicy{}} }, "checks nothing"},
		{"slo error rate", func(s *droverv1.DeploymentSpec) {
			s.Monitor = &droverv1.MonitorPolicy{Slo: &droverv1.SLOPolicy{MaxErrorRate: 1.5}}
		}, "not a share of requests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := validSpec()
			tc.change(s)
			_, err := Normalize(s)
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, state.ErrInvalid) {
				t.Errorf("Normalize = %v, want an ErrInvalid naming %q", err, tc.want)
			}
		})
	}
}

func TestNormalizeListsEveryProblem(t *testing.T) {
	s := validSpec()
	s.Runtime = &droverv1.RuntimeSpec{Type: "exec", Restart: "sometimes"}
	s.Strategy = &droverv1.RolloutStrategy{Canary: 1, CanaryPercent: 10}
	_, err := Normalize(s)
	if err == nil || !strings.Contains(err.Error(), "3 problems") {
		t.Errorf("Normalize = %v, want 3 problems", err)
	}
}
