package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/agenttest"
	"github.com/droverhq/drover/hwprobe"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// testHardware is the inventory a fake probe returns; tests change it to
// make the hardware change.
type testHardware struct {
	mu     sync.Mutex // guards the fields below
	inv    hwprobe.Inventory
	probes int
	probed chan struct{} // closed and replaced after every probe
}

func newTestHardware() *testHardware {
	return &testHardware{
		inv: hwprobe.Inventory{
			Host:   hwprobe.Host{Hostname: "gpu-01", OS: "Ubuntu 24.04.1 LTS", Kernel: "6.8.0", Arch: "amd64"},
			CPU:    hwprobe.CPU{Model: "AMD EPYC 9654", Sockets: 2, Cores: 192, Threads: 384},
			Memory: hwprobe.Memory{TotalBytes: 1 << 40, AvailableBytes: 1 << 39},
			GPUProbe: hwprobe.GPUProbe{
				Available: true, DriverVersion: "550.54.15", CUDADriverVersion: "12.4",
			},
		},
		probed: make(chan struct{}),
	}
}

func (h *testHardware) probe(ctx context.Context) (*hwprobe.Inventory, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	inv := h.inv
	inv.GPUs = append([]hwprobe.GPU(nil), h.inv.GPUs...)
	h.probes++
	close(h.probed)
	h.probed = make(chan struct{})
	return &inv, nil
}

func (h *testHardware) change(f func(inv *hwprobe.Inventory)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(&h.inv)
}

// waitProbes waits until the hardware has been probed n times in all.
func (h *testHardware) waitProbes(t *testing.T, n int) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		probes, probed := h.probes, h.probed
		h.mu.Unlock()
		if probes >= n {
			return
		}
		select {
		case <-probed:
		case <-deadline.C:
			t.Fatalf("%d probes, want %d", probes, n)
		}
	}
}

// testConfig returns a configuration for an agent of cluster c with its own
// data directory.
func testConfig(t *testing.T, c *agenttest.Cluster) Config {
	cfg := DefaultConfig()
	cfg.Servers = c.Addrs()
	cfg.Token = c.NewToken()
	cfg.DataDir = t.TempDir()
	cfg.Name = "gpu-01"
	cfg.Labels = map[string]string{"zone": "b"}
	cfg.Site = "lab"
	cfg.GossipAddr = "127.0.0.1:0" // a pool of its own, on loopback
	cfg.ServeAddr = "127.0.0.1:0"
	cfg.ProbeInterval = 24 * time.Hour
	cfg.Logger = logging.TestLogger(t)
	return cfg
}

// newTestAgent makes an agent with a fake clock and fake hardware, and a
// dial timeout short enough that a stopped server is given up on quickly,
// and long enough for a live one on a loaded machine.
func newTestAgent(t *testing.T, cfg Config) (*Agent, *fakeClock, *testHardware) {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	clk, hw := newFakeClock(), newTestHardware()
	a.clk, a.probe = clk, hw.probe
	a.dialTimeout = time.Second
	return a, clk, hw
}

// start runs a in the background until the test ends. stop cancels it and
// returns Run's error; done is closed when Run returns, by itself or not,
// and then result returns its error.
func start(t *testing.T, a *Agent) (stop func() error, done <-chan struct{}, result func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	var err error
	go func() {
		defer close(ch)
		err = a.Run(ctx)
	}()
	result = func() error {
		<-ch
		return err
	}
	stop = func() error {
		cancel()
		return result()
	}
	t.Cleanup(func() { _ = stop() })
	return stop, ch, result
}

// waitDone waits for Run to return by itself.
func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop by itself")
	}
}

// settle waits until the agent has acted on every answer it received and
// set a timer to wait for what comes next.
func settle(t *testing.T, clk *fakeClock) {
	t.Helper()
	clk.nextTimer(t)
}

// runToError runs a and returns the error it stops with by itself.
func runToError(t *testing.T, a *Agent) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := a.Run(ctx)
	if ctx.Err() != nil {
		t.Fatal("Run did not stop by itself")
	}
	return err
}

