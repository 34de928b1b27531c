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

func (f *fixture) deleteModel(name string) {
	f.t.Helper()
	if err := f.s.DeleteModel(f.next(), meta("alice"), name); err != nil {
		f.t.Fatalf("DeleteModel(%q): %v", name, err)
	}
}

// A model deleted and created again numbers its versions on from the
// highest number the name ever had, so NAME@N never names two different
// artifacts; a delete of the new model before it had a version keeps the
// mark too.
func TestVersionNumbersSurviveDeleteAndCreate(t *testing.T) {
	f := newFixture(t)
	f.model("a")
	for range 3 {
		f.version("a")
	}
	f.deleteModel("a")
	f.model("a")
	if m, _ := f.s.Model("a"); m.GetLatestVersion() != 0 {
		t.Errorf("created again: latest version %d, want 0 (no versions yet)", m.GetLatestVersion())
	}
	if v := f.version("a"); v.GetVersion() != 4 {
		t.Fatalf("first version after delete and create is %d, want 4", v.GetVersion())
	}
	_, err := f.s.Version("a", "1")
	if !errors.Is(err, state.ErrNotFound) || !strings.Contains(err.Error(), "only version 4") {
		t.Errorf("a@1 after delete and create = %v, want not found naming version 4", err)
	}
	f.version("a")
	if _, err := f.s.Version("a", "9"); err == nil || !strings.Contains(err.Error(), "versions 4-5") {
		t.Errorf("a@9 = %v, want the range 4-5", err)
	}

	// Deleted again, created, deleted with no versions, created: 6.
	f.deleteModel("a")
	f.model("a")
	f.deleteModel("a")
	f.model("a")
	if v := f.version("a"); v.GetVersion() != 6 {
		t.Errorf("after two deletes, first version is %d, want 6", v.GetVersion())
	}
	// Other names are not affected.
	f.model("b")
	if v := f.version("b"); v.GetVersion() != 1 {
		t.Errorf("a new name's first version is %d, want 1", v.GetVersion())
	}
}

// Version marks travel in snapshots: a store restored from a snapshot
// taken after a delete numbers on as the original does.
func TestVersionMarksSurviveSnapshot(t *testing.T) {
	f := newFixture(t)
	f.model("a")
	f.version("a")
	f.version("a")
	f.deleteModel("a")
	f.model("gone")
	f.version("gone")
	f.deleteModel("gone")
	f.model("kept")
	f.version("kept")

	var buf bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&again); err != nil || !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Fatalf("two snapshots of one state differ (%v)", err)
	}
	restored := &fixture{t: t, s: state.New(), idx: f.idx}
	if err := restored.s.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	for _, fx := range []*fixture{f, restored} {
		fx.model("a")
		if v := fx.version("a"); v.GetVersion() != 3 {
			t.Errorf("first version of a created again is %d, want 3", v.GetVersion())
		}
		fx.model("gone")
		if v := fx.version("gone"); v.GetVersion() != 2 {
			t.Errorf("first version of gone created again is %d, want 2", v.GetVersion())
		}
	}
}

// Snapshots older than format 3 have no version marks and still restore;
// they may not hold one, and a format 3 snapshot's marks must describe a
// state the writes could have made.
func TestRestoreVersionMarks(t *testing.T) {
	end := &droverv1.SnapshotRecord{}
	mark := func(name string, v uint64) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_VersionMark{VersionMark: &droverv1.ModelVersionMark{Model: name, Version: v}}}
	}
	model := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Model{Model: &droverv1.Model{Name: "a", LatestVersion: 1}}}
	version := &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Version{Version: &droverv1.ModelVersion{Model: "a", Version: 1}}}

	v2 := &droverv1.SnapshotHeader{Format: 2, Index: 5}
	s := state.New()
	if err := s.Restore(bytes.NewReader(stream(t, v2, model, version, end))); err != nil {
		t.Fatalf("Restore(format 2) = %v", err)
	}
	if v, err := s.CreateVersion(6, meta("alice"), &droverv1.CreateVersionRequest{Model: "a"}); err != nil || v.GetVersion() != 2 {
		t.Errorf("version after restoring format 2 = %v, %v; want 2", v, err)
	}
	err := state.New().Restore(bytes.NewReader(stream(t, v2, mark("b", 3), end)))
	if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), "format 2 snapshots do not have") {
		t.Errorf("format 2 with a version mark = %v", err)
	}

	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 5}
	s = state.New()
	if err := s.Restore(bytes.NewReader(stream(t, hdr, model, version, mark("a", 4), mark("b", 3), end))); err != nil {
		t.Fatalf("Restore with marks = %v", err)
	}
	if v, err := s.CreateVersion(6, meta("alice"), &droverv1.CreateVersionRequest{Model: "a"}); err != nil || v.GetVersion() != 5 {
		t.Errorf("version of a live model with a mark = %v, %v; want 5", v, err)
	}
	for _, tc := range []struct {
		name    string
		recs    []proto.Message
		mention string
	}{
		{"mark 0", []proto.Message{mark("b", 0)}, "mark 0"},
		{"mark twice", []proto.Message{mark("b", 2), mark("b", 3)}, "two version marks"},
		{"mark without name", []proto.Message{mark("", 2)}, "model name"},
		{"mark not above latest", []proto.Message{model, version, mark("a", 1)}, "not above its latest version"},
	} {
		recs := append(append([]proto.Message{hdr}, tc.recs...), end)
		err := state.New().Restore(bytes.NewReader(stream(t, recs...)))
		if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: %v, want ErrSnapshotInvalid mentioning %q", tc.name, err, tc.mention)
		}
	}
}
