package rollout

import (
	"errors"
	"fmt"
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

const (
	progressing = droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING
	paused      = droverv1.RolloutState_ROLLOUT_STATE_PAUSED
	awaiting    = droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION
	succeeded   = droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	failed      = droverv1.RolloutState_ROLLOUT_STATE_FAILED
	superseded  = droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED

	healthyState = droverv1.InstanceState_INSTANCE_STATE_HEALTHY
	startingSt   = droverv1.InstanceState_INSTANCE_STATE_STARTING
	crashLoop    = droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP
	unhealthySt  = droverv1.InstanceState_INSTANCE_STATE_UNHEALTHY
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fleet is a deployment, its rollouts and assignments, changed by
// decisions exactly as the FSM's commands will change them: through the
// decisions' ApplyTo and Check.
type fleet struct {
	dep      *droverv1.Deployment
	rollouts map[uint64]*droverv1.Rollout
	assigned map[string]uint64
	nodes    []NodeView
	reports  map[string]*droverv1.InstanceStatus
	since    time.Time // the leader's ReportsSince
	now      time.Time
}

// newFleet has n nodes per site ("a-00", "b-00", ...), every one assigned
// and healthy on version 1 since long ago, and a rollout 1 (from 1 to 2,
// PROGRESSING, no batches yet) unless noRollout.
func newFleet(s *droverv1.RolloutStrategy, sites map[string]int) *fleet {
	f := &fleet{
		dep: &droverv1.Deployment{
			Spec: &droverv1.DeploymentSpec{
				Name:     "detector",
				Strategy: s,
				Runtime:  &droverv1.RuntimeSpec{StartTimeout: durationpb.New(2 * time.Minute)},
			},
			Version: 2, RolloutId: 1,
		},
		rollouts: map[uint64]*droverv1.Rollout{1: {
			Deployment: "detector", Id: 1, FromVersion: 1, ToVersion: 2, State: progressing,
			CreateTime: timestamppb.New(t0),
		}},
		assigned: map[string]uint64{},
		reports:  map[string]*droverv1.InstanceStatus{},
		since:    t0.Add(-time.Hour),
		now:      t0,
	}
	for _, site := range slices.Sorted(mapsKeys(sites)) {
		for i := range sites[site] {
			id := fmt.Sprintf("%s-%02d", site, i)
			f.nodes = append(f.nodes, NodeView{ID: id, Site: site})
			f.assigned[id] = 1
			f.report(id, 1, healthyState, t0.Add(-time.Hour))
		}
	}
	slices.SortFunc(f.nodes, func(a, b NodeView) int { return strings.Compare(a.ID, b.ID) })
	return f
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func strategy(canary, maxParallel, budget uint32) *droverv1.RolloutStrategy {
	return &droverv1.RolloutStrategy{
		Canary: canary, MaxParallel: maxParallel, MaxUnavailablePerSite: budget,
		MinHealthyTime:   durationpb.New(30 * time.Second),
		ProgressDeadline: durationpb.New(10 * time.Minute),
	}
}

func (f *fleet) report(id string, version uint64, st droverv1.InstanceState, since time.Time) {
	f.reports[id] = &droverv1.InstanceStatus{Deployment: "detector", Version: version, State: st, Since: timestamppb.New(since)}
}

func (f *fleet) latest() *droverv1.Rollout { return f.rollouts[f.dep.GetRolloutId()] }

func (f *fleet) view() View {
	return View{
		Deployment: f.dep, Rollout: f.latest(), Nodes: f.nodes,
		Assigned: f.assigned, Reports: f.reports, ReportsSince: f.since, Now: f.now,
	}
}

// apply changes the records as the FSM's command for d does, refusing
// what the FSM refuses.
func (f *fleet) apply(d Decision) error {
	switch d := d.(type) {
	case StartBatch:
		r := proto.CloneOf(f.latest())
		if err := d.ApplyTo(r); err != nil {
			return err
		}
		f.rollouts[r.GetId()] = r
		for _, id := range d.NodeIDs {
			f.assigned[id] = d.Version
		}
	case BatchDone:
		r := proto.CloneOf(f.latest())
		if err := d.ApplyTo(r); err != nil {
			return err
		}
		f.rollouts[r.GetId()] = r
	case SetState:
		r := proto.CloneOf(f.latest())
		if err := d.ApplyTo(r); err != nil {
			return err
		}
		f.rollouts[r.GetId()] = r
	case StartRollback:
		dep, prev := proto.CloneOf(f.dep), proto.CloneOf(f.latest())
		r, err := d.ApplyTo(dep, prev)
		if err != nil {
			return err
		}
		f.dep = dep
		f.rollouts[prev.GetId()] = prev
		f.rollouts[r.GetId()] = r
	case Assign:
		if err := d.Check(f.dep); err != nil {
			return err
		}
		for _, id := range d.NodeIDs {
			f.assigned[id] = d.Version
		}
	case Unassign:
		for _, id := range d.NodeIDs {
			delete(f.assigned, id)
		}
	default:
		return fmt.Errorf("unknown decision %T", d)
	}
	return nil
}

func step(t *testing.T, f *fleet) Result {
	t.Helper()
	c, err := NewController(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Step(f.view())
	if err != nil {
		t.Fatalf("step: %v", err)
	}
	for _, d := range res.Decisions {
		t.Logf("decision: %s", d)
	}
	if res.Waiting != "" {
		t.Logf("waiting: %s", res.Waiting)
	}
	return res
}

// stepApply steps and applies every decision.
func stepApply(t *testing.T, f *fleet) Result {
	t.Helper()
	res := step(t, f)
	for _, d := range res.Decisions {
		if err := f.apply(d); err != nil {
			t.Fatalf("apply %s: %v", d, err)
		}
	}
	return res
}

// healthyBatch makes every node of the rollout's last batch healthy on
// the rollout's version since at, and the clock now.
func (f *fleet) healthyBatch(at, now time.Time) {
	r := f.latest()
	b := r.GetBatches()[len(r.GetBatches())-1]
	for _, id := range b.GetNodeIds() {
		f.report(id, r.GetToVersion(), healthyState, at)
	}
	f.now = now
}

func kinds(ds []Decision) string {
	var s []string
	for _, d := range ds {
		s = append(s, reflect.TypeOf(d).Name())
	}
	return strings.Join(s, ",")
}

func TestCanaryBatchFirstAcrossSites(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	res := step(t, f)
	if kinds(res.Decisions) != "StartBatch" {
		t.Fatalf("decisions %s, want one StartBatch", kinds(res.Decisions))
	}
	b := res.Decisions[0].(StartBatch)
	if !b.Canary || b.Index != 0 || b.Version != 2 || !slices.Equal(b.NodeIDs, []string{"a-00", "b-00"}) || !b.Time.Equal(t0) {
		t.Errorf("canary batch %+v, want a-00 and b-00 as canary batch 0 on version 2", b)
	}
}

func TestNoBatchUntilPreviousDone(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	// Canary nodes are starting: nothing to do but wait.
	f.report("a-00", 2, startingSt, t0)
	f.now = t0.Add(time.Minute)
	res := step(t, f)
	if len(res.Decisions) != 0 {
		t.Fatalf("decisions %s while the canary starts", kinds(res.Decisions))
	}
	if !strings.Contains(res.Waiting, "a-00 (STARTING on version 2)") || !strings.Contains(res.Waiting, "b-00 (HEALTHY on version 1)") {
		t.Errorf("waiting %q does not name the nodes waited for", res.Waiting)
	}
}

func TestMinHealthyTime(t *testing.T) {
	for _, tc := range []struct {
		name      string
		healthyAt time.Duration // after the batch started
		now       time.Duration
		done      bool
	}{
		{"healthy too briefly", 20 * time.Second, 49 * time.Second, false},
		{"healthy long enough", 20 * time.Second, 50 * time.Second, true},
		// A report from before the batch counts from the batch's start.
		{"since before the batch", -time.Hour, 29 * time.Second, false},
		{"since before the batch, long enough", -time.Hour, 30 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := strategy(1, 5, 3)
			s.AutoPromote = true
			f := newFleet(s, map[string]int{"a": 3})
			stepApply(t, f)
			f.healthyBatch(t0.Add(tc.healthyAt), t0.Add(tc.now))
			res := step(t, f)
			if got := len(res.Decisions) > 0; got != tc.done {
				t.Fatalf("done %v, want %v (decisions %s)", got, tc.done, kinds(res.Decisions))
			}
		})
	}
}

func TestHealthyOnOldVersionIsNotDone(t *testing.T) {
	f := newFleet(strategy(1, 5, 3), map[string]int{"a": 3})
	stepApply(t, f)
	f.now = t0.Add(5 * time.Minute) // a-00 still reports version 1, healthy
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s for a node healthy on the old version", kinds(res.Decisions))
	}
}

func TestAwaitPromotionAfterCanary(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.healthyBatch(t0, t0.Add(time.Minute))
	res := stepApply(t, f)
	if kinds(res.Decisions) != "BatchDone" || !res.Decisions[0].(BatchDone).AwaitPromotion {
		t.Fatalf("decisions %v, want BatchDone awaiting promotion alone", res.Decisions)
	}
	if f.latest().GetState() != awaiting {
		t.Fatalf("state %v", f.latest().GetState())
	}
	// Nothing happens while it waits, however long.
	f.now = t0.Add(24 * time.Hour)
	if res := step(t, f); len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "promotion") {
		t.Fatalf("decisions %s, waiting %q while awaiting promotion", kinds(res.Decisions), res.Waiting)
	}
	p, err := Promote(f.dep, f.latest(), "", f.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.apply(p); err != nil {
		t.Fatal(err)
	}
	res = step(t, f)
	if kinds(res.Decisions) != "StartBatch" || res.Decisions[0].(StartBatch).Canary || len(res.Decisions[0].(StartBatch).NodeIDs) != 5 {
		t.Fatalf("after promotion: %v, want a batch of 5, not a canary", res.Decisions)
	}
}

func TestAutoPromoteGoesOnInOneStep(t *testing.T) {
	s := strategy(2, 5, 3)
	s.AutoPromote = true
	f := newFleet(s, map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.healthyBatch(t0, t0.Add(time.Minute))
	res := step(t, f)
	if kinds(res.Decisions) != "BatchDone,StartBatch" || res.Decisions[0].(BatchDone).AwaitPromotion {
		t.Fatalf("decisions %v, want the canary done and the next batch started", res.Decisions)
	}
	b := res.Decisions[1].(StartBatch)
	if b.Index != 1 || b.Canary || slices.Contains(b.NodeIDs, "a-00") {
		t.Errorf("batch %+v", b)
	}
}

// A canary of 4 on two sites with a budget of 1 takes two canary batches;
// promotion is awaited only after the second.
func TestCanaryCutByBudget(t *testing.T) {
	f := newFleet(strategy(4, 5, 1), map[string]int{"a": 5, "b": 5})
	for i := range 2 {
		res := stepApply(t, f)
		if kinds(res.Decisions) != "StartBatch" || !res.Decisions[0].(StartBatch).Canary || len(res.Decisions[0].(StartBatch).NodeIDs) != 2 {
			t.Fatalf("canary batch %d: %v", i, res.Decisions)
		}
		f.healthyBatch(f.now, f.now.Add(time.Minute))
		res = stepApply(t, f)
		if k := kinds(res.Decisions); (i == 0 && k != "BatchDone,StartBatch") || (i == 1 && k != "BatchDone") {
			t.Fatalf("after canary batch %d: %s", i, k)
		}
		if i == 0 {
			// Undo the chained start so the loop starts it itself.
			f.rollouts[1].Batches = f.rollouts[1].Batches[:1]
			for _, id := range res.Decisions[1].(StartBatch).NodeIDs {
				f.assigned[id] = 1
			}
		}
	}
	if f.latest().GetState() != awaiting {
		t.Fatalf("state %v after the canary", f.latest().GetState())
	}
}

func TestFailureNeedsStartTimeout(t *testing.T) {
	for _, st := range []droverv1.InstanceState{crashLoop, unhealthySt, droverv1.InstanceState_INSTANCE_STATE_FAILED} {
		t.Run(st.String(), func(t *testing.T) {
			f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
			stepApply(t, f)
			f.reports["b-00"] = &droverv1.InstanceStatus{Version: 2, State: st, Reason: "exit status 1", Restarts: 4}
			f.now = t0.Add(time.Minute) // within the 2m start timeout
			if res := step(t, f); len(res.Decisions) != 0 {
				t.Fatalf("decisions %s within the start timeout", kinds(res.Decisions))
			}
			f.now = t0.Add(2 * time.Minute)
			res := step(t, f)
			if kinds(res.Decisions) != "SetState" {
				t.Fatalf("decisions %s, want the rollout failed", kinds(res.Decisions))
			}
			s := res.Decisions[0].(SetState)
			want := fmt.Sprintf("batch 0: node b-00 %s on version 2 (exit status 1, 4 restarts)", instanceStateName(st))
			if s.To != failed || s.From != progressing || s.Reason != want {
				t.Errorf("got %+v, want FAILED with reason %q", s, want)
			}
		})
	}
}

// A report on the old version, however bad, is not the new version's
// failure: the agent has not switched yet.
func TestFailureOnOldVersionIgnored(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.report("b-00", 1, crashLoop, t0)
	f.now = t0.Add(5 * time.Minute)
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s", kinds(res.Decisions))
	}
}

func TestAutoRevertRollsBackOnlyNodesThatGotTheVersion(t *testing.T) {
	s := strategy(2, 5, 3)
	s.AutoRevert = true
	f := newFleet(s, map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.report("a-00", 2, crashLoop, t0)
	f.report("b-00", 2, healthyState, t0)
	f.now = t0.Add(3 * time.Minute)
	res := stepApply(t, f)
	if kinds(res.Decisions) != "SetState,StartRollback,StartBatch" {
		t.Fatalf("decisions %s, want fail, rollback and its first batch", kinds(res.Decisions))
	}
	rb := res.Decisions[1].(StartRollback)
	if rb.From != 2 || rb.To != 1 || rb.ID != 2 || rb.RollbackOf != 1 || rb.CreatedBy != ControllerName ||
		rb.Reason != "rollback of rollout 1: batch 0: node a-00 CRASH_LOOP on version 2" {
		t.Errorf("rollback %+v", rb)
	}
	b := res.Decisions[2].(StartBatch)
	if b.RolloutID != 2 || b.Canary || b.Version != 1 || !slices.Equal(b.NodeIDs, []string{"a-00", "b-00"}) {
		t.Errorf("rollback batch %+v, want a-00 and b-00 back to 1", b)
	}
	if f.rollouts[1].GetState() != failed || f.latest().GetRollbackOf() != 1 || f.dep.GetVersion() != 1 {
		t.Errorf("records: rollout 1 %v, latest %v, deployment version %d", f.rollouts[1].GetState(), f.latest(), f.dep.GetVersion())
	}
	// The rollback ends when those two are healthy again; nobody else moves.
	f.healthyBatch(f.now, f.now.Add(time.Minute))
	res = stepApply(t, f)
	if kinds(res.Decisions) != "BatchDone,SetState" || f.latest().GetState() != succeeded {
		t.Fatalf("decisions %s, state %v", kinds(res.Decisions), f.latest().GetState())
	}
	// A failed rollback is not rolled back again.
}

// A rollback whose failed nodes already fill their site's budget still
// moves them: they are unavailable either way.
func TestRollbackNotBlockedByItsOwnFailures(t *testing.T) {
	s := strategy(1, 5, 1)
	s.AutoRevert = true
	f := newFleet(s, map[string]int{"a": 4})
	stepApply(t, f)
	f.report("a-00", 2, crashLoop, t0)
	f.now = t0.Add(3 * time.Minute)
	res := stepApply(t, f)
	if kinds(res.Decisions) != "SetState,StartRollback,StartBatch" || !slices.Equal(res.Decisions[2].(StartBatch).NodeIDs, []string{"a-00"}) {
		t.Fatalf("decisions %v", res.Decisions)
	}
}

func TestProgressDeadline(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.report("a-00", 2, healthyState, t0.Add(time.Minute))
	f.report("b-00", 2, startingSt, t0)
	f.now = t0.Add(10*time.Minute - time.Second)
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s before the deadline", kinds(res.Decisions))
	}
	f.now = t0.Add(10 * time.Minute)
	res := step(t, f)
	if kinds(res.Decisions) != "SetState" || res.Decisions[0].(SetState).Reason != "batch 0 not done within 10m0s: b-00 (STARTING on version 2)" {
		t.Fatalf("decisions %v", res.Decisions)
	}
}

// A batch node that went down is not done on the healthy report it sent
// before, and fails the batch at its deadline.
func TestDownBatchNodeIsNotDone(t *testing.T) {
	f := newFleet(strategy(1, 5, 3), map[string]int{"a": 3})
	stepApply(t, f)
	f.healthyBatch(t0, t0.Add(time.Minute))
	f.nodes[0].Down = true // a-00
	if res := step(t, f); len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "a-00 (down)") {
		t.Fatalf("decisions %s, waiting %q", kinds(res.Decisions), res.Waiting)
	}
	f.now = t0.Add(10 * time.Minute)
	res := step(t, f)
	if kinds(res.Decisions) != "SetState" || res.Decisions[0].(SetState).Reason != "batch 0 not done within 10m0s: a-00 (down)" {
		t.Fatalf("decisions %v", res.Decisions)
	}
}

// After a leader change no node has reported; the deadline does not fail
// the batch until the leader has waited ReportGrace for reports.
func TestDeadlineWaitsForReportsAfterLeaderChange(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.reports = map[string]*droverv1.InstanceStatus{}
	f.since = t0.Add(10 * time.Minute)
	f.now = t0.Add(10*time.Minute + 30*time.Second)
	if res := step(t, f); len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "waiting for reports") {
		t.Fatalf("decisions %s, waiting %q", kinds(res.Decisions), res.Waiting)
	}
	f.now = f.since.Add(DefaultConfig().ReportGrace)
	res := step(t, f)
	if kinds(res.Decisions) != "SetState" || res.Decisions[0].(SetState).Reason != "batch 0 not done within 10m0s: a-00 (no report), b-00 (no report)" {
		t.Fatalf("decisions %v", res.Decisions)
	}
}