func TestEnrollRegisterHeartbeat(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := testConfig(t, c)
	a, err := New(cfg) // the real hardware probe
	if err != nil {
		t.Fatal(err)
	}
	clk := newFakeClock()
	a.clk = clk
	stop, _, _ := start(t, a)

	hb := c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if err := a.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	st := a.Status()
	if st.State != StateReady || st.NodeID == "" || st.Registrations != 1 || st.Heartbeats < 1 || st.Server != c.Addrs()[0] {
		t.Errorf("Status = %+v, want ready, registered once, heartbeating with %s", st, c.Addrs()[0])
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if st := a.Status(); st.State != StateStopped || st.Err != nil {
		t.Errorf("Status after stop = %v, %v", st.State, st.Err)
	}

	// The calls came in order, anonymous until the node had a certificate.
	// (The watch of the node's assignments runs beside them once it has
	// registered.)
	var procs []string
	for _, call := range c.Calls("") {
		if call.Procedure != agenttest.WatchAssignments {
			procs = append(procs, call.Procedure)
		}
	}
	want := []string{agenttest.GetClusterInfo, agenttest.Enroll, agenttest.Register, agenttest.HeartbeatStream, agenttest.Heartbeat}
	if got := strings.Join(procs[:min(len(want), len(procs))], " "); got != strings.Join(want, " ") {
		t.Errorf("calls = %v, want %v first", procs, want)
	}
	for _, call := range c.Calls("") {
		anonymous := call.Procedure == agenttest.GetClusterInfo || call.Procedure == agenttest.Enroll
		if anonymous != (call.NodeID == "") {
			t.Errorf("%s made with certificate for %q", call.Procedure, call.NodeID)
		}
	}

	// The identity is on disk, readable by its owner only.
	path := filepath.Join(cfg.DataDir, IdentityFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("identity file mode %v, want 0600", perm)
	}
	id, err := loadIdentity(cfg.DataDir)
	if err != nil || id == nil {
		t.Fatalf("loadIdentity = %v, %v", id, err)
	}
	if id.NodeID != st.NodeID || id.Name != "gpu-01" || id.ClusterID != c.ID {
		t.Errorf("identity %s %q in %q, want %s gpu-01 in %q", id.NodeID, id.Name, id.ClusterID, st.NodeID, c.ID)
	}
	if !bytes.Equal(id.CA.Raw, c.CA.Certificate().Raw) {
		t.Error("identity holds another CA")
	}
	if _, err := id.Cert.Leaf.Verify(x509.VerifyOptions{Roots: c.CA.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("node certificate does not verify against the cluster CA: %v", err)
	}
	if role := pki.RoleOf(id.Cert.Leaf); role != pki.RoleAgent || id.Cert.Leaf.Subject.CommonName != id.NodeID {
		t.Errorf("node certificate role %q CN %q, want agent %s", role, id.Cert.Leaf.Subject.CommonName, id.NodeID)
	}
	if hb[0].NodeID != id.NodeID {
		t.Errorf("heartbeat from %q, want %q", hb[0].NodeID, id.NodeID)
	}

	// The server saw a CSR for the node's key, and never the key.
	enroll := c.Calls(agenttest.Enroll)[0].Request.(*droverv1.EnrollRequest)
	csr, err := x509.ParseCertificateRequest(enroll.GetCsrDer())
	if err != nil {
		t.Fatal(err)
	}
	key := id.Cert.PrivateKey.(*ecdsa.PrivateKey)
	if !key.PublicKey.Equal(csr.PublicKey) {
		t.Error("the CSR is not for the node key")
	}
	secret, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if c.ReceivedBytes(secret) {
		t.Error("the node's private key was sent to the server")
	}
	if enroll.GetName() != "gpu-01" || enroll.GetSite() != "lab" || enroll.GetLabels()["zone"] != "b" || enroll.GetAgentVersion() != Version {
		t.Errorf("Enroll request = %v", enroll)
	}
	if enroll.GetInventory().GetHost().GetArch() == "" || enroll.GetInventory().GetGpuProbe() == nil {
		t.Errorf("Enroll inventory = %v, want this machine's", enroll.GetInventory())
	}
}

func TestEnrollRefusesCAMismatch(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	other, err := pki.NewCA("another cluster", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jointoken.New(other.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, c)
	cfg.Token = tok.String()
	a, _, _ := newTestAgent(t, cfg)

	err = runToError(t, a)
	if !errors.Is(err, jointoken.ErrCAMismatch) {
		t.Fatalf("Run = %v, want ErrCAMismatch", err)
	}
	// The agent caught it, not a server: it is no server refusal.
	if errors.Is(err, ErrTokenRefused) || errors.Is(err, ErrTokenWrongCluster) {
		t.Errorf("Run = %v, want neither ErrTokenRefused nor ErrTokenWrongCluster", err)
	}
	if !strings.Contains(err.Error(), c.Addrs()[0]) || Hint(err) == "" {
		t.Errorf("error %q (hint %q) should name the server and say what to check", err, Hint(err))
	}
	if n := len(c.Calls(agenttest.Enroll)); n != 0 {
		t.Errorf("%d Enroll calls, want none", n)
	}
	if c.ReceivedBytes([]byte(tok.Secret)) {
		t.Error("the server received the join token's secret")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, IdentityFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("identity file: %v, want none", err)
	}
}

// tokenKinds are the errors for the join token refusals a server names;
// each refusal must wrap its own and none of the others.
var tokenKinds = []error{ErrTokenInvalid, ErrTokenExpired, ErrTokenRevoked, ErrTokenUsedUp, ErrTokenWrongCluster}

// Each refusal a server can answer Enroll with stops the agent, without
// retrying, with an error of its own (errors.Is) whose message names the
// refusal and whose hint says what to do about it.
func TestEnrollRefusals(t *testing.T) {
	tests := []struct {
		name    string
		err     *connect.Error
		want    error  // the refusal's own error; nil: ErrTokenRefused or ErrRefused alone
		refused error  // the broad error it also wraps
		message string // the server's words, in the message
		hint    string // in the hint
	}{
		{"expired", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED,
			`join token "abcdefgh" expired at 2026-11-25T10:00:00Z`, "server hint"), ErrTokenExpired, ErrTokenRefused,
			"expired at 2026-11-25T10:00:00Z", "--ttl"},
		{"revoked", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED,
			`join token "abcdefgh" was revoked`, ""), ErrTokenRevoked, ErrTokenRefused,
			"was revoked", "an operator revoked this token"},
		{"used up", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP,
			`join token "abcdefgh" is used up (max_uses 3)`, ""), ErrTokenUsedUp, ErrTokenRefused,
			"max_uses 3", "--max-uses are spent"},
		{"wrong cluster", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_WRONG_CLUSTER,
			`join token "abcdefgh" is for another cluster`, ""), ErrTokenWrongCluster, ErrTokenRefused,
			"for another cluster", "point --server"},
		{"unknown", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			"invalid join token", ""), ErrTokenInvalid, ErrTokenRefused,
			"invalid join token", "whole string"},
		{"missing", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"no join token", ""), nil, ErrTokenRefused, "no join token", "drover token create"},
		{"unnamed refusal keeps the server's hint", agenttest.RefusalError(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			"not today", "come back tomorrow"), nil, ErrTokenRefused, "not today", "come back tomorrow"},
		{"malformed", agenttest.RefusalError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"parse join token: 4 dot-separated parts, want 5", ""), nil, ErrRefused, "4 dot-separated parts", ""},
		{"name taken", agenttest.RefusalError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS,
			`node name "gpu-01" already exists`, ""), nil, ErrRefused, "already exists", "--name"},
	}
	seen, seenHint := map[string]string{}, map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := agenttest.NewCluster(t, 1)
			c.Refuse(agenttest.Enroll, tt.err)
			cfg := testConfig(t, c)
			a, _, _ := newTestAgent(t, cfg)

			err := runToError(t, a)
			if !errors.Is(err, tt.refused) {
				t.Fatalf("Run = %v, want %v", err, tt.refused)
			}
			for _, kind := range tokenKinds {
				if got := errors.Is(err, kind); got != (kind == tt.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, kind, got)
				}
			}
			if tt.want != nil && !strings.Contains(err.Error(), tt.want.Error()) {
				t.Errorf("error %q does not name the refusal (%q)", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.message) || !strings.Contains(err.Error(), c.Addrs()[0]) {
				t.Errorf("error %q should carry the server's words %q and name the server", err, tt.message)
			}
			if h := Hint(err); !strings.Contains(h, tt.hint) || (tt.refused == ErrTokenRefused && h == "") {
				t.Errorf("hint %q should say %q", h, tt.hint)
			}
			if n := len(c.Calls(agenttest.Enroll)); n != 1 {
				t.Errorf("%d Enroll calls, want 1: a refusal is not retried", n)
			}
			if strings.Contains(err.Error()+Hint(err), mustParse(t, cfg.Token).Secret) {
				t.Errorf("error %q contains the token's secret", err)
			}
			if other, dup := seen[err.Error()]; dup {
				t.Errorf("%s and %s give the same error %q", other, tt.name, err)
			}
			seen[err.Error()] = tt.name
			if h := Hint(err); h != "" {
				if other, dup := seenHint[h]; dup {
					t.Errorf("%s and %s give the same hint %q", other, tt.name, h)
				}
				seenHint[h] = tt.name
			}
			if _, err := os.Stat(filepath.Join(cfg.DataDir, IdentityFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("identity file: %v, want none", err)
			}
		})
	}
}

