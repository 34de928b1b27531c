package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const testDeployFile = `# An edge deployment.
name: defect-detector
model: defect-detector@prod
selector:
  labels: {camera: edge}
  sites: [berlin]
  hardware:
    min_gpus: 1
    min_gpu_memory: 4GiB
    min_compute_capability: 8.7
    min_free_disk: 20GB
runtime:
  type: exec
  command: [python3, serve.py]
  start_timeout: 2m
resources:
  gpus: 1
  memory: 512MiB
  cpus: 1.5
strategy:
  canary_percent: 10
  max_parallel: 5
  min_healthy_time: 30s
`

func TestParseDeployFile(t *testing.T) {
	spec, err := parseDeployFile([]byte(testDeployFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(protojson.Format(spec))
	hw := spec.GetSelector().GetHardware()
	if spec.GetName() != "defect-detector" || spec.GetModel() != "defect-detector@prod" ||
		spec.GetSelector().GetLabels()["camera"] != "edge" || spec.GetSelector().GetSites()[0] != "berlin" {
		t.Errorf("name, model, selector: %v", spec)
	}
	if hw.GetMinGpus() != 1 || hw.GetMinGpuMemoryBytes() != 4<<30 || hw.GetMinComputeCapability() != "8.7" || hw.GetMinFreeDiskBytes() != 20e9 {
		t.Errorf("hardware: %v", hw)
	}
	if rt := spec.GetRuntime(); rt.GetType() != "exec" || strings.Join(rt.GetCommand(), " ") != "python3 serve.py" || rt.GetStartTimeout().AsDuration() != 2*time.Minute {
		t.Errorf("runtime: %v", rt)
	}
	if r := spec.GetResources(); r.GetGpus() != 1 || r.GetMemoryBytes() != 512<<20 || r.GetCpus() != 1.5 {
		t.Errorf("resources: %v", r)
	}
	st := spec.GetStrategy()
	if st.GetCanaryPercent() != 10 || st.GetMaxParallel() != 5 || st.GetMinHealthyTime().AsDuration() != 30*time.Second {
		t.Errorf("strategy: %v", st)
	}
	// Absent: auto_revert defaults to true; the server fills in the rest.
	if !st.GetAutoRevert() || st.GetMaxUnavailablePerSite() != 0 || st.GetProgressDeadline() != nil {
		t.Errorf("defaults: %v", st)
	}
	// min_healthy_time: 0s is kept, unlike a missing field: a node is
	// done as soon as it is healthy.
	spec, err = parseDeployFile([]byte(strings.Replace(testDeployFile, "30s", "0s", 1)))
	if d := spec.GetStrategy().GetMinHealthyTime(); err != nil || d == nil || d.AsDuration() != 0 {
		t.Errorf("min_healthy_time: 0s gives %v, %v", d, err)
	}
	spec, err = parseDeployFile([]byte(testDeployFile + "  auto_revert: false\n"))
	if err != nil || spec.GetStrategy().GetAutoRevert() {
		t.Errorf("auto_revert: false gives %v, %v", spec.GetStrategy(), err)
	}
}

const testMonitor = `monitor:
  by: site
  webhook: https://alerts.example/drover
  drift:
    action: rollback
    windows: 4
    thresholds: {psi_moderate: 0.2, psi_drifted: 0.4}
  slo:
    max_error_rate: 0.05
    max_p99: 250ms
    action: pause
`

func TestParseDeployFileMonitor(t *testing.T) {
	spec, err := parseDeployFile([]byte(testDeployFile + testMonitor))
	if err != nil {
		t.Fatal(err)
	}
	m := spec.GetMonitor()
	d, slo := m.GetDrift(), m.GetSlo()
	if m.GetBy() != "site" || m.GetWebhook() != "https://alerts.example/drover" ||
		d.GetAction() != droverv1.PolicyAction_POLICY_ACTION_ROLLBACK || d.GetWindows() != 4 ||
		d.GetThresholds().GetPsiModerate() != 0.2 || d.GetThresholds().GetPsiDrifted() != 0.4 ||
		slo.GetMaxErrorRate() != 0.05 || slo.GetMaxP99().AsDuration() != 250*time.Millisecond ||
		slo.GetAction() != droverv1.PolicyAction_POLICY_ACTION_PAUSE {
		t.Errorf("monitor: %v", m)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"unknown action", strings.Replace(testMonitor, "action: rollback", "action: reboot", 1), `line 28: action "reboot": want alert, pause or rollback`},
		{"typo", strings.Replace(testMonitor, "max_p99", "max_p90", 1), `field "max_p90" not found; did you mean "max_p99"?`},
		{"unknown threshold", strings.Replace(testMonitor, "psi_drifted", "psi_high", 1), `field "psi_high" not found in monitor.drift.thresholds`},
	} {
		if _, err := parseDeployFile([]byte(testDeployFile + tc.file)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

func TestParseDeployFileRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"typo", strings.Replace(testDeployFile, "max_parallel", "max_paralel", 1),
			`line 22: field "max_paralel" not found; did you mean "max_parallel"?`},
		{"typo nested", strings.Replace(testDeployFile, "min_gpu_memory", "min_gpu_mem", 1),
			`line 9: field "min_gpu_mem" not found; did you mean "min_gpu_memory"?`},
		{"unknown key", strings.Replace(testDeployFile, "cpus: 1.5", "colour: blue", 1),
			`line 19: field "colour" not found in resources; it takes gpus, mig_profile, memory, cpus`},
		{"bad size", strings.Replace(testDeployFile, "4GiB", "4 gallons", 1), `line 9: size "4 gallons": unknown unit "gallons"`},
		{"bare number duration", strings.Replace(testDeployFile, "30s", "30", 1), `line 23: duration "30" is not a duration such as 30s, 10m or 1h30m (a bare number has no unit: write 30s for seconds)`},
		{"zero duration", strings.Replace(testDeployFile, "start_timeout: 2m", "start_timeout: 0s", 1), `line 15: duration "0s" must be more than zero`},
		{"negative healthy time", strings.Replace(testDeployFile, "30s", "-1s", 1), `line 23: duration "-1s" is negative`},
		{"wrong type", strings.Replace(testDeployFile, "sites: [berlin]", "sites: {a: b}", 1), "line 6: want a list, not a mapping"},
		{"budget 0", testDeployFile + "  max_unavailable_per_site: 0\n", "line 24: strategy.max_unavailable_per_site is 0, which lets no node of a site update"},
		{"max_parallel 0", strings.Replace(testDeployFile, "max_parallel: 5", "max_parallel: 0", 1), "line 22: strategy.max_parallel is 0"},
		{"two documents", testDeployFile + "---\nname: x\n", "a second YAML document"},
		{"empty", "", "the file is empty"},
		{"syntax", "name: [", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseDeployFile([]byte(tc.file))
			t.Log(err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseDeployFile = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestNearest(t *testing.T) {
	keys := []string{"canary", "canary_percent", "max_parallel", "max_unavailable_per_site"}
	for in, want := range map[string]string{
		"max_paralel": "max_parallel", "canary_precent": "canary_percent", "Canary": "canary", "colour": "", "x": "",
	} {
		if got := nearest(in, keys); got != want {
			t.Errorf("nearest(%q) = %q, want %q", in, got, want)
		}
	}
}

func writeDeployFile(t *testing.T, h *harness, body string) string {
	t.Helper()
	p := filepath.Join(h.dir, "deploy.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDeployLifecycle(t *testing.T) {
	h := newHarness(t)
	file := writeDeployFile(t, h, testDeployFile)

	out := h.ok("deploy", "apply", "-f", file)
	wantContains(t, out, "Created deployment defect-detector (revision 1, defect-detector@prod version 7)",
		"Started rollout 1: nothing → version 7 (apply revision 1); see it with: drover deploy show defect-detector")
	if got := h.fake.deploys.lastApply; got.ExpectRevision != nil || got.GetSpec().GetResources().GetCpus() != 1.5 {
		t.Errorf("apply request: %v", got)
	}

	out = h.ok("deploy", "apply", "-f", file)
	wantContains(t, out, "Deployment defect-detector unchanged (revision 1, version 7)", "No rollout")

	file = writeDeployFile(t, h, strings.Replace(testDeployFile, "defect-detector@prod", "defect-detector@8", 1))
	out = h.ok("deploy", "apply", "-f", file, "--expect-revision", "1")
	wantContains(t, out, "Updated deployment defect-detector to revision 2", "model: defect-detector@prod → defect-detector@8",
		"Started rollout 2: version 7 → version 8")

	r := h.run("deploy", "apply", "-f", file, "--expect-revision", "1")
	if r.code == 0 || !strings.Contains(r.stderr, "expected revision 1, but it is at revision 2") {
		t.Errorf("stale --expect-revision: exit %d\n%s", r.code, r.stderr)
	}

	out = h.ok("deploy", "ls")
	wantContains(t, squeeze(out), "NAME MODEL VERSION NODES ROLLOUT AGE", "defect-detector defect-detector@8 8 3 #2 progressing 2h")

	out = h.ok("deploy", "show", "defect-detector")
	wantContains(t, squeeze(out), "Model: defect-detector@8 (version 8)", "Revision: 2", "Labels: camera=edge", "Sites: berlin",
		"Hardware: ≥1 GPU, GPU memory ≥4.0 GiB, compute ≥8.7, free disk ≥18.6 GiB", "Runtime: exec: python3 serve.py",
		"Strategy: canary 10%, max parallel 5", "Rollout: #2 progressing: version 7 → 8 (apply revision 2)")

	out = h.ok("deploy", "show", "defect-detector", "-o", "json")
	var got droverv1.GetDeploymentResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || got.GetDeployment().GetRevision() != 2 {
		t.Errorf("show -o json: %v %v", got.GetDeployment(), err)
	}

	h.ok("deploy", "rm", "defect-detector")
	if out := h.ok("deploy", "ls"); strings.Contains(out, "defect-detector") {
		t.Errorf("ls after rm:\n%s", out)
	}
	r = h.run("deploy", "rm", "defect-detector")
	if r.code == 0 || !strings.Contains(r.stderr, `deployment "defect-detector" not found`) {
		t.Errorf("rm of a missing deployment: exit %d\n%s", r.code, r.stderr)
	}
}

func TestDeployPlan(t *testing.T) {
	h := newHarness(t)
	h.fake.deploys.plan = &droverv1.PlanDeploymentResponse{
		Version: 7,
		Nodes: []*droverv1.NodeMatch{
			{NodeId: "id-3", NodeName: "e-03", Site: "berlin", Reasons: []string{"GPU memory 2 GiB < required 4 GiB", "label camera=edge missing"}},
			{NodeId: "id-1", NodeName: "e-01", Site: "berlin", Matches: true},
			{NodeId: "id-4", NodeName: "e-04", Site: "lyon", Reasons: []string{"site lyon not in [berlin]"}},
			{NodeId: "id-2", NodeName: "e-02", Site: "berlin", Matches: true},
		},
		Batches: []*droverv1.RolloutBatch{{NodeIds: []string{"id-1"}, Canary: true}, {NodeIds: []string{"id-2"}}},
		Summary: "create; roll out to version 7 on 2 nodes in 2 batches (1 canary batch first); 2 nodes skipped",
	}
	file := writeDeployFile(t, h, testDeployFile)
	out := h.ok("deploy", "plan", "-f", file)
	wantContains(t, squeeze(out),
		"NODE SITE MATCH REASON\ne-01 berlin yes -\ne-02 berlin yes -\ne-03 berlin no GPU memory 2 GiB < required 4 GiB\n label camera=edge missing\ne-04 lyon no site lyon not in [berlin]",
		"batch 1 (canary): e-01\nbatch 2: e-02\n",
		"defect-detector: create; roll out to version 7 on 2 nodes in 2 batches")
	if h.fake.deploys.lastPlan.GetSpec().GetName() != "defect-detector" {
		t.Errorf("plan request: %v", h.fake.deploys.lastPlan)
	}
	out = h.ok("deploy", "plan", "-f", file, "-o", "json")
	var p droverv1.PlanDeploymentResponse
	if err := protojson.Unmarshal([]byte(out), &p); err != nil || len(p.GetNodes()) != 4 || len(p.GetBatches()) != 2 {
		t.Errorf("plan -o json: %v %v", &p, err)
	}

	// A bad file never reaches the server.
	before := len(h.fake.recordedRequests())
	r := h.run("deploy", "plan", "-f", writeDeployFile(t, h, strings.Replace(testDeployFile, "max_parallel", "max_paralel", 1)))
	if r.code == 0 || !strings.Contains(r.stderr, `line 22: field "max_paralel" not found; did you mean "max_parallel"?`) {
		t.Errorf("plan of a bad file: exit %d\n%s", r.code, r.stderr)
	}
	if after := len(h.fake.recordedRequests()); after != before {
		t.Errorf("a bad file sent %d requests", after-before)
	}
	if r := h.run("deploy", "plan"); r.code == 0 || !strings.Contains(r.stderr, "pass -f FILE") {
		t.Errorf("plan without -f: exit %d\n%s", r.code, r.stderr)
	}
}

func TestDeployHelpTeachesTheFile(t *testing.T) {
	h := newHarness(t)
	out := h.ok("deploy", "apply", "--help")
	wantContains(t, out, "model: defect-detector@prod", "max_unavailable_per_site: 1", "drover deploy apply -f defect-detector.yaml")
	// The example in the help is a file the parser takes.
	var lines []string
	for _, l := range strings.Split(deployExample, "\n") {
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	if _, err := parseDeployFile([]byte(strings.Join(lines, "\n"))); err != nil {
		t.Errorf("the help's example file does not parse: %v", err)
	}
}

// FuzzParseDeployFile checks that no file makes the parser panic, and
// that what it accepts has the fields it read.
func FuzzParseDeployFile(f *testing.F) {
	f.Add([]byte(testDeployFile))
	f.Add([]byte("name: x\nstrategy: {max_unavailable_per_site: 0}\n"))
	f.Add([]byte("selector:\n  hardware:\n    min_gpu_memory: [1]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := parseDeployFile(data)
		if err == nil && spec.GetStrategy() == nil {
			t.Errorf("accepted %q without a strategy", data)
		}
	})
}
