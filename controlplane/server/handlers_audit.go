package server

import (
	"context"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// defaultAuditLimit is how many events a listing returns by default.
const defaultAuditLimit = 100

// auditHandler serves the replicated audit log.
type auditHandler struct{ s *Server }

var _ droverv1connect.AuditServiceHandler = (*auditHandler)(nil)

func (h *auditHandler) ListEvents(ctx context.Context, req *connect.Request[droverv1.ListAuditEventsRequest]) (*connect.Response[droverv1.ListAuditEventsResponse], error) {
	meta, err := h.s.query(ctx, req.Header(), req.Msg.GetOptions())
	if err != nil {
		return nil, err
	}
	limit := int(req.Msg.GetLimit())
	if limit == 0 {
		limit = defaultAuditLimit
	}
	events := h.s.state.Audit(req.Msg.GetAfterIndex(), limit, req.Msg.GetTargetPrefix(), req.Msg.GetActor())
	return connect.NewResponse(&droverv1.ListAuditEventsResponse{Events: events, Meta: meta}), nil
}
