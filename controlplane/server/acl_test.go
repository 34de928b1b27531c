package server_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/scenarios/cluster"
)

func modelRule(access droverv1.ACLAccess, prefix string) *droverv1.ACLRule {
	return &droverv1.ACLRule{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: access, Prefix: prefix}
}

// An operator token's life as an operator lives it: created with a secret
// shown once, usable at once, rotated (the old secret stops working),
// revoked, expired; and the refusals that keep the cluster administrable.
func TestOperatorTokenLifecycle(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	node := c.Nodes()[0]
	ctx := testCtx(t, 60*time.Second)
	admin := clientsWith(t, c, node, c.Token(), false)

	_, err := admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{
		Name: "vision-ci", Rules: []*droverv1.ACLRule{modelRule(droverv1.ACLAccess_ACL_ACCESS_WRITE, "vision-")},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	created, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{
		Name: "ci", Policies: []string{"vision-ci"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	tok := created.Msg.GetToken()
	if created.Msg.GetSecretId() == "" || len(tok.GetSecretSha256()) != 0 {
		t.Fatalf("create returned secret %q and hash %x: want the secret once and never the hash", created.Msg.GetSecretId(), tok.GetSecretSha256())
	}
	bootstrap, err := admin.ACL.GetTokenSelf(ctx, connect.NewRequest(&droverv1.GetACLTokenSelfRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if tok.GetCreatedBy() != bootstrap.Msg.GetToken().GetAccessorId() {
		t.Errorf("created_by = %q, want the bootstrap token's accessor %q", tok.GetCreatedBy(), bootstrap.Msg.GetToken().GetAccessorId())
	}

	ci := clientsWith(t, c, node, created.Msg.GetSecretId(), false)
	mustCreateModel(t, ci, "vision-a")
	_, err = ci.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "nlp-b"}))
	wantErr(t, "ci creates a model outside its prefix", err, connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED)
	if !strings.Contains(err.Error(), "model:write on model/nlp-b") {
		t.Errorf("refusal %q does not name the missing capability and object", err)
	}
	self, err := ci.ACL.GetTokenSelf(ctx, connect.NewRequest(&droverv1.GetACLTokenSelfRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if self.Msg.GetToken().GetName() != "ci" {
		t.Fatalf("token self = %v, want the ci token", self.Msg.GetToken())
	}

	// Rotation: same accessor, new secret; the old one is refused at once.
	rotated, err := admin.ACL.RotateToken(ctx, connect.NewRequest(&droverv1.RotateACLTokenRequest{Id: "ci"}))
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Msg.GetToken().GetAccessorId() != tok.GetAccessorId() || rotated.Msg.GetSecretId() == created.Msg.GetSecretId() {
		t.Fatalf("rotate gave accessor %q secret %q", rotated.Msg.GetToken().GetAccessorId(), rotated.Msg.GetSecretId())
	}
	_, err = ci.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "vision-a"}))
	wantErr(t, "old secret after rotate", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)
	ci = clientsWith(t, c, node, rotated.Msg.GetSecretId(), false)
	if _, err := ci.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "vision-a"})); err != nil {
		t.Fatalf("new secret after rotate: %v", err)
	}

	// A policy in use stays; a token naming a missing policy is refused.
	_, err = admin.ACL.DeletePolicy(ctx, connect.NewRequest(&droverv1.DeleteACLPolicyRequest{Name: "vision-ci"}))
	wantErr(t, "delete a policy in use", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_IN_USE)
	_, err = admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{Name: "x", Policies: []string{"no-such"}}))
	wantErr(t, "token with a missing policy", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if !strings.Contains(err.Error(), "no-such") {
		t.Errorf("refusal %q does not name the missing policy", err)
	}

	// A bad policy is refused before it reaches the log.
	before := node.Server().State().Index()
	_, err = admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: &droverv1.ACLPolicy{
		Name: "bad", Rules: []*droverv1.ACLRule{{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_READ, Site: "berlin"}},
	}}))
	wantErr(t, "site on a model rule", err, connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT)
	if after := node.Server().State().Index(); after != before {
		t.Errorf("a refused policy moved the log from %d to %d", before, after)
	}

	// Revocation is immediate.
	if _, err := admin.ACL.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: "ci"})); err != nil {
		t.Fatal(err)
	}
	_, err = ci.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: "vision-a"}))
	wantErr(t, "revoked token", err, connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)

	// The last management token cannot be revoked.
	_, err = admin.ACL.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: "bootstrap"}))
	wantErr(t, "revoke the last management token", err, connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_IN_USE)

	// Expiry.
	short, err := admin.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{
		Name: "short", Policies: []string{"read-only"}, Ttl: durationpb.New(time.Second),
	}))
	if err != nil {
		t.Fatal(err)
	}
	reader := clientsWith(t, c, node, short.Msg.GetSecretId(), false)
	eventually(t, 10*time.Second, "the short token expires", func() error {
		_, err := reader.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
		return expectReason(err, droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED)
	})

	// Every change above names the token that made it.
	events, err := admin.Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{Actor: "bootstrap", Limit: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]bool{}
	for _, ev := range events.Msg.GetEvents() {
		if ev.GetActorName() != "bootstrap" || ev.GetActor() != bootstrap.Msg.GetToken().GetAccessorId() {
			t.Errorf("audit filtered by token name returned %s by %s (%s)", ev.GetAction(), ev.GetActor(), ev.GetActorName())
		}
		actions[ev.GetAction()] = true
	}
	for _, want := range []string{"acl.policy.apply", "acl.token.create", "acl.token.rotate", "acl.token.revoke"} {
		if !actions[want] {
			t.Errorf("no %s event by the bootstrap token in the audit log (have %v)", want, actions)
		}
	}
}

// expectReason returns nil when err carries reason, and a description of
// what it is otherwise.
func expectReason(err error, reason droverv1.ErrorReason) error {
	if err == nil {
		return errors.New("the call succeeded")
	}
	if got := apierror.Reason(err); got != reason {
		return fmt.Errorf("reason %v: %w", got, err)
	}
	return nil
}

// Token listings never carry the hash of a secret: only the servers need
// it, and a reader of the listing has no use for it but guessing.
func TestListingsHideSecretHashes(t *testing.T) {
	c := cluster.Make(t, 1, cluster.Options{})
	node := c.Nodes()[0]
	ctx := testCtx(t, 30*time.Second)
	admin := clientsWith(t, c, node, c.Token(), false)
	tokens, _ := operator(t, c, node)
	_, created := createToken(t, tokens, &droverv1.CreateTokenRequest{Site: "berlin"})
	if len(created.GetSecretSha256()) != 0 {
		t.Errorf("join token create returned the secret hash")
	}
	joins, err := tokens.ListTokens(ctx, connect.NewRequest(&droverv1.ListTokensRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	ops, err := admin.ACL.ListTokens(ctx, connect.NewRequest(&droverv1.ListACLTokensRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(joins.Msg.GetTokens()) == 0 || len(ops.Msg.GetTokens()) == 0 {
		t.Fatalf("listed %d join tokens and %d operator tokens, want some of each", len(joins.Msg.GetTokens()), len(ops.Msg.GetTokens()))
	}
	for _, jt := range joins.Msg.GetTokens() {
		if len(jt.GetSecretSha256()) != 0 {
			t.Errorf("join token %s listed with its secret hash", jt.GetId())
		}
	}
	for _, ot := range ops.Msg.GetTokens() {
		if len(ot.GetSecretSha256()) != 0 {
			t.Errorf("operator token %s listed with its secret hash", ot.GetName())
		}
	}
}
