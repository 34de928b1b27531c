package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/apierror"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// shortTTLs makes heartbeat deadlines short enough for tests.
func shortTTLs(cfg *server.Config) {
	cfg.HeartbeatMinTTL = server.Duration(time.Second)
	cfg.HeartbeatLeaderGrace = server.Duration(3 * time.Second)
}

// operator returns token and node clients with the management token.
func operator(t testing.TB, c *cluster.Cluster, n *cluster.Node) (droverv1connect.TokenServiceClient, droverv1connect.NodeServiceClient) {
	t.Helper()
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	hdr := http.Header{"Authorization": []string{"Bearer " + c.Token()}}
	hc := &http.Client{Transport: headerTransport{base: h2, hdr: hdr}}
	base := "https://" + n.APIAddr()
	return droverv1connect.NewTokenServiceClient(hc, base), droverv1connect.NewNodeServiceClient(hc, base)
}

// createToken makes a join token and returns its string.
func createToken(t testing.TB, tokens droverv1connect.TokenServiceClient, req *droverv1.CreateTokenRequest) (string, *droverv1.JoinToken) {
	t.Helper()
	res, err := tokens.CreateToken(testCtx(t, 10*time.Second), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return res.Msg.GetTokenString(), res.Msg.GetToken()
}

// fakeAgent plays drover-agent: a key, a CSR, and once enrolled a client
// certificate it calls the AgentService with.
type fakeAgent struct {
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	node *droverv1.Node
	cert tls.Certificate
}

func newFakeAgent(t testing.TB, pool *x509.CertPool) *fakeAgent {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeAgent{key: key, pool: pool}
}

func (a *fakeAgent) csr(t testing.TB) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, a.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// client returns an AgentService client for addr; with the agent's
// certificate once it has one. extra headers are sent on every call.
func (a *fakeAgent) client(t testing.TB, addr string, extra http.Header) droverv1connect.AgentServiceClient {
	t.Helper()
	return droverv1connect.NewAgentServiceClient(a.httpClient(t, extra), "https://"+addr)
}

// httpClient is an HTTP client that presents the agent's certificate, if
// it has one, and adds extra to every request.
func (a *fakeAgent) httpClient(t testing.TB, extra http.Header) *http.Client {
	t.Helper()
	conf := &tls.Config{RootCAs: a.pool, MinVersion: tls.VersionTLS13}
	if a.cert.Certificate != nil {
		// Always present it, even when the server asks for another CA's
		// certificates (crypto/tls would otherwise send none).
		cert := a.cert
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	h2 := &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	return &http.Client{Transport: headerTransport{base: h2, hdr: extra}}
}

func (a *fakeAgent) enroll(t testing.TB, addr, token, name string) (*droverv1.EnrollResponse, error) {
	t.Helper()
	res, err := a.client(t, addr, nil).Enroll(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.EnrollRequest{
		Token: token, Name: name, CsrDer: a.csr(t), AgentVersion: "test",
	}))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(res.Msg.GetCertificatePem())
	if block == nil {
		t.Fatalf("enroll returned no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	a.cert = tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: a.key, Leaf: leaf}
	a.node = res.Msg.GetNode()
	return res.Msg, nil
}

func (a *fakeAgent) mustEnrollRegister(t testing.TB, addr, token, name string) {
	t.Helper()
	if _, err := a.enroll(t, addr, token, name); err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	res, err := a.client(t, addr, nil).Register(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "test"}))
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	if got := res.Msg.GetNode().GetStatus(); got != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("registered node is %v, want READY", got)
	}
}

