package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

const (
	// minHeartbeatInterval is the fastest the agent heartbeats, whatever
	// TTL a server asks for.
	minHeartbeatInterval = 200 * time.Millisecond
	// minHeartbeatTimeout is the shortest a heartbeat call may take
	// before the agent gives up on the server; see heartbeatTimeout.
	minHeartbeatTimeout = 2 * time.Second
	// sessionCallTimeout bounds a registration or renewal, and a heartbeat
	// at most. Each is answered in milliseconds when anything answers at
	// all; a server that died without a word must be given up on soon
	// enough for the next one to hear from the agent before the node's
	// TTL, or a new leader's grace, runs out.
	sessionCallTimeout = 5 * time.Second
	// defaultTTL stands in for a TTL a server did not send.
	defaultTTL = 30 * time.Second
	// minRenewInterval keeps a server that issues very short certificates
	// (or a clock far off) from turning renewal into a busy loop.
	minRenewInterval = time.Minute
)

// heartbeatInterval is how long after a heartbeat the next one is sent: a
// third of the TTL, so that two can be lost before the node is marked down,
// but never faster than minHeartbeatInterval.
func heartbeatInterval(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		ttl = defaultTTL
	}
	return max(ttl/3, minHeartbeatInterval)
}

// heartbeatTimeout bounds one heartbeat call. A server that died without
// a word (power lost, kill -9) answers nothing, and QUIC does not hear
// ICMP, so only a timeout tells the agent to try another server. It must
// be well inside the TTL: one heartbeat interval (a third of the TTL), but
// never under minHeartbeatTimeout, which a heartbeat forwarded during a
// leader election may need, nor over sessionCallTimeout, which also holds
// before the first answer has told the agent its TTL.
func heartbeatTimeout(interval time.Duration) time.Duration {
	return min(max(interval, minHeartbeatTimeout), sessionCallTimeout)
}

// renewalTime is when a certificate valid from notBefore to notAfter is
// renewed: two thirds into its lifetime, and no sooner than
// minRenewInterval after the last renewal (zero for none).
func renewalTime(notBefore, notAfter, lastRenewal time.Time) time.Time {
	at := notBefore.Add(notAfter.Sub(notBefore) * 2 / 3)
	if !lastRenewal.IsZero() {
		if floor := lastRenewal.Add(minRenewInterval); at.Before(floor) {
			at = floor
		}
	}
	return at
}

// session is the agent's connection to the control plane once it has an
// identity: one HTTP/3 transport authenticated with the node certificate,
// used for every server, with failover between them. All its methods run on
// the goroutine that called runSession.
type session struct {
	a       *Agent
	log     *slog.Logger
	tr      *http3.Transport
	clients map[string]droverv1connect.AgentServiceClient
	cert    atomic.Pointer[tls.Certificate] // read by TLS handshakes on quic-go's goroutines

	id      *identity
	inv     *droverv1.NodeInventory
	pool    *gossipPool // nil: no site gossip pool
	puller  *puller
	serving *serving
	// registered is closed once the node has registered in this session:
	// its assignments are watched from then on.
	registered     chan struct{}
	registeredOnce sync.Once
	needRegister   bool
	interval       time.Duration // between heartbeats
	nextHeartbeat  time.Time
	nextProbe      time.Time
	renewAt        time.Time
	lastRenewal    time.Time

	// beats carries heartbeats to the server serve talks to.
	beats *heartbeatStream
}

