package agent

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/droverhq/drover/agent/agenttest"
	"github.com/droverhq/drover/internal/logging"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// gossipWait bounds how long a test waits, in real time, for the pool to
// notice something. memberlist declares a silent member dead after a probe
// (1s), its suspicion timeout (4s in a small pool) and maybe a refutation
// race; a loaded 2-core machine under -race needs the margin.
const gossipWait = 30 * time.Second

func newKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// newTestPool starts a pool on 127.0.0.1 that is closed (abruptly) when
// the test ends, unless the test closed it first.
func newTestPool(t testing.TB, name, site string, key []byte, log *slog.Logger) *gossipPool {
	t.Helper()
	return newTestPoolAt(t, name, site, key, "127.0.0.1:0", log)
}

func newTestPoolAt(t testing.TB, name, site string, key []byte, bind string, log *slog.Logger) *gossipPool {
	t.Helper()
	p, err := newGossipPool(poolConfig{Name: name, Site: site, Key: key, Bind: bind, Logger: log})
	if err != nil {
		t.Fatalf("pool %s: %v", name, err)
	}
	t.Cleanup(func() { _ = p.Close(false) })
	return p
}

// waitUntil polls cond until it returns nil, and fails the test with its
// last error after gossipWait.
func waitUntil(t testing.TB, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(gossipWait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %s", what, err, gossipWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func memberNames(p *gossipPool) []string {
	var out []string
	for _, m := range p.Members() {
		out = append(out, m.Name)
	}
	return out
}

func wantMembers(p *gossipPool, names ...string) func() error {
	slices.Sort(names)
	return func() error {
		if got := memberNames(p); !slices.Equal(got, names) {
			return fmt.Errorf("%s sees %v, want %v", p.name, got, names)
		}
		return nil
	}
}

// Pools of one site find each other and see each other's addresses; a pool
// of another site, with another key, never gets in, even when pointed at
// them. Members that crash become suspects of the others for the suspect
// window, or until they come back; one that leaves on purpose never does.
func TestPoolMembershipAndSuspects(t *testing.T) {
	key := newKey(t)
	// a's clock stamps failures and ages them; memberlist runs on real
	// time whatever it says.
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	advance := func(d time.Duration) { t := start.Add(d); now.Store(&t) }
	a, err := newGossipPool(poolConfig{Name: "n-a", Site: "lab", Key: key, Bind: "127.0.0.1:0",
		Logger: logging.TestLogger(t), Now: func() time.Time { return *now.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(false) })
	b := newTestPool(t, "n-b", "lab", key, logging.TestLogger(t))
	c := newTestPool(t, "n-c", "lab", key, logging.TestLogger(t))
	e := newTestPool(t, "n-e", "lab", key, logging.TestLogger(t))
	// f, g and h stay up throughout. They confirm a's suspicions, which
	// makes memberlist declare a failure after its shortest timeout
	// (Lifeguard waits up to 6 times longer for a suspicion nobody
	// confirms).
	f := newTestPool(t, "n-f", "lab", key, logging.TestLogger(t))
	g := newTestPool(t, "n-g", "lab", key, logging.TestLogger(t))
	h := newTestPool(t, "n-h", "lab", key, logging.TestLogger(t))
	if !strings.HasPrefix(a.Addr(), "127.0.0.1:") || a.Addr() == b.Addr() {
		t.Fatalf("advertised %s and %s, want distinct addresses on 127.0.0.1", a.Addr(), b.Addr())
	}
	if n, err := a.Join([]string{a.Addr(), ""}); n != 0 || err != nil {
		t.Fatalf("joining itself: %d, %v; want nothing done", n, err)
	}
	if n, err := b.Join([]string{a.Addr()}); n != 1 || err != nil {
		t.Fatalf("b joins a: %d, %v", n, err)
	}
	c.JoinAsync([]string{b.Addr()})
	e.JoinAsync([]string{c.Addr(), a.Addr()})
	f.JoinAsync([]string{e.Addr()})
	g.JoinAsync([]string{f.Addr()})
	h.JoinAsync([]string{a.Addr()})
	all := []string{"n-a", "n-b", "n-c", "n-e", "n-f", "n-g", "n-h"}
	for _, p := range []*gossipPool{a, b, c, e, f, g, h} {
		waitUntil(t, "pool forms", wantMembers(p, all...))
	}
	if m := a.Members(); m[1].Addr != b.Addr() || m[2].Addr != c.Addr() {
		t.Errorf("a sees members %v, want b at %s and c at %s", m, b.Addr(), c.Addr())
	}

	// Another site: its own key and label. Its join fails, and neither
	// side ever counts the other.
	d := newTestPool(t, "n-d", "dock", newKey(t), logging.TestLogger(t))
	if n, err := d.Join([]string{a.Addr(), b.Addr()}); n != 0 || err == nil {
		t.Fatalf("another site's pool joined: %d, %v", n, err)
	}
	d.JoinAsync([]string{c.Addr()})
	time.Sleep(2 * time.Second) // long enough for gossip to spread it, if it were let in
	for _, p := range []*gossipPool{a, b, c, e, f, g, h} {
		if err := wantMembers(p, all...)(); err != nil {
			t.Fatal(err)
		}
	}
	if err := wantMembers(d, "n-d")(); err != nil {
		t.Fatal(err)
	}

	// c leaves on purpose: gone, and no suspect. Its intent (node
	// metadata) and its leave spread by gossip each on their own; a member
	// that hears the leave first takes it for a failure, which the leader
	// acts on only once c has also missed its heartbeats. On a machine
	// shared with the rest of the suite that happens, so the test lets
	// the intent reach every member first, as it does on an idle network,
	// and checks that the leave is then never taken for a failure.
	c.leaving.Store(true)
	if err := c.ml.UpdateNode(gossipWait); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*gossipPool{a, b, e, f, g, h} {
		waitUntil(t, "c's intent to leave", func() error {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.leavers["n-c"] {
				return fmt.Errorf("%s has not heard that n-c is leaving", p.name)
			}
			return nil
		})
	}
	if err := c.Close(true); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*gossipPool{a, b, e, f, g, h} {
		waitUntil(t, "c's leave", wantMembers(p, "n-a", "n-b", "n-e", "n-f", "n-g", "n-h"))
		if s := p.Suspects(); len(s) != 0 {
			t.Fatalf("%s suspects %v after c left on purpose", p.name, s)
		}
	}

	// b and e crash: a suspects them.
	bAddr := b.Addr()
	_ = b.Close(false)
	_ = e.Close(false)
	waitUntil(t, "b and e declared failed", func() error {
		s := a.Suspects()
		if slices.Contains(s, "n-c") {
			t.Fatalf("a suspects %v: c left on purpose", s)
		}
		if !slices.Equal(s, []string{"n-b", "n-e"}) {
			return fmt.Errorf("a suspects %v, want [n-b n-e]", s)
		}
		return nil
	})
	if err := wantMembers(a, "n-a", "n-f", "n-g", "n-h")(); err != nil {
		t.Fatal(err)
	}
	a.SetSuspectWindow(10 * time.Second)
	advance(9 * time.Second)
	if s := a.Suspects(); len(s) != 2 {
		t.Fatalf("a suspects %v within the window, want both", s)
	}

	// b comes back, on its old address: no longer a suspect. e stays one
	// until the window has passed.
	b2 := newTestPoolAt(t, "n-b", "lab", key, bAddr, logging.TestLogger(t))
	if _, err := b2.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b back", wantMembers(a, "n-a", "n-b", "n-f", "n-g", "n-h"))
	if s := a.Suspects(); !slices.Equal(s, []string{"n-e"}) {
		t.Fatalf("a suspects %v after b came back, want [n-e]", s)
	}
	advance(11 * time.Second)
	if s := a.Suspects(); len(s) != 0 {
		t.Fatalf("a suspects %v after the window", s)
	}
}

// Agents of one site find each other through the site peers the control
// plane hands out, and report what their pool sees in their heartbeats: a
// peer that crashed as a suspect, a peer that stopped on purpose not at
// all. An agent of another site stays out of the pool.
func TestAgentsFormSitePool(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	type running struct {
		a    *Agent
		clk  *fakeClock
		stop func() error
	}
	startAgent := func(name, site string) running {
		t.Helper()
		cfg := testConfig(t, c)
		cfg.Name, cfg.Site = name, site
		a, clk, _ := newTestAgent(t, cfg)
		regs := len(c.Calls(agenttest.Register))
		stop, _, _ := start(t, a)
		c.WaitForCalls(agenttest.Register, regs+1)
		settle(t, clk) // registered and heartbeated: waiting for the next beat
		return running{a, clk, stop}
	}
	r1 := startAgent("gpu-01", "lab")
	r2 := startAgent("gpu-02", "lab")
	r3 := startAgent("gpu-03", "lab")
	dock := startAgent("dock-01", "dock")
	id := func(r running) string { return r.a.Status().NodeID }
	for _, r := range []running{r1, r2, r3} {
		waitUntil(t, "site pool forms", func() error {
			if n := r.a.Status().GossipMembers; n != 3 {
				return fmt.Errorf("%s sees %d members", id(r), n)
			}
			return nil
		})
	}
	nodes := map[string]agenttest.Node{}
	for _, n := range c.Nodes() {
		nodes[n.ID] = n
	}
	for _, r := range []running{r1, r2, r3, dock} {
		st := r.a.Status()
		if n := nodes[st.NodeID]; n.GossipAddr == "" || n.GossipAddr != st.GossipAddr {
			t.Errorf("node %s registered gossip address %q, its pool listens on %q", st.NodeID, n.GossipAddr, st.GossipAddr)
		}
	}
	if got := dock.a.Status().GossipMembers; got != 1 {
		t.Errorf("the other site's agent sees %d members, want itself alone", got)
	}

	// The pool size reaches the control plane with the next heartbeat.
	r1.clk.fireNext(t)
	waitUntil(t, "heartbeat with the pool size", func() error {
		hb := lastCall(t, c, agenttest.Heartbeat, id(r1)).Request.(*droverv1.HeartbeatRequest)
		if hb.GetGossipMembers() != 3 || len(hb.GetSuspects()) != 0 {
			return fmt.Errorf("heartbeat %v", hb)
		}
		return nil
	})

	// gpu-03 crashes: its pool goes silent without a word, then the agent
	// stops (its leave is a no-op by then).
	crashed := id(r3)
	r3.a.pool.Load().Close(false)
	_ = r3.stop()
	waitUntil(t, "gpu-03 suspected", func() error {
		if s := r1.a.Status().Suspects; !slices.Equal(s, []string{crashed}) {
			return fmt.Errorf("gpu-01 suspects %v", s)
		}
		return nil
	})
	// gpu-02 stops on purpose: it leaves.
	left := id(r2)
	if err := r2.stop(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "gpu-02 gone", func() error {
		if n := r1.a.Status().GossipMembers; n != 1 {
			return fmt.Errorf("gpu-01 sees %d members", n)
		}
		return nil
	})
	r1.clk.fireNext(t)
	waitUntil(t, "heartbeat with the suspect", func() error {
		hb := lastCall(t, c, agenttest.Heartbeat, id(r1)).Request.(*droverv1.HeartbeatRequest)
		if !slices.Equal(hb.GetSuspects(), []string{crashed}) || hb.GetGossipMembers() != 1 {
			return fmt.Errorf("heartbeat %v, want suspect %s and 1 member", hb, crashed)
		}
		return nil
	})
	if s := r1.a.Status().Suspects; slices.Contains(s, left) {
		t.Errorf("gpu-01 suspects %v, including %s, which left on purpose", s, left)
	}

	// Stopping takes the pool down with it.
	if err := r1.stop(); err != nil {
		t.Fatal(err)
	}
	if st := r1.a.Status(); st.GossipAddr != "" || st.GossipMembers != 0 {
		t.Errorf("status after stop: gossip %q with %d members", st.GossipAddr, st.GossipMembers)
	}
}

// lastCall returns the last call to procedure that node made.
func lastCall(t *testing.T, c *agenttest.Cluster, procedure, node string) agenttest.Call {
	t.Helper()
	calls := c.Calls(procedure)
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].NodeID == node {
			return calls[i]
		}
	}
	t.Fatalf("node %s made no %s call", node, procedure)
	return agenttest.Call{}
}

