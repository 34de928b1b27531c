package fsm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var epoch = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func meta(actor string) *droverv1.CommandMeta {
	return &droverv1.CommandMeta{Actor: actor, Time: timestamppb.New(epoch)}
}

// testLogger sends logs to t.Log, so they show only when a test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// harness drives an FSM with raft.Log entries at increasing indexes.
type harness struct {
	t     *testing.T
	store *state.Store
	fsm   *fsm.FSM
	idx   uint64
}

func newHarness(t *testing.T) *harness {
	s := state.New()
	return &harness{t: t, store: s, fsm: fsm.New(s, testLogger(t))}
}

func encode(t testing.TB, typ droverv1.CommandType, msg proto.Message) []byte {
	t.Helper()
	b, err := fsm.Encode(typ, msg)
	if err != nil {
		t.Fatalf("Encode(%v): %v", typ, err)
	}
	return b
}

// command wraps a payload in a raft.Log of type LogCommand; the index is
// set by apply.
func command(t testing.TB, typ droverv1.CommandType, msg proto.Message) *raft.Log {
	return &raft.Log{Type: raft.LogCommand, Data: encode(t, typ, msg)}
}

func (h *harness) apply(l *raft.Log) *fsm.ApplyResult {
	h.t.Helper()
	h.idx++
	l.Index, l.Term = h.idx, 1
	res, ok := h.fsm.Apply(l).(*fsm.ApplyResult)
	if !ok {
		h.t.Fatalf("Apply returned %T", h.fsm.Apply(l))
	}
	if res.Index != h.idx {
		h.t.Fatalf("result index %d, want %d", res.Index, h.idx)
	}
	return res
}

func (h *harness) mustApply(l *raft.Log) *fsm.ApplyResult {
	h.t.Helper()
	res := h.apply(l)
	if res.Err != nil {
		h.t.Fatalf("apply at %d: %v", res.Index, res.Err)
	}
	return res
}

func (h *harness) lastAudit() *droverv1.AuditEvent {
	h.t.Helper()
	evs := h.store.Audit(0, 1, "", "")
	if len(evs) != 1 {
		h.t.Fatal("audit log is empty")
	}
	return evs[0]
}

// Shorthands for commands.
func createModel(t testing.TB, actor, name string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL, &droverv1.CreateModelCommand{
		Meta: meta(actor), Request: &droverv1.CreateModelRequest{Name: name, Owner: "vision"}})
}

func deleteModel(t testing.TB, actor, name string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_MODEL, &droverv1.DeleteModelCommand{Meta: meta(actor), Name: name})
}

func createVersion(t testing.TB, actor, model string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION, &droverv1.CreateVersionCommand{
		Meta: meta(actor),
		Request: &droverv1.CreateVersionRequest{
			Model:    model,
			Artifact: &droverv1.ArtifactManifest{Digest: "sha256:" + strings.Repeat("0a", 32), SizeBytes: 1234, Format: "onnx"},
			Card:     "# " + model,
			Metrics:  map[string]float64{"accuracy": 0.91},
		},
	})
}

func setAlias(t testing.TB, actor, model, alias string, v uint64) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_SET_ALIAS, &droverv1.SetAliasCommand{Meta: meta(actor), Model: model, Alias: alias, Version: v})
}

func deleteAlias(t testing.TB, actor, model, alias string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_DELETE_ALIAS, &droverv1.DeleteAliasCommand{Meta: meta(actor), Model: model, Alias: alias})
}

var secret = sha256.Sum256([]byte("management secret"))

func initCluster(t testing.TB, id string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &droverv1.InitClusterCommand{
		Meta: meta("server"), ClusterId: id, CaSha256: strings.Repeat("ab", 32)})
}

func bootstrapACL(t testing.TB, accessor string) *raft.Log {
	return command(t, droverv1.CommandType_COMMAND_TYPE_BOOTSTRAP_ACL, &droverv1.BootstrapACLCommand{
		Meta:  meta(""),
		Token: &droverv1.ACLToken{AccessorId: accessor, SecretSha256: secret[:], Description: "bootstrap", Policies: []string{"management"}},
	})
}

