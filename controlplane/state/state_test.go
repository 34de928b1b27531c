package state_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fixture applies writes at increasing indexes, as the FSM would.
type fixture struct {
	t   *testing.T
	s   *state.Store
	idx uint64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return &fixture{t: t, s: state.New()}
}

func (f *fixture) next() uint64 { f.idx++; return f.idx }

func meta(actor string) *droverv1.CommandMeta {
	return &droverv1.CommandMeta{Actor: actor, Time: timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))}
}

func (f *fixture) model(name string) {
	f.t.Helper()
	if _, err := f.s.CreateModel(f.next(), meta("alice"), &droverv1.CreateModelRequest{Name: name}); err != nil {
		f.t.Fatalf("CreateModel(%q): %v", name, err)
	}
}

func (f *fixture) version(model string) *droverv1.ModelVersion {
	f.t.Helper()
	v, err := f.s.CreateVersion(f.next(), meta("alice"), &droverv1.CreateVersionRequest{Model: model})
	if err != nil {
		f.t.Fatalf("CreateVersion(%q): %v", model, err)
	}
	return v
}

func (f *fixture) alias(model, alias string, v uint64) {
	f.t.Helper()
	if _, _, err := f.s.SetAlias(f.next(), meta("alice"), model, alias, v); err != nil {
		f.t.Fatalf("SetAlias(%q, %q, %d): %v", model, alias, v, err)
	}
}

func lastAudit(t *testing.T, s *state.Store) *droverv1.AuditEvent {
	t.Helper()
	evs := s.Audit(0, 1, "", "")
	if len(evs) != 1 {
		t.Fatalf("audit log is empty")
	}
	return evs[0]
}

func TestValidateName(t *testing.T) {
	valid := []string{"a", "0", "resnet-50", "a.b_c-d", "llama3.1", strings.Repeat("a", 63)}
	invalid := []string{"", "Foo Bar", "-a", "a-", ".a", "a_", "UPPER", "a b", "a/b", "é", strings.Repeat("a", 64)}
	for _, name := range valid {
		if err := state.ValidateName("model", name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range invalid {
		err := state.ValidateName("model", name)
		if !errors.Is(err, state.ErrInvalid) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalid", name, err)
		}
	}
	got := state.ValidateName("model", "Foo Bar").Error()
	want := `model name "Foo Bar" is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit, e.g. "resnet-50"`
	if got != want {
		t.Errorf("message:\n got %s\nwant %s", got, want)
	}
}

func TestValidateAlias(t *testing.T) {
	for _, name := range []string{"latest", "3", "007"} {
		err := state.ValidateAlias(name)
		if !errors.Is(err, state.ErrInvalid) || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("ValidateAlias(%q) = %v, want a reserved-name error", name, err)
		}
	}
	for _, name := range []string{"prod", "v3", "latest-good", "3a"} {
		if err := state.ValidateAlias(name); err != nil {
			t.Errorf("ValidateAlias(%q) = %v", name, err)
		}
	}
}

func TestCreateModelRefusals(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	tests := []struct {
		name string
		req  *droverv1.CreateModelRequest
		want error
	}{
		{"nil request", nil, state.ErrInvalid},
		{"bad name", &droverv1.CreateModelRequest{Name: "Res Net"}, state.ErrInvalid},
		{"empty tag key", &droverv1.CreateModelRequest{Name: "bert", Tags: map[string]string{"": "x"}}, state.ErrInvalid},
		{"exists", &droverv1.CreateModelRequest{Name: "resnet"}, state.ErrAlreadyExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idx := f.next()
			_, err := f.s.CreateModel(idx, meta("bob"), tt.req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if f.s.Index() != idx {
				t.Errorf("Index() = %d, want %d: refusals advance the index", f.s.Index(), idx)
			}
			ev := lastAudit(t, f.s)
			if ev.GetIndex() != idx || ev.GetResult() != err.Error() || ev.GetActor() != "bob" || ev.GetAction() != state.ActionModelCreate {
				t.Errorf("audit = %v", ev)
			}
		})
	}
	if n := len(f.s.Models()); n != 1 {
		t.Errorf("%d models, want 1", n)
	}
}

