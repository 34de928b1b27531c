package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/acl"
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
	lastReadLogs *droverv1.ReadLogsRequest
	restored     []byte // what RestoreSnapshot received
	chunks       []int  // message sizes RestoreSnapshot received
	forced       bool   // force_foreign_cluster on RestoreSnapshot's first message
	removedPeers []string
	left         bool
	requests     []recorded
	lastQuery    *droverv1.QueryOptions
	lastAudit    *droverv1.ListAuditEventsRequest

	acl fakeACLState

	now             time.Time             // the clock of token expiry
	tokens          []*droverv1.JoinToken // in creation order
	nodes           []*droverv1.Node
	lastCreateToken *droverv1.CreateTokenRequest
	lastListNodes   *droverv1.ListNodesRequest
	lastLabelNode   *droverv1.LabelNodeRequest
	revokedNodes    []string // RevokeNode requests, in order
	// pullReports are what GetNode reports of the node's pull after a
	// PullVersion, one per read, the last repeated: the agent's progress.
	pullReports []*droverv1.NodePullStatus

	// crashOn is a procedure path whose calls the server takes in and
	// then dies on, as a crash would: crash drops every connection.
	crashOn string
	crash   func()

	// art serves ArtifactService and AgentService.GetClusterInfo.
	art *fakeArtifact
	// deploys serves DeploymentService, rollouts RolloutService.
	deploys  *fakeDeploys
	rollouts *fakeRollouts
	drift    *fakeDrift
	telem    *fakeTelemetry
}

type recorded struct {
	path       string
	header     http.Header
	protoMajor int
}

var (
	_ droverv1connect.ModelServiceHandler   = (*fakeServer)(nil)
	_ droverv1connect.ACLServiceHandler     = (*fakeACL)(nil)
	_ droverv1connect.AuditServiceHandler   = (*fakeServer)(nil)
	_ droverv1connect.ClusterServiceHandler = (*fakeServer)(nil)
	_ droverv1connect.TokenServiceHandler   = (*fakeServer)(nil)
	_ droverv1connect.NodeServiceHandler    = (*fakeServer)(nil)
)

func newFakeServer(created time.Time) *fakeServer {
	f := &fakeServer{
		created:  created,
		now:      created,
		models:   map[string]*droverv1.Model{},
		versions: map[string][]*droverv1.ModelVersion{},
	}
	f.art = newFakeArtifact(f)
	f.deploys = &fakeDeploys{f: f, deployments: map[string]*droverv1.Deployment{}, rollouts: map[string]*droverv1.Rollout{}}
	f.rollouts = &fakeRollouts{d: f.deploys, nodes: map[string][]*droverv1.DeploymentNode{}}
	f.drift = &fakeDrift{f: f}
	f.telem = &fakeTelemetry{}
	return f
}

