package server

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
