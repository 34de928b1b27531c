package scenarios

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestDeploymentRollsOutAndServes runs a real model server (this test
// binary, as the exec runtime starts any server) on agents of two sites
// through the whole path: push, `deploy apply`, the leader's rollout
// controller, each agent's reconciler and its inference endpoint. Moving
// the alias rolls the fleet to the next version; a version that fails its
// health check is tried on the canary alone and rolled back, and the fleet
// keeps serving the good version throughout.
func TestDeploymentRollsOutAndServes(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		// Reports ride on heartbeats: the shortest TTL keeps rollouts quick.
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sites := []string{"berlin", "lyon"}
	fleet := startReady(ctx, t, c, 4, cluster.AgentOptions{Prefix: "edge", Site: func(i int) string { return sites[i%2] }})
	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	push := func(files map[string]string) { pushFiles(ctx, t, addr, "web", files) }
	push(map[string]string{"page.txt": "one"})
	spec := fmt.Sprintf(`name: web
model: web@prod
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
  start_timeout: 20s
strategy:
  canary: 1
  max_parallel: 2
  max_unavailable_per_site: 1
  min_healthy_time: 1s
  progress_deadline: 1m
  auto_promote: true
`, os.Args[0], modelServerEnv)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}
	waitServing(ctx, t, fleet, "web", "one")

	// Moving the alias rolls the fleet on.
	push(map[string]string{"page.txt": "two"})
	waitServing(ctx, t, fleet, "web", "two")
	waitRollout(ctx, t, c, "web", 2, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	// A version whose server never turns healthy: the canary alone gets
	// it, the rollout fails and reverts, and every node serves version 2
	// the whole time.
	push(map[string]string{"page.txt": "three", "broken": "yes"})
	deadline := time.Now().Add(time.Minute)
	for {
		h := rolloutHistory(ctx, t, c, "web")
		last := h[len(h)-1]
		if last.GetId() == 4 && last.GetState() == droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			if prev := h[len(h)-2]; prev.GetState() != droverv1.RolloutState_ROLLOUT_STATE_FAILED || last.GetRollbackOf() != 3 || last.GetToVersion() != 2 {
				t.Fatalf("after the broken version: rollout 3 %+v, rollout 4 %+v; want 3 failed and 4 a rollback to version 2", prev, last)
			}
			break
		}
		for _, a := range fleet {
			if body, err := infer(ctx, a, "web", "page.txt"); err != nil || body != "two" {
				t.Fatalf("agent %s served %q (%v) during the broken rollout, want version 2's page", a.NodeID(), body, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rollback within a minute: history %+v", h)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitServing(ctx, t, fleet, "web", "two")
}

// pushFiles pushes a version of model holding files (name to content)
// and points its alias prod at it.
func pushFiles(ctx context.Context, t testing.TB, addr, model string, files map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, errOut, code := drover(ctx, addr, "model", "push", dir, "--model", model, "--alias", "prod"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
}

// infer reads path from deployment's instance through agent a's
// inference endpoint.
func infer(ctx context.Context, a *cluster.Agent, deployment, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	url := fmt.Sprintf("http://%s/v1/deployments/%s/%s", a.Status().ServeAddr, deployment, path)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// waitServing waits until every agent of fleet answers path page.txt of
// deployment with want.
func waitServing(ctx context.Context, t testing.TB, fleet []*cluster.Agent, deployment, want string) {
	t.Helper()
	for _, a := range fleet {
		for {
			body, err := infer(ctx, a, deployment, "page.txt")
			if err == nil && body == want {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("agent %s never served %q for %s: last %q, %v", a.NodeID(), want, deployment, body, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// rolloutHistory returns every rollout of deployment, oldest first.
func rolloutHistory(ctx context.Context, t testing.TB, c *cluster.Cluster, deployment string) []*droverv1.Rollout {
	t.Helper()
	res, err := c.Client(c.Leader(), false).Rollouts.ListRollouts(ctx, connect.NewRequest(&droverv1.ListRolloutsRequest{Deployment: deployment}))
	if err != nil {
		t.Fatalf("list rollouts of %s: %v", deployment, err)
	}
	rs := res.Msg.GetRollouts()
	slices.SortFunc(rs, func(a, b *droverv1.Rollout) int { return cmp.Compare(a.GetId(), b.GetId()) })
	if len(rs) == 0 {
		t.Fatalf("no rollout of %s", deployment)
	}
	return rs
}

// waitRollout waits until rollout id of deployment is in state.
func waitRollout(ctx context.Context, t testing.TB, c *cluster.Cluster, deployment string, id uint64, state droverv1.RolloutState) {
	t.Helper()
	for {
		rs := rolloutHistory(ctx, t, c, deployment)
		for _, r := range rs {
			if r.GetId() == id && r.GetState() == state {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("rollout %d of %s never reached %s: %v", id, deployment, state, rs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestONNXDeploymentPredicts deploys the sample digit classifier with the
// built-in onnx runtime (the real drover-onnx binary, started by each
// agent) and checks every agent's endpoint answers the model's reference
// inputs with its reference outputs.
func TestONNXDeploymentPredicts(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "drover-onnx")
	build := exec.Command("go", "build", "-o", bin, "github.com/droverhq/drover/cmd/drover-onnx")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build drover-onnx: %v\n%s", err, out)
	}
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fleet := startReady(ctx, t, c, 2, cluster.AgentOptions{Prefix: "cpu", Configure: func(cfg *agent.Config) { cfg.ONNXRuntime = bin }})
	createModel(t, c.Client(c.Leader(), false), "digits")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	sample := filepath.Join("..", "cli", "sample", "hello-classifier")
	if _, errOut, code := drover(ctx, addr, "model", "push", sample, "--model", "digits", "--alias", "prod"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	spec := `name: digits
model: digits@prod
runtime:
  type: onnx
strategy:
  max_parallel: 2
  min_healthy_time: 1s
`
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}

	var ref struct {
		Input, Output string
		Tolerance     float64
		Cases         []map[string]any
	}
	b, err := os.ReadFile(filepath.Join(sample, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	var rows [][]any
	for _, cs := range ref.Cases {
		rows = append(rows, cs[ref.Input].([]any))
	}
	body, _ := json.Marshal(map[string]any{"inputs": map[string]any{ref.Input: rows}})
	for _, a := range fleet {
		url := fmt.Sprintf("http://%s/v1/deployments/digits/infer", a.Status().ServeAddr)
		var got struct {
			Outputs map[string][][]float64 `json:"outputs"`
		}
		for {
			resp, err := http.Post(url, "application/json", bytes.NewReader(body))
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					if err := json.Unmarshal(b, &got); err != nil {
						t.Fatalf("agent %s: %v\n%s", a.NodeID(), err, b)
					}
					break
				}
				err = fmt.Errorf("%s: %s", resp.Status, b)
			}
			if ctx.Err() != nil {
				t.Fatalf("agent %s never predicted: %v", a.NodeID(), err)
			}
			time.Sleep(250 * time.Millisecond)
		}
		probs := got.Outputs[ref.Output]
		if len(probs) != len(ref.Cases) {
			t.Fatalf("agent %s: %d rows of %s for %d inputs", a.NodeID(), len(probs), ref.Output, len(ref.Cases))
		}
		for i, cs := range ref.Cases {
			want := cs[ref.Output].([]any)
			for j, w := range want {
				if d := math.Abs(probs[i][j] - w.(float64)); d > ref.Tolerance {
					t.Fatalf("agent %s, case %d, class %d: %v, want %v", a.NodeID(), i, j, probs[i][j], w)
				}
			}
		}
	}
}

// TestPartitionedSiteKeepsServing cuts one site off from the control plane
// in the middle of a rollout: its agents keep answering every request with
// the version they ran, one of them even across a restart with no server
// reachable, while the other site moves on; once the site is back, it
// converges on the new version.
func TestPartitionedSiteKeepsServing(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sites := []string{"berlin", "lyon"}
	fleet := startReady(ctx, t, c, 4, cluster.AgentOptions{Prefix: "edge", Site: func(i int) string { return sites[i%2] }})
	var berlin, lyon []*cluster.Agent
	for i, a := range fleet {
		if i%2 == 0 {
			berlin = append(berlin, a)
		} else {
			lyon = append(lyon, a)
		}
	}
	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	push := func(page string) { pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": page}) }
	push("one")
	spec := fmt.Sprintf(`name: web
model: web@prod
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
strategy:
  max_parallel: 2
  max_unavailable_per_site: 1
  min_healthy_time: 1s
`, os.Args[0], modelServerEnv)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}
	waitServing(ctx, t, fleet, "web", "one")
	waitRollout(ctx, t, c, "web", 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	// Berlin is cut off; once the leader has marked its nodes down, the
	// next version rolls out to the nodes it can reach. (A node cut off
	// inside a batch holds that batch until the progress deadline.)
	var cut []string
	for _, a := range berlin {
		a.Partition()
		cut = append(cut, a.NodeID())
	}
	if _, err := c.WaitNodes(ctx, droverv1.NodeStatus_NODE_STATUS_DOWN, cut...); err != nil {
		t.Fatal(err)
	}
	push("two")
	waitServing(ctx, t, lyon, "web", "two")

	// Berlin answers every request with version 1 meanwhile, and an agent
	// restarted there serves it again from disk, with no server to ask.
	restarted := berlin[0]
	restarted.Kill()
	restarted.Partition()
	if err := restarted.Start(); err != nil {
		t.Fatal(err)
	}
	waitServing(ctx, t, []*cluster.Agent{restarted}, "web", "one")
	until := time.Now().Add(5 * time.Second)
	for time.Now().Before(until) {
		for _, a := range berlin {
			if body, err := infer(ctx, a, "web", "page.txt"); err != nil || body != "one" {
				t.Fatalf("partitioned agent %s served %q (%v), want version 1's page", a.Name, body, err)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, a := range berlin {
		a.Heal()
	}
	waitServing(ctx, t, fleet, "web", "two")
}
