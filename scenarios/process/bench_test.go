package process_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/scenarios/process"
)

// Each benchmark does a fixed amount of work in one iteration, whatever
// b.N is; run them with -benchtime=1x.
var (
	failoverKills = flag.Int("failover.kills", 20, "leader kills in BenchmarkLeaderFailover")
	latencyWrites = flag.Int("latency.writes", 1000, "sequential writes per cluster in BenchmarkWriteLatency")
	serverConfig  = flag.String("process.config", "",
		`JSON server config for the benchmark clusters, e.g. {"raft_heartbeat_timeout":"250ms"} (default: the server's defaults)`)
)

// benchOptions applies -process.config. A benchmark prints at most ten
// lines unless -v is given, so server output, which would crowd out the
// results, is kept back and shown only when the benchmark fails (or as it
// comes with -v).
func benchOptions(b *testing.B) process.Options {
	var opts process.Options
	if *serverConfig != "" {
		if err := json.Unmarshal([]byte(*serverConfig), &opts.Config); err != nil {
			b.Fatalf("-process.config: %v", err)
		}
		b.Logf("server config: %s", *serverConfig)
	}
	if testing.Verbose() {
		return opts
	}
	var mu sync.Mutex
	var lines []string
	opts.Log = func(line string) {
		mu.Lock()
		lines = append(lines, line)
		mu.Unlock()
	}
	// Registered before process.Start's cleanup, so it runs after every
	// server has been killed and its output collected.
	b.Cleanup(func() {
		if b.Failed() {
			mu.Lock()
			defer mu.Unlock()
			for _, l := range lines {
				b.Log(l)
			}
		}
	})
	return opts
}

// logVerbose logs only with -v: a benchmark prints at most ten lines
// otherwise, and those are kept for the results.
func logVerbose(b *testing.B, format string, args ...any) {
	b.Helper()
	if testing.Verbose() {
		b.Logf(format, args...)
	}
}

// noticed returns, for each server in the trace, when it first answered
// other than by forwarding to the unreachable old leader: the moment its
// Raft heartbeat timed out (or it had learned of a new leader), give or
// take one retry round.
func noticed(trace []attempt) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, a := range trace {
		if _, done := out[a.server]; done {
			continue
		}
		if !strings.HasSuffix(a.outcome(), "/leader-unreachable") {
			out[a.server] = a.at
		}
	}
	return out
}

