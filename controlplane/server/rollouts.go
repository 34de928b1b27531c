package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/placement"
	"github.com/droverhq/drover/controlplane/rollout"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// rolloutTick is how often the leader steps the rollout controller for
// every deployment, besides stepping at once when an agent's instance
// report or the state changes.
const rolloutTick = time.Second

// rolloutLoop runs the rollout controller on the leader: each step reads
// one deployment's records, its matching nodes and its agents' reports,
// asks the controller what to do, and proposes each decision as its Raft
// command. It holds nothing the next leader needs: the controller is
// stateless and everything it acts on is replicated, except the reports,
// which every leader collects afresh (View.ReportsSince).
//
// Concurrency: run is the only goroutine that steps; kick and waiting may
// be called from any goroutine.
type rolloutLoop struct {
	s     *Server
	hb    *heartbeatTracker
	ctrl  *rollout.Controller
	now   func() time.Time
	since time.Time // when this leader began collecting reports
	kickc chan struct{}

	// backoff holds, by deployment, when the loop may step it again
	// after a refused decision, and how many refusals in a row it had.
	// Only run's goroutine uses it.
	backoff map[string]refusals

	mu      sync.Mutex        // guards the fields below
	waiting map[string]string // the controller's last waiting sentence, by deployment
}

// refusals is a deployment's run of refused decisions.
type refusals struct {
	n     int
	until time.Time
}

// maxRefusalBackoff bounds how long a deployment whose decisions keep
// being refused waits between steps. Each refusal is an audit event, so
// a decision that can never apply (a bug) must not be proposed at the
// speed of the log.
const maxRefusalBackoff = time.Minute

func newRolloutLoop(s *Server, hb *heartbeatTracker) (*rolloutLoop, error) {
	cfg := rollout.DefaultConfig()
	// Every live agent has reported once it has had a TTL, and the leader
	// grace the tracker gives nodes after a change of leader, to find this
	// leader.
	cfg.ReportGrace = time.Duration(s.cfg.HeartbeatMinTTL) + time.Duration(s.cfg.HeartbeatLeaderGrace)
	ctrl, err := rollout.NewController(cfg)
	if err != nil {
		return nil, fmt.Errorf("rollout loop: %w", err)
	}
	return &rolloutLoop{
		s: s, hb: hb, ctrl: ctrl, now: hb.now, since: hb.now(),
		kickc:   make(chan struct{}, 1),
		backoff: map[string]refusals{},
		waiting: map[string]string{},
	}, nil
}

// kick asks for a step now; kicks while one is pending coalesce.
func (l *rolloutLoop) kick() {
	select {
	case l.kickc <- struct{}{}:
	default:
	}
}

// waitingFor returns the controller's last sentence on why deployment
// name's rollout does not move on, "" for none.
func (l *rolloutLoop) waitingFor(name string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting[name]
}

// run steps every deployment every tick, on a kick, and whenever the
// state index moves, until ctx ends.
func (l *rolloutLoop) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		// Wakes the loop on any state change (an apply, a node going
		// down, a write of the loop's own), coalesced by kick.
		defer wg.Done()
		idx := l.s.state.Index()
		for {
			next, err := l.s.state.WaitForIndex(ctx, idx)
			if err != nil || ctx.Err() != nil {
				return
			}
			idx = next
			l.kick()
		}
	}()
	ticker := time.NewTicker(rolloutTick)
	defer ticker.Stop()
	for {
		l.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-l.kickc:
		}
	}
}

// step steps the controller once for every deployment.
func (l *rolloutLoop) step(ctx context.Context) {
	st := l.s.state
	deps := st.Deployments()
	if len(deps) == 0 {
		clear(l.backoff)
		l.mu.Lock()
		clear(l.waiting)
		l.mu.Unlock()
		return
	}
	latest := st.LatestRollouts()
	assigned := st.AssignedVersions()
	nodes := st.Nodes()
	now := l.now()
	waiting := make(map[string]string, len(deps))
	for _, d := range deps {
		if ctx.Err() != nil {
			return
		}
		name := d.GetSpec().GetName()
		if b, ok := l.backoff[name]; ok && now.Before(b.until) {
			waiting[name] = l.waitingFor(name)
			continue
		}
		v := rollout.View{
			Deployment:   d,
			Rollout:      latest[name],
			Nodes:        matchingNodes(d, nodes),
			Assigned:     assigned[name],
			ReportsSince: l.since,
			Now:          now,
		}
		if d.GetRolloutId() == 0 {
			v.Rollout = nil
		}
		ids := make([]string, 0, len(v.Nodes)+len(v.Assigned))
		for _, n := range v.Nodes {
			ids = append(ids, n.ID)
		}
		for id := range v.Assigned {
			ids = append(ids, id)
		}
		v.Reports = l.hb.instanceReports(name, ids)
		res, err := l.ctrl.Step(v)
		if err != nil {
			// Said once, not every tick, until it changes.
			if l.waitingFor(name) != err.Error() {
				l.s.logger.Warn("rollout controller cannot step a deployment", "deployment", name, "err", err)
			}
			waiting[name] = err.Error()
			continue
		}
		waiting[name] = res.Waiting
		if l.propose(ctx, res.Decisions) {
			delete(l.backoff, name)
			continue
		}
		b := l.backoff[name]
		b.n++
		b.until = now.Add(min(rolloutTick<<min(b.n-1, 10), maxRefusalBackoff))
		if b.n == 1 {
			// The first refusal is the race the FSM's checks are for:
			// step again at once, on records that moved on.
			b.until = now
		}
		l.backoff[name] = b
	}
	for name := range l.backoff {
		if _, ok := waiting[name]; !ok {
			delete(l.backoff, name) // deleted deployment
		}
	}
	l.mu.Lock()
	l.waiting = waiting
	l.mu.Unlock()
}

