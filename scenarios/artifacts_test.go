package scenarios

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/cli"
	"github.com/droverhq/drover/controlplane/blobstore"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestPushSurvivesServerLoss pushes a model while one of three servers is
// down, then pushes another and kills the server taking the upload half
// way: the command line moves on to another server by itself, and each
// version exists only once a quorum of servers holds every chunk of it.
func TestPushSurvivesServerLoss(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := c.Nodes()
	s1, s3 := nodes[0], nodes[2]
	createModel(t, c.Client(c.Leader(), false), "survivor")
	setCLIEnv(t, c)

	// A minority down: the push needs the other two to hold every chunk.
	c.Kill(s3)
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	v1 := writeTree(t, 6<<20)
	for {
		out, errOut, code := drover(ctx, s1.APIAddr(), "model", "push", v1, "--model", "survivor")
		if code == 0 {
			t.Logf("push with s3 down: %s", out)
			break
		}
		// If s3 led, the others may still be electing: the command says
		// to retry, and a push that found no leader wrote nothing.
		if !strings.Contains(errOut, "no leader") || ctx.Err() != nil {
			t.Fatalf("push with s3 down: exit %d\n%s", code, errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := c.Restart(s3); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The upload goes to a follower, which is killed: the push moves on,
	// and the leader it finishes with is still there.
	recv := s1
	for _, n := range nodes {
		if n != leader {
			recv = n
			break
		}
	}

	// Kill the server taking the upload once it is well under way. The
	// upload is capped at 4 MiB/s, so 24 MiB take at least six seconds
	// however fast the machine is, and the kill lands mid-way.
	v2 := writeTree(t, 24<<20)
	before := dirBytes(t, server.ChunkStoreDir(recv.DataDir()))
	type result struct {
		stdout, stderr string
		code           int
	}
	done := make(chan result, 1)
	go func() {
		o, e, code := drover(ctx, recv.APIAddr(), "model", "push", v2, "--model", "survivor", "--limit-rate", "4MiB")
		done <- result{o, e, code}
	}()
	// Under way means chunks have reached the receiving server's store: by
	// then the command line knows the other servers. (A fixed wait is not
	// enough on a loaded machine, where chunking alone may take seconds.)
	for dirBytes(t, server.ChunkStoreDir(recv.DataDir())) < before+4<<20 {
		select {
		case r := <-done:
			t.Fatalf("push of 24 MiB at 4 MiB/s ended before the kill: exit %d\n%s", r.code, r.stderr)
		case <-ctx.Done():
			t.Fatal("the push never got 4 MiB to its server")
		case <-time.After(100 * time.Millisecond):
		}
	}
	if n := versionCount(ctx, t, c.Client(leader, false), "survivor"); n != 1 {
		t.Fatalf("%d versions while the second push is uploading, want 1", n)
	}
	c.Kill(recv)
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("push did not finish after its server was killed")
	}
	if r.code != 0 {
		t.Fatalf("push after its server was killed: exit %d\n%s", r.code, r.stderr)
	}
	t.Logf("push with its server killed:\n%s%s", r.stderr, r.stdout)
	if !strings.Contains(r.stderr, "resuming against") {
		t.Errorf("push did not say it moved to another server; stderr:\n%s", r.stderr)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if n := versionCount(ctx, t, c.Client(c.Leader(), false), "survivor"); n != 2 {
		t.Fatalf("%d versions after both pushes, want 2", n)
	}

	// Every chunk of each version is on a quorum: on disk in at least two
	// of the three stores.
	want := map[string][]artifact.ChunkRef{v1: chunksOf(t, v1), v2: chunksOf(t, v2)}
	for _, n := range nodes {
		c.Kill(n)
	}
	held := map[artifact.Digest]int{}
	for _, n := range nodes {
		store, err := blobstore.Open(server.ChunkStoreDir(n.DataDir()), blobstore.DefaultOptions())
		if err != nil {
			t.Fatalf("open %s's chunk store: %v", n.Name, err)
		}
		for _, refs := range want {
			for _, r := range refs {
				if store.Has(blobstore.Key(r.Digest)) {
					held[r.Digest]++
				}
			}
		}
		if err := store.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for tree, refs := range want {
		for _, r := range refs {
			if held[r.Digest] < 2 {
				t.Errorf("chunk %s of %s is on %d servers, want at least 2", r.Digest, filepath.Base(tree), held[r.Digest])
			}
		}
	}
}

// dirBytes is the size of the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // files come and go while the push writes
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// drover runs the command line against the server at addr.
func drover(ctx context.Context, addr string, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = cli.Main(ctx, append([]string{"--address", "https://" + addr}, args...), strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

// writeTree writes a model directory of one file of size random bytes,
// streamed, so that a tree of gigabytes takes no memory.
func writeTree(t testing.TB, size int) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func chunksOf(t *testing.T, dir string) []artifact.ChunkRef {
	t.Helper()
	_, refs, err := artifact.BuildManifest(context.Background(), dir, artifact.BuildOptions{Limits: artifact.DefaultLimits()})
	if err != nil {
		t.Fatal(err)
	}
	return refs
}

func versionCount(ctx context.Context, t *testing.T, cl *cluster.Clients, model string) int {
	t.Helper()
	res, err := cl.Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: model}))
	if err != nil {
		t.Fatalf("list versions of %s: %v", model, err)
	}
	return len(res.Msg.GetVersions())
}

// TestSitePullsFanOut has every agent of one site pull the same version at
// once (30 agents and three servers; 8 and one in the short tier): the
// servers send about one copy of it to the site, not one per agent, because the agents fetch each chunk from the site peer that owns
// it; and every agent's copy is the pushed bytes.
func TestSitePullsFanOut(t *testing.T) {
	agents, size, servers := 30, 64<<20, 3
	if testing.Short() {
		// One server in the short tier: while every package's tests run
		// at once, three in-process servers hold elections, which this
		// scenario is not about.
		agents, size, servers = 8, 16<<20, 1
	}
	c := cluster.Make(t, servers, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	fleet := startSite(ctx, t, c, "edge", agents)
	createModel(t, c.Client(c.Leader(), false), "detector")
	tree := writeTree(t, size)
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, c.Nodes()[0].APIAddr(), "model", "push", tree, "--model", "detector"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	before := servedToAgents(ctx, t, c)
	start := time.Now()
	pullAll(ctx, t, c, fleet, "detector", "1")
	took := time.Since(start)
	egress := servedToAgents(ctx, t, c) - before
	t.Logf("%d agents pulled %d MiB in %v; the servers sent %.2fx the model", agents, size>>20, took.Round(time.Millisecond), egress/float64(size))
	if egress > 1.5*float64(size) {
		t.Errorf("the servers sent %.0f bytes to the site, %.2fx the %d-byte model; want under 1.5x", egress, egress/float64(size), size)
	}
	checkPulled(t, fleet, "detector", 1, tree)
}

// TestCorruptPeerIsAvoided has one agent of a site serve corrupted chunks
// (its cache altered on disk after it pulled): the site's other agents
// pull the same version and every one of them ends with the pushed bytes,
// from the other peers and the servers.
func TestCorruptPeerIsAvoided(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fleet := startSite(ctx, t, c, "cam", 4)
	createModel(t, c.Client(c.Leader(), false), "detector")
	tree := writeTree(t, 12<<20)
	setCLIEnv(t, c)
	if _, errOut, code := drover(ctx, c.Nodes()[0].APIAddr(), "model", "push", tree, "--model", "detector"); code != 0 {
		t.Fatalf("push: exit %d\n%s", code, errOut)
	}
	bad := fleet[0]
	pullAll(ctx, t, c, fleet[:1], "detector", "1")
	corrupted := corruptCache(t, bad)
	t.Logf("corrupted %d cached chunks of %s", corrupted, bad.Name)
	pullAll(ctx, t, c, fleet[1:], "detector", "1")
	checkPulled(t, fleet[1:], "detector", 1, tree)
}

// startSite starts n agents in site-a and waits until they are ready and
// each sees every other as a peer that serves chunks.
func startSite(ctx context.Context, t testing.TB, c *cluster.Cluster, prefix string, n int) []*cluster.Agent {
	t.Helper()
	fleet := startReady(ctx, t, c, n, cluster.AgentOptions{Prefix: prefix})
	for _, a := range fleet {
		for len(a.SitePeers()) < n {
			select {
			case <-ctx.Done():
				t.Fatalf("%s sees %d site peers serving chunks, want %d", a.Name, len(a.SitePeers()), n)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return fleet
}

// setCLIEnv points the command line at the cluster's CA and token.
func setCLIEnv(t testing.TB, c *cluster.Cluster) {
	t.Setenv("DROVER_TOKEN", c.Token())
	t.Setenv("DROVER_CACERT", c.CACertFile())
	// No config file: the environment and flags say everything.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
}

// pullAll asks every agent of fleet to pull model@ref and waits until each
// reports the pull done; a failed pull fails the test.
func pullAll(ctx context.Context, t *testing.T, c *cluster.Cluster, fleet []*cluster.Agent, model, ref string) {
	t.Helper()
	reqs := make([]*droverv1.NodePull, len(fleet))
	for i, a := range fleet {
		reqs[i] = requestPull(ctx, t, c, a, model, ref)
	}
	for i, a := range fleet {
		if st := waitPull(ctx, t, c, a, reqs[i]); st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
			t.Fatalf("%s failed to pull %s@%s: %s", a.Name, model, ref, st.GetError())
		}
	}
}

// checkPulled checks that every agent's directory of model's version
// holds the files of tree, byte for byte.
func checkPulled(t *testing.T, fleet []*cluster.Agent, model string, version uint64, tree string) {
	t.Helper()
	want, wantSize, err := fileSum(filepath.Join(tree, "model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range fleet {
		dir := filepath.Join(a.DataDir(), "versions", model, strconv.FormatUint(version, 10))
		got, size, err := fileSum(filepath.Join(dir, "model.bin"))
		if err != nil || got != want {
			t.Errorf("%s's copy of %s@%d: %d bytes (err %v), not the %d pushed", a.Name, model, version, size, err, wantSize)
		}
	}
}

// fileSum returns the digest and size of the file at path, read as a
// stream.
func fileSum(path string) (artifact.Digest, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return artifact.Digest{}, 0, err
	}
	defer f.Close()
	h := artifact.NewHasher()
	n, err := io.Copy(h, f)
	if err != nil {
		return artifact.Digest{}, n, err
	}
	return artifact.Digest(h.Sum(nil)), n, nil
}

// corruptCache flips a byte in every chunk file of the agent's cache and
// returns how many it changed.
func corruptCache(t *testing.T, a *cluster.Agent) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(filepath.Join(a.DataDir(), "cache"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Base(filepath.Dir(path)) == "tmp" {
			return err
		}
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, 100); err != nil {
			return nil // not a chunk of any size worth corrupting
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, 100); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// servedToAgents scrapes every running server's /metrics and returns the
// chunk bytes they sent to agents, all together.
func servedToAgents(ctx context.Context, t *testing.T, c *cluster.Cluster) float64 {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}}}
	defer hc.CloseIdleConnections()
	const series = `drover_chunk_served_bytes_total{to="agent"} `
	var sum float64
	for _, n := range c.Nodes() {
		if n.Server() == nil {
			continue
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+n.APIAddr()+"/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+c.Token())
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("metrics of %s: %v", n.Name, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("metrics of %s: %s %v", n.Name, resp.Status, err)
		}
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, series); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("metrics of %s: %q: %v", n.Name, line, err)
				}
				sum += f
			}
		}
	}
	return sum
}
