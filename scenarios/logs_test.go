package scenarios

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/cli"
	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

// TestLogsFromAnywhere reads a model server's output with `drover logs`
// through a server that is not the leader (three servers; one in the
// short tier): the server's stdout and stderr come back apart, --tail
// cuts them, -f shows the lines a request makes the server print and
// stops at once when the reader goes; an unknown node, a deployment that
// does not run on the node and a node that is down are each refused
// with an error that says so.
func TestLogsFromAnywhere(t *testing.T) {
	servers := 3
	if testing.Short() {
		servers = 1
	}
	c := cluster.Make(t, servers, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(time.Second)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fleet := startReady(ctx, t, c, 1, cluster.AgentOptions{Prefix: "edge"})
	a := fleet[0]
	createModel(t, c.Client(c.Leader(), false), "web")
	setCLIEnv(t, c)
	addr := c.Nodes()[0].APIAddr()
	for _, n := range c.Nodes() {
		if n != c.Leader() {
			addr = n.APIAddr() // asked through a follower, answered by the leader
			break
		}
	}
	pushFiles(ctx, t, addr, "web", map[string]string{"page.txt": "one"})
	spec := func(name, selector string) string {
		return fmt.Sprintf(`name: %s
model: web@prod
%sruntime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
strategy:
  min_healthy_time: 0s
`, name, selector, os.Args[0], modelServerEnv)
	}
	for _, s := range []string{spec("web", ""), spec("elsewhere", "selector:\n  labels: {role: none}\n")} {
		if out, errOut, code := drover(ctx, addr, "deploy", "apply", "-f", deployFile(t, s)); code != 0 {
			t.Fatalf("deploy apply: exit %d\n%s%s", code, out, errOut)
		}
	}
	waitServing(ctx, t, fleet, "web", "one")

	out, errOut, code := drover(ctx, addr, "logs", a.Name, "web")
	if code != 0 || !strings.Contains(out, "model server listening on") || !strings.Contains(out, "GET /v1/page.txt\n") ||
		errOut != "model server: no GPU, running on CPU\n" {
		t.Fatalf("logs: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if _, err := infer(ctx, a, "web", "page.txt"); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = drover(ctx, addr, "logs", a.NodeID(), "web", "--tail", "1")
	if code != 0 || out != "GET /v1/page.txt\n" || errOut != "model server: no GPU, running on CPU\n" {
		t.Errorf("logs --tail 1: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// -f shows what the server prints from now on, until the reader goes.
	var follow lockedBuffer
	fctx, stopFollow := context.WithCancel(ctx)
	followed := make(chan int, 1)
	go func() {
		var e bytes.Buffer
		followed <- cli.Main(fctx, []string{"--address", "https://" + addr, "logs", a.Name, "web", "-f", "--tail", "1"}, strings.NewReader(""), &follow, &e)
	}()
	waitFor(ctx, t, "the tail of a follow", func() bool { return follow.String() == "GET /v1/page.txt\n" })
	if _, err := infer(ctx, a, "web", "nothing-here"); err != nil && !strings.Contains(err.Error(), "404") {
		t.Fatal(err)
	}
	waitFor(ctx, t, "a followed line", func() bool { return strings.HasSuffix(follow.String(), "GET /v1/nothing-here\n") })
	stopFollow()
	select {
	case code := <-followed:
		if code != 0 {
			t.Errorf("logs -f ended with exit %d when interrupted", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("logs -f did not end within 10s of its context")
	}

	for _, tc := range []struct {
		what       string
		node, dep  string
		want, hint string
	}{
		{"an unknown node", "nope", "web", `node "nope" not found`, "drover node ls"},
		{"an unknown deployment", a.Name, "nosuch", `deployment "nosuch" not found`, "drover deploy ls"},
		{"a deployment not on the node", a.Name, "elsewhere", "deployment elsewhere does not run on this node", "drover deploy show elsewhere"},
	} {
		_, errOut, code := drover(ctx, addr, "logs", tc.node, tc.dep)
		if code == 0 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, tc.hint) {
			t.Errorf("logs of %s: exit %d\n%s", tc.what, code, errOut)
		}
	}

	// A node that is down cannot send what it keeps.
	a.Partition()
	if _, err := c.WaitNodes(ctx, droverv1.NodeStatus_NODE_STATUS_DOWN, a.NodeID()); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = drover(ctx, addr, "logs", a.Name, "web")
	if code == 0 || !strings.Contains(errOut, "is down") || !strings.Contains(errOut, "only its agent can send them") {
		t.Errorf("logs of a node that is down: exit %d\n%s", code, errOut)
	}
	a.Heal()
}

// lockedBuffer is a bytes.Buffer safe for one writer and many readers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond until it holds, failing the test when ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waited in vain for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
