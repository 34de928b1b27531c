package scenarios

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/apierror"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
	"github.com/droverhq/drover/scenarios/cluster"
)

// Roles are the callers of the access matrix: one operator token per
// policy the scenario applies, tokens that no longer work, and no token.
const (
	roleManagement = "management"
	roleReadOnly   = "read-only"
	roleModelPush  = "model-push"
	roleBerlinOps  = "berlin-ops"
	roleExpired    = "expired"
	roleRevoked    = "revoked"
	roleNone       = "no-token"
)

var roles = []string{roleManagement, roleReadOnly, roleModelPush, roleBerlinOps, roleExpired, roleRevoked, roleNone}

// tokenNames are the names the scenario gives each role's token; refusals
// and audit events name them.
var tokenNames = map[string]string{
	roleManagement: "ops-admin",
	roleReadOnly:   "grafana",
	roleModelPush:  "ci-vision",
	roleBerlinOps:  "berlin-operator",
	roleExpired:    "short-lived",
	roleRevoked:    "former-contractor",
}

// scope is the object a call acts on, as far as access is concerned: which
// model (by the prefix policies match), which site's node or join token.
type scope string

const (
	noObject scope = ""
	vision   scope = "vision"  // models named vision-…
	nlp      scope = "nlp"     // models named nlp-…
	berlin   scope = "berlin"  // a node or join token of site berlin
	paris    scope = "paris"   // a node or join token of site paris
	unknown  scope = "unknown" // a node or join token that does not exist
	noSite   scope = "no-site" // a join token to make without a site
)

// What a call needs, in the words of docs/access.md; anything else is a
// "resource:access" capability.
const (
	needsPublic = "public"
	needsAgent  = "agent certificate"
	needsServer = "server certificate"
	needsSelf   = "any operator token"
)

