package exec

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/droverhq/drover/agent/runtime"
	"github.com/droverhq/drover/agent/runtime/logfile"
)

// stderrTailBytes is how much of a process's last standard error an Exit
// carries.
const stderrTailBytes = 4 << 10

// copyDrainTimeout bounds the wait for a dead process's output to be read
// to the end: a grandchild that escaped the process group could hold the
// pipe open for ever.
const copyDrainTimeout = 2 * time.Second

// instance is one supervised model server. Its run goroutine owns the
// process; the methods read the status under mu.
type instance struct {
	rt      *Runtime
	id      string
	spec    runtime.InstanceSpec
	program string
	addr    string
	env     []string
	stdout  *logfile.Writer
	stderr  *logfile.Writer
	// cgroup is the current process's cgroup, nil when it runs without
	// one. Each process gets a fresh cgroup: on some kernels a cgroup
	// that was killed through cgroup.kill also kills the next process
	// cloned into it. Only the run goroutine (and Start, before it) use it.
	cgroup     *cgroup
	useCgroups bool // the first cgroup could be made, so make one per process

	stopOnce sync.Once
	stopCh   chan struct{} // closed by Stop
	killOnce sync.Once
	killCh   chan struct{} // closed when a Stop's ctx ended: SIGKILL now
	done     chan struct{} // closed when run has returned

	mu      sync.Mutex // guards the fields below
	status  runtime.Status
	changed chan struct{} // closed and replaced on every status change
}

var (
	_ runtime.Instance  = (*instance)(nil)
	_ runtime.LogReader = (*instance)(nil)
)

func (in *instance) ID() string                 { return in.id }
func (in *instance) Addr() string               { return in.addr }
func (in *instance) Spec() runtime.InstanceSpec { return in.spec.Clone() }
func (in *instance) Done() <-chan struct{}      { return in.done }

func (in *instance) Status() runtime.Status {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := in.status
	s.Warnings = slices.Clone(s.Warnings)
	if s.LastExit != nil {
		e := *s.LastExit
		s.LastExit = &e
	}
	return s
}

func (in *instance) Changed() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.changed
}

func (in *instance) update(f func(*runtime.Status)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	f(&in.status)
	close(in.changed)
	in.changed = make(chan struct{})
}

func (in *instance) Stop(ctx context.Context) error {
	in.stopOnce.Do(func() { close(in.stopCh) })
	select {
	case <-in.done:
		return nil
	case <-ctx.Done():
		in.killOnce.Do(func() { close(in.killCh) })
		return fmt.Errorf("stop %s: %w", in.id, ctx.Err())
	}
}

// Logs writes the stream's captured output; see runtime.LogReader. A
// follow ends when the instance is done, because its log writers close.
func (in *instance) Logs(ctx context.Context, stream runtime.Stream, tailBytes int64, follow bool, w io.Writer) error {
	switch stream {
	case runtime.Stdout:
		return in.stdout.Copy(ctx, tailBytes, follow, w)
	case runtime.Stderr:
		return in.stderr.Copy(ctx, tailBytes, follow, w)
	}
	return fmt.Errorf("logs of %s: unknown stream %q: use %q or %q", in.id, stream, runtime.Stdout, runtime.Stderr)
}

// release frees what Start set up: the log writers and the cgroup.
func (in *instance) release() {
	in.stdout.Close()
	in.stderr.Close()
	if in.cgroup != nil {
		in.cgroup.remove()
	}
}

// run supervises the instance until it is stopped or its restart policy
// gives up.
func (in *instance) run() {
	defer func() {
		in.release()
		in.rt.forget(in.id)
		close(in.done)
	}()
	clk := in.rt.cfg.Clock
	bo := in.rt.cfg.Backoff
	failures := 0
	for first := true; ; first = false {
		if !first {
			in.update(func(s *runtime.Status) { s.Restarts++ })
		}
		if !first && in.useCgroups {
			in.cgroup, _ = in.rt.cgroups.create(in.id+"-"+strconv.Itoa(in.Status().Restarts), in.spec.MemoryBytes, in.spec.CPUs)
		}
		started := clk.Now()
		exit, stopped := in.runOnce(started)
		in.removeRecord()
		if in.cgroup != nil {
			in.cgroup.remove()
			in.cgroup = nil
		}
		in.rt.cfg.Logger.Info("instance process ended", "instance", in.id, "exit", exit.String())
		if stopped {
			in.finish(runtime.StateStopped, exit)
			return
		}
		if _, err := lookCommand(in.spec.Command[0], in.spec.Dir); err != nil {
			exit.Reason = err.Error()
			in.finish(runtime.StateFailed, exit)
			return
		}
		if clk.Now().Sub(started) >= bo.ResetAfter {
			failures = 0
		}
		failures++
		if !in.spec.Restart.Restarts(exit.Failed()) {
			state := runtime.StateStopped
			if exit.Failed() {
				state = runtime.StateFailed
			}
			in.finish(state, exit)
			return
		}
		delay := backoffDelay(bo, failures)
		// The timer exists before the state says crash-looping, so that
		// whoever sees the state can move a fake clock past it.
		t := clk.NewTimer(delay)
		in.update(func(s *runtime.Status) {
			s.State = runtime.StateCrashLoop
			s.PID = 0
			s.HealthySince = time.Time{}
			s.LastExit = exit
			s.ConsecutiveFailures = failures
			s.NextStart = clk.Now().Add(delay)
		})
		select {
		case <-t.C():
		case <-in.stopCh:
			t.Stop()
			in.finish(runtime.StateStopped, exit)
			return
		}
	}
}