// propose writes decisions in order and stops at the first one that is
// not applied: a refused one was decided on records that moved on, and
// the ones after it were decided on top of it. It reports whether all
// were written.
func (l *rolloutLoop) propose(ctx context.Context, ds []rollout.Decision) bool {
	actor := "server/" + l.s.cfg.Name
	for i, d := range ds {
		t, cmd := decisionCommand(d, &droverv1.CommandMeta{Time: timestamppb.New(l.now()), Actor: actor})
		if _, err := l.s.apply(ctx, t, cmd); err != nil {
			l.s.metrics.rolloutRefused.Inc()
			if errors.Is(err, state.ErrConflict) {
				l.s.logger.Info("rollout decision refused as stale; stepping again", "decision", d.String(), "dropped", len(ds)-i-1, "err", err)
			} else {
				l.s.logger.Warn("rollout decision not written; stepping again", "decision", d.String(), "err", err)
			}
			return false
		}
		l.s.metrics.rolloutProposed.Inc()
		l.s.logger.Info("rollout decision", "decision", d.String())
	}
	return true
}

// decisionCommand is the Raft command that applies d.
func decisionCommand(d rollout.Decision, meta *droverv1.CommandMeta) (droverv1.CommandType, proto.Message) {
	ts := func(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
	switch d := d.(type) {
	case rollout.StartBatch:
		return droverv1.CommandType_COMMAND_TYPE_START_ROLLOUT_BATCH, &droverv1.StartRolloutBatchCommand{
			Meta: meta, Deployment: d.Deployment, RolloutId: d.RolloutID, Index: uint32(d.Index),
			NodeIds: d.NodeIDs, Canary: d.Canary, Version: d.Version, Time: ts(d.Time),
		}
	case rollout.BatchDone:
		return droverv1.CommandType_COMMAND_TYPE_FINISH_ROLLOUT_BATCH, &droverv1.FinishRolloutBatchCommand{
			Meta: meta, Deployment: d.Deployment, RolloutId: d.RolloutID, Index: uint32(d.Index),
			Time: ts(d.Time), AwaitPromotion: d.AwaitPromotion,
		}
	case rollout.SetState:
		return droverv1.CommandType_COMMAND_TYPE_SET_ROLLOUT_STATE, &droverv1.SetRolloutStateCommand{
			Meta: meta, Deployment: d.Deployment, RolloutId: d.RolloutID, From: d.From, To: d.To,
			Reason: d.Reason, Time: ts(d.Time), RestartBatch: d.RestartBatch,
		}
	case rollout.StartRollback:
		return droverv1.CommandType_COMMAND_TYPE_START_ROLLBACK, &droverv1.StartRollbackCommand{
			Meta: meta, Deployment: d.Deployment, Id: d.ID, RollbackOf: d.RollbackOf, From: d.From, To: d.To,
			Reason: d.Reason, CreatedBy: d.CreatedBy, Time: ts(d.Time),
		}
	case rollout.Assign:
		return droverv1.CommandType_COMMAND_TYPE_ASSIGN_DEPLOYMENT_NODES, &droverv1.AssignDeploymentNodesCommand{
			Meta: meta, Deployment: d.Deployment, Version: d.Version, NodeIds: d.NodeIDs, Time: ts(d.Time),
		}
	case rollout.Unassign:
		return droverv1.CommandType_COMMAND_TYPE_UNASSIGN_DEPLOYMENT_NODES, &droverv1.UnassignDeploymentNodesCommand{
			Meta: meta, Deployment: d.Deployment, NodeIds: d.NodeIDs,
		}
	}
	panic(fmt.Sprintf("rollout decision %T has no command", d))
}

// matchingNodes are the nodes that match deployment d whatever their
// health, sorted by id: revoked nodes and nodes that left are not among
// them (their assignments are removed); a node that is down or draining
// is, marked so.
func matchingNodes(d *droverv1.Deployment, nodes []*droverv1.Node) []rollout.NodeView {
	var out []rollout.NodeView
	for _, n := range nodes {
		if n.GetRevoked() || n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
			continue
		}
		// Match judges status too; the controller wants the node's
		// labels, site and hardware judged alone.
		probe := &droverv1.Node{
			Id: n.GetId(), Site: n.GetSite(), Labels: n.GetLabels(), Inventory: n.GetInventory(),
			Status: droverv1.NodeStatus_NODE_STATUS_READY,
		}
		if ok, _ := placement.Match(d.GetSpec().GetSelector(), d.GetSpec().GetResources(), probe); !ok {
			continue
		}
		out = append(out, rollout.NodeView{
			ID:       n.GetId(),
			Site:     n.GetSite(),
			Down:     n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY,
			Draining: n.GetDraining(),
			Cordoned: n.GetCordoned(),
		})
	}
	slices.SortFunc(out, func(a, b rollout.NodeView) int { return strings.Compare(a.ID, b.ID) })
	return out
}
