package rollout

import (
	"fmt"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The operator's actions on a deployment's latest rollout. Each checks the
// rollout's state now and returns the one decision to propose, or an error
// wrapping ErrNotAllowed that says why and what would work. The FSM checks
// again when it applies the decision (ApplyTo), so an action that races
// with the controller loses cleanly with ErrStale instead of applying to a
// state it was not meant for.

// latest checks that r is dep's latest rollout and names it for messages.
func latest(op string, dep *droverv1.Deployment, r *droverv1.Rollout) (string, error) {
	name := dep.GetSpec().GetName()
	if r == nil {
		return "", fmt.Errorf("%s: deployment %s has no rollout yet: %w", op, name, ErrNotAllowed)
	}
	if r.GetDeployment() != name || r.GetId() != dep.GetRolloutId() {
		return "", fmt.Errorf("%s: rollout %d of %q is not the latest of %s (%d): %w", op, r.GetId(), r.GetDeployment(), name, dep.GetRolloutId(), ErrInvalid)
	}
	return fmt.Sprintf("rollout %d of %s", r.GetId(), name), nil
}

// Pause stops a PROGRESSING rollout: the controller starts nothing and
// judges nothing in it until Resume. Pausing does not roll back.
func Pause(dep *droverv1.Deployment, r *droverv1.Rollout, reason string, now time.Time) (SetState, error) {
	const op = "pause rollout"
	what, err := latest(op, dep, r)
	if err != nil {
		return SetState{}, err
	}
	switch r.GetState() {
	case droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING:
	case droverv1.RolloutState_ROLLOUT_STATE_PAUSED:
		return SetState{}, fmt.Errorf("%s: %s is already PAUSED; resume it to go on: %w", op, what, ErrNotAllowed)
	case droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION:
		return SetState{}, fmt.Errorf("%s: %s is AWAITING_PROMOTION and starts nothing until promoted; nothing to pause: %w", op, what, ErrNotAllowed)
	default:
		return SetState{}, fmt.Errorf("%s: %s is %s; nothing to pause: %w", op, what, stateName(r.GetState()), ErrNotAllowed)
	}
	return SetState{
		Deployment: dep.GetSpec().GetName(), RolloutID: r.GetId(),
		From: r.GetState(), To: droverv1.RolloutState_ROLLOUT_STATE_PAUSED,
		Reason: orDefault(reason, "paused by operator"), Time: now,
	}, nil
}

// Resume goes on with a PAUSED rollout where it stopped. An unfinished
// batch's clock restarts, so the pause does not count against its
// deadline.
func Resume(dep *droverv1.Deployment, r *droverv1.Rollout, reason string, now time.Time) (SetState, error) {
	const op = "resume rollout"
	what, err := latest(op, dep, r)
	if err != nil {
		return SetState{}, err
	}
	switch r.GetState() {
	case droverv1.RolloutState_ROLLOUT_STATE_PAUSED:
	case droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION:
		return SetState{}, fmt.Errorf("%s: %s is AWAITING_PROMOTION, not paused; promote it to go on: %w", op, what, ErrNotAllowed)
	default:
		return SetState{}, fmt.Errorf("%s: %s is %s; nothing to resume: %w", op, what, stateName(r.GetState()), ErrNotAllowed)
	}
	return SetState{
		Deployment: dep.GetSpec().GetName(), RolloutID: r.GetId(),
		From: r.GetState(), To: droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Reason: orDefault(reason, "resumed by operator"), Time: now, RestartBatch: true,
	}, nil
}

// Promote lets a rollout whose canary is done go on to its other batches.
func Promote(dep *droverv1.Deployment, r *droverv1.Rollout, reason string, now time.Time) (SetState, error) {
	const op = "promote rollout"
	what, err := latest(op, dep, r)
	if err != nil {
		return SetState{}, err
	}
	switch r.GetState() {
	case droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION:
	case droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING:
		return SetState{}, fmt.Errorf("%s: %s is PROGRESSING; only a rollout whose canary is done (AWAITING_PROMOTION) can be promoted: %w", op, what, ErrNotAllowed)
	case droverv1.RolloutState_ROLLOUT_STATE_PAUSED:
		return SetState{}, fmt.Errorf("%s: %s is PAUSED; resume it instead: %w", op, what, ErrNotAllowed)
	default:
		return SetState{}, fmt.Errorf("%s: %s is %s; nothing to promote: %w", op, what, stateName(r.GetState()), ErrNotAllowed)
	}
	return SetState{
		Deployment: dep.GetSpec().GetName(), RolloutID: r.GetId(),
		From: r.GetState(), To: droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING,
		Reason: orDefault(reason, "promoted by operator"), Time: now,
	}, nil
}

// Rollback starts a rollout from r's to_version back to its from_version,
// whatever r's state: a rollout still under way is superseded. by is the
// operator, recorded as the new rollout's created_by.
func Rollback(dep *droverv1.Deployment, r *droverv1.Rollout, by, reason string, now time.Time) (StartRollback, error) {
	const op = "roll back"
	what, err := latest(op, dep, r)
	if err != nil {
		return StartRollback{}, err
	}
	if r.GetFromVersion() == 0 {
		return StartRollback{}, fmt.Errorf("%s: %s was the deployment's first; there is no earlier version to go back to (delete the deployment to stop it): %w", op, what, ErrNotAllowed)
	}
	why := fmt.Sprintf("rollback of rollout %d", r.GetId())
	if reason != "" {
		why += ": " + reason
	}
	return StartRollback{
		Deployment: dep.GetSpec().GetName(),
		ID:         r.GetId() + 1,
		RollbackOf: r.GetId(),
		From:       r.GetToVersion(),
		To:         r.GetFromVersion(),
		Reason:     why,
		CreatedBy:  by,
		Time:       now,
	}, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
