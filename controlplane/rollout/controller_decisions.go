package rollout

import (
	"errors"
	"fmt"
	"slices"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The controller's errors. Wrapped as "op: %w" with the details; match
// them with errors.Is.
var (
	// ErrStale: a decision was made on a record that has moved on since
	// (another batch started, the state changed, a newer rollout took
	// over). The FSM refuses it and leaves the record as it was; the
	// leader drops the rest of that step's decisions and steps again.
	ErrStale = errors.New("stale rollout decision")
	// ErrNotAllowed: an operator action does not apply to the rollout in
	// its current state.
	ErrNotAllowed = errors.New("rollout action not allowed")
	// ErrInvalid: a view, strategy or decision is malformed.
	ErrInvalid = errors.New("invalid rollout input")
)

// Decision is one change the controller or an operator action wants made
// to the replicated state. Each becomes exactly one Raft command; the doc
// comment of each type names the command and what its apply does. The
// leader applies one step's decisions in order and stops at the first one
// the FSM refuses.
type Decision interface {
	// DeploymentName is the deployment the decision changes.
	DeploymentName() string
	// String describes the decision in a line, for logs.
	String() string
	decision()
}

// StartBatch starts batch Index of the rollout: the next nodes move to the
// rollout's to_version.
//
// Raft command START_ROLLOUT_BATCH, payload: deployment, rollout_id,
// index, node_ids, canary, version, time. Its apply runs ApplyTo on the
// deployment's latest rollout (appending RolloutBatch{node_ids, canary,
// start_time: time}) and, only if that succeeds, writes an Assignment of
// Version (the deployment's model, runtime, resources and revision) for
// every node in NodeIDs, in the same transaction.
type StartBatch struct {
	Deployment string
	RolloutID  uint64
	// Index is the batch's position in Rollout.batches; the FSM refuses
	// the command unless the rollout has exactly Index batches, so no
	// batch is ever started twice, by this leader or a stale one.
	Index   int
	NodeIDs []string
	Canary  bool
	// Version is the rollout's to_version, checked by ApplyTo.
	Version uint64
	Time    time.Time
}

// BatchDone marks batch Index done: every node in it has been healthy on
// the new version for min_healthy_time.
//
// Raft command FINISH_ROLLOUT_BATCH, payload: deployment, rollout_id,
// index, time, await_promotion. Its apply runs ApplyTo on the latest
// rollout. No assignment changes.
type BatchDone struct {
	Deployment string
	RolloutID  uint64
	Index      int
	Time       time.Time
	// AwaitPromotion is set on the last canary batch of a strategy without
	// auto_promote: the rollout enters AWAITING_PROMOTION in the same
	// write, so no leader can mistake a canary that was never promoted for
	// one that was.
	AwaitPromotion bool
}

// SetState moves the rollout from state From to state To: PAUSED,
// PROGRESSING (resume, promote), SUCCEEDED or FAILED.
//
// Raft command SET_ROLLOUT_STATE, payload: deployment, rollout_id, from,
// to, reason, time, restart_batch. Its apply runs ApplyTo on the latest
// rollout, which refuses it unless the rollout is still in From: an
// operator's pause and the controller's success cannot both win. Reason is
// the rollout's end_reason for SUCCEEDED and FAILED, and the audit
// entry's reason for the others.
type SetState struct {
	Deployment string
	RolloutID  uint64
	From, To   droverv1.RolloutState
	Reason     string
	Time       time.Time
	// RestartBatch (set by Resume) restarts an unfinished batch's clock:
	// its start_time becomes Time, so the time spent paused does not count
	// against progress_deadline or the start timeout.
	RestartBatch bool
}

// StartRollback starts a new rollout, number ID of the deployment, that
// moves the nodes running From back to To, without a canary. The
// controller makes one after a rollout with auto_revert fails; Rollback
// makes one for an operator.
//
// Raft command START_ROLLBACK, payload: deployment, id, rollback_of, from,
// to, reason, created_by, time. Its apply runs ApplyTo on the deployment
// and its latest rollout and stores the rollout it returns. No assignment
// changes: the new rollout's batches make them.
type StartRollback struct {
	Deployment string
	ID         uint64
	RollbackOf uint64
	From, To   uint64
	Reason     string
	CreatedBy  string
	Time       time.Time
}

// Assign gives Version to nodes that match the deployment while no
// rollout is moving it: nodes that joined, came back from being down or
// were undrained after the last rollout ended. It takes at most
// max_parallel nodes and respects the per-site budget like a batch.
//
// Raft command ASSIGN_DEPLOYMENT_NODES, payload: deployment, version,
// node_ids, time. Its apply runs Check on the deployment and writes an
// Assignment of Version for every node, as START_ROLLOUT_BATCH does. It
// leaves the rollout record alone.
type Assign struct {
	Deployment string
	Version    uint64
	NodeIDs    []string
	Time       time.Time
}

// Unassign removes the deployment's assignment from nodes that no longer
// match it or have left the fleet; their agents stop its instance. At most
// Config.MaxNodesPerDecision nodes.
//
// Raft command UNASSIGN_DEPLOYMENT_NODES, payload: deployment, node_ids.
// Its apply deletes those nodes' assignments for the deployment; a node
// without one is skipped, so applying it twice is harmless.
type Unassign struct {
	Deployment string
	NodeIDs    []string
}

func (d StartBatch) DeploymentName() string    { return d.Deployment }
func (d BatchDone) DeploymentName() string     { return d.Deployment }
func (d SetState) DeploymentName() string      { return d.Deployment }
func (d StartRollback) DeploymentName() string { return d.Deployment }
func (d Assign) DeploymentName() string        { return d.Deployment }
func (d Unassign) DeploymentName() string      { return d.Deployment }

func (StartBatch) decision()    {}
func (BatchDone) decision()     {}
func (SetState) decision()      {}
func (StartRollback) decision() {}
func (Assign) decision()        {}
func (Unassign) decision()      {}

func (d StartBatch) String() string {
	kind := "batch"
	if d.Canary {
		kind = "canary batch"
	}
	return fmt.Sprintf("%s: rollout %d: start %s %d (%d nodes) on version %d", d.Deployment, d.RolloutID, kind, d.Index, len(d.NodeIDs), d.Version)
}

func (d BatchDone) String() string {
	s := fmt.Sprintf("%s: rollout %d: batch %d done", d.Deployment, d.RolloutID, d.Index)
	if d.AwaitPromotion {
		s += "; awaiting promotion"
	}
	return s
}

func (d SetState) String() string {
	return fmt.Sprintf("%s: rollout %d: %s -> %s: %s", d.Deployment, d.RolloutID, stateName(d.From), stateName(d.To), d.Reason)
}

func (d StartRollback) String() string {
	return fmt.Sprintf("%s: rollout %d: roll back version %d to %d: %s", d.Deployment, d.ID, d.From, d.To, d.Reason)
}

func (d Assign) String() string {
	return fmt.Sprintf("%s: assign version %d to %d nodes", d.Deployment, d.Version, len(d.NodeIDs))
}

func (d Unassign) String() string {
	return fmt.Sprintf("%s: unassign %d nodes", d.Deployment, len(d.NodeIDs))
}

// stateName is a state without its enum prefix, as messages print it.
func stateName(s droverv1.RolloutState) string {
	const prefix = "ROLLOUT_STATE_"
	n := s.String()
	if len(n) > len(prefix) {
		return n[len(prefix):]
	}
	return n
}

// instanceStateName is an instance state without its enum prefix.
func instanceStateName(s droverv1.InstanceState) string {
	const prefix = "INSTANCE_STATE_"
	n := s.String()
	if len(n) > len(prefix) {
		return n[len(prefix):]
	}
	return n
}

// transitions lists the state changes a rollout may make. Terminal states
// (SUCCEEDED, FAILED, SUPERSEDED) have none.
var transitions = map[droverv1.RolloutState][]droverv1.RolloutState{
	droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING: {
		droverv1.RolloutState_ROLLOUT_STATE_PAUSED,
		droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION,
		droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED,
		droverv1.RolloutState_ROLLOUT_STATE_FAILED,
		droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED,
	},
	droverv1.RolloutState_ROLLOUT_STATE_PAUSED: {
		droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED,
	},
	droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION: {
		droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED,
	},
}

// Terminal reports whether a rollout in state s has ended.
func Terminal(s droverv1.RolloutState) bool {
	return len(transitions[s]) == 0
}

// checkRollout refuses a decision made for another rollout than r.
func checkRollout(op string, r *droverv1.Rollout, deployment string, id uint64) error {
	if r == nil {
		return fmt.Errorf("%s: deployment %s has no rollout: %w", op, deployment, ErrStale)
	}
	if r.GetDeployment() != deployment || r.GetId() != id {
		return fmt.Errorf("%s: decision for rollout %d of %s, latest is rollout %d of %s: %w",
			op, id, deployment, r.GetId(), r.GetDeployment(), ErrStale)
	}
	return nil
}

// ApplyTo appends the batch to r, the deployment's latest rollout, as the
// START_ROLLOUT_BATCH command does. It changes nothing and returns an
// error wrapping ErrStale unless r is still PROGRESSING with exactly Index
// batches, all done, and moving to Version.
func (d StartBatch) ApplyTo(r *droverv1.Rollout) error {
	const op = "start rollout batch"
	if err := checkRollout(op, r, d.Deployment, d.RolloutID); err != nil {
		return err
	}
	if len(d.NodeIDs) == 0 {
		return fmt.Errorf("%s: batch %d of rollout %d has no nodes: %w", op, d.Index, d.RolloutID, ErrInvalid)
	}
	if s := r.GetState(); s != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return fmt.Errorf("%s: rollout %d of %s is %s: %w", op, r.GetId(), d.Deployment, stateName(s), ErrStale)
	}
	if d.Version != r.GetToVersion() {
		return fmt.Errorf("%s: batch for version %d, rollout %d moves to %d: %w", op, d.Version, r.GetId(), r.GetToVersion(), ErrStale)
	}
	if n := len(r.GetBatches()); n != d.Index {
		return fmt.Errorf("%s: batch %d of rollout %d, which has %d batches: %w", op, d.Index, r.GetId(), n, ErrStale)
	}
	if n := len(r.GetBatches()); n > 0 && r.GetBatches()[n-1].GetDoneTime() == nil {
		return fmt.Errorf("%s: batch %d of rollout %d is not done: %w", op, n-1, r.GetId(), ErrStale)
	}
	r.Batches = append(r.Batches, &droverv1.RolloutBatch{
		NodeIds:   slices.Clone(d.NodeIDs),
		Canary:    d.Canary,
		StartTime: timestamppb.New(d.Time),
	})
	return nil
}