func (in *instance) finish(state runtime.State, exit *runtime.Exit) {
	in.update(func(s *runtime.Status) {
		s.State = state
		s.PID = 0
		s.HealthySince = time.Time{}
		s.NextStart = time.Time{}
		s.LastExit = exit
	})
}

// backoffDelay is the wait before the restart that follows the given
// number of consecutive exits (1 for the first).
func backoffDelay(bo Backoff, failures int) time.Duration {
	d := bo.Base
	for i := 1; i < failures && d < bo.Max; i++ {
		d *= 2
	}
	return min(d, bo.Max)
}

// runOnce starts the process and watches it until it exits, probing its
// health and handling Stop. stopped reports whether Stop ended it.
func (in *instance) runOnce(started time.Time) (exit *runtime.Exit, stopped bool) {
	clk := in.rt.cfg.Clock
	hc := in.spec.Health
	p, err := in.startProcess()
	if err != nil {
		return &runtime.Exit{At: clk.Now(), Code: -1, Reason: err.Error()}, false
	}
	in.writeRecord(p)
	exited := make(chan *os.ProcessState, 1)
	go func() { exited <- p.wait() }()

	probeCtx, cancelProbe := context.WithCancel(context.Background())
	defer cancelProbe()
	var probeDone chan error // non-nil while a probe runs
	// The timers exist before the state says starting, so that whoever
	// sees the state can move a fake clock past them.
	probeTimer := clk.NewTimer(hc.StartInterval)
	defer func() { probeTimer.Stop() }()
	startTimer := clk.NewTimer(hc.StartTimeout)
	defer startTimer.Stop()
	in.update(func(s *runtime.Status) {
		s.State = runtime.StateStarting
		s.PID = p.pid
		s.StartedAt = started
		s.HealthySince = time.Time{}
		s.NextStart = time.Time{}
		s.LastProbeError = ""
	})
	probeC, startC := probeTimer.C(), startTimer.C()
	var graceC <-chan time.Time
	stopCh, killCh := in.stopCh, in.killCh
	everHealthy, fails := false, 0
	reason := ""

	for {
		select {
		case ps := <-exited:
			cancelProbe()
			if probeDone != nil {
				<-probeDone
			}
			p.drain(clk)
			return in.exitFrom(ps, reason, stopped, p.tail.String()), stopped

		case <-probeC:
			probeC = nil
			probeDone = make(chan error, 1)
			go func() { probeDone <- in.probe(probeCtx) }()

		case err := <-probeDone:
			probeDone = nil
			if stopped {
				continue
			}
			now := clk.Now()
			if err == nil {
				fails = 0
				if !everHealthy {
					startTimer.Stop()
					startC = nil
				}
				everHealthy = true
				in.update(func(s *runtime.Status) {
					if s.State != runtime.StateHealthy {
						s.State = runtime.StateHealthy
						s.HealthySince = now
					}
					s.LastProbeError = ""
				})
			} else {
				fails++
				st := in.Status()
				turnsUnhealthy := everHealthy && fails >= hc.FailureThreshold && st.State == runtime.StateHealthy
				// A server that is still loading fails the same way many
				// times: watchers hear of a new error, not of each probe.
				if turnsUnhealthy || st.LastProbeError != err.Error() {
					in.update(func(s *runtime.Status) {
						s.LastProbeError = err.Error()
						if turnsUnhealthy {
							s.State = runtime.StateUnhealthy
							s.HealthySince = time.Time{}
						}
					})
				}
			}
			next := hc.Interval
			if !everHealthy {
				next = hc.StartInterval
			}
			probeTimer = clk.NewTimer(next)
			probeC = probeTimer.C()

		case <-startC:
			startC = nil
			if !everHealthy && !stopped {
				reason = fmt.Sprintf("no healthy probe within %v", hc.StartTimeout)
				if last := in.Status().LastProbeError; last != "" {
					reason += " (last: " + last + ")"
				}
				p.signal(syscall.SIGKILL)
			}

		case <-stopCh:
			stopCh = nil
			stopped = true
			p.signal(syscall.SIGTERM)
			grace := clk.NewTimer(in.spec.StopTimeout)
			defer grace.Stop()
			graceC = grace.C()

		case <-graceC:
			graceC = nil
			p.signal(syscall.SIGKILL)

		case <-killCh:
			killCh = nil
			stopped = true
			p.signal(syscall.SIGKILL)
		}
	}
}

