//go:build docker

package container

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	cpserver "github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Environment variables of the agent scenario, set by scenarios.sh.
const (
	envAgentImage   = "DROVER_SCENARIO_AGENT_IMAGE"   // the drover-agent image
	envAgents       = "DROVER_SCENARIO_AGENTS"        // how many agents to start
	envServerConfig = "DROVER_SCENARIO_SERVER_CONFIG" // the servers' --config file
)

const (
	// defaultAgents is how many agents start when envAgents is unset.
	defaultAgents = 20
	// maxAgentsKilled is how many agents the scenario kills, or half of
	// them when there are fewer than twice as many.
	maxAgentsKilled = 10
	// agentLabel is on every agent container and volume, besides the
	// compose project's label; scenarios.sh finds them by it to print
	// their logs and tear them down.
	agentLabel = "drover.scenario.agent"
	// agentDataDir is where the agent image keeps the node's identity.
	agentDataDir = "/var/lib/drover-agent"
	// agentReadyBound is how long agents may take from `docker run` or
	// `docker start` until their nodes are READY.
	agentReadyBound = 60 * time.Second

	// The leader's heartbeat constants, as in controlplane/server's
	// heartbeat.go, where they are not exported: it looks for missed
	// deadlines every heartbeatTick, hands each node its TTL plus up to
	// heartbeatJitter of it, and marks the node DOWN heartbeatSlack of
	// the TTL after the TTL ran out.
	heartbeatTick   = 250 * time.Millisecond
	heartbeatJitter = 0.1
	heartbeatSlack  = 0.5
	// downTolerance is what the DOWN bound allows beyond the timing the
	// leader promises: the tick that notices the missed deadline, the
	// write of the transition, and this test's polling (an interval and
	// a call).
	downTolerance = heartbeatTick + 500*time.Millisecond + 2*pollEvery
)

// heartbeatTiming is the servers' node heartbeat configuration.
type heartbeatTiming struct {
	minTTL time.Duration
	grace  time.Duration // after a leader change
	rate   float64       // heartbeats per second for the whole fleet
}

// loadHeartbeatTiming reads the servers' config file the way they do:
// the defaults, then the file.
func loadHeartbeatTiming() (heartbeatTiming, string, error) {
	cfg := cpserver.DefaultConfig()
	from := "the server defaults"
	if p := os.Getenv(envServerConfig); p != "" {
		var err error
		if cfg, err = cpserver.LoadConfigFile(p, cfg); err != nil {
			return heartbeatTiming{}, "", err
		}
		from = p
	}
	return heartbeatTiming{
		minTTL: time.Duration(cfg.HeartbeatMinTTL),
		grace:  time.Duration(cfg.HeartbeatLeaderGrace),
		rate:   cfg.MaxHeartbeatsPerSecond,
	}, from, nil
}

// ttl is the base TTL the leader hands out with nodes tracked.
func (h heartbeatTiming) ttl(nodes int) time.Duration {
	return max(h.minTTL, time.Duration(float64(nodes)/h.rate*float64(time.Second)))
}

// downBound is how long after its agent died a node may stay READY: the
// longest TTL the leader hands out (with jitter), the slack after it, the
// grace a new leader gives every node (there should be no leader change
// in this scenario, but the bound holds across one), and downTolerance.
func (h heartbeatTiming) downBound(nodes int) time.Duration {
	ttl := float64(h.ttl(nodes)) * (1 + heartbeatJitter)
	return time.Duration(ttl*(1+heartbeatSlack)) + h.grace + downTolerance
}

// agent is one drover-agent container.
type agent struct {
	name      string // node name it enrolls with
	container string
	volume    string // its data directory, so a restart keeps the identity
	id        string // node id, once enrolled
}

// newAgents names n agent containers of this cluster: node names
// PREFIX-NN-RUN (run keeps names of earlier runs on the same cluster
// apart), containers and their data volumes PROJECT-PREFIX-NN.
func (c *cluster) newAgents(prefix string, n int, run int64) []*agent {
	agents := make([]*agent, n)
	for i := range agents {
		agents[i] = &agent{
			name:      fmt.Sprintf("%s-%02d-%d", prefix, i+1, run),
			container: fmt.Sprintf("%s-%s-%02d", c.project, prefix, i+1),
			volume:    fmt.Sprintf("%s-%s-%02d-data", c.project, prefix, i+1),
		}
	}
	return agents
}

