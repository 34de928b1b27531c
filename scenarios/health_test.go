//go:build cgo

package scenarios

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/hwprobe/nvmltest"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestXidCordonsNode gives three agents of one site mock GPUs and a
// deployment on them, then has one GPU fall off the bus (Xid 79, through
// NVML's event set). The node's agent reports the condition in its next
// heartbeat; the leader cordons the node, audited with the condition as the
// reason; its instance stops within the site's budget of one while the
// other two keep serving; `drover node show` says why. An operator's
// uncordon brings the node back, and the condition, still reported, does
// not cordon it again; a second Xid does.
func TestXidCordonsNode(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	gpus := map[string]*nvmltest.NVML{} // by agent name
	fleet := startReady(ctx, t, c, 3, cluster.AgentOptions{Prefix: "gpu", Configure: func(cfg *agent.Config) {
		lib := nvmltest.New(nvmltest.GPU{UUID: "GPU-" + cfg.Name, Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30})
		mu.Lock()
		gpus[cfg.Name] = lib
		mu.Unlock()
		cfg.NVML = lib
		cfg.HealthInterval = 100 * time.Millisecond
	}})
	deployWeb(ctx, t, c, fleet, "  max_parallel: 3\n  max_unavailable_per_site: 1\n  min_healthy_time: 1s\n  progress_deadline: 1m\n")
	addr := c.Nodes()[0].APIAddr()
	for _, a := range fleet {
		if n := getNode(ctx, t, c, a.NodeID()); n.GetCordoned() || len(n.GetConditions()) != 0 {
			t.Fatalf("healthy node %s: cordoned %v, conditions %v", a.Name, n.GetCordoned(), n.GetConditions())
		}
	}

	sick, healthy := fleet[1], []*cluster.Agent{fleet[0], fleet[2]}
	lib := gpus[sick.Name]
	for !lib.Watching() {
		if ctx.Err() != nil {
			t.Fatal("the agent never registered for Xid events")
		}
		time.Sleep(20 * time.Millisecond)
	}
	injected := time.Now()
	lib.InjectXid(0, 79)

	n := waitNode(ctx, t, c, sick.NodeID(), "cordoned", func(n *droverv1.Node) bool { return n.GetCordoned() })
	cordonedAfter := time.Since(injected)
	const reason = "gpu_xid on GPU-gpu-02: Xid 79: GPU has fallen off the bus"
	if n.GetCordonReason() != reason || len(n.GetConditions()) != 1 || n.GetConditions()[0].GetKind() != "gpu_xid" {
		t.Fatalf("cordoned node: reason %q, conditions %v; want %q", n.GetCordonReason(), n.GetConditions(), reason)
	}
	// Its instance stops; the others serve on.
	for {
		if _, err := infer(ctx, sick, "web", "page.txt"); err != nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the cordoned node kept serving")
		}
		time.Sleep(100 * time.Millisecond)
	}
	stoppedAfter := time.Since(injected)
	for _, a := range healthy {
		if body, err := infer(ctx, a, "web", "page.txt"); err != nil || body != "one" {
			t.Errorf("healthy node %s served %q, %v after its neighbour was cordoned", a.Name, body, err)
		}
	}
	t.Logf("Xid 79 injected: node cordoned after %v, its instance stopped after %v", cordonedAfter.Round(time.Millisecond), stoppedAfter.Round(time.Millisecond))

	out, errOut, code := drover(ctx, addr, "node", "show", sick.Name)
	if code != 0 || !strings.Contains(out, "ready, cordoned") || !strings.Contains(out, "Cordoned: "+reason) ||
		!strings.Contains(out, "gpu_xid    GPU-gpu-02") {
		t.Errorf("node show: exit %d\n%s%s", code, out, errOut)
	}
	out, _, _ = drover(ctx, addr, "node", "ls")
	if !strings.Contains(out, "ready, cordoned") {
		t.Errorf("node ls does not show the cordon:\n%s", out)
	}
	ev := lastAuditOf(ctx, t, c, "node/"+sick.NodeID(), state.ActionNodeCordon)
	if ev == nil || ev.GetDetails()["reason"] != reason || ev.GetActor() != "node/"+sick.NodeID() {
		t.Errorf("audit of the cordon = %v", ev)
	}

	// Uncordoned, it serves again; the Xid it still reports is the same
	// occurrence and does not cordon it again.
	if out, errOut, code := drover(ctx, addr, "node", "uncordon", sick.Name); code != 0 {
		t.Fatalf("node uncordon: exit %d\n%s%s", code, out, errOut)
	}
	waitServing(ctx, t, fleet, "web", "one")
	time.Sleep(3 * time.Second) // several heartbeats
	if n := getNode(ctx, t, c, sick.NodeID()); n.GetCordoned() || len(n.GetConditions()) != 1 {
		t.Fatalf("after uncordon and a few heartbeats: cordoned %v, conditions %v; want serving with the condition kept", n.GetCordoned(), n.GetConditions())
	}
	if ev := lastAuditOf(ctx, t, c, "node/"+sick.NodeID(), state.ActionNodeUncordon); ev == nil {
		t.Error("no audit event for the uncordon")
	}

	// A second Xid is a new occurrence.
	lib.InjectXid(0, 79)
	waitNode(ctx, t, c, sick.NodeID(), "cordoned again", func(n *droverv1.Node) bool { return n.GetCordoned() })
}

func getNode(ctx context.Context, t *testing.T, c *cluster.Cluster, id string) *droverv1.Node {
	t.Helper()
	res, err := c.Client(c.Leader(), false).Nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: id}))
	if err != nil {
		t.Fatalf("get node %s: %v", id, err)
	}
	return res.Msg.GetNode()
}

// waitNode polls node id until ok says yes.
func waitNode(ctx context.Context, t *testing.T, c *cluster.Cluster, id, what string, ok func(*droverv1.Node) bool) *droverv1.Node {
	t.Helper()
	for {
		n := getNode(ctx, t, c, id)
		if ok(n) {
			return n
		}
		if ctx.Err() != nil {
			t.Fatalf("node %s never %s: %v", id, what, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastAuditOf is the latest audit event of action on target, nil for none.
func lastAuditOf(ctx context.Context, t *testing.T, c *cluster.Cluster, target, action string) *droverv1.AuditEvent {
	t.Helper()
	res, err := c.Client(c.Leader(), false).Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{TargetPrefix: target, Limit: 1000}))
	if err != nil {
		t.Fatalf("list audit events: %v", err)
	}
	var last *droverv1.AuditEvent
	for _, ev := range res.Msg.GetEvents() {
		if ev.GetAction() == action && ev.GetTarget() == target && (last == nil || ev.GetIndex() > last.GetIndex()) {
			last = ev
		}
	}
	return last
}