// accessCall makes one harmless call of one procedure. It must not change
// the fixture once authorization lets it through: deletes name objects
// that do not exist, creates are invalid, revokes hit what is already
// revoked, and a drain is undone at once.
type accessCall struct {
	proc string
	// needs is what the call needs, written here from the user guide
	// rather than read from the server's table.
	needs string
	// objects are the objects to try the call on; none means one call
	// that names no object.
	objects []scope
	do      func(t *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error
}

// outcome is what a call must come to: past authorization, or refused
// with reason (and for PERMISSION_DENIED a message naming names).
type outcome struct {
	allowed bool
	reason  droverv1.ErrorReason
	names   string
}

var allowed = outcome{allowed: true}

func refused(reason droverv1.ErrorReason) outcome { return outcome{reason: reason} }

func denied(capability string) outcome {
	return outcome{reason: droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED, names: capability}
}

// expect is the access matrix: what role may do with call c on obj, read
// marks a call the schema declares free of side effects. It follows the
// policies the fixture applies, spelled out per role, and the user guide.
func expect(role string, c accessCall, obj scope, read bool) outcome {
	switch c.needs {
	case needsPublic:
		return allowed
	case needsAgent:
		// Agent calls take a node's certificate and nothing else.
		if role == roleNone {
			return refused(droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)
		}
		return refused(droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL)
	case needsServer:
		return refused(droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL)
	}
	switch role {
	case roleNone:
		return refused(droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING)
	case roleExpired:
		return refused(droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED)
	case roleRevoked:
		return refused(droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID)
	}
	if c.needs == needsSelf {
		return allowed
	}
	resource, access, _ := strings.Cut(c.needs, ":")
	ok := false
	switch role {
	case roleManagement:
		ok = true
	case roleReadOnly:
		// Read on everything: every call without side effects.
		ok = read
	case roleModelPush:
		// Write on models named vision-…, which implies reading them;
		// a listing shows only those.
		ok = resource == "model" && (obj == vision || obj == noObject)
	case roleBerlinOps:
		// Write on berlin's nodes and join tokens (listings show only
		// berlin's), read on every model.
		switch resource {
		case "node", "join_token":
			ok = obj == berlin || obj == noObject
		case "model":
			ok = access == "read"
		}
	}
	if ok {
		return allowed
	}
	return denied(c.needs)
}

// authRefusals are the reasons with which authorization refuses a call;
// any other answer, error or not, means the call got past it.
var authRefusals = []droverv1.ErrorReason{
	droverv1.ErrorReason_ERROR_REASON_PERMISSION_DENIED,
	droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
	droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
	droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED,
	droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL,
	droverv1.ErrorReason_ERROR_REASON_ACL_NOT_BOOTSTRAPPED,
}

// checkOutcome fails the test unless err is what want says.
func checkOutcome(t *testing.T, what string, err error, want outcome) {
	t.Helper()
	reason := apierror.Reason(err)
	refusedByAuth := err != nil && slices.Contains(authRefusals, reason)
	switch {
	case want.allowed && refusedByAuth:
		t.Errorf("%s: refused with %v; want it allowed: %v", what, reason, err)
	case want.allowed:
		// Past authorization; the call itself may fail (not found, …).
	case err == nil:
		t.Errorf("%s: succeeded; want it refused with %v", what, want.reason)
	case !refusedByAuth:
		t.Errorf("%s: got past authorization (%v); want it refused with %v", what, err, want.reason)
	case reason != want.reason:
		t.Errorf("%s: refused with %v; want %v: %v", what, reason, want.reason, err)
	case want.names != "" && !strings.Contains(err.Error(), want.names):
		t.Errorf("%s: the refusal does not name the missing capability %q: %v", what, want.names, err)
	}
}

// accessCalls is one harmless call of every procedure of the API.
// TestAccessMatrix fails when the schema has a method missing here.
func accessCalls() []accessCall {
	models := []scope{vision, nlp}
	sites := []scope{berlin, paris, unknown}
	return []accessCall{
		// ACLService.
		{proc: droverv1connect.ACLServiceBootstrapProcedure, needs: needsPublic,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.Bootstrap(ctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
				return err
			}},
		{proc: droverv1connect.ACLServiceCreateTokenProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.CreateToken(ctx, connect.NewRequest(&droverv1.CreateACLTokenRequest{
					Name: "probe", Policies: []string{"read-only"}, Ttl: durationpb.New(-time.Second), // invalid
				}))
				return err
			}},
		{proc: droverv1connect.ACLServiceListTokensProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.ListTokens(ctx, connect.NewRequest(&droverv1.ListACLTokensRequest{}))
				return err
			}},
		{proc: droverv1connect.ACLServiceGetTokenProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.GetToken(ctx, connect.NewRequest(&droverv1.GetACLTokenRequest{Id: tokenNames[roleReadOnly]}))
				return err
			}},
		{proc: droverv1connect.ACLServiceGetTokenSelfProcedure, needs: needsSelf,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.GetTokenSelf(ctx, connect.NewRequest(&droverv1.GetACLTokenSelfRequest{}))
				return err
			}},
		{proc: droverv1connect.ACLServiceRevokeTokenProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: "no-such-token"}))
				return err
			}},
		{proc: droverv1connect.ACLServiceRotateTokenProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.RotateToken(ctx, connect.NewRequest(&droverv1.RotateACLTokenRequest{Id: "no-such-token"}))
				return err
			}},
		{proc: droverv1connect.ACLServiceApplyPolicyProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{
					Policy: &droverv1.ACLPolicy{Name: "probe"}, // no rules: invalid
				}))
				return err
			}},
		{proc: droverv1connect.ACLServiceListPoliciesProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.ListPolicies(ctx, connect.NewRequest(&droverv1.ListACLPoliciesRequest{}))
				return err
			}},
		{proc: droverv1connect.ACLServiceGetPolicyProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.GetPolicy(ctx, connect.NewRequest(&droverv1.GetACLPolicyRequest{Name: "model-push"}))
				return err
			}},
		{proc: droverv1connect.ACLServiceDeletePolicyProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.ACL.DeletePolicy(ctx, connect.NewRequest(&droverv1.DeleteACLPolicyRequest{Name: "no-such-policy"}))
				return err
			}},

		// AgentService.
		{proc: droverv1connect.AgentServiceGetClusterInfoProcedure, needs: needsPublic,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
				return err
			}},
		{proc: droverv1connect.AgentServiceEnrollProcedure, needs: needsPublic,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, _ scope) error {
				// A good join token and a request that is not a CSR: the
				// handler refuses it before anything is written.
				_, err := cl.Agent.Enroll(ctx, connect.NewRequest(&droverv1.EnrollRequest{
					Token: f.joinTokenString, Name: "probe", CsrDer: []byte("not a csr"),
				}))
				return err
			}},
		{proc: droverv1connect.AgentServiceRegisterProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.Register(ctx, connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "probe"}))
				return err
			}},
		{proc: droverv1connect.AgentServiceRenewCertificateProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.RenewCertificate(ctx, connect.NewRequest(&droverv1.RenewCertificateRequest{CsrDer: []byte("not a csr")}))
				return err
			}},
		{proc: droverv1connect.AgentServiceHeartbeatProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{}))
				return err
			}},
		{proc: droverv1connect.AgentServiceHeartbeatStreamProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream := cl.Agent.HeartbeatStream(ctx)
				defer func() { _ = stream.CloseResponse() }()
				if err := stream.Send(&droverv1.HeartbeatRequest{}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				_, err := stream.Receive()
				_ = stream.CloseRequest()
				return err
			}},
		{proc: droverv1connect.AgentServiceWatchAssignmentsProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.WatchAssignments(ctx, connect.NewRequest(&droverv1.WatchAssignmentsRequest{}))
				return err
			}},
		// Allowed, it waits for an operator's log request: the short
		// deadline ends it past authorization.
		{proc: droverv1connect.AgentServiceWatchLogRequestsProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				_, err := cl.Agent.WatchLogRequests(ctx, connect.NewRequest(&droverv1.WatchLogRequestsRequest{}))
				return err
			}},
		{proc: droverv1connect.AgentServiceSendLogsProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream := cl.Agent.SendLogs(ctx)
				if err := stream.Send(&droverv1.SendLogsRequest{RequestId: "no-such-request"}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				_, err := stream.CloseAndReceive()
				return err
			}},
		{proc: droverv1connect.AgentServiceGetManifestProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.GetManifest(ctx, connect.NewRequest(&droverv1.AgentGetManifestRequest{Model: model(vision), Ref: "latest"}))
				return err
			}},
		{proc: droverv1connect.AgentServiceGetChunkProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Agent.GetChunk(ctx, connect.NewRequest(&droverv1.AgentGetChunkRequest{Model: model(vision), Version: 999, Digest: make([]byte, 32)}))
				return err
			}},

		// NodeService.
		{proc: droverv1connect.NodeServiceListNodesProcedure, needs: "node:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
				return err
			}},
		{proc: droverv1connect.NodeServiceGetNodeProcedure, needs: "node:read", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: f.node(obj)}))
				return err
			}},
		{proc: droverv1connect.NodeServiceDrainNodeProcedure, needs: "node:write", objects: sites,
			do: func(t *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Nodes.DrainNode(ctx, connect.NewRequest(&droverv1.DrainNodeRequest{Node: f.node(obj), Drain: true}))
				if err == nil {
					if _, uerr := cl.Nodes.DrainNode(ctx, connect.NewRequest(&droverv1.DrainNodeRequest{Node: f.node(obj)})); uerr != nil {
						t.Errorf("undo the drain of %s with the token that drained it: %v", f.node(obj), uerr)
					}
				}
				return err
			}},
		{proc: droverv1connect.NodeServiceUncordonNodeProcedure, needs: "node:write", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				// Uncordoning a node that is not cordoned changes nothing.
				_, err := cl.Nodes.UncordonNode(ctx, connect.NewRequest(&droverv1.UncordonNodeRequest{Node: f.node(obj)}))
				return err
			}},
		{proc: droverv1connect.NodeServiceLabelNodeProcedure, needs: "node:write", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Nodes.LabelNode(ctx, connect.NewRequest(&droverv1.LabelNodeRequest{Node: f.node(obj), Remove: []string{"no-such-label"}}))
				return err
			}},
		// Also needs model:read on the model, which every role with
		// node:write has; the model does not exist, so nothing is pulled.
		{proc: droverv1connect.NodeServicePullVersionProcedure, needs: "node:write", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Nodes.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: f.node(obj), Model: "vision-no-such-model", Ref: "1"}))
				return err
			}},
		// No such deployment: answered before any agent is asked.
		{proc: droverv1connect.NodeServiceReadLogsProcedure, needs: "node:read", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				stream, err := cl.Nodes.ReadLogs(ctx, connect.NewRequest(&droverv1.ReadLogsRequest{Node: f.node(obj), Deployment: "no-such-deployment"}))
				if err != nil {
					return err
				}
				defer stream.Close()
				for stream.Receive() {
				}
				return stream.Err()
			}},
		{proc: droverv1connect.NodeServiceRevokeNodeProcedure, needs: "node:write", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Nodes.RevokeNode(ctx, connect.NewRequest(&droverv1.RevokeNodeRequest{Node: f.revokedNode(obj)}))
				return err
			}},

		// DeploymentService. The specs are invalid (no runtime), so a
		// call that gets past authorization changes nothing.
		{proc: droverv1connect.DeploymentServiceApplyDeploymentProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Deploys.ApplyDeployment(ctx, connect.NewRequest(&droverv1.ApplyDeploymentRequest{
					Spec: &droverv1.DeploymentSpec{Name: "probe", Model: model(vision) + "@1"},
				}))
				return err
			}},
		{proc: droverv1connect.DeploymentServicePlanDeploymentProcedure, needs: "deployment:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Deploys.PlanDeployment(ctx, connect.NewRequest(&droverv1.PlanDeploymentRequest{
					Spec: &droverv1.DeploymentSpec{Name: "probe", Model: model(vision) + "@1"},
				}))
				return err
			}},
		{proc: droverv1connect.DeploymentServiceListDeploymentsProcedure, needs: "deployment:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Deploys.ListDeployments(ctx, connect.NewRequest(&droverv1.ListDeploymentsRequest{}))
				return err
			}},
		{proc: droverv1connect.DeploymentServiceGetDeploymentProcedure, needs: "deployment:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Deploys.GetDeployment(ctx, connect.NewRequest(&droverv1.GetDeploymentRequest{Name: "no-such-deployment"}))
				return err
			}},
		{proc: droverv1connect.DeploymentServiceDeleteDeploymentProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Deploys.DeleteDeployment(ctx, connect.NewRequest(&droverv1.DeleteDeploymentRequest{Name: "no-such-deployment"}))
				return err
			}},

		// RolloutService.
		{proc: droverv1connect.RolloutServiceGetRolloutProcedure, needs: "deployment:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.GetRollout(ctx, connect.NewRequest(&droverv1.GetRolloutRequest{Deployment: "no-such-deployment"}))
				return err
			}},
		{proc: droverv1connect.RolloutServiceListRolloutsProcedure, needs: "deployment:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.ListRollouts(ctx, connect.NewRequest(&droverv1.ListRolloutsRequest{}))
				return err
			}},
		{proc: droverv1connect.RolloutServicePauseRolloutProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.PauseRollout(ctx, connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "no-such-deployment"}))
				return err
			}},
		{proc: droverv1connect.RolloutServiceResumeRolloutProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.ResumeRollout(ctx, connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "no-such-deployment"}))
				return err
			}},
		{proc: droverv1connect.RolloutServicePromoteRolloutProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.PromoteRollout(ctx, connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "no-such-deployment"}))
				return err
			}},
		{proc: droverv1connect.RolloutServiceRollbackRolloutProcedure, needs: "deployment:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Rollouts.RollbackRollout(ctx, connect.NewRequest(&droverv1.RolloutActionRequest{Deployment: "no-such-deployment"}))
				return err
			}},

		// AuditService.
		{proc: droverv1connect.AuditServiceListEventsProcedure, needs: "audit:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{Limit: 1}))
				return err
			}},

		// ClusterService.
		{proc: droverv1connect.ClusterServiceGetStatusProcedure, needs: needsPublic,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.GetStatus(ctx, connect.NewRequest(&droverv1.GetStatusRequest{}))
				return err
			}},
		{proc: droverv1connect.ClusterServiceGetServerInfoProcedure, needs: needsPublic,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.GetServerInfo(ctx, connect.NewRequest(&droverv1.GetServerInfoRequest{}))
				return err
			}},
		{proc: droverv1connect.ClusterServiceListPeersProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.ListPeers(ctx, connect.NewRequest(&droverv1.ListPeersRequest{}))
				return err
			}},
		{proc: droverv1connect.ClusterServiceRemovePeerProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.RemovePeer(ctx, connect.NewRequest(&droverv1.RemovePeerRequest{Peer: "no-such-peer"}))
				return err
			}},
		{proc: droverv1connect.ClusterServiceSaveSnapshotProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream, err := cl.Cluster.SaveSnapshot(ctx, connect.NewRequest(&droverv1.SaveSnapshotRequest{}))
				if err != nil {
					return err
				}
				defer stream.Close()
				for stream.Receive() {
				}
				return stream.Err()
			}},
		{proc: droverv1connect.ClusterServiceRestoreSnapshotProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream := cl.Cluster.RestoreSnapshot(ctx)
				if err := stream.Send(&droverv1.RestoreSnapshotRequest{Data: []byte("not a snapshot")}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				_, err := stream.CloseAndReceive()
				return err
			}},
		{proc: droverv1connect.ClusterServiceLeaveProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.Leave(ctx, connect.NewRequest(&droverv1.LeaveRequest{}))
				return err
			}},
		{proc: droverv1connect.ClusterServiceRecordDenialsProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Cluster.RecordDenials(ctx, connect.NewRequest(&droverv1.RecordDenialsRequest{Denials: []*droverv1.AccessDenial{forgedDenial()}}))
				return err
			}},

		// TokenService (join tokens).
		{proc: droverv1connect.TokenServiceCreateTokenProcedure, needs: "join_token:write", objects: []scope{berlin, paris, noSite},
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				site := string(obj)
				if obj == noSite {
					site = ""
				}
				_, err := cl.Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{
					Site: site, Ttl: durationpb.New(-time.Second), // invalid
				}))
				return err
			}},
		{proc: droverv1connect.TokenServiceListTokensProcedure, needs: "join_token:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Tokens.ListTokens(ctx, connect.NewRequest(&droverv1.ListTokensRequest{}))
				return err
			}},
		{proc: droverv1connect.TokenServiceRevokeTokenProcedure, needs: "join_token:write", objects: sites,
			do: func(_ *testing.T, ctx context.Context, f *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Tokens.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeTokenRequest{Id: f.revokedJoinToken(obj)}))
				return err
			}},

		// KeyService.
		{proc: droverv1connect.KeyServiceRegisterKeyProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Keys.RegisterKey(ctx, connect.NewRequest(&droverv1.RegisterKeyRequest{
					Name: "probe", PublicKey: []byte("short"), // invalid
				}))
				return err
			}},
		{proc: droverv1connect.KeyServiceListKeysProcedure, needs: "operator:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Keys.ListKeys(ctx, connect.NewRequest(&droverv1.ListKeysRequest{}))
				return err
			}},
		{proc: droverv1connect.KeyServiceRevokeKeyProcedure, needs: "operator:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Keys.RevokeKey(ctx, connect.NewRequest(&droverv1.RevokeKeyRequest{Key: "no-such-key"}))
				return err
			}},

		// ModelService.
		{proc: droverv1connect.ModelServiceCreateModelProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: model(obj)})) // exists
				return err
			}},
		{proc: droverv1connect.ModelServiceListModelsProcedure, needs: "model:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
				return err
			}},
		{proc: droverv1connect.ModelServiceGetModelProcedure, needs: "model:read", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: model(obj)}))
				return err
			}},
		{proc: droverv1connect.ModelServiceDeleteModelProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.DeleteModel(ctx, connect.NewRequest(&droverv1.DeleteModelRequest{Name: string(obj) + "-gone"}))
				return err
			}},
		{proc: droverv1connect.ModelServiceCreateVersionProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
					Model: model(obj), Artifact: &droverv1.ArtifactManifest{Digest: "not-a-digest", SizeBytes: 1},
				}))
				return err
			}},
		{proc: droverv1connect.ModelServiceListVersionsProcedure, needs: "model:read", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: model(obj)}))
				return err
			}},
		{proc: droverv1connect.ModelServiceGetVersionProcedure, needs: "model:read", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: model(obj), Ref: "latest"}))
				return err
			}},
		{proc: droverv1connect.ModelServiceSetAliasProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{Model: model(obj), Alias: "prod", Version: 999}))
				return err
			}},
		{proc: droverv1connect.ModelServiceDeleteAliasProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Models.DeleteAlias(ctx, connect.NewRequest(&droverv1.DeleteAliasRequest{Model: model(obj), Alias: "no-such-alias"}))
				return err
			}},

		// ArtifactService: manifests that do not decode, a push that was
		// never started, versions that do not exist.
		{proc: droverv1connect.ArtifactServiceStartPushProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Artifacts.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{
					Model: model(obj), Manifest: &droverv1.SignedManifest{Manifest: []byte("not a manifest")},
				}))
				return err
			}},
		{proc: droverv1connect.ArtifactServiceUploadChunksProcedure, needs: "model:write",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream := cl.Artifacts.UploadChunks(ctx)
				if err := stream.Send(&droverv1.UploadChunksRequest{PushId: "no-such-push"}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				_, err := stream.CloseAndReceive()
				return err
			}},
		{proc: droverv1connect.ArtifactServiceFinishPushProcedure, needs: "model:write", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Artifacts.FinishPush(ctx, connect.NewRequest(&droverv1.FinishPushRequest{
					Model: model(obj), Manifest: &droverv1.SignedManifest{Manifest: []byte("not a manifest")},
				}))
				return err
			}},
		{proc: droverv1connect.ArtifactServiceGetManifestProcedure, needs: "model:read", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Artifacts.GetManifest(ctx, connect.NewRequest(&droverv1.GetManifestRequest{Model: model(obj), Ref: "latest"}))
				return err
			}},
		{proc: droverv1connect.ArtifactServiceGetChunkProcedure, needs: "model:read", objects: models,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, obj scope) error {
				_, err := cl.Artifacts.GetChunk(ctx, connect.NewRequest(&droverv1.GetChunkRequest{Model: model(obj), Version: 999, Digest: make([]byte, 32)}))
				return err
			}},

		// TelemetryService.
		{proc: droverv1connect.TelemetryServiceShipTelemetryProcedure, needs: needsAgent,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Telemetry.ShipTelemetry(ctx, connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: [][]byte{{0xff}}})) // malformed: refused alone
				return err
			}},
		{proc: droverv1connect.TelemetryServiceQueryProcedure, needs: "telemetry:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Telemetry.Query(ctx, connect.NewRequest(&droverv1.QueryTelemetryRequest{Model: model(vision)}))
				return err
			}},
		{proc: droverv1connect.DriftServiceGetDriftProcedure, needs: "telemetry:read",
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{Model: model(vision)}))
				return err
			}},
		{proc: droverv1connect.TelemetryServiceReplicateWindowsProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Telemetry.ReplicateWindows(ctx, connect.NewRequest(&droverv1.ReplicateWindowsRequest{}))
				return err
			}},
		{proc: droverv1connect.TelemetryServiceQueryLocalProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Telemetry.QueryLocal(ctx, connect.NewRequest(&droverv1.QueryLocalTelemetryRequest{Query: &droverv1.QueryTelemetryRequest{GroupBy: "site"}}))
				return err
			}},

		// ChunkService: servers only.
		{proc: droverv1connect.ChunkServiceMissingChunksProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				_, err := cl.Chunks.MissingChunks(ctx, connect.NewRequest(&droverv1.MissingChunksRequest{Digests: [][]byte{make([]byte, 32)}}))
				return err
			}},
		{proc: droverv1connect.ChunkServicePutChunksProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream := cl.Chunks.PutChunks(ctx)
				if err := stream.Send(&droverv1.PutChunksRequest{Digest: make([]byte, 32), Size: 1, Data: []byte{0}}); err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				_, err := stream.CloseAndReceive()
				return err
			}},
		{proc: droverv1connect.ChunkServiceGetChunksProcedure, needs: needsServer,
			do: func(_ *testing.T, ctx context.Context, _ *accessFixture, cl *apiClients, _ scope) error {
				stream, err := cl.Chunks.GetChunks(ctx, connect.NewRequest(&droverv1.GetChunksRequest{Digests: [][]byte{make([]byte, 32)}}))
				if err != nil {
					return err
				}
				defer stream.Close()
				for stream.Receive() {
				}
				return stream.Err()
			}},
	}
}