// TestAgentsKilled starts agents as containers on the servers' network,
// waits until all of them are READY, and `docker kill`s ten. The killed
// nodes must be DOWN within their heartbeat TTL, the slack and the leader
// grace (from the servers' config), and no other node may be DOWN at any
// time. Started again, the killed agents must be READY again as the same
// nodes, from the identity in their volumes: no node is added and the join
// token is not used again.
func TestAgentsKilled(t *testing.T) {
	c := needCluster(t)
	image := os.Getenv(envAgentImage)
	if image == "" {
		t.Skipf("%s is not set: run deploy/docker/scenarios.sh, which builds the agent image", envAgentImage)
	}
	n := defaultAgents
	if v := os.Getenv(envAgents); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 {
			t.Fatalf("%s=%q: give a number of agents, at least 2", envAgents, v)
		}
	}
	killCount := min(maxAgentsKilled, n/2)
	hb, hbFrom, err := loadHeartbeatTiming()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("heartbeats (from %s): min TTL %s, leader grace %s, %v/s for the fleet",
		hbFrom, hb.minTTL, hb.grace, hb.rate)
	ctx := testContext(t)

	run := time.Now().Unix()
	agents := c.newAgents("agent", n, run)

	watchStart := time.Now()
	w := watchNodes(ctx, c)
	t.Cleanup(w.stop)

	token := c.createJoinToken(ctx, t, n, run)
	c.startAgents(ctx, t, image, token.GetTokenString(), agents)
	started := time.Now()
	nodes, err := waitAgentsReady(ctx, w, agents, agentReadyBound)
	if err != nil {
		t.Fatalf("agents did not enroll: %v", err)
	}
	t.Logf("all %d agents READY %s after the last docker run; %d nodes in the cluster",
		n, time.Since(started).Round(time.Millisecond), len(nodes))
	for i, a := range agents {
		nd := nodes[a.id]
		if nd.GetSite() != agentSite(i) || nd.GetGossipAddr() == "" {
			t.Errorf("node %s: site %q, site pool address %q; want site %s and the address its pool listens on",
				a.name, nd.GetSite(), nd.GetGossipAddr(), agentSite(i))
		}
	}
	tracked := len(nodes)
	ids := map[string]string{} // name -> id
	for _, a := range agents {
		ids[a.name] = a.id
	}

	// Steady heartbeats for a while before the faults.
	sleep(ctx, hb.ttl(tracked))

	rng := rand.New(rand.NewPCG(uint64(run), 0))
	victims := slices.Clone(agents)
	rng.Shuffle(len(victims), func(i, j int) { victims[i], victims[j] = victims[j], victims[i] })
	victims = victims[:killCount]
	slices.SortFunc(victims, func(a, b *agent) int { return strings.Compare(a.container, b.container) })
	isVictim := map[string]bool{}
	var victimIDs, victimContainers []string
	for _, a := range victims {
		isVictim[a.id] = true
		victimIDs = append(victimIDs, a.id)
		victimContainers = append(victimContainers, a.container)
	}
	bound := hb.downBound(tracked)
	t.Logf("killing %d of %d agents: %s; each must be DOWN within %s of its death (TTL %s +%.0f%% jitter, +%.0f%% slack, grace %s, tolerance %s)",
		killCount, n, strings.Join(victimContainers, " "), bound.Round(time.Millisecond),
		hb.ttl(tracked), heartbeatJitter*100, heartbeatSlack*100, hb.grace, downTolerance)

	leaderBefore, err := c.waitLeader(ctx, failoverBound)
	if err != nil {
		t.Fatal(err)
	}
	killAt := time.Now()
	mustDocker(ctx, t, append([]string{"kill"}, victimContainers...)...)
	died, err := finishedAt(ctx, t, victimContainers)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range victims {
		if died[a.container].Before(killAt.Add(-time.Second)) {
			t.Fatalf("%s says it stopped at %s, before it was killed (%s)", a.container, died[a.container], killAt)
		}
	}

	downSeen, err := w.waitSeen(ctx, victimIDs, droverv1.NodeStatus_NODE_STATUS_DOWN, killAt, bound+10*time.Second)
	if err != nil {
		t.Fatalf("killed agents not DOWN: %v", err)
	}
	var slowest time.Duration
	for _, a := range victims {
		took := downSeen[a.id].Sub(died[a.container])
		slowest = max(slowest, took)
		if took > bound {
			t.Errorf("%s (node %s) was seen DOWN %s after its agent died, more than %s",
				a.name, a.id, took.Round(time.Millisecond), bound.Round(time.Millisecond))
		}
	}
	if leaderAfter, err := c.waitLeader(ctx, failoverBound); err != nil {
		t.Error(err)
	} else if leaderAfter != leaderBefore {
		t.Logf("the leader changed from %s to %s while the agents were down; the bound allows for it", leaderBefore, leaderAfter)
	}
	t.Logf("all %d killed agents seen DOWN, the slowest %s after it died (bound %s)",
		killCount, slowest.Round(time.Millisecond), bound.Round(time.Millisecond))
	now := w.snapshot()
	for _, a := range agents {
		if nd := now[a.id]; !isVictim[a.id] && nd.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
			t.Errorf("%s (node %s) is %s while its agent runs", a.name, a.id, nd.GetStatus())
		}
	}

	startAt := time.Now()
	mustDocker(ctx, t, append([]string{"start"}, victimContainers...)...)
	readySeen, err := w.waitSeen(ctx, victimIDs, droverv1.NodeStatus_NODE_STATUS_READY, startAt, agentReadyBound)
	if err != nil {
		t.Fatalf("restarted agents not READY: %v", err)
	}
	slowest = 0
	for _, id := range victimIDs {
		slowest = max(slowest, readySeen[id].Sub(startAt))
	}
	t.Logf("all %d restarted agents READY again, the slowest %s after docker start", killCount, slowest.Round(time.Millisecond))

	// Same nodes, from the identities in the volumes: no node added, no
	// new enrollment with the token.
	final, err := w.list(ctx)
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	if len(final) != len(nodes) {
		t.Errorf("the cluster has %d nodes after the restarts, %d before: a restarted agent enrolled again", len(final), len(nodes))
	}
	byName := map[string]*droverv1.Node{}
	for _, nd := range final {
		byName[nd.GetName()] = nd
	}
	for _, a := range agents {
		nd := byName[a.name]
		switch {
		case nd == nil:
			t.Errorf("node %s is gone", a.name)
		case nd.GetId() != ids[a.name]:
			t.Errorf("node %s has id %s after the restart, %s before", a.name, nd.GetId(), ids[a.name])
		case nd.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY:
			t.Errorf("node %s (%s) is %s at the end", a.name, nd.GetId(), nd.GetStatus())
		}
	}
	c.checkTokenUses(ctx, t, token.GetToken().GetId(), n)
	running, err := docker(ctx, t, append([]string{"inspect", "-f", "{{.Name}} {{.State.Running}} {{.RestartCount}}"}, containers(agents)...)...)
	if err != nil {
		t.Error(err)
	} else if strings.Contains(running, " false ") {
		t.Errorf("not every agent container runs at the end:\n%s", running)
	}

	// No node but a killed one was ever DOWN, and those only after they
	// died: as the watcher saw it, and as the nodes' histories say (which
	// also hold a DOWN that was over between two polls).
	w.stop()
	polls, failures, gap := w.stats()
	t.Logf("node watcher: %d polls, %d failed, longest time without an answer %s", polls, failures, gap.Round(time.Millisecond))
	for id, evs := range w.allEvents() {
		for _, ev := range evs {
			if ev.status != droverv1.NodeStatus_NODE_STATUS_DOWN || ev.initial {
				continue
			}
			if !isVictim[id] {
				t.Errorf("node %s (%s), whose agent was not killed, was seen DOWN at %s", w.name(id), id, ev.at.Format(time.StampMilli))
			} else if ev.at.Before(killAt) {
				t.Errorf("node %s (%s) was seen DOWN at %s, before its agent was killed", w.name(id), id, ev.at.Format(time.StampMilli))
			}
		}
	}
	for _, nd := range final {
		for _, h := range nd.GetHistory() {
			at := h.GetTime().AsTime()
			if h.GetStatus() != droverv1.NodeStatus_NODE_STATUS_DOWN || at.Before(watchStart) {
				continue
			}
			switch {
			case !isVictim[nd.GetId()]:
				t.Errorf("node %s (%s), whose agent was not killed, was DOWN at %s (%s, index %d)",
					nd.GetName(), nd.GetId(), at.Format(time.StampMilli), h.GetReason(), h.GetIndex())
			case at.Before(killAt):
				t.Errorf("node %s (%s) was DOWN at %s, before its agent was killed (%s)",
					nd.GetName(), nd.GetId(), at.Format(time.StampMilli), h.GetReason())
			default:
				t.Logf("%s: DOWN by the leader's clock %s after its agent died (%s)",
					nd.GetName(), at.Sub(died[containerOf(agents, nd.GetId())]).Round(time.Millisecond), h.GetReason())
			}
		}
	}
}

