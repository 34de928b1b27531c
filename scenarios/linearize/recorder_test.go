package linearize

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// apiErr builds an error the way a Drover server sends one.
func apiErr(code connect.Code, reason droverv1.ErrorReason, msg string) error {
	e := connect.NewError(code, errors.New(msg))
	d, err := connect.NewErrorDetail(&droverv1.ErrorDetail{Reason: reason, Hint: "retry"})
	if err != nil {
		panic(err)
	}
	e.AddDetail(d)
	return e
}

var (
	errNotLeader = apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
		"no leader to serve the request: this server is not the leader; only 1 of 3 servers reachable, and a quorum needs 2")
	errMaybe = apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
		"leadership lost while the write was being committed: it may or may not have been applied")
	errNoSuchVersion = apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
		`model "m" version 9 not found: the model has versions 1-2`)
)

func TestClassify(t *testing.T) {
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	readErr := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	tests := []struct {
		name string
		err  error
		want Outcome
	}{
		{"nil", nil, Succeeded},
		{"not found", errNoSuchVersion, Refused},
		{"wrapped not found", fmt.Errorf("set alias: %w", errNoSuchVersion), Refused},
		{"invalid", apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "bad"), NotApplied},
		{"not bootstrapped", apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_ACL_NOT_BOOTSTRAPPED, "no"), NotApplied},
		{"bad token", apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "no"), NotApplied},
		{"not the leader", errNotLeader, NotApplied},
		{"no leader elected yet", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"no leader elected yet: 2 of 3 servers reachable (quorum is 2), so an election may be in progress"), NotApplied},
		{"no leader while forwarded", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"no leader to serve the request: leadership changed while the request was forwarded by s2"), NotApplied},
		{"may or may not", errMaybe, Indeterminate},
		{"leader unreachable while forwarding", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"cannot reach the leader s1 at 10.0.0.1:7400: EOF"), Indeterminate},
		{"leader connection lost while forwarding", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"cannot reach the leader s1 at 10.0.0.1:7400: read tcp 10.0.0.2:41234->10.0.0.1:7400: read: connection reset by peer"), Indeterminate},
		{"leader not dialed while forwarding", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"no leader to serve the request: the leader s1 at 10.0.0.1:7400 is unreachable (connect: no route to host); the request was not sent; 2 of 3 servers reachable (quorum is 2), so an election may be in progress"), NotApplied},
		{"shutting down", apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"this server is shutting down"), Indeterminate},
		{"no leader text without reason", connect.NewError(connect.CodeUnavailable, errors.New("no leader elected yet")), Indeterminate},
		{"server timeout", apiErr(connect.CodeDeadlineExceeded, droverv1.ErrorReason_ERROR_REASON_TIMEOUT, "timed out"), Indeterminate},
		{"client deadline", connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded), Indeterminate},
		{"bare deadline", context.DeadlineExceeded, Indeterminate},
		{"internal", apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, "raft: boom"), Indeterminate},
		{"dial refused", connect.NewError(connect.CodeUnavailable, dialErr), NotApplied},
		{"bare dial error", fmt.Errorf("post: %w", dialErr), NotApplied},
		{"connection reset after sending", connect.NewError(connect.CodeUnavailable, readErr), Indeterminate},
		{"unexpected EOF", connect.NewError(connect.CodeUnavailable, io.ErrUnexpectedEOF), Indeterminate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	if got := Reason(fmt.Errorf("op: %w", errNotLeader)); got != droverv1.ErrorReason_ERROR_REASON_NO_LEADER {
		t.Errorf("Reason(wrapped no leader) = %v", got)
	}
	if got := Reason(errors.New("plain")); got != droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("Reason(plain) = %v", got)
	}
	if got := Reason(connect.NewError(connect.CodeInternal, errors.New("x"))); got != droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("Reason(no detail) = %v", got)
	}
}

// step is one scripted call: client c makes in, which lasts d and then
// returns out or err.
type step struct {
	c   int
	in  Input
	d   time.Duration
	out Output
	err error
}

// play records calls in order, each starting 1ms after the previous one
// started, in a synctest bubble so times are exact. Calls overlap when
// their durations say so.
func play(t *testing.T, steps []step) *Recorder {
	t.Helper()
	var r *Recorder
	synctest.Test(t, func(t *testing.T) {
		r = NewRecorder()
		var wg sync.WaitGroup
		for _, s := range steps {
			finish := r.Begin(s.c, s.in)
			wg.Go(func() {
				time.Sleep(s.d)
				finish(s.out, s.err)
			})
			time.Sleep(time.Millisecond)
		}
		wg.Wait()
	})
	return r
}