// A new leader with no reports yet starts nothing, finishes nothing and
// fails nothing: every assigned node counts as unavailable.
func TestLeaderChangeWithoutReports(t *testing.T) {
	s := strategy(2, 5, 3)
	s.AutoPromote = true
	f := newFleet(s, map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.healthyBatch(t0, t0.Add(time.Minute))
	stepApply(t, f) // canary done, batch 1 started
	f.healthyBatch(f.now, f.now.Add(time.Minute))
	stepApply(t, f) // batch 1 done, batch 2 started
	batches := len(f.latest().GetBatches())

	f.reports = map[string]*droverv1.InstanceStatus{}
	f.since = f.now
	f.now = f.now.Add(time.Second)
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s without reports", kinds(res.Decisions))
	}
	// The batch in flight reports done; the rest have not reported yet:
	// the batch is finished, but the next waits for the budget.
	f.healthyBatch(f.now, f.now.Add(time.Minute))
	res := stepApply(t, f)
	if kinds(res.Decisions) != "BatchDone" || len(f.latest().GetBatches()) != batches {
		t.Fatalf("decisions %s, batches %d (was %d)", kinds(res.Decisions), len(f.latest().GetBatches()), batches)
	}
	if !strings.Contains(res.Waiting, "budget") {
		t.Errorf("waiting %q, want the budget named", res.Waiting)
	}
}

