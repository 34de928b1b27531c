package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/peer"
	"github.com/droverhq/drover/internal/faultnet"
	"github.com/droverhq/drover/internal/linkemu"
	"github.com/droverhq/drover/internal/logging"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// AgentOptions shape the agents StartAgents starts.
type AgentOptions struct {
	// Prefix names the agents: Prefix + "-01", Prefix + "-02", …; default
	// "agent".
	Prefix string
	// Site returns the site of the i-th agent (from 0); nil puts them all
	// in "site-a".
	Site func(i int) string
	// Labels are asked for by every agent.
	Labels map[string]string
	// Configure, when set, adjusts each agent's config before it starts.
	Configure func(*agent.Config)
	// Link, when set, puts a link emulator (internal/linkemu) between
	// each agent and each server it dials, so its control and chunk
	// traffic crosses a slow or lossy path. Each agent gets relays of its
	// own, which live until the cluster shuts down.
	Link *Link
}

// Link is the shape of the path between an agent and the servers.
type Link struct {
	// Up shapes the agent's datagrams to a server, Down the answers.
	Up, Down linkemu.Shape
	// Seed makes loss and jitter repeatable.
	Seed uint64
}

// Agent is one drover-agent running in the test process, with real QUIC,
// mutual TLS and its identity in its own data directory. Its QUIC traffic
// goes through a socket the scenario can cut (Partition). Methods are safe
// for concurrent use.
type Agent struct {
	Name string
	c    *Cluster
	cfg  agent.Config
	// blocked cuts the agent's QUIC traffic to and from every server.
	blocked atomic.Bool
	// link, when set, shapes the agent's path to every server.
	link *Link

	mu     sync.Mutex // guards the fields below
	ag     *agent.Agent
	relays map[string]*linkemu.Relay // by server address; with link only
	cancel context.CancelFunc
	done   chan struct{} // closed when the running agent's Run returned
	runErr error
}

// StartAgents creates a join token for n agents and starts them; it
// returns once every agent has started (not once they are ready: see
// WaitNodes). Agents stop before the servers do at Shutdown.
func (c *Cluster) StartAgents(ctx context.Context, n int, opts AgentOptions) ([]*Agent, error) {
	if opts.Prefix == "" {
		opts.Prefix = "agent"
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := c.Client(leader, false).Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
		Description: "scenario agents " + opts.Prefix,
		Ttl:         durationpb.New(time.Hour),
		MaxUses:     uint32(n),
	}))
	if err != nil {
		return nil, fmt.Errorf("create join token: %w", err)
	}
	agents := make([]*Agent, n)
	for i := range agents {
		cfg := c.AgentConfig(fmt.Sprintf("%s-%02d", opts.Prefix, i+1), tok.Msg.GetTokenString())
		cfg.Labels = maps.Clone(opts.Labels)
		if opts.Site != nil {
			cfg.Site = opts.Site(i)
		}
		if opts.Configure != nil {
			opts.Configure(&cfg)
		}
		a := &Agent{Name: cfg.Name, c: c, link: opts.Link}
		cfg.DialQUIC = a.dialQUIC
		a.cfg = cfg
		agents[i] = a
	}
	c.mu.Lock()
	c.agents = append(c.agents, agents...)
	c.mu.Unlock()
	for _, a := range agents {
		if err := a.Start(); err != nil {
			return nil, err
		}
	}
	return agents, nil
}

// AgentConfig returns the config of an agent called name that enrolls
// with token (if it has no identity yet) at every server of the cluster,
// keeps its data in a directory of its own, and is in site "site-a". It
// is what StartAgents runs; scenarios that run an agent themselves start
// from it.
func (c *Cluster) AgentConfig(name, token string) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Name = name
	for _, node := range c.Nodes() {
		cfg.Servers = append(cfg.Servers, node.APIAddr())
	}
	cfg.Token = token
	cfg.DataDir = filepath.Join(c.dir, "agents", name)
	cfg.Site = "site-a"
	// Every agent of the process gets a pool port of its own.
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.ServeAddr = "127.0.0.1:0"
	cfg.Logger = logging.TestLogger(c.t).With("agent", name)
	return cfg
}

