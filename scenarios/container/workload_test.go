//go:build docker

package container

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/anishathalye/porcupine"
	"google.golang.org/protobuf/types/known/durationpb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/linearize"
)

// Version tags the scenarios set, so the final state can be traced back to
// the calls that made it.
const (
	// tagOp names the call that created a version; unique per call.
	tagOp = "scenario-op"
	// tagSide is "minority" on versions written to a cut-off server.
	tagSide = "scenario-side"
)

// aliases the workload moves and reads.
var aliases = []string{"prod", "canary"}

// Workload shape.
const (
	workers  = 5
	minPause = 5 * time.Millisecond
	maxPause = 25 * time.Millisecond
	// checkTimeout bounds the linearizability check.
	checkTimeout = 3 * time.Minute
)

// workload is concurrent clients creating versions of one model, moving
// its aliases and reading them through random servers, every call
// recorded for the linearizability check.
type workload struct {
	t     *testing.T
	c     *cluster
	model string
	rec   *linearize.Recorder

	ctx  context.Context // ends when the workers should stop
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu         sync.Mutex // guards the fields below
	avoided    map[string]bool
	acked      map[string]uint64 // tag of each acknowledged create → its version
	highest    uint64            // highest version number any call saw
	nextClient int
	errs       map[string]int // error summaries, for the log
	last       time.Time      // when a worker last had a write acknowledged
}

// startWorkload creates the model and starts the workers.
func startWorkload(ctx context.Context, t *testing.T, c *cluster, model string) *workload {
	t.Helper()
	w := &workload{
		t: t, c: c, model: model, rec: linearize.NewRecorder(),
		avoided: map[string]bool{}, acked: map[string]uint64{}, errs: map[string]int{},
	}
	err := poll(ctx, failoverBound, func(ctx context.Context, attempt int) (bool, error) {
		a := c.client(c.servers[attempt%len(c.servers)], false)
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		_, err := a.model.CreateModel(cctx, connect.NewRequest(&droverv1.CreateModelRequest{
			Name: model, Description: "written by the container scenario " + t.Name(),
		}))
		if err != nil && connect.CodeOf(err) != connect.CodeAlreadyExists {
			t.Logf("create model %s through %s: %s", model, a.server.name, errorSummary(err))
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("create model %s: %v", model, err)
	}
	w.ctx, w.stop = context.WithCancel(ctx)
	for range workers {
		id := w.client()
		w.wg.Go(func() { w.run(id) })
	}
	t.Logf("workload: %d workers on model %s", workers, model)
	return w
}

// client returns a new client number for the recorder.
func (w *workload) client() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	id := w.nextClient
	w.nextClient++
	return id
}

// avoid makes the workers stop (or resume) sending to a server, for while
// it is known to be down: calls to it would only time out.
func (w *workload) avoid(name string, on bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.avoided[name] = on
}

func (w *workload) pick(rng *rand.Rand, clients []*api) *api {
	w.mu.Lock()
	defer w.mu.Unlock()
	var ok []*api
	for _, a := range clients {
		if !w.avoided[a.server.name] {
			ok = append(ok, a)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	return ok[rng.IntN(len(ok))]
}

// run is one worker: its own connections to every server, one call at a
// time to a random server.
func (w *workload) run(id int) {
	hc := w.c.httpClient()
	defer hc.CloseIdleConnections()
	var clients []*api
	for _, s := range w.c.servers {
		clients = append(clients, w.c.clientWith(hc, s, false))
	}
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	for seq := 0; w.ctx.Err() == nil; seq++ {
		a := w.pick(rng, clients)
		if a != nil {
			switch n := rng.IntN(100); {
			case n < 30:
				_, _ = w.create(id, a, fmt.Sprintf("w%d-%d", id, seq), "")
			case n < 55:
				w.mu.Lock()
				v := uint64(rng.IntN(int(w.highest)+2)) + 1 // now and then one that does not exist yet
				w.mu.Unlock()
				_, _ = w.setAlias(id, a, aliases[rng.IntN(len(aliases))], v)
			case n < 85:
				w.getAlias(id, a, aliases[rng.IntN(len(aliases))])
			default:
				w.latest(id, a)
			}
		}
		pause := minPause + time.Duration(rng.Int64N(int64(maxPause-minPause)))
		select {
		case <-w.ctx.Done():
		case <-time.After(pause):
		}
	}
}

// call runs f with the per-call timeout under parent. The workers pass
// context.Background(): their calls are not cancelled when the workload
// stops, since an answer is worth more to the check than "unknown".
func call[T any](parent context.Context, f func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(parent, opTimeout)
	defer cancel()
	return f(ctx)
}

// note counts an error by its summary, for the log, and notes the time of
// an acknowledged write.
func (w *workload) note(err error, write bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		if write {
			w.last = time.Now()
		}
		return
	}
	w.errs[linearize.Classify(err).String()+": "+shorten(errorSummary(err))]++
}

// shorten trims the variable parts (addresses, counts) off an error so
// similar errors are counted together.
func shorten(s string) string {
	if i := strings.IndexAny(s, "0123456789"); i > 40 {
		s = s[:i]
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func (w *workload) saw(v uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.highest = max(w.highest, v)
}

// create makes a version tagged tag (and side, when not empty) through a,
// recorded as client id.
func (w *workload) create(id int, a *api, tag, side string) (*droverv1.CreateVersionResponse, error) {
	tags := map[string]string{tagOp: tag}
	if side != "" {
		tags[tagSide] = side
	}
	finish := w.rec.Begin(id, linearize.CreateVersion(tag))
	res, err := call(context.Background(), func(ctx context.Context) (*connect.Response[droverv1.CreateVersionResponse], error) {
		return a.model.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
			Model: w.model, Tags: tags, Card: "# " + tag + "\n\nWritten through " + a.server.name + ".\n",
		}))
	})
	var out linearize.Output
	if err == nil {
		out.Version = res.Msg.GetVersion().GetVersion()
	}
	finish(out, err)
	w.note(err, true)
	if err != nil {
		return nil, err
	}
	w.saw(out.Version)
	w.mu.Lock()
	w.acked[tag] = out.Version
	w.mu.Unlock()
	return res.Msg, nil
}

func (w *workload) setAlias(id int, a *api, alias string, v uint64) (*droverv1.SetAliasResponse, error) {
	finish := w.rec.Begin(id, linearize.SetAlias(alias, v))
	res, err := call(context.Background(), func(ctx context.Context) (*connect.Response[droverv1.SetAliasResponse], error) {
		return a.model.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: w.model, Alias: alias, Version: v}))
	})
	var out linearize.Output
	if err == nil {
		out.Previous = res.Msg.GetPreviousVersion()
	}
	finish(out, err)
	w.note(err, true)
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (w *workload) getVersion(id int, a *api, in linearize.Input, ref string) {
	finish := w.rec.Begin(id, in)
	res, err := call(context.Background(), func(ctx context.Context) (*connect.Response[droverv1.GetVersionResponse], error) {
		return a.model.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: w.model, Ref: ref}))
	})
	var out linearize.Output
	if err == nil {
		out.Version = res.Msg.GetVersion().GetVersion()
		w.saw(out.Version)
	}
	finish(out, err)
	w.note(err, false)
}

