package state_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// rootAccessor is the bootstrap token of aclFixture.
const rootAccessor = "acc-root"

// opMeta is the meta of a command made with a named operator token.
func opMeta(accessor, name string) *droverv1.CommandMeta {
	m := meta(accessor)
	m.ActorName = name
	return m
}

// rootMeta is the meta of a command made with the bootstrap token.
func rootMeta() *droverv1.CommandMeta { return opMeta(rootAccessor, state.BootstrapTokenName) }

func secretOf(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// aclToken returns a valid new token named name whose secret is the name's
// hash; change fields to make it invalid.
func aclToken(accessor, name string, policies ...string) *droverv1.ACLToken {
	h := secretOf(name)
	return &droverv1.ACLToken{AccessorId: accessor, Name: name, SecretSha256: h[:], Policies: policies}
}

func modelWritePolicy(name string) *droverv1.ACLPolicy {
	return &droverv1.ACLPolicy{
		Name:        name,
		Description: "Publish vision models",
		Rules: []*droverv1.ACLRule{
			{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE, Prefix: "vision-"},
		},
	}
}

// aclFixture returns a fixture whose ACL is bootstrapped with the
// management token rootAccessor.
func aclFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	h := secretOf("root secret")
	if err := f.s.BootstrapACL(f.next(), meta(""), &droverv1.ACLToken{AccessorId: rootAccessor, SecretSha256: h[:], Policies: []string{acl.PolicyManagement}}); err != nil {
		t.Fatalf("BootstrapACL: %v", err)
	}
	return f
}

func (f *fixture) policy(p *droverv1.ACLPolicy) *droverv1.ACLPolicy {
	f.t.Helper()
	out, _, err := f.s.ApplyACLPolicy(f.next(), rootMeta(), p)
	if err != nil {
		f.t.Fatalf("ApplyACLPolicy(%q): %v", p.GetName(), err)
	}
	return out
}

func (f *fixture) aclToken(tok *droverv1.ACLToken) *droverv1.ACLToken {
	f.t.Helper()
	out, err := f.s.CreateACLToken(f.next(), rootMeta(), tok)
	if err != nil {
		f.t.Fatalf("CreateACLToken(%q): %v", tok.GetName(), err)
	}
	return out
}

