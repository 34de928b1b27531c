package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// snapshotChunk is the size of each streamed snapshot message.
const snapshotChunk = 1 << 20

// clusterHandler serves status and operator actions on the control plane.
type clusterHandler struct{ s *Server }

var _ droverv1connect.ClusterServiceHandler = (*clusterHandler)(nil)

// GetStatus asks every server gossip knows about for its own view, in
// parallel, and joins that with the Raft configuration.
func (h *clusterHandler) GetStatus(ctx context.Context, _ *connect.Request[droverv1.GetStatusRequest]) (*connect.Response[droverv1.GetStatusResponse], error) {
	s := h.s
	leader, _ := s.leader()
	suffrage := map[string]string{}
	voters := 0
	if f := s.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter {
				suffrage[string(srv.ID)] = "voter"
				voters++
			} else {
				suffrage[string(srv.ID)] = "nonvoter"
			}
		}
	}
	servers := s.gossipServers()
	seen := map[string]bool{}
	for _, m := range servers {
		seen[m.Name] = true
	}
	// Voters gossip has never seen still belong in the picture.
	for id := range suffrage {
		if !seen[id] {
			servers = append(servers, serverMeta{Name: id, Status: memberFailed})
		}
	}
	out := make([]*droverv1.ServerStatus, len(servers))
	var wg sync.WaitGroup
	for i, m := range servers {
		out[i] = &droverv1.ServerStatus{
			Name: m.Name, ApiAddr: m.APIAddr, RaftAddr: m.RaftAddr, Health: string(m.Status),
			Suffrage: suffrage[m.Name], Leader: m.Name == leader,
		}
		if m.Name == s.cfg.Name {
			out[i].Info = s.serverInfo()
			continue
		}
		if m.APIAddr == "" || m.Status == memberLeft || m.Status == memberFailed {
			out[i].Error = "not reachable over gossip"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			info, err := s.peerInfo(ictx, m.APIAddr)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Info = info
		}()
	}
	wg.Wait()
	res := &droverv1.GetStatusResponse{Leader: leader, Servers: out, ServedBy: s.cfg.Name}
	if voters > 0 {
		res.Quorum = uint32(voters/2 + 1)
	}
	if c := s.state.Cluster(); c != nil {
		res.ClusterId = c.GetClusterId()
	}
	return connect.NewResponse(res), nil
}

// serverInfo describes this server.
func (s *Server) serverInfo() *droverv1.ServerInfo {
	leader, _ := s.leader()
	missing, err := s.chunksMissingNow()
	if err != nil {
		s.logger.Warn("status: cannot count the chunks this server lacks", "err", err)
	}
	return &droverv1.ServerInfo{
		Name:          s.cfg.Name,
		RaftAddr:      s.cfg.advertise(s.cfg.RaftAddr),
		ApiAddr:       s.cfg.advertise(s.cfg.APIAddr),
		GossipAddr:    s.cfg.advertise(s.cfg.GossipAddr),
		RaftState:     strings.ToLower(s.raft.State().String()),
		Term:          s.raft.CurrentTerm(),
		LastLogIndex:  s.raft.LastIndex(),
		CommitIndex:   s.raft.CommitIndex(),
		AppliedIndex:  s.raft.AppliedIndex(),
		Leader:        leader,
		Version:       Version,
		ChunksMissing: missing,
	}
}

func (h *clusterHandler) GetServerInfo(context.Context, *connect.Request[droverv1.GetServerInfoRequest]) (*connect.Response[droverv1.GetServerInfoResponse], error) {
	return connect.NewResponse(&droverv1.GetServerInfoResponse{Info: h.s.serverInfo()}), nil
}

func (h *clusterHandler) ListPeers(ctx context.Context, req *connect.Request[droverv1.ListPeersRequest]) (*connect.Response[droverv1.ListPeersResponse], error) {
	if err := h.s.readyForRead(ctx, req.Header()); err != nil {
		return nil, err
	}
	f := h.s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, h.s.raftError(err)
	}
	leader, _ := h.s.leader()
	res := &droverv1.ListPeersResponse{Index: f.Index()}
	for _, srv := range f.Configuration().Servers {
		suffrage := "voter"
		if srv.Suffrage != raft.Voter {
			suffrage = "nonvoter"
		}
		res.Peers = append(res.Peers, &droverv1.RaftPeer{
			Id: string(srv.ID), Address: string(srv.Address), Suffrage: suffrage, Leader: string(srv.ID) == leader,
		})
	}
	return connect.NewResponse(res), nil
}