// exitFrom describes how the process ended.
func (in *instance) exitFrom(ps *os.ProcessState, reason string, stopped bool, tail string) *runtime.Exit {
	e := &runtime.Exit{At: in.rt.cfg.Clock.Now(), Code: -1, StderrTail: tail}
	if ps == nil {
		e.Reason = "lost track of the process: waiting for it failed"
		return e
	}
	e.Code = ps.ExitCode()
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal().String()
	}
	switch {
	case reason != "":
		e.Reason = reason
	case stopped:
		e.Reason = "stopped"
	case e.Signal != "":
		e.Reason = "killed by a signal"
	default:
		e.Reason = "exited"
	}
	return e
}

// probe runs one health probe.
func (in *instance) probe(ctx context.Context) error {
	hc := in.spec.Health
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	if hc.Path == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", in.addr)
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.addr+hc.Path, nil)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	resp, err := in.rt.probe.Do(req)
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("probe: GET %s: %s", hc.Path, resp.Status)
	}
	return nil
}

// process is one started child, the leader of its own process group.
type process struct {
	cmd     *osexec.Cmd
	pid     int
	cgroup  *cgroup
	copying sync.WaitGroup // the output copiers
	pipes   []*os.File     // the read ends, closed after draining
	tail    *tailBuffer

	mu     sync.Mutex // guards reaped; held while signalling
	reaped bool
}

func (in *instance) startProcess() (*process, error) {
	cmd := osexec.Command(in.program, in.spec.Command[1:]...)
	cmd.Dir = in.spec.Dir
	cmd.Env = in.env
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start: %w", err)
	}
	// The child writes straight into the pipes, so Wait does not wait for
	// the output to be copied; the copiers end when the last writer in the
	// process group is gone.
	cmd.Stdout, cmd.Stderr = outW, errW
	cmd.SysProcAttr = sysProcAttr(in.cgroup)
	err = cmd.Start()
	if err != nil && in.cgroup != nil && cgroupCloneRefused(err) {
		// Kernels before 5.7 cannot clone into a cgroup, and some refuse
		// a cgroup they would not let a process join: run without one
		// rather than not at all.
		warning := fmt.Sprintf("cgroup not used: start in %s: %v", in.cgroup.dir, err)
		in.cgroup.remove()
		in.cgroup, in.useCgroups = nil, false
		in.rt.warnOnce(warning)
		in.update(func(s *runtime.Status) { s.Warnings = append(s.Warnings, warning) })
		cmd = osexec.Command(in.program, in.spec.Command[1:]...)
		cmd.Dir, cmd.Env = in.spec.Dir, in.env
		cmd.Stdout, cmd.Stderr = outW, errW
		cmd.SysProcAttr = sysProcAttr(nil)
		err = cmd.Start()
	}
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("start: %w", err)
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, cgroup: in.cgroup, pipes: []*os.File{outR, errR}, tail: &tailBuffer{max: stderrTailBytes}}
	p.copying.Go(func() { _, _ = io.Copy(in.stdout, outR) })
	p.copying.Go(func() { _, _ = io.Copy(io.MultiWriter(in.stderr, p.tail), errR) })
	return p, nil
}

// wait waits for the leader to exit, kills what is left of its group
// while the group's id cannot yet be reused (the leader is not reaped
// yet), then reaps it.
func (p *process) wait() *os.ProcessState {
	if reapBeforeGroupKill {
		_ = p.cmd.Wait()
	} else {
		waitExited(p.pid)
	}
	p.mu.Lock()
	killGroup(p.pid, syscall.SIGKILL)
	if p.cgroup != nil {
		p.cgroup.kill()
	}
	p.reaped = true
	p.mu.Unlock()
	if !reapBeforeGroupKill {
		_ = p.cmd.Wait() // an exit status other than 0 is an error here too
	}
	return p.cmd.ProcessState // nil only if waiting itself failed
}

// signal sends sig to the process group unless it is gone.
func (p *process) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.reaped {
		killGroup(p.pid, sig)
		if sig == syscall.SIGKILL && p.cgroup != nil {
			p.cgroup.kill()
		}
	}
}

// drain waits for the copiers to reach the end of the output, closing the
// pipes after copyDrainTimeout if something outside the group keeps them
// open.
func (p *process) drain(clk runtime.Clock) {
	done := make(chan struct{})
	go func() {
		p.copying.Wait()
		close(done)
	}()
	t := clk.NewTimer(copyDrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C():
		for _, f := range p.pipes {
			f.Close()
		}
		<-done
	}
	for _, f := range p.pipes {
		f.Close()
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
