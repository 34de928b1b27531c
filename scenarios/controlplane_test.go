package scenarios

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

func digest(i int) string {
	return fmt.Sprintf("sha256:%064x", i+1)
}

func createModel(t testing.TB, cl *cluster.Clients, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: name})); err != nil {
		t.Fatalf("create model %s: %v", name, err)
	}
}

func createVersion(ctx context.Context, cl *cluster.Clients, model string, i int, tags map[string]string) (*droverv1.ModelVersion, error) {
	res, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
		Model:    model,
		Artifact: &droverv1.ArtifactManifest{Digest: digest(i), SizeBytes: uint64(1000 + i), Format: "onnx"},
		Tags:     tags,
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetVersion(), nil
}

// registryOf reads a node's whole registry from its local state.
func registryOf(t *testing.T, n *cluster.Node) ([]*droverv1.Model, map[string][]*droverv1.ModelVersion) {
	t.Helper()
	st := n.Server().State()
	models := st.Models()
	versions := map[string][]*droverv1.ModelVersion{}
	for _, m := range models {
		vs, err := st.Versions(m.GetName())
		if err != nil {
			t.Fatalf("%s: versions of %s: %v", n.Name, m.GetName(), err)
		}
		versions[m.GetName()] = vs
	}
	return models, versions
}

// assertSameRegistry fails unless every running node holds exactly the
// same models and versions.
func assertSameRegistry(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	var refModels []*droverv1.Model
	var refVersions map[string][]*droverv1.ModelVersion
	var refName string
	for _, n := range c.Nodes() {
		if n.Server() == nil {
			continue
		}
		models, versions := registryOf(t, n)
		if refName == "" {
			refModels, refVersions, refName = models, versions, n.Name
			continue
		}
		if len(models) != len(refModels) {
			t.Fatalf("%s has %d models, %s has %d", n.Name, len(models), refName, len(refModels))
		}
		for i := range models {
			if !proto.Equal(models[i], refModels[i]) {
				t.Fatalf("model %d differs between %s and %s:\n%v\n%v", i, n.Name, refName, models[i], refModels[i])
			}
			name := models[i].GetName()
			if len(versions[name]) != len(refVersions[name]) {
				t.Fatalf("%s has %d versions of %s, %s has %d", n.Name, len(versions[name]), name, refName, len(refVersions[name]))
			}
			for j := range versions[name] {
				if !proto.Equal(versions[name][j], refVersions[name][j]) {
					t.Fatalf("version %s/%d differs between %s and %s", name, j+1, n.Name, refName)
				}
			}
		}
	}
}

func waitConverged(t *testing.T, c *cluster.Cluster) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	idx, err := c.WaitConverged(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// A minority cut off from the others must refuse writes with a no-quorum
// error, never apply them later, and converge after healing; the majority
// keeps working throughout.
func TestMinorityPartition(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	createModel(t, c.Client(leader, false), "m")

	var follower *cluster.Node
	for _, n := range c.Nodes() {
		if n != leader && follower == nil {
			follower = n
		}
	}

	for round, isolated := range []*cluster.Node{follower, leader} {
		t.Logf("round %d: isolating %s", round, isolated.Name)
		var majority []string
		for _, n := range c.Nodes() {
			if n != isolated {
				majority = append(majority, n.Name)
			}
		}
		c.Partition([]string{isolated.Name}, majority)

		// Writes through the isolated server fail, each with a clear error.
		minority := c.Client(isolated, false)
		for i := range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, err := createVersion(ctx, minority, "m", 1000*round+i, map[string]string{"side": "minority"})
			cancel()
			if err == nil {
				t.Fatalf("round %d: write %d through isolated %s succeeded", round, i, isolated.Name)
			}
			code := connect.CodeOf(err)
			if code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded {
				t.Fatalf("round %d: write through isolated server failed with %v, want Unavailable: %v", round, code, err)
			}
			if i == 4 && !strings.Contains(err.Error(), "leader") {
				t.Fatalf("round %d: error does not say why: %v", round, err)
			}
			t.Logf("minority write refused: %v", err)
		}

		// The majority elects (or keeps) a leader and accepts writes.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		var majLeader *cluster.Node
		for majLeader == nil {
			l, err := c.WaitLeader(ctx)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			if l != isolated {
				majLeader = l
			} else {
				time.Sleep(50 * time.Millisecond)
			}
		}
		for i := range 5 {
			if _, err := createVersion(ctx, c.Client(majLeader, false), "m", 1000*round+100+i, map[string]string{"side": "majority"}); err != nil {
				cancel()
				t.Fatalf("round %d: majority write %d: %v", round, i, err)
			}
		}
		cancel()

		c.Heal()
		waitConverged(t, c)
		assertSameRegistry(t, c)
	}

	_, versions := registryOf(t, c.Leader())
	majorityWrites := 0
	for _, v := range versions["m"] {
		switch v.GetTags()["side"] {
		case "minority":
			t.Errorf("a write refused on the minority side was applied: version %d", v.GetVersion())
		case "majority":
			majorityWrites++
		}
	}
	if majorityWrites != 10 {
		t.Errorf("majority writes present: %d, want 10", majorityWrites)
	}
}