// heartbeatLoop heartbeats every interval through addrs (round robin
// over the ones that answer) until stop is closed, and counts failures.
// heartbeatLoop heartbeats every interval until stop, through the first of
// addrs that answers, counting rounds that succeeded in beats and rounds no
// server answered in failures (either may be nil).
func (a *fakeAgent) heartbeatLoop(t *testing.T, addrs func() []string, interval time.Duration, stop <-chan struct{}, beats, failures *atomic.Int64) {
	clients := map[string]droverv1connect.AgentServiceClient{}
	var mu sync.Mutex
	get := func(addr string) droverv1connect.AgentServiceClient {
		mu.Lock()
		defer mu.Unlock()
		if c, ok := clients[addr]; ok {
			return c
		}
		c := a.client(t, addr, nil)
		clients[addr] = c
		return c
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(interval):
		}
		as := addrs()
		ok := false
		for j := range as {
			ctx := testCtx(t, 2*time.Second)
			if _, err := get(as[(i+j)%len(as)]).Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{})); err == nil {
				ok = true
				break
			}
		}
		switch {
		case ok && beats != nil:
			beats.Add(1)
		case !ok && failures != nil:
			failures.Add(1)
		}
	}
}

func nodeStatus(t *testing.T, s *server.Server, id string) droverv1.NodeStatus {
	t.Helper()
	n, err := s.State().Node(id)
	if err != nil {
		t.Fatalf("node %s: %v", id, err)
	}
	return n.GetStatus()
}

func waitStatus(t *testing.T, c *cluster.Cluster, id string, want droverv1.NodeStatus, d time.Duration) {
	t.Helper()
	eventually(t, d, fmt.Sprintf("node %s %v", id, want), func() error {
		l := c.Leader()
		if l == nil {
			return fmt.Errorf("no leader")
		}
		if got := nodeStatus(t, l.Server(), id); got != want {
			return fmt.Errorf("status %v", got)
		}
		return nil
	})
}

