package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// deployFile is a deployment as `drover deploy plan|apply -f` reads it
// from YAML. Its keys are the DeploymentSpec's fields, except that sizes
// drop their "_bytes" suffix and are written with a unit ("4GiB"), and
// durations are written as "30s". Fields whose default differs from their
// zero value are pointers, so that an absent field can be told from an
// explicit zero.
type deployFile struct {
	Name      string             `yaml:"name"`
	Model     string             `yaml:"model"`
	Selector  deploySelector     `yaml:"selector"`
	Runtime   deployRuntime      `yaml:"runtime"`
	Resources deployResources    `yaml:"resources"`
	Strategy  deployStrategyFile `yaml:"strategy"`
	Monitor   *deployMonitor     `yaml:"monitor"`
}

type deployMonitor struct {
	By      string       `yaml:"by"`
	Webhook string       `yaml:"webhook"`
	Drift   *deployDrift `yaml:"drift"`
	SLO     *deploySLO   `yaml:"slo"`
}

type deployDrift struct {
	Action           policyAction     `yaml:"action"`
	Windows          uint32           `yaml:"windows"`
	ReferenceWindows uint32           `yaml:"reference_windows"`
	Thresholds       deployThresholds `yaml:"thresholds"`
}

type deployThresholds struct {
	PSIModerate  float64 `yaml:"psi_moderate"`
	PSIDrifted   float64 `yaml:"psi_drifted"`
	KSModerate   float64 `yaml:"ks_moderate"`
	KSDrifted    float64 `yaml:"ks_drifted"`
	JSModerate   float64 `yaml:"js_moderate"`
	JSDrifted    float64 `yaml:"js_drifted"`
	DriftedShare float64 `yaml:"drifted_share"`
	MinCount     uint64  `yaml:"min_count"`
}

type deploySLO struct {
	Action       policyAction `yaml:"action"`
	Windows      uint32       `yaml:"windows"`
	MaxErrorRate float64      `yaml:"max_error_rate"`
	MaxP99       *duration    `yaml:"max_p99"`
	MinRequests  uint64       `yaml:"min_requests"`
}

// policyAction is a monitor action as the file names it.
type policyAction droverv1.PolicyAction

var policyActions = map[string]droverv1.PolicyAction{
	"alert":    droverv1.PolicyAction_POLICY_ACTION_ALERT,
	"pause":    droverv1.PolicyAction_POLICY_ACTION_PAUSE,
	"rollback": droverv1.PolicyAction_POLICY_ACTION_ROLLBACK,
}

func (a *policyAction) UnmarshalYAML(n *yaml.Node) error {
	v, ok := policyActions[n.Value]
	if n.Kind != yaml.ScalarNode || !ok {
		return lineError(n.Line, "action %q: want alert, pause or rollback", n.Value)
	}
	*a = policyAction(v)
	return nil
}

type deploySelector struct {
	Labels   map[string]string `yaml:"labels"`
	Sites    []string          `yaml:"sites"`
	Hardware deployHardware    `yaml:"hardware"`
}

type deployHardware struct {
	MinGPUs              uint32   `yaml:"min_gpus"`
	MinGPUMemory         byteSize `yaml:"min_gpu_memory"`
	MinComputeCapability yamlText `yaml:"min_compute_capability"`
	GPUModels            []string `yaml:"gpu_models"`
	MIGProfile           string   `yaml:"mig_profile"`
	CPUArch              []string `yaml:"cpu_arch"`
	CPUFlags             []string `yaml:"cpu_flags"`
	MinMemory            byteSize `yaml:"min_memory"`
	MinFreeDisk          byteSize `yaml:"min_free_disk"`
}

type deployRuntime struct {
	Type         string            `yaml:"type"`
	Command      []string          `yaml:"command"`
	Env          map[string]string `yaml:"env"`
	HealthPath   string            `yaml:"health_path"`
	StartTimeout *duration         `yaml:"start_timeout"`
	Restart      string            `yaml:"restart"`
	MaxBatch     uint32            `yaml:"max_batch"`
}

type deployResources struct {
	GPUs       uint32   `yaml:"gpus"`
	MIGProfile string   `yaml:"mig_profile"`
	Memory     byteSize `yaml:"memory"`
	CPUs       float64  `yaml:"cpus"`
}

