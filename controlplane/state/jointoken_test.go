package state_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// now is the time meta stamps on commands.
var now = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

var joinSecret = sha256.Sum256([]byte("join secret"))

func metaAt(actor string, t time.Time) *droverv1.CommandMeta {
	return &droverv1.CommandMeta{Actor: actor, Time: timestamppb.New(t)}
}

// joinToken returns a valid new token; change fields to make it invalid.
func joinToken(id string) *droverv1.JoinToken {
	return &droverv1.JoinToken{Id: id, SecretSha256: bytes.Clone(joinSecret[:])}
}

func (f *fixture) joinToken(tok *droverv1.JoinToken) *droverv1.JoinToken {
	f.t.Helper()
	out, err := f.s.CreateJoinToken(f.next(), meta("alice"), tok)
	if err != nil {
		f.t.Fatalf("CreateJoinToken(%q): %v", tok.GetId(), err)
	}
	return out
}

func manyLabels(n int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func TestValidateLabels(t *testing.T) {
	valid := []map[string]string{
		nil,
		{"gpu": "a100", "zone": "", "Team_1": "Vision.Core-2"},
		{"drover.dev/zone": "eu", "a.b-c/x": "y"},
		{strings.Repeat("k", 63): strings.Repeat("v", 63)},
		manyLabels(state.MaxLabels),
	}
	for _, l := range valid {
		if err := state.ValidateLabels(l); err != nil {
			t.Errorf("ValidateLabels(%v) = %v", l, err)
		}
	}
	invalid := []struct {
		labels  map[string]string
		mention string
	}{
		{map[string]string{"": "x"}, `label key ""`},
		{map[string]string{"-a": "x"}, `label key "-a"`},
		{map[string]string{"a b": "x"}, `label key "a b"`},
		{map[string]string{strings.Repeat("k", 64): "x"}, "label key"},
		{map[string]string{"Drover.dev/zone": "x"}, "label key"},
		{map[string]string{"/zone": "x"}, "label key"},
		{map[string]string{"a/b/c": "x"}, "label key"},
		{map[string]string{"zone": "eu west"}, `label "zone" value "eu west"`},
		{map[string]string{"zone": "-eu"}, "value"},
		{map[string]string{"zone": strings.Repeat("v", 64)}, "value"},
		// The first bad key in sorted order is the one reported.
		{map[string]string{"b b": "x", "a a": "x"}, `"a a"`},
		{manyLabels(state.MaxLabels + 1), "65 labels"},
	}
	for _, tt := range invalid {
		err := state.ValidateLabels(tt.labels)
		if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("ValidateLabels(%v) = %v; want ErrInvalid mentioning %s", tt.labels, err, tt.mention)
		}
	}
}

func TestCreateJoinToken(t *testing.T) {
	f := newFixture(t)
	in := joinToken("abcd2345")
	in.Description = "rack 4"
	in.Labels = map[string]string{"rack": "4"}
	in.Site = "eu-west-1"
	in.MaxUses = 3
	in.ExpireTime = timestamppb.New(now.Add(time.Hour))
	in.CreateIndex, in.ModifyIndex, in.CreatedBy = 99, 99, "mallory"
	idx := f.next()
	tok, err := f.s.CreateJoinToken(idx, meta("alice"), in)
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetCreateIndex() != idx || tok.GetModifyIndex() != idx || tok.GetCreatedBy() != "alice" ||
		!tok.GetCreateTime().AsTime().Equal(now) || tok.GetUses() != 0 || tok.GetSite() != "eu-west-1" {
		t.Errorf("token = %v", tok)
	}
	ev := lastAudit(t, f.s)
	want := &droverv1.AuditEvent{
		Index: idx, Time: timestamppb.New(now), Actor: "alice", Action: state.ActionTokenCreate, Target: "token/abcd2345", Result: state.ResultOK,
		Details: map[string]string{"max_uses": "3", "expire_time": "2025-01-02T04:04:05Z"},
	}
	if !proto.Equal(ev, want) {
		t.Errorf("audit\n got %v\nwant %v", ev, want)
	}
	// The caller's message is not shared with the state.
	in.Labels["rack"] = "changed"
	in.SecretSha256[0] ^= 0xff
	if got, _ := f.s.JoinToken("abcd2345"); got.GetLabels()["rack"] != "4" || got.GetSecretSha256()[0] != joinSecret[0] {
		t.Errorf("the request is shared with the state: %v", got)
	}
	// An explicit create_time is kept.
	withTime := joinToken("withtime")
	withTime.CreateTime = timestamppb.New(now.Add(-time.Hour))
	if got := f.joinToken(withTime); !got.GetCreateTime().AsTime().Equal(now.Add(-time.Hour)) {
		t.Errorf("create_time = %v", got.GetCreateTime())
	}
}

