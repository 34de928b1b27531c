package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/memberlist"

	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// memberStatus is a server's state as gossip sees it.
type memberStatus string

const (
	memberAlive  memberStatus = "alive"
	memberFailed memberStatus = "failed"
	memberLeft   memberStatus = "left"
)

// serverMeta is what a server advertises about itself in gossip.
type serverMeta struct {
	Name            string       `json:"name"`
	RaftAddr        string       `json:"raft"`
	APIAddr         string       `json:"api"`
	GossipAddr      string       `json:"-"`
	BootstrapExpect int          `json:"expect"`
	Version         string       `json:"version"`
	Status          memberStatus `json:"-"`
	// Leaving is set by a server that leaves gracefully, just before it
	// leaves gossip: memberlist's events do not tell a leave from a
	// failure, and only a leave makes the leader remove it from Raft.
	Leaving bool `json:"leaving,omitempty"`
}

func (s *Server) selfMeta() serverMeta {
	return serverMeta{
		Name:            s.cfg.Name,
		RaftAddr:        s.cfg.advertise(s.cfg.RaftAddr),
		APIAddr:         s.cfg.advertise(s.cfg.APIAddr),
		GossipAddr:      s.cfg.advertise(s.cfg.GossipAddr),
		BootstrapExpect: s.cfg.BootstrapExpect,
		Version:         Version,
		Leaving:         s.leaving.Load(),
		Status:          memberAlive,
	}
}

// setupGossip starts memberlist, encrypted with a key derived from the
// cluster CA (every server holds the CA, so no extra secret to configure),
// and joins the configured peers.
func (s *Server) setupGossip() error {
	host, portStr, err := net.SplitHostPort(s.cfg.GossipAddr)
	if err != nil {
		return fmt.Errorf("gossip address %q: %w", s.cfg.GossipAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return fmt.Errorf("gossip port %q: %w", portStr, err)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = s.cfg.Name
	mc.BindAddr = host
	mc.BindPort = port
	if s.cfg.AdvertiseHost != "" {
		mc.AdvertiseAddr = s.cfg.AdvertiseHost
		mc.AdvertisePort = port
	}
	mc.SecretKey = pki.DeriveKey(s.ca, "drover gossip v1", 32)
	mc.Delegate = &gossipDelegate{s: s}
	mc.Events = &memberlist.ChannelEventDelegate{Ch: s.events}
	mc.Logger = logging.GossipLogAdapter(s.logger.With("component", "gossip"), -4, s.metrics.gossipRefused.Inc)
	// Servers on one LAN: notice a dead peer in a couple of seconds.
	mc.ProbeInterval = 500 * time.Millisecond
	mc.ProbeTimeout = 250 * time.Millisecond
	mc.GossipInterval = 100 * time.Millisecond
	mc.SuspicionMult = 3
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", s.cfg.GossipAddr, err)
	}
	s.members = ml
	if port == 0 {
		s.cfg.GossipAddr = net.JoinHostPort(host, strconv.Itoa(int(ml.LocalNode().Port)))
	}
	if targets := s.joinTargets(); len(targets) > 0 {
		s.wg.Add(1)
		go s.joinLoop(targets)
	}
	return nil
}

// knownPeersFile remembers the gossip addresses of the other servers, so a
// restarted server finds the cluster again even when it was started
// without --join (the first server of a cluster usually is).
func (c *Config) knownPeersFile() string { return filepath.Join(c.DataDir, "known-servers.json") }

// joinTargets is --join plus every server seen before a restart.
func (s *Server) joinTargets() []string {
	targets := slices.Clone(s.cfg.Join)
	if b, err := os.ReadFile(s.cfg.knownPeersFile()); err == nil {
		var known []string
		if err := json.Unmarshal(b, &known); err != nil {
			s.logger.Warn("ignoring unreadable known-servers file", "path", s.cfg.knownPeersFile(), "err", err)
		}
		for _, a := range known {
			if !slices.Contains(targets, a) && a != s.cfg.advertise(s.cfg.GossipAddr) {
				targets = append(targets, a)
			}
		}
	}
	return targets
}

// saveKnownPeers records the gossip addresses of live servers. Losing the
// file only costs an automatic rejoin, so errors are logged, not fatal.
func (s *Server) saveKnownPeers() {
	var addrs []string
	for _, m := range s.gossipServers() {
		if m.Name != s.cfg.Name && m.GossipAddr != "" && m.Status != memberLeft {
			addrs = append(addrs, m.GossipAddr)
		}
	}
	b, _ := json.Marshal(addrs)
	tmp := s.cfg.knownPeersFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, s.cfg.knownPeersFile())
		if err != nil {
			s.logger.Warn("save known servers; a restart may not find them", "err", err)
		}
	}
}