// model names the fixture's model of a scope.
func model(obj scope) string {
	switch obj {
	case vision:
		return "vision-a"
	case nlp:
		return "nlp-b"
	}
	return "no-such-model"
}

// forgedDenial is a refusal nobody made; only servers may record them.
func forgedDenial() *droverv1.AccessDenial {
	return &droverv1.AccessDenial{
		AccessorId: "forged-accessor", TokenName: "forged",
		Procedure: droverv1connect.ModelServiceDeleteModelProcedure, Capability: "model:write", Target: "model/forged",
	}
}

// schemaMethods returns every method of every service of the drover.v1
// schema by procedure path, with whether it is free of side effects.
func schemaMethods(t *testing.T) map[string]bool {
	t.Helper()
	_ = droverv1.File_drover_v1_acl_proto // the schema's files are registered
	out := make(map[string]bool)
	protoregistry.GlobalFiles.RangeFilesByPackage("drover.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				m := svc.Methods().Get(j)
				opts, _ := m.Options().(*descriptorpb.MethodOptions)
				out["/"+string(svc.FullName())+"/"+string(m.Name())] =
					opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS
			}
		}
		return true
	})
	if len(out) == 0 {
		t.Fatal("found no services in package drover.v1")
	}
	return out
}

// accessFixture is the cluster the matrix runs on and the objects in it.
type accessFixture struct {
	c        *cluster.Cluster
	leader   *cluster.Node
	follower *cluster.Node
	// other is the follower that leaves at the end.
	other *cluster.Node
	// transport is shared by every operator client.
	transport *http.Transport

	secrets   map[string]string // by role
	accessors map[string]string // by role

	nodes             map[scope]*enrolledNode // live nodes by site
	revokedNodes      map[scope]string        // ids of revoked nodes by site
	revokedJoinTokens map[scope]string        // ids of revoked join tokens by site
	joinTokenString   string                  // a usable join token of site berlin
}

