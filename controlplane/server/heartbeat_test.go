package server

import (
	"fmt"
	"slices"
	"testing"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The TTL grows with the fleet so the leader sees at most
// MaxHeartbeatsPerSecond heartbeats a second, never below the minimum.
func TestHeartbeatTTLScalesWithFleet(t *testing.T) {
	tr := &heartbeatTracker{minTTL: 10 * time.Second, rate: 50}
	for _, tt := range []struct {
		nodes int
		want  time.Duration
	}{
		{0, 10 * time.Second},
		{500, 10 * time.Second},
		{1000, 20 * time.Second},
		{10000, 200 * time.Second},
	} {
		if got := tr.ttlFor(tt.nodes); got != tt.want {
			t.Errorf("ttlFor(%d) = %v, want %v", tt.nodes, got, tt.want)
		}
	}
}

// A heartbeat moves the deadline by TTL plus jitter plus slack, and a
// node whose DOWN may be in flight is queued to come back READY.
func TestHeartbeatDeadline(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := &heartbeatTracker{
		now: func() time.Time { return now }, minTTL: time.Second, rate: 50,
		nodes: map[string]*hbEntry{}, up: map[string]struct{}{},
	}
	ttl := tr.agentHeartbeat(&droverv1.Node{Id: "n-a"}, false, nil, 0).TTL
	if ttl < time.Second || ttl > time.Second+time.Second/10 {
		t.Fatalf("ttl %v, want 1s plus at most 10%%", ttl)
	}
	e := tr.nodes["n-a"]
	if want := now.Add(ttl + ttl/2); !e.deadline.Equal(want) {
		t.Fatalf("deadline %v, want %v", e.deadline, want)
	}
	if len(tr.up) != 0 {
		t.Fatal("a live node was queued to come back")
	}
	e.downSent = true
	tr.agentHeartbeat(&droverv1.Node{Id: "n-a"}, false, nil, 0)
	if _, ok := tr.up["n-a"]; !ok || e.downSent {
		t.Fatal("a node whose DOWN was proposed is not queued to come back")
	}
}

func TestNormalizeNodeName(t *testing.T) {
	for in, want := range map[string]string{
		"gpu-01":                       "gpu-01",
		"  GPU Box_01!  ":              "gpu-box_01",
		"Jetson.Orin.local":            "jetson.orin.local",
		"--édge--":                     "dge",
		"a" + string(make([]byte, 70)): "a",
	} {
		if got := normalizeNodeName(in); got != want {
			t.Errorf("normalizeNodeName(%q) = %q, want %q", in, got, want)
		}
	}
	long := normalizeNodeName("x234567890123456789012345678901234567890123456789012345678901234567890")
	if len(long) != 63 {
		t.Errorf("long name normalised to %d characters, want 63", len(long))
	}
}

// testTracker returns a tracker with a 3s TTL (so agents heartbeat about
// every second) whose clock is *now.
func testTracker(now *time.Time) *heartbeatTracker {
	return &heartbeatTracker{
		now: func() time.Time { return *now }, minTTL: 3 * time.Second, rate: 50,
		nodes: map[string]*hbEntry{}, up: map[string]struct{}{},
	}
}

func siteNode(id, site, gossipAddr string) *droverv1.Node {
	return &droverv1.Node{Id: id, Site: site, GossipAddr: gossipAddr, Status: droverv1.NodeStatus_NODE_STATUS_READY}
}

// due runs the part of a tick that finds expired nodes, and reports
// whether id is among them and whether only for suspicion. It undoes the
// DOWN it marked, so it can be asked again.
func due(tr *heartbeatTracker, id string) (expired, bySuspicion bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	exp, suspected, _ := tr.collectLocked(tr.now())
	for _, e := range exp {
		tr.nodes[e].downSent = false
	}
	return slices.Contains(exp, id), suspected[id]
}

// A node its site peers suspect is marked down once it has missed two
// heartbeats (plus a tick), not after its whole TTL and slack; a node that
// keeps heartbeating is never, however often it is reported.
func TestSuspicionShortensDeadlineOfSilentNode(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	reporter, suspect := siteNode("n-a", "lab", "10.0.0.1:7947"), siteNode("n-b", "lab", "10.0.0.2:7947")
	tr.agentHeartbeat(reporter, false, nil, 2)
	ttl := tr.agentHeartbeat(suspect, false, nil, 2).TTL
	interval := ttl / 3
	lastBeat := now

	// Alive and heartbeating: reported at every beat, never due.
	for range 10 {
		now = now.Add(interval)
		if b := tr.agentHeartbeat(reporter, false, []string{"n-b"}, 2); b.Counted != 1 || b.Ignored != 0 {
			t.Fatalf("report counted %d, ignored %d", b.Counted, b.Ignored)
		}
		now = now.Add(interval / 2)
		if exp, _ := due(tr, "n-b"); exp {
			t.Fatal("a suspected node that heartbeats was found expired")
		}
		ttl = tr.agentHeartbeat(suspect, false, nil, 2).TTL
		interval, lastBeat = ttl/3, now
	}

	// Silent from now on, and still reported.
	shortened := lastBeat.Add(2*interval + heartbeatTick)
	now = shortened.Add(-time.Millisecond)
	tr.agentHeartbeat(reporter, false, []string{"n-b"}, 2)
	if exp, _ := due(tr, "n-b"); exp {
		t.Fatalf("due %v after its last heartbeat, before two intervals and a tick (%v)", now.Sub(lastBeat), shortened.Sub(lastBeat))
	}
	now = shortened.Add(time.Millisecond)
	if exp, bySuspicion := due(tr, "n-b"); !exp || !bySuspicion {
		t.Fatalf("%v after its last heartbeat: expired %v, by suspicion %v; want both", now.Sub(lastBeat), exp, bySuspicion)
	}
	if normal := tr.nodes["n-b"].deadline; !shortened.Before(normal) || normal.Sub(lastBeat) < ttl*3/2 {
		t.Fatalf("normal deadline %v after the last beat, shortened %v", normal.Sub(lastBeat), shortened.Sub(lastBeat))
	}
	if exp, _ := due(tr, "n-a"); exp {
		t.Fatal("the reporter was found expired")
	}
}

// A suspicion lasts one TTL without a new report; after that the node has
// its whole deadline again.
func TestSuspicionExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	reporter := siteNode("n-a", "lab", "10.0.0.1:7947")
	tr.agentHeartbeat(reporter, false, nil, 2)
	tr.agentHeartbeat(siteNode("n-b", "lab", "10.0.0.2:7947"), false, nil, 2)
	lastBeat, interval := now, tr.nodes["n-b"].interval
	tr.agentHeartbeat(reporter, false, []string{"n-b"}, 2) // reported once, at its last beat
	// Past the shortened deadline, within the suspicion: due.
	now = lastBeat.Add(2*interval + heartbeatTick + 10*time.Millisecond)
	if exp, bySuspicion := due(tr, "n-b"); !exp || !bySuspicion {
		t.Fatalf("not due by suspicion %v after its last beat", now.Sub(lastBeat))
	}
	// One base TTL (3s) after the report, no new one: the suspicion is
	// over, and the node has until TTL and slack after its last beat.
	now = lastBeat.Add(3*time.Second + time.Millisecond)
	if exp, _ := due(tr, "n-b"); exp {
		t.Fatalf("due %v after its last beat, with the suspicion expired and %v of its deadline left",
			now.Sub(lastBeat), tr.nodes["n-b"].deadline.Sub(now))
	}
	now = tr.nodes["n-b"].deadline.Add(time.Millisecond)
	if exp, bySuspicion := due(tr, "n-b"); !exp || bySuspicion {
		t.Fatalf("past its deadline: expired %v, by suspicion %v; want expired, not by suspicion", exp, bySuspicion)
	}
}

