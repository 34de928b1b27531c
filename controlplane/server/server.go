// Package server runs one Drover control-plane server: the Raft node and its
// Pebble stores, server discovery over gossip, the API on HTTPS and HTTP/3,
// and the leader's duties.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/raftstore"
	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/controlplane/telemetry"
	"github.com/droverhq/drover/internal/buildinfo"
	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/pki"
)

// Version is the server's software version, reported in status: the
// build's (see internal/buildinfo), read once at start.
var Version = buildinfo.Version()

// Server is one control-plane server. Create it with New, start it with
// Start, stop it with Shutdown (graceful) or Kill (abrupt, for fault
// injection). All methods are safe for concurrent use.
type Server struct {
	cfg    Config
	logger *slog.Logger

	ca         *pki.CA
	serverCert tls.Certificate
	peerTLS    *tls.Config // server-to-server: Raft and forwarding

	state *state.Store
	fsm   *fsm.FSM
	logs  *raftstore.Store
	raft  *raft.Raft
	// replayTo is the last index of the log this server held when it
	// started: until it has applied that far (or as far as the cluster
	// committed), its state is older than what it once served.
	replayTo uint64
	trans    *raft.NetworkTransport

	chunks     *blobstore.Store    // the chunks of model versions
	telemetry  *telemetry.Store    // agents' telemetry windows this server holds
	pushes     *pushRegistry       // pushes started on this server
	signingKey artifact.SigningKey // the cluster's manifest signing key
	fillKick   chan struct{}       // asks the filler for a round soon (kickFill)

	members *memberlist.Memberlist
	events  chan memberlist.NodeEvent

	metrics  *metrics
	registry *prometheus.Registry
	// rejectLog limits the log lines about connections refused before
	// their TLS handshake completed to one a minute per host.
	rejectLog *logging.Limiter

	apiListener net.Listener
	apiPacket   net.PacketConn
	httpServer  *http.Server
	h3Server    *http3.Server
	forwarder   *forwarder
	tokenCache  tokenCache      // operator tokens resolved since the last ACL change
	denials     *denialRecorder // refused write calls on their way to the audit log
	logReqs     *logHub         // operators' log requests waiting for agents (leader)

	leaderNotify <-chan bool   // Raft's leadership transitions
	reconcileCh  chan struct{} // nudges the leader to reconcile members
	leaveCh      chan struct{} // closed after a graceful Leave
	leaveOnce    sync.Once
	leaving      atomic.Bool // set by Leave; advertised in gossip metadata

	ctx      context.Context // ends when the server stops
	cancel   context.CancelFunc
	wg       sync.WaitGroup // every goroutine the server starts
	stopOnce sync.Once
	stopped  chan struct{}

	mu            sync.Mutex            // guards the fields below
	serverMeta    map[string]serverMeta // gossip view of servers, by name
	readyForReads chan struct{}         // closed once a new leader's barrier is done; nil when not leader
	heartbeats    *heartbeatTracker     // the leader's heartbeat deadlines; nil when not leading
	rollouts      *rolloutLoop          // the leader's rollout controller; nil when not leading
}

// New validates cfg and prepares a server; nothing listens until Start.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("server", cfg.Name)
	if cfg.Rebuild {
		// A rebuilt server joins the cluster that has its data; it must
		// never start a new one.
		cfg.BootstrapExpect = 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:         cfg,
		logger:      logger,
		serverMeta:  make(map[string]serverMeta),
		events:      make(chan memberlist.NodeEvent, 256),
		ctx:         ctx,
		cancel:      cancel,
		stopped:     make(chan struct{}),
		reconcileCh: make(chan struct{}, 1),
		fillKick:    make(chan struct{}, 1),
		leaveCh:     make(chan struct{}),
		rejectLog:   logging.NewLimiter(rejectLogInterval, rejectLogHosts, time.Now),
	}
	return s, nil
}

// Start opens the data dir, starts Raft, gossip and the API, joins the
// servers in Config.Join and returns. On error everything it started is
// stopped again.
func (s *Server) Start() (err error) {
	defer func() {
		if err != nil {
			s.Kill()
		}
	}()
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := claimDataDir(s.cfg.DataDir, s.cfg.Name); err != nil {
		return err
	}
	if err := s.setupTLS(); err != nil {
		return err
	}
	s.registry = prometheus.NewRegistry()
	s.metrics = newMetrics(s.registry, s)
	s.denials = newDenialRecorder(s)
	s.logReqs = newLogHub()
	if err := s.setupChunks(); err != nil {
		return err
	}
	if err := s.setupTelemetry(); err != nil {
		return err
	}
	if err := s.setupRaft(); err != nil {
		return err
	}
	if err := s.setupAPI(); err != nil {
		return err
	}
	if err := s.setupGossip(); err != nil {
		return err
	}
	s.wg.Add(3)
	go s.monitorLeadership()
	go s.membershipLoop()
	go func() {
		defer s.wg.Done()
		s.denials.run(s.ctx)
	}()
	if !s.cfg.NoChunkFill {
		// The filler reads the state and finds its peers in gossip, so
		// it starts once both are up.
		s.wg.Add(2)
		go func() {
			defer s.wg.Done()
			s.chunkFillLoop(s.ctx)
		}()
		go func() {
			defer s.wg.Done()
			s.watchVersions(s.ctx)
		}()
	}
	s.logger.Info("server started", "api", s.cfg.APIAddr, "raft", s.cfg.RaftAddr, "gossip", s.cfg.GossipAddr,
		"bootstrap_expect", s.cfg.BootstrapExpect)
	return nil
}

