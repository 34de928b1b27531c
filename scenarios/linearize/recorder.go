package linearize

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Outcome is what an error says about whether a call took effect.
type Outcome uint8

// Outcomes, from the most to the least informative.
const (
	// Succeeded: the call returned normally, with its output.
	Succeeded Outcome = iota
	// Refused: the registry evaluated the call and answered "not found"
	// (Connect code NotFound). That answer is the call's output.
	Refused
	// NotApplied: the call definitely had no effect, and its error says
	// nothing about the state: the receiving server knew no leader or was
	// not the leader, the connection to it or its connection to the leader
	// was never made, or the request was refused before reaching the state
	// (invalid, unauthenticated, a failed precondition).
	NotApplied
	// Indeterminate: the call may or may not have taken effect (timeouts,
	// "may or may not have been applied", a connection lost after the
	// request may have been sent, anything unrecognized).
	Indeterminate
)

func (o Outcome) String() string {
	switch o {
	case Succeeded:
		return "succeeded"
	case Refused:
		return "refused"
	case NotApplied:
		return "not applied"
	case Indeterminate:
		return "indeterminate"
	}
	return fmt.Sprintf("Outcome(%d)", uint8(o))
}

// Classify says what err, returned by a call to a Drover server, means for
// the call's effect. A nil error is Succeeded. Anything not known to be
// definite is Indeterminate: treating a definite failure as unknown only
// weakens the check, while the reverse would report violations that did
// not happen.
func Classify(err error) Outcome {
	if err == nil {
		return Succeeded
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		// The connection was never made, so the request was never sent.
		return NotApplied
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return Indeterminate
	}
	switch ce.Code() {
	case connect.CodeNotFound:
		return Refused
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeAlreadyExists,
		connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeOutOfRange:
		return NotApplied
	case connect.CodeUnavailable:
		if Reason(err) == droverv1.ErrorReason_ERROR_REASON_NO_LEADER && notForwarded(ce.Message()) {
			return NotApplied
		}
	}
	return Indeterminate
}

// notForwarded reports whether a NO_LEADER message says the write never
// reached a leader. The reason alone does not tell: "leadership lost ...
// may or may not have been applied" shares it, and so does a follower's
// failure to forward a request it had already sent ("cannot reach the
// leader"). A refusal before anything was proposed or sent starts with
// "no leader ": no leader elected, not the leader, or the leader not even
// dialed.
func notForwarded(msg string) bool {
	return strings.HasPrefix(msg, "no leader ") && !strings.Contains(msg, "may or may not")
}

// Reason returns the stable reason carried in a Drover API error's
// details, or ERROR_REASON_UNSPECIFIED when err carries none.
func Reason(err error) droverv1.ErrorReason { return apierror.Reason(err) }

// Finish records the end of a call started with [Recorder.Begin]: its
// output when err is nil, else the error, which the recorder classifies.
// It must be called at most once; a call never finished counts as
// Indeterminate.
type Finish func(out Output, err error)

// Resolution is what became of a call whose outcome was unknown, as
// decided from later evidence by the function passed to
// [Recorder.Resolve].
type Resolution uint8

// Resolutions.
const (
	// StillUnknown: the evidence does not say.
	StillUnknown Resolution = iota
	// Happened: the call took effect with the given output.
	Happened
	// NeverHappened: the call had no effect.
	NeverHappened
)

// Stats counts the recorded calls by outcome.
type Stats struct {
	Calls         int
	Succeeded     int
	Refused       int
	NotApplied    int
	Indeterminate int // including calls never finished
	Resolved      int // indeterminate calls settled by Resolve
	// AnsweredReads counts reads that succeeded or were refused: the only
	// reads that constrain the history. A history whose reads all failed
	// is trivially linearizable, so a check should require some.
	AnsweredReads int
}

func (s Stats) String() string {
	return fmt.Sprintf("%d calls: %d succeeded, %d refused, %d not applied, %d indeterminate (%d resolved); %d reads answered",
		s.Calls, s.Succeeded, s.Refused, s.NotApplied, s.Indeterminate, s.Resolved, s.AnsweredReads)
}

// Recorder collects the calls of concurrent clients with their call and
// return times, for a linearizability check. Times come from the monotonic
// clock, relative to the recorder's creation. All methods are safe for
// concurrent use.
type Recorder struct {
	start time.Time

	mu    sync.Mutex // guards the fields below
	calls []*call
}

