//go:build linux

package exec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/runtime"
	"github.com/droverhq/drover/agent/runtime/logfile"
	"github.com/droverhq/drover/agent/runtime/runtimetest"
)

// self is this test binary, which doubles as the model server.
func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newRuntime(t *testing.T, mod func(*Config)) *Runtime {
	t.Helper()
	cfg := DefaultConfig(filepath.Join(t.TempDir(), "logs"))
	if os.Getenv("NOCG") != "" {
		cfg.CgroupParent = "none"
	}
	cfg.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Close(ctx); err != nil {
			t.Errorf("close runtime: %v", err)
		}
	})
	return r
}

// spec runs this binary in mode, probed fast on the real clock.
func spec(t *testing.T, mode string, env ...string) runtime.InstanceSpec {
	s := runtime.InstanceSpec{
		Deployment: "web",
		Model:      "resnet",
		Version:    7,
		Dir:        t.TempDir(),
		Command:    []string{self(t)},
		Env:        map[string]string{modeEnv: mode},
		Health: runtime.HealthCheck{
			Path:             "/v1/health",
			Interval:         30 * time.Millisecond,
			StartInterval:    10 * time.Millisecond,
			Timeout:          time.Second,
			FailureThreshold: 2,
			StartTimeout:     20 * time.Second,
		},
		StopTimeout: 5 * time.Second,
	}
	for i := 0; i+1 < len(env); i += 2 {
		s.Env[env[i]] = env[i+1]
	}
	return s
}

func start(t *testing.T, r *Runtime, s runtime.InstanceSpec) runtime.Instance {
	t.Helper()
	in, err := r.Start(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// waitFor waits until cond holds for the instance's status.
func waitFor(t *testing.T, in runtime.Instance, what string, cond func(runtime.Status) bool) runtime.Status {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		ch := in.Changed()
		if s := in.Status(); cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("waiting for %s: status %+v", what, in.Status())
		}
	}
}

func state(want runtime.State) func(runtime.Status) bool {
	return func(s runtime.Status) bool { return s.State == want }
}

func get(t *testing.T, in runtime.Instance, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + in.Addr() + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func stop(t *testing.T, in runtime.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// gone reports whether pid no longer runs (a zombie counts as gone: in a
// container without an init that reaps, orphans stay zombies).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}

func TestHealthyStartAndStop(t *testing.T) {
	r := newRuntime(t, nil)
	in := start(t, r, spec(t, "serve"))
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))
	t.Logf("healthy: %+v", st)
	pid := st.PID
	if pid == 0 || st.HealthySince.IsZero() || st.Restarts != 0 {
		t.Fatalf("healthy status incomplete: %+v", st)
	}
	if got := get(t, in, "/v1/health"); got != "ok\n" {
		t.Fatalf("the instance does not serve on Addr: %q", got)
	}
	if len(r.Instances()) != 1 {
		t.Fatalf("instances: %v", r.Instances())
	}
	stop(t, in)
	select {
	case <-in.Done():
	default:
		t.Fatal("Done not closed after Stop returned")
	}
	st = in.Status()
	if st.State != runtime.StateStopped || st.PID != 0 || st.LastExit == nil || st.LastExit.Reason != "stopped" {
		t.Fatalf("after stop: %+v %+v", st, st.LastExit)
	}
	if !gone(pid) {
		t.Fatal("process still runs after Stop")
	}
	if len(r.Instances()) != 0 {
		t.Fatalf("a stopped instance is still listed: %v", r.Instances())
	}
	stop(t, in) // a second Stop is harmless
}

func TestUnhealthyAndBack(t *testing.T) {
	r := newRuntime(t, nil)
	in := start(t, r, spec(t, "serve"))
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	get(t, in, "/sick")
	st := waitFor(t, in, "unhealthy", state(runtime.StateUnhealthy))
	if !strings.Contains(st.LastProbeError, "503") || !st.HealthySince.IsZero() {
		t.Fatalf("unhealthy status: %+v", st)
	}
	t.Log(st.LastProbeError)
	get(t, in, "/well")
	st = waitFor(t, in, "healthy again", state(runtime.StateHealthy))
	if st.LastProbeError != "" || st.Restarts != 0 {
		t.Fatalf("healthy again: %+v", st)
	}
}