// BenchmarkLeaderFailover measures how long writes stop when the leader
// dies: in a three-process cluster with durable storage it kills the
// leader with SIGKILL, then tries a small write against the survivors in
// turn (each attempt bounded by 500 ms) until one is acknowledged. The
// sample is the time from the kill to that acknowledgement. The killed
// server is restarted and caught up before the next kill.
func BenchmarkLeaderFailover(b *testing.B) {
	kills := *failoverKills
	if kills < 1 {
		b.Fatalf("-failover.kills %d: need at least one", kills)
	}
	c := process.Start(b, 3, benchOptions(b))
	const model = "failover"
	leader, err := c.Leader(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	createModel(b, c, leader, model)
	samples := make([]time.Duration, 0, kills)
	// When the first and the second survivor stopped forwarding to the
	// dead leader, per kill: each stops when its Raft heartbeat times out,
	// and a survivor votes for the other only once it has.
	var firstNotice, lastNotice []time.Duration
	retried := 0 // writes before a kill that were not committed at the first attempt
	write := 0
	b.ResetTimer()
	for k := 1; k <= kills; k++ {
		ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
		leader, err := c.Leader(ctx)
		if err != nil {
			b.Fatalf("kill %d: %v", k, err)
		}
		follower := others(c.Live(), leader)[0]
		// The cluster works before the kill: a write through a follower
		// is forwarded to the leader and committed.
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		_, trace, err := writeUntilCommitted(wctx, c, []string{follower}, model, write)
		wcancel()
		if err != nil {
			b.Fatalf("kill %d: write through follower %s before the kill: %v (attempts: %s)", k, follower, err, summarize(trace))
		}
		if len(trace) > 1 {
			retried++
			logVerbose(b, "kill %2d: the write through follower %s before the kill needed %d attempts: %s", k, follower, len(trace), summarize(trace))
		}
		write++
		survivors := others(c.Live(), leader)

		killedAt := time.Now()
		c.Kill(leader)
		offset := time.Since(killedAt) // trace times count from after the kill
		_, trace, err = writeUntilCommitted(ctx, c, survivors, model, write)
		took := time.Since(killedAt)
		write++
		if err != nil {
			b.Fatalf("kill %d: %v (attempts: %s)", k, err, summarize(trace))
		}
		samples = append(samples, took)
		var seen []time.Duration
		for _, at := range noticed(trace) {
			seen = append(seen, at+offset)
		}
		slices.Sort(seen)
		if len(seen) > 0 {
			firstNotice = append(firstNotice, seen[0])
		}
		switch {
		case len(seen) > 1:
			lastNotice = append(lastNotice, seen[1])
		case len(seen) == 1:
			// The other survivor's first answer not forwarded to the dead
			// leader was the commit itself.
			lastNotice = append(lastNotice, took)
		}
		newLeader, _ := c.Leader(ctx)
		logVerbose(b, "kill %2d: killed %s at %s, write committed after %4dms (%d attempts; new leader %s; survivors stopped forwarding to %s at %v): %s",
			k, leader, killedAt.Format("15:04:05.000"), took.Milliseconds(), len(trace), newLeader, leader, ms(seen), summarize(trace))

		if err := c.Restart(leader); err != nil {
			b.Fatalf("kill %d: %v", k, err)
		}
		if err := c.WaitCaughtUp(ctx, leader); err != nil {
			b.Fatalf("kill %d: %v", k, err)
		}
		cancel()
	}
	b.StopTimer()
	b.Logf("failover per kill, ms, in kill order: %v", ms(samples))
	slices.Sort(samples)
	slices.Sort(firstNotice)
	slices.Sort(lastNotice)
	median, p90, worst := quantile(samples, 0.5), quantile(samples, 0.9), samples[len(samples)-1]
	b.Logf("failover over %d kills: median %v, p90 %v, max %v, min %v", len(samples),
		median.Round(time.Millisecond), p90.Round(time.Millisecond), worst.Round(time.Millisecond), samples[0].Round(time.Millisecond))
	b.Logf("survivors stopped forwarding to the dead leader after (median): first %v, second %v",
		quantile(firstNotice, 0.5).Round(time.Millisecond), quantile(lastNotice, 0.5).Round(time.Millisecond))
	if retried > 0 {
		b.Logf("%d of the %d writes through a follower before a kill needed retries (see -v)", retried, kills)
	}
	b.ReportMetric(0, "ns/op") // one iteration of fixed work: ns/op means nothing
	b.ReportMetric(median.Seconds(), "median-s")
	b.ReportMetric(p90.Seconds(), "p90-s")
	b.ReportMetric(worst.Seconds(), "max-s")
}

// ms renders durations as whole milliseconds.
func ms(ds []time.Duration) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.Milliseconds()
	}
	return out
}

// latency is one cluster size's result in BenchmarkWriteLatency.
type latency struct{ p50, p99 time.Duration }

// BenchmarkWriteLatency measures one client writing sequentially to the
// leader (CreateVersion, acknowledged once committed and applied) of a
// durable three-process cluster, against the same writes to a single
// server in the same run: the ratio is what replication to a quorum costs.
func BenchmarkWriteLatency(b *testing.B) {
	results := map[int]latency{}
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("servers=%d", n), func(b *testing.B) {
			writes := *latencyWrites
			if writes < 1 {
				b.Fatalf("-latency.writes %d: need at least one", writes)
			}
			c := process.Start(b, n, benchOptions(b))
			ctx := b.Context()
			leader, err := c.Leader(ctx)
			if err != nil {
				b.Fatal(err)
			}
			const model = "latency"
			createModel(b, c, leader, model)
			models := c.Client(leader).Models
			one := func(i int) time.Duration {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				start := time.Now()
				if _, err := models.CreateVersion(wctx, connect.NewRequest(versionRequest(model, i))); err != nil {
					b.Fatalf("write %d to leader %s: %v", i, leader, err)
				}
				return time.Since(start)
			}
			// Warm up connections, the Pebble memtable and the Go runtime.
			const warmup = 50
			for i := range warmup {
				one(i)
			}
			lat := make([]time.Duration, writes)
			b.ResetTimer()
			start := time.Now()
			for i := range writes {
				lat[i] = one(warmup + i)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			r := latency{p50: quantile(lat, 0.5), p99: quantile(lat, 0.99)}
			results[n] = r
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(writes)/elapsed.Seconds(), "writes/s")
			b.Logf("%d servers, %d sequential writes to leader %s: p50 %v, p99 %v, max %v, %.0f writes/s",
				n, writes, leader, r.p50, r.p99, lat[len(lat)-1], float64(writes)/elapsed.Seconds())
			if base, ok := results[1]; ok && n > 1 {
				b.ReportMetric(float64(r.p50)/float64(base.p50), "p50-x-1server")
				b.ReportMetric(float64(r.p99)/float64(base.p99), "p99-x-1server")
			}
		})
	}
}
