package state_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	initializing = droverv1.NodeStatus_NODE_STATUS_INITIALIZING
	ready        = droverv1.NodeStatus_NODE_STATUS_READY
	down         = droverv1.NodeStatus_NODE_STATUS_DOWN
	left         = droverv1.NodeStatus_NODE_STATUS_LEFT
)

func enrollCmd(tokenID string, secret []byte, n *droverv1.Node) *droverv1.EnrollNodeCommand {
	return &droverv1.EnrollNodeCommand{TokenId: tokenID, TokenSecretSha256: secret, Node: n}
}

// enroll enrolls a node named after its id with the token "tok".
func (f *fixture) enroll(id string, labels map[string]string) *droverv1.Node {
	f.t.Helper()
	n, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: id, Name: id, Labels: labels}))
	if err != nil {
		f.t.Fatalf("EnrollNode(%q): %v", id, err)
	}
	return n
}

func (f *fixture) status(updates ...*droverv1.NodeStatusUpdate) {
	f.t.Helper()
	if err := f.s.SetNodeStatus(f.next(), meta("leader"), updates); err != nil {
		f.t.Fatalf("SetNodeStatus: %v", err)
	}
}

func update(id string, st droverv1.NodeStatus) *droverv1.NodeStatusUpdate {
	return &droverv1.NodeStatusUpdate{NodeId: id, Status: st, Reason: "test"}
}

func (f *fixture) node(id string) *droverv1.Node {
	f.t.Helper()
	n, err := f.s.Node(id)
	if err != nil {
		f.t.Fatalf("Node(%q): %v", id, err)
	}
	return n
}

func TestEnrollNode(t *testing.T) {
	f := newFixture(t)
	tok := joinToken("tok")
	tok.MaxUses = 2
	tok.Labels = map[string]string{"zone": "operator", "tier": "gpu"}
	tok.Site = "eu-west-1"
	f.joinToken(tok)

	inv := &droverv1.NodeInventory{Host: &droverv1.HostInfo{Hostname: "gpu-01"}}
	req := &droverv1.Node{
		Id: "n1", Name: "gpu-01", Labels: map[string]string{"zone": "agent", "rack": "4"}, Site: "home",
		Inventory: inv, AgentVersion: "1.2.3",
		// Fields the store sets itself.
		Status: ready, Revoked: true, Draining: true, CreateIndex: 99, History: []*droverv1.NodeStatusChange{{Reason: "forged"}},
	}
	idx := f.next()
	n, err := f.s.EnrollNode(idx, meta("agent"), enrollCmd("tok", joinSecret[:], req))
	if err != nil {
		t.Fatal(err)
	}
	want := &droverv1.Node{
		Id: "n1", Name: "gpu-01",
		Labels:    map[string]string{"zone": "operator", "tier": "gpu", "rack": "4"},
		Site:      "eu-west-1",
		Status:    initializing,
		Inventory: inv, AgentVersion: "1.2.3", TokenId: "tok",
		EnrollTime:  timestamppb.New(now),
		History:     []*droverv1.NodeStatusChange{{Status: initializing, Time: timestamppb.New(now), Reason: `enrolled with join token "tok"`, Index: idx}},
		CreateIndex: idx, ModifyIndex: idx,
	}
	if !proto.Equal(n, want) {
		t.Errorf("node\n got %v\nwant %v", n, want)
	}
	if got := f.node("n1"); !proto.Equal(got, want) {
		t.Errorf("Node(n1) = %v", got)
	}
	ev := lastAudit(t, f.s)
	wantEv := &droverv1.AuditEvent{
		Index: idx, Time: timestamppb.New(now), Actor: "agent", Action: state.ActionNodeEnroll, Target: "node/n1", Result: state.ResultOK,
		Details: map[string]string{"token": "tok", "name": "gpu-01", "uses": "1/2", "labels_overridden": "zone"},
	}
	if !proto.Equal(ev, wantEv) {
		t.Errorf("audit\n got %v\nwant %v", ev, wantEv)
	}
	if got, _ := f.s.JoinToken("tok"); got.GetUses() != 1 || got.GetModifyIndex() != idx {
		t.Errorf("token after enrollment = %v", got)
	}
	// The request is not shared with the state.
	inv.Host.Hostname = "changed"
	req.Labels["rack"] = "changed"
	if got := f.node("n1"); got.GetInventory().GetHost().GetHostname() != "gpu-01" || got.GetLabels()["rack"] != "4" {
		t.Errorf("the request is shared with the state: %v", got)
	}

	// Without a token site, the node keeps its own.
	f.joinToken(joinToken("plain"))
	n, err = f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("plain", joinSecret[:], &droverv1.Node{Id: "n2", Name: "edge-01", Site: "home"}))
	if err != nil || n.GetSite() != "home" || n.GetLabels() != nil {
		t.Errorf("enroll with a plain token = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["uses"] != "1" {
		t.Errorf("audit details %v, want uses 1 (no limit)", ev.GetDetails())
	}
}

