package bench

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/raftstore"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
)

// store is what a benchmark needs from a Raft store: the log, the stable
// values, and a way to close both.
type store interface {
	raft.LogStore
	raft.StableStore
	io.Closer
}

// storeKind opens one kind of store in an empty directory. Every kind is
// opened durable: each write is synced before it returns.
type storeKind struct {
	name string
	open func(dir string) (store, error)
}

// storeKinds lists the stores compared, Drover's last (see benchStores).
func storeKinds() []storeKind {
	return []storeKind{
		{"boltdb", func(dir string) (store, error) {
			return raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
		}},
		{"wal", func(dir string) (store, error) {
			return raftwal.Open(dir)
		}},
		{"pebble", func(dir string) (store, error) {
			return raftstore.Open(dir, raftstore.DefaultOptions())
		}},
	}
}

// BenchmarkRaftApply measures throughput: many clients applying small
// commands at once to a three-server cluster, the load a busy control plane
// puts on its leader.
func BenchmarkRaftApply(b *testing.B) {
	benchStores(b, 64)
}

// BenchmarkSingleClientApply measures the latency of one apply on an idle
// cluster: one client, one command at a time, so every apply pays for a full
// round of appends and syncs.
func BenchmarkSingleClientApply(b *testing.B) {
	benchStores(b, 1)
}

// benchStores runs runApply for every kind of store, one after the other in
// the same run. The baselines go first, so that Pebble's line can also
// report its applies/s as a multiple of each (x-boltdb, x-wal).
func benchStores(b *testing.B, clients int) {
	rates := map[string]float64{}
	for _, kind := range storeKinds() {
		b.Run("store="+kind.name, func(b *testing.B) {
			rate := runApply(b, kind, clients)
			rates[kind.name] = rate
			if kind.name != "pebble" {
				return
			}
			for _, base := range []string{"boltdb", "wal"} {
				if r := rates[base]; r > 0 {
					b.ReportMetric(rate/r, "x-"+base)
				}
			}
		})
	}
}

// commandSize is the size of each applied command, about that of a small
// desired-state change in Drover.
const commandSize = 100

// runApply starts a cluster on kind, then has the given number of client
// goroutines apply commands until the benchmark has run long enough. It
// reports applies per second and the p50 and p99 latency of one apply, and
// returns the applies per second.
func runApply(b *testing.B, kind storeKind, clients int) float64 {
	settleDisk()
	c := startCluster(b, kind, 3)
	leader := c.leader(b)
	settleDisk()

	cmd := make([]byte, commandSize)
	for i := range cmd {
		cmd[i] = byte('a' + i%26)
	}
	// b.Loop hands out one apply per iteration to whichever client is free,
	// so the benchmark function (and the cluster start above) runs once.
	work := make(chan struct{})
	latencies := make([][]time.Duration, clients)
	var mu sync.Mutex // guards failed and firstErr
	var failed int
	var firstErr error
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			for range work {
				start := time.Now()
				if err := leader.Apply(cmd, 10*time.Second).Error(); err != nil {
					mu.Lock()
					if failed++; failed == 1 {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				latencies[i] = append(latencies[i], time.Since(start))
			}
		})
	}
	start := time.Now()
	for b.Loop() {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)

	if failed > 0 {
		b.Fatalf("%d applies failed, the first with: %v", failed, firstErr)
	}
	all := slices.Concat(latencies...)
	slices.Sort(all)
	rate := float64(len(all)) / elapsed.Seconds()
	b.ReportMetric(rate, "applies/s")
	b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	if got := c.applied(); got < uint64(len(all)) {
		b.Fatalf("no FSM applied more than %d commands, but %d were acknowledged", got, len(all))
	}
	return rate
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cluster is n hashicorp/raft servers talking over real TCP on loopback,
// each with its own durable store in its own directory.
type cluster struct {
	logger hclog.Logger
	nodes  []*node
}

type node struct {
	raft  *raft.Raft
	fsm   *countingFSM
	trans *raft.NetworkTransport
	store store
}

