package process_test

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/process"
)

// Flags of the agent benchmarks. Like the others, each does a fixed amount
// of work per iteration; run them with -benchtime=1x.
var (
	enrollAgents      = flag.Int("enroll.agents", 1000, "agents that enroll in each BenchmarkEnroll cluster")
	enrollConcurrency = flag.Int("enroll.concurrency", acceptQueue, "enrollments (and, in BenchmarkHeartbeat's setup, registrations) in flight at once")
	enrollServers     = flag.String("enroll.servers", "1,3", "cluster sizes BenchmarkEnroll runs, comma-separated")
)

// acceptQueue is quic-go's protocol.MaxAcceptQueueSize: a server refuses
// (CONNECTION_REFUSED) a connection whose handshake completes while this
// many others wait to be accepted, which a busy two-core box reaches with
// a hundred agents dialing at once. drover-agent retries such a refusal
// after a backoff; the benchmarks fail instead, so by default they keep no
// more handshakes in flight than the queue holds.
const acceptQueue = 32

// benchAgentInventoryHost is the host name in the simulated agents'
// inventory; node names are set per agent.
const benchAgentInventoryHost = "gpu-server"

// BenchmarkEnroll measures enrollment: a join token with max_uses N, then
// N simulated agents enroll against the leader, -enroll.concurrency at a
// time, each exactly as drover-agent does it: GetClusterInfo over a
// connection that trusts nothing, the CA checked against the token, then
// Enroll with a CSR for its own ECDSA P-256 key over a new HTTP/3
// connection that trusts only that CA (two QUIC handshakes per agent).
// Keys and CSRs are made before the clock starts. Every enrollment is one
// Raft write (ENROLL_NODE, which also counts the token's use); the server
// signs the CSR before proposing it.
//
// It reports enrollments per second, the latency of one agent's whole
// enrollment (p50, p99) and the leader's CPU time per enrollment, for a
// single server and a three-server cluster (-enroll.servers). It checks
// every certificate as the agent does, that the token counts N uses and
// that one more enrollment is refused as used up.
//
// The servers and the agents share the machine's cores: on a small box
// the agents' TLS handshakes take CPU the leader would otherwise have, so
// the leader's CPU per enrollment is the figure that carries over.
func BenchmarkEnroll(b *testing.B) {
	sizes, err := intList("enroll.servers", *enrollServers)
	if err != nil {
		b.Fatal(err)
	}
	if *enrollAgents < 1 || *enrollConcurrency < 1 {
		b.Fatalf("-enroll.agents %d, -enroll.concurrency %d: need at least one", *enrollAgents, *enrollConcurrency)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprintf("servers=%d", n), func(b *testing.B) { benchEnroll(b, n) })
	}
}

