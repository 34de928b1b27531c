// Package runtime is the small interface between the agent's reconcile
// loop and the things that run models: a Runtime starts an Instance from an
// InstanceSpec, and the Instance reports its health until it is stopped.
// Every instance is a child process of the agent (DESIGN.md, "Runtimes run
// outside the agent's process"); the implementations live beside this
// package (agent/runtime/exec, and the ONNX preset built on it).
//
// Concurrency contract: a Runtime's Start and every method of an Instance
// may be called from any goroutine at any time, concurrently. Status and
// Changed never block on the child process. Stop may be called more than
// once; every call waits for the same single shutdown. An instance owns its
// goroutines and has stopped all of them when Done is closed.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Errors a Runtime returns, wrapped with the operation and the detail.
var (
	// ErrInvalidSpec: the InstanceSpec is incomplete or contradicts itself;
	// the message names the field.
	ErrInvalidSpec = errors.New("invalid instance spec")
	// ErrCommandNotFound: the spec's command is not an executable file on
	// the PATH or in the version directory. Start returns it instead of
	// starting a process that could only crash-loop.
	ErrCommandNotFound = errors.New("command not found")
	// ErrClosed: the runtime was closed and starts nothing new.
	ErrClosed = errors.New("runtime closed")
)

// Runtime starts instances of model versions.
type Runtime interface {
	// Name is the runtime's name as deployments spell it ("exec", "onnx").
	Name() string
	// Start validates spec, starts the instance's process and returns
	// without waiting for it to become healthy: watch Status (and Changed)
	// for StateHealthy. ctx bounds only the start itself, not the
	// instance's life. A failure here (bad spec, missing command) starts
	// nothing and leaves nothing behind.
	Start(ctx context.Context, spec InstanceSpec) (Instance, error)
}

// Instance is one supervised model server.
type Instance interface {
	// ID is unique among the runtime's instances, stable for the
	// instance's life, and safe in a file name.
	ID() string
	// Addr is the host:port the instance serves HTTP on. It is chosen at
	// Start and kept across restarts, so a proxy may hold on to it.
	Addr() string
	// Spec is the spec the instance was started with (a copy).
	Spec() InstanceSpec
	// Status is a snapshot of the instance's state.
	Status() Status
	// Changed returns a channel closed at the next change of Status.
	// Take a new channel after each wake-up.
	Changed() <-chan struct{}
	// Stop ends the instance: SIGTERM to its process group, then SIGKILL
	// once the spec's StopTimeout or ctx runs out, whichever is first. It
	// returns when the process and its children are gone; ctx's error only
	// if it ended before that, which leaves the kill under way. The final
	// state is StateStopped.
	Stop(ctx context.Context) error
	// Done is closed when the instance has ended for good (stopped, or
	// failed under its restart policy) and its goroutines are gone.
	Done() <-chan struct{}
}

// LogReader is the optional ability to read an instance's captured output,
// for `drover logs NODE DEPLOYMENT [-f]`.
type LogReader interface {
	// Logs writes the last tailBytes of the stream's output to w (all that
	// is kept when tailBytes ≤ 0) and, with follow, keeps writing what the
	// instance prints until ctx ends or the instance is done.
	Logs(ctx context.Context, stream Stream, tailBytes int64, follow bool, w io.Writer) error
}

// Stream names one of an instance's output streams.
type Stream string

// The output streams an instance's logs keep.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// State is where an instance is in its life.
type State string

// The states of an instance. Starting, Healthy, Unhealthy and CrashLoop
// are live; Stopped and Failed are final.
const (
	// StateStarting: the process runs and has not yet passed a health
	// probe.
	StateStarting State = "starting"
	// StateHealthy: the last probe passed; the instance can serve.
	StateHealthy State = "healthy"
	// StateUnhealthy: it had been healthy and then failed
	// HealthCheck.FailureThreshold probes in a row. It keeps running and
	// becomes healthy again when a probe passes.
	StateUnhealthy State = "unhealthy"
	// StateCrashLoop: the process exited (or never became healthy within
	// StartTimeout) and waits out its backoff before the restart policy
	// starts it again; Status.NextStart says when. LastExit says why.
	StateCrashLoop State = "crash-looping"
	// StateStopped: Stop ended it, or it exited 0 under a policy that does
	// not restart after success.
	StateStopped State = "stopped"
	// StateFailed: it exited with a failure and its restart policy does not
	// restart it (or the command vanished between restarts).
	StateFailed State = "failed"
)

