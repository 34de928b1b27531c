package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// fakeServer is a small in-memory implementation of the API, enough to
// drive every command. It records each request's headers and HTTP version.
type fakeServer struct {
	droverv1connect.UnimplementedClusterServiceHandler // GetServerInfo

	created time.Time // create_time of everything

	mu           sync.Mutex // guards the fields below
	index        uint64
	models       map[string]*droverv1.Model
	versions     map[string][]*droverv1.ModelVersion
	events       []*droverv1.AuditEvent
	bootstrapped bool
	snapshot     []byte // what SaveSnapshot sends
	restored     []byte // what RestoreSnapshot received
	chunks       []int  // message sizes RestoreSnapshot received
	removedPeers []string
	left         bool
	requests     []recorded
	lastQuery    *droverv1.QueryOptions
	lastAudit    *droverv1.ListAuditEventsRequest
}

type recorded struct {
	path       string
	header     http.Header
	protoMajor int
}

var (
	_ droverv1connect.ModelServiceHandler   = (*fakeServer)(nil)
	_ droverv1connect.ACLServiceHandler     = (*fakeServer)(nil)
	_ droverv1connect.AuditServiceHandler   = (*fakeServer)(nil)
	_ droverv1connect.ClusterServiceHandler = (*fakeServer)(nil)
)

func newFakeServer(created time.Time) *fakeServer {
	return &fakeServer{
		created:  created,
		models:   map[string]*droverv1.Model{},
		versions: map[string][]*droverv1.ModelVersion{},
	}
}

// handler serves all four services and records every request.
func (f *fakeServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(droverv1connect.NewModelServiceHandler(f))
	mux.Handle(droverv1connect.NewACLServiceHandler(f))
	mux.Handle(droverv1connect.NewAuditServiceHandler(f))
	mux.Handle(droverv1connect.NewClusterServiceHandler(f))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, recorded{path: r.URL.Path, header: r.Header.Clone(), protoMajor: r.ProtoMajor})
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	})
}

func (f *fakeServer) recordedRequests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// apiError builds an error the way the real server does: a Connect code and
// an ErrorDetail with a reason and a hint.
func apiError(code connect.Code, reason droverv1.ErrorReason, hint, format string, args ...any) error {
	e := connect.NewError(code, fmt.Errorf(format, args...))
	d, err := connect.NewErrorDetail(&droverv1.ErrorDetail{Reason: reason, Hint: hint})
	if err != nil {
		panic(err)
	}
	e.AddDetail(d)
	return e
}

// commitLocked advances the index and records an audit event.
func (f *fakeServer) commitLocked(action, target string) uint64 {
	f.index++
	f.events = append(f.events, &droverv1.AuditEvent{
		Index: f.index, Time: timestamppb.New(f.created.Add(time.Duration(f.index) * time.Second)),
		Actor: "anonymous", Action: action, Target: target, Result: "ok",
	})
	return f.index
}

func (f *fakeServer) modelLocked(name string) (*droverv1.Model, error) {
	m, ok := f.models[name]
	if !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"list models with `drover model ls`", "model %q not found", name)
	}
	return m, nil
}

func (f *fakeServer) queryMetaLocked(opts *droverv1.QueryOptions) *droverv1.QueryMeta {
	f.lastQuery = opts
	return &droverv1.QueryMeta{Index: f.index, KnownLeader: true, ServedBy: "s1"}
}

