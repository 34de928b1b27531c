package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	durpb "google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/agent/journal"
	"github.com/droverhq/drover/internal/logging"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// fakeClock moves only when a test advances it; tests see what the
// reconciler waits for with waitTimer and fire it with Advance.
type fakeClock struct {
	mu     sync.Mutex // guards the fields below
	now    time.Time
	timers []*fakeTimer
}

var _ Clock = (*fakeClock)(nil)

type fakeTimer struct {
	c    *fakeClock
	ch   chan time.Time
	when time.Time
	d    time.Duration
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), when: c.now.Add(d), d: d}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves time forward by d and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.when.After(c.now) {
			return false
		}
		t.ch <- c.now
		return true
	})
}

// pending reports whether a timer set for d is waiting.
func (c *fakeClock) pending(d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.timers, func(t *fakeTimer) bool { return t.d == d })
}

// waitTimer waits until the reconciler waits on a timer set for d.
func (c *fakeClock) waitTimer(t *testing.T, d time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("a timer for %v", d), func() bool { return c.pending(d) })
}

// waitFor polls cond in real time, for at most 10 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// behavior is what a fake instance of a version does.
type behavior int

const (
	healthy      behavior = iota // becomes healthy soon after it starts
	neverHealthy                 // stays starting
	crashLoop                    // restarts over and over, never healthy
	startError                   // Start fails
)

// fakeRuntime starts fake instances, each a real HTTP server on
// loopback, whose behaviour the test sets per version.
type fakeRuntime struct {
	t     *testing.T
	clock *fakeClock

	// delay is how long an instance takes to answer an inference
	// request.
	delay atomic.Int64

	mu        sync.Mutex // guards the fields below
	behaviors map[uint64]behavior
	starts    []InstanceSpec
	instances []*fakeInstance
}

var _ Runtime = (*fakeRuntime)(nil)

func newFakeRuntime(t *testing.T, clock *fakeClock) *fakeRuntime {
	f := &fakeRuntime{t: t, clock: clock, behaviors: make(map[uint64]behavior)}
	f.delay.Store(int64(time.Millisecond))
	return f
}

func (f *fakeRuntime) set(version uint64, b behavior) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.behaviors[version] = b
}

// startsOf counts the starts of version.
func (f *fakeRuntime) startsOf(version uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.starts {
		if s.Version == version {
			n++
		}
	}
	return n
}

func (f *fakeRuntime) startedVersions() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var vs []uint64
	for _, s := range f.starts {
		vs = append(vs, s.Version)
	}
	return vs
}

// instancesOf returns the instances started of version, oldest first.
func (f *fakeRuntime) instancesOf(version uint64) []*fakeInstance {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fakeInstance
	for _, in := range f.instances {
		if in.spec.Version == version {
			out = append(out, in)
		}
	}
	return out
}

// live counts instances not stopped.
func (f *fakeRuntime) live() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, in := range f.instances {
		if !isDone(in) {
			n++
		}
	}
	return n
}

func (f *fakeRuntime) Start(ctx context.Context, spec InstanceSpec) (Instance, error) {
	f.mu.Lock()
	b := f.behaviors[spec.Version]
	f.starts = append(f.starts, spec)
	f.mu.Unlock()
	if _, err := os.Stat(filepath.Join(spec.Dir, "model.onnx")); err != nil {
		return nil, fmt.Errorf("fake runtime: version directory incomplete: %w", err)
	}
	if b == startError {
		return nil, errors.New("fake runtime: command not found")
	}
	in := &fakeInstance{spec: spec, clock: f.clock, delay: time.Duration(f.delay.Load()), done: make(chan struct{}), changed: make(chan struct{}),
		st: Status{State: stateStarting, Since: f.clock.Now()}}
	in.srv = httptest.NewServer(http.HandlerFunc(in.serve))
	f.mu.Lock()
	f.instances = append(f.instances, in)
	f.mu.Unlock()
	switch b {
	case healthy:
		in.later(5*time.Millisecond, func(st *Status) { st.State = stateHealthy })
	case crashLoop:
		in.later(5*time.Millisecond, func(st *Status) {
			st.State, st.Reason, st.Restarts = stateCrashLoop, "exited with code 2: model file unreadable", 3
		})
	}
	f.t.Logf("fake runtime: started %s@%d on %s (gpus %v)", spec.Deployment, spec.Version, in.srv.Listener.Addr(), spec.GPUs)
	return in, nil
}

