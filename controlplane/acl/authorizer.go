package acl

import (
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Object is what a rule is matched against: the fields of one object of a
// resource that rules can name. Resources whose objects have no name, site
// or labels use the zero Object.
type Object struct {
	Name   string
	Site   string
	Labels map[string]string
}

// Authorizer answers what one token may do. It is built once from the
// token's policies and is immutable, so any number of goroutines may use
// it at once.
type Authorizer struct {
	// management grants everything without looking at rules, so that
	// resources added later are covered too.
	management bool
	rules      map[droverv1.ACLResource][]*droverv1.ACLRule
}

// NewAuthorizer builds the authorizer of a token from its policies.
// Built-in policies may be given by value (from Builtin) like stored ones;
// a policy named management grants everything. The rules are shared, not
// copied: the caller must not modify them afterwards.
func NewAuthorizer(policies []*droverv1.ACLPolicy) *Authorizer {
	a := &Authorizer{rules: make(map[droverv1.ACLResource][]*droverv1.ACLRule)}
	for _, p := range policies {
		if p.GetName() == PolicyManagement {
			a.management = true
		}
		for _, r := range p.GetRules() {
			a.rules[r.GetResource()] = append(a.rules[r.GetResource()], r)
		}
	}
	return a
}

// Management reports whether the authorizer grants everything.
func (a *Authorizer) Management() bool { return a.management }

// Allowed reports whether access (read or write) on obj of resource r is
// granted: some matching rule grants it (write implies read) and no
// matching rule denies.
func (a *Authorizer) Allowed(r droverv1.ACLResource, access droverv1.ACLAccess, obj Object) bool {
	if a.management {
		return true
	}
	granted := false
	for _, rule := range a.rules[r] {
		if !matches(rule, obj) {
			continue
		}
		switch rule.GetAccess() {
		case droverv1.ACLAccess_ACL_ACCESS_DENY:
			return false
		case droverv1.ACLAccess_ACL_ACCESS_WRITE:
			granted = true
		case droverv1.ACLAccess_ACL_ACCESS_READ:
			granted = granted || access == droverv1.ACLAccess_ACL_ACCESS_READ
		}
	}
	return granted
}

// AllowedSome reports whether access on resource r may be granted for
// some object: a rule grants it and no rule without qualifiers denies the
// whole resource. A call that names no object yet (a listing, or one whose
// object is looked up later) is refused early when this is false.
func (a *Authorizer) AllowedSome(r droverv1.ACLResource, access droverv1.ACLAccess) bool {
	if a.management {
		return true
	}
	granted := false
	for _, rule := range a.rules[r] {
		switch rule.GetAccess() {
		case droverv1.ACLAccess_ACL_ACCESS_DENY:
			if unqualified(rule) {
				return false
			}
		case droverv1.ACLAccess_ACL_ACCESS_WRITE:
			granted = true
		case droverv1.ACLAccess_ACL_ACCESS_READ:
			granted = granted || access == droverv1.ACLAccess_ACL_ACCESS_READ
		}
	}
	return granted
}

func unqualified(r *droverv1.ACLRule) bool {
	return r.GetName() == "" && r.GetPrefix() == "" && r.GetSite() == "" && len(r.GetLabels()) == 0
}

// matches reports whether rule applies to obj. Qualifiers a rule leaves
// empty match everything.
func matches(rule *droverv1.ACLRule, obj Object) bool {
	if n := rule.GetName(); n != "" && n != obj.Name {
		return false
	}
	if p := rule.GetPrefix(); p != "" && !strings.HasPrefix(obj.Name, p) {
		return false
	}
	if s := rule.GetSite(); s != "" && s != obj.Site {
		return false
	}
	for k, v := range rule.GetLabels() {
		if got, ok := obj.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
