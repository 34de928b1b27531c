package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent/journal"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Shorter names for the states the reconciler reports.
const (
	statePulling   = droverv1.InstanceState_INSTANCE_STATE_PULLING
	stateStarting  = droverv1.InstanceState_INSTANCE_STATE_STARTING
	stateHealthy   = droverv1.InstanceState_INSTANCE_STATE_HEALTHY
	stateUnhealthy = droverv1.InstanceState_INSTANCE_STATE_UNHEALTHY
	stateCrashLoop = droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP
	stateFailed    = droverv1.InstanceState_INSTANCE_STATE_FAILED
	stateStopped   = droverv1.InstanceState_INSTANCE_STATE_STOPPED
)

// forever is a wait that ends only on a change.
const forever time.Duration = -1

// deployment reconciles one deployment. Its goroutine (run) is the only
// one that starts, switches and stops its instances; Update only changes
// want and cancels an attempt the change makes pointless.
//
// The state machine, one step per pass of run:
//
//	the serving instance ended for good → drop it, count a failure, retry after backoff
//	serving is what is wanted         → wait for a change
//	nothing serves, last good differs → bring the last good version back first (restart without a server)
//	want is backing off               → wait
//	otherwise                         → bring want up: pull, reserve (beside the old, or in its
//	                                    place), start, wait healthy, switch, drain and stop the old;
//	                                    on failure stop the new, restart the old if it was stopped,
//	                                    count a failure
type deployment struct {
	r    *Reconciler
	name string
	rt   *route
	log  *slog.Logger

	running bool // guarded by r.mu: run's goroutine is alive

	changed chan struct{} // capacity 1: want changed

	mu            sync.Mutex // guards the fields below
	want          *droverv1.Assignment
	wantKey       string
	attemptKey    string             // the assignment being brought up; "" when none
	attemptCancel context.CancelFunc // cancels that attempt
	restoring     bool               // the attempt brings the last good version back
	rep           report
	serving       *served
	previous      uint64 // the version the serving one replaced, kept for a rollback
	failures      map[string]*failure
}

// report is what Status says of the deployment, unless live, when the
// serving instance's own Status says it.
type report struct {
	version  uint64
	state    droverv1.InstanceState
	reason   string
	since    time.Time
	restarts uint32
	gpus     []string
	live     bool
}

// served is an instance the endpoint sends requests to.
type served struct {
	asg    *droverv1.Assignment
	key    string
	dir    string
	inst   Instance
	holder string
	gpus   []string
	target *target
	since  time.Time // when it took over
	// failures is how many times its version had failed in a row when it
	// was started; Status adds them to the runtime's restarts.
	failures int
}

// failure counts one assignment's failures in a row.
type failure struct {
	count int
	next  time.Time // not tried again before
}

func newDeployment(r *Reconciler, name string, rt *route) *deployment {
	d := &deployment{r: r, name: name, rt: rt, log: r.log.With("deployment", name),
		changed: make(chan struct{}, 1), failures: make(map[string]*failure)}
	if g, ok := r.state.good[name]; ok {
		d.previous = g.previous
	}
	return d
}

// assignmentKey identifies what an assignment runs: two assignments with
// the same key are served by the same instance. The revision is left out,
// since a new revision that changes nothing this node runs should not
// restart it.
func assignmentKey(a *droverv1.Assignment) string {
	if a == nil {
		return ""
	}
	c := proto.CloneOf(a)
	c.Revision = 0
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// Assignments always marshal; fall back to what matters most.
		return fmt.Sprintf("%s@%d", a.GetModel(), a.GetVersion())
	}
	return string(b)
}

// holderName is the name an instance's resources are reserved under.
func holderName(a *droverv1.Assignment) string {
	return fmt.Sprintf("%s@%d/r%d", a.GetDeployment(), a.GetVersion(), a.GetRevision())
}

