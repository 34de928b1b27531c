// Package cluster starts real Drover servers, and agents that enroll with
// them, inside one test process, on loopback with real TLS, QUIC, Raft and
// Pebble, and injects faults into them: kill, restart, partition, delay.
// Scenarios build on it.
package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/faultnet"
	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Options tune a cluster. Zero values take the defaults.
type Options struct {
	// Configure, when set, adjusts each server's config before it starts.
	Configure func(*server.Config)
	// NoBootstrapACL leaves ACLs unbootstrapped (no token).
	NoBootstrapACL bool
}

// Cluster is a set of in-process servers sharing one CA and one fault
// network. Methods are safe for concurrent use unless noted.
type Cluster struct {
	t    testing.TB
	opts Options
	// Net carries every server-to-server connection; use it to partition.
	Net    *faultnet.Network
	CA     *pki.CA
	caCert string
	caKey  string
	dir    string

	// transport is shared by every client, so connections are reused and
	// closed at Shutdown.
	transport *http.Transport

	mu     sync.Mutex // guards nodes, agents, silent, ports and token
	nodes  []*Node
	agents []*Agent
	token  string
	// silent holds the API addresses of killed servers: agents' datagrams
	// to and from them are dropped, so a killed server is as silent to
	// agents as a dead host, rather than closing their connections.
	silent map[string]bool
	// ports are the ports addr has handed out: a port it picks is free
	// when picked, but not yet bound, so the next pick could be the same.
	ports map[int]bool
}

// Node is one server of the cluster; Server is nil while it is killed.
type Node struct {
	Name string
	cfg  server.Config

	mu  sync.Mutex // guards srv
	srv *server.Server
}

// Server returns the running server, or nil while the node is down.
func (n *Node) Server() *server.Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

// APIAddr is the node's API address, stable across restarts.
func (n *Node) APIAddr() string { return n.cfg.APIAddr }

// Make starts n servers that bootstrap together, waits for a leader and
// (unless told not to) bootstraps ACLs. Everything stops when the test
// ends.
func Make(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("Drover test CA", 24*time.Hour)
	if err != nil {
		t.Fatalf("cluster: create CA: %v", err)
	}
	c := &Cluster{
		t: t, opts: opts, Net: faultnet.New(), CA: ca, dir: dir,
		caCert: filepath.Join(dir, "ca.pem"), caKey: filepath.Join(dir, "ca-key.pem"),
		transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13},
			ForceAttemptHTTP2: true,
		},
	}
	if err := ca.WriteFiles(c.caCert, c.caKey); err != nil {
		t.Fatalf("cluster: write CA: %v", err)
	}
	t.Cleanup(c.Shutdown)
	expect := n
	var join []string
	for i := range n {
		node := c.newNode(fmt.Sprintf("s%d", i+1), expect, join)
		if err := c.start(node); err != nil {
			t.Fatalf("cluster: start %s: %v", node.Name, err)
		}
		if i == 0 {
			join = []string{node.cfg.GossipAddr}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatalf("cluster: %v", err)
	}
	if !opts.NoBootstrapACL {
		c.bootstrapACL(ctx)
	}
	return c
}

func (c *Cluster) newNode(name string, expect int, join []string) *Node {
	cfg := server.DefaultConfig()
	cfg.Name = name
	cfg.DataDir = filepath.Join(c.dir, name)
	cfg.APIAddr = c.addr(true)
	cfg.RaftAddr = c.addr(false)
	cfg.GossipAddr = c.addr(true)
	cfg.BootstrapExpect = expect
	cfg.Join = slices.Clone(join)
	cfg.CACertFile, cfg.CAKeyFile = c.caCert, c.caKey
	// Faults reach the server only through what it uses anyway: the dial
	// function for its connections to other servers and a wrapper for
	// the listeners they connect to. The API listener is shared with
	// clients, which reach every server whatever the partition.
	cfg.Dial = c.Net.Dialer(name)
	cfg.WrapListener = func(ln net.Listener) net.Listener { return c.Net.SharedListener(name, ln) }
	cfg.Logger = logging.TestLogger(c.t).With("node", name)
	// Snapshot often so scenarios exercise log truncation.
	cfg.SnapshotThreshold = 256
	cfg.TrailingLogs = 128
	if c.opts.Configure != nil {
		c.opts.Configure(&cfg)
	}
	// Peers dial the addresses a server advertises.
	c.Net.Register(name, cfg.APIAddr)
	c.Net.Register(name, cfg.RaftAddr)
	node := &Node{Name: name, cfg: cfg}
	c.mu.Lock()
	c.nodes = append(c.nodes, node)
	c.mu.Unlock()
	return node
}