// TestApplyEveryCommand applies each command type, successful and
// refused, and checks its result and audit event.
func TestApplyEveryCommand(t *testing.T) {
	h := newHarness(t)
	steps := []struct {
		name    string
		log     *raft.Log
		wantErr error
		value   func(t *testing.T, v proto.Message)
		audit   *droverv1.AuditEvent // index, time and (for refusals) result are filled in
	}{
		{
			name: "init cluster", log: initCluster(t, "c1"),
			value: func(t *testing.T, v proto.Message) {
				if c := v.(*droverv1.ClusterMeta); c.GetClusterId() != "c1" || !c.GetCreateTime().AsTime().Equal(epoch) {
					t.Errorf("value = %v", c)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "server", Action: "cluster.init", Target: "cluster/c1", Details: map[string]string{"ca_sha256": strings.Repeat("ab", 32)}},
		},
		{
			name: "init cluster again", log: initCluster(t, "c2"), wantErr: state.ErrClusterInitialized,
			audit: &droverv1.AuditEvent{Actor: "server", Action: "cluster.init", Target: "cluster/c2"},
		},
		{
			name: "bootstrap acl", log: bootstrapACL(t, "acc-1"),
			value: func(t *testing.T, v proto.Message) {
				if tok := v.(*droverv1.ACLToken); tok.GetAccessorId() != "acc-1" || tok.GetCreateIndex() != 3 {
					t.Errorf("value = %v", tok)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "anonymous", Action: "acl.bootstrap", Target: "acl/token/acc-1", Details: map[string]string{"name": "bootstrap"}},
		},
		{
			name: "bootstrap acl again", log: bootstrapACL(t, "acc-2"), wantErr: state.ErrACLBootstrapped,
			audit: &droverv1.AuditEvent{Actor: "anonymous", Action: "acl.bootstrap", Target: "acl/token/acc-2"},
		},
		{
			name: "create model", log: createModel(t, "alice", "resnet"),
			value: func(t *testing.T, v proto.Message) {
				if m := v.(*droverv1.Model); m.GetName() != "resnet" || m.GetCreatedBy() != "alice" || m.GetCreateIndex() != 5 || m.GetOwner() != "vision" {
					t.Errorf("value = %v", m)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "model.create", Target: "model/resnet"},
		},
		{
			name: "create model again", log: createModel(t, "bob", "resnet"), wantErr: state.ErrAlreadyExists,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "model.create", Target: "model/resnet"},
		},
		{
			name: "create model bad name", log: createModel(t, "bob", "Res Net"), wantErr: state.ErrInvalid,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "model.create", Target: "model/Res Net"},
		},
		{
			name: "create version", log: createVersion(t, "alice", "resnet"),
			value: func(t *testing.T, v proto.Message) {
				if mv := v.(*droverv1.ModelVersion); mv.GetVersion() != 1 || mv.GetCreateIndex() != 8 || mv.GetArtifact().GetSizeBytes() != 1234 {
					t.Errorf("value = %v", mv)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "version.create", Target: "model/resnet/v1",
				Details: map[string]string{"version": "1", "digest": "sha256:" + strings.Repeat("0a", 32)}},
		},
		{
			name: "create version of missing model", log: createVersion(t, "bob", "bert"), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "version.create", Target: "model/bert"},
		},
		{
			name: "set alias", log: setAlias(t, "alice", "resnet", "prod", 1),
			value: func(t *testing.T, v proto.Message) {
				if r := v.(*droverv1.SetAliasResponse); r.GetModel().GetAliases()["prod"] != 1 || r.GetPreviousVersion() != 0 {
					t.Errorf("value = %v", r)
				}
			},
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "alias.set", Target: "model/resnet@prod", Details: map[string]string{"version": "1"}},
		},
		{
			name: "set alias to missing version", log: setAlias(t, "bob", "resnet", "prod", 9), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "alias.set", Target: "model/resnet@prod"},
		},
		{
			name: "set reserved alias", log: setAlias(t, "bob", "resnet", "latest", 1), wantErr: state.ErrInvalid,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "alias.set", Target: "model/resnet@latest"},
		},
		{
			name: "delete aliased model", log: deleteModel(t, "bob", "resnet"), wantErr: state.ErrInUse,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "model.delete", Target: "model/resnet"},
		},
		{
			name: "delete alias", log: deleteAlias(t, "alice", "resnet", "prod"),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "alias.rm", Target: "model/resnet@prod", Details: map[string]string{"version": "1"}},
		},
		{
			name: "delete missing alias", log: deleteAlias(t, "bob", "resnet", "prod"), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "alias.rm", Target: "model/resnet@prod"},
		},
		{
			name: "delete model", log: deleteModel(t, "alice", "resnet"),
			audit: &droverv1.AuditEvent{Actor: "alice", Action: "model.delete", Target: "model/resnet", Details: map[string]string{"versions": "1"}},
		},
		{
			name: "delete missing model", log: deleteModel(t, "bob", "resnet"), wantErr: state.ErrNotFound,
			audit: &droverv1.AuditEvent{Actor: "bob", Action: "model.delete", Target: "model/resnet"},
		},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			h.t = t
			res := h.apply(st.log)
			if !errors.Is(res.Err, st.wantErr) || (st.wantErr == nil) != (res.Err == nil) {
				t.Fatalf("Err = %v, want %v", res.Err, st.wantErr)
			}
			if res.Err != nil && res.Value != nil {
				t.Errorf("refusal carries a value: %v", res.Value)
			}
			if st.value != nil {
				st.value(t, res.Value)
			}
			want := proto.Clone(st.audit).(*droverv1.AuditEvent)
			want.Index = res.Index
			want.Time = timestamppb.New(epoch)
			want.Result = state.ResultOK
			if res.Err != nil {
				want.Result = res.Err.Error()
			}
			if got := h.lastAudit(); !proto.Equal(got, want) {
				t.Errorf("audit event\n got %v\nwant %v", got, want)
			}
			if h.store.Index() != res.Index {
				t.Errorf("store index %d, want %d", h.store.Index(), res.Index)
			}
		})
	}
	if n := len(h.store.Audit(0, 0, "", "")); n != len(steps) {
		t.Errorf("%d audit events for %d commands", n, len(steps))
	}
}