func containers(agents []*agent) []string {
	var out []string
	for _, a := range agents {
		out = append(out, a.container)
	}
	return out
}

func containerOf(agents []*agent, id string) string {
	for _, a := range agents {
		if a.id == id {
			return a.container
		}
	}
	return ""
}

// createJoinToken makes a join token for n agents, through any server.
func (c *cluster) createJoinToken(ctx context.Context, t *testing.T, n int, run int64) *droverv1.CreateTokenResponse {
	t.Helper()
	var res *droverv1.CreateTokenResponse
	var last string
	err := poll(ctx, failoverBound, func(ctx context.Context, attempt int) (bool, error) {
		s := c.servers[attempt%len(c.servers)]
		r, err := call(ctx, func(ctx context.Context) (*connect.Response[droverv1.CreateTokenResponse], error) {
			return c.client(s, false).token.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
				Description: fmt.Sprintf("container scenario agents, run %d", run),
				Ttl:         durationpb.New(time.Hour),
				MaxUses:     uint32(n),
			}))
		})
		if err != nil {
			last = s.name + ": " + errorSummary(err)
			return false, nil
		}
		res = r.Msg
		return true, nil
	})
	if err != nil {
		t.Fatalf("create a join token: %v (last error: %s)", err, last)
	}
	t.Logf("join token %s for %d agents", res.GetToken().GetId(), n)
	return res
}