// An agent enrolls with a join token, registers, and stays READY while it
// heartbeats; silent past its TTL and slack it is marked DOWN, and its
// next heartbeat makes it READY again.
func TestAgentLifecycle(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{Configure: shortTTLs})
	l := c.Leader()
	tokens, nodes := operator(t, c, l)
	tokStr, tok := createToken(t, tokens, &droverv1.CreateTokenRequest{
		Description: "lab", MaxUses: 5, Labels: map[string]string{"zone": "a"}, Site: "lab-1",
	})
	if !strings.HasPrefix(tokStr, "drover-join.v1."+c.CA.Fingerprint()+"."+tok.GetId()+".") {
		t.Fatalf("token string %q does not pin this CA and id %s", tokStr, tok.GetId())
	}
	if tok.GetExpireTime() == nil || time.Until(tok.GetExpireTime().AsTime()) > time.Hour {
		t.Fatalf("default token expiry %v, want about an hour", tok.GetExpireTime())
	}
	stored, err := l.Server().State().JoinToken(tok.GetId())
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := jointoken.Parse(tokStr)
	if h := parsed.SecretHash(); string(stored.GetSecretSha256()) != string(h[:]) || strings.Contains(stored.String(), parsed.Secret) {
		t.Fatal("the state does not hold exactly the secret's hash")
	}
	list, err := tokens.ListTokens(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListTokensRequest{}))
	if err != nil || len(list.Msg.GetTokens()) != 1 {
		t.Fatalf("ListTokens: %v %v", list, err)
	}

	// Cluster info is public and needs no certificate.
	a := newFakeAgent(t, c.CA.Pool())
	info, err := a.client(t, l.APIAddr(), nil).GetClusterInfo(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		t.Fatalf("GetClusterInfo: %v", err)
	}
	if string(info.Msg.GetCaPem()) != string(c.CA.CertPEM()) || info.Msg.GetClusterId() == "" || len(info.Msg.GetServers()) != 1 {
		t.Fatalf("cluster info %v", info.Msg)
	}

	enr, err := a.enroll(t, l.APIAddr(), tokStr, "  GPU Box_01!  ")
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	n := enr.GetNode()
	if n.GetName() != "gpu-box_01" || !strings.HasPrefix(n.GetId(), "n-") || len(n.GetId()) != 14 ||
		n.GetSite() != "lab-1" || n.GetLabels()["zone"] != "a" || n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_INITIALIZING {
		t.Fatalf("enrolled node %v", n)
	}
	if a.cert.Leaf.Subject.CommonName != n.GetId() || pki.RoleOf(a.cert.Leaf) != pki.RoleAgent {
		t.Fatalf("certificate CN %q role %q", a.cert.Leaf.Subject.CommonName, pki.RoleOf(a.cert.Leaf))
	}
	if want := pki.DeriveKey(c.CA, "drover site gossip v1 lab-1", 32); string(enr.GetSiteGossipKey()) != string(want) {
		t.Fatal("site gossip key is not the one derived for the site")
	}
	// Agent calls need the certificate: without it they are refused.
	_, err = newFakeAgent(t, c.CA.Pool()).client(t, l.APIAddr(), nil).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	wantErr(t, "heartbeat without a certificate", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)

	ac := a.client(t, l.APIAddr(), nil)
	hb, err := ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	if err != nil || !hb.Msg.GetReregister() {
		t.Fatalf("heartbeat before register: %v %v, want a request to register", hb, err)
	}
	reg, err := ac.Register(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "test"}))
	if err != nil || reg.Msg.GetNode().GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("register: %v %v", reg, err)
	}
	renew, err := ac.RenewCertificate(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RenewCertificateRequest{CsrDer: a.csr(t)}))
	if err != nil || len(renew.Msg.GetCertificatePem()) == 0 {
		t.Fatalf("renew: %v", err)
	}

	// Heartbeating keeps it READY well past the TTL: seven heartbeats
	// 300ms apart span more than the 1.65s (TTL and slack) after which a
	// silent node is marked down.
	stop := make(chan struct{})
	done := make(chan struct{})
	var beats atomic.Int64
	go func() {
		defer close(done)
		a.heartbeatLoop(t, func() []string { return []string{l.APIAddr()} }, 300*time.Millisecond, stop, &beats, nil)
	}()
	eventually(t, 30*time.Second, "seven heartbeats", func() error {
		if n := beats.Load(); n < 7 {
			return fmt.Errorf("%d heartbeats", n)
		}
		return nil
	})
	if got := nodeStatus(t, l.Server(), n.GetId()); got != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("heartbeating node is %v", got)
	}
	if node, err := l.Server().State().Node(n.GetId()); err != nil {
		t.Fatal(err)
	} else if h := node.GetHistory(); len(h) > 0 && h[len(h)-1].GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("heartbeating node went through %v", h[len(h)-1])
	}
	hb, err = ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if ttl := hb.Msg.GetTtl().AsDuration(); ttl < time.Second || ttl > 1100*time.Millisecond {
		t.Fatalf("TTL %v, want the 1s minimum plus at most 10%% jitter", ttl)
	}
	close(stop)
	<-done

	// Silent: DOWN within TTL (1.1s) + slack (50%) + a tick, with room.
	silentAt := time.Now()
	waitStatus(t, c, n.GetId(), droverv1.NodeStatus_NODE_STATUS_DOWN, 4*time.Second)
	if d := time.Since(silentAt); d < time.Second {
		t.Fatalf("marked down after %v, before its TTL", d)
	}
	hb, err = ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	if err != nil || hb.Msg.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
		t.Fatalf("heartbeat of a down node: %v %v", hb, err)
	}
	waitStatus(t, c, n.GetId(), droverv1.NodeStatus_NODE_STATUS_READY, 2*time.Second)

	// Operators see and manage the node by id or name.
	got, err := nodes.GetNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetNodeRequest{Node: "gpu-box_01"}))
	if err != nil || got.Msg.GetNode().GetId() != n.GetId() {
		t.Fatalf("GetNode by name: %v %v", got, err)
	}
	ls, err := nodes.ListNodes(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListNodesRequest{Labels: map[string]string{"zone": "a"}, Status: droverv1.NodeStatus_NODE_STATUS_READY}))
	if err != nil || len(ls.Msg.GetNodes()) != 1 {
		t.Fatalf("ListNodes: %v %v", ls, err)
	}
	ls, err = nodes.ListNodes(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListNodesRequest{Site: "elsewhere"}))
	if err != nil || len(ls.Msg.GetNodes()) != 0 {
		t.Fatalf("ListNodes by another site: %v %v", ls, err)
	}
	dr, err := nodes.DrainNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.DrainNodeRequest{Node: n.GetId(), Drain: true}))
	if err != nil || !dr.Msg.GetNode().GetDraining() {
		t.Fatalf("DrainNode: %v %v", dr, err)
	}
	lb, err := nodes.LabelNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.LabelNodeRequest{Node: n.GetId(), Set: map[string]string{"gpu": "a100"}, Remove: []string{"zone"}}))
	if err != nil || lb.Msg.GetNode().GetLabels()["gpu"] != "a100" || lb.Msg.GetNode().GetLabels()["zone"] != "" {
		t.Fatalf("LabelNode: %v %v", lb, err)
	}
	_, err = nodes.GetNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetNodeRequest{Node: "nope"}))
	wantErr(t, "GetNode of an unknown node", err, connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND)

	// Revoked: its certificate is refused from the next call on.
	if _, err := nodes.RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: n.GetId()})); err != nil {
		t.Fatalf("RevokeNode: %v", err)
	}
	_, err = ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	wantErr(t, "heartbeat of a revoked node", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED)
	if !strings.Contains(err.Error(), "revoked") || !strings.Contains(err.Error(), "operator") {
		t.Fatalf("revoked message %q does not say what happened and who fixes it", err)
	}
	_, err = ac.Register(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RegisterRequest{}))
	wantErr(t, "register of a revoked node", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED)

	// Its heartbeats refused, it is marked DOWN when its deadline passes
	// rather than staying READY, and operators see both facts.
	waitStatus(t, c, n.GetId(), droverv1.NodeStatus_NODE_STATUS_DOWN, 30*time.Second)
	got, err = nodes.GetNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetNodeRequest{Node: n.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	rn := got.Msg.GetNode()
	last := rn.GetHistory()[len(rn.GetHistory())-1]
	if !rn.GetRevoked() || rn.GetStatus() != droverv1.NodeStatus_NODE_STATUS_DOWN || !strings.Contains(last.GetReason(), "revoked") {
		t.Fatalf("revoked silent node: revoked %v, status %v, last change %v", rn.GetRevoked(), rn.GetStatus(), last)
	}

	_, body := httpGet(t, c, l, "/metrics")
	if v := metricValue(body, "drover_heartbeats_total"); v < 5 {
		t.Errorf("drover_heartbeats_total %v, want the heartbeats sent", v)
	}
	if v := metricValue(body, "drover_nodes", `status="down"`); v != 1 {
		t.Errorf(`drover_nodes{status="down"} = %v, want 1`, v)
	}
}

