package server_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// headerTransport adds fixed headers to every request, unary and
// streaming alike (the harness's clients set the token on unary calls
// only, and snapshot save/restore are streams).
type headerTransport struct {
	base http.RoundTripper
	hdr  http.Header
}

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range h.hdr {
		r.Header[k] = vs
	}
	return h.base.RoundTrip(r)
}

// clientsWith returns API clients for node n that send token (when not
// empty) and, with stale set, the stale-consistency header.
func clientsWith(t testing.TB, c *cluster.Cluster, n *cluster.Node, token string, stale bool) *cluster.Clients {
	t.Helper()
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	hdr := http.Header{}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	if stale {
		hdr.Set(server.ConsistencyHeader, "stale")
	}
	return connectClients(&http.Client{Transport: headerTransport{base: h2, hdr: hdr}}, "https://"+n.APIAddr())
}

func connectClients(hc connect.HTTPClient, base string) *cluster.Clients {
	return &cluster.Clients{
		Models:    droverv1connect.NewModelServiceClient(hc, base),
		ACL:       droverv1connect.NewACLServiceClient(hc, base),
		Audit:     droverv1connect.NewAuditServiceClient(hc, base),
		Cluster:   droverv1connect.NewClusterServiceClient(hc, base),
		Keys:      droverv1connect.NewKeyServiceClient(hc, base),
		Tokens:    droverv1connect.NewTokenServiceClient(hc, base),
		Nodes:     droverv1connect.NewNodeServiceClient(hc, base),
		Telemetry: droverv1connect.NewTelemetryServiceClient(hc, base),
	}
}

// testCtx is a context for one test step.
func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// reasonOf extracts the stable reason code from an API error, or
// ERROR_REASON_UNSPECIFIED when it carries none.
func reasonOf(t *testing.T, err error) droverv1.ErrorReason {
	t.Helper()
	return apierror.Reason(err)
}

// wantErr fails unless err has the Connect code and Drover reason given.
func wantErr(t *testing.T, what string, err error, code connect.Code, reason droverv1.ErrorReason) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %v %v", what, code, reason)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("%s: code %v, want %v (%v)", what, got, code, err)
	}
	if got := reasonOf(t, err); got != reason {
		t.Fatalf("%s: reason %v, want %v (%v)", what, got, reason, err)
	}
}

// bootstrapACL bootstraps ACLs through node n and returns the management
// token's secret and accessor id.
func bootstrapACL(t *testing.T, c *cluster.Cluster, n *cluster.Node) (secret, accessor string) {
	t.Helper()
	res, err := clientsWith(t, c, n, "", false).ACL.Bootstrap(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.BootstrapRequest{}))
	if err != nil {
		t.Fatalf("bootstrap ACL: %v", err)
	}
	if res.Msg.GetSecretId() == "" || res.Msg.GetAccessorId() == "" {
		t.Fatalf("bootstrap returned %v", res.Msg)
	}
	return res.Msg.GetSecretId(), res.Msg.GetAccessorId()
}

// eventually polls cond every 20ms until it returns nil or d passes, and
// fails the test with cond's last error.
func eventually(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v: %v", what, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func digest(i int) string {
	const hex = "0123456789abcdef"
	b := make([]byte, 64)
	for j := range b {
		b[j] = hex[(i+j)%16]
	}
	return "sha256:" + string(b)
}

// createVersion adds a version with a valid artifact to model.
func createVersion(ctx context.Context, cl *cluster.Clients, model string, i int) (*droverv1.ModelVersion, error) {
	res, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
		Model:    model,
		Artifact: &droverv1.ArtifactManifest{Digest: digest(i), SizeBytes: uint64(100 + i), Format: "onnx"},
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetVersion(), nil
}

func mustCreateModel(t testing.TB, cl *cluster.Clients, name string) *droverv1.Model {
	t.Helper()
	res, err := cl.Models.CreateModel(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.CreateModelRequest{Name: name}))
	if err != nil {
		t.Fatalf("create model %s: %v", name, err)
	}
	return res.Msg.GetModel()
}

func mustGetModel(t *testing.T, cl *cluster.Clients, name string) *droverv1.GetModelResponse {
	t.Helper()
	res, err := cl.Models.GetModel(testCtx(t, 10*time.Second), connect.NewRequest(&droverv1.GetModelRequest{Name: name}))
	if err != nil {
		t.Fatalf("get model %s: %v", name, err)
	}
	return res.Msg
}