// checkTokenUses checks that the token with id was used want times.
func (c *cluster) checkTokenUses(ctx context.Context, t *testing.T, id string, want int) {
	t.Helper()
	res, err := call(ctx, func(ctx context.Context) (*connect.Response[droverv1.ListTokensResponse], error) {
		return c.client(c.servers[0], false).token.ListTokens(ctx, connect.NewRequest(&droverv1.ListTokensRequest{}))
	})
	if err != nil {
		t.Errorf("list join tokens: %s", errorSummary(err))
		return
	}
	for _, tok := range res.Msg.GetTokens() {
		if tok.GetId() == id {
			if int(tok.GetUses()) != want {
				t.Errorf("join token %s was used %d times, want %d (one enrollment per agent)", id, tok.GetUses(), want)
			}
			return
		}
	}
	t.Errorf("join token %s is not listed", id)
}

// startAgents makes a volume and starts a container for every agent, on
// the servers' network, enrolling with token through every server's
// address on that network, with flags added to every agent's command
// line. The containers and volumes carry the compose
// project's label and agentLabel; the test removes them when it passes
// and stops them when it fails, leaving them for scenarios.sh to print
// their logs and remove.
func (c *cluster) startAgents(ctx context.Context, t *testing.T, image, token string, agents []*agent, flags ...string) {
	t.Helper()
	labels := func(i int) []string {
		return []string{"--label", "com.docker.compose.project=" + c.project, "--label", fmt.Sprintf("%s=%02d", agentLabel, i+1)}
	}
	var servers []string
	for _, s := range c.servers {
		_, port, err := net.SplitHostPort(s.api)
		if err != nil {
			t.Fatalf("API address of %s: %v", s.name, err)
		}
		servers = append(servers, "--server", net.JoinHostPort(s.clusterIP, port))
	}

	// An earlier run of this test against the same cluster may have left
	// containers behind.
	c.removeAgents(ctx, t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*dockerTimeout)
		defer cancel()
		if t.Failed() {
			if names := c.agentContainers(ctx, t); len(names) > 0 {
				t.Logf("stopping the agents; scenarios.sh prints their logs and removes them")
				_, _ = docker(ctx, t, append([]string{"stop", "-t", "5"}, names...)...)
			}
			return
		}
		c.removeAgents(ctx, t)
	})

	for i, a := range agents {
		mustDocker(ctx, t, append(append([]string{"volume", "create"}, labels(i)...), a.volume)...)
		args := []string{"run", "--detach", "--name", a.container, "--hostname", a.name}
		args = append(args, labels(i)...)
		args = append(args,
			"--network", c.network, "--restart", "no",
			"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
			"--volume", a.volume+":"+agentDataDir,
			"--env", "DROVER_TOKEN", // the value comes from docker's environment, not its command line
			image, "--name", a.name,
			// Two sites: each forms a site gossip pool over the cluster
			// network, encrypted, as agents on real machines do.
			"--site", agentSite(i))
		args = append(args, servers...)
		args = append(args, flags...)
		if _, err := dockerEnv(ctx, t, []string{"DROVER_TOKEN=" + token}, args...); err != nil {
			t.Fatal(err)
		}
	}
}