// TestEnrollNodeTokenChecks checks each way a token can refuse an
// enrollment, and that a refusal uses nothing up.
func TestEnrollNodeTokenChecks(t *testing.T) {
	expires := now.Add(time.Hour)
	tests := []struct {
		name    string
		tok     func(*droverv1.JoinToken)
		before  func(*fixture) // after the token is created
		tokenID string
		secret  []byte
		at      time.Time
		want    error
		message string
		refused string // audit detail
	}{
		{name: "ok", at: now},
		{
			name: "unknown id", tokenID: "nope", at: now, want: state.ErrTokenInvalid, refused: "unknown token id",
			message: `join token "nope" is not valid: unknown id or wrong secret; check the token string the agent was given`,
		},
		{
			name: "wrong secret", secret: make([]byte, 32), at: now, want: state.ErrTokenInvalid, refused: "wrong secret",
			message: `join token "tok" is not valid: unknown id or wrong secret; check the token string the agent was given`,
		},
		{name: "short secret", secret: joinSecret[:31], at: now, want: state.ErrTokenInvalid, refused: "wrong secret"},
		{name: "no secret", secret: []byte{}, at: now, want: state.ErrTokenInvalid, refused: "wrong secret"},
		{
			name: "revoked", at: now, want: state.ErrTokenRevoked,
			before: func(f *fixture) {
				if _, err := f.s.RevokeJoinToken(f.next(), meta("alice"), "tok"); err != nil {
					f.t.Fatal(err)
				}
			},
			message: `join token "tok" was revoked: create a new one with "drover token create"`,
		},
		{name: "before expiry", tok: func(t *droverv1.JoinToken) { t.ExpireTime = timestamppb.New(expires) }, at: expires.Add(-time.Nanosecond)},
		{
			name: "at expiry", tok: func(t *droverv1.JoinToken) { t.ExpireTime = timestamppb.New(expires) }, at: expires, want: state.ErrTokenExpired,
			message: `join token "tok" expired at 2025-01-02T04:04:05Z: create a new one with "drover token create"`,
		},
		{name: "after expiry", tok: func(t *droverv1.JoinToken) { t.ExpireTime = timestamppb.New(expires) }, at: expires.Add(time.Hour), want: state.ErrTokenExpired},
		{
			name: "used up", tok: func(t *droverv1.JoinToken) { t.MaxUses = 1 }, at: now, want: state.ErrTokenUsedUp,
			before:  func(f *fixture) { f.enroll("first", nil) },
			message: `join token "tok" is used up (max_uses 1): create a new one with "drover token create"`,
		},
		{
			// A wrong secret hides the rest: an agent without the secret
			// learns nothing about the token.
			name: "revoked with wrong secret", secret: make([]byte, 32), at: now, want: state.ErrTokenInvalid, refused: "wrong secret",
			before: func(f *fixture) {
				if _, err := f.s.RevokeJoinToken(f.next(), meta("alice"), "tok"); err != nil {
					f.t.Fatal(err)
				}
			},
		},
	}
	// Each refusal has its own wire reason.
	wantReason := map[error]droverv1.ErrorReason{
		state.ErrTokenInvalid: droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
		state.ErrTokenRevoked: droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED,
		state.ErrTokenExpired: droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED,
		state.ErrTokenUsedUp:  droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			tok := joinToken("tok")
			if tt.tok != nil {
				tt.tok(tok)
			}
			f.joinToken(tok)
			if tt.before != nil {
				tt.before(f)
			}
			before, _ := f.s.JoinToken("tok")
			id, secret := cmpOr(tt.tokenID, "tok"), joinSecret[:]
			if tt.secret != nil {
				secret = tt.secret
			}
			idx := f.next()
			n, err := f.s.EnrollNode(idx, metaAt("agent", tt.at), enrollCmd(id, secret, &droverv1.Node{Id: "n1", Name: "gpu-01"}))
			after, _ := f.s.JoinToken("tok")
			if tt.want == nil {
				if err != nil || n.GetId() != "n1" || after.GetUses() != before.GetUses()+1 {
					t.Fatalf("EnrollNode = %v, %v; uses %d", n, err, after.GetUses())
				}
				return
			}
			if !errors.Is(err, tt.want) || n != nil {
				t.Fatalf("EnrollNode = %v, %v; want %v", n, err, tt.want)
			}
			if tt.message != "" && err.Error() != tt.message {
				t.Errorf("message\n got %s\nwant %s", err, tt.message)
			}
			if got, want := state.Reason(err), wantReason[tt.want]; got != want {
				t.Errorf("Reason = %v, want %v", got, want)
			}
			if !proto.Equal(before, after) {
				t.Errorf("a refused enrollment changed the token:\n%v\n%v", before, after)
			}
			if _, err := f.s.Node("n1"); !errors.Is(err, state.ErrNotFound) {
				t.Errorf("a refused enrollment created the node: %v", err)
			}
			ev := lastAudit(t, f.s)
			if ev.GetIndex() != idx || ev.GetAction() != state.ActionNodeEnroll || ev.GetTarget() != "node/n1" ||
				ev.GetResult() != err.Error() || ev.GetDetails()["token"] != id || ev.GetDetails()["refused"] != tt.refused {
				t.Errorf("audit = %v", ev)
			}
		})
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestTokenExpiryUsesCommandTime checks that expiry is judged against the
// command's time, never the local clock: every server must decide alike.
func TestTokenExpiryUsesCommandTime(t *testing.T) {
	f := newFixture(t)
	tok := joinToken("tok")
	tok.CreateTime = timestamppb.New(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))
	tok.ExpireTime = timestamppb.New(time.Date(2000, 1, 2, 0, 0, 0, 0, time.UTC)) // long past by the clock
	f.joinToken(tok)
	if _, err := f.s.EnrollNode(f.next(), metaAt("agent", time.Date(2000, 1, 1, 12, 0, 0, 0, time.UTC)), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "n1", Name: "a"})); err != nil {
		t.Errorf("enroll before expiry by command time: %v", err)
	}
	// A command without a time cannot be checked against an expiry.
	_, err := f.s.EnrollNode(f.next(), &droverv1.CommandMeta{Actor: "agent"}, enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "n2", Name: "b"}))
	if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), "no time") {
		t.Errorf("enroll without a time = %v", err)
	}
}

