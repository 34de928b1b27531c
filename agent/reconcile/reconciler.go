package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent/journal"
	"github.com/droverhq/drover/agent/telemetry"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Reconciler runs, per deployment, the version its assignments ask for,
// and serves the node's inference endpoint (Handler).
//
// Concurrency contract: Update, Status, Deployments and Handler may be
// called from any goroutine at any time, before, during and after Run.
// Run is called once; it starts one goroutine per deployment and, when its
// context ends, stops every instance and waits for those goroutines
// before it returns.
type Reconciler struct {
	cfg       Config
	log       *slog.Logger
	clock     Clock
	transport http.RoundTripper
	telemetry *telemetry.Collector // nil: no telemetry
	metrics   *metrics
	mux       *http.ServeMux

	// saveMu serializes writes of the state file, so a later snapshot is
	// never overwritten by an earlier one; taken before mu.
	saveMu sync.Mutex

	mu      sync.Mutex // guards the fields below
	state   durable
	invalid map[string]refusal // deployments of the last Update refused
	deps    map[string]*deployment
	started bool
	updated bool          // Update has been called
	wake    chan struct{} // has Run look at deps again; capacity 1

	routesMu sync.RWMutex // guards routes; read by every request
	routes   map[string]*route
}

// refusal is why an assignment was refused, and since when.
type refusal struct {
	why   string
	since time.Time
}

// New reads the state an earlier run left in cfg.Dir and returns a
// reconciler that will reconcile towards its assignments once Run is
// called: with no server reachable, the node serves its last good
// versions again.
func New(cfg Config) (*Reconciler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st, err := loadState(cfg.Dir)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		cfg:       cfg,
		log:       cfg.logger(),
		clock:     cfg.Clock,
		transport: cfg.Transport,
		telemetry: cfg.Telemetry,
		metrics:   m,
		state:     st,
		invalid:   make(map[string]refusal),
		deps:      make(map[string]*deployment),
		wake:      make(chan struct{}, 1),
		routes:    make(map[string]*route),
	}
	if r.clock == nil {
		r.clock = SystemClock{}
	}
	if r.transport == nil {
		r.transport = newTransport()
	}
	r.mux = r.newMux()
	// Nothing serves until this run starts something: the journal says
	// so before anything is started.
	r.record(journal.Entry{Event: journal.Boot})
	for name, a := range st.assignments {
		r.depLocked(name).setWant(a, "restored from the state file")
	}
	if len(st.assignments) > 0 {
		r.log.Info("restored assignments from the last run", "deployments", len(st.assignments), "received", st.received)
	}
	return r, nil
}

// depLocked returns the deployment named name, making it (and its
// route) if needed.
func (r *Reconciler) depLocked(name string) *deployment {
	d := r.deps[name]
	if d == nil {
		r.routesMu.Lock()
		rt := r.routes[name]
		if rt == nil {
			rt = &route{name: name}
			r.routes[name] = rt
		}
		r.routesMu.Unlock()
		d = newDeployment(r, name, rt)
		r.deps[name] = d
	}
	return d
}

func (r *Reconciler) route(name string) *route {
	r.routesMu.RLock()
	defer r.routesMu.RUnlock()
	return r.routes[name]
}

