package scenarios

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
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
	s1, s2, s3 := nodes[0], nodes[1], nodes[2]
	createModel(t, c.Client(c.Leader(), false), "survivor")
	t.Setenv("DROVER_TOKEN", c.Token())
	t.Setenv("DROVER_CACERT", c.CACertFile())
	// No config file: the environment and flags say everything.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())

	// A minority down: the push needs the other two to hold every chunk.
	c.Kill(s3)
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	v1 := writeTree(t, 6<<20)
	out, errOut, code := drover(ctx, s1.APIAddr(), "model", "push", v1, "--model", "survivor")
	if code != 0 {
		t.Fatalf("push with s3 down: exit %d\n%s", code, errOut)
	}
	t.Logf("push with s3 down: %s", out)
	if err := c.Restart(s3); err != nil {
		t.Fatal(err)
	}

	// Kill the server taking the upload once it is well under way. The
	// upload is capped at 4 MiB/s, so 24 MiB take at least six seconds
	// however fast the machine is, and the kill lands mid-way.
	v2 := writeTree(t, 24<<20)
	type result struct {
		stdout, stderr string
		code           int
	}
	done := make(chan result, 1)
	go func() {
		o, e, code := drover(ctx, s2.APIAddr(), "model", "push", v2, "--model", "survivor", "--limit-rate", "4MiB")
		done <- result{o, e, code}
	}()
	select {
	case r := <-done:
		t.Fatalf("push of 24 MiB at 4 MiB/s ended before the kill: exit %d\n%s", r.code, r.stderr)
	case <-time.After(2 * time.Second):
	}
	cl := c.Client(s1, false)
	if n := versionCount(ctx, t, cl, "survivor"); n != 1 {
		t.Fatalf("%d versions while the second push is uploading, want 1", n)
	}
	c.Kill(s2)
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

// drover runs the command line against the server at addr.
func drover(ctx context.Context, addr string, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = cli.Main(ctx, append([]string{"--address", "https://" + addr}, args...), strings.NewReader(""), &o, &e)
	return o.String(), e.String(), code
}

// writeTree writes a model directory of one file of size random bytes.
func writeTree(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "model.bin"), b, 0o644); err != nil {
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
