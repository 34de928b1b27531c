package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/internal/quicflow"
	"github.com/droverhq/drover/internal/udpbuf"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// HTTP headers of the API.
const (
	// ConsistencyHeader set to "stale" lets any server answer a read from
	// its local state, which may lag the leader slightly.
	ConsistencyHeader = "Drover-Consistency"
	// forwardedHeader marks a request a follower forwarded to the leader,
	// so it is never forwarded twice.
	forwardedHeader = "Drover-Forwarded-By"
)

// Health endpoint paths; they need TLS but no token, so that load
// balancers and supervisors can use them: they answer "ok" or why not,
// and reveal nothing else.
const (
	LivePath  = "/v1/health/live"
	ReadyPath = "/v1/health/ready"
)

// MetricsPath serves Prometheus metrics to a bearer token with
// telemetry read: they name nodes, sites and servers.
const MetricsPath = "/metrics"

const (
	// compressMinBytes is the smallest response worth compressing.
	compressMinBytes = 1024
	// apiIdleTimeout closes an HTTP/3 connection that has been silent
	// this long.
	apiIdleTimeout = 5 * time.Minute
)

// setupAPI listens on the API address: HTTPS on TCP and HTTP/3 on UDP,
// same port, same handlers. There is no plaintext listener.
func (s *Server) setupAPI() error {
	ln, err := net.Listen("tcp", s.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("listen for api on %s: %w", s.cfg.APIAddr, err)
	}
	s.cfg.APIAddr = resolvedAddr(s.cfg.APIAddr, ln.Addr())
	pc, err := net.ListenPacket("udp", s.cfg.APIAddr)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("listen for http/3 on udp %s: %w", s.cfg.APIAddr, err)
	}
	if uc, ok := pc.(*net.UDPConn); ok {
		if sizes, err := udpbuf.Raise(uc); err == nil {
			if w := udpbuf.Warning(sizes); w != "" {
				s.logger.Warn(w)
			}
		}
	}
	tlsConf := pki.ServerTLSConfig(s.ca.Pool(), s.serverCert, tls.VerifyClientCertIfGiven)
	tlsConf.NextProtos = []string{"h2", "http/1.1"}
	// A copy: http.Server may still adjust its own TLSConfig when Serve
	// starts, while the listener already runs handshakes with this one.
	guarded, err := s.guardListener(listenerAPI, s.cfg.wrapListener(ln), tlsConf.Clone(), plaintextHTTPReply)
	if err != nil {
		_ = ln.Close()
		_ = pc.Close()
		return err
	}
	s.apiListener, s.apiPacket = guarded, pc

	s.forwarder = newForwarder(s)
	interceptors := connect.WithHandlerOptions(
		connect.WithInterceptors(s.metrics.interceptor(), &authInterceptor{s: s}),
		// Most answers are tens of bytes (a heartbeat's is about 30):
		// compressing them costs the leader more CPU than the whole call
		// otherwise would, and saves nothing on the wire.
		connect.WithCompressMinBytes(compressMinBytes),
		// Bounds each message after decompression too, which the body
		// limit in limitBodies cannot see: a small gzip bomb is refused
		// once it has inflated to the limit.
		connect.WithReadMaxBytes(int(s.cfg.MaxRequestBytes)),
	)
	mux := http.NewServeMux()
	mux.Handle(droverv1connect.NewModelServiceHandler(&modelHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewACLServiceHandler(&aclHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewAuditServiceHandler(&auditHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewClusterServiceHandler(&clusterHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewTokenServiceHandler(&tokenHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewNodeServiceHandler(&nodeHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewKeyServiceHandler(&keyHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewDeploymentServiceHandler(&deploymentHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewRolloutServiceHandler(&rolloutHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewDriftServiceHandler(&driftHandler{s: s}, interceptors))
	// Agents read versions' bytes through the operators' code paths, and
	// share their cache of decoded chunk sets.
	artifacts := &artifactHandler{s: s}
	mux.Handle(droverv1connect.NewAgentServiceHandler(&agentHandler{s: s, artifacts: artifacts}, interceptors))
	mux.Handle(droverv1connect.NewArtifactServiceHandler(artifacts, interceptors))
	mux.Handle(droverv1connect.NewChunkServiceHandler(&chunkHandler{s: s}, interceptors))
	mux.Handle(droverv1connect.NewTelemetryServiceHandler(&telemetryHandler{s: s}, interceptors))
	mux.HandleFunc(ChunkStreamPath, artifacts.serveChunkStream)
	mux.Handle(MetricsPath, s.requireTelemetryRead(promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})))
	mux.HandleFunc(LivePath, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc(ReadyPath, func(w http.ResponseWriter, _ *http.Request) {
		if leader, _ := s.leader(); leader == "" {
			http.Error(w, "no known leader", http.StatusServiceUnavailable)
			return
		}
		if !s.caughtUp() {
			http.Error(w, fmt.Sprintf("replaying the log: applied %d of %d", s.raft.AppliedIndex(), max(s.raft.CommitIndex(), s.replayTo)), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	handler := s.limitBodies(s.identify(s.forwarder.wrap(uncompressedChunks(mux))))

	s.httpServer = &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		// The guarded listener does the handshakes and reports the failed
		// ones; what net/http still logs is the client's problem too.
		ErrorLog: logging.StdLogAdapter(s.logger.With("component", "https"), slog.LevelDebug),
	}
	s.h3Server = &http3.Server{
		Handler:   handler,
		TLSConfig: http3.ConfigureTLSConfig(tlsConf.Clone()),
		// Agents hold one connection each for as long as they run and
		// send keep-alives; the idle timeout only reaps the dead. Without
		// it quic-go's 30s would drop the connection of every agent whose
		// heartbeat interval (a third of a TTL that grows with the fleet)
		// is longer, and each heartbeat would pay for a new handshake.
		//
		// quic-go aborts a handshake idle for HandshakeIdleTimeout or
		// unfinished after twice that: half the TLS timeout bounds a QUIC
		// handshake as tlsguard bounds one over TCP.
		// The agent's windows pace its pulls; the server's pace what it
		// receives (a push's uploads) over the same long links.
		QUICConfig: quicflow.Apply(&quic.Config{
			MaxIdleTimeout:       apiIdleTimeout,
			HandshakeIdleTimeout: time.Duration(s.cfg.TLSHandshakeTimeout) / 2,
		}),
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		// The listener hands over *tls.Conn with the handshake done, so
		// Serve (not ServeTLS); TLSConfig still offers h2 to them.
		if err := s.httpServer.Serve(guarded); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Debug("https server stopped", "err", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.h3Server.Serve(pc); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Debug("http/3 server stopped", "err", err)
		}
	}()
	return nil
}

// leader returns the current leader's name and gossip record.
func (s *Server) leader() (string, serverMeta) {
	if s.raft == nil {
		return "", serverMeta{}
	}
	_, id := s.raft.LeaderWithID()
	if id == "" {
		return "", serverMeta{}
	}
	m, _ := s.serverByName(string(id))
	return string(id), m
}

// authInterceptor checks every call against the capability it declares
// (see authorize) on the server that runs its handler; forwarded calls
// were checked once more before they left the follower (see precheck).
type authInterceptor struct{ s *Server }

var _ connect.Interceptor = (*authInterceptor)(nil)

func (a *authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := a.s.authorize(ctx, req.Spec().Procedure, req.Header(), req.Any())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a *authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a *authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.s.authorize(ctx, conn.Spec().Procedure, conn.RequestHeader(), nil)
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// apiErr builds a Connect error with Drover's stable reason and a hint.
func apiErr(code connect.Code, reason droverv1.ErrorReason, msg, hint string) *connect.Error {
	e := connect.NewError(code, errors.New(msg))
	if d, err := connect.NewErrorDetail(&droverv1.ErrorDetail{Reason: reason, Hint: hint}); err == nil {
		e.AddDetail(d)
	}
	return e
}

// chunkProcedures answer with chunk bytes: model weights, which gzip
// cannot shrink.
var chunkProcedures = map[string]bool{
	droverv1connect.AgentServiceGetChunkProcedure:    true,
	droverv1connect.ArtifactServiceGetChunkProcedure: true,
	droverv1connect.ChunkServiceGetChunksProcedure:   true,
}

// uncompressedChunks keeps chunk answers uncompressed whatever the client
// accepts. Connect clients accept gzip by default, and gzip over chunk
// bytes saves nothing while costing the server and the agent more CPU
// than the rest of a pull together: it held pulls to a sixth of the
// link's speed. A compressed request is still read.
func uncompressedChunks(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if chunkProcedures[r.URL.Path] {
			r.Header.Del("Accept-Encoding")
			r.Header.Del("Connect-Accept-Encoding")
			r.Header.Del("Grpc-Accept-Encoding")
		}
		next.ServeHTTP(w, r)
	})
}