func TestRefusalsKeepStateAndRecordWho(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "resnet"))
	before := h.store.Models()
	res := h.apply(createModel(t, "mallory", "resnet"))
	if !errors.Is(res.Err, state.ErrAlreadyExists) {
		t.Fatalf("Err = %v", res.Err)
	}
	after := h.store.Models()
	if len(before) != len(after) || !proto.Equal(before[0], after[0]) {
		t.Errorf("a refused command changed the state:\n%v\n%v", before, after)
	}
	evs := h.store.Audit(0, 0, "model/resnet", "")
	if len(evs) != 2 || evs[1].GetActor() != "mallory" || evs[1].GetResult() != `model "resnet" already exists` {
		t.Errorf("audit = %v", evs)
	}
}

func TestModifyIndexes(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "a"))         // 1
	h.mustApply(createModel(t, "alice", "b"))         // 2
	h.mustApply(createVersion(t, "alice", "a"))       // 3
	h.mustApply(setAlias(t, "alice", "a", "prod", 1)) // 4
	h.apply(setAlias(t, "alice", "b", "prod", 1))     // 5, refused: b has no versions
	h.mustApply(createVersion(t, "alice", "a"))       // 6

	check := func(name string, create, modify uint64) {
		t.Helper()
		m, err := h.store.Model(name)
		if err != nil || m.GetCreateIndex() != create || m.GetModifyIndex() != modify {
			t.Errorf("model %s: create %d modify %d (%v); want %d, %d", name, m.GetCreateIndex(), m.GetModifyIndex(), err, create, modify)
		}
	}
	check("a", 1, 6)
	check("b", 2, 2)
	for ref, want := range map[string]uint64{"1": 3, "2": 6} {
		v, _ := h.store.Version("a", ref)
		if v.GetCreateIndex() != want || v.GetModifyIndex() != want {
			t.Errorf("version %s: create %d modify %d, want %d", ref, v.GetCreateIndex(), v.GetModifyIndex(), want)
		}
	}
	if h.store.Index() != 6 {
		t.Errorf("store index %d", h.store.Index())
	}
}