// joinLoop contacts the configured peers until one answers, so servers can
// start in any order.
func (s *Server) joinLoop(targets []string) {
	defer s.wg.Done()
	backoff := 200 * time.Millisecond
	for {
		n, err := s.members.Join(targets)
		if n > 0 {
			s.logger.Info("joined gossip", "contacted", n)
			return
		}
		s.logger.Info("waiting for other servers to answer", "join", targets, "err", err)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// membershipLoop tracks gossip events: it keeps the server table current,
// bootstraps Raft once enough servers are present, and nudges the leader
// to reconcile Raft membership.
func (s *Server) membershipLoop() {
	defer s.wg.Done()
	bootstrapped := s.cfg.BootstrapExpect <= 1
	if !bootstrapped {
		if idx := s.raft.LastIndex(); idx > 0 {
			bootstrapped = true
		}
	}
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case ev := <-s.events:
			s.recordEvent(ev)
			if ev.Event == memberlist.NodeJoin {
				s.saveKnownPeers()
				// A server that joined may hold chunks this one lacks,
				// or be the first peer a restarted server finds.
				s.kickFill()
			}
			select {
			case s.reconcileCh <- struct{}{}:
			default:
			}
		case <-retry.C:
		}
		if !bootstrapped {
			bootstrapped = s.maybeBootstrap()
		}
	}
}

func (s *Server) recordEvent(ev memberlist.NodeEvent) {
	var meta serverMeta
	if err := json.Unmarshal(ev.Node.Meta, &meta); err != nil || meta.Name == "" {
		return // not a Drover server
	}
	meta.GossipAddr = ev.Node.Address()
	switch ev.Event {
	case memberlist.NodeJoin, memberlist.NodeUpdate:
		meta.Status = memberAlive
	case memberlist.NodeLeave:
		meta.Status = memberFailed
	}
	// ev.Node.State is not maintained by memberlist (it stays "alive"), so
	// whether a server left is read from its own announcement.
	if meta.Leaving {
		meta.Status = memberLeft
	}
	s.mu.Lock()
	s.serverMeta[meta.Name] = meta
	s.mu.Unlock()
	s.logger.Debug("gossip event", "server", meta.Name, "status", meta.Status)
}

// gossipServers lists every server gossip has seen, with its status,
// sorted by name. (memberlist does not report suspicion through its
// public API, so a suspect server reads as alive until it is declared
// failed.)
func (s *Server) gossipServers() []serverMeta {
	s.mu.Lock()
	out := make([]serverMeta, 0, len(s.serverMeta)+1)
	for _, m := range s.serverMeta {
		out = append(out, m)
	}
	s.mu.Unlock()
	if !slices.ContainsFunc(out, func(m serverMeta) bool { return m.Name == s.cfg.Name }) {
		out = append(out, s.selfMeta())
	}
	slices.SortFunc(out, func(a, b serverMeta) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// serverByName returns the gossip record for a server.
func (s *Server) serverByName(name string) (serverMeta, bool) {
	if name == s.cfg.Name {
		return s.selfMeta(), true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.serverMeta[name]
	return m, ok
}

// maybeBootstrap bootstraps Raft once BootstrapExpect servers that all
// expect the same count are alive and none of them already belongs to a
// cluster. Every server computes the same voter set, so concurrent
// bootstraps agree.
func (s *Server) maybeBootstrap() bool {
	var candidates []serverMeta
	for _, m := range s.gossipServers() {
		if m.Status != memberAlive {
			continue
		}
		if m.BootstrapExpect != 0 && m.BootstrapExpect != s.cfg.BootstrapExpect {
			s.logger.Error("servers disagree on bootstrap-expect; not bootstrapping",
				"server", m.Name, "theirs", m.BootstrapExpect, "ours", s.cfg.BootstrapExpect)
			return false
		}
		candidates = append(candidates, m)
	}
	if len(candidates) < s.cfg.BootstrapExpect {
		return false
	}
	// A peer that already has Raft state means a cluster exists: join it
	// through the leader's reconciliation instead of starting another.
	var wg sync.WaitGroup
	existing := make([]bool, len(candidates))
	for i, m := range candidates {
		if m.Name == s.cfg.Name {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := s.waitCtx(s.ctx, 3*time.Second)
			defer cancel()
			info, err := s.peerInfo(ctx, m.APIAddr)
			existing[i] = err == nil && (info.LastLogIndex > 0 || info.Leader != "")
		}()
	}
	wg.Wait()
	if slices.Contains(existing, true) || s.raft.LastIndex() > 0 {
		s.logger.Info("found an existing cluster; waiting to be added by its leader")
		return true
	}
	if err := s.bootstrapRaft(candidates); err != nil {
		s.logger.Error("bootstrap", "err", err)
		return false
	}
	return true
}

// peerInfo asks another server about itself over the API, authenticated
// by this server's certificate.
func (s *Server) peerInfo(ctx context.Context, apiAddr string) (*droverv1.ServerInfo, error) {
	res, err := s.forwarder.clusterClient(apiAddr).GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetInfo(), nil
}

// gossipDelegate publishes this server's metadata in gossip.
type gossipDelegate struct{ s *Server }

func (d *gossipDelegate) NodeMeta(limit int) []byte {
	b, _ := json.Marshal(d.s.selfMeta())
	if len(b) > limit {
		return nil
	}
	return b
}
func (d *gossipDelegate) NotifyMsg([]byte)                {}
func (d *gossipDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(bool) []byte          { return nil }
func (d *gossipDelegate) MergeRemoteState([]byte, bool)   {}
