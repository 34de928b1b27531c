package cli

import (
	"context"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// fakeRollouts is RolloutService over fakeDeploys' rollouts: the latest
// rollout of each deployment is fakeDeploys.rollouts[name], earlier ones
// are in older. Actions follow the controller's rules for the states a
// test uses.
type fakeRollouts struct {
	d *fakeDeploys // its f.mu guards the fields below

	older   []*droverv1.Rollout
	nodes   map[string][]*droverv1.DeploymentNode // by deployment
	waiting string
	// gets counts GetRollout calls; after each, step (if set) may move
	// the rollout on, as the controller would between two looks.
	gets int
	step func(gets int, r *droverv1.Rollout)
}

var _ droverv1connect.RolloutServiceHandler = (*fakeRollouts)(nil)

func (fr *fakeRollouts) latestLocked(name string) (*droverv1.Rollout, error) {
	r, ok := fr.d.rollouts[name]
	if !ok {
		return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			"", "deployment %q not found; list deployments with \"drover deploy ls\"", name)
	}
	return r, nil
}

func (fr *fakeRollouts) GetRollout(_ context.Context, req *connect.Request[droverv1.GetRolloutRequest]) (*connect.Response[droverv1.GetRolloutResponse], error) {
	f := fr.d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := fr.latestLocked(req.Msg.GetDeployment())
	if err != nil {
		return nil, err
	}
	if id := req.Msg.GetId(); id != 0 && id != r.GetId() {
		i := slices.IndexFunc(fr.older, func(o *droverv1.Rollout) bool {
			return o.GetDeployment() == req.Msg.GetDeployment() && o.GetId() == id
		})
		if i < 0 {
			return nil, apiError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND, "", "rollout %d not found", id)
		}
		r = fr.older[i]
	}
	out := &droverv1.GetRolloutResponse{Rollout: proto.CloneOf(r), Nodes: fr.nodes[r.GetDeployment()], Waiting: fr.waiting,
		Meta: f.queryMetaLocked(req.Msg.GetQuery())}
	fr.gets++
	if fr.step != nil {
		fr.step(fr.gets, r)
	}
	return connect.NewResponse(out), nil
}

func (fr *fakeRollouts) ListRollouts(_ context.Context, req *connect.Request[droverv1.ListRolloutsRequest]) (*connect.Response[droverv1.ListRolloutsResponse], error) {
	f := fr.d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	all := slices.Clone(fr.older)
	for _, r := range fr.d.rollouts {
		all = append(all, r)
	}
	slices.SortFunc(all, func(a, b *droverv1.Rollout) int {
		if c := strings.Compare(a.GetDeployment(), b.GetDeployment()); c != 0 {
			return c
		}
		return int(a.GetId()) - int(b.GetId())
	})
	out := &droverv1.ListRolloutsResponse{Meta: f.queryMetaLocked(req.Msg.GetQuery())}
	for _, r := range all {
		if req.Msg.GetDeployment() == "" || r.GetDeployment() == req.Msg.GetDeployment() {
			out.Rollouts = append(out.Rollouts, r)
		}
	}
	return connect.NewResponse(out), nil
}

// move changes the latest rollout from state from to state to, or
// refuses as the server does.
func (fr *fakeRollouts) move(name, verb string, from, to droverv1.RolloutState) (*connect.Response[droverv1.RolloutActionResponse], error) {
	f := fr.d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	r, err := fr.latestLocked(name)
	if err != nil {
		return nil, err
	}
	if r.GetState() != from {
		return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"see the rollout with: drover rollout status "+name, "%s rollout: rollout %d of %s is %s: rollout action not allowed",
			verb, r.GetId(), name, strings.TrimPrefix(r.GetState().String(), "ROLLOUT_STATE_"))
	}
	r.State = to
	idx := f.commitLocked("rollout.state", "deployment/"+name)
	return connect.NewResponse(&droverv1.RolloutActionResponse{Rollout: r, Meta: &droverv1.WriteMeta{Index: idx}}), nil
}

func (fr *fakeRollouts) PauseRollout(_ context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return fr.move(req.Msg.GetDeployment(), "pause", droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING, droverv1.RolloutState_ROLLOUT_STATE_PAUSED)
}

func (fr *fakeRollouts) ResumeRollout(_ context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return fr.move(req.Msg.GetDeployment(), "resume", droverv1.RolloutState_ROLLOUT_STATE_PAUSED, droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING)
}

func (fr *fakeRollouts) PromoteRollout(_ context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	return fr.move(req.Msg.GetDeployment(), "promote", droverv1.RolloutState_ROLLOUT_STATE_AWAITING_PROMOTION, droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING)
}

func (fr *fakeRollouts) RollbackRollout(_ context.Context, req *connect.Request[droverv1.RolloutActionRequest]) (*connect.Response[droverv1.RolloutActionResponse], error) {
	f := fr.d.f
	f.mu.Lock()
	defer f.mu.Unlock()
	name := req.Msg.GetDeployment()
	r, err := fr.latestLocked(name)
	if err != nil {
		return nil, err
	}
	if r.GetFromVersion() == 0 {
		return nil, apiError(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "",
			"roll back: rollout %d of %s was the deployment's first; there is no earlier version to go back to: rollout action not allowed", r.GetId(), name)
	}
	prev := proto.CloneOf(r)
	prev.State = droverv1.RolloutState_ROLLOUT_STATE_SUPERSEDED
	fr.older = append(fr.older, prev)
	next := &droverv1.Rollout{Deployment: name, Id: r.GetId() + 1, FromVersion: r.GetToVersion(), ToVersion: r.GetFromVersion(),
		State: droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING, RollbackOf: r.GetId(), CreatedBy: "anonymous",
		Reason: "rollback of rollout " + formatUint(r.GetId()) + ": " + req.Msg.GetReason()}
	fr.d.rollouts[name] = next
	fr.d.deployments[name].RolloutId = next.GetId()
	idx := f.commitLocked("rollout.rollback", "deployment/"+name)
	return connect.NewResponse(&droverv1.RolloutActionResponse{Rollout: next, Meta: &droverv1.WriteMeta{Index: idx}}), nil
}