// handler serves every service and records every request.
func (f *fakeServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(droverv1connect.NewModelServiceHandler(f))
	mux.Handle(droverv1connect.NewACLServiceHandler(&fakeACL{f}))
	mux.Handle(droverv1connect.NewAuditServiceHandler(f))
	mux.Handle(droverv1connect.NewClusterServiceHandler(f))
	mux.Handle(droverv1connect.NewTokenServiceHandler(f))
	mux.Handle(droverv1connect.NewNodeServiceHandler(f))
	mux.Handle(droverv1connect.NewArtifactServiceHandler(f.art))
	mux.Handle(droverv1connect.NewAgentServiceHandler(fakeAgentService{a: f.art}))
	mux.Handle(droverv1connect.NewKeyServiceHandler(fakeKeys{a: f.art}))
	mux.Handle(droverv1connect.NewDeploymentServiceHandler(f.deploys))
	mux.Handle(droverv1connect.NewRolloutServiceHandler(f.rollouts))
	mux.Handle(droverv1connect.NewDriftServiceHandler(f.drift))
	mux.Handle(droverv1connect.NewTelemetryServiceHandler(f.telem))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, recorded{path: r.URL.Path, header: r.Header.Clone(), protoMajor: r.ProtoMajor})
		crash := f.crash
		if r.URL.Path != f.crashOn {
			crash = nil
		}
		f.mu.Unlock()
		if crash != nil {
			_, _ = io.Copy(io.Discard, r.Body) // the whole request arrived
			crash()
			<-r.Context().Done()
			return
		}
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
			{Name: "s4", ApiAddr: "10.0.0.4:7400", Health: "alive", Suffrage: "nonvoter", Info: func() *droverv1.ServerInfo {
				i := info("s4", "follower", 4, 120, 90)
				i.ChunksMissing = 37 // new, still copying chunks
				return i
			}()},
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
	forced := false
	for stream.Receive() {
		if chunks == nil {
			forced = stream.Msg().GetForceForeignCluster()
		}
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
	f.restored, f.chunks, f.forced = data, chunks, forced
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

// testCAHash stands for the cluster CA's SHA-256 in join token strings.
const testCAHash = "5f1c0a9e2d7b4c3a8e6f0d1b9a7c5e3f2a4b6c8d0e1f3a5b7c9d2e4f6a8b0c1d"

func (f *fakeServer) CreateToken(_ context.Context, req *connect.Request[droverv1.CreateTokenRequest]) (*connect.Response[droverv1.CreateTokenResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	f.lastCreateToken = proto.Clone(r).(*droverv1.CreateTokenRequest)
	id := fmt.Sprintf("tok%d", len(f.tokens)+1)
	idx := f.commitLocked("token.create", "token/"+id)
	t := &droverv1.JoinToken{
		Id: id, Description: r.GetDescription(), Labels: r.GetLabels(), Site: r.GetSite(),
		CreateTime: timestamppb.New(f.now), MaxUses: r.GetMaxUses(), CreatedBy: "anonymous",
		CreateIndex: idx, ModifyIndex: idx,
	}
	switch ttl := r.GetTtl(); {
	case ttl == nil:
		t.ExpireTime = timestamppb.New(f.now.Add(time.Hour))
	case ttl.AsDuration() > 0:
		t.ExpireTime = timestamppb.New(f.now.Add(ttl.AsDuration()))
	}
	f.tokens = append(f.tokens, t)
	return connect.NewResponse(&droverv1.CreateTokenResponse{
		Token: proto.Clone(t).(*droverv1.JoinToken), TokenString: "drover-join.v1." + testCAHash + "." + id + ".s3cr3t" + id,
		Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (f *fakeServer) ListTokens(_ context.Context, req *connect.Request[droverv1.ListTokensRequest]) (*connect.Response[droverv1.ListTokensResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &droverv1.ListTokensResponse{Meta: f.queryMetaLocked(req.Msg.GetOptions())}
	for _, t := range f.tokens {
		resp.Tokens = append(resp.Tokens, proto.Clone(t).(*droverv1.JoinToken))
	}
	slices.Reverse(resp.Tokens) // newest first, on purpose: the command must sort
	return connect.NewResponse(resp), nil
}

func (f *fakeServer) RevokeToken(_ context.Context, req *connect.Request[droverv1.RevokeTokenRequest]) (*connect.Response[droverv1.RevokeTokenResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.tokens {
		if t.GetId() == req.Msg.GetId() {
			t.Revoked = true
			idx := f.commitLocked("token.revoke", "token/"+t.GetId())
			return connect.NewResponse(&droverv1.RevokeTokenResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
		}
	}
	return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
		"list join tokens with `drover token ls`", "join token %q not found", req.Msg.GetId())
}

// addNodes stores nodes as if they had enrolled.
func (f *fakeServer) addNodes(nodes ...*droverv1.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = append(f.nodes, nodes...)
}

// nodeLocked finds a node by id or name, as the server does.
func (f *fakeServer) nodeLocked(ref string) (*droverv1.Node, error) {
	for _, n := range f.nodes {
		if n.GetId() == ref || n.GetName() == ref {
			return n, nil
		}
	}
	return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
		"list nodes with `drover node ls`", "node %q not found", ref)
}

func (f *fakeServer) ListNodes(_ context.Context, req *connect.Request[droverv1.ListNodesRequest]) (*connect.Response[droverv1.ListNodesResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	f.lastListNodes = proto.Clone(r).(*droverv1.ListNodesRequest)
	resp := &droverv1.ListNodesResponse{Meta: f.queryMetaLocked(r.GetOptions())}
	for _, n := range f.nodes {
		if fakeNodeMatches(r, n) {
			resp.Nodes = append(resp.Nodes, proto.Clone(n).(*droverv1.Node))
		}
	}
	slices.Reverse(resp.Nodes) // on purpose: the command must sort
	return connect.NewResponse(resp), nil
}

func fakeNodeMatches(r *droverv1.ListNodesRequest, n *droverv1.Node) bool {
	for k, v := range r.GetLabels() {
		if got, ok := n.GetLabels()[k]; !ok || got != v {
			return false
		}
	}
	if (r.GetSite() != "" && n.GetSite() != r.GetSite()) ||
		(r.GetStatus() != droverv1.NodeStatus_NODE_STATUS_UNSPECIFIED && n.GetStatus() != r.GetStatus()) {
		return false
	}
	if r.GetGpuModel() == "" && r.GetMinGpuMemoryBytes() == 0 {
		return true
	}
	for _, g := range n.GetInventory().GetGpus() {
		if strings.Contains(strings.ToLower(g.GetName()), strings.ToLower(r.GetGpuModel())) &&
			g.GetMemoryTotalBytes() >= r.GetMinGpuMemoryBytes() {
			return true
		}
	}
	return false
}

func (f *fakeServer) GetNode(_ context.Context, req *connect.Request[droverv1.GetNodeRequest]) (*connect.Response[droverv1.GetNodeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	if p := n.GetRequestedPull(); p != nil && len(f.pullReports) > 0 {
		st := proto.Clone(f.pullReports[0]).(*droverv1.NodePullStatus)
		if len(f.pullReports) > 1 {
			f.pullReports = f.pullReports[1:]
		}
		st.Model, st.Version, st.RequestIndex = p.GetModel(), p.GetVersion(), p.GetRequestIndex()
		st.ReportTime = timestamppb.New(f.created)
		n.PullStatus = st
	}
	return connect.NewResponse(&droverv1.GetNodeResponse{Node: proto.Clone(n).(*droverv1.Node), Meta: f.queryMetaLocked(req.Msg.GetOptions())}), nil
}

func (f *fakeServer) DrainNode(_ context.Context, req *connect.Request[droverv1.DrainNodeRequest]) (*connect.Response[droverv1.DrainNodeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	n.Draining = req.Msg.GetDrain()
	idx := f.commitLocked("node.drain", "node/"+n.GetId())
	n.ModifyIndex = idx
	return connect.NewResponse(&droverv1.DrainNodeResponse{Node: proto.Clone(n).(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) UncordonNode(_ context.Context, req *connect.Request[droverv1.UncordonNodeRequest]) (*connect.Response[droverv1.UncordonNodeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	n.Cordoned = false
	idx := f.commitLocked("node.uncordon", "node/"+n.GetId())
	n.ModifyIndex = idx
	return connect.NewResponse(&droverv1.UncordonNodeResponse{Node: proto.Clone(n).(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) PullVersion(_ context.Context, req *connect.Request[droverv1.PullVersionRequest]) (*connect.Response[droverv1.PullVersionResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	m, err := f.modelLocked(req.Msg.GetModel())
	if err != nil {
		return nil, err
	}
	ref := cmp.Or(req.Msg.GetRef(), "latest")
	var v uint64
	switch {
	case ref == "latest":
		v = m.LatestVersion
	case m.Aliases[ref] != 0:
		v = m.Aliases[ref]
	default:
		v, _ = strconv.ParseUint(ref, 10, 64)
	}
	for _, mv := range f.versions[m.Name] {
		if mv.Version != v {
			continue
		}
		idx := f.commitLocked("node.pull", "node/"+n.GetId())
		n.RequestedPull = &droverv1.NodePull{
			Model: m.Name, Version: v, ArtifactDigest: mv.GetArtifact().GetDigest(),
			RequestedBy: "acc-1", RequestedByName: "alice", RequestTime: timestamppb.New(f.created), RequestIndex: idx,
		}
		n.ModifyIndex = idx
		return connect.NewResponse(&droverv1.PullVersionResponse{
			Node: proto.Clone(n).(*droverv1.Node), Pull: proto.Clone(n.RequestedPull).(*droverv1.NodePull), Meta: &droverv1.WriteMeta{Index: idx},
		}), nil
	}
	return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "%s@%s not found", m.Name, ref)
}

func (f *fakeServer) LabelNode(_ context.Context, req *connect.Request[droverv1.LabelNodeRequest]) (*connect.Response[droverv1.LabelNodeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastLabelNode = proto.Clone(req.Msg).(*droverv1.LabelNodeRequest)
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	for k, v := range req.Msg.GetSet() {
		n.Labels[k] = v
	}
	for _, k := range req.Msg.GetRemove() {
		delete(n.Labels, k)
	}
	idx := f.commitLocked("node.label", "node/"+n.GetId())
	n.ModifyIndex = idx
	return connect.NewResponse(&droverv1.LabelNodeResponse{Node: proto.Clone(n).(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (f *fakeServer) RevokeNode(_ context.Context, req *connect.Request[droverv1.RevokeNodeRequest]) (*connect.Response[droverv1.RevokeNodeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revokedNodes = append(f.revokedNodes, req.Msg.GetNode())
	n, err := f.nodeLocked(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	n.Revoked = true
	idx := f.commitLocked("node.revoke", "node/"+n.GetId())
	n.ModifyIndex = idx
	return connect.NewResponse(&droverv1.RevokeNodeResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

// fakeACLState is the fake's operator tokens and policies, guarded by
// fakeServer.mu. Revoked tokens are gone, as on the server.
type fakeACLState struct {
	tokens   []*droverv1.ACLToken // in creation order
	secrets  map[string]string    // secret → accessor id
	policies map[string]*droverv1.ACLPolicy
	rotated  int // rotations so far, to make each new secret differ

	lastCreate *droverv1.CreateACLTokenRequest
	lastGet    *droverv1.GetACLTokenRequest
	lastApply  *droverv1.ApplyACLPolicyRequest
	revoked    []string // RevokeToken ids, in order
	deleted    []string // DeletePolicy names, in order
}

// fakeACL serves the ACL service from fakeServer's state. It is a type of
// its own because its methods share names with the join-token service's.
type fakeACL struct{ f *fakeServer }

// testAccessor is the accessor id the fake gives the nth token it creates
// after bootstrap: UUID-shaped, like the server's.
func testAccessor(n int) string { return fmt.Sprintf("%08x-5e1f-4c0d-9a3b-%012d", 0x1b2c3d4e+n-1, n) }

func aclNotFound(format string, args ...any) error {
	return apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
		"list tokens with `drover acl token ls`", format, args...)
}

// tokenLocked finds a token by accessor id or name, as the server does.
func (a *fakeACL) tokenLocked(ref string) (*droverv1.ACLToken, error) {
	for _, t := range a.f.acl.tokens {
		if t.GetAccessorId() == ref || (t.GetName() != "" && t.GetName() == ref) {
			return t, nil
		}
	}
	return nil, aclNotFound("token %q not found", ref)
}

func (a *fakeACL) addTokenLocked(t *droverv1.ACLToken, secret string) {
	if a.f.acl.secrets == nil {
		a.f.acl.secrets = map[string]string{}
	}
	a.f.acl.tokens = append(a.f.acl.tokens, t)
	a.f.acl.secrets[secret] = t.GetAccessorId()
}

func (a *fakeACL) policyLocked(name string) (*droverv1.ACLPolicy, bool) {
	for _, p := range acl.Builtin() {
		if p.GetName() == name {
			return p, true
		}
	}
	p, ok := a.f.acl.policies[name]
	return p, ok
}

func (a *fakeACL) Bootstrap(_ context.Context, _ *connect.Request[droverv1.BootstrapRequest]) (*connect.Response[droverv1.BootstrapResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bootstrapped {
		return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED,
			"use the management token from the first bootstrap", "ACL already bootstrapped")
	}
	f.bootstrapped = true
	idx := f.commitLocked("acl.bootstrap", "acl")
	a.addTokenLocked(&droverv1.ACLToken{
		AccessorId: "acc-1234", Description: "Bootstrap management token", Policies: []string{acl.PolicyManagement},
		CreateTime: timestamppb.New(f.created), CreateIndex: idx, ModifyIndex: idx,
	}, "s3cr3t-5678")
	return connect.NewResponse(&droverv1.BootstrapResponse{
		AccessorId: "acc-1234", SecretId: "s3cr3t-5678", Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (a *fakeACL) CreateToken(_ context.Context, req *connect.Request[droverv1.CreateACLTokenRequest]) (*connect.Response[droverv1.CreateACLTokenResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg
	f.acl.lastCreate = proto.Clone(r).(*droverv1.CreateACLTokenRequest)
	if _, err := a.tokenLocked(r.GetName()); err == nil {
		return nil, apiError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS, "", "token %q already exists", r.GetName())
	}
	for _, p := range r.GetPolicies() {
		if _, ok := a.policyLocked(p); !ok {
			return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
				"list policies with `drover acl policy ls`", "policy %q not found", p)
		}
	}
	n := len(f.acl.tokens) + 1
	idx := f.commitLocked("acl.token.create", "acl/token/"+testAccessor(n))
	t := &droverv1.ACLToken{
		AccessorId: testAccessor(n), Name: r.GetName(), Description: r.GetDescription(), Policies: r.GetPolicies(),
		CreateTime: timestamppb.New(f.now), CreateIndex: idx, ModifyIndex: idx, CreatedBy: a.callerLocked(req.Header()),
	}
	if ttl := r.GetTtl().AsDuration(); ttl > 0 {
		t.ExpireTime = timestamppb.New(f.now.Add(ttl))
	}
	secret := fmt.Sprintf("secret-%d", n)
	a.addTokenLocked(t, secret)
	return connect.NewResponse(&droverv1.CreateACLTokenResponse{
		Token: proto.Clone(t).(*droverv1.ACLToken), SecretId: secret, Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (a *fakeACL) ListTokens(_ context.Context, req *connect.Request[droverv1.ListACLTokensRequest]) (*connect.Response[droverv1.ListACLTokensResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &droverv1.ListACLTokensResponse{Meta: f.queryMetaLocked(req.Msg.GetOptions())}
	for _, t := range f.acl.tokens {
		resp.Tokens = append(resp.Tokens, proto.Clone(t).(*droverv1.ACLToken))
	}
	slices.Reverse(resp.Tokens) // newest first, on purpose: the command must sort
	return connect.NewResponse(resp), nil
}

func (a *fakeACL) GetToken(_ context.Context, req *connect.Request[droverv1.GetACLTokenRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acl.lastGet = proto.Clone(req.Msg).(*droverv1.GetACLTokenRequest)
	t, err := a.tokenLocked(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.GetACLTokenResponse{
		Token: proto.Clone(t).(*droverv1.ACLToken), Meta: f.queryMetaLocked(req.Msg.GetOptions()),
	}), nil
}

// callerLocked returns the accessor id of the token whose secret a
// request carries, "" if none.
func (a *fakeACL) callerLocked(h http.Header) string {
	secret, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer ")
	if !ok {
		return ""
	}
	return a.f.acl.secrets[secret]
}

// GetTokenSelf finds the caller's token by the secret it sends.
func (a *fakeACL) GetTokenSelf(_ context.Context, req *connect.Request[droverv1.GetACLTokenSelfRequest]) (*connect.Response[droverv1.GetACLTokenResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	accessor := a.callerLocked(req.Header())
	if accessor == "" {
		return nil, apiError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			"check DROVER_TOKEN", "token not found")
	}
	t, err := a.tokenLocked(accessor)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.GetACLTokenResponse{
		Token: proto.Clone(t).(*droverv1.ACLToken), Meta: f.queryMetaLocked(req.Msg.GetOptions()),
	}), nil
}

func (a *fakeACL) RevokeToken(_ context.Context, req *connect.Request[droverv1.RevokeACLTokenRequest]) (*connect.Response[droverv1.RevokeACLTokenResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acl.revoked = append(f.acl.revoked, req.Msg.GetId())
	t, err := a.tokenLocked(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	f.acl.tokens = slices.DeleteFunc(f.acl.tokens, func(x *droverv1.ACLToken) bool { return x == t })
	maps.DeleteFunc(f.acl.secrets, func(_, accessor string) bool { return accessor == t.GetAccessorId() })
	idx := f.commitLocked("acl.token.revoke", "acl/token/"+t.GetAccessorId())
	return connect.NewResponse(&droverv1.RevokeACLTokenResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (a *fakeACL) RotateToken(_ context.Context, req *connect.Request[droverv1.RotateACLTokenRequest]) (*connect.Response[droverv1.RotateACLTokenResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	t, err := a.tokenLocked(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	maps.DeleteFunc(f.acl.secrets, func(_, accessor string) bool { return accessor == t.GetAccessorId() })
	f.acl.rotated++
	secret := fmt.Sprintf("rotated-%d", f.acl.rotated)
	f.acl.secrets[secret] = t.GetAccessorId()
	idx := f.commitLocked("acl.token.rotate", "acl/token/"+t.GetAccessorId())
	t.RotateTime, t.ModifyIndex = timestamppb.New(f.now), idx
	return connect.NewResponse(&droverv1.RotateACLTokenResponse{
		Token: proto.Clone(t).(*droverv1.ACLToken), SecretId: secret, Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (a *fakeACL) ApplyPolicy(_ context.Context, req *connect.Request[droverv1.ApplyACLPolicyRequest]) (*connect.Response[droverv1.ApplyACLPolicyResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acl.lastApply = proto.Clone(req.Msg).(*droverv1.ApplyACLPolicyRequest)
	p := proto.Clone(req.Msg.GetPolicy()).(*droverv1.ACLPolicy)
	if err := acl.ValidatePolicy(p); err != nil {
		return nil, apiError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "", "%v", err)
	}
	idx := f.commitLocked("acl.policy.apply", "acl/policy/"+p.GetName())
	old, replaced := f.acl.policies[p.GetName()]
	p.Builtin, p.ModifyIndex, p.ModifyTime = false, idx, timestamppb.New(f.now)
	p.CreateIndex, p.CreateTime = idx, timestamppb.New(f.now)
	if replaced {
		p.CreateIndex, p.CreateTime = old.GetCreateIndex(), old.GetCreateTime()
	}
	if f.acl.policies == nil {
		f.acl.policies = map[string]*droverv1.ACLPolicy{}
	}
	f.acl.policies[p.GetName()] = p
	return connect.NewResponse(&droverv1.ApplyACLPolicyResponse{
		Policy: proto.Clone(p).(*droverv1.ACLPolicy), Replaced: replaced, Meta: &droverv1.WriteMeta{Index: idx},
	}), nil
}

func (a *fakeACL) ListPolicies(_ context.Context, req *connect.Request[droverv1.ListACLPoliciesRequest]) (*connect.Response[droverv1.ListACLPoliciesResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &droverv1.ListACLPoliciesResponse{Policies: acl.Builtin(), Meta: f.queryMetaLocked(req.Msg.GetOptions())}
	for _, p := range f.acl.policies { // map order, on purpose: the command must sort
		resp.Policies = append(resp.Policies, proto.Clone(p).(*droverv1.ACLPolicy))
	}
	slices.Reverse(resp.Policies)
	return connect.NewResponse(resp), nil
}

func (a *fakeACL) GetPolicy(_ context.Context, req *connect.Request[droverv1.GetACLPolicyRequest]) (*connect.Response[droverv1.GetACLPolicyResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := a.policyLocked(req.Msg.GetName())
	if !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"list policies with `drover acl policy ls`", "policy %q not found", req.Msg.GetName())
	}
	return connect.NewResponse(&droverv1.GetACLPolicyResponse{
		Policy: proto.Clone(p).(*droverv1.ACLPolicy), Meta: f.queryMetaLocked(req.Msg.GetOptions()),
	}), nil
}

func (a *fakeACL) DeletePolicy(_ context.Context, req *connect.Request[droverv1.DeleteACLPolicyRequest]) (*connect.Response[droverv1.DeleteACLPolicyResponse], error) {
	f := a.f
	f.mu.Lock()
	defer f.mu.Unlock()
	name := req.Msg.GetName()
	f.acl.deleted = append(f.acl.deleted, name)
	if _, ok := f.acl.policies[name]; !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"list policies with `drover acl policy ls`", "policy %q not found", name)
	}
	delete(f.acl.policies, name)
	idx := f.commitLocked("acl.policy.delete", "acl/policy/"+name)
	return connect.NewResponse(&droverv1.DeleteACLPolicyResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}
