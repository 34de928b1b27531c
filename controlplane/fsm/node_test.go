package fsm_test

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var joinSecret = sha256.Sum256([]byte("join secret"))

var gpuInventory = &droverv1.NodeInventory{
	Host: &droverv1.HostInfo{Hostname: "gpu-01", Arch: "amd64"},
	Gpus: []*droverv1.GPUInfo{{Index: 0, Uuid: "GPU-1", Name: "NVIDIA A100-SXM4-80GB", MemoryTotalBytes: 80 << 30}},
}

func metaAt(actor string, t time.Time) *droverv1.CommandMeta {
	return &droverv1.CommandMeta{Actor: actor, Time: timestamppb.New(t)}
}

// Shorthands for the join token and node commands.
func createJoinToken(t testing.TB, actor string, tok *droverv1.JoinToken) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_CREATE_JOIN_TOKEN, &droverv1.CreateJoinTokenCommand{Meta: meta(actor), Token: tok})
}

func revokeJoinToken(t testing.TB, actor, id string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_REVOKE_JOIN_TOKEN, &droverv1.RevokeJoinTokenCommand{Meta: meta(actor), Id: id})
}

// enrollNode is proposed by the server on the agent's behalf, without an
// operator token, at time at.
func enrollNode(t testing.TB, at time.Time, tokenID string, secret []byte, id, name string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_ENROLL_NODE, &droverv1.EnrollNodeCommand{
		Meta: metaAt("", at), TokenId: tokenID, TokenSecretSha256: secret,
		Node: &droverv1.Node{Id: id, Name: name, Labels: map[string]string{"zone": "agent"}, AgentVersion: "1.0"},
	})
}

func registerNode(t testing.TB, id string, inv *droverv1.NodeInventory) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_REGISTER_NODE, &droverv1.RegisterNodeCommand{
		Meta: meta("node/" + id), NodeId: id, Inventory: inv, AgentVersion: "1.0"})
}

func setNodeStatus(t testing.TB, updates ...*droverv1.NodeStatusUpdate) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS, &droverv1.SetNodeStatusCommand{Meta: meta("server"), Updates: updates})
}

func setNodeDrain(t testing.TB, actor, id string, draining bool) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_SET_NODE_DRAIN, &droverv1.SetNodeDrainCommand{Meta: meta(actor), NodeId: id, Draining: draining})
}

func setNodeLabels(t testing.TB, actor, id string, set map[string]string, remove []string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_SET_NODE_LABELS, &droverv1.SetNodeLabelsCommand{Meta: meta(actor), NodeId: id, Set: set, Remove: remove})
}

func revokeNode(t testing.TB, actor, id string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_REVOKE_NODE, &droverv1.RevokeNodeCommand{Meta: meta(actor), NodeId: id})
}

func nodeStatus(id string, st droverv1.NodeStatus) *droverv1.NodeStatusUpdate {
	return &droverv1.NodeStatusUpdate{NodeId: id, Status: st, Reason: "heartbeat"}
}

