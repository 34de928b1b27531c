package server

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"iter"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// procKind says where a procedure may be answered.
type procKind int

const (
	procWrite procKind = iota // only the leader
	procRead                  // the leader, or any server when stale is allowed
	procLocal                 // the server that receives it
)

// localProcedures are about the receiving server itself, so they are never
// forwarded.
var localProcedures = []string{
	droverv1connect.ClusterServiceGetStatusProcedure,
	droverv1connect.ClusterServiceGetServerInfoProcedure,
	droverv1connect.ClusterServiceLeaveProcedure,
	// Any server knows the CA and the servers; agents ask whichever
	// they reach first.
	droverv1connect.AgentServiceGetClusterInfoProcedure,
	// A push's chunks go into the store of the server that receives
	// them, and chunks are read from whichever server holds them; only
	// FinishPush, which writes the version, goes to the leader.
	droverv1connect.ArtifactServiceStartPushProcedure,
	droverv1connect.ArtifactServiceUploadChunksProcedure,
	droverv1connect.ArtifactServiceGetChunkProcedure,
	droverv1connect.AgentServiceGetChunkProcedure,
	droverv1connect.ChunkServiceMissingChunksProcedure,
	droverv1connect.ChunkServicePutChunksProcedure,
	droverv1connect.ChunkServiceGetChunksProcedure,
	// Telemetry never goes through the leader: each server stores what
	// it receives and answers queries by asking every server.
	droverv1connect.TelemetryServiceShipTelemetryProcedure,
	droverv1connect.TelemetryServiceQueryProcedure,
	droverv1connect.TelemetryServiceReplicateWindowsProcedure,
	droverv1connect.TelemetryServiceQueryLocalProcedure,
}

// peerDialTimeout bounds how long a server tries to connect to another
// server's API.
const peerDialTimeout = 5 * time.Second

// forwarder sends requests that need the leader to it, at the HTTP level,
// so every service and streaming call is forwarded the same way and the
// leader checks the caller's own token.
type forwarder struct {
	s         *Server
	procs     map[string]procKind
	transport *http.Transport
	errWriter *connect.ErrorWriter

	mu      sync.Mutex // guards proxies
	proxies map[string]*httputil.ReverseProxy
}

func newForwarder(s *Server) *forwarder {
	tlsConf := s.peerTLS.Clone()
	tlsConf.NextProtos = []string{"h2"}
	f := &forwarder{
		s:     s,
		procs: classifyProcedures(),
		transport: &http.Transport{
			TLSClientConfig: tlsConf,
			// A leader whose host vanished without a reset must not hold
			// forwarded calls until the client gives up.
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				ctx, cancel := context.WithTimeout(ctx, peerDialTimeout)
				defer cancel()
				return s.cfg.dial(ctx, network, addr)
			},
			TLSHandshakeTimeout: 5 * time.Second,
			ForceAttemptHTTP2:   true,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		},
		errWriter: connect.NewErrorWriter(),
		proxies:   make(map[string]*httputil.ReverseProxy),
	}
	return f
}

// classifyProcedures derives read/write from the schema: methods marked
// NO_SIDE_EFFECTS are reads. New methods are classified without code here.
func classifyProcedures() map[string]procKind {
	procs := make(map[string]procKind)
	for path, m := range servedMethods() {
		kind := procWrite
		if opts, ok := m.Options().(*descriptorpb.MethodOptions); ok &&
			opts.GetIdempotencyLevel() == descriptorpb.MethodOptions_NO_SIDE_EFFECTS {
			kind = procRead
		}
		procs[path] = kind
	}
	for _, p := range localProcedures {
		procs[p] = procLocal
	}
	for _, p := range leaderReads {
		procs[p] = procWrite
	}
	return procs
}

// leaderReads are reads only the leader can answer, whatever consistency
// the caller asked for: agents hand a node's logs to the leader, so no
// other server has them.
var leaderReads = []string{
	droverv1connect.NodeServiceReadLogsProcedure,
}

func (f *forwarder) close() { f.transport.CloseIdleConnections() }