type deployStrategyFile struct {
	Canary                uint32        `yaml:"canary"`
	CanaryPercent         uint32        `yaml:"canary_percent"`
	MaxParallel           *uint32       `yaml:"max_parallel"`
	MaxUnavailablePerSite *uint32       `yaml:"max_unavailable_per_site"`
	MinHealthyTime        *zeroDuration `yaml:"min_healthy_time"`
	ProgressDeadline      *duration     `yaml:"progress_deadline"`
	AutoPromote           bool          `yaml:"auto_promote"`
	AutoRevert            *bool         `yaml:"auto_revert"`
}

// maxDeployFile bounds what plan and apply read. A deployment the server
// takes is far smaller.
const maxDeployFile = 1 << 20

// byteSize is a size written with a unit: "4GiB", "512MB", or a number
// of bytes.
type byteSize struct{ n uint64 }

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n.Line, "want a size such as 4GiB or 512MB")
	}
	v, err := units.ParseBytes(n.Value)
	if err != nil {
		return lineError(n.Line, "size %q: %v", n.Value, err)
	}
	b.n = v
	return nil
}

// duration is a duration written as Go writes them: "30s", "10m", "1h30m".
type duration struct{ d time.Duration }

func (d *duration) UnmarshalYAML(n *yaml.Node) error { return d.parse(n, false) }

// parse reads n into d; zero is refused unless zeroOK.
func (d *duration) parse(n *yaml.Node, zeroOK bool) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n.Line, "want a duration such as 30s or 10m")
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		hint := ""
		if _, nerr := strconv.ParseFloat(n.Value, 64); nerr == nil {
			hint = fmt.Sprintf(" (a bare number has no unit: write %ss for seconds)", n.Value)
		}
		return lineError(n.Line, "duration %q is not a duration such as 30s, 10m or 1h30m%s", n.Value, hint)
	}
	switch {
	case v < 0 && zeroOK:
		return lineError(n.Line, "duration %q is negative; write 0s or more, or leave the field out for its default", n.Value)
	case v <= 0 && !zeroOK:
		return lineError(n.Line, "duration %q must be more than zero; leave the field out for its default", n.Value)
	}
	d.d = v
	return nil
}

// zeroDuration is a duration for which 0s means something of its own
// (min_healthy_time: 0s, a node is done as soon as it is healthy), as
// opposed to leaving the field out for its default.
type zeroDuration struct{ duration }

func (d *zeroDuration) UnmarshalYAML(n *yaml.Node) error { return d.parse(n, true) }

func (d *zeroDuration) proto() *durationpb.Duration {
	if d == nil {
		return nil
	}
	return d.duration.proto()
}

func (d *duration) proto() *durationpb.Duration {
	if d == nil {
		return nil
	}
	return durationpb.New(d.d)
}

// yamlText is a scalar kept as written, so that 8.0 stays "8.0" rather
// than becoming the float 8.
type yamlText string

func (t *yamlText) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n.Line, "want a value such as \"8.0\"")
	}
	*t = yamlText(n.Value)
	return nil
}

