package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// rolloutHarness has deployment defect-detector at rollout 2 (version 7 →
// 8), batch 0 (canary, one node) done and batch 1 under way, on three
// nodes, one of them not yet in a batch.
func rolloutHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.ok("deploy", "apply", "-f", writeDeployFile(t, h, strings.Replace(testDeployFile, "defect-detector@prod", "defect-detector@7", 1)))
	h.ok("deploy", "apply", "-f", writeDeployFile(t, h, strings.Replace(testDeployFile, "defect-detector@prod", "defect-detector@8", 1)))
	f := h.fake
	f.mu.Lock()
	defer f.mu.Unlock()
	started := timestamppb.New(testNow.Add(-10 * time.Minute))
	r := f.deploys.rollouts["defect-detector"]
	r.CreateTime, r.CreatedBy = started, "alice"
	r.Batches = []*droverv1.RolloutBatch{
		{NodeIds: []string{"n-1"}, Canary: true, StartTime: started, DoneTime: timestamppb.New(testNow.Add(-5 * time.Minute))},
		{NodeIds: []string{"n-2"}, StartTime: timestamppb.New(testNow.Add(-time.Minute))},
	}
	f.rollouts.older = []*droverv1.Rollout{{Deployment: "defect-detector", Id: 1, ToVersion: 7,
		State: droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED, Reason: "apply revision 1", EndReason: "superseded by rollout 2",
		CreatedBy: "alice", CreateTime: timestamppb.New(testNow.Add(-time.Hour)), EndTime: started}}
	f.rollouts.nodes["defect-detector"] = []*droverv1.DeploymentNode{
		{NodeId: "n-1", NodeName: "cam-1", Site: "berlin", Assignment: &droverv1.Assignment{Version: 8},
			Status: &droverv1.InstanceStatus{Version: 8, State: droverv1.InstanceState_INSTANCE_STATE_HEALTHY, Since: timestamppb.New(testNow.Add(-4 * time.Minute))}},
		{NodeId: "n-2", NodeName: "cam-2", Site: "berlin", Assignment: &droverv1.Assignment{Version: 8},
			Status: &droverv1.InstanceStatus{Version: 7, State: droverv1.InstanceState_INSTANCE_STATE_PULLING, Reason: "3 of 9 chunks", Since: timestamppb.New(testNow.Add(-30 * time.Second))}},
		{NodeId: "n-3", NodeName: "cam-3", Site: "munich", Assignment: &droverv1.Assignment{Version: 7}},
	}
	f.rollouts.waiting = "batch 1: waiting for n-2 (PULLING on version 7)"
	return h
}

func TestRolloutStatus(t *testing.T) {
	h := rolloutHarness(t)
	out := h.ok("rollout", "status", "defect-detector")
	t.Log("\n" + out)
	wantContains(t, squeeze(out),
		"Rollout: #2 progressing", "Versions: version 7 → version 8", "Started: ", "by alice",
		"Progress: batch 2/3 (batch 2: 1 node, in progress)",
		"Waiting: batch 1: waiting for n-2 (PULLING on version 7)",
		"NODE SITE BATCH VERSION STATE SINCE",
		"cam-1 berlin 1 8 healthy 4m",
		"cam-2 berlin 2 7 (assigned 8) pulling: 3 of 9 chunks 30s",
		"cam-3 munich - - (assigned 7) no report -")

	out = h.ok("rollout", "status", "defect-detector", "-o", "json")
	var got droverv1.GetRolloutResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || got.GetRollout().GetId() != 2 || len(got.GetNodes()) != 3 {
		t.Errorf("status -o json: %v %v", got.GetRollout(), err)
	}
	out = h.ok("rollout", "status", "defect-detector", "--id", "1")
	wantContains(t, squeeze(out), "Rollout: #1 superseded", "Versions: nothing → version 7", "Progress: 0 batches, 0 nodes", "superseded by rollout 2")

	r := h.run("rollout", "status", "no-such")
	if r.code == 0 || !strings.Contains(r.stderr, `deployment "no-such" not found`) {
		t.Errorf("status of a missing deployment: exit %d\n%s", r.code, r.stderr)
	}
	r = h.run("rollout", "status")
	if r.code == 0 || !strings.Contains(r.stderr, "missing NAME") {
		t.Errorf("status without a name: exit %d\n%s", r.code, r.stderr)
	}
}

