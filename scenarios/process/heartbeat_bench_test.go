package process_test

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/scenarios/process"
)

// Flags of BenchmarkHeartbeat.
var (
	hbNodes        = flag.String("hb.nodes", "100,1000,5000", "fleet sizes BenchmarkHeartbeat runs, comma-separated; each node holds its own QUIC connection")
	hbServers      = flag.Int("hb.servers", 1, "servers in each BenchmarkHeartbeat cluster (the leader takes the heartbeats)")
	hbDuration     = flag.Duration("hb.duration", 5*time.Second, "measured window of each BenchmarkHeartbeat mode")
	hbWarmup       = flag.Duration("hb.warmup", time.Second, "load before each measured window, not measured (the first mode also warms every connection up)")
	hbInflight     = flag.Int("hb.inflight", 256, "heartbeat calls in flight at once in BenchmarkHeartbeat's first three modes")
	hbStreams      = flag.Int("hb.streams", 32, "heartbeat calls in flight per connection in BenchmarkHeartbeat's multiplexed mode")
	hbDialInflight = flag.Int("hb.dial-inflight", acceptQueue, "heartbeats in flight in BenchmarkHeartbeat's new-connection-per-heartbeat mode")
	hbGzip         = flag.Bool("hb.gzip", true, "simulated agents accept gzip-compressed answers, as drover-agent's Connect client does; false shows what the leader saves when it does not compress them")
	hbPerf         = flag.String("hb.perf", "", "directory: record the leader with `perf record -g` during each BenchmarkHeartbeat window and write `perf report` and `perf script` text there")
)

// benchHeartbeatTTL is BenchmarkHeartbeat's heartbeat_min_ttl unless
// -process.config sets one.
const benchHeartbeatTTL = 10 * time.Minute

// warmHeartbeatsPerConn is how many heartbeats every connection carries
// before the first mode's window: a fresh QUIC connection still probes its
// path MTU with the first packets it sends, which a long-lived agent
// connection has long finished.
const warmHeartbeatsPerConn = 3

// warmupLimit bounds how much longer than -hb.warmup the first mode may
// take to give every connection its warm-up heartbeats.
const warmupLimit = 2 * time.Minute

// hbTarget is the heartbeats per second one leader core should sustain.
const hbTarget = 20000

