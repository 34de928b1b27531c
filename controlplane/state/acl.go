package state

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/internal/names"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// BootstrapTokenName is the name of the bootstrap token when the command
// gives none. Tokens bootstrapped before tokens had names get it too, when
// they are replayed from the log or restored from an older snapshot.
const BootstrapTokenName = "bootstrap"

// MaxDenialsPerCommand bounds the denials one record-denials command may
// carry. Each becomes an audit event, and the audit log keeps only
// [Options.AuditRetention] events, so one command must not be able to push
// out much of it.
const MaxDenialsPerCommand = 100

// maxInUseNames is how many referring tokens a refusal to delete a policy
// names before it only counts the rest.
const maxInUseNames = 3

// BootstrapACL applies the command that stores the first management
// token, once per cluster. The token carries only the SHA-256 of its
// secret. Its create and modify indexes are set to idx; when it has no
// create_time, the command's time is used; when it has no name, it is
// called [BootstrapTokenName]; when it has no policies, it gets the
// management policy, because the bootstrap token is the management token
// by definition (and tokens bootstrapped before policies existed could do
// everything).
func (s *Store) BootstrapACL(idx uint64, meta *droverv1.CommandMeta, token *droverv1.ACLToken) error {
	return s.write(idx, meta, ActionACLBootstrap, func() (string, map[string]string, error) {
		target := aclTokenTarget(token.GetAccessorId())
		if s.t.aclBootstrapped {
			return target, nil, fmt.Errorf("%w: use the management token it created", ErrACLBootstrapped)
		}
		t := clone(token)
		if t == nil {
			t = &droverv1.ACLToken{}
		}
		upgradeBootstrapToken(t)
		t.CreateIndex = idx
		t.ModifyIndex = idx
		if t.CreateTime == nil && meta.GetTime() != nil {
			t.CreateTime = clone(meta.GetTime())
		}
		if err := s.checkNewTokenLocked(meta, t); err != nil {
			return target, nil, err
		}
		s.putTokenLocked(idx, t)
		s.t.aclBootstrapped = true
		return target, map[string]string{"name": t.GetName()}, nil
	})
}

// upgradeBootstrapToken fills in what a bootstrap token made before tokens
// had names and policies lacks, the same way whether it comes from the log
// or from an older snapshot, so that every server ends with the same
// token.
func upgradeBootstrapToken(t *droverv1.ACLToken) {
	if t.Name == "" {
		t.Name = BootstrapTokenName
	}
	if len(t.Policies) == 0 {
		t.Policies = []string{acl.PolicyManagement}
	}
	if t.ModifyIndex == 0 {
		t.ModifyIndex = t.CreateIndex
	}
}

// CreateACLToken applies a create-token command and returns the new
// token. The token carries only the SHA-256 of its secret. Its create and
// modify indexes are set to idx and created_by to the command's actor;
// when it has no create_time, the command's time is used.
//
// It is refused when the accessor id, the secret or the name is taken, the
// name is not valid, the token has no policies or names one twice or one
// that does not exist, or it would expire no later than the command's
// time.
func (s *Store) CreateACLToken(idx uint64, meta *droverv1.CommandMeta, tok *droverv1.ACLToken) (*droverv1.ACLToken, error) {
	var out *droverv1.ACLToken
	err := s.write(idx, meta, ActionACLTokenCreate, func() (string, map[string]string, error) {
		target := aclTokenTarget(tok.GetAccessorId())
		t := clone(tok)
		if t == nil {
			t = &droverv1.ACLToken{}
		}
		t.CreatedBy = meta.GetActor()
		t.CreateIndex = idx
		t.ModifyIndex = idx
		t.RotateTime = nil
		if t.CreateTime == nil && meta.GetTime() != nil {
			t.CreateTime = clone(meta.GetTime())
		}
		if err := s.checkNewTokenLocked(meta, t); err != nil {
			return target, nil, err
		}
		s.putTokenLocked(idx, t)
		out = clone(t)
		details := map[string]string{"name": t.GetName(), "policies": strings.Join(t.GetPolicies(), ",")}
		if e := t.GetExpireTime(); e != nil {
			details["expire_time"] = formatTime(e)
		}
		return target, details, nil
	})
	return out, err
}

