package process_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/process"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchModelServerEnv) != "" {
		os.Exit(serveBenchModel())
	}
	code := m.Run()
	process.RemoveBuild()
	os.Exit(code)
}

// attemptTimeout bounds one write attempt while a leader is being
// replaced: long enough for a healthy commit, short enough to move on from
// a server that cannot answer.
const attemptTimeout = 500 * time.Millisecond

// digest is the artifact digest of the i-th write, so every acknowledged
// version can be recognised on every server.
func digest(i int) string { return fmt.Sprintf("sha256:%064x", i+1) }

func versionRequest(model string, i int) *droverv1.CreateVersionRequest {
	return &droverv1.CreateVersionRequest{
		Model:    model,
		Artifact: &droverv1.ArtifactManifest{Digest: digest(i), SizeBytes: uint64(1000 + i), Format: "onnx"},
	}
}

func createModel(tb testing.TB, c *process.Cluster, via, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Client(via).Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: name})); err != nil {
		tb.Fatalf("create model %s through %s: %v", name, via, err)
	}
}

// attempt is one try of a write while waiting for it to commit.
type attempt struct {
	at     time.Duration // since the write began
	took   time.Duration
	server string
	err    error
}

// outcome says briefly how an attempt ended. It reads the message text,
// which clients must never branch on; it only labels traces for people,
// and nothing is decided by it but the "noticed" statistic.
func (a attempt) outcome() string {
	if a.err == nil {
		return "ok"
	}
	code := connect.CodeOf(a.err)
	msg := a.err.Error()
	switch {
	case strings.Contains(msg, "cannot reach the leader"), strings.Contains(msg, "is unreachable"):
		return code.String() + "/leader-unreachable"
	case strings.Contains(msg, "not the leader"):
		return code.String() + "/not-leader"
	case strings.Contains(msg, "no leader "):
		return code.String() + "/no-leader"
	case strings.Contains(msg, "leadership lost"):
		return code.String() + "/leadership-lost"
	case errors.Is(a.err, context.DeadlineExceeded) || code == connect.CodeDeadlineExceeded:
		return "timeout"
	case strings.Contains(msg, "connection refused"):
		return code.String() + "/refused"
	}
	return code.String()
}

// writeUntilCommitted creates version i of model, trying the servers in
// turn, each attempt bounded by attemptTimeout, until one attempt is
// acknowledged or ctx ends. An attempt that failed may still have been
// committed, so the model can gain extra versions with this digest; the
// acknowledged one is returned.
func writeUntilCommitted(ctx context.Context, c *process.Cluster, servers []string, model string, i int) (*droverv1.ModelVersion, []attempt, error) {
	start := time.Now()
	var trace []attempt
	for k := 0; ; k++ {
		name := servers[k%len(servers)]
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		t0 := time.Now()
		res, err := c.Client(name).Models.CreateVersion(actx, connect.NewRequest(versionRequest(model, i)))
		cancel()
		a := attempt{at: t0.Sub(start), took: time.Since(t0), server: name, err: err}
		trace = append(trace, a)
		if err == nil {
			return res.Msg.GetVersion(), trace, nil
		}
		if ctx.Err() != nil {
			return nil, trace, fmt.Errorf("write %d not committed after %d attempts: %w (last: %v)", i, len(trace), ctx.Err(), err)
		}
		// A refusal comes back at once; pause briefly so the retries do
		// not take the CPU the election needs.
		if a.took < 20*time.Millisecond {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// summarize folds a trace into runs of equal outcomes per server, e.g.
// "0ms s2 Unavailable/leader-unreachable ×12 … 912ms s3 ok".
func summarize(trace []attempt) string {
	var b strings.Builder
	for i := 0; i < len(trace); {
		j := i
		for j < len(trace) && trace[j].server == trace[i].server && trace[j].outcome() == trace[i].outcome() {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%dms %s %s", trace[i].at.Milliseconds(), trace[i].server, trace[i].outcome())
		if j-i > 1 {
			fmt.Fprintf(&b, " ×%d", j-i)
		}
		i = j
	}
	return b.String()
}

// others lists the names in all except skip.
func others(all []string, skip string) []string {
	return slices.DeleteFunc(slices.Clone(all), func(n string) bool { return n == skip })
}

// quantile returns the q-quantile (nearest rank) of sorted samples.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
