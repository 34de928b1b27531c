// Package process runs real `drover server` processes on loopback and
// kills them with SIGKILL, for scenarios and benchmarks that need real
// processes: a crash that the kernel, not the server, carries out, with
// durable storage, separate address spaces and real sockets.
//
// Start builds the drover binary once per test binary (see Build), starts
// a cluster and stops every process when the test ends, whether it passed,
// failed or panicked. On Linux the servers also die with the test binary
// itself. Servers log to t.Log, so their output shows only when a test
// fails (benchmarks always show it).
package process

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Errors returned by Cluster methods, matched with errors.Is.
var (
	// ErrNoServer means no server of the cluster has that name.
	ErrNoServer = errors.New("no such server")
	// ErrRunning means the server is running and cannot be started again.
	ErrRunning = errors.New("server is running")
	// ErrNotRunning means the server is killed or has exited.
	ErrNotRunning = errors.New("server is not running")
)

// Timeouts of the harness. Starting a cluster includes gossip discovery,
// the Raft bootstrap and the first election.
const (
	startTimeout   = 60 * time.Second
	restartTimeout = 30 * time.Second
	pollInterval   = 20 * time.Millisecond
	// callTimeout bounds each status call the harness makes while polling.
	callTimeout = time.Second
	// waitDelay bounds how long Wait waits for a killed process's output
	// pipe to close.
	waitDelay = 5 * time.Second
)

// Options tune a cluster. Zero values take the defaults.
type Options struct {
	// LogLevel is every server's --log-level; empty means "warn".
	LogLevel string
	// Config, when set, is written as a JSON config file and passed to
	// every server with --config, e.g. {"raft_heartbeat_timeout": "250ms"}.
	// Keys are server.Config's JSON names; flags the harness sets win.
	Config map[string]any
	// NoBootstrapACL leaves ACLs unbootstrapped (no token).
	NoBootstrapACL bool
	// Log receives every line the servers write, prefixed with the
	// server's name; nil means t.Log.
	Log func(line string)
}

// Cluster is a set of drover server processes sharing one CA. Methods are
// safe for concurrent use, except that Kill and Restart of the same server
// must not overlap.
type Cluster struct {
	t          testing.TB
	opts       Options
	bin        string
	dir        string
	caFile     string
	caKeyFile  string
	configFile string
	hc         *http.Client
	transport  *http.Transport

	// procs is fixed once Start returns; only each proc's run changes.
	procs []*proc

	mu      sync.Mutex // guards the fields below and every proc's run
	token   string
	stopped bool
}

// proc is one server: its fixed command line and, while it runs, the
// process.
type proc struct {
	name       string
	dataDir    string
	apiAddr    string
	raftAddr   string
	gossipAddr string
	args       []string

	run *run // the latest process; guarded by Cluster.mu
}

// run is one start of a server's process.
type run struct {
	cmd    *exec.Cmd
	done   chan struct{} // closed once the process is reaped and its output logged
	killed atomic.Bool   // the harness killed it, so the exit is expected
	err    error         // Wait's result; read after done
}

