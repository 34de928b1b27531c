package fsm

import (
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/proto"
)

// command is everything this server knows about one command type: how to
// decode its payload, how to apply it, and how to audit it when the payload
// does not decode. Keeping the three together means a new command type is
// one entry in commands, and TestEveryCommandTypeHasAnEntry fails until it
// has one, instead of the envelope knowing a type the FSM cannot apply and
// every server panicking on it.
type command struct {
	// payload returns an empty payload message for the type.
	payload func() proto.Message
	// apply applies a decoded payload at index idx and returns what
	// ApplyResult.Value documents for the type (nil for none).
	apply func(s *state.Store, idx uint64, msg proto.Message) (proto.Message, error)
	// action is the audit action of an entry whose payload does not
	// decode; the store names the action for the others.
	action string
}

// commandOf builds a command entry for the payload message M, so that the
// payload constructor and the apply function cannot disagree on the type.
func commandOf[M proto.Message](action string, apply func(s *state.Store, idx uint64, c M) (proto.Message, error)) command {
	return command{
		payload: func() proto.Message {
			var zero M
			return zero.ProtoReflect().New().Interface()
		},
		apply: func(s *state.Store, idx uint64, msg proto.Message) (proto.Message, error) {
			return apply(s, idx, msg.(M))
		},
		action: action,
	}
}