func TestVersionNumbering(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "a"))
	h.mustApply(createModel(t, "alice", "b"))
	for want := uint64(1); want <= 3; want++ {
		v := h.mustApply(createVersion(t, "alice", "a")).Value.(*droverv1.ModelVersion)
		if v.GetVersion() != want {
			t.Fatalf("version %d, want %d", v.GetVersion(), want)
		}
		// A refused version does not use up a number.
		bad := command(t, droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION, &droverv1.CreateVersionCommand{
			Meta: meta("alice"), Request: &droverv1.CreateVersionRequest{Model: "a", Card: strings.Repeat("x", state.MaxCardBytes+1)}})
		if res := h.apply(bad); !errors.Is(res.Err, state.ErrInvalid) {
			t.Fatalf("oversized card: %v", res.Err)
		}
	}
	// Numbers are per model.
	if v := h.mustApply(createVersion(t, "alice", "b")).Value.(*droverv1.ModelVersion); v.GetVersion() != 1 {
		t.Errorf("first version of b is %d", v.GetVersion())
	}
	if m, _ := h.store.Model("a"); m.GetLatestVersion() != 3 {
		t.Errorf("latest_version = %d", m.GetLatestVersion())
	}
}

func TestAliasMoveReturnsPrevious(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "a"))
	h.mustApply(createVersion(t, "alice", "a"))
	h.mustApply(createVersion(t, "alice", "a"))
	for _, step := range []struct{ to, prev uint64 }{{1, 0}, {2, 1}, {1, 2}} {
		r := h.mustApply(setAlias(t, "alice", "a", "prod", step.to)).Value.(*droverv1.SetAliasResponse)
		if r.GetPreviousVersion() != step.prev || r.GetModel().GetAliases()["prod"] != step.to {
			t.Errorf("move to %d: %v, want previous %d", step.to, r, step.prev)
		}
		ev := h.lastAudit()
		if want := fmt.Sprint(step.prev); step.prev != 0 && ev.GetDetails()["previous"] != want {
			t.Errorf("audit details %v, want previous %s", ev.GetDetails(), want)
		}
		if v, _ := h.store.Version("a", "prod"); v.GetVersion() != step.to {
			t.Errorf("prod resolves to %d", v.GetVersion())
		}
	}
}

func TestDeleteModelRefusedWhileAliased(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "x"))
	for range 3 {
		h.mustApply(createVersion(t, "alice", "x"))
	}
	h.mustApply(setAlias(t, "alice", "x", "prod", 3))
	h.mustApply(setAlias(t, "alice", "x", "staging", 2))
	res := h.apply(deleteModel(t, "bob", "x"))
	want := `model "x" is referenced by alias "prod" (version 3): remove the alias first with "drover model alias rm x prod"`
	if !errors.Is(res.Err, state.ErrInUse) || res.Err.Error() != want {
		t.Fatalf("Err = %v\nwant %s", res.Err, want)
	}
	if state.Reason(res.Err) != droverv1.ErrorReason_ERROR_REASON_IN_USE {
		t.Errorf("Reason = %v", state.Reason(res.Err))
	}
	if _, err := h.store.Model("x"); err != nil {
		t.Errorf("model gone after refused delete: %v", err)
	}
	h.mustApply(deleteAlias(t, "alice", "x", "prod"))
	h.mustApply(deleteAlias(t, "alice", "x", "staging"))
	h.mustApply(deleteModel(t, "alice", "x"))
	if _, err := h.store.Version("x", "1"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("versions outlived their model: %v", err)
	}
}