// BenchmarkHeartbeat measures what a heartbeat costs the leader. For each
// fleet size in -hb.nodes it starts a fresh cluster (-hb.servers, default
// one server), enrolls and registers that many simulated agents, each
// holding its own QUIC connection with its own node certificate (one
// HTTP/3 connection is one certificate is one node), and then drives
// heartbeats at the leader as fast as it answers, in four modes:
//
//   - conns=N,streams=1, the fleet's shape: -hb.inflight workers take
//     turns over every node's connection, so each connection carries at
//     most one call at a time and every connection of the fleet is used.
//     This is the honest figure for a fleet whose agents keep their
//     connection between heartbeats.
//   - conns=N,heartbeat-stream: the fleet's shape again, but each node
//     sends its heartbeats as messages on one long-lived HeartbeatStream
//     (opened during the warm-up), as drover-agent does: no QUIC stream
//     is opened or closed per heartbeat.
//   - conns=C,streams=S: C nodes each keep S heartbeats in flight on
//     their one connection (-hb.inflight in all, S = -hb.streams). No
//     agent does this (each sends one heartbeat per interval); packets and
//     acknowledgements carry several calls, so this is the leader's cost
//     of handling the request itself with the per-packet share amortised:
//     a lower bound, not a fleet.
//   - dial-per-heartbeat: every heartbeat on a new QUIC connection (a full
//     TLS 1.3 handshake with the node's certificate, no resumption, as the
//     agent's transport is configured), -hb.dial-inflight at a time. This
//     is what each heartbeat costs when the agent's connection has idled
//     out between heartbeats: the server's QUIC idle timeout is quic-go's
//     default of 30s, and the agent heartbeats every TTL/3.
//
// Each mode runs -hb.warmup (the first mode also until every connection
// has carried a few heartbeats), then a measured window of -hb.duration,
// and reports, on the leader: heartbeats per second; the leader process's
// CPU time over the window (utime+stime from /proc/PID/stat) and hence
// heartbeats per leader CPU-second ("hb/cpu-s": what one fully used core
// would sustain; the target is 20,000); and the growth of the leader's
// Raft log (last index, from GetServerInfo) per second, which must stay at
// zero however many nodes there are: heartbeats never go through the log.
//
// The load generator runs in this process on the same cores as the
// servers (the development box has two, shared): the agents' QUIC and TLS
// work takes CPU the leader would otherwise use, so heartbeats per second
// is what this box sustains, not what the leader could, while the leader's
// CPU time per heartbeat does not depend on who else runs. That is the
// figure to compare. Every heartbeat is checked (a READY node with a TTL),
// and the leader's drover_heartbeats_total must grow by exactly the
// heartbeats the agents saw answered; no node may be down afterwards.
// With -v it also logs the UDP datagrams per heartbeat (all of the box's
// traffic, so other processes' too) and the leader's allocation per
// heartbeat.
//
// The servers run with a heartbeat_min_ttl of ten minutes (unless
// -process.config sets one), so that no node expires while thousands of
// others enroll and register: the simulated agents send no heartbeats
// until the measurement starts. What a heartbeat costs does not depend on
// the TTL it is answered with.
//
// With -hb.perf DIR the leader is recorded with `perf record -g` during
// each window, and `perf report` and `perf script` output is written to
// DIR (perf's own sampling then adds a little to the leader's CPU time).
// -hb.gzip=false makes the simulated agents refuse gzip-compressed
// answers, which drover-agent accepts: the difference is what the leader
// spends compressing 30-byte heartbeat answers.
func BenchmarkHeartbeat(b *testing.B) {
	sizes, err := intList("hb.nodes", *hbNodes)
	if err != nil {
		b.Fatal(err)
	}
	if *hbInflight < 1 || *hbStreams < 1 || *hbDialInflight < 1 || *hbServers < 1 || *hbDuration <= 0 || *hbWarmup < 0 {
		b.Fatalf("-hb.inflight %d, -hb.streams %d, -hb.dial-inflight %d, -hb.servers %d, -hb.duration %v, -hb.warmup %v: out of range",
			*hbInflight, *hbStreams, *hbDialInflight, *hbServers, *hbDuration, *hbWarmup)
	}
	if *hbPerf != "" {
		if _, err := exec.LookPath("perf"); err != nil {
			b.Fatalf("-hb.perf: %v", err)
		}
		if err := os.MkdirAll(*hbPerf, 0o755); err != nil {
			b.Fatalf("-hb.perf: %v", err)
		}
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			f := startFleet(b, n)
			spread := min(*hbInflight, n)
			name := fmt.Sprintf("conns=%d,streams=1", n)
			b.Run(name, func(b *testing.B) {
				f.measure(b, fmt.Sprintf("nodes=%d-%s", n, name), spread, warmHeartbeatsPerConn*int64(n), func(w, k int) error {
					return f.agents[turn(n, spread, w, k)].heartbeat(b.Context())
				})
			})
			name = fmt.Sprintf("conns=%d,heartbeat-stream", n)
			b.Run(name, func(b *testing.B) {
				defer f.closeBeats()
				f.measure(b, fmt.Sprintf("nodes=%d-%s", n, name), spread, warmHeartbeatsPerConn*int64(n), func(w, k int) error {
					return f.agents[turn(n, spread, w, k)].streamHeartbeat(b.Context())
				})
			})
			streams := *hbStreams
			conns := min(max(1, *hbInflight/streams), n)
			name = fmt.Sprintf("conns=%d,streams=%d", conns, streams)
			b.Run(name, func(b *testing.B) {
				f.measure(b, fmt.Sprintf("nodes=%d-%s", n, name), conns*streams, 0, func(w, _ int) error {
					return f.agents[w/streams].heartbeat(b.Context())
				})
			})
			dialers := min(*hbDialInflight, n)
			b.Run("dial-per-heartbeat", func(b *testing.B) {
				f.measure(b, fmt.Sprintf("nodes=%d-dial-per-heartbeat", n), dialers, 0, func(w, k int) error {
					return f.agents[turn(n, dialers, w, k)].dialHeartbeat(b.Context(), f.ca, f.addr, f.clientOpts...)
				})
			})
		})
	}
}

