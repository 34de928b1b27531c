//go:build docker

package container

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/reconcile"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	// rolloutAgents is how many agents the rollout scenario starts, in
	// the two sites agentSite deals them into.
	rolloutAgents = 6
	// rolloutBudget is the deployment's max_unavailable_per_site.
	rolloutBudget = 1
	// agentServePort is where each agent's inference endpoint listens,
	// on every address of its container.
	agentServePort = 7950
	// serveBound is how long after the apply every agent may take to
	// answer with the first version: a pull of the small sample model
	// and drover-onnx's start, in batches, on a busy machine.
	serveBound = 2 * time.Minute
	// canaryBound is how long after the alias moved the canary may take
	// to be done on the new version.
	canaryBound = time.Minute
	// rolloutProgressDeadline is the deployment's progress_deadline. A
	// node whose pull of the new version was under way through the
	// killed leader waits for that server until the pull's own bounds
	// give up on it (30 s for the manifest call, 30 s and more for a
	// chunk call; a killed server sends nothing, and QUIC notices only
	// after minutes) before it asks another server: that node's batch
	// must not fail on the way, so the deadline is well beyond both. With
	// a deadline of one minute, a run whose kill caught a pull failed
	// that batch with the node still pulling, and rolled back.
	rolloutProgressDeadline = "2m30s"
	// rolloutDoneBound is how long after the alias moved the rollout may
	// take to succeed: four batches, each a switch, reports riding on
	// heartbeats (3 s TTL) and min_healthy_time (3 s), a leader election
	// and the new leader's wait for every node's first report, and a
	// pull caught by the kill (see rolloutProgressDeadline).
	rolloutDoneBound = 4 * time.Minute
	// inferTimeout bounds one inference request of the load loop; the
	// sample model answers in well under a millisecond.
	inferTimeout = 10 * time.Second
	// loadPause is the pause between two requests of one agent's loop.
	loadPause = 20 * time.Millisecond
	// samplePause is the pause between two sweeps of the agents' status.
	samplePause = 100 * time.Millisecond
)

// rolloutSpec is the deployment: the sample model with the built-in onnx
// runtime on the nodes labelled for this run (earlier scenarios leave
// their agents' nodes behind, down, and a deployment for every node would
// wait for them), a canary, batches of two with at most one node of a site
// updating at once, and a minimum healthy time that makes the rollout
// last long enough for the leader to die in the middle of it. Its
// progress deadline is rolloutProgressDeadline.
const rolloutSpec = `name: %s
model: %s@prod
selector:
  labels: {scenario: %s}
runtime:
  type: onnx
strategy:
  canary: 1
  max_parallel: 2
  max_unavailable_per_site: %d
  min_healthy_time: 3s
  progress_deadline: %s
  auto_promote: true
`

