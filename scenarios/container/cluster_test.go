//go:build docker

package container

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/linearize"
)

// Bounds on how long the cluster may take to do things.
const (
	// opTimeout bounds one API call of the workload.
	opTimeout = 4 * time.Second
	// infoTimeout bounds one status call used for polling.
	infoTimeout = 2 * time.Second
	// failoverBound is how long after losing its leader the cluster may
	// take to accept writes again.
	failoverBound = 15 * time.Second
	// catchUpBound is how long a restarted or reconnected server may take
	// to catch up with the leader.
	catchUpBound = 60 * time.Second
	// readyBound is how long the cluster may take to become ready.
	readyBound = 90 * time.Second
	// dockerTimeout bounds one docker command.
	dockerTimeout = 60 * time.Second
	// pollEvery is how often waits poll.
	pollEvery = 200 * time.Millisecond
)

// Environment variables set by deploy/docker/scenarios.sh.
const (
	envProject     = "DROVER_SCENARIO_PROJECT"
	envComposeFile = "DROVER_SCENARIO_COMPOSE_FILE"
	envCAFile      = "DROVER_SCENARIO_CA_FILE"
	envServers     = "DROVER_SCENARIO_SERVERS"
	envContainers  = "DROVER_SCENARIO_CONTAINERS"
	envClusterIPs  = "DROVER_SCENARIO_CLUSTER_IPS"
	envNetwork     = "DROVER_SCENARIO_NETWORK"
	envArtifacts   = "DROVER_SCENARIO_ARTIFACTS"
)

// server is one drover server in its container.
type server struct {
	name      string // its --name, also its Raft ID
	api       string // HOST:PORT of its API, reachable from the tests
	clusterIP string // its address on the network the servers share
	container string
}

// cluster is the running containers, shared by every test of the package.
// The tests run one after another and each leaves every server running and
// connected (see restore).
type cluster struct {
	project     string
	composeFile string
	network     string
	servers     []*server
	pool        *x509.CertPool
	hc          *http.Client // for status, setup and final reads
	token       string       // management token, from ACL bootstrap
}

var (
	setupOnce   sync.Once
	shared      *cluster
	errSetup    error
	setupLogger = &lineLog{}
)

// lineLog keeps setup's log lines so each test that needs the cluster can
// show them (setup runs once, inside whichever test came first).
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// needCluster returns the shared cluster, setting it up on first use:
// it waits until every server is ready and bootstraps the ACL system. It
// skips the test when the environment of scenarios.sh is missing.
func needCluster(t *testing.T) *cluster {
	t.Helper()
	var missing []string
	for _, k := range []string{envProject, envCAFile, envServers, envContainers, envClusterIPs, envNetwork} {
		if os.Getenv(k) == "" {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		t.Skipf("container scenarios run against the cluster that deploy/docker/scenarios.sh starts; "+
			"run that script (missing %s)", strings.Join(missing, ", "))
	}
	setupOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), readyBound+30*time.Second)
		defer cancel()
		shared, errSetup = setup(ctx)
	})
	setupLogger.mu.Lock()
	for _, l := range setupLogger.lines {
		t.Log("setup: " + l)
	}
	setupLogger.mu.Unlock()
	if errSetup != nil {
		t.Fatalf("set up the cluster: %v", errSetup)
	}
	return shared
}

// parsePairs reads "a=x,b=y".
func parsePairs(name, s string) (map[string]string, error) {
	m := map[string]string{}
	for kv := range strings.SplitSeq(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%s: %q is not name=value", name, kv)
		}
		m[k] = v
	}
	return m, nil
}

