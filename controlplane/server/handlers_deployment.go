package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/acl"
	"github.com/droverhq/drover/controlplane/placement"
	"github.com/droverhq/drover/controlplane/rollout"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// deploymentHandler serves deployments. Specs are checked and their
// defaults filled in here, so that every client (the CLI, a script
// posting JSON) gets the same rules and what is stored is complete; the
// state machine resolves the model reference again on apply, against the
// state the command lands on.
type deploymentHandler struct{ s *Server }

var _ droverv1connect.DeploymentServiceHandler = (*deploymentHandler)(nil)

func deploymentObject(d *droverv1.Deployment) acl.Object {
	return acl.Object{Name: d.GetSpec().GetName()}
}

// prepare normalizes a spec and resolves its model, as apply and plan
// both need; the caller must be allowed to read the model, because the
// deployment makes nodes fetch its bytes.
func (h *deploymentHandler) prepare(ctx context.Context, proc string, spec *droverv1.DeploymentSpec) (*droverv1.DeploymentSpec, *droverv1.ModelVersion, error) {
	norm, err := placement.Normalize(spec)
	if err != nil {
		return nil, nil, toAPIError(err)
	}
	model, _, _ := strings.Cut(norm.GetModel(), "@")
	if err := h.s.mayReadModel(ctx, proc, model); err != nil {
		return nil, nil, err
	}
	v, err := h.s.state.ResolveDeploymentModel(norm.GetModel())
	if err != nil {
		return nil, nil, toAPIError(fmt.Errorf("deployment %q: %w", norm.GetName(), err))
	}
	return norm, v, nil
}

