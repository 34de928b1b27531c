package fsm_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// A cordon and the conditions behind it go through the log, are audited,
// and survive a snapshot; an uncordon keeps the conditions.
func TestNodeConditionsCommands(t *testing.T) {
	h := newHarness(t)
	token := &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:], MaxUses: 1, ExpireTime: timestamppb.New(epoch.Add(time.Hour))}
	h.mustApply(createJoinToken(t, "alice", token))
	h.mustApply(enrollNode(t, epoch, "tok", joinSecret[:], "n1", "gpu-01"))
	h.mustApply(registerNode(t, "n1", gpuInventory))

	xid := &droverv1.NodeCondition{Kind: "gpu_xid", GpuUuid: "GPU-1", Since: timestamppb.New(epoch), Detail: "Xid 79: GPU has fallen off the bus"}
	res := h.mustApply(command(t, droverv1.CommandType_COMMAND_TYPE_SET_NODE_CONDITIONS, &droverv1.SetNodeConditionsCommand{
		Meta: meta("node/n1"), NodeId: "n1", Conditions: []*droverv1.NodeCondition{xid}, Cordon: true, Reason: state.ConditionReason(xid),
	}))
	if n := res.Value.(*droverv1.Node); !n.GetCordoned() || n.GetCordonReason() != "gpu_xid on GPU-1: Xid 79: GPU has fallen off the bus" {
		t.Fatalf("node after the cordon = %v", n)
	}
	if ev := h.lastAudit(); ev.GetAction() != state.ActionNodeCordon || ev.GetActor() != "node/n1" || ev.GetDetails()["reason"] == "" {
		t.Errorf("audit = %v", ev)
	}
	// Undecodable payloads are audited as a change of conditions.
	bad := command(t, droverv1.CommandType_COMMAND_TYPE_SET_NODE_CONDITIONS, &droverv1.SetNodeConditionsCommand{})
	bad.Data = append(bad.Data[:len(bad.Data):len(bad.Data)], 0xff, 0xff)
	if r := h.apply(bad); r.Err == nil {
		t.Error("a corrupt SET_NODE_CONDITIONS applied")
	} else if ev := h.lastAudit(); ev.GetAction() != state.ActionNodeConditions {
		t.Errorf("audit of a corrupt command = %v", ev)
	}

	data := persist(t, h.fsm)
	restored := state.New()
	if err := fsm.New(restored, testLogger(t)).Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	n, err := restored.Node("n1")
	if err != nil || !n.GetCordoned() || len(n.GetConditions()) != 1 || n.GetConditions()[0].GetDetail() != xid.GetDetail() {
		t.Fatalf("restored node = %v, %v", n, err)
	}

	res = h.mustApply(command(t, droverv1.CommandType_COMMAND_TYPE_UNCORDON_NODE, &droverv1.UncordonNodeCommand{Meta: meta("alice"), NodeId: "n1"}))
	if n := res.Value.(*droverv1.Node); n.GetCordoned() || len(n.GetConditions()) != 1 {
		t.Errorf("node after uncordon = %v", n)
	}
	if ev := h.lastAudit(); ev.GetAction() != state.ActionNodeUncordon || ev.GetActor() != "alice" {
		t.Errorf("audit = %v", ev)
	}
}