func TestEnrollNodeRefusals(t *testing.T) {
	f := newFixture(t)
	tok := joinToken("tok")
	tok.Labels = manyLabels(state.MaxLabels - 1)
	f.joinToken(tok)
	f.enroll("taken", nil)
	f.enroll("gone", nil)
	f.status(update("gone", left))

	tests := []struct {
		name    string
		node    *droverv1.Node
		want    error
		mention string
	}{
		{"nil node", nil, state.ErrInvalid, `node id ""`},
		{"bad id", &droverv1.Node{Id: "N 1", Name: "a"}, state.ErrInvalid, `node id "N 1"`},
		{"bad name", &droverv1.Node{Id: "n1", Name: "GPU 01"}, state.ErrInvalid, `node name "GPU 01" is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit, e.g. "gpu-01"`},
		{"bad label", &droverv1.Node{Id: "n1", Name: "a", Labels: map[string]string{"a": "b c"}}, state.ErrInvalid, `label "a" value "b c"`},
		{"bad site", &droverv1.Node{Id: "n1", Name: "a", Site: "-x"}, state.ErrInvalid, `site name "-x"`},
		{"inventory too big", &droverv1.Node{Id: "n1", Name: "a", Inventory: &droverv1.NodeInventory{Warnings: []string{strings.Repeat("x", state.MaxInventoryBytes)}}}, state.ErrInvalid, "inventory"},
		{"too many labels with the token's", &droverv1.Node{Id: "n1", Name: "a", Labels: map[string]string{"x": "1", "y": "2"}}, state.ErrInvalid, "65 labels"},
		{"id exists", &droverv1.Node{Id: "taken", Name: "other"}, state.ErrAlreadyExists, `node "taken" already exists`},
		{"left id exists", &droverv1.Node{Id: "gone", Name: "other"}, state.ErrAlreadyExists, `node "gone" already exists`},
		{"name exists", &droverv1.Node{Id: "n1", Name: "taken"}, state.ErrAlreadyExists, `node name "taken" already exists: node "taken" has it`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := f.s.JoinToken("tok")
			_, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], tt.node))
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("EnrollNode = %v; want %v mentioning %s", err, tt.want, tt.mention)
			}
			if after, _ := f.s.JoinToken("tok"); after.GetUses() != before.GetUses() {
				t.Errorf("a refused enrollment used the token")
			}
			if ev := lastAudit(t, f.s); ev.GetResult() != err.Error() || ev.GetDetails()["token"] != "tok" {
				t.Errorf("audit = %v", ev)
			}
		})
	}
	// A machine whose old node left enrolls again under the same name.
	n, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "gone-2", Name: "gone"}))
	if err != nil || n.GetName() != "gone" {
		t.Fatalf("re-enroll under a left node's name = %v, %v", n, err)
	}
	// Now the name is taken again.
	_, err = f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "gone-3", Name: "gone"}))
	if !errors.Is(err, state.ErrAlreadyExists) || !strings.Contains(err.Error(), `node "gone-2"`) {
		t.Errorf("third node named gone = %v", err)
	}
}

func TestRegisterNode(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	inv := &droverv1.NodeInventory{Gpus: []*droverv1.GPUInfo{{Name: "NVIDIA A100", MemoryTotalBytes: 80 << 30}}}

	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "nope", inv, "1.0", ""); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("register unknown = %v", err)
	}

	idx := f.next()
	n, err := f.s.RegisterNode(idx, meta("agent"), "n1", inv, "1.0", "")
	if err != nil || n.GetStatus() != ready || n.GetAgentVersion() != "1.0" || !proto.Equal(n.GetInventory(), inv) || n.GetModifyIndex() != idx {
		t.Fatalf("register = %v, %v", n, err)
	}
	if h := n.GetHistory(); len(h) != 2 || h[1].GetStatus() != ready || h[1].GetIndex() != idx || h[1].GetReason() != "registered" {
		t.Errorf("history = %v", h)
	}
	ev := lastAudit(t, f.s)
	if want := map[string]string{"status": "READY", "previous": "INITIALIZING", "agent_version": "1.0"}; !maps.Equal(ev.GetDetails(), want) || ev.GetAction() != state.ActionNodeRegister || ev.GetTarget() != "node/n1" {
		t.Errorf("audit = %v", ev)
	}
	inv.Gpus[0].Name = "changed"
	if got := f.node("n1"); got.GetInventory().GetGpus()[0].GetName() != "NVIDIA A100" {
		t.Errorf("the inventory is shared with the caller")
	}

	// READY stays READY; the same registration again changes nothing.
	inv.Gpus[0].Name = "NVIDIA A100"
	n, err = f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.0", "")
	if err != nil || n.GetStatus() != ready || len(n.GetHistory()) != 2 || n.GetModifyIndex() != idx {
		t.Errorf("register again = %v, %v", n, err)
	}
	// A new agent version is stored without a status change.
	idx = f.next()
	n, err = f.s.RegisterNode(idx, meta("agent"), "n1", inv, "1.1", "")
	if err != nil || n.GetAgentVersion() != "1.1" || len(n.GetHistory()) != 2 || n.GetModifyIndex() != idx {
		t.Errorf("register a new version = %v, %v", n, err)
	}

	// DOWN → READY.
	f.status(update("n1", down))
	n, err = f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.1", "")
	if err != nil || n.GetStatus() != ready || len(n.GetHistory()) != 4 {
		t.Errorf("register when down = %v, %v", n, err)
	}

	// Oversized inventory.
	big := &droverv1.NodeInventory{Warnings: []string{strings.Repeat("x", state.MaxInventoryBytes)}}
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", big, "1.1", ""); !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), "inventory") {
		t.Errorf("register a big inventory = %v", err)
	}

	// Revoked: refused.
	if _, err := f.s.RevokeNode(f.next(), meta("alice"), "n1"); err != nil {
		t.Fatal(err)
	}
	before := f.node("n1")
	_, err = f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.2", "")
	if !errors.Is(err, state.ErrNodeRevoked) || state.Reason(err) != droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED {
		t.Errorf("register a revoked node = %v", err)
	}
	if !proto.Equal(before, f.node("n1")) {
		t.Errorf("a refused registration changed the node")
	}

	// Left: refused.
	f.enroll("n2", nil)
	f.status(update("n2", left))
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n2", inv, "1.0", ""); !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), "left") {
		t.Errorf("register a node that left = %v", err)
	}
}