func TestStartTimeoutKillsAndFails(t *testing.T) {
	clk := runtimetest.NewFakeClock(time.Unix(1e9, 0))
	r := newRuntime(t, func(c *Config) { c.Clock = clk })
	s := spec(t, "serve", "EXECTEST_NEVER_READY", "1")
	s.Restart = runtime.RestartNever
	in := start(t, r, s)
	st := waitFor(t, in, "starting", func(s runtime.Status) bool { return s.PID != 0 })
	pid := st.PID
	// Let a probe run and fail, then pass the start timeout.
	clk.Advance(s.Health.StartInterval)
	waitFor(t, in, "a failed probe", func(s runtime.Status) bool { return s.LastProbeError != "" })
	clk.Advance(s.Health.StartTimeout)
	st = waitFor(t, in, "failed", state(runtime.StateFailed))
	t.Logf("exit: %s", st.LastExit)
	if e := st.LastExit; e == nil || !strings.Contains(e.Reason, "no healthy probe within 20s (last: probe: ") || e.Signal != "killed" {
		t.Fatalf("exit after the start timeout: %+v", st.LastExit)
	}
	if !gone(pid) {
		t.Fatal("process runs on after its start timeout")
	}
	<-in.Done()
}

func TestCrashLoopBacksOff(t *testing.T) {
	clk := runtimetest.NewFakeClock(time.Unix(1e9, 0))
	r := newRuntime(t, func(c *Config) {
		c.Clock = clk
		c.Backoff = Backoff{Base: time.Second, Max: 4 * time.Second, ResetAfter: time.Minute}
	})
	in := start(t, r, spec(t, "crash"))
	for i, want := range []time.Duration{1, 2, 4, 4, 4} {
		want *= time.Second
		st := waitFor(t, in, "crash-looping", func(s runtime.Status) bool {
			return s.State == runtime.StateCrashLoop && s.ConsecutiveFailures == i+1
		})
		if got := st.NextStart.Sub(clk.Now()); got != want {
			t.Fatalf("exit %d: next start in %v, want %v", i+1, got, want)
		}
		if st.Restarts != i || st.LastExit.Code != 3 || !strings.Contains(st.LastExit.StderrTail, "boom: the model file is missing") {
			t.Fatalf("exit %d: %+v, last exit %+v", i+1, st, st.LastExit)
		}
		if i == 0 {
			t.Logf("crash-looping: %s; stderr: %q", st.LastExit, st.LastExit.StderrTail)
		}
		clk.Advance(want)
	}
	stop(t, in)
	if st := in.Status(); st.State != runtime.StateStopped {
		t.Fatalf("stopping a crash-looping instance: %+v", st)
	}
}

// advanceUntil steps the fake clock until cond holds, giving the instance
// a moment of real time after each step to probe.
func advanceUntil(t *testing.T, clk *runtimetest.FakeClock, in runtime.Instance, step time.Duration, what string, cond func(runtime.Status) bool) runtime.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if s := in.Status(); cond(s) {
			return s
		}
		clk.Advance(step)
		select {
		case <-in.Changed():
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("waiting for %s: %+v", what, in.Status())
	return runtime.Status{}
}

func TestBackoffResetsAfterStableRun(t *testing.T) {
	clk := runtimetest.NewFakeClock(time.Unix(1e9, 0))
	r := newRuntime(t, func(c *Config) {
		c.Clock = clk
		c.Backoff = Backoff{Base: time.Second, Max: time.Minute, ResetAfter: 10 * time.Second}
	})
	s := spec(t, "serve")
	in := start(t, r, s)
	healthy := func(n int) {
		advanceUntil(t, clk, in, s.Health.StartInterval, "healthy", func(st runtime.Status) bool {
			return st.State == runtime.StateHealthy && st.Restarts == n
		})
	}
	crash := func(failures int, wantDelay time.Duration) {
		t.Helper()
		http.Get("http://" + in.Addr() + "/exit?code=1")
		st := waitFor(t, in, "crash-looping", state(runtime.StateCrashLoop))
		if st.ConsecutiveFailures != failures || st.NextStart.Sub(clk.Now()) != wantDelay {
			t.Fatalf("want %d failures and %v backoff: %+v", failures, wantDelay, st)
		}
		clk.Advance(wantDelay)
	}
	healthy(0)
	crash(1, time.Second)
	healthy(1)
	crash(2, 2*time.Second)
	healthy(2)
	clk.Advance(10 * time.Second) // a stable run
	crash(1, time.Second)
	healthy(3)
}

