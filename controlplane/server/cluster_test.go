package server_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// followerOf returns a running node that is not the leader.
func followerOf(t *testing.T, c *cluster.Cluster, leader *cluster.Node) *cluster.Node {
	t.Helper()
	for _, n := range c.Nodes() {
		if n != leader && n.Server() != nil {
			return n
		}
	}
	t.Fatal("no follower")
	return nil
}

// currentLeader waits for a leader and returns its name. Tests look it up
// again before checking who answered, because a busy machine can cause an
// election at any time.
func currentLeader(t *testing.T, c *cluster.Cluster) string {
	t.Helper()
	l, err := c.WaitLeader(testCtx(t, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return l.Name
}

// peers lists the Raft configuration as the leader sees it.
func peers(t *testing.T, cl *cluster.Clients) []*droverv1.RaftPeer {
	t.Helper()
	ps, err := peersErr(t, cl)
	if err != nil {
		t.Fatalf("ListPeers: %v", err)
	}
	return ps
}

func peersErr(t *testing.T, cl *cluster.Clients) ([]*droverv1.RaftPeer, error) {
	res, err := cl.Cluster.ListPeers(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListPeersRequest{}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetPeers(), nil
}

func peerNames(ps []*droverv1.RaftPeer) []string {
	var names []string
	for _, p := range ps {
		names = append(names, p.GetId())
	}
	slices.Sort(names)
	return names
}

// Any server takes any call: followers forward writes and consistent reads
// to the leader (which checks the caller's token), and answer stale reads
// themselves.
func TestThreeServers(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	follower := followerOf(t, c, leader)
	t.Logf("leader %s, follower %s", leader.Name, follower.Name)
	ctx := testCtx(t, 60*time.Second)
	viaFollower := c.Client(follower, false)

	// A write sent to a follower is applied by the leader.
	m := mustCreateModel(t, viaFollower, "mistral")
	if m.GetCreateIndex() == 0 {
		t.Fatalf("forwarded write returned %v", m)
	}
	if _, err := leader.Server().State().Model("mistral"); err != nil {
		t.Fatalf("leader does not have the forwarded write: %v", err)
	}
	if _, err := createVersion(ctx, viaFollower, "mistral", 1); err != nil {
		t.Fatalf("forwarded CreateVersion: %v", err)
	}

	// The leader checks the token of a forwarded call; the follower does
	// not answer it itself.
	_, err := clientsWith(t, c, follower, c.Token()+"x", false).Models.CreateModel(ctx,
		connect.NewRequest(&droverv1.CreateModelRequest{Name: "intruder"}))
	wantErr(t, "forwarded write with a wrong token", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)
	_, err = clientsWith(t, c, follower, "", false).Models.CreateModel(ctx,
		connect.NewRequest(&droverv1.CreateModelRequest{Name: "intruder"}))
	wantErr(t, "forwarded write without a token", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)
	// Which server ran the handlers shows in its request counters.
	if c.Leader() != leader {
		t.Logf("leadership moved during the test; per-server counters are not checked")
	} else {
		createModel := `procedure="` + droverv1connect.ModelServiceCreateModelProcedure + `"`
		_, leaderMetrics := httpGet(t, c, leader, "/metrics")
		if v := metricValue(leaderMetrics, "drover_api_requests_total", createModel, `code="unauthenticated"`); v != 2 {
			t.Errorf("leader counted %v refused CreateModel calls, want 2", v)
		}
		if v := metricValue(leaderMetrics, "drover_api_requests_total", createModel, `code="ok"`); v != 1 {
			t.Errorf("leader counted %v successful CreateModel calls, want 1", v)
		}
		_, followerMetrics := httpGet(t, c, follower, "/metrics")
		if v := metricValue(followerMetrics, "drover_api_requests_total", createModel); v != -1 {
			t.Errorf("follower handled CreateModel itself (%v calls) instead of forwarding", v)
		}
	}
	if _, err := leader.Server().State().Model("intruder"); err == nil {
		t.Fatal("a write with a bad token was applied")
	}

	// A consistent read on a follower is answered by the leader.
	res := mustGetModel(t, viaFollower, "mistral")
	if l := currentLeader(t, c); res.GetMeta().GetServedBy() != l || !res.GetMeta().GetKnownLeader() || res.GetModel().GetLatestVersion() != 1 {
		t.Fatalf("consistent read via follower: served_by %q known_leader %v model %v; want the leader %s and v1",
			res.GetMeta().GetServedBy(), res.GetMeta().GetKnownLeader(), res.GetModel(), l)
	}

	// A stale read is answered by the follower from its own state, which
	// catches up shortly.
	stale := c.Client(follower, true)
	eventually(t, 10*time.Second, "stale read on the follower sees v1", func() error {
		res, err := stale.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "mistral"}))
		if err != nil {
			return err
		}
		if res.Msg.GetMeta().GetServedBy() != follower.Name {
			return fmt.Errorf("served_by %q, want %s", res.Msg.GetMeta().GetServedBy(), follower.Name)
		}
		if res.Msg.GetModel().GetLatestVersion() != 1 {
			return fmt.Errorf("follower has %v", res.Msg.GetModel())
		}
		return nil
	})

	// Peers: three voters, one of them the leader, the same from anywhere.
	for _, n := range c.Nodes() {
		ps := peers(t, c.Client(n, false))
		leader := c.Node(currentLeader(t, c))
		var leaders []string
		for _, p := range ps {
			if p.GetSuffrage() != "voter" || p.GetAddress() == "" {
				t.Errorf("via %s: peer %v", n.Name, p)
			}
			if p.GetLeader() {
				leaders = append(leaders, p.GetId())
			}
		}
		if got := peerNames(ps); !slices.Equal(got, []string{"s1", "s2", "s3"}) || !slices.Equal(leaders, []string{leader.Name}) {
			t.Fatalf("ListPeers via %s: %v with leaders %v, want s1-s3 led by %s", n.Name, got, leaders, leader.Name)
		}
	}

	// Status from any server: every server answers with its own view.
	var clusterID string
	for _, n := range c.Nodes() {
		cl := clientsWith(t, c, n, "", false) // status needs no token
		eventually(t, 15*time.Second, "status via "+n.Name, func() error {
			res, err := cl.Cluster.GetStatus(ctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
			if err != nil {
				return err
			}
			st := res.Msg
			leader := c.Node(currentLeader(t, c))
			if st.GetServedBy() != n.Name || st.GetLeader() != leader.Name || st.GetQuorum() != 2 || st.GetClusterId() == "" {
				return fmt.Errorf("served_by %q leader %q quorum %d cluster %q", st.GetServedBy(), st.GetLeader(), st.GetQuorum(), st.GetClusterId())
			}
			if clusterID != "" && st.GetClusterId() != clusterID {
				return fmt.Errorf("cluster id %q, another server said %q", st.GetClusterId(), clusterID)
			}
			if len(st.GetServers()) != 3 {
				return fmt.Errorf("%d servers listed", len(st.GetServers()))
			}
			for _, s := range st.GetServers() {
				info := s.GetInfo()
				if info == nil || s.GetError() != "" {
					return fmt.Errorf("server %s: no info (%s)", s.GetName(), s.GetError())
				}
				if info.GetName() != s.GetName() || info.GetLeader() != leader.Name || s.GetSuffrage() != "voter" || s.GetHealth() != "alive" {
					return fmt.Errorf("server %s: %v", s.GetName(), s)
				}
				if s.GetLeader() != (s.GetName() == leader.Name) || (info.GetRaftState() == "leader") != (s.GetName() == leader.Name) {
					return fmt.Errorf("server %s: leader flag %v, raft state %s", s.GetName(), s.GetLeader(), info.GetRaftState())
				}
			}
			clusterID = st.GetClusterId()
			return nil
		})
	}
}

// Servers join through gossip and become voters; an operator removes a
// dead one; a live one leaves gracefully when asked.
func TestMembership(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	ctx := testCtx(t, 80*time.Second)
	for _, name := range []string{"s4", "s5"} {
		if _, err := c.AddServer(name); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
	}
	leaderClient := func() *cluster.Clients {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c.Client(l, false)
	}
	eventually(t, 30*time.Second, "five voters", func() error {
		ps, err := peersErr(t, leaderClient())
		if err != nil {
			return err // an election while servers join
		}
		for _, p := range ps {
			if p.GetSuffrage() != "voter" {
				return fmt.Errorf("%s is a %s", p.GetId(), p.GetSuffrage())
			}
		}
		if got := peerNames(ps); !slices.Equal(got, []string{"s1", "s2", "s3", "s4", "s5"}) {
			return fmt.Errorf("peers %v", got)
		}
		return nil
	})

	// remove-peer is for servers that are gone: while gossip still sees
	// one alive, the leader adds it back. So kill s5, wait until the
	// leader's gossip notices, then remove it.
	s5 := c.Node("s5")
	if s5.Server().IsLeader() {
		if err := s5.Server().Raft().LeadershipTransfer().Error(); err != nil {
			t.Fatalf("move leadership off s5: %v", err)
		}
	}
	c.Kill(s5)
	eventually(t, 30*time.Second, "leader sees s5 down", func() error {
		l, err := c.WaitLeader(ctx)
		if err != nil {
			return err
		}
		res, err := clientsWith(t, c, l, "", false).Cluster.GetStatus(ctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
		if err != nil {
			return err
		}
		for _, s := range res.Msg.GetServers() {
			if s.GetName() == "s5" && s.GetHealth() == "alive" {
				return fmt.Errorf("s5 is %s", s.GetHealth())
			}
		}
		return nil
	})
	eventually(t, 20*time.Second, "RemovePeer s5", func() error {
		_, err := leaderClient().Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: "s5"}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil // an earlier try that reported a lost leadership did remove it
		}
		return err
	})
	if got := peerNames(peers(t, leaderClient())); !slices.Equal(got, []string{"s1", "s2", "s3", "s4"}) {
		t.Fatalf("peers after removing s5: %v", got)
	}

	_, err := leaderClient().Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: "s9"}))
	wantErr(t, "remove unknown peer", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_PEER_NOT_FOUND)
	for _, name := range []string{"s9", "s1", "s2", "s3", "s4"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("PEER_NOT_FOUND does not mention %s: %v", name, err)
		}
	}

	// Graceful leave, asked of a follower directly.
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var leaving *cluster.Node
	for _, name := range []string{"s4", "s3", "s2", "s1"} {
		if n := c.Node(name); n != l {
			leaving = n
			break
		}
	}
	t.Logf("asking %s to leave (leader %s)", leaving.Name, l.Name)
	srv := leaving.Server()
	select {
	case <-srv.LeaveRequested():
		t.Fatal("LeaveRequested closed before Leave")
	default:
	}
	if _, err := c.Client(leaving, false).Cluster.Leave(ctx, connect.NewRequest(&droverv1.LeaveRequest{})); err != nil {
		t.Fatalf("Leave via %s: %v", leaving.Name, err)
	}
	select {
	case <-srv.LeaveRequested():
	default:
		t.Fatal("Leave returned but LeaveRequested is not closed")
	}
	var want []string
	for _, name := range []string{"s1", "s2", "s3", "s4"} {
		if name != leaving.Name {
			want = append(want, name)
		}
	}
	eventually(t, 10*time.Second, "leaver gone from the peers", func() error {
		ps, err := peersErr(t, leaderClient())
		if err != nil {
			return err
		}
		if got := peerNames(ps); !slices.Equal(got, want) {
			return fmt.Errorf("peers %v, want %v", got, want)
		}
		return nil
	})
	// The cluster still takes writes.
	mustCreateModel(t, leaderClient(), "after-leave")
}