func TestCreateVersionValidation(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	sum := sha256.Sum256([]byte("manifest bytes"))
	manifestDigest := "sha256:" + hex.EncodeToString(sum[:])
	tests := []struct {
		name string
		req  *droverv1.CreateVersionRequest
		want error
	}{
		{"ok minimal", &droverv1.CreateVersionRequest{}, nil},
		{"ok full", &droverv1.CreateVersionRequest{
			Artifact: &droverv1.ArtifactManifest{Digest: digest, SizeBytes: 10, Format: "onnx",
				Files: []*droverv1.ArtifactFile{{Path: "model.onnx", Digest: digest, SizeBytes: 10}}},
			Card:    strings.Repeat("x", state.MaxCardBytes),
			Lineage: &droverv1.Lineage{ParentVersion: 1},
			Metrics: map[string]float64{"accuracy": 0.9, "loss": -1},
			Tags:    map[string]string{"team": "vision"},
		}, nil},
		{"unknown model", &droverv1.CreateVersionRequest{Model: "nope"}, state.ErrNotFound},
		{"digest without prefix", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Digest: strings.Repeat("ab", 32), SizeBytes: 1}}, state.ErrInvalid},
		{"digest uppercase", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Digest: "sha256:" + strings.Repeat("AB", 32), SizeBytes: 1}}, state.ErrInvalid},
		{"digest short", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Digest: "sha256:abcd", SizeBytes: 1}}, state.ErrInvalid},
		{"digest without size", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Digest: digest}}, state.ErrInvalid},
		{"file without path", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Files: []*droverv1.ArtifactFile{{}}}}, state.ErrInvalid},
		{"file bad digest", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{Files: []*droverv1.ArtifactFile{{Path: "a", Digest: "md5:x"}}}}, state.ErrInvalid},
		{"NaN metric", &droverv1.CreateVersionRequest{Metrics: map[string]float64{"acc": math.NaN()}}, state.ErrInvalid},
		{"Inf metric", &droverv1.CreateVersionRequest{Metrics: map[string]float64{"acc": math.Inf(-1)}}, state.ErrInvalid},
		{"empty metric name", &droverv1.CreateVersionRequest{Metrics: map[string]float64{"": 1}}, state.ErrInvalid},
		{"card too big", &droverv1.CreateVersionRequest{Card: strings.Repeat("x", state.MaxCardBytes+1)}, state.ErrInvalid},
		{"empty tag key", &droverv1.CreateVersionRequest{Tags: map[string]string{"": "x"}}, state.ErrInvalid},
		{"parent missing", &droverv1.CreateVersionRequest{Lineage: &droverv1.Lineage{ParentVersion: 99}}, state.ErrInvalid},
		{"ok signed manifest", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{
			Digest: manifestDigest, SizeBytes: 1, Signed: &droverv1.SignedManifest{Manifest: []byte("manifest bytes")}}}, nil},
		{"signed manifest of other bytes", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{
			Digest: digest, SizeBytes: 1, Signed: &droverv1.SignedManifest{Manifest: []byte("manifest bytes")}}}, state.ErrInvalid},
		{"signed manifest without digest", &droverv1.CreateVersionRequest{Artifact: &droverv1.ArtifactManifest{
			Signed: &droverv1.SignedManifest{Manifest: []byte("manifest bytes")}}}, state.ErrInvalid},
		{"ok reference", &droverv1.CreateVersionRequest{Reference: referenceProfile(t, "x\n1\n2\n")}, nil},
		{"reference with a malformed sketch", &droverv1.CreateVersionRequest{Reference: &droverv1.Profile{
			Inputs: []*droverv1.FeatureProfile{{Name: "x", Kind: droverv1.FeatureKind_FEATURE_KIND_NUMERIC}}}}, state.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.model("resnet")
			f.version("resnet")
			req := proto.Clone(tt.req).(*droverv1.CreateVersionRequest)
			if req.Model == "" {
				req.Model = "resnet"
			}
			idx := f.next()
			v, err := f.s.CreateVersion(idx, meta("bob"), req)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			m, _ := f.s.Model("resnet")
			ev := lastAudit(t, f.s)
			if tt.want != nil {
				if m.GetLatestVersion() != 1 || v != nil {
					t.Errorf("refused version changed the model: %v", m)
				}
				if ev.GetResult() != err.Error() || ev.GetTarget() != "model/"+req.Model {
					t.Errorf("audit = %v", ev)
				}
				return
			}
			if v.GetVersion() != 2 || m.GetLatestVersion() != 2 || v.GetCreateIndex() != idx {
				t.Errorf("version %v, model %v", v, m)
			}
			if ev.GetResult() != state.ResultOK || ev.GetTarget() != "model/resnet/v2" || ev.GetDetails()["version"] != "2" {
				t.Errorf("audit = %v", ev)
			}
		})
	}
}

