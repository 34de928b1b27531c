package fsm_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// TestWithRaft runs the FSM under a real single-server Raft: results reach
// ApplyFuture.Response, configuration entries pass through ApplyBatch, and
// an operator's snapshot restore goes through FSM.Restore.
func TestWithRaft(t *testing.T) {
	store := state.New()
	r := startRaft(t, store)

	apply := func(l *raft.Log) *fsm.ApplyResult {
		t.Helper()
		f := r.Apply(l.Data, 5*time.Second)
		if err := f.Error(); err != nil {
			t.Fatal(err)
		}
		res, ok := f.Response().(*fsm.ApplyResult)
		if !ok || res.Index != f.Index() {
			t.Fatalf("Response() = %#v for index %d", f.Response(), f.Index())
		}
		return res
	}
	res := apply(createModel(t, "alice", "resnet"))
	if m, ok := res.Value.(*droverv1.Model); res.Err != nil || !ok || m.GetCreateIndex() != res.Index {
		t.Fatalf("create model: %+v", res)
	}
	if res := apply(createModel(t, "bob", "resnet")); !errors.Is(res.Err, state.ErrAlreadyExists) {
		t.Fatalf("create model again: %+v", res)
	}
	apply(createVersion(t, "alice", "resnet"))

	snap := r.Snapshot()
	if err := snap.Error(); err != nil {
		t.Fatal(err)
	}
	apply(createModel(t, "alice", "bert"))
	beforeRestore := store.Index()
	// A log entry the FSM never sees, so Raft's index runs ahead of the
	// state's.
	if err := r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}

	meta, rc, err := snap.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if err := r.Restore(meta, rc, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// The restored state is older, but its index is the Raft index the
	// restore was installed at, above every index seen before it.
	restoredAt, err := strconv.ParseUint(r.Stats()["last_snapshot_index"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Model("bert"); !errors.Is(err, state.ErrNotFound) || store.Index() != restoredAt || restoredAt <= beforeRestore {
		t.Errorf("after restore: bert %v, index %d, want the restore's raft index %d (above %d)", err, store.Index(), restoredAt, beforeRestore)
	}
	if v, err := store.Version("resnet", "latest"); err != nil || v.GetVersion() != 1 {
		t.Errorf("after restore: %v, %v", v, err)
	}
	if res := apply(createModel(t, "alice", "bert")); res.Err != nil || store.Index() != res.Index {
		t.Errorf("apply after restore: %+v, index %d", res, store.Index())
	}
}

// startRaft runs a single-server Raft cluster over an FSM on store and
// waits until it leads; it shuts down when the test ends.
func startRaft(t *testing.T, store *state.Store) *raft.Raft {
	t.Helper()
	conf := raft.DefaultConfig()
	conf.LocalID = "s1"
	conf.HeartbeatTimeout = 50 * time.Millisecond
	conf.ElectionTimeout = 50 * time.Millisecond
	conf.LeaderLeaseTimeout = 50 * time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Output: tWriter{t}, Level: hclog.Info})
	addr, trans := raft.NewInmemTransport("")
	r, err := raft.NewRaft(conf, fsm.New(store, testLogger(t)), raft.NewInmemStore(), raft.NewInmemStore(), fsm.NewSnapshotStore(raft.NewInmemSnapshotStore()), trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Shutdown().Error(); err != nil {
			t.Error(err)
		}
	})
	if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: addr}}}).Error(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.LeaderCh():
	case <-time.After(10 * time.Second):
		t.Fatal("no leader")
	}
	return r
}
