package server

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
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
	// maxSuspectReport bounds the suspects read from one heartbeat; the
	// agent sends no more than that either.
	maxSuspectReport = 64
	// maxSitePeers is how many site peers an answer names at most: enough
	// for a join to find a live one, few enough that joins spread over
	// the site instead of converging on the same members.
	maxSitePeers = 5
	// suspectedReason is the status reason of a node marked down sooner
	// because its site peers suspected it.
	suspectedReason = "missed heartbeat TTL; suspected by site peers"
	// revokedReason is the status reason of a revoked node marked down:
	// it may still run, but the control plane no longer hears it.
	revokedReason = "missed heartbeat TTL; revoked, so its heartbeats are refused"
)

// heartbeatTracker keeps the leader's heartbeat deadlines. Heartbeats only
// touch its map; the Raft log sees a node's status only when it changes:
// DOWN when a deadline passes, READY when a down node heartbeats again.
// Transitions are collected and written once per tick, as one
// SET_NODE_STATUS command.
//
// A tracker lives for one term of leadership: leaderLoop makes it once
// the state is caught up, installs it, has it track the nodes in the state
// (see startHeartbeats for why in that order), runs it, and drops it when
// leadership ends. Its methods are safe for concurrent use; run is called
// once.
//
// Deadlines sit in a map scanned on each tick: one timer for the whole
// fleet, no goroutine per node, and a scan of even 100k entries costs far
// less than the tick.
type heartbeatTracker struct {
	s      *Server
	state  nodeReader // s.state
	now    func() time.Time
	minTTL time.Duration
	rate   float64 // heartbeats per second the fleet may send in total

	mu sync.Mutex // guards the fields below
	// graceFrom is when trackState gave every node it found a TTL plus
	// the leader grace; zero until it has.
	graceFrom time.Time
	nodes     map[string]*hbEntry   // by node id
	up        map[string]struct{}   // nodes that heartbeat while DOWN, to be marked READY
	sites     map[string]*sitePeers // tracked nodes with a gossip address, by site; nil until one
}

// hbEntry is one node's deadline.
type hbEntry struct {
	deadline time.Time
	// downSent is set when the node is DOWN in the state, or the tick has
	// proposed DOWN for it, so it is proposed once; the node's next
	// heartbeat clears it.
	downSent bool
	// lastBeat is when the node last heartbeated (or registered) in this
	// term, zero until it has; interval is how often it was told to
	// heartbeat then, a third of the TTL handed to it, as agents do.
	lastBeat time.Time
	interval time.Duration
	// suspectUntil is when the latest report of the node's site peers
	// that they suspect it expires; zero for none. See dueLocked.
	suspectUntil time.Time
	// site and gossipAddr are the node's, as the state had them when it
	// last registered or heartbeated; they index it in sites.
	site, gossipAddr string
	// pull is the agent's latest report of its pull, nil for none in
	// this term. It is never changed in place: a report replaces it.
	pull *droverv1.NodePullStatus
	// instances is the agent's latest report on its deployments'
	// instances, by deployment, nil for none in this term. Like pull, a
	// report replaces it whole.
	instances map[string]*droverv1.InstanceStatus
}

// sitePeers are the tracked nodes of one site that have a gossip
// address, in a slice that can be sampled at random and a map to remove
// from it in constant time.
type sitePeers struct {
	ids []string
	pos map[string]int // index in ids
}

// dueLocked reports whether the node is past its deadline at now, and
// whether only because site peers suspect it. Suspicion shortens the wait
// to two heartbeat intervals and a tick after the node's last heartbeat,
// so a node that keeps heartbeating is never marked down for it; and only
// for a node that heartbeated in this term: one still in the grace of a
// leader change keeps all of it.
func (e *hbEntry) dueLocked(now time.Time) (due, bySuspicion bool) {
	if now.After(e.deadline) {
		return true, false
	}
	if e.lastBeat.IsZero() || !now.Before(e.suspectUntil) {
		return false, false
	}
	return now.After(e.lastBeat.Add(2*e.interval + heartbeatTick)), true
}

