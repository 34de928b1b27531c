package state

import (
	"fmt"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Audit actions written by the store's write methods. They are stable:
// operators filter on them and old events keep them forever.
const (
	ActionClusterInit   = "cluster.init"
	ActionACLBootstrap  = "acl.bootstrap"
	ActionModelCreate   = "model.create"
	ActionModelDelete   = "model.delete"
	ActionVersionCreate = "version.create"
	ActionAliasSet      = "alias.set"
	// ActionVersionReference: a version got its reference profile from
	// its canary's first windows.
	ActionVersionReference = "version.reference"
	ActionAliasDelete      = "alias.rm"
	ActionTokenCreate      = "token.create"
	ActionTokenRevoke      = "token.revoke"
	ActionNodeEnroll       = "node.enroll"
	ActionNodeRegister     = "node.register"
	ActionNodeStatus       = "node.status"
	ActionNodeDrain        = "node.drain"
	ActionNodeUndrain      = "node.undrain"
	ActionNodeLabel        = "node.label"
	ActionNodeRevoke       = "node.revoke"
	ActionNodePull         = "node.pull"
	// A node's agent reported conditions; node.cordon when they cordoned
	// the node, node.conditions when they only changed the record.
	ActionNodeCordon     = "node.cordon"
	ActionNodeConditions = "node.conditions"
	ActionNodeUncordon   = "node.uncordon"

	ActionACLPolicyApply  = "acl.policy.apply"
	ActionACLPolicyDelete = "acl.policy.rm"
	ActionACLTokenCreate  = "acl.token.create"
	ActionACLTokenRevoke  = "acl.token.revoke"
	ActionACLTokenRotate  = "acl.token.rotate"

	ActionKeyRegister = "key.register"
	ActionKeyRevoke   = "key.revoke"

	ActionDeploymentApply  = "deployment.apply"
	ActionDeploymentDelete = "deployment.delete"
	// The rollout controller's and the operators' rollout commands.
	ActionRolloutBatchStart  = "rollout.batch_start"
	ActionRolloutBatchDone   = "rollout.batch_done"
	ActionRolloutState       = "rollout.state"
	ActionRolloutRollback    = "rollout.rollback"
	ActionDeploymentAssign   = "deployment.assign"
	ActionDeploymentUnassign = "deployment.unassign"
	// ActionAccessDenied records a write call a server refused because
	// the caller's token lacks a capability (see [Store.RecordDenials]).
	ActionAccessDenied = "access.denied"
	// ActionSnapshotRestore is the newest event of a state restored from
	// an operator's snapshot (see [Snapshot.ForRestore]): who restored it
	// and from where.
	ActionSnapshotRestore = "snapshot.restore"
)

// ResultOK is the audit result of an applied command; a refused command
// records its error message instead.
const ResultOK = "ok"

// Anonymous is the audit actor of a command proposed without a token.
const Anonymous = "anonymous"

// Audit targets name the object a command acts on; they nest so that a
// prefix such as "model/resnet" selects a model and its versions and
// aliases.
func modelTarget(model string) string             { return "model/" + model }
func versionTarget(model string, v uint64) string { return fmt.Sprintf("model/%s/v%d", model, v) }
func aliasTarget(model, alias string) string      { return "model/" + model + "@" + alias }
func deploymentTarget(name string) string         { return "deployment/" + name }
func joinTokenTarget(id string) string            { return "token/" + id }
func nodeTarget(id string) string                 { return "node/" + id }
func aclTokenTarget(accessor string) string       { return "acl/token/" + accessor }
func aclPolicyTarget(name string) string          { return "acl/policy/" + name }

// nodesTarget is the target of a command that acts on several nodes at
// once; it is a prefix of every node's target.
const nodesTarget = "node/"

// newEvent builds the audit event of the command at idx.
func newEvent(idx uint64, meta *droverv1.CommandMeta, action, target string, details map[string]string, err error) *droverv1.AuditEvent {
	ev := &droverv1.AuditEvent{
		Index:     idx,
		Actor:     actorOf(meta),
		ActorName: meta.GetActorName(),
		Action:    action,
		Target:    target,
		Result:    ResultOK,
		Details:   details,
	}
	if t := meta.GetTime(); t != nil {
		ev.Time = clone(t)
	}
	if err != nil {
		ev.Result = err.Error()
	}
	return ev
}

// AppendAudit records an event for a command that reached the log but is
// not one of the store's write methods (for example a command the FSM
// could not decode or chose to skip), so that the audit log still shows who
// tried what. Like a write, it advances the index to ev.Index and wakes
// blocked readers. ev.Index must be greater than Index(); the store keeps a
// copy of ev.
func (s *Store) AppendAudit(ev *droverv1.AuditEvent) error {
	if ev == nil {
		return fmt.Errorf("append audit: nil event: %w", ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.GetIndex() <= s.index {
		return fmt.Errorf("append audit: event index %d is %w: the state is already at index %d", ev.GetIndex(), ErrInvalid, s.index)
	}
	s.appendAuditLocked(clone(ev))
	s.index = ev.GetIndex()
	s.notifyLocked()
	return nil
}

// appendAuditLocked appends ev and drops the oldest events beyond the
// retention. The slice is only ever appended to or resliced from the
// front, never written below its length, so a Snapshot may keep a
// sub-slice of it without copying. s.mu must be held for writing.
func (s *Store) appendAuditLocked(ev *droverv1.AuditEvent) {
	s.t.audit = append(s.t.audit, ev)
	if over := len(s.t.audit) - s.opts.AuditRetention; over > 0 {
		// The dropped slots are not cleared, because a Snapshot may still
		// be reading them; the garbage collector reclaims them once append
		// moves the slice to a new array, so memory stays bounded.
		s.t.audit = s.t.audit[over:]
	}
}

// Audit returns the most recent events (at most limit; limit <= 0 means
// all that are retained) with an index greater than afterIndex, a target
// starting with targetPrefix and, unless actor is empty, made by actor:
// the event's actor (an accessor id, "agent/NAME") or its actor_name (a
// token's name at the time) is actor. They come in ascending index order.
func (s *Store) Audit(afterIndex uint64, limit int, targetPrefix, actor string) []*droverv1.AuditEvent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*droverv1.AuditEvent
	for i := len(s.t.audit) - 1; i >= 0; i-- {
		ev := s.t.audit[i]
		if ev.GetIndex() <= afterIndex || (limit > 0 && len(out) == limit) {
			break
		}
		if strings.HasPrefix(ev.GetTarget(), targetPrefix) && (actor == "" || ev.GetActor() == actor || ev.GetActorName() == actor) {
			out = append(out, clone(ev))
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
