package state

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/droverhq/drover/controlplane/rollout"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The rollout controller's commands. Each applies one rollout.Decision:
// it runs the decision's own ApplyTo (or Check) on a copy of the stored
// records, so the state machine and the controller can never disagree on
// what a decision does, and stores the copy only when that succeeds. A
// decision made on records that moved on since (rollout.ErrStale) is
// refused with ErrConflict and changes nothing.

// rolloutError maps an error of a decision's ApplyTo to the store's
// sentinels, keeping its message.
func rolloutError(err error) error {
	switch {
	case errors.Is(err, rollout.ErrStale):
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case errors.Is(err, rollout.ErrInvalid):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// latestRolloutLocked returns the deployment and a copy of its latest
// rollout (nil for none). s.mu must be held.
func (s *Store) latestRolloutLocked(name string) (*droverv1.Deployment, *droverv1.Rollout, error) {
	d, ok := s.t.deployments[name]
	if !ok {
		return nil, nil, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", name, ErrNotFound)
	}
	hist := s.t.rollouts[name]
	if len(hist) == 0 {
		return d, nil, nil
	}
	return d, clone(hist[len(hist)-1]), nil
}

// storeLatestRolloutLocked replaces the deployment's latest rollout with
// r. s.mu must be held for writing.
func (s *Store) storeLatestRolloutLocked(idx uint64, r *droverv1.Rollout) {
	r.ModifyIndex = idx
	hist := slices.Clone(s.t.rollouts[r.GetDeployment()])
	hist[len(hist)-1] = r
	s.t.rollouts[r.GetDeployment()] = hist
}

// assignLocked writes an assignment of version for each node, made from
// the deployment's spec. s.mu must be held for writing.
func (s *Store) assignLocked(idx uint64, d *droverv1.Deployment, version uint64, nodes []string) {
	model, _, _ := strings.Cut(d.GetSpec().GetModel(), "@")
	for _, id := range nodes {
		as := s.t.assignments[id]
		next := make(map[string]*droverv1.Assignment, len(as)+1)
		maps.Copy(next, as)
		next[d.GetSpec().GetName()] = &droverv1.Assignment{
			Deployment: d.GetSpec().GetName(),
			Model:      model,
			Version:    version,
			Runtime:    d.GetSpec().GetRuntime(),
			Resources:  d.GetSpec().GetResources(),
			Revision:   d.GetRevision(),
		}
		s.t.assignments[id] = next
		s.t.assignIndex[id] = idx
	}
}

// unassignLocked removes the deployment's assignment from each node and
// returns how many had one. s.mu must be held for writing.
func (s *Store) unassignLocked(idx uint64, deployment string, nodes []string) int {
	n := 0
	for _, id := range nodes {
		as := s.t.assignments[id]
		if _, ok := as[deployment]; !ok {
			continue
		}
		n++
		s.t.assignIndex[id] = idx
		if len(as) == 1 {
			delete(s.t.assignments, id)
			continue
		}
		next := maps.Clone(as)
		delete(next, deployment)
		s.t.assignments[id] = next
	}
	return n
}

func rolloutDetails(id uint64, more ...string) map[string]string {
	m := map[string]string{"rollout": strconv.FormatUint(id, 10)}
	for i := 0; i+1 < len(more); i += 2 {
		m[more[i]] = more[i+1]
	}
	return m
}

// StartRolloutBatch applies a start-rollout-batch command: the batch is
// appended to the deployment's latest rollout (rollout.StartBatch.ApplyTo)
// and its nodes are assigned the rollout's version.
func (s *Store) StartRolloutBatch(idx uint64, meta *droverv1.CommandMeta, c *droverv1.StartRolloutBatchCommand) (*droverv1.Rollout, error) {
	var out *droverv1.Rollout
	err := s.write(idx, meta, ActionRolloutBatchStart, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		target := deploymentTarget(name)
		details := rolloutDetails(c.GetRolloutId(), "batch", strconv.FormatUint(uint64(c.GetIndex()), 10),
			"nodes", strconv.Itoa(len(c.GetNodeIds())), "version", strconv.FormatUint(c.GetVersion(), 10))
		d, r, err := s.latestRolloutLocked(name)
		if err != nil {
			return target, details, err
		}
		dec := rollout.StartBatch{
			Deployment: name, RolloutID: c.GetRolloutId(), Index: int(c.GetIndex()),
			NodeIDs: c.GetNodeIds(), Canary: c.GetCanary(), Version: c.GetVersion(), Time: c.GetTime().AsTime(),
		}
		if err := dec.ApplyTo(r); err != nil {
			return target, details, rolloutError(err)
		}
		s.storeLatestRolloutLocked(idx, r)
		s.assignLocked(idx, d, c.GetVersion(), c.GetNodeIds())
		out = clone(r)
		return target, details, nil
	})
	return out, err
}

// FinishRolloutBatch applies a finish-rollout-batch command
// (rollout.BatchDone.ApplyTo on the latest rollout).
func (s *Store) FinishRolloutBatch(idx uint64, meta *droverv1.CommandMeta, c *droverv1.FinishRolloutBatchCommand) (*droverv1.Rollout, error) {
	var out *droverv1.Rollout
	err := s.write(idx, meta, ActionRolloutBatchDone, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		target := deploymentTarget(name)
		details := rolloutDetails(c.GetRolloutId(), "batch", strconv.FormatUint(uint64(c.GetIndex()), 10))
		if c.GetAwaitPromotion() {
			details["await_promotion"] = "true"
		}
		_, r, err := s.latestRolloutLocked(name)
		if err != nil {
			return target, details, err
		}
		dec := rollout.BatchDone{
			Deployment: name, RolloutID: c.GetRolloutId(), Index: int(c.GetIndex()),
			Time: c.GetTime().AsTime(), AwaitPromotion: c.GetAwaitPromotion(),
		}
		if err := dec.ApplyTo(r); err != nil {
			return target, details, rolloutError(err)
		}
		s.storeLatestRolloutLocked(idx, r)
		out = clone(r)
		return target, details, nil
	})
	return out, err
}

