package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// reconcileInterval is how often the leader compares gossip membership
// with the Raft configuration, besides reacting to gossip events.
const reconcileInterval = 5 * time.Second

// monitorLeadership starts the leader's duties when this server wins an
// election and stops them when it loses leadership. It runs for the life of
// the server.
func (s *Server) monitorLeadership() {
	defer s.wg.Done()
	var leading *leaderDuty
	defer func() { leading.stop(s) }()
	for {
		select {
		case <-s.ctx.Done():
			return
		case isLeader := <-s.leaderNotify:
			switch {
			case isLeader && leading == nil:
				leading = s.startLeading()
			case !isLeader && leading != nil:
				leading.stop(s)
				leading = nil
			}
		}
	}
}

// leaderDuty is one term's worth of leader work, owned by
// monitorLeadership.
type leaderDuty struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *Server) startLeading() *leaderDuty {
	ready := make(chan struct{})
	s.mu.Lock()
	s.readyForReads = ready
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(s.ctx)
	d := &leaderDuty{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		s.leaderLoop(ctx, ready)
	}()
	return d
}

// stop ends the leader work and waits for it; nil is a no-op.
func (d *leaderDuty) stop(s *Server) {
	if d == nil {
		return
	}
	d.cancel()
	<-d.done
	s.mu.Lock()
	s.readyForReads = nil
	s.mu.Unlock()
}

// leaderLoop runs while this server leads: it first makes sure every entry
// from earlier terms is applied (so consistent reads are safe), initialises
// the cluster's identity on first election, then keeps the Raft
// configuration in step with gossip membership, and runs the heartbeat
// tracker and the rollout controller, which it drops when leadership ends.
func (s *Server) leaderLoop(ctx context.Context, ready chan struct{}) {
	s.logger.Info("became leader; establishing leadership")
	for {
		if err := s.raft.Barrier(time.Duration(s.cfg.ApplyTimeout)).Error(); err != nil {
			s.logger.Warn("leader barrier failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
				continue
			}
		}
		break
	}
	close(ready)
	if s.state.Cluster() == nil {
		if err := s.initCluster(ctx); err != nil {
			s.logger.Error("initialise cluster identity", "err", err)
		}
	}
	s.logger.Info("leadership established", "index", s.raft.AppliedIndex())

	hb := newHeartbeatTracker(s)
	s.startHeartbeats(hb)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		hb.run(ctx)
	}()
	defer func() {
		s.mu.Lock()
		s.heartbeats = nil
		s.mu.Unlock()
		<-hbDone // ctx has ended: leaderLoop returns only then
	}()

	rl, err := newRolloutLoop(s, hb)
	if err != nil {
		// The configuration was validated at start; say so loudly if not.
		s.logger.Error("rollout controller not started", "err", err)
	} else {
		s.mu.Lock()
		s.rollouts = rl
		s.mu.Unlock()
		rlDone := make(chan struct{})
		go func() {
			defer close(rlDone)
			rl.run(ctx)
		}()
		defer func() {
			s.mu.Lock()
			s.rollouts = nil
			s.mu.Unlock()
			<-rlDone
		}()
	}

	ml := newMonitorLoop(s)
	mlDone := make(chan struct{})
	go func() {
		defer close(mlDone)
		ml.run(ctx)
	}()
	defer func() { <-mlDone }()

	ticker := time.NewTicker(reconcileInterval)
	defer ticker.Stop()
	for {
		s.reconcileMembers()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-s.reconcileCh:
		}
	}
}

// startHeartbeats installs hb as the leader's tracker, and only then has
// it track the nodes in the state. In that order no node falls between
// the two: a registration whose handler found no tracker was applied
// before the tracker was installed, so the state that trackState reads
// holds it; one whose handler finds the tracker reaches it directly. Read
// the state first and install after, and a node that registers in
// between is in neither (a new node is never tracked, a DOWN one that
// registers READY again keeps the DOWN it was read with), so if its
// agent stops it stays READY for the whole term.
func (s *Server) startHeartbeats(hb *heartbeatTracker) {
	s.mu.Lock()
	s.heartbeats = hb
	s.mu.Unlock()
	hb.trackState()
}

// rolloutLoop returns the leader's rollout loop, or nil when this server
// is not an established leader.
func (s *Server) rolloutLoop() *rolloutLoop {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rollouts
}

// kickRollouts has the leader's rollout loop step now, if it runs.
func (s *Server) kickRollouts() {
	if rl := s.rolloutLoop(); rl != nil {
		rl.kick()
	}
}

// LeaderGraceFrom is when this server, as leader, gave every node it
// found in the state a fresh TTL plus the leader grace, HeartbeatLeaderGrace
// (the old leader's deadlines died with it); zero when it does not lead.
// No node of that state is marked down for a silence before then, which is
// what a scenario measures a detection delay across a leader change from.
func (s *Server) LeaderGraceFrom() time.Time {
	s.mu.Lock()
	hb := s.heartbeats
	s.mu.Unlock()
	if hb == nil {
		return time.Time{}
	}
	hb.mu.Lock()
	defer hb.mu.Unlock()
	return hb.graceFrom
}

// initCluster writes the cluster's identity: a random id and the CA's
// fingerprint. Snapshots carry it so a restore into the wrong cluster is
// caught.
func (s *Server) initCluster(ctx context.Context) error {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return fmt.Errorf("generate cluster id: %w", err)
	}
	cmd := &droverv1.InitClusterCommand{
		Meta:      &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: "server/" + s.cfg.Name},
		ClusterId: hex.EncodeToString(id[:]),
		CaSha256:  s.ca.Fingerprint(),
	}
	_, err := s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, cmd)
	return err
}

// reconcileMembers adds servers that gossip knows but Raft does not, and
// removes servers that left gossip gracefully. Failed servers stay voters:
// only an operator removes them (drover operator raft remove-peer), because
// a crashed server usually comes back.
func (s *Server) reconcileMembers() {
	future := s.raft.GetConfiguration()
	if err := future.Error(); err != nil {
		s.logger.Warn("read raft configuration", "err", err)
		return
	}
	inRaft := make(map[raft.ServerID]raft.Server)
	for _, srv := range future.Configuration().Servers {
		inRaft[srv.ID] = srv
	}
	for _, m := range s.gossipServers() {
		id := raft.ServerID(m.Name)
		switch m.Status {
		case memberAlive:
			srv, ok := inRaft[id]
			if ok && string(srv.Address) == m.RaftAddr {
				continue
			}
			s.logger.Info("adding server to raft", "server", m.Name, "raft", m.RaftAddr)
			if err := s.raft.AddVoter(id, raft.ServerAddress(m.RaftAddr), 0, 10*time.Second).Error(); err != nil {
				s.logger.Warn("add voter", "server", m.Name, "err", err)
			}
		case memberLeft:
			if _, ok := inRaft[id]; !ok || m.Name == s.cfg.Name {
				continue
			}
			s.logger.Info("removing server that left", "server", m.Name)
			if err := s.raft.RemoveServer(id, 0, 10*time.Second).Error(); err != nil {
				s.logger.Warn("remove server", "server", m.Name, "err", err)
			}
		}
	}
}
