// Package reconcile moves a node from the models it runs towards the
// assignments the control plane gives it, and owns the node's inference
// endpoint: it pulls each assigned version, starts it beside the one that
// serves (or in its place when the node cannot run both), waits for it to
// become healthy, switches the endpoint's proxy to it with one pointer swap
// and stops the old one; it keeps serving the last good version, across
// agent restarts, while no server can be reached.
//
// The package calls the rest of the agent through small interfaces
// (Puller, LocalVersions, Runtime, Instance, Resources, Clock) so that it
// can be tested with fakes and wired to the real pull engine, process
// supervisor and GPU allocator by adapters.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/agent/journal"
	"github.com/droverhq/drover/agent/telemetry"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Errors returned by this package, wrapped with what failed; test for them
// with errors.Is.
var (
	// ErrInvalidConfig means Config.Validate refused the configuration;
	// the message names the field.
	ErrInvalidConfig = errors.New("invalid reconciler configuration")
	// ErrInvalidAssignment means Update was given an assignment it cannot
	// act on (no deployment name, a name that cannot be a URL path
	// segment, no model, version 0, a deployment named twice); the others
	// are applied.
	ErrInvalidAssignment = errors.New("invalid assignment")
	// ErrInsufficient is what Resources.Reserve wraps when what is free
	// now is not enough, as opposed to a request no node state could
	// satisfy. It makes the reconciler stop the old instance and start
	// the new one in its place.
	ErrInsufficient = errors.New("not enough free resources")
	// ErrStateCorrupt means the reconciler's state file cannot be read
	// back; removing it starts over with nothing to serve until a server
	// sends assignments.
	ErrStateCorrupt = errors.New("reconciler state file is corrupt")
	// ErrNoLogs means Logs has nothing to read: the deployment does not
	// run on this node, no instance of it serves, or its runtime keeps
	// no output.
	ErrNoLogs = errors.New("no logs")
)

// LogReader is an Instance's optional ability to give its captured
// output (`drover logs`).
type LogReader interface {
	// Logs writes the last tailBytes of stream ("stdout" or "stderr";
	// all that is kept when tailBytes ≤ 0) to w and, with follow, what
	// the instance prints after, until ctx ends or the instance is done.
	Logs(ctx context.Context, stream string, tailBytes int64, follow bool, w io.Writer) error
}

// Puller makes a version of a model available on disk and returns its
// directory, fetching what is missing from the cluster. It may need a
// server; see LocalVersions for versions already on disk.
type Puller interface {
	Pull(ctx context.Context, model string, version uint64) (dir string, err error)
}

// LocalVersions tells which versions are on disk already, complete and
// verified, so that they can be started with every server unreachable.
// StoreVersions adapts agent/fetch's Store.
type LocalVersions interface {
	Local(model string, version uint64) (dir string, ok bool)
}

// InstanceSpec is what the reconciler asks a Runtime to start: one version
// of one deployment's model.
type InstanceSpec struct {
	Deployment string
	Model      string
	Version    uint64
	// Dir is the assembled version directory.
	Dir string
	// Runtime and Resources are the assignment's, as the control plane
	// sent them (never nil).
	Runtime   *droverv1.RuntimeSpec
	Resources *droverv1.Resources
	// GPUs are the UUIDs Resources.Reserve handed out for the instance.
	GPUs []string
}

// Runtime starts instances. Start returns once the instance's process is
// started, without waiting for it to become healthy; ctx bounds only the
// start. An error means nothing was started or left behind.
type Runtime interface {
	Start(ctx context.Context, spec InstanceSpec) (Instance, error)
}

// Instance is one started model server. Every method may be called from
// any goroutine, concurrently; Status must not block on the process.
type Instance interface {
	// Addr is the host:port the instance serves HTTP on, fixed for its
	// life.
	Addr() string
	// Status is a snapshot of the instance's state.
	Status() Status
	// Stop ends the instance and returns once its process is gone, or
	// with ctx's error if ctx ends first. It may be called more than
	// once.
	Stop(ctx context.Context) error
	// Done is closed when the instance has ended for good: stopped, or
	// failed and not restarted by its runtime.
	Done() <-chan struct{}
}

// Notifier is an Instance's optional ability to say when its Status
// changes. Without it the reconciler polls Status every
// Config.PollInterval while it waits for the instance to become healthy.
type Notifier interface {
	// Changed returns a channel closed at the next change of Status;
	// take a new one after each wake-up.
	Changed() <-chan struct{}
}

// Status is a snapshot of an instance, in the terms heartbeats report.
type Status struct {
	// State is one of STARTING, HEALTHY, UNHEALTHY, CRASH_LOOP, FAILED
	// and STOPPED.
	State droverv1.InstanceState
	// Reason says why the instance is in State when that is not the
	// obvious ("exited with code 1", "probe GET /v1/health: 500").
	Reason string
	// Restarts counts the processes the runtime started after the first.
	Restarts uint32
	// Since is when the instance entered State.
	Since time.Time
}

// Resources sets aside what an instance needs on the node (GPUs, and
// whatever else the implementation accounts for). Holders are named
// "<deployment>@<version>/r<revision>".
type Resources interface {
	// Reserve sets aside what res asks for, for holder, and returns the
	// GPU UUIDs assigned to it (none when it asks for no GPU). It wraps
	// ErrInsufficient when what is free now is not enough; any other
	// error means the request can never be met on this node.
	Reserve(holder string, res *droverv1.Resources) (gpus []string, err error)
	// Release gives back what holder holds; releasing a holder that
	// holds nothing is not an error.
	Release(holder string) error
}

