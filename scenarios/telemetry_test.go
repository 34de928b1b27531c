package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// deployWeb pushes version one of model web and deploys it with the exec
// runtime (this test binary as the model server) and strategy (the YAML
// under "strategy:", indented) to every node, then waits until each of
// fleet serves it.
func deployWeb(ctx context.Context, t *testing.T, c *cluster.Cluster, fleet []*cluster.Agent, strategy string) {
	t.Helper()
	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": "one"})
	spec := fmt.Sprintf(`name: web
model: web@prod
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
  start_timeout: 20s
strategy:
%s`, os.Args[0], modelServerEnv, strategy)
	if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, spec)); code != 0 {
		t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
	}
	waitServing(ctx, t, fleet, "web", "one")
}

// postInfer sends {"inputs": {"x": x, "color": color}} to deployment web
// through a's endpoint and checks the model's answer.
func postInfer(ctx context.Context, t *testing.T, a *cluster.Agent, x int, color string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"inputs": map[string]any{"x": x, "color": color}})
	url := fmt.Sprintf("http://%s/v1/deployments/web/infer", a.Status().ServeAddr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("infer on %s: %v", a.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("infer on %s: %s %s", a.Name, resp.Status, b)
	}
}

// queryTelemetry asks a server for the merged windows of model web.
func queryTelemetry(ctx context.Context, t *testing.T, c *cluster.Cluster, q *droverv1.QueryTelemetryRequest) *droverv1.QueryTelemetryResponse {
	t.Helper()
	q.Model = "web"
	res, err := c.Client(c.Nodes()[0], false).Telemetry.Query(ctx, connect.NewRequest(q))
	if err != nil {
		t.Fatalf("query telemetry: %v", err)
	}
	return res.Msg
}

