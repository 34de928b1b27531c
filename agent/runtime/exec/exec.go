// Package exec is the runtime that runs any model server as a child
// process of the agent: the version's directory, a free loopback port and
// the allocated GPUs go into its environment; it is health-probed over
// HTTP, restarted by policy with exponential backoff, its output kept in
// rotating files, and its resources capped through cgroup v2 where the
// machine delegates a cgroup to the agent. The ONNX runtime is this
// runtime preset to run drover-onnx (NewONNX).
package exec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/agent/runtime"
	"github.com/droverhq/drover/agent/runtime/logfile"
)

// Backoff is how long a process that exited waits before it is started
// again: Base after the first exit, doubling per further exit up to Max,
// and back to Base once a process ran ResetAfter without exiting.
type Backoff struct {
	Base       time.Duration
	Max        time.Duration
	ResetAfter time.Duration
}

// Config configures a Runtime. Zero fields take DefaultConfig's values,
// except LogsDir, which is required.
type Config struct {
	// Name is the runtime's name; "exec" unless a preset sets it.
	Name string
	// LogsDir holds one folder per instance with its stdout.log and
	// stderr.log and their rotations.
	LogsDir string
	// Logs bounds each stream's files.
	Logs logfile.Config
	// KeepEndedLogs is how many ended instances' log folders are kept,
	// newest first, so that the logs of a version that crashed can still
	// be read after it is replaced, without the folder growing for ever.
	KeepEndedLogs int
	// Backoff paces restarts.
	Backoff Backoff
	// Host is the address instances are told to listen on (DROVER_HOST)
	// and are probed at: loopback, since only the agent talks to them.
	Host string
	// BaseEnv is the environment every instance starts from, before the
	// spec's and the runtime's own variables; nil means the agent's own.
	BaseEnv []string
	// CgroupParent is the cgroup v2 directory under which each instance
	// gets a cgroup of its own; empty means the agent's own cgroup, and
	// "none" turns cgroups off.
	CgroupParent string
	// Command, when set, is the command of every instance, and a spec may
	// not give its own (a preset such as NewONNX sets it).
	Command []string
	// HealthPath, when set, is the probe path for specs that give none.
	HealthPath string
	// Clock paces probes, timeouts and backoff; nil means the real clock.
	Clock runtime.Clock
	// Logger receives the runtime's own events; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig returns the defaults for a runtime writing logs under
// logsDir.
func DefaultConfig(logsDir string) Config {
	return Config{
		Name:    "exec",
		LogsDir: logsDir,
		// Up to 2 streams × 3 files × 4 MiB per instance: edge disks are
		// small, and a crash's cause is at the end.
		Logs:          logfile.Config{MaxBytes: 4 << 20, MaxFiles: 2},
		KeepEndedLogs: 8,
		Backoff:       Backoff{Base: time.Second, Max: 5 * time.Minute, ResetAfter: 10 * time.Minute},
		Host:          "127.0.0.1",
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig(c.LogsDir)
	if c.Name == "" {
		c.Name = d.Name
	}
	if c.Backoff.Base == 0 {
		c.Backoff.Base = d.Backoff.Base
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = d.Backoff.Max
	}
	if c.Backoff.ResetAfter == 0 {
		c.Backoff.ResetAfter = d.Backoff.ResetAfter
	}
	if c.Host == "" {
		c.Host = d.Host
	}
	if c.Logs.MaxBytes == 0 && c.Logs.MaxFiles == 0 {
		c.Logs = d.Logs
	}
	if c.KeepEndedLogs == 0 {
		c.KeepEndedLogs = d.KeepEndedLogs
	}
	if c.Clock == nil {
		c.Clock = runtime.RealClock{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate checks the configuration after defaults.
func (c Config) Validate() error {
	switch {
	case c.LogsDir == "":
		return errors.New("exec runtime: LogsDir is empty: give a directory for instances' output")
	case c.Backoff.Base < 0 || c.Backoff.Max < c.Backoff.Base:
		return fmt.Errorf("exec runtime: backoff base %v and max %v: want 0 ≤ base ≤ max", c.Backoff.Base, c.Backoff.Max)
	case c.KeepEndedLogs < 0:
		return fmt.Errorf("exec runtime: KeepEndedLogs %d is negative", c.KeepEndedLogs)
	case c.Backoff.ResetAfter < 0:
		return fmt.Errorf("exec runtime: backoff reset-after %v is negative", c.Backoff.ResetAfter)
	case net.ParseIP(c.Host) == nil:
		return fmt.Errorf("exec runtime: host %q is not an IP address", c.Host)
	}
	return nil
}

// Runtime starts and supervises child processes. Close stops them all.
type Runtime struct {
	cfg     Config
	cgroups *cgroupManager
	probe   *http.Client

	mu        sync.Mutex // guards the fields below
	instances map[string]*instance
	starting  map[string]bool // IDs of instances Start is setting up
	closed    bool
	warned    map[string]bool // warnings already logged once
}

var _ runtime.Runtime = (*Runtime)(nil)

// New returns an exec runtime.
func New(cfg Config) (*Runtime, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.LogsDir, 0o750); err != nil {
		return nil, fmt.Errorf("exec runtime: %w", err)
	}
	return &Runtime{
		cfg:     cfg,
		cgroups: newCgroupManager(cfg.CgroupParent),
		probe: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			// Probes never follow redirects: a 3xx is not healthy.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		instances: map[string]*instance{},
		starting:  map[string]bool{},
		warned:    map[string]bool{},
	}, nil
}

// ONNXHealthPath is where drover-onnx answers 200 once its model is
// loaded.
const ONNXHealthPath = "/v1/health"

// NewONNX returns the "onnx" runtime: the exec runtime running `binary
// serve` (binary is the drover-onnx program, a path or a name on the
// PATH) and probing ONNXHealthPath. drover-onnx reads DROVER_MODEL_DIR and
// DROVER_PORT like any exec model server; specs give no command.
func NewONNX(binary string, cfg Config) (*Runtime, error) {
	path, err := osexec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("onnx runtime: %w: %s: %w", runtime.ErrCommandNotFound, binary, err)
	}
	cfg.Name = "onnx"
	cfg.Command = []string{path, "serve"}
	cfg.HealthPath = ONNXHealthPath
	return New(cfg)
}

// Name returns the runtime's name.
func (r *Runtime) Name() string { return r.cfg.Name }

// Start starts an instance of spec; see runtime.Runtime.
func (r *Runtime) Start(ctx context.Context, spec runtime.InstanceSpec) (runtime.Instance, error) {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, runtime.ErrClosed)
	}
	spec = spec.Clone()
	if r.cfg.Command != nil {
		if len(spec.Command) > 0 {
			return nil, fmt.Errorf("start: %w: the %s runtime runs %s itself; remove the command", runtime.ErrInvalidSpec, r.cfg.Name, r.cfg.Command[0])
		}
		spec.Command = slices.Clone(r.cfg.Command)
	}
	if spec.Health.Path == "" {
		spec.Health.Path = r.cfg.HealthPath
	}
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("start: %w: version directory %s: %w", runtime.ErrInvalidSpec, spec.Dir, err)
	}
	spec.Dir = dir
	if fi, err := os.Stat(spec.Dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("start: %w: version directory %s is not a directory", runtime.ErrInvalidSpec, spec.Dir)
	}
	program, err := lookCommand(spec.Command[0], spec.Dir)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, err)
	}
	port, err := freePort(r.cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("start %s: pick a port: %w", spec.Deployment, err)
	}
	id, err := newID(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, err)
	}
	r.mu.Lock()
	r.starting[id] = true // keeps pruneLogs off the new folder
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.starting, id)
		r.mu.Unlock()
	}()
	logDir := filepath.Join(r.cfg.LogsDir, id)
	if err := os.MkdirAll(logDir, 0o750); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, err)
	}
	stdout, err := logfile.Create(filepath.Join(logDir, "stdout.log"), r.cfg.Logs)
	if err != nil {
		os.RemoveAll(logDir)
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, err)
	}
	stderr, err := logfile.Create(filepath.Join(logDir, "stderr.log"), r.cfg.Logs)
	if err != nil {
		stdout.Close()
		os.RemoveAll(logDir)
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, err)
	}
	inst := &instance{
		rt:      r,
		id:      id,
		spec:    spec,
		program: program,
		addr:    net.JoinHostPort(r.cfg.Host, strconv.Itoa(port)),
		stdout:  stdout,
		stderr:  stderr,
		stopCh:  make(chan struct{}),
		killCh:  make(chan struct{}),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		status:  runtime.Status{State: runtime.StateStarting},
	}
	inst.env = buildEnv(r.baseEnv(), spec, r.cfg.Host, port)
	cg, warning := r.cgroups.create(id+"-0", spec.MemoryBytes, spec.CPUs)
	inst.cgroup, inst.useCgroups = cg, cg != nil
	if warning != "" {
		inst.status.Warnings = append(inst.status.Warnings, warning)
		r.warnOnce(warning)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		inst.release()
		os.RemoveAll(logDir)
		return nil, fmt.Errorf("start %s: %w", spec.Deployment, runtime.ErrClosed)
	}
	r.instances[id] = inst
	r.mu.Unlock()
	r.cfg.Logger.Info("instance starting", "instance", id, "command", spec.Command, "addr", inst.addr, "gpus", spec.GPUs)
	go inst.run()
	return inst, nil
}

