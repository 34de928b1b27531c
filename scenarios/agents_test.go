package scenarios

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// fleet is the shape of a fleet scenario: how many agents run, how many
// of them a scenario kills or cuts off, the servers' minimum heartbeat TTL
// (short, so a scenario waits seconds rather than the production
// default's tens of seconds; the rules are the same), and the servers'
// Raft timing (nil: production's).
type fleet struct {
	size, killed, cut int
	ttl               time.Duration
	raft              func(*server.Config)
}

// fleetFor is the fleet of this tier. The long tier runs 50 agents with a
// 2s TTL and the production Raft timing. The short tier shares two cores
// with the rest of the suite (and, on CI, whatever else the machine does)
// under the race detector, so it runs 20 agents with a 4s TTL on servers
// whose Raft waits twice hashicorp/raft's defaults: with the tighter
// timing a starved leader misses its 250ms lease again and again, and
// agents starved for 3s miss a 2s TTL, so the scenario would measure the
// machine, not Drover. The invariants checked are the same.
func fleetFor() fleet {
	if !testing.Short() {
		return fleet{size: 50, killed: 10, cut: 5, ttl: 2 * time.Second}
	}
	return fleet{size: 20, killed: 5, cut: 3, ttl: 4 * time.Second, raft: func(cfg *server.Config) {
		cfg.HeartbeatTimeout = server.Duration(2 * time.Second)
		cfg.ElectionTimeout = server.Duration(2 * time.Second)
		cfg.LeaderLeaseTimeout = server.Duration(time.Second)
	}}
}

// downBound is the longest a node that stopped heartbeating may stay READY
// by the test's own clock: its deadline is the TTL with the most jitter
// (10%) plus the slack (50%), found by the next tick (250ms) and written by
// one Raft commit. The scenarios wait at least that long before they
// conclude that nothing was marked down; they never fail because a loaded
// machine took longer than it.
func (f fleet) downBound() time.Duration {
	return time.Duration(float64(f.ttl)*1.1*1.5) + 250*time.Millisecond + 2*time.Second
}

const (
	// scenarioGrace is the leader-change grace in the fleet scenarios.
	scenarioGrace = 5 * time.Second
	// fleetWait is how long a fleet scenario waits for something that
	// must happen (enrollment of the whole fleet, a status) before it
	// gives up. It is no measure of speed: on two cores shared with the
	// rest of the suite, a fleet enrolling under the race detector can
	// take a minute. Timing is asserted with detectionBound, where it
	// happens.
	fleetWait = 3 * time.Minute
)

var (
	ready = droverv1.NodeStatus_NODE_STATUS_READY
	down  = droverv1.NodeStatus_NODE_STATUS_DOWN
)

