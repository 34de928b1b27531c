package state_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func deploySpec(name, model string) *droverv1.DeploymentSpec {
	return &droverv1.DeploymentSpec{
		Name:    name,
		Model:   model,
		Runtime: &droverv1.RuntimeSpec{Type: "onnx", Restart: "on-failure"},
	}
}

func (f *fixture) apply(spec *droverv1.DeploymentSpec, expect *uint64) (*state.ApplyDeploymentResult, error) {
	f.t.Helper()
	return f.s.ApplyDeployment(f.next(), meta("alice"), spec, expect)
}

func TestApplyDeploymentRollouts(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	v2 := f.version("det")
	f.alias("det", "prod", 1)

	// Create: revision 1, version 1, rollout 1 from 0.
	res, err := f.apply(deploySpec("cams", "det@prod"), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, r := res.Deployment, res.Rollout
	if d.GetRevision() != 1 || d.GetVersion() != 1 || d.GetRolloutId() != 1 || r == nil ||
		r.GetId() != 1 || r.GetFromVersion() != 0 || r.GetToVersion() != 1 ||
		r.GetState() != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING || r.GetReason() != "apply revision 1" {
		t.Fatalf("create: deployment %v rollout %v", d, r)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionDeploymentApply || ev.GetTarget() != "deployment/cams" || ev.GetResult() != state.ResultOK {
		t.Errorf("audit: %v", ev)
	}

	// The same spec again: nothing changes, but the attempt is audited.
	idx := f.s.Index()
	res, err = f.apply(deploySpec("cams", "det@prod"), nil)
	if err != nil || res.Changed || res.Rollout != nil || res.Deployment.GetRevision() != 1 {
		t.Fatalf("reapply: %+v %v", res, err)
	}
	if f.s.Index() != idx+1 || lastAudit(t, f.s).GetDetails()["unchanged"] != "true" {
		t.Errorf("reapply audit: %v", lastAudit(t, f.s))
	}

	// A spec change that keeps the version: new revision, no rollout.
	s2 := deploySpec("cams", "det@prod")
	s2.Runtime.Env = map[string]string{"A": "b"}
	res, err = f.apply(s2, nil)
	if err != nil || res.Rollout != nil || res.Deployment.GetRevision() != 2 || res.Deployment.GetRolloutId() != 1 {
		t.Fatalf("spec change: %+v %v", res, err)
	}

	// A new version: rollout 2 from 1 to 2 supersedes rollout 1.
	res, err = f.apply(deploySpec("cams", "det@2"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Rollout; r.GetId() != 2 || r.GetFromVersion() != 1 || r.GetToVersion() != v2.GetVersion() || r.GetReason() != "apply revision 3" {
		t.Errorf("second rollout: %v", r)
	}
	hist, err := f.s.Rollouts("cams")
	if err != nil || len(hist) != 2 {
		t.Fatalf("Rollouts: %v %v", hist, err)
	}
	if hist[0].GetState() != droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED || hist[0].GetEndReason() != "superseded by rollout 2" || hist[0].GetEndTime() == nil {
		t.Errorf("first rollout not superseded: %v", hist[0])
	}
	if latest, err := f.s.Rollout("cams", 0); err != nil || latest.GetId() != 2 {
		t.Errorf("Rollout(latest) = %v, %v", latest, err)
	}
	if got := f.s.LatestRollouts(); len(got) != 1 || got["cams"].GetId() != 2 {
		t.Errorf("LatestRollouts = %v", got)
	}

	// The model and the alias it follows cannot go while it is deployed.
	if err := f.s.DeleteModel(f.next(), meta("alice"), "det"); !errors.Is(err, state.ErrInUse) || !strings.Contains(err.Error(), "drover deploy rm cams") {
		t.Errorf("DeleteModel of a deployed model = %v", err)
	}
	if _, err := f.apply(deploySpec("cams", "det@prod"), nil); err != nil {
		t.Fatal(err)
	}
	if err := f.s.DeleteAlias(f.next(), meta("alice"), "det", "prod"); !errors.Is(err, state.ErrInUse) {
		t.Errorf("DeleteAlias of a followed alias = %v", err)
	}

	// Delete takes the history with it.
	if err := f.s.DeleteDeployment(f.next(), meta("alice"), "cams"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Deployment("cams"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Deployment after delete: %v", err)
	}
	if _, err := f.s.Rollouts("cams"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Rollouts after delete: %v", err)
	}
	if err := f.s.DeleteDeployment(f.next(), meta("alice"), "cams"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if err := f.s.DeleteModel(f.next(), meta("alice"), "det"); !errors.Is(err, state.ErrInUse) || !strings.Contains(err.Error(), "alias") {
		t.Errorf("DeleteModel after the deployment went: %v (want only the alias to hold it)", err)
	}
}

func TestApplyDeploymentRefusals(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	f.alias("det", "prod", 1)
	for _, tc := range []struct {
		name  string
		model string
		kind  error
		want  string
	}{
		{"missing model", "nope@prod", state.ErrNotFound, `model "nope" not found; list models with "drover model ls"`},
		{"missing alias", "det@canary", state.ErrNotFound, `alias "canary" not found: the model has aliases "prod" (v1); list its versions and aliases with "drover model show det"`},
		{"missing version", "det@9", state.ErrNotFound, `version 9 not found`},
		{"latest", "det@latest", state.ErrInvalid, "NAME@ALIAS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f.apply(deploySpec("cams", tc.model), nil)
			t.Log(err)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("apply = %v, want %v naming %q", err, tc.kind, tc.want)
			}
			if ev := lastAudit(t, f.s); ev.GetResult() == state.ResultOK {
				t.Errorf("refusal audited as ok: %v", ev)
			}
		})
	}
	if len(f.s.Deployments()) != 0 {
		t.Errorf("refused applies left deployments: %v", f.s.Deployments())
	}
	if _, err := f.apply(deploySpec("Bad Name", "det@prod"), nil); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
}

func TestApplyDeploymentExpectRevision(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	zero, one, two := uint64(0), uint64(1), uint64(2)
	if _, err := f.apply(deploySpec("cams", "det@1"), &one); !errors.Is(err, state.ErrConflict) {
		t.Errorf("expect 1 of a missing deployment: %v", err)
	}
	if _, err := f.apply(deploySpec("cams", "det@1"), &zero); err != nil {
		t.Fatalf("expect 0 of a missing deployment: %v", err)
	}
	if _, err := f.apply(deploySpec("cams", "det@1"), &zero); !errors.Is(err, state.ErrConflict) {
		t.Errorf("expect 0 of an existing deployment: %v", err)
	}
	s := deploySpec("cams", "det@1")
	s.Runtime.Restart = "always"
	if _, err := f.apply(s, &two); !errors.Is(err, state.ErrConflict) || !strings.Contains(err.Error(), "at revision 1") {
		t.Errorf("expect 2 at revision 1: %v", err)
	}
	if d, _ := f.s.Deployment("cams"); d.GetSpec().GetRuntime().GetRestart() != "on-failure" {
		t.Errorf("a refused apply changed the deployment: %v", d)
	}
	if res, err := f.apply(s, &one); err != nil || res.Deployment.GetRevision() != 2 {
		t.Errorf("expect 1 at revision 1: %+v %v", res, err)
	}
	if state.Reason(state.ErrConflict) != droverv1.ErrorReason_ERROR_REASON_CONFLICT {
		t.Errorf("ErrConflict maps to %v", state.Reason(state.ErrConflict))
	}
}

func TestRolloutHistoryIsBounded(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	f.version("det")
	for i := range state.MaxRolloutHistory + 5 {
		if _, err := f.apply(deploySpec("cams", []string{"det@1", "det@2"}[i%2]), nil); err != nil {
			t.Fatal(err)
		}
	}
	hist, _ := f.s.Rollouts("cams")
	if len(hist) != state.MaxRolloutHistory || hist[len(hist)-1].GetId() != state.MaxRolloutHistory+5 || hist[0].GetId() != 6 {
		t.Errorf("history: %d rollouts, %d to %d", len(hist), hist[0].GetId(), hist[len(hist)-1].GetId())
	}
	if _, err := f.s.Rollout("cams", 1); !errors.Is(err, state.ErrNotFound) || !strings.Contains(err.Error(), "keeps rollouts 6 to") {
		t.Errorf("dropped rollout: %v", err)
	}
}

func TestDeploymentSnapshotRoundTrip(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	f.version("det")
	f.alias("det", "prod", 1)
	for _, m := range []string{"det@prod", "det@2"} {
		if _, err := f.apply(deploySpec("cams", m), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.apply(deploySpec("aaa", "det@1"), nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	s2 := state.New()
	if err := s2.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cams", "aaa"} {
		a, _ := f.s.Deployment(name)
		b, err := s2.Deployment(name)
		if err != nil || !proto.Equal(a, b) {
			t.Errorf("deployment %s: %v, %v want %v", name, b, err, a)
		}
		ra, _ := f.s.Rollouts(name)
		rb, _ := s2.Rollouts(name)
		if len(ra) != len(rb) {
			t.Fatalf("rollouts %s: %d, want %d", name, len(rb), len(ra))
		}
		for i := range ra {
			if !proto.Equal(ra[i], rb[i]) {
				t.Errorf("rollout %s %d: %v want %v", name, i, rb[i], ra[i])
			}
		}
	}
	var again bytes.Buffer
	if _, err := s2.Snapshot().WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("a restored store writes another snapshot")
	}
	if got := s2.Snapshot().Counts(); got["deployments"] != "2" || got["rollouts"] != "3" {
		t.Errorf("Counts = %v", got)
	}
}

func TestRestoreRefusesDanglingDeployments(t *testing.T) {
	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	m := &droverv1.Model{Name: "det", LatestVersion: 1}
	v := &droverv1.ModelVersion{Model: "det", Version: 1}
	d := &droverv1.Deployment{Spec: deploySpec("cams", "det@1"), Version: 1, RolloutId: 1}
	r := &droverv1.Rollout{Deployment: "cams", Id: 1, ToVersion: 1}
	rec := func(x proto.Message) *droverv1.SnapshotRecord {
		switch x := x.(type) {
		case *droverv1.Model:
			return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Model{Model: x}}
		case *droverv1.ModelVersion:
			return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Version{Version: x}}
		case *droverv1.Deployment:
			return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Deployment{Deployment: x}}
		case *droverv1.Rollout:
			return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Rollout{Rollout: x}}
		}
		panic("record type")
	}
	good := stream(t, hdr, rec(m), rec(v), rec(d), rec(r), &droverv1.SnapshotRecord{})
	if err := state.New().Restore(bytes.NewReader(good)); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	old := proto.Clone(hdr).(*droverv1.SnapshotHeader)
	old.Format = 5
	for name, data := range map[string][]byte{
		"model missing":      stream(t, hdr, rec(d), rec(r), &droverv1.SnapshotRecord{}),
		"rollout missing":    stream(t, hdr, rec(m), rec(v), rec(d), &droverv1.SnapshotRecord{}),
		"deployment missing": stream(t, hdr, rec(m), rec(v), rec(r), &droverv1.SnapshotRecord{}),
		"format 5":           stream(t, old, rec(m), rec(v), rec(d), rec(r), &droverv1.SnapshotRecord{}),
	} {
		err := state.New().Restore(bytes.NewReader(data))
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, state.ErrSnapshotInvalid) {
			t.Errorf("%s: Restore = %v, want ErrSnapshotInvalid", name, err)
		}
	}
}