// SetRolloutState applies a set-rollout-state command
// (rollout.SetState.ApplyTo on the latest rollout).
func (s *Store) SetRolloutState(idx uint64, meta *droverv1.CommandMeta, c *droverv1.SetRolloutStateCommand) (*droverv1.Rollout, error) {
	var out *droverv1.Rollout
	err := s.write(idx, meta, ActionRolloutState, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		target := deploymentTarget(name)
		details := rolloutDetails(c.GetRolloutId(), "from", c.GetFrom().String(), "to", c.GetTo().String())
		if c.GetReason() != "" {
			details["reason"] = c.GetReason()
		}
		_, r, err := s.latestRolloutLocked(name)
		if err != nil {
			return target, details, err
		}
		dec := rollout.SetState{
			Deployment: name, RolloutID: c.GetRolloutId(), From: c.GetFrom(), To: c.GetTo(),
			Reason: c.GetReason(), Time: c.GetTime().AsTime(), RestartBatch: c.GetRestartBatch(),
		}
		if err := dec.ApplyTo(r); err != nil {
			return target, details, rolloutError(err)
		}
		s.storeLatestRolloutLocked(idx, r)
		out = clone(r)
		return target, details, nil
	})
	return out, err
}

// StartRollback applies a start-rollback command
// (rollout.StartRollback.ApplyTo): the latest rollout is superseded if it
// has not ended, the deployment moves to the older version, and the new
// rollout is stored. Assignments are left to its batches.
func (s *Store) StartRollback(idx uint64, meta *droverv1.CommandMeta, c *droverv1.StartRollbackCommand) (*droverv1.Rollout, error) {
	var out *droverv1.Rollout
	err := s.write(idx, meta, ActionRolloutRollback, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		target := deploymentTarget(name)
		details := rolloutDetails(c.GetId(), "rollback_of", strconv.FormatUint(c.GetRollbackOf(), 10),
			"from_version", strconv.FormatUint(c.GetFrom(), 10), "version", strconv.FormatUint(c.GetTo(), 10))
		if c.GetReason() != "" {
			details["reason"] = c.GetReason()
		}
		cur, prev, err := s.latestRolloutLocked(name)
		if err != nil {
			return target, details, err
		}
		model, _, _ := strings.Cut(cur.GetSpec().GetModel(), "@")
		if findVersion(s.t.versions[model], c.GetTo()) == nil {
			return target, details, fmt.Errorf("roll back deployment %q to model %q version %d: the version %w (deleted since); apply another version", name, model, c.GetTo(), ErrNotFound)
		}
		d := shallowCopy(cur)
		dec := rollout.StartRollback{
			Deployment: name, ID: c.GetId(), RollbackOf: c.GetRollbackOf(), From: c.GetFrom(), To: c.GetTo(),
			Reason: c.GetReason(), CreatedBy: c.GetCreatedBy(), Time: c.GetTime().AsTime(),
		}
		r, err := dec.ApplyTo(d, prev)
		if err != nil {
			return target, details, rolloutError(err)
		}
		r.CreateIndex, r.ModifyIndex = idx, idx
		prev.ModifyIndex = idx
		d.ModifyIndex = idx
		if t := meta.GetTime(); t != nil {
			d.UpdateTime = clone(t)
		} else {
			d.UpdateTime = timestamppb.New(c.GetTime().AsTime())
		}
		hist := slices.Clone(s.t.rollouts[name])
		hist[len(hist)-1] = prev
		hist = append(hist, r)
		if over := len(hist) - MaxRolloutHistory; over > 0 {
			hist = hist[over:]
		}
		s.t.rollouts[name] = hist
		s.t.deployments[name] = d
		out = clone(r)
		return target, details, nil
	})
	return out, err
}