func (w *workload) getAlias(id int, a *api, alias string) {
	w.getVersion(id, a, linearize.GetAlias(alias), alias)
}

func (w *workload) latest(id int, a *api) {
	w.getVersion(id, a, linearize.LatestVersion(), "latest")
}

// stopWorkers stops the workers and waits for their last calls.
func (w *workload) stopWorkers() {
	w.stop()
	w.wg.Wait()
}

// lastAck is when a worker last had a write acknowledged.
func (w *workload) lastAck() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// writeUntilAccepted creates versions through the given servers in turn,
// recorded as client id, until one is acknowledged or bound passes. It
// returns the acknowledged version and the errors on the way.
func (w *workload) writeUntilAccepted(ctx context.Context, id int, servers []*server, tagPrefix string, bound time.Duration) (*droverv1.CreateVersionResponse, []string, error) {
	var res *droverv1.CreateVersionResponse
	var errs []string
	hc := w.c.httpClient()
	defer hc.CloseIdleConnections()
	err := poll(ctx, bound, func(ctx context.Context, attempt int) (bool, error) {
		s := servers[attempt%len(servers)]
		r, err := w.create(id, w.c.clientWith(hc, s, false), fmt.Sprintf("%s-%d", tagPrefix, attempt), "")
		if err != nil {
			errs = append(errs, s.name+": "+errorSummary(err))
			return false, nil
		}
		res = r
		return true, nil
	})
	return res, errs, err
}

// finalState is the registry as the leader reports it after the workload.
type finalState struct {
	model    *droverv1.Model
	versions []*droverv1.ModelVersion
	byTag    map[string]*droverv1.ModelVersion
	index    uint64 // a state index every server must reach
}