// TestApplyNodeCommands applies each join token and node command type,
// successful and refused, and checks its result and audit event.
func TestApplyNodeCommands(t *testing.T) {
	h := newHarness(t)
	token := &droverv1.JoinToken{
		Id: "tok", SecretSha256: joinSecret[:], MaxUses: 2, Labels: map[string]string{"zone": "a"}, Site: "eu-west-1",
		ExpireTime: timestamppb.New(epoch.Add(time.Hour)),
	}
	node := func(check func(*droverv1.Node) bool) func(t *testing.T, v proto.Message) {
		return func(t *testing.T, v proto.Message) {
			if n, ok := v.(*droverv1.Node); !ok || !check(n) {
				t.Errorf("value = %T %v", v, v)
			}
		}
	}
	steps := []struct {
		name    string
		log     *raft.Log
		wantErr error
		value   func(t *testing.T, v proto.Message)
		audit   *droverv1.AuditEvent // index, time and (for refusals) result are filled in
	}{
		{
			name: "create join token", log: createJoinToken(t, "alice", token),
			value: func(t *testing.T, v proto.Message) {
				if tok := v.(*droverv1.JoinToken); tok.GetId() != "tok" || tok.GetCreateIndex() != 1 || tok.GetCreatedBy() != "alice" || !tok.GetCreateTime().AsTime().Equal(epoch) {
					t.Errorf("value = %v", tok)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "token.create", Target: "token/tok",
				Details: map[string]string{"max_uses": "2", "expire_time": "2025-01-02T04:04:05Z"}},
		},
		{
			name: "create join token again", log: createJoinToken(t, "bob", token), wantErr: state.ErrAlreadyExists,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "token.create", Target: "token/tok"},
		},
		{
			name: "revoke missing join token", log: revokeJoinToken(t, "bob", "nope"), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "token.revoke", Target: "token/nope"},
		},
		{
			name: "enroll node", log: enrollNode(t, epoch, "tok", joinSecret[:], "n1", "gpu-01"),
			value: node(func(n *droverv1.Node) bool {
				return n.GetId() == "n1" && n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_INITIALIZING && n.GetLabels()["zone"] == "a" &&
					n.GetSite() == "eu-west-1" && n.GetCreateIndex() == 4 && n.GetTokenId() == "tok" && len(n.GetHistory()) == 1
			}),
			audit: &droverv1.AuditEvent{Actor: "anonymous", Action: "node.enroll", Target: "node/n1",
				Details: map[string]string{"token": "tok", "name": "gpu-01", "uses": "1/2", "labels_overridden": "zone"}},
		},
		{
			name: "enroll node with a wrong secret", log: enrollNode(t, epoch, "tok", make([]byte, 32), "n2", "gpu-02"), wantErr: state.ErrTokenInvalid,
			audit: &droverv1.AuditEvent{Actor: "anonymous", Action: "node.enroll", Target: "node/n2",
				Details: map[string]string{"token": "tok", "refused": "wrong secret"}},
		},
		{
			name: "register node", log: registerNode(t, "n1", gpuInventory),
			value: node(func(n *droverv1.Node) bool {
				return n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_READY && proto.Equal(n.GetInventory(), gpuInventory) && n.GetModifyIndex() == 6
			}),
			audit: &droverv1.AuditEvent{Actor: "node/n1", Action: "node.register", Target: "node/n1",
				Details: map[string]string{"status": "READY", "previous": "INITIALIZING", "agent_version": "1.0"}},
		},
		{
			name: "register missing node", log: registerNode(t, "nope", nil), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "node/nope", Action: "node.register", Target: "node/nope"},
		},
		{
			name: "set node status", log: setNodeStatus(t, nodeStatus("n1", droverv1.NodeStatus_NODE_STATUS_DOWN), nodeStatus("ghost", droverv1.NodeStatus_NODE_STATUS_DOWN)),
			audit: &droverv1.AuditEvent{Actor: "server", Action: "node.status", Target: "node/",
				Details: map[string]string{"changed": "n1=DOWN", "not_found": "ghost"}},
		},
		{
			name: "set node status unspecified", log: setNodeStatus(t, nodeStatus("n1", droverv1.NodeStatus_NODE_STATUS_UNSPECIFIED)), wantErr: state.ErrInvalid,
			audit: &droverv1.AuditEvent{Actor: "server", Action: "node.status", Target: "node/n1"},
		},
		{
			name: "drain node", log: setNodeDrain(t, "alice", "n1", true),
			value: node(func(n *droverv1.Node) bool { return n.GetDraining() && n.GetModifyIndex() == 10 }),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "node.drain", Target: "node/n1"},
		},
		{
			name: "undrain node", log: setNodeDrain(t, "alice", "n1", false),
			value: node(func(n *droverv1.Node) bool { return !n.GetDraining() && n.GetModifyIndex() == 11 }),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "node.undrain", Target: "node/n1"},
		},
		{
			name: "label node", log: setNodeLabels(t, "alice", "n1", map[string]string{"rack": "4"}, []string{"zone"}),
			value: node(func(n *droverv1.Node) bool {
				return len(n.GetLabels()) == 1 && n.GetLabels()["rack"] == "4"
			}),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "node.label", Target: "node/n1",
				Details: map[string]string{"set": "rack=4", "remove": "zone"}},
		},
		{
			name: "label node with a bad key", log: setNodeLabels(t, "alice", "n1", map[string]string{"a b": "x"}, nil), wantErr: state.ErrInvalid,
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "node.label", Target: "node/n1"},
		},
		{
			name: "revoke node", log: revokeNode(t, "alice", "n1"),
			value: node(func(n *droverv1.Node) bool { return n.GetRevoked() && n.GetModifyIndex() == 14 }),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "node.revoke", Target: "node/n1"},
		},
		{
			name: "register revoked node", log: registerNode(t, "n1", gpuInventory), wantErr: state.ErrNodeRevoked,
			audit: &droverv1.AuditEvent{Actor: "node/n1", Action: "node.register", Target: "node/n1"},
		},
		{
			name: "revoke missing node", log: revokeNode(t, "bob", "nope"), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "node.revoke", Target: "node/nope"},
		},
		{
			name: "revoke join token", log: revokeJoinToken(t, "alice", "tok"),
			value: func(t *testing.T, v proto.Message) {
				if tok := v.(*droverv1.JoinToken); !tok.GetRevoked() || tok.GetUses() != 1 || tok.GetModifyIndex() != 17 {
					t.Errorf("value = %v", tok)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "token.revoke", Target: "token/tok"},
		},
		{
			name: "enroll with a revoked token", log: enrollNode(t, epoch, "tok", joinSecret[:], "n3", "gpu-03"), wantErr: state.ErrTokenRevoked,
			audit: &droverv1.AuditEvent{Actor: "anonymous", Action: "node.enroll", Target: "node/n3", Details: map[string]string{"token": "tok"}},
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.t = t
			res := h.apply(st.log)
			if !errors.Is(res.Err, st.wantErr) || (st.wantErr == nil) != (res.Err == nil) {
				t.Fatalf("Err = %v, want %v", res.Err, st.wantErr)
			}
			if res.Err != nil && res.Value != nil {
				t.Errorf("refusal carries a value: %v", res.Value)
			}
			if st.value != nil {
				st.value(t, res.Value)
			} else if res.Value != nil {
				t.Errorf("unexpected value %v", res.Value)
			}
			want := proto.Clone(st.audit).(*droverv1.AuditEvent)
			want.Index = res.Index
			want.Time = timestamppb.New(epoch)
			want.Result = state.ResultOK
			if res.Err != nil {
				want.Result = res.Err.Error()
			}
			if got := h.lastAudit(); !proto.Equal(got, want) {
				t.Errorf("audit event\n got %v\nwant %v", got, want)
			}
		})
	}
	if n := len(h.store.Audit(0, 0, "", "")); n != len(steps) {
		t.Errorf("%d audit events for %d commands", n, len(steps))
	}
}

