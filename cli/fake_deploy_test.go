package cli

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// fakeDeploys is DeploymentService in memory: it stores what it is sent
// (no defaults, no checks but the ones a test needs), resolves NAME@N to
// N and anything else to version 7, and answers plans with plan.
type fakeDeploys struct {
	f *fakeServer // its mu guards the fields below

	deployments map[string]*droverv1.Deployment
	rollouts    map[string]*droverv1.Rollout
	plan        *droverv1.PlanDeploymentResponse
	lastApply   *droverv1.ApplyDeploymentRequest
	lastPlan    *droverv1.PlanDeploymentRequest
}

var _ droverv1connect.DeploymentServiceHandler = (*fakeDeploys)(nil)

func fakeResolve(model string) uint64 {
	for i := len(model) - 1; i >= 0; i-- {
		if model[i] == '@' {
			if n, ok := parseVersionNumber(model[i+1:]); ok {
				return n
			}
			break
		}
	}
	return 7
}

func (d *fakeDeploys) ApplyDeployment(_ context.Context, req *connect.Request[droverv1.ApplyDeploymentRequest]) (*connect.Response[droverv1.ApplyDeploymentResponse], error) {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	d.lastApply = req.Msg
	spec := req.Msg.GetSpec()
	name := spec.GetName()
	cur := d.deployments[name]
	if e := req.Msg.ExpectRevision; e != nil && *e != cur.GetRevision() {
		return nil, apiError(connect.CodeAborted, droverv1.ErrorReason_ERROR_REASON_CONFLICT, "",
			"deployment %q conflict: expected revision %d, but it is at revision %d", name, *e, cur.GetRevision())
	}
	version := fakeResolve(spec.GetModel())
	if cur != nil && proto.Equal(cur.GetSpec(), spec) && cur.GetVersion() == version {
		return connect.NewResponse(&droverv1.ApplyDeploymentResponse{Deployment: cur, Meta: &droverv1.WriteMeta{Index: f.index}}), nil
	}
	idx := f.commitLocked("deployment.apply", "deployment/"+name)
	next := &droverv1.Deployment{Spec: spec, Revision: cur.GetRevision() + 1, Version: version, RolloutId: cur.GetRolloutId(),
		CreatedBy: "anonymous", CreateTime: timestamppb.New(f.created), UpdateTime: timestamppb.New(f.created), CreateIndex: idx, ModifyIndex: idx}
	out := &droverv1.ApplyDeploymentResponse{Deployment: next, Meta: &droverv1.WriteMeta{Index: idx}}
	if cur == nil || cur.GetVersion() != version {
		next.RolloutId++
		r := &droverv1.Rollout{Deployment: name, Id: next.RolloutId, FromVersion: cur.GetVersion(), ToVersion: version,
			State: droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING, Reason: "apply revision " + formatUint(next.Revision)}
		d.rollouts[name] = r
		out.Rollout = r
	}
	d.deployments[name] = next
	return connect.NewResponse(out), nil
}

func (d *fakeDeploys) PlanDeployment(_ context.Context, req *connect.Request[droverv1.PlanDeploymentRequest]) (*connect.Response[droverv1.PlanDeploymentResponse], error) {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.lastPlan = req.Msg
	out := proto.Clone(d.plan).(*droverv1.PlanDeploymentResponse)
	out.Spec = req.Msg.GetSpec()
	return connect.NewResponse(out), nil
}

func (d *fakeDeploys) ListDeployments(_ context.Context, req *connect.Request[droverv1.ListDeploymentsRequest]) (*connect.Response[droverv1.ListDeploymentsResponse], error) {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &droverv1.ListDeploymentsResponse{Meta: f.queryMetaLocked(req.Msg.GetQuery()), Rollouts: map[string]*droverv1.Rollout{},
		AssignedNodes: map[string]uint32{}}
	// Map order, on purpose: the command must sort.
	for name, dep := range d.deployments {
		out.Deployments = append(out.Deployments, dep)
		out.AssignedNodes[name] = 3
		if r, ok := d.rollouts[name]; ok {
			out.Rollouts[name] = r
		}
	}
	return connect.NewResponse(out), nil
}

func (d *fakeDeploys) GetDeployment(_ context.Context, req *connect.Request[droverv1.GetDeploymentRequest]) (*connect.Response[droverv1.GetDeploymentResponse], error) {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	dep, ok := d.deployments[req.Msg.GetName()]
	if !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"", "deployment %q not found; list deployments with \"drover deploy ls\"", req.Msg.GetName())
	}
	return connect.NewResponse(&droverv1.GetDeploymentResponse{Deployment: dep, Rollout: d.rollouts[req.Msg.GetName()],
		Meta: f.queryMetaLocked(req.Msg.GetQuery())}), nil
}

func (d *fakeDeploys) DeleteDeployment(_ context.Context, req *connect.Request[droverv1.DeleteDeploymentRequest]) (*connect.Response[droverv1.DeleteDeploymentResponse], error) {
	f := d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := d.deployments[req.Msg.GetName()]; !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"", "deployment %q not found; list deployments with \"drover deploy ls\"", req.Msg.GetName())
	}
	delete(d.deployments, req.Msg.GetName())
	delete(d.rollouts, req.Msg.GetName())
	idx := f.commitLocked("deployment.delete", "deployment/"+req.Msg.GetName())
	return connect.NewResponse(&droverv1.DeleteDeploymentResponse{Meta: &droverv1.WriteMeta{Index: idx}}), nil
}
