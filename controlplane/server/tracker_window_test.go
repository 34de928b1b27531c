package server

import (
	"crypto/sha256"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// trackerState is a store for the tracker tests, written the way the FSM
// writes it: one command at a time, at increasing indexes.
type trackerState struct {
	t   *testing.T
	st  *state.Store
	idx uint64
}

func newTrackerState(t *testing.T) *trackerState {
	ts := &trackerState{t: t, st: state.New()}
	secret := sha256.Sum256([]byte("secret"))
	if _, err := ts.st.CreateJoinToken(ts.next(), ts.meta(), &droverv1.JoinToken{Id: "tok", SecretSha256: secret[:]}); err != nil {
		t.Fatal(err)
	}
	return ts
}

func (ts *trackerState) next() uint64 { ts.idx++; return ts.idx }

func (ts *trackerState) meta() *droverv1.CommandMeta {
	return &droverv1.CommandMeta{Time: timestamppb.New(time.Unix(1000, 0)), Actor: "test"}
}

// enroll enrolls node id (named after it) in site lab.
func (ts *trackerState) enroll(id string) {
	ts.t.Helper()
	secret := sha256.Sum256([]byte("secret"))
	if _, err := ts.st.EnrollNode(ts.next(), ts.meta(), &droverv1.EnrollNodeCommand{
		TokenId: "tok", TokenSecretSha256: secret[:], Node: &droverv1.Node{Id: id, Name: id, Site: "lab"},
	}); err != nil {
		ts.t.Fatalf("enroll %s: %v", id, err)
	}
}

// register registers node id with a gossip address and returns it as the
// state has it then.
func (ts *trackerState) register(id string) *droverv1.Node {
	ts.t.Helper()
	n, err := ts.st.RegisterNode(ts.next(), ts.meta(), id, nil, "test", "10.0.0.1:7947")
	if err != nil {
		ts.t.Fatalf("register %s: %v", id, err)
	}
	return n
}

func (ts *trackerState) setStatus(id string, st droverv1.NodeStatus) {
	ts.t.Helper()
	if err := ts.st.SetNodeStatus(ts.next(), ts.meta(), []*droverv1.NodeStatusUpdate{{NodeId: id, Status: st}}); err != nil {
		ts.t.Fatal(err)
	}
}

func (ts *trackerState) server() *Server {
	return &Server{
		state:  ts.st,
		logger: slog.New(slog.DiscardHandler),
		cfg: Config{
			Name:                   "s1",
			HeartbeatMinTTL:        Duration(3 * time.Second),
			MaxHeartbeatsPerSecond: 50,
			HeartbeatLeaderGrace:   Duration(10 * time.Second),
		},
	}
}

// hookedNodes is the state as the tracker reads it, with hook run once
// right after Nodes has read the nodes: what the state does next, at the
// worst moment for the tracker.
type hookedNodes struct {
	*state.Store
	hook func()
}

func (h *hookedNodes) Nodes() []*droverv1.Node {
	nodes := h.Store.Nodes()
	if hook := h.hook; hook != nil {
		h.hook = nil
		hook()
	}
	return nodes
}

// A node that registers while a new leader's tracker starts, after the
// tracker has read the nodes from the state, is tracked all the same: a
// new node gets a deadline, and a DOWN node that came back READY is
// marked down again when it goes silent. Each registration goes through
// what the Register handler does after its command is applied.
func TestTrackerStartMissesNoRegistration(t *testing.T) {
	ts := newTrackerState(t)
	ts.enroll("n-old")
	ts.register("n-old")
	ts.enroll("n-new") // INITIALIZING when the tracker reads the state
	ts.enroll("n-back")
	ts.register("n-back")
	ts.setStatus("n-back", droverv1.NodeStatus_NODE_STATUS_DOWN) // DOWN when it is read

	s := ts.server()
	now := time.Unix(5000, 0)
	hb := newHeartbeatTracker(s)
	hb.now = func() time.Time { return now }
	hb.state = &hookedNodes{Store: ts.st, hook: func() {
		s.trackRegistration(ts.register("n-new"))
		s.trackRegistration(ts.register("n-back"))
	}}
	s.startHeartbeats(hb)
	if s.heartbeatTracker() != hb {
		t.Fatal("the tracker is not installed")
	}

	for _, id := range []string{"n-old", "n-new", "n-back"} {
		hb.mu.Lock()
		e, ok := hb.nodes[id]
		hb.mu.Unlock()
		if !ok {
			t.Fatalf("node %s registered but is not tracked", id)
		}
		if e.downSent {
			t.Errorf("node %s is READY in the state but tracked as DOWN: silent, it would stay READY", id)
		}
	}
	// Silent past every deadline, grace included: all three are due.
	now = now.Add(time.Hour)
	for _, id := range []string{"n-old", "n-new", "n-back"} {
		if expired, _ := due(hb, id); !expired {
			t.Errorf("node %s silent for an hour is not due to be marked down", id)
		}
	}
}

// A revoked node that is READY is tracked by a new leader's tracker, so
// it is marked DOWN when its grace passes; one already DOWN is not: it
// can never heartbeat back. Neither is handed out as a site peer.
func TestTrackerTracksRevokedReadyNode(t *testing.T) {
	ts := newTrackerState(t)
	for _, id := range []string{"n-live", "n-revoked", "n-revoked-down"} {
		ts.enroll(id)
		ts.register(id)
	}
	ts.setStatus("n-revoked-down", droverv1.NodeStatus_NODE_STATUS_DOWN)
	for _, id := range []string{"n-revoked", "n-revoked-down"} {
		if _, err := ts.st.RevokeNode(ts.next(), ts.meta(), id); err != nil {
			t.Fatal(err)
		}
	}
	s := ts.server()
	now := time.Unix(5000, 0)
	hb := newHeartbeatTracker(s)
	hb.now = func() time.Time { return now }
	s.startHeartbeats(hb)

	hb.mu.Lock()
	_, revoked := hb.nodes["n-revoked"]
	_, revokedDown := hb.nodes["n-revoked-down"]
	hb.mu.Unlock()
	if !revoked {
		t.Fatal("a revoked READY node is not tracked: it would stay READY for good")
	}
	if revokedDown {
		t.Error("a revoked DOWN node is tracked")
	}
	if got := sitePeerIDs(hb, "lab"); len(got) != 1 || !got["n-live"] {
		t.Errorf("site lab's peers %v, want n-live alone", got)
	}
	now = now.Add(time.Hour)
	if expired, _ := due(hb, "n-revoked"); !expired {
		t.Error("a silent revoked node is not due to be marked down")
	}

	// Revoked while tracked: no longer a site peer, still due.
	live, err := ts.st.Node("n-live")
	if err != nil {
		t.Fatal(err)
	}
	hb.registered(live, 0)
	hb.revoked("n-live")
	if got := sitePeerIDs(hb, "lab"); len(got) != 0 {
		t.Errorf("site lab's peers %v after revocation, want none", got)
	}
	now = now.Add(time.Hour)
	if expired, _ := due(hb, "n-live"); !expired {
		t.Error("a node revoked while tracked is not due to be marked down")
	}
}

// sitePeerIDs returns the nodes the tracker may hand out as peers of site.
func sitePeerIDs(hb *heartbeatTracker, site string) map[string]bool {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	out := map[string]bool{}
	if sp := hb.sites[site]; sp != nil {
		for _, id := range sp.ids {
			out[id] = true
		}
	}
	return out
}
