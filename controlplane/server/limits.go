package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/internal/tlsguard"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The listeners guarded by tlsguard, as named in logs and in
// drover_rejected_connections_total.
const (
	listenerRaft = "raft"
	listenerAPI  = "api"
)

const (
	// rejectLogInterval is how often at most a refused connection from
	// one host is logged: a host sending garbage as fast as it can costs
	// one line a minute, and the metric counts every one.
	rejectLogInterval = time.Minute
	// rejectLogHosts is how many hosts the log limiter remembers; beyond
	// that they share one allowance, so a flood from many addresses is
	// limited too.
	rejectLogHosts = 4096
)

// plaintextHTTPReply answers a plain HTTP request to the HTTPS port, as
// net/http would if it did the handshake itself.
var plaintextHTTPReply = []byte("HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")

// guardListener wraps ln so that only connections whose TLS handshake
// (with conf) completed within the configured timeout reach the server
// behind it, and one remote host can hold only a few handshakes open.
// Refused connections are counted by listener and reason and logged at
// most once a minute per host. The result owns ln.
func (s *Server) guardListener(name string, ln net.Listener, conf *tls.Config, plaintextReply []byte) (net.Listener, error) {
	counters := map[string]prometheusCounter{}
	for _, r := range tlsguard.Reasons {
		counters[r] = s.metrics.rejectedConns.WithLabelValues(name, r)
	}
	logger := s.logger.With("listener", name)
	g, err := tlsguard.NewListener(ln, tlsguard.Config{
		TLS:               conf,
		HandshakeTimeout:  time.Duration(s.cfg.TLSHandshakeTimeout),
		MaxPendingPerHost: s.cfg.MaxPendingHandshakesPerHost,
		PlaintextReply:    plaintextReply,
		Rejected: func(rj tlsguard.Rejection) {
			counters[rj.Reason].Inc()
			ok, suppressed := s.rejectLog.Allow(name + " " + rj.Host)
			if !ok {
				return
			}
			args := []any{"remote", rj.Remote, "reason", rj.Reason}
			if rj.Err != nil {
				args = append(args, "err", rj.Err)
			}
			if suppressed > 0 {
				args = append(args, "suppressed", suppressed)
			}
			logger.Warn("refused a connection before its TLS handshake completed "+
				"(logged at most once a minute per host; drover_rejected_connections_total counts all)", args...)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("guard %s listener: %w", name, err)
	}
	return g, nil
}

// prometheusCounter is the part of prometheus.Counter guardListener uses.
type prometheusCounter interface{ Inc() }

// uploadProcedures are the client-streaming calls (snapshot restore, and
// artifact uploads when they come). Their body is a stream of messages,
// each bounded by MaxRequestBytes, which their handler writes to disk as
// it arrives rather than holding in memory, so the body as a whole gets
// no limit here; an upload that needs one enforces its own (a declared
// size, a quota) in its handler. They are found in the schema, like
// reads and writes in classifyProcedures.
func uploadProcedures() map[string]bool {
	ups := make(map[string]bool)
	for path, m := range servedMethods() {
		if m.IsStreamingClient() {
			ups[path] = true
		}
	}
	return ups
}

// limitBodies bounds how much of a request body any handler, or the
// forwarder, can read: MaxRequestBytes for everything but uploads. A
// request that declares a longer body is refused before any of it is
// read (ResourceExhausted for an RPC, 413 otherwise); one that does not
// (chunked, HTTP/2 or HTTP/3 without a length) fails once it has sent
// MaxRequestBytes. It runs before authentication: refusing a huge body
// must not depend on reading it first.
func (s *Server) limitBodies(next http.Handler) http.Handler {
	limit := s.cfg.MaxRequestBytes
	uploads := uploadProcedures()
	procs := classifyProcedures()
	errWriter := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if uploads[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > limit {
			if _, rpc := procs[r.URL.Path]; rpc && errWriter.IsSupported(r) {
				_ = errWriter.Write(w, r, tooLargeError(r.ContentLength, limit))
				return
			}
			http.Error(w, fmt.Sprintf("request body of %d bytes is larger than the server's limit of %d bytes", r.ContentLength, limit),
				http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}

// tooLargeError refuses a request body longer than the limit; size is
// -1 when the client did not declare it.
func tooLargeError(size, limit int64) *connect.Error {
	what := "request body"
	if size >= 0 {
		what = fmt.Sprintf("request body of %d bytes", size)
	}
	return apiErr(connect.CodeResourceExhausted, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
		fmt.Sprintf("%s is larger than the server's limit of %d bytes", what, limit),
		"send less in one call; an operator can raise max_request_bytes in the server config")
}