func TestRestartPolicies(t *testing.T) {
	r := newRuntime(t, nil)
	for _, tc := range []struct {
		policy runtime.RestartPolicy
		code   string
		want   runtime.State
	}{
		{runtime.RestartNever, "3", runtime.StateFailed},
		{runtime.RestartNever, "0", runtime.StateStopped},
		{runtime.RestartOnFailure, "0", runtime.StateStopped},
	} {
		s := spec(t, "crash", "EXECTEST_CODE", tc.code)
		s.Restart = tc.policy
		in := start(t, r, s)
		<-in.Done()
		if st := in.Status(); st.State != tc.want || st.Restarts != 0 {
			t.Errorf("%s, exit %s: %+v", tc.policy, tc.code, st)
		}
	}
}

func TestStopKillsProcessGroup(t *testing.T) {
	r := newRuntime(t, nil)
	s := spec(t, "serve", "EXECTEST_IGNORE_TERM", "1")
	s.StopTimeout = 300 * time.Millisecond
	in := start(t, r, s)
	st := waitFor(t, in, "healthy", state(runtime.StateHealthy))
	child, err := strconv.Atoi(get(t, in, "/spawn"))
	if err != nil {
		t.Fatal(err)
	}
	if gone(child) {
		t.Fatal("the spawned child is not running")
	}
	began := time.Now()
	stop(t, in)
	took := time.Since(began)
	t.Logf("stop took %v", took)
	if took < s.StopTimeout {
		t.Errorf("a server ignoring SIGTERM stopped after %v, before its %v grace", took, s.StopTimeout)
	}
	if e := in.Status().LastExit; e == nil || e.Signal != "killed" {
		t.Errorf("last exit %+v, want killed", e)
	}
	if !gone(st.PID) || !gone(child) {
		t.Fatalf("after Stop: server gone %v, its child gone %v", gone(st.PID), gone(child))
	}
}

