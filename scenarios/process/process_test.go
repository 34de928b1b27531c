package process_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/process"
)

// TestProcessClusterSurvivesLeaderKill kills the leader of a three-process
// cluster with SIGKILL in the middle of a stream of writes and checks that
// writes go on, that the killed server comes back and catches up, and that
// every acknowledged write is on all three servers, the same on each.
func TestProcessClusterSurvivesLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover and runs three real server processes; takes ~30 s")
	}
	c := process.Start(t, 3, process.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const model = "survivor"
	createModel(t, c, leader, model)
	acked := map[uint64]string{} // version number → digest of every acknowledged write
	write := func(servers []string, i int) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		v, trace, err := writeUntilCommitted(wctx, c, servers, model, i)
		if err != nil {
			t.Fatalf("%v; attempts: %s", err, summarize(trace))
		}
		if len(trace) > 1 {
			t.Logf("write %d took %d attempts: %s", i, len(trace), summarize(trace))
		}
		if d := v.GetArtifact().GetDigest(); d != digest(i) {
			t.Fatalf("write %d acknowledged as version %d with digest %s, want %s", i, v.GetVersion(), d, digest(i))
		}
		if prev, dup := acked[v.GetVersion()]; dup {
			t.Fatalf("version %d acknowledged twice: %s and %s", v.GetVersion(), prev, digest(i))
		}
		acked[v.GetVersion()] = digest(i)
	}

	const before, during, after = 20, 20, 10
	i := 0
	for range before {
		write(c.Names(), i)
		i++
	}

	t.Logf("killing leader %s with SIGKILL at %s", leader, time.Now().Format("15:04:05.000"))
	killed := time.Now()
	c.Kill(leader)
	survivors := c.Live()
	for range during {
		write(survivors, i)
		i++
	}
	t.Logf("%d writes committed without %s, the first %v after the kill", during, leader, time.Since(killed))
	newLeader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if newLeader == leader {
		t.Fatalf("leader is still %s after it was killed", leader)
	}

	if err := c.Restart(leader); err != nil {
		t.Fatal(err)
	}
	for range after {
		write(c.Names(), i)
		i++
	}
	index, err := c.WaitConverged(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("all servers applied index %d; new leader %s", index, newLeader)

	// Each server answers from its own state: every acknowledged write
	// must be there, and all three must hold the same versions.
	var ref []*droverv1.ModelVersion
	for _, name := range c.Names() {
		res, err := c.StaleClient(name).Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: model}))
		if err != nil {
			t.Fatalf("list versions on %s: %v", name, err)
		}
		if got := res.Msg.GetMeta().GetServedBy(); got != name {
			t.Fatalf("stale read sent to %s was served by %s", name, got)
		}
		vs := res.Msg.GetVersions()
		byNumber := map[uint64]string{}
		for _, v := range vs {
			byNumber[v.GetVersion()] = v.GetArtifact().GetDigest()
		}
		for num, d := range acked {
			got, ok := byNumber[num]
			switch {
			case !ok:
				t.Errorf("%s lost acknowledged version %d (%s)", name, num, d)
			case got != d:
				t.Errorf("%s has version %d with digest %s, acknowledged as %s", name, num, got, d)
			}
		}
		if ref == nil {
			ref = vs
			continue
		}
		if len(vs) != len(ref) {
			t.Errorf("%s has %d versions, %s has %d", name, len(vs), c.Names()[0], len(ref))
			continue
		}
		for k := range vs {
			if vs[k].GetVersion() != ref[k].GetVersion() || vs[k].GetArtifact().GetDigest() != ref[k].GetArtifact().GetDigest() {
				t.Errorf("%s version #%d is %d/%s, %s has %d/%s", name, k, vs[k].GetVersion(), vs[k].GetArtifact().GetDigest(),
					c.Names()[0], ref[k].GetVersion(), ref[k].GetArtifact().GetDigest())
			}
		}
	}
	if len(ref) < len(acked) {
		t.Errorf("servers hold %d versions, fewer than the %d acknowledged", len(ref), len(acked))
	}
	t.Logf("%d writes acknowledged, %d versions on each server", len(acked), len(ref))
}

// TestKillAndRestartKeepData checks the harness itself on one server: a
// killed server is reported down, restarts on the same ports and data dir,
// and still holds what it acknowledged.
func TestKillAndRestartKeepData(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover and runs a real server process")
	}
	c := process.Start(t, 1, process.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	createModel(t, c, "s1", "kept")
	v, trace, err := writeUntilCommitted(ctx, c, []string{"s1"}, "kept", 0)
	if err != nil {
		t.Fatalf("%v; attempts: %s", err, summarize(trace))
	}
	c.Kill("s1")
	if c.Alive("s1") || len(c.Live()) != 0 {
		t.Fatalf("s1 still reported alive after Kill")
	}
	if err := c.Restart("s1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart("s1"); err == nil {
		t.Fatal("Restart of a running server succeeded")
	}
	// Until it has applied its log again, a restarted server answers from
	// an empty state (even "ACLs are not bootstrapped").
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.StaleClient("s1").Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "kept", Ref: "latest"}))
	if err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	if res.Msg.GetVersion().GetVersion() != v.GetVersion() || res.Msg.GetVersion().GetArtifact().GetDigest() != digest(0) {
		t.Fatalf("after restart latest is %v, want version %d with %s", res.Msg.GetVersion(), v.GetVersion(), digest(0))
	}
}