// Instances returns the instances that have not ended yet.
func (r *Runtime) Instances() []runtime.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]runtime.Instance, 0, len(r.instances))
	for _, id := range slices.Sorted(maps.Keys(r.instances)) {
		out = append(out, r.instances[id])
	}
	return out
}

// Close stops every instance (as Stop does) and refuses new ones. It
// returns when all are gone or ctx ends.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	all := make([]*instance, 0, len(r.instances))
	for _, in := range r.instances {
		all = append(all, in)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(all))
	for i, in := range all {
		wg.Go(func() { errs[i] = in.Stop(ctx) })
	}
	wg.Wait()
	r.probe.CloseIdleConnections()
	return errors.Join(errs...)
}

// forget drops an ended instance and prunes the log folders.
func (r *Runtime) forget(id string) {
	r.mu.Lock()
	delete(r.instances, id)
	r.mu.Unlock()
	r.pruneLogs()
}

// pruneLogs removes the log folders of ended instances beyond the newest
// KeepEndedLogs. Folders of live instances and of recorded processes
// (leftovers, which may still run) are kept.
func (r *Runtime) pruneLogs() {
	entries, err := os.ReadDir(r.cfg.LogsDir)
	if err != nil {
		return
	}
	type ended struct {
		name string
		mod  time.Time
	}
	var all []ended
	r.mu.Lock()
	for _, e := range entries {
		if _, live := r.instances[e.Name()]; live || r.starting[e.Name()] || !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(r.cfg.LogsDir, e.Name(), recordFile)); err == nil {
			continue
		}
		if fi, err := e.Info(); err == nil {
			all = append(all, ended{e.Name(), fi.ModTime()})
		}
	}
	r.mu.Unlock()
	if len(all) <= r.cfg.KeepEndedLogs {
		return
	}
	slices.SortFunc(all, func(a, b ended) int { return b.mod.Compare(a.mod) })
	for _, e := range all[r.cfg.KeepEndedLogs:] {
		if err := os.RemoveAll(filepath.Join(r.cfg.LogsDir, e.name)); err != nil {
			r.cfg.Logger.Warn("prune instance logs", "err", err)
		}
	}
}