// nodeReader is what the tracker reads of the state.
type nodeReader interface {
	Nodes() []*droverv1.Node
	NodeSummary(id string) (*droverv1.Node, error)
}

var _ nodeReader = (*state.Store)(nil)

// newHeartbeatTracker makes an empty tracker for a new term; trackState
// fills it from the state.
func newHeartbeatTracker(s *Server) *heartbeatTracker {
	return &heartbeatTracker{
		s:      s,
		state:  s.state,
		now:    time.Now,
		minTTL: time.Duration(s.cfg.HeartbeatMinTTL),
		rate:   s.cfg.MaxHeartbeatsPerSecond,
		nodes:  make(map[string]*hbEntry),
		up:     make(map[string]struct{}),
	}
}

// trackState tracks every trackable node in the state that the tracker
// does not know yet, giving it one TTL plus the leader grace before it can
// be marked down: the old leader's deadlines are gone, and its nodes must
// have time to find this one. A node the tracker already knows registered
// or heartbeated after the tracker was installed, which is newer than what
// the state read here may say of it (DOWN, say, when it has just
// registered READY), so its entry is kept.
func (t *heartbeatTracker) trackState() {
	nodes := t.state.Nodes()
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	tracked := len(t.nodes)
	for _, n := range nodes {
		if _, known := t.nodes[n.GetId()]; !known && trackable(n) {
			tracked++
		}
	}
	grace := t.ttlFor(tracked) + time.Duration(t.s.cfg.HeartbeatLeaderGrace)
	t.graceFrom = now
	for _, n := range nodes {
		if _, known := t.nodes[n.GetId()]; known || !trackable(n) {
			continue
		}
		e := &hbEntry{
			deadline: now.Add(grace),
			// Already DOWN: a heartbeat brings it back, nothing else.
			downSent: n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN,
		}
		t.nodes[n.GetId()] = e
		if !n.GetRevoked() {
			t.indexLocked(n.GetId(), e, n.GetSite(), n.GetGossipAddr())
		}
	}
}