func referenceProfile(t *testing.T, csv string) *droverv1.Profile {
	t.Helper()
	p, _, err := sketch.ReferenceFromCSV(strings.NewReader(csv))
	if err != nil {
		t.Fatal(err)
	}
	return p.ToProto()
}

func TestReferenceIsKeptButNotListed(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	ref := referenceProfile(t, "x,out:y\n1,a\n2,b\n")
	if _, err := f.s.CreateVersion(f.next(), meta("bob"), &droverv1.CreateVersionRequest{Model: "resnet", Reference: ref}); err != nil {
		t.Fatal(err)
	}
	v, err := f.s.Version("resnet", "1")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(v.GetReference(), ref) || v.GetReferenceSource() != state.ReferenceFromPush || v.GetReferenceFeatures() != 2 {
		t.Fatalf("version %d: source %q, %d features, reference kept: %v", v.GetVersion(), v.GetReferenceSource(), v.GetReferenceFeatures(), proto.Equal(v.GetReference(), ref))
	}
	vs, err := f.s.Versions("resnet")
	if err != nil {
		t.Fatal(err)
	}
	if vs[0].GetReference() != nil || vs[0].GetReferenceFeatures() != 2 {
		t.Fatalf("listing: reference %v, %d features; want it left out and counted", vs[0].GetReference(), vs[0].GetReferenceFeatures())
	}
}

func TestVersionRefs(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	f.model("empty")
	f.version("resnet")
	f.version("resnet")
	f.version("resnet")
	f.alias("resnet", "prod", 2)
	f.alias("resnet", "canary", 3)

	for ref, want := range map[string]uint64{"1": 1, "3": 3, "latest": 3, "prod": 2, "canary": 3, "0002": 2} {
		v, err := f.s.Version("resnet", ref)
		if err != nil || v.GetVersion() != want {
			t.Errorf("Version(resnet, %q) = %v, %v; want version %d", ref, v, err, want)
		}
	}
	errs := []struct {
		model, ref string
		want       error
		mention    string
	}{
		{"nope", "1", state.ErrNotFound, `model "nope"`},
		{"resnet", "4", state.ErrNotFound, "versions 1-3"},
		{"resnet", "0", state.ErrNotFound, "versions 1-3"},
		{"resnet", "99999999999999999999999", state.ErrNotFound, "versions 1-3"},
		{"resnet", "staging", state.ErrNotFound, `aliases "canary" (v3), "prod" (v2)`},
		{"empty", "latest", state.ErrNotFound, "no versions yet"},
		{"empty", "prod", state.ErrNotFound, "no aliases"},
		{"resnet", "Prod!", state.ErrInvalid, `"latest"`},
	}
	for _, tt := range errs {
		_, err := f.s.Version(tt.model, tt.ref)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.mention) {
			t.Errorf("Version(%q, %q) = %v; want %v mentioning %s", tt.model, tt.ref, err, tt.want, tt.mention)
		}
	}
	vs, err := f.s.Versions("resnet")
	if err != nil || len(vs) != 3 || vs[0].GetVersion() != 1 || vs[2].GetVersion() != 3 {
		t.Errorf("Versions = %v, %v", vs, err)
	}
	if _, err := f.s.Versions("nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("Versions(nope) = %v", err)
	}
}

func TestAliasRefusals(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	f.version("resnet")
	tests := []struct {
		model, alias string
		version      uint64
		want         error
	}{
		{"resnet", "latest", 1, state.ErrInvalid},
		{"resnet", "7", 1, state.ErrInvalid},
		{"resnet", "Prod", 1, state.ErrInvalid},
		{"nope", "prod", 1, state.ErrNotFound},
		{"resnet", "prod", 0, state.ErrInvalid},
		{"resnet", "prod", 2, state.ErrNotFound},
	}
	for _, tt := range tests {
		_, _, err := f.s.SetAlias(f.next(), meta("bob"), tt.model, tt.alias, tt.version)
		if !errors.Is(err, tt.want) {
			t.Errorf("SetAlias(%q, %q, %d) = %v, want %v", tt.model, tt.alias, tt.version, err, tt.want)
		}
	}
	if err := f.s.DeleteAlias(f.next(), meta("bob"), "resnet", "prod"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("DeleteAlias of a missing alias = %v", err)
	}
	m, _ := f.s.Model("resnet")
	if len(m.GetAliases()) != 0 || m.GetModifyIndex() != m.GetCreateIndex()+1 {
		t.Errorf("refusals changed the model: %v", m)
	}
}

