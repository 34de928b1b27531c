//go:build docker

package container

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// TestLeaderKilled kills the leader's container three times under a
// concurrent workload. Each time another server must take over and accept
// writes within failoverBound, and the killed server, started again, must
// catch up. At the end the history must be linearizable and every
// acknowledged version present, with its number, on every server.
func TestLeaderKilled(t *testing.T) {
	c := needCluster(t)
	ctx := testContext(t)
	t.Cleanup(func() { c.restore(t) })

	w := startWorkload(ctx, t, c, fmt.Sprintf("leader-killed-%d", time.Now().Unix()))
	t.Cleanup(w.stopWorkers)
	sleep(ctx, 3*time.Second)
	probe := w.client()

	for round := 1; round <= 3; round++ {
		leader, err := c.waitLeader(ctx, failoverBound)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		victim := c.server(leader)
		w.avoid(victim.name, true)
		killed := time.Now()
		mustDocker(ctx, t, "kill", victim.container)

		next, err := c.waitLeader(ctx, failoverBound, victim.name)
		if err != nil {
			t.Fatalf("round %d: after killing %s: %v", round, victim.name, err)
		}
		elected := time.Since(killed)
		left := failoverBound - time.Since(killed)
		if left <= 0 {
			t.Fatalf("round %d: %s took over %s after the kill, more than %s", round, next, elected, failoverBound)
		}
		res, errs, err := w.writeUntilAccepted(ctx, probe, c.others(victim.name), fmt.Sprintf("probe-r%d", round), left)
		if err != nil {
			t.Fatalf("round %d: no write accepted within %s of killing leader %s: %v; errors: %v",
				round, failoverBound, victim.name, err, errs)
		}
		t.Logf("round %d: killed leader %s; %s leads after %s; writes accepted again after %s (version %d, %d refused on the way)",
			round, victim.name, next, elected.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond),
			res.GetVersion().GetVersion(), len(errs))

		sleep(ctx, 2*time.Second) // the workload runs on two servers
		if ack := w.lastAck(); ack.Before(killed) {
			t.Errorf("round %d: no worker had a write acknowledged since the kill", round)
		}

		mustDocker(ctx, t, "start", victim.container)
		started := time.Now()
		if err := c.waitCaughtUp(ctx, victim, catchUpBound); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		t.Logf("round %d: %s restarted and caught up in %s", round, victim.name, time.Since(started).Round(time.Millisecond))
		w.avoid(victim.name, false)
		sleep(ctx, 2*time.Second)
	}

	w.finish(ctx)
}
