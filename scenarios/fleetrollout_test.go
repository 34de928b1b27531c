package scenarios

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/journal"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// fleetAgents sizes the rollout scenarios that read the agents' journals,
// to try them on larger fleets; each has its own default.
var fleetAgents = flag.Int("fleet-agents", 0, "agents in the journal-checked rollout scenarios (0: each scenario's default)")

// fleetSize is def agents, or short of them in the short tier: `make test`
// shares two cores with every other package's tests, where 40 in-process
// agents and their model servers can miss their heartbeats before the
// rollout even starts. The long tier runs def.
func fleetSize(def, short int) int {
	switch {
	case *fleetAgents > 0:
		return *fleetAgents
	case testing.Short():
		return short
	}
	return def
}

// TestRolloutKeepsSiteBudget rolls a new version over a fleet of two sites
// with a canary of 2 and batches of 5, at most 3 nodes of a site
// unavailable at once. Every agent ends on the new version, and the
// agents' own journals, read afterwards, show that no site was ever over
// its budget at any instant and that only the canary moved before the
// operator promoted it.
func TestRolloutKeepsSiteBudget(t *testing.T) {
	n := fleetSize(40, 20)
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		// Reports ride on heartbeats: a short TTL keeps batches quick,
		// and 2s keeps 40 agents up on a loaded two-core machine.
		cfg.HeartbeatMinTTL = server.Duration(2 * time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	pushVersions(ctx, t, c, addr, "one", "two")
	sites := []string{"berlin", "lyon"}
	siteOf := func(i int) string { return sites[i%2] }
	fleet := startReady(ctx, t, c, n, cluster.AgentOptions{Prefix: "edge", Site: siteOf})

	// Version 1 goes everywhere at once: the fleet's starting point.
	apply := func(version uint64, strategy string) { applyWeb(ctx, t, addr, version, strategy) }
	apply(1, fmt.Sprintf("  max_parallel: %d\n  max_unavailable_per_site: %d\n  min_healthy_time: 100ms\n", n, n))
	waitRolloutVia(ctx, t, c, "web", 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	waitServing(ctx, t, fleet, "web", "one")

	const budget = 3
	start := time.Now()
	apply(2, fmt.Sprintf(`  canary: 2
  max_parallel: 5
  max_unavailable_per_site: %d
  min_healthy_time: 300ms
  progress_deadline: 2m
  auto_promote: false
`, budget))
	waitRolloutVia(ctx, t, c, "web", 2, droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION)
	// Long enough for a controller that wrongly went on to show it.
	time.Sleep(time.Second)
	canary := latestRollout(ctx, t, c, "web").GetBatches()[0].GetNodeIds()
	promoted := time.Now()
	for {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Client(l, false).Rollouts.PromoteRollout(ctx, connect.NewRequest(&droverv1.RolloutActionRequest{
			Deployment: "web", Reason: "canary looks good",
		}))
		if err == nil {
			break
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			t.Fatalf("promote: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitRolloutVia(ctx, t, c, "web", 2, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	t.Logf("%d agents: rollout of version 2 done in %v (promoted after %v)", n, time.Since(start).Round(time.Millisecond),
		promoted.Sub(start).Round(time.Millisecond))
	waitServing(ctx, t, fleet, "web", "two")

	records := readJournals(t, fleet, siteOf)
	checkUpdatedOnce(t, records, "web", 2)

	// Before the promotion only the canary was told of version 2, and
	// only the canary switched to it.
	var early, switched []string
	for _, r := range records {
		for _, e := range r.entries {
			if e.Deployment != "web" || e.Version != 2 || !e.Time.Before(promoted) {
				continue
			}
			switch e.Event {
			case journal.Assigned:
				early = append(early, r.nodeID)
			case journal.Switched:
				switched = append(switched, r.nodeID)
			}
		}
	}
	slices.Sort(early)
	slices.Sort(switched)
	want := slices.Sorted(slices.Values(canary))
	if len(canary) != 2 || !slices.Equal(early, want) || !slices.Equal(switched, want) {
		t.Errorf("before the promotion, nodes assigned version 2 %v and nodes serving it %v; want exactly the canary batch %v",
			early, switched, canary)
	}

	peak := checkSiteBudget(t, records, "web", start, budget)
	t.Logf("most nodes of a site unavailable at once: %v (budget %d)", peak, budget)
	for _, s := range sites {
		if peak[s] == 0 {
			t.Errorf("the journals of site %s show no node ever unavailable: the updates are not in them", s)
		}
	}
}

// TestRolloutAcrossLeaderKillWithAgents kills the leader once the first
// batch of a rollout is done, with real agents serving: the rollout
// completes under the next leader, every node ends on the new version,
// and each node's journal shows exactly one move to it: none skipped,
// none updated twice, and the site budget held throughout.
func TestRolloutAcrossLeaderKillWithAgents(t *testing.T) {
	n := fleetSize(16, 12)
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(2 * time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	setCLIEnv(t, c)
	pushVersions(ctx, t, c, c.Nodes()[0].APIAddr(), "one", "two")
	sites := []string{"berlin", "lyon"}
	siteOf := func(i int) string { return sites[i%2] }
	fleet := startReady(ctx, t, c, n, cluster.AgentOptions{Prefix: "edge", Site: siteOf})
	const budget = 2
	addr := c.Nodes()[0].APIAddr()
	apply := func(version uint64, strategy string) { applyWeb(ctx, t, addr, version, strategy) }
	apply(1, fmt.Sprintf("  max_parallel: %d\n  max_unavailable_per_site: %d\n  min_healthy_time: 100ms\n", n, n))
	waitRolloutVia(ctx, t, c, "web", 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	waitServing(ctx, t, fleet, "web", "one")

	start := time.Now()
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, node := range c.Nodes() {
		if node != old {
			addr = node.APIAddr() // a server that outlives the leader
			break
		}
	}
	apply(2, fmt.Sprintf("  max_parallel: 4\n  max_unavailable_per_site: %d\n  min_healthy_time: 500ms\n  progress_deadline: 2m\n", budget))
	// The first batch done, the leader dies.
	for {
		r := latestRollout(ctx, t, c, "web")
		if bs := r.GetBatches(); r.GetId() == 2 && len(bs) > 0 && bs[0].GetDoneTime() != nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the first batch of rollout 2 never finished: %v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Kill(old)
	t.Logf("killed leader %s after the first batch", old.Name)
	done := waitRolloutVia(ctx, t, c, "web", 2, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED)
	t.Logf("%d agents: rollout of version 2 done in %v across the leader change; %d batches", n,
		time.Since(start).Round(time.Millisecond), len(done.GetBatches()))
	waitServing(ctx, t, fleet, "web", "two")

	// The record agrees: every node in exactly one batch.
	seen := map[string]int{}
	for _, b := range done.GetBatches() {
		for _, id := range b.GetNodeIds() {
			seen[id]++
		}
	}
	for _, a := range fleet {
		if seen[a.NodeID()] != 1 {
			t.Errorf("node %s (%s) is in %d batches of the rollout, want 1", a.Name, a.NodeID(), seen[a.NodeID()])
		}
	}

	records := readJournals(t, fleet, siteOf)
	checkUpdatedOnce(t, records, "web", 2)
	peak := checkSiteBudget(t, records, "web", start, budget)
	t.Logf("most nodes of a site unavailable at once: %v (budget %d)", peak, budget)
}

// pushVersions creates model web and pushes one version per page, each
// holding page.txt with that page, asking again through elections: a
// loaded machine makes them.
func pushVersions(ctx context.Context, t *testing.T, c *cluster.Cluster, addr string, pages ...string) {
	t.Helper()
	for {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Client(l, false).Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "web"}))
		if err == nil || connect.CodeOf(err) == connect.CodeAlreadyExists {
			break
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || ctx.Err() != nil {
			t.Fatalf("create model web: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i, page := range pages {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "page.txt"), []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
		for {
			// A push cut short by an election may have created the
			// version all the same.
			l, err := c.WaitLeader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if versionCount(ctx, t, c.Client(l, false), "web") > i {
				break
			}
			_, errOut, code := drover(ctx, addr, "model", "push", dir, "--model", "web")
			if code == 0 {
				break
			}
			if !leaderTrouble(errOut) || ctx.Err() != nil {
				t.Fatalf("push version %d of web: exit %d\n%s", i+1, code, errOut)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// applyWeb applies deployment web of the given version of model web, the
// test binary as its model server, with strategy (YAML lines under
// strategy:), asking again through elections: applying the same file
// twice changes nothing.
func applyWeb(ctx context.Context, t *testing.T, addr string, version uint64, strategy string) {
	t.Helper()
	spec := fmt.Sprintf(`name: web
model: web@%d
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
  start_timeout: 1m
strategy:
%s`, version, os.Args[0], modelServerEnv, strategy)
	f := deployFile(t, spec)
	for {
		out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", f)
		if code == 0 {
			return
		}
		if !leaderTrouble(errOut) || ctx.Err() != nil {
			t.Fatalf("deploy apply version %d: exit %d\n%s%s", version, code, out, errOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// leaderTrouble says whether a command failed for want of a leader, which
// asking again mends.
func leaderTrouble(stderr string) bool {
	return strings.Contains(stderr, "no leader") || strings.Contains(stderr, "leadership lost") ||
		strings.Contains(stderr, "unavailable")
}

// nodeRecord is one agent's journal.
type nodeRecord struct {
	name, nodeID, site string
	entries            []journal.Entry
}

// readJournals reads every agent's journal from its data directory.
// site says the site of the i-th agent, as it was started.
func readJournals(t *testing.T, fleet []*cluster.Agent, site func(i int) string) []nodeRecord {
	t.Helper()
	var out []nodeRecord
	for i, a := range fleet {
		es, skipped, err := journal.Read(agent.JournalDir(a.DataDir()))
		if err != nil {
			t.Fatalf("agent %s: %v", a.Name, err)
		}
		if skipped != 0 {
			t.Errorf("agent %s: %d lines of its journal are not entries", a.Name, skipped)
		}
		out = append(out, nodeRecord{name: a.Name, nodeID: a.NodeID(), site: site(i), entries: es})
	}
	return out
}

// checkUpdatedOnce checks that every node was assigned version of
// deployment once, started it once and switched to it once, and serves
// it now: no node skipped, none updated twice.
func checkUpdatedOnce(t *testing.T, records []nodeRecord, deployment string, version uint64) {
	t.Helper()
	for _, r := range records {
		count := map[journal.Event]int{}
		var serving uint64
		for _, e := range r.entries {
			if e.Deployment != deployment {
				continue
			}
			if e.Version == version {
				count[e.Event]++
			}
			switch e.Event {
			case journal.Switched:
				serving = e.Version
			case journal.NotServing:
				serving = 0
			}
		}
		if count[journal.Assigned] != 1 || count[journal.Started] != 1 || count[journal.Switched] != 1 || serving != version {
			t.Errorf("node %s: assigned version %d %d times, started it %d times, switched to it %d times, serves version %d now; want once each and serving it\n%s",
				r.name, version, count[journal.Assigned], count[journal.Started], count[journal.Switched], serving, describe(r.entries, deployment))
		}
	}
}

// An unavailable node, as the agents' journals show it, is one that holds
// an assignment of the deployment and does not serve the version it is
// assigned: from the moment it records a new version's assignment until
// it records the switch to it, and from any moment it records serving
// nothing until it records a switch again. A node without an assignment
// is not unavailable (it is not part of the deployment). This is the
// rollout controller's count as an agent can know it: the controller counts
// a node of the unfinished batch from the batch's start, which is before
// the node records its assignment, until the batch is done, which is
// after the node recorded its switch and reported it (see
// controlplane/rollout, world.unavailable), and any other node from when
// it reports anything but HEALTHY on its assigned version. So when every
// node stays up, as here, a site over its budget in the journals is a
// site the controller took over it.
type interval struct {
	node       string
	from, till time.Time // till is zero while it lasts
}

// unavailability returns the intervals in which the node of r was
// unavailable for deployment.
func unavailability(r nodeRecord, deployment string) []interval {
	var (
		out               []interval
		assigned, serving uint64
		open              *interval
	)
	for _, e := range r.entries {
		switch {
		case e.Event == journal.Boot:
			serving = 0
		case e.Deployment != deployment:
			continue
		case e.Event == journal.Assigned:
			assigned = e.Version
		case e.Event == journal.Unassigned:
			assigned = 0
		case e.Event == journal.Switched:
			serving = e.Version
		case e.Event == journal.NotServing:
			serving = 0
		default:
			continue
		}
		down := assigned != 0 && serving != assigned
		switch {
		case down && open == nil:
			open = &interval{node: r.name, from: e.Time}
		case !down && open != nil:
			open.till = e.Time
			out = append(out, *open)
			open = nil
		}
	}
	if open != nil {
		out = append(out, *open)
	}
	return out
}

// checkSiteBudget fails the test at the first instant since from at
// which the journals show a site with more than budget nodes unavailable
// for deployment, and returns the most each site had at once.
func checkSiteBudget(t *testing.T, records []nodeRecord, deployment string, from time.Time, budget int) map[string]int {
	t.Helper()
	peak, over := siteUnavailability(records, deployment, from, budget)
	for _, o := range over {
		t.Error(o)
	}
	return peak
}

// siteUnavailability rebuilds, from the journals, how many nodes of each
// site were unavailable for deployment at every instant since from. It
// returns the most each site had at once, and for each site that had more
// than budget, the first instant it did.
func siteUnavailability(records []nodeRecord, deployment string, from time.Time, budget int) (peak map[string]int, over []string) {
	type edge struct {
		at    time.Time
		delta int
		node  string
	}
	edges := map[string][]edge{}
	for _, r := range records {
		for _, iv := range unavailability(r, deployment) {
			if !iv.till.IsZero() && !iv.till.After(from) {
				continue
			}
			edges[r.site] = append(edges[r.site], edge{at: iv.from, delta: 1, node: r.name})
			if !iv.till.IsZero() {
				edges[r.site] = append(edges[r.site], edge{at: iv.till, delta: -1, node: r.name})
			}
		}
	}
	peak = map[string]int{}
	for _, site := range slices.Sorted(maps.Keys(edges)) {
		es := edges[site]
		// At equal times an end comes first: intervals are half-open.
		slices.SortFunc(es, func(a, b edge) int {
			if c := a.at.Compare(b.at); c != 0 {
				return c
			}
			return cmp.Compare(a.delta, b.delta)
		})
		var now []string
		for _, e := range es {
			if e.delta > 0 {
				now = append(now, e.node)
			} else {
				now = slices.DeleteFunc(now, func(n string) bool { return n == e.node })
			}
			peak[site] = max(peak[site], len(now))
			if len(now) > budget {
				over = append(over, fmt.Sprintf("site %s at %s: %d nodes unavailable %v, over the budget of %d",
					site, e.at.Format(time.RFC3339Nano), len(now), now, budget))
				break
			}
		}
	}
	return peak, over
}

// describe prints a node's journal entries of deployment, for failures.
func describe(entries []journal.Entry, deployment string) string {
	var b strings.Builder
	for _, e := range entries {
		if e.Event == journal.Boot || e.Deployment == deployment {
			fmt.Fprintf(&b, "  %s %s %d %s\n", e.Time.Format("15:04:05.000000"), e.Event, e.Version, e.Reason)
		}
	}
	return b.String()
}

// latestRollout returns the latest rollout of deployment from whichever
// server leads now, asking again through an election.
func latestRollout(ctx context.Context, t *testing.T, c *cluster.Cluster, deployment string) *droverv1.Rollout {
	t.Helper()
	for {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Client(l, false).Rollouts.GetRollout(ctx, connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: deployment}))
		if err == nil {
			return res.Msg.GetRollout()
		}
		if ctx.Err() != nil {
			t.Fatalf("get rollout of %s: %v", deployment, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitRolloutVia waits, through leader changes, until the latest rollout
// of deployment is rollout id in state, and returns it.
func waitRolloutVia(ctx context.Context, t *testing.T, c *cluster.Cluster, deployment string, id uint64, state droverv1.RolloutState) *droverv1.Rollout {
	t.Helper()
	for {
		r := latestRollout(ctx, t, c, deployment)
		if r.GetId() == id && r.GetState() == state {
			return r
		}
		if ctx.Err() != nil {
			t.Fatalf("rollout %d of %s never reached %s: latest %v", id, deployment, state, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The journal check itself: overlapping updates in one site are caught,
// the same updates one after another are not, a node serving nothing
// counts until it switches, a node without an assignment does not count,
// and a boot means nothing serves.
func TestSiteUnavailabilityFromJournals(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	// update is a node of site moving from version 1 to 2 between a and b
	// seconds, after serving version 1 since second 0.
	update := func(name, site string, a, b float64) nodeRecord {
		return nodeRecord{name: name, site: site, entries: []journal.Entry{
			{Time: at(0), Event: journal.Boot},
			{Time: at(0), Event: journal.Assigned, Deployment: "web", Version: 1},
			{Time: at(0), Event: journal.Switched, Deployment: "web", Version: 1},
			{Time: at(a), Event: journal.Assigned, Deployment: "web", Version: 2},
			{Time: at((a + b) / 2), Event: journal.Started, Deployment: "web", Version: 2},
			{Time: at(b), Event: journal.Switched, Deployment: "web", Version: 2, Previous: 1},
			{Time: at(b), Event: journal.Stopped, Deployment: "web", Version: 1},
		}}
	}
	for _, tc := range []struct {
		name    string
		records []nodeRecord
		peak    map[string]int
		over    bool
	}{
		{"one after another", []nodeRecord{update("a", "x", 1, 2), update("b", "x", 2, 3), update("c", "x", 3, 4)},
			map[string]int{"x": 1}, false},
		{"two sites at once", []nodeRecord{update("a", "x", 1, 2), update("b", "y", 1, 2)},
			map[string]int{"x": 1, "y": 1}, false},
		{"overlap in a site", []nodeRecord{update("a", "x", 1, 3), update("b", "x", 2, 4)},
			map[string]int{"x": 2}, true},
		{"before the window", []nodeRecord{update("a", "x", -5, -3), update("b", "x", -4, -2), update("c", "x", 1, 2)},
			map[string]int{"x": 1}, false},
		{"a node serving nothing counts", []nodeRecord{update("a", "x", 1, 3), {name: "b", site: "x", entries: []journal.Entry{
			{Time: at(0), Event: journal.Assigned, Deployment: "web", Version: 1},
			{Time: at(0), Event: journal.Switched, Deployment: "web", Version: 1},
			{Time: at(2), Event: journal.NotServing, Deployment: "web", Version: 1},
			{Time: at(5), Event: journal.Switched, Deployment: "web", Version: 1},
		}}}, map[string]int{"x": 2}, true},
		{"a boot serves nothing", []nodeRecord{update("a", "x", 1, 3), {name: "b", site: "x", entries: []journal.Entry{
			{Time: at(0), Event: journal.Assigned, Deployment: "web", Version: 1},
			{Time: at(0), Event: journal.Switched, Deployment: "web", Version: 1},
			{Time: at(2), Event: journal.Boot},
			{Time: at(2), Event: journal.Assigned, Deployment: "web", Version: 1, Reason: "restored from the state file"},
			{Time: at(4), Event: journal.Switched, Deployment: "web", Version: 1},
		}}}, map[string]int{"x": 2}, true},
		{"an unassigned node does not count", []nodeRecord{update("a", "x", 1, 3), {name: "b", site: "x", entries: []journal.Entry{
			{Time: at(0), Event: journal.Assigned, Deployment: "web", Version: 1},
			{Time: at(0), Event: journal.Switched, Deployment: "web", Version: 1},
			{Time: at(1.5), Event: journal.Unassigned, Deployment: "web"},
			{Time: at(1.6), Event: journal.NotServing, Deployment: "web", Version: 1},
			{Time: at(1.7), Event: journal.Stopped, Deployment: "web", Version: 1},
		}}}, map[string]int{"x": 1}, false},
		{"another deployment does not count", []nodeRecord{update("a", "x", 1, 3), {name: "b", site: "x", entries: []journal.Entry{
			{Time: at(2), Event: journal.Assigned, Deployment: "other", Version: 1},
		}}}, map[string]int{"x": 1}, false},
		{"still updating at the end", []nodeRecord{update("a", "x", 1, 3), {name: "b", site: "x", entries: []journal.Entry{
			{Time: at(0), Event: journal.Assigned, Deployment: "web", Version: 1},
			{Time: at(0), Event: journal.Switched, Deployment: "web", Version: 1},
			{Time: at(2), Event: journal.Assigned, Deployment: "web", Version: 2},
		}}}, map[string]int{"x": 2}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peak, over := siteUnavailability(tc.records, "web", t0, 1)
			if !maps.Equal(peak, tc.peak) || (len(over) > 0) != tc.over {
				t.Errorf("peak %v, over the budget of 1: %q; want peak %v, over %v", peak, over, tc.peak, tc.over)
			}
		})
	}
}