func TestBudgetCountsUnavailableNodes(t *testing.T) {
	s := strategy(0, 10, 2)
	f := newFleet(s, map[string]int{"a": 5, "b": 5})
	f.nodes[0].Down = true                // a-00 down
	f.report("a-01", 1, unhealthySt, t0)  // a-01 unwell on its version
	delete(f.reports, "b-00")             // b-00 not heard from
	f.report("b-01", 1, healthyState, t0) // fine
	res := step(t, f)
	if kinds(res.Decisions) != "StartBatch" {
		t.Fatalf("decisions %s", kinds(res.Decisions))
	}
	// a-01 is free to move (already unavailable); a has no room beyond
	// it. b has room for one (b-00, unknown, counts against it).
	got := res.Decisions[0].(StartBatch).NodeIDs
	if want := []string{"a-01", "b-00"}; !slices.Equal(got, want) {
		t.Errorf("batch %v, want %v", got, want)
	}
}

func TestBudgetFull(t *testing.T) {
	f := newFleet(strategy(0, 10, 1), map[string]int{"a": 3})
	delete(f.reports, "a-00")
	res := step(t, f)
	if len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "per-site budget of 1 is used up (a has 1 unavailable)") {
		t.Fatalf("decisions %s, waiting %q", kinds(res.Decisions), res.Waiting)
	}
}