// Agents returns every agent started, running or not.
func (c *Cluster) Agents() []*Agent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.agents)
}

// Start runs the agent (again). After the first start it has an identity
// on disk, and it runs from that, without the join token.
func (a *Agent) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done != nil {
		select {
		case <-a.done:
		default:
			return fmt.Errorf("start agent %s: it is running", a.Name)
		}
	}
	ag, err := agent.New(a.cfg)
	if err != nil {
		return fmt.Errorf("start agent %s: %w", a.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	a.ag, a.cancel, a.done, a.runErr = ag, cancel, done, nil
	go func() {
		defer close(done)
		err := ag.Run(ctx)
		a.mu.Lock()
		a.runErr = err
		a.mu.Unlock()
	}()
	return nil
}

// Kill stops the agent as a crash would look to the control plane: its
// QUIC traffic stops at once and nothing more reaches the servers (its
// site pool is still told goodbye, as on a SIGTERM, which takes up to a
// second). It returns when the agent has stopped. The identity stays on
// disk, so Start brings the same node back.
func (a *Agent) Kill() {
	a.mu.Lock()
	cancel, done := a.cancel, a.done
	a.mu.Unlock()
	if cancel == nil {
		return
	}
	a.blocked.Store(true)
	cancel()
	<-done
	a.blocked.Store(false)
}

// Partition cuts the agent off from every server (its QUIC datagrams are
// dropped both ways) while it keeps running; Heal reconnects it.
func (a *Agent) Partition() { a.blocked.Store(true) }

// Heal undoes Partition.
func (a *Agent) Heal() { a.blocked.Store(false) }

// Status is what the running (or last run) agent reports.
func (a *Agent) Status() agent.Status {
	a.mu.Lock()
	ag := a.ag
	a.mu.Unlock()
	if ag == nil {
		return agent.Status{}
	}
	return ag.Status()
}

// Err is why the agent's last run ended: nil while it runs, after a
// Kill, or after a clean stop.
func (a *Agent) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runErr
}

// SitePeers are the agents of its site the agent fetches chunks from,
// itself included; none while it is not running.
func (a *Agent) SitePeers() []peer.Peer {
	a.mu.Lock()
	ag := a.ag
	a.mu.Unlock()
	if ag == nil {
		return nil
	}
	return ag.SitePeers()
}

// DataDir is the agent's data directory.
func (a *Agent) DataDir() string { return a.cfg.DataDir }

// NodeID is the node id the agent enrolled as, "" before it has.
func (a *Agent) NodeID() string { return a.Status().NodeID }

// LinkStats sums what the agent's link relays carried, each way; zero
// without AgentOptions.Link.
func (a *Agent) LinkStats() (up, down linkemu.Stats) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.relays {
		u, d := r.Stats()
		up, down = addStats(up, u), addStats(down, d)
	}
	return up, down
}

func addStats(a, b linkemu.Stats) linkemu.Stats {
	return linkemu.Stats{
		Sent: a.Sent + b.Sent, Packets: a.Packets + b.Packets, Bytes: a.Bytes + b.Bytes,
		Lost: a.Lost + b.Lost, QueueDrops: a.QueueDrops + b.QueueDrops,
	}
}