// finish stops the workers, writes a barrier through the leader, reads the
// final state, settles unknown creates from it, and checks that:
//   - every acknowledged create is in the final state with its number;
//   - version numbers are 1..N, each made by exactly one call;
//   - the recorded history is linearizable;
//   - every server converges to the leader's state index and content.
func (w *workload) finish(ctx context.Context) *finalState {
	t := w.t
	t.Helper()
	w.stopWorkers()
	c := w.c
	leader, err := c.waitLeader(ctx, failoverBound)
	if err != nil {
		t.Fatal(err)
	}
	res, errs, err := w.writeUntilAccepted(ctx, w.client(), []*server{c.server(leader)}, "barrier", failoverBound)
	if err != nil {
		t.Fatalf("barrier write through leader %s: %v (errors: %v)", leader, err, errs)
	}
	fs := &finalState{index: res.GetMeta().GetIndex(), byTag: map[string]*droverv1.ModelVersion{}}

	// The leader's consistent read settles what happened.
	lc := c.client(c.server(leader), false)
	var m *connect.Response[droverv1.GetModelResponse]
	var vs *connect.Response[droverv1.ListVersionsResponse]
	err = poll(ctx, failoverBound, func(ctx context.Context, _ int) (bool, error) {
		var err error
		m, err = call(ctx, func(ctx context.Context) (*connect.Response[droverv1.GetModelResponse], error) {
			return lc.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: w.model}))
		})
		if err != nil {
			t.Logf("final read of the model from %s: %s", leader, errorSummary(err))
			return false, nil
		}
		vs, err = call(ctx, func(ctx context.Context) (*connect.Response[droverv1.ListVersionsResponse], error) {
			return lc.model.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: w.model}))
		})
		if err != nil {
			t.Logf("final read of the versions from %s: %s", leader, errorSummary(err))
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("final read from leader %s: %v", leader, err)
	}
	fs.model, fs.versions = m.Msg.GetModel(), vs.Msg.GetVersions()
	t.Logf("final state: %d versions, aliases %v, index %d (barrier %d)",
		len(fs.versions), fs.model.GetAliases(), vs.Msg.GetMeta().GetIndex(), fs.index)

	for i, v := range fs.versions {
		tag := v.GetTags()[tagOp]
		if v.GetVersion() != uint64(i+1) {
			t.Errorf("version list position %d holds version %d: numbers must be 1..N", i, v.GetVersion())
		}
		if prev, dup := fs.byTag[tag]; dup {
			t.Errorf("versions %d and %d were both made by call %q", prev.GetVersion(), v.GetVersion(), tag)
		}
		fs.byTag[tag] = v
	}
	if n := uint64(len(fs.versions)); fs.model.GetLatestVersion() != n {
		t.Errorf("model says latest version %d, but it has %d versions", fs.model.GetLatestVersion(), n)
	}

	w.mu.Lock()
	acked := maps.Clone(w.acked)
	errCounts := maps.Clone(w.errs)
	w.mu.Unlock()
	lost := 0
	for tag, n := range acked {
		v, ok := fs.byTag[tag]
		switch {
		case !ok:
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged create %q (version %d) is missing from the final state", tag, n)
			}
		case v.GetVersion() != n:
			t.Errorf("acknowledged create %q got version %d, but the final state has it as %d", tag, n, v.GetVersion())
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged creates are lost", lost, len(acked))
	}

	resolved := w.rec.Resolve(func(in linearize.Input) (linearize.Resolution, linearize.Output) {
		if in.Op != linearize.OpCreateVersion || in.Tag == "" {
			return linearize.StillUnknown, linearize.Output{}
		}
		if v, ok := fs.byTag[in.Tag]; ok {
			return linearize.Happened, linearize.Output{Version: v.GetVersion()}
		}
		return linearize.NeverHappened, linearize.Output{}
	})
	w.logErrors(errCounts)
	stats := w.rec.Stats()
	t.Logf("history: %v; %d unknown creates settled from the final state", stats, resolved)
	if stats.Succeeded < 100 {
		t.Errorf("only %d calls succeeded: the workload hardly ran, so the check proves little", stats.Succeeded)
	}
	w.checkLinearizable()
	w.checkConverged(ctx, fs)
	return fs
}

func (w *workload) logErrors(counts map[string]int) {
	keys := slices.Collect(maps.Keys(counts))
	sort.Slice(keys, func(i, j int) bool { return counts[keys[i]] > counts[keys[j]] })
	for _, k := range keys {
		w.t.Logf("  %5d × %s", counts[k], k)
	}
}

