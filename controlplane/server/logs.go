package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Log reading (`drover logs`): an operator's ReadLogs and the node's
// agent meet on the leader, where every ReadLogs, WatchLogRequests and
// SendLogs call is forwarded. The agent long-polls WatchLogRequests on
// its session, so no server ever dials an agent (edge nodes are often
// behind NAT); it answers a request by streaming SendLogs back, and the
// leader copies each piece to the operator. Nothing of it touches Raft:
// a change of leader ends the calls, and the operator asks again.
const (
	// logAnswerTimeout bounds how long ReadLogs waits for the agent to
	// take the request and answer it.
	logAnswerTimeout = 15 * time.Second
	// logWatchWait is how long a WatchLogRequests call waits for a
	// request before it answers none, so the agent's call never meets a
	// proxy's idle limit nor the agent's bound on one call.
	logWatchWait = 20 * time.Second
)

// logHub holds the log requests waiting for their agents and the pieces
// on their way to operators. Its methods are safe for concurrent use.
type logHub struct {
	mu      sync.Mutex               // guards the fields below
	pending map[string][]*logRequest // by node id, not yet handed to the agent
	byID    map[string]*logRequest   // every open request
	wake    map[string]chan struct{} // by node id: closed when a request arrives
}

// logRequest is one ReadLogs call waiting for or reading from its agent.
type logRequest struct {
	node string
	req  *droverv1.LogRequest
	// first carries the agent's first message's error ("" when it
	// answers); it is buffered so the agent never waits on it.
	first chan string
	// data carries the pieces; ReadLogs is its only reader.
	data chan *droverv1.LogData
	// done is closed when the operator has gone.
	done chan struct{}

	attached bool // a SendLogs call took it; guarded by logHub.mu
}

func newLogHub() *logHub {
	return &logHub{
		pending: map[string][]*logRequest{},
		byID:    map[string]*logRequest{},
		wake:    map[string]chan struct{}{},
	}
}

// open records a request for node and wakes its agent's watch.
func (h *logHub) open(node string, r *droverv1.LogRequest) *logRequest {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	r.Id = hex.EncodeToString(b)
	lr := &logRequest{node: node, req: r, first: make(chan string, 1), data: make(chan *droverv1.LogData, 16), done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byID[r.GetId()] = lr
	h.pending[node] = append(h.pending[node], lr)
	if w := h.wake[node]; w != nil {
		close(w)
		delete(h.wake, node)
	}
	return lr
}

// close forgets lr and tells its SendLogs call, if any, to end.
func (h *logHub) close(lr *logRequest) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.byID[lr.req.GetId()]; !ok {
		return
	}
	delete(h.byID, lr.req.GetId())
	rest := h.pending[lr.node][:0]
	for _, p := range h.pending[lr.node] {
		if p != lr {
			rest = append(rest, p)
		}
	}
	if len(rest) == 0 {
		delete(h.pending, lr.node)
	} else {
		h.pending[lr.node] = rest
	}
	close(lr.done)
}

// take returns node's waiting requests, blocking until there is one or
// ctx ends (then it returns none).
func (h *logHub) take(ctx context.Context, node string) []*droverv1.LogRequest {
	for {
		h.mu.Lock()
		if ps := h.pending[node]; len(ps) > 0 {
			delete(h.pending, node)
			h.mu.Unlock()
			out := make([]*droverv1.LogRequest, len(ps))
			for i, p := range ps {
				out[i] = p.req
			}
			return out
		}
		w := h.wake[node]
		if w == nil {
			w = make(chan struct{})
			h.wake[node] = w
		}
		h.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return nil
		}
	}
}

// attach hands request id to the SendLogs call of node; only the node
// it was asked of may answer it, once.
func (h *logHub) attach(node, id string) (*logRequest, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	lr := h.byID[id]
	switch {
	case lr == nil || lr.node != node:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no open log request %q for this node: the operator has gone", id))
	case lr.attached:
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("log request %q is answered already", id))
	}
	lr.attached = true
	return lr, nil
}

