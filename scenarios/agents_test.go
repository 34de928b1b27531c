package scenarios

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

const (
	// fleetSize is how many agents the fleet scenarios run.
	fleetSize = 50
	// scenarioTTL is the servers' minimum heartbeat TTL in the fleet
	// scenarios: short, so a scenario waits seconds rather than the
	// production default's tens of seconds; the rules are the same.
	scenarioTTL = 2 * time.Second
	// scenarioGrace is the leader-change grace in the fleet scenarios.
	scenarioGrace = 5 * time.Second
)

var (
	ready = droverv1.NodeStatus_NODE_STATUS_READY
	down  = droverv1.NodeStatus_NODE_STATUS_DOWN
)

// downBound is the longest a node that stopped heartbeating may stay READY:
// its last heartbeat may have come a moment before it stopped, and its
// deadline is then the TTL with the most jitter (10%) plus the slack (50%),
// found by the next tick (250ms) and written by one Raft commit. The two
// seconds of room on top are for a loaded two-core test machine running
// the race detector; a node marked down later than that is a bug, not
// noise.
const downBound = time.Duration(float64(scenarioTTL)*1.1*1.5) + 250*time.Millisecond + 2*time.Second

// startFleet starts 3 servers with the scenario heartbeat timing and n
// agents in two sites, and waits until every agent's node is READY. It
// returns the agents and their node ids, in the same order.
func startFleet(t *testing.T, n int) (*cluster.Cluster, []*cluster.Agent, []string) {
	t.Helper()
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(scenarioTTL)
		cfg.HeartbeatLeaderGrace = server.Duration(scenarioGrace)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agents, err := c.StartAgents(ctx, n, cluster.AgentOptions{
		Prefix: "edge",
		Site: func(i int) string {
			if i%2 == 0 {
				return "site-a"
			}
			return "site-b"
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := cluster.WaitAgentsEnrolled(ctx, agents)
	if err != nil {
		t.Fatal(err)
	}
	took, err := c.WaitNodes(ctx, ready, ids...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d agents enrolled and ready after %s more", n, took.Round(time.Millisecond))
	return c, agents, ids
}

// stateIndex is the leader's state index now.
func stateIndex(t *testing.T, c *cluster.Cluster) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l.Server().State().Index()
}

// leaderTerm is the established leader's Raft term.
func leaderTerm(t *testing.T, c *cluster.Cluster) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l.Server().Raft().CurrentTerm()
}

// assertNoDown fails if any node but those in except was marked DOWN after
// index since.
func assertNoDown(t *testing.T, c *cluster.Cluster, since uint64, except ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	downs, err := c.DownTransitions(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	for id, times := range downs {
		if !slices.Contains(except, id) {
			t.Errorf("node %s was marked down %d time(s), though its agent kept running and reachable", id, times)
		}
	}
}

// Scenario: 10 of 50 agents die. Exactly those 10 are marked down, each
// within its TTL and slack; started again, they come back READY as the same
// nodes, with no operator action.
func TestAgentsKilledAreMarkedDownAndReturn(t *testing.T) {
	c, agents, ids := startFleet(t, fleetSize)
	since := stateIndex(t, c)

	killed, killedIDs := agents[:10], ids[:10]
	term := leaderTerm(t, c)
	killedAt := time.Now()
	var wg sync.WaitGroup
	for _, a := range killed {
		wg.Go(a.Kill)
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	took, err := c.WaitNodes(ctx, down, killedIDs...)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(killedAt)
	bound := downBound
	if now := leaderTerm(t, c); now != term {
		// A new term (an election on a starved machine, say) gives every
		// node a fresh TTL plus the leader grace; that is the rule, and
		// the bound follows it.
		bound += time.Duration(float64(scenarioTTL)*1.1) + scenarioGrace
		t.Logf("leadership changed during the scenario (term %d to %d): bound %s", term, now, bound)
	}
	t.Logf("all 10 killed agents marked down %s after the kills (bound %s)", elapsed.Round(time.Millisecond), bound)
	if elapsed > bound {
		t.Errorf("killed agents were marked down after %s (waited %s), later than TTL %s with jitter and slack allows (%s)",
			elapsed, took, scenarioTTL, bound)
	}
	assertNoDown(t, c, since, killedIDs...)

	for _, a := range killed {
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitNodes(ctx, ready, ids...); err != nil {
		t.Fatal(err)
	}
	for i, a := range killed {
		if got := a.NodeID(); got != killedIDs[i] {
			t.Errorf("agent %s came back as node %s, want its old identity %s", a.Name, got, killedIDs[i])
		}
	}
	st, err := c.NodeStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != fleetSize {
		t.Errorf("the fleet has %d nodes after the restarts, want %d: a restarted agent enrolled again", len(st), fleetSize)
	}
	assertNoDown(t, c, since, killedIDs...)
}

// Scenario: the leader dies while 50 agents heartbeat. The new leader
// gives every node a grace period, the agents find a live server, and not
// one node is marked down.
func TestLeaderKilledMarksNoAgentDown(t *testing.T) {
	c, _, ids := startFleet(t, fleetSize)
	since := stateIndex(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(old)
	killedAt := time.Now()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s leads %s after %s was killed", l.Name, time.Since(killedAt).Round(time.Millisecond), old.Name)

	// Long enough for every deadline the new leader set to pass: the
	// grace period, one more TTL with slack, and the bound's room.
	time.Sleep(scenarioGrace + downBound)
	if _, err := c.WaitNodes(ctx, ready, ids...); err != nil {
		t.Fatal(err)
	}
	assertNoDown(t, c, since)

	if err := c.Restart(old); err != nil {
		t.Fatal(err)
	}
}

// Scenario: 5 agents lose every server for longer than their TTL. They are
// marked down, keep running with their identity, and are READY again soon
// after the network heals, with no operator action and no re-enrollment.
func TestPartitionedAgentsReturnAfterHeal(t *testing.T) {
	c, agents, ids := startFleet(t, fleetSize)
	since := stateIndex(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	cut, cutIDs := agents[len(agents)-5:], ids[len(ids)-5:]
	for _, a := range cut {
		a.Partition()
	}
	if _, err := c.WaitNodes(ctx, down, cutIDs...); err != nil {
		t.Fatal(err)
	}
	// Hold the partition a while longer, so the agents go through their
	// retries and backoff as they would in a real outage.
	time.Sleep(2 * scenarioTTL)
	for _, a := range cut {
		if err := a.Err(); err != nil {
			t.Fatalf("agent %s gave up while cut off: %v", a.Name, err)
		}
	}
	healedAt := time.Now()
	for _, a := range cut {
		a.Heal()
	}
	if _, err := c.WaitNodes(ctx, ready, cutIDs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("5 partitioned agents READY %s after the heal", time.Since(healedAt).Round(time.Millisecond))
	for i, a := range cut {
		if got := a.NodeID(); got != cutIDs[i] {
			t.Errorf("agent %s is node %s after the heal, want %s", a.Name, got, cutIDs[i])
		}
	}
	st, err := c.NodeStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != fleetSize {
		t.Errorf("the fleet has %d nodes after the heal, want %d", len(st), fleetSize)
	}
	assertNoDown(t, c, since, cutIDs...)
}