func (f *accessFixture) node(obj scope) string {
	if n, ok := f.nodes[obj]; ok {
		return n.id
	}
	return "n-nosuchnode00"
}

func (f *accessFixture) revokedNode(obj scope) string {
	if id, ok := f.revokedNodes[obj]; ok {
		return id
	}
	return "n-nosuchnode00"
}

func (f *accessFixture) revokedJoinToken(obj scope) string {
	if id, ok := f.revokedJoinTokens[obj]; ok {
		return id
	}
	return "no-such-join-token"
}

// apiClients are typed clients of every service for one caller.
type apiClients struct {
	cluster.Clients
	Agent     droverv1connect.AgentServiceClient
	Artifacts droverv1connect.ArtifactServiceClient
	Chunks    droverv1connect.ChunkServiceClient
	Rollouts  droverv1connect.RolloutServiceClient
}

// addHeaders sets fixed headers on every request, streams included (the
// harness's own clients set the token on unary calls only).
type addHeaders struct {
	base http.RoundTripper
	hdr  http.Header
}

func (a addHeaders) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range a.hdr {
		r.Header[k] = vs
	}
	return a.base.RoundTrip(r)
}

// clientsOn returns clients for node n that send role's token (none for
// roleNone) and, with stale, let n answer reads from its own state.
func (f *accessFixture) clientsOn(n *cluster.Node, role string, stale bool) *apiClients {
	return f.clientsWith(f.transport, n, f.secrets[role], stale)
}

