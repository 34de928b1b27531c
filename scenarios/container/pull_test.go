//go:build docker

package container

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/cli"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	// pullAgents is how many agents the pull scenario starts, in the two
	// sites agentSite deals them into.
	pullAgents = 6
	// pullModelSize is the size of the version they pull, one file of
	// random bytes, so no chunk repeats and the servers cannot dedupe it.
	pullModelSize = 32 << 20
	// pullBandwidth caps each agent's pull (bytes per second, from all
	// its sources together), so that a pull takes at least
	// pullModelSize/pullBandwidth (16 s) however fast the machine is and
	// the server kill lands in the middle of it.
	pullBandwidth = 2 << 20
	// pullBound is how long every node may take, from the request, to
	// report the version DONE: the capped transfer (16 s), a leader
	// election, chunk calls to the killed server each waiting out their
	// bound (fetch.ServerSource: 46 s for a 1 MiB chunk), possibly one
	// after another where a site peer fetched for others, a failed
	// attempt's retry and a slow machine. Runs here took 55 s to 100 s.
	pullBound = 4 * time.Minute
	// pullStartedBound is how long after the requests some node may take
	// to report fetching.
	pullStartedBound = time.Minute
	// pushBound bounds the push of the version from the test.
	pushBound = 2 * time.Minute
)

