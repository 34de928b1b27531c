package server

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// recordingHandler passes records on and keeps their messages, so a test
// can check what a server said in its log.
type recordingHandler struct {
	slog.Handler
	rec *messages
}

type messages struct {
	mu   sync.Mutex // guards msgs
	msgs []string
}

func (h recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.rec.mu.Lock()
	h.rec.msgs = append(h.rec.msgs, r.Message)
	h.rec.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h recordingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recordingHandler{Handler: h.Handler.WithAttrs(as), rec: h.rec}
}

func (h recordingHandler) WithGroup(name string) slog.Handler {
	return recordingHandler{Handler: h.Handler.WithGroup(name), rec: h.rec}
}

func (m *messages) has(prefix string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.ContainsFunc(m.msgs, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

// startLeadingSolo starts a one-server cluster in dir and waits until it leads
// and has written the cluster identity.
func startLeadingSolo(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(s.Kill)
	deadline := time.Now().Add(20 * time.Second)
	for !s.LeadershipEstablished() || s.State().Cluster() == nil {
		if time.Now().After(deadline) {
			t.Fatal("single server never established leadership")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

func shutdown(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// raftSnapshot makes Raft take a snapshot now, after a log entry of its
// own so there is something new to snapshot.
func raftSnapshot(t *testing.T, s *Server) *raft.SnapshotMeta {
	t.Helper()
	if err := s.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	f := s.raft.Snapshot()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	return meta
}

// plantSnapshot writes a Raft snapshot holding body at index into the
// stopped server's snapshot store, as an operator's restore of a crafted
// file did before restores were checked: Raft wrote the snapshot, then
// the state machine refused it.
func plantSnapshot(t *testing.T, dir string, index, term uint64, conf raft.Configuration, body []byte) string {
	t.Helper()
	store, err := raft.NewFileSnapshotStore(filepath.Join(dir, "snapshots"), 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	_, trans := raft.NewInmemTransport("")
	sink, err := store.Create(raft.SnapshotVersionMax, index, term, conf, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	return sink.ID()
}

// A server whose newest Raft snapshot cannot be restored starts from the
// previous good one, or from the log when there is none, says so in its
// log and moves the bad snapshot aside; it never refuses to start for a
// snapshot it can do without.
func TestStartPastUnreadableSnapshot(t *testing.T) {
	for _, older := range []bool{false, true} {
		name := "log alone"
		if older {
			name = "older snapshot"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := startLeadingSolo(t, singleServerConfig(t, dir))
			if older {
				raftSnapshot(t, s)
			}
			want := s.State().Cluster()
			conf := s.raft.GetConfiguration()
			if err := conf.Error(); err != nil {
				t.Fatal(err)
			}
			last, term := s.raft.LastIndex(), s.raft.CurrentTerm()
			shutdown(t, s)

			id := plantSnapshot(t, dir, last+1, term, conf.Configuration(), []byte("valid CRC, but not a state snapshot"))

			cfg := singleServerConfig(t, dir)
			rec := &messages{}
			cfg.Logger = slog.New(recordingHandler{Handler: cfg.Logger.Handler(), rec: rec})
			s = startLeadingSolo(t, cfg)
			if got := s.State().Cluster(); got.GetClusterId() != want.GetClusterId() {
				t.Errorf("after restart the cluster is %v, want %v", got, want)
			}
			if _, err := os.Stat(filepath.Join(dir, "snapshots", unreadableSnapshotsDir, id)); err != nil {
				t.Errorf("the unreadable snapshot was not moved aside: %v", err)
			}
			if !rec.has("raft snapshot cannot be restored") {
				t.Error("the server did not log the unreadable snapshot")
			}
			wantMsg := "starting from the raft log alone"
			if older {
				wantMsg = "starting from an older raft snapshot"
			}
			if !rec.has(wantMsg) {
				t.Errorf("the server did not log %q", wantMsg)
			}
			// It goes on as a working leader.
			if err := s.raft.Barrier(5 * time.Second).Error(); err != nil {
				t.Fatalf("after restart: %v", err)
			}
		})
	}
}

// When the snapshot before the unreadable one is too old for the log
// (compaction removed the entries after it), the server refuses to start
// with an error naming the data dir, and moves nothing.
func TestStartRefusesWithoutUsableSnapshot(t *testing.T) {
	dir := t.TempDir()
	cfg := singleServerConfig(t, dir)
	cfg.TrailingLogs = 1
	s := startLeadingSolo(t, cfg)
	raftSnapshot(t, s)
	for range 5 {
		if err := s.raft.Barrier(5 * time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	newest := raftSnapshot(t, s)
	shutdown(t, s)

	// Bit rot in the newest snapshot: its CRC no longer matches.
	path := filepath.Join(dir, "snapshots", raftSnapshotsDir, newest.ID, "state.bin")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}

	s, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil {
		s.Kill()
		t.Fatal("Start succeeded without a usable snapshot")
	}
	t.Logf("Start: %v", err)
	if !errors.Is(err, ErrRaftSnapshotsUnusable) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), newest.ID) {
		t.Errorf("error %v: want ErrRaftSnapshotsUnusable naming %s and %s", err, dir, newest.ID)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots", raftSnapshotsDir, newest.ID)); err != nil {
		t.Errorf("a refused start moved the snapshot: %v", err)
	}
}
