package rollout

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

// NodeView is one node that matches a deployment now, as the leader sees
// it. A node matches when its labels, site and hardware satisfy the
// deployment's selector, whatever its health: a node that is down still
// matches, so a short outage does not cost it its assignment.
type NodeView struct {
	ID   string
	Site string
	// Down: any status but READY (missed its heartbeat TTL, initializing).
	// A down node counts as unavailable and is put in no batch until it
	// is back.
	Down bool
	// Draining: the node keeps what it runs but gets nothing new, so it
	// is put in no batch and assigned nothing until it is undrained.
	Draining bool
	// Cordoned: the node reported a condition that makes it unfit (see
	// NodeCondition). Like a draining node it gets nothing new; unlike
	// one, its assignment is removed so its agent stops the instance, as
	// many nodes of a site at a time as the site's budget allows.
	Cordoned bool
}

// View is everything the controller reads for one deployment on one tick.
// Step never changes it.
type View struct {
	Deployment *droverv1.Deployment
	// Rollout is the deployment's latest rollout, number
	// Deployment.rollout_id; nil before the first.
	Rollout *droverv1.Rollout
	// Nodes are the nodes that match the deployment now. Nodes that left
	// the fleet, were revoked or removed, or stopped matching are not
	// here; if they hold an assignment the controller unassigns them.
	Nodes []NodeView
	// Assigned is the version each node is assigned for this deployment,
	// for every node that has an assignment, matching or not.
	Assigned map[string]uint64
	// Reports is the latest instance report for this deployment the
	// leader holds, per node. A node is absent when the leader has heard
	// nothing from it since it took over; the controller then treats it
	// as unavailable and not healthy, and never as failed. A node's
	// report must not be older than its last return from down: the
	// heartbeat that makes a node ready again must replace its reports
	// (or the leader drops them when it marks the node down), or a node
	// restarting its instance would pass for healthy.
	Reports map[string]*droverv1.InstanceStatus
	// ReportsSince is when the leader began collecting reports (its term
	// began). A batch node without a report counts against the batch's
	// progress deadline only once the leader has been collecting for
	// Config.ReportGrace.
	ReportsSince time.Time
	Now          time.Time
}

// Config tunes the controller. The zero value is not valid; start from
// DefaultConfig.
type Config struct {
	// ReportGrace is how long a new leader waits for reports before a node
	// that has not reported counts as not done at a batch's deadline. At
	// least the agents' heartbeat TTL, so every live node has reported.
	ReportGrace time.Duration
	// MaxNodesPerDecision bounds the node ids in one Unassign, so a Raft
	// entry stays small however many nodes leave at once. Batches and
	// Assign are bounded by the strategy's max_parallel instead.
	MaxNodesPerDecision int
}

// DefaultConfig suits the control plane's default heartbeat TTL.
func DefaultConfig() Config {
	return Config{ReportGrace: time.Minute, MaxNodesPerDecision: 256}
}

// Validate reports the first field that makes no sense.
func (c Config) Validate() error {
	if c.ReportGrace <= 0 {
		return fmt.Errorf("rollout config: ReportGrace %v must be positive (at least the heartbeat TTL): %w", c.ReportGrace, ErrInvalid)
	}
	if c.MaxNodesPerDecision < 1 {
		return fmt.Errorf("rollout config: MaxNodesPerDecision %d must be at least 1: %w", c.MaxNodesPerDecision, ErrInvalid)
	}
	return nil
}

// Controller decides how deployments move between versions. It holds no
// state between steps: everything it knows is in the View, so a new
// leader's controller continues exactly where the old one stopped. It is
// safe for concurrent use.
type Controller struct {
	cfg Config
}

// NewController returns a controller with cfg, or cfg's first problem.
func NewController(cfg Config) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Controller{cfg: cfg}, nil
}

// Result is what one step decided.
type Result struct {
	// Decisions, to be applied in order, each as one Raft command. Each
	// was checked against the record as the ones before it leave it.
	Decisions []Decision
	// Waiting says in a sentence why the rollout does not move on now
	// ("batch 3: waiting for e-17 (STARTING on version 7)"), for status
	// output and logs; empty when nothing is waited for.
	Waiting string
}

// maxChain bounds the decisions one step chains (a failure, its rollback
// and the rollback's first batch is the longest chain in practice).
const maxChain = 16

