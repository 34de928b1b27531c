package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/droverhq/drover/controlplane/state"
)

// unreadableSnapshotsDir is where, inside the snapshot folder, start-up
// moves Raft snapshots it cannot restore, kept for the operator to look at.
const unreadableSnapshotsDir = "unreadable"

// raftSnapshotsDir is where raft.FileSnapshotStore keeps its snapshots
// inside the folder it is given.
const raftSnapshotsDir = "snapshots"

// checkRaftSnapshots makes sure Raft can start from this server's own
// data before it tries to.
//
// Raft restores the newest snapshot that the state machine accepts, then
// reads the log after it. Left to itself it fails to start when no
// snapshot is accepted ("failed to load any existing snapshots"), and
// panics when the log after the snapshot it falls back to has a gap (an
// operator's restore leaves one at the restored snapshot's index, and
// compaction removes the entries before a newer snapshot). So each
// snapshot, newest first, is opened and decoded completely here, as the
// state machine would; unreadable ones are moved to
// snapshots/unreadable/, and the server starts from the newest readable
// snapshot (or from the log alone when there is none) only if the log
// holds every entry after it. Otherwise it refuses to start, with an error
// that says what is missing and what to do.
//
// The newest snapshot is decoded twice at start-up (here, then by Raft);
// it is the price of not letting Raft find out by panicking.
func (s *Server) checkRaftSnapshots(snaps raft.SnapshotStore, logs raft.LogStore) error {
	metas, err := snaps.List()
	if err != nil {
		return fmt.Errorf("check raft snapshots: %w", err)
	}
	var (
		bad     []*raft.SnapshotMeta
		badErrs []error
		start   *raft.SnapshotMeta // nil: start from the log alone
	)
	for _, m := range metas {
		if err := readRaftSnapshot(snaps, m.ID); err != nil {
			bad = append(bad, m)
			badErrs = append(badErrs, err)
			continue
		}
		start = m
		break
	}
	if len(bad) == 0 {
		return nil
	}
	var from uint64
	if start != nil {
		from = start.Index
	}
	if err := logCoversFrom(logs, from, bad); err != nil {
		what := "no older snapshot is readable"
		if start != nil {
			what = fmt.Sprintf("the older snapshot %s ends at index %d", start.ID, start.Index)
		}
		return fmt.Errorf("%w: snapshot %s (index %d) cannot be restored: %v; %s and %v. "+
			"This server cannot rebuild its state from its own data: if the other servers have a quorum, "+
			"move its data dir %s aside and start it again so that it receives the state from the leader; "+
			"otherwise restore an operator snapshot into a new cluster",
			ErrRaftSnapshotsUnusable, bad[0].ID, bad[0].Index, badErrs[0], what, err, s.cfg.DataDir)
	}
	for i, m := range bad {
		dst, err := s.moveAsideSnapshot(m.ID)
		if err != nil {
			return err
		}
		s.logger.Error("raft snapshot cannot be restored; moved it aside",
			"id", m.ID, "index", m.Index, "err", badErrs[i], "moved_to", dst)
	}
	if start != nil {
		s.logger.Warn("starting from an older raft snapshot and the log after it, because the newer ones cannot be restored",
			"id", start.ID, "index", start.Index, "skipped", len(bad))
	} else {
		s.logger.Warn("starting from the raft log alone, because no raft snapshot can be restored", "skipped", len(bad))
	}
	return nil
}

// readRaftSnapshot opens a Raft snapshot (which checks its CRC) and
// decodes its contents completely without touching any state.
func readRaftSnapshot(snaps raft.SnapshotStore, id string) error {
	_, rc, err := snaps.Open(id)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = state.ReadSnapshot(rc)
	return err
}

// logCoversFrom reports whether the log holds every entry after index
// from up to its last one: none were compacted away, and none is missing
// at the index of a skipped snapshot (an operator's restore burns the index
// of its snapshot, leaving no log entry there).
func logCoversFrom(logs raft.LogStore, from uint64, skipped []*raft.SnapshotMeta) error {
	first, err := logs.FirstIndex()
	if err != nil {
		return fmt.Errorf("read the log's first index: %w", err)
	}
	last, err := logs.LastIndex()
	if err != nil {
		return fmt.Errorf("read the log's last index: %w", err)
	}
	if last == 0 {
		if from == 0 {
			return errors.New("the log is empty")
		}
		return nil
	}
	if last > from && first > from+1 {
		return fmt.Errorf("the log starts at index %d, so entries %d to %d are gone", first, from+1, first-1)
	}
	for _, m := range skipped {
		if m.Index <= from || m.Index > last {
			continue
		}
		var l raft.Log
		if err := logs.GetLog(m.Index, &l); err != nil {
			return fmt.Errorf("the log has no entry %d, the snapshot's own index: %w", m.Index, err)
		}
	}
	return nil
}

// moveAsideSnapshot moves a Raft snapshot out of the store's sight into
// snapshots/unreadable/ and returns where it went.
func (s *Server) moveAsideSnapshot(id string) (string, error) {
	dir := filepath.Join(s.cfg.snapshotDir(), unreadableSnapshotsDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("move aside raft snapshot %s: %w", id, err)
	}
	dst := filepath.Join(dir, id)
	if err := os.Rename(filepath.Join(s.cfg.snapshotDir(), raftSnapshotsDir, id), dst); err != nil {
		return "", fmt.Errorf("move aside raft snapshot %s: %w", id, err)
	}
	return dst, nil
}
