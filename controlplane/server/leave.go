package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Leave removes this server from the cluster gracefully: it hands
// leadership to another server if it leads, announces its departure in
// gossip (the leader then removes it from the Raft configuration), waits
// until it is out of the configuration, and signals LeaveRequested so its
// owner shuts it down.
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
	if err := s.members.Leave(5 * time.Second); err != nil {
		return fmt.Errorf("leave: announce in gossip: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if !s.inRaftConfig() {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
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

func stringsLower(s string) string { return strings.ToLower(s) }