// Moving an alias rolls out its new target to the deployments that follow
// it, and only to those; an alias set to where it points starts nothing.
func TestAliasMoveStartsRollout(t *testing.T) {
	f := newFixture(t)
	f.model("det")
	f.version("det")
	f.version("det")
	f.alias("det", "prod", 1)
	f.alias("det", "canary", 1)
	if _, err := f.apply(deploySpec("cams", "det@prod"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.apply(deploySpec("pinned", "det@1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.apply(deploySpec("trial", "det@canary"), nil); err != nil {
		t.Fatal(err)
	}
	f.alias("det", "prod", 2)
	d, err := f.s.Deployment("cams")
	if err != nil {
		t.Fatal(err)
	}
	hist, _ := f.s.Rollouts("cams")
	r := hist[len(hist)-1]
	if d.GetVersion() != 2 || d.GetRolloutId() != 2 || r.GetFromVersion() != 1 || r.GetToVersion() != 2 ||
		r.GetReason() != "alias prod of det moved to version 2" || hist[0].GetState() != droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED {
		t.Fatalf("after the alias moved: deployment %v, rollouts %v", d, hist)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["rollouts"] != "cams" {
		t.Errorf("audit of the alias move: %v", ev)
	}
	for _, name := range []string{"pinned", "trial"} {
		if d, _ := f.s.Deployment(name); d.GetVersion() != 1 || d.GetRolloutId() != 1 {
			t.Errorf("%s moved with prod: %v", name, d)
		}
	}
	f.alias("det", "prod", 2)
	if hist, _ := f.s.Rollouts("cams"); len(hist) != 2 {
		t.Errorf("setting the alias where it points started a rollout: %v", hist)
	}
}
