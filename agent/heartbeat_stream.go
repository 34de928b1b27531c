package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"connectrpc.com/connect"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// heartbeatStream sends a session's heartbeats to one server as messages
// on one long-lived HeartbeatStream, opened with the first heartbeat.
// Each heartbeat on a call of its own opens and closes a QUIC stream, and
// the leader then spends more on the stream than on the heartbeat (see
// docs/performance.md). The answers are those of unary Heartbeat calls.
//
// A failed heartbeat closes the stream, and the session's next attempt
// (after its usual failover and backoff) opens a new one. A server that
// does not know HeartbeatStream (an older version) gets unary Heartbeat
// calls instead, until the session reconnects.
//
// It is used by the session's goroutine only.
type heartbeatStream struct {
	ctx    context.Context // the serve loop's: no stream outlives it
	client droverv1connect.AgentServiceClient
	log    *slog.Logger

	stream *connect.BidiStreamForClient[droverv1.HeartbeatRequest, droverv1.HeartbeatResponse]
	cancel context.CancelFunc // ends stream
	unary  bool               // the server does not implement HeartbeatStream
}

func newHeartbeatStream(ctx context.Context, c droverv1connect.AgentServiceClient, log *slog.Logger) *heartbeatStream {
	return &heartbeatStream{ctx: ctx, client: c, log: log}
}

// beat sends one heartbeat and returns its answer. ctx bounds this
// heartbeat only: when it ends first the stream is given up.
func (h *heartbeatStream) beat(ctx context.Context, req *droverv1.HeartbeatRequest) (*droverv1.HeartbeatResponse, error) {
	if h.unary {
		resp, err := h.client.Heartbeat(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
	reopened := h.stream == nil
	if reopened {
		sctx, cancel := context.WithCancel(h.ctx)
		h.stream, h.cancel = h.client.HeartbeatStream(sctx), cancel
	}
	stop := context.AfterFunc(ctx, h.cancel)
	m, err := h.exchange(req)
	if !stop() {
		// ctx ended while the heartbeat was in flight and cancelled the
		// stream; what Receive said is only the cancellation.
		h.close()
		if err == nil {
			return m, nil
		}
		code := connect.CodeCanceled
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			code = connect.CodeDeadlineExceeded
		}
		return nil, connect.NewError(code, fmt.Errorf("no answer on the heartbeat stream: %w", ctx.Err()))
	}
	if err == nil {
		return m, nil
	}
	h.close()
	if !reopened && connect.CodeOf(err) == connect.CodeUnavailable {
		// The stream outlived what it was routed to: leadership moved
		// (the old leader answers NO_LEADER, and a follower forwarded
		// the stream before the change) or the connection was reset. A
		// unary heartbeat would have been routed afresh, so this one is,
		// on a new stream, once.
		h.log.Debug("heartbeat stream ended; opening a new one", "err", err)
		return h.beat(ctx, req)
	}
	if connect.CodeOf(err) == connect.CodeUnimplemented {
		h.log.Info("the server takes no heartbeat stream (an older version); sending each heartbeat as a call of its own", "err", err)
		h.unary = true
		return h.beat(ctx, req)
	}
	return nil, err
}

// exchange sends req on the stream and reads its answer.
func (h *heartbeatStream) exchange(req *droverv1.HeartbeatRequest) (*droverv1.HeartbeatResponse, error) {
	if err := h.stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			// The server ended the stream; Receive says why.
			if _, err = h.stream.Receive(); err == nil || errors.Is(err, io.EOF) {
				err = errors.New("the server ended the heartbeat stream")
			}
		}
		return nil, err
	}
	m, err := h.stream.Receive()
	if errors.Is(err, io.EOF) {
		return nil, errors.New("the server ended the heartbeat stream")
	}
	return m, err
}

// close ends the stream, if one is open; the next heartbeat opens another.
func (h *heartbeatStream) close() {
	if h.stream == nil {
		return
	}
	h.cancel()
	_ = h.stream.CloseRequest()
	_ = h.stream.CloseResponse()
	h.stream, h.cancel = nil, nil
}