func check(t *testing.T, r *Recorder, want porcupine.CheckResult) {
	t.Helper()
	res, info := r.Check(10 * time.Second)
	if res != want {
		path := filepath.Join(t.TempDir(), "history.html")
		if err := Visualize(info, path); err != nil {
			t.Log(err)
		}
		t.Fatalf("check = %s, want %s (%v; history %v)", res, want, r.Stats(), r.History())
	}
}

const ms = time.Millisecond

func TestRecorderUnknownCreate(t *testing.T) {
	prefix := []step{
		{c: 0, in: CreateVersion("a"), d: ms / 2, out: Output{Version: 1}},
		{c: 1, in: CreateVersion("b"), d: ms / 2, err: errMaybe},
	}
	tests := []struct {
		name string
		next uint64
		want porcupine.CheckResult
	}{
		{"it happened", 3, porcupine.Ok},
		{"it did not happen", 2, porcupine.Ok},
		{"but not twice", 4, porcupine.Illegal},
		{"and numbers are not reused", 1, porcupine.Illegal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := play(t, append(prefix, step{c: 0, in: CreateVersion("c"), d: ms / 2, out: Output{Version: tt.next}}))
			check(t, r, tt.want)
		})
	}
}

func TestRecorderUnknownAliasMove(t *testing.T) {
	prefix := []step{
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 1}},
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 2}},
		{c: 0, in: SetAlias("prod", 1), d: ms / 2, out: Output{}},
		{c: 1, in: SetAlias("prod", 2), d: ms / 2, err: context.DeadlineExceeded},
	}
	read := func(v uint64) step { return step{c: 2, in: GetAlias("prod"), d: ms / 2, out: Output{Version: v}} }
	tests := []struct {
		name  string
		reads []step
		want  porcupine.CheckResult
	}{
		{"never seen", []step{read(1), read(1)}, porcupine.Ok},
		{"seen late", []step{read(1), read(2), read(2)}, porcupine.Ok},
		{"seen at once", []step{read(2)}, porcupine.Ok},
		{"seen then undone", []step{read(2), read(1)}, porcupine.Illegal},
		{"a version it never named", []step{read(3)}, porcupine.Illegal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check(t, play(t, append(append([]step{}, prefix...), tt.reads...)), tt.want)
		})
	}
}

func TestRecorderNotAppliedIsDropped(t *testing.T) {
	prefix := []step{
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 1}},
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 2}},
		{c: 0, in: SetAlias("prod", 1), d: ms / 2, out: Output{}},
		{c: 1, in: SetAlias("prod", 2), d: ms / 2, err: errNotLeader},
		{c: 1, in: CreateVersion(""), d: ms / 2, err: errNotLeader},
		// A read that failed says nothing.
		{c: 2, in: GetAlias("prod"), d: ms / 2, err: errNotLeader},
	}
	t.Run("the refused move is never seen", func(t *testing.T) {
		check(t, play(t, append(prefix, step{c: 2, in: GetAlias("prod"), d: ms / 2, out: Output{Version: 1}})), porcupine.Ok)
	})
	t.Run("seeing the refused move is a violation", func(t *testing.T) {
		check(t, play(t, append(prefix, step{c: 2, in: GetAlias("prod"), d: ms / 2, out: Output{Version: 2}})), porcupine.Illegal)
	})
	t.Run("the refused create took no number", func(t *testing.T) {
		check(t, play(t, append(prefix, step{c: 2, in: CreateVersion(""), d: ms / 2, out: Output{Version: 4}})), porcupine.Illegal)
	})
	r := play(t, prefix)
	if s := r.Stats(); s.Calls != 6 || s.Succeeded != 3 || s.NotApplied != 3 || s.AnsweredReads != 0 || len(r.History()) != 3 {
		t.Errorf("stats %v, history %v", s, r.History())
	}
}

// Only reads that got an answer, a version or a refusal, count as answered.
func TestRecorderAnsweredReads(t *testing.T) {
	r := play(t, []step{
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 1}},
		{c: 1, in: GetAlias("prod"), d: ms / 2, err: errNoSuchVersion},
		{c: 1, in: LatestVersion(), d: ms / 2, out: Output{Version: 1}},
		{c: 2, in: GetAlias("prod"), d: ms / 2, err: errNotLeader},
		{c: 2, in: LatestVersion(), d: ms / 2, err: errors.New("connection reset")},
	})
	if s := r.Stats(); s.AnsweredReads != 2 || s.Succeeded != 2 || s.Refused != 1 {
		t.Errorf("stats %v, want 2 answered reads", s)
	}
}

