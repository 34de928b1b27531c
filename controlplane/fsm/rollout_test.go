package fsm_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	progressing = droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING
	paused      = droverv1.RolloutState_ROLLOUT_STATE_PAUSED
	failed      = droverv1.RolloutState_ROLLOUT_STATE_FAILED
	succeeded   = droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED
)

// rolloutHarness is a harness with model det (versions 1 and 2, alias
// prod at 1) and deployment cams on det@prod, at rollout 1.
func rolloutHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "det"))
	h.mustApply(createVersion(t, "alice", "det"))
	h.mustApply(createVersion(t, "alice", "det"))
	h.mustApply(setAlias(t, "alice", "det", "prod", 1))
	h.mustApply(command(t, droverv1.CommandType_COMMAND_TYPE_APPLY_DEPLOYMENT, &droverv1.ApplyDeploymentCommand{
		Meta: meta("alice"),
		Spec: &droverv1.DeploymentSpec{Name: "cams", Model: "det@prod", Runtime: &droverv1.RuntimeSpec{Type: "onnx"}},
	}))
	return h
}

func startBatch(t *testing.T, rollout uint64, index uint32, version uint64, nodes ...string) []byte {
	return encode(t, droverv1.CommandType_COMMAND_TYPE_START_ROLLOUT_BATCH, &droverv1.StartRolloutBatchCommand{
		Meta: meta("server/a"), Deployment: "cams", RolloutId: rollout, Index: index, NodeIds: nodes,
		Version: version, Time: timestamppb.New(epoch),
	})
}