// An enrollment retried with the same key and token, as an agent whose
// answer was lost retries it, gets the same node and a certificate for
// it, and costs the token no second use; the retried identity works. A
// machine with another key is another node.
func TestEnrollRetryGetsSameNode(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	l := c.Leader()
	tokens, nodes := operator(t, c, l)
	addr := l.APIAddr()
	once, tok := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: 1})

	a := newFakeAgent(t, c.CA.Pool())
	first, err := a.enroll(t, addr, once, "edge-1")
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	firstCert := a.cert
	again, err := a.enroll(t, addr, once, "edge-1") // a new CSR for the same key
	if err != nil {
		t.Fatalf("retried enrollment: %v", err)
	}
	id := first.GetNode().GetId()
	if again.GetNode().GetId() != id || a.cert.Leaf.Subject.CommonName != id || firstCert.Leaf.Subject.CommonName != id {
		t.Fatalf("retry: node %s, certificate for %s; first: node %s, certificate for %s",
			again.GetNode().GetId(), a.cert.Leaf.Subject.CommonName, id, firstCert.Leaf.Subject.CommonName)
	}
	ls, err := nodes.ListNodes(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.ListNodesRequest{}))
	if err != nil || len(ls.Msg.GetNodes()) != 1 {
		t.Fatalf("ListNodes after a retry: %v, %v; want one node", ls, err)
	}
	if stored, err := l.Server().State().JoinToken(tok.GetId()); err != nil || stored.GetUses() != 1 {
		t.Fatalf("token after a retry: %v, %v; want 1 use", stored, err)
	}
	// The certificate of the retry is the node's identity.
	if _, err := a.client(t, addr, nil).Register(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "test"})); err != nil {
		t.Fatalf("register with the retry's certificate: %v", err)
	}
	_, err = newFakeAgent(t, c.CA.Pool()).enroll(t, addr, once, "edge-2")
	wantErr(t, "another machine with the used-up token", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP)
}