// via returns the address to send the agent's datagrams for the server at
// addr to: the server itself, or the agent's relay towards it, started on
// first use.
func (a *Agent) via(addr string) (string, error) {
	if a.link == nil {
		return addr, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.relays[addr]; ok {
		return r.Addr(), nil
	}
	r, err := linkemu.New(addr, a.link.Up, a.link.Down, a.link.Seed)
	if err != nil {
		return "", fmt.Errorf("link to %s: %w", addr, err)
	}
	if a.relays == nil {
		a.relays = make(map[string]*linkemu.Relay)
	}
	a.relays[addr] = r
	return r.Addr(), nil
}

// closeLinks stops the agent's relays; the agent must have stopped.
func (a *Agent) closeLinks() {
	a.mu.Lock()
	relays := a.relays
	a.relays = nil
	a.mu.Unlock()
	for _, r := range relays {
		_ = r.Close()
	}
}

// dialQUIC opens a QUIC connection from a socket of its own that Partition
// can cut, through the agent's link emulator if it has one. The socket
// lives as long as the connection.
func (a *Agent) dialQUIC(ctx context.Context, addr string, tlsConf *tls.Config, qc *quic.Config) (*quic.Conn, error) {
	to, err := a.via(addr)
	if err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", to)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	// The socket talks to one server only (or its relay): whether that
	// server is silent is a question about addr.
	pc := faultnet.NewPacketConn(udp, func(net.Addr) bool {
		return a.blocked.Load() || a.c.isSilent(addr)
	})
	tr := &quic.Transport{Conn: pc}
	conn, err := tr.DialEarly(ctx, raddr, tlsConf, qc)
	if err != nil {
		tr.Close()
		pc.Close()
		return nil, err
	}
	go func() {
		<-conn.Context().Done()
		tr.Close()
		pc.Close()
	}()
	return conn, nil
}

// stopAgents stops every agent, all at once.
func (c *Cluster) stopAgents() {
	var wg sync.WaitGroup
	for _, a := range c.Agents() {
		wg.Go(func() {
			a.Kill()
			a.closeLinks()
		})
	}
	wg.Wait()
}

// NodeStatuses returns each node's status by node id, read from the
// established leader's state.
func (c *Cluster) NodeStatuses(ctx context.Context) (map[string]droverv1.NodeStatus, error) {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]droverv1.NodeStatus{}
	for _, n := range l.Server().State().Nodes() {
		out[n.GetId()] = n.GetStatus()
	}
	return out, nil
}

// WaitNodes waits until every node id in ids has status want in the
// leader's state, and returns how long that took.
func (c *Cluster) WaitNodes(ctx context.Context, want droverv1.NodeStatus, ids ...string) (time.Duration, error) {
	start := time.Now()
	for {
		st, err := c.NodeStatuses(ctx)
		if err != nil {
			return 0, err
		}
		var missing []string
		for _, id := range ids {
			if st[id] != want {
				missing = append(missing, fmt.Sprintf("%s=%s", id, st[id]))
			}
		}
		if len(missing) == 0 {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%d of %d nodes are not %s: %v: %w", len(missing), len(ids), want, missing, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitAgentsEnrolled waits until every agent has a node id.
func WaitAgentsEnrolled(ctx context.Context, agents []*Agent) ([]string, error) {
	ids := make([]string, len(agents))
	for i, a := range agents {
		for ids[i] = a.NodeID(); ids[i] == ""; ids[i] = a.NodeID() {
			if err := a.Err(); err != nil {
				return nil, fmt.Errorf("agent %s stopped: %w", a.Name, err)
			}
			select {
			case <-ctx.Done():
				return nil, errors.Join(fmt.Errorf("agent %s did not enroll", a.Name), ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return ids, nil
}

// DownTransitions returns, for every node of the leader's state that was
// marked DOWN at a Raft index after since, those status changes, oldest
// first. Each carries its index and the time the leader's heartbeat
// tracker decided it (its clock when it found the deadline passed).
// Scenarios use it to prove that no node was wrongly marked down, however
// briefly, and to measure detection delay where it happens rather than
// around a loaded test process.
func (c *Cluster) DownTransitions(ctx context.Context, since uint64) (map[string][]*droverv1.NodeStatusChange, error) {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]*droverv1.NodeStatusChange{}
	for _, n := range l.Server().State().Nodes() {
		for _, h := range n.GetHistory() {
			if h.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN && h.GetIndex() > since {
				out[n.GetId()] = append(out[n.GetId()], h)
			}
		}
	}
	return out, nil
}
