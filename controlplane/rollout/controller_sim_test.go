package rollout

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The simulation: a fake fleet whose agents follow their assignments
// (start the assigned version, become healthy or crash after a random
// delay, report on a heartbeat), a leader that steps the controller every
// simulated second and applies its decisions to the records as the FSM
// will, an operator who promotes, pauses and resumes, and chaos: leader
// changes that drop every report, and leaders that die halfway through
// applying a step's decisions. Invariants are checked after every write.

// simNode is one agent's instance, as it really is (the leader only sees
// its reports).
type simNode struct {
	id, site  string
	running   uint64
	state     droverv1.InstanceState
	since     time.Time
	settleAt  time.Time
	breaks    bool // crash-loops on the broken version
	phase     int  // its heartbeat's offset in seconds
	down      bool // neither runs nor reports until downUntil
	downUntil time.Time
}

type simConfig struct {
	sites    map[string]int
	strategy *droverv1.RolloutStrategy
	// broken is the version's fault: which nodes crash-loop on it.
	broken func(i int) bool
	chaos  bool // leader changes and leaders dying mid-step
	// downs takes nodes down for up to 15 minutes at random during the
	// first 90 minutes. The fleet can then be over its budget by no
	// fault of the controller's, so the budget check becomes: no
	// decision raises a site's unavailable count above the budget.
	downs       bool
	pauses      bool // an operator pausing and resuming at random
	seed        uint64
	heartbeat   int // seconds between reports
	maxStartSec int // the slowest start, in seconds
}

type simResult struct {
	writes    map[uint64]int // controller decisions applied, per rollout
	operator  int            // operator actions applied
	other     int            // Assign and Unassign
	batches   map[uint64]int
	maxIDs    int // the most node ids in one decision
	took      time.Duration
	rollouts  map[uint64]*droverv1.Rollout
	gotBroken map[string]bool // nodes ever assigned version 2
}

const (
	goodFrom, newVersion = 1, 2
	simLimit             = 48 * time.Hour
)

// legalMoves is the state machine the test holds rollouts to, written out
// again here rather than taken from the package.
var legalMoves = map[[2]droverv1.RolloutState]bool{
	{progressing, paused}: true, {progressing, awaiting}: true, {progressing, succeeded}: true,
	{progressing, failed}: true, {paused, progressing}: true, {awaiting, progressing}: true,
}