// Each refusal of a join token has its own reason, code and hint on the
// wire, and a message that says which refusal it was and holds no secret.
func TestEnrollRefusals(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	l := c.Leader()
	tokens, _ := operator(t, c, l)
	addr := l.APIAddr()

	expiring, et := createToken(t, tokens, &droverv1.CreateTokenRequest{Ttl: durationpb.New(time.Second)})
	revoked, rt := createToken(t, tokens, &droverv1.CreateTokenRequest{})
	if _, err := tokens.RevokeToken(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeTokenRequest{Id: rt.GetId()})); err != nil {
		t.Fatal(err)
	}
	once, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{MaxUses: 1})
	forever, ft := createToken(t, tokens, &droverv1.CreateTokenRequest{Ttl: durationpb.New(0)})
	if ft.GetExpireTime() != nil {
		t.Fatalf("ttl 0 token expires at %v", ft.GetExpireTime())
	}
	if _, err := newFakeAgent(t, c.CA.Pool()).enroll(t, addr, once, "first"); err != nil {
		t.Fatalf("first use of a one-use token: %v", err)
	}
	p, _ := jointoken.Parse(forever)
	wrongSecret := jointoken.Token{CAHash: p.CAHash, ID: p.ID, Secret: strings.Repeat("a", 32)}
	unknownID := jointoken.Token{CAHash: p.CAHash, ID: strings.Repeat("a", 8), Secret: p.Secret}
	other, err := pki.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCA := jointoken.Token{CAHash: other.Fingerprint(), ID: p.ID, Secret: p.Secret}
	time.Sleep(time.Until(et.GetExpireTime().AsTime()) + 100*time.Millisecond)

	const (
		unauthenticated = connect.CodeUnauthenticated
		invalidArgument = connect.CodeInvalidArgument
	)
	tests := []struct {
		name   string
		token  string
		code   connect.Code
		reason droverv1.ErrorReason
		says   string // in the message
		hint   string // in the hint
	}{
		{"expired token", expiring, unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED, "expired", "--ttl"},
		{"revoked token", revoked, unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED, "revoked", "revoked by an operator"},
		{"used-up token", once, unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP, "used up", "--max-uses"},
		{"another cluster's CA", otherCA.String(), unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_WRONG_CLUSTER, "another cluster", "--server"},
		{"wrong secret", wrongSecret.String(), unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "not valid", "whole token string"},
		{"unknown token id", unknownID.String(), unauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "not valid", "whole token string"},
		{"garbage token", "drover-join.v1.nonsense", invalidArgument, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "join token", "whole token string"},
		{"empty token", "", invalidArgument, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "join token", "whole token string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newFakeAgent(t, c.CA.Pool()).enroll(t, addr, tt.token, "edge")
			wantErr(t, tt.name, err, tt.code, tt.reason)
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("message %q does not say %q", err, tt.says)
			}
			if h := hintOf(err); !strings.Contains(h, tt.hint) {
				t.Errorf("hint %q does not say %q", h, tt.hint)
			}
			if p, perr := jointoken.Parse(tt.token); perr == nil && strings.Contains(err.Error()+hintOf(err), p.Secret) {
				t.Errorf("message leaks the secret: %q", err)
			}
		})
	}

	// A bad CSR does not cost the token a use.
	_, err = newFakeAgent(t, c.CA.Pool()).client(t, addr, nil).Enroll(testCtx(t, 10*time.Second),
		connect.NewRequest(&droverv1.EnrollRequest{Token: forever, Name: "x", CsrDer: []byte("junk")}))
	wantErr(t, "enroll with a junk CSR", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if st, _ := l.Server().State().JoinToken(ft.GetId()); st.GetUses() != 0 {
		t.Fatalf("a refused CSR used the token: uses %d", st.GetUses())
	}
}

