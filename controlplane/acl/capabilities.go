package acl

import (
	"fmt"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	connectv1 "github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Auth says what credential a call takes.
type Auth int

const (
	// AuthToken calls need an operator token whose policies grant the
	// capability's resource and access.
	AuthToken Auth = iota
	// AuthSelf calls need any valid operator token: they describe the
	// caller's own token.
	AuthSelf
	// AuthPublic calls need no credential: they reveal nothing secret and
	// must work before any exists (bootstrap, status), or check a
	// credential of their own (enrollment's join token).
	AuthPublic
	// AuthAgent calls need a node's client certificate; operator tokens
	// are not accepted.
	AuthAgent
	// AuthServer calls need another server's certificate.
	AuthServer
)

// Ref names the object a call acts on, as far as its request tells: the
// server turns it into an [Object] by looking up what the request only
// names (a node's site and labels, a join token's site).
type Ref struct {
	// Name of a model or deployment.
	Name string
	// Node is a node's id or name.
	Node string
	// JoinToken is a join token's id.
	JoinToken string
	// Site of an object the call creates.
	Site string
}

// Capability is what one API call needs.
type Capability struct {
	Auth Auth
	// Resource and Access apply to AuthToken calls.
	Resource droverv1.ACLResource
	Access   droverv1.ACLAccess
	// Object names the object of a unary call in its request, for calls
	// about one object; nil for calls about the resource as a whole and
	// for listings, which return only what the caller may read.
	Object func(req any) Ref
}

// String names the capability as refusals and docs do: "model:write",
// "public".
func (c Capability) String() string {
	switch c.Auth {
	case AuthToken:
		return ResourceName(c.Resource) + ":" + AccessName(c.Access)
	case AuthSelf:
		return "any operator token"
	case AuthPublic:
		return "public"
	case AuthAgent:
		return "agent certificate"
	case AuthServer:
		return "server certificate"
	}
	return fmt.Sprintf("auth(%d)", int(c.Auth))
}

// IsWrite reports whether the call changes state under an operator
// token's write access; refusals of such calls are audited.
func (c Capability) IsWrite() bool {
	return c.Auth == AuthToken && c.Access == droverv1.ACLAccess_ACL_ACCESS_WRITE
}

// ForProcedure returns the capability a procedure ("/drover.v1.
// ModelService/CreateModel") needs. A procedure without an entry must be
// refused: the table is the whole list of what the API serves.
func ForProcedure(procedure string) (Capability, bool) {
	c, ok := procedures[procedure]
	return c, ok
}

func need(r droverv1.ACLResource, a droverv1.ACLAccess) Capability {
	return Capability{Auth: AuthToken, Resource: r, Access: a}
}

// on is need with the call's object taken from its request of type M.
func on[M any](r droverv1.ACLResource, a droverv1.ACLAccess, object func(M) Ref) Capability {
	c := need(r, a)
	c.Object = func(req any) Ref {
		m, ok := req.(M)
		if !ok {
			// A request of another type would be a bug in this table;
			// an empty object matches only unqualified rules.
			return Ref{}
		}
		return object(m)
	}
	return c
}

const (
	model      = droverv1.ACLResource_ACL_RESOURCE_MODEL
	deployment = droverv1.ACLResource_ACL_RESOURCE_DEPLOYMENT
	node       = droverv1.ACLResource_ACL_RESOURCE_NODE
	joinToken  = droverv1.ACLResource_ACL_RESOURCE_JOIN_TOKEN
	audit      = droverv1.ACLResource_ACL_RESOURCE_AUDIT
	operator   = droverv1.ACLResource_ACL_RESOURCE_OPERATOR
	telemetry  = droverv1.ACLResource_ACL_RESOURCE_TELEMETRY

	read  = droverv1.ACLAccess_ACL_ACCESS_READ
	write = droverv1.ACLAccess_ACL_ACCESS_WRITE
)

func modelRef(name string) Ref { return Ref{Name: name} }
func nodeRef(id string) Ref    { return Ref{Node: id} }

// procedures is the capability of every procedure the API serves, written
// once here and only read. TestEveryMethodDeclaresACapability walks the
// schema and fails for a method missing here.
var procedures = map[string]Capability{
	// Operator tokens and policies are the cluster's own configuration:
	// whoever may change them may grant themselves anything.
	connectv1.ACLServiceBootstrapProcedure:    {Auth: AuthPublic},
	connectv1.ACLServiceCreateTokenProcedure:  need(operator, write),
	connectv1.ACLServiceListTokensProcedure:   need(operator, read),
	connectv1.ACLServiceGetTokenProcedure:     need(operator, read),
	connectv1.ACLServiceGetTokenSelfProcedure: {Auth: AuthSelf},
	connectv1.ACLServiceRevokeTokenProcedure:  need(operator, write),
	connectv1.ACLServiceRotateTokenProcedure:  need(operator, write),
	connectv1.ACLServiceApplyPolicyProcedure:  need(operator, write),
	connectv1.ACLServiceListPoliciesProcedure: need(operator, read),
	connectv1.ACLServiceGetPolicyProcedure:    need(operator, read),
	connectv1.ACLServiceDeletePolicyProcedure: need(operator, write),
	// Agents trust what a registered signing key signed, for every model:
	// registering one is granting trust cluster-wide, as the cluster's
	// own configuration is. Listing shows only public keys.
	connectv1.KeyServiceRegisterKeyProcedure: need(operator, write),
	connectv1.KeyServiceListKeysProcedure:    need(operator, read),
	connectv1.KeyServiceRevokeKeyProcedure:   need(operator, write),

	// An agent's first calls carry no credential but the join token,
	// which Enroll checks; the rest carry the node's certificate.
	connectv1.AgentServiceGetClusterInfoProcedure:   {Auth: AuthPublic},
	connectv1.AgentServiceEnrollProcedure:           {Auth: AuthPublic},
	connectv1.AgentServiceRegisterProcedure:         {Auth: AuthAgent},
	connectv1.AgentServiceRenewCertificateProcedure: {Auth: AuthAgent},
	connectv1.AgentServiceHeartbeatProcedure:        {Auth: AuthAgent},
	connectv1.AgentServiceWatchAssignmentsProcedure: {Auth: AuthAgent},
	// An agent hears of operators' log requests for itself and answers
	// them; the handlers check the request names the calling node.
	connectv1.AgentServiceWatchLogRequestsProcedure: {Auth: AuthAgent},
	connectv1.AgentServiceSendLogsProcedure:         {Auth: AuthAgent},
	// Until deployments say which versions a node should run, every
	// enrolled node may read every version's bytes, as the operator's
	// read-only token may.
	connectv1.AgentServiceGetManifestProcedure: {Auth: AuthAgent},
	connectv1.AgentServiceGetChunkProcedure:    {Auth: AuthAgent},
	// Each heartbeat on the stream is checked as a Heartbeat call is.
	connectv1.AgentServiceHeartbeatStreamProcedure: {Auth: AuthAgent},

	connectv1.NodeServiceListNodesProcedure: need(node, read),
	connectv1.NodeServiceGetNodeProcedure: on(node, read, func(r *droverv1.GetNodeRequest) Ref {
		return nodeRef(r.GetNode())
	}),
	connectv1.NodeServiceDrainNodeProcedure: on(node, write, func(r *droverv1.DrainNodeRequest) Ref {
		return nodeRef(r.GetNode())
	}),
	connectv1.NodeServiceLabelNodeProcedure: on(node, write, func(r *droverv1.LabelNodeRequest) Ref {
		return nodeRef(r.GetNode())
	}),
	connectv1.NodeServiceRevokeNodeProcedure: on(node, write, func(r *droverv1.RevokeNodeRequest) Ref {
		return nodeRef(r.GetNode())
	}),
	connectv1.NodeServiceUncordonNodeProcedure: on(node, write, func(r *droverv1.UncordonNodeRequest) Ref {
		return nodeRef(r.GetNode())
	}),
	// Asking a node to pull changes the node; the handler also checks
	// model:read on the model, since the node gets its bytes.
	connectv1.NodeServicePullVersionProcedure: on(node, write, func(r *droverv1.PullVersionRequest) Ref {
		return nodeRef(r.GetNode())
	}),

	// Reading a node's instance output is reading the node. A streaming
	// call cannot name its object here; the handler checks node:read on
	// the node it names.
	connectv1.NodeServiceReadLogsProcedure: need(node, read),

	connectv1.AuditServiceListEventsProcedure: need(audit, read),

	// Agents ship their own windows (the handler checks each names the
	// calling node); servers copy windows and answer their part of a
	// query for each other; operators read the merged answer.
	connectv1.TelemetryServiceShipTelemetryProcedure:    {Auth: AuthAgent},
	connectv1.TelemetryServiceQueryProcedure:            need(telemetry, read),
	connectv1.TelemetryServiceReplicateWindowsProcedure: {Auth: AuthServer},
	connectv1.TelemetryServiceQueryLocalProcedure:       {Auth: AuthServer},
	// Drift is a view of telemetry against the model's reference.
	connectv1.DriftServiceGetDriftProcedure: need(telemetry, read),

	// Applying or planning a deployment also needs model:read on its
	// model, which the handler checks: the deployment makes nodes fetch
	// the model's bytes. A plan shows only the nodes the token may read.
	connectv1.DeploymentServiceApplyDeploymentProcedure: on(deployment, write, func(r *droverv1.ApplyDeploymentRequest) Ref {
		return Ref{Name: r.GetSpec().GetName()}
	}),
	connectv1.DeploymentServicePlanDeploymentProcedure: on(deployment, read, func(r *droverv1.PlanDeploymentRequest) Ref {
		return Ref{Name: r.GetSpec().GetName()}
	}),
	connectv1.DeploymentServiceListDeploymentsProcedure: need(deployment, read),
	connectv1.DeploymentServiceGetDeploymentProcedure: on(deployment, read, func(r *droverv1.GetDeploymentRequest) Ref {
		return Ref{Name: r.GetName()}
	}),
	connectv1.DeploymentServiceDeleteDeploymentProcedure: on(deployment, write, func(r *droverv1.DeleteDeploymentRequest) Ref {
		return Ref{Name: r.GetName()}
	}),

	// Rollouts belong to their deployment: watching one is reading the
	// deployment, steering one is writing it.
	connectv1.RolloutServiceGetRolloutProcedure: on(deployment, read, func(r *droverv1.GetRolloutRequest) Ref {
		return Ref{Name: r.GetDeployment()}
	}),
	// Filtered to the deployments the token may read.
	connectv1.RolloutServiceListRolloutsProcedure:    need(deployment, read),
	connectv1.RolloutServicePauseRolloutProcedure:    on(deployment, write, rolloutAction),
	connectv1.RolloutServiceResumeRolloutProcedure:   on(deployment, write, rolloutAction),
	connectv1.RolloutServicePromoteRolloutProcedure:  on(deployment, write, rolloutAction),
	connectv1.RolloutServiceRollbackRolloutProcedure: on(deployment, write, rolloutAction),

	// Status must work before ACLs exist and when the operator's token
	// is lost; it shows names and addresses, nothing secret.
	connectv1.ClusterServiceGetStatusProcedure:     {Auth: AuthPublic},
	connectv1.ClusterServiceGetServerInfoProcedure: {Auth: AuthPublic},
	connectv1.ClusterServiceListPeersProcedure:     need(operator, read),
	connectv1.ClusterServiceRemovePeerProcedure:    need(operator, write),
	// A snapshot holds every token's and join token's secret hash and
	// the whole audit log: saving one is as sensitive as restoring.
	connectv1.ClusterServiceSaveSnapshotProcedure:    need(operator, write),
	connectv1.ClusterServiceRestoreSnapshotProcedure: need(operator, write),
	connectv1.ClusterServiceLeaveProcedure:           need(operator, write),
	connectv1.ClusterServiceRecordDenialsProcedure:   {Auth: AuthServer},

	connectv1.TokenServiceCreateTokenProcedure: on(joinToken, write, func(r *droverv1.CreateTokenRequest) Ref {
		return Ref{Site: r.GetSite()}
	}),
	connectv1.TokenServiceListTokensProcedure: need(joinToken, read),
	connectv1.TokenServiceRevokeTokenProcedure: on(joinToken, write, func(r *droverv1.RevokeTokenRequest) Ref {
		return Ref{JoinToken: r.GetId()}
	}),

	// Pushing a version's bytes is writing the model; reading them back
	// is reading it. Uploads stream, so their model was checked when the
	// push started; a chunk is taken only for a push in progress.
	connectv1.ArtifactServiceStartPushProcedure: on(model, write, func(r *droverv1.StartPushRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ArtifactServiceUploadChunksProcedure: need(model, write),
	connectv1.ArtifactServiceFinishPushProcedure: on(model, write, func(r *droverv1.FinishPushRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ArtifactServiceGetManifestProcedure: on(model, read, func(r *droverv1.GetManifestRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ArtifactServiceGetChunkProcedure: on(model, read, func(r *droverv1.GetChunkRequest) Ref {
		return modelRef(r.GetModel())
	}),
	// Servers copy chunks among themselves to make a push durable.
	connectv1.ChunkServiceMissingChunksProcedure: {Auth: AuthServer},
	connectv1.ChunkServicePutChunksProcedure:     {Auth: AuthServer},
	connectv1.ChunkServiceGetChunksProcedure:     {Auth: AuthServer},

	connectv1.ModelServiceCreateModelProcedure: on(model, write, func(r *droverv1.CreateModelRequest) Ref {
		return modelRef(r.GetName())
	}),
	connectv1.ModelServiceListModelsProcedure: need(model, read),
	connectv1.ModelServiceGetModelProcedure: on(model, read, func(r *droverv1.GetModelRequest) Ref {
		return modelRef(r.GetName())
	}),
	connectv1.ModelServiceDeleteModelProcedure: on(model, write, func(r *droverv1.DeleteModelRequest) Ref {
		return modelRef(r.GetName())
	}),
	connectv1.ModelServiceCreateVersionProcedure: on(model, write, func(r *droverv1.CreateVersionRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ModelServiceListVersionsProcedure: on(model, read, func(r *droverv1.ListVersionsRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ModelServiceGetVersionProcedure: on(model, read, func(r *droverv1.GetVersionRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ModelServiceSetAliasProcedure: on(model, write, func(r *droverv1.SetAliasRequest) Ref {
		return modelRef(r.GetModel())
	}),
	connectv1.ModelServiceDeleteAliasProcedure: on(model, write, func(r *droverv1.DeleteAliasRequest) Ref {
		return modelRef(r.GetModel())
	}),
}

// rolloutAction names the deployment a rollout action steers.
func rolloutAction(r *droverv1.RolloutActionRequest) Ref {
	return Ref{Name: r.GetDeployment()}
}