func simulate(t testing.TB, cfg simConfig) simResult {
	rng := rand.New(rand.NewPCG(cfg.seed, 7))
	if cfg.heartbeat == 0 {
		cfg.heartbeat = 5
	}
	if cfg.maxStartSec == 0 {
		cfg.maxStartSec = 60
	}
	f := newFleet(cfg.strategy, cfg.sites)
	f.dep.Spec.Runtime.StartTimeout = durationpb.New(2 * time.Minute)
	nodes := map[string]*simNode{}
	for i, n := range f.nodes {
		nodes[n.ID] = &simNode{
			id: n.ID, site: n.Site, running: goodFrom, state: healthyState, since: t0.Add(-time.Hour),
			breaks: cfg.broken != nil && cfg.broken(i), phase: rng.IntN(cfg.heartbeat),
		}
	}
	ids := slices.Sorted(mapsKeys(nodes))
	ctl, err := NewController(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	budget := int(cfg.strategy.GetMaxUnavailablePerSite())
	res := simResult{writes: map[uint64]int{}, batches: map[uint64]int{}, gotBroken: map[string]bool{}}
	assignedTimes := map[string]map[uint64]int{} // node -> version -> times assigned
	states := map[uint64][]droverv1.RolloutState{1: {progressing}}
	var promoteAt, resumeAt time.Time

	// unavailableNow counts, per site, the nodes really unavailable: down,
	// or not healthy on what they are assigned, or in the unfinished
	// batch.
	unavailableNow := func() map[string]int {
		busy := map[string]bool{}
		if r := f.latest(); !Terminal(r.GetState()) {
			if bs := r.GetBatches(); len(bs) > 0 && bs[len(bs)-1].GetDoneTime() == nil {
				for _, id := range bs[len(bs)-1].GetNodeIds() {
					busy[id] = true
				}
			}
		}
		per := map[string]int{}
		for _, id := range ids {
			n, v := nodes[id], f.assigned[id]
			if busy[id] || n.down || (v != 0 && (n.running != v || n.state != healthyState)) {
				per[n.site]++
			}
		}
		return per
	}
	// checkBudget holds the real fleet to the budget; with downs, only
	// what a decision changed (before is the count before it).
	checkBudget := func(when string, before map[string]int) {
		for site, c := range unavailableNow() {
			if c > budget && (!cfg.downs || before == nil || c > before[site]) {
				t.Fatalf("%s at %v: site %s has %d nodes unavailable (%d before), budget %d", when, f.now.Sub(t0), site, c, before[site], budget)
			}
		}
	}
	// record checks and counts one applied decision.
	record := func(d Decision, byOperator bool, before map[string]int) {
		var rid uint64
		switch d := d.(type) {
		case StartBatch:
			rid = d.RolloutID
			res.batches[rid]++
			res.maxIDs = max(res.maxIDs, len(d.NodeIDs))
			for _, id := range d.NodeIDs {
				if assignedTimes[id] == nil {
					assignedTimes[id] = map[uint64]int{}
				}
				assignedTimes[id][d.Version]++
				if assignedTimes[id][d.Version] > 1 {
					t.Fatalf("%s: node %s assigned version %d a second time", d, id, d.Version)
				}
				if d.Version == newVersion {
					res.gotBroken[id] = true
				}
			}
		case BatchDone:
			rid = d.RolloutID
		case SetState:
			rid = d.RolloutID
		case StartRollback:
			rid = d.ID
			states[d.ID] = []droverv1.RolloutState{progressing}
		case Assign:
			res.maxIDs = max(res.maxIDs, len(d.NodeIDs))
			for _, id := range d.NodeIDs {
				if assignedTimes[id] == nil {
					assignedTimes[id] = map[uint64]int{}
				}
				assignedTimes[id][d.Version]++
				if assignedTimes[id][d.Version] > 1 {
					t.Fatalf("%s: node %s assigned version %d a second time", d, id, d.Version)
				}
			}
		}
		switch {
		case byOperator:
			res.operator++
		case rid == 0:
			res.other++
		default:
			res.writes[rid]++
		}
		for id, r := range f.rollouts {
			seq := states[id]
			if last := seq[len(seq)-1]; r.GetState() != last {
				if !legalMoves[[2]droverv1.RolloutState{last, r.GetState()}] && !(r.GetState() == superseded && !Terminal(last)) {
					t.Fatalf("%s: rollout %d moved %v -> %v", d, id, last, r.GetState())
				}
				states[id] = append(seq, r.GetState())
			}
		}
		checkBudget(d.String(), before)
	}
	operator := func(d Decision, err error) {
		if err != nil {
			t.Fatalf("operator: %v", err)
		}
		before := unavailableNow()
		if err := f.apply(d); err != nil {
			t.Fatalf("operator %s: %v", d, err)
		}
		record(d, true, before)
	}

	for tick := 0; ; tick++ {
		f.now = t0.Add(time.Duration(tick) * time.Second)
		if f.now.Sub(t0) > simLimit {
			t.Fatalf("not settled after %v: rollout %v", simLimit, f.latest())
		}
		// Agents.
		for i, id := range ids {
			n := nodes[id]
			if cfg.downs && !n.down && f.now.Sub(t0) < 90*time.Minute && rng.IntN(20000) == 0 {
				n.down, n.downUntil = true, f.now.Add(time.Duration(30+rng.IntN(870))*time.Second)
				f.nodes[i].Down = true
			}
			if n.down {
				if f.now.Before(n.downUntil) {
					continue
				}
				// Back up: its instance starts again, and the heartbeat
				// that makes it ready carries the news.
				n.down, f.nodes[i].Down = false, false
				n.state, n.since = startingSt, f.now
				n.settleAt = f.now.Add(time.Duration(5+rng.IntN(cfg.maxStartSec)) * time.Second)
				f.reports[id] = &droverv1.InstanceStatus{Deployment: "detector", Version: n.running, State: n.state, Since: timestamppb.New(n.since)}
			}
			if v := f.assigned[id]; v != 0 && v != n.running {
				n.running, n.state, n.since = v, startingSt, f.now
				n.settleAt = f.now.Add(time.Duration(5+rng.IntN(cfg.maxStartSec)) * time.Second)
			}
			if n.state == startingSt && !f.now.Before(n.settleAt) {
				n.state, n.since = healthyState, f.now
				if n.breaks && n.running == newVersion {
					n.state = crashLoop
				}
			}
			if (tick+n.phase)%cfg.heartbeat == 0 {
				f.reports[id] = &droverv1.InstanceStatus{Deployment: "detector", Version: n.running, State: n.state, Since: timestamppb.New(n.since)}
			}
		}
		if !cfg.downs {
			checkBudget("agents", nil)
		}
		// A leader change: the new leader has no reports.
		if cfg.chaos && rng.IntN(300) == 0 {
			f.reports = map[string]*droverv1.InstanceStatus{}
			f.since = f.now
		}
		// The operator.
		r := f.latest()
		switch r.GetState() {
		case awaiting:
			if promoteAt.IsZero() {
				promoteAt = f.now.Add(time.Duration(rng.IntN(300)) * time.Second)
			}
			if !f.now.Before(promoteAt) {
				promoteAt = time.Time{}
				operator(Promote(f.dep, r, "", f.now))
			}
		case progressing:
			if cfg.pauses && rng.IntN(400) == 0 {
				resumeAt = f.now.Add(time.Duration(10+rng.IntN(900)) * time.Second)
				operator(Pause(f.dep, r, "", f.now))
			}
		case paused:
			if !f.now.Before(resumeAt) {
				operator(Resume(f.dep, r, "", f.now))
			}
		}
		// The leader's controller.
		v := f.view()
		step, err := ctl.Step(v)
		if err != nil {
			t.Fatalf("step at %v: %v", f.now.Sub(t0), err)
		}
		if cfg.chaos {
			if again, _ := ctl.Step(f.view()); !reflect.DeepEqual(step, again) {
				t.Fatalf("two steps on one view differ:\n%v\n%v", step.Decisions, again.Decisions)
			}
		}
		ds := step.Decisions
		died := cfg.chaos && len(ds) > 0 && rng.IntN(10) == 0
		if died {
			// The leader dies having committed only some of the step.
			ds = ds[:rng.IntN(len(ds)+1)]
		}
		for _, d := range ds {
			before := unavailableNow()
			if err := f.apply(d); err != nil {
				t.Fatalf("apply %s: %v", d, err)
			}
			record(d, false, before)
		}
		if died {
			f.reports = map[string]*droverv1.InstanceStatus{}
			f.since = f.now
			// Its commands arrive again, late: the FSM refuses each.
			for _, d := range ds {
				if _, ok := d.(Assign); ok {
					continue
				}
				if _, ok := d.(Unassign); ok {
					continue
				}
				before := proto.CloneOf(f.latest())
				if err := f.apply(d); !errors.Is(err, ErrStale) {
					t.Fatalf("replayed %s: %v, want ErrStale", d, err)
				}
				if !proto.Equal(before, f.latest()) {
					t.Fatalf("replayed %s changed the rollout", d)
				}
			}
		}
		// Settled: the latest rollout succeeded, every node is healthy on
		// the deployment's version, and the controller has nothing to do.
		if r := f.latest(); r.GetState() == succeeded && len(step.Decisions) == 0 && !died {
			settled := true
			for _, id := range ids {
				n := nodes[id]
				settled = settled && !n.down && f.assigned[id] == f.dep.GetVersion() && n.running == f.dep.GetVersion() && n.state == healthyState
			}
			if settled {
				res.took = f.now.Sub(t0)
				break
			}
		}
	}
	for id, seq := range states {
		t.Logf("rollout %d: %v; %d controller writes, %d batches", id, seq, res.writes[id], res.batches[id])
	}
	res.rollouts = f.rollouts
	for _, id := range ids {
		for v, n := range assignedTimes[id] {
			if n != 1 {
				t.Fatalf("node %s assigned version %d %d times", id, v, n)
			}
		}
	}
	return res
}

// seeds is how many simulations each scenario runs: fewer in the short
// tier, which runs under the race detector.
func seeds() uint64 {
	if testing.Short() {
		return 12
	}
	return 40
}

func simStrategy(autoPromote, autoRevert bool) *droverv1.RolloutStrategy {
	s := strategy(2, 6, 3)
	s.AutoPromote, s.AutoRevert = autoPromote, autoRevert
	return s
}

var twoSites = map[string]int{"berlin": 20, "lyon": 20}

// A good version reaches all 40 nodes, each exactly once, whatever the
// leader changes, crashes mid-step, pauses and promotions in between.
func TestSimulationGoodVersion(t *testing.T) {
	for seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			res := simulate(t, simConfig{
				sites: twoSites, strategy: simStrategy(seed%2 == 0, true),
				chaos: true, pauses: seed%3 == 0, seed: seed,
			})
			r := res.rollouts[1]
			if len(res.rollouts) != 1 || r.GetState() != succeeded {
				t.Fatalf("rollouts %v", res.rollouts)
			}
			if len(res.gotBroken) != 40 {
				t.Fatalf("%d nodes got version 2", len(res.gotBroken))
			}
			// The canary takes 2 nodes, in two batches when a leader
			// change left the budget short.
			canary := 0
			for i, b := range r.GetBatches() {
				if b.GetCanary() {
					canary += len(b.GetNodeIds())
					if i > 0 && !r.GetBatches()[i-1].GetCanary() {
						t.Fatalf("canary batch %d after a normal one", i)
					}
				}
			}
			if canary != 2 {
				t.Errorf("canary of %d nodes, want 2: %v", canary, r.GetBatches())
			}
			t.Logf("settled after %v", res.took)
		})
	}
}