func setup(ctx context.Context) (*cluster, error) {
	c := &cluster{
		project:     os.Getenv(envProject),
		composeFile: os.Getenv(envComposeFile),
		network:     os.Getenv(envNetwork),
	}
	apis, err := parsePairs(envServers, os.Getenv(envServers))
	if err != nil {
		return nil, err
	}
	containers, err := parsePairs(envContainers, os.Getenv(envContainers))
	if err != nil {
		return nil, err
	}
	ips, err := parsePairs(envClusterIPs, os.Getenv(envClusterIPs))
	if err != nil {
		return nil, err
	}
	for name, api := range apis {
		if containers[name] == "" || ips[name] == "" {
			return nil, fmt.Errorf("server %s lacks a container in %s or an address in %s", name, envContainers, envClusterIPs)
		}
		c.servers = append(c.servers, &server{name: name, api: api, clusterIP: ips[name], container: containers[name]})
	}
	slices.SortFunc(c.servers, func(a, b *server) int { return strings.Compare(a.name, b.name) })
	if len(c.servers) != 3 {
		return nil, fmt.Errorf("%s names %d servers; the scenarios need 3", envServers, len(c.servers))
	}
	pem, err := os.ReadFile(os.Getenv(envCAFile))
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	c.pool = x509.NewCertPool()
	if !c.pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("cluster CA %s holds no PEM certificate", os.Getenv(envCAFile))
	}
	c.hc = c.httpClient()
	setupLogger.logf("project %s (%s), network %s, servers %v", c.project, c.composeFile, c.network, c.describe())

	for _, s := range c.servers {
		if err := c.waitReady(ctx, s, readyBound); err != nil {
			return nil, err
		}
	}
	leader, err := c.waitLeader(ctx, readyBound)
	if err != nil {
		return nil, err
	}
	setupLogger.logf("cluster ready, leader %s", leader)

	// Bootstrap is a write: retry while the cluster settles, through any
	// server, since followers forward it.
	err = poll(ctx, failoverBound, func(ctx context.Context, attempt int) (bool, error) {
		a := c.client(c.servers[attempt%len(c.servers)], false)
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		res, err := a.acl.Bootstrap(cctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
		if err != nil {
			if linearize.Reason(err) == droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED {
				return false, fmt.Errorf("the cluster's ACLs were bootstrapped before these tests ran, "+
					"so they cannot get a token; start a fresh cluster with scenarios.sh: %w", err)
			}
			return false, nil
		}
		c.token = res.Msg.GetSecretId()
		return true, nil
	})
	if err != nil {
		return nil, fmt.Errorf("bootstrap ACLs: %w", err)
	}
	return c, nil
}

func (c *cluster) describe() []string {
	var out []string
	for _, s := range c.servers {
		out = append(out, fmt.Sprintf("%s=%s(api %s, cluster %s)", s.name, s.container, s.api, s.clusterIP))
	}
	return out
}

func (c *cluster) server(name string) *server {
	for _, s := range c.servers {
		if s.name == name {
			return s
		}
	}
	return nil
}

// others returns the servers except the named ones.
func (c *cluster) others(names ...string) []*server {
	var out []*server
	for _, s := range c.servers {
		if !slices.Contains(names, s.name) {
			out = append(out, s)
		}
	}
	return out
}

// httpClient returns a client with its own connections, trusting only the
// cluster CA. Servers are verified by the name every server certificate
// holds, since the tests reach them on an address the certificate does not
// name. Dials and dead connections fail fast, so a call to a killed server
// reports a dial error (definitely not applied) instead of a timeout.
func (c *cluster) httpClient() *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			RootCAs:    c.pool,
			ServerName: pki.PeerServerName,
		},
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		TLSHandshakeTimeout: 2 * time.Second,
		IdleConnTimeout:     30 * time.Second,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: time.Second,
			PingTimeout:     time.Second,
		},
	}
	return &http.Client{Transport: tr}
}

// api is the Connect clients of one server.
type api struct {
	server  *server
	model   droverv1connect.ModelServiceClient
	acl     droverv1connect.ACLServiceClient
	cluster droverv1connect.ClusterServiceClient
	node    droverv1connect.NodeServiceClient
	token   droverv1connect.TokenServiceClient
	rollout droverv1connect.RolloutServiceClient
}

// client returns clients of s on the cluster's shared connections, with
// the management token once there is one; stale reads are answered by s
// from its own state.
func (c *cluster) client(s *server, stale bool) *api {
	return c.clientWith(c.hc, s, stale)
}