func (r *run) alive() bool {
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Start starts n drover server processes that bootstrap one cluster
// together, waits for a leader, bootstraps ACLs (unless told not to) and
// waits until every server has applied that. Every process is killed when
// the test ends. Servers are named s1…sn; each is given every other
// server's gossip address to join, so any of them can restart alone.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("process: a cluster needs at least one server, got %d", n)
	}
	bin := Build(t)
	dir := t.TempDir() // before t.Cleanup below, so processes die before it is removed
	c := &Cluster{
		t: t, opts: opts, bin: bin, dir: dir,
		caFile: filepath.Join(dir, "ca", "ca.pem"), caKeyFile: filepath.Join(dir, "ca", "ca-key.pem"),
	}
	if c.opts.LogLevel == "" {
		c.opts.LogLevel = "warn"
	}
	if c.opts.Log == nil {
		c.opts.Log = func(line string) { t.Log(line) }
	}
	t.Cleanup(c.shutdown)

	if out, err := exec.Command(bin, "tls", "ca", "create", "--dir", filepath.Join(dir, "ca")).CombinedOutput(); err != nil {
		t.Fatalf("process: drover tls ca create: %v\n%s", err, out)
	}
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		t.Fatalf("process: read CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("process: no certificate in %s", c.caFile)
	}
	var h2 http.Protocols
	h2.SetHTTP2(true) // HTTP/2 over TLS only; the CLI negotiates the same
	c.transport = &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		Protocols:       &h2,
	}
	c.hc = &http.Client{Transport: c.transport}
	if opts.Config != nil {
		raw, err := json.Marshal(opts.Config)
		if err != nil {
			t.Fatalf("process: encode config: %v", err)
		}
		c.configFile = filepath.Join(dir, "config.json")
		if err := os.WriteFile(c.configFile, raw, 0o600); err != nil {
			t.Fatalf("process: write config: %v", err)
		}
	}

	var ports portPicker
	defer ports.release()
	for i := range n {
		p := &proc{name: fmt.Sprintf("s%d", i+1)}
		p.dataDir = filepath.Join(dir, p.name)
		api, err1 := ports.pick(true)
		rft, err2 := ports.pick(false)
		gsp, err3 := ports.pick(true)
		if err := errors.Join(err1, err2, err3); err != nil {
			t.Fatalf("process: %v", err)
		}
		p.apiAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(api))
		p.raftAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(rft))
		p.gossipAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(gsp))
		c.procs = append(c.procs, p)
	}
	for _, p := range c.procs {
		p.args = c.serverArgs(p, n)
	}
	ports.release()
	for _, p := range c.procs {
		if err := c.spawn(p); err != nil {
			t.Fatalf("process: start %s: %v", p.name, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		t.Fatalf("process: %v", err)
	}
	if !opts.NoBootstrapACL {
		if err := c.bootstrapACL(ctx); err != nil {
			t.Fatalf("process: %v", err)
		}
	}
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatalf("process: %v", err)
	}
	return c
}

// serverArgs is the fixed command line of a server.
func (c *Cluster) serverArgs(p *proc, n int) []string {
	args := []string{"server",
		"--name", p.name,
		"--data-dir", p.dataDir,
		"--api-addr", p.apiAddr,
		"--raft-addr", p.raftAddr,
		"--gossip-addr", p.gossipAddr,
		"--bootstrap-expect", strconv.Itoa(n),
		"--ca-file", c.caFile,
		"--ca-key-file", c.caKeyFile,
		"--log-level", c.opts.LogLevel,
	}
	for _, o := range c.procs {
		if o != p {
			args = append(args, "--join", o.gossipAddr)
		}
	}
	if c.configFile != "" {
		args = append(args, "--config", c.configFile)
	}
	return args
}

// spawn starts p's process and a goroutine that reaps it.
func (c *Cluster) spawn(p *proc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return fmt.Errorf("start %s: cluster is shut down", p.name)
	}
	if p.run != nil && p.run.alive() {
		return fmt.Errorf("start %s: %w", p.name, ErrRunning)
	}
	cmd := exec.Command(c.bin, p.args...)
	logw := &lineWriter{prefix: p.name + ": ", log: c.opts.Log}
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.WaitDelay = waitDelay
	if err := startCmd(cmd); err != nil {
		return err
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	p.run = r
	go func() {
		r.err = cmd.Wait()
		logw.flush()
		if !r.killed.Load() {
			c.opts.Log(fmt.Sprintf("%s: process exited on its own: %v", p.name, r.err))
		}
		close(r.done)
	}()
	return nil
}

// shutdown kills every process and waits for them. It runs at test
// cleanup, also after a failure or panic; Start registers it.
func (c *Cluster) shutdown() {
	c.mu.Lock()
	c.stopped = true
	var runs []*run
	for _, p := range c.procs {
		if p.run != nil {
			runs = append(runs, p.run)
		}
	}
	c.mu.Unlock()
	for _, r := range runs {
		r.killed.Store(true)
		_ = r.cmd.Process.Kill()
	}
	for _, r := range runs {
		<-r.done
	}
	if c.transport != nil {
		c.transport.CloseIdleConnections()
	}
}