type call struct {
	client   int
	in       Input
	start    int64
	end      int64 // valid when finished
	out      Output
	outcome  Outcome
	finished bool
	resolved Resolution
	note     string // error text, shown in the visualization
}

// NewRecorder returns an empty recorder whose clock starts now.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now()}
}

func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// Begin records that client (a small number from 0, one per concurrent
// caller, which names its row in the visualization) is about to make the
// call in. Call it just before sending the request, and the returned
// Finish as soon as the answer (or error) is in hand.
func (r *Recorder) Begin(client int, in Input) Finish {
	c := &call{client: client, in: in}
	r.mu.Lock()
	c.start = r.now()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	var once sync.Once
	return func(out Output, err error) {
		end := r.now()
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			c.end = end
			c.finished = true
			c.outcome = Classify(err)
			switch c.outcome {
			case Succeeded:
				c.out = out
			case Refused:
				c.out = Output{NotFound: true}
			}
			if err != nil {
				c.note = err.Error()
			}
		})
	}
}

// Resolve settles calls whose outcome is unknown using later evidence:
// decide is asked about each such write and may say it happened (with its
// output) or never happened. A call that happened keeps its return time at
// the end of the history, since when it took effect is still unknown.
// Resolve returns how many calls it settled.
//
// The evidence must be a linearizable read of the whole state made after
// every recorded call finished, for example the versions and their tags
// read from the leader; a request still on its way to the leader could
// otherwise take effect later.
//
// Settle unknown creates before Check when the creates carry tags: each
// one left open can take effect at any later moment, and many of them
// open up more orders than the checker can try in reasonable time.
func (r *Recorder) Resolve(decide func(in Input) (Resolution, Output)) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c.in.Op.IsRead() || c.resolved != StillUnknown || (c.finished && c.outcome != Indeterminate) {
			continue
		}
		res, out := decide(c.in)
		switch res {
		case Happened:
			c.resolved, c.out = Happened, out
			n++
		case NeverHappened:
			c.resolved = NeverHappened
			n++
		}
	}
	return n
}

// Stats counts the calls recorded so far.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s Stats
	s.Calls = len(r.calls)
	for _, c := range r.calls {
		switch {
		case !c.finished || c.outcome == Indeterminate:
			s.Indeterminate++
			if c.resolved != StillUnknown {
				s.Resolved++
			}
		case c.outcome == Succeeded:
			s.Succeeded++
			if c.in.Op.IsRead() {
				s.AnsweredReads++
			}
		case c.outcome == Refused:
			s.Refused++
			if c.in.Op.IsRead() {
				s.AnsweredReads++
			}
		case c.outcome == NotApplied:
			s.NotApplied++
		}
	}
	return s
}

// History returns the recorded calls as porcupine operations. Calls that
// definitely had no effect are left out, and so are reads without an
// answer, since neither constrains anything. A write with an unknown
// outcome gets an Unknown output (or its resolved one) and a return time
// after every other event.
func (r *Recorder) History() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	var last int64
	for _, c := range r.calls {
		last = max(last, c.start)
		if c.finished {
			last = max(last, c.end)
		}
	}
	end := last + 1
	ops := make([]porcupine.Operation, 0, len(r.calls))
	for _, c := range r.calls {
		op := porcupine.Operation{ClientId: c.client, Input: c.in, Call: c.start, Return: c.end, Output: c.out}
		if c.note != "" {
			op.Metadata = c.note
		}
		unknown := !c.finished || c.outcome == Indeterminate
		switch {
		case c.finished && c.outcome == NotApplied:
			continue
		case unknown && c.in.Op.IsRead():
			continue
		case unknown && c.resolved == NeverHappened:
			continue
		case unknown:
			op.Return = end
			if c.resolved != Happened {
				op.Output = Output{Unknown: true}
			}
		}
		ops = append(ops, op)
	}
	return ops
}

// Check reports whether the recorded history is linearizable with respect
// to [Model], giving up after timeout (0 means no limit), in which case
// the result is porcupine.Unknown. The info is what [Visualize] draws.
func (r *Recorder) Check(timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(Model(), r.History(), timeout)
}

// Visualize writes porcupine's interactive HTML view of a checked history
// to path; look at it when Check says Illegal.
func Visualize(info porcupine.LinearizationInfo, path string) error {
	if err := porcupine.VisualizePath(Model(), info, path); err != nil {
		return fmt.Errorf("visualize history: %w", err)
	}
	return nil
}