// A version that crash-loops everywhere reaches only the canary; the
// rollback brings those nodes back and nothing else moves.
func TestSimulationBrokenVersion(t *testing.T) {
	for seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			res := simulate(t, simConfig{
				sites: twoSites, strategy: simStrategy(seed%2 == 0, true),
				broken: func(int) bool { return true },
				chaos:  true, pauses: seed%3 == 0, seed: seed,
			})
			first, back := res.rollouts[1], res.rollouts[2]
			if first.GetState() != failed || back.GetState() != succeeded || back.GetRollbackOf() != 1 || back.GetToVersion() != goodFrom {
				t.Fatalf("rollouts: %v / %v", first, back)
			}
			if !strings.Contains(first.GetEndReason(), "CRASH_LOOP on version 2") {
				t.Errorf("end reason %q", first.GetEndReason())
			}
			var canary []string
			for _, b := range first.GetBatches() {
				if !b.GetCanary() {
					t.Fatalf("rollout 1 got past its canary: %v", first.GetBatches())
				}
				canary = append(canary, b.GetNodeIds()...)
			}
			got := slices.Sorted(mapsKeys(res.gotBroken))
			slices.Sort(canary)
			if !slices.Equal(got, canary) {
				t.Fatalf("nodes that got version 2: %v, canary %v", got, canary)
			}
			var rolledBack []string
			for _, b := range back.GetBatches() {
				if b.GetCanary() {
					t.Errorf("rollback with a canary batch")
				}
				rolledBack = append(rolledBack, b.GetNodeIds()...)
			}
			slices.Sort(rolledBack)
			if !slices.Equal(rolledBack, canary) {
				t.Errorf("rollback moved %v, want the canary %v", rolledBack, canary)
			}
		})
	}
}