func TestRolloutStatusWatch(t *testing.T) {
	h := rolloutHarness(t)
	// The controller finishes the batch after the second look and the
	// rollout after the third; watch prints each change and stops.
	h.fake.rollouts.step = func(gets int, r *droverv1.Rollout) {
		switch gets {
		case 2:
			r.Batches[1].DoneTime = timestamppb.New(testNow)
		case 3:
			r.State = droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED
			r.EndReason = "version 8 on 2 nodes in 2 batches"
			r.EndTime = timestamppb.New(testNow)
		}
	}
	out := h.ok("rollout", "status", "defect-detector", "--watch")
	t.Log("\n" + out)
	if n := strings.Count(out, "Deployment:"); n < 3 {
		t.Errorf("watch printed %d statuses, want one per change (3)", n)
	}
	wantContains(t, squeeze(out), "Progress: batch 2/3 (batch 2: 1 node, in progress)", "Rollout: #2 succeeded", "Progress: 2 batches, 2 nodes")
	if r := h.run("rollout", "status", "defect-detector", "--watch", "-o", "json"); r.code == 0 {
		t.Errorf("--watch -o json accepted")
	}
}

func TestRolloutActions(t *testing.T) {
	h := rolloutHarness(t)
	out := h.ok("rollout", "pause", "defect-detector", "--reason", "firmware update")
	wantContains(t, out, "Paused rollout 2 of defect-detector: now paused", "drover rollout status defect-detector --watch")
	r := h.run("rollout", "pause", "defect-detector")
	if r.code == 0 || !strings.Contains(r.stderr, "rollout 2 of defect-detector is PAUSED") {
		t.Errorf("second pause: exit %d\n%s", r.code, r.stderr)
	}
	r = h.run("rollout", "promote", "defect-detector")
	if r.code == 0 || !strings.Contains(r.stderr, "not allowed") {
		t.Errorf("promote of a paused rollout: exit %d\n%s", r.code, r.stderr)
	}
	wantContains(t, h.ok("rollout", "resume", "defect-detector"), "Resumed rollout 2 of defect-detector: now progressing")

	out = h.ok("rollout", "rollback", "defect-detector", "--reason", "false positives")
	wantContains(t, out, "Started rollout 3 of defect-detector: version 8 → 7 (rollback of rollout 2: false positives)")

	out = h.ok("rollout", "history", "defect-detector")
	t.Log("\n" + out)
	lines := strings.Split(strings.TrimSpace(squeeze(out)), "\n")
	if len(lines) != 4 {
		t.Fatalf("history has %d lines, want a header and 3 rollouts", len(lines))
	}
	wantContains(t, lines[0], "ID FROM TO STATE STARTED ENDED BY REASON")
	wantContains(t, lines[1], "1 0 7 superseded 1h 10m alice apply revision 1; superseded by rollout 2")
	wantContains(t, lines[3], "3 8 7 progressing")
	out = h.ok("rollout", "history")
	wantContains(t, squeeze(out), "DEPLOYMENT ID FROM TO", "defect-detector 2 7 8 superseded")
	out = h.ok("rollout", "history", "-o", "json")
	var got droverv1.ListRolloutsResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || len(got.GetRollouts()) != 3 {
		t.Errorf("history -o json: %v %v", got.GetRollouts(), err)
	}
	if r := h.run("rollout", "history", "a", "b"); r.code == 0 || !strings.Contains(r.stderr, `unexpected argument "b"`) {
		t.Errorf("history a b: exit %d\n%s", r.code, r.stderr)
	}
}

func TestRolloutHelp(t *testing.T) {
	h := newHarness(t)
	out := h.ok("rollout", "--help")
	wantContains(t, out, "max_unavailable_per_site", "drover rollout status defect-detector --watch", "drover rollout history")
	for _, verb := range []string{"status", "pause", "resume", "promote", "rollback", "history"} {
		if !strings.Contains(h.ok("rollout", verb, "--help"), "drover rollout "+verb) {
			t.Errorf("rollout %s --help has no example", verb)
		}
	}
}