func TestPausedStartsNothingAndResumeRestartsClock(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	p, err := Pause(f.dep, f.latest(), "looking at logs", t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.apply(p); err != nil {
		t.Fatal(err)
	}
	f.healthyBatch(t0, t0.Add(time.Hour)) // past every deadline
	if res := step(t, f); len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "paused") {
		t.Fatalf("decisions %s, waiting %q while paused", kinds(res.Decisions), res.Waiting)
	}
	f.reports["b-00"] = &droverv1.InstanceStatus{Version: 2, State: startingSt}
	r, err := Resume(f.dep, f.latest(), "", f.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.apply(r); err != nil {
		t.Fatal(err)
	}
	if got := f.latest().GetBatches()[0].GetStartTime().AsTime(); !got.Equal(f.now) {
		t.Fatalf("batch start %v after resume at %v", got, f.now)
	}
	// Within the restarted deadline: no failure though an hour passed.
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s right after resume", kinds(res.Decisions))
	}
}

func TestOperatorActionsCheckState(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 2})
	for _, tc := range []struct {
		state   droverv1.RolloutState
		action  string
		wantErr string // empty: allowed
	}{
		{succeeded, "pause", "pause rollout: rollout 1 of detector is SUCCEEDED; nothing to pause"},
		{paused, "pause", "is already PAUSED; resume it"},
		{awaiting, "pause", "AWAITING_PROMOTION and starts nothing until promoted"},
		{progressing, "pause", ""},
		{progressing, "resume", "rollout 1 of detector is PROGRESSING; nothing to resume"},
		{awaiting, "resume", "not paused; promote it"},
		{paused, "resume", ""},
		{progressing, "promote", "only a rollout whose canary is done"},
		{paused, "promote", "PAUSED; resume it instead"},
		{failed, "promote", "is FAILED; nothing to promote"},
		{awaiting, "promote", ""},
		{succeeded, "rollback", ""},
		{progressing, "rollback", ""},
		{failed, "rollback", ""},
	} {
		r := proto.CloneOf(f.latest())
		r.State = tc.state
		var d Decision
		var err error
		switch tc.action {
		case "pause":
			d, err = Pause(f.dep, r, "", t0)
		case "resume":
			d, err = Resume(f.dep, r, "", t0)
		case "promote":
			d, err = Promote(f.dep, r, "", t0)
		case "rollback":
			d, err = Rollback(f.dep, r, "alice", "bad outputs", t0)
		}
		if tc.wantErr != "" {
			if err == nil || !errors.Is(err, ErrNotAllowed) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s on %v: error %v, want %q", tc.action, tc.state, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s on %v: %v", tc.action, tc.state, err)
			continue
		}
		t.Logf("%s on %v: %s", tc.action, tc.state, d)
		// The decision applies to the rollout it was made for.
		switch d := d.(type) {
		case SetState:
			if err := d.ApplyTo(proto.CloneOf(r)); err != nil {
				t.Errorf("%s on %v: apply: %v", tc.action, tc.state, err)
			}
		case StartRollback:
			dep, prev := proto.CloneOf(f.dep), proto.CloneOf(r)
			nr, err := d.ApplyTo(dep, prev)
			if err != nil {
				t.Fatalf("rollback on %v: %v", tc.state, err)
			}
			wantPrev := tc.state
			if !Terminal(tc.state) {
				wantPrev = superseded
			}
			if nr.GetFromVersion() != 2 || nr.GetToVersion() != 1 || nr.GetCreatedBy() != "alice" || nr.GetReason() != "rollback of rollout 1: bad outputs" ||
				prev.GetState() != wantPrev || dep.GetVersion() != 1 || dep.GetRolloutId() != 2 {
				t.Errorf("rollback on %v: new %v, previous %v, deployment %v", tc.state, nr, prev.GetState(), dep)
			}
		}
	}
	// No earlier version to go back to.
	first := proto.CloneOf(f.latest())
	first.FromVersion = 0
	if _, err := Rollback(f.dep, first, "alice", "", t0); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("rollback of a first rollout: %v", err)
	}
}

