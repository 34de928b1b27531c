package cli

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// deployExample is the deployment file the help teaches with.
const deployExample = `  # defect-detector.yaml: version prod of defect-detector on every edge
  # camera in Berlin with at least 4 GiB of GPU memory, one canary first.
  name: defect-detector
  model: defect-detector@prod       # NAME@ALIAS follows the alias; NAME@7 pins
  selector:
    labels: {camera: edge}          # every label must match
    sites: [berlin]                 # any of these sites
    hardware:
      min_gpus: 1
      min_gpu_memory: 4GiB          # GiB = 2^30, GB = 10^9
      min_compute_capability: "8.7"
      cpu_arch: [arm64]
  runtime:
    type: exec                      # onnx (built in) or exec (your server)
    command: [python3, serve.py]
    env: {LOG_LEVEL: info}
    health_path: /healthz           # default /healthz
    start_timeout: 2m               # default 1m
    restart: on-failure             # always | on-failure (default) | never
  resources:
    gpus: 1
    memory: 2GiB
  strategy:
    canary: 1                       # or canary_percent: 10
    max_parallel: 5                 # default 1
    max_unavailable_per_site: 1     # default 1; 0 is refused
    min_healthy_time: 30s           # default 10s
    progress_deadline: 10m          # default 10m
    auto_promote: false             # default false: promote by hand
    auto_revert: true               # default true
  monitor:                          # optional: what the leader watches
    by: site                        # each site judged apart (or label:KEY, gpu)
    webhook: https://alerts.example/drover   # signed JSON body, retried
    drift:
      action: rollback              # alert (default) | pause | rollback
      windows: 3                    # consecutive drifted windows (default 3)
      thresholds: {psi_moderate: 0.1, psi_drifted: 0.25}
    slo:
      max_error_rate: 0.01          # share of requests failed
      max_p99: 250ms
      action: pause`

func newDeployCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "deploy",
		Short: "Run models on the fleet: plan, apply, list, show and remove deployments",
		Long: `Run models on the fleet.

A deployment says which model version runs where and how: a model reference
(NAME@ALIAS or NAME@VERSION), a node selector (labels, sites and hardware
constraints checked against each node's registered inventory), a runtime,
the resources each instance reserves, and how a new version rolls out
(canary first, then batches, never more than max_unavailable_per_site
nodes of one site at once).

Deployments are written in YAML files and applied with
` + "`drover deploy apply -f FILE`" + `. ` + "`drover deploy plan -f FILE`" + ` shows first,
changing nothing, which nodes match (and why the others do not) and the
batches a rollout would take. Every field, its default and the rollout
rules are in docs/deployments.md.

Example file:

` + deployExample,
		Example: `  drover deploy plan -f defect-detector.yaml
  drover deploy apply -f defect-detector.yaml
  drover deploy ls
  drover deploy show defect-detector
  drover deploy rm defect-detector`,
	},
		newDeployPlanCommand(g),
		newDeployApplyCommand(g),
		newDeployListCommand(g),
		newDeployShowCommand(g),
		newDeployRemoveCommand(g),
	)
}

// readSpec reads and parses the file named by -f.
func readSpec(cmd *cobra.Command, g *globals, path string) (*droverv1.DeploymentSpec, error) {
	if path == "" {
		return nil, usageErr(cmd, fmt.Errorf("no deployment file: pass -f FILE (or -f - for stdin)"))
	}
	data, err := readDeployFile(path, g.stdin)
	if err != nil {
		return nil, err
	}
	spec, err := parseDeployFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return spec, nil
}