// Only a node's own site can suspect it; a node cannot suspect itself;
// unknown ids and reports past the bound are ignored.
func TestSuspectsFromOtherSitesIgnored(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	tr.agentHeartbeat(siteNode("n-b", "lab", "10.0.0.2:7947"), false, nil, 2)
	tr.agentHeartbeat(siteNode("n-x", "", ""), false, nil, 0)
	dock := siteNode("n-d", "dock", "10.0.1.1:7947")
	b := tr.agentHeartbeat(dock, false, []string{"n-b", "n-d", "n-unknown"}, 1)
	if b.Counted != 0 || b.Ignored != 3 {
		t.Fatalf("dock's report of lab's node, itself and an unknown one: counted %d, ignored %d; want 0, 3", b.Counted, b.Ignored)
	}
	// A node without a site has no peers to suspect anyone.
	if b := tr.agentHeartbeat(siteNode("n-x", "", ""), false, []string{"n-b"}, 0); b.Counted != 0 || b.Ignored != 1 {
		t.Fatalf("a site-less node's report: counted %d, ignored %d", b.Counted, b.Ignored)
	}
	if !tr.nodes["n-b"].suspectUntil.IsZero() {
		t.Fatal("another site's report made a suspicion")
	}
	now = now.Add(2*time.Second + heartbeatTick + 10*time.Millisecond)
	if exp, _ := due(tr, "n-b"); exp {
		t.Fatal("another site's report shortened the deadline")
	}

	many := make([]string, 100)
	for i := range many {
		many[i] = "n-b"
	}
	if b := tr.agentHeartbeat(siteNode("n-c", "lab", "10.0.0.3:7947"), false, many, 2); b.Counted != maxSuspectReport || b.Ignored != 100-maxSuspectReport {
		t.Fatalf("100 reports: counted %d, ignored %d; want %d, %d", b.Counted, b.Ignored, maxSuspectReport, 100-maxSuspectReport)
	}
}