func (f *accessFixture) clientsWith(rt http.RoundTripper, n *cluster.Node, secret string, stale bool) *apiClients {
	hdr := http.Header{}
	if secret != "" {
		hdr.Set("Authorization", "Bearer "+secret)
	}
	if stale {
		hdr.Set(server.ConsistencyHeader, "stale")
	}
	hc := &http.Client{Transport: addHeaders{base: rt, hdr: hdr}}
	base := "https://" + n.APIAddr()
	return &apiClients{
		Clients: cluster.Clients{
			Models:    droverv1connect.NewModelServiceClient(hc, base),
			ACL:       droverv1connect.NewACLServiceClient(hc, base),
			Audit:     droverv1connect.NewAuditServiceClient(hc, base),
			Cluster:   droverv1connect.NewClusterServiceClient(hc, base),
			Tokens:    droverv1connect.NewTokenServiceClient(hc, base),
			Nodes:     droverv1connect.NewNodeServiceClient(hc, base),
			Keys:      droverv1connect.NewKeyServiceClient(hc, base),
			Deploys:   droverv1connect.NewDeploymentServiceClient(hc, base),
			Telemetry: droverv1connect.NewTelemetryServiceClient(hc, base),
			Drift:     droverv1connect.NewDriftServiceClient(hc, base),
		},
		Agent:     droverv1connect.NewAgentServiceClient(hc, base),
		Artifacts: droverv1connect.NewArtifactServiceClient(hc, base),
		Chunks:    droverv1connect.NewChunkServiceClient(hc, base),
		Rollouts:  droverv1connect.NewRolloutServiceClient(hc, base),
	}
}

// enrolledNode is a node enrolled the way drover-agent does it (key, CSR,
// join token), whose client certificate the scenario uses itself.
type enrolledNode struct {
	id        string
	transport *http.Transport // presents the node's certificate
}

// enroll enrolls a node with joinToken through n, asking for site
// "elsewhere": the join token's site must win.
func (f *accessFixture) enroll(t *testing.T, ctx context.Context, n *cluster.Node, joinToken, name, wantSite string) *enrolledNode {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.clientsOn(n, roleNone, false).Agent.Enroll(ctx, connect.NewRequest(&droverv1.EnrollRequest{
		Token: joinToken, Name: name, Site: "elsewhere", CsrDer: csr, AgentVersion: "scenario",
	}))
	if err != nil {
		t.Fatalf("enroll %s: %v", name, err)
	}
	if got := res.Msg.GetNode().GetSite(); got != wantSite {
		t.Fatalf("node %s enrolled into site %q; want the join token's site %q", name, got, wantSite)
	}
	block, _ := pem.Decode(res.Msg.GetCertificatePem())
	if block == nil {
		t.Fatalf("enroll %s: no PEM certificate in the answer", name)
	}
	cert := tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs: f.c.CA.Pool(), MinVersion: tls.VersionTLS13,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
		},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &enrolledNode{id: res.Msg.GetNode().GetId(), transport: tr}
}