func TestSetAliasSameVersionChangesNothing(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	f.version("resnet")
	f.alias("resnet", "prod", 1)
	before, _ := f.s.Model("resnet")
	m, prev, err := f.s.SetAlias(f.next(), meta("bob"), "resnet", "prod", 1)
	if err != nil || prev != 1 || m.GetModifyIndex() != before.GetModifyIndex() {
		t.Errorf("SetAlias again = %v, %d, %v; want modify index %d kept", m, prev, err, before.GetModifyIndex())
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["previous"] != "1" || ev.GetIndex() != f.idx {
		t.Errorf("audit = %v", ev)
	}
}

func TestReadsAreCopies(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	f.version("resnet")
	f.alias("resnet", "prod", 1)

	m, _ := f.s.Model("resnet")
	m.Aliases["prod"] = 42
	m.Name = "changed"
	v, _ := f.s.Version("resnet", "1")
	v.Version = 42
	f.s.Models()[0].Description = "changed"
	f.s.Audit(0, 0, "", "")[0].Result = "changed"

	m2, _ := f.s.Model("resnet")
	v2, _ := f.s.Version("resnet", "prod")
	if m2.GetName() != "resnet" || m2.GetAliases()["prod"] != 1 || m2.GetDescription() != "" || v2.GetVersion() != 1 {
		t.Errorf("a caller changed the state: %v %v", m2, v2)
	}
	if r := f.s.Audit(0, 0, "", "")[0].GetResult(); r != state.ResultOK {
		t.Errorf("a caller changed the audit log: %q", r)
	}

	// Nor can a caller change the state through what it passed in.
	req := &droverv1.CreateModelRequest{Name: "bert", Tags: map[string]string{"a": "b"}}
	if _, err := f.s.CreateModel(f.next(), meta("alice"), req); err != nil {
		t.Fatal(err)
	}
	req.Tags["a"] = "changed"
	if m, _ := f.s.Model("bert"); m.GetTags()["a"] != "b" {
		t.Errorf("the request's map is shared with the state")
	}
}

func TestAuditQueries(t *testing.T) {
	s, err := state.NewWithOptions(state.Options{AuditRetention: 5})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, s: s}
	f.model("a")            // 1
	f.model("b")            // 2
	f.version("a")          // 3
	f.version("b")          // 4
	f.alias("a", "prod", 1) // 5
	f.model("ab")           // 6
	f.version("ab")         // 7

	indexes := func(evs []*droverv1.AuditEvent) []uint64 {
		var out []uint64
		for _, ev := range evs {
			out = append(out, ev.GetIndex())
		}
		return out
	}
	tests := []struct {
		after  uint64
		limit  int
		prefix string
		want   []uint64
	}{
		{0, 0, "", []uint64{3, 4, 5, 6, 7}}, // retention keeps the last 5
		{0, 2, "", []uint64{6, 7}},
		{4, 0, "", []uint64{5, 6, 7}},
		{0, 0, "model/a", []uint64{3, 5, 6, 7}},
		{0, 0, "model/a/", []uint64{3}},
		{0, 1, "model/a@", []uint64{5}},
		{7, 0, "", nil},
	}
	for _, tt := range tests {
		got := indexes(s.Audit(tt.after, tt.limit, tt.prefix, ""))
		if !equalU64(got, tt.want) {
			t.Errorf("Audit(%d, %d, %q) = %v, want %v", tt.after, tt.limit, tt.prefix, got, tt.want)
		}
	}
	if err := s.AppendAudit(&droverv1.AuditEvent{Index: 7}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("AppendAudit at an old index = %v, want ErrInvalid", err)
	}
	if err := s.AppendAudit(&droverv1.AuditEvent{Index: 9, Action: "x"}); err != nil || s.Index() != 9 {
		t.Errorf("AppendAudit = %v, Index() = %d", err, s.Index())
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOptionsValidate(t *testing.T) {
	if err := state.DefaultOptions().Validate(); err != nil {
		t.Errorf("DefaultOptions: %v", err)
	}
	if _, err := state.NewWithOptions(state.Options{}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("zero options: %v", err)
	}
}

func TestClusterAndACL(t *testing.T) {
	f := newFixture(t)
	if f.s.Cluster() != nil || f.s.ACLBootstrapped() {
		t.Fatal("new store is initialized")
	}
	c := &droverv1.ClusterMeta{ClusterId: "c1", CaSha256: strings.Repeat("0f", 32)}
	if err := f.s.InitCluster(f.next(), meta("server"), c); err != nil {
		t.Fatal(err)
	}
	if err := f.s.InitCluster(f.next(), meta("server"), &droverv1.ClusterMeta{ClusterId: "c2"}); !errors.Is(err, state.ErrClusterInitialized) {
		t.Errorf("second InitCluster = %v", err)
	}
	if got := f.s.Cluster(); got.GetClusterId() != "c1" || got.GetCreateTime() == nil {
		t.Errorf("Cluster() = %v", got)
	}

	secret := sha256.Sum256([]byte("secret"))
	if err := f.s.BootstrapACL(f.next(), meta(""), &droverv1.ACLToken{AccessorId: "acc", SecretSha256: secret[:3]}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("short hash = %v", err)
	}
	idx := f.next()
	if err := f.s.BootstrapACL(idx, meta(""), &droverv1.ACLToken{AccessorId: "acc", SecretSha256: secret[:], Policies: []string{"management"}}); err != nil {
		t.Fatal(err)
	}
	if ev := lastAudit(t, f.s); ev.GetActor() != state.Anonymous || ev.GetTarget() != "acl/token/acc" {
		t.Errorf("audit = %v", ev)
	}
	if err := f.s.BootstrapACL(f.next(), meta(""), &droverv1.ACLToken{AccessorId: "acc2", SecretSha256: make([]byte, 32)}); !errors.Is(err, state.ErrACLBootstrapped) {
		t.Errorf("second bootstrap = %v", err)
	}
	tok, ok := f.s.TokenBySecretHash(secret)
	if !ok || tok.GetAccessorId() != "acc" || tok.GetCreateIndex() != idx || !f.s.ACLBootstrapped() {
		t.Errorf("TokenBySecretHash = %v, %v", tok, ok)
	}
	if _, ok := f.s.TokenBySecretHash([32]byte{}); ok {
		t.Errorf("found a token for a zero hash")
	}
}

func TestReason(t *testing.T) {
	tests := []struct {
		err  error
		want droverv1.ErrorReason
	}{
		{nil, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED},
		{state.ErrNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND},
		{state.ErrAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS},
		{state.ErrClusterInitialized, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS},
		{state.ValidateName("model", "X"), droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT},
		{state.ErrInUse, droverv1.ErrorReason_ERROR_REASON_IN_USE},
		{state.ErrACLBootstrapped, droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED},
		{state.ErrSnapshotInvalid, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID},
		{context.DeadlineExceeded, droverv1.ErrorReason_ERROR_REASON_TIMEOUT},
		{errors.New("disk on fire"), droverv1.ErrorReason_ERROR_REASON_INTERNAL},
	}
	for _, tt := range tests {
		if got := state.Reason(tt.err); got != tt.want {
			t.Errorf("Reason(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestWaitForIndex(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t)
		f.model("a")

		// Already past: returns at once.
		if idx, err := f.s.WaitForIndex(t.Context(), 0); idx != 1 || err != nil {
			t.Errorf("WaitForIndex(0) = %d, %v", idx, err)
		}

		// Woken by a write.
		done := make(chan uint64)
		go func() {
			idx, err := f.s.WaitForIndex(t.Context(), 1)
			if err != nil {
				t.Errorf("WaitForIndex: %v", err)
			}
			done <- idx
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("WaitForIndex returned before the index moved")
		default:
		}
		f.model("b")
		if idx := <-done; idx != 2 {
			t.Errorf("woken at %d, want 2", idx)
		}

		// A deadline answers with the current index and no error.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		idx, err := f.s.WaitForIndex(ctx, 2)
		if idx != 2 || err != nil || time.Since(start) != 5*time.Minute {
			t.Errorf("after deadline: %d, %v after %v", idx, err, time.Since(start))
		}

		// Cancellation is an error.
		ctx, cancel = context.WithCancel(t.Context())
		go func() {
			time.Sleep(time.Second)
			cancel()
		}()
		if _, err := f.s.WaitForIndex(ctx, 2); !errors.Is(err, context.Canceled) {
			t.Errorf("after cancel: %v", err)
		}

		// A restore of an older state wakes waiters with a higher index,
		// never a lower one.
		var old bytes.Buffer
		other := state.New()
		if _, err := other.Snapshot().WriteTo(&old); err != nil {
			t.Fatal(err)
		}
		go func() {
			idx, err := f.s.WaitForIndex(t.Context(), 2)
			if err != nil {
				t.Errorf("WaitForIndex: %v", err)
			}
			done <- idx
		}()
		synctest.Wait()
		if err := f.s.Restore(bytes.NewReader(old.Bytes())); err != nil {
			t.Fatal(err)
		}
		if idx := <-done; idx != 3 {
			t.Errorf("after restore woken at %d, want 3 (one above the index before it)", idx)
		}
		// Given Raft's index for the snapshot, the restored state takes it.
		if err := f.s.RestoreAt(bytes.NewReader(old.Bytes()), 40); err != nil {
			t.Fatal(err)
		}
		if idx := f.s.Index(); idx != 40 {
			t.Errorf("restored at raft index 40: index %d", idx)
		}
	})
}

// stream hand-writes a snapshot stream.
func stream(t *testing.T, msgs ...proto.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	for _, m := range msgs {
		if _, err := protodelim.MarshalTo(&b, m); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	end := &droverv1.SnapshotRecord{}
	model := func(name string, latest uint64, aliases map[string]uint64) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Model{Model: &droverv1.Model{Name: name, LatestVersion: latest, Aliases: aliases}}}
	}
	version := func(model string, n uint64) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Version{Version: &droverv1.ModelVersion{Model: model, Version: n}}}
	}
	audit := func(idx uint64) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Audit{Audit: &droverv1.AuditEvent{Index: idx}}}
	}
	// A record with a field this server does not know (number 99).
	unknown := append(stream(t, hdr), 3, 0x9a, 0x06, 0)

	tests := []struct {
		name    string
		data    []byte
		mention string
	}{
		{"empty", nil, "empty"},
		{"newer format", stream(t, &droverv1.SnapshotHeader{Format: state.SnapshotFormat + 1}, end), "upgrade"},
		{"format 0", stream(t, &droverv1.SnapshotHeader{}, end), "format 0"},
		{"no end marker", stream(t, hdr, model("a", 0, nil)), "truncated"},
		{"data after end", stream(t, hdr, end, model("a", 0, nil)), "follows the end marker"},
		{"unknown record", append(unknown, 0), "does not know"},
		{"duplicate model", stream(t, hdr, model("a", 0, nil), model("a", 0, nil), end), "twice"},
		{"orphan version", stream(t, hdr, version("a", 1), end), "does not hold"},
		{"version beyond latest", stream(t, hdr, model("a", 1, nil), version("a", 2), end), "beyond latest"},
		{"versions out of order", stream(t, hdr, model("a", 2, nil), version("a", 2), version("a", 1), end), "out of order"},
		{"dangling alias", stream(t, hdr, model("a", 1, map[string]uint64{"prod": 1}), end), "alias"},
		{"audit out of order", stream(t, hdr, audit(5), audit(4), end), "audit"},
		{"audit after index", stream(t, hdr, audit(11), end), "audit"},
		{"bad token", stream(t, hdr, &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_Token{Token: &droverv1.ACLToken{AccessorId: "a"}}}, end), "SHA-256"},
		{"garbage", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.model("keep")
			err := f.s.Restore(bytes.NewReader(tt.data))
			if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("Restore = %v; want ErrSnapshotInvalid mentioning %q", err, tt.mention)
			}
			if _, err := f.s.Model("keep"); err != nil || f.s.Index() != 1 {
				t.Errorf("a refused restore changed the state")
			}
		})
	}
	// The well-formed stream the refusals are variations of restores.
	s := state.New()
	ok := stream(t, hdr, model("a", 2, map[string]uint64{"prod": 2}), version("a", 1), version("a", 2), audit(3), audit(10), end)
	if err := s.Restore(bytes.NewReader(ok)); err != nil {
		t.Fatalf("Restore(valid) = %v", err)
	}
	if v, err := s.Version("a", "prod"); err != nil || v.GetVersion() != 2 || s.Index() != 10 {
		t.Errorf("after restore: %v, %v, index %d", v, err, s.Index())
	}
}