// TestEnrollmentsRaceForMaxUses: three agents enroll at once with a token
// that allows two. The leader proposed their commands concurrently; the
// log orders them, and the third in log order is refused and audited.
func TestEnrollmentsRaceForMaxUses(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createJoinToken(t, "alice", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:], MaxUses: 2}))
	logs := []*raft.Log{
		enrollNode(t, epoch, "tok", joinSecret[:], "n1", "gpu-01"),
		enrollNode(t, epoch, "tok", joinSecret[:], "n2", "gpu-02"),
		enrollNode(t, epoch, "tok", joinSecret[:], "n3", "gpu-03"),
	}
	for i, l := range logs {
		l.Index, l.Term = uint64(i+2), 1
	}
	results := h.fsm.ApplyBatch(logs)
	for i, r := range results[:2] {
		res := r.(*fsm.ApplyResult)
		if n, ok := res.Value.(*droverv1.Node); res.Err != nil || !ok || n.GetId() != fmt.Sprintf("n%d", i+1) {
			t.Errorf("enrollment %d: %+v", i+1, res)
		}
	}
	third := results[2].(*fsm.ApplyResult)
	if !errors.Is(third.Err, state.ErrTokenUsedUp) || third.Value != nil || third.Index != 4 {
		t.Fatalf("third enrollment: %+v", third)
	}
	if state.Reason(third.Err) != droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP {
		t.Errorf("Reason = %v", state.Reason(third.Err))
	}
	want := &droverv1.AuditEvent{
		Index: 4, Time: timestamppb.New(epoch), Actor: state.Anonymous, Action: state.ActionNodeEnroll, Target: "node/n3",
		Result:  `join token "tok" is used up (max_uses 2): create a new one with "drover token create"`,
		Details: map[string]string{"token": "tok"},
	}
	if got := h.store.Audit(3, 0, "node/n3", ""); len(got) != 1 || !proto.Equal(got[0], want) {
		t.Errorf("audit\n got %v\nwant %v", got, want)
	}
	if tok, _ := h.store.JoinToken("tok"); tok.GetUses() != 2 || tok.GetModifyIndex() != 3 {
		t.Errorf("token = %v", tok)
	}
	if _, err := h.store.Node("n3"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("refused node exists: %v", err)
	}
	if n := len(h.store.Nodes()); n != 2 {
		t.Errorf("%d nodes, want 2", n)
	}
}

