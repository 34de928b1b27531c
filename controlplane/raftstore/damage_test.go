package raftstore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"
	"github.com/hashicorp/raft"
)

// walRecord is one record of a Pebble WAL: where it starts and which log
// indexes its batch stores.
type walRecord struct {
	file    string
	offset  int64
	indexes []uint64
}

// newestWAL reads the records of the newest WAL in dir, stopping quietly at
// the first one that does not read back (a torn tail), as recovery does.
func newestWAL(t testing.TB, dir string) []walRecord {
	t.Helper()
	logs, err := wal.Scan(wal.Dir{FS: vfs.Default, Dirname: dir})
	if err != nil {
		t.Fatalf("scan WALs: %v", err)
	}
	if len(logs) == 0 {
		return nil
	}
	newest := slices.MaxFunc(logs, func(a, b wal.LogicalLog) int { return int(a.Num) - int(b.Num) })
	r := newest.OpenForRead()
	defer r.Close()
	var recs []walRecord
	for {
		rec, off, err := r.NextRecord()
		if err != nil {
			return recs
		}
		data, err := io.ReadAll(rec)
		if err != nil {
			return recs
		}
		var b pebble.Batch
		if err := b.SetRepr(data); err != nil {
			t.Fatalf("WAL record at %s: %v", off, err)
		}
		wr := walRecord{file: off.PhysicalFile, offset: off.Physical}
		br := b.Reader()
		for {
			kind, key, _, ok, err := br.Next()
			if err != nil {
				t.Fatalf("WAL record at %s: %v", off, err)
			}
			if !ok {
				break
			}
			if kind == pebble.InternalKeyKindSet && len(key) == logKeyLen && key[0] == prefixLog {
				idx, _ := parseLogKey(key)
				wr.indexes = append(wr.indexes, idx)
			}
		}
		recs = append(recs, wr)
	}
}

// damageFile XORs n bytes of path at off with 0xff (off < 0 counts from the
// end).
func damageFile(t testing.TB, path string, off int64, n int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	if off < 0 || off+int64(n) > int64(len(b)) {
		t.Fatalf("damage %s at %d+%d: file is %d bytes", path, off, n, len(b))
	}
	for i := off; i < off+int64(n); i++ {
		b[i] ^= 0xff
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func filesMatching(t testing.TB, dir, pattern string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, pattern))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

// checkCorruptOpenError fails the test unless err is what Open must return
// for a damaged directory: ErrCorrupt, the directory, and the way out.
func checkCorruptOpenError(t testing.TB, err error, dir string) {
	t.Helper()
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open = %v, want an error wrapping ErrCorrupt", err)
	}
	for _, want := range []string{dir, "drover server --rebuild"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Open error %q does not mention %q", err, want)
		}
	}
}

// TestDamagedEntry damages values under log keys directly, as a bad disk
// might below Pebble's own checksums, and checks that reads and Open report
// it with the index instead of returning wrong data.
func TestDamagedEntry(t *testing.T) {
	tests := []struct {
		name    string
		index   uint64
		value   func() []byte
		openErr bool // Open checks the first and last entries
	}{
		{"bit flip in the middle", 50, func() []byte {
			b := encode(entryFor(50))
			b[len(b)/2] ^= 0x10
			return b
		}, false},
		{"truncated", 50, func() []byte { b := encode(entryFor(50)); return b[:len(b)-3] }, false},
		{"entry under the wrong key", 50, func() []byte { return encode(entryFor(51)) }, false},
		{"empty value", 50, func() []byte { return nil }, false},
		{"last entry", 100, func() []byte { return []byte("garbage garbage garbage") }, true},
		{"first entry", 1, func() []byte { b := encode(entryFor(1)); b[0] = 9; return b }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.StoreLogs(entriesFor(1, 100)); err != nil {
				t.Fatal(err)
			}
			key := logKey(tt.index)
			if err := s.db.Set(key[:], tt.value(), pebble.Sync); err != nil {
				t.Fatal(err)
			}
			var l raft.Log
			err = s.GetLog(tt.index, &l)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("GetLog(%d) = %v, want ErrCorrupt", tt.index, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("log %d", tt.index)) {
				t.Fatalf("GetLog error %q does not name index %d", err, tt.index)
			}
			t.Logf("GetLog: %v", err)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s, err = Open(dir, Options{Logger: testLogger(t)})
			if !tt.openErr {
				if err != nil {
					t.Fatalf("Open = %v; only the first and last entries are checked at Open", err)
				}
				s.Close()
				return
			}
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded with a damaged first or last entry")
			}
			checkCorruptOpenError(t, err, dir)
			t.Logf("Open: %v", err)
		})
	}
}

