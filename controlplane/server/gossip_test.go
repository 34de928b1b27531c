package server_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// Register hands a node the gossip addresses of live nodes of its own
// site: never its own, never another site's, never one that is down,
// revoked or has no pool. A heartbeat hands them again only to a pool that
// sees no peer. Suspects are counted only from the reporter's site.
func TestSitePeers(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: shortTTLs})
	l := c.Leader()
	addr := l.APIAddr()
	tokens, nodes := operator(t, c, l)
	lab, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{Site: "lab", MaxUses: 20})
	dock, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{Site: "dock"})

	register := func(a *fakeAgent, gossip string) []string {
		t.Helper()
		res, err := a.client(t, addr, nil).Register(testCtx(t, 10*time.Second),
			connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "test", GossipAddr: gossip}))
		if err != nil {
			t.Fatalf("register %s: %v", a.node.GetName(), err)
		}
		if got := res.Msg.GetNode().GetGossipAddr(); got != gossip {
			t.Fatalf("registered gossip address %q, want %q", got, gossip)
		}
		peers := res.Msg.GetSitePeers()
		slices.Sort(peers)
		return peers
	}
	join := func(name, token, gossip string) *fakeAgent {
		t.Helper()
		a := newFakeAgent(t, c.CA.Pool())
		if _, err := a.enroll(t, addr, token, name); err != nil {
			t.Fatalf("enroll %s: %v", name, err)
		}
		register(a, gossip)
		return a
	}
	heartbeat := func(a *fakeAgent, req *droverv1.HeartbeatRequest) []string {
		t.Helper()
		res, err := a.client(t, addr, nil).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("heartbeat of %s: %v", a.node.GetName(), err)
		}
		peers := res.Msg.GetSitePeers()
		slices.Sort(peers)
		return peers
	}

	live := []string{"10.0.0.1:7947", "10.0.0.2:7947", "10.0.0.3:7947"}
	l1 := join("lab-1", lab, live[0])
	l2 := join("lab-2", lab, live[1])
	l3 := join("lab-3", lab, live[2])
	noPool := join("lab-nopool", lab, "")
	down := join("lab-down", lab, "10.0.0.8:7947")
	join("lab-revoked", lab, "10.0.0.9:7947")
	d1 := join("dock-1", dock, "10.0.1.1:7947")

	// Everyone but lab-down heartbeats, with pools that see each other.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var l1Beats atomic.Int64 // lab-1's answered heartbeats
	for _, a := range []*fakeAgent{l1, l2, l3, noPool, d1} {
		cl := a.client(t, addr, nil)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(250 * time.Millisecond):
				}
				_, err := cl.Heartbeat(testCtx(t, 2*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{GossipMembers: 3}))
				if err == nil && a == l1 {
					l1Beats.Add(1)
				}
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	if _, err := nodes.RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: "lab-revoked"})); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, down.node.GetId(), droverv1.NodeStatus_NODE_STATUS_DOWN, 10*time.Second)

	newcomer := join("lab-new", lab, "10.0.0.20:7947")
	for i := range 5 { // sampled at random: every answer must hold
		if got := register(newcomer, "10.0.0.20:7947"); !slices.Equal(got, live) {
			t.Fatalf("registration %d: site peers %v, want %v", i, got, live)
		}
	}
	if got := register(d1, "10.0.1.1:7947"); len(got) != 0 {
		t.Fatalf("the only dock node got site peers %v", got)
	}
	if got := heartbeat(newcomer, &droverv1.HeartbeatRequest{GossipMembers: 1}); !slices.Equal(got, live) {
		t.Fatalf("heartbeat of a pool alone: site peers %v, want %v", got, live)
	}
	if got := heartbeat(newcomer, &droverv1.HeartbeatRequest{GossipMembers: 4}); len(got) != 0 {
		t.Fatalf("heartbeat of a pool of 4: site peers %v, want none", got)
	}
	if got := heartbeat(noPool, &droverv1.HeartbeatRequest{}); len(got) != 0 {
		t.Fatalf("heartbeat of a node without a pool: site peers %v, want none", got)
	}

	// lab-new suspects lab-down and lab-1 (counted) and dock-1 (not its
	// site: ignored). lab-1 heartbeats on, so it stays READY.
	heartbeat(newcomer, &droverv1.HeartbeatRequest{GossipMembers: 4,
		Suspects: []string{down.node.GetId(), l1.node.GetId(), d1.node.GetId()}})
	// A suspicion lasts one TTL (1s); six more heartbeats 250ms apart
	// outlast it and lab-1's shortened deadline, were it not heartbeating.
	from := l1Beats.Load()
	eventually(t, 30*time.Second, "lab-1 heartbeats through the suspicion", func() error {
		if n := l1Beats.Load() - from; n < 6 {
			return fmt.Errorf("%d heartbeats since the report", n)
		}
		return nil
	})
	if got := nodeStatus(t, l.Server(), l1.node.GetId()); got != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("a suspected node that heartbeats is %v", got)
	}
	_, body := httpGet(t, c, l, "/metrics")
	if v := metricValue(body, "drover_gossip_suspect_reports_total", `result="counted"`); v != 2 {
		t.Errorf(`drover_gossip_suspect_reports_total{result="counted"} = %v, want 2`, v)
	}
	if v := metricValue(body, "drover_gossip_suspect_reports_total", `result="ignored"`); v != 1 {
		t.Errorf(`drover_gossip_suspect_reports_total{result="ignored"} = %v, want 1`, v)
	}
}