// Each refusal of the node's certificate stops the agent with an error of
// its own, a hint that names the identity file, and no new enrollment.
func TestSessionRefusals(t *testing.T) {
	tests := []struct {
		name    string
		err     *connect.Error
		unknown bool   // ErrNodeUnknown as well as ErrRevoked
		hint    string // in the hint, besides the identity file
	}{
		{"revoked", agenttest.RefusalError(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED,
			`node "n1" was revoked`, ""), false, "an operator revoked this node"},
		{"unknown", agenttest.RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			`node "n1" of this certificate is not known to the cluster`, ""), true, "no record of this node"},
		// A server from before NODE_REVOKED.
		{"revoked, older server", agenttest.RefusalError(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			`node "n1" was revoked`, ""), false, "no longer accepts this node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := agenttest.NewCluster(t, 1)
			c.Refuse(agenttest.Register, tt.err)
			cfg := testConfig(t, c)
			a, _, _ := newTestAgent(t, cfg)

			err := runToError(t, a)
			if !errors.Is(err, ErrRevoked) || errors.Is(err, ErrNodeUnknown) != tt.unknown || errors.Is(err, ErrTokenRefused) {
				t.Fatalf("Run = %v, want ErrRevoked (ErrNodeUnknown %v)", err, tt.unknown)
			}
			if !strings.Contains(err.Error(), tt.err.Message()) || !strings.Contains(err.Error(), c.Addrs()[0]) {
				t.Errorf("error %q should carry the server's words and name the server", err)
			}
			path := filepath.Join(cfg.DataDir, IdentityFile)
			if h := Hint(err); !strings.Contains(h, tt.hint) || !strings.Contains(h, "remove "+path) {
				t.Errorf("hint %q should say %q and name %s", h, tt.hint, path)
			}
			if n, m := len(c.Calls(agenttest.Register)), len(c.Calls(agenttest.Enroll)); n != 1 || m != 1 {
				t.Errorf("%d registrations and %d enrollments, want 1 and 1", n, m)
			}
		})
	}
}

