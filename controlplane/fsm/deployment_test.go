package fsm_test

import (
	"errors"
	"testing"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestDeploymentCommands(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "det"))
	h.mustApply(createVersion(t, "alice", "det"))
	h.mustApply(setAlias(t, "alice", "det", "prod", 1))
	spec := &droverv1.DeploymentSpec{Name: "cams", Model: "det@prod", Runtime: &droverv1.RuntimeSpec{Type: "onnx"}}
	zero := uint64(0)
	apply := func(expect *uint64) *droverv1.ApplyDeploymentResponse {
		t.Helper()
		res := h.apply(command(t, droverv1.CommandType_COMMAND_TYPE_APPLY_DEPLOYMENT,
			&droverv1.ApplyDeploymentCommand{Meta: meta("alice"), Spec: spec, ExpectRevision: expect}))
		if res.Err != nil {
			t.Logf("apply at %d: %v", res.Index, res.Err)
			return nil
		}
		return res.Value.(*droverv1.ApplyDeploymentResponse)
	}
	out := apply(&zero)
	if out == nil || out.GetDeployment().GetVersion() != 1 || out.GetRollout().GetId() != 1 {
		t.Fatalf("apply: %v", out)
	}
	if ev := h.lastAudit(); ev.GetAction() != "deployment.apply" || ev.GetTarget() != "deployment/cams" || ev.GetActor() != "alice" {
		t.Errorf("audit: %v", ev)
	}
	// expect_revision 0 again: the deployment exists now.
	if out := apply(&zero); out != nil {
		t.Errorf("second create with expect_revision 0 applied: %v", out)
	}
	if d, _ := h.store.Deployment("cams"); d.GetRevision() != 1 {
		t.Errorf("revision after refusal: %v", d)
	}
	res := h.apply(command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_DEPLOYMENT,
		&droverv1.DeleteDeploymentCommand{Meta: meta("alice"), Name: "cams"}))
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if ev := h.lastAudit(); ev.GetAction() != "deployment.delete" {
		t.Errorf("audit: %v", ev)
	}
	res = h.apply(command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_DEPLOYMENT,
		&droverv1.DeleteDeploymentCommand{Meta: meta("alice"), Name: "cams"}))
	if !errors.Is(res.Err, state.ErrNotFound) {
		t.Errorf("second delete: %v", res.Err)
	}
}
