package scenarios

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
	"github.com/droverhq/drover/scenarios/linearize"
)

// registryClient runs linearize inputs against a live cluster, each call
// through a randomly chosen running server, and records them.
type registryClient struct {
	c     *cluster.Cluster
	rec   *linearize.Recorder
	model string
	id    int
	seq   *atomic.Int64
	rng   *rand.Rand
	errs  *sync.Map // error text prefix → *atomic.Int64
	acked *sync.Map // tag of each acknowledged create → the version it returned
}

func (rc *registryClient) pick() *cluster.Node {
	nodes := rc.c.Nodes()
	for range 2 * len(nodes) {
		n := nodes[rc.rng.IntN(len(nodes))]
		if n.Server() != nil {
			return n
		}
	}
	return nodes[0]
}

// step issues one random operation, records it, and reports whether it
// got an answer (an error is not one).
func (rc *registryClient) step(ctx context.Context) bool {
	node := rc.pick()
	cl := rc.c.Client(node, false)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	switch op := rc.rng.IntN(10); {
	case op < 4:
		return rc.createTagged(ctx, cl, fmt.Sprintf("c%d-%d", rc.id, rc.seq.Add(1))) == nil
	case op < 6:
		// Sometimes a version that does not exist yet: the refusal is part
		// of the history too.
		v := uint64(rc.rng.IntN(int(rc.seq.Load())+2) + 1)
		finish := rc.rec.Begin(rc.id, linearize.SetAlias("prod", v))
		res, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: rc.model, Alias: "prod", Version: v}))
		rc.countErr(err)
		if err != nil {
			finish(linearize.Output{}, err)
			return connect.CodeOf(err) == connect.CodeNotFound
		}
		finish(linearize.Output{Version: v, Previous: res.Msg.GetPreviousVersion()}, nil)
		return true
	case op < 8:
		finish := rc.rec.Begin(rc.id, linearize.GetAlias("prod"))
		out, err := rc.getVersion(ctx, cl, "prod")
		finish(out, err)
		return err == nil || connect.CodeOf(err) == connect.CodeNotFound
	default:
		finish := rc.rec.Begin(rc.id, linearize.LatestVersion())
		out, err := rc.getVersion(ctx, cl, "latest")
		finish(out, err)
		return err == nil || connect.CodeOf(err) == connect.CodeNotFound
	}
}

// countErr tallies errors by their first words, for the test log.
func (rc *registryClient) countErr(err error) {
	if err == nil {
		return
	}
	msg := err.Error()
	if i := strings.IndexAny(msg, "0123456789"); i > 0 {
		msg = msg[:i] // group messages that differ only in numbers
	}
	v, _ := rc.errs.LoadOrStore(msg, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// createTagged creates a version labelled tag and records the call.
func (rc *registryClient) createTagged(ctx context.Context, cl *cluster.Clients, tag string) error {
	finish := rc.rec.Begin(rc.id, linearize.CreateVersion(tag))
	res, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
		Model:    rc.model,
		Artifact: &droverv1.ArtifactManifest{Digest: fmt.Sprintf("sha256:%064x", rc.seq.Add(1)), SizeBytes: 1, Format: "onnx"},
		Tags:     map[string]string{"op": tag},
	}))
	rc.countErr(err)
	if err != nil {
		finish(linearize.Output{}, err)
		return err
	}
	finish(linearize.Output{Version: res.Msg.GetVersion().GetVersion()}, nil)
	rc.acked.Store(tag, res.Msg.GetVersion().GetVersion())
	return nil
}

func (rc *registryClient) getVersion(ctx context.Context, cl *cluster.Clients, ref string) (linearize.Output, error) {
	res, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: rc.model, Ref: ref}))
	rc.countErr(err)
	if err != nil {
		return linearize.Output{}, err
	}
	return linearize.Output{Version: res.Msg.GetVersion().GetVersion()}, nil
}

