package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// simAgent plays the part of drover-agent a rollout needs: it watches its
// assignments with its node certificate and reports an instance per
// assignment in its heartbeats, HEALTHY unless the version is one the
// test marked broken (then CRASH_LOOP).
type simAgent struct {
	a      *fakeAgent
	client droverv1connect.AgentServiceClient

	mu      sync.Mutex                          // guards the fields below
	running map[string]*droverv1.InstanceStatus // by deployment
}

// run watches and heartbeats until ctx ends.
func (sa *simAgent) run(ctx context.Context, t *testing.T, broken func(uint64) bool, wg *sync.WaitGroup) {
	wg.Add(2)
	go func() {
		defer wg.Done()
		var index uint64
		for ctx.Err() == nil {
			res, err := sa.client.WatchAssignments(ctx, connect.NewRequest(&droverv1.WatchAssignmentsRequest{
				Query: &droverv1.QueryOptions{MinIndex: index, MaxWait: durationpb.New(2 * time.Second)},
			}))
			if err != nil {
				if ctx.Err() == nil {
					t.Logf("%s: watch: %v", sa.a.node.GetId(), err)
					time.Sleep(100 * time.Millisecond)
				}
				continue
			}
			index = res.Msg.GetMeta().GetIndex()
			sa.mu.Lock()
			next := map[string]*droverv1.InstanceStatus{}
			for _, as := range res.Msg.GetAssignments() {
				cur := sa.running[as.GetDeployment()]
				if cur != nil && cur.GetVersion() == as.GetVersion() {
					next[as.GetDeployment()] = cur
					continue
				}
				st := droverv1.InstanceState_INSTANCE_STATE_HEALTHY
				if broken(as.GetVersion()) {
					st = droverv1.InstanceState_INSTANCE_STATE_CRASH_LOOP
				}
				next[as.GetDeployment()] = &droverv1.InstanceStatus{
					Deployment: as.GetDeployment(), Version: as.GetVersion(), State: st, Since: timestamppb.Now(),
				}
			}
			sa.running = next
			sa.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(150 * time.Millisecond):
			}
			sa.mu.Lock()
			var sts []*droverv1.InstanceStatus
			for _, st := range sa.running {
				sts = append(sts, st)
			}
			sa.mu.Unlock()
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := sa.client.Heartbeat(hctx, connect.NewRequest(&droverv1.HeartbeatRequest{Instances: sts}))
			cancel()
			if err != nil && ctx.Err() == nil {
				t.Logf("%s: heartbeat: %v", sa.a.node.GetId(), err)
			}
		}
	}()
}

// rolloutFleet is a one-server cluster with a model of three versions and
// n simulated agents.
type rolloutFleet struct {
	c        *cluster.Cluster
	deploys  droverv1connect.DeploymentServiceClient
	rollouts droverv1connect.RolloutServiceClient
	agents   []*simAgent
	via      *cluster.Node // the server the agents talk to
}

func newRolloutFleet(t *testing.T, n int, broken func(uint64) bool) *rolloutFleet {
	return newRolloutFleetOf(t, 1, n, broken)
}

// rolloutClients are the deployment and rollout clients of server node,
// with the management token and hdr on every call.
func rolloutClients(t *testing.T, c *cluster.Cluster, node *cluster.Node, hdr http.Header) (droverv1connect.DeploymentServiceClient, droverv1connect.RolloutServiceClient) {
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	hdr = hdr.Clone()
	hdr.Set("Authorization", "Bearer "+c.Token())
	hc := &http.Client{Transport: headerTransport{base: h2, hdr: hdr}}
	base := "https://" + node.APIAddr()
	return droverv1connect.NewDeploymentServiceClient(hc, base), droverv1connect.NewRolloutServiceClient(hc, base)
}

// newRolloutFleetOf is newRolloutFleet with servers servers.
func newRolloutFleetOf(t *testing.T, servers, n int, broken func(uint64) bool) *rolloutFleet {
	return newRolloutFleetWith(t, servers, n, broken, nil)
}

