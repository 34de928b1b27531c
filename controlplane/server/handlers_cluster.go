package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

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
	return &droverv1.ServerInfo{
		Name:         s.cfg.Name,
		RaftAddr:     s.cfg.advertise(s.cfg.RaftAddr),
		ApiAddr:      s.cfg.advertise(s.cfg.APIAddr),
		GossipAddr:   s.cfg.advertise(s.cfg.GossipAddr),
		RaftState:    strings.ToLower(s.raft.State().String()),
		Term:         s.raft.CurrentTerm(),
		LastLogIndex: s.raft.LastIndex(),
		CommitIndex:  s.raft.CommitIndex(),
		AppliedIndex: s.raft.AppliedIndex(),
		Leader:       leader,
		Version:      Version,
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
		s.logger.Info("removed raft peer", "peer", srv.ID, "by", actorFrom(ctx))
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
	sw, err := newSnapshotWriter(out, &droverv1.SnapshotHeader{
		Format: 1, Index: s.state.Index(), Cluster: s.state.Cluster(),
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

// RestoreSnapshot receives a snapshot file, verifies all of it before
// touching anything, and hands it to Raft, which installs it on every
// server. A truncated, corrupted or foreign file changes nothing.
func (h *clusterHandler) RestoreSnapshot(ctx context.Context, stream *connect.ClientStream[droverv1.RestoreSnapshotRequest]) (*connect.Response[droverv1.RestoreSnapshotResponse], error) {
	s := h.s
	tmp, err := os.CreateTemp(s.cfg.DataDir, "restore-*.snap")
	if err != nil {
		return nil, fmt.Errorf("restore: temp file: %w", err)
	}
	defer func() { _ = tmp.Close(); _ = os.Remove(tmp.Name()) }()
	for stream.Receive() {
		if _, err := tmp.Write(stream.Msg().GetData()); err != nil {
			return nil, fmt.Errorf("restore: write temp file: %w", err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	sf, err := verifySnapshot(tmp)
	if err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID, err.Error(),
			"nothing was changed; use a complete file made by \"drover operator snapshot save\"")
	}
	cur, got := s.state.Cluster(), sf.header.GetCluster()
	if cur != nil && got.GetClusterId() != cur.GetClusterId() {
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_WRONG_CLUSTER,
			fmt.Sprintf("snapshot belongs to cluster %q but this is cluster %q", got.GetClusterId(), cur.GetClusterId()),
			"nothing was changed; restore a snapshot saved from this cluster")
	}
	if !s.IsLeader() {
		return nil, s.noLeaderError("this server is not the leader")
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: sf.header.GetIndex(), Size: sf.bodyLen}
	if err := s.raft.Restore(meta, sf.body(), time.Duration(s.cfg.ApplyTimeout)); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID, err.Error(), "")
		}
		return nil, s.raftError(err)
	}
	s.logger.Info("state restored from snapshot", "snapshot_index", sf.header.GetIndex(), "by", actorFrom(ctx))
	return connect.NewResponse(&droverv1.RestoreSnapshotResponse{Index: s.raft.AppliedIndex()}), nil
}

// Leave makes this server leave the cluster, then asks its owner to stop
// it (see LeaveRequested).
func (h *clusterHandler) Leave(ctx context.Context, _ *connect.Request[droverv1.LeaveRequest]) (*connect.Response[droverv1.LeaveResponse], error) {
	if err := h.s.Leave(ctx); err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.LeaveResponse{}), nil
}