func TestCreateJoinTokenRefusals(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("taken"))
	with := func(change func(*droverv1.JoinToken)) *droverv1.JoinToken {
		tok := joinToken("new")
		change(tok)
		return tok
	}
	tests := []struct {
		name    string
		tok     *droverv1.JoinToken
		want    error
		mention string
	}{
		{"nil", nil, state.ErrInvalid, "id"},
		{"empty id", with(func(t *droverv1.JoinToken) { t.Id = "" }), state.ErrInvalid, `join token id ""`},
		{"bad id", with(func(t *droverv1.JoinToken) { t.Id = "A/B" }), state.ErrInvalid, `join token id "A/B"`},
		{"no hash", with(func(t *droverv1.JoinToken) { t.SecretSha256 = nil }), state.ErrInvalid, "0 bytes"},
		{"short hash", with(func(t *droverv1.JoinToken) { t.SecretSha256 = joinSecret[:16] }), state.ErrInvalid, "16 bytes"},
		{"bad label key", with(func(t *droverv1.JoinToken) { t.Labels = map[string]string{"": "x"} }), state.ErrInvalid, "label key"},
		{"bad label value", with(func(t *droverv1.JoinToken) { t.Labels = map[string]string{"a": "x y"} }), state.ErrInvalid, "value"},
		{"too many labels", with(func(t *droverv1.JoinToken) { t.Labels = manyLabels(state.MaxLabels + 1) }), state.ErrInvalid, "labels"},
		{"bad site", with(func(t *droverv1.JoinToken) { t.Site = "EU West" }), state.ErrInvalid, `site name "EU West"`},
		{"long description", with(func(t *droverv1.JoinToken) { t.Description = strings.Repeat("x", 1025) }), state.ErrInvalid, "description"},
		{"claims uses", with(func(t *droverv1.JoinToken) { t.Uses = 1 }), state.ErrInvalid, "no uses"},
		{"revoked", with(func(t *droverv1.JoinToken) { t.Revoked = true }), state.ErrInvalid, "not revoked"},
		{"expires at creation", with(func(t *droverv1.JoinToken) { t.ExpireTime = timestamppb.New(now) }), state.ErrInvalid, "not after its create_time"},
		{"expires before creation", with(func(t *droverv1.JoinToken) { t.ExpireTime = timestamppb.New(now.Add(-time.Second)) }), state.ErrInvalid, "not after"},
		{"expires before explicit creation", with(func(t *droverv1.JoinToken) {
			t.CreateTime = timestamppb.New(now.Add(2 * time.Hour))
			t.ExpireTime = timestamppb.New(now.Add(time.Hour))
		}), state.ErrInvalid, "not after"},
		{"invalid expire time", with(func(t *droverv1.JoinToken) { t.ExpireTime = &timestamppb.Timestamp{Nanos: -1} }), state.ErrInvalid, "expire_time"},
		{"exists", joinToken("taken"), state.ErrAlreadyExists, `join token "taken" already exists`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idx := f.next()
			tok, err := f.s.CreateJoinToken(idx, meta("bob"), tt.tok)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention) || tok != nil {
				t.Fatalf("CreateJoinToken = %v, %v; want %v mentioning %s", tok, err, tt.want, tt.mention)
			}
			ev := lastAudit(t, f.s)
			if ev.GetIndex() != idx || ev.GetResult() != err.Error() || ev.GetAction() != state.ActionTokenCreate ||
				ev.GetTarget() != "token/"+tt.tok.GetId() || ev.GetActor() != "bob" || f.s.Index() != idx {
				t.Errorf("audit = %v", ev)
			}
		})
	}
	if toks := f.s.JoinTokens(); len(toks) != 1 || toks[0].GetId() != "taken" {
		t.Errorf("JoinTokens = %v", toks)
	}
}

