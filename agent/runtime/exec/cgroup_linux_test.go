package exec

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/droverhq/drover/agent/runtime"
)

// procCgroup returns pid's cgroup v2 path.
func procCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			return p
		}
	}
	t.Fatalf("pid %d has no cgroup v2 line: %s", pid, b)
	return ""
}

func TestCgroupPerInstance(t *testing.T) {
	r := newRuntime(t, nil)
	if r.cgroups.parent == "" {
		t.Skipf("no cgroup for instances on this machine: %s", r.cgroups.reason)
	}
	in := start(t, r, spec(t, "serve"))
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))
	if len(st.Warnings) != 0 {
		t.Fatalf("warnings without limits asked for: %v", st.Warnings)
	}
	got := procCgroup(t, st.PID)
	if filepath.Base(got) != "drover-"+in.ID()+"-0" {
		t.Fatalf("the instance runs in cgroup %s", got)
	}
	dir := filepath.Join(r.cgroups.parent, "drover-"+in.ID()+"-0")
	stop(t, in)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s left behind: %v", dir, err)
	}
}

func TestCgroupLimits(t *testing.T) {
	r := newRuntime(t, nil)
	s := spec(t, "serve")
	s.MemoryBytes = 512 << 20
	s.CPUs = 1.5
	in := start(t, r, s)
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))
	if len(st.Warnings) > 0 {
		if !strings.HasPrefix(st.Warnings[0], "cgroup limits not applied: ") {
			t.Fatalf("warning %q", st.Warnings[0])
		}
		t.Skipf("this machine does not delegate the controllers: %s", st.Warnings[0])
	}
	dir := filepath.Join(r.cgroups.parent, "drover-"+in.ID()+"-0")
	for file, want := range map[string]string{"memory.max": "536870912", "cpu.max": "150000 100000"} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s: %q, %v; want %q", file, b, err, want)
		}
	}
}

func TestCgroupsOff(t *testing.T) {
	r := newRuntime(t, func(c *Config) { c.CgroupParent = "none" })
	s := spec(t, "serve")
	s.MemoryBytes = 1 << 30
	in := start(t, r, s)
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))
	if len(st.Warnings) != 1 || st.Warnings[0] != "cgroup limits not applied: cgroups are turned off in the runtime's configuration" {
		t.Fatalf("warnings %q", st.Warnings)
	}
}

// A child that left the process group (setsid) is still in the cgroup, and
// dies with the instance.
func TestCgroupKillsEscapedChildren(t *testing.T) {
	r := newRuntime(t, nil)
	if r.cgroups.parent == "" {
		t.Skipf("no cgroup for instances on this machine: %s", r.cgroups.reason)
	}
	in := start(t, r, spec(t, "serve"))
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	child, err := strconv.Atoi(get(t, in, "/spawn?setsid=1"))
	if err != nil {
		t.Fatal(err)
	}
	stop(t, in)
	if !gone(child) {
		t.Fatal("a child that left the process group outlived the instance")
	}
}

// lockedBuffer is a log sink the runtime's goroutines may write at once.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// On a machine that gives the agent no cgroup to manage, instances that
// ask for limits still run, each says in its status that its limits are
// not enforced and why, and the log says it once, not once per instance.
func TestCgroupLimitsNotEnforcedSaysSo(t *testing.T) {
	var logs lockedBuffer
	notCgroup := t.TempDir() // a plain directory: no cgroup.procs
	r := newRuntime(t, func(c *Config) {
		c.CgroupParent = notCgroup
		c.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logs, testLogWriter{t}), nil))
	})
	want := "cgroup limits not applied: " + notCgroup + " is not a cgroup v2 directory"
	for range 2 {
		s := spec(t, "serve")
		s.MemoryBytes = 256 << 20
		s.CPUs = 0.5
		st := waitFor(t, start(t, r, s), "healthy", state(runtime.StateHealthy))
		if len(st.Warnings) != 1 || !strings.HasPrefix(st.Warnings[0], want) {
			t.Fatalf("status warnings %q, want one starting %q", st.Warnings, want)
		}
	}
	if n := strings.Count(logs.String(), "level=WARN msg=\""+want); n != 1 {
		t.Errorf("the warning was logged %d times, want once:\n%s", n, logs.String())
	}
}