// wrap returns next behind the forwarding decision.
func (f *forwarder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind, ok := f.procs[r.URL.Path]
		switch {
		case !ok, kind == procLocal, f.s.IsLeader():
			next.ServeHTTP(w, r)
			return
		case kind == procRead && r.Header.Get(ConsistencyHeader) == "stale":
			next.ServeHTTP(w, r)
			return
		}
		if by := r.Header.Get(forwardedHeader); by != "" {
			// Whoever forwarded this thought we led; leadership moved on.
			f.writeErr(w, r, f.s.noLeaderError(fmt.Sprintf("leadership changed while the request was forwarded by %s", by)))
			return
		}
		if err := f.s.precheck(r); err != nil {
			f.writeErr(w, r, err)
			return
		}
		name, leader := f.s.leader()
		if name == "" || leader.APIAddr == "" {
			f.writeErr(w, r, f.s.noLeaderError(""))
			return
		}
		f.proxy(name, leader.APIAddr).ServeHTTP(w, r)
	})
}

func (f *forwarder) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	_ = f.errWriter.Write(w, r, err)
}

// proxy returns the reverse proxy for a leader, made once per address.
func (f *forwarder) proxy(name, addr string) *httputil.ReverseProxy {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.proxies[addr]; ok {
		return p
	}
	target := &url.URL{Scheme: "https", Host: addr}
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Set(forwardedHeader, f.s.cfg.Name)
			// identify removed any incoming copy; vouch only for a
			// certificate this server's TLS stack verified.
			pr.Out.Header.Del(forwardedCertHeader)
			if c := agentCertFrom(pr.In.Context()); c != nil {
				pr.Out.Header.Set(forwardedCertHeader, base64.StdEncoding.EncodeToString(c.Raw))
			}
			ctx, cancel := context.WithCancel(pr.Out.Context())
			pr.Out = pr.Out.WithContext(context.WithValue(ctx, endForwardKey{}, cancel))
		},
		// The proxy closes the answer's body once it has copied it, and
		// that Close waits until the request's body is sent to the end.
		// A bidirectional stream the leader ended (with an error, say)
		// still has its caller's side open, so the Close would wait for
		// as long as the caller keeps it open, and the caller never sees
		// the end. Ending the forwarded request first lets it return.
		ModifyResponse: func(res *http.Response) error {
			if end, ok := res.Request.Context().Value(endForwardKey{}).(context.CancelFunc); ok {
				res.Body = &endOnClose{ReadCloser: res.Body, end: end}
			}
			return nil
		},
		Transport:     f.transport,
		FlushInterval: -1, // stream responses as they come
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			if mbe, ok := errors.AsType[*http.MaxBytesError](err); ok {
				// limitBodies cut off a body that did not say its length.
				f.writeErr(w, r, tooLargeError(-1, mbe.Limit))
				return
			}
			var opErr *net.OpError
			if errors.As(err, &opErr) && opErr.Op == "dial" {
				// Nothing was sent, so the caller may safely retry.
				f.writeErr(w, r, f.s.noLeaderError(fmt.Sprintf("the leader %s at %s is unreachable (%v); the request was not sent", name, addr, opErr.Err)))
				return
			}
			f.writeErr(w, r, apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER,
				fmt.Sprintf("cannot reach the leader %s at %s: %v", name, addr, err),
				"retry shortly; if it persists check \"drover status\""))
		},
	}
	f.proxies[addr] = p
	return p
}

// endForwardKey holds the function that ends a forwarded request, in
// its context.
type endForwardKey struct{}

// endOnClose is a forwarded answer's body whose Close first ends the
// forwarded request.
type endOnClose struct {
	io.ReadCloser
	end context.CancelFunc
}

func (b *endOnClose) Close() error {
	b.end()
	return b.ReadCloser.Close()
}

// clusterClient is a ClusterService client to another server,
// authenticated by this server's certificate.
func (f *forwarder) clusterClient(apiAddr string) droverv1connect.ClusterServiceClient {
	return droverv1connect.NewClusterServiceClient(&http.Client{Transport: f.transport}, "https://"+apiAddr)
}

