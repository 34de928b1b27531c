package server_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// lacks returns the chunks of tr that node n's store does not hold.
func lacks(n *cluster.Node, tr *modelTree) error {
	s := n.Server()
	if s == nil {
		return fmt.Errorf("%s is down", n.Name)
	}
	missing := 0
	for _, d := range tr.keys {
		if !s.ChunkStore().Has(blobstore.Key(d)) {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%s lacks %d of %d chunks", n.Name, missing, len(tr.keys))
	}
	return nil
}

// A server that was down while a version was pushed copies its chunks
// from the others once it is back; then any one of the servers that held
// them at the push can go without losing a byte of the version.
func TestFillAfterServerReturns(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.ChunkFillInterval = server.Duration(200 * time.Millisecond)
	}})
	leader := c.Leader()
	var followers []*cluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			followers = append(followers, n)
		}
	}
	ctx := testCtx(t, 2*time.Minute)
	mustCreateModel(t, c.Client(followers[0], false), "llama")
	down := followers[1]
	c.Kill(down)
	tr := makeTree(t, 21)
	_, fin := push(ctx, t, artifactClient(t, c, followers[0]), tr, "llama")
	version := fin.GetVersion().GetVersion()
	for _, n := range []*cluster.Node{leader, followers[0]} {
		if err := lacks(n, tr); err != nil {
			t.Fatalf("after the push: %v", err)
		}
	}

	if err := c.Restart(down); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, 30*time.Second, down.Name+" filled its store", func() error { return lacks(down, tr) })
	t.Logf("%s filled %d chunks in %v", down.Name, len(tr.keys), time.Since(start).Round(time.Millisecond))

	var size float64
	for _, d := range tr.keys {
		size += float64(tr.refs[d].Size)
	}
	eventually(t, 10*time.Second, down.Name+" metrics", func() error {
		_, body := httpGet(t, c, down, "/metrics")
		got := map[string]float64{
			"drover_chunks_missing":          metricValue(body, "drover_chunks_missing"),
			"drover_chunk_fill_chunks_total": metricValue(body, "drover_chunk_fill_chunks_total"),
			"drover_chunk_fill_bytes_total":  metricValue(body, "drover_chunk_fill_bytes_total"),
		}
		want := map[string]float64{
			"drover_chunks_missing":          0,
			"drover_chunk_fill_chunks_total": float64(len(tr.keys)),
			"drover_chunk_fill_bytes_total":  size,
		}
		for k, w := range want {
			if got[k] != w {
				return fmt.Errorf("%s = %v, want %v", k, got[k], w)
			}
		}
		return nil
	})

	// Lose one of the two servers the push left the chunks on: the two
	// left hold every chunk themselves and serve it.
	c.Kill(leader)
	for _, n := range []*cluster.Node{followers[0], down} {
		if err := lacks(n, tr); err != nil {
			t.Fatalf("with %s gone: %v", leader.Name, err)
		}
		ac := artifactClient(t, c, n)
		for _, d := range tr.keys {
			var data []byte
			eventually(t, 20*time.Second, "GetChunk from "+n.Name, func() error {
				res, err := ac.GetChunk(ctx, connect.NewRequest(&droverv1.GetChunkRequest{Model: "llama", Version: version, Digest: d[:]}))
				if err != nil {
					return err
				}
				data = res.Msg.GetData()
				return nil
			})
			if artifact.Sum(data) != d {
				t.Fatalf("GetChunk %s from %s returned other bytes", d, n.Name)
			}
		}
	}
}

// A server rebuilt after losing its disk fills its chunk store from the
// others; so does the server a push left out, without waiting for its
// fill interval.
func TestFillRebuiltServer(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		// Longer than the test: only the new version, the start and the
		// retries bring rounds on.
		cfg.ChunkFillInterval = server.Duration(time.Hour)
	}})
	ctx := testCtx(t, 2*time.Minute)
	l := c.Leader()
	mustCreateModel(t, c.Client(l, false), "llama")
	tr := makeTree(t, 22)
	push(ctx, t, artifactClient(t, c, l), tr, "llama")
	for _, n := range c.Nodes() {
		eventually(t, 20*time.Second, n.Name+" holds the new version", func() error { return lacks(n, tr) })
	}

	f := followerOf(t, c, l)
	c.Kill(f)
	if err := os.RemoveAll(filepath.Join(f.DataDir(), "chunks")); err != nil {
		t.Fatal(err)
	}
	overwrite(t, newestWAL(t, filepath.Join(f.DataDir(), "raft")), 100, 200)
	leaderClient := func() *cluster.Clients {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c.Client(l, false)
	}
	eventually(t, 20*time.Second, "RemovePeer "+f.Name, func() error {
		_, err := leaderClient().Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: f.Name}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil
		}
		return err
	})
	if err := c.Rebuild(f); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	start := time.Now()
	eventually(t, 30*time.Second, f.Name+" refilled its store", func() error { return lacks(f, tr) })
	t.Logf("rebuilt %s filled %d chunks in %v", f.Name, len(tr.keys), time.Since(start).Round(time.Millisecond))
}
