package telemetry

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

// A window's data here is a request count; merging adds them, as merging
// sketches adds their counts.
type counts struct {
	Requests int `json:"requests"`
}

func window(key string, i, requests int) Record {
	b, _ := json.Marshal(counts{requests})
	return Record{Key: key, Start: t0.Add(time.Duration(i) * time.Minute), End: t0.Add(time.Duration(i+1) * time.Minute), Data: b}
}

func sumMerge(a, b Record) (Record, error) {
	var x, y counts
	if err := json.Unmarshal(a.Data, &x); err != nil {
		return Record{}, err
	}
	if err := json.Unmarshal(b.Data, &y); err != nil {
		return Record{}, err
	}
	d, _ := json.Marshal(counts{x.Requests + y.Requests})
	return Record{Data: d}, nil
}

func requestsIn(t *testing.T, s *Spool) (total, windows int) {
	t.Helper()
	for _, e := range s.Batch(1 << 20) {
		var c counts
		if err := json.Unmarshal(e.Data, &c); err != nil {
			t.Fatal(err)
		}
		total += c.Requests
		windows += e.Windows
	}
	return total, windows
}

func TestSpoolKeepsWindowsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, SpoolOptions{MaxBytes: 1 << 20, Merge: sumMerge})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Add(window("digits", i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	b := s.Batch(2)
	if len(b) != 2 || !b[0].Start.Equal(t0.Add(4*time.Minute)) || !b[1].Start.Equal(t0) {
		t.Fatalf("batch %v: want the newest, then the oldest", b)
	}
	if err := s.Ack(b[0].ID, b[1].ID); err != nil {
		t.Fatal(err)
	}
	// An agent restart: the three windows not acknowledged are still there.
	s, err = OpenSpool(dir, SpoolOptions{MaxBytes: 1 << 20, Merge: sumMerge})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Records != 3 || st.DroppedWindows != 0 {
		t.Fatalf("after reopening: %+v", st)
	}
	if total, _ := requestsIn(t, s); total != 30 {
		t.Errorf("%d requests spooled, want 30", total)
	}
	// Windows added after the restart sort after the old ones.
	if err := s.Add(window("digits", 9, 1)); err != nil {
		t.Fatal(err)
	}
	if b := s.Batch(1); !b[0].Start.Equal(t0.Add(9 * time.Minute)) {
		t.Errorf("newest after restart: %v", b[0].Start)
	}
}

// A long outage in a small spool: old windows become coarser, and no
// request count is lost while merging can make room.
func TestSpoolMergesOldestBeforeDropping(t *testing.T) {
	one := footprint(len(encodeRecord(window("digits", 0, 10))))
	s, err := OpenSpool(t.TempDir(), SpoolOptions{MaxBytes: 12 * one, Merge: sumMerge, MaxSpan: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 240 { // four hours of one-minute windows
		if err := s.Add(window("digits", i, 10)); err != nil {
			t.Fatal(err)
		}
		if st := s.Stats(); st.Bytes > 12*one+one {
			t.Fatalf("window %d: spool at %d bytes, limit %d", i, st.Bytes, 12*one)
		}
	}
	st := s.Stats()
	total, windows := requestsIn(t, s)
	if st.DroppedWindows != 0 || total != 2400 || windows != 240 {
		t.Errorf("stats %+v, %d requests in %d windows: want all 2400 in 240, none dropped", st, total, windows)
	}
	if st.Merges == 0 {
		t.Error("nothing merged")
	}
}

// With no merging possible, the drop count is exact: what the spool holds
// plus what it counted as dropped is every window added.
func TestSpoolCountsDropsExactly(t *testing.T) {
	dir := t.TempDir()
	one := footprint(len(encodeRecord(window("digits", 0, 10))))
	opts := SpoolOptions{MaxBytes: 5 * one} // no Merge
	s, err := OpenSpool(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 23 {
		if err := s.Add(window("digits", i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	s, err = OpenSpool(dir, opts) // the counters survive a restart
	if err != nil {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.Records != 5 || st.DroppedWindows != 18 || st.DroppedRecords != 18 {
		t.Errorf("stats %+v: want 5 kept, 18 dropped", st)
	}
	// The kept ones are the newest.
	if b := s.Batch(5); !b[1].Start.Equal(t0.Add(18 * time.Minute)) {
		t.Errorf("oldest kept starts %v, want minute 18", b[1].Start)
	}
}

// Windows of different streams never merge; a merged window never spans
// more than MaxSpan.
func TestSpoolMergesWithinStreamAndSpan(t *testing.T) {
	one := footprint(len(encodeRecord(window("a", 0, 10))))
	s, err := OpenSpool(t.TempDir(), SpoolOptions{MaxBytes: 8 * one, Merge: sumMerge, MaxSpan: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 60 {
		key := []string{"a", "b"}[i%2]
		if err := s.Add(window(key, i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	kept := 0
	for _, e := range s.Batch(60) {
		if e.End.Sub(e.Start) > 10*time.Minute {
			t.Errorf("record spans %v", e.End.Sub(e.Start))
		}
		kept += e.Windows
	}
	if st := s.Stats(); uint64(kept)+st.DroppedWindows != 60 {
		t.Errorf("%d windows kept + %d dropped != 60", kept, st.DroppedWindows)
	}
}

func TestSpoolDropsDamagedFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, SpoolOptions{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Add(window("digits", i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*"+spoolSuffix))
	b, _ := os.ReadFile(files[1])
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(files[1], b, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = OpenSpool(dir, SpoolOptions{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Records != 2 || st.DroppedRecords != 1 {
		t.Errorf("stats %+v: want the damaged window dropped and counted", st)
	}
}

// The size limit holds for the disk, not only for the bytes written: the
// blocks the file system allocated to the records' files, as du counts
// them, stay within it while a long outage fills the spool.
func TestSpoolStaysWithinItsLimitOnDisk(t *testing.T) {
	dir := t.TempDir()
	const limit = 40 * spoolBlock
	s, err := OpenSpool(dir, SpoolOptions{MaxBytes: limit, Merge: sumMerge, MaxSpan: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		// Windows of a few hundred bytes, as a small model's are.
		if err := s.Add(window(fmt.Sprintf("stream-%d", i%3), i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var allocated int64
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), spoolSuffix) {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		allocated += st.Blocks * 512
	}
	st := s.Stats()
	if allocated > limit || st.Bytes > limit {
		t.Fatalf("spool files take %d bytes on disk (spool counts %d), over its limit of %d", allocated, st.Bytes, limit)
	}
	if st.Merges == 0 || st.Records < 3 {
		t.Fatalf("stats %+v: want the spool full of merged records", st)
	}
}

func TestSpoolRefusesOversizedWindow(t *testing.T) {
	s, err := OpenSpool(t.TempDir(), SpoolOptions{MaxBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Add(Record{Key: "k", Start: t0, End: t0.Add(time.Minute), Data: []byte(strings.Repeat("x", 200))})
	if !errors.Is(err, ErrRecordTooLarge) {
		t.Errorf("err %v, want ErrRecordTooLarge", err)
	}
	if _, err := OpenSpool(t.TempDir(), SpoolOptions{}); err == nil || !strings.Contains(err.Error(), "size limit") {
		t.Errorf("no size limit: %v", err)
	}
}

func BenchmarkSpoolAdd(b *testing.B) {
	s, err := OpenSpool(b.TempDir(), SpoolOptions{MaxBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(fmt.Sprintf("%0*d", 8<<10, 0)) // a window with one 8 KiB profile
	b.SetBytes(int64(len(data)))
	for i := 0; b.Loop(); i++ {
		if err := s.Add(Record{Key: "k", Start: t0.Add(time.Duration(i) * time.Minute), End: t0.Add(time.Duration(i+1) * time.Minute), Data: data}); err != nil {
			b.Fatal(err)
		}
	}
}