func TestSnapshotIsConsistentAndDeterministic(t *testing.T) {
	f := newFixture(t)
	f.model("a")
	f.model("b")
	f.version("a")
	f.alias("a", "prod", 1)
	snap := f.s.Snapshot()

	var first bytes.Buffer
	n, err := snap.WriteTo(&first)
	if err != nil || n != int64(first.Len()) {
		t.Fatalf("WriteTo = %d, %v (wrote %d)", n, err, first.Len())
	}

	// Writes after the snapshot do not show in it.
	f.version("a")
	f.alias("a", "prod", 2)
	if err := f.s.DeleteModel(f.next(), meta("alice"), "b"); err != nil {
		t.Fatal(err)
	}
	var second bytes.Buffer
	if _, err := snap.WriteTo(&second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Fatal("a snapshot changed after later writes")
	}

	// Restoring and snapshotting again gives the same bytes.
	r := state.New()
	if err := r.Restore(bytes.NewReader(first.Bytes())); err != nil {
		t.Fatal(err)
	}
	var third bytes.Buffer
	if _, err := r.Snapshot().WriteTo(&third); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), third.Bytes()) {
		t.Fatal("snapshot → restore → snapshot changed the bytes")
	}
	if r.Index() != snap.Index() || r.Index() != 4 {
		t.Errorf("restored index %d, snapshot index %d", r.Index(), snap.Index())
	}
	if v, err := r.Version("a", "prod"); err != nil || v.GetVersion() != 1 {
		t.Errorf("restored alias: %v, %v", v, err)
	}
	got, err := state.ReadSnapshot(bytes.NewReader(first.Bytes()))
	if err != nil || got.Index() != 4 || got.Cluster() != nil {
		t.Errorf("ReadSnapshot = %v, %v", got, err)
	}
}