// parseDeployFile reads a deployment file into a spec. It fills in the
// defaults that only the file can tell apart from a zero (auto_revert is
// true unless the file says false) and refuses what is written but never
// valid (max_unavailable_per_site: 0, max_parallel: 0); the server checks
// everything else and fills in the other defaults. Unknown keys are
// errors with their line and the nearest known key.
func parseDeployFile(data []byte) (*droverv1.DeploymentSpec, error) {
	var f deployFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(&f); {
	case errors.Is(err, io.EOF):
		return nil, errors.New("the file is empty; a deployment needs at least name, model and runtime (see drover deploy --help)")
	case err != nil:
		return nil, deployFileProblems(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, deployFileProblems(err)
	default:
		return nil, fmt.Errorf("line %d: a second YAML document; a file holds one deployment, so remove the \"---\" and what follows or apply it from a file of its own", extra.Line)
	}
	var problems []string
	st := f.Strategy
	if st.MaxUnavailablePerSite != nil && *st.MaxUnavailablePerSite == 0 {
		problems = append(problems, fmt.Sprintf("line %d: strategy.max_unavailable_per_site is 0, which lets no node of a site update; use 1 or more, or leave it out for 1",
			fileLine(data, "strategy", "max_unavailable_per_site")))
	}
	if st.MaxParallel != nil && *st.MaxParallel == 0 {
		problems = append(problems, fmt.Sprintf("line %d: strategy.max_parallel is 0, which updates no node at all; use 1 or more, or leave it out for 1",
			fileLine(data, "strategy", "max_parallel")))
	}
	if len(problems) > 0 {
		return nil, joinProblems(problems)
	}
	hw := f.Selector.Hardware
	spec := &droverv1.DeploymentSpec{
		Name:  f.Name,
		Model: f.Model,
		Selector: &droverv1.NodeSelector{
			Labels: f.Selector.Labels,
			Sites:  f.Selector.Sites,
			Hardware: &droverv1.HardwareConstraints{
				MinGpus:              hw.MinGPUs,
				MinGpuMemoryBytes:    hw.MinGPUMemory.n,
				MinComputeCapability: string(hw.MinComputeCapability),
				GpuModels:            hw.GPUModels,
				MigProfile:           hw.MIGProfile,
				CpuArch:              hw.CPUArch,
				CpuFlags:             hw.CPUFlags,
				MinMemoryBytes:       hw.MinMemory.n,
				MinFreeDiskBytes:     hw.MinFreeDisk.n,
			},
		},
		Runtime: &droverv1.RuntimeSpec{
			Type:         f.Runtime.Type,
			Command:      f.Runtime.Command,
			Env:          f.Runtime.Env,
			HealthPath:   f.Runtime.HealthPath,
			StartTimeout: f.Runtime.StartTimeout.proto(),
			Restart:      f.Runtime.Restart,
			MaxBatch:     f.Runtime.MaxBatch,
		},
		Resources: &droverv1.Resources{
			Gpus:        f.Resources.GPUs,
			MigProfile:  f.Resources.MIGProfile,
			MemoryBytes: f.Resources.Memory.n,
			Cpus:        f.Resources.CPUs,
		},
		Strategy: &droverv1.RolloutStrategy{
			Canary:           st.Canary,
			CanaryPercent:    st.CanaryPercent,
			MinHealthyTime:   st.MinHealthyTime.proto(),
			ProgressDeadline: st.ProgressDeadline.proto(),
			AutoPromote:      st.AutoPromote,
			AutoRevert:       st.AutoRevert == nil || *st.AutoRevert,
		},
	}
	if st.MaxParallel != nil {
		spec.Strategy.MaxParallel = *st.MaxParallel
	}
	if st.MaxUnavailablePerSite != nil {
		spec.Strategy.MaxUnavailablePerSite = *st.MaxUnavailablePerSite
	}
	spec.Monitor = f.Monitor.proto()
	return spec, nil
}

func (m *deployMonitor) proto() *droverv1.MonitorPolicy {
	if m == nil {
		return nil
	}
	out := &droverv1.MonitorPolicy{By: m.By, Webhook: m.Webhook}
	if d := m.Drift; d != nil {
		t := d.Thresholds
		out.Drift = &droverv1.DriftPolicy{
			Action: droverv1.PolicyAction(d.Action), Windows: d.Windows, ReferenceWindows: d.ReferenceWindows,
			Thresholds: &droverv1.DriftThresholds{
				PsiModerate: t.PSIModerate, PsiDrifted: t.PSIDrifted,
				KsModerate: t.KSModerate, KsDrifted: t.KSDrifted,
				JsModerate: t.JSModerate, JsDrifted: t.JSDrifted,
				DriftedShare: t.DriftedShare, MinCount: t.MinCount,
			},
		}
	}
	if s := m.SLO; s != nil {
		out.Slo = &droverv1.SLOPolicy{
			Action: droverv1.PolicyAction(s.Action), Windows: s.Windows,
			MaxErrorRate: s.MaxErrorRate, MaxP99: s.MaxP99.proto(), MinRequests: s.MinRequests,
		}
	}
	return out
}

// fileLine returns the line of the value at path (a chain of mapping
// keys) in a YAML document, or 0.
func fileLine(data []byte, path ...string) int {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return 0
	}
	n := resolveAlias(doc.Content[0])
	for _, k := range path {
		n = resolveAlias(mappingValue(n, k))
	}
	if n == nil {
		return 0
	}
	return n.Line
}