// TestDamagedFiles damages Pebble's own files and checks that Open never
// panics and either reports corruption clearly or, where Pebble can tell the
// damage cost nothing that was synced, opens with every entry intact.
func TestDamagedFiles(t *testing.T) {
	const last = 400
	// prepare writes entries in batches of 10, one WAL record each; with
	// flush, entries 1-200 go on to an sstable.
	prepare := func(t *testing.T, flush bool) string {
		dir := t.TempDir()
		s, err := Open(dir, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		// The stable value first, so the WAL ends with log entries.
		if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
			t.Fatal(err)
		}
		for lo := uint64(1); lo <= last; lo += 10 {
			if err := s.StoreLogs(entriesFor(lo, lo+9)); err != nil {
				t.Fatal(err)
			}
			if flush && lo+9 == 200 {
				if err := s.db.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	const corrupt = -1
	tests := []struct {
		name   string
		flush  bool
		damage func(t *testing.T, dir string)
		// wantLast is what Open must do: corrupt for the corruption error,
		// or open with exactly the entries [1, wantLast], all intact.
		wantLast int
	}{
		// Nothing can tell a tail that was never written from one that was
		// lost when no later record or end-of-log trailer follows it:
		// whatever the newest WAL's last records held is dropped quietly. A
		// crash tears only writes that were never acknowledged; damage to
		// acknowledged ones there is lost.
		{"WAL tail torn in the last record", false, func(t *testing.T, dir string) {
			recs := newestWAL(t, dir)
			truncateFile(t, recs[len(recs)-1].file, recs[len(recs)-1].offset+10)
		}, last - 10},
		{"WAL tail torn and garbled", false, func(t *testing.T, dir string) {
			recs := newestWAL(t, dir)
			r := recs[len(recs)-2]
			truncateFile(t, r.file, r.offset+100)
			damageFile(t, r.file, -8, 8)
		}, last - 20},
		// The same damage without the cut: the end-of-log trailer that
		// Close wrote after the record proves it had been synced.
		{"WAL last record garbled after a clean close", false, func(t *testing.T, dir string) {
			recs := newestWAL(t, dir)
			r := recs[len(recs)-1]
			damageFile(t, r.file, r.offset+30, 4)
		}, corrupt},
		{"WAL truncated to nothing", false, func(t *testing.T, dir string) {
			recs := newestWAL(t, dir)
			truncateFile(t, recs[0].file, 0)
		}, 0},
		// Damage followed by records that were synced after it is
		// corruption: Pebble's WAL sync offsets say so.
		{"WAL record in the middle garbled", false, func(t *testing.T, dir string) {
			recs := newestWAL(t, dir)
			if len(recs) < 10 {
				t.Fatalf("newest WAL has %d records, want many", len(recs))
			}
			r := recs[len(recs)/2]
			damageFile(t, r.file, r.offset+20, 4)
		}, corrupt},
		{"MANIFEST garbled", true, func(t *testing.T, dir string) {
			m := filesMatching(t, dir, "MANIFEST-*")
			newest := m[len(m)-1]
			fi, err := os.Stat(newest)
			if err != nil {
				t.Fatal(err)
			}
			damageFile(t, newest, 0, int(fi.Size()))
		}, corrupt},
		{"sstable garbled", true, func(t *testing.T, dir string) {
			ssts := filesMatching(t, dir, "*.sst")
			if len(ssts) == 0 {
				t.Fatal("no sstable")
			}
			fi, err := os.Stat(ssts[0])
			if err != nil {
				t.Fatal(err)
			}
			damageFile(t, ssts[0], 0, int(fi.Size()/2))
		}, corrupt},
		{"sstable footer garbled", true, func(t *testing.T, dir string) {
			damageFile(t, filesMatching(t, dir, "*.sst")[0], -16, 16)
		}, corrupt},
		{"sstable missing", true, func(t *testing.T, dir string) {
			if err := os.Remove(filesMatching(t, dir, "*.sst")[0]); err != nil {
				t.Fatal(err)
			}
		}, corrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := prepare(t, tt.flush)
			tt.damage(t, dir)
			s, err := Open(dir, Options{Logger: testLogger(t)})
			t.Logf("Open: %v", err)
			if tt.wantLast == corrupt {
				if err == nil {
					s.Close()
					t.Fatal("Open succeeded on a damaged directory")
				}
				checkCorruptOpenError(t, err, dir)
				return
			}
			if err != nil {
				t.Fatalf("Open = %v", err)
			}
			defer s.Close()
			if tt.wantLast == 0 {
				checkLog(t, s, 0, 0)
				return
			}
			checkLog(t, s, 1, uint64(tt.wantLast))
			if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 3 {
				t.Fatalf("GetUint64(CurrentTerm) = %d, %v; want 3", v, err)
			}
		})
	}
}

// TestWALDamageInOneBlock damages the first records of a WAL whose later
// records share its first 32 KiB block, the way a server's log looks soon
// after a restart. Pebble alone reads such damage as a torn tail and drops
// every later record, entries, term and vote alike, without a word: Open
// must refuse instead, and name the file.
func TestWALDamageInOneBlock(t *testing.T) {
	for _, crashed := range []bool{false, true} {
		t.Run(fmt.Sprintf("crashed=%v", crashed), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			for lo := uint64(1); lo <= 60; lo += 5 {
				if err := s.StoreLogs(entriesFor(lo, lo+4)); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
				t.Fatal(err)
			}
			if crashed {
				// A copy taken while the store is open is what a crash
				// leaves: no end-of-log trailer.
				crashDir := filepath.Join(t.TempDir(), "crashed")
				copyDir(t, dir, crashDir)
				dir = crashDir
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			recs := newestWAL(t, dir)
			if len(recs) < 10 || recs[len(recs)-1].offset >= 32<<10 {
				t.Fatalf("want a WAL of many records in one block; got %d records, the last at %d", len(recs), recs[len(recs)-1].offset)
			}
			overwriteFile(t, recs[0].file, recs[1].offset+5, 200)

			s, err = Open(dir, Options{Logger: testLogger(t)})
			if err == nil {
				last, _ := s.LastIndex()
				s.Close()
				t.Fatalf("Open succeeded with the first records of the WAL overwritten; LastIndex = %d of 60", last)
			}
			t.Logf("Open: %v", err)
			checkCorruptOpenError(t, err, dir)
			var wd *WALDamageError
			if !errors.As(err, &wd) || wd.File != recs[0].file {
				t.Fatalf("Open error does not name the WAL file %s: %v", recs[0].file, err)
			}
			if strings.Count(err.Error(), "\n") != 0 {
				t.Fatalf("Open error is not one line: %q", err)
			}
		})
	}
}

// overwriteFile writes n pseudo-random bytes over path at off, as a stray
// write to the wrong place on disk might.
func overwriteFile(t testing.TB, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, n)
	for i := range junk {
		junk[i] = byte(i*131 + 7)
	}
	if _, err := f.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func truncateFile(t testing.TB, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}