func TestSetNodeStatus(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	for _, id := range []string{"a", "b", "c", "d"} {
		f.enroll(id, nil)
	}
	if _, err := f.s.RevokeNode(f.next(), meta("alice"), "d"); err != nil {
		t.Fatal(err)
	}

	idx := f.next()
	err := f.s.SetNodeStatus(idx, meta("leader"), []*droverv1.NodeStatusUpdate{
		update("a", down),
		update("ghost", down),
		update("b", initializing), // refused below: not a status to set
	})
	if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), `status update 2 (node "b")`) {
		t.Fatalf("batch with a bad status = %v", err)
	}
	if f.node("a").GetStatus() != initializing {
		t.Errorf("a refused batch changed a node")
	}
	long := update("a", down)
	long.Reason = strings.Repeat("x", state.MaxReasonBytes+1)
	if err := f.s.SetNodeStatus(f.next(), meta("leader"), []*droverv1.NodeStatusUpdate{long}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("overlong reason = %v", err)
	}

	idx = f.next()
	err = f.s.SetNodeStatus(idx, meta("leader"), []*droverv1.NodeStatusUpdate{
		update("a", down),
		update("ghost", down),
		update("b", ready),
		update("c", left),
		update("d", ready), // revoked: never READY
		update("a", down),  // already down
		update("other-ghost", ready),
	})
	if err != nil {
		t.Fatal(err)
	}
	ev := lastAudit(t, f.s)
	wantDetails := map[string]string{
		"changed":   "a=DOWN,b=READY,c=LEFT",
		"unchanged": "a",
		"not_found": "ghost,other-ghost",
		"refused":   "d (revoked)",
	}
	if ev.GetResult() != state.ResultOK || ev.GetTarget() != "node/" || ev.GetAction() != state.ActionNodeStatus || !maps.Equal(ev.GetDetails(), wantDetails) {
		t.Errorf("audit = %v\nwant details %v", ev, wantDetails)
	}
	a := f.node("a")
	if a.GetStatus() != down || a.GetModifyIndex() != idx || len(a.GetHistory()) != 2 {
		t.Errorf("a = %v", a)
	}
	if h := a.GetHistory()[1]; h.GetStatus() != down || h.GetReason() != "test" || h.GetIndex() != idx || !h.GetTime().AsTime().Equal(now) {
		t.Errorf("history entry = %v", h)
	}
	if d := f.node("d"); d.GetStatus() != initializing || len(d.GetHistory()) != 1 {
		t.Errorf("revoked node changed: %v", d)
	}

	// A single node's update targets it; LEFT is final; a revoked node may leave.
	f.status(update("c", ready))
	if ev := lastAudit(t, f.s); ev.GetTarget() != "node/c" || ev.GetDetails()["refused"] != "c (left)" {
		t.Errorf("audit = %v", ev)
	}
	if c := f.node("c"); c.GetStatus() != left {
		t.Errorf("a node came back from LEFT: %v", c)
	}
	// A revoked node may be marked DOWN (its heartbeats are refused, so
	// that is what it is to the leader), and then never READY again.
	f.status(update("d", down))
	if d := f.node("d"); d.GetStatus() != down {
		t.Errorf("a revoked node could not be marked down: %v", d)
	}
	f.status(update("d", ready))
	if ev := lastAudit(t, f.s); ev.GetDetails()["refused"] != "d (revoked)" || f.node("d").GetStatus() != down {
		t.Errorf("a revoked DOWN node set READY: audit %v, node %v", ev, f.node("d"))
	}
	f.status(update("d", left))
	if d := f.node("d"); d.GetStatus() != left {
		t.Errorf("a revoked node could not leave: %v", d)
	}
	// An empty batch is fine.
	if err := f.s.SetNodeStatus(f.next(), meta("leader"), nil); err != nil {
		t.Errorf("empty batch = %v", err)
	}
	if ev := lastAudit(t, f.s); ev.GetTarget() != "node/" || len(ev.GetDetails()) != 0 {
		t.Errorf("audit = %v", ev)
	}
}