// A node that has not heartbeated in this term (just after a leader
// change, in its grace) keeps its whole grace, suspected or not.
func TestSuspicionNeverShortensGrace(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	grace := 13 * time.Second // TTL plus leader grace, as newHeartbeatTracker gives
	e := &hbEntry{deadline: now.Add(grace)}
	tr.nodes["n-b"] = e
	tr.indexLocked("n-b", e, "lab", "10.0.0.2:7947")
	for range 12 {
		if b := tr.agentHeartbeat(siteNode("n-a", "lab", "10.0.0.1:7947"), false, []string{"n-b"}, 2); b.Counted != 1 {
			t.Fatalf("report not counted: %+v", b)
		}
		now = now.Add(time.Second)
		if exp, _ := due(tr, "n-b"); exp {
			t.Fatalf("a node in its grace expired %v into it, %v before its end", now.Sub(e.deadline.Add(-grace)), e.deadline.Sub(now))
		}
	}
	now = e.deadline.Add(time.Millisecond)
	if exp, bySuspicion := due(tr, "n-b"); !exp || bySuspicion {
		t.Fatalf("past its grace: expired %v, by suspicion %v", exp, bySuspicion)
	}
}

// Site peers are nodes of the asker's site with a gossip address, never
// itself, never one marked down or suspected, at most maxSitePeers of
// them, and the index follows changes of address and forgotten nodes.
func TestTrackerSitePeers(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	addrs := map[string]string{}
	for i := range 4 {
		id, addr := fmt.Sprintf("n-l%d", i), fmt.Sprintf("10.0.0.%d:7947", i)
		addrs[addr] = id
		tr.registered(siteNode(id, "lab", addr), maxSitePeers)
	}
	tr.registered(siteNode("n-nogossip", "lab", ""), maxSitePeers)
	tr.registered(siteNode("n-dock", "dock", "10.0.1.1:7947"), maxSitePeers)
	tr.nodes["n-l3"].downSent = true // DOWN
	tr.agentHeartbeat(siteNode("n-l0", "lab", "10.0.0.0:7947"), false, []string{"n-l2"}, 3)

	peerIDs := func(ps []sitePeer) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.id)
		}
		slices.Sort(out)
		return out
	}
	for range 20 {
		got := peerIDs(tr.registered(siteNode("n-new", "lab", "10.0.0.9:7947"), maxSitePeers))
		if want := []string{"n-l0", "n-l1"}; !slices.Equal(got, want) {
			t.Fatalf("site peers %v, want %v (not itself, down n-l3, suspected n-l2, n-nogossip, dock)", got, want)
		}
	}
	// The heartbeat of a pool that sees others gets none; of one alone, some.
	if b := tr.agentHeartbeat(siteNode("n-new", "lab", "10.0.0.9:7947"), false, nil, 3); b.Peers != nil {
		t.Fatalf("peers %v for a pool of 3", b.Peers)
	}
	if b := tr.agentHeartbeat(siteNode("n-new", "lab", "10.0.0.9:7947"), false, nil, 1); len(b.Peers) != 2 {
		t.Fatalf("peers %v for a pool alone, want n-l0's and n-l1's", b.Peers)
	}
	if b := tr.agentHeartbeat(siteNode("n-nogossip", "lab", ""), false, nil, 0); b.Peers != nil {
		t.Fatalf("peers %v for a node without a pool", b.Peers)
	}

	// A new address replaces the old; a forgotten node is gone.
	tr.agentHeartbeat(siteNode("n-l1", "lab", "10.0.0.77:7947"), false, nil, 3)
	tr.forget("n-l0")
	got := tr.registered(siteNode("n-new", "lab", "10.0.0.9:7947"), maxSitePeers)
	if len(got) != 1 || got[0].id != "n-l1" || got[0].addr != "10.0.0.77:7947" {
		t.Fatalf("site peers %+v, want n-l1 at its new address", got)
	}
	if sp := tr.sites["lab"]; len(sp.ids) != len(sp.pos) || len(sp.ids) != 4 {
		t.Fatalf("lab index %v / %v, want n-l1, n-l2, n-l3, n-new", sp.ids, sp.pos)
	}

	// A large site: bounded work, still maxSitePeers distinct live peers.
	for i := range 1000 {
		tr.registered(siteNode(fmt.Sprintf("n-big%d", i), "big", fmt.Sprintf("10.1.%d.%d:7947", i/256, i%256)), maxSitePeers)
	}
	ps := tr.registered(siteNode("n-big0", "big", "10.1.0.0:7947"), maxSitePeers)
	if ids := peerIDs(ps); len(ids) != maxSitePeers || slices.Contains(ids, "n-big0") || len(slices.Compact(ids)) != maxSitePeers {
		t.Fatalf("large site peers %v", ids)
	}
}

