package server_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/raftstore"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestRebuildServer damages one follower's Raft log the way a stray write
// might (200 bytes near the start of its newest WAL), and checks the whole
// operation: the server refuses to start with a one-line error that names
// the file and the remedy; after remove-peer and a start with --rebuild it
// rejoins as a voter and holds every write the cluster acknowledged, before
// and after the rebuild.
func TestRebuildServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-server cluster")
	}
	c := cluster.Make(t, 3, cluster.Options{})
	ctx := testCtx(t, 120*time.Second)
	leaderClient := func() *cluster.Clients {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c.Client(l, false)
	}
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := followerOf(t, c, l)
	var want []string
	for i := range 40 {
		name := fmt.Sprintf("before-%02d", i)
		mustCreateModel(t, leaderClient(), name)
		want = append(want, name)
	}
	// Every write is on f's disk once f has applied it.
	eventually(t, 20*time.Second, f.Name+" applied every write", func() error {
		return hasModels(f, want)
	})

	c.Kill(f)
	raftDir := filepath.Join(f.DataDir(), "raft")
	wal := newestWAL(t, raftDir)
	overwrite(t, wal, 100, 200)

	err = c.Restart(f)
	if err == nil {
		t.Fatal("a server whose Raft log was overwritten started")
	}
	t.Logf("Restart: %v", err)
	if !errors.Is(err, raftstore.ErrCorrupt) {
		t.Errorf("Restart error does not wrap raftstore.ErrCorrupt: %v", err)
	}
	for _, s := range []string{wal, "drover server --rebuild", "remove-peer"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("Restart error does not mention %q: %v", s, err)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("Restart error is not one line: %q", err)
	}

	// The cluster goes on without f; remove it, then rebuild it.
	mustCreateModel(t, leaderClient(), "while-down")
	want = append(want, "while-down")
	eventually(t, 20*time.Second, "RemovePeer "+f.Name, func() error {
		_, err := leaderClient().Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: f.Name}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil // an earlier try that reported a lost leadership did remove it
		}
		return err
	})
	if err := c.Rebuild(f); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	aside, _ := filepath.Glob(filepath.Join(f.DataDir(), "damaged-*", "raft"))
	if len(aside) != 1 {
		t.Errorf("damaged Raft data not set aside in the data dir: %v", aside)
	}
	eventually(t, 30*time.Second, f.Name+" a voter again", func() error {
		ps, err := peersErr(t, leaderClient())
		if err != nil {
			return err
		}
		for _, p := range ps {
			if p.GetId() == f.Name && p.GetSuffrage() == "voter" {
				return nil
			}
		}
		return fmt.Errorf("peers %v", peerNames(ps))
	})
	mustCreateModel(t, leaderClient(), "after-rebuild")
	want = append(want, "after-rebuild")
	eventually(t, 30*time.Second, f.Name+" caught up", func() error {
		return hasModels(f, want)
	})

	// A plain restart now finds intact data; --rebuild refuses it.
	c.Kill(f)
	err = c.Rebuild(f)
	if err == nil || !strings.Contains(err.Error(), "nothing to rebuild") {
		t.Fatalf("rebuild of intact data = %v, want a refusal", err)
	}
	if err := c.Restart(f); err != nil {
		t.Fatalf("restart after the rebuild: %v", err)
	}
	eventually(t, 30*time.Second, f.Name+" restarted with every write", func() error {
		return hasModels(f, want)
	})
}

// hasModels reports whether n's own state holds every model in want.
func hasModels(n *cluster.Node, want []string) error {
	s := n.Server()
	if s == nil {
		return errors.New(n.Name + " is down")
	}
	var have []string
	for _, m := range s.State().Models() {
		have = append(have, m.GetName())
	}
	for _, w := range want {
		if !slices.Contains(have, w) {
			return fmt.Errorf("%s lacks model %s (has %d)", n.Name, w, len(have))
		}
	}
	return nil
}

// newestWAL returns the path of the newest WAL file in a Raft store.
func newestWAL(t *testing.T, dir string) string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no WAL in %s: %v", dir, err)
	}
	slices.Sort(m)
	return m[len(m)-1]
}

// overwrite writes n bytes of junk over path at off.
func overwrite(t *testing.T, path string, off int64, n int) {
	t.Helper()
	file, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, n)
	for i := range junk {
		junk[i] = byte(i*131 + 7)
	}
	if _, err := file.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
}