// setupAccess starts the cluster and fills it: policies, a token per role,
// nodes and join tokens in two sites, and models.
func setupAccess(t *testing.T) *accessFixture {
	t.Helper()
	start := time.Now()
	c := cluster.Make(t, 3, cluster.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := &accessFixture{
		c: c, leader: leader,
		transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: c.CA.Pool(), MinVersion: tls.VersionTLS13},
			ForceAttemptHTTP2: true,
		},
		secrets:           map[string]string{},
		accessors:         map[string]string{},
		nodes:             map[scope]*enrolledNode{},
		revokedNodes:      map[scope]string{},
		revokedJoinTokens: map[scope]string{},
	}
	t.Cleanup(f.transport.CloseIdleConnections)
	for _, n := range c.Nodes() {
		switch {
		case n == leader:
		case f.follower == nil:
			f.follower = n
		default:
			f.other = n
		}
	}

	// The bootstrap token makes the management token; that one makes
	// everything else, so the audit log shows it.
	boot := c.Client(leader, false)
	createToken := func(cl *cluster.Clients, role, policy string, ttl time.Duration) {
		t.Helper()
		req := &droverv1.CreateACLTokenRequest{Name: tokenNames[role], Policies: []string{policy}}
		if ttl > 0 {
			req.Ttl = durationpb.New(ttl)
		}
		res, err := cl.ACL.CreateToken(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatalf("create token %s: %v", req.Name, err)
		}
		f.secrets[role], f.accessors[role] = res.Msg.GetSecretId(), res.Msg.GetToken().GetAccessorId()
	}
	createToken(boot, roleManagement, "management", 0)
	admin := f.clientsOn(leader, roleManagement, false)
	// First, so that its second has passed by the end of the setup.
	createToken(&admin.Clients, roleExpired, "read-only", time.Second)

	for _, p := range []*droverv1.ACLPolicy{
		{Name: "model-push", Description: "Push vision models", Rules: []*droverv1.ACLRule{
			{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Prefix: "vision-", Access: droverv1.ACLAccess_ACL_ACCESS_WRITE},
		}},
		{Name: "berlin-ops", Description: "Operate the Berlin site", Rules: []*droverv1.ACLRule{
			{Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Site: "berlin", Access: droverv1.ACLAccess_ACL_ACCESS_WRITE},
			{Resource: droverv1.ACLResource_ACL_RESOURCE_JOIN_TOKEN, Site: "berlin", Access: droverv1.ACLAccess_ACL_ACCESS_WRITE},
			{Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_READ},
		}},
	} {
		if _, err := admin.ACL.ApplyPolicy(ctx, connect.NewRequest(&droverv1.ApplyACLPolicyRequest{Policy: p})); err != nil {
			t.Fatalf("apply policy %s: %v", p.GetName(), err)
		}
	}
	createToken(&admin.Clients, roleReadOnly, "read-only", 0)
	createToken(&admin.Clients, roleModelPush, "model-push", 0)
	createToken(&admin.Clients, roleBerlinOps, "berlin-ops", 0)
	createToken(&admin.Clients, roleRevoked, "management", 0)
	if _, err := admin.ACL.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeACLTokenRequest{Id: f.accessors[roleRevoked]})); err != nil {
		t.Fatalf("revoke token: %v", err)
	}

	for _, name := range []string{"vision-a", "nlp-b"} {
		createModel(t, &admin.Clients, name)
		if _, err := createVersion(ctx, &admin.Clients, name, 1, nil); err != nil {
			t.Fatalf("create a version of %s: %v", name, err)
		}
	}

	// In each site: a live node, a revoked node and a revoked join token,
	// so that node and join-token calls have objects on both sides of a
	// site-scoped policy, and revokes change nothing.
	for _, site := range []scope{berlin, paris} {
		jt, err := admin.Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{Site: string(site), Ttl: durationpb.New(time.Hour)}))
		if err != nil {
			t.Fatalf("create join token for %s: %v", site, err)
		}
		if site == berlin {
			f.joinTokenString = jt.Msg.GetTokenString()
		}
		f.nodes[site] = f.enroll(t, ctx, leader, jt.Msg.GetTokenString(), string(site)+"-gpu-1", string(site))
		spare := f.enroll(t, ctx, leader, jt.Msg.GetTokenString(), string(site)+"-gpu-retired", string(site))
		if _, err := admin.Nodes.RevokeNode(ctx, connect.NewRequest(&droverv1.RevokeNodeRequest{Node: spare.id})); err != nil {
			t.Fatalf("revoke node: %v", err)
		}
		f.revokedNodes[site] = spare.id
		old, err := admin.Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{Site: string(site), Ttl: durationpb.New(time.Hour)}))
		if err != nil {
			t.Fatalf("create join token for %s: %v", site, err)
		}
		if _, err := admin.Tokens.RevokeToken(ctx, connect.NewRequest(&droverv1.RevokeTokenRequest{Id: old.Msg.GetToken().GetId()})); err != nil {
			t.Fatalf("revoke join token: %v", err)
		}
		f.revokedJoinTokens[site] = old.Msg.GetToken().GetId()
	}

	// The followers must know every token and object before the matrix
	// runs through them.
	if _, err := c.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	expired := f.clientsOn(leader, roleExpired, false)
	for {
		_, err := expired.ACL.GetTokenSelf(ctx, connect.NewRequest(&droverv1.GetACLTokenSelfRequest{}))
		if apierror.Reason(err) == droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the token made with a ttl of 1s has not expired: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("setup took %v (leader %s, follower %s)", time.Since(start).Round(time.Millisecond), leader.Name, f.follower.Name)
	return f
}

// Scenario: on a real three-server cluster, every call of the API is
// allowed or refused exactly as the caller's token's policies say, on the
// leader, through a follower that forwards it, and on a follower that
// answers a stale read itself; listings show only what a token may read;
// agent and operator credentials do not stand in for each other; /metrics
// needs telemetry read; refusals and changes are audited under the
// token's accessor id and name.
func TestAccessMatrix(t *testing.T) {
	schema := schemaMethods(t)
	calls := accessCalls()
	listed := map[string]bool{}
	for _, c := range calls {
		if _, ok := schema[c.proc]; !ok {
			t.Errorf("the access matrix calls %s, which the schema does not have", c.proc)
		}
		listed[c.proc] = true
	}
	for _, proc := range slices.Sorted(func(yield func(string) bool) {
		for p := range schema {
			if !yield(p) {
				return
			}
		}
	}) {
		if !listed[proc] {
			t.Errorf("%s has no entry in accessCalls: add a harmless call of it and what it needs", proc)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	f := setupAccess(t)

	// Refusals to find in the audit log later, each the model-push
	// token's first on its server, so no rate limit folds them into
	// another: a model write the leader refuses for its object, and a
	// join-token write the follower refuses before it would forward it.
	probes := []auditProbe{
		{proc: droverv1connect.ModelServiceCreateModelProcedure, target: "model/nlp-probe", server: f.leader.Name},
		{proc: droverv1connect.TokenServiceCreateTokenProcedure, server: f.follower.Name},
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		_, err := f.clientsOn(f.leader, roleModelPush, false).Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "nlp-probe"}))
		checkOutcome(t, "model-push CreateModel nlp-probe on the leader", err, denied("model:write on model/nlp-probe"))
		_, err = f.clientsOn(f.follower, roleModelPush, false).Tokens.CreateToken(ctx, connect.NewRequest(&droverv1.CreateTokenRequest{Site: "berlin"}))
		checkOutcome(t, "model-push CreateToken on a follower", err, denied("join_token:write"))
		cancel()
	}

	t.Run("matrix", func(t *testing.T) {
		for _, via := range []struct {
			name  string
			node  *cluster.Node
			stale bool
		}{
			{"leader", f.leader, false},
			{"follower", f.follower, false},
			{"follower-stale", f.follower, true},
		} {
			t.Run(via.name, func(t *testing.T) {
				start := time.Now()
				t.Cleanup(func() { t.Logf("%s: %v", via.name, time.Since(start).Round(time.Millisecond)) })
				for _, role := range roles {
					t.Run(role, func(t *testing.T) {
						t.Parallel()
						runMatrix(t, f, calls, schema, role, via.node, via.stale)
					})
				}
			})
		}
	})

	t.Run("listings", func(t *testing.T) { checkListings(t, f) })
	t.Run("credentials", func(t *testing.T) { checkCredentials(t, f) })
	t.Run("metrics", func(t *testing.T) { checkMetrics(t, f) })
	t.Run("audit", func(t *testing.T) { checkAudit(t, f, probes) })
	// Last: the management token's Leave takes a server out of the
	// cluster for good.
	t.Run("leave", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
		defer cancel()
		start := time.Now()
		_, err := f.clientsOn(f.other, roleManagement, false).Cluster.Leave(ctx, connect.NewRequest(&droverv1.LeaveRequest{}))
		if err != nil {
			t.Fatalf("management token's Leave on follower %s: %v", f.other.Name, err)
		}
		t.Logf("%s left in %v", f.other.Name, time.Since(start).Round(time.Millisecond))
	})
}