// A version that fails on a quarter of the nodes may pass its canary; the
// batch that meets a failing node fails the rollout and every node that
// got the version goes back.
func TestSimulationPartlyBrokenVersion(t *testing.T) {
	for seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			res := simulate(t, simConfig{
				sites: twoSites, strategy: simStrategy(true, true),
				broken: func(i int) bool { return (i*7+int(seed))%4 == 0 },
				chaos:  true, pauses: seed%3 == 0, seed: seed,
			})
			first, back := res.rollouts[1], res.rollouts[2]
			if first.GetState() != failed || back.GetState() != succeeded {
				t.Fatalf("rollouts: %v / %v", first, back)
			}
			var moved []string
			for _, b := range back.GetBatches() {
				moved = append(moved, b.GetNodeIds()...)
			}
			slices.Sort(moved)
			if got := slices.Sorted(mapsKeys(res.gotBroken)); !slices.Equal(got, moved) {
				t.Fatalf("got version 2: %v; rolled back: %v", got, moved)
			}
			t.Logf("%d nodes got version 2 before the rollout failed: %s", len(moved), first.GetEndReason())
		})
	}
}

// Nodes go down and come back during the rollout. A batch whose node is
// down (or restarting) past the deadline fails the rollout and it is
// rolled back;
// either way every node ends healthy on the deployment's version, nodes
// that were down while their turn came included, each assigned each
// version at most once, and no decision takes a site over its budget.
func TestSimulationNodesGoDown(t *testing.T) {
	outcomes := map[string]int{}
	for seed := range seeds() {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			res := simulate(t, simConfig{
				sites: twoSites, strategy: simStrategy(seed%2 == 0, true),
				chaos: true, downs: true, pauses: seed%3 == 0, seed: seed,
			})
			first := res.rollouts[1]
			switch first.GetState() {
			case succeeded:
				outcomes["succeeded"]++
			case failed:
				outcomes["failed and rolled back"]++
				// The version is good: only downtime, a missed deadline,
				// can fail it.
				if back := res.rollouts[2]; back.GetState() != succeeded || !strings.Contains(first.GetEndReason(), "not done within") {
					t.Fatalf("rollout 1 failed with %q; rollback %v", first.GetEndReason(), back)
				}
			default:
				t.Fatalf("rollout 1 %v", first)
			}
		})
	}
	t.Logf("outcomes: %v", outcomes)
}

