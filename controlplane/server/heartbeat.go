package server

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Heartbeat timing that is not configurable.
const (
	// heartbeatTick is how often the leader looks for expired deadlines
	// and writes the transitions it found, all in one command.
	heartbeatTick = 250 * time.Millisecond
	// minHeartbeatTTL is the shortest HeartbeatMinTTL Validate accepts.
	minHeartbeatTTL = 4 * heartbeatTick
	// heartbeatSlack is how much longer than its TTL the leader waits for
	// a node's next heartbeat before it marks the node down, as a fraction
	// of the TTL: room for a slow network and a busy agent.
	heartbeatSlack = 0.5
	// heartbeatJitter is the most random extra each TTL gets, as a
	// fraction of it, so agents that started together drift apart.
	heartbeatJitter = 0.1
	// maxStatusBatch bounds the updates in one set-node-status command.
	maxStatusBatch = 1000
)

// heartbeatTracker keeps the leader's heartbeat deadlines. Heartbeats only
// touch its map; the Raft log sees a node's status only when it changes:
// DOWN when a deadline passes, READY when a down node heartbeats again.
// Transitions are collected and written once per tick, as one
// SET_NODE_STATUS command.
//
// A tracker lives for one term of leadership: leaderLoop makes it once
// the state is caught up, runs it, and drops it when leadership ends. Its
// methods are safe for concurrent use; run is called once.
//
// Deadlines sit in a map scanned on each tick: one timer for the whole
// fleet, no goroutine per node, and a scan of even 100k entries costs far
// less than the tick.
type heartbeatTracker struct {
	s      *Server
	now    func() time.Time
	minTTL time.Duration
	rate   float64 // heartbeats per second the fleet may send in total

	mu    sync.Mutex          // guards the fields below
	nodes map[string]*hbEntry // by node id
	up    map[string]struct{} // nodes that heartbeat while DOWN, to be marked READY
}

// hbEntry is one node's deadline.
type hbEntry struct {
	deadline time.Time
	// downSent is set when the tick has proposed DOWN for the node, so it
	// is proposed once, and cleared by the node's next heartbeat.
	downSent bool
}

// newHeartbeatTracker makes a tracker for a new term. Every node in the
// state that has not left gets one TTL plus the leader grace before it
// can be marked down: the old leader's deadlines are gone, and its nodes
// must have time to find this one.
func newHeartbeatTracker(s *Server) *heartbeatTracker {
	t := &heartbeatTracker{
		s:      s,
		now:    time.Now,
		minTTL: time.Duration(s.cfg.HeartbeatMinTTL),
		rate:   s.cfg.MaxHeartbeatsPerSecond,
		nodes:  make(map[string]*hbEntry),
		up:     make(map[string]struct{}),
	}
	nodes := s.state.Nodes()
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var tracked int
	for _, n := range nodes {
		if trackable(n) {
			tracked++
		}
	}
	grace := t.ttlFor(tracked) + time.Duration(s.cfg.HeartbeatLeaderGrace)
	for _, n := range nodes {
		if trackable(n) {
			t.nodes[n.GetId()] = &hbEntry{deadline: now.Add(grace)}
		}
	}
	return t
}

// trackable reports whether a node's liveness is tracked: it has
// registered (or was once ready) and has neither left nor been revoked.
func trackable(n *droverv1.Node) bool {
	switch n.GetStatus() {
	case droverv1.NodeStatus_NODE_STATUS_READY, droverv1.NodeStatus_NODE_STATUS_DOWN:
		return !n.GetRevoked()
	}
	return false
}

// ttlFor is the base TTL for a fleet of n tracked nodes. t.mu need not be
// held.
func (t *heartbeatTracker) ttlFor(n int) time.Duration {
	ttl := time.Duration(float64(n) / t.rate * float64(time.Second))
	return max(ttl, t.minTTL)
}