// checkNewTokenLocked checks a token about to be stored by BootstrapACL or
// CreateACLToken, its defaults already filled in, against the rules every
// stored token satisfies and against the tokens and policies there are.
// s.mu must be held.
func (s *Store) checkNewTokenLocked(meta *droverv1.CommandMeta, t *droverv1.ACLToken) error {
	if err := validateToken(t); err != nil {
		return err
	}
	if n := len(t.GetDescription()); n > maxDescriptionBytes {
		return fmt.Errorf("token %q description is %w: %d bytes is more than the %d allowed", t.GetName(), ErrInvalid, n, maxDescriptionBytes)
	}
	for _, ts := range []struct {
		name string
		t    *timestamppb.Timestamp
	}{{"create_time", t.GetCreateTime()}, {"expire_time", t.GetExpireTime()}} {
		if ts.t != nil {
			if err := ts.t.CheckValid(); err != nil {
				return fmt.Errorf("token %q %s is %w: %v", t.GetName(), ts.name, ErrInvalid, err)
			}
		}
	}
	if e := t.GetExpireTime(); e != nil {
		now := meta.GetTime()
		if now == nil {
			now = t.GetCreateTime()
		}
		if now == nil {
			return fmt.Errorf("token %q is %w: the command has no time to check its expire_time against", t.GetName(), ErrInvalid)
		}
		if !e.AsTime().After(now.AsTime()) {
			return fmt.Errorf("token %q expire_time is %w: %s is not after the time of creation %s; give a positive time to live", t.GetName(), ErrInvalid, formatTime(e), formatTime(now))
		}
	}
	if _, ok := s.t.tokens[t.GetAccessorId()]; ok {
		return fmt.Errorf("token accessor id %q %w", t.GetAccessorId(), ErrAlreadyExists)
	}
	if _, ok := s.t.secrets[[32]byte(t.GetSecretSha256())]; ok {
		// Only a broken random source repeats a secret; the message says
		// nothing about which token has it.
		return &refusal{msg: fmt.Sprintf("token %q: another token already has this secret; create the token again", t.GetName()), kind: ErrAlreadyExists}
	}
	if other := s.tokenByNameLocked(t.GetName()); other != nil {
		return &refusal{
			msg: fmt.Sprintf("token name %q is taken by token %s: choose another name, or revoke that token first with \"drover acl token revoke %s\"",
				t.GetName(), other.GetAccessorId(), t.GetName()),
			kind: ErrAlreadyExists,
		}
	}
	// ACLToken looks up accessor ids before names, so a name may not be
	// another token's accessor id, nor an accessor id another's name.
	if other, ok := s.t.tokens[t.GetName()]; ok {
		return &refusal{msg: fmt.Sprintf("token name %q is the accessor id of token %q: choose another name", t.GetName(), other.GetName()), kind: ErrAlreadyExists}
	}
	if other := s.tokenByNameLocked(t.GetAccessorId()); other != nil {
		return &refusal{msg: fmt.Sprintf("token accessor id %q is the name of another token: create the token again", t.GetAccessorId()), kind: ErrAlreadyExists}
	}
	for _, p := range t.GetPolicies() {
		if _, ok := s.t.policies[p]; !ok && !acl.IsBuiltin(p) {
			return &refusal{
				msg: fmt.Sprintf("token %q refers to policy %q, which does not exist: apply it first with \"drover acl policy apply\", or use a built-in policy (%s, %s)",
					t.GetName(), p, acl.PolicyManagement, acl.PolicyReadOnly),
				kind: ErrInvalid,
			}
		}
	}
	return nil
}

