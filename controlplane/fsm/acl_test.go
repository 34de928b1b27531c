package fsm_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// opMeta is the meta of a command made with the operator token accessor,
// called name.
func opMeta(accessor, name string) *droverv1.CommandMeta {
	m := meta(accessor)
	m.ActorName = name
	return m
}

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func visionPolicy(name string) *droverv1.ACLPolicy {
	return &droverv1.ACLPolicy{Name: name, Rules: []*droverv1.ACLRule{
		{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_WRITE, Prefix: "vision-"},
	}}
}

// aclToken is a new token whose secret is its name's hash.
func aclToken(accessor, name string, policies ...string) *droverv1.ACLToken {
	return &droverv1.ACLToken{AccessorId: accessor, Name: name, SecretSha256: hashOf(name), Policies: policies}
}

// The ACL commands below are made with the bootstrap token "acc-1".
func applyACLPolicy(t testing.TB, p *droverv1.ACLPolicy) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_APPLY_ACL_POLICY, &droverv1.ApplyACLPolicyCommand{Meta: opMeta("acc-1", "bootstrap"), Policy: p})
}

func deleteACLPolicy(t testing.TB, name string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_ACL_POLICY, &droverv1.DeleteACLPolicyCommand{Meta: opMeta("acc-1", "bootstrap"), Name: name})
}

func createACLToken(t testing.TB, tok *droverv1.ACLToken) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_CREATE_ACL_TOKEN, &droverv1.CreateACLTokenCommand{Meta: opMeta("acc-1", "bootstrap"), Token: tok})
}

func revokeACLToken(t testing.TB, accessor string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_REVOKE_ACL_TOKEN, &droverv1.RevokeACLTokenCommand{Meta: opMeta("acc-1", "bootstrap"), AccessorId: accessor})
}

func rotateACLToken(t testing.TB, accessor, newSecret string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_ROTATE_ACL_TOKEN, &droverv1.RotateACLTokenCommand{
		Meta: opMeta("acc-1", "bootstrap"), AccessorId: accessor, SecretSha256: hashOf(newSecret)})
}

// recordDenials is proposed by the leader for the server that refused the
// calls.
func recordDenials(t testing.TB, denials ...*droverv1.AccessDenial) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_RECORD_DENIALS, &droverv1.RecordDenialsCommand{Meta: meta("server/s1"), Denials: denials})
}

