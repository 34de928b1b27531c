package state

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

// MaxRolloutHistory is how many rollouts a deployment keeps, most recent
// last; older ones are dropped. Rollout ids go on counting.
const MaxRolloutHistory = 100

// MaxDeploymentSpecBytes bounds a deployment spec, encoded.
const MaxDeploymentSpecBytes = 256 << 10

// ApplyDeploymentResult is what an apply did.
type ApplyDeploymentResult struct {
	Deployment *droverv1.Deployment
	// Rollout is the rollout the apply started; nil when the resolved
	// version did not change.
	Rollout *droverv1.Rollout
	// Changed is false when the spec and version were already as applied.
	Changed bool
}

// ApplyDeployment applies an apply-deployment command: it creates the
// deployment spec.name or replaces its spec. The spec must have been
// normalized by the server that proposed the command (defaults filled in,
// every field checked); the store checks the name, the size and resolves
// the model reference against its own state, so every server resolves it
// to the same version.
//
// expect, when not nil, makes the apply conditional: the deployment must
// be at revision *expect, 0 meaning it must not exist; otherwise the apply
// is refused with [ErrConflict].
//
// A spec that differs from the stored one raises the revision. A resolved
// version that differs from the deployment's starts a rollout: a new
// Rollout record (id one past the deployment's last, from the old version,
// 0 on create, to the new one, PROGRESSING), and a still-running previous
// rollout becomes SUPERSEDED. An apply that changes neither is recorded in
// the audit log and changes nothing else.
func (s *Store) ApplyDeployment(idx uint64, meta *droverv1.CommandMeta, spec *droverv1.DeploymentSpec, expect *uint64) (*ApplyDeploymentResult, error) {
	var out *ApplyDeploymentResult
	err := s.write(idx, meta, ActionDeploymentApply, func() (string, map[string]string, error) {
		name := spec.GetName()
		target := deploymentTarget(name)
		if err := ValidateName("deployment", name); err != nil {
			return target, nil, err
		}
		if n := proto.Size(spec); n > MaxDeploymentSpecBytes {
			return target, nil, fmt.Errorf("deployment %q is %w: its spec is %d bytes, more than the %d allowed", name, ErrInvalid, n, MaxDeploymentSpecBytes)
		}
		cur := s.t.deployments[name]
		if expect != nil {
			switch {
			case cur == nil && *expect != 0:
				return target, nil, fmt.Errorf("deployment %q %w: expected revision %d, but it does not exist", name, ErrConflict, *expect)
			case cur != nil && cur.GetRevision() != *expect:
				return target, nil, fmt.Errorf("deployment %q %w: expected revision %d, but it is at revision %d; read it again (drover deploy show %s) and retry", name, ErrConflict, *expect, cur.GetRevision(), name)
			}
		}
		v, err := s.resolveDeploymentModelLocked(spec.GetModel())
		if err != nil {
			return target, nil, fmt.Errorf("deployment %q: %w", name, err)
		}
		version := v.GetVersion()
		specChanged := cur == nil || !proto.Equal(cur.GetSpec(), spec)
		versionChanged := cur == nil || cur.GetVersion() != version
		details := map[string]string{"model": spec.GetModel(), "version": strconv.FormatUint(version, 10)}
		if !specChanged && !versionChanged {
			details["revision"] = strconv.FormatUint(cur.GetRevision(), 10)
			details["unchanged"] = "true"
			out = &ApplyDeploymentResult{Deployment: clone(cur)}
			return target, details, nil
		}
		var d *droverv1.Deployment
		if cur == nil {
			d = &droverv1.Deployment{CreatedBy: actorOf(meta), CreateIndex: idx}
			if t := meta.GetTime(); t != nil {
				d.CreateTime = clone(t)
			}
		} else {
			d = shallowCopy(cur)
		}
		d.Spec = clone(spec)
		if specChanged {
			d.Revision++
		}
		d.Version = version
		d.ModifyIndex = idx
		if t := meta.GetTime(); t != nil {
			d.UpdateTime = clone(t)
		}
		details["revision"] = strconv.FormatUint(d.GetRevision(), 10)
		res := &ApplyDeploymentResult{Changed: true}
		if versionChanged {
			var from uint64
			if cur != nil {
				from = cur.GetVersion()
				d.Previous = previousRun(cur)
			}
			r := s.startRolloutLocked(idx, meta, d, from, fmt.Sprintf("apply revision %d", d.GetRevision()))
			res.Rollout = clone(r)
			details["rollout"] = strconv.FormatUint(r.GetId(), 10)
			details["from_version"] = strconv.FormatUint(r.GetFromVersion(), 10)
		}
		s.t.deployments[name] = d
		res.Deployment = clone(d)
		out = res
		return target, details, nil
	})
	return out, err
}