// TestRaftWritesPerRollout counts the Raft commands one rollout takes on
// 100 and 1,000 nodes in two sites: they grow with the number of batches,
// and no command carries more node ids than max_parallel. The figures in
// docs/performance.md ("Rollout controller") come from this test's log:
//
//	go test ./controlplane/rollout -run TestRaftWritesPerRollout -v
func TestRaftWritesPerRollout(t *testing.T) {
	for _, tc := range []struct {
		nodes               int
		canary, par, budget uint32
		autoPromote, broken bool
		long                bool // left to the long tier
	}{
		{100, 2, 10, 5, false, false, false},
		{100, 2, 10, 5, true, false, false},
		{100, 2, 10, 5, true, true, false},
		{1000, 10, 50, 25, false, false, false},
		{1000, 10, 10, 5, true, false, true},
		{1000, 10, 50, 25, true, true, false},
	} {
		if tc.long && testing.Short() {
			t.Logf("%d nodes, max_parallel %d: in the long tier", tc.nodes, tc.par)
			continue
		}
		s := strategy(tc.canary, tc.par, tc.budget)
		s.AutoPromote, s.AutoRevert = tc.autoPromote, true
		cfg := simConfig{sites: map[string]int{"berlin": tc.nodes / 2, "lyon": tc.nodes / 2}, strategy: s, seed: 1}
		if tc.broken {
			cfg.broken = func(int) bool { return true }
		}
		res := simulate(t, cfg)
		total, batches := 0, 0
		for id, w := range res.writes {
			total += w
			batches += res.batches[id]
		}
		// Per batch a start and a done; per rollout a few state changes.
		if limit := 2*batches + 3*len(res.writes); total > limit {
			t.Errorf("%d writes for %d batches", total, batches)
		}
		if res.maxIDs > int(tc.par) {
			t.Errorf("a write with %d node ids, max_parallel %d", res.maxIDs, tc.par)
		}
		kind := "good version"
		if tc.broken {
			kind = "broken version, rolled back"
		}
		t.Logf("FIGURE nodes=%d canary=%d max_parallel=%d budget/site=%d auto_promote=%v %s: %d controller writes (%d batches, %d rollouts), %d operator writes, largest write %d node ids, simulated %v",
			tc.nodes, tc.canary, tc.par, tc.budget, tc.autoPromote, kind, total, batches, len(res.writes), res.operator, res.maxIDs, res.took)
	}
}

// BenchmarkStep is one leader tick for a deployment in the middle of a
// rollout: a batch of max_parallel nodes healthy but not yet for
// min_healthy_time, so the step judges it and decides to wait. The cost
// grows with the fleet (the view is walked and the budget counted per
// tick), which bounds how often a leader can step many deployments.
//
//	go test ./controlplane/rollout -run NONE -bench Step -benchmem
func BenchmarkStep(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			f := newFleet(strategy(0, 50, 25), map[string]int{"berlin": n / 2, "lyon": n / 2})
			c, err := NewController(DefaultConfig())
			if err != nil {
				b.Fatal(err)
			}
			res, err := c.Step(f.view())
			if err != nil || len(res.Decisions) != 1 {
				b.Fatalf("first step: %v %v", res.Decisions, err)
			}
			if err := f.apply(res.Decisions[0]); err != nil {
				b.Fatal(err)
			}
			f.healthyBatch(t0, t0.Add(10*time.Second))
			v := f.view()
			b.ResetTimer()
			for b.Loop() {
				res, err := c.Step(v)
				if err != nil || len(res.Decisions) != 0 {
					b.Fatalf("step: %v %v", res.Decisions, err)
				}
			}
		})
	}
}