// An operator's action that raced with the controller is refused by the
// FSM, not applied to a state it was not meant for.
func TestActionRaceRefused(t *testing.T) {
	f := newFleet(strategy(0, 5, 3), map[string]int{"a": 2})
	p, err := Pause(f.dep, f.latest(), "", t0)
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile the controller finished the rollout.
	f.rollouts[1].State = succeeded
	if err := f.apply(p); !errors.Is(err, ErrStale) {
		t.Fatalf("pause after success: %v, want ErrStale", err)
	}
	if f.latest().GetState() != succeeded {
		t.Fatalf("state %v", f.latest().GetState())
	}
}

// Stepping twice on one view gives the same decisions; applying a start
// twice is refused; and stepping on the result never starts that batch
// again.
func TestIdempotence(t *testing.T) {
	f := newFleet(strategy(2, 5, 3), map[string]int{"a": 10, "b": 10})
	a, b := step(t, f), step(t, f)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two steps differ:\n%v\n%v", a, b)
	}
	start := a.Decisions[0]
	if err := f.apply(start); err != nil {
		t.Fatal(err)
	}
	if err := f.apply(start); !errors.Is(err, ErrStale) {
		t.Fatalf("second apply of %s: %v, want ErrStale", start, err)
	}
	if len(f.latest().GetBatches()) != 1 {
		t.Fatalf("%d batches", len(f.latest().GetBatches()))
	}
	// A leader that lost its reports in between re-starts nothing.
	f.reports = map[string]*droverv1.InstanceStatus{}
	f.since = t0
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %s after the batch started", kinds(res.Decisions))
	}
	// A batch done twice is refused too.
	f.healthyBatch(t0, t0.Add(time.Minute))
	res := step(t, f)
	if err := f.apply(res.Decisions[0]); err != nil {
		t.Fatal(err)
	}
	if err := f.apply(res.Decisions[0]); !errors.Is(err, ErrStale) {
		t.Fatalf("second BatchDone: %v", err)
	}
}