// hintOf returns the hint of the ErrorDetail in err, or "".
func hintOf(err error) string {
	_, d := apierror.Detail(err)
	return d.GetHint()
}

// A node certificate the cluster no longer accepts is refused with a
// reason of its own: a node the cluster does not know with TOKEN_INVALID
// (Unauthenticated), a revoked node or one that left with NODE_REVOKED
// (PermissionDenied), each with a hint that says how to come back.
func TestAgentCertificateRefusals(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	l := c.Leader()
	tokens, nodes := operator(t, c, l)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{})
	addr := l.APIAddr()

	revoked := newFakeAgent(t, c.CA.Pool())
	revoked.mustEnrollRegister(t, addr, tok, "revoked")
	if _, err := nodes.RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: "revoked"})); err != nil {
		t.Fatalf("RevokeNode: %v", err)
	}

	left := newFakeAgent(t, c.CA.Pool())
	left.mustEnrollRegister(t, addr, tok, "left")
	cmd, err := fsm.Encode(droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS, &droverv1.SetNodeStatusCommand{
		Meta: &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: "server"},
		Updates: []*droverv1.NodeStatusUpdate{
			{NodeId: left.node.GetId(), Status: droverv1.NodeStatus_NODE_STATUS_LEFT, Reason: "test"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Server().Raft().Apply(cmd, 10*time.Second).Error(); err != nil {
		t.Fatalf("apply LEFT: %v", err)
	}
	if got := nodeStatus(t, l.Server(), left.node.GetId()); got != droverv1.NodeStatus_NODE_STATUS_LEFT {
		t.Fatalf("node %s is %v, want LEFT", left.node.GetId(), got)
	}

	// A certificate the cluster CA signed for a node it has no record of,
	// as after the cluster was rebuilt.
	unknown := newFakeAgent(t, c.CA.Pool())
	der, err := c.CA.SignCSR(unknown.csr(t), "ghost", pki.RoleAgent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	unknown.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: unknown.key}

	tests := []struct {
		name   string
		agent  *fakeAgent
		code   connect.Code
		reason droverv1.ErrorReason
		says   string // in the message
		hint   string // in the hint
	}{
		{"unknown node", unknown, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "not known", "join token"},
		{"revoked node", revoked, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED, "revoked", "identity file"},
		{"left node", left, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED, "left the fleet", "identity file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ac := tt.agent.client(t, addr, nil)
			_, err := ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
			wantErr(t, "heartbeat", err, tt.code, tt.reason)
			if !strings.Contains(err.Error(), tt.says) {
				t.Errorf("message %q does not say %q", err, tt.says)
			}
			if h := hintOf(err); !strings.Contains(h, tt.hint) {
				t.Errorf("hint %q does not say %q", h, tt.hint)
			}
			_, err = ac.Register(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RegisterRequest{}))
			wantErr(t, "register", err, tt.code, tt.reason)
		})
	}
}

