// Package placement decides where a deployment may run: it checks a
// deployment spec and fills in its defaults, and matches a spec's node
// selector against each node's registered inventory, saying in words why a
// node does not fit.
package placement

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Defaults the server fills in where a spec leaves a field at its zero
// value and zero is never valid. auto_revert defaults to true only in the
// deployment file, where an absent field can be told from false.
const (
	DefaultMaxParallel           = 1
	DefaultMaxUnavailablePerSite = 1
	DefaultMinHealthyTime        = 10 * time.Second
	DefaultProgressDeadline      = 10 * time.Minute
	DefaultStartTimeout          = time.Minute
	DefaultRestart               = RestartOnFailure
	DefaultHealthPath            = "/healthz"
	ONNXHealthPath               = "/v1/health"
)

// Runtime types and restart policies a spec may name.
const (
	RuntimeONNX = "onnx"
	RuntimeExec = "exec"

	RestartAlways    = "always"
	RestartOnFailure = "on-failure"
	RestartNever     = "never"
)

// Limits on a spec, so that one deployment cannot bloat the replicated
// state.
const (
	maxListItems   = 64
	maxCommandArgs = 256
	maxEnv         = 128
	maxStringBytes = 4096
)

// knownArches are the CPU architectures an agent reports (Go's GOARCH
// names, as hwprobe reads them from the running binary).
var knownArches = []string{"386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64", "ppc64le", "riscv64", "s390x"}

// migProfileRE matches NVIDIA MIG profile names: "1g.10gb", "3g.40gb",
// "1g.10gb+me", "1c.2g.20gb".
var migProfileRE = regexp.MustCompile(`^([1-9][0-9]*c\.)?[1-9][0-9]*g\.[1-9][0-9]*gb(\+me)?$`)