// runSession keeps the node registered and heartbeating until ctx ends
// (it then returns nil) or a server refuses the node for good. It starts
// with the server at preferred when that is one it knows.
func (a *Agent) runSession(ctx context.Context, id *identity, inv *droverv1.NodeInventory, preferred string, store *fetch.Store, sv *serving) error {
	now := a.clk.Now()
	s := &session{
		a:            a,
		log:          a.log.With("node", id.NodeID),
		clients:      map[string]droverv1connect.AgentServiceClient{},
		id:           id,
		inv:          inv,
		needRegister: true,
		registered:   make(chan struct{}),
		interval:     heartbeatInterval(0),
		nextProbe:    now.Add(a.cfg.ProbeInterval),
		renewAt:      renewalTime(id.Cert.Leaf.NotBefore, id.Cert.Leaf.NotAfter, time.Time{}),
	}
	cert := id.Cert
	s.cert.Store(&cert)
	s.tr = a.newTransport(pinnedTLS(id.CA, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return s.cert.Load(), nil
	}))
	defer s.tr.Close()
	s.serving = sv
	// Pulls have a transport of their own: the session closes its idle
	// connections whenever a call fails, and quic-go counts a request
	// whose body is still streaming in as idle, so a chunk being read
	// would be cut off by a heartbeat that failed for an unrelated reason
	// (an election, say).
	pullTr := a.newTransport(pinnedTLS(id.CA, func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return s.cert.Load(), nil
	}))
	defer pullTr.Close()
	// Deferred after the transport's Close, so it runs before: the pull
	// uses the transport until it has stopped.
	s.puller = newPuller(a, s.log, store, pullTr)
	s.puller.setServers(s.servers())
	defer s.puller.close()
	// The reconciler pulls through this session's puller and follows the
	// node's assignments on its servers while the session lasts; the
	// deferred stop runs before the puller closes.
	sv.pull.Store(s.puller)
	watchCtx, stopWatch := context.WithCancel(ctx)
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-watchCtx.Done():
		case <-s.registered:
			sv.watchAssignments(watchCtx, s.puller)
		}
	})
	watch.Go(func() {
		select {
		case <-watchCtx.Done():
		case <-s.registered:
			sv.watchLogRequests(watchCtx, s.puller)
		}
	})
	defer func() {
		stopWatch()
		watch.Wait()
		sv.pull.CompareAndSwap(s.puller, nil)
	}()
	// The pool runs before the first registration, which tells the
	// control plane where it listens.
	if err := s.startPool(); err != nil {
		return err
	}
	defer s.closePool()
	site, err := a.startPeerNode(peerNodeConfig{
		ID: id.NodeID, CA: id.CA, Certificate: s.cert.Load,
		Cache: store.Cache(), Manifests: s.puller, Upstream: s.puller,
	})
	if err != nil {
		return err
	}
	if site != nil {
		s.puller.setSite(site)
		// Before the pool closes: the pull stops using the site, the
		// site hears that this node serves no more, then in-flight
		// uploads finish.
		defer func() {
			s.puller.close()
			_ = a.AnnouncePeerAddr("")
			_ = site.Close()
		}()
	}
	a.update(func(st *Status) {
		st.State = StateConnecting
		st.NodeID, st.Name = id.NodeID, id.Name
		st.Servers = slices.Clone(s.servers())
		st.CertificateExpiry = id.Cert.Leaf.NotAfter
	})

	servers := s.servers()
	if len(servers) == 0 {
		return withHint(fmt.Errorf("node %s: no server to connect to: the identity lists none and none was given: %w", id.NodeID, ErrNotEnrolled),
			"name a server with --server HOST:PORT")
	}
	idx := max(slices.Index(servers, preferred), 0)
	failed, round := 0, 0
	for {
		if now := a.clk.Now(); !now.Before(s.id.Cert.Leaf.NotAfter) {
			return withHint(fmt.Errorf("node %s: certificate expired at %s before a server renewed it: %w",
				s.id.NodeID, s.id.Cert.Leaf.NotAfter.UTC().Format(time.RFC3339), ErrCertificateExpired),
				"remove %s and enroll this machine again with a new join token", identityPath(a.cfg.DataDir))
		}
		addr := servers[idx]
		a.update(func(st *Status) { st.Server = addr })
		progressed, err := s.serve(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRevoked) || errors.Is(err, ErrRefused) {
			return err
		}
		a.noteFailure(ctx, "session", addr, err)
		a.update(func(st *Status) { st.State = StateConnecting })
		// Whatever was wrong with the connection, the next attempt dials
		// afresh.
		s.tr.CloseIdleConnections()
		if progressed {
			failed, round = 0, 0
		}
		failed++
		servers = s.servers()
		idx = (slices.Index(servers, addr) + 1) % len(servers)
		if failed >= len(servers) {
			// Every server failed in turn: wait before the next round.
			if err := sleep(ctx, a.clk, backoff(round, a.randN)); err != nil {
				return nil
			}
			round++
			failed = 0
		}
	}
}

