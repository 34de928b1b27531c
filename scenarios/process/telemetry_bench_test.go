package process_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent/telemetry"
	"github.com/droverhq/drover/agent/telemetry/telemetrytest"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Flags of BenchmarkTelemetryIngest.
var (
	telNodes    = flag.String("tel.nodes", "100,1000", "fleet sizes BenchmarkTelemetryIngest runs, comma-separated; each node holds its own QUIC connection and certificate")
	telServers  = flag.String("tel.servers", "1,3", "cluster sizes BenchmarkTelemetryIngest runs, comma-separated; with more than one, every window is copied to a peer before the ack")
	telBatches  = flag.String("tel.batches", "2,64", "windows per ShipTelemetry call, comma-separated: a node's steady state (what closed since the last round) and a backlog's drain (the agent's batch of 64)")
	telInflight = flag.Int("tel.inflight", 64, "baseline heartbeats, and at most as many ShipTelemetry calls, in flight at once, one per node connection")
	telWindows  = flag.Int("tel.windows-inflight", 256, "windows in flight at once: ShipTelemetry calls in flight are this over the batch size (at least one, at most -tel.inflight)")
	telDuration = flag.Duration("tel.duration", 5*time.Second, "measured window of each BenchmarkTelemetryIngest mode")
	telWarmup   = flag.Duration("tel.warmup", time.Second, "load before each measured window, not measured")
	telRequests = flag.Int("tel.requests", 300, "digits requests observed into the template window (its sketches fill and stop growing after about 100)")
)