// ApplyTo marks the batch done on r as the FINISH_ROLLOUT_BATCH command
// does. It changes nothing and returns an error wrapping ErrStale unless
// Index is r's last batch, not yet done, and r is PROGRESSING.
func (d BatchDone) ApplyTo(r *droverv1.Rollout) error {
	const op = "finish rollout batch"
	if err := checkRollout(op, r, d.Deployment, d.RolloutID); err != nil {
		return err
	}
	if s := r.GetState(); s != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING {
		return fmt.Errorf("%s: rollout %d of %s is %s: %w", op, r.GetId(), d.Deployment, stateName(s), ErrStale)
	}
	if n := len(r.GetBatches()); d.Index != n-1 {
		return fmt.Errorf("%s: batch %d of rollout %d, which has %d batches: %w", op, d.Index, r.GetId(), n, ErrStale)
	}
	b := r.GetBatches()[d.Index]
	if b.GetDoneTime() != nil {
		return fmt.Errorf("%s: batch %d of rollout %d is already done: %w", op, d.Index, r.GetId(), ErrStale)
	}
	b.DoneTime = timestamppb.New(d.Time)
	if d.AwaitPromotion {
		r.State = droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION
	}
	return nil
}

// ApplyTo changes r's state as the SET_ROLLOUT_STATE command does. It
// changes nothing and returns an error wrapping ErrStale unless r is in
// From, and one wrapping ErrInvalid for a change no rollout makes.
func (d SetState) ApplyTo(r *droverv1.Rollout) error {
	const op = "set rollout state"
	if err := checkRollout(op, r, d.Deployment, d.RolloutID); err != nil {
		return err
	}
	if !slices.Contains(transitions[d.From], d.To) {
		return fmt.Errorf("%s: rollout %d of %s: %s -> %s: %w", op, d.RolloutID, d.Deployment, stateName(d.From), stateName(d.To), ErrInvalid)
	}
	if s := r.GetState(); s != d.From {
		return fmt.Errorf("%s: rollout %d of %s is %s, not %s: %w", op, r.GetId(), d.Deployment, stateName(s), stateName(d.From), ErrStale)
	}
	r.State = d.To
	if Terminal(d.To) {
		r.EndReason = d.Reason
		r.EndTime = timestamppb.New(d.Time)
	}
	if n := len(r.GetBatches()); d.RestartBatch && n > 0 && r.GetBatches()[n-1].GetDoneTime() == nil {
		r.Batches[n-1].StartTime = timestamppb.New(d.Time)
	}
	return nil
}