// TestTelemetryReachesTheServers: agents in two sites observe the
// requests their endpoints pass to the model, ship the windows to the
// server each is connected to, and a query on any server, grouped by
// site, counts every request exactly and carries the features' sketches;
// once a server is killed, the survivors still count every request.
func TestTelemetryReachesTheServers(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sites := []string{"berlin", "lyon"}
	fleet := startReady(ctx, t, c, 4, cluster.AgentOptions{
		Prefix: "edge", Site: func(i int) string { return sites[i%2] },
		Configure: func(cfg *agent.Config) { cfg.TelemetryWindow = time.Second },
	})
	deployWeb(ctx, t, c, fleet, "  max_parallel: 4\n  min_healthy_time: 1s\n")

	// Requests so far (waitServing's) are in windows that end by since;
	// the ones below are in windows that end after it.
	since := time.Now().Truncate(time.Second).Add(time.Second)
	time.Sleep(time.Until(since))
	colors := []string{"red", "green"}
	want := map[string]uint64{}
	argmax := map[string]map[string]uint64{}
	for i, a := range fleet {
		site := sites[i%2]
		if argmax[site] == nil {
			argmax[site] = map[string]uint64{}
		}
		n := 5 + i
		for x := range n {
			postInfer(ctx, t, a, x, colors[x%2])
			argmax[site][strconv.Itoa(x%3)]++
		}
		want[site] += uint64(n)
	}

	var groups map[string]*droverv1.TelemetryGroup
	for {
		res := queryTelemetry(ctx, t, c, &droverv1.QueryTelemetryRequest{Since: timestamppb.New(since), GroupBy: "site"})
		if len(res.GetMissing()) > 0 {
			t.Fatalf("servers missing from the answer: %v", res.GetMissing())
		}
		groups = map[string]*droverv1.TelemetryGroup{}
		done := true
		for _, g := range res.GetGroups() {
			groups[g.GetKey()] = g
			if n := g.GetProfile().GetRequests(); n > want[g.GetKey()] {
				t.Fatalf("site %q: %d requests, more than the %d sent", g.GetKey(), n, want[g.GetKey()])
			}
		}
		for site, n := range want {
			if groups[site].GetProfile().GetRequests() != n {
				done = false
			}
		}
		if done && len(groups) == len(want) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("requests per site never reached %v: %v", want, groups)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for site, g := range groups {
		p, err := sketch.ProfileFromProto(g.GetProfile())
		if err != nil {
			t.Fatalf("site %s: %v", site, err)
		}
		n := want[site]
		if g.GetNodes() != 2 {
			t.Errorf("site %s: windows of %d nodes, want 2", site, g.GetNodes())
		}
		if f := p.Input("x"); f == nil || f.Kind != sketch.KindNumeric || f.Numeric.Count() != n {
			t.Errorf("site %s: input x %+v, want %d numeric values", site, f, n)
		}
		if f := p.Input("color"); f == nil || f.Kind != sketch.KindCategorical || f.Categorical.Total() != n || f.Categorical.Count("red")+f.Categorical.Count("green") != n {
			t.Errorf("site %s: input color %+v, want %d red or green", site, f, n)
		}
		if f := p.Output("y"); f == nil || f.Numeric.Count() != n {
			t.Errorf("site %s: output y %+v, want %d values", site, f, n)
		}
		if f := p.Output("scores.argmax"); f == nil {
			t.Errorf("site %s: no output scores.argmax", site)
		} else {
			for class, k := range argmax[site] {
				if got := f.Categorical.Count(class); got != k {
					t.Errorf("site %s: scores.argmax %s counted %d times, want %d", site, class, got, k)
				}
			}
		}
		if p.Latency.Count() != n || len(p.Errors) != 0 {
			t.Errorf("site %s: %d latencies and errors %v, want %d and none", site, p.Latency.Count(), p.Errors, n)
		}
	}

	// Every window counted above was acknowledged to its agent, which
	// a server does only once the window is on a second server too: a
	// server killed now loses none of them from the survivors' answers.
	dead := c.Nodes()[2]
	c.Kill(dead)
	for {
		res, err := c.Client(c.Nodes()[0], false).Telemetry.Query(ctx, connect.NewRequest(&droverv1.QueryTelemetryRequest{
			Model: "web", Since: timestamppb.New(since), GroupBy: "site"}))
		if err != nil {
			t.Fatalf("query after killing %s: %v", dead.Name, err)
		}
		got := map[string]uint64{}
		for _, g := range res.Msg.GetGroups() {
			got[g.GetKey()] = g.GetProfile().GetRequests()
		}
		if len(res.Msg.GetMissing()) == 1 && res.Msg.GetMissing()[0].GetServerId() == dead.Name && len(res.Msg.GetAnswered()) == 2 {
			for site, n := range want {
				if got[site] != n {
					t.Fatalf("site %s after killing %s: %d requests, want the %d acknowledged", site, dead.Name, got[site], n)
				}
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the query never named %s missing: %v", dead.Name, res.Msg.GetMissing())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// simClock is the time telemetry windows are cut on in a scenario: it
// stands still until set.
type simClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *simClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// TestTelemetrySurvivesAnOutage: two agents serve through ten simulated
// minutes (600 one-second windows) cut off from every server. After the
// cut heals, the agent whose spool had room ships every window; the one
// with a tiny spool that may not merge drops the oldest windows, and the
// count it reports is exactly what the servers lack.
func TestTelemetrySurvivesAnOutage(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Simulated time runs from 14 minutes ago, so that every window has
	// ended by the server's clock.
	start := time.Now().Add(-14 * time.Minute).Truncate(time.Second)
	clk := &simClock{t: start}
	const tinySpool = 64 << 10
	fleet := startReady(ctx, t, c, 2, cluster.AgentOptions{Prefix: "edge", Configure: func(cfg *agent.Config) {
		cfg.TelemetryWindow, cfg.TelemetryNow = time.Second, clk.Now
		if cfg.Name == "edge-02" {
			// Room for a few dozen windows, and no merging them into
			// coarser ones: the outage cannot fit.
			cfg.TelemetrySpoolBytes, cfg.TelemetryMaxMerge = tinySpool, time.Second
		}
	}})
	roomy, tiny := fleet[0], fleet[1]
	deployWeb(ctx, t, c, fleet, "  max_parallel: 4\n  min_healthy_time: 1s\n")
	// waitServing's requests are in the window at start; close it and
	// let it ship.
	clk.Set(start.Add(2 * time.Second))
	baseline := map[*cluster.Agent]agent.TelemetryStatus{}
	for _, a := range fleet {
		for {
			st := a.Status().Telemetry
			if st.SpooledRecords == 0 && st.Shipped > 0 {
				baseline[a] = st
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("agent %s never shipped its first window: %+v", a.Name, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for _, a := range fleet {
		a.Partition()
	}
	const windows = 600
	outage := start.Add(10 * time.Second)
	for i := range windows {
		clk.Set(outage.Add(time.Duration(i) * time.Second))
		for _, a := range fleet {
			postInfer(ctx, t, a, i, "red")
		}
		// One request per window: wait until each agent counted it
		// before the clock moves on.
		for _, a := range fleet {
			for a.Status().Telemetry.Observed != baseline[a].Observed+uint64(i+1) {
				if ctx.Err() != nil {
					t.Fatalf("agent %s did not observe request %d", a.Name, i)
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	end := outage.Add(windows * time.Second)
	clk.Set(end)
	// The last window closes; every window is in the spool or counted
	// as dropped.
	for _, a := range fleet {
		for {
			st := a.Status().Telemetry
			if uint64(st.SpooledRecords)+st.DroppedWindows-baseline[a].DroppedWindows == windows {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("agent %s: %+v after the outage, want %d windows spooled or dropped", a.Name, st, windows)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, a := range fleet {
		a.Heal()
	}

	for _, a := range fleet {
		for {
			st := a.Status().Telemetry
			b := baseline[a]
			if st.SpooledRecords == 0 && st.Shipped-b.Shipped+st.DroppedWindows-b.DroppedWindows+st.Refused-b.Refused == windows {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("agent %s never emptied its spool: %+v", a.Name, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, a := range fleet {
		st := a.Status().Telemetry
		dropped := st.DroppedWindows - baseline[a].DroppedWindows
		switch a {
		case roomy:
			if dropped != 0 || st.Merges != 0 {
				t.Errorf("agent %s with room dropped %d windows and merged %d times, want none", a.Name, dropped, st.Merges)
			}
		case tiny:
			if dropped == 0 || dropped >= windows {
				t.Errorf("agent %s with a tiny spool dropped %d of %d windows, want some but not all", a.Name, dropped, windows)
			}
		}
		if st.Refused != baseline[a].Refused {
			t.Errorf("agent %s: %d windows refused", a.Name, st.Refused-baseline[a].Refused)
		}
		res := queryTelemetry(ctx, t, c, &droverv1.QueryTelemetryRequest{
			NodeId: a.NodeID(), Since: timestamppb.New(outage), Until: timestamppb.New(end),
		})
		var stored, requests uint64
		for _, g := range res.GetGroups() {
			stored += g.GetWindows()
			requests += g.GetProfile().GetRequests()
		}
		if stored != windows-dropped || requests != windows-dropped {
			t.Errorf("agent %s reported %d windows dropped; the servers hold %d windows of %d requests, want %d of each",
				a.Name, dropped, stored, requests, windows-dropped)
		}
		t.Logf("agent %s: %d windows dropped, %d on the servers", a.Name, dropped, stored)
	}
}
