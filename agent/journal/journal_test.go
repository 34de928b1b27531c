package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// clock returns a Now that ticks one second per call from a fixed start.
func clock() func() time.Time {
	t := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return func() time.Time {
		t = t.Add(time.Second)
		return t
	}
}

func TestAppendAndRead(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Event: Boot},
		{Event: Assigned, Deployment: "web", Model: "web", Version: 2},
		{Event: Started, Deployment: "web", Version: 2},
		{Event: Switched, Deployment: "web", Version: 2, Previous: 1},
	}
	for _, e := range want {
		if err := j.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	got, skipped, err := Read(dir)
	if err != nil || skipped != 0 {
		t.Fatalf("read: %v, %d skipped", err, skipped)
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		want[i].Time = time.Date(2026, 3, 1, 12, 0, i+1, 0, time.UTC)
		if got[i] != want[i] {
			t.Errorf("entry %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if err := j.Append(Entry{Event: Boot}); err == nil {
		t.Error("append after close succeeded")
	}
}

// A crash in the middle of an append leaves part of a line: reading skips
// it, and the journal opened again cuts it off and goes on on a line of
// its own.
func TestTornLastLine(t *testing.T) {
	for _, torn := range []string{
		`{"time":"2026-03-01T12:00:09Z","event":"swi`,
		// Complete JSON but no newline: the write of the newline was lost,
		// and what came before it may be too.
		`{"time":"2026-03-01T12:00:09Z","event":"switched","deployment":"web","version":3}`,
	} {
		dir := t.TempDir()
		j, err := Open(dir, Options{Now: clock()})
		if err != nil {
			t.Fatal(err)
		}
		for v := range uint64(3) {
			if err := j.Append(Entry{Event: Assigned, Deployment: "web", Version: v + 1}); err != nil {
				t.Fatal(err)
			}
		}
		j.Close()
		f, err := os.OpenFile(filepath.Join(dir, File), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(torn); err != nil {
			t.Fatal(err)
		}
		f.Close()

		got, skipped, err := Read(dir)
		if err != nil {
			t.Fatalf("read with a torn line: %v", err)
		}
		if len(got) != 3 || skipped != 1 || got[2].Version != 3 {
			t.Fatalf("read %+v, %d skipped; want 3 entries and the torn line skipped", got, skipped)
		}

		j, err = Open(dir, Options{Now: clock()})
		if err != nil {
			t.Fatalf("open with a torn line: %v", err)
		}
		if err := j.Append(Entry{Event: Boot}); err != nil {
			t.Fatal(err)
		}
		j.Close()
		got, skipped, err = Read(dir)
		if err != nil || skipped != 0 || len(got) != 4 || got[3].Event != Boot {
			t.Fatalf("after reopening: %+v, %d skipped, %v; want the torn line gone and the new entry read", got, skipped, err)
		}
	}
}

// A line damaged in the middle of the file is skipped and counted; the
// entries around it are read.
func TestDamagedLineSkipped(t *testing.T) {
	dir := t.TempDir()
	body := `{"time":"2026-03-01T12:00:01Z","event":"boot"}
not json at all
{"time":"2026-03-01T12:00:02Z"}
{"time":"2026-03-01T12:00:03Z","event":"assigned","deployment":"web","version":1}
`
	if err := os.WriteFile(filepath.Join(dir, File), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	got, skipped, err := Read(dir)
	if err != nil || skipped != 2 || len(got) != 2 || got[1].Event != Assigned {
		t.Fatalf("read %+v, %d skipped, %v; want boot and assigned, 2 skipped", got, skipped, err)
	}
}

func TestMissingJournalIsEmpty(t *testing.T) {
	got, skipped, err := Read(filepath.Join(t.TempDir(), "nothing"))
	if err != nil || skipped != 0 || len(got) != 0 {
		t.Fatalf("read %+v, %d, %v", got, skipped, err)
	}
}

// The journal rotates past MaxBytes and keeps Keep older files: its size
// stays bounded, and what it keeps is the newest entries, in order.
func TestRotation(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{MaxBytes: 1000, Keep: 2, Now: clock()})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if err := j.Append(Entry{Event: Assigned, Deployment: "web", Version: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	files, err := filepath.Glob(filepath.Join(dir, "journal*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Errorf("files %v, want the current one and 2 rotated", files)
	}
	var total int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1000 {
			t.Errorf("%s is %d bytes, over the bound of 1000", f, st.Size())
		}
		total += st.Size()
	}
	got, skipped, err := Read(dir)
	if err != nil || skipped != 0 {
		t.Fatalf("read: %v, %d skipped", err, skipped)
	}
	if len(got) == 0 || len(got) >= n {
		t.Fatalf("%d entries kept of %d", len(got), n)
	}
	for i, e := range got {
		if want := uint64(n - len(got) + i + 1); e.Version != want {
			t.Fatalf("entry %d has version %d, want %d: the newest entries in order", i, e.Version, want)
		}
	}
	t.Logf("%d of %d entries kept in %d bytes", len(got), n, total)
}

func TestLongReasonBounded(t *testing.T) {
	dir := t.TempDir()
	j, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.Append(Entry{Event: Failed, Deployment: "web", Version: 1, Reason: strings.Repeat("x", 100_000)}); err != nil {
		t.Fatal(err)
	}
	got, _, err := Read(dir)
	if err != nil || len(got) != 1 || len(got[0].Reason) > maxReason+len("…") {
		t.Fatalf("read %d entries, %v; reason of %d bytes", len(got), err, len(fmt.Sprint(got)))
	}
}