// Name is the server's name (its Raft ID).
func (s *Server) Name() string { return s.cfg.Name }

// APIAddr is the address the API listens on, with the real port when the
// config asked for port 0.
func (s *Server) APIAddr() string {
	if s.apiListener != nil {
		return s.apiListener.Addr().String()
	}
	return s.cfg.APIAddr
}

// CA returns the cluster CA the server uses.
func (s *Server) CA() *pki.CA { return s.ca }

// State returns the server's local replicated state, for tests and tools
// that read it in-process. Callers must not modify what it returns.
func (s *Server) State() *state.Store { return s.state }

// Raft exposes the Raft node for in-process harnesses.
func (s *Server) Raft() *raft.Raft { return s.raft }

// IsLeader reports whether this server is the Raft leader.
func (s *Server) IsLeader() bool {
	return s.raft != nil && s.raft.State() == raft.Leader
}

// Done is closed when the server has stopped.
func (s *Server) Done() <-chan struct{} { return s.stopped }

// StoreFailed is closed when a write to the Raft store has failed to reach
// the disk (raftstore.ErrWriteFailed). The store then refuses every call, so
// the server can neither acknowledge nor serve Raft traffic and must stop;
// StoreErr says why. Valid after a successful Start.
func (s *Server) StoreFailed() <-chan struct{} { return s.logs.Failed() }

// StoreErr is the error that failed the Raft store, or nil.
func (s *Server) StoreErr() error { return s.logs.Err() }

// Shutdown stops the server gracefully: the API stops taking requests and
// drains, gossip announces that this server is going away briefly (not a
// leave: the server stays a Raft voter), Raft stops and the stores close.
// It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	var err error
	s.stopOnce.Do(func() {
		s.logger.Info("server shutting down")
		if s.httpServer != nil {
			_ = s.httpServer.Shutdown(ctx)
		}
		if s.h3Server != nil {
			_ = s.h3Server.Shutdown(ctx)
		}
		err = s.stop()
	})
	<-s.stopped
	return err
}

// Kill stops the server abruptly, as a crash would: no leave, no draining,
// connections dropped. Data already synced to disk stays. Idempotent.
func (s *Server) Kill() {
	s.stopOnce.Do(func() {
		s.logger.Info("server killed")
		if s.httpServer != nil {
			_ = s.httpServer.Close()
		}
		if s.h3Server != nil {
			_ = s.h3Server.Close()
		}
		_ = s.stop()
	})
	<-s.stopped
}

// stop releases everything in reverse order of Start. Called once.
func (s *Server) stop() error {
	defer close(s.stopped)
	s.cancel()
	var errs []error
	if s.forwarder != nil {
		s.forwarder.close()
	}
	if s.members != nil {
		if err := s.members.Shutdown(); err != nil {
			errs = append(errs, fmt.Errorf("gossip shutdown: %w", err))
		}
	}
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
	}
	if s.trans != nil {
		_ = s.trans.Close()
	}
	if s.apiListener != nil {
		_ = s.apiListener.Close()
	}
	if s.apiPacket != nil {
		_ = s.apiPacket.Close()
	}
	s.wg.Wait()
	if s.chunks != nil {
		// After wg.Wait: the push sweeper has released its pins, and no
		// handler is left to use the store.
		if err := s.chunks.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close chunk store: %w", err))
		}
	}
	if s.telemetry != nil {
		if err := s.telemetry.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close telemetry store: %w", err))
		}
	}
	if s.logs != nil {
		if err := s.logs.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close raft store: %w", err))
		}
	}
	return errors.Join(errs...)
}

// waitCtx returns a context that ends with the server or after d.
func (s *Server) waitCtx(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	stop := context.AfterFunc(s.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// Config returns the server's configuration with listener ports resolved
// (a configured port 0 reads as the port really used).
func (s *Server) Config() Config { return s.cfg }

// LeadershipEstablished reports whether this server leads and has applied
// everything earlier leaders committed, so it serves consistent reads.
func (s *Server) LeadershipEstablished() bool {
	s.mu.Lock()
	ready := s.readyForReads
	s.mu.Unlock()
	if ready == nil {
		return false
	}
	select {
	case <-ready:
		return true
	default:
		return false
	}
}

// FirstLogIndex is the oldest entry still in this server's Raft log; it
// grows as snapshots let the log be truncated.
func (s *Server) FirstLogIndex() (uint64, error) { return s.logs.FirstIndex() }