// Final reports whether s is a state an instance never leaves.
func (s State) Final() bool { return s == StateStopped || s == StateFailed }

// RestartPolicy says when a process that exited is started again.
type RestartPolicy string

// Restart policies. The zero value means RestartAlways.
const (
	RestartAlways    RestartPolicy = "always"
	RestartOnFailure RestartPolicy = "on-failure"
	RestartNever     RestartPolicy = "never"
)

// Restarts reports whether an exit that failed (or succeeded) is followed
// by a restart under p.
func (p RestartPolicy) Restarts(failed bool) bool {
	switch p {
	case RestartNever:
		return false
	case RestartOnFailure:
		return failed
	default:
		return true
	}
}

// HealthCheck is how an instance is probed. Zero fields take the defaults
// of DefaultHealthCheck.
type HealthCheck struct {
	// Path is probed with HTTP GET on Addr; 2xx passes. Empty means a TCP
	// connect to Addr is the probe.
	Path string
	// Interval between probes of a started instance.
	Interval time.Duration
	// StartInterval between probes while starting, usually shorter so a
	// new version is seen ready soon after it is.
	StartInterval time.Duration
	// Timeout of one probe.
	Timeout time.Duration
	// FailureThreshold is how many failed probes in a row make a healthy
	// instance unhealthy.
	FailureThreshold int
	// StartTimeout is how long a started process has to pass its first
	// probe; past it the process is killed and counts as a failed start.
	StartTimeout time.Duration
}

// DefaultHealthCheck returns the probe settings used where a spec leaves a
// field zero.
func DefaultHealthCheck() HealthCheck {
	return HealthCheck{
		Interval:         5 * time.Second,
		StartInterval:    250 * time.Millisecond,
		Timeout:          2 * time.Second,
		FailureThreshold: 3,
		StartTimeout:     2 * time.Minute,
	}
}

// withDefaults fills h's zero fields from DefaultHealthCheck.
func (h HealthCheck) withDefaults() HealthCheck {
	d := DefaultHealthCheck()
	if h.Interval == 0 {
		h.Interval = d.Interval
	}
	if h.StartInterval == 0 {
		h.StartInterval = d.StartInterval
	}
	if h.Timeout == 0 {
		h.Timeout = d.Timeout
	}
	if h.FailureThreshold == 0 {
		h.FailureThreshold = d.FailureThreshold
	}
	if h.StartTimeout == 0 {
		h.StartTimeout = d.StartTimeout
	}
	return h
}

// InstanceSpec is what to run: one version of one deployment's model.
type InstanceSpec struct {
	// Deployment and Model name what runs, Version which version of the
	// model; they go into the instance's environment and its ID.
	Deployment string
	Model      string
	Version    uint64
	// Dir is the assembled version directory, the process's working
	// directory and DROVER_MODEL_DIR.
	Dir string
	// Command is the program and its arguments. A program without a slash
	// is looked up on the PATH; a relative one with a slash is relative to
	// Dir.
	Command []string
	// Env is added to the environment the runtime gives the process. It
	// may not set the variables the runtime owns (see ReservedEnv).
	Env map[string]string
	// Health says how the instance is probed.
	Health HealthCheck
	// Restart is the restart policy; empty means RestartAlways.
	Restart RestartPolicy
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL;
	// zero means 10s.
	StopTimeout time.Duration
	// GPUs are the UUIDs of the GPUs or MIG instances allocated to the
	// instance; the process sees these and no others.
	GPUs []string
	// MemoryBytes and CPUs limit the process through cgroup v2 where the
	// machine lets the agent (zero: no limit). CPUs is in cores (1.5 is
	// one and a half cores' time).
	MemoryBytes uint64
	CPUs        float64
}

// DefaultStopTimeout is the grace between SIGTERM and SIGKILL when a spec
// leaves StopTimeout zero.
const DefaultStopTimeout = 10 * time.Second

// Environment variables the runtime sets for every instance; a spec's Env
// may not set them.
const (
	EnvModelDir      = "DROVER_MODEL_DIR"
	EnvPort          = "DROVER_PORT"
	EnvHost          = "DROVER_HOST"
	EnvPortPlain     = "PORT"
	EnvDeployment    = "DROVER_DEPLOYMENT"
	EnvModel         = "DROVER_MODEL_NAME"
	EnvVersion       = "DROVER_VERSION"
	EnvCUDADevices   = "CUDA_VISIBLE_DEVICES"
	EnvNVIDIADevices = "NVIDIA_VISIBLE_DEVICES"
)