// config is the Raft configuration every server runs with.
func config(id raft.ServerID, logger hclog.Logger) *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = id
	conf.Logger = logger
	// Up to 512 entries per append and per store write: the leader turns a
	// burst of applies into one StoreLogs call, and so into one sync, which
	// is where a store's batching shows.
	conf.MaxAppendEntries = 512
	// Buffer the leader's apply channel (MaxAppendEntries deep), so that
	// clients queue applies while the leader syncs, and it takes them all in
	// one batch when it is done.
	conf.BatchApplyCh = true
	// Loopback answers in microseconds, but a saturated two-core machine
	// syncing three stores can stall for tens of milliseconds; half a second
	// elects a leader quickly at start without losing it under load.
	conf.HeartbeatTimeout = 500 * time.Millisecond
	conf.ElectionTimeout = 500 * time.Millisecond
	conf.LeaderLeaseTimeout = 500 * time.Millisecond
	// No snapshots during a run: they would add FSM and snapshot-store
	// work, which is not what is being compared, at moments that differ
	// between runs.
	conf.SnapshotThreshold = 1 << 40
	conf.SnapshotInterval = time.Hour
	return conf
}

// startCluster starts n servers, bootstraps them as one cluster and waits
// for a leader. The cluster is shut down when b ends.
func startCluster(b *testing.B, kind storeKind, n int) *cluster {
	b.Helper()
	logger := hclog.New(&hclog.LoggerOptions{Name: "raft", Output: b.Output(), Level: hclog.Error})
	c := &cluster{logger: logger}
	b.Cleanup(c.shutdown)
	var servers []raft.Server
	for i := range n {
		trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, logger)
		if err != nil {
			b.Fatalf("transport: %v", err)
		}
		s, err := kind.open(b.TempDir())
		if err != nil {
			trans.Close()
			b.Fatalf("open %s store: %v", kind.name, err)
		}
		c.nodes = append(c.nodes, &node{fsm: &countingFSM{}, trans: trans, store: s})
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprint(i)), Address: trans.LocalAddr()})
	}
	for i, nd := range c.nodes {
		conf := config(servers[i].ID, logger)
		// The log store sits behind a cache of recent entries, as in a
		// production server, so the leader reads the entries it replicates
		// from memory whatever the store.
		logs, err := raft.NewLogCache(512, nd.store)
		if err != nil {
			b.Fatal(err)
		}
		snaps := raft.NewDiscardSnapshotStore()
		if err := raft.BootstrapCluster(conf, logs, nd.store, snaps, nd.trans, raft.Configuration{Servers: servers}); err != nil {
			b.Fatalf("bootstrap: %v", err)
		}
		r, err := raft.NewRaft(conf, nd.fsm, logs, nd.store, snaps, nd.trans)
		if err != nil {
			b.Fatalf("start server %d: %v", i, err)
		}
		nd.raft = r
	}
	return c
}

// leader waits for the cluster to elect a leader and returns it.
func (c *cluster) leader(b *testing.B) *raft.Raft {
	b.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			if nd.raft.State() == raft.Leader {
				// Wait until the leader's no-op is committed, so the first
				// timed apply does not pay for the election's tail.
				if err := nd.raft.Barrier(10 * time.Second).Error(); err != nil {
					b.Fatalf("barrier: %v", err)
				}
				return nd.raft
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatal("no leader after 20s")
	return nil
}

// applied returns the most commands any server's FSM has applied.
func (c *cluster) applied() uint64 {
	var most uint64
	for _, nd := range c.nodes {
		most = max(most, nd.fsm.n.Load())
	}
	return most
}

// shutdown stops every server, then closes the transports and stores.
func (c *cluster) shutdown() {
	// Servers going away one by one log connection errors about each other;
	// they say nothing about the run.
	c.logger.SetLevel(hclog.Off)
	for _, nd := range c.nodes {
		if nd.raft != nil {
			_ = nd.raft.Shutdown().Error()
		}
	}
	for _, nd := range c.nodes {
		_ = nd.trans.Close()
		_ = nd.store.Close()
	}
}

// countingFSM counts applied commands. It implements raft.BatchingFSM, so
// Raft hands it each group of committed entries in one call.
type countingFSM struct {
	n atomic.Uint64
}

var _ raft.BatchingFSM = (*countingFSM)(nil)

func (f *countingFSM) Apply(l *raft.Log) any {
	if l.Type == raft.LogCommand {
		f.n.Add(1)
	}
	return nil
}

func (f *countingFSM) ApplyBatch(logs []*raft.Log) []any {
	var n uint64
	for _, l := range logs {
		if l.Type == raft.LogCommand {
			n++
		}
	}
	f.n.Add(n)
	return make([]any, len(logs))
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) { return emptySnapshot{}, nil }

func (f *countingFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

type emptySnapshot struct{}

func (emptySnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }

func (emptySnapshot) Release() {}