// agentSite is the site of the i-th agent (from 0).
func agentSite(i int) string { return []string{"site-a", "site-b"}[i%2] }

// agentContainers lists the names of this project's agent containers.
func (c *cluster) agentContainers(ctx context.Context, t *testing.T) []string {
	out, err := docker(ctx, t, "ps", "--all", "--format", "{{.Names}}",
		"--filter", "label=com.docker.compose.project="+c.project, "--filter", "label="+agentLabel)
	if err != nil {
		t.Error(err)
		return nil
	}
	return strings.Fields(out)
}

// removeAgents removes this project's agent containers and volumes.
func (c *cluster) removeAgents(ctx context.Context, t *testing.T) {
	if names := c.agentContainers(ctx, t); len(names) > 0 {
		if _, err := docker(ctx, t, append([]string{"rm", "--force", "--volumes"}, names...)...); err != nil {
			t.Error(err)
		}
	}
	out, err := docker(ctx, t, "volume", "ls", "--quiet",
		"--filter", "label=com.docker.compose.project="+c.project, "--filter", "label="+agentLabel)
	if err != nil {
		t.Error(err)
		return
	}
	if vols := strings.Fields(out); len(vols) > 0 {
		if _, err := docker(ctx, t, append([]string{"volume", "rm"}, vols...)...); err != nil {
			t.Error(err)
		}
	}
}

// finishedAt waits until none of the containers runs (`docker kill`
// returns once the signal is sent) and returns when docker says each of
// them stopped.
func finishedAt(ctx context.Context, t *testing.T, names []string) (map[string]time.Time, error) {
	m := map[string]time.Time{}
	var last string
	err := poll(ctx, 10*time.Second, func(ctx context.Context, _ int) (bool, error) {
		out, err := docker(ctx, t, append([]string{"inspect", "-f", "{{.Name}} {{.State.Running}} {{.State.FinishedAt}}"}, names...)...)
		if err != nil {
			return false, err
		}
		last = out
		for line := range strings.Lines(out) {
			f := strings.Fields(line)
			if len(f) != 3 {
				return false, fmt.Errorf("docker inspect: unexpected line %q", line)
			}
			if f[1] != "false" {
				return false, nil
			}
			ts, err := time.Parse(time.RFC3339Nano, f[2])
			if err != nil {
				return false, fmt.Errorf("docker inspect: finish time of %s: %w", f[0], err)
			}
			m[strings.TrimPrefix(f[0], "/")] = ts
		}
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("killed containers still run (%s): %w", last, err)
	}
	for _, name := range names {
		if _, ok := m[name]; !ok {
			return nil, fmt.Errorf("docker inspect said nothing about %s", name)
		}
	}
	return m, nil
}

// waitAgentsReady waits until every agent's node is READY, notes the node
// ids in agents, and returns every node of the cluster.
func waitAgentsReady(ctx context.Context, w *nodeWatch, agents []*agent, bound time.Duration) (map[string]*droverv1.Node, error) {
	var nodes map[string]*droverv1.Node
	var missing []string
	err := poll(ctx, bound, func(context.Context, int) (bool, error) {
		nodes = w.snapshot()
		byName := map[string]*droverv1.Node{}
		for _, nd := range nodes {
			byName[nd.GetName()] = nd
		}
		missing = missing[:0]
		for _, a := range agents {
			nd := byName[a.name]
			if nd == nil {
				missing = append(missing, a.name+" (not enrolled)")
				continue
			}
			a.id = nd.GetId()
			if nd.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
				missing = append(missing, fmt.Sprintf("%s (%s)", a.name, nd.GetStatus()))
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%d of %d not READY: %s: %w", len(missing), len(agents), strings.Join(missing, ", "), err)
	}
	return nodes, nil
}

// statusEvent is a status the watcher saw a node in, from when it saw it.
type statusEvent struct {
	at      time.Time
	status  droverv1.NodeStatus
	initial bool // the first time the watcher saw the node
}

// nodeWatch lists the cluster's nodes every pollEvery, through each
// server in turn, and records every status change it sees. Its methods
// are safe for concurrent use.
type nodeWatch struct {
	c      *cluster
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex                // guards the fields below
	nodes     map[string]*droverv1.Node // as last seen, by id
	events    map[string][]statusEvent  // by node id
	polls     int
	failures  int
	lastOK    time.Time
	longest   time.Duration // without a successful poll
	lastError string
}

func watchNodes(ctx context.Context, c *cluster) *nodeWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &nodeWatch{
		c: c, cancel: cancel, done: make(chan struct{}),
		nodes: map[string]*droverv1.Node{}, events: map[string][]statusEvent{},
		lastOK: time.Now(),
	}
	go w.run(ctx)
	return w
}

// stop ends the watch and waits for it; it may be called more than once.
func (w *nodeWatch) stop() {
	w.cancel()
	<-w.done
}

func (w *nodeWatch) run(ctx context.Context) {
	defer close(w.done)
	hc := w.c.httpClient()
	defer hc.CloseIdleConnections()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		s := w.c.servers[attempt%len(w.c.servers)]
		nodes, err := listNodes(ctx, w.c.clientWith(hc, s, false))
		w.record(time.Now(), nodes, err)
		sleep(ctx, pollEvery)
	}
}

func listNodes(ctx context.Context, a *api) ([]*droverv1.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	res, err := a.node.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list nodes through %s: %s", a.server.name, errorSummary(err))
	}
	return res.Msg.GetNodes(), nil
}