// newRolloutFleetWith is newRolloutFleetOf with the servers' configuration
// changed by configure too.
func newRolloutFleetWith(t *testing.T, servers, n int, broken func(uint64) bool, configure func(*server.Config)) *rolloutFleet {
	c := cluster.Make(t, servers, cluster.Options{Configure: func(cfg *server.Config) {
		shortTTLs(cfg)
		if configure != nil {
			configure(cfg)
		}
	}})
	l := c.Leader()
	f := &rolloutFleet{c: c}
	f.deploys, f.rollouts = rolloutClients(t, c, l, http.Header{})
	cl := clientsWith(t, c, l, c.Token(), false)
	mustCreateModel(t, cl, "det")
	for i := range 3 {
		if _, err := createVersion(testCtx(t, 10*time.Second), cl, "det", i); err != nil {
			t.Fatal(err)
		}
	}
	if n == 0 {
		return f
	}
	// With more than one server the agents talk to a follower, which
	// forwards their calls to the leader, as it would to a new one.
	via := l
	for _, node := range c.Nodes() {
		if node != l {
			via = node
		}
	}
	f.via = via
	tokens, _ := operator(t, c, l)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: uint32(n), Site: "s1"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		a := newFakeAgent(t, c.CA.Pool())
		a.mustEnrollRegister(t, l.APIAddr(), tok, fmt.Sprintf("edge-%d", i))
		sa := &simAgent{a: a, client: a.client(t, via.APIAddr(), nil), running: map[string]*droverv1.InstanceStatus{}}
		sa.run(ctx, t, broken, &wg)
		f.agents = append(f.agents, sa)
	}
	return f
}

func (f *rolloutFleet) apply(t *testing.T, ref string) *droverv1.ApplyDeploymentResponse {
	t.Helper()
	return f.applyParallel(t, ref, 2)
}

func (f *rolloutFleet) applyParallel(t *testing.T, ref string, parallel uint32) *droverv1.ApplyDeploymentResponse {
	t.Helper()
	res, err := f.deploys.ApplyDeployment(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ApplyDeploymentRequest{
		Spec: &droverv1.DeploymentSpec{
			Name:    "cams",
			Model:   ref,
			Runtime: &droverv1.RuntimeSpec{Type: "onnx", StartTimeout: durationpb.New(500 * time.Millisecond)},
			Strategy: &droverv1.RolloutStrategy{
				Canary: 1, MaxParallel: parallel, MaxUnavailablePerSite: 2,
				MinHealthyTime: durationpb.New(500 * time.Millisecond), ProgressDeadline: durationpb.New(10 * time.Second),
				AutoPromote: true, AutoRevert: true,
			},
		},
	}))
	if err != nil {
		t.Fatalf("apply %s: %v", ref, err)
	}
	return res.Msg
}

// waitRollout waits for rollout id of cams to reach want and returns it.
func (f *rolloutFleet) waitRollout(t *testing.T, id uint64, want droverv1.RolloutState, d time.Duration) *droverv1.GetRolloutResponse {
	t.Helper()
	var last *droverv1.GetRolloutResponse
	eventually(t, d, fmt.Sprintf("rollout %d %v", id, want), func() error {
		res, err := f.rollouts.GetRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: "cams", Id: id}))
		if err != nil {
			return err
		}
		last = res.Msg
		if s := res.Msg.GetRollout().GetState(); s != want {
			return fmt.Errorf("%v (%s; waiting: %s)", s, res.Msg.GetRollout().GetEndReason(), res.Msg.GetWaiting())
		}
		return nil
	})
	t.Logf("rollout %d: %v, %d batches, %q", id, last.GetRollout().GetState(), len(last.GetRollout().GetBatches()), last.GetRollout().GetEndReason())
	return last
}