// ReadLogs asks the node's agent for the deployment's logs and streams
// what it sends until it is done, or, with follow, until the caller goes.
func (h *nodeHandler) ReadLogs(ctx context.Context, req *connect.Request[droverv1.ReadLogsRequest], out *connect.ServerStream[droverv1.ReadLogsResponse]) error {
	n, err := h.s.findNode(req.Msg.GetNode())
	if connect.CodeOf(err) == connect.CodeNotFound {
		// Whether a node exists is itself something to read: a token
		// scoped to sites learns it only of nodes it could read, and a
		// node of no site is none of them.
		if err := h.s.mayReadNode(ctx, droverv1connect.NodeServiceReadLogsProcedure, &droverv1.Node{Id: req.Msg.GetNode()}); err != nil {
			return err
		}
		return apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("node %q not found", req.Msg.GetNode()), "\"drover node ls\" lists the nodes")
	}
	if err != nil {
		return err
	}
	if err := h.s.mayReadNode(ctx, droverv1connect.NodeServiceReadLogsProcedure, n); err != nil {
		return err
	}
	dep := req.Msg.GetDeployment()
	if dep == "" {
		return apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			"no deployment given", "name the deployment whose logs to read; \"drover deploy ls\" lists them")
	}
	if _, err := h.s.state.Deployment(dep); err != nil {
		return apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("deployment %q not found", dep), "\"drover deploy ls\" lists them")
	}
	if n.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY {
		return apiErr(connect.CodeFailedPrecondition, droverv1.ErrorReason_ERROR_REASON_UNSPECIFIED,
			fmt.Sprintf("node %s (%s) is %s: its logs stay on the node and only its agent can send them", n.GetName(), n.GetId(), nodeStatusWord(n.GetStatus())),
			"try again once the node is back (\"drover node ls\" shows its status)")
	}
	lr := h.s.logReqs.open(n.GetId(), &droverv1.LogRequest{Deployment: dep, TailLines: req.Msg.GetTailLines(), Follow: req.Msg.GetFollow()})
	defer h.s.logReqs.close(lr)

	timer := time.NewTimer(logAnswerTimeout)
	defer timer.Stop()
	select {
	case msg := <-lr.first:
		if msg != "" {
			return apiErr(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
				fmt.Sprintf("node %s: %s", n.GetName(), msg), "\"drover deploy show "+dep+"\" lists the nodes it runs on")
		}
	case <-timer.C:
		return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_TIMEOUT,
			fmt.Sprintf("node %s did not answer the request for its logs within %v", n.GetName(), logAnswerTimeout),
			"its agent may be restarting or cut off; try again")
	case <-ctx.Done():
		return connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	for {
		select {
		case d, ok := <-lr.data:
			if !ok {
				return nil
			}
			if err := out.Send(&droverv1.ReadLogsResponse{Data: d}); err != nil {
				return err
			}
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// nodeStatusWord is how an error names a node's status.
func nodeStatusWord(s droverv1.NodeStatus) string {
	switch s {
	case droverv1.NodeStatus_NODE_STATUS_DOWN:
		return "down (no heartbeat within its TTL)"
	case droverv1.NodeStatus_NODE_STATUS_LEFT:
		return "gone (it left the cluster)"
	}
	return fmt.Sprintf("not ready (%s)", s)
}

// WatchLogRequests answers the calling node's waiting log requests,
// blocking until there is one or a while has passed.
func (h *agentHandler) WatchLogRequests(ctx context.Context, _ *connect.Request[droverv1.WatchLogRequestsRequest]) (*connect.Response[droverv1.WatchLogRequestsResponse], error) {
	node := agentNodeFrom(ctx)
	wctx, cancel := h.s.waitCtx(ctx, logWatchWait)
	defer cancel()
	reqs := h.s.logReqs.take(wctx, node.GetId())
	if len(reqs) == 0 && ctx.Err() != nil {
		return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	return connect.NewResponse(&droverv1.WatchLogRequestsResponse{Requests: reqs}), nil
}

// SendLogs copies one request's pieces from the agent to the waiting
// ReadLogs call; it ends the call (Canceled) once the operator has gone,
// which is what stops the agent following.
func (h *agentHandler) SendLogs(ctx context.Context, in *connect.ClientStream[droverv1.SendLogsRequest]) (*connect.Response[droverv1.SendLogsResponse], error) {
	node := agentNodeFrom(ctx)
	if !in.Receive() {
		if err := in.Err(); err != nil {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("empty SendLogs call: the first message names the request"))
	}
	lr, err := h.s.logReqs.attach(node.GetId(), in.Msg().GetRequestId())
	if err != nil {
		return nil, err
	}
	lr.first <- in.Msg().GetError()
	if in.Msg().GetError() != "" {
		return connect.NewResponse(&droverv1.SendLogsResponse{}), nil
	}
	gone := connect.NewError(connect.CodeCanceled, fmt.Errorf("the reader of log request %s has gone", lr.req.GetId()))
	if d := in.Msg().GetData(); len(d.GetData()) > 0 {
		select {
		case lr.data <- d:
		case <-lr.done:
			return nil, gone
		}
	}
	// Receive blocks on the agent, so a goroutine reads while this one
	// watches for the operator leaving; ending the call on that unblocks
	// the reader.
	recv := make(chan *droverv1.LogData)
	errc := make(chan error, 1)
	// The goroutine ends with the call: once this handler returns, the
	// request body is closed and Receive fails.
	go func() {
		defer close(recv)
		for in.Receive() {
			select {
			case recv <- in.Msg().GetData():
			case <-lr.done:
				return
			case <-ctx.Done():
				return
			}
		}
		errc <- in.Err()
	}()
	for {
		select {
		case d, ok := <-recv:
			if !ok {
				select {
				case err := <-errc:
					if err != nil {
						return nil, err
					}
					// The agent is done: no more pieces.
					close(lr.data)
					return connect.NewResponse(&droverv1.SendLogsResponse{}), nil
				default:
					return nil, gone
				}
			}
			if len(d.GetData()) == 0 {
				continue
			}
			select {
			case lr.data <- d:
			case <-lr.done:
				return nil, gone
			}
		case <-lr.done:
			return nil, gone
		case <-ctx.Done():
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// mayReadNode checks node:read on node n for a call whose interceptor
// could not name it (a streaming call), recording a refusal as the
// interceptor does.
func (s *Server) mayReadNode(ctx context.Context, proc string, n *droverv1.Node) error {
	c := callerFrom(ctx)
	if c.allows(droverv1.ACLResource_ACL_RESOURCE_NODE, droverv1.ACLAccess_ACL_ACCESS_READ, nodeObject(n)) {
		return nil
	}
	if c == nil {
		// Unreachable: the interceptor admits only operator tokens.
		return apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs a token", "pass --token or set DROVER_TOKEN")
	}
	capability := acl.Capability{Auth: acl.AuthToken, Resource: droverv1.ACLResource_ACL_RESOURCE_NODE, Access: droverv1.ACLAccess_ACL_ACCESS_READ}
	ref := acl.Ref{Node: n.GetId()}
	err := permissionDenied(c, capability, ref)
	s.denials.add(s.denial(c, proc, capability, ref, err))
	return err
}