// Step decides what to do next for one deployment. The same view always
// gives the same result, so stepping twice before the first result is
// applied proposes the same commands, and the FSM refuses the second copy
// of each (ErrStale). After each decision Step applies it to a private
// copy of the records and decides again, so one step can finish a batch
// and start the next.
func (c *Controller) Step(v View) (Result, error) {
	w, err := newWorld(v)
	if err != nil {
		return Result{}, err
	}
	var res Result
	res.Decisions = w.unassign(c.cfg.MaxNodesPerDecision)
	res.Decisions = append(res.Decisions, w.evict(c.cfg.MaxNodesPerDecision)...)
	for range maxChain {
		d, waiting := c.next(w)
		if d == nil {
			res.Waiting = waiting
			break
		}
		if err := w.apply(d); err != nil {
			// A decision the controller made does not apply to its own
			// copy: a bug, never to be proposed.
			return Result{}, fmt.Errorf("rollout step: %s: %w", d, err)
		}
		res.Decisions = append(res.Decisions, d)
	}
	return res, nil
}

// world is the controller's private copy of one deployment's records,
// changed by each decision as the FSM will change the real ones.
type world struct {
	dep      *droverv1.Deployment
	r        *droverv1.Rollout
	nodes    []NodeView // sorted by id
	byID     map[string]NodeView
	assigned map[string]uint64
	reports  map[string]*droverv1.InstanceStatus
	since    time.Time
	now      time.Time

	st           Strategy
	minHealthy   time.Duration
	deadline     time.Duration
	startTimeout time.Duration
	autoPromote  bool
	autoRevert   bool
}

func newWorld(v View) (*world, error) {
	dep := v.Deployment
	if dep == nil || dep.GetSpec() == nil || dep.GetSpec().GetName() == "" {
		return nil, fmt.Errorf("rollout step: view without a named deployment: %w", ErrInvalid)
	}
	name := dep.GetSpec().GetName()
	if v.Rollout == nil && dep.GetRolloutId() != 0 {
		return nil, fmt.Errorf("rollout step: deployment %s is at rollout %d but the view has none; pass its latest rollout: %w", name, dep.GetRolloutId(), ErrInvalid)
	}
	if v.Rollout != nil && (v.Rollout.GetId() != dep.GetRolloutId() || v.Rollout.GetDeployment() != name) {
		return nil, fmt.Errorf("rollout step: view holds rollout %d of %q, deployment %s is at rollout %d; pass its latest rollout: %w",
			v.Rollout.GetId(), v.Rollout.GetDeployment(), name, dep.GetRolloutId(), ErrInvalid)
	}
	s := dep.GetSpec().GetStrategy()
	if s.GetMaxParallel() == 0 {
		return nil, fmt.Errorf("rollout step: deployment %s: strategy.max_parallel is 0; set it to at least 1: %w", name, ErrInvalid)
	}
	if s.GetMaxUnavailablePerSite() == 0 {
		return nil, fmt.Errorf("rollout step: deployment %s: strategy.max_unavailable_per_site is 0; set it to at least 1: %w", name, ErrInvalid)
	}
	w := &world{
		dep:      proto.CloneOf(dep),
		assigned: maps.Clone(v.Assigned),
		reports:  v.Reports,
		since:    v.ReportsSince,
		now:      v.Now,
		st: Strategy{
			Canary:        int(s.GetCanary()),
			CanaryPercent: int(s.GetCanaryPercent()),
			MaxParallel:   int(s.GetMaxParallel()),
			Budget:        int(s.GetMaxUnavailablePerSite()),
		},
		minHealthy:   s.GetMinHealthyTime().AsDuration(),
		deadline:     s.GetProgressDeadline().AsDuration(),
		startTimeout: dep.GetSpec().GetRuntime().GetStartTimeout().AsDuration(),
		autoPromote:  s.GetAutoPromote(),
		autoRevert:   s.GetAutoRevert(),
	}
	if w.assigned == nil {
		w.assigned = map[string]uint64{}
	}
	if v.Rollout != nil {
		w.r = proto.CloneOf(v.Rollout)
	}
	// Sorted by id, so that every loop over nodes runs in the same order
	// on any leader; the caller's list is usually sorted already.
	w.nodes = slices.Clone(v.Nodes)
	byID := func(a, b NodeView) int { return cmp.Compare(a.ID, b.ID) }
	if !slices.IsSortedFunc(w.nodes, byID) {
		slices.SortFunc(w.nodes, byID)
	}
	w.byID = make(map[string]NodeView, len(v.Nodes))
	for _, n := range w.nodes {
		if n.ID == "" {
			return nil, fmt.Errorf("rollout step: deployment %s: a node view without an id: %w", name, ErrInvalid)
		}
		if _, dup := w.byID[n.ID]; dup {
			return nil, fmt.Errorf("rollout step: deployment %s: node %s listed twice: %w", name, n.ID, ErrInvalid)
		}
		w.byID[n.ID] = n
	}
	return w, nil
}