// servedMethods yields the procedure path ("/drover.v1.ModelService/
// CreateModel") and the descriptor of every method of every service the
// API serves, read from the schema, so that tables over procedures are
// derived from it rather than kept in step by hand.
func servedMethods() iter.Seq2[string, protoreflect.MethodDescriptor] {
	return func(yield func(string, protoreflect.MethodDescriptor) bool) {
		for _, fd := range []protoreflect.FileDescriptor{
			droverv1.File_drover_v1_registry_proto,
			droverv1.File_drover_v1_acl_proto,
			droverv1.File_drover_v1_audit_proto,
			droverv1.File_drover_v1_cluster_proto,
			droverv1.File_drover_v1_node_proto,
			droverv1.File_drover_v1_agent_proto,
			droverv1.File_drover_v1_artifact_service_proto,
			droverv1.File_drover_v1_key_proto,
			droverv1.File_drover_v1_deploy_proto,
			droverv1.File_drover_v1_telemetry_proto,
			droverv1.File_drover_v1_drift_proto,
		} {
			for i := range fd.Services().Len() {
				svc := fd.Services().Get(i)
				for j := range svc.Methods().Len() {
					m := svc.Methods().Get(j)
					if !yield("/"+string(svc.FullName())+"/"+string(m.Name()), m) {
						return
					}
				}
			}
		}
	}
}

// noLeaderPrefix starts every message of noLeaderError, and nothing else:
// such a request was refused before it was proposed or sent on.
const noLeaderPrefix = "no leader"

// noLeaderError explains why there is no leader to serve a request, in
// terms an operator can act on (see noLeaderMessage).
func (s *Server) noLeaderError(why string) *connect.Error {
	voters, reachable := s.voterReachability()
	// Gossip lags a real partition by a few seconds, so say what Raft
	// knows too: how long since a leader was heard from.
	var silent time.Duration
	if voters > 0 {
		if lc := s.raft.LastContact(); !lc.IsZero() && time.Since(lc) > 2*time.Duration(s.cfg.ElectionTimeout) {
			silent = time.Since(lc).Round(100 * time.Millisecond)
		}
	}
	msg, hint := noLeaderMessage(why, voters, reachable, silent)
	return apiErr(connect.CodeUnavailable, droverv1.ErrorReason_ERROR_REASON_NO_LEADER, msg, hint)
}

// noLeaderMessage words a no-leader refusal: why (may be empty), how many
// of the voters answer gossip (voters 0: unknown), and how long this
// server has not heard from a leader when that is longer than an election
// takes (0 otherwise). With a quorum in reach a cluster lacks a leader
// only for a moment, an election, so the message says that rather than
// reading as if a quorum were missing.
func noLeaderMessage(why string, voters, reachable int, silent time.Duration) (msg, hint string) {
	quorum := voters/2 + 1
	msg, sep := noLeaderPrefix+" elected yet", ": "
	switch {
	case why != "":
		msg, sep = noLeaderPrefix+" to serve the request: "+why, "; "
	case voters > 0 && reachable < quorum:
		msg = noLeaderPrefix + " elected"
	}
	switch {
	case voters == 0:
		return msg, "retry shortly; check \"drover status\""
	case reachable < quorum:
		return msg + fmt.Sprintf("%sonly %d of %d servers reachable, and a quorum needs %d", sep, reachable, voters, quorum),
			fmt.Sprintf("start or reconnect at least %d more server(s); writes fail until a quorum is back", quorum-reachable)
	case silent > 0:
		return msg + fmt.Sprintf("%s%d of %d servers reachable (quorum is %d)", sep, reachable, voters, quorum),
			fmt.Sprintf("this server last heard from a leader %s ago: it may be cut off from the others; "+
				"retry against another server and check \"drover status\" there", silent)
	}
	return msg + fmt.Sprintf("%s%d of %d servers reachable (quorum is %d), so an election may be in progress", sep, reachable, voters, quorum),
		"retry in a few seconds"
}

// voterReachability counts the Raft voters and how many of them this
// server can see alive in gossip (itself included).
func (s *Server) voterReachability() (voters, reachable int) {
	if s.raft == nil {
		return 0, 0
	}
	future := s.raft.GetConfiguration()
	if future.Error() != nil {
		return 0, 0
	}
	alive := map[string]bool{s.cfg.Name: true}
	for _, m := range s.gossipServers() {
		if m.Status == memberAlive {
			alive[m.Name] = true
		}
	}
	// A partitioned server may still see peers in gossip; what matters is
	// whether Raft hears from them, which a follower without a leader
	// cannot tell, so gossip is the best evidence available here.
	for _, srv := range future.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		voters++
		if alive[string(srv.ID)] {
			reachable++
		}
	}
	return voters, reachable
}