// closeBeats ends every node's heartbeat stream.
func (f *fleet) closeBeats() {
	for _, a := range f.agents {
		a.closeBeats()
	}
}

// turn is the node worker w of workers sends its k-th heartbeat for: the
// workers split the nodes (w, w+workers, w+2·workers, …) and each goes
// round its share, so no node has two calls in flight.
func turn(nodes, workers, w, k int) int {
	per := (nodes - w + workers - 1) / workers
	return w + (k%per)*workers
}

// fleet is a cluster with enrolled, registered agents whose sessions are
// open to the leader.
type fleet struct {
	c          *process.Cluster
	leader     string
	addr       string
	pid        int
	op         *operator
	ca         *x509.Certificate
	clientOpts []connect.ClientOption
	agents     []*simAgent
}

// startFleet starts a cluster and enrolls and registers n agents, whose
// connections stay open until the benchmark ends.
func startFleet(b *testing.B, n int) *fleet {
	return startFleetOf(b, *hbServers, n)
}

// startFleetOf is startFleet with a cluster of servers servers.
func startFleetOf(b *testing.B, servers, n int) *fleet {
	ctx := b.Context()
	opts := benchOptions(b)
	if opts.Config == nil {
		opts.Config = map[string]any{}
	}
	if _, ok := opts.Config["heartbeat_min_ttl"]; !ok {
		opts.Config["heartbeat_min_ttl"] = benchHeartbeatTTL.String()
	}
	c := process.Start(b, servers, opts)
	f := &fleet{c: c}
	var err error
	if f.leader, err = c.Leader(ctx); err != nil {
		b.Fatal(err)
	}
	f.addr = c.APIAddr(f.leader)
	if f.pid, err = serverPID(c, f.leader); err != nil {
		b.Fatal(err)
	}
	if f.op, err = newOperator(c, f.addr); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.op.close)
	if f.ca, err = clusterCA(c); err != nil {
		b.Fatal(err)
	}
	if !*hbGzip {
		f.clientOpts = append(f.clientOpts, connect.WithAcceptCompression("gzip", nil, nil))
	}
	inv := benchInventory(benchAgentInventoryHost)
	start := time.Now()
	f.agents, err = enrollFleet(ctx, f.addr, f.op, "node", n, *enrollConcurrency, inv)
	// Registered after process.Start's cleanup, so connections close
	// before the servers are killed.
	b.Cleanup(func() {
		for _, a := range f.agents {
			if a != nil {
				a.close()
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	enrolled := time.Since(start)
	err = forEach(n, *enrollConcurrency, func(i int) error {
		a := f.agents[i]
		a.openSession(f.ca, f.addr, f.clientOpts...)
		return a.register(ctx, inv)
	})
	if err != nil {
		b.Fatal(err)
	}
	registered := time.Since(start) - enrolled
	m, err := f.op.metrics(ctx, f.addr)
	if err != nil {
		b.Fatal(err)
	}
	if got := m[`drover_nodes{status="ready"}`]; int(got) != n {
		b.Fatalf("the leader counts %v ready nodes after %d registered", got, n)
	}
	// What the leader and the box do with no agent traffic: Raft,
	// gossip, the heartbeat tick, and other people's processes.
	idle0, err := procCPU(f.pid)
	if err != nil {
		b.Fatal(err)
	}
	udp0, err := readUDPStats()
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(time.Second)
	idle1, _ := procCPU(f.pid)
	udp1, _ := readUDPStats()
	logVerbose(b, "%d nodes enrolled in %v and registered in %v (%d at a time, inventory %d bytes); idle for 1s: leader %.3f cores, "+
		"%d UDP datagrams on the box; load average %s",
		n, enrolled.Round(time.Millisecond), registered.Round(time.Millisecond), *enrollConcurrency, proto.Size(inv),
		(idle1 - idle0).Seconds(), udp1.in-udp0.in, loadAvg())
	return f
}

// clusterCA reads the cluster CA certificate the agents pin.
func clusterCA(c *process.Cluster) (*x509.Certificate, error) {
	raw, err := os.ReadFile(c.CAFile())
	if err != nil {
		return nil, err
	}
	return pki.ParseCertPEM(raw)
}

// measure runs workers goroutines calling call, for -hb.warmup and until
// minCalls calls have been answered, then for the measured window, and
// reports the window's figures as b's metrics.
func (f *fleet) measure(b *testing.B, label string, workers int, minCalls int64, call func(w, k int) error) {
	ctx := b.Context()
	m0, err := f.op.metrics(ctx, f.addr)
	if err != nil {
		b.Fatal(err)
	}
	g := startLoad(workers, call)
	fail := func(err error) {
		b.Helper()
		_, _ = g.halt()
		b.Fatal(err)
	}
	wait := func(d time.Duration, calls int64) {
		b.Helper()
		start := time.Now()
		for end := start.Add(d); time.Now().Before(end) || g.calls.Load() < calls; {
			if err := g.failed(); err != nil {
				fail(err)
			}
			if err := ctx.Err(); err != nil {
				fail(err)
			}
			if time.Since(start) > d+warmupLimit {
				fail(fmt.Errorf("%s: only %d of the %d heartbeats of the warm-up answered after %v", label, g.calls.Load(), calls, time.Since(start).Round(time.Second)))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	warmStart := time.Now()
	wait(*hbWarmup, minCalls)
	warm := time.Since(warmStart)
	info0, err := f.c.ServerInfo(ctx, f.leader)
	if err != nil {
		fail(err)
	}
	var perf *exec.Cmd
	perfData := filepath.Join(*hbPerf, label+".perf.data")
	if *hbPerf != "" {
		perf = exec.Command("perf", "record", "-F", "999", "-g", "-o", perfData, "-p", strconv.Itoa(f.pid),
			"--", "sleep", strconv.FormatFloat(hbDuration.Seconds(), 'f', 3, 64))
		if out, err := os.Create(perfData + ".log"); err == nil {
			perf.Stdout, perf.Stderr = out, out
			defer out.Close()
		}
		if err := perf.Start(); err != nil {
			fail(fmt.Errorf("perf record: %w", err))
		}
	}
	b.ResetTimer()
	udp0, udpErr0 := readUDPStats()
	cpu0, err := procCPU(f.pid)
	if err != nil {
		fail(err)
	}
	self0, n0, t0 := selfCPU(), g.calls.Load(), time.Now()
	wait(*hbDuration, 0)
	cpu1, err := procCPU(f.pid)
	self1, n1, t1 := selfCPU(), g.calls.Load(), time.Now()
	udp1, udpErr1 := readUDPStats()
	load := loadAvg()
	b.StopTimer()
	if err != nil {
		fail(err)
	}
	if err := errors.Join(udpErr0, udpErr1); err != nil {
		fail(err)
	}
	info1, err := f.c.ServerInfo(ctx, f.leader)
	if err != nil {
		fail(err)
	}
	total, err := g.halt()
	if err != nil {
		b.Fatal(err)
	}
	if perf != nil {
		if err := perf.Wait(); err != nil {
			b.Fatalf("perf record: %v (see %s.log)", err, perfData)
		}
		perfReport(b, perfData)
	}

	// The leader handled exactly the heartbeats the agents saw answered,
	// and every node is still ready.
	m1, err := f.op.metrics(ctx, f.addr)
	if err != nil {
		b.Fatal(err)
	}
	cpuNow, err := procCPU(f.pid)
	if err != nil {
		b.Fatal(err)
	}
	if got := int64(m1["drover_heartbeats_total"] - m0["drover_heartbeats_total"]); got != total {
		b.Fatalf("the leader counted %d heartbeats, the agents %d", got, total)
	}
	if ready, down := m1[`drover_nodes{status="ready"}`], m1[`drover_nodes{status="down"}`]; int(ready) != len(f.agents) || down != 0 {
		b.Fatalf("after the window the leader counts %v ready and %v down nodes of %d", ready, down, len(f.agents))
	}
	// The server's own CPU counter (also /proc/self/stat) agrees with the
	// process read here, so the PID is the leader's.
	if own := time.Duration(m1["process_cpu_seconds_total"] * float64(time.Second)); (own - cpuNow).Abs() > 500*time.Millisecond {
		b.Fatalf("leader PID %d: /proc says %v of CPU, the server's metrics %v", f.pid, cpuNow, own)
	}

	secs := t1.Sub(t0).Seconds()
	hbs := n1 - n0
	leaderCPU := (cpu1 - cpu0).Seconds()
	if hbs == 0 || leaderCPU <= 0 {
		b.Fatalf("window of %.2fs: %d heartbeats, %.2fs of leader CPU: nothing to report", secs, hbs, leaderCPU)
	}
	entries := info1.GetLastLogIndex() - info0.GetLastLogIndex()
	perCore := float64(hbs) / leaderCPU
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(hbs)/secs, "hb/s")
	b.ReportMetric(perCore, "hb/cpu-s")
	b.ReportMetric(float64(entries)/secs, "raft-writes/s")
	b.ReportMetric(leaderCPU/secs, "leader-cores")
	b.ReportMetric((self1-self0).Seconds()/secs, "agents-cores")
	verdict := "meets"
	if perCore < hbTarget {
		verdict = "MISSES"
	}
	b.Logf("%s: %d heartbeats in %.2fs, %d in flight: %.0f hb/s; leader CPU %.2fs (%.2f cores, %.1f µs per heartbeat) = "+
		"%.0f heartbeats per leader CPU-second, %s the target of %d; Raft log +%d entries (%.2f/s)",
		label, hbs, secs, workers, float64(hbs)/secs, leaderCPU, leaderCPU/secs, leaderCPU/float64(hbs)*1e6,
		perCore, verdict, hbTarget, entries, float64(entries)/secs)
	alloc, gcs := "?", "?"
	if a1, ok := m1["go_memstats_alloc_bytes_total"]; ok {
		alloc = fmt.Sprintf("%.1f KiB", (a1-m0["go_memstats_alloc_bytes_total"])/float64(total)/1024)
	}
	if c1, ok := m1["go_gc_duration_seconds_count"]; ok {
		gcs = fmt.Sprintf("%.0f", c1-m0["go_gc_duration_seconds_count"])
	}
	logVerbose(b, "%s: warm-up %v; agents' CPU %.2f cores; UDP datagrams on the box (both ways) per heartbeat %.2f, "+
		"%d receive-buffer drops; leader allocation per heartbeat %s, %s GC cycles during the run; load average %s",
		label, warm.Round(time.Millisecond), (self1-self0).Seconds()/secs, float64(udp1.in-udp0.in)/float64(hbs),
		udp1.rcvbufErrors-udp0.rcvbufErrors, alloc, gcs, load)
}

// perfReport writes `perf report` (self time by symbol) and `perf script`
// (every sample's stack) beside a recording, while the recorded binary
// still exists.
func perfReport(b *testing.B, data string) {
	for _, r := range []struct {
		suffix string
		args   []string
	}{
		{".report.txt", []string{"report", "--stdio", "--no-children", "--sort", "symbol", "-g", "none", "--percent-limit", "0.3"}},
		{".script.txt", []string{"script", "-F", "comm,tid,ip,sym"}},
	} {
		args := append(slices.Clone(r.args[:1]), append([]string{"-i", data}, r.args[1:]...)...)
		out, err := exec.Command("perf", args...).Output()
		if err != nil {
			b.Fatalf("perf %v: %v", args, err)
		}
		if err := os.WriteFile(data+r.suffix, out, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	logVerbose(b, "perf output: %s.{report,script}.txt", data)
}