func TestRecorderRefusedIsAnOutput(t *testing.T) {
	steps := []step{
		{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 1}},
		{c: 1, in: SetAlias("prod", 2), d: ms / 2, err: errNoSuchVersion},
		{c: 1, in: GetAlias("prod"), d: ms / 2, err: errNoSuchVersion},
	}
	check(t, play(t, steps), porcupine.Ok)
	// The same refusal after version 2 exists is a violation.
	steps = append([]step{{c: 0, in: CreateVersion(""), d: ms / 2, out: Output{Version: 1}}}, steps...)
	steps[1].out.Version = 2
	check(t, play(t, steps), porcupine.Illegal)
}

func TestRecorderUnfinishedCallIsUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := NewRecorder()
		r.Begin(0, CreateVersion("lost")) // never finished
		r.Begin(1, GetAlias("prod"))      // never finished, dropped
		time.Sleep(ms)
		r.Begin(2, CreateVersion(""))(Output{Version: 1}, nil)
		time.Sleep(ms)
		r.Begin(2, CreateVersion(""))(Output{Version: 3}, nil)
		if s := r.Stats(); s.Indeterminate != 2 || s.Succeeded != 2 {
			t.Errorf("stats = %v", s)
		}
		h := r.History()
		if len(h) != 3 || h[0].Output != (Output{Unknown: true}) || h[0].Return <= h[2].Return {
			t.Fatalf("history = %v", h)
		}
		if res, _ := r.Check(0); res != porcupine.Ok {
			t.Fatalf("check = %v", res)
		}
	})
}

func TestRecorderFinishTwice(t *testing.T) {
	r := NewRecorder()
	f := r.Begin(0, CreateVersion(""))
	f(Output{Version: 1}, nil)
	f(Output{}, errMaybe)
	if s := r.Stats(); s.Succeeded != 1 || s.Indeterminate != 0 {
		t.Errorf("second Finish changed the record: %v", s)
	}
}

func TestRecorderResolve(t *testing.T) {
	steps := []step{
		{c: 0, in: CreateVersion("a"), d: ms / 2, err: errMaybe},
		{c: 1, in: CreateVersion("b"), d: ms / 2, err: context.DeadlineExceeded},
		{c: 2, in: SetAlias("prod", 1), d: ms / 2, err: errMaybe},
		{c: 0, in: CreateVersion("c"), d: ms / 2, out: Output{Version: 2}},
	}
	final := map[string]uint64{"a": 1, "c": 2} // "b" never happened
	decide := func(in Input) (Resolution, Output) {
		if in.Op != OpCreateVersion {
			return StillUnknown, Output{}
		}
		if v, ok := final[in.Tag]; ok {
			return Happened, Output{Version: v}
		}
		return NeverHappened, Output{}
	}

	r := play(t, steps)
	if n := r.Resolve(decide); n != 2 {
		t.Fatalf("Resolve settled %d calls, want 2", n)
	}
	if n := r.Resolve(decide); n != 0 {
		t.Fatalf("second Resolve settled %d calls, want 0", n)
	}
	if s := r.Stats(); s.Indeterminate != 3 || s.Resolved != 2 {
		t.Errorf("stats = %v", s)
	}
	h := r.History()
	if len(h) != 3 {
		t.Fatalf("history keeps %d calls, want 3 (b dropped): %v", len(h), h)
	}
	check(t, r, porcupine.Ok)

	// Resolved wrongly, the history no longer fits: "a" cannot have taken
	// number 2, which "c" got.
	r = play(t, steps)
	final["a"] = 2
	r.Resolve(decide)
	check(t, r, porcupine.Illegal)
}

// registry is a correct, linearizable in-memory registry whose calls fail
// at random like a server's do: some before taking effect, some after.
type registry struct {
	mu       sync.Mutex
	versions uint64
	aliases  map[string]uint64
	tags     map[string]uint64 // tag of each create that took effect → its version
}

func (g *registry) do(in Input, rng *rand.Rand) (Output, error) {
	failBefore, failAfter := rng.IntN(20) == 0, rng.IntN(20) == 0
	if failBefore {
		return Output{}, errNotLeader
	}
	g.mu.Lock()
	var out Output
	var err error
	switch in.Op {
	case OpCreateVersion:
		g.versions++
		out.Version = g.versions
		if g.tags != nil {
			g.tags[in.Tag] = g.versions
		}
	case OpSetAlias:
		if in.Version == 0 || in.Version > g.versions {
			err = errNoSuchVersion
			break
		}
		out.Previous = g.aliases[in.Alias]
		g.aliases[in.Alias] = in.Version
	case OpGetAlias:
		v, ok := g.aliases[in.Alias]
		if !ok {
			err = errNoSuchVersion
		}
		out.Version = v
	case OpLatestVersion:
		out.Version = g.versions
	}
	g.mu.Unlock()
	if failAfter {
		return Output{}, errMaybe
	}
	return out, err
}

