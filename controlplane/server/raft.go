package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/raftlog"
	"github.com/droverhq/drover/controlplane/raftstore"
	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/internal/pki"
)

// raftLogCacheSize is how many recent log entries stay in memory, one
// full append batch (MaxAppendEntries).
const raftLogCacheSize = 512

// certValidity is how long a server certificate lives. Servers issue their
// own at every start, so a year is only a bound for a server left running.
const certValidity = 365 * 24 * time.Hour

// setupTLS loads (or, for a single-server cluster, creates) the cluster CA
// and issues this server's certificate.
func (s *Server) setupTLS() error {
	certFile, keyFile := s.cfg.CACertFile, s.cfg.CAKeyFile
	if certFile == "" {
		certFile = filepath.Join(s.cfg.tlsDir(), "ca.pem")
		keyFile = filepath.Join(s.cfg.tlsDir(), "ca-key.pem")
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if s.cfg.BootstrapExpect != 1 {
				return fmt.Errorf("no cluster CA: a cluster of several servers needs one shared CA; "+
					"create it with \"drover tls ca create\" and pass --ca-file and --ca-key-file to every server (looked for %s)", certFile)
			}
			ca, err := pki.NewCA("Drover cluster CA", 10*365*24*time.Hour)
			if err != nil {
				return fmt.Errorf("create cluster CA: %w", err)
			}
			if err := os.MkdirAll(s.cfg.tlsDir(), 0o700); err != nil {
				return fmt.Errorf("create tls dir: %w", err)
			}
			if err := ca.WriteFiles(certFile, keyFile); err != nil {
				return fmt.Errorf("write cluster CA: %w", err)
			}
			s.logger.Info("created cluster CA", "cert", certFile, "sha256", ca.Fingerprint())
		}
	}
	ca, err := pki.LoadCA(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load cluster CA: %w", err)
	}
	hosts := []string{}
	for _, a := range []string{s.cfg.APIAddr, s.cfg.RaftAddr, s.cfg.advertise(s.cfg.APIAddr)} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			hosts = append(hosts, h)
		}
	}
	if s.cfg.AdvertiseHost != "" {
		hosts = append(hosts, s.cfg.AdvertiseHost)
	}
	cert, err := ca.IssueServerCert(s.cfg.Name, hosts, certValidity)
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	s.ca = ca
	s.serverCert = cert
	s.peerTLS = pki.PeerTLSConfig(ca.Pool(), cert)
	return nil
}

// setupRaft opens the stores and starts the Raft node.
func (s *Server) setupRaft() error {
	if s.cfg.Rebuild {
		if err := s.setAsideDamagedRaftData(); err != nil {
			return err
		}
	}
	opts := raftstore.DefaultOptions()
	opts.NoSync, opts.Logger = s.cfg.RaftNoSync, s.logger
	logs, err := raftstore.Open(s.cfg.raftDir(), opts)
	if err != nil {
		return fmt.Errorf("open raft store: %w", err)
	}
	s.logs = logs
	files, err := raft.NewFileSnapshotStoreWithLogger(s.cfg.snapshotDir(), 2, raftlog.New(s.logger, "raft-snapshot"))
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}
	if err := s.checkRaftSnapshots(files, logs); err != nil {
		return err
	}
	snaps := fsm.NewSnapshotStore(files)

	ln, err := net.Listen("tcp", s.cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("listen for raft on %s: %w", s.cfg.RaftAddr, err)
	}
	s.cfg.RaftAddr = resolvedAddr(s.cfg.RaftAddr, ln.Addr())
	stream, err := newTLSStreamLayer(s, ln)
	if err != nil {
		_ = ln.Close()
		return err
	}
	s.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 5,
		Timeout: 10 * time.Second,
		Logger:  raftlog.New(s.logger, "raft-net"),
	})

	s.state = state.New()
	s.fsm = fsm.New(s.state, s.logger)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.Name)
	rc.Logger = raftlog.New(s.logger, "raft")
	rc.HeartbeatTimeout = time.Duration(s.cfg.HeartbeatTimeout)
	rc.ElectionTimeout = time.Duration(s.cfg.ElectionTimeout)
	rc.LeaderLeaseTimeout = time.Duration(s.cfg.LeaderLeaseTimeout)
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	rc.TrailingLogs = s.cfg.TrailingLogs
	rc.SnapshotInterval = 30 * time.Second
	// Small commands arrive from many clients at once: let Raft batch them
	// into one append and the FSM apply them in one go.
	rc.MaxAppendEntries = 512
	rc.BatchApplyCh = true
	notify := make(chan bool, 16)
	rc.NotifyCh = notify
	s.leaderNotify = notify

	hasState, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		return fmt.Errorf("inspect raft state: %w", err)
	}
	// The leader replicates entries it has just written: keep the recent
	// ones in memory rather than reading them back from the store.
	cached, err := raft.NewLogCache(raftLogCacheSize, logs)
	if err != nil {
		return fmt.Errorf("raft log cache: %w", err)
	}
	r, err := newRaft(rc, s.fsm, cached, logs, snaps, s.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	s.raft = r
	s.replayTo = r.LastIndex()
	if !hasState && s.cfg.BootstrapExpect == 1 {
		if err := s.bootstrapRaft([]serverMeta{s.selfMeta()}); err != nil {
			return err
		}
	}
	return nil
}