func TestRevokeJoinToken(t *testing.T) {
	f := newFixture(t)
	created := f.joinToken(joinToken("tok1"))

	if _, err := f.s.RevokeJoinToken(f.next(), meta("bob"), "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("revoke unknown = %v", err)
	}
	if ev := lastAudit(t, f.s); ev.GetTarget() != "token/nope" || ev.GetAction() != state.ActionTokenRevoke || ev.GetResult() == state.ResultOK {
		t.Errorf("audit = %v", ev)
	}

	idx := f.next()
	tok, err := f.s.RevokeJoinToken(idx, meta("bob"), "tok1")
	if err != nil || !tok.GetRevoked() || tok.GetModifyIndex() != idx || tok.GetCreateIndex() != created.GetCreateIndex() {
		t.Fatalf("revoke = %v, %v", tok, err)
	}
	if ev := lastAudit(t, f.s); ev.GetResult() != state.ResultOK || len(ev.GetDetails()) != 0 {
		t.Errorf("audit = %v", ev)
	}

	// Again: fine, and nothing changes.
	again, err := f.s.RevokeJoinToken(f.next(), meta("bob"), "tok1")
	if err != nil || !again.GetRevoked() || again.GetModifyIndex() != idx {
		t.Errorf("revoke again = %v, %v; want revoked, modify index %d", again, err, idx)
	}
	if ev := lastAudit(t, f.s); ev.GetResult() != state.ResultOK || ev.GetDetails()["already_revoked"] != "true" {
		t.Errorf("audit = %v", ev)
	}
}

func TestJoinTokenReads(t *testing.T) {
	f := newFixture(t)
	for _, id := range []string{"zz", "aa", "mm"} {
		f.joinToken(joinToken(id))
	}
	var ids []string
	for _, tok := range f.s.JoinTokens() {
		ids = append(ids, tok.GetId())
	}
	if strings.Join(ids, ",") != "zz,aa,mm" {
		t.Errorf("JoinTokens order %v, want create order zz,aa,mm", ids)
	}
	if _, err := f.s.JoinToken("nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("JoinToken(nope) = %v", err)
	}
	tok, _ := f.s.JoinToken("aa")
	tok.Revoked = true
	tok.SecretSha256[0] ^= 0xff
	f.s.JoinTokens()[0].Uses = 7
	if got, _ := f.s.JoinToken("aa"); got.GetRevoked() || got.GetSecretSha256()[0] != joinSecret[0] {
		t.Errorf("a reader changed the state: %v", got)
	}
	if got, _ := f.s.JoinToken("zz"); got.GetUses() != 0 {
		t.Errorf("a reader changed the state: %v", got)
	}
}

// Each credential refusal has a wire reason of its own.
func TestReasonTokenErrors(t *testing.T) {
	tests := []struct {
		err  error
		want droverv1.ErrorReason
	}{
		{state.ErrTokenInvalid, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID},
		{state.ErrTokenRevoked, droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED},
		{state.ErrTokenExpired, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED},
		{state.ErrTokenUsedUp, droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP},
		{state.ErrNodeRevoked, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED},
	}
	for _, tt := range tests {
		if got := state.Reason(fmt.Errorf("x: %w", tt.err)); got != tt.want {
			t.Errorf("Reason(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
