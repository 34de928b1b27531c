package server

import (
	"context"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// nodeHandler serves the operator's view of the fleet.
type nodeHandler struct{ s *Server }

var _ droverv1connect.NodeServiceHandler = (*nodeHandler)(nil)

func (h *nodeHandler) ListNodes(ctx context.Context, req *connect.Request[droverv1.ListNodesRequest]) (*connect.Response[droverv1.ListNodesResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	nodes := h.s.state.NodesFiltered(state.NodeFilter{
		Labels:            req.Msg.GetLabels(),
		Site:              req.Msg.GetSite(),
		Status:            req.Msg.GetStatus(),
		GPUModelContains:  req.Msg.GetGpuModel(),
		MinGPUMemoryBytes: req.Msg.GetMinGpuMemoryBytes(),
	})
	nodes = readable(ctx, nodes, droverv1.ACLResource_ACL_RESOURCE_NODE, nodeObject)
	for _, n := range nodes {
		h.s.withPullStatus(n)
	}
	return connect.NewResponse(&droverv1.ListNodesResponse{Nodes: nodes, Meta: meta}), nil
}

func (h *nodeHandler) GetNode(ctx context.Context, req *connect.Request[droverv1.GetNodeRequest]) (*connect.Response[droverv1.GetNodeResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	h.s.withPullStatus(n)
	return connect.NewResponse(&droverv1.GetNodeResponse{Node: n, Meta: meta}), nil
}

func (h *nodeHandler) DrainNode(ctx context.Context, req *connect.Request[droverv1.DrainNodeRequest]) (*connect.Response[droverv1.DrainNodeResponse], error) {
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_NODE_DRAIN,
		&droverv1.SetNodeDrainCommand{Meta: commandMeta(ctx), NodeId: n.GetId(), Draining: req.Msg.GetDrain()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.DrainNodeResponse{
		Node: res.Value.(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *nodeHandler) UncordonNode(ctx context.Context, req *connect.Request[droverv1.UncordonNodeRequest]) (*connect.Response[droverv1.UncordonNodeResponse], error) {
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_UNCORDON_NODE,
		&droverv1.UncordonNodeCommand{Meta: commandMeta(ctx), NodeId: n.GetId()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.UncordonNodeResponse{
		Node: res.Value.(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

func (h *nodeHandler) LabelNode(ctx context.Context, req *connect.Request[droverv1.LabelNodeRequest]) (*connect.Response[droverv1.LabelNodeResponse], error) {
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_NODE_LABELS, &droverv1.SetNodeLabelsCommand{
		Meta: commandMeta(ctx), NodeId: n.GetId(), Set: req.Msg.GetSet(), Remove: req.Msg.GetRemove(),
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.LabelNodeResponse{
		Node: res.Value.(*droverv1.Node), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

// RevokeNode revokes a node: its certificate is refused from now on, so
// its heartbeats are too, and the leader marks it DOWN when its deadline
// passes.
func (h *nodeHandler) RevokeNode(ctx context.Context, req *connect.Request[droverv1.RevokeNodeRequest]) (*connect.Response[droverv1.RevokeNodeResponse], error) {
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REVOKE_NODE,
		&droverv1.RevokeNodeCommand{Meta: commandMeta(ctx), NodeId: n.GetId()})
	if err != nil {
		return nil, toAPIError(err)
	}
	if hb := h.s.heartbeatTracker(); hb != nil {
		hb.revoked(n.GetId())
	}
	return connect.NewResponse(&droverv1.RevokeNodeResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}

// findNode looks a node up by id, then by name. A name names the node
// that has not left; among nodes that all left it must be unambiguous.
func (s *Server) findNode(ref string) (*droverv1.Node, error) {
	if ref == "" {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"no node given", "name a node by id or name; \"drover node ls\" lists them")
	}
	if n, err := s.state.Node(ref); err == nil {
		return n, nil
	}
	var left []*droverv1.Node
	for _, n := range s.state.Nodes() {
		if n.GetName() != ref {
			continue
		}
		if n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_LEFT {
			return n, nil
		}
		left = append(left, n)
	}
	switch len(left) {
	case 0:
		return nil, toAPIError(fmt.Errorf("node %q %w", ref, state.ErrNotFound))
	case 1:
		return left[0], nil
	}
	ids := make([]string, len(left))
	for i, n := range left {
		ids[i] = n.GetId()
	}
	return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
		fmt.Sprintf("node name %q is ambiguous: nodes %s had it and left", ref, strings.Join(ids, ", ")),
		"name the node by id")
}

// PullVersion resolves the reference to a version with pushed bytes and
// records, through Raft, that the node is to pull it. The interceptor
// checked node:write on the node; the node gets the model's bytes, so the
// caller must also be able to read them (model:read on the model).
func (h *nodeHandler) PullVersion(ctx context.Context, req *connect.Request[droverv1.PullVersionRequest]) (*connect.Response[droverv1.PullVersionResponse], error) {
	n, err := h.s.findNode(req.Msg.GetNode())
	if err != nil {
		return nil, err
	}
	model := req.Msg.GetModel()
	if model == "" {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"no model given", "name the model and version as NAME@REF, such as resnet@prod")
	}
	if err := h.mayReadModel(ctx, model); err != nil {
		return nil, err
	}
	ref := req.Msg.GetRef()
	if ref == "" {
		ref = "latest"
	}
	v, err := h.s.state.Version(model, ref)
	if err != nil {
		return nil, toAPIError(err)
	}
	if v.GetArtifact().GetSigned() == nil {
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("version %d of %s was created from a bare digest; the cluster holds no bytes for the node to pull", v.GetVersion(), model),
			"push the model's files with `drover model push`, then ask the node to pull the version that made")
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_NODE_PULL, &droverv1.SetNodePullCommand{
		Meta:   commandMeta(ctx),
		NodeId: n.GetId(),
		Pull:   &droverv1.NodePull{Model: model, Version: v.GetVersion(), ArtifactDigest: v.GetArtifact().GetDigest()},
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	node := res.Value.(*droverv1.Node)
	h.s.withPullStatus(node)
	return connect.NewResponse(&droverv1.PullVersionResponse{
		Node: node, Pull: node.GetRequestedPull(), Meta: &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

// mayReadModel refuses a caller without model:read on model, and records
// the refusal as the interceptor records those of write calls.
func (h *nodeHandler) mayReadModel(ctx context.Context, model string) error {
	return h.s.mayReadModel(ctx, droverv1connect.NodeServicePullVersionProcedure, model)
}

// mayReadModel refuses a caller of proc without model:read on model, and
// records the refusal as the interceptor records those of write calls.
func (s *Server) mayReadModel(ctx context.Context, proc, model string) error {
	c := callerFrom(ctx)
	if c.allows(droverv1.ACLResource_ACL_RESOURCE_MODEL, droverv1.ACLAccess_ACL_ACCESS_READ, acl.Object{Name: model}) {
		return nil
	}
	if c == nil {
		// Unreachable: the interceptor admits only operator tokens.
		return apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs a token", "pass --token or set DROVER_TOKEN")
	}
	capability := acl.Capability{Auth: acl.AuthToken, Resource: droverv1.ACLResource_ACL_RESOURCE_MODEL, Access: droverv1.ACLAccess_ACL_ACCESS_READ}
	ref := acl.Ref{Name: model}
	err := permissionDenied(c, capability, ref)
	s.denials.add(s.denial(c, proc, capability, ref, err))
	return err
}

// withPullStatus sets n's pull status from the leader's heartbeat
// tracker, when this server is the established leader and the node's
// agent reported one in this term.
func (s *Server) withPullStatus(n *droverv1.Node) {
	if hb := s.heartbeatTracker(); hb != nil {
		n.PullStatus = hb.pullStatus(n.GetId())
	}
}