// addr returns a loopback address with a free port (see pickPort) that
// this cluster has not handed out before.
func (c *Cluster) addr(withUDP bool) string {
	for range 100 {
		port, err := pickPort(withUDP)
		if err != nil {
			c.t.Fatalf("cluster: %v", err)
		}
		c.mu.Lock()
		taken := c.ports[port]
		if c.ports == nil {
			c.ports = make(map[int]bool)
		}
		c.ports[port] = true
		c.mu.Unlock()
		if !taken {
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
	c.t.Fatal("cluster: every free port found was already handed out")
	return ""
}

// start runs the node's server and records its resolved addresses, so a
// restart reuses the same ports and data.
func (c *Cluster) start(n *Node) error {
	s, err := server.New(n.cfg)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return err
	}
	n.mu.Lock()
	n.srv = s
	n.cfg = s.Config()
	n.mu.Unlock()
	return nil
}

// Nodes returns every node, running or not, in creation order.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Node returns the node with this name; it fails the test if none.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n
		}
	}
	c.t.Fatalf("cluster: no node %q", name)
	return nil
}

// Token is the management token (empty with NoBootstrapACL).
func (c *Cluster) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Leader returns the node that currently leads, or nil.
func (c *Cluster) Leader() *Node {
	for _, n := range c.Nodes() {
		if s := n.Server(); s != nil && s.IsLeader() {
			return n
		}
	}
	return nil
}