func modelsOf(t *testing.T, cl *cluster.Clients) *droverv1.ListModelsResponse {
	t.Helper()
	res, err := cl.Models.ListModels(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListModelsRequest{}))
	if err != nil {
		t.Fatalf("ListModels: %v", err)
	}
	return res.Msg
}

func sameModels(a, b []*droverv1.Model) bool {
	return slices.EqualFunc(a, b, func(x, y *droverv1.Model) bool { return proto.Equal(x, y) })
}

// A saved snapshot restores the state it was taken from, on every server;
// a damaged or foreign file is refused and changes nothing.
func TestSnapshotSaveRestore(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	follower := followerOf(t, c, leader)
	cl := clientsWith(t, c, leader, c.Token(), false)
	ctx := testCtx(t, 60*time.Second)

	mustCreateModel(t, cl, "keep")
	mustCreateModel(t, cl, "gone")
	for i := 1; i <= 2; i++ {
		if _, err := createVersion(ctx, cl, "keep", i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: "keep", Alias: "prod", Version: 1})); err != nil {
		t.Fatal(err)
	}
	saved := modelsOf(t, cl).GetModels()

	// Saving through a follower streams the leader's state.
	snap, err := saveSnapshot(ctx, clientsWith(t, c, follower, c.Token(), false))
	if err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	if !bytes.HasPrefix(snap, []byte("DRVSNAP")) || len(snap) < 100 {
		t.Fatalf("snapshot is %d bytes starting %q", len(snap), snap[:min(len(snap), 8)])
	}
	t.Logf("snapshot: %d bytes", len(snap))

	// Change things after the snapshot.
	if _, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: "keep", Alias: "prod", Version: 2})); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Models.DeleteModel(ctx, connect.NewRequest(&droverv1.DeleteModelRequest{Name: "gone"})); err != nil {
		t.Fatal(err)
	}
	mustCreateModel(t, cl, "new")
	changed := modelsOf(t, cl)

	refused := func(what string, data []byte, code connect.Code, reason droverv1.ErrorReason) {
		t.Helper()
		_, err := restoreSnapshot(ctx, cl, data)
		wantErr(t, what, err, code, reason)
		now := modelsOf(t, cl)
		if !sameModels(now.GetModels(), changed.GetModels()) || now.GetMeta().GetIndex() != changed.GetMeta().GetIndex() {
			t.Fatalf("%s changed the state: index %d -> %d, models %v", what,
				changed.GetMeta().GetIndex(), now.GetMeta().GetIndex(), now.GetModels())
		}
	}
	refused("truncated snapshot", snap[:len(snap)/2], connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID)
	refused("snapshot without its checksum", snap[:len(snap)-1], connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID)
	flipped := bytes.Clone(snap)
	flipped[len(flipped)/2] ^= 0xff
	refused("corrupted snapshot", flipped, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID)
	refused("empty snapshot", nil, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_INVALID)

	other := cluster.Make(t, 1, cluster.Options{})
	otherCl := clientsWith(t, other, other.Nodes()[0], other.Token(), false)
	mustCreateModel(t, otherCl, "foreign")
	foreign, err := saveSnapshot(ctx, otherCl)
	if err != nil {
		t.Fatalf("SaveSnapshot from the other cluster: %v", err)
	}
	other.Shutdown()
	refused("snapshot of another cluster", foreign, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_SNAPSHOT_WRONG_CLUSTER)

	// The good snapshot, sent through a follower, brings the old state
	// back on every server.
	res, err := restoreSnapshot(ctx, clientsWith(t, c, follower, c.Token(), false), snap)
	if err != nil {
		t.Fatalf("RestoreSnapshot: %v", err)
	}
	t.Logf("restored at raft index %d", res.GetIndex())
	if got := modelsOf(t, cl).GetModels(); !sameModels(got, saved) {
		t.Fatalf("after restore the leader has %v, want %v", got, saved)
	}
	for _, n := range c.Nodes() {
		stale := c.Client(n, true)
		eventually(t, 20*time.Second, n.Name+" restored", func() error {
			res, err := stale.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
			if err != nil {
				return err
			}
			if !sameModels(res.Msg.GetModels(), saved) {
				return fmt.Errorf("models %v", res.Msg.GetModels())
			}
			return nil
		})
	}
	v, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "keep", Ref: "prod"}))
	if err != nil || v.Msg.GetVersion().GetVersion() != 1 {
		t.Fatalf("keep@prod after restore = %v, %v; want v1", v, err)
	}
	// The cluster keeps working after a restore, with the same token.
	if _, err := createVersion(ctx, cl, "gone", 7); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
}