func newDeployPlanCommand(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "plan -f FILE",
		Short: "Show what applying a deployment file would do, changing nothing",
		Long: `Show what applying a deployment file would do, changing nothing.

The server checks the file as apply would, resolves its model reference,
and judges every node against the selector: each node is listed with
whether it matches and, if not, why ("GPU memory 2 GiB < required 4 GiB",
"label camera=edge missing", "node is down"). Then come the batches a
rollout would take over the matching nodes, canary first, and a summary.

Example file:

` + deployExample,
		Example: `  drover deploy plan -f defect-detector.yaml
  drover deploy plan -f defect-detector.yaml -o json | jq '.nodes[] | select(.matches | not)'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := readSpec(cmd, g, file)
			if err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.deploy.PlanDeployment(cmd.Context(), connect.NewRequest(&droverv1.PlanDeploymentRequest{Spec: spec}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { planView(w, resp.Msg) })
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "deployment file (YAML), - for stdin")
	return cmd
}

// planView prints a plan: the nodes and their verdicts, the batches, the
// summary.
func planView(w io.Writer, p *droverv1.PlanDeploymentResponse) {
	names := map[string]string{}
	nodes := slices.Clone(p.GetNodes())
	slices.SortFunc(nodes, func(a, b *droverv1.NodeMatch) int {
		if a.GetMatches() != b.GetMatches() {
			if a.GetMatches() {
				return -1
			}
			return 1
		}
		return strings.Compare(a.GetNodeName(), b.GetNodeName())
	})
	row(w, "NODE", "SITE", "MATCH", "REASON")
	for _, n := range nodes {
		names[n.GetNodeId()] = n.GetNodeName()
		match := "yes"
		if !n.GetMatches() {
			match = "no"
		}
		reasons := n.GetReasons()
		first := "-"
		if len(reasons) > 0 {
			first = reasons[0]
		}
		row(w, orDash(n.GetNodeName()), orDash(n.GetSite()), match, first)
		for _, r := range reasons[min(1, len(reasons)):] {
			row(w, "", "", "", r)
		}
	}
	if len(nodes) == 0 {
		fmt.Fprintln(w, "(no nodes)")
	}
	fmt.Fprintln(w)
	for i, b := range p.GetBatches() {
		label := fmt.Sprintf("batch %d", i+1)
		if b.GetCanary() {
			label += " (canary)"
		}
		ids := make([]string, len(b.GetNodeIds()))
		for j, id := range b.GetNodeIds() {
			ids[j] = cmpOr(names[id], id)
		}
		fmt.Fprintf(w, "%s: %s\n", label, strings.Join(ids, " "))
	}
	fmt.Fprintf(w, "%s: %s\n", p.GetSpec().GetName(), p.GetSummary())
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func newDeployApplyCommand(g *globals) *cobra.Command {
	var (
		file   string
		expect int64
	)
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update a deployment from a file",
		Long: `Create or update a deployment from a deployment file.

The server checks the file, fills in defaults, resolves the model
reference and stores the deployment; nothing is stored when anything is
wrong. When the version the reference resolves to changes (on create, or
when the file or the alias now names another version) a rollout starts;
` + "`drover deploy show NAME`" + ` shows it.

--expect-revision N applies only if the deployment is still at revision N
(0: only if it does not exist yet), so two people editing the same file
cannot overwrite each other unknowingly.

Example file:

` + deployExample,
		Example: `  drover deploy apply -f defect-detector.yaml
  drover deploy apply -f defect-detector.yaml --expect-revision 3
  cat defect-detector.yaml | drover deploy apply -f -`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := readSpec(cmd, g, file)
			if err != nil {
				return err
			}
			req := &droverv1.ApplyDeploymentRequest{Spec: spec}
			if cmd.Flags().Changed("expect-revision") {
				if expect < 0 {
					return usageErr(cmd, fmt.Errorf("--expect-revision %d: want 0 or more", expect))
				}
				e := uint64(expect)
				req.ExpectRevision = &e
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			var before *droverv1.Deployment
			if outputFormat(cmd) == outputTable {
				if r, err := c.deploy.GetDeployment(cmd.Context(), connect.NewRequest(&droverv1.GetDeploymentRequest{Name: spec.GetName()})); err == nil {
					before = r.Msg.GetDeployment()
				}
			}
			resp, err := c.deploy.ApplyDeployment(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { applyView(w, before, resp.Msg) })
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "deployment file (YAML), - for stdin")
	cmd.Flags().Int64Var(&expect, "expect-revision", 0, "apply only if the deployment is at this `REVISION` (0: must not exist)")
	return cmd
}

// applyView says what an apply changed.
func applyView(w io.Writer, before *droverv1.Deployment, r *droverv1.ApplyDeploymentResponse) {
	d := r.GetDeployment()
	name := d.GetSpec().GetName()
	switch {
	case before == nil && d.GetRevision() == 1 && r.GetRollout() != nil && r.GetRollout().GetFromVersion() == 0:
		fmt.Fprintf(w, "Created deployment %s (revision 1, %s version %d)\n", name, d.GetSpec().GetModel(), d.GetVersion())
	case before != nil && before.GetRevision() == d.GetRevision() && r.GetRollout() == nil:
		fmt.Fprintf(w, "Deployment %s unchanged (revision %d, version %d)\n", name, d.GetRevision(), d.GetVersion())
	default:
		fmt.Fprintf(w, "Updated deployment %s to revision %d\n", name, d.GetRevision())
		if before != nil {
			for _, c := range specChanges(before.GetSpec(), d.GetSpec()) {
				fmt.Fprintf(w, "  %s\n", c)
			}
		}
	}
	if ro := r.GetRollout(); ro != nil {
		from := "nothing"
		if ro.GetFromVersion() != 0 {
			from = fmt.Sprintf("version %d", ro.GetFromVersion())
		}
		fmt.Fprintf(w, "Started rollout %d: %s → version %d (%s); see it with: drover deploy show %s\n",
			ro.GetId(), from, ro.GetToVersion(), ro.GetReason(), name)
	} else {
		fmt.Fprintf(w, "No rollout: the fleet already has version %d as its target\n", d.GetVersion())
	}
	fmt.Fprintf(w, "(index %d)\n", r.GetMeta().GetIndex())
}

// specChanges lists what differs between two specs, by top-level part.
func specChanges(a, b *droverv1.DeploymentSpec) []string {
	var out []string
	if a.GetModel() != b.GetModel() {
		out = append(out, fmt.Sprintf("model: %s → %s", a.GetModel(), b.GetModel()))
	}
	for _, p := range []struct {
		name string
		a, b fmt.Stringer
	}{
		{"selector", a.GetSelector(), b.GetSelector()},
		{"runtime", a.GetRuntime(), b.GetRuntime()},
		{"resources", a.GetResources(), b.GetResources()},
		{"strategy", a.GetStrategy(), b.GetStrategy()},
		{"monitor", a.GetMonitor(), b.GetMonitor()},
	} {
		if p.a.String() != p.b.String() {
			out = append(out, p.name+": changed")
		}
	}
	return out
}

func newDeployListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List deployments",
		Long: `List deployments with their model reference, the version it resolved
to, how many nodes it runs on, and the state of its latest rollout.

NODES counts the nodes the rollout controller has assigned the deployment,
whichever version each is assigned.`,
		Example: `  drover deploy ls
  drover deploy ls -o json | jq -r '.deployments[].spec.name'
  drover deploy ls --index 40 --wait 1m   # wait for a change after index 40`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.deploy.ListDeployments(cmd.Context(), connect.NewRequest(&droverv1.ListDeploymentsRequest{Query: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				ds := slices.Clone(resp.Msg.GetDeployments())
				slices.SortFunc(ds, func(a, b *droverv1.Deployment) int {
					return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName())
				})
				row(w, "NAME", "MODEL", "VERSION", "NODES", "ROLLOUT", "AGE")
				for _, d := range ds {
					row(w, d.GetSpec().GetName(), d.GetSpec().GetModel(), formatUint(d.GetVersion()),
						strconv.FormatUint(uint64(resp.Msg.GetAssignedNodes()[d.GetSpec().GetName()]), 10),
						rolloutCell(resp.Msg.GetRollouts()[d.GetSpec().GetName()]), formatAge(d.GetCreateTime(), g.now()))
				}
			})
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

