package server

import (
	"context"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Limits on the refusals the audit log records. Every refusal is logged
// and counted; the replicated log takes a bounded number, so that a client
// hammering a call it may not make cannot grow the Raft log without bound.
const (
	// denialFlushInterval is how often a server hands its refusals to
	// the log, batched into one command.
	denialFlushInterval = time.Second
	// denialsPerActor is how many refusals of one token a server records
	// one by one per interval; the rest are counted in the last one.
	denialsPerActor = 5
	// maxPendingDenials bounds a batch, as the state machine does one
	// command's; beyond it refusals are only counted in
	// drover_acl_denials_unrecorded_total.
	maxPendingDenials = state.MaxDenialsPerCommand
)

// denialRecorder batches the write calls a server refused and records
// them in the audit log: through Raft on the leader, by handing them to
// the leader (RecordDenials) on a follower. Recording is best effort; a
// batch that finds no leader is dropped and counted.
type denialRecorder struct {
	s *Server

	mu      sync.Mutex // guards the fields below
	pending []*droverv1.AccessDenial
	last    map[string]*droverv1.AccessDenial // each actor's latest pending refusal
	counts  map[string]int                    // pending refusals per actor
}

func newDenialRecorder(s *Server) *denialRecorder {
	return &denialRecorder{s: s, last: make(map[string]*droverv1.AccessDenial), counts: make(map[string]int)}
}

// add queues a refusal; it never blocks the call being refused.
func (d *denialRecorder) add(den *droverv1.AccessDenial) {
	den.Time = timestamppb.Now()
	d.s.logger.Info("refused a write call", "token", den.GetTokenName(), "accessor", den.GetAccessorId(),
		"procedure", den.GetProcedure(), "needs", den.GetCapability(), "target", den.GetTarget())
	d.s.metrics.aclDenials.Inc()
	actor := den.GetAccessorId()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.counts[actor] >= denialsPerActor:
		d.last[actor].Suppressed++
	case len(d.pending) >= maxPendingDenials:
		d.s.metrics.aclDenialsDropped.Inc()
		return
	default:
		d.pending = append(d.pending, den)
		d.last[actor] = den
	}
	d.counts[actor]++
}

// take empties the queue.
func (d *denialRecorder) take() []*droverv1.AccessDenial {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.pending
	d.pending = nil
	clear(d.last)
	clear(d.counts)
	return out
}

// run records the queued refusals every interval until ctx ends.
func (d *denialRecorder) run(ctx context.Context) {
	t := time.NewTicker(denialFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if batch := d.take(); len(batch) > 0 {
				d.record(ctx, batch)
			}
		}
	}
}

func (d *denialRecorder) record(ctx context.Context, batch []*droverv1.AccessDenial) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := d.s.recordDenials(ctx, batch)
	if err != nil {
		d.s.metrics.aclDenialsDropped.Add(float64(len(batch)))
		d.s.logger.Debug("could not record refused calls in the audit log", "count", len(batch), "err", err)
	}
}

// recordDenials writes a batch of refusals to the audit log, from the
// leader or through it.
func (s *Server) recordDenials(ctx context.Context, batch []*droverv1.AccessDenial) error {
	if s.IsLeader() {
		_, err := s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_RECORD_DENIALS, &droverv1.RecordDenialsCommand{
			Meta:    &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: "server/" + s.cfg.Name},
			Denials: batch,
		})
		return err
	}
	name, leader := s.leader()
	if name == "" || leader.APIAddr == "" {
		return s.noLeaderError("")
	}
	_, err := s.forwarder.clusterClient(leader.APIAddr).RecordDenials(ctx,
		connect.NewRequest(&droverv1.RecordDenialsRequest{Denials: batch}))
	return err
}

// RecordDenials records refusals another server made.
func (h *clusterHandler) RecordDenials(ctx context.Context, req *connect.Request[droverv1.RecordDenialsRequest]) (*connect.Response[droverv1.RecordDenialsResponse], error) {
	if len(req.Msg.GetDenials()) == 0 {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, "no refusals to record", "")
	}
	if len(req.Msg.GetDenials()) > maxPendingDenials {
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"too many refusals in one batch", "")
	}
	peer := serverPeerFrom(ctx).Subject.CommonName
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_RECORD_DENIALS, &droverv1.RecordDenialsCommand{
		Meta:    &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: "server/" + peer},
		Denials: req.Msg.GetDenials(),
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	return connect.NewResponse(&droverv1.RecordDenialsResponse{Meta: &droverv1.WriteMeta{Index: res.Index}}), nil
}