// TestApplyACLCommands applies each ACL command type, successful and
// refused, and checks the value the proposing server gets and the audit
// event every server records.
func TestApplyACLCommands(t *testing.T) {
	h := newHarness(t)
	h.mustApply(bootstrapACL(t, "acc-1"))

	res := h.mustApply(applyACLPolicy(t, visionPolicy("vision")))
	if r, ok := res.Value.(*droverv1.ApplyACLPolicyResponse); !ok || r.GetReplaced() || r.GetPolicy().GetName() != "vision" || r.GetPolicy().GetCreateIndex() != res.Index {
		t.Errorf("apply policy value = %v", res.Value)
	}
	res = h.mustApply(applyACLPolicy(t, visionPolicy("vision")))
	if r, ok := res.Value.(*droverv1.ApplyACLPolicyResponse); !ok || !r.GetReplaced() || r.GetPolicy().GetModifyIndex() != res.Index {
		t.Errorf("apply policy again value = %v", res.Value)
	}

	res = h.mustApply(createACLToken(t, aclToken("acc-ci", "ci", "vision")))
	if tok, ok := res.Value.(*droverv1.ACLToken); !ok || tok.GetName() != "ci" || tok.GetCreateIndex() != res.Index || tok.GetCreatedBy() != "acc-1" {
		t.Errorf("create token value = %v", res.Value)
	}
	if ev := h.lastAudit(); ev.GetActor() != "acc-1" || ev.GetActorName() != "bootstrap" || ev.GetAction() != state.ActionACLTokenCreate || ev.GetTarget() != "acl/token/acc-ci" {
		t.Errorf("create token audit = %v", ev)
	}

	res = h.mustApply(rotateACLToken(t, "acc-ci", "rotated"))
	if tok, ok := res.Value.(*droverv1.ACLToken); !ok || !bytes.Equal(tok.GetSecretSha256(), hashOf("rotated")) || tok.GetModifyIndex() != res.Index {
		t.Errorf("rotate token value = %v", res.Value)
	}

	for _, tt := range []struct {
		name string
		log  *raft.Log
		want error
	}{
		{"delete used policy", deleteACLPolicy(t, "vision"), state.ErrInUse},
		{"delete built-in policy", deleteACLPolicy(t, "management"), state.ErrInvalid},
		{"create token with missing policy", createACLToken(t, aclToken("acc-x", "x", "nlp")), state.ErrInvalid},
		{"revoke last management token", revokeACLToken(t, "acc-1"), state.ErrInUse},
		{"rotate unknown token", rotateACLToken(t, "acc-nope", "s"), state.ErrNotFound},
		{"record no denials", recordDenials(t), state.ErrInvalid},
	} {
		res := h.apply(tt.log)
		if !errors.Is(res.Err, tt.want) || res.Value != nil {
			t.Errorf("%s: Err = %v, Value = %v; want %v and no value", tt.name, res.Err, res.Value, tt.want)
		}
		if ev := h.lastAudit(); ev.GetIndex() != res.Index || ev.GetResult() != res.Err.Error() {
			t.Errorf("%s: audit = %v", tt.name, ev)
		}
	}

	res = h.mustApply(revokeACLToken(t, "acc-ci"))
	if tok, ok := res.Value.(*droverv1.ACLToken); !ok || tok.GetAccessorId() != "acc-ci" {
		t.Errorf("revoke token value = %v", res.Value)
	}
	res = h.mustApply(deleteACLPolicy(t, "vision"))
	if res.Value != nil {
		t.Errorf("delete policy value = %v", res.Value)
	}
	if h.store.ACLIndex() != res.Index {
		t.Errorf("ACLIndex() = %d, want the policy delete's %d", h.store.ACLIndex(), res.Index)
	}

	res = h.mustApply(recordDenials(t,
		&droverv1.AccessDenial{AccessorId: "acc-ci", TokenName: "ci", Procedure: "/drover.v1.ModelService/CreateModel", Capability: "model:write on model/bert"},
		&droverv1.AccessDenial{Procedure: "/drover.v1.ModelService/CreateModel", Capability: "model:write"}))
	evs := h.store.Audit(res.Index-1, 0, "", "")
	if res.Value != nil || len(evs) != 2 || evs[0].GetActorName() != "ci" || evs[1].GetActor() != state.Anonymous || evs[1].GetIndex() != res.Index {
		t.Errorf("record denials: value %v, events %v", res.Value, evs)
	}
	if evs := h.store.Audit(0, 0, "", "ci"); len(evs) != 1 || evs[0].GetAction() != state.ActionAccessDenied {
		t.Errorf("ci's events = %v", evs)
	}
}

// An entry that does not decode is still recorded with the proposer's
// token name.
func TestUndecodableACLCommandAudited(t *testing.T) {
	h := newHarness(t)
	b := encode(t, droverv1.CommandType_COMMAND_TYPE_CREATE_ACL_TOKEN, &droverv1.CreateACLTokenCommand{Meta: opMeta("acc-1", "root")})
	b = append(b, 0x22, 0x05) // a field whose bytes are missing
	res := h.apply(&raft.Log{Type: raft.LogCommand, Data: b})
	if res.Err == nil {
		t.Fatal("a truncated command applied")
	}
	if ev := h.lastAudit(); ev.GetActor() != "acc-1" || ev.GetActorName() != "root" || ev.GetAction() != state.ActionACLTokenCreate {
		t.Errorf("audit = %v", ev)
	}
}

// Policies, tokens and the events of record-denials commands, which share
// an index, travel through Raft snapshots.
func TestACLSnapshotRestore(t *testing.T) {
	h := newHarness(t)
	for _, l := range populate(t) {
		h.fsm.Apply(l)
	}
	data := persist(t, h.fsm)
	restored := state.New()
	rf := fsm.New(restored, testLogger(t))
	if err := rf.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	tok, policies, _, ok := restored.ResolveACLToken([32]byte(hashOf("rotated")))
	if !ok || tok.GetName() != "ci" || len(policies) != 1 || !proto.Equal(policies[0], mustPolicy(t, h.store, "vision")) {
		t.Errorf("restored ci token = %v, %v, %v", tok, policies, ok)
	}
	if _, err := restored.ACLToken("gone"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("revoked token after restore: %v", err)
	}
	if evs := restored.Audit(0, 0, "", "ci"); len(evs) != 1 || evs[0].GetAction() != state.ActionAccessDenied {
		t.Errorf("ci's events after restore = %v", evs)
	}
}

func mustPolicy(t *testing.T, s *state.Store, name string) *droverv1.ACLPolicy {
	t.Helper()
	p, err := s.ACLPolicy(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