func mustParse(t *testing.T, s string) jointoken.Token {
	t.Helper()
	tok, err := jointoken.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A server without a leader is asked again, after a backoff.
func TestEnrollRetriesUnavailable(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.Refuse(agenttest.Enroll, agenttest.RefusalError(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER, "no leader", ""))
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)

	c.WaitForCalls(agenttest.Enroll, 1)
	if d := clk.fireNext(t); d < 0 || d > backoffBase {
		t.Errorf("first backoff %v, want within [0, %v]", d, backoffBase)
	}
	c.WaitForCalls(agenttest.Enroll, 2)
	c.Refuse(agenttest.Enroll, nil)
	if d := clk.fireNext(t); d > 2*backoffBase {
		t.Errorf("second backoff %v, want within [0, %v]", d, 2*backoffBase)
	}
	c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if st := a.Status(); st.State != StateReady {
		t.Errorf("state %s, want ready", st.State)
	}
}

// A name taken after an attempt whose outcome is unknown is another
// machine's: a retry sends the same key, which the server answers with the
// node it made. The hint says to choose another name.
func TestEnrollNameTakenAfterLostAnswer(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.Refuse(agenttest.Enroll, agenttest.RefusalError(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
		"leadership lost while the write was being committed: it may or may not have been applied", ""))
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	_, done, result := start(t, a)
	c.WaitForCalls(agenttest.Enroll, 1)
	c.Refuse(agenttest.Enroll, agenttest.RefusalError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS,
		`node name "gpu-01" already exists`, ""))
	clk.fireNext(t)
	waitDone(t, done)
	err := result()
	if !errors.Is(err, ErrRefused) || !strings.Contains(Hint(err), "choose another with --name") {
		t.Fatalf("Run = %v (hint %q), want ErrRefused with a hint to choose another name", err, Hint(err))
	}
}