// heartbeat records that node id is alive and returns the TTL to hand it.
// wasDown says the node is DOWN in the state; it will be marked READY on
// the next tick. A node that was not tracked yet (just registered) is
// tracked from now on.
func (t *heartbeatTracker) heartbeat(id string, wasDown bool) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	ttl := t.ttlFor(len(t.nodes))
	ttl += time.Duration(rand.Float64() * heartbeatJitter * float64(ttl))
	e, ok := t.nodes[id]
	if !ok {
		e = &hbEntry{}
		t.nodes[id] = e
	}
	e.deadline = t.now().Add(ttl + time.Duration(heartbeatSlack*float64(ttl)))
	if wasDown || e.downSent {
		// downSent: a DOWN may be in flight; the READY follows it.
		t.up[id] = struct{}{}
	}
	e.downSent = false
	return ttl
}

// forget stops tracking a node (revoked, left).
func (t *heartbeatTracker) forget(id string) {
	t.mu.Lock()
	delete(t.nodes, id)
	delete(t.up, id)
	t.mu.Unlock()
}

// run checks deadlines every tick until ctx ends.
func (t *heartbeatTracker) run(ctx context.Context) {
	ticker := time.NewTicker(heartbeatTick)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			t.tick(ctx)
		}
	}
}

// tick writes the transitions due now: DOWN for nodes past their
// deadline, READY for down nodes that heartbeat. Updates are checked
// against the state first, so a command is written only for a real
// change. A failed write is retried on the next tick.
func (t *heartbeatTracker) tick(ctx context.Context) {
	now := t.now()
	t.mu.Lock()
	var expired, revived []string
	for id, e := range t.nodes {
		if !e.downSent && now.After(e.deadline) {
			e.downSent = true
			expired = append(expired, id)
		}
	}
	for id := range t.up {
		revived = append(revived, id)
	}
	clear(t.up)
	t.mu.Unlock()
	if len(expired) == 0 && len(revived) == 0 {
		return
	}

	var updates []*droverv1.NodeStatusUpdate
	var sentDown, sentUp []string
	for _, id := range expired {
		n, err := t.s.state.Node(id)
		if err != nil || !trackable(n) {
			t.forget(id)
			continue
		}
		if n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_READY {
			updates = append(updates, &droverv1.NodeStatusUpdate{
				NodeId: id, Status: droverv1.NodeStatus_NODE_STATUS_DOWN, Reason: "missed heartbeat TTL",
			})
			sentDown = append(sentDown, id)
		}
	}
	for _, id := range revived {
		n, err := t.s.state.Node(id)
		if err != nil || !trackable(n) {
			t.forget(id)
			continue
		}
		if n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN {
			updates = append(updates, &droverv1.NodeStatusUpdate{
				NodeId: id, Status: droverv1.NodeStatus_NODE_STATUS_READY, Reason: "heartbeat resumed",
			})
			sentUp = append(sentUp, id)
		}
	}
	for len(updates) > 0 {
		batch := updates[:min(len(updates), maxStatusBatch)]
		updates = updates[len(batch):]
		cmd := &droverv1.SetNodeStatusCommand{
			Meta:    &droverv1.CommandMeta{Time: timestamppb.New(now), Actor: "server/" + t.s.cfg.Name},
			Updates: batch,
		}
		if _, err := t.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS, cmd); err != nil {
			t.s.logger.Warn("write node status transitions; retrying next tick", "updates", len(batch), "err", err)
			t.retry(sentDown, sentUp)
			return
		}
	}
	if len(sentDown) > 0 || len(sentUp) > 0 {
		t.s.logger.Info("node status transitions", "down", sentDown, "ready", sentUp)
	}
}

// retry undoes what a failed tick took, so the next tick proposes it again.
func (t *heartbeatTracker) retry(down, up []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range down {
		if e, ok := t.nodes[id]; ok && e.downSent && t.now().After(e.deadline) {
			e.downSent = false
		}
	}
	for _, id := range up {
		if _, ok := t.nodes[id]; ok {
			t.up[id] = struct{}{}
		}
	}
}