// fakeInstance is a model server that answers POST /v1/infer with its
// version, after a short pause so that requests overlap a switch.
type fakeInstance struct {
	spec  InstanceSpec
	clock *fakeClock
	delay time.Duration
	srv   *httptest.Server

	stopped  atomic.Bool
	served   atomic.Int64
	slow     atomic.Int64 // inference requests asking for a pause of their own, being answered
	stopOnce sync.Once

	mu      sync.Mutex // guards the fields below
	st      Status
	changed chan struct{}
	timer   *time.Timer
	done    chan struct{}
}

var (
	_ Instance = (*fakeInstance)(nil)
	_ Notifier = (*fakeInstance)(nil)
)

func (in *fakeInstance) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/infer":
		_, _ = io.Copy(io.Discard, r.Body)
		delay := in.delay
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			delay = d
			in.slow.Add(1)
			defer in.slow.Add(-1)
		}
		time.Sleep(delay)
		if in.stopped.Load() {
			// Stop came while this request was in flight: a request the
			// switch lost.
			http.Error(w, "stopped while serving", http.StatusInternalServerError)
			return
		}
		in.served.Add(1)
		if v := r.URL.Query().Get("claim"); v != "" {
			// An instance that names a version of its own.
			w.Header().Set("Drover-Version", v)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"version": in.spec.Version, "path": r.URL.Path, "query": r.URL.RawQuery})
	case "/v1/health":
		w.WriteHeader(http.StatusOK)
	default:
		http.NotFound(w, r)
	}
}

// later changes the status after d, in real time.
func (in *fakeInstance) later(d time.Duration, f func(*Status)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.timer = time.AfterFunc(d, func() { in.update(f) })
}

func (in *fakeInstance) update(f func(*Status)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.st.State == stateStopped || in.st.State == stateFailed {
		return
	}
	f(&in.st)
	in.st.Since = in.clock.Now()
	close(in.changed)
	in.changed = make(chan struct{})
}

// die ends the instance as a runtime that gave up on it would.
func (in *fakeInstance) die(reason string) {
	in.update(func(st *Status) { st.State, st.Reason = stateFailed, reason })
	in.shut()
}

func (in *fakeInstance) shut() {
	in.stopOnce.Do(func() {
		in.stopped.Store(true)
		in.mu.Lock()
		if in.timer != nil {
			in.timer.Stop()
		}
		in.mu.Unlock()
		in.srv.Close()
		close(in.done)
	})
}

func (in *fakeInstance) Addr() string { return in.srv.Listener.Addr().String() }

func (in *fakeInstance) Status() Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.st
}

func (in *fakeInstance) Changed() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.changed
}

func (in *fakeInstance) Stop(ctx context.Context) error {
	in.update(func(st *Status) { st.State, st.Reason = stateStopped, "" })
	in.shut()
	return nil
}

func (in *fakeInstance) Done() <-chan struct{} { return in.done }

// fakePuller serves versions from directories it makes, unless offline
// or the version is not on the "server" yet. What it pulled is local
// afterwards, as with the agent's store.
type fakePuller struct {
	root string

	mu      sync.Mutex // guards the fields below
	offline bool
	missing map[uint64]bool
	pulls   []uint64
	local   map[string]string
}

var (
	_ Puller        = (*fakePuller)(nil)
	_ LocalVersions = (*fakePuller)(nil)
)

func newFakePuller(t *testing.T) *fakePuller {
	return &fakePuller{root: t.TempDir(), missing: make(map[uint64]bool), local: make(map[string]string)}
}