// checkBatches checks a rollout moved every node once: a canary of one,
// then batches of at most two.
func checkBatches(t *testing.T, r *droverv1.Rollout, nodes int, canary bool) {
	t.Helper()
	seen := map[string]bool{}
	for i, b := range r.GetBatches() {
		if b.GetDoneTime() == nil {
			t.Errorf("batch %d not done: %v", i, b)
		}
		want := 2
		if canary && i == 0 {
			want = 1
			if !b.GetCanary() {
				t.Errorf("batch 0 is no canary")
			}
		}
		if len(b.GetNodeIds()) > want {
			t.Errorf("batch %d has %d nodes, want at most %d", i, len(b.GetNodeIds()), want)
		}
		for _, id := range b.GetNodeIds() {
			if seen[id] {
				t.Errorf("node %s in two batches", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != nodes {
		t.Errorf("rollout %d moved %d nodes, want %d: %v", r.GetId(), len(seen), nodes, r.GetBatches())
	}
}

func TestRolloutEndToEnd(t *testing.T) {
	f := newRolloutFleet(t, 4, func(uint64) bool { return false })
	start := time.Now()
	f.apply(t, "det@1")
	r1 := f.waitRollout(t, 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	checkBatches(t, r1.GetRollout(), 4, true)
	if got := len(r1.GetRollout().GetBatches()); got != 3 {
		t.Errorf("%d batches, want 3 (canary 1, then 2 and 1)", got)
	}
	f.apply(t, "det@2")
	r2 := f.waitRollout(t, 2, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	checkBatches(t, r2.GetRollout(), 4, true)
	t.Logf("two rollouts over 4 nodes in %v", time.Since(start).Round(time.Millisecond))

	// Every node is assigned version 2 and reports it healthy.
	if len(r2.GetNodes()) != 4 {
		t.Fatalf("rollout nodes %v", r2.GetNodes())
	}
	for _, n := range r2.GetNodes() {
		if n.GetAssignment().GetVersion() != 2 || n.GetStatus().GetVersion() != 2 || n.GetNodeName() == "" || n.GetSite() != "s1" {
			t.Errorf("node %v", n)
		}
	}
	list, err := f.deploys.ListDeployments(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.ListDeploymentsRequest{}))
	if err != nil || list.Msg.GetAssignedNodes()["cams"] != 4 {
		t.Errorf("ListDeployments assigned nodes: %v %v", list.Msg.GetAssignedNodes(), err)
	}
	dep, err := f.deploys.GetDeployment(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.GetDeploymentRequest{Name: "cams"}))
	if err != nil || len(dep.Msg.GetNodes()) != 4 {
		t.Fatalf("GetDeployment nodes: %v %v", dep, err)
	}

	// Actions the rollout's state does not allow are refused with the
	// controller's reason.
	_, err = f.rollouts.PauseRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "cams"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("pause of a finished rollout: %v", err)
	}
	t.Logf("pause refused: %v", err)

	// An operator's rollback goes back to version 1, without a canary.
	res, err := f.rollouts.RollbackRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "cams", Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Msg.GetRollout(); r.GetId() != 3 || r.GetRollbackOf() != 2 || r.GetToVersion() != 1 {
		t.Fatalf("rollback: %v", r)
	}
	r3 := f.waitRollout(t, 3, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	checkBatches(t, r3.GetRollout(), 4, false)

	hist, err := f.rollouts.ListRollouts(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.ListRolloutsRequest{}))
	if err != nil || len(hist.Msg.GetRollouts()) != 3 {
		t.Fatalf("history: %v %v", hist, err)
	}

	// Deleting the deployment takes its assignments away.
	if _, err := f.deploys.DeleteDeployment(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.DeleteDeploymentRequest{Name: "cams"})); err != nil {
		t.Fatal(err)
	}
	for _, sa := range f.agents {
		res, err := sa.client.WatchAssignments(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.WatchAssignmentsRequest{}))
		if err != nil || len(res.Msg.GetAssignments()) != 0 {
			t.Errorf("%s after delete: %v %v", sa.a.node.GetId(), res, err)
		}
	}
}

func TestRolloutAutoRevert(t *testing.T) {
	f := newRolloutFleet(t, 4, func(v uint64) bool { return v == 3 })
	f.apply(t, "det@2")
	f.waitRollout(t, 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	f.apply(t, "det@3")
	failed := f.waitRollout(t, 2, droverv1.RolloutState_ROLLOUT_STATE_FAILED, 15*time.Second)
	if n := len(failed.GetRollout().GetBatches()); n != 1 {
		t.Errorf("the broken version went past its canary: %d batches", n)
	}
	back := f.waitRollout(t, 3, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	if r := back.GetRollout(); r.GetRollbackOf() != 2 || r.GetToVersion() != 2 || r.GetCreatedBy() != "rollout-controller" {
		t.Errorf("rollback %v", r)
	}
	for _, n := range back.GetNodes() {
		if n.GetAssignment().GetVersion() != 2 {
			t.Errorf("node %s assigned %d after the rollback", n.GetNodeId(), n.GetAssignment().GetVersion())
		}
	}
	_, err := f.rollouts.PromoteRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "cams"}))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition {
		t.Errorf("promote of a finished rollout: %v", err)
	}
}