// validateToken checks what every stored token satisfies, new or restored
// from a snapshot (tokens from snapshots older than format 4 are upgraded
// first, see upgradeBootstrapToken).
func validateToken(t *droverv1.ACLToken) error {
	if t.GetAccessorId() == "" {
		return fmt.Errorf("token accessor id is %w: it is empty", ErrInvalid)
	}
	if n := len(t.GetSecretSha256()); n != 32 {
		return fmt.Errorf("token %q secret hash is %w: it is %d bytes, a SHA-256 is 32", t.GetAccessorId(), ErrInvalid, n)
	}
	if !names.IsName(t.GetName()) {
		return fmt.Errorf("token name %q is %w: %s, e.g. \"ci-vision\"", t.GetName(), ErrInvalid, names.Rule)
	}
	if len(t.GetPolicies()) == 0 {
		return fmt.Errorf("token %q is %w: it has no policies, so it could do nothing; give at least one", t.GetName(), ErrInvalid)
	}
	seen := make(map[string]bool, len(t.GetPolicies()))
	for _, p := range t.GetPolicies() {
		if seen[p] {
			return fmt.Errorf("token %q is %w: it names policy %q twice", t.GetName(), ErrInvalid, p)
		}
		seen[p] = true
	}
	return nil
}

// putTokenLocked stores a new or changed token (never modified after) and
// its secret. s.mu must be held for writing.
func (s *Store) putTokenLocked(idx uint64, t *droverv1.ACLToken) {
	s.t.tokens[t.GetAccessorId()] = t
	s.t.secrets[[32]byte(t.GetSecretSha256())] = t
	s.t.aclIndex = idx
}

// tokenByNameLocked returns the token with the given name, or nil. Tokens
// are few, so a scan costs less than keeping another index right. s.mu
// must be held.
func (s *Store) tokenByNameLocked(name string) *droverv1.ACLToken {
	for _, t := range s.t.tokens {
		if t.GetName() == name {
			return t
		}
	}
	return nil
}

// RevokeACLToken applies a revoke-token command: the token and its secret
// are removed, and the removed token is returned. Revoking an unknown
// token is refused with [ErrNotFound]. Revoking the last unexpired token
// with the management policy is refused with [ErrInUse]: a cluster
// without one could not be administered at all.
func (s *Store) RevokeACLToken(idx uint64, meta *droverv1.CommandMeta, accessor string) (*droverv1.ACLToken, error) {
	var out *droverv1.ACLToken
	err := s.write(idx, meta, ActionACLTokenRevoke, func() (string, map[string]string, error) {
		target := aclTokenTarget(accessor)
		t, ok := s.t.tokens[accessor]
		if !ok {
			return target, nil, fmt.Errorf("ACL token %q %w: list the tokens with \"drover acl token ls\"", accessor, ErrNotFound)
		}
		details := map[string]string{"name": t.GetName()}
		if slices.Contains(t.GetPolicies(), acl.PolicyManagement) && !s.otherManagementTokenLocked(meta, accessor) {
			return target, details, &refusal{
				msg: fmt.Sprintf("token %q is the last management token, and a cluster without one cannot be administered: create another token with the %q policy first",
					t.GetName(), acl.PolicyManagement),
				kind: ErrInUse,
			}
		}
		delete(s.t.tokens, accessor)
		delete(s.t.secrets, [32]byte(t.GetSecretSha256()))
		s.t.aclIndex = idx
		out = clone(t)
		return target, details, nil
	})
	return out, err
}

// otherManagementTokenLocked reports whether a token other than accessor
// has the management policy and has not expired at the command's time (an
// expired one administers nothing). s.mu must be held.
func (s *Store) otherManagementTokenLocked(meta *droverv1.CommandMeta, accessor string) bool {
	now := meta.GetTime()
	for id, t := range s.t.tokens {
		if id == accessor || !slices.Contains(t.GetPolicies(), acl.PolicyManagement) {
			continue
		}
		if e := t.GetExpireTime(); e == nil || (now != nil && e.AsTime().After(now.AsTime())) {
			return true
		}
	}
	return false
}