// TestAgentsPullDuringServerKill pushes a 32 MiB version with `drover model
// push`, starts six agents in containers in two sites, asks every node to
// pull it, and kills the leader's container once the nodes are fetching
// (each agent capped at 2 MiB/s, so the pulls last well beyond the kill).
// Every node must then report the pull DONE to the new leader, and every
// agent's copy must be the pushed bytes, of the artifact digest the
// version was pushed with. The servers' chunk egress to the agents and
// the bytes the agents got from site peers are logged: peers must have
// served some, which they only can when agents in containers reach each
// other's peer port.
func TestAgentsPullDuringServerKill(t *testing.T) {
	c := needCluster(t)
	image := os.Getenv(envAgentImage)
	if image == "" {
		t.Skipf("%s is not set: run deploy/docker/scenarios.sh, which builds the agent image", envAgentImage)
	}
	ctx := testContext(t)
	t.Cleanup(func() { c.restore(t) })
	run := time.Now().Unix()
	model := fmt.Sprintf("pull-scenario-%d", run)

	// The version, pushed from here as an operator would.
	tree := t.TempDir()
	want := make([]byte, pullModelSize)
	if _, err := rand.Read(want); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "model.bin"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	wantDigest := manifestDigest(ctx, t, tree, model)
	// A push needs its chunks on a quorum of servers, which the server
	// taking the upload finds through gossip: after an earlier scenario
	// cut a server off or killed it, wait until gossip has it back.
	if err := c.waitGossipAlive(ctx, catchUpBound); err != nil {
		t.Fatal(err)
	}
	c.createModel(ctx, t, model)
	pushStart := time.Now()
	pushed := c.push(ctx, t, tree, model)
	version := pushed.GetVersion().GetVersion()
	if got := pushed.GetVersion().GetArtifact().GetDigest(); got != wantDigest {
		t.Fatalf("pushed %s@%d has artifact digest %s; its manifest's SHA-256 is %s", model, version, got, wantDigest)
	}
	t.Logf("pushed %s@%d (%d MiB, %s) in %s, stored on %v", model, version, pullModelSize>>20, wantDigest,
		time.Since(pushStart).Round(time.Millisecond), pushed.GetDurableOn())

	agents := c.newAgents("puller", pullAgents, run)
	w := watchNodes(ctx, c)
	t.Cleanup(w.stop)
	token := c.createJoinToken(ctx, t, len(agents), run)
	c.startAgents(ctx, t, image, token.GetTokenString(), agents, "--pull-bandwidth", strconv.Itoa(pullBandwidth))
	started := time.Now()
	if _, err := waitAgentsReady(ctx, w, agents, agentReadyBound); err != nil {
		t.Fatalf("agents did not enroll: %v", err)
	}
	w.stop()
	t.Logf("all %d agents READY %s after the last docker run", len(agents), time.Since(started).Round(time.Millisecond))

	before := c.servedToAgents(ctx, t, c.servers)
	leader, err := c.waitLeader(ctx, failoverBound)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.server(leader)
	requested := time.Now()
	for _, a := range agents {
		res := leaderCall(ctx, t, c, "pull "+model+" onto "+a.name, func(ctx context.Context, cl *api) (*connect.Response[droverv1.PullVersionResponse], error) {
			return cl.node.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{
				Node: a.id, Model: model, Ref: strconv.FormatUint(version, 10),
			}))
		})
		if p := res.Msg.GetPull(); p.GetVersion() != version || p.GetArtifactDigest() != wantDigest {
			t.Fatalf("pull onto %s recorded as %s@%d (%s), want %s@%d (%s)",
				a.name, p.GetModel(), p.GetVersion(), p.GetArtifactDigest(), model, version, wantDigest)
		}
	}

	// Kill the leader once some node says it is fetching, and note what
	// every node had reported by then: the kill must land mid-pull.
	var atKill map[string]*droverv1.NodePullStatus
	var lastErr error
	err = poll(ctx, pullStartedBound, func(ctx context.Context, _ int) (bool, error) {
		if atKill, lastErr = c.pullStatuses(ctx, agents); lastErr != nil {
			return false, nil
		}
		for _, st := range atKill {
			if st.GetVersion() == version && st.GetBytesDone() > 0 {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no node reported fetching %s@%d within %s of the requests: %v (last error: %v)", model, version, pullStartedBound, err, lastErr)
	}
	killed := time.Now()
	mustDocker(ctx, t, "kill", victim.container)
	done := 0
	for _, a := range agents {
		st := atKill[a.id]
		t.Logf("at the kill, %s: %s, %d of %d bytes", a.name, st.GetPhase(), st.GetBytesDone(), st.GetBytesTotal())
		if st.GetPhase() == droverv1.PullPhase_PULL_PHASE_DONE {
			done++
		}
	}
	if done == len(agents) {
		t.Fatalf("every node had pulled %s@%d before leader %s was killed, %s after the requests: the kill did not land mid-pull",
			model, version, victim.name, killed.Sub(requested).Round(time.Millisecond))
	}
	t.Logf("killed leader %s %s after the pull requests, %d of %d nodes done",
		victim.name, killed.Sub(requested).Round(time.Millisecond), done, len(agents))
	next, err := c.waitLeader(ctx, failoverBound, victim.name)
	if err != nil {
		t.Fatalf("after killing %s: %v", victim.name, err)
	}
	t.Logf("%s leads %s after the kill", next, time.Since(killed).Round(time.Millisecond))

	// Every node DONE, as the leader of the moment says; a failed attempt
	// on the way (the agent tries again) is logged, not a failure.
	failures := map[string]string{}
	var final map[string]*droverv1.NodePullStatus
	var pending []string
	err = poll(ctx, pullBound-time.Since(requested), func(ctx context.Context, _ int) (bool, error) {
		now, err := c.pullStatuses(ctx, agents)
		if err != nil {
			lastErr = err
			return false, nil
		}
		final, lastErr = now, nil
		pending = pending[:0]
		for _, a := range agents {
			st := final[a.id]
			if st.GetPhase() == droverv1.PullPhase_PULL_PHASE_FAILED && failures[a.name] != st.GetError() {
				failures[a.name] = st.GetError()
				t.Logf("%s reports a failed attempt (the agent tries again): %s", a.name, st.GetError())
			}
			if st.GetPhase() != droverv1.PullPhase_PULL_PHASE_DONE || st.GetVersion() != version {
				pending = append(pending, fmt.Sprintf("%s (%s@%d %s, %d of %d bytes)",
					a.name, st.GetModel(), st.GetVersion(), st.GetPhase(), st.GetBytesDone(), st.GetBytesTotal()))
			}
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		t.Fatalf("%d of %d nodes did not report %s@%d DONE within %s of the requests: %s: %v (last error: %v)",
			len(pending), len(agents), model, version, pullBound, strings.Join(pending, ", "), err, lastErr)
	}
	took := time.Since(requested)

	var fromServers, fromPeers uint64
	for _, a := range agents {
		st := final[a.id]
		fromServers += st.GetBytesFromServers()
		fromPeers += st.GetBytesFromPeers()
		t.Logf("%s (%s): DONE, %d bytes, %d from servers, %d from site peers",
			a.name, agentSite(indexOf(agents, a)), st.GetBytesTotal(), st.GetBytesFromServers(), st.GetBytesFromPeers())
	}
	live := c.others(victim.name)
	egress := c.servedToAgents(ctx, t, live) - before
	t.Logf("%d agents pulled %d MiB each in %s (capped at %d MiB/s each); the live servers %v sent the agents %.1f MiB (%.2fx the version; %s's share before it died is not counted); "+
		"the agents report %.1f MiB from servers and %.1f MiB from site peers",
		len(agents), pullModelSize>>20, took.Round(time.Millisecond), pullBandwidth>>20, c.names(live),
		egress/(1<<20), egress/pullModelSize, victim.name, float64(fromServers)/(1<<20), float64(fromPeers)/(1<<20))
	if fromPeers == 0 {
		t.Errorf("no agent got a byte from a site peer: agents in containers do not reach each other's peer port")
	}

	// Every agent's copy is the pushed bytes, of the version asked for.
	wantSum := sha256.Sum256(want)
	for _, a := range agents {
		nd := c.getNode(ctx, t, a.id)
		if rp := nd.GetRequestedPull(); rp.GetArtifactDigest() != wantDigest || rp.GetVersion() != version {
			t.Errorf("%s's requested pull is %s@%d (%s), want %s@%d (%s)",
				a.name, rp.GetModel(), rp.GetVersion(), rp.GetArtifactDigest(), model, version, wantDigest)
		}
		file := path.Join(agentDataDir, "versions", model, strconv.FormatUint(version, 10), "model.bin")
		sum, n, err := containerFileSum(ctx, a.container, file)
		if err != nil {
			t.Errorf("%s: %v", a.name, err)
			continue
		}
		if sum != wantSum {
			t.Errorf("%s's %s: %d bytes of SHA-256 %x, not the %d pushed (%x)", a.name, file, n, sum, len(want), wantSum)
		}
	}
}

func indexOf(agents []*agent, a *agent) int {
	for i, b := range agents {
		if a == b {
			return i
		}
	}
	return -1
}

// manifestDigest returns the artifact digest a push of tree as model
// must get: the SHA-256 of its manifest, built here as the CLI builds it.
func manifestDigest(ctx context.Context, t *testing.T, tree, model string) string {
	t.Helper()
	m, _, err := artifact.BuildManifest(ctx, tree, artifact.BuildOptions{Limits: artifact.DefaultLimits(), Model: model})
	if err != nil {
		t.Fatal(err)
	}
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return artifact.Sum(b).String()
}

// waitGossipAlive waits until every server sees every server alive in
// gossip.
func (c *cluster) waitGossipAlive(ctx context.Context, bound time.Duration) error {
	var last []string
	err := poll(ctx, bound, func(ctx context.Context, _ int) (bool, error) {
		last = last[:0]
		for _, s := range c.servers {
			cctx, cancel := context.WithTimeout(ctx, opTimeout)
			res, err := c.client(s, false).cluster.GetStatus(cctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
			cancel()
			if err != nil {
				last = append(last, fmt.Sprintf("%s: %s", s.name, errorSummary(err)))
				continue
			}
			alive := 0
			for _, st := range res.Msg.GetServers() {
				if st.GetHealth() == "alive" {
					alive++
				} else {
					last = append(last, fmt.Sprintf("%s sees %s %s", s.name, st.GetName(), st.GetHealth()))
				}
			}
			if alive != len(c.servers) {
				last = append(last, fmt.Sprintf("%s sees %d of %d servers alive", s.name, alive, len(c.servers)))
			}
		}
		return len(last) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("servers do not all see each other alive in gossip (%s): %w", strings.Join(last, "; "), err)
	}
	return nil
}

// createModel creates model through any server.
func (c *cluster) createModel(ctx context.Context, t *testing.T, model string) {
	t.Helper()
	var last string
	err := poll(ctx, failoverBound, func(ctx context.Context, attempt int) (bool, error) {
		s := c.servers[attempt%len(c.servers)]
		_, err := call(ctx, func(ctx context.Context) (*connect.Response[droverv1.CreateModelResponse], error) {
			return c.client(s, false).model.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: model}))
		})
		if err != nil {
			last = s.name + ": " + errorSummary(err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("create model %s: %v (last error: %s)", model, err, last)
	}
}

// push runs `drover model push tree --model model -o json` with extra
// flags (--alias NAME) in this process, and returns its answer.
func (c *cluster) push(ctx context.Context, t *testing.T, tree, model string, extra ...string) *droverv1.FinishPushResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, pushBound)
	defer cancel()
	out := c.drover(ctx, t, append([]string{"model", "push", tree, "--model", model, "-o", "json"}, extra...)...)
	var res droverv1.FinishPushResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(out, &res); err != nil {
		t.Fatalf("drover model push -o json: %v\n%s", err, out)
	}
	return &res
}

// drover runs the operator CLI with args in this process, against the
// first server that is ready, with the management token, and returns
// what it wrote to stdout; a non-zero exit fails the test. The CLI
// verifies the server by its address, which the certificates name only on
// the servers' own network and as localhost, so it reaches the server
// through a forwarder on 127.0.0.1.
func (c *cluster) drover(ctx context.Context, t *testing.T, args ...string) []byte {
	t.Helper()
	var s *server
	var lastErr error
	for _, cand := range c.servers {
		if lastErr = c.waitReady(ctx, cand, infoTimeout); lastErr == nil {
			s = cand
			break
		}
	}
	if s == nil {
		// None answers at once: give the first the time a start takes.
		s = c.servers[0]
		if err := c.waitReady(ctx, s, readyBound); err != nil {
			t.Fatalf("drover %s: no server is ready: %v (before: %v)", strings.Join(args, " "), err, lastErr)
		}
	}
	fw := forward(t, s.api)
	t.Setenv("DROVER_TOKEN", c.token)
	t.Setenv("DROVER_CACERT", os.Getenv(envCAFile))
	// No config file: the environment and flags say everything.
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("HOME", t.TempDir())
	var stdout, stderr bytes.Buffer
	code := cli.Main(ctx, append([]string{"--address", "https://" + fw}, args...), strings.NewReader(""), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("drover %s through %s: exit %d\n%s%s", strings.Join(args, " "), s.name, code, stdout.String(), stderr.String())
	}
	return stdout.Bytes()
}

// forward relays TCP connections from a port on 127.0.0.1 to target until
// the test ends, and returns the port's address.
func forward(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	track := func(cs ...net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if conns == nil {
			return false
		}
		for _, c := range cs {
			conns[c] = true
		}
		return true
	}
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				t.Logf("forward to %s: %v", target, err)
				_ = in.Close()
				continue
			}
			if !track(in, out) {
				_ = in.Close()
				_ = out.Close()
				return
			}
			wg.Add(2)
			relay := func(dst, src net.Conn) {
				defer wg.Done()
				_, _ = io.Copy(dst, src)
				_ = dst.Close()
				_ = src.Close()
			}
			go relay(out, in)
			go relay(in, out)
		}
	}()
	return ln.Addr().String()
}

// leaderCall makes a call to the current leader, and again to whichever
// server leads then while the answer is Unavailable (a leader killed or
// being elected), within failoverBound.
func leaderCall[T any](ctx context.Context, t *testing.T, c *cluster, what string, f func(context.Context, *api) (*connect.Response[T], error)) *connect.Response[T] {
	t.Helper()
	res, err := tryLeader(ctx, c, f)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return res
}

func tryLeader[T any](ctx context.Context, c *cluster, f func(context.Context, *api) (*connect.Response[T], error)) (*connect.Response[T], error) {
	var res *connect.Response[T]
	var last error
	err := poll(ctx, failoverBound, func(ctx context.Context, _ int) (bool, error) {
		s, err := c.currentLeader(ctx)
		if err != nil {
			last = err
			return false, nil
		}
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		res, last = f(cctx, c.client(s, false))
		switch code := connect.CodeOf(last); {
		case last == nil:
			return true, nil
		case code == connect.CodeUnavailable || code == connect.CodeDeadlineExceeded:
			return false, nil
		default:
			return false, fmt.Errorf("through %s: %s", s.name, errorSummary(last))
		}
	})
	if err != nil && last != nil && !errors.Is(err, last) {
		return nil, fmt.Errorf("%w (last error: %v)", err, last)
	}
	return res, err
}

// currentLeader returns the server that says it leads, asking each in turn.
func (c *cluster) currentLeader(ctx context.Context) (*server, error) {
	var seen []string
	for _, s := range c.servers {
		inf, err := c.info(ctx, s)
		if err != nil {
			seen = append(seen, err.Error())
			continue
		}
		if inf.GetRaftState() == "leader" && inf.GetLeader() == s.name {
			return s, nil
		}
		seen = append(seen, fmt.Sprintf("%s: %s", s.name, inf.GetRaftState()))
	}
	return nil, fmt.Errorf("no server leads (%s)", strings.Join(seen, "; "))
}

// getNode reads node id from the current leader, which alone has the
// pull status the agents report.
func (c *cluster) getNode(ctx context.Context, t *testing.T, id string) *droverv1.Node {
	t.Helper()
	return leaderCall(ctx, t, c, "get node "+id, func(ctx context.Context, cl *api) (*connect.Response[droverv1.GetNodeResponse], error) {
		return cl.node.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: id}))
	}).Msg.GetNode()
}