// A snapshot prepared for an operator's restore carries the index,
// identity and audit event it was given, and nothing else changes.
func TestSnapshotForRestore(t *testing.T) {
	f := newFixture(t)
	f.model("a")
	f.version("a")
	snap := f.s.Snapshot()
	ours := &droverv1.ClusterMeta{ClusterId: "ours", CaSha256: "ab"}
	ev := &droverv1.AuditEvent{Actor: "alice", Action: state.ActionSnapshotRestore, Result: state.ResultOK}

	if _, err := snap.ForRestore(snap.Index()-1, ours, ev); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("ForRestore below the snapshot's index = %v, want ErrInvalid", err)
	}
	if _, err := snap.ForRestore(snap.Index(), ours, ev); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("ForRestore at its newest audit event's index = %v, want ErrInvalid", err)
	}
	out, err := snap.ForRestore(10, ours, ev)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if _, err := out.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	r := state.New()
	if err := r.Restore(&b); err != nil {
		t.Fatal(err)
	}
	if r.Index() != 10 || r.Cluster().GetClusterId() != "ours" {
		t.Errorf("restored index %d, cluster %v", r.Index(), r.Cluster())
	}
	evs := r.Audit(0, 0, "", "")
	if len(evs) != 3 || evs[2].GetIndex() != 10 || evs[2].GetAction() != state.ActionSnapshotRestore || evs[2].GetActor() != "alice" {
		t.Errorf("audit after restore = %v", evs)
	}
	if v, err := r.Version("a", "1"); err != nil || v.GetVersion() != 1 {
		t.Errorf("restored version: %v, %v", v, err)
	}
	// The original snapshot is unchanged.
	if snap.Index() != 2 || snap.Cluster() != nil {
		t.Errorf("original snapshot changed: index %d, cluster %v", snap.Index(), snap.Cluster())
	}
}