func TestNodeHistoryBounded(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	var last uint64
	for i := range 2 * state.MaxNodeHistory {
		st := down
		if i%2 == 1 {
			st = ready
		}
		f.status(update("n1", st))
		last = f.idx
	}
	h := f.node("n1").GetHistory()
	if len(h) != state.MaxNodeHistory {
		t.Fatalf("%d history entries, want %d", len(h), state.MaxNodeHistory)
	}
	if h[len(h)-1].GetIndex() != last || h[0].GetIndex() != last-state.MaxNodeHistory+1 {
		t.Errorf("history spans %d-%d, want %d-%d", h[0].GetIndex(), h[len(h)-1].GetIndex(), last-state.MaxNodeHistory+1, last)
	}
	for i := 1; i < len(h); i++ {
		if h[i].GetIndex() <= h[i-1].GetIndex() {
			t.Fatalf("history out of order at %d", i)
		}
	}
}

func TestSetNodeDrain(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	if _, err := f.s.SetNodeDrain(f.next(), meta("alice"), "nope", true); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("drain unknown = %v", err)
	}
	idx := f.next()
	n, err := f.s.SetNodeDrain(idx, meta("alice"), "n1", true)
	if err != nil || !n.GetDraining() || n.GetModifyIndex() != idx {
		t.Fatalf("drain = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionNodeDrain || ev.GetTarget() != "node/n1" || ev.GetResult() != state.ResultOK {
		t.Errorf("audit = %v", ev)
	}
	if n, _ := f.s.SetNodeDrain(f.next(), meta("alice"), "n1", true); n.GetModifyIndex() != idx {
		t.Errorf("draining a drained node changed it: %v", n)
	}
	n, err = f.s.SetNodeDrain(f.next(), meta("alice"), "n1", false)
	if err != nil || n.GetDraining() {
		t.Fatalf("undrain = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionNodeUndrain {
		t.Errorf("audit = %v", ev)
	}
}

func TestSetNodeLabels(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", map[string]string{"keep": "1", "drop": "1", "move": "old"})

	idx := f.next()
	n, err := f.s.SetNodeLabels(idx, meta("alice"), "n1", map[string]string{"move": "new", "add": "x", "both": "y"}, []string{"drop", "both", "absent", "drop"})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"keep": "1", "move": "new", "add": "x"}; !maps.Equal(n.GetLabels(), want) || n.GetModifyIndex() != idx {
		t.Errorf("labels = %v (modify %d), want %v", n.GetLabels(), n.GetModifyIndex(), want)
	}
	ev := lastAudit(t, f.s)
	if want := map[string]string{"set": "add=x,both=y,move=new", "remove": "absent,both,drop"}; !maps.Equal(ev.GetDetails(), want) || ev.GetAction() != state.ActionNodeLabel || ev.GetTarget() != "node/n1" {
		t.Errorf("audit = %v", ev)
	}
	// A change that changes nothing keeps the modify index.
	if n, err := f.s.SetNodeLabels(f.next(), meta("alice"), "n1", map[string]string{"keep": "1"}, []string{"absent"}); err != nil || n.GetModifyIndex() != idx {
		t.Errorf("no-op label change = %v, %v", n, err)
	}

	tests := []struct {
		name    string
		id      string
		set     map[string]string
		remove  []string
		want    error
		mention string
	}{
		{"unknown node", "nope", map[string]string{"a": "b"}, nil, state.ErrNotFound, `node "nope" not found`},
		{"bad key", "n1", map[string]string{"a b": "x"}, nil, state.ErrInvalid, `label key "a b"`},
		{"bad value", "n1", map[string]string{"a": "x y"}, nil, state.ErrInvalid, `label "a" value`},
		{"bad remove key", "n1", nil, []string{"ok", ""}, state.ErrInvalid, `label key ""`},
		{"too many", "n1", manyLabels(state.MaxLabels - 1), nil, state.ErrInvalid, "leaves 66 labels"},
	}
	for _, tt := range tests {
		before := f.node("n1")
		_, err := f.s.SetNodeLabels(f.next(), meta("alice"), tt.id, tt.set, tt.remove)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("%s: SetNodeLabels = %v; want %v mentioning %s", tt.name, err, tt.want, tt.mention)
		}
		if !proto.Equal(before, f.node("n1")) {
			t.Errorf("%s: a refused change changed the node", tt.name)
		}
	}
}