func (f *fakeServer) CreateModel(_ context.Context, req *connect.Request[droverv1.CreateModelRequest]) (*connect.Response[droverv1.CreateModelResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	if _, ok := f.models[r.GetName()]; ok {
		return nil, apiError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "", "model %q already exists", r.GetName())
	}
	idx := f.commitLocked("model.create", "model/"+r.GetName())
	m := &droverv1.Model{
		Name: r.GetName(), Description: r.GetDescription(), Owner: r.GetOwner(), Tags: r.GetTags(),
		CreatedBy: "anonymous", CreateTime: timestamppb.New(f.created), CreateIndex: idx, ModifyIndex: idx,
	}
	f.models[m.Name] = m
	return connect.NewResponse(&droverv1.CreateModelResponse{Model: m, Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) ListModels(_ context.Context, req *connect.Request[droverv1.ListModelsRequest]) (*connect.Response[droverv1.ListModelsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &droverv1.ListModelsResponse{Meta: f.queryMetaLocked(req.Msg.GetOptions())}
	// Map order, on purpose: the command must sort.
	for _, m := range f.models {
		resp.Models = append(resp.Models, m)
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeServer) GetModel(_ context.Context, req *connect.Request[droverv1.GetModelRequest]) (*connect.Response[droverv1.GetModelResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.modelLocked(req.Msg.GetName())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.GetModelResponse{Model: m, Meta: f.queryMetaLocked(req.Msg.GetOptions())}), nil
}

func (f *fakeServer) DeleteModel(_ context.Context, req *connect.Request[droverv1.DeleteModelRequest]) (*connect.Response[droverv1.DeleteModelResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.modelLocked(req.Msg.GetName()); err != nil {
		return nil, err
	}
	delete(f.models, req.Msg.GetName())
	delete(f.versions, req.Msg.GetName())
	idx := f.commitLocked("model.delete", "model/"+req.Msg.GetName())
	return connect.NewResponse(&droverv1.DeleteModelResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) CreateVersion(_ context.Context, req *connect.Request[droverv1.CreateVersionRequest]) (*connect.Response[droverv1.CreateVersionResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	m, err := f.modelLocked(r.GetModel())
	if err != nil {
		return nil, err
	}
	m.LatestVersion++
	idx := f.commitLocked("version.create", "model/"+m.Name)
	m.ModifyIndex = idx
	v := &droverv1.ModelVersion{
		Model: m.Name, Version: m.LatestVersion, Artifact: r.GetArtifact(), Card: r.GetCard(), Lineage: r.GetLineage(),
		Metrics: r.GetMetrics(), Tags: r.GetTags(), CreatedBy: "anonymous",
		CreateTime: timestamppb.New(f.created), CreateIndex: idx, ModifyIndex: idx,
	}
	f.versions[m.Name] = append(f.versions[m.Name], v)
	return connect.NewResponse(&droverv1.CreateVersionResponse{Version: v, Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) ListVersions(_ context.Context, req *connect.Request[droverv1.ListVersionsRequest]) (*connect.Response[droverv1.ListVersionsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.modelLocked(req.Msg.GetModel()); err != nil {
		return nil, err
	}
	vs := slices.Clone(f.versions[req.Msg.GetModel()])
	slices.Reverse(vs) // newest first, on purpose: the command must sort
	return connect.NewResponse(&droverv1.ListVersionsResponse{Versions: vs, Meta: f.queryMetaLocked(req.Msg.GetOptions())}), nil
}

func (f *fakeServer) GetVersion(_ context.Context, req *connect.Request[droverv1.GetVersionRequest]) (*connect.Response[droverv1.GetVersionResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.modelLocked(req.Msg.GetModel())
	if err != nil {
		return nil, err
	}
	ref := req.Msg.GetRef()
	var n uint64
	switch {
	case ref == "latest":
		n = m.LatestVersion
	case m.Aliases[ref] != 0:
		n = m.Aliases[ref]
	default:
		n, _ = strconv.ParseUint(ref, 10, 64)
	}
	for _, v := range f.versions[m.Name] {
		if v.Version == n {
			return connect.NewResponse(&droverv1.GetVersionResponse{Version: v, Meta: f.queryMetaLocked(req.Msg.GetOptions())}), nil
		}
	}
	return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "%s@%s not found", m.Name, ref)
}

func (f *fakeServer) SetAlias(_ context.Context, req *connect.Request[droverv1.SetAliasRequest]) (*connect.Response[droverv1.SetAliasResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	m, err := f.modelLocked(r.GetModel())
	if err != nil {
		return nil, err
	}
	if r.GetVersion() == 0 || r.GetVersion() > m.LatestVersion {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "%s@%d not found", m.Name, r.GetVersion())
	}
	if m.Aliases == nil {
		m.Aliases = map[string]uint64{}
	}
	prev := m.Aliases[r.GetAlias()]
	m.Aliases[r.GetAlias()] = r.GetVersion()
	idx := f.commitLocked("alias.set", "model/"+m.Name+"@"+r.GetAlias())
	return connect.NewResponse(&droverv1.SetAliasResponse{Model: m, PreviousVersion: prev, Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) DeleteAlias(_ context.Context, req *connect.Request[droverv1.DeleteAliasRequest]) (*connect.Response[droverv1.DeleteAliasResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, err := f.modelLocked(req.Msg.GetModel())
	if err != nil {
		return nil, err
	}
	if _, ok := m.Aliases[req.Msg.GetAlias()]; !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "alias %q not found", req.Msg.GetAlias())
	}
	delete(m.Aliases, req.Msg.GetAlias())
	idx := f.commitLocked("alias.delete", "model/"+m.Name+"@"+req.Msg.GetAlias())
	return connect.NewResponse(&droverv1.DeleteAliasResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) Bootstrap(_ context.Context, _ *connect.Request[droverv1.BootstrapRequest]) (*connect.Response[droverv1.BootstrapResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bootstrapped {
		return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED,
			"use the management token from the first bootstrap", "ACL already bootstrapped")
	}
	f.bootstrapped = true
	idx := f.commitLocked("acl.bootstrap", "acl")
	return connect.NewResponse(&droverv1.BootstrapResponse{
		AccessorId: "acc-1234", SecretId: "s3cr3t-5678", Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (f *fakeServer) ListEvents(_ context.Context, req *connect.Request[droverv1.ListAuditEventsRequest]) (*connect.Response[droverv1.ListAuditEventsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastAudit = proto.Clone(req.Msg).(*droverv1.ListAuditEventsRequest)
	resp := &droverv1.ListAuditEventsResponse{Meta: f.queryMetaLocked(req.Msg.GetOptions())}
	for _, e := range f.events {
		if e.GetIndex() > req.Msg.GetAfterIndex() && strings.HasPrefix(e.GetTarget(), req.Msg.GetTargetPrefix()) {
			resp.Events = append(resp.Events, e)
		}
	}
	slices.SortFunc(resp.Events, func(a, b *droverv1.AuditEvent) int { return cmp.Compare(b.GetIndex(), a.GetIndex()) })
	return connect.NewResponse(resp), nil
}

func (f *fakeServer) GetStatus(_ context.Context, _ *connect.Request[droverv1.GetStatusRequest]) (*connect.Response[droverv1.GetStatusResponse], error) {
	info := func(name, state string, term, commit, applied uint64) *droverv1.ServerInfo {
		return &droverv1.ServerInfo{Name: name, RaftState: state, Term: term, CommitIndex: commit, AppliedIndex: applied, Leader: "s1"}
	}
	return connect.NewResponse(&droverv1.GetStatusResponse{
		ClusterId: "c-7f3a",
		Leader:    "s1",
		Quorum:    2,
		ServedBy:  "s2",
		Servers: []*droverv1.ServerStatus{
			{Name: "s3", ApiAddr: "10.0.0.3:7400", Health: "failed", Suffrage: "voter", Error: "context deadline exceeded"},
			{Name: "s1", ApiAddr: "10.0.0.1:7400", Health: "alive", Suffrage: "voter", Leader: true, Info: info("s1", "leader", 4, 120, 120)},
			{Name: "s2", ApiAddr: "10.0.0.2:7400", Health: "alive", Suffrage: "voter", Info: info("s2", "follower", 4, 120, 118)},
			{Name: "s4", ApiAddr: "10.0.0.4:7400", Health: "alive", Suffrage: "nonvoter", Info: info("s4", "follower", 4, 120, 90)},
		},
	}), nil
}

func (f *fakeServer) ListPeers(_ context.Context, _ *connect.Request[droverv1.ListPeersRequest]) (*connect.Response[droverv1.ListPeersResponse], error) {
	return connect.NewResponse(&droverv1.ListPeersResponse{
		Peers: []*droverv1.RaftPeer{
			{Id: "s2", Address: "10.0.0.2:7401", Suffrage: "voter"},
			{Id: "s1", Address: "10.0.0.1:7401", Suffrage: "voter", Leader: true},
		},
		Index: 42,
	}), nil
}

func (f *fakeServer) RemovePeer(_ context.Context, req *connect.Request[droverv1.RemovePeerRequest]) (*connect.Response[droverv1.RemovePeerResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.Msg.GetPeer() != "s2" && req.Msg.GetPeer() != "10.0.0.2:7401" {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_PEER_NOT_FOUND,
			"list peers with `drover operator raft list-peers`", "no peer %q", req.Msg.GetPeer())
	}
	f.removedPeers = append(f.removedPeers, req.Msg.GetPeer())
	return connect.NewResponse(&droverv1.RemovePeerResponse{Index: 43}), nil
}

func (f *fakeServer) SaveSnapshot(_ context.Context, _ *connect.Request[droverv1.SaveSnapshotRequest], stream *connect.ServerStream[droverv1.SaveSnapshotResponse]) error {
	f.mu.Lock()
	data := f.snapshot
	f.mu.Unlock()
	for chunk := range slices.Chunk(data, 256<<10) {
		if err := stream.Send(&droverv1.SaveSnapshotResponse{Data: chunk}); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeServer) RestoreSnapshot(_ context.Context, stream *connect.ClientStream[droverv1.RestoreSnapshotRequest]) (*connect.Response[droverv1.RestoreSnapshotResponse], error) {
	var data []byte
	var chunks []int
	for stream.Receive() {
		data = append(data, stream.Msg().GetData()...)
		chunks = append(chunks, len(stream.Msg().GetData()))
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if len(data) == 0 {
		return nil, apiError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID, "", "empty snapshot")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restored, f.chunks = data, chunks
	return connect.NewResponse(&droverv1.RestoreSnapshotResponse{Index: 777}), nil
}

func (f *fakeServer) Leave(_ context.Context, _ *connect.Request[droverv1.LeaveRequest]) (*connect.Response[droverv1.LeaveResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.left {
		return nil, errors.New("already left")
	}
	f.left = true
	return connect.NewResponse(&droverv1.LeaveResponse{}), nil
}