// previousRun is how cur runs its version, for a rollback to it once the
// deployment has moved on.
func previousRun(cur *droverv1.Deployment) *droverv1.PreviousRun {
	return &droverv1.PreviousRun{
		Version:   cur.GetVersion(),
		Runtime:   clone(cur.GetSpec().GetRuntime()),
		Resources: clone(cur.GetSpec().GetResources()),
	}
}

// startRolloutLocked records a new rollout of deployment d, a copy the
// caller stores, from version from to d.Version: one id past d's last,
// PROGRESSING, with reason. A still-running previous rollout becomes
// SUPERSEDED. s.mu must be held for writing.
func (s *Store) startRolloutLocked(idx uint64, meta *droverv1.CommandMeta, d *droverv1.Deployment, from uint64, reason string) *droverv1.Rollout {
	name := d.GetSpec().GetName()
	r := &droverv1.Rollout{
		Deployment:  name,
		Id:          d.GetRolloutId() + 1,
		FromVersion: from,
		ToVersion:   d.GetVersion(),
		State:       droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Reason:      reason,
		CreatedBy:   actorOf(meta),
		CreateIndex: idx,
		ModifyIndex: idx,
	}
	if t := meta.GetTime(); t != nil {
		r.CreateTime = clone(t)
	}
	d.RolloutId = r.GetId()
	s.supersedeLocked(idx, meta, name, r.GetId())
	hist := append(slices.Clone(s.t.rollouts[name]), r)
	if over := len(hist) - MaxRolloutHistory; over > 0 {
		hist = hist[over:]
	}
	s.t.rollouts[name] = hist
	return r
}

// followAliasLocked moves the deployments that follow model@alias to
// version, the alias's new target, each with a rollout, and returns their
// names. s.mu must be held for writing.
func (s *Store) followAliasLocked(idx uint64, meta *droverv1.CommandMeta, model, alias string, version uint64) []string {
	var moved []string
	for _, name := range s.deploymentsUsingLocked(model, alias) {
		cur := s.t.deployments[name]
		if cur.GetVersion() == version {
			continue
		}
		d := shallowCopy(cur)
		d.Previous = previousRun(cur)
		d.Version = version
		d.ModifyIndex = idx
		if t := meta.GetTime(); t != nil {
			d.UpdateTime = clone(t)
		}
		s.startRolloutLocked(idx, meta, d, cur.GetVersion(), fmt.Sprintf("alias %s of %s moved to version %d", alias, model, version))
		s.t.deployments[name] = d
		moved = append(moved, name)
	}
	return moved
}

// supersedeLocked ends the deployment's latest rollout if it is still
// running, because rollout next takes over. s.mu must be held for
// writing.
func (s *Store) supersedeLocked(idx uint64, meta *droverv1.CommandMeta, name string, next uint64) {
	hist := s.t.rollouts[name]
	if len(hist) == 0 {
		return
	}
	last := hist[len(hist)-1]
	if !RolloutRunning(last.GetState()) {
		return
	}
	r := shallowCopy(last)
	r.State = droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED
	r.EndReason = fmt.Sprintf("superseded by rollout %d", next)
	r.ModifyIndex = idx
	if t := meta.GetTime(); t != nil {
		r.EndTime = clone(t)
	}
	hist = slices.Clone(hist)
	hist[len(hist)-1] = r
	s.t.rollouts[name] = hist
}