func TestStepLeavesViewAlone(t *testing.T) {
	s := strategy(2, 5, 3)
	s.AutoPromote = true
	s.AutoRevert = true
	f := newFleet(s, map[string]int{"a": 10, "b": 10})
	stepApply(t, f)
	f.report("a-00", 2, crashLoop, t0)
	f.now = t0.Add(time.Hour)
	f.nodes = f.nodes[1:] // a-00 left too: an Unassign
	depBefore, rBefore := proto.CloneOf(f.dep), proto.CloneOf(f.latest())
	assignedBefore := fmt.Sprint(f.assigned)
	res := step(t, f)
	if len(res.Decisions) < 3 {
		t.Fatalf("decisions %s", kinds(res.Decisions))
	}
	if !proto.Equal(depBefore, f.dep) || !proto.Equal(rBefore, f.latest()) || assignedBefore != fmt.Sprint(f.assigned) {
		t.Fatal("Step changed its view")
	}
}

func TestUnassignNodesThatLeft(t *testing.T) {
	f := newFleet(strategy(0, 5, 3), map[string]int{"a": 5})
	f.rollouts[1].State = succeeded
	f.rollouts[1].ToVersion = 2
	for id := range f.assigned {
		f.assigned[id] = 2
		f.report(id, 2, healthyState, t0)
	}
	f.assigned["gone-1"], f.assigned["gone-2"], f.assigned["gone-3"] = 2, 1, 2
	c, err := NewController(Config{ReportGrace: time.Minute, MaxNodesPerDecision: 2})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Step(f.view())
	if err != nil {
		t.Fatal(err)
	}
	want := []Decision{
		Unassign{Deployment: "detector", NodeIDs: []string{"gone-1", "gone-2"}},
		Unassign{Deployment: "detector", NodeIDs: []string{"gone-3"}},
	}
	if !reflect.DeepEqual(res.Decisions, want) {
		t.Fatalf("decisions %v, want %v", res.Decisions, want)
	}
}

