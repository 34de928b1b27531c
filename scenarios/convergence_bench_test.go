package scenarios

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// Flags of BenchmarkConvergence. It does a fixed amount of work per
// iteration (one pull and one rollout to the whole fleet); run it with
// -benchtime=1x or a small count.
var (
	convergeAgents  = flag.Int("converge.agents", 100, "agents BenchmarkConvergence rolls a version out to")
	convergeMiB     = flag.Int("converge.mib", 8, "size of the version's model file, in MiB")
	convergeServers = flag.Int("converge.servers", 1, "servers of BenchmarkConvergence's cluster")
)

// BenchmarkConvergence measures how long a fleet takes to serve a new
// version after `deploy apply`, against what pulling the same amount of
// model alone takes, in the same run: real servers, real agents on QUIC
// in this process, and the exec runtime starting a real model server
// (this test binary) per agent.
//
// Each iteration pushes two versions of the same shape (a model file of
// -converge.mib random MiB and a page naming the version; random bytes,
// so neither shares a chunk with anything the agents hold), then
//
//   - pull: asks every node to pull the first (PullVersion, as `drover
//     node pull` does) and times until every agent reports it pulled;
//   - converge: applies the deployment at the second version (one batch
//     of every node: max_parallel = the fleet, no canary, min healthy
//     time 0) and times until every agent's inference endpoint answers
//     with the second version's page.
//
// It reports both, their difference (beyond-pull-s, the target being at
// most 2 s at a batch of 100) and, for the controller, the time until the
// rollout is recorded as succeeded.
//
//	go test -run NONE -bench Convergence -benchtime 1x -timeout 20m ./scenarios/
func BenchmarkConvergence(b *testing.B) {
	n, size := *convergeAgents, *convergeMiB<<20
	c := cluster.Make(b, *convergeServers, cluster.Options{Configure: func(cfg *server.Config) {
		// Instance reports ride on heartbeats: the shortest TTL, as
		// the rollout scenarios use, lets the controller see them soon.
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	// Every agent in one site, so both measurements share chunks
	// between peers the same way; neither waits for the pool to settle.
	fleet := startReady(ctx, b, c, n, cluster.AgentOptions{Prefix: "edge"})
	createModel(b, c.Client(c.Leader(), false), "web")
	setCLIEnv(b, c)
	addr := c.Nodes()[0].APIAddr()

	version := uint64(0)
	push := func() uint64 {
		version++
		dir := writeTree(b, size)
		page := fmt.Sprintf("version %d", version)
		if err := os.WriteFile(filepath.Join(dir, "page.txt"), []byte(page), 0o644); err != nil {
			b.Fatal(err)
		}
		if _, errOut, code := drover(ctx, addr, "model", "push", dir, "--model", "web"); code != 0 {
			b.Fatalf("push: exit %d\n%s", code, errOut)
		}
		return version
	}
	apply := func(v uint64) {
		spec := fmt.Sprintf(`name: web
model: web@%d
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
strategy:
  canary: 0
  max_parallel: %d
  max_unavailable_per_site: %d
  min_healthy_time: 0s
  progress_deadline: 10m
`, v, os.Args[0], modelServerEnv, n, n)
		if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(b, spec)); code != 0 {
			b.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
		}
	}

	// The fleet first serves a version, so that each iteration measures
	// an update: the new instance starts beside the old one.
	v := push()
	apply(v)
	waitServing(ctx, b, fleet, "web", fmt.Sprintf("version %d", v))
	rollouts := uint64(1)
	waitRollout(ctx, b, c, "web", rollouts, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)

	var pullTotal, convTotal, doneTotal time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		pv, dv := push(), push()
		b.StartTimer()

		start := time.Now()
		pullFleet(ctx, b, c, fleet, "web", pv)
		pull := time.Since(start)

		start = time.Now()
		apply(dv)
		waitServingAll(ctx, b, fleet, "web", fmt.Sprintf("version %d", dv))
		conv := time.Since(start)
		rollouts++
		waitRollout(ctx, b, c, "web", rollouts, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
		done := time.Since(start)

		b.Logf("%d agents, %d MiB: pull alone %v, apply to all serving %v (%+v beyond the pull), rollout succeeded after %v",
			n, size>>20, pull.Round(time.Millisecond), conv.Round(time.Millisecond), (conv - pull).Round(time.Millisecond), done.Round(time.Millisecond))
		pullTotal += pull
		convTotal += conv
		doneTotal += done
	}
	b.StopTimer()
	per := func(d time.Duration) float64 { return d.Seconds() / float64(b.N) }
	b.ReportMetric(per(pullTotal), "pull-s")
	b.ReportMetric(per(convTotal), "converge-s")
	b.ReportMetric(per(convTotal-pullTotal), "beyond-pull-s")
	b.ReportMetric(per(doneTotal), "succeeded-s")
	b.ReportMetric(0, "ns/op")
}

// pullFleet asks every node of fleet to pull version of model at once
// and returns when every agent says it pulled it; a failed pull fails
// the benchmark. It reads each agent's own status, so the wait adds
// nothing the agents see.
func pullFleet(ctx context.Context, tb testing.TB, c *cluster.Cluster, fleet []*cluster.Agent, model string, version uint64) {
	tb.Helper()
	ref := fmt.Sprint(version)
	var wg sync.WaitGroup
	for _, a := range fleet {
		wg.Go(func() { requestPull(ctx, tb, c, a, model, ref) })
	}
	wg.Wait()
	for _, a := range fleet {
		for {
			p := a.Status().Pull
			if p.Model == model && p.Version == version {
				if p.Phase == fetch.PhaseDone {
					break
				}
				if p.Phase == fetch.PhaseFailed {
					tb.Fatalf("%s failed to pull %s@%d: %s", a.Name, model, version, p.Err)
				}
			}
			select {
			case <-ctx.Done():
				tb.Fatalf("%s did not pull %s@%d: last report %+v", a.Name, model, version, p)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// waitServingAll is waitServing for a fleet at once: it asks every agent
// not yet serving want again every few milliseconds, so the time it
// returns at is within one sweep of the last agent's switch.
func waitServingAll(ctx context.Context, tb testing.TB, fleet []*cluster.Agent, deployment, want string) {
	tb.Helper()
	pending := fleet
	for len(pending) > 0 {
		var left []*cluster.Agent
		for _, a := range pending {
			if body, err := infer(ctx, a, deployment, "page.txt"); err != nil || body != want {
				left = append(left, a)
			}
		}
		pending = left
		if len(pending) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("%d agents never served %q for %s, %s among them", len(pending), want, deployment, pending[0].Name)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
