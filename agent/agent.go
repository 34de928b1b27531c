// Package agent is drover-agent, the process on every fleet machine: it
// probes the hardware, enrolls with a join token, keeps a mutually
// authenticated HTTP/3 session to the control plane through which it
// registers and heartbeats, and joins the gossip pool of its site's agents
// (gossip.go). Telemetry and model serving come later.
//
// The agent never imports the control plane; it speaks only the wire API
// in proto/drover/v1.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/buildinfo"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/internal/udpbuf"
)

// Version is the agent's version, reported to the control plane: the
// build's (see internal/buildinfo), read once at start.
var Version = buildinfo.Version()

// State is where an agent is in its life.
type State string

// States, in the order an agent normally goes through them.
const (
	// StateStarting: probing the hardware and reading the identity.
	StateStarting State = "starting"
	// StateEnrolling: trading the join token for an identity.
	StateEnrolling State = "enrolling"
	// StateConnecting: looking for a server that answers.
	StateConnecting State = "connecting"
	// StateReady: registered, and the last heartbeat was answered.
	StateReady State = "ready"
	// StateStopped: Run has returned; Status.Err says why if it failed.
	StateStopped State = "stopped"
)

// Status is a snapshot of what an agent is doing. Times are on the agent's
// clock.
type Status struct {
	State  State
	NodeID string
	Name   string
	// Server is the server the agent is talking to, or trying to.
	Server string
	// Servers is every server the agent knows, in the order it tries them.
	Servers           []string
	Registrations     int
	Heartbeats        int
	LastHeartbeat     time.Time
	HeartbeatTTL      time.Duration
	CertificateExpiry time.Time
	Renewals          int
	// GossipAddr is where the node's site gossip pool listens, as its
	// peers dial it; "" when it has none (no site, or --gossip-addr off).
	GossipAddr string
	// GossipMembers is how many live members the pool sees, this node
	// included; 0 without a pool.
	GossipMembers int
	// Suspects are the node ids of pool members declared failed that the
	// next heartbeat reports to the control plane.
	Suspects []string
	// ServeAddr is where the node's inference endpoint listens; "" when
	// it is off.
	ServeAddr string
	// Pull is what the agent last did about the version the control
	// plane asked it to pull; zero before any request.
	Pull PullReport
	// LastError is the most recent failure the agent is working around,
	// such as a server that does not answer; a heartbeat clears it.
	LastError error
	// Err is why Run returned, once it has; nil for a clean stop.
	Err error
}

// Agent is one drover-agent. Make it with New and call Run; Status may be
// called from any goroutine at any time.
type Agent struct {
	cfg Config
	log *slog.Logger

	// What tests replace; New sets the production values.
	clk         clock
	probe       func(ctx context.Context) (*hwprobe.Inventory, error)
	randN       func(n int64) int64 // nil: math/rand/v2
	dialTimeout time.Duration

	running atomic.Bool
	pool    atomic.Pointer[gossipPool] // the running site gossip pool, nil for none

	mu     sync.Mutex // guards the fields below
	status Status
}

// New checks cfg and returns an agent ready to Run. It changes nothing on
// disk and opens no connection.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: --data-dir %q: %v", ErrInvalidConfig, cfg.DataDir, err)
	}
	cfg.DataDir = dir
	cfg.Servers = normalizeServers(cfg.Servers)
	cfg.Labels = maps.Clone(cfg.Labels)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// One NVML handle for the agent's life: go-nvml serialises loading
	// per handle, and two handles loading at once would race. Each probe
	// initialises and shuts NVML down around its own use, so nothing is
	// left open when Run returns.
	nvml := cfg.NVML
	if nvml == nil {
		nvml = hwprobe.SystemNVML()
	}
	a := &Agent{
		cfg:         cfg,
		log:         log,
		clk:         realClock{},
		dialTimeout: defaultDialTimeout,
		status:      Status{State: StateStarting},
	}
	a.probe = func(ctx context.Context) (*hwprobe.Inventory, error) {
		return hwprobe.Probe(ctx, hwprobe.Options{Root: cfg.Root, DataDir: cfg.DataDir, NVML: nvml})
	}
	return a, nil
}

// Run probes the hardware, enrolls (or loads the identity an earlier run
// saved), and keeps the node registered and heartbeating until ctx ends.
// It returns nil when ctx ends, and an error when the agent cannot go on:
// no identity and no token, a join token the server refused, a node the
// control plane revoked, and the like; Hint(err) says what to do. Run
// returns only once everything it started has stopped, and it may be
// called again after it returns.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer a.running.Store(false)
	err := a.run(ctx)
	a.update(func(st *Status) {
		st.State = StateStopped
		st.Err = err
	})
	return err
}