// servers is every server the session knows: the cluster's list, then any
// configured one the cluster did not mention.
func (s *session) servers() []string {
	return normalizeServers(append(slices.Clone(s.id.Servers), s.a.cfg.Servers...))
}

func (s *session) client(addr string) droverv1connect.AgentServiceClient {
	c, ok := s.clients[addr]
	if !ok {
		c = newClient(s.tr, addr)
		s.clients[addr] = c
	}
	return c
}

// serve talks to the server at addr until a call fails or ctx ends. It
// reports whether any call succeeded, so that a server that answers at
// first and then fails is not counted like one that never answered.
func (s *session) serve(ctx context.Context, addr string) (progressed bool, err error) {
	c := s.client(addr)
	clk := s.a.clk
	shipping := false
	defer func() {
		if shipping {
			s.serving.shipTo(nil, "")
		}
	}()
	s.beats = newHeartbeatStream(ctx, c, s.log.With("server", addr))
	defer s.beats.close()
	for {
		if now := clk.Now(); !now.Before(s.nextProbe) {
			s.reprobe(ctx)
			s.nextProbe = now.Add(s.a.cfg.ProbeInterval)
		}
		if s.needRegister {
			if err := s.register(ctx, c, addr); err != nil {
				return progressed, err
			}
			progressed = true
		}
		if !clk.Now().Before(s.renewAt) {
			if err := s.renew(ctx, c, addr); err != nil {
				return progressed, err
			}
			progressed = true
		}
		if !clk.Now().Before(s.nextHeartbeat) {
			if err := s.heartbeat(ctx, c, addr); err != nil {
				return progressed, err
			}
			progressed = true
			if !shipping {
				// Telemetry goes to the server that answers heartbeats,
				// on the same connection.
				s.serving.shipTo(s.tr, addr)
				shipping = true
			}
			s.nextHeartbeat = clk.Now().Add(s.interval)
			if s.needRegister {
				continue // the server asked for the inventory again
			}
		}
		next := s.nextHeartbeat
		for _, t := range []time.Time{s.renewAt, s.nextProbe} {
			if t.Before(next) {
				next = t
			}
		}
		if err := sleep(ctx, clk, next.Sub(clk.Now())); err != nil {
			return progressed, err
		}
	}
}

// startPool starts the node's site gossip pool, unless it has one, has no
// site, or the pool is turned off. A pool that cannot start (its address
// taken, say) stops the agent: the operator asked for it.
func (s *session) startPool() error {
	cfg, id := s.a.cfg, s.id
	switch {
	case s.pool != nil:
		return nil
	case cfg.GossipAddr == "":
		s.log.Info("site gossip pool off (--gossip-addr off)")
		return nil
	case id.Site == "":
		s.log.Info("this node has no site, so it joins no site gossip pool")
		return nil
	case len(id.GossipKey) != 32:
		s.log.Warn("the identity holds no site gossip key, so this node joins no site gossip pool; enroll the machine again to get one",
			"site", id.Site)
		return nil
	}
	p, err := newGossipPool(poolConfig{
		Name:      id.NodeID,
		Site:      id.Site,
		Key:       id.GossipKey,
		Bind:      cfg.GossipAddr,
		Advertise: cfg.GossipAdvertise,
		Logger:    s.log,
	})
	if err != nil {
		return withHint(fmt.Errorf("node %s: %w", id.NodeID, err),
			"give the site gossip pool a free address with --gossip-addr IP:PORT (and --gossip-advertise IP:PORT if its peers must dial another), or turn it off with --gossip-addr off")
	}
	s.pool = p
	s.a.pool.Store(p)
	s.a.update(func(st *Status) { st.GossipAddr = p.Addr() })
	return nil
}