// A node's watch wakes when its own assignments change, not when another
// node's do.
func TestWatchAssignmentsWakesOnlyItsNode(t *testing.T) {
	f := newRolloutFleet(t, 0, nil)
	l := f.c.Leader()
	tokens, _ := operator(t, f.c, l)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(stop); wg.Wait() })
	agents := map[string]*fakeAgent{}
	for _, cam := range []string{"a", "b"} {
		tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: 1, Site: "s1", Labels: map[string]string{"cam": cam}})
		a := newFakeAgent(t, f.c.CA.Pool())
		a.mustEnrollRegister(t, l.APIAddr(), tok, "cam-"+cam)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.heartbeatLoop(t, func() []string { return []string{l.APIAddr()} }, 200*time.Millisecond, stop, nil, nil)
		}()
		agents[cam] = a
	}
	watch := func(a *fakeAgent, index uint64, wait time.Duration) (*droverv1.WatchAssignmentsResponse, time.Duration) {
		t.Helper()
		start := time.Now()
		res, err := a.client(t, l.APIAddr(), nil).WatchAssignments(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.WatchAssignmentsRequest{
			Query: &droverv1.QueryOptions{MinIndex: index, MaxWait: durationpb.New(wait)},
		}))
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		return res.Msg, time.Since(start)
	}
	apply := func(name, cam string) {
		t.Helper()
		_, err := f.deploys.ApplyDeployment(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ApplyDeploymentRequest{Spec: &droverv1.DeploymentSpec{
			Name: name, Model: "det@1", Runtime: &droverv1.RuntimeSpec{Type: "onnx"},
			Selector: &droverv1.NodeSelector{Labels: map[string]string{"cam": cam}},
		}}))
		if err != nil {
			t.Fatal(err)
		}
	}
	first, _ := watch(agents["a"], 0, 0)
	if len(first.GetAssignments()) != 0 || first.GetMeta().GetIndex() == 0 {
		t.Fatalf("first answer %v", first)
	}
	// b's deployment: a's watch runs to its max_wait.
	type answer struct {
		res  *droverv1.WatchAssignmentsResponse
		took time.Duration
	}
	done := make(chan answer, 1)
	go func() {
		res, took := watch(agents["a"], first.GetMeta().GetIndex(), 2*time.Second)
		done <- answer{res, took}
	}()
	time.Sleep(100 * time.Millisecond)
	apply("cams-b", "b")
	eventually(t, 5*time.Second, "b assigned", func() error {
		res, _ := watch(agents["b"], 0, 0)
		if len(res.GetAssignments()) != 1 {
			return fmt.Errorf("b has %v", res.GetAssignments())
		}
		return nil
	})
	got := <-done
	t.Logf("a's watch while b was assigned: %v after %v", got.res.GetAssignments(), got.took)
	if len(got.res.GetAssignments()) != 0 || got.took < 1900*time.Millisecond || got.res.GetMeta().GetIndex() != first.GetMeta().GetIndex() {
		t.Errorf("a's watch woke for b's assignment: %v after %v", got.res, got.took)
	}
	// a's deployment wakes it.
	go func() {
		res, took := watch(agents["a"], first.GetMeta().GetIndex(), 8*time.Second)
		done <- answer{res, took}
	}()
	time.Sleep(100 * time.Millisecond)
	apply("cams-a", "a")
	got = <-done
	t.Logf("a's watch when a was assigned: %v after %v", got.res.GetAssignments(), got.took)
	if as := got.res.GetAssignments(); len(as) != 1 || as[0].GetDeployment() != "cams-a" || as[0].GetVersion() != 1 ||
		as[0].GetModel() != "det" || as[0].GetRuntime().GetType() != "onnx" || as[0].GetRevision() != 1 || got.took > 5*time.Second {
		t.Errorf("a's watch: %v after %v", got.res, got.took)
	}
}

