package server

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
)

// Leave removes this server from the cluster gracefully: it hands
// leadership to another server if it leads, announces in its gossip
// metadata that it is leaving (the leader then removes it from the Raft
// configuration), waits until it is out of the configuration, leaves
// gossip, and signals LeaveRequested so its owner shuts it down.
func (s *Server) Leave(ctx context.Context) error {
	if s.IsLeader() {
		voters := 0
		if f := s.raft.GetConfiguration(); f.Error() == nil {
			for _, srv := range f.Configuration().Servers {
				if srv.Suffrage == raft.Voter {
					voters++
				}
			}
		}
		if voters <= 1 {
			return fmt.Errorf("leave: this is the only voter; stop it instead of leaving, or add servers first")
		}
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("leave: transfer leadership: %w", err)
		}
	}
	// The intent travels as a metadata update while this server is still
	// in gossip; leaving gossip first could let the leader see it go
	// before it sees why, and take the leave for a failure.
	s.leaving.Store(true)
	if err := s.members.UpdateNode(5 * time.Second); err != nil {
		return fmt.Errorf("leave: announce in gossip: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.inRaftConfig() {
		if time.Now().After(deadline) {
			return fmt.Errorf("leave: the leader has not removed this server from Raft after 30s; "+
				"check \"drover status\", or remove it with \"drover operator raft remove-peer %s\"", s.cfg.Name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := s.members.Leave(5 * time.Second); err != nil {
		return fmt.Errorf("leave: leave gossip: %w", err)
	}
	s.logger.Info("left the cluster")
	s.leaveOnce.Do(func() { close(s.leaveCh) })
	return nil
}

// LeaveRequested is closed after a successful Leave: the owner should call
// Shutdown.
func (s *Server) LeaveRequested() <-chan struct{} { return s.leaveCh }

func (s *Server) inRaftConfig() bool {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.Name {
			return true
		}
	}
	return false
}