// RotateACLToken applies a rotate-token command: the token's secret hash
// becomes secretSHA256, so the old secret stops working, and its
// rotate_time becomes the command's time. It returns the changed token.
func (s *Store) RotateACLToken(idx uint64, meta *droverv1.CommandMeta, accessor string, secretSHA256 []byte) (*droverv1.ACLToken, error) {
	var out *droverv1.ACLToken
	err := s.write(idx, meta, ActionACLTokenRotate, func() (string, map[string]string, error) {
		target := aclTokenTarget(accessor)
		t, ok := s.t.tokens[accessor]
		if !ok {
			return target, nil, fmt.Errorf("ACL token %q %w: list the tokens with \"drover acl token ls\"", accessor, ErrNotFound)
		}
		details := map[string]string{"name": t.GetName()}
		if n := len(secretSHA256); n != 32 {
			return target, details, fmt.Errorf("token %q new secret hash is %w: it is %d bytes, a SHA-256 is 32", t.GetName(), ErrInvalid, n)
		}
		if _, taken := s.t.secrets[[32]byte(secretSHA256)]; taken {
			return target, details, &refusal{msg: fmt.Sprintf("token %q: a token already has the new secret; rotate again", t.GetName()), kind: ErrAlreadyExists}
		}
		n := shallowCopy(t)
		n.SecretSha256 = bytes.Clone(secretSHA256)
		n.ModifyIndex = idx
		n.RotateTime = nil
		if now := meta.GetTime(); now != nil {
			n.RotateTime = clone(now)
		}
		delete(s.t.secrets, [32]byte(t.GetSecretSha256()))
		s.putTokenLocked(idx, n)
		out = clone(n)
		return target, details, nil
	})
	return out, err
}

// ApplyACLPolicy applies an apply-policy command: the policy is created,
// or replaced whole when one of that name exists. It returns the stored
// policy and whether it replaced one. A replaced policy keeps its create
// index and time; the modify index and time are the command's. Built-in
// policies cannot be applied over.
func (s *Store) ApplyACLPolicy(idx uint64, meta *droverv1.CommandMeta, p *droverv1.ACLPolicy) (*droverv1.ACLPolicy, bool, error) {
	var (
		out      *droverv1.ACLPolicy
		replaced bool
	)
	err := s.write(idx, meta, ActionACLPolicyApply, func() (string, map[string]string, error) {
		name := p.GetName()
		target := aclPolicyTarget(name)
		if err := acl.ValidatePolicy(p); err != nil {
			return target, nil, &refusal{msg: err.Error(), kind: ErrInvalid}
		}
		if n := proto.Size(p); n > maxRecordBytes {
			return target, nil, fmt.Errorf("policy %q is %w: it is %d bytes encoded, more than the %d allowed", name, ErrInvalid, n, maxRecordBytes)
		}
		if c := p.GetCreateTime(); c != nil {
			if err := c.CheckValid(); err != nil {
				return target, nil, fmt.Errorf("policy %q create_time is %w: %v", name, ErrInvalid, err)
			}
		}
		stored := clone(p)
		stored.Builtin = false
		stored.ModifyIndex = idx
		stored.ModifyTime = nil
		if now := meta.GetTime(); now != nil {
			stored.ModifyTime = clone(now)
		}
		prev, ok := s.t.policies[name]
		if ok {
			stored.CreateIndex = prev.GetCreateIndex()
			stored.CreateTime = prev.GetCreateTime() // never modified in place, so it may be shared
		} else {
			stored.CreateIndex = idx
			if stored.CreateTime == nil && meta.GetTime() != nil {
				stored.CreateTime = clone(meta.GetTime())
			}
		}
		s.t.policies[name] = stored
		s.t.aclIndex = idx
		out, replaced = clone(stored), ok
		details := map[string]string{"rules": strconv.Itoa(len(stored.GetRules()))}
		if ok {
			details["replaced"] = "true"
		}
		return target, details, nil
	})
	return out, replaced, err
}

// DeleteACLPolicy applies a delete-policy command. Built-in policies
// cannot be deleted ([ErrInvalid]); a policy that tokens still refer to is
// refused with [ErrInUse], naming them, because removing it would silently
// change what they may do.
func (s *Store) DeleteACLPolicy(idx uint64, meta *droverv1.CommandMeta, name string) error {
	return s.write(idx, meta, ActionACLPolicyDelete, func() (string, map[string]string, error) {
		target := aclPolicyTarget(name)
		if acl.IsBuiltin(name) {
			return target, nil, &refusal{msg: fmt.Sprintf("policy %q is built in and cannot be deleted", name), kind: ErrInvalid}
		}
		p, ok := s.t.policies[name]
		if !ok {
			return target, nil, fmt.Errorf("ACL policy %q %w: list the policies with \"drover acl policy ls\"", name, ErrNotFound)
		}
		if users := s.tokenNamesWithPolicyLocked(name); len(users) > 0 {
			return target, nil, &refusal{
				msg:  fmt.Sprintf("policy %q is used by %s: revoke them first with \"drover acl token revoke NAME\"", name, describeTokenNames(users)),
				kind: ErrInUse,
			}
		}
		delete(s.t.policies, name)
		s.t.aclIndex = idx
		return target, map[string]string{"rules": strconv.Itoa(len(p.GetRules()))}, nil
	})
}