// pullStatuses returns every agent's node's pull status, by node id, as
// the current leader has it (nil until the node's first report to it).
func (c *cluster) pullStatuses(ctx context.Context, agents []*agent) (map[string]*droverv1.NodePullStatus, error) {
	out := map[string]*droverv1.NodePullStatus{}
	for _, a := range agents {
		res, err := tryLeader(ctx, c, func(ctx context.Context, cl *api) (*connect.Response[droverv1.GetNodeResponse], error) {
			return cl.node.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: a.id}))
		})
		if err != nil {
			return nil, fmt.Errorf("get node %s: %w", a.name, err)
		}
		out[a.id] = res.Msg.GetNode().GetPullStatus()
	}
	return out, nil
}

// servedToAgents scrapes the servers' /metrics and returns the chunk
// bytes they sent to agents, all together.
func (c *cluster) servedToAgents(ctx context.Context, t *testing.T, servers []*server) float64 {
	t.Helper()
	const series = `drover_chunk_served_bytes_total{to="agent"} `
	var sum float64
	for _, s := range servers {
		body, err := c.metrics(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(body) {
			if v, ok := strings.CutPrefix(line, series); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					t.Fatalf("metrics of %s: %q: %v", s.name, line, err)
				}
				sum += f
			}
		}
	}
	return sum
}