// A certificate from another CA never gets past TLS, and a client cannot
// claim an agent's identity with the forwarding header.
func TestAgentIdentityCannotBeForged(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	l := c.Leader()
	tokens, _ := operator(t, c, l)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{})
	victim := newFakeAgent(t, c.CA.Pool())
	victim.mustEnrollRegister(t, l.APIAddr(), tok, "victim")

	other, err := pki.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	outsider := newFakeAgent(t, c.CA.Pool())
	der, err := other.SignCSR(outsider.csr(t), victim.node.GetId(), pki.RoleAgent, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	outsider.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: outsider.key}
	_, err = outsider.client(t, l.APIAddr(), nil).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	// The handshake fails; how that surfaces (reset, alert, canceled)
	// depends on timing, but no handler ever answers.
	if err == nil || reasonOf(t, err) != droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Fatalf("heartbeat with another CA's certificate: %v, want a TLS failure", err)
	}

	// No certificate, the victim's certificate in the header: refused.
	forged := http.Header{"Drover-Forwarded-Client-Cert": []string{base64.StdEncoding.EncodeToString(victim.cert.Certificate[0])}}
	_, err = newFakeAgent(t, c.CA.Pool()).client(t, l.APIAddr(), forged).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	wantErr(t, "heartbeat with a forged forwarded certificate", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)

	// Another agent's own certificate plus the victim's in the header: it
	// is itself, not the victim.
	mallory := newFakeAgent(t, c.CA.Pool())
	mallory.mustEnrollRegister(t, l.APIAddr(), tok, "mallory")
	if _, err := nodesOp(t, c, l).RevokeNode(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.RevokeNodeRequest{Node: "mallory"})); err != nil {
		t.Fatal(err)
	}
	_, err = mallory.client(t, l.APIAddr(), forged).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{}))
	wantErr(t, "revoked agent claiming another's certificate", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED)
}

func nodesOp(t *testing.T, c *cluster.Cluster, n *cluster.Node) droverv1connect.NodeServiceClient {
	_, nodes := operator(t, c, n)
	return nodes
}