func (a *Agent) run(ctx context.Context) error {
	a.update(func(st *Status) { *st = Status{State: StateStarting} })
	dir := a.cfg.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return withHint(fmt.Errorf("data directory: %w", err),
			"create %s for the agent's user, or choose another directory with --data-dir", dir)
	}
	hw, err := a.probe(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("probe hardware: %w", err)
	}
	inv := inventoryProto(hw)
	a.log.Info("hardware probed", "hardware", hw.Summary(), "gpus", len(hw.GPUs), "gpu_probe", hw.GPUProbe.Reason)
	// The agent's QUIC sockets are made as it dials; the kernel's caps
	// are the same for all of them, so one probe tells.
	if sizes, err := udpbuf.Probe(); err == nil {
		if w := udpbuf.Warning(sizes); w != "" {
			a.log.Warn(w)
		}
	}
	for _, w := range hw.Warnings {
		a.log.Debug("hardware probe warning", "probe", w.Probe, "msg", w.Message)
	}

	id, err := loadIdentity(dir)
	if err != nil {
		return err
	}
	preferred := ""
	switch {
	case id != nil:
		if a.cfg.Token != "" {
			tok, _ := jointoken.Parse(a.cfg.Token) // Validate parsed it
			if fp := pki.Fingerprint(id.CA); tok.CAHash != fp {
				return withHint(fmt.Errorf("this machine is enrolled as node %s in the cluster with CA %.12s…, and the join token is for CA %.12s…: %w",
					id.NodeID, fp, tok.CAHash, ErrWrongCluster),
					"to move the machine to the token's cluster, remove %s and start again; to stay, drop the token", identityPath(dir))
			}
		}
		if fi, err := os.Stat(identityPath(dir)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			a.log.Warn("the identity file holds the node's private key and other users can read it; chmod 600 it",
				"file", identityPath(dir), "mode", fi.Mode().Perm().String())
		}
		a.log.Info("loaded identity", "node", id.NodeID, "name", id.Name, "cluster", id.ClusterID,
			"certificate_expires", id.Cert.Leaf.NotAfter)
	case a.cfg.Token == "":
		return withHint(fmt.Errorf("no identity in %s and no join token: %w", dir, ErrNotEnrolled),
			"enroll with --server HOST:PORT and a join token in DROVER_TOKEN (or --token); an operator makes one with `drover token create`")
	case len(a.cfg.Servers) == 0:
		return withHint(fmt.Errorf("no identity in %s and no server to enroll with: %w", dir, ErrNotEnrolled),
			"name a server to enroll with: --server HOST:PORT")
	default:
		tok, _ := jointoken.Parse(a.cfg.Token) // Validate parsed it
		a.update(func(st *Status) { st.State = StateEnrolling })
		id, preferred, err = a.enroll(ctx, tok, inv)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := id.save(dir); err != nil {
			return withHint(fmt.Errorf("enrolled as node %s, but: %w", id.NodeID, err),
				"make %s writable, then revoke node %s (`drover node revoke %s`) and enroll again with a new join token", dir, id.NodeID, id.NodeID)
		}
		a.log.Info("enrolled", "node", id.NodeID, "name", id.Name, "server", preferred,
			"certificate_expires", id.Cert.Leaf.NotAfter)
	}
	store, err := a.openStore()
	if err != nil {
		return err
	}
	sv, err := a.startServing(store, inv)
	if err != nil {
		return err
	}
	defer sv.stop()
	a.update(func(st *Status) { st.ServeAddr = sv.addr })
	return a.runSession(ctx, id, inv, preferred, store, sv)
}

// Status returns a snapshot of what the agent is doing. The gossip pool's
// members and suspects are as the pool sees them now.
func (a *Agent) Status() Status {
	a.mu.Lock()
	st := a.status
	st.Servers = slices.Clone(st.Servers)
	a.mu.Unlock()
	if p := a.pool.Load(); p != nil {
		st.GossipMembers = p.NumMembers()
		st.Suspects = p.Suspects()
	}
	return st
}

// update changes the status under the lock.
func (a *Agent) update(f func(*Status)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.status)
}

// noteFailure logs a failure the agent works around by trying again, and
// records it in the status. Failures caused by ctx ending are not news.
func (a *Agent) noteFailure(ctx context.Context, op, addr string, err error) {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	a.log.Warn(op+" failed; trying again", "server", addr, "err", err)
	a.update(func(st *Status) { st.LastError = err })
}
