package state_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// pushedVersion creates a version of model that holds a signed manifest,
// as FinishPush does, and returns it.
func (f *fixture) pushedVersion(model string, manifest []byte) *droverv1.ModelVersion {
	f.t.Helper()
	sum := sha256.Sum256(manifest)
	v, err := f.s.CreateVersion(f.next(), meta("alice"), &droverv1.CreateVersionRequest{Model: model, Artifact: &droverv1.ArtifactManifest{
		Digest: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: 1, Signed: &droverv1.SignedManifest{Manifest: manifest},
	}})
	if err != nil {
		f.t.Fatalf("CreateVersion(%q): %v", model, err)
	}
	return v
}

// A pull request names a version with pushed bytes, replaces the node's
// previous one, is audited, and survives a snapshot and restore.
func TestSetNodePull(t *testing.T) {
	f := newFixture(t)
	populateNodes(f)
	f.model("resnet")
	bare := f.version("resnet")
	v2 := f.pushedVersion("resnet", []byte("manifest two"))
	v3 := f.pushedVersion("resnet", []byte("manifest three"))

	ask := func(node, model string, v *droverv1.ModelVersion) (*droverv1.Node, error) {
		return f.s.SetNodePull(f.next(), meta("alice"), node, &droverv1.NodePull{
			Model: model, Version: v.GetVersion(), ArtifactDigest: v.GetArtifact().GetDigest(),
		})
	}
	n, err := ask("n1", "resnet", v2)
	if err != nil {
		t.Fatalf("SetNodePull v2: %v", err)
	}
	p := n.GetRequestedPull()
	if p.GetVersion() != v2.GetVersion() || p.GetArtifactDigest() != v2.GetArtifact().GetDigest() ||
		p.GetRequestedBy() != "alice" || p.GetRequestIndex() != f.idx || p.GetRequestTime() == nil {
		t.Errorf("requested pull = %v, want version %d asked by alice at index %d", p, v2.GetVersion(), f.idx)
	}
	ev := lastAudit(t, f.s)
	if ev.GetAction() != state.ActionNodePull || ev.GetTarget() != "node/n1" || ev.GetDetails()["version"] != "2" {
		t.Errorf("audit event = %v, want node.pull on node/n1 for version 2", ev)
	}
	if s, _ := f.s.NodeSummary("n1"); s.GetRequestedPull().GetVersion() != v2.GetVersion() {
		t.Errorf("NodeSummary's requested pull = %v, want version 2: heartbeats answer with it", s.GetRequestedPull())
	}

	if _, err = ask("n1", "resnet", v3); err != nil {
		t.Fatalf("SetNodePull v3: %v", err)
	}
	if got := f.node("n1").GetRequestedPull(); got.GetVersion() != v3.GetVersion() || got.GetRequestIndex() != f.idx {
		t.Errorf("after a second request the node's pull = %v, want version 3 at index %d", got, f.idx)
	}

	for _, tc := range []struct {
		name string
		node string
		pull *droverv1.NodePull
		want error
	}{
		{"unknown node", "nope", &droverv1.NodePull{Model: "resnet", Version: 2, ArtifactDigest: v2.GetArtifact().GetDigest()}, state.ErrNotFound},
		{"unknown model", "n1", &droverv1.NodePull{Model: "bert", Version: 1}, state.ErrNotFound},
		{"unknown version", "n1", &droverv1.NodePull{Model: "resnet", Version: 9}, state.ErrNotFound},
		{"version without bytes", "n1", &droverv1.NodePull{Model: "resnet", Version: bare.GetVersion(), ArtifactDigest: bare.GetArtifact().GetDigest()}, state.ErrInvalid},
		{"digest of another version", "n1", &droverv1.NodePull{Model: "resnet", Version: 2, ArtifactDigest: v3.GetArtifact().GetDigest()}, state.ErrInvalid},
		{"node that left", "n3", &droverv1.NodePull{Model: "resnet", Version: 2, ArtifactDigest: v2.GetArtifact().GetDigest()}, state.ErrInvalid},
	} {
		if _, err := f.s.SetNodePull(f.next(), meta("alice"), tc.node, tc.pull); !errors.Is(err, tc.want) {
			t.Errorf("%s: SetNodePull = %v, want %v", tc.name, err, tc.want)
		}
	}
	if got := f.node("n1").GetRequestedPull(); got.GetVersion() != v3.GetVersion() {
		t.Errorf("refused requests changed the node's pull to %v", got)
	}

	var buf bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	r := state.New()
	if err := r.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	requireSameNodes(t, f.s, r)
	if got, _ := r.Node("n1"); got.GetRequestedPull().GetVersion() != v3.GetVersion() {
		t.Errorf("restored node's pull = %v, want version 3", got.GetRequestedPull())
	}
}