func (w *world) name() string { return w.dep.GetSpec().GetName() }

// apply changes the copy as the FSM changes the records for d.
func (w *world) apply(d Decision) error {
	switch d := d.(type) {
	case StartBatch:
		if err := d.ApplyTo(w.r); err != nil {
			return err
		}
		for _, id := range d.NodeIDs {
			w.assigned[id] = d.Version
		}
	case BatchDone:
		return d.ApplyTo(w.r)
	case SetState:
		return d.ApplyTo(w.r)
	case StartRollback:
		r, err := d.ApplyTo(w.dep, w.r)
		if err != nil {
			return err
		}
		w.r = r
	case Assign:
		if err := d.Check(w.dep); err != nil {
			return err
		}
		for _, id := range d.NodeIDs {
			w.assigned[id] = d.Version
		}
	case Unassign:
		for _, id := range d.NodeIDs {
			delete(w.assigned, id)
		}
	default:
		return fmt.Errorf("unknown decision %T: %w", d, ErrInvalid)
	}
	return nil
}

// unassign removes the assignments of nodes that no longer match.
func (w *world) unassign(limit int) []Decision {
	var gone []string
	for id := range w.assigned {
		if _, ok := w.byID[id]; !ok {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	var ds []Decision
	for chunk := range slices.Chunk(gone, limit) {
		d := Unassign{Deployment: w.name(), NodeIDs: chunk}
		_ = w.apply(d) // cannot fail
		ds = append(ds, d)
	}
	return ds
}

// evict removes the assignments of cordoned nodes within the per-site
// budget. A cordoned node whose instance is already unavailable disrupts
// nothing by stopping and is taken regardless of the budget, as pick takes
// sick nodes; a healthy one only while its site has room. A cordoned node
// already unassigned whose instance still reports running uses its site's
// budget until the instance is gone, so a site loses at most its budget of
// serving nodes to cordons at once.
func (w *world) evict(limit int) []Decision {
	if w.st.Budget <= 0 {
		return nil
	}
	unavail := w.unavailable()
	for _, n := range w.nodes {
		if rep := w.reports[n.ID]; n.Cordoned && w.assigned[n.ID] == 0 && rep != nil &&
			rep.GetState() != droverv1.InstanceState_INSTANCE_STATE_STOPPED {
			unavail[n.Site]++
		}
	}
	var ids []string
	for _, n := range w.nodes {
		if !n.Cordoned || w.assigned[n.ID] == 0 {
			continue
		}
		switch w.health(n) {
		case unavailable:
		case available:
			if unavail[n.Site] >= w.st.Budget {
				continue
			}
			unavail[n.Site]++
		default:
			// No report: unavailable already counts it, so it may go
			// while its site is within the budget with it counted.
			if unavail[n.Site] > w.st.Budget {
				continue
			}
		}
		ids = append(ids, n.ID)
	}
	var ds []Decision
	for chunk := range slices.Chunk(ids, limit) {
		d := Unassign{Deployment: w.name(), NodeIDs: chunk}
		_ = w.apply(d) // cannot fail
		ds = append(ds, d)
	}
	return ds
}

// next is the one decision to make now on the copy, or nil and why not.
func (c *Controller) next(w *world) (Decision, string) {
	r := w.r
	if r == nil {
		return w.converge()
	}
	switch r.GetState() {
	case droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING:
		return c.progress(w)
	case droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED:
		if r.GetToVersion() != w.dep.GetVersion() {
			return nil, fmt.Sprintf("deployment is at version %d but rollout %d moved to %d; waiting for a rollout to it", w.dep.GetVersion(), r.GetId(), r.GetToVersion())
		}
		return w.converge()
	case droverv1.RolloutState_ROLLOUT_STATE_FAILED:
		if w.autoRevert && r.GetRollbackOf() == 0 && r.GetFromVersion() != 0 {
			return StartRollback{
				Deployment: w.name(),
				ID:         r.GetId() + 1,
				RollbackOf: r.GetId(),
				From:       r.GetToVersion(),
				To:         r.GetFromVersion(),
				Reason:     fmt.Sprintf("rollback of rollout %d: %s", r.GetId(), r.GetEndReason()),
				CreatedBy:  ControllerName,
				Time:       w.now,
			}, ""
		}
		if r.GetFromVersion() == 0 {
			return nil, fmt.Sprintf("rollout %d failed (%s); apply another version or delete the deployment", r.GetId(), r.GetEndReason())
		}
		return nil, fmt.Sprintf("rollout %d failed (%s); roll it back or apply another version", r.GetId(), r.GetEndReason())
	case droverv1.RolloutState_ROLLOUT_STATE_PAUSED:
		return nil, fmt.Sprintf("rollout %d is paused; resume it to go on", r.GetId())
	case droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION:
		return nil, fmt.Sprintf("rollout %d: the canary is done; waiting for promotion", r.GetId())
	}
	return nil, ""
}

// ControllerName is the created_by of rollouts the controller starts.
const ControllerName = "rollout-controller"

// progress moves a PROGRESSING rollout on: judge the unfinished batch, or
// start the next one, or end the rollout.
func (c *Controller) progress(w *world) (Decision, string) {
	r := w.r
	batches := r.GetBatches()
	if n := len(batches); n > 0 && batches[n-1].GetDoneTime() == nil {
		return c.judge(w, n-1)
	}
	remaining := w.targets()
	if len(remaining) == 0 {
		nodes := 0
		for _, b := range batches {
			nodes += len(b.GetNodeIds())
		}
		return SetState{
			Deployment: w.name(), RolloutID: r.GetId(),
			From:   droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
			To:     droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
			Reason: fmt.Sprintf("version %d on %s in %s", r.GetToVersion(), count(nodes, "node"), count(len(batches), "batch")),
			Time:   w.now,
		}, ""
	}
	want, have, open := w.canary(len(remaining))
	canary := open && have < want
	limit := w.st.MaxParallel
	if canary {
		limit = want - have
	}
	batch, why := w.pick(remaining, limit, !canary)
	if len(batch) == 0 {
		return nil, fmt.Sprintf("rollout %d: %d nodes left; %s", r.GetId(), len(remaining), why)
	}
	return StartBatch{
		Deployment: w.name(),
		RolloutID:  r.GetId(),
		Index:      len(batches),
		NodeIDs:    batch,
		Canary:     canary,
		Version:    r.GetToVersion(),
		Time:       w.now,
	}, ""
}

// canary says how many nodes the rollout's canary takes (want), how many
// canary batches have taken (have), and whether the canary phase is still
// open: a rollback has none, and the phase closes with the first batch
// that is not a canary. left is the nodes not yet in a batch.
//
// want is a share of the nodes the rollout moves now, so it can grow
// when nodes join. Between a promotion and the first batch after it
// (which waits while the budget is used up) enough joining nodes can
// raise a canary_percent canary above what the promoted canary took; the
// controller then starts one more canary batch and awaits promotion
// again. The Rollout record has no field that says it was promoted.
func (w *world) canary(left int) (want, have int, open bool) {
	if w.r.GetRollbackOf() != 0 {
		return 0, 0, false
	}
	inBatches := 0
	open = true
	for _, b := range w.r.GetBatches() {
		inBatches += len(b.GetNodeIds())
		if b.GetCanary() {
			have += len(b.GetNodeIds())
		} else {
			open = false
		}
	}
	return w.st.CanaryCount(inBatches + left), have, open
}

// judge decides on the unfinished batch i: failed, done, past its
// deadline, or still waited for.
func (c *Controller) judge(w *world, i int) (Decision, string) {
	r := w.r
	b := r.GetBatches()[i]
	start := b.GetStartTime().AsTime()
	to := r.GetToVersion()
	fail := func(reason string) Decision {
		return SetState{
			Deployment: w.name(), RolloutID: r.GetId(),
			From:   droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
			To:     droverv1.RolloutState_ROLLOUT_STATE_FAILED,
			Reason: reason,
			Time:   w.now,
		}
	}
	// The nodes not done: the first few described, the rest counted, as
	// describing a thousand nodes on every tick costs more than judging
	// them.
	var waiting []string
	notDone := 0
	wait := func(describe func() string) {
		if notDone < shown {
			waiting = append(waiting, describe())
		}
		notDone++
	}
	unreported := false
	for _, id := range slices.Sorted(slices.Values(b.GetNodeIds())) {
		n, ok := w.byID[id]
		if !ok || w.assigned[id] != to {
			// It stopped matching or left: nothing to wait for.
			continue
		}
		if n.Down {
			// Its last report predates its going down: not done, and
			// not failed either until the deadline says so.
			wait(func() string { return id + " (down)" })
			continue
		}
		rep := w.reports[id]
		if rep == nil {
			unreported = true
			wait(func() string { return id + " (no report)" })
			continue
		}
		if rep.GetVersion() == to && bad(rep.GetState()) && w.now.Sub(start) >= w.startTimeout {
			return fail(fmt.Sprintf("batch %d: node %s %s", i, id, describe(rep))), ""
		}
		if rep.GetVersion() == to && rep.GetState() == droverv1.InstanceState_INSTANCE_STATE_HEALTHY {
			healthy := later(rep.GetSince().AsTime(), start)
			if w.now.Sub(healthy) >= w.minHealthy {
				continue
			}
			wait(func() string {
				return fmt.Sprintf("%s (healthy %v of %v)", id, max(0, w.now.Sub(healthy)).Round(time.Second), w.minHealthy)
			})
			continue
		}
		wait(func() string { return fmt.Sprintf("%s (%s)", id, describe(rep)) })
	}
	if notDone == 0 {
		want, have, open := w.canary(len(w.targets()))
		await := b.GetCanary() && open && have >= want && !w.autoPromote && len(w.targets()) > 0
		return BatchDone{Deployment: w.name(), RolloutID: r.GetId(), Index: i, Time: w.now, AwaitPromotion: await}, ""
	}
	summary := fmt.Sprintf("batch %d: waiting for %s", i, list(waiting, notDone))
	if w.deadline > 0 && w.now.Sub(start) >= w.deadline {
		if unreported && w.now.Sub(w.since) < c.cfg.ReportGrace {
			return nil, summary + "; past the progress deadline, waiting for reports to the new leader"
		}
		return fail(fmt.Sprintf("batch %d not done within %v: %s", i, w.deadline, list(waiting, notDone))), ""
	}
	return nil, summary
}

// later is the later of two times.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// bad reports whether an instance in state s has failed to run.
func bad(s droverv1.InstanceState) bool {
	switch s {
	case droverv1.InstanceState_INSTANCE_STATE_UNHEALTHY,
		droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP,
		droverv1.InstanceState_INSTANCE_STATE_FAILED:
		return true
	}
	return false
}

// describe is a report in a few words: "CRASH_LOOP on version 7
// (exit status 1, 4 restarts)".
func describe(rep *droverv1.InstanceStatus) string {
	s := fmt.Sprintf("%s on version %d", instanceStateName(rep.GetState()), rep.GetVersion())
	var more []string
	if rep.GetReason() != "" {
		more = append(more, rep.GetReason())
	}
	if rep.GetRestarts() > 0 {
		more = append(more, fmt.Sprintf("%d restarts", rep.GetRestarts()))
	}
	if len(more) > 0 {
		s += " (" + strings.Join(more, ", ") + ")"
	}
	return s
}

// count is n things in words: "1 batch", "3 batches".
func count(n int, thing string) string {
	switch {
	case n == 1:
		return "1 " + thing
	case strings.HasSuffix(thing, "ch"):
		return fmt.Sprintf("%d %ses", n, thing)
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// shown is how many nodes a message names before it counts the rest.
const shown = 3

// list joins items, the first of total, and counts the rest.
func list(items []string, total int) string {
	if total <= len(items) {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items, ", "), total-len(items))
}

// eligible reports whether a node may be given something new.
func eligible(n NodeView) bool { return !n.Down && !n.Draining && !n.Cordoned }

// targets are the nodes the rollout still has to move: matching, up, not
// draining, in none of its batches, and not assigned its version already.
func (w *world) targets() []Target {
	in := map[string]bool{}
	for _, b := range w.r.GetBatches() {
		for _, id := range b.GetNodeIds() {
			in[id] = true
		}
	}
	var ts []Target
	for _, n := range w.nodes {
		if eligible(n) && !in[n.ID] && w.assigned[n.ID] != w.r.GetToVersion() {
			ts = append(ts, Target{NodeID: n.ID, Site: n.Site})
		}
	}
	return ts
}

// converge assigns the deployment's version to matching nodes without it
// while no rollout is moving the deployment.
func (w *world) converge() (Decision, string) {
	v := w.dep.GetVersion()
	if v == 0 {
		return nil, ""
	}
	var remaining []Target
	for _, n := range w.nodes {
		if eligible(n) && w.assigned[n.ID] != v {
			remaining = append(remaining, Target{NodeID: n.ID, Site: n.Site})
		}
	}
	if len(remaining) == 0 {
		return nil, ""
	}
	batch, why := w.pick(remaining, w.st.MaxParallel, true)
	if len(batch) == 0 {
		return nil, fmt.Sprintf("%d nodes to assign version %d; %s", len(remaining), v, why)
	}
	return Assign{Deployment: w.name(), Version: v, NodeIDs: batch, Time: w.now}, ""
}

// health is what the controller knows of a node's instance on its
// assigned version.
type health int

const (
	unassigned  health = iota // no assignment: not serving, not disrupted
	available                 // reported HEALTHY on its assigned version
	unknown                   // no report since this leader took over
	unavailable               // down, or reported anything else
)

func (w *world) health(n NodeView) health {
	v := w.assigned[n.ID]
	switch {
	case n.Down:
		return unavailable
	case v == 0:
		return unassigned
	}
	rep := w.reports[n.ID]
	switch {
	case rep == nil:
		return unknown
	case rep.GetVersion() == v && rep.GetState() == droverv1.InstanceState_INSTANCE_STATE_HEALTHY:
		return available
	}
	return unavailable
}

// unavailable counts, per site, the matching nodes that are down, in the
// rollout's unfinished batch, or not known to be healthy on their
// assigned version: what the per-site budget is checked against.
func (w *world) unavailable() map[string]int {
	busy := map[string]bool{}
	if w.r != nil && !Terminal(w.r.GetState()) {
		if n := len(w.r.GetBatches()); n > 0 && w.r.GetBatches()[n-1].GetDoneTime() == nil {
			for _, id := range w.r.GetBatches()[n-1].GetNodeIds() {
				busy[id] = true
			}
		}
	}
	per := map[string]int{}
	for _, n := range w.nodes {
		if h := w.health(n); busy[n.ID] || h == unknown || h == unavailable {
			per[n.Site]++
		}
	}
	return per
}

// pick chooses up to limit of remaining for the next batch without taking
// any site past its budget. Nodes already known to be unavailable (a
// report says they are not healthy on what they are assigned) do not
// disrupt anything when moved, so with free set they are taken first and
// regardless of the budget: otherwise a site whose failed nodes fill its
// budget could never be rolled back. Canary batches set free false: a
// canary on a node that is already unwell proves nothing. Nodes without a
// report are never free. why says what held the batch back when it is
// empty.
func (w *world) pick(remaining []Target, limit int, free bool) (ids []string, why string) {
	var sick, rest []Target
	for _, t := range remaining {
		if free && w.health(w.byID[t.NodeID]) == unavailable {
			sick = append(sick, t)
		} else {
			rest = append(rest, t)
		}
	}
	unavail := w.unavailable()
	batch := NextBatch(sick, limit, limit, nil)
	batch = append(batch, NextBatch(rest, limit-len(batch), w.st.Budget, unavail)...)
	for _, t := range batch {
		ids = append(ids, t.NodeID)
	}
	slices.Sort(ids)
	if len(ids) == 0 {
		var full []string
		for _, s := range slices.Sorted(maps.Keys(unavail)) {
			if unavail[s] >= w.st.Budget {
				full = append(full, fmt.Sprintf("%s has %d unavailable", s, unavail[s]))
			}
		}
		why = fmt.Sprintf("per-site budget of %d is used up (%s)", w.st.Budget, strings.Join(full, ", "))
	}
	return ids, why
}