// A node without a site, or with the pool turned off, runs no pool, and
// registers no gossip address.
func TestNoPoolWithoutSite(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	for _, tc := range []struct{ name, site, addr string }{
		{"gpu-01", "", "127.0.0.1:0"},
		{"gpu-02", "lab", ""},
	} {
		cfg := testConfig(t, c)
		cfg.Name, cfg.Site, cfg.GossipAddr = tc.name, tc.site, tc.addr
		a, clk, _ := newTestAgent(t, cfg)
		beats := len(c.Calls(agenttest.Heartbeat))
		stop, _, _ := start(t, a)
		c.WaitForCalls(agenttest.Heartbeat, beats+1)
		settle(t, clk)
		st := a.Status()
		reg := lastCall(t, c, agenttest.Register, st.NodeID).Request.(*droverv1.RegisterRequest)
		hb := lastCall(t, c, agenttest.Heartbeat, st.NodeID).Request.(*droverv1.HeartbeatRequest)
		if st.GossipAddr != "" || st.GossipMembers != 0 || reg.GetGossipAddr() != "" || hb.GetGossipMembers() != 0 {
			t.Errorf("%s (site %q, gossip %q): status %q/%d, registered %q, heartbeat %d members; want no pool",
				tc.name, tc.site, tc.addr, st.GossipAddr, st.GossipMembers, reg.GetGossipAddr(), hb.GetGossipMembers())
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// A pool whose address is taken stops the agent with advice naming the
// flag.
func TestPoolAddressTaken(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, c)
	cfg.GossipAddr = ln.Addr().String()
	a, _, _ := newTestAgent(t, cfg)
	err = runToError(t, a)
	if err == nil || !strings.Contains(Hint(err), "--gossip-addr") {
		t.Fatalf("Run = %v (hint %q), want an error with a hint naming --gossip-addr", err, Hint(err))
	}
}

// poolLogCounter forwards warnings and errors to the test log and counts
// memberlist's reports of failed probes, which say how healthy a pool is.
type poolLogCounter struct {
	slog.Handler
	failedProbes *atomic.Int64
}

func (h poolLogCounter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo
}

func (h poolLogCounter) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "has failed, no acks received") {
		h.failedProbes.Add(1)
	}
	if r.Level < slog.LevelWarn {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h poolLogCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return poolLogCounter{h.Handler.WithAttrs(as), h.failedProbes}
}

func (h poolLogCounter) WithGroup(g string) slog.Handler {
	return poolLogCounter{h.Handler.WithGroup(g), h.failedProbes}
}

// A pool of a few hundred members, all in this process on loopback with
// the production settings, converges to every member alive, stays there
// with no suspect, and releases every goroutine and socket when closed.
//
// One process does the work of N agents on N machines: every member
// relays every join to about 12 others, so the process handles N² × 12
// messages where an agent handles N × 12, in one heap that one collector
// scans. So members join at 10 a second (an agent sees 120 messages a
// second then, nothing for its CPU; 300 pools in one process see 36,000,
// about one of 2 cores), and the collector runs less often, as it would
// for N small heaps. Faster joins, or the default GOGC, starve the probes
// of CPU here, and the pool suspects members that are only slow to be
// scheduled: a test of the machine, not of the pool.
//
// 300 members take 30s of joins and 3,000 goroutines; the race detector,
// which makes each message 5-10 times dearer, runs 50. The short tier
// skips it: it needs the machine to itself (make test-scale runs it so,
// and CI does), because beside the rest of the suite on two cores the
// probes' timeouts measure the machine's load, not the pool.
func TestPoolAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("the pool at scale needs the machine to itself: make test-scale runs it")
	}
	n, joinEvery := 300, 100*time.Millisecond
	if raceEnabled {
		n = 50
	}
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	before := runtime.NumGoroutine()
	key := newKey(t)
	var failedProbes atomic.Int64
	log := slog.New(poolLogCounter{logging.TestLogger(t).Handler(), &failedProbes})
	pools := make([]*gossipPool, n)
	for i := range pools {
		p, err := newGossipPool(poolConfig{Name: fmt.Sprintf("n-%03d", i), Site: "lab", Key: key, Bind: "127.0.0.1:0", Logger: log})
		if err != nil {
			t.Fatalf("pool %d: %v", i, err)
		}
		pools[i] = p
	}
	closed := false
	closeAll := func() {
		if closed {
			return
		}
		closed = true
		var wg sync.WaitGroup
		for _, p := range pools {
			wg.Go(func() { _ = p.Close(false) })
		}
		wg.Wait()
	}
	t.Cleanup(closeAll)

	// Everyone joins through one of three seeds, a join every
	// joinEvery, as a site's agents do when they start together and
	// register with the control plane one after the other.
	start := time.Now()
	seeds := []string{pools[0].Addr(), pools[1].Addr(), pools[2].Addr()}
	var wg sync.WaitGroup
	var rejoins atomic.Int64
	for i, p := range pools[1:] {
		wg.Go(func() {
			// A join that fails is tried again through the next seed,
			// as an agent tries the next peers the control plane sends
			// it: a seed busy past memberlist's TCP timeout on a loaded
			// machine delays a member, it does not keep it out.
			var err error
			for try := range len(seeds) {
				if _, err = p.Join([]string{seeds[(i+try)%len(seeds)]}); err == nil {
					return
				}
				rejoins.Add(1)
			}
			t.Errorf("%s joins through every seed: %v", p.name, err)
		})
		time.Sleep(joinEvery)
	}
	wg.Wait()
	joined := time.Since(start)
	waitUntil(t, "pool converges", func() error {
		for _, p := range pools {
			if got := p.NumMembers(); got != n {
				seen := memberNames(p)
				var missing []string
				for _, q := range pools {
					if !slices.Contains(seen, q.name) {
						missing = append(missing, q.name)
					}
				}
				return fmt.Errorf("%s sees %d of %d members (memberlist: %d), not %v; suspects %v", p.name, got, n, p.ml.NumMembers(), missing, p.Suspects())
			}
		}
		return nil
	})
	converged := time.Since(start)
	probesAtConvergence := failedProbes.Load()

	// Healthy for a while: every member sees every other, nobody fails.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		for _, p := range pools {
			if got, s := p.NumMembers(), p.Suspects(); got != n || len(s) != 0 {
				t.Fatalf("%s sees %d of %d members, suspects %v", p.name, got, n, s)
			}
		}
	}
	t.Logf("%d members: joins done in %v (%d tried again through another seed), converged in %v; failed probes %d while converging, %d after",
		n, joined.Round(time.Millisecond), rejoins.Load(), converged.Round(time.Millisecond), probesAtConvergence, failedProbes.Load()-probesAtConvergence)

	// Closed, everything it started ends and its ports are free again.
	addrs := make([]string, 0, 10)
	for _, p := range pools[:10] {
		addrs = append(addrs, p.Addr())
	}
	closeAll()
	waitUntil(t, "goroutines end", func() error {
		if g := runtime.NumGoroutine(); g > before {
			return fmt.Errorf("%d goroutines, %d before the pools", g, before)
		}
		return nil
	})
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("TCP %s still taken after Close: %v", a, err)
		}
		ln.Close()
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			t.Fatalf("UDP %s still taken after Close: %v", a, err)
		}
		pc.Close()
	}
}