func (h *clusterHandler) RemovePeer(ctx context.Context, req *connect.Request[droverv1.RemovePeerRequest]) (*connect.Response[droverv1.RemovePeerResponse], error) {
	s := h.s
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, s.raftError(err)
	}
	want := req.Msg.GetPeer()
	var known []string
	for _, srv := range f.Configuration().Servers {
		known = append(known, string(srv.ID))
		if string(srv.ID) != want && string(srv.Address) != want {
			continue
		}
		rf := s.raft.RemoveServer(srv.ID, f.Index(), time.Duration(s.cfg.ApplyTimeout))
		if err := rf.Error(); err != nil {
			return nil, s.raftError(err)
		}
		actor, name := actorFrom(ctx)
		s.logger.Info("removed raft peer", "peer", srv.ID, "by", actor, "token", name)
		return connect.NewResponse(&droverv1.RemovePeerResponse{Index: rf.Index()}), nil
	}
	return nil, apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_PEER_NOT_FOUND,
		fmt.Sprintf("no raft peer named or addressed %q (peers: %v)", want, known),
		"see \"drover operator raft list-peers\"")
}

// SaveSnapshot streams a consistent copy of the state in the snapshot file
// format; the CLI writes it to a file as it arrives.
func (h *clusterHandler) SaveSnapshot(ctx context.Context, req *connect.Request[droverv1.SaveSnapshotRequest], stream *connect.ServerStream[droverv1.SaveSnapshotResponse]) error {
	s := h.s
	if err := s.readyForRead(ctx, req.Header()); err != nil {
		return err
	}
	snap := s.state.Snapshot()
	out := bufio.NewWriterSize(chunkSender{stream}, snapshotChunk)
	// The header repeats the snapshot's own index and identity, which the
	// body holds too; restore checks that the two agree.
	sw, err := newSnapshotWriter(out, &droverv1.SnapshotHeader{
		Format: 1, Index: snap.Index(), Cluster: snap.Cluster(),
	})
	if err != nil {
		return err
	}
	if _, err := snap.WriteTo(sw); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := sw.finish(); err != nil {
		return err
	}
	return out.Flush()
}

type chunkSender struct {
	stream *connect.ServerStream[droverv1.SaveSnapshotResponse]
}