// AssignDeploymentNodes applies an assign-deployment-nodes command: after
// rollout.Assign.Check, each node is assigned the deployment's version.
func (s *Store) AssignDeploymentNodes(idx uint64, meta *droverv1.CommandMeta, c *droverv1.AssignDeploymentNodesCommand) error {
	return s.write(idx, meta, ActionDeploymentAssign, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		target := deploymentTarget(name)
		details := map[string]string{"version": strconv.FormatUint(c.GetVersion(), 10), "nodes": strconv.Itoa(len(c.GetNodeIds()))}
		d, ok := s.t.deployments[name]
		if !ok {
			return target, details, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", name, ErrNotFound)
		}
		if len(c.GetNodeIds()) == 0 {
			return target, details, fmt.Errorf("assign deployment %q: no nodes named: %w", name, ErrInvalid)
		}
		dec := rollout.Assign{Deployment: name, Version: c.GetVersion(), NodeIDs: c.GetNodeIds(), Time: c.GetTime().AsTime()}
		if err := dec.Check(d); err != nil {
			return target, details, rolloutError(err)
		}
		s.assignLocked(idx, d, c.GetVersion(), c.GetNodeIds())
		return target, details, nil
	})
}

// UnassignDeploymentNodes applies an unassign-deployment-nodes command:
// the deployment's assignment is removed from each node that has one.
// The deployment may be gone already; applying it twice is harmless.
func (s *Store) UnassignDeploymentNodes(idx uint64, meta *droverv1.CommandMeta, c *droverv1.UnassignDeploymentNodesCommand) error {
	return s.write(idx, meta, ActionDeploymentUnassign, func() (string, map[string]string, error) {
		name := c.GetDeployment()
		n := s.unassignLocked(idx, name, c.GetNodeIds())
		return deploymentTarget(name), map[string]string{"nodes": strconv.Itoa(n)}, nil
	})
}

// NodeAssignments returns what node id is told to run, sorted by
// deployment, and the index of the last change to it: the greatest of the
// last command that changed its assignments, the last change to any
// deployment they belong to, and the last restore. For an assignment of
// its deployment's current version the runtime, resources and revision
// are the deployment's now, so an apply that changes only how a version
// runs reaches the nodes without a rollout; an assignment of another
// version (a node a rollout has not reached yet) keeps how it was told to
// run that one.
func (s *Store) NodeAssignments(id string) ([]*droverv1.Assignment, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	index := max(s.t.assignIndex[id], s.t.assignFloor)
	as := s.t.assignments[id]
	out := make([]*droverv1.Assignment, 0, len(as))
	for _, name := range slices.Sorted(maps.Keys(as)) {
		a := clone(as[name])
		if d, ok := s.t.deployments[name]; ok {
			index = max(index, d.GetModifyIndex())
			model, _, _ := strings.Cut(d.GetSpec().GetModel(), "@")
			if a.GetVersion() == d.GetVersion() && a.GetModel() == model {
				a.Runtime = clone(d.GetSpec().GetRuntime())
				a.Resources = clone(d.GetSpec().GetResources())
				a.Revision = d.GetRevision()
			}
		}
		out = append(out, a)
	}
	return out, index
}

// DeploymentAssignments returns the deployment's assignments by node id.
func (s *Store) DeploymentAssignments(name string) map[string]*droverv1.Assignment {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]*droverv1.Assignment{}
	for id, as := range s.t.assignments {
		if a, ok := as[name]; ok {
			out[id] = clone(a)
		}
	}
	return out
}

// AssignedVersions returns, for every deployment with assignments, the
// version each node is assigned: deployment → node id → version. It is
// what the rollout controller reads on every tick, in one pass.
func (s *Store) AssignedVersions() map[string]map[string]uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]map[string]uint64{}
	for id, as := range s.t.assignments {
		for name, a := range as {
			m := out[name]
			if m == nil {
				m = map[string]uint64{}
				out[name] = m
			}
			m[id] = a.GetVersion()
		}
	}
	return out
}

// checkAssignments checks that a snapshot's assignments name held
// deployments, each node and deployment once.
func checkAssignments(assigns []*droverv1.NodeAssignment, deploys []*droverv1.Deployment) error {
	held := make(map[string]bool, len(deploys))
	for _, d := range deploys {
		held[d.GetSpec().GetName()] = true
	}
	seen := map[[2]string]bool{}
	for _, a := range assigns {
		dep := a.GetAssignment().GetDeployment()
		if a.GetNodeId() == "" {
			return fmt.Errorf("an assignment of deployment %q names no node", dep)
		}
		if !held[dep] {
			return fmt.Errorf("node %q is assigned deployment %q, which the snapshot does not hold", a.GetNodeId(), dep)
		}
		k := [2]string{a.GetNodeId(), dep}
		if seen[k] {
			return fmt.Errorf("node %q is assigned deployment %q twice", a.GetNodeId(), dep)
		}
		seen[k] = true
	}
	return nil
}