// closePool leaves the site gossip pool, as a node that stops on purpose
// does, and stops it.
func (s *session) closePool() {
	if s.pool == nil {
		return
	}
	s.a.pool.Store(nil)
	_ = s.pool.Close(true)
	s.pool = nil
	s.a.update(func(st *Status) { st.GossipAddr = "" })
}

// register sends the inventory and the pool's address, and has the pool
// join the site peers the answer names.
func (s *session) register(ctx context.Context, c droverv1connect.AgentServiceClient, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, sessionCallTimeout)
	defer cancel()
	req := &droverv1.RegisterRequest{Inventory: s.inv, AgentVersion: Version}
	if s.pool != nil {
		req.GossipAddr = s.pool.Addr()
	}
	resp, err := c.Register(ctx, connect.NewRequest(req))
	if err != nil {
		return s.callError("register", addr, err)
	}
	s.needRegister = false
	s.registeredOnce.Do(func() { close(s.registered) })
	node := resp.Msg.GetNode()
	s.log.Info("registered", "server", addr, "name", node.GetName(), "status", node.GetStatus().String(),
		"site_peers", len(resp.Msg.GetSitePeers()))
	if site := node.GetSite(); site != "" && s.id.Site == "" {
		s.learnSite(site)
	}
	if s.pool != nil {
		s.pool.JoinAsync(resp.Msg.GetSitePeers())
	}
	s.a.update(func(st *Status) {
		st.Registrations++
		if n := node.GetName(); n != "" {
			st.Name = n
		}
	})
	return nil
}

// learnSite records the site of a node whose identity was saved before
// identities held one, and starts its gossip pool; registering again tells
// the control plane where the pool listens.
func (s *session) learnSite(site string) {
	id := s.id.clone()
	id.Site = site
	s.id = id
	if err := id.save(s.a.cfg.DataDir); err != nil {
		s.log.Error("the node's site could not be saved in its identity; it is used until the agent restarts", "site", site, "err", err)
	}
	if s.a.cfg.GossipAddr == "" {
		return // off, as startPool said already
	}
	if err := s.startPool(); err != nil {
		s.log.Error("the site gossip pool could not start; carrying on without it", "err", err, "hint", Hint(err))
		return
	}
	if s.pool != nil {
		s.needRegister = true
	}
}

// heartbeat sends one heartbeat, with what the gossip pool sees, and takes
// the TTL, the server list, site peers to join and any request to register
// again from the answer.
func (s *session) heartbeat(ctx context.Context, c droverv1connect.AgentServiceClient, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, heartbeatTimeout(s.interval))
	defer cancel()
	req := &droverv1.HeartbeatRequest{Pull: s.puller.status(), Instances: s.serving.rec.Status(), Conditions: s.a.Conditions()}
	if s.pool != nil {
		req.Suspects = s.pool.Suspects()
		req.GossipMembers = uint32(s.pool.NumMembers())
	}
	m, err := s.beats.beat(ctx, req)
	if err != nil {
		return s.callError("heartbeat", addr, err)
	}
	ttl := m.GetTtl().AsDuration() // 0 when absent
	if interval := heartbeatInterval(ttl); interval != s.interval {
		s.log.Debug("heartbeat interval changed", "ttl", ttl, "interval", interval)
		s.interval = interval
	}
	if m.GetReregister() {
		s.log.Info("the control plane asked for the inventory again", "server", addr)
		s.needRegister = true
	}
	if s.pool != nil {
		// A failed member stays a suspect as long as the leader keeps
		// a suspicion without a new report: one TTL.
		s.pool.SetSuspectWindow(cmp.Or(ttl, defaultTTL))
		if peers := m.GetSitePeers(); len(peers) > 0 {
			s.log.Debug("the control plane sent site peers to join", "peers", peers)
			s.pool.JoinAsync(peers)
		}
	}
	if servers := normalizeServers(m.GetServers()); len(servers) > 0 && !slices.Equal(servers, s.id.Servers) {
		s.log.Info("server list changed", "servers", servers)
		id := s.id.clone()
		id.Servers = servers
		s.id = id
		if err := id.save(s.a.cfg.DataDir); err != nil {
			s.log.Error("the new server list could not be saved; it is used until the agent restarts", "err", err)
		}
	}
	s.puller.setServers(withFirst(addr, s.servers()))
	s.serving.follow(addr)
	s.puller.handle(m.GetPull())
	now := s.a.clk.Now()
	s.a.update(func(st *Status) {
		st.State = StateReady
		st.LastHeartbeat = now
		st.HeartbeatTTL = ttl
		st.Heartbeats++
		st.Servers = s.servers()
		st.LastError = nil
	})
	return nil
}