// newRaft is raft.NewRaft, except that a log entry it cannot read is an
// error instead of a panic. NewRaft reads every entry after the last
// snapshot to find configuration changes and panics when a read fails; a
// damaged block in the Raft store would end the process with a stack trace
// instead of the store's one-line message. Nothing has started at that
// point (NewRaft starts its goroutines after the scan), so returning leaves
// nothing running. Panics for any other reason are left alone.
func newRaft(conf *raft.Config, fsm raft.FSM, logs raft.LogStore, store *raftstore.Store,
	snaps raft.SnapshotStore, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		if perr, ok := v.(error); ok && errors.Is(perr, raftstore.ErrCorrupt) {
			r, err = nil, fmt.Errorf("raft store %s: %w; %s", store.Dir(), perr, raftstore.RebuildHint)
			return
		}
		panic(v)
	}()
	return raft.NewRaft(conf, fsm, logs, store, snaps, trans)
}

// setAsideDamagedRaftData moves the Raft log store and the snapshots into a
// folder beside them (damaged-TIME in the data dir), so that the server
// starts without Raft state and is brought up to date by the leader. The
// damaged files are kept for inspection, not deleted. It refuses when the
// Raft data is intact, so that a --rebuild left in a service definition
// never wipes a healthy server at its next restart.
func (s *Server) setAsideDamagedRaftData() error {
	dir := s.cfg.raftDir()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--rebuild: there is no Raft data in %s to rebuild: start without --rebuild", dir)
	}
	damage := checkRaftData(dir, s.logger)
	if damage == nil {
		return fmt.Errorf("--rebuild: the Raft data in %s is intact (every entry reads back): "+
			"nothing to rebuild; start without --rebuild", dir)
	}
	if !errors.Is(damage, raftstore.ErrCorrupt) {
		// Not damage (permissions, a full disk, the store in use): moving
		// the data would not help and would lose it.
		return fmt.Errorf("--rebuild: %w", damage)
	}
	aside := filepath.Join(s.cfg.DataDir, "damaged-"+time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Mkdir(aside, 0o700); err != nil {
		return fmt.Errorf("--rebuild: %w", err)
	}
	for _, d := range []string{dir, s.cfg.snapshotDir()} {
		err := os.Rename(d, filepath.Join(aside, filepath.Base(d)))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--rebuild: set aside %s: %w", d, err)
		}
	}
	s.logger.Warn("rebuilding: damaged Raft data set aside; this server starts empty and catches up from the leader",
		"damage", damage.Error(), "moved_to", aside)
	return nil
}

// checkRaftData opens the Raft store in dir and reads every entry and
// stable value back; nil means intact.
func checkRaftData(dir string, logger *slog.Logger) (err error) {
	opts := raftstore.DefaultOptions()
	opts.Logger = logger
	st, err := raftstore.Open(dir, opts)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.Close(); err == nil {
			err = cerr
		}
	}()
	return st.Verify()
}

// bootstrapRaft writes the first Raft configuration with the given voters.
func (s *Server) bootstrapRaft(voters []serverMeta) error {
	var conf raft.Configuration
	for _, m := range voters {
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter,
			ID:       raft.ServerID(m.Name),
			Address:  raft.ServerAddress(m.RaftAddr),
		})
	}
	err := s.raft.BootstrapCluster(conf).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	s.logger.Info("bootstrapped raft cluster", "voters", len(conf.Servers))
	return nil
}

// tlsStreamLayer carries Raft over mutual TLS: both ends must present a
// certificate with the server role from the cluster CA. Its listener hands
// Raft only connections whose handshake completed (see guardListener), so
// a stranger can neither hold the port open nor make Raft log its garbage.
type tlsStreamLayer struct {
	net.Listener
	s *Server
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

func newTLSStreamLayer(s *Server, ln net.Listener) (*tlsStreamLayer, error) {
	guarded, err := s.guardListener(listenerRaft, s.cfg.wrapListener(ln), s.peerTLS, nil)
	if err != nil {
		return nil, err
	}
	return &tlsStreamLayer{Listener: guarded, s: s}, nil
}

// Addr is what peers dial: the advertised Raft address.
func (l *tlsStreamLayer) Addr() net.Addr {
	return advertisedAddr{addr: l.s.cfg.advertise(l.s.cfg.RaftAddr)}
}

// Dial opens a mutual-TLS connection to another server's Raft port.
func (l *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := l.s.cfg.dial(ctx, "tcp", string(address))
	if err != nil {
		return nil, err
	}
	tc := tls.Client(conn, l.s.peerTLS)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("raft tls handshake with %s: %w", address, err)
	}
	return tc, nil
}

type advertisedAddr struct{ addr string }

func (a advertisedAddr) Network() string { return "tcp" }
func (a advertisedAddr) String() string  { return a.addr }

// resolvedAddr replaces a zero port in configured with the port the
// listener really got, keeping the configured host.
func resolvedAddr(configured string, got net.Addr) string {
	host, port, err := net.SplitHostPort(configured)
	if err != nil || port != "0" {
		return configured
	}
	_, realPort, err := net.SplitHostPort(got.String())
	if err != nil {
		return configured
	}
	return net.JoinHostPort(host, realPort)
}
