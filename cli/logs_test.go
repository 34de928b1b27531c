package cli

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// ReadLogs answers deployment "web" on any known node with a line on
// each stream, and anything else as the server does a deployment that
// does not serve on the node.
func (f *fakeServer) ReadLogs(_ context.Context, req *connect.Request[droverv1.ReadLogsRequest], out *connect.ServerStream[droverv1.ReadLogsResponse]) error {
	f.mu.Lock()
	n, err := f.nodeLocked(req.Msg.GetNode())
	f.lastReadLogs = req.Msg
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if req.Msg.GetDeployment() != "web" {
		return apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"\"drover deploy show "+req.Msg.GetDeployment()+"\" lists the nodes it runs on",
			"node %s: deployment %s does not run on this node: no logs", n.GetName(), req.Msg.GetDeployment())
	}
	for _, d := range []*droverv1.LogData{
		{Stream: "stdout", Data: []byte("serving on :8080\n")},
		{Stream: "stderr", Data: []byte("warning: no GPU\n")},
		{Stream: "stdout", Data: []byte("GET /v1/health 200\n")},
	} {
		if err := out.Send(&droverv1.ReadLogsResponse{Data: d}); err != nil {
			return err
		}
	}
	return nil
}

func TestLogs(t *testing.T) {
	t.Parallel()
	h := newNodeHarness(t)

	// Each stream goes where the model server wrote it.
	r := h.run("logs", "gpu-01", "web", "--tail", "20", "-f")
	if r.code != 0 || r.stdout != "serving on :8080\nGET /v1/health 200\n" || r.stderr != "warning: no GPU\n" {
		t.Errorf("logs: %+v", r)
	}
	h.fake.mu.Lock()
	got := h.fake.lastReadLogs
	h.fake.mu.Unlock()
	if got.GetNode() != "gpu-01" || got.GetDeployment() != "web" || got.GetTailLines() != 20 || !got.GetFollow() {
		t.Errorf("request sent: %v", got)
	}

	// The server's refusals reach the user with their hints.
	r = h.run("logs", "gpu-01", "other")
	if r.code == 0 || !strings.Contains(r.stderr, "deployment other does not run on this node") ||
		!strings.Contains(r.stderr, "drover deploy show other") {
		t.Errorf("logs of a deployment not on the node: %+v", r)
	}
	r = h.run("logs", "nope", "web")
	if r.code == 0 || !strings.Contains(r.stderr, `node "nope" not found`) {
		t.Errorf("logs of an unknown node: %+v", r)
	}
	r = h.run("logs", "gpu-01")
	if r.code != exitUsage || !strings.Contains(r.stderr, "DEPLOYMENT") {
		t.Errorf("logs without a deployment: %+v", r)
	}
}