func TestRevokeNode(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	if _, err := f.s.RevokeNode(f.next(), meta("alice"), "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("revoke unknown = %v", err)
	}
	idx := f.next()
	n, err := f.s.RevokeNode(idx, meta("alice"), "n1")
	if err != nil || !n.GetRevoked() || n.GetModifyIndex() != idx || n.GetStatus() != initializing {
		t.Fatalf("revoke = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionNodeRevoke || ev.GetTarget() != "node/n1" || len(ev.GetDetails()) != 0 {
		t.Errorf("audit = %v", ev)
	}
	n, err = f.s.RevokeNode(f.next(), meta("alice"), "n1")
	if err != nil || !n.GetRevoked() || n.GetModifyIndex() != idx {
		t.Errorf("revoke again = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["already_revoked"] != "true" {
		t.Errorf("audit = %v", ev)
	}
	// Operators may still drain and label a revoked node.
	if _, err := f.s.SetNodeDrain(f.next(), meta("alice"), "n1", true); err != nil {
		t.Errorf("drain a revoked node = %v", err)
	}
}

func TestNodesFiltered(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	gpus := func(gs ...*droverv1.GPUInfo) *droverv1.NodeInventory { return &droverv1.NodeInventory{Gpus: gs} }
	nodes := []struct {
		id, site string
		labels   map[string]string
		inv      *droverv1.NodeInventory
	}{
		{"dgx", "dc", map[string]string{"tier": "gpu", "zone": "a"}, gpus(
			&droverv1.GPUInfo{Name: "NVIDIA A100-SXM4-40GB", MemoryTotalBytes: 40 << 30},
			&droverv1.GPUInfo{Name: "Tesla T4", MemoryTotalBytes: 16 << 30})},
		{"big", "dc", map[string]string{"tier": "gpu", "zone": "b"}, gpus(&droverv1.GPUInfo{Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30})},
		{"edge", "shop", map[string]string{"tier": "edge"}, nil},
		{"cpu", "dc", nil, gpus()},
	}
	for _, n := range nodes {
		if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: n.id, Name: n.id, Site: n.site, Labels: n.labels, Inventory: n.inv})); err != nil {
			t.Fatal(err)
		}
	}
	f.status(update("big", ready), update("dgx", ready))

	tests := []struct {
		name   string
		filter state.NodeFilter
		want   string
	}{
		{"all", state.NodeFilter{}, "big,cpu,dgx,edge"},
		{"label", state.NodeFilter{Labels: map[string]string{"tier": "gpu"}}, "big,dgx"},
		{"labels", state.NodeFilter{Labels: map[string]string{"tier": "gpu", "zone": "a"}}, "dgx"},
		{"empty label value is a value", state.NodeFilter{Labels: map[string]string{"zone": ""}}, ""},
		{"site", state.NodeFilter{Site: "shop"}, "edge"},
		{"status", state.NodeFilter{Status: ready}, "big,dgx"},
		{"status and site", state.NodeFilter{Status: initializing, Site: "dc"}, "cpu"},
		{"gpu model, any case", state.NodeFilter{GPUModelContains: "t4"}, "dgx"},
		{"gpu memory", state.NodeFilter{MinGPUMemoryBytes: 40 << 30}, "big,dgx"},
		{"gpu memory, large", state.NodeFilter{MinGPUMemoryBytes: 41 << 30}, "big"},
		// dgx has an A100 and a 16 GiB GPU, but no A100 with 80 GiB.
		{"one gpu must match both", state.NodeFilter{GPUModelContains: "A100", MinGPUMemoryBytes: 80 << 30}, ""},
		{"one gpu matches both", state.NodeFilter{GPUModelContains: "A100", MinGPUMemoryBytes: 40 << 30}, "dgx"},
		{"any gpu", state.NodeFilter{MinGPUMemoryBytes: 1}, "big,dgx"},
		{"everything", state.NodeFilter{Labels: map[string]string{"tier": "gpu"}, Site: "dc", Status: ready, GPUModelContains: "h100", MinGPUMemoryBytes: 1}, "big"},
	}
	for _, tt := range tests {
		var ids []string
		for _, n := range f.s.NodesFiltered(tt.filter) {
			ids = append(ids, n.GetId())
		}
		if got := strings.Join(ids, ","); got != tt.want {
			t.Errorf("%s: NodesFiltered = %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestNodesSortedByName(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	for _, n := range []struct{ id, name string }{{"id-3", "b"}, {"id-2", "a"}, {"id-1", "c"}} {
		if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: n.id, Name: n.name})); err != nil {
			t.Fatal(err)
		}
	}
	f.status(update("id-2", left))
	if _, err := f.s.EnrollNode(f.next(), meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "id-0", Name: "a"})); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range f.s.Nodes() {
		got = append(got, n.GetName()+"/"+n.GetId())
	}
	if want := "a/id-0,a/id-2,b/id-3,c/id-1"; strings.Join(got, ",") != want {
		t.Errorf("Nodes = %v, want %s", got, want)
	}
}

func TestNodeReadsAreCopies(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", map[string]string{"a": "b"})
	inv := &droverv1.NodeInventory{Gpus: []*droverv1.GPUInfo{{Name: "T4"}}}
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.0", ""); err != nil {
		t.Fatal(err)
	}
	n := f.node("n1")
	n.Labels["a"] = "changed"
	n.Inventory.Gpus[0].Name = "changed"
	n.History[0].Reason = "changed"
	f.s.Nodes()[0].Status = down
	f.s.NodesFiltered(state.NodeFilter{})[0].Name = "changed"
	got := f.node("n1")
	if got.GetLabels()["a"] != "b" || got.GetInventory().GetGpus()[0].GetName() != "T4" || got.GetHistory()[0].GetReason() == "changed" ||
		got.GetStatus() != ready || got.GetName() != "n1" {
		t.Errorf("a reader changed the state: %v", got)
	}
}