// ApplyTo starts the rollback as the START_ROLLBACK command does: dep's
// latest rollout must still be prev, number RollbackOf; prev, if it has not
// ended, becomes SUPERSEDED; dep's version becomes To and its rollout_id
// ID; the new rollout, PROGRESSING with no batches, is returned. It
// changes nothing and returns an error wrapping ErrStale when a newer
// rollout exists.
func (d StartRollback) ApplyTo(dep *droverv1.Deployment, prev *droverv1.Rollout) (*droverv1.Rollout, error) {
	const op = "start rollback"
	if dep.GetSpec().GetName() != d.Deployment {
		return nil, fmt.Errorf("%s: decision for %s applied to deployment %s: %w", op, d.Deployment, dep.GetSpec().GetName(), ErrInvalid)
	}
	if dep.GetRolloutId() != d.RollbackOf || d.ID != d.RollbackOf+1 {
		return nil, fmt.Errorf("%s: rollback of rollout %d as %d, latest of %s is %d: %w", op, d.RollbackOf, d.ID, d.Deployment, dep.GetRolloutId(), ErrStale)
	}
	if err := checkRollout(op, prev, d.Deployment, d.RollbackOf); err != nil {
		return nil, err
	}
	if prev.GetToVersion() != d.From || prev.GetFromVersion() != d.To {
		return nil, fmt.Errorf("%s: rollout %d moved %d to %d, not %d to %d: %w", op, prev.GetId(), prev.GetFromVersion(), prev.GetToVersion(), d.To, d.From, ErrStale)
	}
	if !Terminal(prev.GetState()) {
		prev.State = droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED
		prev.EndReason = fmt.Sprintf("superseded by rollout %d: %s", d.ID, d.Reason)
		prev.EndTime = timestamppb.New(d.Time)
	}
	// The version rolled back to runs as it ran before, when that is
	// known: the runtime and resources written for the version rolled
	// back from may not suit it (a command only the newer version has).
	// The spec changes, so the revision does; the runtime rolled back
	// from is kept for a rollback of this rollback.
	if p := dep.GetPrevious(); p.GetVersion() == d.To && p.GetVersion() != 0 {
		back := &droverv1.PreviousRun{Version: d.From, Runtime: dep.GetSpec().GetRuntime(), Resources: dep.GetSpec().GetResources()}
		if !proto.Equal(p.GetRuntime(), back.GetRuntime()) || !proto.Equal(p.GetResources(), back.GetResources()) {
			spec := proto.CloneOf(dep.GetSpec())
			spec.Runtime, spec.Resources = proto.CloneOf(p.GetRuntime()), proto.CloneOf(p.GetResources())
			dep.Spec = spec
			dep.Revision++
		}
		dep.Previous = back
	}
	dep.Version = d.To
	dep.RolloutId = d.ID
	return &droverv1.Rollout{
		Deployment:  d.Deployment,
		Id:          d.ID,
		FromVersion: d.From,
		ToVersion:   d.To,
		State:       droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Reason:      d.Reason,
		RollbackOf:  d.RollbackOf,
		CreatedBy:   d.CreatedBy,
		CreateTime:  timestamppb.New(d.Time),
	}, nil
}

// Check refuses an Assign made for another version than dep's current one
// (an apply moved it since), wrapping ErrStale.
func (d Assign) Check(dep *droverv1.Deployment) error {
	if dep.GetSpec().GetName() != d.Deployment || dep.GetVersion() != d.Version {
		return fmt.Errorf("assign deployment nodes: version %d of %s, deployment %s is at version %d: %w",
			d.Version, d.Deployment, dep.GetSpec().GetName(), dep.GetVersion(), ErrStale)
	}
	return nil
}