// clientWith is client on connections of hc.
func (c *cluster) clientWith(hc *http.Client, s *server, stale bool) *api {
	h := http.Header{}
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	if stale {
		h.Set("Drover-Consistency", "stale")
	}
	opts := connect.WithInterceptors(headers(h))
	base := "https://" + s.api
	return &api{
		server:  s,
		model:   droverv1connect.NewModelServiceClient(hc, base, opts),
		acl:     droverv1connect.NewACLServiceClient(hc, base, opts),
		cluster: droverv1connect.NewClusterServiceClient(hc, base, opts),
		node:    droverv1connect.NewNodeServiceClient(hc, base, opts),
		token:   droverv1connect.NewTokenServiceClient(hc, base, opts),
		rollout: droverv1connect.NewRolloutServiceClient(hc, base, opts),
	}
}

// headers adds fixed headers to every unary call.
func headers(h http.Header) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			for k, vs := range h {
				req.Header()[k] = vs
			}
			return next(ctx, req)
		}
	}
}

// info asks s about itself.
func (c *cluster) info(ctx context.Context, s *server) (*droverv1.ServerInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	res, err := c.client(s, false).cluster.GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
	if err != nil {
		return nil, fmt.Errorf("server info of %s: %w", s.name, err)
	}
	return res.Msg.GetInfo(), nil
}