// BenchmarkTelemetryIngest measures what taking agents' telemetry windows
// costs the servers. For each cluster size in -tel.servers and fleet size
// in -tel.nodes it starts a fresh cluster and enrolls and registers that
// many simulated agents, each with its own node certificate and QUIC
// connection (BenchmarkHeartbeat's harness). Then, with calls spread over
// every node's connection, at most one per connection at a time:
//
//   - heartbeat: the baseline, measured the same way in the same run,
//     -tel.inflight at a time.
//   - batch=B: ShipTelemetry calls of B windows each, as the agent's
//     shipper sends them, -tel.windows-inflight/B at a time (so a 64-window
//     backlog drain is a few agents at once, not every one). Each window is a digits window as drover-agent's
//     collector makes it (64 pixel inputs, 10 logits and their argmax,
//     latency and error sketches: -tel.requests requests observed by the
//     real collector), about 21 KB encoded, relabelled with the sending
//     node's id and its own minute so that every window is a new key in
//     the store.
//
// The agents ship to the leader. With peers, the server copies every
// window to one peer (rendezvous over the node id, so the copies spread
// over the other servers) before it acknowledges. CPU is that of every
// server of the cluster together (utime+stime of each process from
// /proc/PID/stat): the receiving server, the peers storing the copies, and
// whatever Raft and gossip cost meanwhile; so "windows/cpu-s" is windows
// per CPU-second of the whole cluster, the cost of one window wherever it
// lands. The same sum is used for the heartbeat baseline, and the ratio
// of the two is reported as "hb-per-window": how many heartbeats cost the
// servers what one window does.
//
// It reports windows per second (what this box sustains, with the load
// generator on the same cores), windows per server CPU-second, and the
// p50 and p99 of a call's ack latency; it checks that every window was
// stored (the leader's drover_telemetry_windows_total{outcome="stored"}
// grows by exactly the windows the agents saw acknowledged, none refused)
// and that no copy to a peer failed.
func BenchmarkTelemetryIngest(b *testing.B) {
	sizes, err := intList("tel.nodes", *telNodes)
	if err != nil {
		b.Fatal(err)
	}
	clusters, err := intList("tel.servers", *telServers)
	if err != nil {
		b.Fatal(err)
	}
	batches, err := intList("tel.batches", *telBatches)
	if err != nil {
		b.Fatal(err)
	}
	if *telInflight < 1 || *telWindows < 1 || *telDuration <= 0 || *telWarmup < 0 || *telRequests < 1 {
		b.Fatalf("-tel.inflight %d, -tel.duration %v, -tel.warmup %v, -tel.requests %d: out of range",
			*telInflight, *telDuration, *telWarmup, *telRequests)
	}
	tmpl, err := digitsWindow(b, *telRequests)
	if err != nil {
		b.Fatal(err)
	}
	size := proto.Size(tmpl)
	for _, servers := range clusters {
		for _, n := range sizes {
			b.Run(fmt.Sprintf("servers=%d/nodes=%d", servers, n), func(b *testing.B) {
				f := startFleetOf(b, servers, n)
				pids := make([]int, 0, servers)
				for _, name := range f.c.Names() {
					pid, err := serverPID(f.c, name)
					if err != nil {
						b.Fatal(err)
					}
					pids = append(pids, pid)
				}
				ships := make([]droverv1connect.TelemetryServiceClient, n)
				for i, a := range f.agents {
					ships[i] = droverv1connect.NewTelemetryServiceClient(&http.Client{Transport: a.session}, "https://"+f.addr,
						connect.WithReadMaxBytes(simMaxMessage))
				}
				workers := min(*telInflight, n)
				var hbPerCPU float64
				b.Run("heartbeat", func(b *testing.B) {
					r := measureCluster(b, f, pids, workers, func(ctx context.Context, w, k int) (int, error) {
						return 1, f.agents[turn(n, workers, w, k)].heartbeat(ctx)
					})
					hbPerCPU = r.perCPU
					b.ReportMetric(r.perSec, "hb/s")
					b.ReportMetric(r.perCPU, "hb/cpu-s")
					b.ReportMetric(r.p50.Seconds()*1e3, "p50-ms")
					b.ReportMetric(r.p99.Seconds()*1e3, "p99-ms")
					b.ReportMetric(r.cores, "server-cores")
				})
				// Every window of a node gets its own minute, counting
				// back from now, so none overwrites another.
				seq := make([]atomic.Int64, n)
				base := time.Now().Truncate(time.Minute)
				for _, batch := range batches {
					calls := max(1, min(workers, *telWindows/batch))
					b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
						m0, err := f.op.metrics(b.Context(), f.addr)
						if err != nil {
							b.Fatal(err)
						}
						r := measureCluster(b, f, pids, calls, func(ctx context.Context, w, k int) (int, error) {
							i := turn(n, calls, w, k)
							ws := make([][]byte, batch)
							for j := range ws {
								end := base.Add(-time.Duration(seq[i].Add(1)) * time.Minute)
								var err error
								if ws[j], err = relabel(tmpl, f.agents[i].node.GetId(), end); err != nil {
									return 0, err
								}
							}
							res, err := ships[i].ShipTelemetry(ctx, connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: ws}))
							if err != nil {
								return 0, fmt.Errorf("ship telemetry %s: %w", f.agents[i].name, err)
							}
							if got := res.Msg.GetStored(); int(got) != batch || len(res.Msg.GetRefused()) > 0 {
								return 0, fmt.Errorf("ship telemetry %s: %d of %d windows stored, refused %v", f.agents[i].name, got, batch, res.Msg.GetRefused())
							}
							return batch, nil
						})
						m1, err := f.op.metrics(b.Context(), f.addr)
						if err != nil {
							b.Fatal(err)
						}
						const stored = `drover_telemetry_windows_total{outcome="stored"}`
						if got := int64(m1[stored] - m0[stored]); got != r.all {
							b.Fatalf("the leader counted %d windows stored, the agents saw %d acknowledged", got, r.all)
						}
						const copyFailures = "drover_telemetry_copy_failures_total"
						if _, ok := m1[copyFailures]; !ok {
							b.Fatalf("the leader exports no %s", copyFailures)
						}
						if got := m1[copyFailures] - m0[copyFailures]; got != 0 {
							b.Fatalf("%v copies to a peer failed: the peers' share of the CPU is not that of a copy per window", got)
						}
						b.ReportMetric(r.perSec, "windows/s")
						b.ReportMetric(r.perCPU, "windows/cpu-s")
						b.ReportMetric(r.p50.Seconds()*1e3, "p50-ms")
						b.ReportMetric(r.p99.Seconds()*1e3, "p99-ms")
						b.ReportMetric(r.cores, "server-cores")
						b.ReportMetric(float64(size)*r.perSec/(1<<20), "MiB/s")
						if hbPerCPU > 0 {
							b.ReportMetric(hbPerCPU/r.perCPU, "hb-per-window")
						}
						b.Logf("servers=%d nodes=%d batch=%d, %d calls in flight: %d windows of %d bytes in %.2fs: %.0f windows/s, %.0f per server CPU-second "+
							"(%.2f server cores), ack p50 %v p99 %v; a window costs the servers what %.1f heartbeats do; load average %s",
							servers, n, batch, calls, r.total, size, r.secs, r.perSec, r.perCPU, r.cores,
							r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), hbPerCPU/r.perCPU, loadAvg())
					})
				}
			})
		}
	}
}

// ingestResult is one measured window of calls.
type ingestResult struct {
	total          int64 // items (heartbeats, windows) acknowledged in the window
	all            int64 // items acknowledged, warm-up included
	secs, cores    float64
	perSec, perCPU float64
	p50, p99       time.Duration
}