// populate applies a bit of everything, refusals included.
func populate(t testing.TB) []*raft.Log {
	logs := []*raft.Log{
		initCluster(t, "c1"),
		bootstrapACL(t, "acc-1"),
		createModel(t, "alice", "resnet"),
		createModel(t, "alice", "bert"),
		createVersion(t, "alice", "resnet"),
		createVersion(t, "alice", "resnet"),
		createVersion(t, "bob", "bert"),
		setAlias(t, "alice", "resnet", "prod", 1),
		setAlias(t, "alice", "resnet", "prod", 2),
		setAlias(t, "alice", "bert", "canary", 1),
		{Type: raft.LogConfiguration, Data: []byte("not a command")},
		deleteModel(t, "mallory", "resnet"),
		createModel(t, "alice", "tmp"),
		deleteModel(t, "alice", "tmp"),
		{Type: raft.LogNoop},
		createVersion(t, "bob", "nope"),
		createJoinToken(t, "alice", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:], MaxUses: 3, Labels: map[string]string{"zone": "a"}}),
		createJoinToken(t, "alice", &droverv1.JoinToken{Id: "old", SecretSha256: joinSecret[:]}),
		revokeJoinToken(t, "alice", "old"),
		enrollNode(t, epoch, "tok", joinSecret[:], "n1", "gpu-01"),
		enrollNode(t, epoch, "tok", joinSecret[:], "n2", "gpu-02"),
		enrollNode(t, epoch, "old", joinSecret[:], "n3", "gpu-03"),
		registerNode(t, "n1", gpuInventory),
		setNodeStatus(t, &droverv1.NodeStatusUpdate{NodeId: "n2", Status: droverv1.NodeStatus_NODE_STATUS_DOWN, Reason: "missed heartbeats"}),
		setNodeDrain(t, "alice", "n1", true),
		setNodeLabels(t, "alice", "n1", map[string]string{"rack": "4"}, nil),
		revokeNode(t, "alice", "n2"),
		applyACLPolicy(t, visionPolicy("vision")),
		applyACLPolicy(t, visionPolicy("unused")),
		createACLToken(t, aclToken("acc-ci", "ci", "vision")),
		createACLToken(t, aclToken("acc-gone", "gone", "read-only")),
		rotateACLToken(t, "acc-ci", "rotated"),
		revokeACLToken(t, "acc-gone"),
		deleteACLPolicy(t, "unused"),
		deleteACLPolicy(t, "vision"), // refused: ci uses it
		recordDenials(t,
			&droverv1.AccessDenial{AccessorId: "acc-ci", TokenName: "ci", Procedure: "/drover.v1.ModelService/DeleteModel", Capability: "model:write on model/bert", Target: "model/bert"},
			&droverv1.AccessDenial{Procedure: "/drover.v1.ModelService/CreateModel", Capability: "model:write"}),
	}
	for i, l := range logs {
		l.Index, l.Term = uint64(i+1), 1
	}
	return logs
}

// persist runs Raft's snapshot path: Snapshot, Persist into a sink,
// Release.
func persist(t *testing.T, f *fsm.FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.canceled {
		t.Fatalf("sink closed %v canceled %v", sink.closed, sink.canceled)
	}
	return sink.Bytes()
}

