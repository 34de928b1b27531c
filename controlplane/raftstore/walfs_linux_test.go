package raftstore

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWALZeroTail checks that WAL files are extended ahead of their records
// and that a WAL left that way by a crash (zeros after the last record, no
// end-of-log trailer) gives back every record.
func TestWALZeroTail(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	for lo := uint64(1); lo <= 200; lo += 10 {
		if err := s.StoreLogs(entriesFor(lo, lo+9)); err != nil {
			t.Fatal(err)
		}
	}
	recs := newestWAL(t, dir)
	if len(recs) == 0 {
		t.Fatal("no WAL records")
	}
	fi, err := os.Stat(recs[0].file)
	if err != nil {
		t.Fatal(err)
	}
	last := recs[len(recs)-1].offset
	t.Logf("WAL %s: %d bytes, last record at %d", filepath.Base(recs[0].file), fi.Size(), last)
	if fi.Size() <= last || fi.Size()%walExtendStep != 0 {
		t.Fatalf("WAL is %d bytes; want it extended past its last record in steps of %d", fi.Size(), walExtendStep)
	}

	// Copy the directory while the store is open: the copy is what a crash
	// leaves.
	crashed := filepath.Join(t.TempDir(), "crashed")
	copyDir(t, dir, crashed)
	c := openTest(t, crashed)
	checkLog(t, c, 1, 200)
}
