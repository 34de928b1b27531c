//go:build docker

package container

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// minorityAlias is the alias only writes to a cut-off server try to set.
const minorityAlias = "minority"

// TestMinorityPartition cuts one server off from the other two, first a
// follower and then the leader, under a concurrent workload. The cut-off
// server must refuse writes for want of a leader and say that a quorum is
// missing, while the other two keep accepting writes. Reconnected, it must
// catch up; at the end every server holds the same state, none of the
// writes sent to the cut-off side is in it, and the history is
// linearizable.
func TestMinorityPartition(t *testing.T) {
	c := needCluster(t)
	ctx := testContext(t)
	t.Cleanup(func() { c.restore(t) })

	w := startWorkload(ctx, t, c, fmt.Sprintf("minority-partition-%d", time.Now().Unix()))
	t.Cleanup(w.stopWorkers)
	sleep(ctx, 3*time.Second) // versions to point aliases at
	probe := w.client()
	var minorityTags []string

	for _, round := range []string{"follower", "leader"} {
		leader, err := c.waitLeader(ctx, failoverBound)
		if err != nil {
			t.Fatalf("%s round: %v", round, err)
		}
		victim := c.server(leader)
		if round == "follower" {
			victim = c.others(leader)[0]
		}
		majority := c.others(victim.name)

		mustDocker(ctx, t, "network", "disconnect", c.network, victim.container)
		cut := time.Now()
		if round == "leader" {
			next, err := c.waitLeader(ctx, failoverBound, victim.name)
			if err != nil {
				t.Fatalf("%s round: the majority did not elect a leader: %v", round, err)
			}
			t.Logf("%s round: %s leads the majority after %s", round, next, time.Since(cut).Round(time.Millisecond))
		}
		if err := c.waitNoLeader(ctx, victim, failoverBound); err != nil {
			t.Fatalf("%s round: %v", round, err)
		}
		t.Logf("%s round: cut off %s; it knows no leader after %s", round, victim.name, time.Since(cut).Round(time.Millisecond))

		// Writes sent to the cut-off server are refused.
		a := c.client(victim, false)
		for i := range 3 {
			tag := fmt.Sprintf("minority-%s-%d", round, i)
			minorityTags = append(minorityTags, tag)
			_, err := w.create(probe, a, tag, "minority")
			checkMinorityRefusal(t, fmt.Sprintf("create %s through %s", tag, victim.name), err)
		}
		_, err = w.setAlias(probe, a, minorityAlias, 1)
		checkMinorityRefusal(t, fmt.Sprintf("set alias %s through %s", minorityAlias, victim.name), err)

		// The majority keeps accepting them.
		left := failoverBound - time.Since(cut)
		if _, errs, err := w.writeUntilAccepted(ctx, probe, majority, "majority-"+round, max(left, time.Second)); err != nil {
			t.Fatalf("%s round: the majority accepted no write within %s of the cut: %v; errors: %v", round, failoverBound, err, errs)
		}
		for i, s := range majority {
			tag := fmt.Sprintf("majority-%s-each-%d", round, i)
			if _, err := w.create(probe, c.client(s, false), tag, ""); err != nil {
				t.Errorf("%s round: create %s through %s on the majority side: %s", round, tag, s.name, errorSummary(err))
			}
		}
		t.Logf("%s round: the majority accepts writes %s after the cut", round, time.Since(cut).Round(time.Millisecond))
		sleep(ctx, 2*time.Second)

		mustDocker(ctx, t, "network", "connect", "--ip", victim.clusterIP, c.network, victim.container)
		healed := time.Now()
		if err := c.waitCaughtUp(ctx, victim, catchUpBound); err != nil {
			t.Fatalf("%s round: %v", round, err)
		}
		t.Logf("%s round: %s reconnected and caught up in %s", round, victim.name, time.Since(healed).Round(time.Millisecond))
		sleep(ctx, 2*time.Second)
	}

	fs := w.finish(ctx)
	for _, v := range fs.versions {
		if v.GetTags()[tagSide] == "minority" {
			t.Errorf("version %d, written to a cut-off server (%s), is in the final state", v.GetVersion(), v.GetTags()[tagOp])
		}
	}
	for _, tag := range minorityTags {
		if v, ok := fs.byTag[tag]; ok {
			t.Errorf("create %s, refused by a cut-off server, took effect as version %d", tag, v.GetVersion())
		}
	}
	if v, ok := fs.model.GetAliases()[minorityAlias]; ok {
		t.Errorf("alias %s, set only through cut-off servers, points to version %d", minorityAlias, v)
	}
}

// checkMinorityRefusal requires err to be a cut-off server's refusal:
// Unavailable with reason NO_LEADER, saying a quorum is missing.
func checkMinorityRefusal(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded; a server cut off from the majority must refuse writes", what)
		return
	}
	var ce *connect.Error
	if !isNoLeader(err) || !errors.As(err, &ce) {
		t.Errorf("%s: got %s, want code unavailable with reason NO_LEADER", what, errorSummary(err))
		return
	}
	if !strings.Contains(ce.Message(), "quorum") {
		t.Errorf("%s: the refusal %q does not mention the missing quorum", what, ce.Message())
		return
	}
	t.Logf("%s refused as expected: %s", what, errorSummary(err))
}
