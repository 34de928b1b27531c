package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/fsm"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Blocking query limits.
const (
	defaultMaxWait = 5 * time.Minute
	maxMaxWait     = 10 * time.Minute
)

// commandMeta stamps a command with the proposer's clock and the caller,
// so applying it is deterministic everywhere.
func commandMeta(ctx context.Context) *droverv1.CommandMeta {
	actor, name := actorFrom(ctx)
	return &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: actor, ActorName: name}
}

// apply proposes a command to Raft and waits until it is committed and
// applied on this server. The returned result holds the state change's
// value; a refusal by the state machine comes back as an error.
func (s *Server) apply(ctx context.Context, t droverv1.CommandType, msg proto.Message) (*fsm.ApplyResult, error) {
	b, err := fsm.Encode(t, msg)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	if !s.IsLeader() {
		return nil, s.noLeaderError("this server is not the leader")
	}
	timeout := time.Duration(s.cfg.ApplyTimeout)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	start := time.Now()
	future := s.raft.Apply(b, timeout)
	err = future.Error()
	s.metrics.applyLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, s.raftError(err)
	}
	res, ok := future.Response().(*fsm.ApplyResult)
	if !ok {
		return nil, fmt.Errorf("apply: unexpected state machine response %T", future.Response())
	}
	if res.Err != nil {
		return res, res.Err
	}
	return res, nil
}

// raftError turns a Raft failure into an API error that says whether the
// write may have happened.
func (s *Server) raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return s.noLeaderError("this server lost leadership before the write was proposed")
	case errors.Is(err, raft.ErrLeadershipLost):
		return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"leadership lost while the write was being committed: it may or may not have been applied",
			"read the object back before retrying")
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return apiErr(connect.CodeDeadlineExceeded, droverv1.ErrorReason_ERROR_REASON_TIMEOUT,
			"timed out waiting for the write to be committed; it was not proposed",
			"the cluster may be overloaded or lack a quorum; check \"drover status\"")
	case errors.Is(err, raft.ErrRaftShutdown):
		return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"this server is shutting down", "retry against another server")
	}
	return apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, "raft: "+err.Error(), "")
}

// joinTokenHints are the hints for each join token refusal, written for
// the person starting the agent.
var joinTokenHints = map[droverv1.ErrorReason]string{
	droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID: "pass the whole token string `drover token create` printed; " +
		"if it is lost, create a new token with `drover token create`",
	droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED: "the token outlived its --ttl; create a new token with `drover token create` " +
		"(with a longer --ttl if machines take a while to come up)",
	droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED: "this token was revoked by an operator; " +
		"ask them for a new one (`drover token create`)",
	droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP: "the token's --max-uses are spent; " +
		"create a new token with `drover token create` (with a larger --max-uses for more machines)",
}

// nodeRevokedHint is the hint for a certificate of a revoked node or one
// that left the fleet.
const nodeRevokedHint = "this node was revoked or has left the fleet; to bring the machine back, " +
	"remove the agent's identity file and enroll it again with a new join token (`drover token create`)"

// toAPIError maps state and server errors to Connect errors with reasons.
// Errors that already are Connect errors pass through.
func toAPIError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	reason := state.Reason(err)
	code := connect.CodeInternal
	hint := ""
	switch reason {
	case droverv1.ErrorReason_ERROR_REASON_NOT_FOUND:
		code = connect.CodeNotFound
	case droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS:
		code = connect.CodeAlreadyExists
	case droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT:
		code = connect.CodeInvalidArgument
	case droverv1.ErrorReason_ERROR_REASON_IN_USE:
		code = connect.CodeFailedPrecondition
	case droverv1.ErrorReason_ERROR_REASON_CONFLICT:
		code = connect.CodeAborted
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
		droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED,
		droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED,
		droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP:
		// A join token the state refused: each refusal has its reason
		// and its hint; the message never holds a secret.
		code, hint = connect.CodeUnauthenticated, joinTokenHints[reason]
	case droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED:
		// The caller proved who it is; that node is no longer welcome.
		code, hint = connect.CodePermissionDenied, nodeRevokedHint
	case droverv1.ErrorReason_ERROR_REASON_ACL_ALREADY_BOOTSTRAPPED:
		code = connect.CodeFailedPrecondition
		hint = "the management token was printed by the first bootstrap; if it is lost, restore access with a new cluster"
	default:
		reason = droverv1.ErrorReason_ERROR_REASON_INTERNAL
	}
	return apiErr(code, reason, err.Error(), hint)
}

// readyForRead makes a read safe to answer. A stale read is always
// allowed. A consistent read needs this server to be the leader, to have
// applied everything earlier leaders committed, and to still hold a
// quorum's confidence (VerifyLeader), so it never returns a value older
// than an acknowledged write.
func (s *Server) readyForRead(ctx context.Context, h http.Header) error {
	if h.Get(ConsistencyHeader) == "stale" {
		return nil
	}
	s.mu.Lock()
	ready := s.readyForReads
	s.mu.Unlock()
	if ready == nil {
		return s.noLeaderError("this server is not the leader")
	}
	select {
	case <-ready:
	case <-ctx.Done():
		return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
			"the new leader is still catching up", "retry shortly")
	}
	if err := s.raft.VerifyLeader().Error(); err != nil {
		return s.raftError(err)
	}
	return nil
}

// query runs a read with the caller's consistency and blocking options.
func (s *Server) query(ctx context.Context, h http.Header, opts *droverv1.QueryOptions) (*droverv1.QueryMeta, error) {
	if minIndex := opts.GetMinIndex(); minIndex > 0 {
		wait := defaultMaxWait
		if d := opts.GetMaxWait(); d != nil {
			wait = min(d.AsDuration(), maxMaxWait)
		}
		wctx, cancel := s.waitCtx(ctx, wait)
		_, err := s.state.WaitForIndex(wctx, minIndex)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
	if err := s.readyForRead(ctx, h); err != nil {
		return nil, err
	}
	leader, _ := s.leader()
	return &droverv1.QueryMeta{Index: s.state.Index(), KnownLeader: leader != "", ServedBy: s.cfg.Name}, nil
}

// caughtUp reports whether this server has applied the log it held when
// it started, or as much of it as the cluster committed (an uncommitted
// tail may be replaced by the leader). Until then a restarted server's
// state is older than what it served before it stopped: it answers "not
// ready" rather than, say, "ACLs are not bootstrapped". A commit index of
// 0 means it has not heard from a leader yet.
func (s *Server) caughtUp() bool {
	if s.replayTo == 0 {
		return true // a new server: nothing to replay
	}
	commit := s.raft.CommitIndex()
	return commit > 0 && s.raft.AppliedIndex() >= min(s.replayTo, commit)
}