// detectionBound is the latest the leader may decide that a node whose
// agent died is down, by times taken where things happen, so a test
// process slowed by the rest of the suite does not stretch it: the agent's
// last acknowledged heartbeat (lastBeat, with the TTL it was handed then)
// and, when the leadership changed, when the last leader gave every node a
// fresh TTL plus the grace (graceFrom; zero if it did not change).
//
// The leader's deadline is the TTL (at most 10% more for another
// heartbeat's jitter) plus the slack (50%), counted from the last heartbeat
// it received, which may be one interval (a third of the TTL) later than
// the last one the agent saw answered, if the answer was lost in the kill.
// A new leader's deadline is graceFrom plus a TTL and the grace. The next
// tick (250ms) finds it; the second on top is for the tick's timer firing
// late on a loaded two-core machine under the race detector. The Raft
// commit that follows the decision is not counted.
func detectionBound(lastBeat time.Time, ttl time.Duration, graceFrom time.Time) time.Time {
	const room = 250*time.Millisecond + time.Second
	worst := time.Duration(float64(ttl) * 1.1)
	latest := lastBeat.Add(time.Duration(float64(worst)*1.5) + worst/3 + room)
	if !graceFrom.IsZero() {
		latest = later(latest, graceFrom.Add(worst+scenarioGrace+room))
	}
	return latest
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// startFleet starts 3 servers with the scenario heartbeat timing and the
// tier's fleet of agents in two sites, and waits until every agent's node
// is READY. It returns the fleet, the agents and their node ids, in the
// same order.
func startFleet(t *testing.T) (fleet, *cluster.Cluster, []*cluster.Agent, []string) {
	t.Helper()
	f := fleetFor()
	n := f.size
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(f.ttl)
		cfg.HeartbeatLeaderGrace = server.Duration(scenarioGrace)
		if f.raft != nil {
			f.raft(cfg)
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
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
	return f, c, agents, ids
}

// stateIndex is the leader's state index now.
func stateIndex(t *testing.T, c *cluster.Cluster) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
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
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
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
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
	defer cancel()
	downs, err := c.DownTransitions(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	for id, times := range downs {
		if !slices.Contains(except, id) {
			t.Errorf("node %s was marked down %d time(s), though its agent kept running and reachable", id, len(times))
		}
	}
}

// Scenario: a fifth of the fleet (10 of 50 agents) dies. Exactly those
// are marked down, each within its TTL and slack; started again, they come
// back READY as the same nodes, with no operator action.
func TestAgentsKilledAreMarkedDownAndReturn(t *testing.T) {
	f, c, agents, ids := startFleet(t)
	since := stateIndex(t, c)

	killed, killedIDs := agents[:f.killed], ids[:f.killed]
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
	defer cancel()
	// Detection is measured from the last acknowledged heartbeat, so
	// each victim must have had one.
	if err := waitHeartbeated(ctx, killed); err != nil {
		t.Fatal(err)
	}
	term := leaderTerm(t, c)
	killIndex := stateIndex(t, c)
	var wg sync.WaitGroup
	for _, a := range killed {
		wg.Go(a.Kill)
	}
	wg.Wait()
	took, err := c.WaitNodes(ctx, down, killedIDs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("all %d killed agents seen DOWN by the test %s after they stopped", f.killed, took.Round(time.Millisecond))
	var graceFrom time.Time
	if leaderTerm(t, c) != term {
		// A new term (an election on a starved machine, say) gives every
		// node a fresh TTL plus the leader grace; that is the rule, and
		// the bound follows it.
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		graceFrom = l.Server().LeaderGraceFrom()
		t.Logf("the leadership changed while the agents were down; %s gave every node a new TTL and grace at %s",
			l.Name, graceFrom.Format("15:04:05.000"))
	}
	downs, err := c.DownTransitions(ctx, since)
	if err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	for i, a := range killed {
		st := a.Status()
		var afterKill []*droverv1.NodeStatusChange
		for _, h := range downs[killedIDs[i]] {
			if h.GetIndex() <= killIndex {
				t.Errorf("node %s of agent %s was marked down before its agent was killed (%s)", killedIDs[i], a.Name, h.GetReason())
				continue
			}
			afterKill = append(afterKill, h)
		}
		if len(afterKill) != 1 {
			t.Errorf("node %s of killed agent %s was marked down %d times after the kill, want once", killedIDs[i], a.Name, len(afterKill))
			continue
		}
		downAt := afterKill[0].GetTime().AsTime()
		delay := downAt.Sub(st.LastHeartbeat)
		slowest = max(slowest, delay)
		if latest := detectionBound(st.LastHeartbeat, st.HeartbeatTTL, graceFrom); downAt.After(latest) {
			t.Errorf("agent %s (TTL %s) was marked down %s after its last acknowledged heartbeat, %s later than its TTL with jitter and slack, or a new leader's grace, allows",
				a.Name, st.HeartbeatTTL, delay.Round(time.Millisecond), downAt.Sub(latest).Round(time.Millisecond))
		}
	}
	t.Logf("the leader decided each killed node was down at most %s after its last acknowledged heartbeat", slowest.Round(time.Millisecond))
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
	if len(st) != f.size {
		t.Errorf("the fleet has %d nodes after the restarts, want %d: a restarted agent enrolled again", len(st), f.size)
	}
	assertNoDown(t, c, since, killedIDs...)
}

// Scenario: the leader dies while the fleet heartbeats. The new leader
// gives every node a grace period, the agents find a live server, and not
// one node is marked down.
func TestLeaderKilledMarksNoAgentDown(t *testing.T) {
	f, c, _, ids := startFleet(t)
	since := stateIndex(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
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
	time.Sleep(scenarioGrace + f.downBound())
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
	f, c, agents, ids := startFleet(t)
	since := stateIndex(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), fleetWait)
	defer cancel()

	cut, cutIDs := agents[len(agents)-f.cut:], ids[len(ids)-f.cut:]
	for _, a := range cut {
		a.Partition()
	}
	if _, err := c.WaitNodes(ctx, down, cutIDs...); err != nil {
		t.Fatal(err)
	}
	// Hold the partition a while longer, so the agents go through their
	// retries and backoff as they would in a real outage.
	time.Sleep(2 * f.ttl)
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
	t.Logf("%d partitioned agents READY %s after the heal", f.cut, time.Since(healedAt).Round(time.Millisecond))
	for i, a := range cut {
		if got := a.NodeID(); got != cutIDs[i] {
			t.Errorf("agent %s is node %s after the heal, want %s", a.Name, got, cutIDs[i])
		}
	}
	st, err := c.NodeStatuses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != f.size {
		t.Errorf("the fleet has %d nodes after the heal, want %d", len(st), f.size)
	}
	assertNoDown(t, c, since, cutIDs...)
}

// waitHeartbeated waits until every agent has had a heartbeat answered.
func waitHeartbeated(ctx context.Context, agents []*cluster.Agent) error {
	for _, a := range agents {
		for a.Status().Heartbeats == 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("agent %s has had no heartbeat answered: %w", a.Name, ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}