// poll calls f, numbering the attempts from 0, every pollEvery until it
// says done, returns an error, or bound passes; then the error says what
// the last attempt saw.
func poll(ctx context.Context, bound time.Duration, f func(ctx context.Context, attempt int) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	for attempt := 0; ; attempt++ {
		done, err := f(ctx, attempt)
		if done || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %w", bound, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// waitReady waits until s's health endpoint says it knows a leader.
func (c *cluster) waitReady(ctx context.Context, s *server, bound time.Duration) error {
	var last string
	err := poll(ctx, bound, func(ctx context.Context, _ int) (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, infoTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, "https://"+s.api+"/v1/health/ready", nil)
		if err != nil {
			return false, err
		}
		res, err := c.hc.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		_ = res.Body.Close()
		last = res.Status
		return res.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%s not ready (last answer: %s): %w", s.name, last, err)
	}
	return nil
}

// waitLeader waits until a server other than the excluded ones is leader,
// as it says itself and as another server sees it, and returns its name.
func (c *cluster) waitLeader(ctx context.Context, bound time.Duration, exclude ...string) (string, error) {
	var leader string
	var last []string
	err := poll(ctx, bound, func(ctx context.Context, _ int) (bool, error) {
		last = last[:0]
		views := map[string]string{}
		for _, s := range c.others(exclude...) {
			inf, err := c.info(ctx, s)
			if err != nil {
				last = append(last, err.Error())
				continue
			}
			views[s.name] = inf.GetLeader()
			last = append(last, fmt.Sprintf("%s: state %s, leader %q", s.name, inf.GetRaftState(), inf.GetLeader()))
			if inf.GetRaftState() == "leader" && inf.GetLeader() == s.name {
				leader = s.name
			}
		}
		if leader == "" {
			return false, nil
		}
		for name, view := range views {
			if name != leader && view == leader {
				return true, nil
			}
		}
		leader = ""
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("no leader among %v (last seen: %s): %w", c.names(c.others(exclude...)), strings.Join(last, "; "), err)
	}
	return leader, nil
}

func (c *cluster) names(servers []*server) []string {
	var out []string
	for _, s := range servers {
		out = append(out, s.name)
	}
	return out
}

// waitNoLeader waits until s says it knows no leader, as a server cut off
// from the others must.
func (c *cluster) waitNoLeader(ctx context.Context, s *server, bound time.Duration) error {
	var last string
	err := poll(ctx, bound, func(ctx context.Context, _ int) (bool, error) {
		inf, err := c.info(ctx, s)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("state %s, leader %q", inf.GetRaftState(), inf.GetLeader())
		return inf.GetLeader() == "", nil
	})
	if err != nil {
		return fmt.Errorf("%s still follows a leader (%s): %w", s.name, last, err)
	}
	return nil
}

// waitCaughtUp waits until s follows a leader and has applied everything
// the leader had committed once s was back.
func (c *cluster) waitCaughtUp(ctx context.Context, s *server, bound time.Duration) error {
	var target uint64
	var last string
	err := poll(ctx, bound, func(ctx context.Context, _ int) (bool, error) {
		inf, err := c.info(ctx, s)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("state %s, leader %q, applied %d", inf.GetRaftState(), inf.GetLeader(), inf.GetAppliedIndex())
		if inf.GetLeader() == "" {
			return false, nil
		}
		if target == 0 {
			l := c.server(inf.GetLeader())
			if l == nil {
				return false, fmt.Errorf("%s follows unknown server %q", s.name, inf.GetLeader())
			}
			linf, err := c.info(ctx, l)
			if err != nil {
				last = err.Error()
				return false, nil
			}
			target = linf.GetCommitIndex()
		}
		last += fmt.Sprintf(", target %d", target)
		return inf.GetAppliedIndex() >= target, nil
	})
	if err != nil {
		return fmt.Errorf("%s did not catch up (%s): %w", s.name, last, err)
	}
	return nil
}

// docker runs a docker command and logs it with its output.
func docker(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	return dockerEnv(ctx, t, nil, args...)
}

// dockerEnv is docker with env added to the docker command's environment,
// for values that must not show on its command line or in the log (a
// join token, passed on with `docker run -e NAME`).
func dockerEnv(ctx context.Context, t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "docker", args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	shown := text
	if len(shown) > 200 {
		shown = shown[:200] + "…"
	}
	t.Logf("docker %s (%s): %s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), shown)
	if err != nil {
		return text, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, text)
	}
	return text, nil
}

func mustDocker(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := docker(ctx, t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// state reports whether s's container runs, and whether it is attached
// to the servers' network.
func (c *cluster) state(ctx context.Context, t *testing.T, s *server) (running, attached bool, err error) {
	out, err := docker(ctx, t, "inspect", "-f", "{{json .State.Running}} {{json .NetworkSettings.Networks}}", s.container)
	if err != nil {
		return false, false, err
	}
	run, nets, _ := strings.Cut(out, " ")
	var networks map[string]json.RawMessage
	if err := json.Unmarshal([]byte(nets), &networks); err != nil {
		return false, false, fmt.Errorf("inspect %s: networks %q: %w", s.container, nets, err)
	}
	_, attached = networks[c.network]
	return run == "true", attached, nil
}

// restore starts every stopped server, reconnects every isolated one and
// waits until all are ready, so the next test finds a whole cluster.
func (c *cluster) restore(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*readyBound)
	defer cancel()
	for _, s := range c.servers {
		running, attached, err := c.state(ctx, t, s)
		if err != nil {
			t.Error(err)
			continue
		}
		if !attached {
			if _, err := docker(ctx, t, "network", "connect", "--ip", s.clusterIP, c.network, s.container); err != nil {
				t.Error(err)
			}
		}
		if !running {
			if _, err := docker(ctx, t, "start", s.container); err != nil {
				t.Error(err)
			}
		}
	}
	for _, s := range c.servers {
		if err := c.waitReady(ctx, s, readyBound); err != nil {
			t.Errorf("restore: %v", err)
		}
	}
}

// testContext returns a context that ends a minute before the test's
// deadline, leaving time to report and clean up.
func testContext(t *testing.T) context.Context {
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		c, cancel := context.WithDeadline(ctx, dl.Add(-time.Minute))
		t.Cleanup(cancel)
		ctx = c
	}
	return ctx
}

// artifactPath is where a failure report named name goes.
func artifactPath(t *testing.T, name string) string {
	dir := os.Getenv(envArtifacts)
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("create artifacts dir: %v", err)
	}
	return filepath.Join(dir, strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())+"-"+name)
}

// errorSummary describes an API error with its code and reason.
func errorSummary(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err.Error()
	}
	return fmt.Sprintf("%s/%s: %s", ce.Code(), linearize.Reason(err), ce.Message())
}