func TestRolloutCommands(t *testing.T) {
	h := rolloutHarness(t)
	run := func(data []byte) *fsm.ApplyResult {
		t.Helper()
		l := command(t, droverv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &droverv1.InitClusterCommand{})
		l.Data = data
		return h.apply(l)
	}
	stale := func(what string, data []byte) {
		t.Helper()
		before := h.store.Snapshot()
		var a bytes.Buffer
		if _, err := before.WriteTo(&a); err != nil {
			t.Fatal(err)
		}
		res := run(data)
		if !errors.Is(res.Err, state.ErrConflict) {
			t.Fatalf("%s: %v, want a conflict", what, res.Err)
		}
		t.Logf("%s refused: %v", what, res.Err)
		if ev := h.lastAudit(); ev.GetResult() == "ok" {
			t.Errorf("%s: audit %v", what, ev)
		}
		// Nothing but the audit log and the index changed.
		r, _ := h.store.Rollout("cams", 0)
		if r.GetModifyIndex() >= res.Index {
			t.Errorf("%s: rollout modified at %d", what, r.GetModifyIndex())
		}
	}

	// Batch 0 of rollout 1 on version 1.
	res := run(startBatch(t, 1, 0, 1, "n1", "n2"))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if r := res.Value.(*droverv1.Rollout); len(r.GetBatches()) != 1 || r.GetBatches()[0].GetDoneTime() != nil {
		t.Fatalf("after start: %v", r)
	}
	if ev := h.lastAudit(); ev.GetAction() != state.ActionRolloutBatchStart || ev.GetTarget() != "deployment/cams" {
		t.Errorf("audit: %v", ev)
	}
	as, idx := h.store.NodeAssignments("n1")
	if len(as) != 1 || as[0].GetVersion() != 1 || as[0].GetModel() != "det" || as[0].GetRuntime().GetType() != "onnx" || idx != res.Index {
		t.Fatalf("n1 assignments %v at %d", as, idx)
	}
	stale("the same batch again", startBatch(t, 1, 0, 1, "n1", "n2"))
	stale("batch 1 before batch 0 is done", startBatch(t, 1, 1, 1, "n3"))
	stale("a batch of another version", startBatch(t, 1, 1, 2, "n3"))
	if as, _ := h.store.NodeAssignments("n3"); len(as) != 0 {
		t.Errorf("n3 assigned by a refused batch: %v", as)
	}

	finish := encode(t, droverv1.CommandType_COMMAND_TYPE_FINISH_ROLLOUT_BATCH, &droverv1.FinishRolloutBatchCommand{
		Meta: meta("server/a"), Deployment: "cams", RolloutId: 1, Index: 0, Time: timestamppb.New(epoch),
	})
	if res := run(finish); res.Err != nil || res.Value.(*droverv1.Rollout).GetBatches()[0].GetDoneTime() == nil {
		t.Fatalf("finish: %v", res)
	}
	stale("finish twice", finish)

	// Pause, then a success decided before the pause is refused.
	setState := func(id uint64, from, to droverv1.RolloutState) []byte {
		return encode(t, droverv1.CommandType_COMMAND_TYPE_SET_ROLLOUT_STATE, &droverv1.SetRolloutStateCommand{
			Meta: meta("alice"), Deployment: "cams", RolloutId: id, From: from, To: to, Reason: "test", Time: timestamppb.New(epoch),
		})
	}
	if res := run(setState(1, progressing, paused)); res.Err != nil {
		t.Fatal(res.Err)
	}
	stale("success of a paused rollout", setState(1, progressing, succeeded))
	run(setState(1, paused, progressing))
	if res := run(setState(1, progressing, succeeded)); res.Err != nil || res.Value.(*droverv1.Rollout).GetEndReason() != "test" {
		t.Fatalf("succeed: %v", res)
	}
	if res := run(setState(1, succeeded, progressing)); !errors.Is(res.Err, state.ErrInvalid) {
		t.Errorf("a transition no rollout makes: %v", res.Err)
	}

	// Nodes that join later get the version while no rollout runs.
	assign := func(version uint64, nodes ...string) []byte {
		return encode(t, droverv1.CommandType_COMMAND_TYPE_ASSIGN_DEPLOYMENT_NODES, &droverv1.AssignDeploymentNodesCommand{
			Meta: meta("server/a"), Deployment: "cams", Version: version, NodeIds: nodes, Time: timestamppb.New(epoch),
		})
	}
	if res := run(assign(1, "n3")); res.Err != nil {
		t.Fatal(res.Err)
	}
	stale("assign another version", assign(2, "n4"))

	// Version 2, applied with a runtime only it can run: rollout 2,
	// which fails on its first batch and is rolled back as rollout 3.
	h.mustApply(setAlias(t, "alice", "det", "prod", 2))
	h.mustApply(command(t, droverv1.CommandType_COMMAND_TYPE_APPLY_DEPLOYMENT, &droverv1.ApplyDeploymentCommand{
		Meta: meta("alice"),
		Spec: &droverv1.DeploymentSpec{Name: "cams", Model: "det@prod", Runtime: &droverv1.RuntimeSpec{Type: "exec", Command: []string{"./v2-only"}}},
	}))
	if d, _ := h.store.Deployment("cams"); d.GetPrevious().GetVersion() != 1 || d.GetPrevious().GetRuntime().GetType() != "onnx" {
		t.Fatalf("the apply of version 2 did not keep how version 1 ran: %v", d.GetPrevious())
	}
	if as, _ := h.store.NodeAssignments("n1"); len(as) != 1 || as[0].GetVersion() != 1 {
		t.Fatalf("a new rollout changed assignments: %v", as)
	}
	if res := run(startBatch(t, 2, 0, 2, "n1")); res.Err != nil {
		t.Fatal(res.Err)
	}
	run(setState(2, progressing, failed))
	rollback := encode(t, droverv1.CommandType_COMMAND_TYPE_START_ROLLBACK, &droverv1.StartRollbackCommand{
		Meta: meta("server/a"), Deployment: "cams", Id: 3, RollbackOf: 2, From: 2, To: 1,
		Reason: "rollback of rollout 2", CreatedBy: "rollout-controller", Time: timestamppb.New(epoch),
	})
	res = run(rollback)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if r := res.Value.(*droverv1.Rollout); r.GetId() != 3 || r.GetRollbackOf() != 2 || r.GetToVersion() != 1 || r.GetState() != progressing {
		t.Fatalf("rollback: %v", r)
	}
	// Version 1 runs as it ran before, a change of spec and so of
	// revision, and the nodes are told so.
	if d, _ := h.store.Deployment("cams"); d.GetVersion() != 1 || d.GetRolloutId() != 3 || d.GetSpec().GetRuntime().GetType() != "onnx" ||
		d.GetRevision() != 3 || d.GetPrevious().GetVersion() != 2 || d.GetPrevious().GetRuntime().GetCommand()[0] != "./v2-only" {
		t.Errorf("deployment after rollback: %v", d)
	}
	if as, _ := h.store.NodeAssignments("n2"); len(as) != 1 || as[0].GetVersion() != 1 || as[0].GetRuntime().GetType() != "onnx" {
		t.Errorf("n2, which stayed on version 1, after rollback: %v", as)
	}
	stale("rollback twice", rollback)

	// Snapshot round trip, assignments included.
	data := persist(t, h.fsm)
	restored := state.New()
	if err := fsm.New(restored, testLogger(t)).Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		a, _ := h.store.NodeAssignments(n)
		b, _ := restored.NodeAssignments(n)
		if len(a) != 1 || len(a) != len(b) || !proto.Equal(a[0], b[0]) {
			t.Errorf("node %s: %v restored as %v", n, a, b)
		}
	}
	if a, _ := h.store.Deployment("cams"); !proto.Equal(a, func() *droverv1.Deployment { b, _ := restored.Deployment("cams"); return b }()) {
		t.Errorf("deployment %v restored differently", a)
	}
	ra, _ := h.store.Rollouts("cams")
	rb, _ := restored.Rollouts("cams")
	if len(ra) != 3 || len(rb) != 3 || !proto.Equal(ra[1], rb[1]) || !proto.Equal(ra[2], rb[2]) {
		t.Errorf("rollouts %v restored as %v", ra, rb)
	}

	// Unassign, twice: the second is harmless.
	unassign := encode(t, droverv1.CommandType_COMMAND_TYPE_UNASSIGN_DEPLOYMENT_NODES, &droverv1.UnassignDeploymentNodesCommand{
		Meta: meta("server/a"), Deployment: "cams", NodeIds: []string{"n3"},
	})
	for range 2 {
		if res := run(unassign); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	if as, idx := h.store.NodeAssignments("n3"); len(as) != 0 || idx == 0 {
		t.Errorf("n3 after unassign: %v at %d", as, idx)
	}

	// Deleting the deployment removes its assignments.
	h.mustApply(command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_DEPLOYMENT, &droverv1.DeleteDeploymentCommand{Meta: meta("alice"), Name: "cams"}))
	for _, n := range []string{"n1", "n2"} {
		if as, _ := h.store.NodeAssignments(n); len(as) != 0 {
			t.Errorf("node %s keeps %v after delete", n, as)
		}
	}
	if got := h.store.AssignedVersions(); len(got) != 0 {
		t.Errorf("assigned versions after delete: %v", got)
	}
}