// WaitLeader waits until some running node leads and has established
// leadership (it can serve consistent reads).
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	for {
		if l := c.Leader(); l != nil && l.Server().LeadershipEstablished() {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader elected: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kill stops a node abruptly: no leave, no drain, connections cut, and no
// word to its agents, whose calls go unanswered as they would to a dead
// host.
func (c *Cluster) Kill(n *Node) {
	n.mu.Lock()
	s := n.srv
	n.srv = nil
	n.mu.Unlock()
	if s != nil {
		c.setSilent(n.APIAddr(), true)
		c.Net.Kill(n.Name)
		s.Kill()
		c.Net.Revive(n.Name)
	}
}

func (c *Cluster) setSilent(apiAddr string, silent bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.silent == nil {
		c.silent = map[string]bool{}
	}
	c.silent[apiAddr] = silent
}

func (c *Cluster) isSilent(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.silent[addr]
}

// Restart starts a killed node again from the same data dir and ports.
func (c *Cluster) Restart(n *Node) error {
	if n.Server() != nil {
		return fmt.Errorf("restart %s: it is running", n.Name)
	}
	// The port may linger briefly after a kill; retry a little.
	var err error
	for range 50 {
		if err = c.start(n); err == nil {
			c.setSilent(n.APIAddr(), false)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart %s: %w", n.Name, err)
}

// Rebuild starts a stopped node with --rebuild: it sets its damaged Raft
// data aside and catches up from the leader. Later restarts are plain ones.
func (c *Cluster) Rebuild(n *Node) error {
	if n.Server() != nil {
		return fmt.Errorf("rebuild %s: it is running", n.Name)
	}
	n.mu.Lock()
	plain := n.cfg
	n.cfg.Rebuild = true
	n.mu.Unlock()
	err := c.start(n)
	n.mu.Lock()
	n.cfg.Rebuild, n.cfg.BootstrapExpect = false, plain.BootstrapExpect
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("rebuild %s: %w", n.Name, err)
	}
	c.setSilent(n.APIAddr(), false)
	return nil
}

// CACertFile is the PEM file of the cluster's CA, for clients such as the
// drover command line.
func (c *Cluster) CACertFile() string { return c.caCert }

// DataDir is the node's data directory.
func (n *Node) DataDir() string { return n.cfg.DataDir }

// AddServer starts a new server that joins the running cluster without
// bootstrapping; the leader adds it as a voter.
func (c *Cluster) AddServer(name string) (*Node, error) {
	var join []string
	for _, n := range c.Nodes() {
		if n.Server() != nil {
			join = append(join, n.cfg.GossipAddr)
		}
	}
	node := c.newNode(name, 0, join)
	return node, c.start(node)
}

// Partition splits the named nodes into groups that cannot reach each
// other over Raft or the API (request forwarding, status): their dials fail
// and open connections are cut. Clients still reach every node; gossip is
// not partitioned.
func (c *Cluster) Partition(groups ...[]string) { c.Net.Partition(groups...) }

// Heal removes every partition (delays stay; see Delay).
func (c *Cluster) Heal() { c.Net.Heal() }

// Delay adds latency to traffic between two nodes, both ways; zero
// removes it.
func (c *Cluster) Delay(a, b *Node, d time.Duration) { c.Net.SetDelay(a.Name, b.Name, d) }

// Shutdown stops every agent, then every running node. Idempotent; runs
// at test cleanup.
func (c *Cluster) Shutdown() {
	c.stopAgents()
	var wg sync.WaitGroup
	for _, n := range c.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.mu.Lock()
			s := n.srv
			n.srv = nil
			n.mu.Unlock()
			if s != nil {
				s.Kill()
			}
		}()
	}
	wg.Wait()
	c.transport.CloseIdleConnections()
}

// Clients are the API clients for one node.
type Clients struct {
	Models    droverv1connect.ModelServiceClient
	ACL       droverv1connect.ACLServiceClient
	Audit     droverv1connect.AuditServiceClient
	Cluster   droverv1connect.ClusterServiceClient
	Tokens    droverv1connect.TokenServiceClient
	Nodes     droverv1connect.NodeServiceClient
	Keys      droverv1connect.KeyServiceClient
	Deploys   droverv1connect.DeploymentServiceClient
	Rollouts  droverv1connect.RolloutServiceClient
	Telemetry droverv1connect.TelemetryServiceClient
	Drift     droverv1connect.DriftServiceClient
	// Agent is for the public GetClusterInfo: the CA, the servers and the
	// keys that sign manifests and alerts.
	Agent droverv1connect.AgentServiceClient
}

// Client returns API clients that talk to node n with the cluster's token.
// With stale set, reads may be answered by n from its local state.
func (c *Cluster) Client(n *Node, stale bool) *Clients {
	hc := &http.Client{Transport: c.transport}
	token := c.Token()
	opts := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if token != "" {
				req.Header().Set("Authorization", "Bearer "+token)
			}
			if stale {
				req.Header().Set(server.ConsistencyHeader, "stale")
			}
			return next(ctx, req)
		}
	}))
	base := "https://" + n.APIAddr()
	return &Clients{
		Models:    droverv1connect.NewModelServiceClient(hc, base, opts),
		ACL:       droverv1connect.NewACLServiceClient(hc, base, opts),
		Audit:     droverv1connect.NewAuditServiceClient(hc, base, opts),
		Cluster:   droverv1connect.NewClusterServiceClient(hc, base, opts),
		Tokens:    droverv1connect.NewTokenServiceClient(hc, base, opts),
		Nodes:     droverv1connect.NewNodeServiceClient(hc, base, opts),
		Keys:      droverv1connect.NewKeyServiceClient(hc, base, opts),
		Deploys:   droverv1connect.NewDeploymentServiceClient(hc, base, opts),
		Rollouts:  droverv1connect.NewRolloutServiceClient(hc, base, opts),
		Telemetry: droverv1connect.NewTelemetryServiceClient(hc, base, opts),
		Drift:     droverv1connect.NewDriftServiceClient(hc, base, opts),
		Agent:     droverv1connect.NewAgentServiceClient(hc, base, opts),
	}
}

func (c *Cluster) bootstrapACL(ctx context.Context) {
	l := c.Leader()
	res, err := c.Client(l, false).ACL.Bootstrap(ctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
	if err != nil {
		c.t.Fatalf("cluster: bootstrap ACL: %v", err)
	}
	c.mu.Lock()
	c.token = res.Msg.GetSecretId()
	c.mu.Unlock()
}

// WaitConverged waits until every running node's state machine holds
// everything the established leader has applied, and returns that state
// index. Call it when clients have stopped writing.
//
// Raft's AppliedIndex is not the measure: hashicorp/raft advances it when it
// hands entries to the state machine, before they are applied. A barrier on
// the leader waits for its state machine; followers are then compared by
// the index of their own state.
func (c *Cluster) WaitConverged(ctx context.Context) (uint64, error) {
	for {
		l := c.Leader()
		if l != nil && l.Server().LeadershipEstablished() && l.Server().Raft().Barrier(5*time.Second).Error() == nil {
			want := l.Server().State().Index()
			ok := true
			for _, n := range c.Nodes() {
				if s := n.Server(); s != nil && s.State().Index() < want {
					ok = false
				}
			}
			if ok {
				return want, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("servers did not converge: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