func (c chunkSender) Write(p []byte) (int, error) {
	if err := c.stream.Send(&droverv1.SaveSnapshotResponse{Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// RestoreSnapshot receives a snapshot file, checks all of it before
// touching anything, and hands it to Raft, which installs it on every
// server. A truncated, corrupted, undecodable or foreign file changes
// nothing.
//
// Raft panics when the state machine refuses an operator's restore, so
// the whole body is decoded and checked here first (state.ReadSnapshot,
// the same decoder the state machine runs). The cluster identity is taken
// from the decoded body, not only the file's header: a snapshot of
// another cluster is refused unless the request sets
// force_foreign_cluster, and even then this cluster keeps its own
// identity. Raft receives a re-encoded copy of the checked state, raised
// to an index above everything this server has seen and ending with an
// audit event that records who restored what.
func (h *clusterHandler) RestoreSnapshot(ctx context.Context, stream *connect.ClientStream[droverv1.RestoreSnapshotRequest]) (*connect.Response[droverv1.RestoreSnapshotResponse], error) {
	s := h.s
	tmp, err := os.CreateTemp(s.cfg.DataDir, "restore-*.snap")
	if err != nil {
		return nil, fmt.Errorf("restore: temp file: %w", err)
	}
	defer func() { _ = tmp.Close(); _ = os.Remove(tmp.Name()) }()
	force, first := false, true
	for stream.Receive() {
		if first {
			force = stream.Msg().GetForceForeignCluster()
			first = false
		}
		if _, err := tmp.Write(stream.Msg().GetData()); err != nil {
			return nil, fmt.Errorf("restore: write temp file: %w", err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	const unchanged = "nothing was changed; use a complete file made by \"drover operator snapshot save\""
	sf, err := verifySnapshot(tmp)
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID, err.Error(), unchanged)
	}
	snap, err := state.ReadSnapshot(sf.body())
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID,
			fmt.Sprintf("%v: the file's checksum is right but its contents are not a state this server can restore", err), unchanged)
	}
	// The identity that counts is the one inside the state, which is what
	// a restore installs; the file's header only labels it.
	body, labelled := snap.Cluster(), sf.header.GetCluster()
	cur := s.state.Cluster()
	foreign := cur != nil && (body.GetClusterId() != cur.GetClusterId() || body.GetCaSha256() != cur.GetCaSha256())
	altered := !proto.Equal(labelled, body)
	if foreign && !force {
		label := ""
		if altered {
			label = fmt.Sprintf(" (its header claims cluster %q: the file was altered)", labelled.GetClusterId())
		}
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_WRONG_CLUSTER,
			fmt.Sprintf("the state in the snapshot belongs to cluster %q (CA %.16s)%s but this is cluster %q (CA %.16s); restoring it would replace this cluster's tokens, nodes and models with another cluster's",
				body.GetClusterId(), body.GetCaSha256(), label, cur.GetClusterId(), cur.GetCaSha256()),
			"nothing was changed; restore a snapshot saved from this cluster, or pass --force-foreign-cluster to take the other cluster's state on purpose (this cluster keeps its identity; the restore is audited)")
	}
	if altered && !foreign {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID,
			fmt.Sprintf("%v: the header names cluster %q but the state inside belongs to this cluster %q; the file was altered",
				ErrSnapshotInvalid, labelled.GetClusterId(), body.GetClusterId()), unchanged)
	}
	if !s.IsLeader() {
		return nil, s.noLeaderError("this server is not the leader")
	}

	actor, actorName := actorFrom(ctx)
	details := snap.Counts()
	details["snapshot_cluster"] = body.GetClusterId()
	details["snapshot_index"] = strconv.FormatUint(snap.Index(), 10)
	details["force_foreign_cluster"] = strconv.FormatBool(force)
	details["foreign"] = strconv.FormatBool(foreign)
	if altered {
		details["header_cluster"] = labelled.GetClusterId()
	}
	ev := &droverv1.AuditEvent{
		Actor: actor, ActorName: actorName, Time: timestamppb.Now(), Action: state.ActionSnapshotRestore,
		Target: "cluster", Result: state.ResultOK, Details: details,
	}
	// Above the snapshot's own index and everything this server has
	// seen; Raft installs the snapshot at an index above this one too.
	index := max(snap.Index(), s.state.Index(), s.raft.LastIndex()) + 1
	out, err := snap.ForRestore(index, cur, ev)
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID, err.Error(), unchanged)
	}
	prepared, err := os.CreateTemp(s.cfg.DataDir, "restore-*.state")
	if err != nil {
		return nil, fmt.Errorf("restore: temp file: %w", err)
	}
	defer func() { _ = prepared.Close(); _ = os.Remove(prepared.Name()) }()
	size, err := out.WriteTo(prepared)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: index, Size: size}
	if err := s.raft.Restore(meta, io.NewSectionReader(prepared, 0, size), time.Duration(s.cfg.ApplyTimeout)); err != nil {
		return nil, s.raftError(err)
	}
	if foreign {
		s.logger.Warn("state replaced by another cluster's snapshot on request; this cluster keeps its identity",
			"snapshot_cluster", body.GetClusterId(), "snapshot_index", snap.Index(), "by", actor)
	} else {
		s.logger.Info("state restored from snapshot", "snapshot_index", snap.Index(), "by", actor)
	}
	return connect.NewResponse(&droverv1.RestoreSnapshotResponse{Index: s.state.Index()}), nil
}

// Leave makes this server leave the cluster, then asks its owner to stop
// it (see LeaveRequested).
func (h *clusterHandler) Leave(ctx context.Context, _ *connect.Request[droverv1.LeaveRequest]) (*connect.Response[droverv1.LeaveResponse], error) {
	if err := h.s.Leave(ctx); err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.LeaveResponse{}), nil
}