// tokenNamesWithPolicyLocked returns, sorted, the names of the tokens that
// refer to the policy. s.mu must be held.
func (s *Store) tokenNamesWithPolicyLocked(policy string) []string {
	var out []string
	for _, t := range s.t.tokens {
		if slices.Contains(t.GetPolicies(), policy) {
			out = append(out, t.GetName())
		}
	}
	slices.Sort(out)
	return out
}

// describeTokenNames names a few tokens for a message and counts the rest.
func describeTokenNames(names []string) string {
	quoted := make([]string, 0, maxInUseNames)
	for _, n := range names[:min(len(names), maxInUseNames)] {
		quoted = append(quoted, strconv.Quote(n))
	}
	out := "token " + quoted[0]
	if len(names) > 1 {
		out = "tokens " + strings.Join(quoted, ", ")
	}
	if rest := len(names) - maxInUseNames; rest > 0 {
		out += fmt.Sprintf(" and %d more", rest)
	}
	return out
}

// RecordDenials applies a record-denials command: write calls that a
// server refused for want of a capability, recorded in the audit log so
// that operators see who tried what.
//
// Unlike every other command, it appends one audit event per denial, all
// at idx, in the command's order. Each denial has its own actor (the
// refused token), and the audit log is filtered by actor: one event for
// the whole batch, made by the reporting server, would hide a token's
// refusals from "drover audit --actor NAME". Events therefore share an
// index when they come from one command; the log stays ordered by index,
// and a reader paging with after_index still sees a command's events all
// or none, because they are appended in one critical section.
//
// Each event's actor is the denial's accessor id (or [Anonymous]), its
// actor_name the token's name, its time the denial's (the command's when
// unset), its target the denial's or else the procedure, and its result
// "denied: needs CAPABILITY". An empty command, one with more than
// [MaxDenialsPerCommand] denials, or a denial without procedure or
// capability is refused, with one event that says so.
func (s *Store) RecordDenials(idx uint64, meta *droverv1.CommandMeta, denials []*droverv1.AccessDenial) error {
	return s.writeEvents(idx, func() ([]*droverv1.AuditEvent, error) {
		if err := validateDenials(denials); err != nil {
			return []*droverv1.AuditEvent{newEvent(idx, meta, ActionAccessDenied, "", nil, err)}, err
		}
		evs := make([]*droverv1.AuditEvent, len(denials))
		for i, d := range denials {
			evs[i] = denialEvent(idx, meta, d)
		}
		return evs, nil
	})
}

func validateDenials(denials []*droverv1.AccessDenial) error {
	switch n := len(denials); {
	case n == 0:
		return fmt.Errorf("record denials: the command is %w: it lists no denials", ErrInvalid)
	case n > MaxDenialsPerCommand:
		return fmt.Errorf("record denials: the command is %w: it lists %d denials, at most %d are allowed; send them in several commands", ErrInvalid, n, MaxDenialsPerCommand)
	}
	for i, d := range denials {
		if d.GetProcedure() == "" || d.GetCapability() == "" {
			return fmt.Errorf("record denials: denial %d is %w: it needs a procedure and a capability", i+1, ErrInvalid)
		}
		if t := d.GetTime(); t != nil {
			if err := t.CheckValid(); err != nil {
				return fmt.Errorf("record denials: denial %d time is %w: %v", i+1, ErrInvalid, err)
			}
		}
	}
	return nil
}