func (p *fakePuller) setOffline(v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.offline = v
}

func (p *fakePuller) setMissing(version uint64, v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.missing[version] = v
}

func (p *fakePuller) pullCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pulls)
}

func (p *fakePuller) Pull(ctx context.Context, model string, version uint64) (string, error) {
	p.mu.Lock()
	p.pulls = append(p.pulls, version)
	offline, missing := p.offline, p.missing[version]
	p.mu.Unlock()
	switch {
	case offline:
		return "", fmt.Errorf("pull %s@%d: no server reachable", model, version)
	case missing:
		return "", fmt.Errorf("pull %s@%d: version not found", model, version)
	}
	dir := filepath.Join(p.root, model, fmt.Sprint(version))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "model.onnx"), []byte("weights"), 0o600); err != nil {
		return "", err
	}
	p.mu.Lock()
	p.local[fmt.Sprintf("%s@%d", model, version)] = dir
	p.mu.Unlock()
	return dir, nil
}

// evict removes a pulled version, as the version store does once two
// newer ones were pulled.
func (p *fakePuller) evict(t *testing.T, model string, version uint64) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	key := fmt.Sprintf("%s@%d", model, version)
	if err := os.RemoveAll(p.local[key]); err != nil {
		t.Fatal(err)
	}
	delete(p.local, key)
}

func (p *fakePuller) Local(model string, version uint64) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dir, ok := p.local[fmt.Sprintf("%s@%d", model, version)]
	return dir, ok
}

// fakeGPUs hands out n GPUs exclusively.
type fakeGPUs struct {
	mu   sync.Mutex // guards the fields below
	free []string
	held map[string][]string
}

var _ Resources = (*fakeGPUs)(nil)

func newFakeGPUs(n int) *fakeGPUs {
	g := &fakeGPUs{held: make(map[string][]string)}
	for i := range n {
		g.free = append(g.free, fmt.Sprintf("GPU-%d", i))
	}
	return g
}

func (g *fakeGPUs) Reserve(holder string, res *droverv1.Resources) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.held[holder]; ok {
		return nil, fmt.Errorf("holder %s holds GPUs already", holder)
	}
	n := int(res.GetGpus())
	if n > len(g.free) {
		return nil, fmt.Errorf("%d GPUs asked, %d free: %w", n, len(g.free), ErrInsufficient)
	}
	got := slices.Clone(g.free[:n])
	g.free = g.free[n:]
	g.held[holder] = got
	return got, nil
}

func (g *fakeGPUs) Release(holder string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.free = append(g.free, g.held[holder]...)
	delete(g.held, holder)
	return nil
}

func (g *fakeGPUs) holders() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	var hs []string
	for h := range g.held {
		hs = append(hs, h)
	}
	slices.Sort(hs)
	return hs
}

// Timeouts of the tests' configuration, all different so that a test can
// tell which one the reconciler waits on.
const (
	testStartTimeout = 10 * time.Second
	testDrain        = 7 * time.Second
	testRetryMin     = time.Second
	testRetryMax     = 8 * time.Second
)

// harness is a reconciler with fakes around it, its endpoint on a real
// loopback server.
type harness struct {
	t      *testing.T
	dir    string
	clock  *fakeClock
	rt     *fakeRuntime
	puller *fakePuller
	gpus   *fakeGPUs // nil: no resource accounting
	reg    *prometheus.Registry

	// journal is the running reconciler's, in dir/journal.
	journal *journal.Journal
	r       *Reconciler
	srv     *httptest.Server
	cancel  context.CancelFunc
	done    chan struct{}
}