// memSink is a raft.SnapshotSink in memory; failAfter > 0 makes writes
// fail once that many bytes were written.
type memSink struct {
	bytes.Buffer
	failAfter        int
	closed, canceled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failAfter > 0 && s.Len()+len(p) > s.failAfter {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.canceled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// requireSameState compares everything a reader can see.
func requireSameState(t *testing.T, a, b *state.Store) {
	t.Helper()
	if a.Index() != b.Index() {
		t.Errorf("index %d != %d", a.Index(), b.Index())
	}
	if !proto.Equal(a.Cluster(), b.Cluster()) {
		t.Errorf("cluster %v != %v", a.Cluster(), b.Cluster())
	}
	if a.ACLBootstrapped() != b.ACLBootstrapped() {
		t.Errorf("ACL bootstrapped differs")
	}
	ta, oka := a.TokenBySecretHash(secret)
	tb, okb := b.TokenBySecretHash(secret)
	if oka != okb || !proto.Equal(ta, tb) {
		t.Errorf("token %v != %v", ta, tb)
	}
	aa, ab := a.ACLTokens(), b.ACLTokens()
	if len(aa) != len(ab) {
		t.Fatalf("%d ACL tokens != %d", len(aa), len(ab))
	}
	for i := range aa {
		if !proto.Equal(aa[i], ab[i]) {
			t.Errorf("ACL token %v != %v", aa[i], ab[i])
		}
	}
	pa, pb := a.ACLPolicies(), b.ACLPolicies()
	if len(pa) != len(pb) {
		t.Fatalf("%d ACL policies != %d", len(pa), len(pb))
	}
	for i := range pa {
		if !proto.Equal(pa[i], pb[i]) {
			t.Errorf("ACL policy %v != %v", pa[i], pb[i])
		}
	}
	ma, mb := a.Models(), b.Models()
	if len(ma) != len(mb) {
		t.Fatalf("%d models != %d", len(ma), len(mb))
	}
	for i := range ma {
		if !proto.Equal(ma[i], mb[i]) {
			t.Errorf("model %v != %v", ma[i], mb[i])
		}
		va, _ := a.Versions(ma[i].GetName())
		vb, _ := b.Versions(ma[i].GetName())
		if len(va) != len(vb) {
			t.Fatalf("model %s: %d versions != %d", ma[i].GetName(), len(va), len(vb))
		}
		for j := range va {
			if !proto.Equal(va[j], vb[j]) {
				t.Errorf("version %v != %v", va[j], vb[j])
			}
		}
	}
	ja, jb := a.JoinTokens(), b.JoinTokens()
	if len(ja) != len(jb) {
		t.Fatalf("%d join tokens != %d", len(ja), len(jb))
	}
	for i := range ja {
		if !proto.Equal(ja[i], jb[i]) {
			t.Errorf("join token %v != %v", ja[i], jb[i])
		}
	}
	na, nb := a.Nodes(), b.Nodes()
	if len(na) != len(nb) {
		t.Fatalf("%d nodes != %d", len(na), len(nb))
	}
	for i := range na {
		if !proto.Equal(na[i], nb[i]) {
			t.Errorf("node %v != %v", na[i], nb[i])
		}
	}
	ea, eb := a.Audit(0, 0, "", ""), b.Audit(0, 0, "", "")
	if len(ea) != len(eb) {
		t.Fatalf("%d audit events != %d", len(ea), len(eb))
	}
	for i := range ea {
		if !proto.Equal(ea[i], eb[i]) {
			t.Errorf("audit %v != %v", ea[i], eb[i])
		}
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	h := newHarness(t)
	for _, l := range populate(t) {
		h.fsm.Apply(l)
	}
	data := persist(t, h.fsm)

	restored := state.New()
	rf := fsm.New(restored, testLogger(t))
	if err := rf.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	requireSameState(t, h.store, restored)
	if !bytes.Equal(data, persist(t, rf)) {
		t.Error("the restored state snapshots to different bytes")
	}

	// Both go on identically.
	next := createVersion(t, "carol", "bert")
	next.Index = h.store.Index() + 1
	a := h.fsm.Apply(next).(*fsm.ApplyResult)
	b := rf.Apply(next).(*fsm.ApplyResult)
	if !proto.Equal(a.Value, b.Value) || a.Err != nil || b.Err != nil {
		t.Errorf("after restore: %v / %v", a, b)
	}
	requireSameState(t, h.store, restored)
}

func TestRestoreTruncatedLeavesState(t *testing.T) {
	src := newHarness(t)
	for _, l := range populate(t) {
		src.fsm.Apply(l)
	}
	data := persist(t, src.fsm)

	dst := newHarness(t)
	dst.mustApply(createModel(t, "zed", "keep"))
	want := persist(t, dst.fsm)
	for n := range len(data) {
		err := dst.fsm.Restore(io.NopCloser(bytes.NewReader(data[:n])))
		if !errors.Is(err, state.ErrSnapshotInvalid) {
			t.Fatalf("restore of %d/%d bytes: %v", n, len(data), err)
		}
	}
	if got := persist(t, dst.fsm); !bytes.Equal(got, want) {
		t.Fatal("a failed restore changed the state")
	}
	if _, err := dst.store.Model("keep"); err != nil {
		t.Fatal(err)
	}
}

func TestPersistCancelsSinkOnError(t *testing.T) {
	h := newHarness(t)
	for _, l := range populate(t) {
		h.fsm.Apply(l)
	}
	snap, err := h.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{failAfter: 10}
	if err := snap.Persist(sink); err == nil || !sink.canceled || sink.closed {
		t.Errorf("Persist = %v, canceled %v, closed %v", err, sink.canceled, sink.closed)
	}
}

func TestSnapshotDoesNotBlockApply(t *testing.T) {
	h := newHarness(t)
	for _, l := range populate(t) {
		h.fsm.Apply(l)
	}
	h.idx = h.store.Index()
	snap, err := h.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	done := make(chan error)
	go func() { done <- snap.Persist(sink) }()
	for i := range 50 {
		h.mustApply(createModel(t, "alice", fmt.Sprintf("m%d", i)))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := state.New()
	if err := s.Restore(bytes.NewReader(sink.Bytes())); err != nil {
		t.Fatal(err)
	}
	if s.Index() != uint64(len(populate(t))) || len(s.Models()) != 2 {
		t.Errorf("snapshot saw later writes: index %d, %d models", s.Index(), len(s.Models()))
	}
}

func TestWaitForIndexWakesOnApply(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		h.mustApply(createModel(t, "alice", "a"))

		got := make(chan uint64)
		go func() {
			idx, err := h.store.WaitForIndex(t.Context(), 1)
			if err != nil {
				t.Errorf("WaitForIndex: %v", err)
			}
			got <- idx
		}()
		synctest.Wait() // the waiter is blocked
		// A refused command wakes readers too: the audit log changed.
		h.apply(createModel(t, "bob", "a"))
		if idx := <-got; idx != 2 {
			t.Errorf("woken at %d, want 2", idx)
		}

		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		idx, err := h.store.WaitForIndex(ctx, 2)
		if err != nil || idx != 2 || time.Since(start) != 10*time.Minute {
			t.Errorf("timed-out wait = %d, %v after %v; want 2, nil after 10m", idx, err, time.Since(start))
		}
	})
}

func TestUnknownCommandPanics(t *testing.T) {
	for _, data := range [][]byte{
		{1, 100},                    // unknown type
		{1, 100, 0x0a, 0x00},        // unknown type with a payload
		{2, 3, 0x0a, 0x00},          // newer envelope version
		{2, 100 | 0x80, 0x0a, 0x00}, // newer envelope: the flag means nothing
	} {
		h := newHarness(t)
		msg := func() (msg any) {
			defer func() { msg = recover() }()
			h.fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
			return nil
		}()
		s, _ := msg.(string)
		if !strings.Contains(s, "older than the cluster") || !strings.Contains(s, "upgrade") || !strings.Contains(s, "entry 1") {
			t.Errorf("Apply(% x) panic = %v; want an upgrade message", data, msg)
		}
		if h.store.Index() != 0 {
			t.Errorf("index advanced past an entry that was not applied")
		}
	}
}

func TestIgnorableUnknownCommandSkipped(t *testing.T) {
	h := newHarness(t)
	h.mustApply(createModel(t, "alice", "a"))
	data, err := fsm.EncodeIgnorable(100, &droverv1.DeleteModelCommand{Meta: meta("alice"), Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	res := h.apply(&raft.Log{Type: raft.LogCommand, Data: data})
	if res.Err != nil || res.Value != nil {
		t.Errorf("result = %+v", res)
	}
	if h.store.Index() != 2 {
		t.Errorf("index %d, want 2", h.store.Index())
	}
	if _, err := h.store.Model("a"); err != nil {
		t.Errorf("skipped command changed the state: %v", err)
	}
	ev := h.lastAudit()
	if ev.GetAction() != fsm.ActionCommandSkip || ev.GetActor() != "alice" || ev.GetDetails()["type"] != "100" || !strings.HasPrefix(ev.GetResult(), "skipped") {
		t.Errorf("audit = %v", ev)
	}
	// A known command with the flag is applied as usual.
	data, _ = fsm.EncodeIgnorable(droverv1.CommandType_COMMAND_TYPE_DELETE_MODEL, &droverv1.DeleteModelCommand{Meta: meta("alice"), Name: "a"})
	h.mustApply(&raft.Log{Type: raft.LogCommand, Data: data})
	if _, err := h.store.Model("a"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("ignorable known command was not applied: %v", err)
	}
}

func TestUndecodableCommandRefused(t *testing.T) {
	h := newHarness(t)
	for _, tt := range []struct {
		data   []byte
		action string
	}{
		{[]byte{1}, fsm.ActionCommandInvalid},
		{[]byte{1, 0, 1}, fsm.ActionCommandInvalid},
		{[]byte{1, 3, 0xff, 0xff}, state.ActionModelCreate},
	} {
		res := h.apply(&raft.Log{Type: raft.LogCommand, Data: tt.data})
		if !errors.Is(res.Err, fsm.ErrMalformed) {
			t.Errorf("Apply(% x) = %v, want ErrMalformed", tt.data, res.Err)
		}
		if ev := h.lastAudit(); ev.GetAction() != tt.action || ev.GetResult() != res.Err.Error() || ev.GetActor() != state.Anonymous {
			t.Errorf("audit = %v", ev)
		}
	}
}

func TestNonCommandLogsIgnored(t *testing.T) {
	h := newHarness(t)
	for _, typ := range []raft.LogType{raft.LogNoop, raft.LogConfiguration, raft.LogBarrier} {
		if res := h.fsm.Apply(&raft.Log{Index: 1, Type: typ, Data: []byte{1, 100}}); res != nil {
			t.Errorf("Apply(%v) = %v, want nil", typ, res)
		}
	}
	if h.store.Index() != 0 || len(h.store.Audit(0, 0, "", "")) != 0 {
		t.Error("a non-command entry changed the state")
	}
}

func TestApplyBatchEqualsSequentialApply(t *testing.T) {
	logs := populate(t)
	seq := newHarness(t)
	var want []any
	for _, l := range logs {
		want = append(want, seq.fsm.Apply(l))
	}
	bat := newHarness(t)
	got := bat.fsm.ApplyBatch(logs)
	if len(got) != len(want) {
		t.Fatalf("%d results for %d logs", len(got), len(logs))
	}
	for i := range want {
		w, _ := want[i].(*fsm.ApplyResult)
		g, _ := got[i].(*fsm.ApplyResult)
		if (w == nil) != (g == nil) {
			t.Fatalf("log %d: result %v, want %v", i, got[i], want[i])
		}
		if w == nil {
			continue
		}
		if w.Index != g.Index || fmt.Sprint(w.Err) != fmt.Sprint(g.Err) || !proto.Equal(w.Value, g.Value) {
			t.Errorf("log %d: %+v, want %+v", i, g, w)
		}
	}
	requireSameState(t, seq.store, bat.store)
	if !bytes.Equal(persist(t, seq.fsm), persist(t, bat.fsm)) {
		t.Error("batch and sequential snapshots differ")
	}
}

// FuzzApply checks that no log entry makes Apply panic, except with the
// deliberate upgrade message.
func FuzzApply(f *testing.F) {
	for _, l := range populate(f) {
		f.Add(l.Data)
	}
	f.Add([]byte{1, 0x80 | 100, 0x0a, 0x02, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := state.New()
		m := fsm.New(s, nil)
		// Give commands something to act on.
		setup := []*raft.Log{
			createModel(t, "a", "m"), createVersion(t, "a", "m"), setAlias(t, "a", "m", "prod", 1),
			createJoinToken(t, "a", &droverv1.JoinToken{Id: "tok", SecretSha256: joinSecret[:]}),
			enrollNode(t, epoch, "tok", joinSecret[:], "n1", "node-1"),
		}
		for i, l := range setup {
			l.Index = uint64(i + 1)
			m.Apply(l)
		}
		idx := uint64(len(setup) + 1)
		defer func() {
			if r := recover(); r != nil {
				if s, _ := r.(string); !strings.Contains(s, "older than the cluster") {
					t.Fatalf("panic: %v", r)
				}
			}
		}()
		res := m.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data}).(*fsm.ApplyResult)
		evs := s.Audit(idx-1, 0, "", "")
		if s.Index() != idx || res.Index != idx || len(evs) == 0 {
			t.Fatalf("entry not accounted for: index %d, result %+v", s.Index(), res)
		}
		// Only an applied record-denials command records more than one
		// event: one per denial.
		for _, ev := range evs {
			if len(evs) > 1 && (res.Err != nil || ev.GetAction() != state.ActionAccessDenied) {
				t.Fatalf("entry recorded %d events: %v, result %+v", len(evs), evs, res)
			}
		}
	})
}