// deployFileTypes names, by Go type, each mapping of a deployment file
// and its type, for unknown-key messages.
var deployFileTypes = map[string]struct {
	where string
	typ   reflect.Type
}{
	typeName[deployFile]():         {"the deployment", reflect.TypeFor[deployFile]()},
	typeName[deploySelector]():     {"selector", reflect.TypeFor[deploySelector]()},
	typeName[deployHardware]():     {"selector.hardware", reflect.TypeFor[deployHardware]()},
	typeName[deployRuntime]():      {"runtime", reflect.TypeFor[deployRuntime]()},
	typeName[deployResources]():    {"resources", reflect.TypeFor[deployResources]()},
	typeName[deployStrategyFile](): {"strategy", reflect.TypeFor[deployStrategyFile]()},
	typeName[deployMonitor]():      {"monitor", reflect.TypeFor[deployMonitor]()},
	typeName[deployDrift]():        {"monitor.drift", reflect.TypeFor[deployDrift]()},
	typeName[deployThresholds]():   {"monitor.drift.thresholds", reflect.TypeFor[deployThresholds]()},
	typeName[deploySLO]():          {"monitor.slo", reflect.TypeFor[deploySLO]()},
}

// deployFileValueTypes says what a value of each Go type is, in the
// file's terms.
var deployFileValueTypes = map[string]string{
	typeName[deploySelector]():     "a mapping with labels, sites and hardware",
	typeName[deployHardware]():     "a mapping of hardware constraints",
	typeName[deployRuntime]():      "a mapping with type, command, env, ...",
	typeName[deployResources]():    "a mapping with gpus, mig_profile, memory and cpus",
	typeName[deployStrategyFile](): "a mapping with canary, max_parallel, ...",
	typeName[deployMonitor]():      "a mapping with by, webhook, drift and slo",
	typeName[deployDrift]():        "a mapping with action, windows, thresholds, ...",
	typeName[deployThresholds]():   "a mapping of drift thresholds (psi_moderate, psi_drifted, ...)",
	typeName[deploySLO]():          "a mapping with action, windows, max_error_rate, max_p99, ...",
	typeName[uint64]():             "a whole number, 0 or more",
	typeName[map[string]string]():  "a mapping of names to values",
	typeName[[]string]():           "a list",
	typeName[string]():             "text",
	typeName[uint32]():             "a whole number, 0 or more",
	typeName[float64]():            "a number",
	typeName[bool]():               "true or false",
}

// deployFileProblems turns a decoding error into the file's problems,
// each with its line: an unknown key with the nearest known one.
func deployFileProblems(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	problems := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := unknownFieldRE.FindStringSubmatch(e); m != nil {
			if t, ok := deployFileTypes[strings.TrimPrefix(m[3], "*")]; ok {
				keys := yamlFieldNames(t.typ)
				if near := nearest(m[2], keys); near != "" {
					e = fmt.Sprintf("line %s: field %q not found; did you mean %q?", m[1], m[2], near)
				} else {
					e = fmt.Sprintf("line %s: field %q not found in %s; it takes %s", m[1], m[2], t.where, strings.Join(keys, ", "))
				}
			}
		} else if m := wrongTypeRE.FindStringSubmatch(e); m != nil {
			if want, ok := deployFileValueTypes[strings.TrimPrefix(m[4], "*")]; ok {
				e = fmt.Sprintf("line %s: want %s, not %s", m[1], want, yamlFound(m[2], m[3]))
			}
		}
		problems = append(problems, e)
	}
	return joinProblems(problems)
}

func yamlFieldNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		out = append(out, strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0])
	}
	return out
}

// nearest returns the candidate closest to s by edit distance, when it
// is close enough to be a typo (a third of its length, at least 1, at
// most 3 edits), or "".
func nearest(s string, candidates []string) string {
	best, bestD := "", min(3, max(1, len(s)/3))+1
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// readDeployFile reads path, or stdin when path is "-".
func readDeployFile(path string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read deployment file: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxDeployFile+1))
	if err != nil {
		return nil, fmt.Errorf("read deployment file %s: %w", path, err)
	}
	if len(data) > maxDeployFile {
		return nil, fmt.Errorf("deployment file %s is larger than %d bytes; a deployment is far smaller", path, maxDeployFile)
	}
	return data, nil
}