// runMatrix makes every call as role through node n and checks each
// outcome against expect. With stale, only reads are made, with the
// header that lets n answer them itself.
func runMatrix(t *testing.T, f *accessFixture, calls []accessCall, schema map[string]bool, role string, n *cluster.Node, stale bool) {
	cl := f.clientsOn(n, role, stale)
	made := 0
	for _, c := range calls {
		read := schema[c.proc]
		if stale && !read {
			continue
		}
		objects := c.objects
		if len(objects) == 0 {
			objects = []scope{noObject}
		}
		for _, obj := range objects {
			want := expect(role, c, obj, read)
			if c.proc == droverv1connect.ClusterServiceLeaveProcedure && want.allowed {
				// It would take n out of the cluster: see the leave
				// subtest.
				continue
			}
			what := fmt.Sprintf("%s %s", role, c.proc)
			if obj != noObject {
				what += " on " + string(obj)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			err := c.do(t, ctx, f, cl, obj)
			cancel()
			checkOutcome(t, what, err, want)
			made++
		}
	}
	if made == 0 {
		t.Fatal("made no calls")
	}
}

// checkListings: a token scoped to some objects lists only those, on the
// leader and on a follower answering a stale read.
func checkListings(t *testing.T, f *accessFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, via := range []struct {
		n     *cluster.Node
		stale bool
	}{{f.leader, false}, {f.follower, true}} {
		where := via.n.Name
		if via.stale {
			where += " (stale)"
		}
		ops := f.clientsOn(via.n, roleBerlinOps, via.stale)
		nodes, err := ops.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
		if err != nil {
			t.Fatalf("berlin-ops ListNodes on %s: %v", where, err)
		}
		var ids []string
		for _, n := range nodes.Msg.GetNodes() {
			ids = append(ids, n.GetId())
			if n.GetSite() != "berlin" {
				t.Errorf("berlin-ops ListNodes on %s shows node %s of site %q", where, n.GetId(), n.GetSite())
			}
		}
		for _, id := range []string{f.nodes[berlin].id, f.revokedNodes[berlin]} {
			if !slices.Contains(ids, id) {
				t.Errorf("berlin-ops ListNodes on %s lacks berlin's node %s: %v", where, id, ids)
			}
		}

		jts, err := ops.Tokens.ListTokens(ctx, connect.NewRequest(&droverv1.ListTokensRequest{}))
		if err != nil {
			t.Fatalf("berlin-ops ListTokens on %s: %v", where, err)
		}
		var jtIDs []string
		for _, jt := range jts.Msg.GetTokens() {
			jtIDs = append(jtIDs, jt.GetId())
			if jt.GetSite() != "berlin" {
				t.Errorf("berlin-ops ListTokens on %s shows join token %s of site %q", where, jt.GetId(), jt.GetSite())
			}
		}
		if !slices.Contains(jtIDs, f.revokedJoinTokens[berlin]) {
			t.Errorf("berlin-ops ListTokens on %s lacks berlin's join token %s: %v", where, f.revokedJoinTokens[berlin], jtIDs)
		}

		models, err := f.clientsOn(via.n, roleModelPush, via.stale).Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
		if err != nil {
			t.Fatalf("model-push ListModels on %s: %v", where, err)
		}
		var names []string
		for _, m := range models.Msg.GetModels() {
			names = append(names, m.GetName())
		}
		if !slices.Equal(names, []string{"vision-a"}) {
			t.Errorf("model-push ListModels on %s: %v; want only vision-a", where, names)
		}

		// The same listings with the management token show both sites
		// and every model: what was left out above was filtered.
		admin := f.clientsOn(via.n, roleManagement, via.stale)
		all, err := admin.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		sites := map[string]int{}
		for _, n := range all.Msg.GetNodes() {
			sites[n.GetSite()]++
		}
		if sites["berlin"] != 2 || sites["paris"] != 2 {
			t.Errorf("management ListNodes on %s: nodes by site %v; want 2 in berlin and 2 in paris", where, sites)
		}
		allModels, err := admin.Models.ListModels(ctx, connect.NewRequest(&droverv1.ListModelsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(allModels.Msg.GetModels()) != 2 {
			t.Errorf("management ListModels on %s: %d models; want vision-a and nlp-b", where, len(allModels.Msg.GetModels()))
		}
	}
}

// checkCredentials: an agent's certificate is no operator credential, an
// operator token is no agent credential, and a server-only call takes
// neither.
func checkCredentials(t *testing.T, f *accessFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	agent := f.nodes[berlin]
	wrong := refused(droverv1.ErrorReason_ERROR_REASON_WRONG_CREDENTIAL)
	// registers are the node's Register calls the leader's audit log
	// shows; the handler records each, so a call refused before it adds
	// none.
	registers := func() []*droverv1.AuditEvent {
		t.Helper()
		res, err := f.clientsOn(f.leader, roleManagement, false).Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{
			TargetPrefix: "node/" + agent.id, Limit: 10000,
		}))
		if err != nil {
			t.Fatal(err)
		}
		var out []*droverv1.AuditEvent
		for _, ev := range res.Msg.GetEvents() {
			if ev.GetAction() == "node.register" {
				out = append(out, ev)
			}
		}
		return out
	}

	for _, n := range []*cluster.Node{f.leader, f.follower} {
		// The node's certificate, no token, on operator calls.
		cert := f.clientsWith(agent.transport, n, "", false)
		_, err := cert.Nodes.ListNodes(ctx, connect.NewRequest(&droverv1.ListNodesRequest{}))
		checkOutcome(t, "agent certificate on ListNodes via "+n.Name, err, wrong)
		_, err = cert.Nodes.DrainNode(ctx, connect.NewRequest(&droverv1.DrainNodeRequest{Node: agent.id, Drain: true}))
		checkOutcome(t, "agent certificate on DrainNode via "+n.Name, err, wrong)
		_, err = cert.Models.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{Name: "vision-by-agent"}))
		checkOutcome(t, "agent certificate on CreateModel via "+n.Name, err, wrong)

		// The management token, no certificate, on agent calls: refused
		// before the handler, which would have recorded the register.
		before := len(registers())
		admin := f.clientsOn(n, roleManagement, false)
		_, err = admin.Agent.Register(ctx, connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "operator"}))
		checkOutcome(t, "management token on Register via "+n.Name, err, wrong)
		_, err = admin.Agent.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{}))
		checkOutcome(t, "management token on Heartbeat via "+n.Name, err, wrong)
		if after := registers(); len(after) != before {
			t.Errorf("Register with an operator token via %s reached the handler: %v", n.Name, after[before:])
		}

		// RecordDenials takes a server's certificate: not the management
		// token's, not an agent's, and not a follower's it forwards with.
		_, err = admin.Cluster.RecordDenials(ctx, connect.NewRequest(&droverv1.RecordDenialsRequest{Denials: []*droverv1.AccessDenial{forgedDenial()}}))
		checkOutcome(t, "management token on RecordDenials via "+n.Name, err, wrong)
		_, err = cert.Cluster.RecordDenials(ctx, connect.NewRequest(&droverv1.RecordDenialsRequest{Denials: []*droverv1.AccessDenial{forgedDenial()}}))
		checkOutcome(t, "agent certificate on RecordDenials via "+n.Name, err, wrong)
	}
	res, err := f.clientsOn(f.leader, roleManagement, false).Audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{Actor: forgedDenial().GetAccessorId()}))
	if err != nil {
		t.Fatal(err)
	}
	if evs := res.Msg.GetEvents(); len(evs) > 0 {
		t.Errorf("a refusal nobody made is in the audit log: %v", evs)
	}

	// Certificate and management token together on agent calls: the call
	// is the agent's, and only the agent's.
	both := f.clientsWith(agent.transport, f.leader, f.secrets[roleManagement], false)
	if _, err := both.Agent.Register(ctx, connect.NewRequest(&droverv1.RegisterRequest{AgentVersion: "scenario"})); err != nil {
		t.Fatalf("Register with the node's certificate and a management token: %v", err)
	}
	if _, err := both.Agent.Heartbeat(ctx, connect.NewRequest(&droverv1.HeartbeatRequest{})); err != nil {
		t.Fatalf("Heartbeat with the node's certificate and a management token: %v", err)
	}
	regs := registers()
	if len(regs) != 1 {
		t.Fatalf("node %s has %d register events after one Register: %v", agent.id, len(regs), regs)
	}
	if r := regs[0]; r.GetActor() != "node/"+agent.id {
		t.Errorf("Register with the node's certificate and a management token was made by %q (%q); want node/%s",
			r.GetActor(), r.GetActorName(), agent.id)
	}
}

