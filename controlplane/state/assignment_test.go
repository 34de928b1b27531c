package state_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

func TestRestoreChecksAssignments(t *testing.T) {
	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	end := &droverv1.SnapshotRecord{}
	recs := []*droverv1.SnapshotRecord{
		{Record: &droverv1.SnapshotRecord_Model{Model: &droverv1.Model{Name: "det", LatestVersion: 1}}},
		{Record: &droverv1.SnapshotRecord_Version{Version: &droverv1.ModelVersion{Model: "det", Version: 1}}},
		{Record: &droverv1.SnapshotRecord_Deployment{Deployment: &droverv1.Deployment{Spec: deploySpec("cams", "det@1"), Version: 1, RolloutId: 1}}},
		{Record: &droverv1.SnapshotRecord_Rollout{Rollout: &droverv1.Rollout{Deployment: "cams", Id: 1, ToVersion: 1}}},
	}
	assign := func(node, dep string) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Assignment{Assignment: &droverv1.NodeAssignment{
			NodeId: node, Assignment: &droverv1.Assignment{Deployment: dep, Model: "det", Version: 1},
		}}}
	}
	with := func(h *droverv1.SnapshotHeader, more ...*droverv1.SnapshotRecord) []byte {
		all := append(append([]*droverv1.SnapshotRecord{}, recs...), more...)
		msgs := []proto.Message{h}
		for _, r := range all {
			msgs = append(msgs, r)
		}
		return stream(t, append(msgs, end)...)
	}
	s := state.New()
	if err := s.Restore(bytes.NewReader(with(hdr, assign("n-1", "cams"), assign("n-2", "cams")))); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	if as, idx := s.NodeAssignments("n-2"); len(as) != 1 || as[0].GetDeployment() != "cams" || idx != s.Index() {
		t.Errorf("restored n-2: %v at %d (store at %d)", as, idx, s.Index())
	}
	if got := s.Snapshot().Counts()["assignments"]; got != "2" {
		t.Errorf("Counts assignments = %s", got)
	}
	old := proto.CloneOf(hdr)
	old.Format = 6
	for name, data := range map[string][]byte{
		"unknown deployment": with(hdr, assign("n-1", "gone")),
		"no node":            with(hdr, assign("", "cams")),
		"twice":              with(hdr, assign("n-1", "cams"), assign("n-1", "cams")),
		"format 6":           with(old, assign("n-1", "cams")),
	} {
		err := state.New().Restore(bytes.NewReader(data))
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, state.ErrSnapshotInvalid) {
			t.Errorf("%s: Restore = %v, want ErrSnapshotInvalid", name, err)
		}
	}
	// A format 6 snapshot, without assignments, still restores.
	if err := state.New().Restore(bytes.NewReader(with(old))); err != nil {
		t.Errorf("format 6: %v", err)
	}
}