func TestRestoreTrimsAudit(t *testing.T) {
	f := newFixture(t)
	for i := range 5 {
		f.model(string(rune('a' + i)))
	}
	var b bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	s, _ := state.NewWithOptions(state.Options{AuditRetention: 2})
	if err := s.Restore(&b); err != nil {
		t.Fatal(err)
	}
	if evs := s.Audit(0, 0, "", ""); len(evs) != 2 || evs[0].GetIndex() != 4 {
		t.Errorf("audit after restore = %v", evs)
	}
}

func TestConcurrentReadsDuringWrites(t *testing.T) {
	f := newFixture(t)
	f.model("a")
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		var last uint64
		for ctx.Err() == nil {
			idx, _ := f.s.WaitForIndex(ctx, last)
			last = idx
			_, _ = f.s.Version("a", "latest")
			_ = f.s.Audit(0, 10, "model/a", "")
			var b bytes.Buffer
			_, _ = f.s.Snapshot().WriteTo(&b)
		}
	}()
	for range 200 {
		v := f.version("a")
		f.alias("a", "prod", v.GetVersion())
	}
	cancel()
	<-done
}

// The snapshot decoder never fails by panicking, and whatever it accepts
// restores and writes back to a stream that decodes to the same state.
func FuzzReadSnapshot(f *testing.F) {
	src := state.New()
	for i, name := range []string{"a", "b"} {
		if _, err := src.CreateModel(uint64(i+1), meta("alice"), &droverv1.CreateModelRequest{Name: name}); err != nil {
			f.Fatal(err)
		}
	}
	var b bytes.Buffer
	if _, err := src.Snapshot().WriteTo(&b); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add(b.Bytes()[:b.Len()/2])
	// Tokens, policies and audit events that share an index.
	h := sha256.Sum256([]byte("root"))
	err := src.BootstrapACL(3, meta(""), &droverv1.ACLToken{AccessorId: "acc-root", SecretSha256: h[:]})
	if err == nil {
		_, _, err = src.ApplyACLPolicy(4, meta("acc-root"), &droverv1.ACLPolicy{Name: "audit", Rules: []*droverv1.ACLRule{
			{Resource: droverv1.ACLResource_ACL_RESOURCE_AUDIT, Access: droverv1.ACLAccess_ACL_ACCESS_READ},
		}})
	}
	if err == nil {
		h = sha256.Sum256([]byte("ci"))
		_, err = src.CreateACLToken(5, meta("acc-root"), &droverv1.ACLToken{AccessorId: "acc-ci", Name: "ci", SecretSha256: h[:], Policies: []string{"audit"}})
	}
	if err == nil {
		err = src.RecordDenials(6, meta("server/s1"), []*droverv1.AccessDenial{
			{AccessorId: "acc-ci", TokenName: "ci", Procedure: "/p", Capability: "model:write"},
			{Procedure: "/q", Capability: "audit:read"},
		})
	}
	if err != nil {
		f.Fatal(err)
	}
	b.Reset()
	if _, err := src.Snapshot().WriteTo(&b); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		snap, err := state.ReadSnapshot(bytes.NewReader(data))
		if err != nil {
			if strings.Contains(err.Error(), "the decoder failed") {
				t.Fatalf("decoder panicked: %v", err)
			}
			if !errors.Is(err, state.ErrSnapshotInvalid) {
				t.Fatalf("error %v does not wrap ErrSnapshotInvalid", err)
			}
			return
		}
		var first bytes.Buffer
		if _, err := snap.WriteTo(&first); err != nil {
			t.Fatal(err)
		}
		s := state.New()
		if err := s.Restore(bytes.NewReader(first.Bytes())); err != nil {
			t.Fatalf("an accepted snapshot does not restore: %v", err)
		}
		var second bytes.Buffer
		if _, err := s.Snapshot().WriteTo(&second); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first.Bytes(), second.Bytes()) {
			t.Fatal("restore → snapshot changed the bytes")
		}
	})
}

func TestCanaryReferenceIsSetOnce(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	f.version("resnet")
	ref := referenceProfile(t, "x\n1\n2\n")
	set := func(v uint64) error {
		return f.s.SetVersionReference(f.next(), meta("server/s1"), &droverv1.SetVersionReferenceCommand{
			Model: "resnet", Version: v, Reference: ref, Source: state.ReferenceFromCanary})
	}
	if err := set(9); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("reference for a missing version: %v, want not found", err)
	}
	if err := set(1); err != nil {
		t.Fatal(err)
	}
	v, _ := f.s.Version("resnet", "1")
	if !proto.Equal(v.GetReference(), ref) || v.GetReferenceSource() != state.ReferenceFromCanary || v.GetReferenceFeatures() != 1 {
		t.Fatalf("version after the canary's reference: %v", v)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionVersionReference || ev.GetTarget() != "model/resnet/v1" {
		t.Errorf("audit = %v", ev)
	}
	if err := set(1); !errors.Is(err, state.ErrConflict) || !strings.Contains(err.Error(), "keeps it") {
		t.Fatalf("a second reference: %v, want a conflict", err)
	}
}