func (c *cluster) metrics(ctx context.Context, s *server) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+s.api+"/metrics", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	res, err := c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("metrics of %s: %w", s.name, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metrics of %s: %s %v", s.name, res.Status, err)
	}
	return string(body), nil
}

// containerFileSum returns the SHA-256 and size of file in container, read
// with `docker cp`, which needs nothing inside the container (the agent's
// image has no shell).
func containerFileSum(ctx context.Context, container, file string) ([sha256.Size]byte, int64, error) {
	var sum [sha256.Size]byte
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", "cp", container+":"+file, "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return sum, 0, err
	}
	if err := cmd.Start(); err != nil {
		return sum, 0, fmt.Errorf("docker cp %s:%s: %w", container, file, err)
	}
	h := sha256.New()
	n, readErr := func() (int64, error) {
		tr := tar.NewReader(out)
		hd, err := tr.Next()
		if err != nil {
			return 0, fmt.Errorf("read the archive: %w", err)
		}
		if hd.Typeflag != tar.TypeReg {
			return 0, fmt.Errorf("%s is not a regular file (tar type %q)", file, hd.Typeflag)
		}
		return io.Copy(h, tr)
	}()
	_, _ = io.Copy(io.Discard, out)
	if err := cmd.Wait(); err != nil {
		return sum, 0, fmt.Errorf("docker cp %s:%s: %w: %s", container, file, err, strings.TrimSpace(stderr.String()))
	}
	if readErr != nil {
		return sum, 0, fmt.Errorf("docker cp %s:%s: %w", container, file, readErr)
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}
