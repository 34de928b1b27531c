// Package acl decides what an operator token may do: the rules of its
// policies, the authorizer built from them, and the one table that says
// which capability every API call needs.
package acl

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/droverhq/drover/internal/names"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Built-in policies exist in every cluster, are never stored, and cannot be
// applied over or removed.
const (
	// PolicyManagement grants everything, including what later versions
	// of Drover add.
	PolicyManagement = "management"
	// PolicyReadOnly grants read on every resource.
	PolicyReadOnly = "read-only"
)

// ErrInvalidPolicy is wrapped by every refusal of ValidatePolicy.
var ErrInvalidPolicy = errors.New("invalid policy")

// maxDescription bounds a policy's description, which is replicated.
const maxDescription = 256

// maxRules bounds a policy's rules: every call of a token with the policy
// walks them.
const maxRules = 256

// Resources lists every resource a rule may name, in the order help texts
// and the read-only policy list them.
var Resources = []droverv1.ACLResource{
	droverv1.ACLResource_ACL_RESOURCE_MODEL,
	droverv1.ACLResource_ACL_RESOURCE_DEPLOYMENT,
	droverv1.ACLResource_ACL_RESOURCE_NODE,
	droverv1.ACLResource_ACL_RESOURCE_JOIN_TOKEN,
	droverv1.ACLResource_ACL_RESOURCE_TELEMETRY,
	droverv1.ACLResource_ACL_RESOURCE_AUDIT,
	droverv1.ACLResource_ACL_RESOURCE_OPERATOR,
}

// resourceInfo is what a resource is called in policy files and error
// messages, and which qualifiers its objects have.
type resourceInfo struct {
	name   string
	byName bool // objects have names: rules may give name or prefix
	bySite bool // objects belong to a site: rules may give site
	labels bool // objects carry labels: rules may give labels
}

var resources = map[droverv1.ACLResource]resourceInfo{
	droverv1.ACLResource_ACL_RESOURCE_MODEL:      {name: "model", byName: true},
	droverv1.ACLResource_ACL_RESOURCE_DEPLOYMENT: {name: "deployment", byName: true},
	droverv1.ACLResource_ACL_RESOURCE_NODE:       {name: "node", bySite: true, labels: true},
	droverv1.ACLResource_ACL_RESOURCE_JOIN_TOKEN: {name: "join_token", bySite: true},
	droverv1.ACLResource_ACL_RESOURCE_TELEMETRY:  {name: "telemetry"},
	droverv1.ACLResource_ACL_RESOURCE_AUDIT:      {name: "audit"},
	droverv1.ACLResource_ACL_RESOURCE_OPERATOR:   {name: "operator"},
}

var accessNames = map[droverv1.ACLAccess]string{
	droverv1.ACLAccess_ACL_ACCESS_READ:  "read",
	droverv1.ACLAccess_ACL_ACCESS_WRITE: "write",
	droverv1.ACLAccess_ACL_ACCESS_DENY:  "deny",
}

// ResourceName is the name of r in policy files ("model", "join_token").
func ResourceName(r droverv1.ACLResource) string {
	if info, ok := resources[r]; ok {
		return info.name
	}
	return fmt.Sprintf("resource(%d)", int32(r))
}

// ParseResource returns the resource a policy file names.
func ParseResource(s string) (droverv1.ACLResource, bool) {
	for r, info := range resources {
		if info.name == s {
			return r, true
		}
	}
	return droverv1.ACLResource_ACL_RESOURCE_UNSPECIFIED, false
}

// ResourceNames lists the names of every resource, for error messages.
func ResourceNames() string {
	out := make([]string, len(Resources))
	for i, r := range Resources {
		out[i] = ResourceName(r)
	}
	return strings.Join(out, ", ")
}

// AccessName is the name of a in policy files ("read", "write", "deny").
func AccessName(a droverv1.ACLAccess) string {
	if n, ok := accessNames[a]; ok {
		return n
	}
	return fmt.Sprintf("access(%d)", int32(a))
}

// ParseAccess returns the access a policy file names.
func ParseAccess(s string) (droverv1.ACLAccess, bool) {
	for a, n := range accessNames {
		if n == s {
			return a, true
		}
	}
	return droverv1.ACLAccess_ACL_ACCESS_UNSPECIFIED, false
}

// Builtin returns fresh copies of the built-in policies, management first.
func Builtin() []*droverv1.ACLPolicy {
	readOnly := &droverv1.ACLPolicy{
		Name:        PolicyReadOnly,
		Description: "Read everything; change nothing",
		Builtin:     true,
	}
	for _, r := range Resources {
		readOnly.Rules = append(readOnly.Rules, &droverv1.ACLRule{Resource: r, Access: droverv1.ACLAccess_ACL_ACCESS_READ})
	}
	management := &droverv1.ACLPolicy{
		Name:        PolicyManagement,
		Description: "Everything, including what later versions add",
		Builtin:     true,
	}
	for _, r := range Resources {
		management.Rules = append(management.Rules, &droverv1.ACLRule{Resource: r, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE})
	}
	return []*droverv1.ACLPolicy{management, readOnly}
}

