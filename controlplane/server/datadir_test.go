package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/droverhq/drover/controlplane/raftstore"
	"github.com/droverhq/drover/internal/logging"
)

// singleServerConfig is a one-server cluster on free loopback ports that
// makes its own CA in dir.
func singleServerConfig(t *testing.T, dir string) Config {
	cfg := DefaultConfig()
	cfg.Name = "solo"
	cfg.DataDir = dir
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Logger = logging.TestLogger(t)
	return cfg
}

// runOnce starts a server in dir, waits until it leads and has written
// the cluster identity, and shuts it down cleanly.
func runOnce(t *testing.T, dir string) {
	t.Helper()
	s, err := New(singleServerConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("first start: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !s.LeadershipEstablished() || s.State().Cluster() == nil {
		if time.Now().After(deadline) {
			s.Kill()
			t.Fatal("single server never established leadership")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func garble(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xa5
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A server whose Raft store is damaged must refuse to start with an error
// that tells the operator which data dir is at fault, never panic, and
// release what it had opened.
func TestStartWithCorruptRaftStore(t *testing.T) {
	tests := []struct {
		name        string
		damage      func(t *testing.T, raftDir string)
		wantCorrupt bool
	}{
		{"manifest garbled", func(t *testing.T, raftDir string) {
			m, _ := filepath.Glob(filepath.Join(raftDir, "MANIFEST-*"))
			if len(m) == 0 {
				t.Fatal("no MANIFEST in the raft store")
			}
			for _, f := range m {
				garble(t, f)
			}
		}, true},
		{"every file garbled", func(t *testing.T, raftDir string) {
			entries, err := os.ReadDir(raftDir)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, e := range entries {
				if e.Type().IsRegular() && e.Name() != "LOCK" {
					garble(t, filepath.Join(raftDir, e.Name()))
					n++
				}
			}
			if n == 0 {
				t.Fatal("raft store has no files")
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			runOnce(t, dir)
			tt.damage(t, filepath.Join(dir, "raft"))

			s, err := New(singleServerConfig(t, dir))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Start()
			if err == nil {
				s.Kill()
				t.Fatal("Start succeeded on a garbled raft store")
			}
			t.Logf("Start: %v", err)
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error does not name the data dir %s: %v", dir, err)
			}
			if tt.wantCorrupt && !errors.Is(err, raftstore.ErrCorrupt) {
				t.Errorf("error does not wrap raftstore.ErrCorrupt: %v", err)
			}
			select {
			case <-s.Done():
			default:
				t.Error("a server whose Start failed is not stopped")
			}
			s.Kill() // idempotent after a failed Start
		})
	}
}

// A damaged block in the middle of the Raft log is found by Raft's own
// start, which reads every entry after the last snapshot and panics on a
// read error: Start must return the store's one-line error instead.
func TestStartWithDamagedLogBlock(t *testing.T) {
	dir := t.TempDir()
	runOnce(t, dir)
	raftDir := filepath.Join(dir, "raft")

	// Enough entries for many sstable blocks, so that damage in the middle
	// spares the first and last entries, which Open checks itself.
	st, err := raftstore.Open(raftDir, raftstore.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	term, err := st.GetUint64([]byte("CurrentTerm"))
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := last + 1; i <= last+600; i++ {
		data := make([]byte, 200)
		for j := range data {
			data[j] = byte(i*31 + uint64(j)*17)
		}
		logs = append(logs, &raft.Log{Index: i, Term: term, Type: raft.LogNoop, Data: data})
	}
	if err := st.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// Opening again replays the WAL into an sstable.
	st, err = raftstore.Open(raftDir, raftstore.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	ssts, _ := filepath.Glob(filepath.Join(raftDir, "*.sst"))
	if len(ssts) == 0 {
		t.Fatal("no sstable in the raft store")
	}
	var biggest string
	var size int64
	for _, p := range ssts {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			biggest, size = p, fi.Size()
		}
	}
	b, err := os.ReadFile(biggest)
	if err != nil {
		t.Fatal(err)
	}
	for i := len(b) * 2 / 5; i < len(b)*2/5+16; i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(biggest, b, 0o600); err != nil {
		t.Fatal(err)
	}

	s, err := New(singleServerConfig(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil {
		s.Kill()
		t.Fatal("Start succeeded with a damaged block in the Raft log")
	}
	t.Logf("Start: %v", err)
	if !errors.Is(err, raftstore.ErrCorrupt) {
		t.Errorf("error does not wrap raftstore.ErrCorrupt: %v", err)
	}
	for _, want := range []string{raftDir, "drover server --rebuild"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	s.Kill()
}

// --rebuild refuses a single-server cluster, which has no peers to rebuild
// from, and intact data, which it would otherwise wipe at every restart.
func TestRebuildRefusals(t *testing.T) {
	dir := t.TempDir()
	cfg := singleServerConfig(t, dir)
	cfg.Rebuild = true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "snapshot restore") {
		t.Fatalf("Validate of --rebuild with bootstrap-expect 1 = %v, want a refusal pointing at snapshot restore", err)
	}

	runOnce(t, dir)
	cfg = singleServerConfig(t, dir)
	cfg.Rebuild, cfg.BootstrapExpect, cfg.Join = true, 3, []string{"127.0.0.1:1"}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil {
		s.Kill()
		t.Fatal("--rebuild started on intact Raft data")
	}
	if !strings.Contains(err.Error(), "nothing to rebuild") {
		t.Fatalf("Start --rebuild on intact data = %v, want \"nothing to rebuild\"", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raft")); err != nil {
		t.Fatalf("intact Raft data was moved: %v", err)
	}
}

// A data dir remembers the server it belongs to: the same name starts, a
// different one is refused at once with both names, instead of a server
// that sits in no Raft configuration and waits for ever.
func TestClaimDataDir(t *testing.T) {
	dir := t.TempDir()
	if err := claimDataDir(dir, "s1"); err != nil {
		t.Fatalf("first claim: %v", err)
	}
	if err := claimDataDir(dir, "s1"); err != nil {
		t.Fatalf("same name again: %v", err)
	}
	err := claimDataDir(dir, "s2")
	if !errors.Is(err, ErrDataDirName) {
		t.Fatalf("claim by s2 = %v, want ErrDataDirName", err)
	}
	for _, want := range []string{dir, `server "s1", not "s2"`, "--name s1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestStartRefusesDataDirOfAnotherServer(t *testing.T) {
	dir := t.TempDir()
	runOnce(t, dir)
	cfg := singleServerConfig(t, dir)
	cfg.Name = "other"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil {
		s.Kill()
		t.Fatal("a server started on the data dir of another")
	}
	if !errors.Is(err, ErrDataDirName) || !strings.Contains(err.Error(), `"solo"`) {
		t.Errorf("Start = %v, want ErrDataDirName naming solo", err)
	}
	select {
	case <-s.Done():
	default:
		t.Error("a server whose Start failed is not stopped")
	}
}