// TestEnrollmentsRaceForMaxUsesWithRaft proposes many enrollments
// concurrently through a real Raft: exactly max_uses succeed, and they are
// the first in log order.
func TestEnrollmentsRaceForMaxUsesWithRaft(t *testing.T) {
	store := state.New()
	r := startRaft(t, store)
	if err := r.Apply(createJoinToken(t, "alice", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:], MaxUses: 2}).Data, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	const agents = 8
	results := make([]*fsm.ApplyResult, agents)
	var wg sync.WaitGroup
	for i := range agents {
		l := enrollNode(t, epoch, "tok", joinSecret[:], fmt.Sprintf("n%d", i), fmt.Sprintf("node-%d", i))
		wg.Go(func() {
			f := r.Apply(l.Data, 5*time.Second)
			if err := f.Error(); err != nil {
				t.Error(err)
				return
			}
			results[i] = f.Response().(*fsm.ApplyResult)
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	sort.Slice(results, func(i, j int) bool { return results[i].Index < results[j].Index })
	for i, res := range results {
		if i < 2 {
			if res.Err != nil {
				t.Errorf("enrollment at index %d (%d in log order): %v", res.Index, i+1, res.Err)
			}
			continue
		}
		if !errors.Is(res.Err, state.ErrTokenUsedUp) {
			t.Errorf("enrollment at index %d (%d in log order): %v, want used up", res.Index, i+1, res.Err)
		}
	}
	if tok, _ := store.JoinToken("tok"); tok.GetUses() != 2 || len(store.Nodes()) != 2 {
		t.Errorf("token %v, %d nodes", tok, len(store.Nodes()))
	}
	refused := 0
	for _, ev := range store.Audit(0, 0, "node/", "") {
		if ev.GetAction() == state.ActionNodeEnroll && strings.Contains(ev.GetResult(), "used up") {
			refused++
		}
	}
	if refused != agents-2 {
		t.Errorf("%d refusals audited, want %d", refused, agents-2)
	}
}

// TestExpiredTokenRefusedAtCommandTime: expiry is judged at the time the
// proposer stamped on the command, so replaying the log later (long after
// the token expired by the clock) gives the same results.
func TestExpiredTokenRefusedAtCommandTime(t *testing.T) {
	expires := epoch.Add(time.Hour)
	logs := []*raft.Log{
		createJoinToken(t, "alice", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:], ExpireTime: timestamppb.New(expires)}),
		enrollNode(t, expires.Add(-time.Minute), "tok", joinSecret[:], "n1", "gpu-01"),
		enrollNode(t, expires, "tok", joinSecret[:], "n2", "gpu-02"),
		enrollNode(t, expires.Add(time.Minute), "tok", joinSecret[:], "n3", "gpu-03"),
	}
	h := newHarness(t)
	var got []*fsm.ApplyResult
	for _, l := range logs {
		got = append(got, h.apply(l))
	}
	if got[1].Err != nil {
		t.Errorf("enroll a minute before expiry: %v", got[1].Err)
	}
	for _, res := range got[2:] {
		if !errors.Is(res.Err, state.ErrTokenExpired) || !strings.Contains(res.Err.Error(), "expired at 2025-01-02T04:04:05Z") {
			t.Errorf("enroll at index %d: %v, want expired", res.Index, res.Err)
		}
		if r := state.Reason(res.Err); r != droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED {
			t.Errorf("enroll at index %d: reason %v, want TOKEN_EXPIRED", res.Index, r)
		}
		if evs := h.store.Audit(res.Index-1, 1, "", ""); len(evs) != 1 || evs[0].GetResult() != res.Err.Error() || evs[0].GetAction() != state.ActionNodeEnroll {
			t.Errorf("audit = %v", evs)
		}
	}
	// A replay elsewhere decides the same.
	replay := newHarness(t)
	for _, l := range logs {
		replay.apply(l)
	}
	requireSameState(t, h.store, replay.store)
}