// measureCluster runs workers goroutines calling call (which returns how
// many items it carried) for -tel.warmup, then for -tel.duration, and
// returns the measured window's rates against the CPU of every server in
// pids together.
func measureCluster(b *testing.B, f *fleet, pids []int, workers int, call func(ctx context.Context, w, k int) (int, error)) ingestResult {
	ctx := b.Context()
	var (
		items     atomic.Int64
		all       atomic.Int64
		measuring atomic.Bool
		mu        sync.Mutex
		lats      []time.Duration
	)
	g := startLoad(workers, func(w, k int) error {
		t0 := time.Now()
		cctx, cancel := context.WithTimeout(ctx, simRPCTimeout)
		n, err := call(cctx, w, k)
		cancel()
		if err != nil {
			return err
		}
		all.Add(int64(n))
		if measuring.Load() {
			lat := time.Since(t0)
			items.Add(int64(n))
			mu.Lock()
			lats = append(lats, lat)
			mu.Unlock()
		}
		return nil
	})
	fail := func(err error) {
		b.Helper()
		_, _ = g.halt()
		b.Fatal(err)
	}
	sleep := func(d time.Duration) {
		b.Helper()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if err := g.failed(); err != nil {
				fail(err)
			}
		}
	}
	sleep(*telWarmup)
	cpu := func() time.Duration {
		var sum time.Duration
		for _, pid := range pids {
			c, err := procCPU(pid)
			if err != nil {
				fail(err)
			}
			sum += c
		}
		return sum
	}
	b.ResetTimer()
	cpu0, t0 := cpu(), time.Now()
	measuring.Store(true)
	sleep(*telDuration)
	measuring.Store(false)
	cpu1, t1 := cpu(), time.Now()
	b.StopTimer()
	if _, err := g.halt(); err != nil {
		b.Fatal(err)
	}
	r := ingestResult{total: items.Load(), all: all.Load(), secs: t1.Sub(t0).Seconds()}
	used := (cpu1 - cpu0).Seconds()
	if r.total == 0 || used <= 0 || len(lats) == 0 {
		b.Fatalf("window of %.2fs: %d items, %.2fs of server CPU: nothing to report", r.secs, r.total, used)
	}
	r.cores = used / r.secs
	r.perSec = float64(r.total) / r.secs
	r.perCPU = float64(r.total) / used
	slices.Sort(lats)
	r.p50 = lats[len(lats)/2]
	r.p99 = lats[min(len(lats)-1, len(lats)*99/100)]
	b.ReportMetric(0, "ns/op")
	return r
}

// relabel encodes a copy of tmpl as node's window ending at end.
func relabel(tmpl *droverv1.TelemetryWindow, node string, end time.Time) ([]byte, error) {
	w := proto.CloneOf(tmpl)
	w.NodeId = node
	w.Start = timestamppb.New(end.Add(-time.Minute))
	w.End = timestamppb.New(end)
	return proto.Marshal(w)
}

// digitsWindow returns one closed window of the digits classifier as
// drover-agent's collector makes it: requests digits requests (64 pixel
// values of 0–16) and answers (10 logits), observed by the real collector
// into a one-minute window on a clock the test moves.
func digitsWindow(b *testing.B, requests int) (*droverv1.TelemetryWindow, error) {
	sp, err := telemetry.OpenSpool(b.TempDir(), telemetry.SpoolOptions{MaxBytes: 64 << 20, Merge: telemetry.MergeWindows})
	if err != nil {
		return nil, err
	}
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	spooled := make(chan struct{}, 1)
	cfg := telemetry.DefaultCollectorConfig()
	cfg.NodeID, cfg.Spool, cfg.Tick = "template", sp, time.Millisecond
	cfg.Now = func() time.Time { return time.Unix(0, now.Load()) }
	cfg.Notify = func() {
		select {
		case spooled <- struct{}{}:
		default:
		}
	}
	c, err := telemetry.NewCollector(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(b.Context())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.Run(ctx)
	}()
	defer func() { cancel(); wg.Wait() }()
	rng := rand.New(rand.NewPCG(1, 2))
	for range requests {
		e := c.Get()
		e.Deployment, e.Model, e.Version, e.Status = "digits", "digits", 1, 200
		e.Latency = time.Duration(200+rng.IntN(800)) * time.Microsecond
		e.CaptureRequest(telemetrytest.DigitsRequest(rng), cfg.CaptureBytes)
		e.CaptureResponse(telemetrytest.DigitsResponse(rng), cfg.CaptureBytes)
		c.Submit(e)
	}
	// Let the collector take every request before the window closes.
	for deadline := time.Now().Add(time.Minute); c.Stats().Observed < uint64(requests); {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("template window: the collector observed %d of %d requests", c.Stats().Observed, requests)
		}
		time.Sleep(time.Millisecond)
	}
	now.Add(int64(2 * time.Minute))
	select {
	case <-spooled:
	case <-time.After(time.Minute):
		return nil, fmt.Errorf("template window: the collector spooled nothing")
	}
	es := sp.Batch(1)
	if len(es) != 1 {
		return nil, fmt.Errorf("template window: %d spooled records", len(es))
	}
	w, err := sketch.UnmarshalWindow(es[0].Data)
	if err != nil {
		return nil, err
	}
	if got := len(w.GetProfile().GetInputs()) + len(w.GetProfile().GetOutputs()); got < 75 {
		return nil, fmt.Errorf("template window: %d features, want 64 inputs and 11 outputs", got)
	}
	return w, nil
}