// RolloutRunning reports whether a rollout in state st has not ended.
func RolloutRunning(st droverv1.RolloutState) bool {
	switch st {
	case droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		droverv1.RolloutState_ROLLOUT_STATE_PAUSED,
		droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION:
		return true
	}
	return false
}

// resolveDeploymentModelLocked resolves "NAME@ALIAS" or "NAME@VERSION".
// The errors name what is missing and how to list what exists. s.mu must
// be held.
func (s *Store) resolveDeploymentModelLocked(ref string) (*droverv1.ModelVersion, error) {
	name, r, ok := strings.Cut(ref, "@")
	if !ok || name == "" || r == "" || r == refLatest {
		return nil, fmt.Errorf("model reference %q is %w: write NAME@ALIAS or NAME@VERSION", ref, ErrInvalid)
	}
	if _, ok := s.t.models[name]; !ok {
		return nil, &refusal{
			msg:  fmt.Sprintf("model %q not found; list models with \"drover model ls\"", name),
			kind: ErrNotFound,
		}
	}
	v, err := s.versionLocked(name, r)
	if err != nil {
		return nil, &refusal{
			msg:  fmt.Sprintf("%v; list its versions and aliases with \"drover model show %s\"", err, name),
			kind: err,
		}
	}
	return v, nil
}

// DeleteDeployment applies a delete-deployment command. The deployment's
// assignments go with it (its agents stop it), and so does its
// rollout history: a deployment created again under the name
// starts a history of its own, from rollout 1.
func (s *Store) DeleteDeployment(idx uint64, meta *droverv1.CommandMeta, name string) error {
	return s.write(idx, meta, ActionDeploymentDelete, func() (string, map[string]string, error) {
		target := deploymentTarget(name)
		d, ok := s.t.deployments[name]
		if !ok {
			return target, nil, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", name, ErrNotFound)
		}
		delete(s.t.deployments, name)
		delete(s.t.rollouts, name)
		// Its nodes' agents stop its instance when its assignment goes.
		var nodes []string
		for id, as := range s.t.assignments {
			if _, ok := as[name]; ok {
				nodes = append(nodes, id)
			}
		}
		unassigned := s.unassignLocked(idx, name, nodes)
		return target, map[string]string{
			"revision":   strconv.FormatUint(d.GetRevision(), 10),
			"version":    strconv.FormatUint(d.GetVersion(), 10),
			"unassigned": strconv.Itoa(unassigned),
		}, nil
	})
}

// Deployment returns the named deployment.
func (s *Store) Deployment(name string) (*droverv1.Deployment, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, ok := s.t.deployments[name]
	if !ok {
		return nil, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", name, ErrNotFound)
	}
	return clone(d), nil
}

// Deployments returns every deployment, sorted by name.
func (s *Store) Deployments() []*droverv1.Deployment {
	s.mu.RLock()
	out := make([]*droverv1.Deployment, 0, len(s.t.deployments))
	for _, d := range s.t.deployments {
		out = append(out, clone(d))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *droverv1.Deployment) int {
		return strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName())
	})
	return out
}

// Rollout returns rollout id of the named deployment, or its latest for
// id 0. A deployment without rollouts, or a rollout dropped from its
// history, is ErrNotFound.
func (s *Store) Rollout(deployment string, id uint64) (*droverv1.Rollout, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.t.deployments[deployment]; !ok {
		return nil, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", deployment, ErrNotFound)
	}
	hist := s.t.rollouts[deployment]
	if len(hist) == 0 {
		return nil, fmt.Errorf("deployment %q has no rollout: %w", deployment, ErrNotFound)
	}
	if id == 0 {
		return clone(hist[len(hist)-1]), nil
	}
	for _, r := range hist {
		if r.GetId() == id {
			return clone(r), nil
		}
	}
	return nil, fmt.Errorf("deployment %q rollout %d %w: it keeps rollouts %d to %d", deployment, id, ErrNotFound, hist[0].GetId(), hist[len(hist)-1].GetId())
}