func (c *Cluster) proc(name string) (*proc, error) {
	for _, p := range c.procs {
		if p.name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%q: %w", name, ErrNoServer)
}

func (c *Cluster) mustProc(name string) *proc {
	p, err := c.proc(name)
	if err != nil {
		c.t.Fatalf("process: %v", err)
	}
	return p
}

// Names lists every server, running or not, in order s1…sn.
func (c *Cluster) Names() []string {
	names := make([]string, len(c.procs))
	for i, p := range c.procs {
		names[i] = p.name
	}
	return names
}

// Alive reports whether the server's process is running.
func (c *Cluster) Alive(name string) bool {
	p := c.mustProc(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.run != nil && p.run.alive()
}

// Live lists the servers whose process is running.
func (c *Cluster) Live() []string {
	var out []string
	for _, n := range c.Names() {
		if c.Alive(n) {
			out = append(out, n)
		}
	}
	return out
}

// APIAddr is the server's API address (HOST:PORT), stable across restarts.
func (c *Cluster) APIAddr(name string) string { return c.mustProc(name).apiAddr }

// DataDir is the server's data directory, kept across restarts.
func (c *Cluster) DataDir(name string) string { return c.mustProc(name).dataDir }

// CAFile is the cluster CA certificate (PEM) clients trust.
func (c *Cluster) CAFile() string { return c.caFile }

// Token is the management token (empty with NoBootstrapACL).
func (c *Cluster) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Kill sends SIGKILL to the server's process and waits until it is
// reaped. Killing a server that is not running does nothing.
func (c *Cluster) Kill(name string) {
	p := c.mustProc(name)
	c.mu.Lock()
	r := p.run
	c.mu.Unlock()
	if r == nil || !r.alive() {
		return
	}
	r.killed.Store(true)
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Restart starts a killed (or exited) server again with the same command
// line, so the same ports and data dir, and waits until its API answers.
// It does not wait for the server to catch up; see WaitCaughtUp.
func (c *Cluster) Restart(name string) error {
	p, err := c.proc(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), restartTimeout)
	defer cancel()
	// A port can stay busy for a moment after the kill; the server then
	// exits at once, so try again a few times.
	for attempt := 1; ; attempt++ {
		if err := c.spawn(p); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		err := c.waitAPI(ctx, p)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrNotRunning) || attempt == 5 {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restart %s: %w", name, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitAPI waits until p's API answers GetServerInfo.
func (c *Cluster) waitAPI(ctx context.Context, p *proc) error {
	c.mu.Lock()
	r := p.run
	c.mu.Unlock()
	cl := c.Client(p.name).Cluster
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		_, err := cl.GetServerInfo(cctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-r.done:
			return fmt.Errorf("%w: exited while starting: %v", ErrNotRunning, r.err)
		case <-ctx.Done():
			return fmt.Errorf("API at %s did not answer: %w (last error: %v)", p.apiAddr, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// Leader asks the running servers (ClusterService.GetStatus) who leads,
// until one names a running server that itself reports the leader state,
// or ctx ends.
func (c *Cluster) Leader(ctx context.Context) (string, error) {
	var last error
	for {
		for _, name := range c.Live() {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			res, err := c.Client(name).Cluster.GetStatus(cctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
			cancel()
			if err != nil {
				last = fmt.Errorf("%s: %w", name, err)
				continue
			}
			leader := res.Msg.GetLeader()
			if leader == "" {
				last = fmt.Errorf("%s knows no leader", name)
				continue
			}
			if !slices.Contains(c.Live(), leader) {
				last = fmt.Errorf("%s still names %s, which is not running", name, leader)
				continue
			}
			for _, st := range res.Msg.GetServers() {
				if st.GetName() == leader && st.GetInfo().GetRaftState() == "leader" {
					return leader, nil
				}
			}
			last = fmt.Errorf("%s names %s, which does not say it leads", name, leader)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no leader: %w (last: %v)", ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// ServerInfo is what the server says about itself (GetServerInfo, never
// forwarded): Raft state, term and indexes.
func (c *Cluster) ServerInfo(ctx context.Context, name string) (*droverv1.ServerInfo, error) {
	if _, err := c.proc(name); err != nil {
		return nil, err
	}
	res, err := c.Client(name).Cluster.GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
	if err != nil {
		return nil, fmt.Errorf("server info of %s: %w", name, err)
	}
	return res.Msg.GetInfo(), nil
}

// leaderIndex finds the leader and returns the last index in its log.
// Everything up to there is committed once the leader has committed an
// entry of its own term, which it does right after its election, so a
// server that has applied it holds every write acknowledged before. (The
// leader's applied index would not do: a leader elected just after a
// restart may not have re-applied its own log yet.)
func (c *Cluster) leaderIndex(ctx context.Context) (string, uint64, error) {
	for {
		leader, err := c.Leader(ctx)
		if err != nil {
			return "", 0, err
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		info, err := c.ServerInfo(cctx, leader)
		cancel()
		if err == nil {
			return leader, info.GetLastLogIndex(), nil
		}
		select {
		case <-ctx.Done():
			return "", 0, fmt.Errorf("read the leader's index: %w", err)
		case <-time.After(pollInterval):
		}
	}
}

// waitApplied waits until the server has applied index want.
func (c *Cluster) waitApplied(ctx context.Context, name string, want uint64) error {
	var got uint64
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		info, err := c.ServerInfo(cctx, name)
		cancel()
		if err == nil {
			got = info.GetAppliedIndex()
			if got >= want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s applied %d, not %d: %w", name, got, want, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// WaitCaughtUp waits until the server has applied every entry the
// leader's log held when the wait began.
func (c *Cluster) WaitCaughtUp(ctx context.Context, name string) error {
	if !c.Alive(name) {
		return fmt.Errorf("wait for %s to catch up: %w", name, ErrNotRunning)
	}
	_, want, err := c.leaderIndex(ctx)
	if err != nil {
		return fmt.Errorf("wait for %s to catch up: %w", name, err)
	}
	if err := c.waitApplied(ctx, name, want); err != nil {
		return fmt.Errorf("wait for %s to catch up: %w", name, err)
	}
	return nil
}

// WaitConverged waits until every running server, the leader included,
// has applied every entry the leader's log held when the wait began, and
// returns that index.
func (c *Cluster) WaitConverged(ctx context.Context) (uint64, error) {
	_, want, err := c.leaderIndex(ctx)
	if err != nil {
		return 0, fmt.Errorf("wait for convergence: %w", err)
	}
	for _, name := range c.Live() {
		if err := c.waitApplied(ctx, name, want); err != nil {
			return 0, fmt.Errorf("wait for convergence: %w", err)
		}
	}
	return want, nil
}

// bootstrapACL creates the management token. A write right after the
// election can meet "no leader" for a moment; only such refusals, which
// say the write was not proposed, are retried.
func (c *Cluster) bootstrapACL(ctx context.Context) error {
	var last error
	for {
		for _, name := range c.Live() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := c.Client(name).ACL.Bootstrap(cctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
			cancel()
			if err == nil {
				c.mu.Lock()
				c.token = res.Msg.GetSecretId()
				c.mu.Unlock()
				return nil
			}
			if connect.CodeOf(err) != connect.CodeUnavailable {
				return fmt.Errorf("bootstrap ACL through %s: %w", name, err)
			}
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bootstrap ACL: %w (last: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Clients are the API clients of one server. They share the cluster's
// HTTP/2 connection pool.
type Clients struct {
	Models  droverv1connect.ModelServiceClient
	ACL     droverv1connect.ACLServiceClient
	Audit   droverv1connect.AuditServiceClient
	Cluster droverv1connect.ClusterServiceClient
}

// Client returns API clients that talk to the named server over HTTPS
// (HTTP/2, the cluster CA) with the management token. Writes and reads the
// server does not answer itself are forwarded to the leader.
func (c *Cluster) Client(name string) *Clients { return c.clients(name, false) }

// StaleClient is Client with the "Drover-Consistency: stale" header, so
// the server answers reads from its own state, which may lag the leader.
func (c *Cluster) StaleClient(name string) *Clients { return c.clients(name, true) }

func (c *Cluster) clients(name string, stale bool) *Clients {
	p := c.mustProc(name)
	opts := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if token := c.Token(); token != "" {
				req.Header().Set("Authorization", "Bearer "+token)
			}
			if stale {
				req.Header().Set(server.ConsistencyHeader, "stale")
			}
			return next(ctx, req)
		}
	}))
	base := "https://" + p.apiAddr
	return &Clients{
		Models:  droverv1connect.NewModelServiceClient(c.hc, base, opts),
		ACL:     droverv1connect.NewACLServiceClient(c.hc, base, opts),
		Audit:   droverv1connect.NewAuditServiceClient(c.hc, base, opts),
		Cluster: droverv1connect.NewClusterServiceClient(c.hc, base, opts),
	}
}