// TestRevokedNodeCannotRegister: a revoked node is refused registration
// and READY; it may be marked DOWN (the leader stops hearing it) or LEFT.
func TestRevokedNodeCannotRegister(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createJoinToken(t, "alice", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:]}))
	h.mustApply(enrollNode(t, epoch, "tok", joinSecret[:], "n1", "gpu-01"))
	h.mustApply(registerNode(t, "n1", gpuInventory))
	h.mustApply(revokeNode(t, "alice", "n1"))
	h.mustApply(setNodeStatus(t, nodeStatus("n1", droverv1.NodeStatus_NODE_STATUS_DOWN)))
	before, _ := h.store.Node("n1")
	if before.GetStatus() != droverv1.NodeStatus_NODE_STATUS_DOWN {
		t.Fatalf("revoked node not marked down: %v", before)
	}

	res := h.apply(registerNode(t, "n1", &droverv1.NodeInventory{}))
	if !errors.Is(res.Err, state.ErrNodeRevoked) || res.Value != nil {
		t.Fatalf("register revoked node: %+v", res)
	}
	if r := state.Reason(res.Err); r != droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED {
		t.Errorf("register revoked node: reason %v, want NODE_REVOKED", r)
	}
	if ev := h.lastAudit(); ev.GetAction() != state.ActionNodeRegister || ev.GetTarget() != "node/n1" || ev.GetResult() != res.Err.Error() {
		t.Errorf("audit = %v", ev)
	}
	h.mustApply(setNodeStatus(t, nodeStatus("n1", droverv1.NodeStatus_NODE_STATUS_READY)))
	if ev := h.lastAudit(); ev.GetDetails()["refused"] != "n1 (revoked)" {
		t.Errorf("audit = %v", ev)
	}
	if after, _ := h.store.Node("n1"); !proto.Equal(before, after) {
		t.Errorf("refused commands changed the node:\n%v\n%v", before, after)
	}
	h.mustApply(setNodeStatus(t, nodeStatus("n1", droverv1.NodeStatus_NODE_STATUS_LEFT)))
	if n, _ := h.store.Node("n1"); n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_LEFT || !n.GetRevoked() {
		t.Errorf("node = %v", n)
	}
	// Its name is free again for a new enrollment.
	if res := h.apply(enrollNode(t, epoch, "tok", joinSecret[:], "n2", "gpu-01")); res.Err != nil {
		t.Errorf("re-enroll under the name of a node that left: %v", res.Err)
	}
}

func TestUndecodableNodeCommandsAudited(t *testing.T) {
	h := newHarness(t)
	for typ, action := range map[droverv1.CommandType]string{
		droverv1.CommandType_COMMAND_TYPE_CREATE_JOIN_TOKEN: state.ActionTokenCreate,
		droverv1.CommandType_COMMAND_TYPE_REVOKE_JOIN_TOKEN: state.ActionTokenRevoke,
		droverv1.CommandType_COMMAND_TYPE_ENROLL_NODE:       state.ActionNodeEnroll,
		droverv1.CommandType_COMMAND_TYPE_REGISTER_NODE:     state.ActionNodeRegister,
		droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS:   state.ActionNodeStatus,
		droverv1.CommandType_COMMAND_TYPE_SET_NODE_DRAIN:    state.ActionNodeDrain,
		droverv1.CommandType_COMMAND_TYPE_SET_NODE_LABELS:   state.ActionNodeLabel,
		droverv1.CommandType_COMMAND_TYPE_REVOKE_NODE:       state.ActionNodeRevoke,
	} {
		res := h.apply(&raft.Log{Type: raft.LogCommand, Data: []byte{1, byte(typ), 0xff, 0xff}})
		if !errors.Is(res.Err, fsm.ErrMalformed) {
			t.Errorf("%v: %v, want ErrMalformed", typ, res.Err)
		}
		if ev := h.lastAudit(); ev.GetAction() != action {
			t.Errorf("%v: audit action %q, want %q", typ, ev.GetAction(), action)
		}
	}
}