// commands holds one entry per command type this server knows. It is a
// fixed table, written once here and only read.
var commands = map[droverv1.CommandType]command{
	droverv1.CommandType_COMMAND_TYPE_INIT_CLUSTER: commandOf(state.ActionClusterInit,
		func(s *state.Store, idx uint64, c *droverv1.InitClusterCommand) (proto.Message, error) {
			err := s.InitCluster(idx, c.GetMeta(), &droverv1.ClusterMeta{
				ClusterId:  c.GetClusterId(),
				CaSha256:   c.GetCaSha256(),
				CreateTime: c.GetMeta().GetTime(),
			})
			if err != nil {
				return nil, err
			}
			return s.Cluster(), nil
		}),
	droverv1.CommandType_COMMAND_TYPE_BOOTSTRAP_ACL: commandOf(state.ActionACLBootstrap,
		func(s *state.Store, idx uint64, c *droverv1.BootstrapACLCommand) (proto.Message, error) {
			if err := s.BootstrapACL(idx, c.GetMeta(), c.GetToken()); err != nil {
				return nil, err
			}
			if t, ok := s.TokenBySecretHash([32]byte(c.GetToken().GetSecretSha256())); ok {
				return t, nil
			}
			return nil, nil
		}),
	droverv1.CommandType_COMMAND_TYPE_CREATE_MODEL: commandOf(state.ActionModelCreate,
		func(s *state.Store, idx uint64, c *droverv1.CreateModelCommand) (proto.Message, error) {
			return value(s.CreateModel(idx, c.GetMeta(), c.GetRequest()))
		}),
	droverv1.CommandType_COMMAND_TYPE_DELETE_MODEL: commandOf(state.ActionModelDelete,
		func(s *state.Store, idx uint64, c *droverv1.DeleteModelCommand) (proto.Message, error) {
			return nil, s.DeleteModel(idx, c.GetMeta(), c.GetName())
		}),
	droverv1.CommandType_COMMAND_TYPE_CREATE_VERSION: commandOf(state.ActionVersionCreate,
		func(s *state.Store, idx uint64, c *droverv1.CreateVersionCommand) (proto.Message, error) {
			return value(s.CreateVersion(idx, c.GetMeta(), c.GetRequest()))
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_VERSION_REFERENCE: commandOf(state.ActionVersionReference,
		func(s *state.Store, idx uint64, c *droverv1.SetVersionReferenceCommand) (proto.Message, error) {
			return nil, s.SetVersionReference(idx, c.GetMeta(), c)
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_ALIAS: commandOf(state.ActionAliasSet,
		func(s *state.Store, idx uint64, c *droverv1.SetAliasCommand) (proto.Message, error) {
			m, prev, err := s.SetAlias(idx, c.GetMeta(), c.GetModel(), c.GetAlias(), c.GetVersion())
			if err != nil {
				return nil, err
			}
			return &droverv1.SetAliasResponse{Model: m, PreviousVersion: prev}, nil
		}),
	droverv1.CommandType_COMMAND_TYPE_DELETE_ALIAS: commandOf(state.ActionAliasDelete,
		func(s *state.Store, idx uint64, c *droverv1.DeleteAliasCommand) (proto.Message, error) {
			return nil, s.DeleteAlias(idx, c.GetMeta(), c.GetModel(), c.GetAlias())
		}),
	droverv1.CommandType_COMMAND_TYPE_CREATE_JOIN_TOKEN: commandOf(state.ActionTokenCreate,
		func(s *state.Store, idx uint64, c *droverv1.CreateJoinTokenCommand) (proto.Message, error) {
			return value(s.CreateJoinToken(idx, c.GetMeta(), c.GetToken()))
		}),
	droverv1.CommandType_COMMAND_TYPE_REVOKE_JOIN_TOKEN: commandOf(state.ActionTokenRevoke,
		func(s *state.Store, idx uint64, c *droverv1.RevokeJoinTokenCommand) (proto.Message, error) {
			return value(s.RevokeJoinToken(idx, c.GetMeta(), c.GetId()))
		}),
	droverv1.CommandType_COMMAND_TYPE_ENROLL_NODE: commandOf(state.ActionNodeEnroll,
		func(s *state.Store, idx uint64, c *droverv1.EnrollNodeCommand) (proto.Message, error) {
			return value(s.EnrollNode(idx, c.GetMeta(), c))
		}),
	droverv1.CommandType_COMMAND_TYPE_REGISTER_NODE: commandOf(state.ActionNodeRegister,
		func(s *state.Store, idx uint64, c *droverv1.RegisterNodeCommand) (proto.Message, error) {
			return value(s.RegisterNode(idx, c.GetMeta(), c.GetNodeId(), c.GetInventory(), c.GetAgentVersion(), c.GetGossipAddr()))
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_NODE_STATUS: commandOf(state.ActionNodeStatus,
		func(s *state.Store, idx uint64, c *droverv1.SetNodeStatusCommand) (proto.Message, error) {
			return nil, s.SetNodeStatus(idx, c.GetMeta(), c.GetUpdates())
		}),
	// Whether a SET_NODE_DRAIN drains or undrains is in its payload, so
	// an undecodable one is audited as a drain.
	droverv1.CommandType_COMMAND_TYPE_SET_NODE_DRAIN: commandOf(state.ActionNodeDrain,
		func(s *state.Store, idx uint64, c *droverv1.SetNodeDrainCommand) (proto.Message, error) {
			return value(s.SetNodeDrain(idx, c.GetMeta(), c.GetNodeId(), c.GetDraining()))
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_NODE_LABELS: commandOf(state.ActionNodeLabel,
		func(s *state.Store, idx uint64, c *droverv1.SetNodeLabelsCommand) (proto.Message, error) {
			return value(s.SetNodeLabels(idx, c.GetMeta(), c.GetNodeId(), c.GetSet(), c.GetRemove()))
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_NODE_PULL: commandOf(state.ActionNodePull,
		func(s *state.Store, idx uint64, c *droverv1.SetNodePullCommand) (proto.Message, error) {
			return value(s.SetNodePull(idx, c.GetMeta(), c.GetNodeId(), c.GetPull()))
		}),
	// Whether a SET_NODE_CONDITIONS cordons is in its payload, so an
	// undecodable one is audited as a change of conditions.
	droverv1.CommandType_COMMAND_TYPE_SET_NODE_CONDITIONS: commandOf(state.ActionNodeConditions,
		func(s *state.Store, idx uint64, c *droverv1.SetNodeConditionsCommand) (proto.Message, error) {
			return value(s.SetNodeConditions(idx, c.GetMeta(), c.GetNodeId(), c.GetConditions(), c.GetCordon(), c.GetReason()))
		}),
	droverv1.CommandType_COMMAND_TYPE_UNCORDON_NODE: commandOf(state.ActionNodeUncordon,
		func(s *state.Store, idx uint64, c *droverv1.UncordonNodeCommand) (proto.Message, error) {
			return value(s.UncordonNode(idx, c.GetMeta(), c.GetNodeId()))
		}),
	droverv1.CommandType_COMMAND_TYPE_REVOKE_NODE: commandOf(state.ActionNodeRevoke,
		func(s *state.Store, idx uint64, c *droverv1.RevokeNodeCommand) (proto.Message, error) {
			return value(s.RevokeNode(idx, c.GetMeta(), c.GetNodeId()))
		}),
	droverv1.CommandType_COMMAND_TYPE_APPLY_ACL_POLICY: commandOf(state.ActionACLPolicyApply,
		func(s *state.Store, idx uint64, c *droverv1.ApplyACLPolicyCommand) (proto.Message, error) {
			p, replaced, err := s.ApplyACLPolicy(idx, c.GetMeta(), c.GetPolicy())
			if err != nil {
				return nil, err
			}
			return &droverv1.ApplyACLPolicyResponse{Policy: p, Replaced: replaced}, nil
		}),
	droverv1.CommandType_COMMAND_TYPE_DELETE_ACL_POLICY: commandOf(state.ActionACLPolicyDelete,
		func(s *state.Store, idx uint64, c *droverv1.DeleteACLPolicyCommand) (proto.Message, error) {
			return nil, s.DeleteACLPolicy(idx, c.GetMeta(), c.GetName())
		}),
	droverv1.CommandType_COMMAND_TYPE_CREATE_ACL_TOKEN: commandOf(state.ActionACLTokenCreate,
		func(s *state.Store, idx uint64, c *droverv1.CreateACLTokenCommand) (proto.Message, error) {
			return value(s.CreateACLToken(idx, c.GetMeta(), c.GetToken()))
		}),
	droverv1.CommandType_COMMAND_TYPE_REVOKE_ACL_TOKEN: commandOf(state.ActionACLTokenRevoke,
		func(s *state.Store, idx uint64, c *droverv1.RevokeACLTokenCommand) (proto.Message, error) {
			return value(s.RevokeACLToken(idx, c.GetMeta(), c.GetAccessorId()))
		}),
	droverv1.CommandType_COMMAND_TYPE_ROTATE_ACL_TOKEN: commandOf(state.ActionACLTokenRotate,
		func(s *state.Store, idx uint64, c *droverv1.RotateACLTokenCommand) (proto.Message, error) {
			return value(s.RotateACLToken(idx, c.GetMeta(), c.GetAccessorId(), c.GetSecretSha256()))
		}),
	droverv1.CommandType_COMMAND_TYPE_REGISTER_SIGNING_KEY: commandOf(state.ActionKeyRegister,
		func(s *state.Store, idx uint64, c *droverv1.RegisterSigningKeyCommand) (proto.Message, error) {
			return value(s.RegisterSigningKey(idx, c.GetMeta(), c.GetKey()))
		}),
	droverv1.CommandType_COMMAND_TYPE_REVOKE_SIGNING_KEY: commandOf(state.ActionKeyRevoke,
		func(s *state.Store, idx uint64, c *droverv1.RevokeSigningKeyCommand) (proto.Message, error) {
			return value(s.RevokeSigningKey(idx, c.GetMeta(), c.GetKey()))
		}),
	droverv1.CommandType_COMMAND_TYPE_APPLY_DEPLOYMENT: commandOf(state.ActionDeploymentApply,
		func(s *state.Store, idx uint64, c *droverv1.ApplyDeploymentCommand) (proto.Message, error) {
			res, err := s.ApplyDeployment(idx, c.GetMeta(), c.GetSpec(), c.ExpectRevision)
			if err != nil {
				return nil, err
			}
			return &droverv1.ApplyDeploymentResponse{Deployment: res.Deployment, Rollout: res.Rollout}, nil
		}),
	droverv1.CommandType_COMMAND_TYPE_DELETE_DEPLOYMENT: commandOf(state.ActionDeploymentDelete,
		func(s *state.Store, idx uint64, c *droverv1.DeleteDeploymentCommand) (proto.Message, error) {
			return nil, s.DeleteDeployment(idx, c.GetMeta(), c.GetName())
		}),
	droverv1.CommandType_COMMAND_TYPE_START_ROLLOUT_BATCH: commandOf(state.ActionRolloutBatchStart,
		func(s *state.Store, idx uint64, c *droverv1.StartRolloutBatchCommand) (proto.Message, error) {
			return value(s.StartRolloutBatch(idx, c.GetMeta(), c))
		}),
	droverv1.CommandType_COMMAND_TYPE_FINISH_ROLLOUT_BATCH: commandOf(state.ActionRolloutBatchDone,
		func(s *state.Store, idx uint64, c *droverv1.FinishRolloutBatchCommand) (proto.Message, error) {
			return value(s.FinishRolloutBatch(idx, c.GetMeta(), c))
		}),
	droverv1.CommandType_COMMAND_TYPE_SET_ROLLOUT_STATE: commandOf(state.ActionRolloutState,
		func(s *state.Store, idx uint64, c *droverv1.SetRolloutStateCommand) (proto.Message, error) {
			return value(s.SetRolloutState(idx, c.GetMeta(), c))
		}),
	droverv1.CommandType_COMMAND_TYPE_START_ROLLBACK: commandOf(state.ActionRolloutRollback,
		func(s *state.Store, idx uint64, c *droverv1.StartRollbackCommand) (proto.Message, error) {
			return value(s.StartRollback(idx, c.GetMeta(), c))
		}),
	droverv1.CommandType_COMMAND_TYPE_ASSIGN_DEPLOYMENT_NODES: commandOf(state.ActionDeploymentAssign,
		func(s *state.Store, idx uint64, c *droverv1.AssignDeploymentNodesCommand) (proto.Message, error) {
			return nil, s.AssignDeploymentNodes(idx, c.GetMeta(), c)
		}),
	droverv1.CommandType_COMMAND_TYPE_UNASSIGN_DEPLOYMENT_NODES: commandOf(state.ActionDeploymentUnassign,
		func(s *state.Store, idx uint64, c *droverv1.UnassignDeploymentNodesCommand) (proto.Message, error) {
			return nil, s.UnassignDeploymentNodes(idx, c.GetMeta(), c)
		}),
	droverv1.CommandType_COMMAND_TYPE_RECORD_DENIALS: commandOf(state.ActionAccessDenied,
		func(s *state.Store, idx uint64, c *droverv1.RecordDenialsCommand) (proto.Message, error) {
			return nil, s.RecordDenials(idx, c.GetMeta(), c.GetDenials())
		}),
}

// value turns a write's result into ApplyResult's fields: a refusal
// carries no value.
func value[M proto.Message](m M, err error) (proto.Message, error) {
	if err != nil {
		return nil, err
	}
	return m, nil
}

// newPayload returns an empty payload message for a command type this
// server knows.
func newPayload(t droverv1.CommandType) (proto.Message, bool) {
	c, ok := commands[t]
	if !ok {
		return nil, false
	}
	return c.payload(), true
}

// actionOf names a command type's audit action, for entries whose payload
// does not decode; the store names it for the others.
func actionOf(t droverv1.CommandType) string {
	if c, ok := commands[t]; ok {
		return c.action
	}
	return ActionCommandInvalid
}
