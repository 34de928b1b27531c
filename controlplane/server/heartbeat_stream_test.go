package server_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// heartbeatStream is one agent's open HeartbeatStream.
type heartbeatStream struct {
	s      *connect.BidiStreamForClient[droverv1.HeartbeatRequest, droverv1.HeartbeatResponse]
	cancel context.CancelFunc
}

// beatTimeout is how long beat waits for an answer before it gives the
// stream up, as the agent does after its heartbeat timeout: a stream
// forwarded to a leader that died without a reset would wait forever.
const beatTimeout = 10 * time.Second

func openHeartbeatStream(t *testing.T, ctx context.Context, ac droverv1connect.AgentServiceClient) *heartbeatStream {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	s := ac.HeartbeatStream(ctx)
	t.Cleanup(func() {
		cancel()
		_ = s.CloseRequest()
		_ = s.CloseResponse()
	})
	return &heartbeatStream{s: s, cancel: cancel}
}

// beat sends one heartbeat on the stream and returns its answer.
func (h *heartbeatStream) beat(req *droverv1.HeartbeatRequest) (*droverv1.HeartbeatResponse, error) {
	timer := time.AfterFunc(beatTimeout, h.cancel)
	defer timer.Stop()
	if err := h.s.Send(req); err != nil {
		// A failed send means the stream is over; Receive says why.
		if _, rerr := h.s.Receive(); rerr != nil {
			return nil, rerr
		}
		return nil, err
	}
	return h.s.Receive()
}

// Heartbeats on one stream opened through a follower reach the leader:
// each is answered as a unary heartbeat is, they keep the node ready for
// several TTLs without a line of the log, a node revoked while its stream
// is open is refused on its next heartbeat, and when the leader dies the
// stream ends and a new one through the same follower reaches the new
// leader.
func TestHeartbeatStream(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: shortTTLs})
	l := c.Leader()
	f := followerOf(t, c, l)
	tokens, _ := operator(t, c, l)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{})
	a := newFakeAgent(t, c.CA.Pool())
	a.mustEnrollRegister(t, f.APIAddr(), tok, "edge-stream")
	revoked := newFakeAgent(t, c.CA.Pool())
	revoked.mustEnrollRegister(t, f.APIAddr(), tok, "edge-revoked")

	ctx := testCtx(t, 2*time.Minute)
	hs := openHeartbeatStream(t, ctx, a.client(t, f.APIAddr(), nil))
	first, err := hs.beat(&droverv1.HeartbeatRequest{})
	if err != nil {
		t.Fatalf("first heartbeat on a stream through a follower: %v", err)
	}
	ttl := first.GetTtl().AsDuration()
	if first.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY || ttl <= 0 || len(first.GetServers()) != 3 {
		t.Fatalf("first answer: status %v, ttl %v, servers %v; want READY, a TTL and the three servers", first.GetStatus(), ttl, first.GetServers())
	}

	// Three TTLs of heartbeats at a third of the TTL, as the agent sends
	// them: the leader hears every one, so the node never goes down and
	// the log does not move.
	before := l.Server().Raft().LastIndex()
	for end := time.Now().Add(3 * ttl); time.Now().Before(end); {
		res, err := hs.beat(&droverv1.HeartbeatRequest{GossipMembers: 1})
		if err != nil {
			t.Fatalf("heartbeat on the stream: %v", err)
		}
		if res.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY || res.GetTtl().AsDuration() <= 0 {
			t.Fatalf("answer on the stream: status %v, ttl %v; want READY with a TTL", res.GetStatus(), res.GetTtl().AsDuration())
		}
		time.Sleep(res.GetTtl().AsDuration() / 3)
	}
	if st := nodeStatus(t, l.Server(), a.node.GetId()); st != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("after three TTLs of heartbeats on a stream the leader has the node %v, want READY", st)
	}
	n, err := l.Server().State().Node(a.node.GetId())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range n.GetHistory() {
		if h.GetIndex() > before {
			t.Fatalf("the node changed status while it heartbeated on its stream: %v", h)
		}
	}

	// Revocation is checked on every heartbeat of a stream, not only
	// when it opens.
	rs := openHeartbeatStream(t, ctx, revoked.client(t, f.APIAddr(), nil))
	if _, err := rs.beat(&droverv1.HeartbeatRequest{}); err != nil {
		t.Fatalf("heartbeat before revocation: %v", err)
	}
	if _, err := nodesOp(t, c, l).RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: revoked.node.GetId()})); err != nil {
		t.Fatal(err)
	}
	_, err = rs.beat(&droverv1.HeartbeatRequest{})
	wantErr(t, "heartbeat of a revoked node on its open stream", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED)

	// The leader dies: the follower's forwarded stream ends, and the
	// agent's next stream through the same follower reaches the new
	// leader, which knows the node.
	c.Kill(l)
	if _, err := c.WaitLeader(testCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the stream to the dead leader ends", func() error {
		if _, err := hs.beat(&droverv1.HeartbeatRequest{}); err == nil {
			return errors.New("a heartbeat was still answered")
		}
		return nil
	})
	eventually(t, 30*time.Second, "a new stream through the follower is answered", func() error {
		ns := openHeartbeatStream(t, ctx, a.client(t, f.APIAddr(), nil))
		res, err := ns.beat(&droverv1.HeartbeatRequest{})
		if err != nil {
			return err
		}
		if res.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
			return fmt.Errorf("answer status %v, want READY", res.GetStatus())
		}
		return nil
	})
}