// Update replaces the desired state with assignments, as a watch answer
// carries them: a deployment absent from them is stopped. Assignments are
// copied. Invalid ones are left out and reported as FAILED by Status; the
// error (ErrInvalidAssignment) names them. An error writing the state
// file is returned too; the assignments are acted on all the same.
func (r *Reconciler) Update(assignments []*droverv1.Assignment) error {
	want := make(map[string]*droverv1.Assignment, len(assignments))
	invalid := make(map[string]refusal)
	now := r.clock.Now()
	var errs []error
	for _, a := range assignments {
		if err := checkAssignment(a); err != nil {
			if a.GetDeployment() != "" {
				invalid[a.GetDeployment()] = refusal{why: err.Error(), since: now}
			}
			errs = append(errs, fmt.Errorf("%w: %w", ErrInvalidAssignment, err))
			continue
		}
		if _, dup := want[a.GetDeployment()]; dup {
			errs = append(errs, fmt.Errorf("%w: deployment %s assigned twice; the first is used", ErrInvalidAssignment, a.GetDeployment()))
			continue
		}
		want[a.GetDeployment()] = proto.CloneOf(a)
	}
	r.mu.Lock()
	r.state.assignments = want
	r.state.received = true
	for name, old := range r.invalid {
		if n, ok := invalid[name]; ok && n.why == old.why {
			invalid[name] = old // refused for the same reason since then
		}
	}
	r.invalid = invalid
	first := !r.updated
	r.updated = true
	for name, a := range want {
		r.depLocked(name).setWant(a, "")
	}
	for name, d := range r.deps {
		if want[name] == nil {
			d.setWant(nil, "")
		} else if first {
			// A server answered: what failed for want of one (a pull)
			// may work now.
			d.retryNow()
		}
	}
	r.mu.Unlock()
	r.kick()
	if err := r.save(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RetryNow ends every deployment's backoff so that what failed is tried
// again at once. The agent calls it when its connection to the control
// plane comes back, since pulls that failed for want of a server may work
// now; the first Update does the same.
func (r *Reconciler) RetryNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.deps {
		d.retryNow()
	}
}

func (r *Reconciler) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// save writes the durable state to the state file.
func (r *Reconciler) save() error {
	r.saveMu.Lock()
	defer r.saveMu.Unlock()
	r.mu.Lock()
	st := durable{assignments: make(map[string]*droverv1.Assignment, len(r.state.assignments)), received: r.state.received,
		good: make(map[string]goodRecord, len(r.state.good))}
	for k, v := range r.state.assignments {
		st.assignments[k] = v
	}
	for k, v := range r.state.good {
		st.good[k] = v
	}
	r.mu.Unlock()
	return st.save(r.cfg.Dir, r.clock.Now())
}

// record appends e to the journal, if there is one. A journal that cannot
// be written is logged and does not hold the node back: serving matters
// more than the record of it.
func (r *Reconciler) record(e journal.Entry) {
	if r.cfg.Journal == nil {
		return
	}
	if err := r.cfg.Journal.Append(e); err != nil {
		r.log.Error("cannot write the journal; this transition is missing from it", "event", e.Event,
			"deployment", e.Deployment, "version", e.Version, "err", err)
	}
}

// lastGood returns what deployment name last served well.
func (r *Reconciler) lastGood(name string) (goodRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, ok := r.state.good[name]
	return g, ok
}

// setLastGood records that a became healthy and serves, replacing
// version previous (0 for none), and writes the state file.
func (r *Reconciler) setLastGood(a *droverv1.Assignment, previous uint64) {
	r.mu.Lock()
	r.state.good[a.GetDeployment()] = goodRecord{asg: a, previous: previous}
	r.mu.Unlock()
	if err := r.save(); err != nil {
		r.log.Error("cannot record the version that serves; after a restart without a server the node may serve an older one",
			"deployment", a.GetDeployment(), "version", a.GetVersion(), "err", err)
	}
}

// Run reconciles until ctx ends, then stops every instance (the agent is
// going away; the next run starts the last good versions again) and
// returns nil once all are stopped.
func (r *Reconciler) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("reconciler: Run called twice")
	}
	r.started = true
	r.mu.Unlock()

	var wg sync.WaitGroup
	exited := make(chan *deployment)
	defer wg.Wait()
	for {
		r.mu.Lock()
		for _, d := range r.deps {
			if !d.running {
				d.running = true
				wg.Add(1)
				go func() {
					defer wg.Done()
					d.run(ctx)
					select {
					case exited <- d:
					case <-ctx.Done():
					}
				}()
			}
		}
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-r.wake:
		case d := <-exited:
			r.reap(d)
		}
	}
}