func benchEnroll(b *testing.B, servers int) {
	agents, par := *enrollAgents, *enrollConcurrency
	ctx := b.Context()
	c := process.Start(b, servers, benchOptions(b))
	leader, err := c.Leader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	addr := c.APIAddr(leader)
	pid, err := serverPID(c, leader)
	if err != nil {
		b.Fatal(err)
	}
	op, err := newOperator(c, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer op.close()
	inv := benchInventory(benchAgentInventoryHost)

	// Warm up connections, the Pebble memtable and the Go runtimes with a
	// few enrollments on a token of their own.
	const warmup = 20
	if _, err := enrollFleet(ctx, addr, op, "warm", warmup, par, inv); err != nil {
		b.Fatal(err)
	}
	tok, err := op.createToken(ctx, agents)
	if err != nil {
		b.Fatal(err)
	}
	keys, err := makeKeys(agents, "bench")
	if err != nil {
		b.Fatal(err)
	}
	info0, err := c.ServerInfo(ctx, leader)
	if err != nil {
		b.Fatal(err)
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	self0 := selfCPU()
	timings := make([]enrollTiming, agents)
	ids := make([]string, agents)
	b.ResetTimer()
	start := time.Now()
	err = forEach(agents, par, func(i int) error {
		a, tm, err := simEnroll(ctx, addr, tok, fmt.Sprintf("bench-%05d", i), keys[i], inv)
		timings[i] = tm
		if err != nil {
			return err
		}
		ids[i] = a.node.GetId()
		return nil
	})
	elapsed := time.Since(start)
	b.StopTimer()
	cpu1, cpuErr := procCPU(pid)
	self1 := selfCPU()
	if err != nil {
		b.Fatal(err)
	}
	if cpuErr != nil {
		b.Fatal(cpuErr)
	}
	info1, err := c.ServerInfo(ctx, leader)
	if err != nil {
		b.Fatal(err)
	}

	// Every agent got its own node; the token counts every use and
	// refuses one more.
	if seen := uniq(ids); seen != agents {
		b.Fatalf("%d enrollments made %d distinct node ids", agents, seen)
	}
	if uses, err := op.tokenUses(ctx, tok.ID); err != nil {
		b.Fatal(err)
	} else if int(uses) != agents {
		b.Fatalf("join token %s counts %d uses after %d enrollments", tok.ID, uses, agents)
	}
	extra, err := newSimKey("one-too-many")
	if err != nil {
		b.Fatal(err)
	}
	_, _, err = simEnroll(ctx, addr, tok, "one-too-many", extra, inv)
	if r := apierror.Reason(err); r != droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP {
		b.Fatalf("enrollment %d with a token of max_uses %d: got %v (reason %v), want a refusal as used up", agents+1, agents, err, r)
	}

	total := make([]time.Duration, agents)
	rpc := make([]time.Duration, agents)
	for i, tm := range timings {
		total[i], rpc[i] = tm.total, tm.enroll
	}
	slices.Sort(total)
	slices.Sort(rpc)
	entries := info1.GetLastLogIndex() - info0.GetLastLogIndex()
	leaderCPU := cpu1 - cpu0
	rate := float64(agents) / elapsed.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate, "enroll/s")
	b.ReportMetric(ms3(quantile(total, 0.5)), "p50-ms")
	b.ReportMetric(ms3(quantile(total, 0.99)), "p99-ms")
	b.ReportMetric(ms3(leaderCPU/time.Duration(agents)), "leader-cpu-ms/enroll")
	b.ReportMetric(float64(entries)/float64(agents), "raft-entries/enroll")
	b.Logf("%d servers, leader %s: %d agents enrolled, %d at a time, in %v: %.0f enrollments/s; "+
		"whole enrollment p50 %v p99 %v max %v (Enroll call on its new connection: p50 %v p99 %v); "+
		"leader CPU %v (%.2f ms per enrollment, %.2f cores), load generator CPU %v (%.2f cores); %d Raft entries",
		servers, leader, agents, par, elapsed.Round(time.Millisecond), rate,
		rnd(quantile(total, 0.5)), rnd(quantile(total, 0.99)), rnd(total[len(total)-1]),
		rnd(quantile(rpc, 0.5)), rnd(quantile(rpc, 0.99)),
		leaderCPU, ms3(leaderCPU/time.Duration(agents)), leaderCPU.Seconds()/elapsed.Seconds(),
		(self1 - self0).Round(time.Millisecond), (self1-self0).Seconds()/elapsed.Seconds(), entries)
}

// enrollFleet creates a token for n enrollments and enrolls n agents named
// prefix-NNNNN through addr, par at a time.
func enrollFleet(ctx context.Context, addr string, op *operator, prefix string, n, par int,
	inv *droverv1.NodeInventory) ([]*simAgent, error) {
	tok, err := op.createToken(ctx, n)
	if err != nil {
		return nil, err
	}
	keys, err := makeKeys(n, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]*simAgent, n)
	err = forEach(n, par, func(i int) error {
		a, _, err := simEnroll(ctx, addr, tok, fmt.Sprintf("%s-%05d", prefix, i), keys[i], inv)
		out[i] = a
		return err
	})
	return out, err
}

func makeKeys(n int, prefix string) ([]simKey, error) {
	keys := make([]simKey, n)
	err := forEach(n, 4, func(i int) error {
		var err error
		keys[i], err = newSimKey(fmt.Sprintf("%s-%05d", prefix, i))
		return err
	})
	return keys, err
}

func uniq(ss []string) int {
	seen := make(map[string]bool, len(ss))
	for _, s := range ss {
		seen[s] = true
	}
	return len(seen)
}

// ms3 is d in milliseconds, to the microsecond.
func ms3(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func rnd(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