// cpuFlagRE matches an ISA flag as /proc/cpuinfo spells it.
var cpuFlagRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.]{0,62}$`)

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Normalize checks spec and returns a copy with every default filled in:
// what the server stores and what `deploy show` prints. The error wraps
// [state.ErrInvalid] and lists every problem found, each naming its field
// as the deployment file spells it, so one round trip fixes them all.
// The model reference is only checked for form here; whether it resolves
// depends on the registry (see state.Store.ResolveDeploymentModel).
func Normalize(spec *droverv1.DeploymentSpec) (*droverv1.DeploymentSpec, error) {
	if spec == nil {
		return nil, fmt.Errorf("deployment spec is %w: the request has none", state.ErrInvalid)
	}
	s := proto.Clone(spec).(*droverv1.DeploymentSpec)
	var p problems
	if err := state.ValidateName("deployment", s.GetName()); err != nil {
		p.add("name: %v", err)
	}
	if _, _, err := ParseModelRef(s.GetModel()); err != nil {
		p.add("model: %v", err)
	}
	if s.Selector == nil {
		s.Selector = &droverv1.NodeSelector{}
	}
	if s.Runtime == nil {
		s.Runtime = &droverv1.RuntimeSpec{}
	}
	if s.Resources == nil {
		s.Resources = &droverv1.Resources{}
	}
	if s.Strategy == nil {
		s.Strategy = &droverv1.RolloutStrategy{}
	}
	checkSelector(&p, s.Selector)
	checkRuntime(&p, s.Runtime)
	checkResources(&p, s.Resources, s.Selector.GetHardware())
	checkStrategy(&p, s.Strategy)
	checkMonitor(&p, s.Monitor)
	if err := p.err(s.GetName()); err != nil {
		return nil, err
	}
	return s, nil
}

// problems collects what is wrong with a spec.
type problems []string

func (p *problems) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err(name string) error {
	switch len(p) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("deployment %q is %w: %s", name, state.ErrInvalid, p[0])
	}
	return fmt.Errorf("deployment %q is %w: %d problems: %s", name, state.ErrInvalid, len(p), strings.Join(p, "; "))
}

// ParseModelRef splits "NAME@ALIAS" or "NAME@VERSION". A bare name and
// "latest" are refused: a deployment follows an alias or pins a version,
// so what it runs changes only when someone moves the alias or edits the
// file.
func ParseModelRef(s string) (name, ref string, err error) {
	name, ref, ok := strings.Cut(s, "@")
	switch {
	case s == "":
		return "", "", fmt.Errorf("no model given: write NAME@ALIAS (e.g. defect-detector@prod) or NAME@VERSION (e.g. defect-detector@7)")
	case !ok || ref == "":
		return "", "", fmt.Errorf("%q has no version or alias: write %s@ALIAS (e.g. %s@prod) or %s@VERSION (e.g. %s@7)", s, name, name, name, name)
	case ref == "latest":
		return "", "", fmt.Errorf("%q follows no alias: \"latest\" moves with every push, so a deployment cannot follow it; set an alias (drover model alias set %s prod N) and write %s@prod, or pin %s@N", s, name, name, name)
	}
	if err := state.ValidateName("model", name); err != nil {
		return "", "", err
	}
	if _, perr := strconv.ParseUint(ref, 10, 64); perr == nil {
		if ref == "0" || strings.HasPrefix(ref, "0") {
			return "", "", fmt.Errorf("version %q is not a version number: versions start at 1", ref)
		}
		return name, ref, nil
	}
	if err := state.ValidateAlias(ref); err != nil {
		return "", "", err
	}
	return name, ref, nil
}

// ParseComputeCapability reads "MAJOR.MINOR" ("8.6", "9.0").
func ParseComputeCapability(s string) (major, minor int, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), ".")
	if ok {
		major, err = strconv.Atoi(a)
		if err == nil {
			minor, err = strconv.Atoi(b)
		}
	}
	if !ok || err != nil || major < 0 || minor < 0 || major > 99 || minor > 99 {
		return 0, 0, fmt.Errorf("compute capability %q is not MAJOR.MINOR, e.g. \"8.0\" (A100) or \"8.7\" (Orin)", s)
	}
	return major, minor, nil
}

func checkSelector(p *problems, sel *droverv1.NodeSelector) {
	if err := state.ValidateLabels(sel.GetLabels()); err != nil {
		p.add("selector.labels: %v", err)
	}
	if len(sel.GetSites()) > maxListItems {
		p.add("selector.sites: %d sites is more than the %d allowed", len(sel.GetSites()), maxListItems)
	}
	for _, site := range sel.GetSites() {
		if err := state.ValidateName("site", site); err != nil {
			p.add("selector.sites: %v", err)
		}
	}
	hw := sel.GetHardware()
	if hw == nil {
		return
	}
	if c := hw.GetMinComputeCapability(); c != "" {
		if _, _, err := ParseComputeCapability(c); err != nil {
			p.add("selector.hardware.min_compute_capability: %v", err)
		}
	}
	if len(hw.GetGpuModels()) > maxListItems {
		p.add("selector.hardware.gpu_models: %d models is more than the %d allowed", len(hw.GetGpuModels()), maxListItems)
	}
	for _, m := range hw.GetGpuModels() {
		if strings.TrimSpace(m) == "" || len(m) > 128 {
			p.add("selector.hardware.gpu_models: %q is not a GPU model name; write part of it, e.g. \"A100\" or \"Orin\"", m)
		}
	}
	if m := hw.GetMigProfile(); m != "" && !migProfileRE.MatchString(m) {
		p.add("selector.hardware.mig_profile: %q is not a MIG profile; write one such as \"1g.10gb\" or \"3g.40gb\" (nvidia-smi mig -lgip lists them)", m)
	}
	for _, a := range hw.GetCpuArch() {
		if !slices.Contains(knownArches, a) {
			p.add("selector.hardware.cpu_arch: %q is not a CPU architecture an agent reports; use one of %s", a, strings.Join(knownArches, ", "))
		}
	}
	if len(hw.GetCpuFlags()) > maxListItems {
		p.add("selector.hardware.cpu_flags: %d flags is more than the %d allowed", len(hw.GetCpuFlags()), maxListItems)
	}
	for _, f := range hw.GetCpuFlags() {
		if !cpuFlagRE.MatchString(f) {
			p.add("selector.hardware.cpu_flags: %q is not an ISA flag as /proc/cpuinfo spells it, e.g. \"avx2\"", f)
		}
	}
}

func checkRuntime(p *problems, rt *droverv1.RuntimeSpec) {
	switch rt.GetType() {
	case RuntimeONNX:
		if len(rt.GetCommand()) > 0 {
			p.add("runtime.command: the onnx runtime is built in and takes no command; remove command, or use type: exec to run your own server")
		}
	case RuntimeExec:
		if len(rt.GetCommand()) == 0 || rt.GetCommand()[0] == "" {
			p.add("runtime.command: type exec needs a command: the program and its arguments, e.g. [\"python\", \"serve.py\"]")
		}
		if rt.GetMaxBatch() != 0 {
			p.add("runtime.max_batch: only the onnx runtime batches requests; an exec server batches by itself")
		}
	case "":
		p.add("runtime.type: missing; use onnx (built in) or exec (your own model server)")
	default:
		p.add("runtime.type: %q is not a runtime; use onnx or exec", rt.GetType())
	}
	if len(rt.GetCommand()) > maxCommandArgs {
		p.add("runtime.command: %d arguments is more than the %d allowed", len(rt.GetCommand()), maxCommandArgs)
	}
	for _, a := range rt.GetCommand() {
		if len(a) > maxStringBytes {
			p.add("runtime.command: an argument is longer than %d bytes", maxStringBytes)
			break
		}
	}
	if len(rt.GetEnv()) > maxEnv {
		p.add("runtime.env: %d variables is more than the %d allowed", len(rt.GetEnv()), maxEnv)
	}
	for _, k := range slices.Sorted(maps.Keys(rt.GetEnv())) {
		if !envKeyRE.MatchString(k) {
			p.add("runtime.env: %q is not an environment variable name (letters, digits and '_', not starting with a digit)", k)
		} else if strings.HasPrefix(k, "DROVER_") {
			p.add("runtime.env: %s is set by the agent; DROVER_* names are reserved", k)
		}
		if len(rt.GetEnv()[k]) > maxStringBytes {
			p.add("runtime.env: %s is longer than %d bytes", k, maxStringBytes)
		}
	}
	switch hp := rt.GetHealthPath(); {
	case hp == "" && rt.GetType() == "onnx":
		// Where drover-onnx answers once its model is loaded.
		rt.HealthPath = ONNXHealthPath
	case hp == "":
		rt.HealthPath = DefaultHealthPath
	case !strings.HasPrefix(hp, "/") || len(hp) > 1024 || strings.ContainsAny(hp, " \t\r\n"):
		p.add("runtime.health_path: %q is not an HTTP path; write one starting with '/', e.g. \"/healthz\"", hp)
	}
	switch d := rt.GetStartTimeout(); {
	case d == nil || d.AsDuration() == 0:
		rt.StartTimeout = durationpb.New(DefaultStartTimeout)
	case !d.IsValid() || d.AsDuration() < 0:
		p.add("runtime.start_timeout: %v is negative", d.AsDuration())
	}
	switch rt.GetRestart() {
	case "":
		rt.Restart = DefaultRestart
	case RestartAlways, RestartOnFailure, RestartNever:
	default:
		p.add("runtime.restart: %q is not a restart policy; use always, on-failure or never", rt.GetRestart())
	}
}

// checkResources checks the per-instance reservation against the
// hardware constraints: an instance cannot reserve GPUs of another kind
// than the ones the selector asks for, and reserves at least as many as
// the selector requires a node to have.
func checkResources(p *problems, res *droverv1.Resources, hw *droverv1.HardwareConstraints) {
	if m := res.GetMigProfile(); m != "" && !migProfileRE.MatchString(m) {
		p.add("resources.mig_profile: %q is not a MIG profile; write one such as \"1g.10gb\"", m)
	}
	hm := hw.GetMigProfile()
	switch {
	case res.GetMigProfile() == "" && hm != "":
		res.MigProfile = hm
	case res.GetMigProfile() != "" && hm != "" && res.GetMigProfile() != hm:
		p.add("resources.mig_profile %q differs from selector.hardware.mig_profile %q: an instance uses the kind of MIG instance the node is chosen for", res.GetMigProfile(), hm)
	}
	if n := hw.GetMinGpus(); res.GetGpus() < n {
		// A node is chosen for having min_gpus; an instance that used
		// fewer would leave the rest idle, so it gets them all.
		res.Gpus = n
	}
	if res.GetMigProfile() != "" && res.GetGpus() == 0 {
		res.Gpus = 1
	}
	// A node is chosen for having enough GPUs of min_gpu_memory; the
	// agent must hand out those, not a smaller one the node also has.
	if m := hw.GetMinGpuMemoryBytes(); res.GetMinGpuMemoryBytes() < m {
		res.MinGpuMemoryBytes = m
	}
	if c := res.GetCpus(); c < 0 || c > 4096 || c != c {
		p.add("resources.cpus: %v is not a number of CPUs between 0 and 4096", c)
	}
}

func checkStrategy(p *problems, st *droverv1.RolloutStrategy) {
	if st.GetCanary() > 0 && st.GetCanaryPercent() > 0 {
		p.add("strategy: canary (%d) and canary_percent (%d%%) are both set; keep one", st.GetCanary(), st.GetCanaryPercent())
	}
	if st.GetCanaryPercent() > 100 {
		p.add("strategy.canary_percent: %d is more than 100", st.GetCanaryPercent())
	}
	if st.GetMaxParallel() == 0 {
		st.MaxParallel = DefaultMaxParallel
	}
	if st.GetMaxUnavailablePerSite() == 0 {
		st.MaxUnavailablePerSite = DefaultMaxUnavailablePerSite
	}
	defDuration := func(field string, d **durationpb.Duration, def time.Duration) {
		switch {
		case *d == nil || (*d).AsDuration() == 0:
			*d = durationpb.New(def)
		case !(*d).IsValid() || (*d).AsDuration() < 0:
			p.add("strategy.%s: %v is negative", field, (*d).AsDuration())
		}
	}
	// An explicit 0 is a valid minimum healthy time (a node is done once
	// healthy); only a missing one gets the default.
	if st.MinHealthyTime == nil {
		st.MinHealthyTime = durationpb.New(DefaultMinHealthyTime)
	}
	defDuration("min_healthy_time", &st.MinHealthyTime, 0)
	defDuration("progress_deadline", &st.ProgressDeadline, DefaultProgressDeadline)
	if st.GetProgressDeadline().AsDuration() > 0 && st.GetMinHealthyTime().AsDuration() >= st.GetProgressDeadline().AsDuration() {
		p.add("strategy.progress_deadline %v is not longer than min_healthy_time %v: no batch could ever finish in time",
			st.GetProgressDeadline().AsDuration(), st.GetMinHealthyTime().AsDuration())
	}
}
