package exec

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/runtime"
)

// An agent that restarts finds the processes its predecessor left running
// and kills them; their GPUs come back with the list.
func TestLeftoversFoundAndKilled(t *testing.T) {
	logs := filepath.Join(t.TempDir(), "logs")
	before := newRuntime(t, func(c *Config) { c.LogsDir = logs })
	s := spec(t, "serve")
	s.Restart = runtime.RestartNever
	s.GPUs = []string{"GPU-1"}
	in := start(t, before, s)
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))

	after := newRuntime(t, func(c *Config) { c.LogsDir = logs })
	if own, _ := before.Leftovers(); len(own) != 0 {
		t.Fatalf("a runtime lists its own instance as a leftover: %+v", own)
	}
	left, err := after.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].ID != in.ID() || left[0].PID != st.PID || !left[0].Running || !slices.Equal(left[0].GPUs, s.GPUs) || left[0].Addr != in.Addr() {
		t.Fatalf("leftovers %+v", left)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	killed, err := after.KillLeftovers(ctx)
	if err != nil || len(killed) != 1 || killed[0].ID != in.ID() {
		t.Fatalf("killed %+v, %v", killed, err)
	}
	if !gone(st.PID) {
		t.Fatal("the leftover still runs")
	}
	<-in.Done() // the first runtime sees its process die
	if left, _ := after.Leftovers(); len(left) != 0 {
		t.Fatalf("leftovers after the kill: %+v", left)
	}
	if _, err := os.Stat(filepath.Join(logs, in.ID(), "stdout.log")); err != nil {
		t.Fatalf("the logs went with the process: %v", err)
	}
}

// A record whose process is gone, or whose pid now names another process,
// is not running.
func TestLeftoverRecordOfDeadProcess(t *testing.T) {
	r := newRuntime(t, nil)
	rec := processRecord{ID: "web-v1-dead", Deployment: "web", PID: os.Getpid(), StartTicks: 1}
	if rec.running() {
		t.Fatal("a pid with another start time counts as running")
	}
	ticks, err := procStartTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	rec.StartTicks = ticks
	if !rec.running() {
		t.Fatal("this process does not count as running")
	}
	rec.StartTicks = 1
	dir := filepath.Join(r.cfg.LogsDir, rec.ID)
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, recordFile), []byte(`{"id":"web-v1-dead","deployment":"web","pid":`+itoa(os.Getpid())+`,"start_ticks":1}`), 0o644)
	left, err := r.Leftovers()
	if err != nil || len(left) != 1 || left[0].Running {
		t.Fatalf("leftovers %+v, %v", left, err)
	}
	if _, err := os.Stat(filepath.Join(dir, recordFile)); !os.IsNotExist(err) {
		t.Fatal("the stale record was kept")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