// Nodes that join after a rollout ended get the version in budget-sized
// groups; a failed rollout without auto_revert assigns nothing.
func TestAssignJoinedNodes(t *testing.T) {
	f := newFleet(strategy(0, 3, 2), map[string]int{"a": 2})
	f.rollouts[1].State = succeeded
	for id := range f.assigned {
		f.assigned[id] = 2
		f.report(id, 2, healthyState, t0)
	}
	for i := range 4 {
		f.nodes = append(f.nodes, NodeView{ID: fmt.Sprintf("new-%d", i), Site: "a"}, NodeView{ID: fmt.Sprintf("newb-%d", i), Site: "b"})
	}
	f.nodes = append(f.nodes, NodeView{ID: "drained", Site: "a", Draining: true}, NodeView{ID: "down", Site: "a", Down: true})
	res := stepApply(t, f)
	if kinds(res.Decisions) != "Assign" {
		t.Fatalf("decisions %s", kinds(res.Decisions))
	}
	got := res.Decisions[0].(Assign)
	if want := []string{"new-0", "newb-0", "newb-1"}; got.Version != 2 || !slices.Equal(got.NodeIDs, want) {
		t.Fatalf("assign %+v, want version 2 to %v", got, want)
	}
	// The down node and the new ones count against the budget until
	// they are healthy.
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("assign %v with both sites' budgets used", res.Decisions)
	}
	f.report("new-0", 2, healthyState, t0)
	f.report("newb-0", 2, healthyState, t0)
	if res := step(t, f); len(res.Decisions) != 1 || !slices.Equal(res.Decisions[0].(Assign).NodeIDs, []string{"new-1", "newb-2"}) {
		t.Fatalf("second assign %v", res.Decisions)
	}

	f.rollouts[1].State = failed
	if res := step(t, f); len(res.Decisions) != 0 || !strings.Contains(res.Waiting, "roll it back or apply") {
		t.Fatalf("after a failed rollout: %s, %q", kinds(res.Decisions), res.Waiting)
	}
}

// A deployment without a rollout record assigns its version to its nodes
// a budget at a time.
func TestAssignWithoutRollout(t *testing.T) {
	f := newFleet(strategy(1, 10, 2), map[string]int{"a": 4, "b": 1})
	f.dep.RolloutId, f.dep.Version = 0, 1
	f.rollouts = map[uint64]*droverv1.Rollout{}
	f.assigned = map[string]uint64{}
	f.reports = map[string]*droverv1.InstanceStatus{}
	res := stepApply(t, f)
	if kinds(res.Decisions) != "Assign" || !slices.Equal(res.Decisions[0].(Assign).NodeIDs, []string{"a-00", "a-01", "b-00"}) {
		t.Fatalf("decisions %v", res.Decisions)
	}
	for _, id := range []string{"a-00", "a-01", "b-00"} {
		f.report(id, 1, healthyState, t0)
	}
	res = stepApply(t, f)
	if kinds(res.Decisions) != "Assign" || !slices.Equal(res.Decisions[0].(Assign).NodeIDs, []string{"a-02", "a-03"}) {
		t.Fatalf("decisions %v", res.Decisions)
	}
	if res := step(t, f); len(res.Decisions) != 0 {
		t.Fatalf("decisions %v with every node assigned", res.Decisions)
	}
}

