package scenarios

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/internal/apierror"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// createToken makes a join token on c and returns its id and string.
func createToken(t *testing.T, c *cluster.Cluster, ttl time.Duration, maxUses uint32) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Client(l, false).Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
		Ttl: durationpb.New(ttl), MaxUses: maxUses,
	}))
	if err != nil {
		t.Fatalf("create join token: %v", err)
	}
	return res.Msg.GetToken().GetId(), res.Msg.GetTokenString()
}

// runAgent runs an agent with cfg until it stops by itself, which an agent
// whose token or identity is refused must do, and returns why.
func runAgent(t *testing.T, cfg agent.Config) error {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("agent %s kept running for 30s; want it to stop with a refusal (last error: %v)", cfg.Name, a.Status().LastError)
	}
	return err
}

// startAgent runs an agent with cfg in the background until it is ready,
// and returns a function that stops it and returns why Run ended.
func startAgent(t *testing.T, cfg agent.Config) (*agent.Agent, func() error) {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(30 * time.Second)
	for a.Status().State != agent.StateReady {
		if st := a.Status(); st.State == agent.StateStopped || time.Now().After(deadline) {
			t.Fatalf("agent %s did not become ready: state %s, err %v, last error %v", cfg.Name, st.State, st.Err, st.LastError)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a, stop
}

// Scenario: every way a join token or node credential can be misused is
// refused, each with its own error, and none of them enrolls a node.
func TestTokenMisuseIsRefused(t *testing.T) {
	c := cluster.Make(t, 3, cluster.Options{})
	other := cluster.Make(t, 1, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Client(l, false)

	_, expired := createToken(t, c, 500*time.Millisecond, 0)
	revokedID, revoked := createToken(t, c, time.Hour, 0)
	if _, err := cl.Tokens.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeTokenRequest{Id: revokedID})); err != nil {
		t.Fatal(err)
	}
	_, once := createToken(t, c, time.Hour, 1)
	_, foreign := createToken(t, other, time.Hour, 0)
	_, good := createToken(t, c, time.Hour, 0)
	time.Sleep(time.Second) // the expired token's TTL passes

	// The one use of the one-use token; the agent keeps running.
	startAgent(t, c.AgentConfig("first-use", once))

	for _, tc := range []struct {
		name, token string
		want        error
		notWant     error
	}{
		{name: "expired", token: expired, want: agent.ErrTokenExpired},
		{name: "revoked", token: revoked, want: agent.ErrTokenRevoked},
		{name: "used-up", token: once, want: agent.ErrTokenUsedUp},
		// The agent checks the CA itself and never sends the secret: the
		// refusal is its own, not the server's.
		{name: "ca-mismatch", token: foreign, want: jointoken.ErrCAMismatch, notWant: agent.ErrTokenRefused},
	} {
		err := runAgent(t, c.AgentConfig(tc.name, tc.token))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s token: agent stopped with %v; want %v", tc.name, err, tc.want)
		}
		if tc.notWant != nil && errors.Is(err, tc.notWant) {
			t.Errorf("%s token: agent stopped with %v, which is also %v", tc.name, err, tc.notWant)
		}
		for _, k := range []error{agent.ErrTokenExpired, agent.ErrTokenRevoked, agent.ErrTokenUsedUp, jointoken.ErrCAMismatch} {
			if k != tc.want && errors.Is(err, k) {
				t.Errorf("%s token: agent error %v also reads as %v; each refusal needs its own error", tc.name, err, k)
			}
		}
	}
	cfg := c.AgentConfig("malformed", "")
	cfg.Token = strings.Replace(good, "drover-join.v1.", "drover-join.v9.", 1)
	if _, err := agent.New(cfg); !errors.Is(err, agent.ErrInvalidConfig) || !strings.Contains(err.Error(), "--token") {
		t.Errorf("malformed token: %v; want an invalid config error naming --token", err)
	}

	// A revoked node: its running agent is told on its next call and
	// stops, and does not enroll again by itself.
	victim, stopVictim := startAgent(t, c.AgentConfig("victim", good))
	if _, err := cl.Nodes.RevokeNode(ctx, connect.NewRequest(&droverv1.RevokeNodeRequest{Node: victim.Status().NodeID})); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for victim.Status().State != agent.StateStopped && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := stopVictim(); !errors.Is(err, agent.ErrRevoked) {
		t.Errorf("revoked node's agent: %v; want it to stop with ErrRevoked", err)
	}

	// Only the two good enrollments made nodes.
	nodes, err := cl.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes.Msg.GetNodes() {
		names = append(names, n.GetName())
	}
	if strings.Join(names, ",") != "first-use,victim" {
		t.Errorf("nodes after the misuse: %v; want only first-use and victim", names)
	}
}

// Scenario: a certificate signed by another cluster's CA is refused at
// the TLS handshake, before any call is served; a certificate of this
// cluster for a node it does not know is refused with its own reason.
func TestForeignCertificateIsRefused(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	foreignCA, err := pki.NewCA("another cluster", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func(issuer *pki.CA, nodeID string) error {
		cert, err := issuer.IssueClientCert(nodeID, pki.RoleAgent, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http3.Transport{TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS13,
			RootCAs:    c.CA.Pool(),
			ServerName: pki.PeerServerName,
			// Presented whatever CAs the server asks for, as the agent
			// does (a plain Certificates list would hold back a
			// certificate the server's CA did not sign).
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		}}
		defer tr.Close()
		client := droverv1connect.NewAgentServiceClient(&http.Client{Transport: tr}, "https://"+c.Nodes()[0].APIAddr())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = client.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{}))
		return err
	}

	err = heartbeat(foreignCA, "n-foreign00001")
	if err == nil {
		t.Fatal("a heartbeat with another cluster's certificate was answered")
	}
	if _, detail := apierror.Detail(err); detail != nil {
		t.Errorf("another cluster's certificate got as far as the API (reason %s); want it refused at the TLS handshake", detail.GetReason())
	}
	t.Logf("another cluster's certificate: %v", err)
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("refusal of another cluster's certificate does not say it is about the certificate: %v", err)
	}

	err = heartbeat(c.CA, "n-unknown00001")
	if _, detail := apierror.Detail(err); detail.GetReason() != droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID {
		t.Errorf("heartbeat of an unknown node: %v; want reason TOKEN_INVALID", err)
	}
}