func TestRecorderConcurrentClients(t *testing.T) {
	g := &registry{aliases: map[string]uint64{}}
	r := NewRecorder()
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 1))
			for range 300 {
				var in Input
				switch rng.IntN(4) {
				case 0:
					in = CreateVersion(fmt.Sprintf("c%d", c))
				case 1:
					in = SetAlias([]string{"prod", "canary"}[rng.IntN(2)], uint64(rng.IntN(40)))
				case 2:
					in = GetAlias([]string{"prod", "canary"}[rng.IntN(2)])
				default:
					in = LatestVersion()
				}
				finish := r.Begin(c, in)
				out, err := g.do(in, rng)
				finish(out, err)
			}
		})
	}
	wg.Wait()
	s := r.Stats()
	if s.Calls != 1800 || s.NotApplied == 0 || s.Indeterminate == 0 || s.Refused == 0 {
		t.Fatalf("the workload did not exercise every outcome: %v", s)
	}
	check(t, r, porcupine.Ok)
}

// TestCheckManyUnknownOutcomes is a leader's death as clients see it:
// bursts in which every write times out, most of them without effect. With
// the creates settled from the final state, as the scenarios do, the check
// must still finish quickly.
func TestCheckManyUnknownOutcomes(t *testing.T) {
	g := &registry{aliases: map[string]uint64{}, tags: map[string]uint64{}}
	n := 1000 // calls per client
	if testing.Short() {
		n = 400
	}
	var r *Recorder
	synctest.Test(t, func(t *testing.T) {
		r = NewRecorder()
		var wg sync.WaitGroup
		for c := range 5 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(c), 3))
				for i := range n {
					var in Input
					switch rng.IntN(4) {
					case 0:
						in = CreateVersion(fmt.Sprintf("c%d-%d", c, i))
					case 1:
						in = SetAlias([]string{"prod", "canary"}[rng.IntN(2)], uint64(rng.IntN(40)))
					case 2:
						in = GetAlias([]string{"prod", "canary"}[rng.IntN(2)])
					default:
						in = LatestVersion()
					}
					finish := r.Begin(c, in)
					time.Sleep(time.Duration(1+rng.IntN(3)) * ms)
					if burst := i%300 < 30; burst && !in.Op.IsRead() {
						var err error = context.DeadlineExceeded
						if rng.IntN(4) == 0 {
							_, err = g.do(in, rng) // the write got through; its answer did not
							err = errors.Join(err, context.DeadlineExceeded)
						}
						finish(Output{}, err)
						continue
					}
					out, err := g.do(in, rng)
					finish(out, err)
				}
			})
		}
		wg.Wait()
	})
	r.Resolve(func(in Input) (Resolution, Output) {
		if in.Op != OpCreateVersion {
			return StillUnknown, Output{}
		}
		if v, ok := g.tags[in.Tag]; ok {
			return Happened, Output{Version: v}
		}
		return NeverHappened, Output{}
	})
	s := r.Stats()
	if s.Indeterminate-s.Resolved < n/8 {
		t.Fatalf("too few unsettled outcomes to mean anything: %v", s)
	}
	start := time.Now()
	res, _ := r.Check(60 * time.Second)
	t.Logf("%v: %s in %s", s, res, time.Since(start))
	if res != porcupine.Ok {
		t.Fatalf("check = %s, want Ok", res)
	}
}

func TestRecorderStaleReplica(t *testing.T) {
	// Reads served by a replica that lags one write behind.
	synctest.Test(t, func(t *testing.T) {
		r := NewRecorder()
		var leader, replica State
		write := func(in Input) {
			finish := r.Begin(0, in)
			var out Output
			switch in.Op {
			case OpCreateVersion:
				out.Version = leader.Versions + 1
			case OpSetAlias:
				out.Previous = leader.alias(in.Alias)
			}
			replica = leader
			_, leader = Step(leader, in, out)
			time.Sleep(ms)
			finish(out, nil)
			time.Sleep(ms) // closed intervals: touching calls would overlap
		}
		read := func(alias string) {
			finish := r.Begin(1, GetAlias(alias))
			time.Sleep(ms)
			if v := replica.alias(alias); v != 0 {
				finish(Output{Version: v}, nil)
			} else {
				finish(Output{}, errNoSuchVersion)
			}
		}
		write(CreateVersion(""))
		write(CreateVersion(""))
		write(SetAlias("prod", 1))
		write(SetAlias("prod", 2))
		read("prod")
		res, info := r.Check(0)
		if res != porcupine.Illegal {
			t.Fatalf("check = %s, want Illegal", res)
		}
		path := filepath.Join(t.TempDir(), "history.html")
		if err := Visualize(info, path); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || !strings.Contains(string(b), "GetAlias(prod)") {
			t.Fatalf("visualization lacks the read (err %v, %d bytes)", err, len(b))
		}
	})
}