// checkLinearizable runs porcupine over the history and, when it finds a
// violation, writes the visualization next to the other artifacts.
func (w *workload) checkLinearizable() {
	t := w.t
	start := time.Now()
	res, info := w.rec.Check(checkTimeout)
	t.Logf("linearizability check: %s in %s", res, time.Since(start).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
		return
	case porcupine.Unknown:
		t.Errorf("the linearizability check gave up after %s; the history is too large or has too many unknown outcomes", checkTimeout)
		return
	}
	path := artifactPath(t, "history.html")
	if err := linearize.Visualize(info, path); err != nil {
		t.Errorf("history is not linearizable, and writing its visualization failed: %v", err)
		return
	}
	t.Errorf("history is not linearizable; open %s in a browser to see where", path)
}

// checkConverged reads the model and its versions from every server's own
// state (stale reads) once it has reached fs.index, and requires all of
// them to show the same state index and content as the leader.
func (w *workload) checkConverged(ctx context.Context, fs *finalState) {
	t := w.t
	want := describeState(fs.model, fs.versions)
	var last []string
	err := poll(ctx, catchUpBound, func(ctx context.Context, _ int) (bool, error) {
		last = last[:0]
		indexes := map[uint64]bool{}
		same := true
		for _, s := range w.c.servers {
			idx, got, err := w.readLocal(ctx, s, fs.index)
			if err != nil {
				last = append(last, fmt.Sprintf("%s: %s", s.name, errorSummary(err)))
				same = false
				continue
			}
			last = append(last, fmt.Sprintf("%s: index %d", s.name, idx))
			indexes[idx] = true
			if idx < fs.index {
				same = false
				continue
			}
			if got != want {
				last = append(last, fmt.Sprintf("%s differs:\n%s\nleader:\n%s", s.name, got, want))
				same = false
			}
		}
		return same && len(indexes) == 1, nil
	})
	if err != nil {
		t.Errorf("servers did not converge to the same state: %v\n%s", err, strings.Join(last, "\n"))
		return
	}
	t.Logf("all servers converged: %s", strings.Join(last, ", "))
}

// readLocal reads the model and its versions from s's own state, waiting
// up to a few seconds for it to pass index-1, and returns the state index
// and a canonical description of the content.
func (w *workload) readLocal(ctx context.Context, s *server, index uint64) (uint64, string, error) {
	a := w.c.client(s, true)
	opts := &droverv1.QueryOptions{MinIndex: index - 1, MaxWait: durationpb.New(3 * time.Second)}
	m, err := call(ctx, func(ctx context.Context) (*connect.Response[droverv1.GetModelResponse], error) {
		return a.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: w.model, Options: opts}))
	})
	if err != nil {
		return 0, "", err
	}
	vs, err := call(ctx, func(ctx context.Context) (*connect.Response[droverv1.ListVersionsResponse], error) {
		return a.model.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: w.model, Options: opts}))
	})
	if err != nil {
		return 0, "", err
	}
	if mi, vi := m.Msg.GetMeta().GetIndex(), vs.Msg.GetMeta().GetIndex(); mi != vi {
		return min(mi, vi), "", nil // a write landed between the reads; read again
	}
	return vs.Msg.GetMeta().GetIndex(), describeState(m.Msg.GetModel(), vs.Msg.GetVersions()), nil
}

// describeState renders what the scenarios compare between servers.
func describeState(m *droverv1.Model, vs []*droverv1.ModelVersion) string {
	var b strings.Builder
	fmt.Fprintf(&b, "latest %d, modify index %d, aliases", m.GetLatestVersion(), m.GetModifyIndex())
	for _, k := range slices.Sorted(maps.Keys(m.GetAliases())) {
		fmt.Fprintf(&b, " %s=%d", k, m.GetAliases()[k])
	}
	for _, v := range vs {
		fmt.Fprintf(&b, "\n  v%d %s create index %d", v.GetVersion(), v.GetTags()[tagOp], v.GetCreateIndex())
		if side := v.GetTags()[tagSide]; side != "" {
			fmt.Fprintf(&b, " side %s", side)
		}
	}
	return b.String()
}

// isNoLeader reports whether err is the refusal of a server that knows no
// leader: code Unavailable, reason NO_LEADER.
func isNoLeader(err error) bool {
	var ce *connect.Error
	return errors.As(err, &ce) && ce.Code() == connect.CodeUnavailable &&
		linearize.Reason(err) == droverv1.ErrorReason_ERROR_REASON_NO_LEADER
}