// IsBuiltin reports whether name is a built-in policy's.
func IsBuiltin(name string) bool { return name == PolicyManagement || name == PolicyReadOnly }

// ValidatePolicy checks a policy an operator wants to apply: its name, and
// that every rule names a known resource and access and can match
// something. The error names the rule (counted from 1) and what to fix.
// It is deterministic, so the state machine uses it too.
func ValidatePolicy(p *droverv1.ACLPolicy) error {
	name := p.GetName()
	switch {
	case name == "":
		return fmt.Errorf("%w: the policy has no name", ErrInvalidPolicy)
	case IsBuiltin(name):
		return fmt.Errorf("%w: %q is a built-in policy and cannot be changed; choose another name", ErrInvalidPolicy, name)
	case !names.IsName(name):
		return fmt.Errorf("%w: name %q: %s", ErrInvalidPolicy, name, names.Rule)
	case len(p.GetDescription()) > maxDescription:
		return fmt.Errorf("%w: policy %q: the description is %d bytes, at most %d are allowed", ErrInvalidPolicy, name, len(p.GetDescription()), maxDescription)
	case len(p.GetRules()) == 0:
		return fmt.Errorf("%w: policy %q has no rules, so it would grant nothing; add at least one rule", ErrInvalidPolicy, name)
	case len(p.GetRules()) > maxRules:
		return fmt.Errorf("%w: policy %q has %d rules, at most %d are allowed", ErrInvalidPolicy, name, len(p.GetRules()), maxRules)
	}
	for i, r := range p.GetRules() {
		if err := validateRule(r); err != nil {
			return fmt.Errorf("%w: policy %q, rule %d: %w", ErrInvalidPolicy, name, i+1, err)
		}
	}
	return nil
}

func validateRule(r *droverv1.ACLRule) error {
	info, ok := resources[r.GetResource()]
	if !ok {
		return fmt.Errorf("unknown resource %s; use one of %s", ResourceName(r.GetResource()), ResourceNames())
	}
	if _, ok := accessNames[r.GetAccess()]; !ok {
		return fmt.Errorf("%s: unknown access %s; use read, write or deny", info.name, AccessName(r.GetAccess()))
	}
	// Qualifiers the resource's objects do not have would make the rule
	// match nothing, which is never what its author meant.
	switch {
	case !info.byName && (r.GetName() != "" || r.GetPrefix() != ""):
		return fmt.Errorf("%s objects have no names to match; remove name and prefix", info.name)
	case !info.bySite && r.GetSite() != "":
		return fmt.Errorf("%s objects belong to no site; remove site (sites apply to node and join_token)", info.name)
	case !info.labels && len(r.GetLabels()) > 0:
		return fmt.Errorf("%s objects carry no labels; remove labels (labels apply to node)", info.name)
	case r.GetName() != "" && r.GetPrefix() != "":
		return fmt.Errorf("%s: give name or prefix, not both", info.name)
	case r.GetName() != "" && !names.IsName(r.GetName()):
		return fmt.Errorf("%s: no object can be named %q (%s), so the rule would match nothing", info.name, r.GetName(), names.Rule)
	case r.GetPrefix() != "" && !isNamePrefix(r.GetPrefix()):
		return fmt.Errorf("%s: no name starts with %q (%s), so the rule would match nothing", info.name, r.GetPrefix(), names.Rule)
	case r.GetSite() != "" && !names.IsName(r.GetSite()):
		return fmt.Errorf("%s: no site can be named %q (%s), so the rule would match nothing", info.name, r.GetSite(), names.Rule)
	}
	for _, k := range slices.Sorted(maps.Keys(r.GetLabels())) {
		if !names.IsLabelKey(k) {
			return fmt.Errorf("%s: label %q is not a valid label name, so the rule would match nothing", info.name, k)
		}
		if v := r.GetLabels()[k]; !names.IsLabelValue(v) {
			return fmt.Errorf("%s: label %s=%q is not a valid label value, so the rule would match nothing", info.name, k, v)
		}
	}
	return nil
}

// isNamePrefix reports whether some valid name starts with p.
func isNamePrefix(p string) bool {
	if len(p) >= 63 {
		return names.IsName(p)
	}
	// Completing p with one letter makes it a name exactly when p can
	// start one (a trailing '-' or '.' is fine in a prefix).
	return names.IsName(p + "a")
}