// populateNodes writes join tokens and nodes in every state.
func populateNodes(f *fixture) {
	tok := joinToken("tok")
	tok.MaxUses = 10
	tok.Labels = map[string]string{"zone": "a"}
	tok.ExpireTime = timestamppb.New(now.Add(time.Hour))
	f.joinToken(tok)
	f.joinToken(joinToken("old"))
	if _, err := f.s.RevokeJoinToken(f.next(), meta("alice"), "old"); err != nil {
		f.t.Fatal(err)
	}
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		f.enroll(id, map[string]string{"id": id})
	}
	inv := &droverv1.NodeInventory{Host: &droverv1.HostInfo{Hostname: "n1"}, Gpus: []*droverv1.GPUInfo{{Name: "T4", MemoryTotalBytes: 16 << 30}}}
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.0", ""); err != nil {
		f.t.Fatal(err)
	}
	f.status(update("n2", down), update("n3", left))
	if _, err := f.s.SetNodeDrain(f.next(), meta("alice"), "n1", true); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.s.SetNodeLabels(f.next(), meta("alice"), "n1", map[string]string{"x": "y"}, nil); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.s.RevokeNode(f.next(), meta("alice"), "n4"); err != nil {
		f.t.Fatal(err)
	}
}

func TestSnapshotRoundTripJoinTokensAndNodes(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	populateNodes(f)
	snap := f.s.Snapshot()
	var first bytes.Buffer
	if _, err := snap.WriteTo(&first); err != nil {
		t.Fatal(err)
	}

	r := state.New()
	if err := r.Restore(bytes.NewReader(first.Bytes())); err != nil {
		t.Fatal(err)
	}
	requireSameNodes(t, f.s, r)
	var again bytes.Buffer
	if _, err := r.Snapshot().WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), again.Bytes()) {
		t.Error("snapshot → restore → snapshot changed the bytes")
	}

	// Writes after the snapshot, which copy nodes only shallowly, do not
	// show in it.
	f.status(update("n1", down))
	if _, err := f.s.SetNodeLabels(f.next(), meta("alice"), "n1", map[string]string{"x": "z"}, nil); err != nil {
		t.Fatal(err)
	}
	f.enroll("n5", nil)
	var later bytes.Buffer
	if _, err := snap.WriteTo(&later); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), later.Bytes()) {
		t.Error("a snapshot changed after later writes")
	}

	// The restored store goes on like the original: the name index is
	// rebuilt (n2 is taken, n3 left and is free) and token uses carry over.
	idx := r.Index() + 1
	if _, err := r.EnrollNode(idx, meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "x", Name: "n2"})); !errors.Is(err, state.ErrAlreadyExists) {
		t.Errorf("after restore, enroll as n2 = %v", err)
	}
	n, err := r.EnrollNode(idx+1, meta("agent"), enrollCmd("tok", joinSecret[:], &droverv1.Node{Id: "y", Name: "n3"}))
	if err != nil {
		t.Fatalf("after restore, enroll as n3 = %v", err)
	}
	if tok, _ := r.JoinToken("tok"); tok.GetUses() != 5 || n.GetLabels()["zone"] != "a" {
		t.Errorf("after restore: token %v, node %v", tok, n)
	}
}

func requireSameNodes(t *testing.T, a, b *state.Store) {
	t.Helper()
	ta, tb := a.JoinTokens(), b.JoinTokens()
	if len(ta) != len(tb) || len(ta) == 0 {
		t.Fatalf("%d join tokens != %d", len(ta), len(tb))
	}
	for i := range ta {
		if !proto.Equal(ta[i], tb[i]) {
			t.Errorf("join token\n%v\n!=\n%v", ta[i], tb[i])
		}
	}
	na, nb := a.Nodes(), b.Nodes()
	if len(na) != len(nb) || len(na) == 0 {
		t.Fatalf("%d nodes != %d", len(na), len(nb))
	}
	for i := range na {
		if !proto.Equal(na[i], nb[i]) {
			t.Errorf("node\n%v\n!=\n%v", na[i], nb[i])
		}
	}
}

// TestRestoreFormat1 checks that a snapshot written before join tokens and
// nodes existed still restores, and that such a snapshot cannot hold them.
func TestRestoreFormat1(t *testing.T) {
	hdr := &droverv1.SnapshotHeader{Format: 1, Index: 3, Cluster: &droverv1.ClusterMeta{ClusterId: "c1"}}
	end := &droverv1.SnapshotRecord{}
	model := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Model{Model: &droverv1.Model{Name: "a", LatestVersion: 1}}}
	version := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Version{Version: &droverv1.ModelVersion{Model: "a", Version: 1}}}
	token := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Token{Token: &droverv1.ACLToken{AccessorId: "acc", SecretSha256: joinSecret[:]}}}
	audit := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Audit{Audit: &droverv1.AuditEvent{Index: 3}}}

	s := state.New()
	if err := s.Restore(bytes.NewReader(stream(t, hdr, model, version, token, audit, end))); err != nil {
		t.Fatalf("Restore(format 1) = %v", err)
	}
	if _, err := s.Version("a", "1"); err != nil || !s.ACLBootstrapped() || s.Index() != 3 || len(s.JoinTokens()) != 0 || len(s.Nodes()) != 0 {
		t.Errorf("after restoring format 1: %v, index %d", err, s.Index())
	}
	// The restored store takes join tokens and nodes from then on.
	if _, err := s.CreateJoinToken(4, meta("alice"), joinToken("tok")); err != nil {
		t.Fatal(err)
	}

	for name, rec := range map[string]*droverv1.SnapshotRecord{
		"join token": {Record: &droverv1.SnapshotRecord_JoinToken{JoinToken: joinToken("tok")}},
		"node":       {Record: &droverv1.SnapshotRecord_Node{Node: &droverv1.Node{Id: "n1", Name: "n1", Status: ready}}},
	} {
		err := state.New().Restore(bytes.NewReader(stream(t, hdr, rec, end)))
		if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), "format 1 snapshots do not have") {
			t.Errorf("format 1 with a %s = %v", name, err)
		}
	}
}

