package server

import (
	"slices"
	"testing"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// A node the tracker marks down loses its instance reports, so the
// rollout controller never takes a report from before an outage for the
// node's state after it (rollout.View.Reports).
func TestTrackerDropsReportsOfDownNodes(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := testTracker(&now)
	tr.agentHeartbeat(&droverv1.Node{Id: "n-a"}, false, nil, 0)
	tr.agentHeartbeat(&droverv1.Node{Id: "n-b"}, false, nil, 0)
	healthy := &droverv1.InstanceStatus{Deployment: "digits", Version: 2, State: droverv1.InstanceState_INSTANCE_STATE_HEALTHY}
	tr.reportInstances("n-a", []*droverv1.InstanceStatus{healthy})
	tr.reportInstances("n-b", []*droverv1.InstanceStatus{healthy})
	if got := tr.instanceReports("digits", []string{"n-a", "n-b", "n-c"}); len(got) != 2 {
		t.Fatalf("reports %v", got)
	}
	// n-b keeps heartbeating; n-a falls silent past its TTL.
	now = now.Add(2 * time.Second)
	tr.agentHeartbeat(&droverv1.Node{Id: "n-b"}, false, nil, 0)
	now = now.Add(3 * time.Second)
	tr.mu.Lock()
	expired, _, _ := tr.collectLocked(now)
	tr.mu.Unlock()
	if !slices.Equal(expired, []string{"n-a"}) {
		t.Fatalf("expired %v, want n-a", expired)
	}
	got := tr.instanceReports("digits", []string{"n-a", "n-b"})
	if _, ok := got["n-a"]; ok || got["n-b"] == nil {
		t.Errorf("after n-a went down: %v", got)
	}
	// Its next heartbeat brings fresh reports.
	starting := &droverv1.InstanceStatus{Deployment: "digits", Version: 2, State: droverv1.InstanceState_INSTANCE_STATE_STARTING}
	tr.agentHeartbeat(&droverv1.Node{Id: "n-a", Status: droverv1.NodeStatus_NODE_STATUS_DOWN}, true, nil, 0)
	if !tr.reportInstances("n-a", []*droverv1.InstanceStatus{starting}) {
		t.Error("the report of a node back from down is no change")
	}
	if got := tr.instanceReports("digits", []string{"n-a"}); got["n-a"].GetState() != droverv1.InstanceState_INSTANCE_STATE_STARTING {
		t.Errorf("n-a back: %v", got)
	}
}

// The controller sees every node whose labels, site and hardware match,
// whatever its health; nodes that left or were revoked are not there.
func TestMatchingNodes(t *testing.T) {
	dep := &droverv1.Deployment{Spec: &droverv1.DeploymentSpec{
		Name:     "cams",
		Selector: &droverv1.NodeSelector{Labels: map[string]string{"camera": "edge"}},
	}}
	edge := map[string]string{"camera": "edge"}
	nodes := []*droverv1.Node{
		{Id: "n-5", Site: "b", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_READY},
		{Id: "n-1", Site: "a", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_DOWN},
		{Id: "n-2", Site: "a", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_READY, Draining: true},
		{Id: "n-3", Site: "a", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_LEFT},
		{Id: "n-4", Site: "a", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_READY, Revoked: true},
		{Id: "n-6", Site: "a", Labels: map[string]string{"camera": "lab"}, Status: droverv1.NodeStatus_NODE_STATUS_READY},
		{Id: "n-7", Site: "a", Labels: edge, Status: droverv1.NodeStatus_NODE_STATUS_INITIALIZING},
	}
	got := matchingNodes(dep, nodes)
	var ids []string
	for _, n := range got {
		ids = append(ids, n.ID)
	}
	if !slices.Equal(ids, []string{"n-1", "n-2", "n-5", "n-7"}) {
		t.Fatalf("matching %v", got)
	}
	if !got[0].Down || got[1].Down || !got[1].Draining || got[2].Down || got[2].Site != "b" || !got[3].Down {
		t.Errorf("views %+v", got)
	}
}