// Clock is the reconciler's source of time: start timeouts, retry
// backoff and drains all wait on it, so tests can step time instead of
// sleeping.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the reconciler uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock is the Clock of the operating system.
type SystemClock struct{}

var _ Clock = SystemClock{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer returns a *time.Timer firing after d.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// Config says where the reconciler keeps its state and what it calls.
type Config struct {
	// Dir holds the reconciler's state file (DefaultStateFile): the last
	// assignments received and each deployment's last good version. It
	// is created if missing. Required.
	Dir string
	// Runtimes start instances, by RuntimeSpec.type ("onnx", "exec").
	// An assignment whose type is missing here fails with a reason saying
	// so. Required: at least one.
	Runtimes map[string]Runtime
	// Puller fetches versions that are not on disk. Required.
	Puller Puller
	// Local, if set, is asked first: a version it has is started without
	// calling Puller, so no server is needed.
	Local LocalVersions
	// Resources, if set, accounts for GPUs and the like; nil means every
	// instance fits beside every other and gets no GPU.
	Resources Resources
	// Clock is what waits are measured on; nil means SystemClock.
	Clock Clock
	// Logger receives the reconciler's logs; nil discards them.
	Logger *slog.Logger
	// Journal, if set, gets an entry for every transition of the node's
	// instances (see agent/journal), written before the transition is
	// acted on or reported. The reconciler does not close it.
	Journal *journal.Journal
	// Registerer, if set, gets the endpoint's and the reconciler's
	// Prometheus collectors.
	Registerer prometheus.Registerer
	// Telemetry, if set, is handed every request the endpoint passes to
	// an instance, without ever making the request wait; nil observes
	// nothing.
	Telemetry *telemetry.Collector
	// Transport carries proxied requests to instances; nil means a
	// transport of the reconciler's own (no proxy from the environment:
	// instances are on this node).
	Transport http.RoundTripper
	// DefaultStartTimeout is how long a new instance may take to become
	// healthy when its assignment's runtime.start_timeout is unset.
	DefaultStartTimeout time.Duration
	// DrainTimeout bounds how long a replaced instance is given to finish
	// the requests it had in flight before it is stopped.
	DrainTimeout time.Duration
	// StopTimeout bounds one Instance.Stop.
	StopTimeout time.Duration
	// RetryMin and RetryMax bound the wait before a version that failed
	// is tried again: RetryMin after the first failure, doubling with
	// each failure in a row, at most RetryMax.
	RetryMin, RetryMax time.Duration
	// CrashLoopAfter is how many restarts (by the runtime while the
	// instance starts, or by the reconciler after it ended) make a
	// version count as crash-looping; a new version is given up on at
	// once then, without waiting out its start timeout.
	CrashLoopAfter uint32
	// PollInterval is how often the Status of an instance that is not a
	// Notifier is read while it starts.
	PollInterval time.Duration
}

// DefaultStateFile is the name of the state file in Config.Dir.
const DefaultStateFile = "reconcile.json"

// DefaultConfig returns a configuration with every default filled in;
// callers add Dir, Runtimes, Puller and what else they have.
func DefaultConfig() Config {
	return Config{
		DefaultStartTimeout: 2 * time.Minute,
		DrainTimeout:        30 * time.Second,
		StopTimeout:         30 * time.Second,
		RetryMin:            5 * time.Second,
		RetryMax:            5 * time.Minute,
		CrashLoopAfter:      3,
		PollInterval:        250 * time.Millisecond,
	}
}

// Validate checks the configuration and the relations between its
// fields.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Dir == "":
		return bad("no state directory: set Dir")
	case len(c.Runtimes) == 0:
		return bad("no runtime: set Runtimes")
	case c.Puller == nil:
		return bad("no puller: set Puller")
	case c.DefaultStartTimeout <= 0:
		return bad("default start timeout %v is not positive", c.DefaultStartTimeout)
	case c.DrainTimeout < 0:
		return bad("drain timeout %v is negative", c.DrainTimeout)
	case c.StopTimeout <= 0:
		return bad("stop timeout %v is not positive", c.StopTimeout)
	case c.RetryMin <= 0:
		return bad("retry minimum %v is not positive", c.RetryMin)
	case c.RetryMax < c.RetryMin:
		return bad("retry maximum %v is below the minimum %v", c.RetryMax, c.RetryMin)
	case c.CrashLoopAfter == 0:
		return bad("crash-loop threshold is 0: a version would count as crash-looping before it ran")
	case c.PollInterval <= 0:
		return bad("poll interval %v is not positive", c.PollInterval)
	}
	for typ, rt := range c.Runtimes {
		if typ == "" || rt == nil {
			return bad("runtime %q: every runtime needs a type name and an implementation", typ)
		}
	}
	return nil
}

func (c Config) logger() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backoff is the wait after n failures in a row (n ≥ 1).
func (c Config) backoff(n int) time.Duration {
	d := c.RetryMin
	for i := 1; i < n && d < c.RetryMax; i++ {
		d *= 2
	}
	return min(d, c.RetryMax)
}
