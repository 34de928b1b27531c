package server_test

import (
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/server"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// BenchmarkAuthorization measures what checking a call costs against what
// the whole call costs, in the same run, for the two calls on the hot path:
// an agent's heartbeat (client certificate) and a model read (operator
// token with a scoped policy, so rules are matched rather than waved
// through as for management). The check/... benchmarks run the server's
// own authorization as its interceptor does; the call/... ones make the
// real call over HTTPS to the same single-server cluster.
func BenchmarkAuthorization(b *testing.B) {
	c := cluster.Make(b, 1, cluster.Options{})
	node := c.Nodes()[0]
	srv := node.Server()
	ctx := testCtx(b, 10*time.Minute)
	admin := clientsWith(b, c, node, c.Token(), false)

	_, err := admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{
		Name: "vision-readers",
		Rules: []*droverv1.ACLRule{
			{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_READ, Prefix: "vision-"},
			{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_DENY, Name: "vision-secret"},
			{Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Access: droverv1.ACLAccess_ACL_ACCESS_READ, Site: "berlin"},
		},
	}}))
	if err != nil {
		b.Fatal(err)
	}
	tok, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{
		Name: "bench", Policies: []string{"vision-readers"},
	}))
	if err != nil {
		b.Fatal(err)
	}
	secret := tok.Msg.GetSecretId()
	mustCreateModel(b, admin, "vision-a")

	tokens, _ := operator(b, c, node)
	joinToken, _ := createToken(b, tokens, &droverv1.CreateTokenRequest{})
	agent := newFakeAgent(b, c.CA.Pool())
	agent.mustEnrollRegister(b, node.APIAddr(), joinToken, "bench-agent")

	b.Run("check/model-read", func(b *testing.B) {
		h := http.Header{"Authorization": []string{"Bearer " + secret}}
		req := &droverv1.GetModelRequest{Name: "vision-a"}
		for b.Loop() {
			if err := srv.AuthorizeForBenchmark(ctx, droverv1connect.ModelServiceGetModelProcedure, h, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("call/model-read", func(b *testing.B) {
		models := clientsWith(b, c, node, secret, false).Models
		for b.Loop() {
			if _, err := models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "vision-a"})); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("check/heartbeat", func(b *testing.B) {
		actx := server.WithAgentCert(ctx, agent.cert.Leaf)
		h := http.Header{}
		req := &droverv1.HeartbeatRequest{}
		for b.Loop() {
			if err := srv.AuthorizeForBenchmark(actx, droverv1connect.AgentServiceHeartbeatProcedure, h, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("call/heartbeat", func(b *testing.B) {
		cl := agent.client(b, node.APIAddr(), nil)
		for b.Loop() {
			if _, err := cl.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{})); err != nil {
				b.Fatal(err)
			}
		}
	})
}
