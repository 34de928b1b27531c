package server

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/monitor"
	"github.com/droverhq/drover/controlplane/placement"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// defaultDriftRange is how far back GetDrift looks when not told.
const defaultDriftRange = 6 * time.Hour

type driftHandler struct{ s *Server }

var _ droverv1connect.DriftServiceHandler = (*driftHandler)(nil)

// GetDrift merges a version's telemetry per cohort over the asked range,
// from every server, and compares each cohort with the version's
// reference.
func (h *driftHandler) GetDrift(ctx context.Context, req *connect.Request[droverv1.GetDriftRequest]) (*connect.Response[droverv1.GetDriftResponse], error) {
	m := req.Msg
	if err := placement.CheckCohort(m.GetGroupBy(), true); err != nil {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"group_by "+err.Error(), "group by site, gpu, label:KEY, deployment or node")
	}
	ref := m.GetRef()
	if ref == "" {
		ref = "latest"
	}
	v, err := h.s.state.Version(m.GetModel(), ref)
	if err != nil {
		return nil, toAPIError(err)
	}
	if v.GetReference() == nil {
		return nil, apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("%s@%d has no reference profile, so there is nothing to measure drift against", v.GetModel(), v.GetVersion()),
			"push the version with --reference FILE, or deploy it with a monitor.drift policy so that its canary's first windows become its reference")
	}
	refProfile, err := sketch.ProfileFromProto(v.GetReference())
	if err != nil {
		return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, "stored reference: "+err.Error(), "")
	}
	thresholds := monitor.DefaultThresholds()
	if name := m.GetDeployment(); name != "" {
		d, err := h.s.state.Deployment(name)
		if err != nil {
			return nil, toAPIError(err)
		}
		if pb := d.GetSpec().GetMonitor().GetDrift().GetThresholds(); pb != nil {
			if thresholds, err = monitor.ThresholdsFromProto(pb); err != nil {
				return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
			}
		}
	}
	until := time.Now()
	if m.GetUntil() != nil {
		until = m.GetUntil().AsTime()
	}
	since := until.Add(-defaultDriftRange)
	if m.GetSince() != nil {
		since = m.GetSince().AsTime()
	}
	q, err := h.s.queryFleet(ctx, &droverv1.QueryTelemetryRequest{
		Model: v.GetModel(), Version: strconv.FormatUint(v.GetVersion(), 10), Deployment: m.GetDeployment(),
		Since: timestamppb.New(since), Until: timestamppb.New(until), GroupBy: m.GetGroupBy(),
	})
	if err != nil {
		return nil, err
	}
	out := &droverv1.GetDriftResponse{
		Model: v.GetModel(), Version: v.GetVersion(), ReferenceSource: v.GetReferenceSource(),
		Thresholds: thresholds.ToProto(), Answered: q.GetAnswered(), Missing: q.GetMissing(),
	}
	for _, g := range q.GetGroups() {
		cur, err := sketch.ProfileFromProto(g.GetProfile())
		if err != nil {
			return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, fmt.Sprintf("cohort %q: %v", g.GetKey(), err), "")
		}
		r, err := monitor.Evaluate(refProfile, cur, thresholds)
		if err != nil {
			return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
		}
		c := r.ToProto(g.GetKey())
		c.Requests, c.Windows, c.Nodes = cur.Requests, g.GetWindows(), g.GetNodes()
		out.Cohorts = append(out.Cohorts, c)
	}
	return connect.NewResponse(out), nil
}
