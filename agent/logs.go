package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/agent/reconcile"
	"github.com/droverhq/drover/agent/runtime"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Answering `drover logs`: the agent long-polls WatchLogRequests on its
// servers (which forward it to the leader, where operators' requests
// wait) and answers each request with a SendLogs stream of the serving
// instance's stdout and stderr. The agent only ever dials out, as for
// every other session call.
const (
	// logPieceMax bounds one SendLogs message's bytes.
	logPieceMax = 32 << 10
	// logKeepalive is how often a follow with nothing to say sends an
	// empty message: the server ends the call when the operator has gone,
	// and a send is how the agent learns it and stops following.
	logKeepalive = 2 * time.Second
)

// watchLogRequests answers operators' log requests until ctx ends. Each
// answer runs in a goroutine of its own, all of them ended and waited
// for before it returns.
func (sv *serving) watchLogRequests(ctx context.Context, p *puller) {
	var answers sync.WaitGroup
	defer answers.Wait()
	p.poll(ctx, "watch log requests", func(cctx context.Context, _ string, c droverv1connect.AgentServiceClient) error {
		resp, err := c.WatchLogRequests(cctx, connect.NewRequest(&droverv1.WatchLogRequestsRequest{}))
		if err != nil {
			return err
		}
		for _, req := range resp.Msg.GetRequests() {
			answers.Go(func() {
				if err := sv.answerLogs(ctx, c, req); err != nil && ctx.Err() == nil {
					sv.log.Debug("answering a log request ended", "deployment", req.GetDeployment(), "err", err)
				}
			})
		}
		return nil
	})
}

// answerLogs sends one request's logs: the last lines asked for of both
// streams and, with follow, what the instance prints after, until the
// server ends the call (the operator has gone), the instance is done,
// or ctx ends.
func (sv *serving) answerLogs(ctx context.Context, c droverv1connect.AgentServiceClient, req *droverv1.LogRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := c.SendLogs(ctx)
	first := &droverv1.SendLogsRequest{RequestId: req.GetId()}
	// The tail in bytes of each stream, from its last lines now.
	tails := map[runtime.Stream]int64{}
	for _, s := range []runtime.Stream{runtime.Stdout, runtime.Stderr} {
		var buf bytes.Buffer
		if err := sv.rec.Logs(ctx, req.GetDeployment(), string(s), 0, false, &buf); err != nil {
			if !errors.Is(err, reconcile.ErrNoLogs) {
				return err
			}
			first.Error = err.Error()
			break
		}
		tails[s] = lastLinesBytes(buf.Bytes(), int(req.GetTailLines()))
	}
	if err := stream.Send(first); err != nil {
		_, cerr := stream.CloseAndReceive()
		return errors.Join(err, cerr)
	}
	if first.Error != "" {
		_, err := stream.CloseAndReceive()
		return err
	}

	out := &logSender{stream: stream}
	var streams, keep sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []runtime.Stream{runtime.Stdout, runtime.Stderr} {
		streams.Go(func() {
			w := &logWriter{out: out, stream: string(s)}
			errs[i] = sv.rec.Logs(ctx, req.GetDeployment(), string(s), tails[s], req.GetFollow(), w)
			if errs[i] != nil {
				cancel() // the other stream stops too
			}
		})
	}
	kctx, stopKeepalive := context.WithCancel(ctx)
	if req.GetFollow() {
		keep.Go(func() {
			t := time.NewTicker(logKeepalive)
			defer t.Stop()
			for {
				select {
				case <-kctx.Done():
					return
				case <-t.C:
					if err := out.send(&droverv1.LogData{}); err != nil {
						cancel()
						return
					}
				}
			}
		})
	}
	streams.Wait()
	stopKeepalive()
	keep.Wait()
	_, err := stream.CloseAndReceive()
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(append(errs, err)...)
}

// logSender serializes sends on one SendLogs stream.
type logSender struct {
	mu     sync.Mutex
	stream *connect.ClientStreamForClient[droverv1.SendLogsRequest, droverv1.SendLogsResponse]
}

func (s *logSender) send(d *droverv1.LogData) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stream.Send(&droverv1.SendLogsRequest{Data: d})
}

// logWriter turns one stream's output into SendLogs messages.
type logWriter struct {
	out    *logSender
	stream string
}

func (w *logWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), logPieceMax)
		if err := w.out.send(&droverv1.LogData{Stream: w.stream, Data: bytes.Clone(p[:k])}); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

var _ io.Writer = (*logWriter)(nil)

// lastLinesBytes is how many bytes at the end of b its last n lines take
// (a final line without a newline counts as one); 0, meaning all, when
// n is 0 or b holds no more than n lines.
func lastLinesBytes(b []byte, n int) int64 {
	if n <= 0 {
		return 0
	}
	end := len(b)
	if end > 0 && b[end-1] == '\n' {
		end--
	}
	for i := end - 1; i >= 0; i-- {
		if b[i] == '\n' {
			n--
			if n == 0 {
				return int64(len(b) - i - 1)
			}
		}
	}
	return 0
}

// Logs gives the runtime instance's captured output to the reconciler,
// when its runtime keeps any.
func (i instanceAdapter) Logs(ctx context.Context, stream string, tailBytes int64, follow bool, w io.Writer) error {
	lr, ok := i.Instance.(runtime.LogReader)
	if !ok {
		return fmt.Errorf("its runtime keeps no output: %w", reconcile.ErrNoLogs)
	}
	return lr.Logs(ctx, runtime.Stream(stream), tailBytes, follow, w)
}

var _ reconcile.LogReader = instanceAdapter{}