func (h *deploymentHandler) ApplyDeployment(ctx context.Context, req *connect.Request[droverv1.ApplyDeploymentRequest]) (*connect.Response[droverv1.ApplyDeploymentResponse], error) {
	spec, _, err := h.prepare(ctx, droverv1connect.DeploymentServiceApplyDeploymentProcedure, req.Msg.GetSpec())
	if err != nil {
		return nil, err
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_APPLY_DEPLOYMENT, &droverv1.ApplyDeploymentCommand{
		Meta: commandMeta(ctx), Spec: spec, ExpectRevision: req.Msg.ExpectRevision,
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	out := res.Value.(*droverv1.ApplyDeploymentResponse)
	out.Meta = &droverv1.WriteMeta{Index: res.Index}
	return connect.NewResponse(out), nil
}

// PlanDeployment says what an apply of the spec would do, changing
// nothing: the spec as it would be stored, every node's verdict, and the
// batches a rollout would take over the matching nodes.
func (h *deploymentHandler) PlanDeployment(ctx context.Context, req *connect.Request[droverv1.PlanDeploymentRequest]) (*connect.Response[droverv1.PlanDeploymentResponse], error) {
	// Read as a query does, so that a plan sees every acknowledged write
	// (or, with the stale header, whatever this server has).
	if err := h.s.readyForRead(ctx, req.Header()); err != nil {
		return nil, err
	}
	spec, v, err := h.prepare(ctx, droverv1connect.DeploymentServicePlanDeploymentProcedure, req.Msg.GetSpec())
	if err != nil {
		return nil, err
	}
	cur, err := h.s.state.Deployment(spec.GetName())
	if err != nil {
		cur = nil
	}
	all := h.s.state.Nodes()
	nodes := readable(ctx, slices.Clone(all), droverv1.ACLResource_ACL_RESOURCE_NODE, nodeObject)
	hidden := len(all) - len(nodes)
	out := &droverv1.PlanDeploymentResponse{Spec: spec, Version: v.GetVersion(), Current: cur}
	// What each node is assigned now for this deployment: a node already
	// assigned the planned version needs no batch.
	assigned := h.s.state.DeploymentAssignments(spec.GetName())
	var targets []rollout.Target
	for _, n := range nodes {
		if n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
			continue // gone for good; listing them helps no one
		}
		ok, reasons := placement.Match(spec.GetSelector(), spec.GetResources(), n)
		m := &droverv1.NodeMatch{NodeId: n.GetId(), NodeName: n.GetName(), Site: n.GetSite(), Matches: ok, Reasons: reasons,
			CurrentVersion: assigned[n.GetId()].GetVersion()}
		out.Nodes = append(out.Nodes, m)
		if ok && m.GetCurrentVersion() != v.GetVersion() {
			targets = append(targets, rollout.Target{NodeID: n.GetId(), Site: n.GetSite()})
		}
	}
	specChanged := cur == nil || !proto.Equal(cur.GetSpec(), spec)
	versionChanged := cur == nil || cur.GetVersion() != v.GetVersion()
	if versionChanged {
		st := spec.GetStrategy()
		batches, canary := rollout.Plan(rollout.Strategy{
			Canary:        int(st.GetCanary()),
			CanaryPercent: int(st.GetCanaryPercent()),
			MaxParallel:   int(st.GetMaxParallel()),
			Budget:        int(st.GetMaxUnavailablePerSite()),
		}, targets)
		for i, b := range batches {
			rb := &droverv1.RolloutBatch{Canary: i < canary}
			for _, t := range b {
				rb.NodeIds = append(rb.NodeIds, t.NodeID)
			}
			out.Batches = append(out.Batches, rb)
		}
	}
	out.Summary = planSummary(cur, v.GetVersion(), specChanged, versionChanged, out, hidden)
	return connect.NewResponse(out), nil
}

// planSummary says what an apply would do in one sentence.
func planSummary(cur *droverv1.Deployment, version uint64, specChanged, versionChanged bool, plan *droverv1.PlanDeploymentResponse, hidden int) string {
	matching, moving := 0, 0
	for _, n := range plan.GetNodes() {
		if n.GetMatches() {
			matching++
			if n.GetCurrentVersion() != version {
				moving++
			}
		}
	}
	skipped := len(plan.GetNodes()) - matching
	var b strings.Builder
	switch {
	case cur == nil:
		b.WriteString("create")
	case !specChanged && !versionChanged:
		b.WriteString("no change")
	case specChanged:
		fmt.Fprintf(&b, "update to revision %d", cur.GetRevision()+1)
	default:
		fmt.Fprintf(&b, "keep revision %d", cur.GetRevision())
	}
	switch {
	case !versionChanged:
		if cur != nil && specChanged {
			fmt.Fprintf(&b, "; version %d unchanged, no rollout", version)
		}
	case matching == 0:
		fmt.Fprintf(&b, "; version %d, but no node matches the selector", version)
	case moving == 0:
		fmt.Fprintf(&b, "; version %d, which every matching node is assigned already", version)
	default:
		from := ""
		if cur != nil {
			from = fmt.Sprintf("from version %d ", cur.GetVersion())
		}
		canary := 0
		for _, bt := range plan.GetBatches() {
			if bt.GetCanary() {
				canary++
			}
		}
		fmt.Fprintf(&b, "; roll out %sto version %d on %s in %s", from, version, plural(moving, "node"), plural(len(plan.GetBatches()), "batch"))
		if canary > 0 {
			fmt.Fprintf(&b, " (%s first)", plural(canary, "canary batch"))
		}
	}
	if skipped > 0 {
		fmt.Fprintf(&b, "; %s skipped", plural(skipped, "node"))
	}
	if hidden > 0 {
		fmt.Fprintf(&b, "; %s not shown (your token may not read them)", plural(hidden, "node"))
	}
	return b.String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	if strings.HasSuffix(what, "ch") {
		return fmt.Sprintf("%d %ses", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func (h *deploymentHandler) ListDeployments(ctx context.Context, req *connect.Request[droverv1.ListDeploymentsRequest]) (*connect.Response[droverv1.ListDeploymentsResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetQuery())
	if err != nil {
		return nil, err
	}
	ds := readable(ctx, h.s.state.Deployments(), droverv1.ACLResource_ACL_RESOURCE_DEPLOYMENT, deploymentObject)
	latest := h.s.state.LatestRollouts()
	assigned := h.s.state.AssignedVersions()
	out := &droverv1.ListDeploymentsResponse{Deployments: ds, Rollouts: map[string]*droverv1.Rollout{},
		AssignedNodes: map[string]uint32{}, Meta: meta}
	for _, d := range ds {
		name := d.GetSpec().GetName()
		if r, ok := latest[name]; ok {
			out.Rollouts[name] = r
		}
		if n := len(assigned[name]); n > 0 {
			out.AssignedNodes[name] = uint32(n)
		}
	}
	return connect.NewResponse(out), nil
}

// GetDeployment returns a deployment, its latest rollout and the nodes
// assigned it, each with its latest report when this server leads (see
// GetRollout).
func (h *deploymentHandler) GetDeployment(ctx context.Context, req *connect.Request[droverv1.GetDeploymentRequest]) (*connect.Response[droverv1.GetDeploymentResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetQuery())
	if err != nil {
		return nil, err
	}
	d, err := h.s.state.Deployment(req.Msg.GetName())
	if err != nil {
		return nil, toAPIError(err)
	}
	out := &droverv1.GetDeploymentResponse{Deployment: d, Meta: meta}
	if d.GetRolloutId() > 0 {
		if r, err := h.s.state.Rollout(d.GetSpec().GetName(), 0); err == nil {
			out.Rollout = r
		}
	}
	out.Nodes = h.s.deploymentNodes(d.GetSpec().GetName(), nil)
	return connect.NewResponse(out), nil
}

func (h *deploymentHandler) DeleteDeployment(ctx context.Context, req *connect.Request[droverv1.DeleteDeploymentRequest]) (*connect.Response[droverv1.DeleteDeploymentResponse], error) {
	if err := state.ValidateName("deployment", req.Msg.GetName()); err != nil {
		return nil, toAPIError(err)
	}
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_DELETE_DEPLOYMENT,
		&droverv1.DeleteDeploymentCommand{Meta: commandMeta(ctx), Name: req.Msg.GetName()})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.DeleteDeploymentResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}