// ReservedEnv lists the variables the runtime sets and a spec may not.
func ReservedEnv() []string {
	return []string{EnvModelDir, EnvPort, EnvHost, EnvPortPlain, EnvDeployment, EnvModel, EnvVersion, EnvCUDADevices, EnvNVIDIADevices}
}

// WithDefaults returns s with zero fields set to their defaults.
func (s InstanceSpec) WithDefaults() InstanceSpec {
	s.Health = s.Health.withDefaults()
	if s.Restart == "" {
		s.Restart = RestartAlways
	}
	if s.StopTimeout == 0 {
		s.StopTimeout = DefaultStopTimeout
	}
	return s
}

// Clone returns a deep copy of s.
func (s InstanceSpec) Clone() InstanceSpec {
	s.Command = slices.Clone(s.Command)
	s.Env = maps.Clone(s.Env)
	s.GPUs = slices.Clone(s.GPUs)
	return s
}

// Validate checks s, after defaults, and names the first field that is
// wrong and how to fix it.
func (s InstanceSpec) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, args...))
	}
	switch {
	case s.Deployment == "":
		return bad("deployment is empty: name the deployment the instance serves")
	case s.Dir == "":
		return bad("dir is empty: give the assembled version directory")
	case len(s.Command) == 0 || s.Command[0] == "":
		return bad("command is empty: give the model server's program and arguments")
	case s.Health.Path != "" && !strings.HasPrefix(s.Health.Path, "/"):
		return bad("health path %q does not start with /", s.Health.Path)
	case s.Health.Interval < 0 || s.Health.StartInterval < 0 || s.Health.Timeout < 0 || s.Health.StartTimeout < 0 || s.StopTimeout < 0:
		return bad("negative duration in health check or stop timeout")
	case s.Health.FailureThreshold < 0:
		return bad("health failure threshold %d is negative", s.Health.FailureThreshold)
	case s.CPUs < 0:
		return bad("cpus %v is negative", s.CPUs)
	}
	switch s.Restart {
	case "", RestartAlways, RestartOnFailure, RestartNever:
	default:
		return bad("restart policy %q: use %q, %q or %q", s.Restart, RestartAlways, RestartOnFailure, RestartNever)
	}
	for _, k := range ReservedEnv() {
		if _, ok := s.Env[k]; ok {
			return bad("env sets %s, which the runtime sets itself; remove it", k)
		}
	}
	for k := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return bad("env name %q is not a valid variable name", k)
		}
	}
	for _, g := range s.GPUs {
		if g == "" || strings.Contains(g, ",") {
			return bad("GPU UUID %q is empty or contains a comma", g)
		}
	}
	return nil
}

// Status is a snapshot of an instance.
type Status struct {
	State State
	// PID of the running process; 0 when none runs.
	PID int
	// Restarts counts the processes started after the first.
	Restarts int
	// ConsecutiveFailures counts exits (and failed starts) since the
	// process last ran stably; it drives the backoff.
	ConsecutiveFailures int
	// StartedAt is when the current (or last) process started.
	StartedAt time.Time
	// HealthySince is when the instance last became healthy; zero unless
	// State is StateHealthy.
	HealthySince time.Time
	// NextStart is when a crash-looping instance will be started again.
	NextStart time.Time
	// LastExit describes how the last process ended; nil before any did.
	LastExit *Exit
	// LastProbeError is the last failed probe's error, cleared when one
	// passes.
	LastProbeError string
	// Warnings are conditions that do not stop the instance but that an
	// operator should see, such as limits that could not be applied.
	Warnings []string
}

// Exit is how a process ended.
type Exit struct {
	At time.Time
	// Code is the exit status, or -1 when a signal ended the process.
	Code int
	// Signal names the signal that ended it ("killed", "segmentation
	// fault"), empty when it exited.
	Signal string
	// Reason says why in words, including the runtime's own reasons
	// ("no healthy probe within 2m0s").
	Reason string
	// StderrTail is the end of the process's standard error.
	StderrTail string
}

// Failed reports whether the exit counts as a failure for the restart
// policy: anything but a clean exit 0.
func (e *Exit) Failed() bool { return e.Code != 0 || e.Signal != "" }

// String is the exit in one line.
func (e *Exit) String() string {
	if e.Signal != "" {
		return fmt.Sprintf("%s (signal: %s)", e.Reason, e.Signal)
	}
	return fmt.Sprintf("%s (exit code %d)", e.Reason, e.Code)
}