// Killing every server and starting them again loses nothing.
func TestAllServersRestart(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	cl := c.Client(c.Leader(), false)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for m := range 3 {
		name := "model-" + strconv.Itoa(m)
		createModel(t, cl, name)
		for i := range 40 {
			if _, err := createVersion(ctx, cl, name, i, nil); err != nil {
				t.Fatalf("create version: %v", err)
			}
		}
		if _, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: name, Alias: "prod", Version: 7})); err != nil {
			t.Fatalf("set alias: %v", err)
		}
	}
	waitConverged(t, c)
	beforeModels, beforeVersions := registryOf(t, c.Leader())
	beforeAudit := c.Leader().Server().State().Audit(0, 100000, "", "")

	for _, n := range c.Nodes() {
		c.Kill(n)
	}
	for _, n := range c.Nodes() {
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, c)
	assertSameRegistry(t, c)
	afterModels, afterVersions := registryOf(t, c.Leader())
	if len(afterModels) != len(beforeModels) {
		t.Fatalf("models after restart: %d, before: %d", len(afterModels), len(beforeModels))
	}
	for i := range beforeModels {
		if !proto.Equal(beforeModels[i], afterModels[i]) {
			t.Fatalf("model changed across restart:\nbefore %v\nafter  %v", beforeModels[i], afterModels[i])
		}
		name := beforeModels[i].GetName()
		for j := range beforeVersions[name] {
			if !proto.Equal(beforeVersions[name][j], afterVersions[name][j]) {
				t.Fatalf("version %s/%d changed across restart", name, j+1)
			}
		}
	}
	afterAudit := c.Leader().Server().State().Audit(0, 100000, "", "")
	if len(afterAudit) < len(beforeAudit) {
		t.Fatalf("audit events after restart: %d, before: %d", len(afterAudit), len(beforeAudit))
	}
	for i := range beforeAudit {
		if !proto.Equal(beforeAudit[i], afterAudit[i]) {
			t.Fatalf("audit event %d changed across restart", i)
		}
	}
	// And the cluster still takes writes.
	if _, err := createVersion(ctx, c.Client(c.Leader(), false), "model-0", 99, nil); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

// A server added after the log was truncated catches up from a snapshot.
func TestNewServerCatchesUpFromSnapshot(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	cl := c.Client(c.Leader(), false)
	createModel(t, cl, "m")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// More entries than the snapshot threshold plus trailing logs, so the
	// beginning of the log is gone once every server has snapshotted.
	for i := range 600 {
		if _, err := createVersion(ctx, cl, "m", i, nil); err != nil {
			t.Fatalf("create version %d: %v", i, err)
		}
	}
	waitConverged(t, c)
	for _, n := range c.Nodes() {
		if err := n.Server().Raft().Snapshot().Error(); err != nil {
			t.Fatalf("%s: snapshot: %v", n.Name, err)
		}
	}
	first, err := c.Leader().Server().FirstLogIndex()
	if err != nil {
		t.Fatal(err)
	}
	if first <= 1 {
		t.Fatalf("leader's log starts at %d: it was not truncated", first)
	}
	t.Logf("leader's log now starts at index %d", first)

	s4, err := c.AddServer("s4")
	if err != nil {
		t.Fatal(err)
	}
	idx := waitConverged(t, c)
	// Wait until s4 is in the configuration and caught up. Raft records
	// an installed snapshot in its stats just after the state machine has
	// restored it, so the two are waited for together.
	for {
		stats := s4.Server().Raft().Stats()
		caughtUp := s4.Server().State().Index() >= idx
		if caughtUp && stats["last_snapshot_index"] != "0" {
			break
		}
		select {
		case <-ctx.Done():
			if caughtUp {
				t.Fatalf("s4 caught up without installing a snapshot: %v", stats)
			}
			t.Fatalf("s4 did not catch up: applied %d, want %d", s4.Server().State().Index(), idx)
		case <-time.After(50 * time.Millisecond):
		}
	}
	assertSameRegistry(t, c)
	// s4 is a voter now, and the cluster survives losing an original server.
	res, err := c.Client(c.Leader(), false).Cluster.ListPeers(ctx, connect.NewRequest(&droverv1.ListPeersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.GetPeers()) != 4 {
		t.Fatalf("peers after adding s4: %v", res.Msg.GetPeers())
	}
}

// A slow link to one follower neither stops writes nor lets that follower
// fall behind for good: the leader commits with the other follower, and the
// slow one catches up once the link is fast again.
func TestSlowFollower(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	leader := c.Leader()
	var slow *cluster.Node
	for _, n := range c.Nodes() {
		if n != leader {
			slow = n
			break
		}
	}
	c.Delay(leader, slow, 150*time.Millisecond)
	cl := c.Client(leader, false)
	createModel(t, cl, "m")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range 50 {
		if _, err := createVersion(ctx, cl, "m", i, nil); err != nil {
			t.Fatalf("write %d with a slow follower: %v", i, err)
		}
	}
	if l := c.Leader(); l != leader {
		t.Logf("leadership moved to %s under the delay", l.Name)
	}
	c.Delay(leader, slow, 0)
	waitConverged(t, c)
	assertSameRegistry(t, c)
}