// rolloutCell renders a rollout as "#3 progressing".
func rolloutCell(r *droverv1.Rollout) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("#%d %s", r.GetId(), rolloutStateName(r.GetState()))
}

func rolloutStateName(s droverv1.RolloutState) string {
	name, ok := droverv1.RolloutState_name[int32(s)]
	if !ok || s == droverv1.RolloutState_ROLLOUT_STATE_UNSPECIFIED {
		return fmt.Sprintf("state(%d)", int32(s))
	}
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, "ROLLOUT_STATE_")), "_", "-")
}

func newDeployShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a deployment as stored, with every default filled in, and its rollout",
		Long: `Show a deployment as the cluster stores it, every default filled in, so
what it prints is exactly what the rollout controller acts on; its latest
rollout; and the nodes assigned it, with the version each is told to run
and the state of its instance as last reported to the leader. Follow a
rollout batch by batch with ` + "`drover rollout status NAME --watch`" + `.`,
		Example: `  drover deploy show defect-detector
  drover deploy show defect-detector -o json`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.deploy.GetDeployment(cmd.Context(), connect.NewRequest(&droverv1.GetDeploymentRequest{Name: args[0], Query: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { deploymentView(w, resp.Msg, g) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func deploymentView(w io.Writer, r *droverv1.GetDeploymentResponse, g *globals) {
	d := r.GetDeployment()
	s := d.GetSpec()
	field(w, "Name", s.GetName())
	field(w, "Model", fmt.Sprintf("%s (version %d)", s.GetModel(), d.GetVersion()))
	field(w, "Revision", formatUint(d.GetRevision()))
	field(w, "Created", formatTimeAge(d.GetCreateTime(), g.now())+" by "+orDash(d.GetCreatedBy()))
	field(w, "Updated", formatTimeAge(d.GetUpdateTime(), g.now()))
	sel := s.GetSelector()
	field(w, "Labels", orDash(formatPairs(sel.GetLabels(), formatString)))
	field(w, "Sites", orDash(strings.Join(sel.GetSites(), ", ")))
	field(w, "Hardware", orDash(strings.Join(hardwareWords(sel.GetHardware()), ", ")))
	rt := s.GetRuntime()
	runtime := rt.GetType()
	if len(rt.GetCommand()) > 0 {
		runtime += ": " + strings.Join(rt.GetCommand(), " ")
	}
	field(w, "Runtime", runtime)
	field(w, "Health", fmt.Sprintf("%s, start timeout %s, restart %s", rt.GetHealthPath(), rt.GetStartTimeout().AsDuration(), rt.GetRestart()))
	if len(rt.GetEnv()) > 0 {
		field(w, "Env", formatPairs(rt.GetEnv(), formatString))
	}
	res := s.GetResources()
	var rs []string
	if res.GetGpus() > 0 {
		rs = append(rs, fmt.Sprintf("%d GPU", res.GetGpus()))
	}
	if res.GetMigProfile() != "" {
		rs = append(rs, "MIG "+res.GetMigProfile())
	}
	if res.GetMemoryBytes() > 0 {
		rs = append(rs, units.Bytes(res.GetMemoryBytes())+" memory")
	}
	if res.GetCpus() > 0 {
		rs = append(rs, formatFloat(res.GetCpus())+" CPUs")
	}
	field(w, "Resources", orDash(strings.Join(rs, ", ")))
	st := s.GetStrategy()
	canary := "none"
	switch {
	case st.GetCanary() > 0:
		canary = fmt.Sprintf("%d nodes", st.GetCanary())
	case st.GetCanaryPercent() > 0:
		canary = fmt.Sprintf("%d%%", st.GetCanaryPercent())
	}
	field(w, "Strategy", fmt.Sprintf("canary %s, max parallel %d, max unavailable per site %d, min healthy %s, deadline %s, auto promote %t, auto revert %t",
		canary, st.GetMaxParallel(), st.GetMaxUnavailablePerSite(), st.GetMinHealthyTime().AsDuration(), st.GetProgressDeadline().AsDuration(),
		st.GetAutoPromote(), st.GetAutoRevert()))
	field(w, "Monitor", monitorText(s.GetMonitor()))
	if ro := r.GetRollout(); ro != nil {
		field(w, "Rollout", fmt.Sprintf("#%d %s: version %d → %d (%s)", ro.GetId(), rolloutStateName(ro.GetState()),
			ro.GetFromVersion(), ro.GetToVersion(), ro.GetReason()))
	} else {
		field(w, "Rollout", "-")
	}
	if len(r.GetNodes()) > 0 {
		fmt.Fprintln(w)
		row(w, "NODE", "SITE", "VERSION", "STATE")
		for _, n := range r.GetNodes() {
			row(w, n.GetNodeName(), orDash(n.GetSite()), formatUint(n.GetAssignment().GetVersion()),
				orDash(strings.ToLower(strings.TrimPrefix(n.GetStatus().GetState().String(), "INSTANCE_STATE_"))))
		}
	}
}

// hardwareWords renders hardware constraints as short phrases.
func hardwareWords(hw *droverv1.HardwareConstraints) []string {
	var out []string
	if n := hw.GetMinGpus(); n > 0 {
		out = append(out, fmt.Sprintf("≥%d GPU", n))
	}
	if m := hw.GetMinGpuMemoryBytes(); m > 0 {
		out = append(out, "GPU memory ≥"+units.Bytes(m))
	}
	if c := hw.GetMinComputeCapability(); c != "" {
		out = append(out, "compute ≥"+c)
	}
	if len(hw.GetGpuModels()) > 0 {
		out = append(out, "GPU "+strings.Join(hw.GetGpuModels(), "|"))
	}
	if m := hw.GetMigProfile(); m != "" {
		out = append(out, "MIG "+m)
	}
	if len(hw.GetCpuArch()) > 0 {
		out = append(out, "arch "+strings.Join(hw.GetCpuArch(), "|"))
	}
	if len(hw.GetCpuFlags()) > 0 {
		out = append(out, "CPU flags "+strings.Join(hw.GetCpuFlags(), "+"))
	}
	if m := hw.GetMinMemoryBytes(); m > 0 {
		out = append(out, "memory ≥"+units.Bytes(m))
	}
	if m := hw.GetMinFreeDiskBytes(); m > 0 {
		out = append(out, "free disk ≥"+units.Bytes(m))
	}
	return out
}

func newDeployRemoveCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a deployment",
		Long: `Delete a deployment and its rollout history. A deployment created again
under the name starts a history of its own, from rollout 1.`,
		Example: `  drover deploy rm defect-detector`,
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.deploy.DeleteDeployment(cmd.Context(), connect.NewRequest(&droverv1.DeleteDeploymentRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Deleted deployment %s (index %d)\n", args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}

// monitorText sums up a deployment's monitor policy in a line.
func monitorText(m *droverv1.MonitorPolicy) string {
	if m == nil {
		return "none"
	}
	var parts []string
	if d := m.GetDrift(); d != nil {
		parts = append(parts, fmt.Sprintf("drift: %s after %d drifted windows (PSI %g/%g)", actionName(d.GetAction()), d.GetWindows(),
			d.GetThresholds().GetPsiModerate(), d.GetThresholds().GetPsiDrifted()))
	}
	if sl := m.GetSlo(); sl != nil {
		var checks []string
		if r := sl.GetMaxErrorRate(); r > 0 {
			checks = append(checks, fmt.Sprintf("errors > %g", r))
		}
		if d := sl.GetMaxP99().AsDuration(); d > 0 {
			checks = append(checks, fmt.Sprintf("p99 > %s", d))
		}
		parts = append(parts, fmt.Sprintf("slo: %s after %d windows with %s", actionName(sl.GetAction()), sl.GetWindows(), strings.Join(checks, " or ")))
	}
	by := "the whole deployment"
	if m.GetBy() != "" {
		by = "each " + m.GetBy()
	}
	parts = append(parts, "judged per "+by)
	if m.GetWebhook() != "" {
		parts = append(parts, "webhook "+m.GetWebhook())
	}
	return strings.Join(parts, "; ")
}

func actionName(a droverv1.PolicyAction) string {
	return strings.ToLower(strings.TrimPrefix(a.String(), "POLICY_ACTION_"))
}