// Reports live on the leader: a follower forwards a consistent GetRollout
// to it, and answers a stale one itself, without reports.
func TestRolloutStatusFromFollower(t *testing.T) {
	f := newRolloutFleetOf(t, 3, 2, func(uint64) bool { return false })
	f.apply(t, "det@1")
	f.waitRollout(t, 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 15*time.Second)
	var follower *cluster.Node
	for _, n := range f.c.Nodes() {
		if n != f.c.Leader() {
			follower = n
			break
		}
	}
	_, consistent := rolloutClients(t, f.c, follower, http.Header{})
	_, stale := rolloutClients(t, f.c, follower, http.Header{server.ConsistencyHeader: []string{"stale"}})
	res, err := consistent.GetRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: "cams"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetMeta().GetServedBy() != f.c.Leader().Name || len(res.Msg.GetNodes()) != 2 {
		t.Fatalf("consistent read through a follower: %v", res.Msg)
	}
	for _, n := range res.Msg.GetNodes() {
		if n.GetStatus().GetState() != droverv1.InstanceState_INSTANCE_STATE_HEALTHY {
			t.Errorf("node %s: %v", n.GetNodeId(), n.GetStatus())
		}
	}
	eventually(t, 5*time.Second, "the follower holds the rollout", func() error {
		res, err := stale.GetRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: "cams"}))
		if err != nil {
			return err
		}
		if res.Msg.GetMeta().GetServedBy() != follower.Name || res.Msg.GetRollout().GetState() != droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			return fmt.Errorf("served by %s: %v", res.Msg.GetMeta().GetServedBy(), res.Msg.GetRollout().GetState())
		}
		for _, n := range res.Msg.GetNodes() {
			if n.GetStatus() != nil || n.GetAssignment().GetVersion() != 1 {
				return fmt.Errorf("a follower has node %v", n)
			}
		}
		return nil
	})
}

// A new leader continues a rollout where the old one stopped: no batch
// is started twice, none is skipped.
func TestRolloutAcrossLeaderChange(t *testing.T) {
	f := newRolloutFleetOf(t, 3, 3, func(uint64) bool { return false })
	f.applyParallel(t, "det@1", 1)
	old := f.c.Leader()
	eventually(t, 10*time.Second, "the canary done", func() error {
		res, err := f.rollouts.GetRollout(testCtx(t, 5*time.Second), connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: "cams"}))
		if err != nil {
			return err
		}
		if bs := res.Msg.GetRollout().GetBatches(); len(bs) == 0 || bs[0].GetDoneTime() == nil {
			return fmt.Errorf("batches %v", bs)
		}
		return nil
	})
	start := time.Now()
	f.c.Kill(old)
	t.Logf("killed leader %s", old.Name)
	f.deploys, f.rollouts = rolloutClients(t, f.c, f.via, http.Header{})
	done := f.waitRollout(t, 1, droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 20*time.Second)
	t.Logf("succeeded %v after the leader was killed", time.Since(start).Round(time.Millisecond))
	checkBatches(t, done.GetRollout(), 3, true)
	if n := len(done.GetRollout().GetBatches()); n != 3 {
		t.Errorf("%d batches, want 3 of one node", n)
	}
	for _, b := range done.GetRollout().GetBatches()[1:] {
		if len(b.GetNodeIds()) != 1 {
			t.Errorf("batch %v, want one node", b)
		}
	}
}
