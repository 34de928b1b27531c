package scenarios

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/agent"
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