// checkMetrics: /metrics needs telemetry read, health endpoints nothing.
func checkMetrics(t *testing.T, f *accessFixture) {
	hc := &http.Client{Transport: f.transport, Timeout: 15 * time.Second}
	get := func(n *cluster.Node, path, secret string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "https://"+n.APIAddr()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s on %s: %v", path, n.Name, err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
		return res.StatusCode
	}
	for _, n := range []*cluster.Node{f.leader, f.follower} {
		for _, tc := range []struct {
			path, role string
			want       int
		}{
			{server.MetricsPath, roleNone, http.StatusUnauthorized},
			{server.MetricsPath, roleRevoked, http.StatusUnauthorized},
			{server.MetricsPath, roleExpired, http.StatusUnauthorized},
			{server.MetricsPath, roleReadOnly, http.StatusOK},
			{server.MetricsPath, roleManagement, http.StatusOK},
			{server.MetricsPath, roleModelPush, http.StatusForbidden},
			{server.MetricsPath, roleBerlinOps, http.StatusForbidden},
			{server.LivePath, roleNone, http.StatusOK},
			{server.ReadyPath, roleNone, http.StatusOK},
		} {
			if got := get(n, tc.path, f.secrets[tc.role]); got != tc.want {
				t.Errorf("GET %s on %s as %s: %d; want %d", tc.path, n.Name, tc.role, got, tc.want)
			}
		}
	}
}

// auditProbe is a refusal the audit log must show: of procedure proc, on
// target when it is not empty, by server.
type auditProbe struct{ proc, target, server string }

func (p auditProbe) matches(ev *droverv1.AuditEvent) bool {
	return ev.GetAction() == "access.denied" && ev.GetDetails()["procedure"] == p.proc &&
		ev.GetDetails()["server"] == p.server && (p.target == "" || ev.GetTarget() == p.target)
}

// checkAudit: refused writes are in the audit log under the refused
// token, including one a follower refused; filtering by actor gives that
// token's events only; the management token's changes carry its accessor
// id and name.
func checkAudit(t *testing.T, f *accessFixture, probes []auditProbe) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	audit := f.clientsOn(f.leader, roleManagement, false).Audit
	events := func(actor string) []*droverv1.AuditEvent {
		t.Helper()
		res, err := audit.ListEvents(ctx, connect.NewRequest(&droverv1.ListAuditEventsRequest{Actor: actor, Limit: 10000}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetEvents()
	}

	pushName, pushID := tokenNames[roleModelPush], f.accessors[roleModelPush]
	// Refusals reach the log in batches, once a second per server.
	var byName []*droverv1.AuditEvent
	for {
		byName = events(pushName)
		var missing []auditProbe
		for _, p := range probes {
			if !slices.ContainsFunc(byName, p.matches) {
				missing = append(missing, p)
			}
		}
		if len(missing) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("refusals of %s not in the audit log after 30s: %+v", pushName, missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	denials, writes := 0, 0
	for _, ev := range byName {
		if ev.GetActor() != pushID || ev.GetActorName() != pushName {
			t.Errorf("audit events of actor %q include one by %q (%q): %v", pushName, ev.GetActor(), ev.GetActorName(), ev)
		}
		if ev.GetAction() == "access.denied" {
			denials++
			if !strings.HasPrefix(ev.GetResult(), "denied: needs ") {
				t.Errorf("access.denied event does not say what was missing: %v", ev)
			}
		} else {
			writes++
		}
	}
	if writes == 0 {
		t.Errorf("no change by %s in the audit log besides refusals: %d events", pushName, len(byName))
	}
	// Refusals reach the log in batches (a follower's a moment later than
	// the leader's), so the two filters may see different moments: ask
	// again until a batch in between has landed.
	for {
		byID := events(pushID)
		again := events(pushName)
		if len(byID) == len(again) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("audit events by accessor id %s: %d; by name %s: %d; want the same", pushID, len(byID), pushName, len(again))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s: %d refusals and %d other events in the audit log", pushName, denials, writes)

	adminName, adminID := tokenNames[roleManagement], f.accessors[roleManagement]
	adminEvents := events(adminID)
	if len(adminEvents) == 0 {
		t.Fatalf("no audit events by the management token %s", adminName)
	}
	for _, ev := range adminEvents {
		if ev.GetActor() != adminID || ev.GetActorName() != adminName {
			t.Errorf("event of the management token without its accessor id and name: %v", ev)
		}
	}
	for _, want := range []struct{ action, target string }{
		{"acl.policy.apply", "acl/policy/model-push"},
		{"acl.token.create", "acl/token/" + pushID},
		{"acl.token.revoke", "acl/token/" + f.accessors[roleRevoked]},
		{"model.create", "model/vision-a"},
		{"node.revoke", "node/" + f.revokedNodes[paris]},
	} {
		found := false
		for _, ev := range adminEvents {
			found = found || (ev.GetAction() == want.action && ev.GetTarget() == want.target)
		}
		if !found {
			t.Errorf("no %s event on %s by the management token", want.action, want.target)
		}
	}
	if byName := events(adminName); len(byName) != len(adminEvents) {
		t.Errorf("audit events by the management token's name: %d; by its accessor id: %d", len(byName), len(adminEvents))
	}
}
