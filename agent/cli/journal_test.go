package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/journal"
)

// writeJournal writes entries into dataDir's journal, one second apart
// from an hour ago, and a torn line after them.
func writeJournal(t *testing.T, dataDir string, entries ...journal.Entry) {
	t.Helper()
	at := time.Now().Add(-time.Hour)
	j, err := journal.Open(agent.JournalDir(dataDir), journal.Options{Now: func() time.Time {
		at = at.Add(time.Second)
		return at
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := j.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	f, err := os.OpenFile(filepath.Join(agent.JournalDir(dataDir), journal.File), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2026`)
	f.Close()
}

func TestJournalCommand(t *testing.T) {
	dir := t.TempDir()
	writeJournal(t, dir,
		journal.Entry{Event: journal.Boot},
		journal.Entry{Event: journal.Assigned, Deployment: "digits", Model: "digits", Version: 2},
		journal.Entry{Event: journal.Assigned, Deployment: "other", Model: "other", Version: 5},
		journal.Entry{Event: journal.Switched, Deployment: "digits", Version: 2, Previous: 1},
		journal.Entry{Event: journal.Failed, Deployment: "digits", Version: 3, State: "CRASH_LOOP", Reason: "exit status 1"},
	)
	code, out, errOut := runCLI(t, context.Background(), nil, "journal", "--data-dir", dir, "--deployment", "digits")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("want a header, the boot and 3 entries of digits:\n%s", out)
	}
	for i, want := range []string{"boot", "digits  assigned", "switched  2  from 1", "failed  3  CRASH_LOOP: exit status 1"} {
		if !strings.Contains(squeeze(lines[i+1]), want) {
			t.Errorf("line %d %q lacks %q", i+1, lines[i+1], want)
		}
	}
	if !strings.Contains(errOut, "1 lines of the journal are not entries") {
		t.Errorf("the torn line is not reported: %q", errOut)
	}

	code, out, _ = runCLI(t, context.Background(), nil, "journal", "--data-dir", dir, "-o", "json", "--since", "30m")
	if code != 0 || out != "" {
		t.Errorf("--since 30m of entries an hour old: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, context.Background(), nil, "journal", "--data-dir", dir, "-o", "json")
	var n int
	for line := range strings.Lines(out) {
		var e journal.Entry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("-o json line %q: %v", line, err)
		}
		n++
	}
	if code != 0 || n != 5 {
		t.Errorf("-o json: exit %d, %d entries, want 5", code, n)
	}

	if code, _, errOut := runCLI(t, context.Background(), nil, "journal", "--data-dir", dir, "--since", "yesterday"); code != exitUsage ||
		!strings.Contains(errOut, "--since") {
		t.Errorf("bad --since: exit %d: %s", code, errOut)
	}
	if code, out, _ := runCLI(t, context.Background(), nil, "journal", "--data-dir", t.TempDir()); code != 0 || !strings.Contains(out, "no entries") {
		t.Errorf("no journal: exit %d: %s", code, out)
	}
}

// squeeze collapses runs of spaces to two, so table rows compare whatever
// the column widths.
func squeeze(s string) string {
	for strings.Contains(s, "   ") {
		s = strings.ReplaceAll(s, "   ", "  ")
	}
	return s
}