// reap forgets a deployment whose goroutine ended because it was removed,
// or starts it again if it was assigned anew meanwhile.
func (r *Reconciler) reap(d *deployment) {
	r.mu.Lock()
	d.running = false
	if r.state.assignments[d.name] != nil {
		// Assigned again while it stopped: the loop starts it again.
		r.mu.Unlock()
		r.kick()
		return
	}
	delete(r.deps, d.name)
	_, had := r.state.good[d.name]
	delete(r.state.good, d.name)
	r.mu.Unlock()
	r.routesMu.Lock()
	delete(r.routes, d.name)
	r.routesMu.Unlock()
	r.metrics.forget(d.name)
	r.unpinAll(d.name)
	r.log.Info("deployment removed", "deployment", d.name)
	if had {
		if err := r.save(); err != nil {
			r.log.Error("cannot record the removal of a deployment", "deployment", d.name, "err", err)
		}
	}
}

// Status reports every deployment the node runs or was told to run, for
// the heartbeat (HeartbeatRequest.instances), sorted by deployment.
func (r *Reconciler) Status() []*droverv1.InstanceStatus {
	r.mu.Lock()
	deps := make([]*deployment, 0, len(r.deps))
	for _, d := range r.deps {
		deps = append(deps, d)
	}
	invalid := make(map[string]refusal, len(r.invalid))
	for k, v := range r.invalid {
		invalid[k] = v
	}
	r.mu.Unlock()
	out := make([]*droverv1.InstanceStatus, 0, len(deps)+len(invalid))
	for _, d := range deps {
		if st := d.status(); st != nil {
			out = append(out, st)
		}
	}
	for name, ref := range invalid {
		if slices.ContainsFunc(out, func(s *droverv1.InstanceStatus) bool { return s.GetDeployment() == name }) {
			continue
		}
		out = append(out, &droverv1.InstanceStatus{Deployment: name, State: droverv1.InstanceState_INSTANCE_STATE_FAILED,
			Reason: "invalid assignment: " + ref.why, Since: timestamppb.New(ref.since)})
	}
	slices.SortFunc(out, func(a, b *droverv1.InstanceStatus) int {
		switch {
		case a.GetDeployment() < b.GetDeployment():
			return -1
		case a.GetDeployment() > b.GetDeployment():
			return 1
		}
		return 0
	})
	return out
}

// Deployments lists what the endpoint serves, sorted by deployment.
func (r *Reconciler) Deployments() []DeploymentInfo {
	r.mu.Lock()
	deps := make([]*deployment, 0, len(r.deps))
	for _, d := range r.deps {
		deps = append(deps, d)
	}
	r.mu.Unlock()
	out := make([]DeploymentInfo, 0, len(deps))
	for _, d := range deps {
		if info, ok := d.info(); ok {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b DeploymentInfo) int {
		switch {
		case a.Deployment < b.Deployment:
			return -1
		case a.Deployment > b.Deployment:
			return 1
		}
		return 0
	})
	return out
}

// Logs reads the captured output of deployment's serving instance, as
// LogReader.Logs does. It fails with ErrNoLogs, saying why, when the
// deployment does not run here, nothing of it serves yet, or its runtime
// keeps no output.
func (r *Reconciler) Logs(ctx context.Context, deployment, stream string, tailBytes int64, follow bool, w io.Writer) error {
	r.mu.Lock()
	d := r.deps[deployment]
	r.mu.Unlock()
	if d == nil {
		return fmt.Errorf("deployment %s does not run on this node: %w", deployment, ErrNoLogs)
	}
	d.mu.Lock()
	sv := d.serving
	d.mu.Unlock()
	if sv == nil {
		return fmt.Errorf("no instance of deployment %s serves on this node yet (%s): %w", deployment, d.rt.reason(), ErrNoLogs)
	}
	lr, ok := sv.inst.(LogReader)
	if !ok {
		return fmt.Errorf("the runtime of deployment %s keeps no output: %w", deployment, ErrNoLogs)
	}
	return lr.Logs(ctx, stream, tailBytes, follow, w)
}