func TestBootstrapTokenGetsNameAndPolicy(t *testing.T) {
	f := newFixture(t)
	h := secretOf("root secret")
	idx := f.next()
	if err := f.s.BootstrapACL(idx, meta(""), &droverv1.ACLToken{AccessorId: rootAccessor, SecretSha256: h[:]}); err != nil {
		t.Fatal(err)
	}
	tok, err := f.s.ACLToken(state.BootstrapTokenName)
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetAccessorId() != rootAccessor || len(tok.GetPolicies()) != 1 || tok.GetPolicies()[0] != acl.PolicyManagement ||
		tok.GetCreateIndex() != idx || tok.GetModifyIndex() != idx || tok.GetCreatedBy() != "" {
		t.Errorf("bootstrap token = %v", tok)
	}
	if f.s.ACLIndex() != idx {
		t.Errorf("ACLIndex() = %d after bootstrap at %d", f.s.ACLIndex(), idx)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["name"] != state.BootstrapTokenName {
		t.Errorf("bootstrap audit event = %v", ev)
	}
	// A name the command gives is kept.
	g := newFixture(t)
	if err := g.s.BootstrapACL(g.next(), meta(""), aclToken("acc", "root", acl.PolicyManagement)); err != nil {
		t.Fatal(err)
	}
	if tok, err := g.s.ACLToken("root"); err != nil || tok.GetAccessorId() != "acc" {
		t.Errorf("ACLToken(root) = %v, %v", tok, err)
	}
}

func TestCreateACLToken(t *testing.T) {
	f := aclFixture(t)
	f.policy(modelWritePolicy("vision"))
	expire := timestamppb.New(now.Add(time.Hour))
	in := aclToken("acc-ci", "ci-vision", "vision", acl.PolicyReadOnly)
	in.Description = "CI of the vision team"
	in.ExpireTime = expire
	in.RotateTime = timestamppb.New(now) // a new token has not been rotated
	idx := f.next()
	tok, err := f.s.CreateACLToken(idx, rootMeta(), in)
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetName() != "ci-vision" || tok.GetCreateIndex() != idx || tok.GetModifyIndex() != idx || tok.GetCreatedBy() != rootAccessor ||
		!tok.GetCreateTime().AsTime().Equal(now) || !proto.Equal(tok.GetExpireTime(), expire) || tok.GetRotateTime() != nil {
		t.Errorf("created token = %v", tok)
	}
	want := &droverv1.AuditEvent{
		Index: idx, Time: timestamppb.New(now), Actor: rootAccessor, ActorName: state.BootstrapTokenName,
		Action: state.ActionACLTokenCreate, Target: "acl/token/acc-ci", Result: state.ResultOK,
		Details: map[string]string{"name": "ci-vision", "policies": "vision,read-only", "expire_time": "2025-01-02T04:04:05Z"},
	}
	if ev := lastAudit(t, f.s); !proto.Equal(ev, want) {
		t.Errorf("audit event\n got %v\nwant %v", ev, want)
	}

	// The token is found by accessor id, by name and by its secret.
	for _, id := range []string{"acc-ci", "ci-vision"} {
		if got, err := f.s.ACLToken(id); err != nil || !proto.Equal(got, tok) {
			t.Errorf("ACLToken(%q) = %v, %v", id, got, err)
		}
	}
	if got, ok := f.s.TokenBySecretHash(secretOf("ci-vision")); !ok || !proto.Equal(got, tok) {
		t.Errorf("TokenBySecretHash = %v, %v", got, ok)
	}
	if _, err := f.s.ACLToken("nobody"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("ACLToken(nobody) = %v, want ErrNotFound", err)
	}
	f.aclToken(aclToken("acc-a", "alice", acl.PolicyReadOnly))
	var names []string
	for _, tok := range f.s.ACLTokens() {
		names = append(names, tok.GetName())
	}
	if got := strings.Join(names, " "); got != "alice bootstrap ci-vision" {
		t.Errorf("ACLTokens() names = %s, want them sorted", got)
	}
}

func TestCreateACLTokenRefusals(t *testing.T) {
	f := aclFixture(t)
	f.policy(modelWritePolicy("vision"))
	f.aclToken(aclToken("acc-ci", "ci-vision", "vision"))
	with := func(mod func(*droverv1.ACLToken)) *droverv1.ACLToken {
		tok := aclToken("acc-new", "new", "vision")
		mod(tok)
		return tok
	}
	tests := []struct {
		name    string
		tok     *droverv1.ACLToken
		want    droverv1.ErrorReason
		mention string
	}{
		{"no accessor", with(func(t *droverv1.ACLToken) { t.AccessorId = "" }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "accessor id"},
		{"accessor taken", with(func(t *droverv1.ACLToken) { t.AccessorId = "acc-ci" }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "acc-ci"},
		{"accessor is a name", with(func(t *droverv1.ACLToken) { t.AccessorId = "ci-vision" }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "name of another token"},
		{"short secret hash", with(func(t *droverv1.ACLToken) { t.SecretSha256 = t.SecretSha256[:8] }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "SHA-256"},
		{"secret taken", with(func(t *droverv1.ACLToken) { h := secretOf("ci-vision"); t.SecretSha256 = h[:] }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "secret"},
		{"no name", with(func(t *droverv1.ACLToken) { t.Name = "" }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "lowercase"},
		{"bad name", with(func(t *droverv1.ACLToken) { t.Name = "CI Vision" }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "lowercase"},
		{"name taken", with(func(t *droverv1.ACLToken) { t.Name = "ci-vision" }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "taken by token acc-ci"},
		{"bootstrap name taken", with(func(t *droverv1.ACLToken) { t.Name = state.BootstrapTokenName }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, rootAccessor},
		{"name is an accessor", with(func(t *droverv1.ACLToken) { t.Name = "acc-ci" }), droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "accessor id of token"},
		{"no policies", with(func(t *droverv1.ACLToken) { t.Policies = nil }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "no policies"},
		{"policy twice", with(func(t *droverv1.ACLToken) { t.Policies = []string{"vision", "read-only", "vision"} }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, `"vision" twice`},
		{"missing policy", with(func(t *droverv1.ACLToken) { t.Policies = []string{"read-only", "nlp"} }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, `policy "nlp", which does not exist: apply it first with "drover acl policy apply"`},
		{"long description", with(func(t *droverv1.ACLToken) { t.Description = strings.Repeat("x", 2000) }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "description"},
		{"expires at creation", with(func(t *droverv1.ACLToken) { t.ExpireTime = timestamppb.New(now) }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "not after"},
		{"expired", with(func(t *droverv1.ACLToken) { t.ExpireTime = timestamppb.New(now.Add(-time.Hour)) }), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "expire_time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.t = t
			before, aclIdx := f.s.ACLTokens(), f.s.ACLIndex()
			idx := f.next()
			tok, err := f.s.CreateACLToken(idx, rootMeta(), tt.tok)
			if err == nil || state.Reason(err) != tt.want || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("CreateACLToken = %v; want %v mentioning %q", err, tt.want, tt.mention)
			}
			if tok != nil {
				t.Errorf("a refusal returned a token: %v", tok)
			}
			if after := f.s.ACLTokens(); len(after) != len(before) || f.s.ACLIndex() != aclIdx {
				t.Errorf("a refused create changed the tokens: %d → %d tokens, ACL index %d → %d", len(before), len(after), aclIdx, f.s.ACLIndex())
			}
			if ev := lastAudit(t, f.s); ev.GetIndex() != idx || ev.GetResult() != err.Error() || ev.GetAction() != state.ActionACLTokenCreate {
				t.Errorf("audit event = %v", ev)
			}
		})
	}
	// The variations refused above are of a valid token.
	f.t = t
	f.aclToken(aclToken("acc-new", "new", "vision"))
}

func TestRevokeACLToken(t *testing.T) {
	f := aclFixture(t)
	ci := f.aclToken(aclToken("acc-ci", "ci", acl.PolicyReadOnly))
	idx := f.next()
	got, err := f.s.RevokeACLToken(idx, rootMeta(), "acc-ci")
	if err != nil || !proto.Equal(got, ci) {
		t.Fatalf("RevokeACLToken = %v, %v; want the token it removed", got, err)
	}
	if _, ok := f.s.TokenBySecretHash(secretOf("ci")); ok {
		t.Error("a revoked token's secret still resolves")
	}
	if _, err := f.s.ACLToken("ci"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("ACLToken(revoked) = %v", err)
	}
	if ev := lastAudit(t, f.s); ev.GetTarget() != "acl/token/acc-ci" || ev.GetAction() != state.ActionACLTokenRevoke || ev.GetDetails()["name"] != "ci" {
		t.Errorf("audit event = %v", ev)
	}
	// The name is free again.
	f.aclToken(aclToken("acc-ci2", "ci", acl.PolicyReadOnly))

	if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), "acc-ci"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("revoking a revoked token = %v, want ErrNotFound", err)
	}

	// The last management token stays, whoever asks; an expired one does
	// not count as another.
	lastManagement := func() {
		t.Helper()
		_, err := f.s.RevokeACLToken(f.next(), rootMeta(), rootAccessor)
		if state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_IN_USE || !strings.Contains(err.Error(), "last management token") ||
			!strings.Contains(err.Error(), "create another") {
			t.Fatalf("revoking the last management token = %v; want IN_USE saying to create another first", err)
		}
		if _, err := f.s.ACLToken(rootAccessor); err != nil {
			t.Errorf("the refused revoke removed the token: %v", err)
		}
	}
	lastManagement()
	expiring := aclToken("acc-tmp", "tmp-admin", acl.PolicyManagement)
	expiring.ExpireTime = timestamppb.New(now.Add(time.Minute))
	f.aclToken(expiring)
	if _, err := f.s.RevokeACLToken(f.next(), metaAt(rootAccessor, now.Add(time.Hour)), rootAccessor); state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_IN_USE {
		t.Errorf("revoking the last unexpired management token = %v, want IN_USE", err)
	}
	f.aclToken(aclToken("acc-admin", "admin", acl.PolicyManagement, acl.PolicyReadOnly))
	if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), rootAccessor); err != nil {
		t.Fatalf("revoking the bootstrap token with another management token = %v", err)
	}
	if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), "acc-tmp"); err != nil {
		t.Fatalf("revoking a management token that is not the last = %v", err)
	}
	_, err = f.s.RevokeACLToken(f.next(), rootMeta(), "acc-admin")
	if state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_IN_USE {
		t.Errorf("revoking the last management token = %v, want IN_USE", err)
	}
	if !f.s.ACLBootstrapped() {
		t.Error("ACL no longer bootstrapped after revoking the bootstrap token")
	}
}

func TestRotateACLToken(t *testing.T) {
	f := aclFixture(t)
	ci := f.aclToken(aclToken("acc-ci", "ci", acl.PolicyReadOnly))
	newSecret := secretOf("new secret")
	later := now.Add(time.Hour)
	idx := f.next()
	got, err := f.s.RotateACLToken(idx, metaAt(rootAccessor, later), "acc-ci", newSecret[:])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.GetSecretSha256(), newSecret[:]) || !got.GetRotateTime().AsTime().Equal(later) || got.GetModifyIndex() != idx ||
		got.GetCreateIndex() != ci.GetCreateIndex() || got.GetName() != "ci" || !proto.Equal(got.GetCreateTime(), ci.GetCreateTime()) {
		t.Errorf("rotated token = %v", got)
	}
	if _, ok := f.s.TokenBySecretHash(secretOf("ci")); ok {
		t.Error("the old secret still resolves")
	}
	if tok, ok := f.s.TokenBySecretHash(newSecret); !ok || !proto.Equal(tok, got) {
		t.Errorf("the new secret resolves to %v, %v", tok, ok)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionACLTokenRotate || ev.GetTarget() != "acl/token/acc-ci" || ev.GetDetails()["name"] != "ci" {
		t.Errorf("audit event = %v", ev)
	}

	rootSecret := secretOf("root secret")
	for _, tt := range []struct {
		name     string
		accessor string
		secret   []byte
		want     droverv1.ErrorReason
	}{
		{"unknown token", "acc-nope", newSecret[:], droverv1.ErrorReason_ERROR_REASON_NOT_FOUND},
		{"short hash", "acc-ci", newSecret[:16], droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
		{"another token's secret", "acc-ci", rootSecret[:], droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS},
		{"its own secret", "acc-ci", newSecret[:], droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS},
	} {
		aclIdx := f.s.ACLIndex()
		if _, err := f.s.RotateACLToken(f.next(), rootMeta(), tt.accessor, tt.secret); state.Reason(err) != tt.want {
			t.Errorf("%s: RotateACLToken = %v, want %v", tt.name, err, tt.want)
		}
		if tok, ok := f.s.TokenBySecretHash(newSecret); !ok || !proto.Equal(tok, got) || f.s.ACLIndex() != aclIdx {
			t.Errorf("%s: a refused rotate changed the token: %v", tt.name, tok)
		}
	}
}

func TestApplyACLPolicy(t *testing.T) {
	f := aclFixture(t)
	in := modelWritePolicy("vision")
	in.Builtin = true // not the caller's to say
	in.CreateIndex, in.ModifyIndex = 99, 99
	idx := f.next()
	p, replaced, err := f.s.ApplyACLPolicy(idx, rootMeta(), in)
	if err != nil || replaced {
		t.Fatalf("ApplyACLPolicy = %v, replaced %v", err, replaced)
	}
	if p.GetBuiltin() || p.GetCreateIndex() != idx || p.GetModifyIndex() != idx || !p.GetCreateTime().AsTime().Equal(now) ||
		!p.GetModifyTime().AsTime().Equal(now) || !proto.Equal(p.GetRules()[0], in.GetRules()[0]) {
		t.Errorf("applied policy = %v", p)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionACLPolicyApply || ev.GetTarget() != "acl/policy/vision" || ev.GetDetails()["rules"] != "1" || ev.GetDetails()["replaced"] != "" {
		t.Errorf("audit event = %v", ev)
	}

	// Applying again replaces the rules and keeps the creation.
	in = modelWritePolicy("vision")
	in.Rules = append(in.Rules, &droverv1.ACLRule{Resource: droverv1.ACLResource_ACL_RESOURCE_AUDIT, Access: droverv1.ACLAccess_ACL_ACCESS_READ})
	later := now.Add(time.Hour)
	idx2 := f.next()
	p2, replaced, err := f.s.ApplyACLPolicy(idx2, metaAt(rootAccessor, later), in)
	if err != nil || !replaced {
		t.Fatalf("ApplyACLPolicy again = %v, replaced %v", err, replaced)
	}
	if p2.GetCreateIndex() != idx || p2.GetModifyIndex() != idx2 || !p2.GetCreateTime().AsTime().Equal(now) || !p2.GetModifyTime().AsTime().Equal(later) || len(p2.GetRules()) != 2 {
		t.Errorf("replaced policy = %v", p2)
	}
	if got, err := f.s.ACLPolicy("vision"); err != nil || !proto.Equal(got, p2) {
		t.Errorf("ACLPolicy(vision) = %v, %v", got, err)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["replaced"] != "true" || ev.GetDetails()["rules"] != "2" {
		t.Errorf("audit event = %v", ev)
	}
	f.policy(modelWritePolicy("audit"))
	if ps := f.s.ACLPolicies(); len(ps) != 2 || ps[0].GetName() != "audit" || ps[1].GetName() != "vision" {
		t.Errorf("ACLPolicies() = %v, want the two stored ones sorted", ps)
	}
	// Built-in policies are not stored.
	if _, err := f.s.ACLPolicy(acl.PolicyManagement); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("ACLPolicy(management) = %v, want ErrNotFound", err)
	}

	bad := modelWritePolicy("bad")
	bad.Rules[0].Site = "eu" // models belong to no site
	for _, tt := range []struct {
		name    string
		p       *droverv1.ACLPolicy
		mention string
	}{
		{"built-in name", modelWritePolicy(acl.PolicyManagement), "built-in"},
		{"no name", modelWritePolicy(""), "no name"},
		{"bad name", modelWritePolicy("Vision"), "Vision"},
		{"no rules", &droverv1.ACLPolicy{Name: "empty"}, "no rules"},
		{"rule matching nothing", bad, "rule 1"},
		{"nil", nil, "no name"},
	} {
		aclIdx := f.s.ACLIndex()
		p, _, err := f.s.ApplyACLPolicy(f.next(), rootMeta(), tt.p)
		if state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT || !strings.Contains(err.Error(), tt.mention) || p != nil {
			t.Errorf("%s: ApplyACLPolicy = %v, %v; want INVALID_ARGUMENT mentioning %q", tt.name, p, err, tt.mention)
		}
		if len(f.s.ACLPolicies()) != 2 || f.s.ACLIndex() != aclIdx {
			t.Errorf("%s: a refused apply changed the policies", tt.name)
		}
	}
}

func TestDeleteACLPolicy(t *testing.T) {
	f := aclFixture(t)
	f.policy(modelWritePolicy("vision"))
	f.policy(modelWritePolicy("unused"))
	for i, name := range []string{"e", "d", "c", "b", "a"} {
		f.aclToken(aclToken(fmt.Sprintf("acc-%d", i), name, acl.PolicyReadOnly, "vision"))
	}

	for _, tt := range []struct {
		name, policy string
		want         droverv1.ErrorReason
		mention      string
	}{
		{"built-in", acl.PolicyReadOnly, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, `"read-only" is built in`},
		{"missing", "nlp", droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "nlp"},
		{"in use", "vision", droverv1.ErrorReason_ERROR_REASON_IN_USE, `used by tokens "a", "b", "c" and 2 more: revoke them first`},
	} {
		err := f.s.DeleteACLPolicy(f.next(), rootMeta(), tt.policy)
		if state.Reason(err) != tt.want || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("%s: DeleteACLPolicy(%q) = %v; want %v mentioning %q", tt.name, tt.policy, err, tt.want, tt.mention)
		}
		if ev := lastAudit(t, f.s); ev.GetResult() != err.Error() || ev.GetTarget() != "acl/policy/"+tt.policy {
			t.Errorf("%s: audit event = %v", tt.name, ev)
		}
	}
	if _, err := f.s.ACLPolicy("vision"); err != nil {
		t.Fatalf("a refused delete removed the policy: %v", err)
	}

	idx := f.next()
	if err := f.s.DeleteACLPolicy(idx, rootMeta(), "unused"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.ACLPolicy("unused"); !errors.Is(err, state.ErrNotFound) || f.s.ACLIndex() != idx {
		t.Errorf("after delete: ACLPolicy = %v, ACLIndex %d", err, f.s.ACLIndex())
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionACLPolicyDelete || ev.GetResult() != state.ResultOK {
		t.Errorf("audit event = %v", ev)
	}

	// Once every token that used it is gone, it can go; with one left,
	// the message names it alone.
	for i := range 4 {
		if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), fmt.Sprintf("acc-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.s.DeleteACLPolicy(f.next(), rootMeta(), "vision"); err == nil || !strings.Contains(err.Error(), `used by token "a":`) {
		t.Errorf("DeleteACLPolicy with one token left = %v", err)
	}
	if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), "acc-4"); err != nil {
		t.Fatal(err)
	}
	if err := f.s.DeleteACLPolicy(f.next(), rootMeta(), "vision"); err != nil {
		t.Errorf("DeleteACLPolicy once unused = %v", err)
	}
}

func TestResolveACLToken(t *testing.T) {
	f := aclFixture(t)
	vision := f.policy(modelWritePolicy("vision"))
	audit := f.policy(&droverv1.ACLPolicy{Name: "audit", Rules: []*droverv1.ACLRule{
		{Resource: droverv1.ACLResource_ACL_RESOURCE_AUDIT, Access: droverv1.ACLAccess_ACL_ACCESS_READ},
	}})
	f.policy(modelWritePolicy("other"))
	tok := f.aclToken(aclToken("acc-ci", "ci", "vision", acl.PolicyReadOnly, "audit"))

	got, policies, aclIdx, ok := f.s.ResolveACLToken(secretOf("ci"))
	if !ok || !proto.Equal(got, tok) || aclIdx != f.s.ACLIndex() {
		t.Fatalf("ResolveACLToken = %v, %v, %d; want the token at ACL index %d", got, ok, aclIdx, f.s.ACLIndex())
	}
	if len(policies) != 2 || !proto.Equal(policies[0], vision) || !proto.Equal(policies[1], audit) {
		t.Errorf("policies = %v; want the stored ones in the token's order", policies)
	}
	// The caller owns what it got.
	policies[0].Rules[0].Prefix = "changed"
	if p, _ := f.s.ACLPolicy("vision"); p.GetRules()[0].GetPrefix() != "vision-" {
		t.Error("a caller changed a stored policy")
	}
	if _, _, _, ok := f.s.ResolveACLToken(secretOf("nobody")); ok {
		t.Error("an unknown secret resolved")
	}
}

// ACLIndex moves with every change to tokens or policies and with nothing
// else, so a cache keyed by it is never stale and not needlessly dropped.
func TestACLIndex(t *testing.T) {
	f := newFixture(t)
	if f.s.ACLIndex() != 0 {
		t.Fatalf("new store ACLIndex() = %d", f.s.ACLIndex())
	}
	rootHash := secretOf("root secret")
	rotated := secretOf("rotated")
	steps := []struct {
		name    string
		write   func(idx uint64) error
		changes bool
		refused bool
	}{
		{"bootstrap", func(idx uint64) error {
			return f.s.BootstrapACL(idx, meta(""), &droverv1.ACLToken{AccessorId: rootAccessor, SecretSha256: rootHash[:]})
		}, true, false},
		{"apply policy", func(idx uint64) error {
			_, _, err := f.s.ApplyACLPolicy(idx, rootMeta(), modelWritePolicy("vision"))
			return err
		}, true, false},
		{"replace policy", func(idx uint64) error {
			_, _, err := f.s.ApplyACLPolicy(idx, rootMeta(), modelWritePolicy("vision"))
			return err
		}, true, false},
		{"create token", func(idx uint64) error {
			_, err := f.s.CreateACLToken(idx, rootMeta(), aclToken("acc-ci", "ci", "vision"))
			return err
		}, true, false},
		{"rotate token", func(idx uint64) error {
			_, err := f.s.RotateACLToken(idx, rootMeta(), "acc-ci", rotated[:])
			return err
		}, true, false},
		{"create model", func(idx uint64) error {
			_, err := f.s.CreateModel(idx, rootMeta(), &droverv1.CreateModelRequest{Name: "m"})
			return err
		}, false, false},
		{"record denials", func(idx uint64) error {
			return f.s.RecordDenials(idx, meta("server/s1"), []*droverv1.AccessDenial{{Procedure: "/p", Capability: "model:write"}})
		}, false, false},
		{"refused create", func(idx uint64) error {
			_, err := f.s.CreateACLToken(idx, rootMeta(), aclToken("acc-x", "ci", "vision"))
			return err
		}, false, true},
		{"refused delete", func(idx uint64) error { return f.s.DeleteACLPolicy(idx, rootMeta(), "vision") }, false, true},
		{"revoke token", func(idx uint64) error { _, err := f.s.RevokeACLToken(idx, rootMeta(), "acc-ci"); return err }, true, false},
		{"delete policy", func(idx uint64) error { return f.s.DeleteACLPolicy(idx, rootMeta(), "vision") }, true, false},
	}
	for _, st := range steps {
		before := f.s.ACLIndex()
		idx := f.next()
		if err := st.write(idx); (err != nil) != st.refused {
			t.Fatalf("%s: %v", st.name, err)
		}
		switch got := f.s.ACLIndex(); {
		case st.changes && got != idx:
			t.Errorf("%s at %d: ACLIndex() = %d, want %d", st.name, idx, got, idx)
		case !st.changes && got != before:
			t.Errorf("%s at %d: ACLIndex() moved from %d to %d", st.name, idx, before, got)
		}
	}

	// A restore may change every token and policy, so it moves the index
	// to the restored one, even from a snapshot of the same state.
	var b bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	before := f.s.ACLIndex()
	if err := f.s.Restore(bytes.NewReader(b.Bytes())); err != nil {
		t.Fatal(err)
	}
	if got := f.s.ACLIndex(); got == before || got != f.s.Index() {
		t.Errorf("after restore ACLIndex() = %d (before %d, index %d), want the restored index", got, before, f.s.Index())
	}
	r := state.New()
	if err := r.RestoreAt(bytes.NewReader(b.Bytes()), 50); err != nil {
		t.Fatal(err)
	}
	if r.ACLIndex() != 50 {
		t.Errorf("restored at raft index 50: ACLIndex() = %d", r.ACLIndex())
	}
}

func TestACLSnapshotRoundTrip(t *testing.T) {
	f := aclFixture(t)
	f.policy(modelWritePolicy("vision"))
	f.policy(&droverv1.ACLPolicy{Name: "edge", Description: "Drain edge nodes", Rules: []*droverv1.ACLRule{
		{Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE, Site: "edge-1", Labels: map[string]string{"tier": "edge"}},
		{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_DENY, Name: "secret"},
	}})
	tok := aclToken("acc-ci", "ci", "vision", "edge", acl.PolicyReadOnly)
	tok.Description = "CI"
	tok.ExpireTime = timestamppb.New(now.Add(24 * time.Hour))
	f.aclToken(tok)
	rotated := secretOf("rotated")
	if _, err := f.s.RotateACLToken(f.next(), rootMeta(), "acc-ci", rotated[:]); err != nil {
		t.Fatal(err)
	}

	var b bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	snap, err := state.ReadSnapshot(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if c := snap.Counts(); c["acl_policies"] != "2" || c["acl_tokens"] != "2" {
		t.Errorf("Counts() = %v", c)
	}
	r := state.New()
	if err := r.Restore(bytes.NewReader(b.Bytes())); err != nil {
		t.Fatal(err)
	}
	pa, pb := f.s.ACLPolicies(), r.ACLPolicies()
	if len(pa) != 2 || len(pa) != len(pb) {
		t.Fatalf("%d policies restored as %d", len(pa), len(pb))
	}
	for i := range pa {
		if !proto.Equal(pa[i], pb[i]) {
			t.Errorf("policy\n%v\nrestored as\n%v", pa[i], pb[i])
		}
	}
	ta, tb := f.s.ACLTokens(), r.ACLTokens()
	if len(ta) != 2 || len(ta) != len(tb) {
		t.Fatalf("%d tokens restored as %d", len(ta), len(tb))
	}
	for i := range ta {
		if !proto.Equal(ta[i], tb[i]) {
			t.Errorf("token\n%v\nrestored as\n%v", ta[i], tb[i])
		}
	}
	if got, ps, _, ok := r.ResolveACLToken(rotated); !ok || got.GetName() != "ci" || got.GetRotateTime() == nil || len(ps) != 2 {
		t.Errorf("restored ResolveACLToken = %v, %v, %v", got, ps, ok)
	}
	if _, ok := r.TokenBySecretHash(secretOf("ci")); ok {
		t.Error("the secret rotated away resolves after restore")
	}
	var again bytes.Buffer
	if _, err := r.Snapshot().WriteTo(&again); err != nil || !bytes.Equal(b.Bytes(), again.Bytes()) {
		t.Errorf("snapshot → restore → snapshot changed the bytes (%v)", err)
	}
	// The restored store goes on checking references.
	if err := r.DeleteACLPolicy(r.Index()+1, rootMeta(), "vision"); !errors.Is(err, state.ErrInUse) {
		t.Errorf("deleting a used policy after restore = %v, want ErrInUse", err)
	}
	if _, err := r.CreateACLToken(r.Index()+1, rootMeta(), aclToken("acc-2", "ci", acl.PolicyReadOnly)); !errors.Is(err, state.ErrAlreadyExists) {
		t.Errorf("creating a taken name after restore = %v, want ErrAlreadyExists", err)
	}
}

// Snapshots older than format 4 hold only the bootstrap token, maybe
// without name or policies, and no policies; format 4 snapshots must hold
// tokens and policies the writes could have made.
func TestRestoreACLRecords(t *testing.T) {
	end := &droverv1.SnapshotRecord{}
	tokenRec := func(tok *droverv1.ACLToken) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Token{Token: tok}}
	}
	policyRec := func(p *droverv1.ACLPolicy) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Policy{Policy: p}}
	}
	h := secretOf("root secret")
	legacy := &droverv1.ACLToken{AccessorId: rootAccessor, SecretSha256: h[:], CreateIndex: 2, Description: "Bootstrap management token"}

	s := state.New()
	if err := s.Restore(bytes.NewReader(stream(t, &droverv1.SnapshotHeader{Format: 3, Index: 5}, tokenRec(legacy), end))); err != nil {
		t.Fatalf("Restore(format 3) = %v", err)
	}
	tok, err := s.ACLToken(state.BootstrapTokenName)
	if err != nil || tok.GetAccessorId() != rootAccessor || len(tok.GetPolicies()) != 1 || tok.GetPolicies()[0] != acl.PolicyManagement || tok.GetModifyIndex() != 2 {
		t.Errorf("format 3 bootstrap token restored as %v, %v; want it named %q with the management policy", tok, err, state.BootstrapTokenName)
	}
	// It is what replaying the bootstrap from the log stores.
	replayed := state.New()
	if err := replayed.BootstrapACL(2, meta(""), &droverv1.ACLToken{AccessorId: rootAccessor, SecretSha256: h[:], Description: "Bootstrap management token"}); err != nil {
		t.Fatal(err)
	}
	if want, _ := replayed.ACLToken(rootAccessor); !proto.Equal(tok, withoutCreateTime(want)) {
		t.Errorf("restored\n%v\nreplayed\n%v", tok, want)
	}
	err = state.New().Restore(bytes.NewReader(stream(t, &droverv1.SnapshotHeader{Format: 3, Index: 5}, policyRec(modelWritePolicy("vision")), end)))
	if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), "format 3 snapshots do not have") {
		t.Errorf("format 3 with a policy = %v", err)
	}

	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	builtin := modelWritePolicy("vision")
	builtin.Builtin = true
	nameless := aclToken("acc-1", "", acl.PolicyReadOnly)
	for _, tc := range []struct {
		name    string
		recs    []proto.Message
		mention string
	}{
		{"token without name", []proto.Message{tokenRec(nameless)}, "token name"},
		{"token without policies", []proto.Message{tokenRec(aclToken("acc-1", "a"))}, "no policies"},
		{"token with missing policy", []proto.Message{tokenRec(aclToken("acc-1", "a", "vision"))}, `policy "vision", which the snapshot does not hold`},
		{"tokens sharing a name", []proto.Message{tokenRec(aclToken("acc-1", "a", acl.PolicyReadOnly)), tokenRec(withSecret(aclToken("acc-2", "a", acl.PolicyReadOnly), "other"))}, "share the name"},
		{"invalid policy", []proto.Message{policyRec(&droverv1.ACLPolicy{Name: "empty"})}, "no rules"},
		{"built-in policy", []proto.Message{policyRec(builtin)}, "built in"},
		{"built-in policy name", []proto.Message{policyRec(modelWritePolicy(acl.PolicyManagement))}, "built-in"},
		{"policy twice", []proto.Message{policyRec(modelWritePolicy("vision")), policyRec(modelWritePolicy("vision"))}, "twice"},
	} {
		recs := append(append([]proto.Message{hdr}, tc.recs...), end)
		err := state.New().Restore(bytes.NewReader(stream(t, recs...)))
		if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: %v, want ErrSnapshotInvalid mentioning %q", tc.name, err, tc.mention)
		}
	}
	ok := stream(t, hdr, policyRec(modelWritePolicy("vision")), tokenRec(aclToken("acc-1", "a", "vision")), end)
	if err := state.New().Restore(bytes.NewReader(ok)); err != nil {
		t.Errorf("Restore(valid) = %v", err)
	}
}

func withoutCreateTime(t *droverv1.ACLToken) *droverv1.ACLToken {
	t.CreateTime = nil
	return t
}

func withSecret(t *droverv1.ACLToken, secret string) *droverv1.ACLToken {
	h := secretOf(secret)
	t.SecretSha256 = h[:]
	return t
}

func TestAuditActorFilter(t *testing.T) {
	f := aclFixture(t)                                         // 1, anonymous
	f.aclToken(aclToken("acc-ci", "ci", acl.PolicyManagement)) // 2, by the bootstrap token
	if _, err := f.s.CreateModel(f.next(), opMeta("acc-ci", "ci"), &droverv1.CreateModelRequest{Name: "a"}); err != nil {
		t.Fatal(err) // 3, by ci
	}
	if _, err := f.s.CreateModel(f.next(), meta("agent/n1"), &droverv1.CreateModelRequest{Name: "b"}); err != nil {
		t.Fatal(err) // 4, by an agent
	}
	// 5: ci's refusals, reported by a server; and one of a caller without
	// a token.
	if err := f.s.RecordDenials(f.next(), meta("server/s1"), []*droverv1.AccessDenial{
		{AccessorId: "acc-ci", TokenName: "ci", Procedure: "/drover.v1.ModelService/DeleteModel", Capability: "model:write on model/a", Target: "model/a"},
		{Procedure: "/drover.v1.ModelService/CreateModel", Capability: "model:write"},
	}); err != nil {
		t.Fatal(err)
	}
	// 6: a token renamed since (revoked and created again) is found by
	// either name.
	if _, err := f.s.CreateModel(f.next(), opMeta("acc-ci", "ci-old"), &droverv1.CreateModelRequest{Name: "c"}); err != nil {
		t.Fatal(err)
	}

	indexes := func(evs []*droverv1.AuditEvent) []uint64 {
		var out []uint64
		for _, ev := range evs {
			out = append(out, ev.GetIndex())
		}
		return out
	}
	for _, tt := range []struct {
		actor, prefix string
		want          []uint64
	}{
		{"", "", []uint64{1, 2, 3, 4, 5, 5, 6}},
		{"acc-ci", "", []uint64{3, 5, 6}},
		{"ci", "", []uint64{3, 5}},
		{"ci-old", "", []uint64{6}},
		{rootAccessor, "", []uint64{2}},
		{state.BootstrapTokenName, "", []uint64{2}},
		{state.Anonymous, "", []uint64{1, 5}},
		{"agent/n1", "", []uint64{4}},
		{"acc-ci", "model/a", []uint64{3, 5}},
		{"nobody", "", nil},
	} {
		if got := indexes(f.s.Audit(0, 0, tt.prefix, tt.actor)); !equalU64(got, tt.want) {
			t.Errorf("Audit(actor %q, prefix %q) = %v, want %v", tt.actor, tt.prefix, got, tt.want)
		}
	}
	if ev := f.s.Audit(2, 0, "model/a", "ci")[0]; ev.GetActor() != "acc-ci" || ev.GetActorName() != "ci" || ev.GetAction() != state.ActionModelCreate {
		t.Errorf("ci's model create = %v", ev)
	}
}

func TestRecordDenials(t *testing.T) {
	f := aclFixture(t)
	denied := now.Add(-time.Second)
	denials := []*droverv1.AccessDenial{
		{
			Time: timestamppb.New(denied), AccessorId: "acc-ci", TokenName: "ci", Procedure: "/drover.v1.ModelService/DeleteModel",
			Capability: "model:write on model/resnet", Target: "model/resnet", Server: "s2", Suppressed: 7,
		},
		{Procedure: "/drover.v1.ClusterService/RestoreSnapshot", Capability: "operator:write"},
	}
	idx := f.next()
	if err := f.s.RecordDenials(idx, opMeta("server/s2", ""), denials); err != nil {
		t.Fatal(err)
	}
	want := []*droverv1.AuditEvent{
		{
			Index: idx, Time: timestamppb.New(denied), Actor: "acc-ci", ActorName: "ci", Action: state.ActionAccessDenied,
			Target: "model/resnet", Result: "denied: needs model:write on model/resnet",
			Details: map[string]string{"procedure": "/drover.v1.ModelService/DeleteModel", "capability": "model:write on model/resnet", "server": "s2", "suppressed": "7"},
		},
		{
			Index: idx, Time: timestamppb.New(now), Actor: state.Anonymous, Action: state.ActionAccessDenied,
			Target: "/drover.v1.ClusterService/RestoreSnapshot", Result: "denied: needs operator:write",
			Details: map[string]string{"procedure": "/drover.v1.ClusterService/RestoreSnapshot", "capability": "operator:write"},
		},
	}
	got := f.s.Audit(idx-1, 0, "", "")
	if len(got) != len(want) {
		t.Fatalf("%d audit events for %d denials: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("event %d\n got %v\nwant %v", i, got[i], want[i])
		}
	}
	if f.s.Index() != idx {
		t.Errorf("Index() = %d, want %d", f.s.Index(), idx)
	}
	// A reader that saw idx sees none of them again; a limit takes the
	// newest.
	if evs := f.s.Audit(idx, 0, "", ""); len(evs) != 0 {
		t.Errorf("events after %d: %v", idx, evs)
	}
	if evs := f.s.Audit(0, 1, "", ""); len(evs) != 1 || evs[0].GetActor() != state.Anonymous {
		t.Errorf("newest event = %v", evs)
	}

	// Events that share an index survive a snapshot.
	var b bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	r := state.New()
	if err := r.Restore(bytes.NewReader(b.Bytes())); err != nil {
		t.Fatalf("Restore with events sharing an index = %v", err)
	}
	if evs := r.Audit(idx-1, 0, "", ""); len(evs) != 2 || !proto.Equal(evs[0], want[0]) || !proto.Equal(evs[1], want[1]) {
		t.Errorf("restored events = %v", evs)
	}

	tooMany := make([]*droverv1.AccessDenial, state.MaxDenialsPerCommand+1)
	for i := range tooMany {
		tooMany[i] = &droverv1.AccessDenial{Procedure: "/p", Capability: "model:write"}
	}
	for _, tt := range []struct {
		name    string
		denials []*droverv1.AccessDenial
		mention string
	}{
		{"none", nil, "no denials"},
		{"too many", tooMany, "several commands"},
		{"no procedure", []*droverv1.AccessDenial{{Capability: "model:write"}}, "denial 1"},
		{"no capability", []*droverv1.AccessDenial{denials[0], {Procedure: "/p"}}, "denial 2"},
	} {
		idx := f.next()
		err := f.s.RecordDenials(idx, meta("server/s2"), tt.denials)
		if state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("%s: RecordDenials = %v; want INVALID_ARGUMENT mentioning %q", tt.name, err, tt.mention)
			continue
		}
		evs := f.s.Audit(idx-1, 0, "", "")
		if len(evs) != 1 || evs[0].GetAction() != state.ActionAccessDenied || evs[0].GetActor() != "server/s2" || evs[0].GetResult() != err.Error() {
			t.Errorf("%s: audit = %v; want one event recording the refusal", tt.name, evs)
		}
	}
}

// Reads of tokens and policies during ACL writes and snapshots are safe
// (run with -race).
func TestConcurrentACLReadsDuringWrites(t *testing.T) {
	f := aclFixture(t)
	f.policy(modelWritePolicy("vision"))
	done := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, _, _, _ = f.s.ResolveACLToken(secretOf("ci"))
			_ = f.s.ACLTokens()
			_ = f.s.ACLPolicies()
			_ = f.s.Audit(0, 10, "", "ci")
			var b bytes.Buffer
			_, _ = f.s.Snapshot().WriteTo(&b)
		}
	}()
	for i := range 100 {
		f.policy(modelWritePolicy("vision"))
		f.aclToken(aclToken("acc-ci", "ci", "vision"))
		h := secretOf(fmt.Sprint("rotated ", i))
		if _, err := f.s.RotateACLToken(f.next(), rootMeta(), "acc-ci", h[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := f.s.RevokeACLToken(f.next(), rootMeta(), "acc-ci"); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
}