// A node that joins during a rollout is moved by one of its batches;
// draining and down nodes are left alone and do not hold up success.
func TestRolloutTakesJoinedNodesSkipsDrainingAndDown(t *testing.T) {
	s := strategy(0, 10, 10)
	f := newFleet(s, map[string]int{"a": 2})
	f.nodes = append(f.nodes, NodeView{ID: "a-new", Site: "a"}, NodeView{ID: "a-drained", Site: "a", Draining: true}, NodeView{ID: "a-down", Site: "a", Down: true})
	f.assigned["a-drained"], f.assigned["a-down"] = 1, 1
	f.report("a-drained", 1, healthyState, t0)
	res := stepApply(t, f)
	if want := []string{"a-00", "a-01", "a-new"}; !slices.Equal(res.Decisions[0].(StartBatch).NodeIDs, want) {
		t.Fatalf("batch %v, want %v", res.Decisions, want)
	}
	f.healthyBatch(t0, t0.Add(time.Minute))
	res = stepApply(t, f)
	if kinds(res.Decisions) != "BatchDone,SetState" || f.latest().GetState() != succeeded || f.latest().GetEndReason() != "version 2 on 3 nodes in 1 batch" {
		t.Fatalf("decisions %s, rollout %v", kinds(res.Decisions), f.latest())
	}
	if f.assigned["a-drained"] != 1 || f.assigned["a-down"] != 1 {
		t.Errorf("draining or down node moved: %v", f.assigned)
	}
	// The down node comes back: it is brought up to date.
	f.nodes[len(f.nodes)-1].Down = false
	f.report("a-down", 1, healthyState, f.now)
	res = step(t, f)
	if kinds(res.Decisions) != "Assign" || !slices.Equal(res.Decisions[0].(Assign).NodeIDs, []string{"a-down"}) {
		t.Fatalf("decisions %v", res.Decisions)
	}
}

func TestBadViewsRefused(t *testing.T) {
	c, _ := NewController(DefaultConfig())
	f := newFleet(strategy(0, 5, 3), map[string]int{"a": 2})
	for _, tc := range []struct {
		name string
		edit func(v *View)
		want string
	}{
		{"no deployment", func(v *View) { v.Deployment = nil }, "without a named deployment"},
		{"missing rollout", func(v *View) { v.Rollout = nil }, "is at rollout 1 but the view has none"},
		{"older rollout", func(v *View) { v.Rollout = &droverv1.Rollout{Deployment: "detector", Id: 7} }, "view holds rollout 7"},
		{"budget 0", func(v *View) {
			v.Deployment = proto.CloneOf(v.Deployment)
			v.Deployment.Spec.Strategy.MaxUnavailablePerSite = 0
		}, "max_unavailable_per_site is 0; set it to at least 1"},
		{"parallel 0", func(v *View) {
			v.Deployment = proto.CloneOf(v.Deployment)
			v.Deployment.Spec.Strategy.MaxParallel = 0
		}, "max_parallel is 0"},
		{"node twice", func(v *View) { v.Nodes = append(slices.Clone(v.Nodes), v.Nodes[0]) }, "listed twice"},
	} {
		v := f.view()
		tc.edit(&v)
		_, err := c.Step(v)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewController(Config{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("zero config: %v", err)
	}
}

// Cordoned nodes lose their assignment so their agents stop serving, at
// most the site's budget of unavailable ones at a time (an instance still
// stopping counts); one whose instance is already unwell goes at once; a
// cordoned node is never assigned again until uncordoned.
func TestEvictCordonedNodesWithinBudget(t *testing.T) {
	f := newFleet(strategy(0, 5, 1), map[string]int{"a": 4, "b": 1})
	f.rollouts[1].State = succeeded
	f.rollouts[1].ToVersion = 1
	f.dep.Version = 1
	for i := range f.nodes {
		f.nodes[i].Cordoned = f.nodes[i].ID != "a-03"
	}
	f.report("a-02", 1, droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP, t0)
	expect := func(ids ...string) {
		t.Helper()
		res := stepApply(t, f)
		var want []Decision
		if len(ids) > 0 {
			want = []Decision{Unassign{Deployment: "detector", NodeIDs: ids}}
		}
		if !reflect.DeepEqual(res.Decisions, want) {
			t.Fatalf("decisions %v, want %v", res.Decisions, want)
		}
	}
	// a-02 is unwell already and fills a's budget; b-00 fits b's.
	expect("a-02", "b-00")
	// a-02 still reports its instance while it stops: the others wait.
	expect()
	delete(f.reports, "a-02")
	expect("a-00")
	expect()
	delete(f.reports, "a-00")
	expect("a-01")
	delete(f.reports, "a-01")
	delete(f.reports, "b-00")
	expect()
	// Uncordoned, they are assigned again.
	for i := range f.nodes {
		f.nodes[i].Cordoned = false
	}
	if res := step(t, f); kinds(res.Decisions) != "Assign" {
		t.Fatalf("after uncordon: %v, want an Assign", res.Decisions)
	}
}