func denialEvent(idx uint64, meta *droverv1.CommandMeta, d *droverv1.AccessDenial) *droverv1.AuditEvent {
	ev := &droverv1.AuditEvent{
		Index:     idx,
		Actor:     cmp.Or(d.GetAccessorId(), Anonymous),
		ActorName: d.GetTokenName(),
		Action:    ActionAccessDenied,
		Target:    cmp.Or(d.GetTarget(), d.GetProcedure()),
		Result:    "denied: needs " + d.GetCapability(),
		Details: map[string]string{
			"procedure":  d.GetProcedure(),
			"capability": d.GetCapability(),
		},
	}
	if srv := d.GetServer(); srv != "" {
		ev.Details["server"] = srv
	}
	if n := d.GetSuppressed(); n > 0 {
		ev.Details["suppressed"] = strconv.FormatUint(uint64(n), 10)
	}
	if t := cmp.Or(d.GetTime(), meta.GetTime()); t != nil {
		ev.Time = clone(t)
	}
	return ev
}

// ACLIndex returns the Raft index of the last change to the tokens or
// policies: a token created (bootstrap included), revoked or rotated, a
// policy applied or deleted, or the whole state restored from a snapshot
// (which takes the restored index). It changes whenever what any token may
// do could have changed, so a cache of compiled permissions keyed by it
// is never stale. It is 0 before the first change.
func (s *Store) ACLIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.t.aclIndex
}

// ACLPolicy returns the stored policy with the given name. Built-in
// policies are not stored (see acl.Builtin), so they are not found here.
func (s *Store) ACLPolicy(name string) (*droverv1.ACLPolicy, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p, ok := s.t.policies[name]
	if !ok {
		return nil, fmt.Errorf("ACL policy %q %w", name, ErrNotFound)
	}
	return clone(p), nil
}

// ACLPolicies returns every stored policy, sorted by name; built-in ones
// are not among them.
func (s *Store) ACLPolicies() []*droverv1.ACLPolicy {
	s.mu.RLock()
	out := make([]*droverv1.ACLPolicy, 0, len(s.t.policies))
	for _, p := range s.t.policies {
		out = append(out, clone(p))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *droverv1.ACLPolicy) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// ACLToken returns the token with the given accessor id or, failing that,
// name.
func (s *Store) ACLToken(idOrName string) (*droverv1.ACLToken, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.t.tokens[idOrName]
	if !ok {
		t = s.tokenByNameLocked(idOrName)
	}
	if t == nil {
		return nil, fmt.Errorf("ACL token %q %w: give an accessor id or a token name; list the tokens with \"drover acl token ls\"", idOrName, ErrNotFound)
	}
	return clone(t), nil
}

// ACLTokens returns every token, expired ones included, sorted by name.
func (s *Store) ACLTokens() []*droverv1.ACLToken {
	s.mu.RLock()
	out := make([]*droverv1.ACLToken, 0, len(s.t.tokens))
	for _, t := range s.t.tokens {
		out = append(out, clone(t))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *droverv1.ACLToken) int {
		return cmp.Or(strings.Compare(a.GetName(), b.GetName()), strings.Compare(a.GetAccessorId(), b.GetAccessorId()))
	})
	return out
}

// TokenBySecretHash returns the token whose secret hashes to h.
func (s *Store) TokenBySecretHash(h [32]byte) (*droverv1.ACLToken, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.t.secrets[h]
	if !ok {
		return nil, false
	}
	return clone(t), true
}

// ResolveACLToken returns, in one consistent read, the token whose secret
// hashes to h, the stored policies it refers to in the token's order, and
// the [Store.ACLIndex] they belong to. Built-in policies are not stored and
// not returned; the caller adds them (see acl.Builtin). It is the hot path
// of every authenticated call, so it copies only the token and its own
// policies; callers cache what they build from the result by the index.
func (s *Store) ResolveACLToken(h [32]byte) (tok *droverv1.ACLToken, policies []*droverv1.ACLPolicy, aclIndex uint64, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.t.secrets[h]
	if !ok {
		return nil, nil, s.t.aclIndex, false
	}
	for _, name := range t.GetPolicies() {
		// A policy cannot be deleted while a token refers to it, so only
		// built-in ones are missing here.
		if p, found := s.t.policies[name]; found {
			policies = append(policies, clone(p))
		}
	}
	return clone(t), policies, s.t.aclIndex, true
}

// ACLBootstrapped reports whether the management token has been created.
func (s *Store) ACLBootstrapped() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.t.aclBootstrapped
}
