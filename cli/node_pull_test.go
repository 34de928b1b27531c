package cli

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestNodePull(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)
	h.ok("model", "create", "llama")
	h.ok("model", "version", "create", "llama", "--digest", testDigest, "--size", "272629760")

	wantContains(t, h.ok("node", "pull", "gpu-01", "llama@1"), "Asked node gpu-01 to pull llama@1 ("+testDigest+"; index ")

	// node show has the request, and the agent's report once it made one.
	const mib = 1 << 20
	h.fake.mu.Lock()
	h.fake.pullReports = []*droverv1.NodePullStatus{{Phase: droverv1.PullPhase_PULL_PHASE_FETCHING, BytesDone: 117 * mib, BytesTotal: 260 * mib}}
	h.fake.mu.Unlock()
	show := squeeze(h.ok("node", "show", "gpu-01"))
	wantContains(t, show,
		"\nPull:\n",
		"Requested: llama@1 ("+testDigest+") by alice at ",
		"Status: llama@1 fetching 45% (117.0 MiB of 260.0 MiB), reported ")

	// --wait follows the pull until it is done.
	h.fake.mu.Lock()
	h.fake.pullReports = []*droverv1.NodePullStatus{
		{Phase: droverv1.PullPhase_PULL_PHASE_VERIFYING},
		{Phase: droverv1.PullPhase_PULL_PHASE_FETCHING, BytesDone: 26 * mib, BytesTotal: 260 * mib},
		{Phase: droverv1.PullPhase_PULL_PHASE_DONE, BytesDone: 260 * mib, BytesTotal: 260 * mib, BytesFromServers: 234 * mib},
	}
	h.fake.mu.Unlock()
	r := h.run("node", "pull", "gpu-01", "llama", "--wait")
	if r.code != 0 || r.stdout != "Node gpu-01 pulled llama@1: llama@1  done (260.0 MiB; fetched 234.0 MiB from servers, 0 B from peers)\n" {
		t.Errorf("node pull --wait: %+v", r)
	}
	wantContains(t, r.stderr, "llama@1  verifying the manifest\n", "llama@1  fetching 10% (26.0 MiB of 260.0 MiB)\n")

	// A failure exits 1 with the agent's reason.
	h.fake.mu.Lock()
	h.fake.pullReports = []*droverv1.NodePullStatus{{Phase: droverv1.PullPhase_PULL_PHASE_FAILED,
		Error: "pull llama@1: not enough free disk space: 260.0 MiB needed, 12.0 MiB free"}}
	h.fake.mu.Unlock()
	r = h.run("node", "pull", "gpu-01", "llama@1", "--wait")
	if r.code != exitError || !strings.Contains(r.stderr, "Error: node gpu-01 could not pull llama@1: pull llama@1: not enough free disk space") ||
		!strings.Contains(r.stderr, "Hint: fix the cause, then ask again with `drover node pull gpu-01 llama@1`") {
		t.Errorf("node pull --wait of a failing pull: %+v", r)
	}
	wantContains(t, squeeze(h.ok("node", "show", "gpu-01")), "Status: llama@1 failed: pull llama@1: not enough free disk space")

	// -o json with --wait prints the node as the pull ended.
	h.fake.mu.Lock()
	h.fake.pullReports = []*droverv1.NodePullStatus{{Phase: droverv1.PullPhase_PULL_PHASE_DONE, BytesDone: 5, BytesTotal: 5}}
	h.fake.mu.Unlock()
	var resp droverv1.GetNodeResponse
	js := h.ok("node", "pull", "gpu-01", "llama@1", "--wait", "-o", "json")
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil || resp.GetNode().GetPullStatus().GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE {
		t.Errorf("node pull --wait -o json: %v\n%s", err, js)
	}

	for _, args := range [][]string{{"node", "pull", "gpu-01"}, {"node", "pull", "gpu-01", "llama@"}} {
		if r := h.run(args...); r.code != exitUsage {
			t.Errorf("%v: %+v, want a usage error", args, r)
		}
	}
	if r := h.run("node", "pull", "gpu-01", "llama@9"); r.code != exitError || !strings.Contains(r.stderr, "not found") {
		t.Errorf("pull of an unknown version: %+v", r)
	}
}