// setWant makes a (nil: removed) what the deployment should run, and
// cancels an attempt at something else. Bringing the last good version
// back is cancelled only by a removal: something should serve while the
// new version is tried. A change is journaled (why, if set, saying where
// it came from) before anything acts on it.
func (d *deployment) setWant(a *droverv1.Assignment, why string) {
	k := assignmentKey(a)
	d.mu.Lock()
	if k != d.wantKey {
		e := journal.Entry{Event: journal.Assigned, Deployment: d.name, Model: a.GetModel(), Version: a.GetVersion(), Reason: why}
		if a == nil {
			e = journal.Entry{Event: journal.Unassigned, Deployment: d.name, Reason: why}
		}
		d.r.record(e)
	}
	d.want = a
	if k == d.wantKey {
		d.mu.Unlock()
		return
	}
	d.wantKey = k
	if d.attemptCancel != nil && (a == nil || (!d.restoring && d.attemptKey != k)) {
		d.attemptCancel()
	}
	if d.rep.state == droverv1.InstanceState_INSTANCE_STATE_UNSPECIFIED && a != nil {
		d.rep = report{version: a.GetVersion(), reason: "not reconciled yet", since: d.r.clock.Now()}
	}
	d.mu.Unlock()
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// retryNow ends every backoff, keeping the counts of failures in a row.
func (d *deployment) retryNow() {
	d.mu.Lock()
	for _, f := range d.failures {
		f.next = time.Time{}
	}
	d.mu.Unlock()
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// run reconciles until the deployment is removed or ctx ends, then stops
// what serves.
func (d *deployment) run(ctx context.Context) {
	defer d.shutdown()
	for ctx.Err() == nil {
		d.mu.Lock()
		want := d.want
		d.mu.Unlock()
		if want == nil {
			return
		}
		if !d.sleep(ctx, d.step(ctx, want)) {
			return
		}
	}
}

// sleep waits for wait (forever: until something changes), a change of
// want, or the end of the serving instance; false when ctx ended.
func (d *deployment) sleep(ctx context.Context, wait time.Duration) bool {
	if wait == 0 {
		return ctx.Err() == nil
	}
	var done <-chan struct{}
	if s := d.current(); s != nil {
		done = s.inst.Done()
	}
	var tc <-chan time.Time
	if wait > 0 {
		t := d.r.clock.NewTimer(wait)
		defer t.Stop()
		tc = t.C()
	}
	select {
	case <-ctx.Done():
		return false
	case <-d.changed:
	case <-done:
	case <-tc:
	}
	return true
}

func (d *deployment) current() *served {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serving
}

// retryIn is how long the assignment with key must wait before it is
// tried again; 0 or less when it may be tried now.
func (d *deployment) retryIn(key string) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.failures[key]
	if f == nil {
		return 0
	}
	return f.next.Sub(d.r.clock.Now())
}

// step does what the state machine (see deployment) says for want and
// returns how long to wait before the next step.
func (d *deployment) step(ctx context.Context, want *droverv1.Assignment) time.Duration {
	key := assignmentKey(want)
	s := d.current()
	if s != nil && isDone(s.inst) {
		d.lost(s)
		s = nil
	}
	if s != nil && s.key == key {
		d.mu.Lock()
		if !d.rep.live {
			d.rep = report{version: s.asg.GetVersion(), live: true, since: d.r.clock.Now()}
		}
		d.mu.Unlock()
		return forever
	}
	wait := forever
	if g, ok := d.r.lastGood(d.name); ok && s == nil {
		if gk := assignmentKey(g.asg); gk != key {
			if gw := d.retryIn(gk); gw > 0 {
				wait = gw
			} else {
				d.log.Info("nothing serves: bringing the last good version back before trying the assigned one",
					"last_good", g.asg.GetVersion(), "assigned", want.GetVersion())
				d.bringUp(ctx, g.asg, true)
				return 0
			}
		}
	}
	if w := d.retryIn(key); w > 0 {
		if wait == forever || w < wait {
			wait = w
		}
		return wait
	}
	d.bringUp(ctx, want, false)
	return 0
}

func isDone(inst Instance) bool {
	select {
	case <-inst.Done():
		return true
	default:
		return false
	}
}

// setReport changes what Status says, keeping since when neither version
// nor state changed.
func (d *deployment) setReport(version uint64, state droverv1.InstanceState, reason string, restarts uint32, gpus []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	since := d.rep.since
	if d.rep.live || d.rep.version != version || d.rep.state != state {
		since = d.r.clock.Now()
	}
	d.rep = report{version: version, state: state, reason: reason, since: since, restarts: restarts, gpus: slices.Clone(gpus)}
}

// bringUp tries to make a serve. restore says it is the last good version
// coming back, which only a removal cancels.
func (d *deployment) bringUp(ctx context.Context, a *droverv1.Assignment, restore bool) {
	key := assignmentKey(a)
	v := a.GetVersion()
	log := d.log.With("version", v)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	if d.want == nil || (!restore && d.wantKey != key) {
		// Changed since the step began; the next step sees the change.
		d.mu.Unlock()
		return
	}
	d.attemptKey, d.attemptCancel, d.restoring = key, cancel, restore
	old := d.serving
	priorFailures := 0
	if f := d.failures[key]; f != nil {
		priorFailures = f.count
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.attemptKey, d.attemptCancel, d.restoring = "", nil, false
		d.mu.Unlock()
	}()

	// stopped is the old instance when it had to stop to make room; it is
	// started again if the new one does not take over.
	var stopped *served
	giveUp := func(state droverv1.InstanceState, reason string, restarts uint32) {
		if actx.Err() != nil && ctx.Err() == nil {
			d.mu.Lock()
			removed := d.want == nil
			d.mu.Unlock()
			log.Info("attempt abandoned: the assignment changed", "removed", removed)
			if !removed {
				d.restart(ctx, stopped)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		d.restart(ctx, stopped)
		d.failed(a, state, reason, restarts)
	}

	// What requests are told while nothing serves; once something does,
	// it serves on.
	waiting := func(what string) {
		if old == nil && stopped == nil {
			d.rt.setWhy(fmt.Sprintf("version %d is %s", v, what))
		}
	}
	d.setReport(v, statePulling, "", 0, nil)
	waiting("being pulled")
	dir, err := d.r.resolve(actx, a)
	if err != nil {
		giveUp(stateFailed, fmt.Sprintf("pull version %d: %v", v, err), 0)
		return
	}
	rtm := d.r.cfg.Runtimes[a.GetRuntime().GetType()]
	if rtm == nil {
		giveUp(stateFailed, fmt.Sprintf("runtime %q is not available on this node (it has %s)", a.GetRuntime().GetType(), d.r.runtimeNames()), 0)
		return
	}
	holder := holderName(a)
	gpus, err := d.r.reserve(holder, a.GetResources())
	if errors.Is(err, ErrInsufficient) && old != nil {
		log.Info("the node cannot run the new version beside the old one: stopping the old one first",
			"old_version", old.asg.GetVersion(), "err", err)
		d.retire(old, fmt.Sprintf("switching from version %d to version %d, which cannot run beside it", old.asg.GetVersion(), v))
		stopped, old = old, nil
		gpus, err = d.r.reserve(holder, a.GetResources())
	}
	if err != nil {
		giveUp(stateFailed, fmt.Sprintf("reserve resources for version %d: %v", v, err), 0)
		return
	}
	spec := InstanceSpec{Deployment: d.name, Model: a.GetModel(), Version: v, Dir: dir,
		Runtime: a.GetRuntime(), Resources: a.GetResources(), GPUs: slices.Clone(gpus)}
	if spec.Runtime == nil {
		spec.Runtime = &droverv1.RuntimeSpec{}
	}
	if spec.Resources == nil {
		spec.Resources = &droverv1.Resources{}
	}
	d.setReport(v, stateStarting, "", 0, gpus)
	waiting("starting")
	inst, err := rtm.Start(actx, spec)
	if err != nil {
		d.r.release(holder)
		giveUp(stateFailed, fmt.Sprintf("start version %d: %v", v, err), 0)
		return
	}
	d.r.record(journal.Entry{Event: journal.Started, Deployment: d.name, Model: a.GetModel(), Version: v})
	timeout := d.r.cfg.DefaultStartTimeout
	if st := a.GetRuntime().GetStartTimeout(); st != nil && st.AsDuration() > 0 {
		timeout = st.AsDuration()
	}
	ok, st := d.waitHealthy(actx, inst, timeout)
	if !ok {
		d.r.stop(inst)
		d.r.release(holder)
		d.r.record(journal.Entry{Event: journal.Stopped, Deployment: d.name, Version: v, Reason: "it did not become healthy"})
		giveUp(st.State, st.Reason, st.Restarts)
		return
	}
	d.r.record(journal.Entry{Event: journal.Healthy, Deployment: d.name, Version: v})

	// Healthy: switch the endpoint to it, then let the old one finish
	// what it took and stop it.
	ns := &served{asg: a, key: key, dir: dir, inst: inst, holder: holder, gpus: slices.Clone(gpus),
		target: d.r.newTarget(d.name, a.GetModel(), v, inst), since: d.r.clock.Now(), failures: priorFailures}
	replaced := uint64(0)
	switch {
	case old != nil:
		replaced = old.asg.GetVersion()
	case stopped != nil:
		replaced = stopped.asg.GetVersion()
	}
	g, hadGood := d.r.lastGood(d.name) // before d.mu: r.mu is never taken under it
	// Journaled before the switch is visible anywhere: before the
	// endpoint uses it and before Status reports the version healthy.
	sw := journal.Entry{Event: journal.Switched, Deployment: d.name, Model: a.GetModel(), Version: v, Previous: replaced}
	if restore {
		sw.Reason = "the last good version, brought back"
	}
	d.r.record(sw)
	d.mu.Lock()
	prev := d.previous
	if replaced != 0 && replaced != v {
		prev = replaced
	} else if hadGood && g.asg.GetVersion() != v {
		prev = g.asg.GetVersion()
	}
	d.previous = prev
	d.serving = ns
	// Failures of what no longer serves are forgotten; those of this
	// assignment are kept (without their wait) so that crashes soon
	// after it took over still count as a crash loop.
	for k, f := range d.failures {
		if k != key {
			delete(d.failures, k)
		} else {
			f.next = time.Time{}
		}
	}
	d.rep = report{version: v, live: true, since: d.r.clock.Now()}
	d.mu.Unlock()
	d.rt.set(ns.target, "")
	d.r.metrics.updates.WithLabelValues(d.name, "switched").Inc()
	d.r.setLastGood(a, prev)
	log.Info("version serves", "addr", inst.Addr(), "replaced", replaced, "restore", restore)
	if old != nil {
		d.retire(old, "")
	}
	// Only what serves and what a rollback would start stay.
	d.r.prune(d.name, v, prev)
}

// waitHealthy waits until inst is healthy, for at most timeout, and
// otherwise returns why not: CRASH_LOOP when it restarted
// Config.CrashLoopAfter times (at once) or was crash-looping at the
// timeout, FAILED when it ended, UNHEALTHY when it ran without passing a
// probe.
func (d *deployment) waitHealthy(ctx context.Context, inst Instance, timeout time.Duration) (bool, Status) {
	deadline := d.r.clock.NewTimer(timeout)
	defer deadline.Stop()
	n, _ := inst.(Notifier)
	describe := func(st Status) string {
		s := strings.ToLower(stateName(st.State))
		if st.Reason != "" {
			s += ": " + st.Reason
		}
		return s
	}
	for {
		var changed <-chan struct{}
		if n != nil {
			changed = n.Changed()
		}
		st := inst.Status()
		switch st.State {
		case stateHealthy:
			return true, st
		case stateFailed, stateStopped:
			return false, Status{State: stateFailed, Reason: fmt.Sprintf("exited before it became healthy (%s)", describe(st)), Restarts: st.Restarts}
		case stateCrashLoop:
			if st.Restarts >= d.r.cfg.CrashLoopAfter {
				return false, Status{State: stateCrashLoop, Reason: fmt.Sprintf("restarted %d times without becoming healthy (%s)", st.Restarts, describe(st)), Restarts: st.Restarts}
			}
		}
		var poll <-chan time.Time
		var pollTimer Timer
		if n == nil {
			pollTimer = d.r.clock.NewTimer(d.r.cfg.PollInterval)
			poll = pollTimer.C()
		}
		stopPoll := func() {
			if pollTimer != nil {
				pollTimer.Stop()
			}
		}
		select {
		case <-ctx.Done():
			stopPoll()
			return false, Status{State: stateStopped, Reason: "abandoned", Restarts: st.Restarts}
		case <-deadline.C():
			stopPoll()
			st := inst.Status()
			if st.State == stateHealthy {
				return true, st
			}
			state := stateUnhealthy
			if st.State == stateCrashLoop {
				state = stateCrashLoop
			}
			return false, Status{State: state, Reason: fmt.Sprintf("not healthy within %v (%s)", timeout, describe(st)), Restarts: st.Restarts}
		case <-inst.Done():
			stopPoll()
			if st := inst.Status(); st.State == stateHealthy || st.State == stateFailed || st.State == stateStopped {
				continue
			}
			return false, Status{State: stateFailed, Reason: "ended before it became healthy", Restarts: st.Restarts}
		case <-changed:
			stopPoll()
		case <-poll:
		}
	}
}

// failed records a failure of a, reports it and schedules the next try.
func (d *deployment) failed(a *droverv1.Assignment, state droverv1.InstanceState, reason string, restarts uint32) {
	key := assignmentKey(a)
	now := d.r.clock.Now()
	d.mu.Lock()
	f := d.failures[key]
	if f == nil {
		f = &failure{}
		d.failures[key] = f
	}
	f.count++
	wait := d.r.cfg.backoff(f.count)
	f.next = now.Add(wait)
	s := d.serving
	d.mu.Unlock()
	msg := reason
	if s != nil {
		msg += fmt.Sprintf("; version %d keeps serving", s.asg.GetVersion())
	} else {
		msg += "; nothing serves"
	}
	msg += fmt.Sprintf("; next try in %v", wait)
	d.r.record(journal.Entry{Event: journal.Failed, Deployment: d.name, Version: a.GetVersion(), State: stateName(state), Reason: reason})
	if s == nil {
		d.rt.setWhy(fmt.Sprintf("version %d: %s", a.GetVersion(), msg))
	}
	d.setReport(a.GetVersion(), state, msg, restarts, nil)
	d.r.metrics.updates.WithLabelValues(d.name, "failed").Inc()
	d.log.Warn("version failed", "version", a.GetVersion(), "state", stateName(state), "reason", reason,
		"failures_in_a_row", f.count, "retry_in", wait)
}

// lost handles the end of the serving instance: its runtime gave up on
// it. The endpoint answers 503 until it (or another version) serves
// again, after a backoff; failures in a row without a stable run between
// them make it a crash loop.
func (d *deployment) lost(s *served) {
	st := s.inst.Status()
	v := s.asg.GetVersion()
	why := fmt.Sprintf("version %d ended (%s", v, strings.ToLower(stateName(st.State)))
	if st.Reason != "" {
		why += ": " + st.Reason
	}
	why += ")"
	d.r.record(journal.Entry{Event: journal.NotServing, Deployment: d.name, Version: v, Reason: why})
	d.rt.set(nil, why)
	d.r.record(journal.Entry{Event: journal.Stopped, Deployment: d.name, Version: v, Reason: "it ended"})
	s.target.close()
	d.r.release(s.holder)
	now := d.r.clock.Now()
	d.mu.Lock()
	d.serving = nil
	f := d.failures[s.key]
	if f == nil {
		f = &failure{}
		d.failures[s.key] = f
	}
	if now.Sub(s.since) > d.r.cfg.RetryMax {
		// It ran well for a while: this is a new run of failures.
		f.count = 0
	}
	f.count++
	wait := d.r.cfg.backoff(f.count)
	f.next = now.Add(wait)
	count := f.count
	d.mu.Unlock()
	state := stateFailed
	if uint32(count) >= d.r.cfg.CrashLoopAfter {
		state = stateCrashLoop
	}
	d.setReport(v, state, fmt.Sprintf("%s; %d failures in a row; next start in %v", why, count, wait), st.Restarts+uint32(count), s.gpus)
	d.r.metrics.updates.WithLabelValues(d.name, "failed").Inc()
	d.log.Warn("the serving instance ended", "version", v, "state", stateName(st.State), "reason", st.Reason, "failures_in_a_row", count, "restart_in", wait)
}

// retire takes s out of the endpoint (why: what requests are told
// meanwhile; "" when a successor took over already), lets its requests
// finish for at most Config.DrainTimeout, stops it and releases what it
// held. Its version directory stays on disk for a rollback.
func (d *deployment) retire(s *served, why string) {
	if why != "" {
		d.r.record(journal.Entry{Event: journal.NotServing, Deployment: d.name, Version: s.asg.GetVersion(), Reason: why})
		d.rt.set(nil, why)
	}
	d.mu.Lock()
	if d.serving == s {
		d.serving = nil
	}
	d.mu.Unlock()
	d.drain(s)
	d.r.stop(s.inst)
	d.r.release(s.holder)
	d.r.record(journal.Entry{Event: journal.Stopped, Deployment: d.name, Version: s.asg.GetVersion()})
	d.log.Info("stopped version", "version", s.asg.GetVersion())
}

// drain waits for the requests s took to finish, for at most
// Config.DrainTimeout.
func (d *deployment) drain(s *served) {
	idle := s.target.close()
	if d.r.cfg.DrainTimeout == 0 {
		return
	}
	t := d.r.clock.NewTimer(d.r.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-idle:
	case <-t.C():
		d.log.Warn("requests still in flight after the drain timeout; stopping the instance under them",
			"version", s.asg.GetVersion(), "drain_timeout", d.r.cfg.DrainTimeout)
	}
}

// restart starts s's version again after the version meant to replace it
// failed: it had been stopped to make room.
func (d *deployment) restart(ctx context.Context, s *served) {
	if s == nil || ctx.Err() != nil {
		return
	}
	v := s.asg.GetVersion()
	log := d.log.With("version", v)
	log.Info("starting the old version again")
	fail := func(reason string) {
		why := fmt.Sprintf("version %d, stopped to make room for a new version that failed, did not come back: %s", v, reason)
		d.r.record(journal.Entry{Event: journal.Failed, Deployment: d.name, Version: v, Reason: why})
		d.rt.set(nil, why)
		d.mu.Lock()
		f := d.failures[s.key]
		if f == nil {
			f = &failure{}
			d.failures[s.key] = f
		}
		f.count++
		f.next = d.r.clock.Now().Add(d.r.cfg.backoff(f.count))
		d.mu.Unlock()
		log.Error("the old version did not come back", "reason", reason)
	}
	rtm := d.r.cfg.Runtimes[s.asg.GetRuntime().GetType()]
	if rtm == nil {
		fail("its runtime is gone")
		return
	}
	gpus, err := d.r.reserve(s.holder, s.asg.GetResources())
	if err != nil {
		fail(fmt.Sprintf("reserve resources: %v", err))
		return
	}
	spec := InstanceSpec{Deployment: d.name, Model: s.asg.GetModel(), Version: v, Dir: s.dir,
		Runtime: s.asg.GetRuntime(), Resources: s.asg.GetResources(), GPUs: slices.Clone(gpus)}
	if spec.Runtime == nil {
		spec.Runtime = &droverv1.RuntimeSpec{}
	}
	if spec.Resources == nil {
		spec.Resources = &droverv1.Resources{}
	}
	inst, err := rtm.Start(ctx, spec)
	if err != nil {
		d.r.release(s.holder)
		fail(fmt.Sprintf("start: %v", err))
		return
	}
	d.r.record(journal.Entry{Event: journal.Started, Deployment: d.name, Model: s.asg.GetModel(), Version: v})
	timeout := d.r.cfg.DefaultStartTimeout
	if st := s.asg.GetRuntime().GetStartTimeout(); st != nil && st.AsDuration() > 0 {
		timeout = st.AsDuration()
	}
	ok, st := d.waitHealthy(ctx, inst, timeout)
	if !ok {
		d.r.stop(inst)
		d.r.release(s.holder)
		d.r.record(journal.Entry{Event: journal.Stopped, Deployment: d.name, Version: v, Reason: "it did not become healthy"})
		fail(st.Reason)
		return
	}
	d.r.record(journal.Entry{Event: journal.Healthy, Deployment: d.name, Version: v})
	d.r.record(journal.Entry{Event: journal.Switched, Deployment: d.name, Model: s.asg.GetModel(), Version: v,
		Reason: "back after the version meant to replace it failed"})
	ns := &served{asg: s.asg, key: s.key, dir: s.dir, inst: inst, holder: s.holder, gpus: slices.Clone(gpus),
		target: d.r.newTarget(d.name, s.asg.GetModel(), v, inst), since: d.r.clock.Now(), failures: s.failures}
	d.mu.Lock()
	d.serving = ns
	d.mu.Unlock()
	d.rt.set(ns.target, "")
	d.r.metrics.updates.WithLabelValues(d.name, "restored").Inc()
	log.Info("the old version serves again", "addr", inst.Addr())
}

// shutdown stops what serves, when the deployment was removed or the
// agent stops.
func (d *deployment) shutdown() {
	d.mu.Lock()
	s := d.serving
	removed := d.want == nil
	d.mu.Unlock()
	why := "the agent is stopping"
	if removed {
		why = "the deployment was removed from this node"
	}
	if s != nil {
		d.retire(s, why)
	} else {
		d.rt.set(nil, why)
	}
	d.mu.Lock()
	d.rep = report{version: d.rep.version, state: stateStopped, reason: why, since: d.r.clock.Now()}
	if s != nil {
		d.rep.version = s.asg.GetVersion()
	}
	d.mu.Unlock()
}

// status is the deployment's InstanceStatus for the heartbeat.
func (d *deployment) status() *droverv1.InstanceStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	rep, s := d.rep, d.serving
	out := &droverv1.InstanceStatus{Deployment: d.name, Version: rep.version, State: rep.state, Reason: rep.reason,
		Restarts: rep.restarts, Gpus: slices.Clone(rep.gpus)}
	since := rep.since
	if rep.live && s != nil {
		st := s.inst.Status()
		out.Version = s.asg.GetVersion()
		out.State, out.Reason = st.State, st.Reason
		out.Restarts = st.Restarts + uint32(s.failures)
		out.Gpus = slices.Clone(s.gpus)
		if !st.Since.IsZero() {
			since = st.Since
		}
	}
	if d.want == nil && rep.state != stateStopped {
		out.State, out.Reason = stateStopped, "stopping: the deployment was removed from this node"
	}
	if !since.IsZero() {
		out.Since = timestamppb.New(since)
	}
	switch {
	case s != nil && s.asg.GetVersion() != out.Version:
		out.PreviousVersion = s.asg.GetVersion()
	case d.previous != out.Version:
		out.PreviousVersion = d.previous
	}
	return out
}

// info is the deployment as the endpoint lists it; false once it is
// neither wanted nor serving.
func (d *deployment) info() (DeploymentInfo, bool) {
	st := d.status()
	d.mu.Lock()
	want, s := d.want, d.serving
	d.mu.Unlock()
	if want == nil && s == nil {
		return DeploymentInfo{}, false
	}
	info := DeploymentInfo{Deployment: d.name, State: stateName(st.GetState()), Reason: st.GetReason(),
		Previous: st.GetPreviousVersion()}
	if st.GetSince() != nil {
		info.Since = st.GetSince().AsTime()
	}
	if want != nil {
		info.Model, info.Version = want.GetModel(), want.GetVersion()
	}
	if t := d.rt.cur.Load(); t != nil {
		info.Serving = t.version
	} else {
		info.Why = d.rt.reason()
	}
	if s != nil && info.Model == "" {
		info.Model = s.asg.GetModel()
	}
	return info, true
}

// resolve returns a's version directory: the deployment's own copy if it
// kept one (see pin.go), else one made from the store's directory when
// Local has it, so no server is needed, else from what the Puller pulls.
func (r *Reconciler) resolve(ctx context.Context, a *droverv1.Assignment) (string, error) {
	if dir, ok := r.pinned(a.GetDeployment(), a.GetVersion()); ok {
		return dir, nil
	}
	var src string
	if r.cfg.Local != nil {
		if dir, ok := r.cfg.Local.Local(a.GetModel(), a.GetVersion()); ok {
			src = dir
		}
	}
	if src == "" {
		dir, err := r.cfg.Puller.Pull(ctx, a.GetModel(), a.GetVersion())
		if err != nil {
			return "", err
		}
		if dir == "" {
			return "", fmt.Errorf("pull %s@%d: the puller returned no directory", a.GetModel(), a.GetVersion())
		}
		src = dir
	}
	dir, err := r.pin(a.GetDeployment(), a.GetVersion(), src)
	if err != nil {
		r.log.Warn("cannot keep a copy of the version; running it from the version store, which may remove it when later versions are pulled",
			"deployment", a.GetDeployment(), "version", a.GetVersion(), "err", err)
		return src, nil
	}
	return dir, nil
}

func (r *Reconciler) reserve(holder string, res *droverv1.Resources) ([]string, error) {
	if r.cfg.Resources == nil {
		return nil, nil
	}
	return r.cfg.Resources.Reserve(holder, res)
}

func (r *Reconciler) release(holder string) {
	if r.cfg.Resources == nil {
		return
	}
	if err := r.cfg.Resources.Release(holder); err != nil {
		r.log.Error("cannot release an instance's resources", "holder", holder, "err", err)
	}
}

// stop stops inst within Config.StopTimeout. The bound is on the real
// clock, like an RPC deadline: it guards against a runtime that hangs,
// which tests never wait for.
func (r *Reconciler) stop(inst Instance) {
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.StopTimeout)
	defer cancel()
	if err := inst.Stop(ctx); err != nil {
		r.log.Error("cannot stop an instance", "addr", inst.Addr(), "err", err)
	}
}

func (r *Reconciler) runtimeNames() string {
	names := make([]string, 0, len(r.cfg.Runtimes))
	for n := range r.cfg.Runtimes {
		names = append(names, fmt.Sprintf("%q", n))
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
