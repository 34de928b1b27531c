package server

import (
	"context"
	"errors"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/rollout"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// rolloutHandler serves rollouts: their records from the state, their
// nodes' reports from the leader's heartbeat tracker, and the operators'
// actions, each checked by the controller's own rules (rollout.Pause and
// the others) and written as one Raft command that the state machine
// checks again.
type rolloutHandler struct{ s *Server }

var _ droverv1connect.RolloutServiceHandler = (*rolloutHandler)(nil)

// GetRollout returns a rollout, the deployment's latest for id 0, with
// every node of its batches and every node assigned the deployment: what
// each is told to run and what it last reported. Reports live only on
// the leader, where consistent reads are answered; a stale read answered
// by another server has none.
func (h *rolloutHandler) GetRollout(ctx context.Context, req *connect.Request[droverv1.GetRolloutRequest]) (*connect.Response[droverv1.GetRolloutResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetQuery())
	if err != nil {
		return nil, err
	}
	name := req.Msg.GetDeployment()
	if err := state.ValidateName("deployment", name); err != nil {
		return nil, toAPIError(err)
	}
	r, err := h.s.state.Rollout(name, req.Msg.GetId())
	if err != nil {
		return nil, toAPIError(err)
	}
	var ids []string
	for _, b := range r.GetBatches() {
		ids = append(ids, b.GetNodeIds()...)
	}
	out := &droverv1.GetRolloutResponse{Rollout: r, Meta: meta}
	out.Nodes = h.s.deploymentNodes(name, ids)
	if rl := h.s.rolloutLoop(); rl != nil {
		if d, err := h.s.state.Deployment(name); err == nil && d.GetRolloutId() == r.GetId() {
			out.Waiting = rl.waitingFor(name)
		}
	}
	return connect.NewResponse(out), nil
}

// deploymentNodes describes the nodes assigned deployment name and the
// nodes extra, each once, sorted by id: its assignment, and its latest
// report when this server leads.
func (s *Server) deploymentNodes(name string, extra []string) []*droverv1.DeploymentNode {
	assigned := s.state.DeploymentAssignments(name)
	ids := slices.Clone(extra)
	for id := range assigned {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	hb := s.heartbeatTracker()
	var reports map[string]*droverv1.InstanceStatus
	if hb != nil {
		reports = hb.instanceReports(name, ids)
	}
	out := make([]*droverv1.DeploymentNode, 0, len(ids))
	for _, id := range ids {
		dn := &droverv1.DeploymentNode{NodeId: id, Assignment: assigned[id]}
		if n, err := s.state.NodeSummary(id); err == nil {
			dn.NodeName, dn.Site = n.GetName(), n.GetSite()
		}
		if st := reports[id]; st != nil {
			dn.Status = proto.CloneOf(st)
		}
		out = append(out, dn)
	}
	return out
}

// ListRollouts returns the rollout history of one deployment, or of every
// deployment the caller may read.
func (h *rolloutHandler) ListRollouts(ctx context.Context, req *connect.Request[droverv1.ListRolloutsRequest]) (*connect.Response[droverv1.ListRolloutsResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetQuery())
	if err != nil {
		return nil, err
	}
	name := req.Msg.GetDeployment()
	if name != "" {
		if err := state.ValidateName("deployment", name); err != nil {
			return nil, toAPIError(err)
		}
	}
	rs, err := h.s.state.Rollouts(name)
	if err != nil {
		return nil, toAPIError(err)
	}
	rs = readable(ctx, rs, droverv1.ACLResource_ACL_RESOURCE_DEPLOYMENT, func(r *droverv1.Rollout) acl.Object {
		return acl.Object{Name: r.GetDeployment()}
	})
	return connect.NewResponse(&droverv1.ListRolloutsResponse{Rollouts: rs, Meta: meta}), nil
}

func (h *rolloutHandler) PauseRollout(ctx context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return h.act(ctx, req.Msg, func(d *droverv1.Deployment, r *droverv1.Rollout, meta *droverv1.CommandMeta) (rollout.Decision, error) {
		return rollout.Pause(d, r, req.Msg.GetReason(), meta.GetTime().AsTime())
	})
}

func (h *rolloutHandler) ResumeRollout(ctx context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return h.act(ctx, req.Msg, func(d *droverv1.Deployment, r *droverv1.Rollout, meta *droverv1.CommandMeta) (rollout.Decision, error) {
		return rollout.Resume(d, r, req.Msg.GetReason(), meta.GetTime().AsTime())
	})
}

func (h *rolloutHandler) PromoteRollout(ctx context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return h.act(ctx, req.Msg, func(d *droverv1.Deployment, r *droverv1.Rollout, meta *droverv1.CommandMeta) (rollout.Decision, error) {
		return rollout.Promote(d, r, req.Msg.GetReason(), meta.GetTime().AsTime())
	})
}

// RollbackRollout starts a rollout back to the version before the
// deployment's latest rollout, superseding it if it is still under way.
func (h *rolloutHandler) RollbackRollout(ctx context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return h.act(ctx, req.Msg, func(d *droverv1.Deployment, r *droverv1.Rollout, meta *droverv1.CommandMeta) (rollout.Decision, error) {
		by := meta.GetActorName()
		if by == "" {
			by = meta.GetActor()
		}
		return rollout.Rollback(d, r, by, req.Msg.GetReason(), meta.GetTime().AsTime())
	})
}

// act runs one operator action on the deployment's latest rollout as the
// leader sees it and writes its decision. An action the rollout's state
// does not allow is FAILED_PRECONDITION with the controller's message;
// one that lost a race with the controller (the rollout moved on between
// the check and the write) is ABORTED, to be retried after a look at the
// rollout.
func (h *rolloutHandler) act(ctx context.Context, msg *droverv1.RolloutActionRequest, decide func(*droverv1.Deployment, *droverv1.Rollout, *droverv1.CommandMeta) (rollout.Decision, error)) (*connect.Response[droverv1.RolloutActionResponse], error) {
	name := msg.GetDeployment()
	if err := state.ValidateName("deployment", name); err != nil {
		return nil, toAPIError(err)
	}
	if len(msg.GetReason()) > maxRolloutReasonBytes {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"the reason is longer than 1024 bytes", "say why in a sentence")
	}
	d, err := h.s.state.Deployment(name)
	if err != nil {
		return nil, toAPIError(err)
	}
	var r *droverv1.Rollout
	if d.GetRolloutId() > 0 {
		if r, err = h.s.state.Rollout(name, 0); err != nil {
			return nil, toAPIError(err)
		}
	}
	meta := commandMeta(ctx)
	dec, err := decide(d, r, meta)
	switch {
	case errors.Is(err, rollout.ErrNotAllowed):
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(),
			"see the rollout with: drover rollout status "+name)
	case err != nil:
		return nil, toAPIError(err)
	}
	t, cmd := decisionCommand(dec, meta)
	res, err := h.s.apply(ctx, t, cmd)
	if err != nil {
		return nil, toAPIError(err)
	}
	h.s.kickRollouts()
	out := &droverv1.RolloutActionResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}
	if v, ok := res.Value.(*droverv1.Rollout); ok {
		out.Rollout = v
	}
	return connect.NewResponse(out), nil
}

// maxRolloutReasonBytes bounds the reason an operator gives an action; it
// is stored in the rollout and the audit log.
const maxRolloutReasonBytes = 1024