// The heartbeat path, plain, with suspects, and for a lone pool that gets
// site peers: each must stay far below the 50µs a heartbeat may take at
// 20,000 a second on one core. Reported as ns/op each; compare them.
func BenchmarkTrackerHeartbeat(b *testing.B) {
	const nodes, sites = 20000, 200
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	fleet := make([]*droverv1.Node, nodes)
	for i := range fleet {
		fleet[i] = siteNode(fmt.Sprintf("n-%05d", i), fmt.Sprintf("site-%d", i%sites), fmt.Sprintf("10.%d.%d.%d:7947", i/65536, i/256%256, i%256))
		tr.registered(fleet[i], maxSitePeers)
	}
	b.Run("agent", func(b *testing.B) {
		i := 0
		for b.Loop() {
			tr.agentHeartbeat(fleet[i%nodes], false, nil, 100)
			i++
		}
	})
	b.Run("agent-suspects", func(b *testing.B) {
		i := 0
		suspects := []string{fleet[sites].GetId(), fleet[2*sites].GetId()} // site-0's
		for b.Loop() {
			tr.agentHeartbeat(fleet[(i%(nodes/sites))*sites], false, suspects, 100)
			i++
		}
	})
	b.Run("agent-alone", func(b *testing.B) {
		i := 0
		for b.Loop() {
			tr.agentHeartbeat(fleet[i%nodes], false, nil, 1)
			i++
		}
	})
}