// Close does not wait for a join to a peer that accepted the connection
// and then said nothing: it cuts the stream short.
func TestPoolCloseCutsJoinShort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c // held open, never answered
		}
	}()
	p := newTestPool(t, "n-a", "lab", newKey(t), logging.TestLogger(t))
	p.JoinAsync([]string{ln.Addr().String()})
	var conn net.Conn
	select {
	case conn = <-accepted:
		defer conn.Close()
	case <-time.After(gossipWait):
		t.Fatal("the join never connected")
	}
	start := time.Now()
	if err := p.Close(true); err != nil {
		t.Fatal(err)
	}
	// Without the cut, Close waits out the join's own TCP timeout. The
	// bound is half of that, far above the leave timeout Close really
	// takes, so a loaded machine does not fail it and a hanging join does.
	hang := memberlist.DefaultLANConfig().TCPTimeout
	if d := time.Since(start); d > hang/2 {
		t.Fatalf("Close took %v with a join hanging, want well under the join's TCP timeout %v (it takes about %v)", d, hang, poolLeaveTimeout)
	}
}

// A node whose identity was saved before identities held the site learns
// it when it registers, saves it, starts its pool and registers again to
// say where the pool listens.
func TestLearnsSiteOfOldIdentity(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := testConfig(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	stop, _, _ := start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	id, err := loadIdentity(cfg.DataDir)
	if err != nil || id.Site != "lab" {
		t.Fatalf("identity site %q (%v), want lab", id.Site, err)
	}
	id.Site = "" // as written before
	if err := id.save(cfg.DataDir); err != nil {
		t.Fatal(err)
	}

	regs := len(c.Calls(agenttest.Register))
	a, _, _ = newTestAgent(t, cfg)
	stop, _, _ = start(t, a)
	calls := c.WaitForCalls(agenttest.Register, regs+2)
	first, second := calls[regs].Request.(*droverv1.RegisterRequest), calls[regs+1].Request.(*droverv1.RegisterRequest)
	if first.GetGossipAddr() != "" || !strings.HasPrefix(second.GetGossipAddr(), "127.0.0.1:") {
		t.Fatalf("registered with gossip addresses %q then %q, want none then the pool's", first.GetGossipAddr(), second.GetGossipAddr())
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if id, err := loadIdentity(cfg.DataDir); err != nil || id.Site != "lab" {
		t.Fatalf("identity site %q (%v) after registering, want lab saved", id.Site, err)
	}
}

// Members see where each other serves chunks, also after it changes, and
// a member that stops serving drops out of SitePeers.
func TestPoolGossipsPeerAddresses(t *testing.T) {
	key := newKey(t)
	a, err := newGossipPool(poolConfig{Name: "n-a", Site: "lab", Key: key, Bind: "127.0.0.1:0", PeerAddr: "127.0.0.1:17001"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(false) })
	b := newTestPool(t, "n-b", "lab", key, nil)
	if _, err := b.Join([]string{a.Addr()}); err != nil {
		t.Fatal(err)
	}
	peerAddrs := func(p *gossipPool) map[string]string {
		out := map[string]string{}
		for _, m := range p.Members() {
			out[m.Name] = m.PeerAddr
		}
		return out
	}
	want := func(p *gossipPool, w map[string]string) func() error {
		return func() error {
			if got := peerAddrs(p); !maps.Equal(got, w) {
				return fmt.Errorf("%s sees peer addresses %v, want %v", p.name, got, w)
			}
			return nil
		}
	}
	waitUntil(t, "b learns a's peer address", want(b, map[string]string{"n-a": "127.0.0.1:17001", "n-b": ""}))
	if err := b.SetPeerAddr("127.0.0.1:17002", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := a.SetPeerAddr("", time.Second); err != nil {
		t.Fatal(err)
	}
	both := map[string]string{"n-a": "", "n-b": "127.0.0.1:17002"}
	waitUntil(t, "a learns b's new peer address", want(a, both))
	waitUntil(t, "b sees a stop serving", want(b, both))

	ag := &Agent{}
	ag.pool.Store(b)
	if got := ag.SitePeers(); len(got) != 1 || got[0].ID != "n-b" || got[0].Addr != "127.0.0.1:17002" {
		t.Errorf("SitePeers = %v, want only n-b at 127.0.0.1:17002", got)
	}
}

// Metadata with fields reads as before to agents that knew none, and
// agents read metadata without fields, or with fields they do not know.
func TestPoolMetaFieldsAreCompatible(t *testing.T) {
	p := &gossipPool{}
	addr := "10.0.0.7:7948"
	p.peerAddr.Store(&addr)
	meta := poolDelegate{p}.NodeMeta(512)
	if meta[0] != poolMetaVersion || leavingMeta(meta) {
		t.Errorf("meta %v: version or flags changed", meta)
	}
	if got := peerAddrMeta(meta); got != addr {
		t.Errorf("peer address %q, want %q", got, addr)
	}
	p.leaving.Store(true)
	if meta := (poolDelegate{p}).NodeMeta(512); !leavingMeta(meta) || peerAddrMeta(meta) != "" {
		t.Errorf("a leaving member's meta %v: want leaving and no peer address", meta)
	}
	if meta := (poolDelegate{p}).NodeMeta(2); len(meta) != 2 {
		t.Errorf("meta within a 2-byte limit is %v", meta)
	}
	for _, tc := range []struct {
		meta []byte
		want string
	}{
		{[]byte{1, 0}, ""},
		{[]byte{1, 1}, ""},
		{append([]byte{1, 0, 9, 2, 'x', 'y', 1, byte(len(addr))}, addr...), addr}, // an unknown field first
		{append([]byte{1, 0, 1, 40}, addr...), ""},                                // cut short
		{append([]byte{2, 0, 1, byte(len(addr))}, addr...), ""},                   // a version it does not know
		{append([]byte{1, 0, 1, 12}, "0.0.0.0:7948"...), ""},                      // not dialable
	} {
		if got := peerAddrMeta(tc.meta); got != tc.want {
			t.Errorf("peerAddrMeta(%v) = %q, want %q", tc.meta, got, tc.want)
		}
	}
}

func TestPeerAddresses(t *testing.T) {
	for _, tc := range []struct{ listen, gossip, want string }{
		{"0.0.0.0:7948", "10.0.0.7:7947", "10.0.0.7:7948"},
		{"10.0.0.9:7948", "10.0.0.7:7947", "10.0.0.9:7948"},
		{"[::]:7948", "[fd00::7]:7947", "[fd00::7]:7948"},
		{"", "10.0.0.7:7947", ""},
	} {
		got, err := advertisedPeerAddr(tc.listen, tc.gossip)
		if err != nil || got != tc.want {
			t.Errorf("advertisedPeerAddr(%q, %q) = %q, %v; want %q", tc.listen, tc.gossip, got, err, tc.want)
		}
	}
	if _, err := advertisedPeerAddr("0.0.0.0:0", "10.0.0.7:7947"); err == nil {
		t.Error("port 0 advertised")
	}
	for gossip, want := range map[string]string{"0.0.0.0:7947": "0.0.0.0:7948", "127.0.0.1:0": "127.0.0.1:0", "[::]:7947": "[::]:7948"} {
		if got := PeerAddrNextTo(gossip); got != want {
			t.Errorf("PeerAddrNextTo(%q) = %q, want %q", gossip, got, want)
		}
	}
}