func TestRestartUsesIdentity(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := testConfig(t, c)
	a, _, _ := newTestAgent(t, cfg)
	stop, _, _ := start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	nodeID := a.Status().NodeID

	t.Run("without token", func(t *testing.T) {
		cfg := cfg
		cfg.Token, cfg.Servers = "", nil // the identity knows the servers
		a, _, _ := newTestAgent(t, cfg)
		stop, _, _ := start(t, a)
		hb := c.WaitForCalls(agenttest.Heartbeat, 2)
		if got := hb[len(hb)-1].NodeID; got != nodeID {
			t.Errorf("heartbeat from %q, want %q", got, nodeID)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("with the same cluster's token", func(t *testing.T) {
		a, _, _ := newTestAgent(t, cfg)
		stop, _, _ := start(t, a)
		c.WaitForCalls(agenttest.Heartbeat, 3)
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})
	if n := len(c.Calls(agenttest.Enroll)); n != 1 {
		t.Errorf("%d Enroll calls, want 1", n)
	}

	t.Run("with another cluster's token", func(t *testing.T) {
		other := agenttest.NewCluster(t, 1)
		cfg := cfg
		cfg.Token, cfg.Servers = other.NewToken(), other.Addrs()
		a, _, _ := newTestAgent(t, cfg)
		err := runToError(t, a)
		if !errors.Is(err, ErrWrongCluster) || !strings.Contains(Hint(err), IdentityFile) {
			t.Fatalf("Run = %v (hint %q), want ErrWrongCluster with a hint naming the identity file", err, Hint(err))
		}
		if n := len(other.Calls("")); n != 0 {
			t.Errorf("%d calls to the other cluster, want none", n)
		}
	})
}

func TestNotEnrolled(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Name = "gpu-01"
	cfg.Logger = logging.TestLogger(t)
	a, _, _ := newTestAgent(t, cfg)
	err := runToError(t, a)
	if !errors.Is(err, ErrNotEnrolled) || !strings.Contains(Hint(err), "DROVER_TOKEN") {
		t.Fatalf("Run = %v (hint %q), want ErrNotEnrolled with a hint about the token", err, Hint(err))
	}

	tok, err := jointoken.New(strings.Repeat("0", 64))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Token = tok.String()
	a, _, _ = newTestAgent(t, cfg)
	err = runToError(t, a)
	if !errors.Is(err, ErrNotEnrolled) || !strings.Contains(Hint(err), "--server") {
		t.Fatalf("Run = %v (hint %q), want ErrNotEnrolled with a hint about --server", err, Hint(err))
	}
}

func TestCorruptIdentity(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := enrolled(t, c)
	path := filepath.Join(cfg.DataDir, IdentityFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _, err := newNodeKey("x")
	if err != nil {
		t.Fatal(err)
	}
	otherDER, err := x509.MarshalPKCS8PrivateKey(otherKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		data   []byte
		reason string
	}{
		{"empty", nil, "not JSON"},
		{"truncated", good[:len(good)/2], "not JSON"},
		{"garbage", []byte("\x00\x01binary"), "not JSON"},
		{"future version", bytes.Replace(good, []byte(`"version": 1`), []byte(`"version": 7`), 1), "format version 7"},
		{"no certificate", replaceJSONField(t, good, "certificate_pem", ""), "node certificate"},
		{"other key", replaceJSONField(t, good, "key_pem", string(pemBlock("PRIVATE KEY", otherDER))), "not for the node key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(path, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			a, _, _ := newTestAgent(t, cfg)
			err := runToError(t, a)
			if !errors.Is(err, ErrIdentityCorrupt) {
				t.Fatalf("Run = %v, want ErrIdentityCorrupt", err)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q should name %s and say %q", err, path, tt.reason)
			}
			if h := Hint(err); !strings.Contains(h, "remove "+path) {
				t.Errorf("hint %q should say to remove %s", h, path)
			}
		})
	}
}

// With the first server down from the start, the agent enrolls, registers
// and heartbeats with the second.
func TestFailoverAtStart(t *testing.T) {
	c := agenttest.NewCluster(t, 2)
	c.Server(0).Stop()
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)

	hb := c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	second := c.Addrs()[1]
	for _, call := range c.Calls("") {
		if call.Server != second {
			t.Errorf("%s answered by %s, want %s", call.Procedure, call.Server, second)
		}
	}
	if len(c.Calls(agenttest.Register)) != 1 || hb[0].Server != second {
		t.Errorf("want one registration and heartbeats with %s", second)
	}
	if st := a.Status(); st.Server != second || st.State != StateReady {
		t.Errorf("status %s with %s, want ready with %s", st.State, st.Server, second)
	}
}

// A server that stops mid-session is replaced by the next one without
// waiting for a backoff, and without registering again.
func TestFailoverMidSession(t *testing.T) {
	c := agenttest.NewCluster(t, 2)
	c.SetTTL(3 * time.Second)
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)
	first, second := c.Addrs()[0], c.Addrs()[1]

	if hb := c.WaitForCalls(agenttest.Heartbeat, 1); hb[0].Server != first {
		t.Fatalf("first heartbeat to %s, want %s", hb[0].Server, first)
	}
	settle(t, clk)
	c.Server(0).Stop()
	clk.fireNext(t)
	hb := c.WaitForCalls(agenttest.Heartbeat, 2)
	settle(t, clk)
	if got := hb[len(hb)-1].Server; got != second {
		t.Errorf("heartbeat after failover to %s, want %s", got, second)
	}
	if n := len(c.Calls(agenttest.Register)); n != 1 {
		t.Errorf("%d registrations, want 1", n)
	}
	// The session goes on with the second server at the TTL's pace.
	if d := clk.fireNext(t); d != time.Second {
		t.Errorf("next heartbeat in %v, want 1s", d)
	}
	if hb := c.WaitForCalls(agenttest.Heartbeat, 3); hb[2].Server != second {
		t.Errorf("heartbeat to %s, want %s", hb[2].Server, second)
	}
	settle(t, clk)
	if st := a.Status(); st.Server != second {
		t.Errorf("status server %s, want %s", st.Server, second)
	}
}

// With every server down, rounds of attempts are spaced by a backoff that
// doubles (the cap is TestBackoff's).
func TestBackoffWhenAllServersDown(t *testing.T) {
	c := agenttest.NewCluster(t, 2)
	cfg := enrolled(t, c)
	c.Server(0).Stop()
	c.Server(1).Stop()
	a, clk, _ := newTestAgent(t, cfg)
	a.randN = func(n int64) int64 { return n - 1 } // always the ceiling
	a.dialTimeout = 50 * time.Millisecond          // nothing answers anyway
	start(t, a)

	want := backoffBase
	for range 4 {
		if d := clk.fireNext(t); d != want-1 {
			t.Fatalf("backoff %v, want %v", d, want-1)
		}
		want *= 2
	}
	// Each round tried both servers once.
	if st := a.Status(); st.LastError == nil || st.State != StateConnecting || st.Heartbeats != 0 {
		t.Errorf("status %s, %d heartbeats, last error %v: want connecting, and the failure", st.State, st.Heartbeats, st.LastError)
	}
}

// enrolled enrolls an agent with c, stops it, and returns its
// configuration, whose data directory now holds an identity.
func enrolled(t *testing.T, c *agenttest.Cluster) Config {
	t.Helper()
	cfg := testConfig(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	stop, _, _ := start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestHeartbeatFollowsTTL(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(3 * time.Second)
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)

	for i, step := range []struct {
		nextTTL  time.Duration // what the next heartbeat answers with
		interval time.Duration // the wait before that heartbeat
	}{
		{300 * time.Millisecond, time.Second},      // TTL 3s / 3
		{90 * time.Second, 200 * time.Millisecond}, // 100ms is too fast
		{time.Minute, 30 * time.Second},
		{0, 20 * time.Second}, // no TTL: the default 30s
		{3 * time.Second, 10 * time.Second},
	} {
		c.SetTTL(step.nextTTL)
		if d := clk.fireNext(t); d != step.interval {
			t.Errorf("wait before heartbeat %d: %v, want %v", i+2, d, step.interval)
		}
		if n := len(c.WaitForCalls(agenttest.Heartbeat, i+2)); n != i+2 {
			t.Errorf("%d heartbeats after the wait, want %d", n, i+2)
		}
	}
	settle(t, clk)
	st := a.Status()
	if st.HeartbeatTTL != 3*time.Second || !st.LastHeartbeat.Equal(clk.Now()) {
		t.Errorf("status TTL %v at %v, want 3s at %v", st.HeartbeatTTL, st.LastHeartbeat, clk.Now())
	}
}

// The heartbeat answers' server list replaces the one in the identity.
func TestServerListFromHeartbeat(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := testConfig(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	stop, _, _ := start(t, a)
	c.SetAdvertisedServers([]string{c.Addrs()[0], "10.0.0.7:7400"})
	c.WaitForCalls(agenttest.Heartbeat, 1)
	settle(t, clk)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	id, err := loadIdentity(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(id.Servers, ","); got != c.Addrs()[0]+",10.0.0.7:7400" {
		t.Errorf("saved servers %s", got)
	}
	if got := a.Status().Servers; len(got) != 2 {
		t.Errorf("status servers %v", got)
	}
}

func TestCertificateRenewal(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(3 * time.Hour) // heartbeats hourly, so renewal is the next thing
	cfg := testConfig(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	old, err := loadIdentity(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	leaf := old.Cert.Leaf
	lifetime := leaf.NotAfter.Sub(leaf.NotBefore)

	_, left := clk.nextTimer(t)
	at := clk.Now().Add(left)
	if want := leaf.NotBefore.Add(lifetime * 2 / 3); !at.Equal(want) {
		t.Errorf("renewal at %v, want two thirds into the lifetime, %v", at, want)
	}
	if !at.Before(leaf.NotAfter) {
		t.Fatalf("renewal at %v, after expiry at %v", at, leaf.NotAfter)
	}
	c.SetCertValidity(24 * time.Hour)
	clk.Advance(left)
	renew := c.WaitForCalls(agenttest.RenewCertificate, 1)[0]
	if renew.Cert.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Error("renewal not made with the old certificate")
	}
	csr, err := x509.ParseCertificateRequest(renew.Request.(*droverv1.RenewCertificateRequest).GetCsrDer())
	if err != nil {
		t.Fatal(err)
	}
	if leaf.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) {
		t.Error("renewal reused the old key")
	}

	// The next call uses the new certificate, which is saved with its key.
	clk.fireNext(t)
	hb := c.WaitForCalls(agenttest.Heartbeat, 2)
	settle(t, clk)
	id, err := loadIdentity(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if id.NodeID != old.NodeID || !id.Cert.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) {
		t.Errorf("saved identity %s holds key %v, want %s with the CSR's key", id.NodeID, id.Cert.Leaf.PublicKey, old.NodeID)
	}
	if got := hb[1].Cert.SerialNumber; got.Cmp(id.Cert.Leaf.SerialNumber) != 0 {
		t.Errorf("heartbeat with certificate %v, want the renewed %v", got, id.Cert.Leaf.SerialNumber)
	}
	st := a.Status()
	if st.Renewals != 1 || !st.CertificateExpiry.Equal(id.Cert.Leaf.NotAfter) {
		t.Errorf("status: %d renewals, expiry %v; want 1, %v", st.Renewals, st.CertificateExpiry, id.Cert.Leaf.NotAfter)
	}
	// The next renewal is two thirds into the new certificate's day, so
	// what comes next is a heartbeat.
	if _, left := clk.nextTimer(t); left != time.Hour {
		t.Errorf("next wake-up in %v, want the heartbeat in 1h", left)
	}
	if n := len(c.Calls(agenttest.RenewCertificate)); n != 1 {
		t.Errorf("%d renewals, want 1", n)
	}
}

// A certificate that expired while the agent was away is reported, not
// sent.
func TestExpiredCertificate(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	cfg := enrolled(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	clk.Advance(2 * time.Hour)
	err := runToError(t, a)
	if !errors.Is(err, ErrCertificateExpired) || !strings.Contains(Hint(err), IdentityFile) {
		t.Fatalf("Run = %v (hint %q), want ErrCertificateExpired", err, Hint(err))
	}
}

func TestRevoked(t *testing.T) {
	c := agenttest.NewCluster(t, 2)
	c.SetTTL(3 * time.Second)
	cfg := testConfig(t, c)
	a, clk, _ := newTestAgent(t, cfg)
	_, done, result := start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)

	c.Revoke(a.Status().NodeID)
	clk.fireNext(t)
	waitDone(t, done)
	err := result()
	if !errors.Is(err, ErrRevoked) {
		t.Fatalf("Run = %v, want ErrRevoked", err)
	}
	path := filepath.Join(cfg.DataDir, IdentityFile)
	if !strings.Contains(Hint(err), path) {
		t.Errorf("hint %q should name %s", Hint(err), path)
	}
	if st := a.Status(); st.State != StateStopped || !errors.Is(st.Err, ErrRevoked) {
		t.Errorf("status %s, %v", st.State, st.Err)
	}
	// It asked no other server, and did not enroll again.
	if n, m := len(c.Calls(agenttest.Heartbeat)), len(c.Calls(agenttest.Enroll)); n != 2 || m != 1 {
		t.Errorf("%d heartbeats and %d enrollments, want 2 and 1", n, m)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("identity file: %v; the agent must leave it for the operator", err)
	}
}

func TestRegistersAgainWhenHardwareChanges(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(6 * time.Hour) // heartbeats every 2h
	c.SetCertValidity(24 * time.Hour)
	cfg := testConfig(t, c)
	cfg.ProbeInterval = time.Hour
	a, clk, hw := newTestAgent(t, cfg)
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)

	// Readings that change by themselves are no reason to register.
	hw.change(func(inv *hwprobe.Inventory) { inv.Memory.AvailableBytes /= 2 })
	if d := clk.fireNext(t); d != time.Hour {
		t.Fatalf("timer %v, want the hourly probe", d)
	}
	hw.waitProbes(t, 2)
	clk.nextTimer(t) // back to sleep
	if n := len(c.Calls(agenttest.Register)); n != 1 {
		t.Errorf("%d registrations after a probe with nothing new, want 1", n)
	}

	hw.change(func(inv *hwprobe.Inventory) {
		inv.GPUs = append(inv.GPUs, hwprobe.GPU{UUID: "GPU-1", Name: "NVIDIA H100 80GB HBM3", MemoryTotalBytes: 80 << 30})
	})
	clk.fireNext(t)
	reg := c.WaitForCalls(agenttest.Register, 2)
	gpus := reg[1].Request.(*droverv1.RegisterRequest).GetInventory().GetGpus()
	if len(gpus) != 1 || gpus[0].GetUuid() != "GPU-1" {
		t.Errorf("registered GPUs %v, want GPU-1", gpus)
	}
}

func TestRegistersAgainWhenAsked(t *testing.T) {
	c := agenttest.NewCluster(t, 1)
	c.SetTTL(3 * time.Second)
	a, clk, _ := newTestAgent(t, testConfig(t, c))
	start(t, a)
	c.WaitForCalls(agenttest.Heartbeat, 1)
	c.RequestReregister()
	clk.fireNext(t)
	c.WaitForCalls(agenttest.Register, 2)
	settle(t, clk)
	// The watch of the node's assignments runs beside the session's calls.
	calls := slices.DeleteFunc(c.Calls(""), func(call agenttest.Call) bool { return call.Procedure == agenttest.WatchAssignments })
	if last := calls[len(calls)-1].Procedure; last != agenttest.Register {
		t.Errorf("last call %s, want Register right after the heartbeat that asked", last)
	}
	if st := a.Status(); st.Registrations != 2 {
		t.Errorf("%d registrations in status, want 2", st.Registrations)
	}
}
