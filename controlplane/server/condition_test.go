package server_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// The leader records the conditions heartbeats report, cordons the node on
// a new occurrence only, and writes nothing while they stay the same; a
// heartbeat with a condition the state refuses still keeps the node alive,
// and the refusal is audited.
func TestHeartbeatConditionsCordon(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: shortTTLs})
	l := c.Leader()
	tokens, nodes := operator(t, c, l)
	tokStr, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: 1})
	a := newFakeAgent(t, c.CA.Pool())
	a.mustEnrollRegister(t, l.APIAddr(), tokStr, "gpu-01")
	ac := a.client(t, l.APIAddr(), nil)
	id := a.cert.Leaf.Subject.CommonName
	st := l.Server().State()
	beat := func(cs ...*droverv1.NodeCondition) {
		t.Helper()
		if _, err := ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{Conditions: cs})); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}
	node := func() *droverv1.Node {
		t.Helper()
		n, err := st.Node(id)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t0 := time.Now().Add(-time.Minute).UTC()
	xid := &droverv1.NodeCondition{Kind: "gpu_xid", GpuUuid: "GPU-1", Since: timestamppb.New(t0), Detail: "Xid 79: GPU has fallen off the bus"}

	beat(xid)
	n := node()
	if !n.GetCordoned() || n.GetCordonReason() != "gpu_xid on GPU-1: Xid 79: GPU has fallen off the bus" || len(n.GetConditions()) != 1 {
		t.Fatalf("after a heartbeat with an Xid: %v", n)
	}
	if _, err := nodes.UncordonNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.UncordonNodeRequest{Node: "gpu-01"})); err != nil {
		t.Fatal(err)
	}
	before := st.Index()
	for range 3 {
		beat(xid)
	}
	if n := node(); n.GetCordoned() {
		t.Errorf("the same occurrence cordoned the node again")
	}
	if after := st.Index(); after != before {
		t.Errorf("unchanged conditions wrote to the log: index %d -> %d", before, after)
	}
	// Cleared: recorded, not cordoned.
	beat()
	if n := node(); n.GetCordoned() || len(n.GetConditions()) != 0 {
		t.Errorf("after the condition cleared: %v", n)
	}
	// Conditions the state would refuse are left out: the heartbeat is
	// answered, the node and the log stay as they were.
	before = st.Index()
	beat(&droverv1.NodeCondition{Kind: "gpu_sad", Since: timestamppb.New(t0)})
	if n := node(); n.GetCordoned() || len(n.GetConditions()) != 0 {
		t.Errorf("a condition of an unknown kind changed the node: %v", n)
	}
	if after := st.Index(); after != before {
		t.Errorf("a condition of an unknown kind wrote to the log: index %d -> %d", before, after)
	}
	if evs := st.Audit(0, 1, "node/"+id, ""); len(evs) != 1 || evs[0].GetAction() != state.ActionNodeConditions {
		t.Errorf("last audit event of the node = %v, want the clearing node.conditions", evs)
	}
	// A new occurrence cordons again.
	beat(&droverv1.NodeCondition{Kind: "gpu_xid", GpuUuid: "GPU-1", Since: timestamppb.New(t0.Add(time.Second)), Detail: "Xid 79"})
	if n := node(); !n.GetCordoned() {
		t.Errorf("a new Xid did not cordon the node: %v", n)
	}
}