func newHarness(t *testing.T, gpus *fakeGPUs) *harness {
	clock := newFakeClock()
	h := &harness{t: t, dir: t.TempDir(), clock: clock, rt: newFakeRuntime(t, clock), puller: newFakePuller(t), gpus: gpus}
	h.start()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) config() Config {
	cfg := DefaultConfig()
	cfg.Dir = h.dir
	cfg.Runtimes = map[string]Runtime{"onnx": h.rt}
	cfg.Puller = h.puller
	cfg.Local = h.puller
	if h.gpus != nil {
		cfg.Resources = h.gpus
	}
	cfg.Clock = h.clock
	cfg.Logger = logging.TestLogger(h.t)
	cfg.DefaultStartTimeout = testStartTimeout
	cfg.DrainTimeout = testDrain
	cfg.StopTimeout = 5 * time.Second
	cfg.RetryMin, cfg.RetryMax = testRetryMin, testRetryMax
	h.reg = prometheus.NewPedanticRegistry()
	cfg.Registerer = h.reg
	return cfg
}

// start makes a reconciler on the harness's directory and runs it.
func (h *harness) start() {
	j, err := journal.Open(filepath.Join(h.dir, "journal"), journal.Options{Now: h.clock.Now})
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := h.config()
	cfg.Journal = j
	r, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.journal = j
	h.r = r
	h.srv = httptest.NewServer(r.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan struct{})
	go func() {
		defer close(h.done)
		if err := r.Run(ctx); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	}()
}

// stop ends Run, as the agent stopping does, and waits for it.
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	<-h.done
	h.srv.Close()
	if err := h.journal.Close(); err != nil {
		h.t.Error(err)
	}
	h.cancel = nil
}

func (h *harness) update(as ...*droverv1.Assignment) {
	h.t.Helper()
	if err := h.r.Update(as); err != nil {
		h.t.Fatalf("Update: %v", err)
	}
}

func (h *harness) status(name string) *droverv1.InstanceStatus {
	for _, st := range h.r.Status() {
		if st.GetDeployment() == name {
			return st
		}
	}
	return nil
}

// waitState waits until name reports version in state.
func (h *harness) waitState(name string, version uint64, state droverv1.InstanceState) *droverv1.InstanceStatus {
	h.t.Helper()
	var st *droverv1.InstanceStatus
	waitFor(h.t, fmt.Sprintf("%s version %d %s", name, version, stateName(state)), func() bool {
		st = h.status(name)
		return st != nil && st.GetVersion() == version && st.GetState() == state
	})
	h.t.Logf("status: %v", st)
	return st
}

// waitServing waits until the endpoint answers name's requests with
// version.
func (h *harness) waitServing(name string, version uint64) {
	h.t.Helper()
	waitFor(h.t, fmt.Sprintf("%s served by version %d", name, version), func() bool {
		code, v, _ := h.infer(name)
		return code == http.StatusOK && v == version
	})
}

// infer posts to the endpoint and returns the status, the version that
// answered (0 for none) and the body.
func (h *harness) infer(name string) (int, uint64, string) {
	h.t.Helper()
	resp, err := http.Post(h.srv.URL+"/v1/deployments/"+name+"/infer", "application/json", strings.NewReader(`{"inputs":[1,2,3]}`))
	if err != nil {
		h.t.Fatalf("POST infer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct {
		Version uint64 `json:"version"`
	}
	if resp.StatusCode == http.StatusOK {
		_ = json.Unmarshal(b, &out)
	}
	return resp.StatusCode, out.Version, string(b)
}

func asg(name string, version uint64) *droverv1.Assignment {
	return &droverv1.Assignment{Deployment: name, Model: name, Version: version, Revision: version,
		Runtime: &droverv1.RuntimeSpec{Type: "onnx", HealthPath: "/v1/health"}}
}

func gpuAsg(name string, version uint64, gpus uint32) *droverv1.Assignment {
	a := asg(name, version)
	a.Resources = &droverv1.Resources{Gpus: gpus}
	return a
}

func durationpb(d time.Duration) *durpb.Duration { return durpb.New(d) }

// seriesOf counts the series of the registry's metrics labelled with
// deployment.
func (h *harness) seriesOf(deployment string) int {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "deployment" && l.GetValue() == deployment {
					n++
				}
			}
		}
	}
	return n
}
