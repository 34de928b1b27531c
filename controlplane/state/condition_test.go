package state_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func cond(kind, gpu string, since time.Time) *droverv1.NodeCondition {
	return &droverv1.NodeCondition{Kind: kind, GpuUuid: gpu, Since: timestamppb.New(since), Detail: kind + " detail"}
}

func TestSetNodeConditionsCordonsAndUncordons(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	xid := cond("gpu_xid", "GPU-b", t0)
	disk := cond("disk_pressure", "", t0)

	if _, err := f.s.SetNodeConditions(f.next(), meta("node/n1"), "nope", nil, true, "x"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("conditions of an unknown node = %v, want ErrNotFound", err)
	}
	idx := f.next()
	n, err := f.s.SetNodeConditions(idx, meta("node/n1"), "n1", []*droverv1.NodeCondition{xid, disk}, true, "gpu_xid on GPU-b: Xid 79")
	if err != nil {
		t.Fatal(err)
	}
	if !n.GetCordoned() || n.GetCordonReason() != "gpu_xid on GPU-b: Xid 79" || n.GetModifyIndex() != idx {
		t.Errorf("node = cordoned %v reason %q modify %d", n.GetCordoned(), n.GetCordonReason(), n.GetModifyIndex())
	}
	if got := n.GetConditions(); len(got) != 2 || got[0].GetKind() != "disk_pressure" || got[1].GetKind() != "gpu_xid" {
		t.Errorf("conditions = %v, want sorted disk_pressure, gpu_xid", got)
	}
	ev := lastAudit(t, f.s)
	if ev.GetAction() != state.ActionNodeCordon || ev.GetTarget() != "node/n1" || ev.GetDetails()["reason"] != "gpu_xid on GPU-b: Xid 79" ||
		ev.GetDetails()["conditions"] != "disk_pressure,gpu_xid/GPU-b" {
		t.Errorf("audit = %v", ev)
	}

	n, err = f.s.UncordonNode(f.next(), meta("alice"), "n1")
	if err != nil || n.GetCordoned() || len(n.GetConditions()) != 2 || n.GetCordonReason() == "" {
		t.Fatalf("uncordon = %v, %v; want uncordoned with conditions and reason kept", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionNodeUncordon || ev.GetDetails()["reason"] == "" {
		t.Errorf("audit = %v", ev)
	}
	// A change without a new occurrence records, and does not cordon.
	n, err = f.s.SetNodeConditions(f.next(), meta("node/n1"), "n1", []*droverv1.NodeCondition{xid}, false, "")
	if err != nil || n.GetCordoned() || len(n.GetConditions()) != 1 {
		t.Fatalf("conditions = %v, %v", n, err)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionNodeConditions {
		t.Errorf("audit = %v", ev)
	}
	if _, err := f.s.UncordonNode(f.next(), meta("alice"), "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("uncordon unknown = %v", err)
	}
}

func TestSetNodeConditionsRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	f.joinToken(joinToken("tok"))
	f.enroll("n1", nil)
	for name, cs := range map[string][]*droverv1.NodeCondition{
		"unknown kind": {cond("gpu_sad", "", time.Now())},
		"no since":     {{Kind: "gpu_xid"}},
	} {
		_, err := f.s.SetNodeConditions(f.next(), meta("node/n1"), "n1", cs, true, "r")
		if !errors.Is(err, state.ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
		if n := f.node("n1"); n.GetCordoned() || len(n.GetConditions()) != 0 {
			t.Errorf("%s: a refused command changed the node: %v", name, n)
		}
	}
}

func TestNewConditions(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	recorded := []*droverv1.NodeCondition{cond("gpu_xid", "GPU-a", t0), cond("disk_pressure", "", t0)}
	for _, tc := range []struct {
		name     string
		reported []*droverv1.NodeCondition
		want     int
	}{
		{"same occurrences persist", []*droverv1.NodeCondition{cond("gpu_xid", "GPU-a", t0), cond("disk_pressure", "", t0)}, 0},
		{"one cleared", []*droverv1.NodeCondition{cond("gpu_xid", "GPU-a", t0)}, 0},
		{"a later Xid on the same GPU", []*droverv1.NodeCondition{cond("gpu_xid", "GPU-a", t0.Add(time.Minute))}, 1},
		{"another GPU", []*droverv1.NodeCondition{cond("gpu_xid", "GPU-b", t0)}, 1},
		{"a new kind", []*droverv1.NodeCondition{cond("gpu_thermal", "GPU-a", t0)}, 1},
	} {
		if got := state.NewConditions(recorded, tc.reported); len(got) != tc.want {
			t.Errorf("%s: %d new, want %d", tc.name, len(got), tc.want)
		}
	}
}
