package state

import (
	"fmt"
	"slices"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Node condition kinds an agent may report; anything else is refused, so
// that a typo cannot cordon a fleet under a name no one documents.
var conditionKinds = map[string]bool{
	"gpu_xid":               true,
	"gpu_ecc_uncorrectable": true,
	"gpu_thermal":           true,
	"disk_pressure":         true,
}

// MaxNodeConditions bounds the conditions one node records: a kind per GPU
// of a large machine, and its disk.
const MaxNodeConditions = 64

// ValidateConditions checks conditions as a heartbeat or a command carries
// them: known kinds, a since, bounded details.
func ValidateConditions(cs []*droverv1.NodeCondition) error {
	if len(cs) > MaxNodeConditions {
		return fmt.Errorf("conditions are %w: %d of them, more than the %d allowed", ErrInvalid, len(cs), MaxNodeConditions)
	}
	for i, c := range cs {
		if !conditionKinds[c.GetKind()] {
			return fmt.Errorf("condition %d is %w: kind %q is not one of gpu_xid, gpu_ecc_uncorrectable, gpu_thermal, disk_pressure", i, ErrInvalid, c.GetKind())
		}
		if c.GetSince() == nil {
			return fmt.Errorf("condition %d (%s) is %w: it has no since", i, c.GetKind(), ErrInvalid)
		}
		if n := len(c.GetDetail()) + len(c.GetGpuUuid()); n > MaxReasonBytes {
			return fmt.Errorf("condition %d (%s) is %w: its detail and GPU are %d bytes, more than the %d allowed", i, c.GetKind(), ErrInvalid, n, MaxReasonBytes)
		}
	}
	return nil
}

// NewConditions returns the conditions of reported that are new
// occurrences against recorded: absent from it (by kind and GPU), or
// begun later than the recorded one. A condition that persists, reported
// again with the same since, is not new, so it does not cordon a node an
// operator uncordoned; one that cleared and came back, or a second Xid,
// has a later since and is.
func NewConditions(recorded, reported []*droverv1.NodeCondition) []*droverv1.NodeCondition {
	type key struct{ kind, gpu string }
	seen := make(map[key]*droverv1.NodeCondition, len(recorded))
	for _, c := range recorded {
		seen[key{c.GetKind(), c.GetGpuUuid()}] = c
	}
	var out []*droverv1.NodeCondition
	for _, c := range reported {
		old, ok := seen[key{c.GetKind(), c.GetGpuUuid()}]
		if !ok || c.GetSince().AsTime().After(old.GetSince().AsTime()) {
			out = append(out, c)
		}
	}
	return out
}

// SortConditions sorts conditions by kind then GPU, the order nodes keep
// them in.
func SortConditions(cs []*droverv1.NodeCondition) {
	slices.SortFunc(cs, func(a, b *droverv1.NodeCondition) int {
		if c := strings.Compare(a.GetKind(), b.GetKind()); c != 0 {
			return c
		}
		return strings.Compare(a.GetGpuUuid(), b.GetGpuUuid())
	})
}

// ConditionsEqual reports whether two sorted lists of conditions are the
// same, details included, so the leader writes only changes.
func ConditionsEqual(a, b []*droverv1.NodeCondition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.GetKind() != y.GetKind() || x.GetGpuUuid() != y.GetGpuUuid() || x.GetDetail() != y.GetDetail() ||
			!x.GetSince().AsTime().Equal(y.GetSince().AsTime()) {
			return false
		}
	}
	return true
}

// ConditionReason is how a condition reads as a cordon reason.
func ConditionReason(c *droverv1.NodeCondition) string {
	s := c.GetKind()
	if c.GetGpuUuid() != "" {
		s += " on " + c.GetGpuUuid()
	}
	if c.GetDetail() != "" {
		s += ": " + c.GetDetail()
	}
	return s
}

// SetNodeConditions applies a set-node-conditions command: the node's
// conditions become conditions, and with cordon the node is cordoned with
// reason. The audit action is node.cordon when it cordons and
// node.conditions otherwise; details name the reason and the conditions.
func (s *Store) SetNodeConditions(idx uint64, meta *droverv1.CommandMeta, nodeID string, conditions []*droverv1.NodeCondition, cordon bool, reason string) (*droverv1.Node, error) {
	action := ActionNodeConditions
	if cordon {
		action = ActionNodeCordon
	}
	var out *droverv1.Node
	err := s.write(idx, meta, action, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		if err := ValidateConditions(conditions); err != nil {
			return target, nil, err
		}
		if len(reason) > MaxReasonBytes {
			return target, nil, fmt.Errorf("cordon reason is %w: %d bytes, more than the %d allowed", ErrInvalid, len(reason), MaxReasonBytes)
		}
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		conditions = slices.Clone(conditions)
		SortConditions(conditions)
		cur = shallowCopy(cur)
		cur.Conditions = make([]*droverv1.NodeCondition, len(conditions))
		names := make([]string, len(conditions))
		for i, c := range conditions {
			cur.Conditions[i] = clone(c)
			names[i] = c.GetKind()
			if c.GetGpuUuid() != "" {
				names[i] += "/" + c.GetGpuUuid()
			}
		}
		details := map[string]string{}
		if len(names) > 0 {
			details["conditions"] = strings.Join(names, ",")
		}
		if cordon {
			cur.Cordoned = true
			cur.CordonReason = reason
			details["reason"] = reason
		}
		cur.ModifyIndex = idx
		s.t.nodes[nodeID] = cur
		out = clone(cur)
		return target, details, nil
	})
	return out, err
}

// UncordonNode applies an uncordon command (audit action node.uncordon):
// the node takes placements again. Its conditions and cordon reason stay
// recorded. Uncordoning a node that is not cordoned changes nothing but is
// still audited.
func (s *Store) UncordonNode(idx uint64, meta *droverv1.CommandMeta, nodeID string) (*droverv1.Node, error) {
	var out *droverv1.Node
	err := s.write(idx, meta, ActionNodeUncordon, func() (string, map[string]string, error) {
		target := nodeTarget(nodeID)
		cur, ok := s.t.nodes[nodeID]
		if !ok {
			return target, nil, fmt.Errorf("node %q %w", nodeID, ErrNotFound)
		}
		var details map[string]string
		if cur.GetCordoned() {
			details = map[string]string{"reason": cur.GetCordonReason()}
			cur = shallowCopy(cur)
			cur.Cordoned = false
			cur.ModifyIndex = idx
			s.t.nodes[nodeID] = cur
		}
		out = clone(cur)
		return target, details, nil
	})
	return out, err
}

// cloneConditions deep-copies conditions; nil stays nil.
func cloneConditions(cs []*droverv1.NodeCondition) []*droverv1.NodeCondition {
	if cs == nil {
		return nil
	}
	out := make([]*droverv1.NodeCondition, len(cs))
	for i, c := range cs {
		out[i] = clone(c)
	}
	return out
}