// TestRolloutDuringLeaderKill starts six agents in containers, in two
// sites, with the onnx runtime (drover-onnx in the agent's image), pushes
// the sample digit classifier, deploys it, and waits until every agent's
// inference endpoint answers with that version. A load loop then sends
// the model's reference inputs to every agent's endpoint, from this
// process over the container network, for the rest of the test. A second
// version is pushed and the alias moved to it, which starts a rollout;
// once its canary is done on the new version the leader's container is
// killed. The rollout must succeed under the new leader, every agent must
// end on the new version having switched exactly once (as the load loop
// saw it, as the rollout's batches record it, and as the agent's own
// switch counter says), no site may ever have had more than
// max_unavailable_per_site nodes updating at once (as the agents' own
// status, sampled throughout, and the rollout's batches say), and no
// inference request may fail: each node starts the new version beside
// the old one and switches with one pointer swap, and a leader's death
// does not touch the agents' data path, so the bound is zero.
func TestRolloutDuringLeaderKill(t *testing.T) {
	c := needCluster(t)
	image := os.Getenv(envAgentImage)
	if image == "" {
		t.Skipf("%s is not set: run deploy/docker/scenarios.sh, which builds the agent image", envAgentImage)
	}
	ctx := testContext(t)
	t.Cleanup(func() { c.restore(t) })
	run := time.Now().Unix()
	model := fmt.Sprintf("rollout-scenario-%d", run)
	deployment := model
	label := fmt.Sprintf("rollout-%d", run) // on this run's agents alone

	sample := filepath.Join("..", "..", "cli", "sample", "hello-classifier")
	ref := readReference(t, sample)
	// The second version: the same model beside a note, so its artifact
	// differs and pushing it makes a new version.
	second := t.TempDir()
	for _, name := range []string{"model.onnx", "reference.json", "README.md"} {
		b, err := os.ReadFile(filepath.Join(sample, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(second, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(second, "NOTE"), []byte("second version of the rollout scenario\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := c.waitGossipAlive(ctx, catchUpBound); err != nil {
		t.Fatal(err)
	}
	c.createModel(ctx, t, model)
	v1 := c.push(ctx, t, sample, model, "--alias", "prod").GetVersion().GetVersion()
	t.Logf("pushed %s@%d, alias prod", model, v1)

	agents := c.newAgents("edge", rolloutAgents, run)
	w := watchNodes(ctx, c)
	t.Cleanup(w.stop)
	token := c.createJoinToken(ctx, t, len(agents), run)
	c.startAgents(ctx, t, image, token.GetTokenString(), agents,
		"--serve-addr", net.JoinHostPort("0.0.0.0", strconv.Itoa(agentServePort)), "--label", "scenario="+label)
	if _, err := waitAgentsReady(ctx, w, agents, agentReadyBound); err != nil {
		t.Fatalf("agents did not enroll: %v", err)
	}
	w.stop()
	// The test reaches each agent's endpoint at the agent's address on
	// the servers' network: Docker gives the host an address on every
	// bridge network, internal ones too.
	endpoints := make([]string, len(agents))
	siteOf := map[string]string{}
	for i, a := range agents {
		ip := strings.TrimSpace(mustDocker(ctx, t, "inspect", "-f",
			fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", c.network), a.container))
		if net.ParseIP(ip) == nil {
			t.Fatalf("%s has no address on network %s (docker says %q)", a.container, c.network, ip)
		}
		endpoints[i] = "http://" + net.JoinHostPort(ip, strconv.Itoa(agentServePort))
		siteOf[a.id] = agentSite(i)
	}

	applied := time.Now()
	c.drover(ctx, t, "deploy", "apply", "-f", writeSpec(t, fmt.Sprintf(rolloutSpec, deployment, model, label, rolloutBudget, rolloutProgressDeadline)))
	hc := &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}, Timeout: inferTimeout}
	defer hc.CloseIdleConnections()
	for i, a := range agents {
		var last string
		err := poll(ctx, serveBound-time.Since(applied), func(ctx context.Context, _ int) (bool, error) {
			version, err := infer(ctx, hc, endpoints[i], deployment, ref)
			if err != nil {
				last = err.Error()
				return false, nil
			}
			last = "answered by version " + strconv.FormatUint(version, 10)
			return version == v1, nil
		})
		if err != nil {
			t.Fatalf("%s never answered with %s@%d within %s of the apply (last: %s; the rollout: %s): %v",
				a.name, model, v1, serveBound, last, c.rolloutWaiting(ctx, deployment), err)
		}
	}
	t.Logf("every agent serves %s@%d, %s after the apply", model, v1, time.Since(applied).Round(time.Millisecond))
	for i, a := range agents {
		if n, err := switches(ctx, hc, endpoints[i], deployment); err != nil || n != 1 {
			t.Fatalf("%s counts %v switches of %s (%v) after serving its first version, want 1", a.name, n, deployment, err)
		}
	}

	load := startLoad(ctx, hc, agents, endpoints, deployment, ref)
	t.Cleanup(load.stop)
	sampler := startBudgetSampler(ctx, hc, agents, endpoints, deployment)
	t.Cleanup(sampler.stop)
	sleep(ctx, time.Second) // some answers from the first version

	moved := time.Now()
	v2 := c.push(ctx, t, second, model, "--alias", "prod").GetVersion().GetVersion()
	t.Logf("pushed %s@%d and moved prod to it", model, v2)

	// The canary done on v2, and the rollout still going: kill the leader.
	var ro *droverv1.Rollout
	var lastErr error
	err := poll(ctx, canaryBound, func(ctx context.Context, _ int) (bool, error) {
		ro, lastErr = c.latestRollout(ctx, deployment)
		if lastErr != nil || ro.GetToVersion() != v2 {
			return false, nil
		}
		if ro.GetState() != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING {
			return false, fmt.Errorf("rollout %d to version %d is %s before the leader was killed: %s %s",
				ro.GetId(), v2, ro.GetState(), ro.GetEndReason(), ro.GetReason())
		}
		b := ro.GetBatches()
		return len(b) > 0 && b[0].GetCanary() && b[0].GetDoneTime() != nil, nil
	})
	if err != nil {
		t.Fatalf("the canary of the rollout to %s@%d was not done within %s of the alias move: %v (last rollout %v, last error %v)",
			model, v2, canaryBound, err, ro, lastErr)
	}
	leader, err := c.waitLeader(ctx, failoverBound)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.server(leader)
	killed := time.Now()
	mustDocker(ctx, t, "kill", victim.container)
	doneBatches := 0
	for _, b := range ro.GetBatches() {
		if b.GetDoneTime() != nil {
			doneBatches++
		}
	}
	t.Logf("killed leader %s %s after the alias move, with %d of the rollout's batches done (rollout %d, %s)",
		victim.name, killed.Sub(moved).Round(time.Millisecond), doneBatches, ro.GetId(), ro.GetState())
	next, err := c.waitLeader(ctx, failoverBound, victim.name)
	if err != nil {
		t.Fatalf("after killing %s: %v", victim.name, err)
	}
	t.Logf("%s leads %s after the kill", next, time.Since(killed).Round(time.Millisecond))

	// The new leader finishes the rollout: this one, not a rollback
	// after it.
	id := ro.GetId()
	err = poll(ctx, rolloutDoneBound-time.Since(moved), func(ctx context.Context, _ int) (bool, error) {
		r, err := c.rollout(ctx, deployment, id)
		if err != nil {
			lastErr = err
			return false, nil
		}
		ro = r
		switch ro.GetState() {
		case droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
			return true, nil
		case droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING:
			return false, nil
		default:
			return false, fmt.Errorf("rollout %d is %s: %s", ro.GetId(), ro.GetState(), ro.GetEndReason())
		}
	})
	if err != nil {
		t.Fatalf("the rollout to %s@%d did not succeed under the new leader within %s of the alias move: %v (last rollout %v, last error %v)",
			model, v2, rolloutDoneBound, err, ro, lastErr)
	}
	t.Logf("rollout %d (%d→%d) succeeded %s after the alias move, %s after the kill",
		ro.GetId(), ro.GetFromVersion(), ro.GetToVersion(), time.Since(moved).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	// Every agent's loop answered by v2 for a while, then stop the load.
	err = poll(ctx, serveBound, func(context.Context, int) (bool, error) { return load.allOn(v2, 20), nil })
	if err != nil {
		t.Errorf("not every agent's answers moved to version %d: %v", v2, err)
	}
	load.stop()
	sampler.stop()

	// No inference request failed, and every agent switched once, from
	// v1 to v2, as its answers show.
	total, failed := 0, 0
	for i, a := range agents {
		st := load.stats[i]
		total += st.ok + len(st.failures)
		failed += len(st.failures)
		t.Logf("%s (%s): %d answers, %d failed; versions in order of answer: %v", a.name, agentSite(i), st.ok+len(st.failures), len(st.failures), st.runs)
		for j, f := range st.failures {
			if j == 5 {
				t.Errorf("%s: %d more failed requests", a.name, len(st.failures)-5)
				break
			}
			t.Errorf("%s: request failed: %s", a.name, f)
		}
		if len(st.runs) != 2 || st.runs[0].version != v1 || st.runs[1].version != v2 {
			t.Errorf("%s answered with versions %v in that order; want %d, then %d, switching once", a.name, st.runs, v1, v2)
		}
	}
	t.Logf("%d inference requests to %d agents across the rollout and the leader's death, %d failed", total, len(agents), failed)

	// As the agents say: serving v2, v1 kept for a rollback, two switches
	// in all (the first version, then v2).
	for i, a := range agents {
		info, err := deploymentInfo(ctx, hc, endpoints[i], deployment)
		if err != nil {
			t.Errorf("%s: %v", a.name, err)
		} else if info.Serving != v2 || info.Version != v2 || info.Previous != v1 || info.State != "HEALTHY" {
			t.Errorf("%s reports %+v; want serving version %d, told %d, previous %d, HEALTHY", a.name, info, v2, v2, v1)
		}
		if n, err := switches(ctx, hc, endpoints[i], deployment); err != nil || n != 2 {
			t.Errorf("%s counts %v switches of %s (%v); want 2, its first version and the rollout's", a.name, n, deployment, err)
		}
	}

	// As the rollout records it: every node in exactly one batch, at
	// most the budget of a site in a batch, one batch after another.
	inBatches := map[string]int{}
	for i, b := range ro.GetBatches() {
		perSite := map[string]int{}
		for _, id := range b.GetNodeIds() {
			inBatches[id]++
			perSite[siteOf[id]]++
		}
		for site, n := range perSite {
			if n > rolloutBudget {
				t.Errorf("batch %d updates %d nodes of %s at once; the budget is %d", i, n, site, rolloutBudget)
			}
		}
		if i > 0 {
			prev := ro.GetBatches()[i-1].GetDoneTime()
			if prev == nil || b.GetStartTime().AsTime().Before(prev.AsTime()) {
				t.Errorf("batch %d started at %v, before batch %d was done (%v)", i, b.GetStartTime().AsTime(), i-1, prev)
			}
		}
	}
	for _, a := range agents {
		if n := inBatches[a.id]; n != 1 {
			t.Errorf("%s (%s) is in %d batches of rollout %d; want exactly 1", a.name, a.id, n, ro.GetId())
		}
	}
	// The kill came mid-way: the new leader finished batches the old one
	// had not (the containers share the host's clock with this test).
	afterKill := 0
	for i, b := range ro.GetBatches() {
		if b.GetDoneTime().AsTime().After(killed) {
			afterKill++
		}
		t.Logf("batch %d (canary %v, %d nodes): started %s, done %s, relative to the kill",
			i, b.GetCanary(), len(b.GetNodeIds()), b.GetStartTime().AsTime().Sub(killed).Round(time.Millisecond),
			b.GetDoneTime().AsTime().Sub(killed).Round(time.Millisecond))
	}
	t.Logf("rollout %d: %d batches, %d of them done after the kill", ro.GetId(), len(ro.GetBatches()), afterKill)
	if afterKill == 0 {
		t.Errorf("every batch of rollout %d was done before leader %s was killed: the kill did not land mid-rollout", ro.GetId(), victim.name)
	}
	if len(inBatches) != len(agents) {
		t.Errorf("rollout %d has %d nodes in its batches; the deployment has %d", ro.GetId(), len(inBatches), len(agents))
	}
	if rs := c.rollouts(ctx, t, deployment); len(rs) != 2 {
		t.Errorf("%d rollouts of %s; want 2, the first version's and v%d's (no rollback, no restart of the rollout): %v", len(rs), deployment, v2, rs)
	}

	// As the agents said while it ran.
	sweeps, maxUpdating, gaps := sampler.result()
	t.Logf("status sweeps of every agent: %d; most nodes updating at once per site: %v; sweeps with an agent not answering: %d", sweeps, maxUpdating, gaps)
	for site, n := range maxUpdating {
		if n > rolloutBudget {
			t.Errorf("%d nodes of %s were updating at once, as their agents said; the budget is %d", n, site, rolloutBudget)
		}
	}
	if len(maxUpdating) == 0 {
		t.Errorf("no sweep of the agents' status saw a node updating; the sampler cannot have checked the budget")
	}
}

// reference is the sample model's reference.json.
type reference struct {
	Input     string           `json:"input"`
	Output    string           `json:"output"`
	Tolerance float64          `json:"tolerance"`
	Cases     []map[string]any `json:"cases"`
	body      []byte           // the inference request of every case
}

func readReference(t *testing.T, dir string) *reference {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref reference
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatalf("%s: %v", filepath.Join(dir, "reference.json"), err)
	}
	var rows []any
	for _, cs := range ref.Cases {
		rows = append(rows, cs[ref.Input])
	}
	if ref.body, err = json.Marshal(map[string]any{"inputs": map[string]any{ref.Input: rows}}); err != nil {
		t.Fatal(err)
	}
	return &ref
}

// infer sends the reference inputs to deployment through the endpoint,
// checks the answer against the reference outputs, and returns the
// version that answered, from reconcile.VersionHeader.
func infer(ctx context.Context, hc *http.Client, endpoint, deployment string, ref *reference) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, inferTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+"/v1/deployments/"+deployment+"/infer", bytes.NewReader(ref.body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, fmt.Errorf("read the answer: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", res.Status, bytes.TrimSpace(b))
	}
	version, err := strconv.ParseUint(res.Header.Get(reconcile.VersionHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("answer without a version: %s %q", reconcile.VersionHeader, res.Header.Get(reconcile.VersionHeader))
	}
	var out struct {
		Outputs map[string][][]float64 `json:"outputs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return version, fmt.Errorf("version %d: %w: %s", version, err, b)
	}
	got := out.Outputs[ref.Output]
	if len(got) != len(ref.Cases) {
		return version, fmt.Errorf("version %d: %d rows of %s for %d inputs", version, len(got), ref.Output, len(ref.Cases))
	}
	for i, cs := range ref.Cases {
		want, _ := cs[ref.Output].([]any)
		if len(got[i]) != len(want) {
			return version, fmt.Errorf("version %d, case %d: %d values, want %d", version, i, len(got[i]), len(want))
		}
		for j, w := range want {
			if wf, _ := w.(float64); math.Abs(got[i][j]-wf) > ref.Tolerance {
				return version, fmt.Errorf("version %d, case %d, class %d: %v, want %v", version, i, j, got[i][j], wf)
			}
		}
	}
	return version, nil
}

// deploymentInfo reads what the agent says of deployment.
func deploymentInfo(ctx context.Context, hc *http.Client, endpoint, deployment string) (reconcile.DeploymentInfo, error) {
	var info reconcile.DeploymentInfo
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/v1/deployments/"+deployment, nil)
	if err != nil {
		return info, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return info, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return info, err
	}
	if res.StatusCode != http.StatusOK {
		return info, fmt.Errorf("GET /v1/deployments/%s: %s: %s", deployment, res.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &info); err != nil {
		return info, fmt.Errorf("GET /v1/deployments/%s: %w", deployment, err)
	}
	return info, nil
}

// switches reads how many versions of deployment the agent switched to,
// from its /metrics.
func switches(ctx context.Context, hc *http.Client, endpoint, deployment string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("agent metrics: %s %v", res.Status, err)
	}
	series := fmt.Sprintf(`drover_agent_deployment_updates_total{deployment=%q,result="switched"} `, deployment)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, series); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

// writeSpec writes a deployment file and returns its path.
func writeSpec(t *testing.T, spec string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "deployment.yaml")
	if err := os.WriteFile(p, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// latestRollout reads deployment's latest rollout from the current leader.
func (c *cluster) latestRollout(ctx context.Context, deployment string) (*droverv1.Rollout, error) {
	return c.rollout(ctx, deployment, 0)
}

// rollout reads rollout id of deployment (0: the latest) from the current
// leader.
func (c *cluster) rollout(ctx context.Context, deployment string, id uint64) (*droverv1.Rollout, error) {
	res, err := tryLeader(ctx, c, func(ctx context.Context, cl *api) (*connect.Response[droverv1.GetRolloutResponse], error) {
		return cl.rollout.GetRollout(ctx, connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: deployment, Id: id}))
	})
	if err != nil {
		return nil, err
	}
	return res.Msg.GetRollout(), nil
}

// rolloutWaiting says what deployment's latest rollout waits for, in the
// leader's words, for a failure message.
func (c *cluster) rolloutWaiting(ctx context.Context, deployment string) string {
	res, err := tryLeader(ctx, c, func(ctx context.Context, cl *api) (*connect.Response[droverv1.GetRolloutResponse], error) {
		return cl.rollout.GetRollout(ctx, connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: deployment}))
	})
	if err != nil {
		return "unknown: " + err.Error()
	}
	r := res.Msg.GetRollout()
	return fmt.Sprintf("rollout %d %s, %d batches, waiting for %q", r.GetId(), r.GetState(), len(r.GetBatches()), res.Msg.GetWaiting())
}

// rollouts lists every rollout of deployment.
func (c *cluster) rollouts(ctx context.Context, t *testing.T, deployment string) []*droverv1.Rollout {
	t.Helper()
	return leaderCall(ctx, t, c, "list the rollouts of "+deployment, func(ctx context.Context, cl *api) (*connect.Response[droverv1.ListRolloutsResponse], error) {
		return cl.rollout.ListRollouts(ctx, connect.NewRequest(&droverv1.ListRolloutsRequest{Deployment: deployment}))
	}).Msg.GetRollouts()
}

// versionRun is a run of consecutive answers from one version.
type versionRun struct {
	version uint64
	answers int
}

func (r versionRun) String() string { return fmt.Sprintf("v%d×%d", r.version, r.answers) }

// loadStats is what one agent's load loop saw.
type loadStats struct {
	ok       int
	failures []string
	runs     []versionRun
}

// load sends the reference inputs to every agent's endpoint, one loop per
// agent, until stopped.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex  // guards stats until the loops end
	stats  []loadStats // by agent; read freely once stop returned
}

func startLoad(ctx context.Context, hc *http.Client, agents []*agent, endpoints []string, deployment string, ref *reference) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, stats: make([]loadStats, len(agents))}
	for i := range agents {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				version, err := infer(ctx, hc, endpoints[i], deployment, ref)
				if ctx.Err() != nil {
					return // stopped mid-request: not the agent's failure
				}
				l.record(i, version, err)
				sleep(ctx, loadPause)
			}
		})
	}
	return l
}

func (l *load) record(i int, version uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &l.stats[i]
	if err != nil {
		st.failures = append(st.failures, time.Now().Format(time.StampMilli)+": "+err.Error())
		return
	}
	st.ok++
	if n := len(st.runs); n > 0 && st.runs[n-1].version == version {
		st.runs[n-1].answers++
	} else {
		st.runs = append(st.runs, versionRun{version: version, answers: 1})
	}
}

// allOn reports whether every agent's latest n answers or more came from
// version.
func (l *load) allOn(version uint64, n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, st := range l.stats {
		last := len(st.runs) - 1
		if last < 0 || st.runs[last].version != version || st.runs[last].answers < n {
			return false
		}
	}
	return true
}

// stop ends the loops and waits for them; it may be called more than once.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// budgetSampler sweeps every agent's status of the deployment, over and
// over, and notes per site the most nodes that were updating in one sweep:
// told to run a version they do not yet serve healthy. It asks the agents,
// not the leader, so it sees through the leader's death.
type budgetSampler struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu          sync.Mutex
	sweeps      int
	gaps        int // sweeps in which some agent did not answer
	maxUpdating map[string]int
}

func startBudgetSampler(ctx context.Context, hc *http.Client, agents []*agent, endpoints []string, deployment string) *budgetSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &budgetSampler{cancel: cancel, done: make(chan struct{}), maxUpdating: map[string]int{}}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			updating := map[string]int{}
			gap := false
			for i := range agents {
				info, err := deploymentInfo(ctx, hc, endpoints[i], deployment)
				if err != nil {
					gap = true
					continue
				}
				if info.Version != info.Serving || info.State != "HEALTHY" {
					updating[agentSite(i)]++
				}
			}
			if ctx.Err() != nil {
				return
			}
			s.mu.Lock()
			s.sweeps++
			if gap {
				s.gaps++
			}
			for site, n := range updating {
				s.maxUpdating[site] = max(s.maxUpdating[site], n)
			}
			s.mu.Unlock()
			sleep(ctx, samplePause)
		}
	}()
	return s
}

func (s *budgetSampler) stop() {
	s.cancel()
	<-s.done
}

func (s *budgetSampler) result() (sweeps int, maxUpdating map[string]int, gaps int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	maps.Copy(out, s.maxUpdating)
	return s.sweeps, out, s.gaps
}