func TestRestoreRefusesBadNodeRecords(t *testing.T) {
	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	end := &droverv1.SnapshotRecord{}
	jt := func(tok *droverv1.JoinToken) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_JoinToken{JoinToken: tok}}
	}
	node := func(id, name string, st droverv1.NodeStatus) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Node{Node: &droverv1.Node{Id: id, Name: name, Status: st}}}
	}
	shortHash := joinToken("tok")
	shortHash.SecretSha256 = joinSecret[:4]
	tests := []struct {
		name    string
		recs    []proto.Message
		mention string
	}{
		{"join token without id", []proto.Message{jt(joinToken(""))}, "join token id"},
		{"join token bad hash", []proto.Message{jt(shortHash)}, "SHA-256"},
		{"join token twice", []proto.Message{jt(joinToken("tok")), jt(joinToken("tok"))}, "twice"},
		{"node without id", []proto.Message{node("", "a", ready)}, "node id"},
		{"node twice", []proto.Message{node("n1", "a", ready), node("n1", "b", ready)}, "twice"},
		{"node without status", []proto.Message{node("n1", "a", droverv1.NodeStatus_NODE_STATUS_UNSPECIFIED)}, "status"},
		{"node with unknown status", []proto.Message{node("n1", "a", 42)}, "status"},
		{"names shared", []proto.Message{node("n1", "a", ready), node("n2", "a", down)}, "share the name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.model("keep")
			msgs := append(append([]proto.Message{hdr}, tt.recs...), end)
			err := f.s.Restore(bytes.NewReader(stream(t, msgs...)))
			if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Restore = %v; want ErrSnapshotInvalid mentioning %q", err, tt.mention)
			}
			if _, err := f.s.Model("keep"); err != nil || f.s.Index() != 1 {
				t.Errorf("a refused restore changed the state")
			}
		})
	}
	// Names may repeat among nodes that left.
	ok := stream(t, hdr, node("n1", "a", left), node("n2", "a", left), node("n3", "a", ready), end)
	if err := state.New().Restore(bytes.NewReader(ok)); err != nil {
		t.Errorf("Restore(left nodes sharing a name) = %v", err)
	}
}

func TestConcurrentNodeReadsDuringWrites(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	for i := range 10 {
		f.enroll(fmt.Sprintf("n%d", i), nil)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last uint64
		for ctx.Err() == nil {
			idx, _ := f.s.WaitForIndex(ctx, last)
			last = idx
			_ = f.s.NodesFiltered(state.NodeFilter{Status: ready, Labels: map[string]string{"k": "v"}})
			_, _ = f.s.Node("n3")
			var b bytes.Buffer
			_, _ = f.s.Snapshot().WriteTo(&b)
		}
	}()
	for i := range 100 {
		st := ready
		if i%2 == 1 {
			st = down
		}
		var ups []*droverv1.NodeStatusUpdate
		for j := range 10 {
			ups = append(ups, update(fmt.Sprintf("n%d", j), st))
		}
		f.status(ups...)
		if _, err := f.s.SetNodeLabels(f.next(), meta("alice"), "n3", map[string]string{"k": fmt.Sprint(i % 3)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	<-done
}

// A node's summary carries what an agent call checks, and nothing heavy;
// the registration's gossip address is stored, and a malformed one is
// refused without changing the node.
func TestNodeSummaryAndGossipAddr(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	inv := &droverv1.NodeInventory{Gpus: []*droverv1.GPUInfo{{Name: "NVIDIA A100", MemoryTotalBytes: 80 << 30}}}
	if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.0", "10.0.0.7:7947"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"10.0.0.7", "10.0.0.7:0", ":7947", "10.0.0.7:70000", "host:port"} {
		if _, err := f.s.RegisterNode(f.next(), meta("agent"), "n1", inv, "1.0", bad); !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), "gossip address") {
			t.Errorf("register with gossip address %q = %v; want ErrInvalid naming the gossip address", bad, err)
		}
	}
	sum, err := f.s.NodeSummary("n1")
	if err != nil {
		t.Fatal(err)
	}
	full := f.node("n1")
	if sum.GetId() != "n1" || sum.GetName() != full.GetName() || sum.GetSite() != full.GetSite() ||
		sum.GetStatus() != ready || sum.GetGossipAddr() != "10.0.0.7:7947" || sum.GetRevoked() {
		t.Errorf("summary = %v; node = %v", sum, full)
	}
	if sum.GetInventory() != nil || len(sum.GetHistory()) != 0 || len(sum.GetLabels()) != 0 {
		t.Errorf("summary carries the heavy fields: %v", sum)
	}
	if _, err := f.s.NodeSummary("nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("summary of an unknown node = %v", err)
	}
}
