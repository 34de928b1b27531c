package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// deployFile writes a deployment file and returns its path.
func deployFile(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "deploy.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodDeployment = `name: defect-detector
model: detector@prod
selector:
  labels: {camera: edge}
  sites: [berlin]
  hardware:
    min_memory: 16GiB
runtime:
  type: onnx
strategy:
  canary: 1
  max_parallel: 1
`

// TestDeployRefusesBadInput applies deployment files that are wrong in
// the ways people get them wrong, through the command line against a real
// cluster: each is refused with an error naming the problem, and the
// cluster holds no deployment afterwards. Then a good file is applied,
// and a bad change to it leaves its revision alone.
func TestDeployRefusesBadInput(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := c.Nodes()[0].APIAddr()
	createModel(t, c.Client(c.Leader(), false), "detector")
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, addr, "model", "push", writeTree(t, 1<<20), "--model", "detector"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := drover(ctx, addr, "model", "alias", "set", "detector", "prod", "1"); code != 0 {
		t.Fatalf("alias: exit %d\n%s", code, errOut)
	}

	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"unknown field", strings.Replace(goodDeployment, "max_parallel", "max_paralel", 1),
			[]string{`line 12: field "max_paralel" not found; did you mean "max_parallel"?`}},
		{"impossible constraint", strings.Replace(goodDeployment, "min_memory: 16GiB", "min_compute_capability: abc\n    cpu_arch: [sparc64]", 1),
			[]string{`compute capability "abc" is not MAJOR.MINOR`, `"sparc64" is not a CPU architecture`}},
		{"missing model", strings.Replace(goodDeployment, "detector@prod", "nope@prod", 1),
			[]string{`model "nope" not found; list models with "drover model ls"`}},
		{"missing alias", strings.Replace(goodDeployment, "detector@prod", "detector@canary", 1),
			[]string{`alias "canary" not found`, `drover model show detector`}},
		{"missing version", strings.Replace(goodDeployment, "detector@prod", "detector@7", 1),
			[]string{`version 7 not found`}},
		{"budget 0 with canary 0", strings.Replace(goodDeployment, "canary: 1", "canary: 0\n  max_unavailable_per_site: 0", 1),
			[]string{"max_unavailable_per_site is 0, which lets no node of a site update"}},
		{"exec without command", strings.Replace(goodDeployment, "type: onnx", "type: exec", 1),
			[]string{"type exec needs a command"}},
		{"canary twice", strings.Replace(goodDeployment, "canary: 1", "canary: 1\n  canary_percent: 10", 1),
			[]string{"canary (1) and canary_percent (10%) are both set"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := deployFile(t, tc.file)
			for _, verb := range []string{"plan", "apply"} {
				out, errOut, code := drover(ctx, addr, "deploy", verb, "-f", f)
				t.Logf("deploy %s: exit %d\n%s%s", verb, code, out, errOut)
				if code == 0 {
					t.Fatalf("deploy %s of a bad file succeeded", verb)
				}
				for _, w := range tc.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("deploy %s: the error does not say %q", verb, w)
					}
				}
			}
			out, errOut, code := drover(ctx, addr, "deploy", "ls", "-o", "json")
			if code != 0 || strings.Contains(out, "defect-detector") {
				t.Errorf("deploy ls after a refusal: exit %d\n%s%s", code, out, errOut)
			}
		})
	}

	good := deployFile(t, goodDeployment)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", good); code != 0 ||
		!strings.Contains(out, "Created deployment defect-detector") || !strings.Contains(out, "Started rollout 1") {
		t.Fatalf("apply: exit %d\n%s%s", code, out, errOut)
	}
	// Applied again: nothing to do, and a plan says so.
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", good); code != 0 || !strings.Contains(out, "unchanged (revision 1, version 1)") {
		t.Errorf("reapply: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := drover(ctx, addr, "deploy", "plan", "-f", good); code != 0 || !strings.Contains(out, "defect-detector: no change") {
		t.Errorf("plan of the applied file: exit %d\n%s%s", code, out, errOut)
	}
	// A create over an existing deployment is a conflict.
	if _, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", good, "--expect-revision", "0"); code == 0 ||
		!strings.Contains(errOut, "expected revision 0, but it is at revision 1") {
		t.Errorf("apply --expect-revision 0 over revision 1: exit %d\n%s", code, errOut)
	}
	bad := deployFile(t, strings.Replace(goodDeployment, "type: onnx", "type: exec", 1))
	if _, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", bad); code == 0 || !strings.Contains(errOut, "type exec needs a command") {
		t.Errorf("bad update: exit %d\n%s", code, errOut)
	}
	d, err := c.Client(c.Leader(), false).Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: "defect-detector"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Msg.GetDeployment(); got.GetRevision() != 1 || got.GetSpec().GetRuntime().GetType() != "onnx" || got.GetVersion() != 1 {
		t.Errorf("a refused update changed the deployment: %v", got)
	}
	// The stored spec has every default filled in.
	if st := d.Msg.GetDeployment().GetSpec().GetStrategy(); !st.GetAutoRevert() || st.GetMaxUnavailablePerSite() != 1 ||
		st.GetMinHealthyTime().AsDuration() != 10*time.Second || st.GetProgressDeadline().AsDuration() != 10*time.Minute {
		t.Errorf("stored strategy lacks defaults: %v", st)
	}
	// The leader's controller may have finished it already: no node
	// matches, so there is nothing to wait for.
	if r := d.Msg.GetRollout(); r.GetId() != 1 || r.GetToVersion() != 1 || r.GetReason() != "apply revision 1" ||
		(r.GetState() != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING && r.GetState() != droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED) {
		t.Errorf("rollout: %v", r)
	}
	// The alias the deployment follows cannot be removed under it.
	if _, errOut, code := drover(ctx, addr, "model", "alias", "rm", "detector", "prod"); code == 0 || !strings.Contains(errOut, `followed by deployment "defect-detector"`) {
		t.Errorf("alias rm under a deployment: exit %d\n%s", code, errOut)
	}
	if out, errOut, code := drover(ctx, addr, "deploy", "rm", "defect-detector"); code != 0 {
		t.Fatalf("rm: exit %d\n%s%s", code, out, errOut)
	}
	if out, _, _ := drover(ctx, addr, "deploy", "ls"); strings.Contains(out, "defect-detector") {
		t.Errorf("deploy ls after rm:\n%s", out)
	}
}

// TestDeployPlanExplainsSkips plans a deployment against agents with
// different hardware (fake /proc trees of a Raspberry Pi 5 and an x86
// server; no NVIDIA driver on any), sites and labels: every node that
// does not match is listed with the reason, and the batches cover the
// matching nodes, canary first.
func TestDeployPlanExplainsSkips(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := c.Nodes()[0].APIAddr()
	type shape struct {
		site, root string
		edge       bool
	}
	shapes := map[string]shape{
		"cam-01": {"berlin", "rpi5", true},       // 8 GB of memory: too little
		"cam-02": {"berlin", "x86-server", true}, // matches
		"cam-03": {"berlin", "x86-server", true}, // matches
		"cam-04": {"lyon", "x86-server", true},   // another site
		"cam-05": {"berlin", "x86-server", false},
	}
	agents, err := c.StartAgents(ctx, len(shapes), cluster.AgentOptions{
		Prefix: "cam",
		Configure: func(cfg *agent.Config) {
			s := shapes[cfg.Name]
			cfg.Site = s.site
			cfg.Root = filepath.Join("..", "hwprobe", "testdata", s.root)
			if s.edge {
				cfg.Labels = map[string]string{"camera": "edge"}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := cluster.WaitAgentsEnrolled(ctx, agents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitNodes(ctx, droverv1.NodeStatus_NODE_STATUS_READY, ids...); err != nil {
		t.Fatal(err)
	}
	createModel(t, c.Client(c.Leader(), false), "detector")
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, addr, "model", "push", writeTree(t, 1<<20), "--model", "detector"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	if _, errOut, code := drover(ctx, addr, "model", "alias", "set", "detector", "prod", "1"); code != 0 {
		t.Fatalf("alias: exit %d\n%s", code, errOut)
	}

	out, errOut, code := drover(ctx, addr, "deploy", "plan", "-f", deployFile(t, goodDeployment))
	t.Logf("plan: exit %d\n%s%s", code, out, errOut)
	if code != 0 {
		t.Fatal("plan failed")
	}
	for _, want := range []string{
		"cam-02  berlin  yes",
		"cam-03  berlin  yes",
		"GiB < required 16 GiB", // cam-01
		"site lyon not in [berlin]",
		"label camera=edge missing",
		"create; roll out to version 1 on 2 nodes in 2 batches (1 canary batch first); 3 nodes skipped",
	} {
		if !strings.Contains(squeeze(out), want) {
			t.Errorf("the plan does not say %q", want)
		}
	}

	// The batches go by node id, which enrollment picks at random.
	if !strings.Contains(out, "batch 1 (canary): cam-02\nbatch 2: cam-03\n") && !strings.Contains(out, "batch 1 (canary): cam-03\nbatch 2: cam-02\n") {
		t.Errorf("the plan does not put cam-02 and cam-03 in two batches, one the canary")
	}

	// Asking for a GPU: no node has one, and each says why. On a machine
	// with an NVIDIA driver every agent reports its GPUs, so this part
	// holds only without one.
	nodes, err := c.Client(c.Leader(), false).Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Msg.GetNodes() {
		if len(n.GetInventory().GetGpus()) > 0 {
			t.Logf("node %s has %d GPUs: skipping the no-GPU plan", n.GetName(), len(n.GetInventory().GetGpus()))
			return
		}
	}
	gpu := strings.Replace(goodDeployment, "min_memory: 16GiB", "min_gpu_memory: 4GiB", 1)
	resp, err := c.Client(c.Leader(), false).Deploys.PlanDeployment(ctx, connect.NewRequest(&droverv1.PlanDeploymentRequest{
		Spec: mustParseDeploy(t, ctx, addr, gpu),
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.Msg.GetNodes() {
		t.Logf("%s: %v %q", n.GetNodeName(), n.GetMatches(), n.GetReasons())
		if n.GetMatches() || len(n.GetReasons()) == 0 {
			t.Errorf("%s matches a GPU constraint without a GPU", n.GetNodeName())
		}
		if n.GetNodeName() == "cam-02" && !strings.HasPrefix(n.GetReasons()[0], "no GPU") {
			t.Errorf("cam-02: %q, want a reason saying it has no GPU", n.GetReasons())
		}
	}
	if len(resp.Msg.GetBatches()) != 0 || !strings.Contains(resp.Msg.GetSummary(), "no node matches") {
		t.Errorf("batches %v, summary %q", resp.Msg.GetBatches(), resp.Msg.GetSummary())
	}
	// Planning changed nothing.
	if out, _, _ := drover(ctx, addr, "deploy", "ls"); strings.Contains(out, "defect-detector") {
		t.Errorf("plan created the deployment:\n%s", out)
	}
}

// mustParseDeploy turns a deployment file into the spec the command line
// sends, by asking the server for a plan of it with -o json.
func mustParseDeploy(t *testing.T, ctx context.Context, addr, body string) *droverv1.DeploymentSpec {
	t.Helper()
	out, errOut, code := drover(ctx, addr, "deploy", "plan", "-f", deployFile(t, body), "-o", "json")
	if code != 0 {
		t.Fatalf("plan -o json: exit %d\n%s", code, errOut)
	}
	var p droverv1.PlanDeploymentResponse
	if err := protojson.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan -o json: %v\n%s", err, out)
	}
	return p.GetSpec()
}

// squeeze collapses runs of spaces, so table rows compare whatever the
// column widths.
func squeeze(s string) string {
	for strings.Contains(s, "   ") {
		s = strings.ReplaceAll(s, "   ", "  ")
	}
	return s
}

// TestDeployMissingCommand rolls out a version whose exec command does
// not exist (the spec runs ./serve from the version's directory, and the
// new version has none) to two deployments of the same model: one that
// reverts on failure and one that does not. The canary alone is tried;
// its agent reports the instance failed with a reason that names the
// command, in the deployment's nodes and in `drover rollout status`; the
// rollout goes no further than the canary; the first deployment rolls
// back by itself and the second stays failed, as their strategies say;
// and every node of both serves the old version the whole time.
func TestDeployMissingCommand(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fleet := startReady(ctx, t, c, 3, cluster.AgentOptions{Prefix: "edge"})
	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()

	// Version 1 holds its server's start script; version 2 does not.
	v1 := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\nexec %q \"$@\"\n", os.Args[0])
	if err := os.WriteFile(filepath.Join(v1, "serve"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v1, "page.txt"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := drover(ctx, addr, "model", "push", v1, "--model", "web", "--alias", "prod"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	spec := func(name string, revert bool) string {
		return fmt.Sprintf(`name: %s
model: web@prod
runtime:
  type: exec
  command: [./serve]
  env: {%s: "1"}
  health_path: /v1/health
  start_timeout: 5s
strategy:
  canary: 1
  max_parallel: 2
  min_healthy_time: 1s
  progress_deadline: 1m
  auto_promote: true
  auto_revert: %v
`, name, modelServerEnv, revert)
	}
	for _, d := range []struct {
		name   string
		revert bool
	}{{"reverts", true}, {"stays", false}} {
		if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec(d.name, d.revert))); code != 0 {
			t.Fatalf("deploy apply %s: exit %d\n%s%s", d.name, code, out, errOut)
		}
	}
	for _, name := range []string{"reverts", "stays"} {
		waitServing(ctx, t, fleet, name, "one")
		waitRollout(ctx, t, c, name, 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	}

	pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": "two"})
	const why = "command not found: ./serve"
	seen := map[string]bool{} // deployments whose failed canary was reported with why
	deadline := time.Now().Add(90 * time.Second)
	for {
		for _, name := range []string{"reverts", "stays"} {
			for _, a := range fleet {
				if body, err := infer(ctx, a, name, "page.txt"); err != nil || body != "one" {
					t.Fatalf("%s on %s served %q (%v) while version 2 was tried, want version 1's page", name, a.Name, body, err)
				}
			}
			if seen[name] {
				continue
			}
			d, err := c.Client(c.Leader(), false).Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: name}))
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range d.Msg.GetNodes() {
				if st := n.GetStatus(); st.GetVersion() == 2 && st.GetState() == droverv1.InstanceState_INSTANCE_STATE_FAILED {
					if !strings.Contains(st.GetReason(), why) {
						t.Errorf("%s: %s reports version 2 failed with %q, which does not say %q", name, n.GetNodeName(), st.GetReason(), why)
					}
					out, _, _ := drover(ctx, addr, "rollout", "status", name)
					for line := range strings.Lines(out) {
						if strings.HasPrefix(line, n.GetNodeName()+" ") && strings.Contains(line, " failed: start version 2: ") && strings.Contains(line, why) {
							t.Logf("rollout status %s while its canary fails:\n%s", name, out)
							seen[name] = true
						}
					}
				}
			}
		}
		hr, hs := rolloutHistory(ctx, t, c, "reverts"), rolloutHistory(ctx, t, c, "stays")
		if seen["reverts"] && seen["stays"] && len(hr) == 3 && hr[2].GetState() == droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED &&
			hs[len(hs)-1].GetState() == droverv1.RolloutState_ROLLOUT_STATE_FAILED {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed rollouts did not end as their strategies say (reported: %v):\nreverts: %v\nstays: %v", seen, hr, hs)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, name := range []string{"reverts", "stays"} {
		h := rolloutHistory(ctx, t, c, name)
		failed := h[1]
		t.Logf("%s: rollout 2 %v: %s; %d batches", name, failed.GetState(), failed.GetEndReason(), len(failed.GetBatches()))
		if failed.GetState() != droverv1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(failed.GetEndReason(), why) {
			t.Errorf("%s: rollout 2 is %v, ended %q; want failed naming %q", name, failed.GetState(), failed.GetEndReason(), why)
		}
		if len(failed.GetBatches()) != 1 || !failed.GetBatches()[0].GetCanary() || len(failed.GetBatches()[0].GetNodeIds()) != 1 {
			t.Errorf("%s: rollout 2 went past its canary: %v", name, failed.GetBatches())
		}
		out, errOut, code := drover(ctx, addr, "rollout", "status", name, "--id", "2")
		if code != 0 || !strings.Contains(out, why) {
			t.Errorf("rollout status %s --id 2 does not say %q: exit %d\n%s%s", name, why, code, out, errOut)
		}
	}
	if h := rolloutHistory(ctx, t, c, "reverts"); h[2].GetRollbackOf() != 2 || h[2].GetToVersion() != 1 {
		t.Errorf("reverts: rollout 3 is %v, want a rollback of 2 to version 1", h[2])
	}
	if h := rolloutHistory(ctx, t, c, "stays"); len(h) != 2 {
		t.Errorf("stays rolled back without auto_revert: %v", h)
	}

	// Nothing half-applied: the deployment that reverted is on version 1
	// everywhere; the one that stayed has moved only its canary.
	for _, tc := range []struct {
		name string
		onV2 int
	}{{"reverts", 0}, {"stays", 1}} {
		d, err := c.Client(c.Leader(), false).Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: tc.name}))
		if err != nil {
			t.Fatal(err)
		}
		onV2 := 0
		for _, n := range d.Msg.GetNodes() {
			if n.GetAssignment().GetVersion() == 2 {
				onV2++
			}
		}
		if onV2 != tc.onV2 || len(d.Msg.GetNodes()) != len(fleet) {
			t.Errorf("%s: %d of %d nodes assigned version 2, want %d", tc.name, onV2, len(d.Msg.GetNodes()), tc.onV2)
		}
	}
	for _, name := range []string{"reverts", "stays"} {
		waitServing(ctx, t, fleet, name, "one")
	}

	// A new version applied with a command that exists nowhere: the
	// rollback brings version 1 back with the command it ran with, not
	// the one written for version 3, so the fleet is healthy again.
	v3 := t.TempDir()
	if err := os.WriteFile(filepath.Join(v3, "page.txt"), []byte("three"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := drover(ctx, addr, "model", "push", v3, "--model", "web"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	const missing = "/nonexistent/model-server"
	bad := strings.Replace(strings.Replace(spec("reverts", true), "web@prod", "web@3", 1), "[./serve]", "["+missing+"]", 1)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, bad)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}
	for {
		for _, a := range fleet {
			if body, err := infer(ctx, a, "reverts", "page.txt"); err != nil || body != "one" {
				t.Fatalf("reverts on %s served %q (%v) while version 3 was tried, want version 1's page", a.Name, body, err)
			}
		}
		h := rolloutHistory(ctx, t, c, "reverts")
		if last := h[len(h)-1]; last.GetId() == 5 && last.GetState() == droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			if tried := h[len(h)-2]; tried.GetState() != droverv1.RolloutState_ROLLOUT_STATE_FAILED || !strings.Contains(tried.GetEndReason(), "command not found: "+missing) {
				t.Errorf("rollout 4 %v ended %q; want failed naming %s", tried.GetState(), tried.GetEndReason(), missing)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the rollback of version 3 did not succeed: %v", h)
		}
		time.Sleep(200 * time.Millisecond)
	}
	d, err := c.Client(c.Leader(), false).Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: "reverts"}))
	if err != nil {
		t.Fatal(err)
	}
	if dep := d.Msg.GetDeployment(); dep.GetVersion() != 1 || !slices.Equal(dep.GetSpec().GetRuntime().GetCommand(), []string{"./serve"}) || dep.GetRevision() != 3 {
		t.Errorf("after the rollback: version %d, command %q, revision %d; want version 1 with ./serve at revision 3",
			dep.GetVersion(), dep.GetSpec().GetRuntime().GetCommand(), dep.GetRevision())
	}
	for _, n := range d.Msg.GetNodes() {
		if st := n.GetStatus(); st.GetVersion() != 1 || st.GetState() != droverv1.InstanceState_INSTANCE_STATE_HEALTHY {
			t.Errorf("after the rollback %s reports version %d %v: %s", n.GetNodeName(), st.GetVersion(), st.GetState(), st.GetReason())
		}
	}
}