func TestCrashKillsLeftoverChildren(t *testing.T) {
	r := newRuntime(t, nil)
	s := spec(t, "serve")
	s.Restart = runtime.RestartNever
	in := start(t, r, s)
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	child, err := strconv.Atoi(get(t, in, "/spawn"))
	if err != nil {
		t.Fatal(err)
	}
	http.Get("http://" + in.Addr() + "/exit?code=4")
	<-in.Done()
	if st := in.Status(); st.State != runtime.StateFailed || st.LastExit.Code != 4 {
		t.Fatalf("after exit 4: %+v", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone(child) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !gone(child) {
		t.Fatal("the server's child outlived it")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLogsCapturedAndFollowed(t *testing.T) {
	r := newRuntime(t, nil)
	in := start(t, r, spec(t, "serve"))
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	lr := in.(runtime.LogReader)
	var out syncBuffer
	followed := make(chan error, 1)
	go func() { followed <- lr.Logs(context.Background(), runtime.Stdout, 0, true, &out) }()
	get(t, in, "/print?n=2000")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "line 1999\n") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.HasPrefix(out.String(), "hello stdout\nline 0\n") || !strings.Contains(out.String(), "line 1999\n") {
		t.Fatalf("followed stdout: %d bytes, starts %q", len(out.String()), out.String()[:min(40, len(out.String()))])
	}
	var errOut bytes.Buffer
	if err := lr.Logs(context.Background(), runtime.Stderr, 0, false, &errOut); err != nil || errOut.String() != "hello stderr\n" {
		t.Fatalf("stderr: %q, %v", errOut.String(), err)
	}
	var tail bytes.Buffer
	lr.Logs(context.Background(), runtime.Stdout, 10, false, &tail)
	if tail.String() != "line 1999\n" {
		t.Fatalf("tail of 10 bytes: %q", tail.String())
	}
	stop(t, in)
	// After the instance, the files remain for logfile.Tail.
	tail.Reset()
	if err := logfile.Tail(r.LogPath(in.ID(), runtime.Stdout), 0, 10, &tail); err != nil || tail.String() != "line 1999\n" {
		t.Fatalf("tail from the file after stop: %q, %v", tail.String(), err)
	}
	select {
	case err := <-followed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end when the instance did")
	}
	if err := lr.Logs(context.Background(), "stdin", 0, false, io.Discard); err == nil {
		t.Fatal("an unknown stream was accepted")
	}
}

func TestLogsRotateUnderBound(t *testing.T) {
	r := newRuntime(t, func(c *Config) { c.Logs.MaxBytes, c.Logs.MaxFiles = 4096, 2 })
	in := start(t, r, spec(t, "serve"))
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	get(t, in, "/print?n=5000")
	stop(t, in)
	dir := filepath.Join(r.cfg.LogsDir, in.ID())
	entries, _ := os.ReadDir(dir)
	var total int64
	var names []string
	for _, e := range entries {
		fi, _ := e.Info()
		total += fi.Size()
		names = append(names, e.Name())
		if fi.Size() > 4096 {
			t.Errorf("%s is %d bytes", e.Name(), fi.Size())
		}
	}
	if !slices.Contains(names, "stdout.log.2") || slices.Contains(names, "stdout.log.3") || total > 4*4096 {
		t.Fatalf("log files %v, %d bytes", names, total)
	}
}

func environ(t *testing.T, in runtime.Instance) map[string]string {
	t.Helper()
	var kvs []string
	if err := json.Unmarshal([]byte(get(t, in, "/env")), &kvs); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := env[k]; dup {
			t.Errorf("%s set twice", k)
		}
		env[k] = v
	}
	return env
}

func TestEnvironment(t *testing.T) {
	r := newRuntime(t, func(c *Config) {
		c.BaseEnv = []string{"PATH=/usr/bin:/bin", "CUDA_VISIBLE_DEVICES=0,1,2,3", "KEEP=base", "OVERRIDE=base"}
	})
	s := spec(t, "serve", "OVERRIDE", "spec")
	s.GPUs = []string{"GPU-5c1f7e2a-0000-0000-0000-000000000001", "MIG-9a2b3c4d-0000-0000-0000-000000000002"}
	in := start(t, r, s)
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	env := environ(t, in)
	_, port, _ := net.SplitHostPort(in.Addr())
	want := map[string]string{
		"DROVER_MODEL_DIR":       s.Dir,
		"DROVER_PORT":            port,
		"PORT":                   port,
		"DROVER_HOST":            "127.0.0.1",
		"DROVER_DEPLOYMENT":      "web",
		"DROVER_MODEL_NAME":      "resnet",
		"DROVER_VERSION":         "7",
		"CUDA_VISIBLE_DEVICES":   strings.Join(s.GPUs, ","),
		"NVIDIA_VISIBLE_DEVICES": strings.Join(s.GPUs, ","),
		"KEEP":                   "base",
		"OVERRIDE":               "spec",
		"PATH":                   "/usr/bin:/bin",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	stop(t, in)

	// Without GPUs the process sees none, not the machine's all.
	in = start(t, r, spec(t, "serve"))
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	env = environ(t, in)
	if env["CUDA_VISIBLE_DEVICES"] != "-1" || env["NVIDIA_VISIBLE_DEVICES"] != "void" {
		t.Errorf("without GPUs: CUDA_VISIBLE_DEVICES=%q NVIDIA_VISIBLE_DEVICES=%q", env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"])
	}
}

func TestMissingCommand(t *testing.T) {
	r := newRuntime(t, nil)
	for _, cmd := range []string{"drover-no-such-model-server", "./bin/serve"} {
		s := spec(t, "serve")
		s.Command = []string{cmd, "--port", "1"}
		_, err := r.Start(context.Background(), s)
		if !errors.Is(err, runtime.ErrCommandNotFound) || !strings.Contains(err.Error(), cmd) {
			t.Fatalf("start %s: %v", cmd, err)
		}
		t.Log(err)
	}
	if entries, _ := os.ReadDir(r.cfg.LogsDir); len(entries) != 0 {
		t.Fatalf("a failed start left %v behind", entries)
	}
	// A relative command is found in the version directory.
	s := spec(t, "serve")
	if err := os.Symlink(self(t), filepath.Join(s.Dir, "server")); err != nil {
		t.Fatal(err)
	}
	s.Command = []string{"./server"}
	in := start(t, r, s)
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
}

func TestInvalidSpecs(t *testing.T) {
	r := newRuntime(t, nil)
	for name, mod := range map[string]func(*runtime.InstanceSpec){
		"reserved env":   func(s *runtime.InstanceSpec) { s.Env["CUDA_VISIBLE_DEVICES"] = "0" },
		"restart policy": func(s *runtime.InstanceSpec) { s.Restart = "sometimes" },
		"no dir":         func(s *runtime.InstanceSpec) { s.Dir = filepath.Join(s.Dir, "missing") },
		"health path":    func(s *runtime.InstanceSpec) { s.Health.Path = "health" },
		"no command":     func(s *runtime.InstanceSpec) { s.Command = nil },
		"comma in GPU":   func(s *runtime.InstanceSpec) { s.GPUs = []string{"GPU-a,GPU-b"} },
	} {
		s := spec(t, "serve")
		mod(&s)
		_, err := r.Start(context.Background(), s)
		if !errors.Is(err, runtime.ErrInvalidSpec) {
			t.Errorf("%s: %v", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestONNXPreset(t *testing.T) {
	if _, err := NewONNX("drover-onnx-not-installed", DefaultConfig(t.TempDir())); !errors.Is(err, runtime.ErrCommandNotFound) {
		t.Fatalf("missing binary: %v", err)
	}
	cfg := DefaultConfig(t.TempDir())
	r, err := NewONNX(self(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	if r.Name() != "onnx" {
		t.Fatalf("name %q", r.Name())
	}
	s := spec(t, "serve")
	s.Command = nil
	s.Health.Path = ""
	in := start(t, r, s)
	waitFor(t, in, "healthy", state(runtime.StateHealthy))
	got := in.Spec()
	if !slices.Equal(got.Command, []string{self(t), "serve"}) || got.Health.Path != "/v1/health" {
		t.Fatalf("onnx spec: command %v, health %q", got.Command, got.Health.Path)
	}
	s.Command = []string{"python"}
	if _, err := r.Start(context.Background(), s); !errors.Is(err, runtime.ErrInvalidSpec) {
		t.Fatalf("a command for the onnx runtime: %v", err)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	before := goruntime.NumGoroutine()
	cfg := DefaultConfig(t.TempDir())
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var all []runtime.Instance
	for range 3 {
		all = append(all, start(t, r, spec(t, "serve")))
	}
	for _, in := range all {
		waitFor(t, in, "healthy", state(runtime.StateHealthy))
	}
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, in := range all {
		if st := in.Status(); st.State != runtime.StateStopped {
			t.Fatalf("after Close: %+v", st)
		}
	}
	if _, err := r.Start(context.Background(), spec(t, "serve")); !errors.Is(err, runtime.ErrClosed) {
		t.Fatalf("start after close: %v", err)
	}
	// Every goroutine the runtime started has ended (the test's own HTTP
	// client may keep a connection for a moment).
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for goruntime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := goruntime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:goruntime.Stack(buf, true)])
	}
}

func TestEndedLogsPruned(t *testing.T) {
	r := newRuntime(t, func(c *Config) { c.KeepEndedLogs = 2 })
	var ids []string
	for range 4 {
		s := spec(t, "crash")
		s.Restart = runtime.RestartNever
		in := start(t, r, s)
		<-in.Done()
		ids = append(ids, in.ID())
		time.Sleep(10 * time.Millisecond) // distinct modification times
	}
	live := start(t, r, spec(t, "serve"))
	waitFor(t, live, "healthy", state(runtime.StateHealthy))
	entries, _ := os.ReadDir(r.cfg.LogsDir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	slices.Sort(got)
	want := []string{ids[2], ids[3], live.ID()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("log folders %v, want the two newest ended and the live one %v", got, want)
	}
}