// The leader keeps each node's latest pull report, stamped with its own
// clock and with the error bounded; a heartbeat without one keeps the
// last, and a report of a node it does not track is dropped.
func TestHeartbeatKeepsPullReport(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := &heartbeatTracker{
		now: func() time.Time { return now }, minTTL: time.Second, rate: 50,
		nodes: map[string]*hbEntry{}, up: map[string]struct{}{},
	}
	if tr.pullStatus("n-a") != nil {
		t.Fatal("a report before any heartbeat")
	}
	tr.agentHeartbeat(&droverv1.Node{Id: "n-a"}, false, nil, 0)
	sent := &droverv1.NodePullStatus{Model: "llama", Version: 3, Phase: droverv1.PullPhase_PULL_PHASE_FAILED, Error: string(make([]byte, 5000))}
	tr.reportPull("n-a", sent)
	sent.Version = 99 // the tracker keeps a copy
	got := tr.pullStatus("n-a")
	if got.GetVersion() != 3 || !got.GetReportTime().AsTime().Equal(now) || len(got.GetError()) > maxPullErrorBytes+len("…") {
		t.Errorf("kept %v (error of %d bytes), want version 3 reported at %v with the error bounded", got, len(got.GetError()), now)
	}
	tr.reportPull("n-a", nil)
	if tr.pullStatus("n-a").GetVersion() != 3 {
		t.Error("a heartbeat without a report dropped the last one")
	}
	tr.reportPull("n-unknown", sent)
	if tr.pullStatus("n-unknown") != nil {
		t.Error("kept a report of a node the tracker does not track")
	}
}

// The leader keeps each node's latest instance reports by deployment and
// says when one changed, which is when the rollout controller must look
// again.
func TestHeartbeatKeepsInstanceReports(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := &heartbeatTracker{
		now: func() time.Time { return now }, minTTL: time.Second, rate: 50,
		nodes: map[string]*hbEntry{}, up: map[string]struct{}{},
	}
	tr.agentHeartbeat(&droverv1.Node{Id: "n-a"}, false, nil, 0)
	healthy := &droverv1.InstanceStatus{Deployment: "digits", Version: 2, State: droverv1.InstanceState_INSTANCE_STATE_HEALTHY}
	if !tr.reportInstances("n-a", []*droverv1.InstanceStatus{healthy}) {
		t.Error("a first report is a change")
	}
	if tr.reportInstances("n-a", []*droverv1.InstanceStatus{healthy}) {
		t.Error("the same report again is not a change")
	}
	healthy.Version = 3 // the tracker keeps a copy
	if got := tr.instanceStatus("n-a", "digits"); got.GetVersion() != 2 || got.GetState() != droverv1.InstanceState_INSTANCE_STATE_HEALTHY {
		t.Errorf("kept %v", got)
	}
	crash := &droverv1.InstanceStatus{Deployment: "digits", Version: 3, State: droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP, Restarts: 4, Reason: string(make([]byte, 5000))}
	if !tr.reportInstances("n-a", []*droverv1.InstanceStatus{crash}) {
		t.Error("a crash loop is a change")
	}
	if got := tr.instanceStatus("n-a", "digits"); got.GetRestarts() != 4 || len(got.GetReason()) > maxPullErrorBytes+len("…") {
		t.Errorf("kept %v (reason of %d bytes)", got.GetRestarts(), len(got.GetReason()))
	}
	if !tr.reportInstances("n-a", nil) || tr.instanceStatus("n-a", "digits") != nil {
		t.Error("an agent that runs nothing still has a report")
	}
	if tr.reportInstances("n-unknown", []*droverv1.InstanceStatus{crash}) || tr.instanceStatus("n-unknown", "digits") != nil {
		t.Error("kept a report of a node the tracker does not track")
	}
}