// withFirst returns all with addr, the server that answers, first.
func withFirst(addr string, all []string) []string {
	out := append(make([]string, 0, len(all)+1), addr)
	for _, a := range all {
		if a != addr {
			out = append(out, a)
		}
	}
	return out
}

// renew trades a fresh key's CSR for a new certificate and installs both:
// in the identity file first, then for new connections.
func (s *session) renew(ctx context.Context, c droverv1connect.AgentServiceClient, addr string) error {
	key, csr, err := newNodeKey(s.id.Name)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, sessionCallTimeout)
	defer cancel()
	resp, err := c.RenewCertificate(ctx, connect.NewRequest(&droverv1.RenewCertificateRequest{CsrDer: csr}))
	if err != nil {
		return s.callError("renew certificate", addr, err)
	}
	leaf, err := pki.ParseCertPEM(resp.Msg.GetCertificatePem())
	if err == nil {
		err = checkNodeCert(leaf, s.id.CA, &key.PublicKey, s.id.NodeID)
	}
	if err != nil {
		// Another server may do better; the old certificate still works.
		return fmt.Errorf("renew certificate with %s: %v: %w", addr, err, ErrBadResponse)
	}
	id := s.id.clone()
	id.Cert = tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	if err := id.save(s.a.cfg.DataDir); err != nil {
		// The new certificate is good; use it, and say that a restart
		// falls back to the old one.
		s.log.Error("the renewed certificate could not be saved; a restart uses the old one", "err", err)
	}
	s.id = id
	s.cert.Store(&id.Cert)
	// The connection in use was authenticated with the old certificate;
	// closing it makes the next call present the new one. The heartbeat
	// stream would keep it open.
	s.beats.close()
	s.tr.CloseIdleConnections()
	now := s.a.clk.Now()
	s.lastRenewal = now
	s.renewAt = renewalTime(leaf.NotBefore, leaf.NotAfter, now)
	s.log.Info("certificate renewed", "server", addr, "expires", leaf.NotAfter, "next_renewal", s.renewAt)
	s.a.update(func(st *Status) {
		st.CertificateExpiry = leaf.NotAfter
		st.Renewals++
	})
	return nil
}

// reprobe probes the hardware again and registers again if its static
// facts changed. A failed probe keeps the last inventory.
func (s *session) reprobe(ctx context.Context) {
	inv, err := s.a.probe(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("hardware probe failed; keeping the last inventory", "err", err)
		}
		return
	}
	p := inventoryProto(inv)
	if !sameStaticFacts(p, s.inv) {
		s.log.Info("hardware changed; registering again", "hardware", inv.Summary())
		s.needRegister = true
	}
	s.inv = p
}

// callError wraps a failed call, turning a refusal of the node into a
// permanent error.
func (s *session) callError(op, addr string, err error) error {
	if refusal := sessionRefusal(op, addr, s.id.NodeID, identityPath(s.a.cfg.DataDir), err); refusal != nil {
		return refusal
	}
	return fmt.Errorf("%s with %s: %w", op, addr, err)
}