// warnOnce logs a warning the first time it is seen: every instance that
// asks for limits on a machine that cannot apply them would repeat it.
func (r *Runtime) warnOnce(msg string) {
	r.mu.Lock()
	seen := r.warned[msg]
	r.warned[msg] = true
	r.mu.Unlock()
	if !seen {
		r.cfg.Logger.Warn(msg)
	}
}

func (r *Runtime) baseEnv() []string {
	if r.cfg.BaseEnv != nil {
		return r.cfg.BaseEnv
	}
	return os.Environ()
}

// lookCommand resolves a spec's program: a bare name on the PATH, a
// relative path against the version directory.
func lookCommand(name, dir string) (string, error) {
	p := name
	if strings.Contains(name, "/") && !filepath.IsAbs(name) {
		p = filepath.Join(dir, name)
	}
	path, err := osexec.LookPath(p)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", runtime.ErrCommandNotFound, name, err)
	}
	if !filepath.IsAbs(path) {
		if path, err = filepath.Abs(path); err != nil {
			return "", err
		}
	}
	return path, nil
}

// freePort asks the kernel for a free TCP port on host. Another process
// could take it before the instance binds it; the instance then fails its
// start and is restarted, on the same port, by policy.
func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// newID names an instance after its deployment and version, plus a random
// suffix: safe in file and cgroup names.
func newID(spec runtime.InstanceSpec) (string, error) {
	var b [4]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return "", err
	}
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, spec.Deployment)
	if len(clean) > 64 {
		clean = clean[:64]
	}
	return fmt.Sprintf("%s-v%d-%s", clean, spec.Version, hex.EncodeToString(b[:])), nil
}

// buildEnv is base without the variables the runtime owns, then the
// spec's, then the runtime's.
func buildEnv(base []string, spec runtime.InstanceSpec, host string, port int) []string {
	reserved := runtime.ReservedEnv()
	var env []string
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, override := spec.Env[k]; override || slices.Contains(reserved, k) {
			continue
		}
		env = append(env, kv)
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	// With no GPUs allocated, the process must see none, not all:
	// CUDA makes visible only the devices listed in CUDA_VISIBLE_DEVICES
	// before the first invalid entry, so "-1" hides every device (CUDA C++
	// Programming Guide, "CUDA Environment Variables"); "void" is the
	// NVIDIA Container Toolkit's value for exposing no GPU to a container
	// started with NVIDIA_VISIBLE_DEVICES (nvidia-container-toolkit docs,
	// "Environment variables (OCI spec)"), for servers that launch one.
	cuda, nvidia := "-1", "void"
	if len(spec.GPUs) > 0 {
		cuda = strings.Join(spec.GPUs, ",")
		nvidia = cuda
	}
	p := strconv.Itoa(port)
	return append(env,
		runtime.EnvModelDir+"="+spec.Dir,
		runtime.EnvHost+"="+host,
		runtime.EnvPort+"="+p,
		runtime.EnvPortPlain+"="+p,
		runtime.EnvDeployment+"="+spec.Deployment,
		runtime.EnvModel+"="+spec.Model,
		runtime.EnvVersion+"="+strconv.FormatUint(spec.Version, 10),
		runtime.EnvCUDADevices+"="+cuda,
		runtime.EnvNVIDIADevices+"="+nvidia,
	)
}

// LogPath is the current file of an instance's stream (rotations add .1,
// .2, …), also for instances gone with an earlier agent: read it with
// logfile.Tail.
func (r *Runtime) LogPath(instanceID string, stream runtime.Stream) string {
	return filepath.Join(r.cfg.LogsDir, instanceID, string(stream)+".log")
}