// Agents talk to any server: a follower forwards their calls to the
// leader with their identity. Killing the leader while they heartbeat
// marks none of them down, thanks to the new leader's grace period; and
// heartbeats without transitions never grow the Raft log.
func TestFleetHeartbeatsAcrossLeaderChange(t *testing.T) {
	// Longer than shortTTLs: eleven agents heartbeating through three
	// servers on a loaded two-core machine must not miss a TTL by
	// starvation alone, and the grace must be long enough that a leader
	// that skipped it would be caught (see the bound below).
	const ttl, grace = 2 * time.Second, 5 * time.Second
	c := cluster.Make(t, 3, cluster.Options{Configure: func(cfg *server.Config) {
		cfg.HeartbeatMinTTL = server.Duration(ttl)
		cfg.HeartbeatLeaderGrace = server.Duration(grace)
	}})
	l := c.Leader()
	f := followerOf(t, c, l)
	tokens, _ := operator(t, c, l)
	tok, _ := createToken(t, tokens, &droverv1.CreateTokenRequest{})

	const fleet = 11 // 10 that keep heartbeating, 1 that stops
	agents := make([]*fakeAgent, fleet)
	for i := range agents {
		agents[i] = newFakeAgent(t, c.CA.Pool())
		// Through the follower: Enroll and Register are forwarded, the
		// latter with the agent's certificate in the header.
		agents[i].mustEnrollRegister(t, f.APIAddr(), tok, fmt.Sprintf("edge-%02d", i))
	}

	// Heartbeats through a follower without transitions leave the log alone.
	ac := agents[0].client(t, f.APIAddr(), nil)
	for range 3 { // settle: no transition pending
		if _, err := ac.Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{})); err != nil {
			t.Fatalf("heartbeat through a follower: %v", err)
		}
	}
	before := l.Server().Raft().LastIndex()
	for i := range 200 {
		a := agents[i%fleet]
		if _, err := a.client(t, f.APIAddr(), nil).Heartbeat(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.HeartbeatRequest{})); err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
	}
	// On a slow machine an agent can miss its TTL between two of these
	// calls, and its next heartbeat then brings it back: those status
	// transitions are the only entries heartbeats may add.
	after := l.Server().Raft().LastIndex()
	transitions := map[uint64]bool{}
	for _, a := range agents {
		n, err := l.Server().State().Node(a.node.GetId())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range n.GetHistory() {
			if h.GetIndex() > before {
				transitions[h.GetIndex()] = true
			}
		}
	}
	if after-before != uint64(len(transitions)) {
		t.Fatalf("200 heartbeats grew the leader's log from %d to %d with %d status transitions", before, after, len(transitions))
	}

	// Everyone heartbeats through every server, at half the TTL.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures atomic.Int64
	addrs := func() []string {
		var out []string
		for _, n := range c.Nodes() {
			if n.Server() != nil {
				out = append(out, n.APIAddr())
			}
		}
		return out
	}
	// The last agent dies with the leader: the new leader must still
	// mark it down, but only after its grace period.
	lastStop := make(chan struct{})
	beats := make([]atomic.Int64, fleet)
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := (<-chan struct{})(stop)
			if i == fleet-1 {
				st = lastStop
			}
			a.heartbeatLoop(t, addrs, 400*time.Millisecond, st, &beats[i], &failures)
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// waitBeats waits until agent i has heartbeated successfully at
	// least min[i] times, for every i in min.
	waitBeats := func(what string, min []int64) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error {
			for i, want := range min {
				if n := beats[i].Load(); n < want {
					return fmt.Errorf("agent %d: %d heartbeats, want %d", i, n, want)
				}
			}
			return nil
		})
	}
	twice := make([]int64, fleet)
	for i := range twice {
		twice[i] = 2
	}
	waitBeats("every agent heartbeats", twice)

	old := c.Leader()
	killIndex := old.Server().Raft().LastIndex()
	close(lastStop)
	killedAt := time.Now()
	c.Kill(old)
	newLeader, err := c.WaitLeader(testCtx(t, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader %s; %s leads", old.Name, newLeader.Name)
	dead := agents[fleet-1].node.GetId()
	waitStatus(t, c, dead, droverv1.NodeStatus_NODE_STATUS_DOWN, 30*time.Second)
	// The new leader's tracker starts after the kill and gives every node
	// one TTL plus the grace, so the leader's own stamp on the transition
	// is at least that long after the kill, however slow the machine.
	// Without the grace the silent node would be down an election plus
	// TTL and slack after the kill: about 4-5s, under the 7s bound.
	deadNode, err := newLeader.Server().State().Node(dead)
	if err != nil {
		t.Fatal(err)
	}
	h := deadNode.GetHistory()
	last := h[len(h)-1]
	downAfter := last.GetTime().AsTime().Sub(killedAt)
	if last.GetStatus() != droverv1.NodeStatus_NODE_STATUS_DOWN || downAfter < ttl+grace {
		t.Fatalf("silent node went %v %v after the leader was killed, inside its grace period (TTL %v + grace %v)", last.GetStatus(), downAfter, ttl, grace)
	}
	t.Logf("silent node marked down %v after the leader was killed", downAfter.Round(10*time.Millisecond))
	// Every live agent's grace ended with the silent one's; two more
	// heartbeats each show whether any of them was marked down meanwhile.
	more := make([]int64, fleet-1)
	for i := range more {
		more[i] = beats[i].Load() + 2
	}
	waitBeats("two more heartbeats from every live agent", more)
	for _, a := range agents[:fleet-1] {
		n, err := newLeader.Server().State().Node(a.node.GetId())
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range n.GetHistory() {
			if h.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN && h.GetIndex() > killIndex {
				t.Errorf("node %s was marked down across the leader change (%s)", n.GetName(), h.GetReason())
			}
		}
		if n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
			t.Errorf("node %s is %v", n.GetName(), n.GetStatus())
		}
	}
	t.Logf("%d heartbeat rounds failed on every server during the election", failures.Load())
}