// trackable reports whether a node's liveness is tracked: it has
// registered (or was once ready), has not left, and is not a revoked node
// already DOWN. A revoked node that is READY stays tracked: its
// certificate is refused, so it never heartbeats again and is marked DOWN
// when its deadline passes, like any node the leader stopped hearing from,
// rather than staying READY for good; once DOWN nothing can bring it back.
func trackable(n *droverv1.Node) bool {
	switch n.GetStatus() {
	case droverv1.NodeStatus_NODE_STATUS_READY:
		return true
	case droverv1.NodeStatus_NODE_STATUS_DOWN:
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

// beatLocked records that node id is alive and returns the TTL to hand it
// and the node's entry; t.mu is held. wasDown says the node is DOWN in the
// state; it will be marked READY on the next tick. A node that was not
// tracked yet (just registered) is tracked from now on.
func (t *heartbeatTracker) beatLocked(id string, wasDown bool, now time.Time) (time.Duration, *hbEntry) {
	ttl := t.ttlFor(len(t.nodes))
	ttl += time.Duration(rand.Float64() * heartbeatJitter * float64(ttl))
	e, ok := t.nodes[id]
	if !ok {
		e = &hbEntry{}
		t.nodes[id] = e
	}
	e.deadline = now.Add(ttl + time.Duration(heartbeatSlack*float64(ttl)))
	e.lastBeat, e.interval = now, ttl/3
	if wasDown || e.downSent {
		// downSent: a DOWN may be in flight; the READY follows it.
		t.up[id] = struct{}{}
	}
	e.downSent = false
	return ttl, e
}

// sitePeer is a node of a site gossip pool.
type sitePeer struct{ id, addr string }

// registered records a node's registration, which counts as a heartbeat,
// and returns up to limit other live nodes of its site with a gossip
// address, for its pool to join.
func (t *heartbeatTracker) registered(n *droverv1.Node, limit int) []sitePeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	_, e := t.beatLocked(n.GetId(), false, now)
	t.indexLocked(n.GetId(), e, n.GetSite(), n.GetGossipAddr())
	return t.sitePeersLocked(n.GetId(), e.site, now, limit)
}

// agentBeat is what one agent heartbeat told the tracker, and what the
// tracker answers.
type agentBeat struct {
	// TTL is the TTL to hand the node.
	TTL time.Duration
	// Peers are site peers for its pool to join, nil when it needs none.
	Peers []string
	// Counted and Ignored are how many of its suspects were taken, and
	// how many were not (another site, unknown, itself, past the bound).
	Counted, Ignored int
}

// agentHeartbeat records a heartbeat of node n (as the state has it) with
// what its site pool reported: the site peers it suspects, and how many
// members it sees. The work is bounded whatever the fleet's size: a few
// map operations per suspect, up to maxSuspectReport of them, and at most
// 4×maxSitePeers random picks for site peers, which a node gets only when
// its pool sees no other member. wasDown is as for heartbeat.
func (t *heartbeatTracker) agentHeartbeat(n *droverv1.Node, wasDown bool, suspects []string, poolMembers uint32) agentBeat {
	id := n.GetId()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	ttl, e := t.beatLocked(id, wasDown, now)
	t.indexLocked(id, e, n.GetSite(), n.GetGossipAddr())
	out := agentBeat{TTL: ttl}
	if len(suspects) > maxSuspectReport {
		out.Ignored = len(suspects) - maxSuspectReport
		suspects = suspects[:maxSuspectReport]
	}
	// A suspicion lasts one TTL without a new report: about three
	// heartbeats of the reporters, who repeat it while they suspect.
	until := now.Add(t.ttlFor(len(t.nodes)))
	for _, sid := range suspects {
		// Only a node's own site pool can know anything of it.
		se, ok := t.nodes[sid]
		if !ok || sid == id || e.site == "" || se.site != e.site {
			out.Ignored++
			continue
		}
		se.suspectUntil = until
		out.Counted++
	}
	if poolMembers <= 1 && e.gossipAddr != "" {
		if peers := t.sitePeersLocked(id, e.site, now, maxSitePeers); len(peers) > 0 {
			out.Peers = make([]string, len(peers))
			for i, p := range peers {
				out.Peers[i] = p.addr
			}
		}
	}
	return out
}

// boundReport cuts an agent's free text (a pull error, an instance's
// reason) to maxPullErrorBytes, on a character boundary.
func boundReport(s string) string {
	if len(s) <= maxPullErrorBytes {
		return s
	}
	return strings.ToValidUTF8(s[:maxPullErrorBytes], "") + "…"
}

// maxPullErrorBytes bounds what the leader keeps of an agent's pull
// report: a model name and an error message, nothing that grows.
const maxPullErrorBytes = 1024

// reportPull keeps the pull status a heartbeat of node id carried; a
// heartbeat without one leaves the last report in place. The node must be
// tracked (agentHeartbeat just tracked it).
func (t *heartbeatTracker) reportPull(id string, st *droverv1.NodePullStatus) {
	if st == nil {
		return
	}
	st = proto.Clone(st).(*droverv1.NodePullStatus)
	st.Error = boundReport(st.Error)
	t.mu.Lock()
	defer t.mu.Unlock()
	st.ReportTime = timestamppb.New(t.now())
	if e, ok := t.nodes[id]; ok {
		e.pull = st
	}
}

// pullStatus returns a copy of node id's latest pull report, nil for none.
func (t *heartbeatTracker) pullStatus(id string) *droverv1.NodePullStatus {
	t.mu.Lock()
	e, ok := t.nodes[id]
	var st *droverv1.NodePullStatus
	if ok {
		st = e.pull
	}
	t.mu.Unlock()
	if st == nil {
		return nil
	}
	return proto.Clone(st).(*droverv1.NodePullStatus)
}

// maxInstanceReports bounds how many instance reports of one heartbeat
// the leader keeps: a node runs a few deployments, never thousands.
const maxInstanceReports = 64

// reportInstances keeps the instance reports a heartbeat of node id
// carried, and reports whether any changed (state, version or restarts)
// since its last heartbeat, so the rollout controller can act at once. A
// heartbeat without reports clears them only when the agent said it runs
// nothing: agents always send the full list.
func (t *heartbeatTracker) reportInstances(id string, sts []*droverv1.InstanceStatus) (changed bool) {
	if len(sts) > maxInstanceReports {
		sts = sts[:maxInstanceReports]
	}
	next := make(map[string]*droverv1.InstanceStatus, len(sts))
	for _, st := range sts {
		st = proto.Clone(st).(*droverv1.InstanceStatus)
		st.Reason = boundReport(st.Reason)
		next[st.GetDeployment()] = st
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.nodes[id]
	if !ok {
		return false
	}
	changed = len(next) != len(e.instances)
	for d, st := range next {
		old, ok := e.instances[d]
		if !ok || old.GetState() != st.GetState() || old.GetVersion() != st.GetVersion() || old.GetRestarts() != st.GetRestarts() {
			changed = true
		}
	}
	e.instances = next
	return changed
}

// instanceStatus returns a copy of node id's latest report on
// deployment's instance, nil for none: the node has not reported it in
// this leader's term.
func (t *heartbeatTracker) instanceStatus(id, deployment string) *droverv1.InstanceStatus {
	t.mu.Lock()
	var st *droverv1.InstanceStatus
	if e, ok := t.nodes[id]; ok {
		st = e.instances[deployment]
	}
	t.mu.Unlock()
	if st == nil {
		return nil
	}
	return proto.Clone(st).(*droverv1.InstanceStatus)
}

// instanceReports returns the latest report on deployment's instance of
// each of the nodes ids that has one in this term. The reports are shared:
// the tracker replaces a node's reports whole and never changes one, so
// the caller must not change them either.
func (t *heartbeatTracker) instanceReports(deployment string, ids []string) map[string]*droverv1.InstanceStatus {
	out := make(map[string]*droverv1.InstanceStatus)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if e, ok := t.nodes[id]; ok {
			if st := e.instances[deployment]; st != nil {
				out[id] = st
			}
		}
	}
	return out
}

// indexLocked records the site and gossip address of node id, whose entry
// is e, and keeps sites in step.
func (t *heartbeatTracker) indexLocked(id string, e *hbEntry, site, gossipAddr string) {
	if e.site == site && e.gossipAddr == gossipAddr {
		return
	}
	if e.site != "" && e.gossipAddr != "" {
		t.unindexLocked(id, e.site)
	}
	e.site, e.gossipAddr = site, gossipAddr
	if site == "" || gossipAddr == "" {
		return
	}
	if t.sites == nil {
		t.sites = make(map[string]*sitePeers)
	}
	sp := t.sites[site]
	if sp == nil {
		sp = &sitePeers{pos: make(map[string]int)}
		t.sites[site] = sp
	}
	sp.pos[id] = len(sp.ids)
	sp.ids = append(sp.ids, id)
}

// unindexLocked removes node id from its site's peers, moving the last
// one into its place.
func (t *heartbeatTracker) unindexLocked(id, site string) {
	sp := t.sites[site]
	if sp == nil {
		return
	}
	i, ok := sp.pos[id]
	if !ok {
		return
	}
	last := len(sp.ids) - 1
	sp.ids[i] = sp.ids[last]
	sp.pos[sp.ids[i]] = i
	sp.ids = sp.ids[:last]
	delete(sp.pos, id)
	if len(sp.ids) == 0 {
		delete(t.sites, site)
	}
}

// sitePeersLocked returns up to limit nodes of site other than self with
// a gossip address, picked at random among those not marked (or being
// marked) down and not suspected by their peers. A small site is looked at
// whole, in random order; in a large one at most 4×limit random members
// are, so that the cost stays the same whatever the site's size.
func (t *heartbeatTracker) sitePeersLocked(self, site string, now time.Time, limit int) []sitePeer {
	sp := t.sites[site]
	if sp == nil || len(sp.ids) < 2 {
		return nil
	}
	out := make([]sitePeer, 0, limit)
	take := func(id string) {
		e := t.nodes[id]
		if id == self || e == nil || e.downSent || now.Before(e.suspectUntil) ||
			slices.ContainsFunc(out, func(p sitePeer) bool { return p.id == id }) {
			return
		}
		out = append(out, sitePeer{id: id, addr: e.gossipAddr})
	}
	tries := 4 * limit
	if len(sp.ids) <= tries {
		for _, i := range rand.Perm(len(sp.ids)) {
			take(sp.ids[i])
			if len(out) == limit {
				break
			}
		}
		return out
	}
	for range tries {
		take(sp.ids[rand.IntN(len(sp.ids))])
		if len(out) == limit {
			break
		}
	}
	return out
}

// revoked stops handing node id out as a site peer. Its deadline stays,
// so it is marked DOWN when that passes.
func (t *heartbeatTracker) revoked(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.nodes[id]; ok {
		t.indexLocked(id, e, "", "")
	}
}

// forget stops tracking a node (left, or revoked and down).
func (t *heartbeatTracker) forget(id string) {
	t.mu.Lock()
	if e, ok := t.nodes[id]; ok && e.site != "" && e.gossipAddr != "" {
		t.unindexLocked(id, e.site)
	}
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
	expired, suspected, revived := t.collectLocked(now)
	t.mu.Unlock()
	if len(expired) == 0 && len(revived) == 0 {
		return
	}

	var updates []*droverv1.NodeStatusUpdate
	var sentDown, sentUp, sentSuspected, sentRevoked []string
	for _, id := range expired {
		n, err := t.state.NodeSummary(id)
		if err != nil || !trackable(n) {
			t.forget(id)
			continue
		}
		if n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_READY {
			reason := "missed heartbeat TTL"
			switch {
			case n.GetRevoked():
				reason = revokedReason
				sentRevoked = append(sentRevoked, id)
			case suspected[id]:
				reason = suspectedReason
				sentSuspected = append(sentSuspected, id)
			}
			updates = append(updates, &droverv1.NodeStatusUpdate{
				NodeId: id, Status: droverv1.NodeStatus_NODE_STATUS_DOWN, Reason: reason,
			})
			sentDown = append(sentDown, id)
		}
	}
	for _, id := range revived {
		n, err := t.state.NodeSummary(id)
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
	// A revoked node that is DOWN can never heartbeat back.
	for _, id := range sentRevoked {
		t.forget(id)
	}
	if len(sentDown) > 0 || len(sentUp) > 0 {
		t.s.logger.Info("node status transitions", "down", sentDown, "ready", sentUp,
			"down_suspected_by_peers", sentSuspected, "down_revoked", sentRevoked)
	}
}

// collectLocked takes what a tick at now acts on: the nodes past their
// deadline, marked as DOWN proposed, with those that are only because
// site peers suspect them; and the nodes to be marked READY.
func (t *heartbeatTracker) collectLocked(now time.Time) (expired []string, suspected map[string]bool, revived []string) {
	for id, e := range t.nodes {
		if e.downSent {
			continue
		}
		if due, bySuspicion := e.dueLocked(now); due {
			e.downSent = true
			// Its reports predate its going down; the rollout controller
			// must not take them for its state once it is back (see
			// rollout.View.Reports). The heartbeat that brings it back
			// carries fresh ones.
			e.instances = nil
			expired = append(expired, id)
			if bySuspicion {
				if suspected == nil {
					suspected = make(map[string]bool)
				}
				suspected[id] = true
			}
		}
	}
	for id := range t.up {
		revived = append(revived, id)
	}
	clear(t.up)
	return expired, suspected, revived
}

// retry undoes what a failed tick took, so the next tick proposes it again.
func (t *heartbeatTracker) retry(down, up []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, id := range down {
		if e, ok := t.nodes[id]; ok && e.downSent {
			if due, _ := e.dueLocked(now); due {
				e.downSent = false
			}
		}
	}
	for _, id := range up {
		if _, ok := t.nodes[id]; ok {
			t.up[id] = struct{}{}
		}
	}
}