// Rollouts returns the rollouts of the named deployment in ascending id
// order, or of every deployment (by name, then id) for "".
func (s *Store) Rollouts(deployment string) ([]*droverv1.Rollout, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var names []string
	if deployment != "" {
		if _, ok := s.t.deployments[deployment]; !ok {
			return nil, fmt.Errorf("deployment %q %w; list deployments with \"drover deploy ls\"", deployment, ErrNotFound)
		}
		names = []string{deployment}
	} else {
		for n := range s.t.rollouts {
			names = append(names, n)
		}
		slices.Sort(names)
	}
	var out []*droverv1.Rollout
	for _, n := range names {
		for _, r := range s.t.rollouts[n] {
			out = append(out, clone(r))
		}
	}
	return out, nil
}

// LatestRollouts returns each deployment's latest rollout by deployment
// name; deployments without one are absent.
func (s *Store) LatestRollouts() map[string]*droverv1.Rollout {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]*droverv1.Rollout, len(s.t.rollouts))
	for n, hist := range s.t.rollouts {
		if len(hist) > 0 {
			out[n] = clone(hist[len(hist)-1])
		}
	}
	return out
}

// deploymentsUsingLocked names the deployments whose model reference is
// model@ref, or any reference to model when ref is "", sorted. s.mu must
// be held.
func (s *Store) deploymentsUsingLocked(model, ref string) []string {
	var out []string
	for n, d := range s.t.deployments {
		m, r, _ := strings.Cut(d.GetSpec().GetModel(), "@")
		if m == model && (ref == "" || r == ref) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// checkDeployments checks that a snapshot's deployments and rollouts
// describe a state the write methods could have produced: valid names,
// each deployment once, its version held by its model, rollouts of held
// deployments in ascending id order, none after the deployment's latest,
// which is present.
func checkDeployments(deploys []*droverv1.Deployment, rollouts []*droverv1.Rollout, models map[string]*droverv1.Model, versions map[string][]*droverv1.ModelVersion) error {
	held := make(map[string]*droverv1.Deployment, len(deploys))
	for _, d := range deploys {
		name := d.GetSpec().GetName()
		if err := ValidateName("deployment", name); err != nil {
			return err
		}
		if _, dup := held[name]; dup {
			return fmt.Errorf("deployment %q appears twice", name)
		}
		held[name] = d
		model, _, _ := strings.Cut(d.GetSpec().GetModel(), "@")
		if _, ok := models[model]; !ok {
			return fmt.Errorf("deployment %q uses model %q, which the snapshot does not hold", name, model)
		}
		if findVersion(versions[model], d.GetVersion()) == nil {
			return fmt.Errorf("deployment %q runs model %q version %d, which the snapshot does not hold", name, model, d.GetVersion())
		}
	}
	last := make(map[string]uint64, len(deploys))
	for _, r := range rollouts {
		d, ok := held[r.GetDeployment()]
		if !ok {
			return fmt.Errorf("rollout %d belongs to deployment %q, which the snapshot does not hold", r.GetId(), r.GetDeployment())
		}
		if r.GetId() <= last[r.GetDeployment()] || r.GetId() > d.GetRolloutId() {
			return fmt.Errorf("deployment %q rollout %d is out of order, repeated or beyond its latest rollout %d", r.GetDeployment(), r.GetId(), d.GetRolloutId())
		}
		last[r.GetDeployment()] = r.GetId()
	}
	for name, d := range held {
		if d.GetRolloutId() != last[name] {
			return fmt.Errorf("deployment %q names rollout %d as its latest, which the snapshot does not hold", name, d.GetRolloutId())
		}
	}
	return nil
}

// ResolveDeploymentModel resolves a deployment's model reference
// ("NAME@ALIAS" or "NAME@VERSION") as an apply would, with the same
// errors.
func (s *Store) ResolveDeploymentModel(ref string) (*droverv1.ModelVersion, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, err := s.resolveDeploymentModelLocked(ref)
	if err != nil {
		return nil, err
	}
	return clone(v), nil
}