// The leader is killed again and again while clients write and read: a new
// leader takes over each time, writes resume, and the whole history of
// client operations is linearizable.
func TestLeaderKilledHistoryLinearizable(t *testing.T) {
	kills := 12
	if testing.Short() {
		kills = 3
	}
	c := cluster.Make(t, 3, cluster.Options{})
	createModel(t, c.Client(c.Leader(), false), "m")

	rec := linearize.NewRecorder()
	var seq atomic.Int64
	var errs, acked sync.Map
	ctx, stopClients := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for id := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc := &registryClient{c: c, rec: rec, model: "m", id: id, seq: &seq, rng: rand.New(rand.NewPCG(uint64(id), 7)), errs: &errs, acked: &acked}
			for ctx.Err() == nil {
				if !rc.step(ctx) {
					// Like a real client, back off a little after an error
					// instead of hammering a cluster that is electing.
					time.Sleep(time.Duration(20+rc.rng.IntN(60)) * time.Millisecond)
				}
			}
		}()
	}

	// The prober measures recovery; its writes are part of the history.
	prober := &registryClient{c: c, rec: rec, model: "m", id: 99, seq: &seq, rng: rand.New(rand.NewPCG(99, 7)), errs: &errs, acked: &acked}
	var recoveries []time.Duration
	for k := range kills {
		time.Sleep(300 * time.Millisecond) // let traffic flow under this leader
		wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		leader, err := c.WaitLeader(wctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		killedAt := time.Now()
		c.Kill(leader)
		// Writes resume: some server commits a write.
		for {
			n := c.Nodes()[(k+1)%3]
			if n == leader {
				n = c.Nodes()[(k+2)%3]
			}
			pctx, pcancel := context.WithTimeout(wctx, time.Second)
			err := prober.createTagged(pctx, c.Client(n, false), fmt.Sprintf("probe-%d-%d", k, seq.Add(1)))
			pcancel()
			if err == nil {
				break
			}
			if time.Since(killedAt) > 5*time.Second {
				t.Logf("kill %d: write through %s still failing: %v", k, n.Name, err)
			}
			if wctx.Err() != nil {
				cancel()
				t.Fatalf("kill %d: writes did not resume within 30s of killing %s", k, leader.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		recoveries = append(recoveries, time.Since(killedAt))
		t.Logf("kill %d: killed leader %s; writes resumed after %v", k, leader.Name, recoveries[k])
		if err := c.Restart(leader); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
	}
	time.Sleep(300 * time.Millisecond)
	stopClients()
	wg.Wait()

	// Settle writes whose outcome the clients could not know, from the
	// final state read through the leader after every call has returned.
	waitConverged(t, c)
	_, versions := registryOf(t, c.Leader())
	byTag := map[string]uint64{}
	for _, v := range versions["m"] {
		tag := v.GetTags()["op"]
		if prev, dup := byTag[tag]; dup {
			t.Errorf("write %s was applied twice: versions %d and %d", tag, prev, v.GetVersion())
		}
		byTag[tag] = v.GetVersion()
	}
	rec.Resolve(func(in linearize.Input) (linearize.Resolution, linearize.Output) {
		if in.Op != linearize.OpCreateVersion {
			return linearize.StillUnknown, linearize.Output{}
		}
		if v, ok := byTag[in.Tag]; ok {
			return linearize.Happened, linearize.Output{Version: v}
		}
		return linearize.NeverHappened, linearize.Output{}
	})
	t.Logf("history: %v", rec.Stats())
	errs.Range(func(k, v any) bool { t.Logf("errors seen: %5d× %s…", v.(*atomic.Int64).Load(), k); return true })

	// Every acknowledged create is in the final state, with the version
	// number its client was told, and every server holds that state.
	nAcked := 0
	acked.Range(func(k, v any) bool {
		nAcked++
		tag, want := k.(string), v.(uint64)
		if got, ok := byTag[tag]; !ok {
			t.Errorf("acknowledged create %s (version %d) is missing from the final state", tag, want)
		} else if got != want {
			t.Errorf("acknowledged create %s was version %d, the final state has it as %d", tag, want, got)
		}
		return true
	})
	assertSameRegistry(t, c)

	// A history of failed calls is trivially linearizable: require enough
	// acknowledged writes and answered reads for the check to mean
	// something. Each kill runs at least 300ms of traffic from 4 clients.
	stats := rec.Stats()
	if minAcked := 10 * kills; nAcked < minAcked {
		t.Errorf("only %d creates were acknowledged, want at least %d", nAcked, minAcked)
	}
	if minReads := 10 * kills; stats.AnsweredReads < minReads {
		t.Errorf("only %d reads got an answer, want at least %d: the linearizability check is too weak", stats.AnsweredReads, minReads)
	}
	res, info := rec.Check(2 * time.Minute)
	if res != "Ok" {
		path := filepath.Join(t.TempDir(), "history.html")
		if err := linearize.Visualize(info, path); err == nil {
			t.Logf("history visualisation: %s", path)
		}
		t.Fatalf("history is not linearizable (%v)", res)
	}
	t.Logf("recovery after leader kill: %v", recoveries)
}