// list lists the nodes once, through any server that answers.
func (w *nodeWatch) list(ctx context.Context) ([]*droverv1.Node, error) {
	var nodes []*droverv1.Node
	var last error
	err := poll(ctx, failoverBound, func(ctx context.Context, attempt int) (bool, error) {
		var err error
		nodes, err = listNodes(ctx, w.c.client(w.c.servers[attempt%len(w.c.servers)], false))
		last = err
		return err == nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w (last error: %v)", err, last)
	}
	return nodes, nil
}

func (w *nodeWatch) record(now time.Time, nodes []*droverv1.Node, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.polls++
	if err != nil {
		w.failures++
		w.lastError = err.Error()
		return
	}
	w.longest = max(w.longest, now.Sub(w.lastOK))
	w.lastOK = now
	for _, nd := range nodes {
		id := nd.GetId()
		prev, seen := w.nodes[id]
		if !seen || prev.GetStatus() != nd.GetStatus() {
			w.events[id] = append(w.events[id], statusEvent{at: now, status: nd.GetStatus(), initial: !seen})
		}
		w.nodes[id] = nd
	}
}

// snapshot returns the nodes as last seen, by id.
func (w *nodeWatch) snapshot() map[string]*droverv1.Node {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]*droverv1.Node, len(w.nodes))
	for id, nd := range w.nodes {
		out[id] = nd
	}
	return out
}

func (w *nodeWatch) name(id string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nodes[id].GetName()
}

func (w *nodeWatch) allEvents() map[string][]statusEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]statusEvent, len(w.events))
	for id, evs := range w.events {
		out[id] = slices.Clone(evs)
	}
	return out
}

func (w *nodeWatch) stats() (polls, failures int, longest time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polls, w.failures, w.longest
}

// waitSeen waits until each of ids was seen changing to status st at or
// after since, and returns when each was first seen so.
func (w *nodeWatch) waitSeen(ctx context.Context, ids []string, st droverv1.NodeStatus, since time.Time, bound time.Duration) (map[string]time.Time, error) {
	seen := map[string]time.Time{}
	var missing []string
	err := poll(ctx, bound, func(context.Context, int) (bool, error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		missing = missing[:0]
		for _, id := range ids {
			if _, ok := seen[id]; ok {
				continue
			}
			for _, ev := range w.events[id] {
				if ev.status == st && !ev.at.Before(since) {
					seen[id] = ev.at
					break
				}
			}
			if _, ok := seen[id]; !ok {
				missing = append(missing, fmt.Sprintf("%s (%s)", w.nodes[id].GetName(), w.nodes[id].GetStatus()))
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		w.mu.Lock()
		lastErr := w.lastError
		w.mu.Unlock()
		return seen, fmt.Errorf("%d of %d not seen %s: %s (last list error: %q): %w",
			len(missing), len(ids), st, strings.Join(missing, ", "), lastErr, err)
	}
	return seen, nil
}
