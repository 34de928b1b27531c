// Package agenttest is a fake control plane for testing agents: the
// AgentService served over real HTTP/3 with mutual TLS, by one or more
// servers that share one cluster's state, so that tests can stop a server
// and watch an agent fail over, refuse a token, revoke a node, and see
// every call the agent made.
//
// It checks what a real server checks (the join token, the CSR, the client
// certificate and its role) and nothing more: there is no Raft, and state
// lives in memory. Its methods are safe for concurrent use.
package agenttest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// Procedures of the AgentService, for Refuse and Calls.
const (
	GetClusterInfo   = droverv1connect.AgentServiceGetClusterInfoProcedure
	Enroll           = droverv1connect.AgentServiceEnrollProcedure
	Register         = droverv1connect.AgentServiceRegisterProcedure
	RenewCertificate = droverv1connect.AgentServiceRenewCertificateProcedure
	Heartbeat        = droverv1connect.AgentServiceHeartbeatProcedure
	// HeartbeatStream is recorded when a stream opens; each heartbeat on
	// it is recorded as a Heartbeat call with Streamed set.
	HeartbeatStream  = droverv1connect.AgentServiceHeartbeatStreamProcedure
	WatchAssignments = droverv1connect.AgentServiceWatchAssignmentsProcedure
)

// waitTimeout bounds how long WaitForCalls waits in real time before it
// fails the test: long enough for a slow, loaded CI machine.
const waitTimeout = 30 * time.Second

// Call is one request a server received.
type Call struct {
	// Server is the address of the server that received it.
	Server    string
	Procedure string
	// NodeID is the common name of the verified client certificate, ""
	// for a call without one.
	NodeID string
	// Cert is the verified client certificate, nil for none.
	Cert    *x509.Certificate
	Request proto.Message
	// Err is the error the server answered with, nil for success.
	Err error
	// Streamed is set for a heartbeat sent on a HeartbeatStream.
	Streamed bool
}

// Node is a node the fake cluster enrolled.
type Node struct {
	ID, Name  string
	Labels    map[string]string
	Site      string
	Inventory *droverv1.NodeInventory
	Revoked   bool
	// GossipAddr is where the node's site gossip pool listens, from its
	// last registration.
	GossipAddr string
	// Suspects and GossipMembers are from the node's last heartbeat.
	Suspects      []string
	GossipMembers uint32
	// Instances is what the node's last heartbeat reported of its
	// deployments' instances.
	Instances []*droverv1.InstanceStatus
}

// maxSitePeers is how many site peers an answer names at most, as a
// real server's does.
const maxSitePeers = 5

// Cluster is a fake control plane: one CA and one state, served by
// one or more Servers.
type Cluster struct {
	// CA is the cluster CA; tokens pin it and it signs every certificate.
	CA *pki.CA
	// ID is the cluster id GetClusterInfo reports.
	ID string

	t       testing.TB
	servers []*Server

	mu         sync.Mutex        // guards the fields below
	tokens     map[string]string // token id → secret
	nodes      map[string]*Node  // by id
	ttl        time.Duration
	validity   time.Duration
	refusals   map[string]error
	refuseOnce map[string]error // nil until RefuseOnce
	reregister bool
	advertised []string // nil: every server's address
	calls      []Call
	bodies     [][]byte
	changed    chan struct{} // closed and replaced on every call
}

// NewCluster starts n servers of one fake cluster on 127.0.0.1, each
// serving HTTP/3 on its own UDP port, and stops them when the test ends.
// Heartbeats answer with a 30s TTL and certificates are valid for an hour
// until changed.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ca, err := pki.NewCA("drover agenttest CA", 24*time.Hour)
	if err != nil {
		t.Fatalf("agenttest: new CA: %v", err)
	}
	c := &Cluster{
		CA:       ca,
		ID:       "agenttest-" + randomID(),
		t:        t,
		tokens:   map[string]string{},
		nodes:    map[string]*Node{},
		ttl:      30 * time.Second,
		validity: time.Hour,
		refusals: map[string]error{},
		changed:  make(chan struct{}),
	}
	for range n {
		c.servers = append(c.servers, c.startServer())
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			s.Stop()
		}
	})
	return c
}

// Addrs returns every server's address, HOST:PORT, including stopped ones.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.Addr
	}
	return out
}

// Server returns the i-th server.
func (c *Cluster) Server(i int) *Server { return c.servers[i] }

// NewToken makes a join token for the cluster and returns its string form.
func (c *Cluster) NewToken() string {
	tok, err := jointoken.New(c.CA.Fingerprint())
	if err != nil {
		c.t.Fatalf("agenttest: new token: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens[tok.ID] = tok.Secret
	return tok.String()
}

// SetTTL sets the TTL heartbeats answer with.
func (c *Cluster) SetTTL(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ttl = d
}

// SetCertValidity sets how long certificates issued from now on are valid
// (the CA backdates each by five minutes for clock skew).
func (c *Cluster) SetCertValidity(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.validity = d
}

// SetAdvertisedServers sets the server list that responses carry; nil
// means every server's address.
func (c *Cluster) SetAdvertisedServers(addrs []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advertised = slices.Clone(addrs)
}

// Refuse makes every server answer procedure with err from now on, after
// recording the call; nil answers normally again. err is typically made
// with RefusalError.
func (c *Cluster) Refuse(procedure string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		delete(c.refusals, procedure)
		return
	}
	c.refusals[procedure] = err
}

// RefuseOnce makes the next call of procedure, on any server, answer err
// after recording the call; the calls after it are answered as before.
func (c *Cluster) RefuseOnce(procedure string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refuseOnce == nil {
		c.refuseOnce = map[string]error{}
	}
	c.refuseOnce[procedure] = err
}

// RefusalError is an error as the control plane sends it: a Connect code
// with an ErrorDetail holding reason and hint.
func RefusalError(code connect.Code, reason droverv1.ErrorReason, msg, hint string) *connect.Error {
	e := connect.NewError(code, errors.New(msg))
	if d, err := connect.NewErrorDetail(&droverv1.ErrorDetail{Reason: reason, Hint: hint}); err == nil {
		e.AddDetail(d)
	}
	return e
}

// RequestReregister makes the next heartbeat answer ask for the inventory
// again.
func (c *Cluster) RequestReregister() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reregister = true
}

// Revoke revokes a node: calls with its certificate are refused with
// PermissionDenied from now on.
func (c *Cluster) Revoke(nodeID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.nodes[nodeID]; ok {
		n.Revoked = true
	}
}

// Nodes returns a copy of every enrolled node.
func (c *Cluster) Nodes() []Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Node
	for _, n := range c.nodes {
		out = append(out, *n)
	}
	return out
}

// Calls returns every call received so far to procedure, or to any
// procedure for "", oldest first.
func (c *Cluster) Calls(procedure string) []Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.callsLocked(procedure)
}

func (c *Cluster) callsLocked(procedure string) []Call {
	var out []Call
	for _, call := range c.calls {
		if procedure == "" || call.Procedure == procedure {
			out = append(out, call)
		}
	}
	return out
}

// WaitForCalls waits until at least n calls to procedure have been
// received and returns them all; after a generous real-time limit it fails
// the test.
func (c *Cluster) WaitForCalls(procedure string, n int) []Call {
	c.t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		calls, changed := c.callsLocked(procedure), c.changed
		c.mu.Unlock()
		if len(calls) >= n {
			return calls
		}
		select {
		case <-changed:
		case <-deadline.C:
			c.t.Fatalf("agenttest: %d calls to %s after %s, want %d", len(calls), procedure, waitTimeout, n)
			return nil
		}
	}
}

// ReceivedBytes reports whether any request body any server received
// contained b, as sent on the wire.
func (c *Cluster) ReceivedBytes(b []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, body := range c.bodies {
		if bytes.Contains(body, b) {
			return true
		}
	}
	return false
}

// Server is one server of a fake cluster.
type Server struct {
	// Addr is where it listens, 127.0.0.1:PORT (UDP).
	Addr string

	c        *Cluster
	h3       *http3.Server
	pc       net.PacketConn
	done     chan struct{}
	stopOnce sync.Once
}

func (c *Cluster) startServer() *Server {
	c.t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatalf("agenttest: listen: %v", err)
	}
	cert, err := c.CA.IssueServerCert("agenttest", nil, 24*time.Hour)
	if err != nil {
		c.t.Fatalf("agenttest: server certificate: %v", err)
	}
	s := &Server{Addr: pc.LocalAddr().String(), c: c, pc: pc, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle(droverv1connect.NewAgentServiceHandler(&handler{c: c, s: s}))
	tlsConf := pki.ServerTLSConfig(c.CA.Pool(), cert, tls.VerifyClientCertIfGiven)
	s.h3 = &http3.Server{Handler: s.capture(mux), TLSConfig: http3.ConfigureTLSConfig(tlsConf)}
	go func() {
		defer close(s.done)
		_ = s.h3.Serve(pc)
	}()
	return s
}

// Stop stops the server: its connections are closed and its port answers
// nothing, as a crashed server's would. It is idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.h3.Close()
		_ = s.pc.Close()
		<-s.done
	})
}

type tlsKey struct{}

// capture records every request body and hands the TLS state to the
// handlers.
func (s *Server) capture(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == HeartbeatStream {
			// Its body ends when the agent closes the stream; the
			// handler records each message instead.
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tlsKey{}, r.TLS)))
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.c.mu.Lock()
		s.c.bodies = append(s.c.bodies, body)
		s.c.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tlsKey{}, r.TLS)))
	})
}

// handler is the fake AgentService of one server.
type handler struct {
	// Calls the fake does not serve (WatchAssignments) answer
	// Unimplemented.
	droverv1connect.UnimplementedAgentServiceHandler
	c *Cluster
	s *Server
}

var _ droverv1connect.AgentServiceHandler = (*handler)(nil)

// begin records a call and returns the cluster's refusal for it, if one is
// set. The caller holds c.mu until it returns, and finish records the
// answer.
func (h *handler) begin(ctx context.Context, procedure string, req proto.Message) (*Call, error) {
	call := &Call{Server: h.s.Addr, Procedure: procedure, Request: proto.CloneOf(req)}
	if cs, ok := ctx.Value(tlsKey{}).(*tls.ConnectionState); ok && cs != nil && len(cs.VerifiedChains) > 0 {
		call.Cert = cs.VerifiedChains[0][0]
		call.NodeID = call.Cert.Subject.CommonName
	}
	h.c.mu.Lock()
	if err, ok := h.c.refuseOnce[procedure]; ok {
		delete(h.c.refuseOnce, procedure)
		return call, err
	}
	return call, h.c.refusals[procedure]
}

func (h *handler) finish(call *Call, err error) error {
	call.Err = err
	h.c.calls = append(h.c.calls, *call)
	close(h.c.changed)
	h.c.changed = make(chan struct{})
	h.c.mu.Unlock()
	return err
}

// servers is the list responses carry.
func (h *handler) serversLocked() []string {
	if h.c.advertised != nil {
		return slices.Clone(h.c.advertised)
	}
	return h.c.Addrs()
}

func (h *handler) GetClusterInfo(ctx context.Context, req *connect.Request[droverv1.GetClusterInfoRequest]) (*connect.Response[droverv1.GetClusterInfoResponse], error) {
	call, err := h.begin(ctx, GetClusterInfo, req.Msg)
	if err != nil {
		return nil, h.finish(call, err)
	}
	resp := &droverv1.GetClusterInfoResponse{CaPem: h.c.CA.CertPEM(), ClusterId: h.c.ID, Servers: h.serversLocked()}
	return connect.NewResponse(resp), h.finish(call, nil)
}

func (h *handler) Enroll(ctx context.Context, req *connect.Request[droverv1.EnrollRequest]) (*connect.Response[droverv1.EnrollResponse], error) {
	call, err := h.begin(ctx, Enroll, req.Msg)
	if err != nil {
		return nil, h.finish(call, err)
	}
	m := req.Msg
	tok, err := jointoken.Parse(m.GetToken())
	if err != nil {
		return nil, h.finish(call, RefusalError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), ""))
	}
	if secret, ok := h.c.tokens[tok.ID]; !ok || secret != tok.Secret {
		return nil, h.finish(call, RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID, "invalid join token", ""))
	}
	for _, n := range h.c.nodes {
		if n.Name == m.GetName() {
			return nil, h.finish(call, RefusalError(connect.CodeAlreadyExists, droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS,
				fmt.Sprintf("node name %q already exists: node %q has it and has not left", n.Name, n.ID), ""))
		}
	}
	id := randomID()
	der, err := h.c.CA.SignCSR(m.GetCsrDer(), id, pki.RoleAgent, h.c.validity)
	if err != nil {
		return nil, h.finish(call, RefusalError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), ""))
	}
	cert, _ := x509.ParseCertificate(der)
	n := &Node{ID: id, Name: m.GetName(), Labels: m.GetLabels(), Site: m.GetSite(), Inventory: m.GetInventory()}
	h.c.nodes[id] = n
	resp := &droverv1.EnrollResponse{
		Node:              &droverv1.Node{Id: id, Name: n.Name, Labels: n.Labels, Site: n.Site, Status: droverv1.NodeStatus_NODE_STATUS_INITIALIZING},
		CertificatePem:    certPEM(der),
		CertificateExpiry: timestamppb.New(cert.NotAfter),
		// One key per site, as a real server derives it: the nodes of
		// a site can form a pool, and no other node can join it.
		SiteGossipKey: pki.DeriveKey(h.c.CA, "drover site gossip v1 "+n.Site, 32),
		Servers:       h.serversLocked(),
	}
	return connect.NewResponse(resp), h.finish(call, nil)
}

// nodeLocked returns the node whose certificate made call, or the error a
// real server would answer with.
func (h *handler) nodeLocked(call *Call) (*Node, error) {
	if call.Cert == nil || pki.RoleOf(call.Cert) != pki.RoleAgent {
		return nil, RefusalError(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs an agent certificate", "")
	}
	n, ok := h.c.nodes[call.NodeID]
	if !ok {
		return nil, RefusalError(connect.CodeNotFound, droverv1.ErrorReason_ERROR_REASON_NOT_FOUND,
			fmt.Sprintf("node %q not found", call.NodeID), "")
	}
	if n.Revoked {
		return nil, RefusalError(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			fmt.Sprintf("node %q revoked", n.ID), "enroll the machine again with a new join token")
	}
	return n, nil
}

func (h *handler) Register(ctx context.Context, req *connect.Request[droverv1.RegisterRequest]) (*connect.Response[droverv1.RegisterResponse], error) {
	call, err := h.begin(ctx, Register, req.Msg)
	if err != nil {
		return nil, h.finish(call, err)
	}
	n, err := h.nodeLocked(call)
	if err != nil {
		return nil, h.finish(call, err)
	}
	n.Inventory = proto.CloneOf(req.Msg.GetInventory())
	n.GossipAddr = req.Msg.GetGossipAddr()
	resp := &droverv1.RegisterResponse{
		Node:      &droverv1.Node{Id: n.ID, Name: n.Name, Labels: n.Labels, Site: n.Site, Status: droverv1.NodeStatus_NODE_STATUS_READY, GossipAddr: n.GossipAddr},
		SitePeers: h.sitePeersLocked(n),
	}
	return connect.NewResponse(resp), h.finish(call, nil)
}

// sitePeersLocked returns the gossip addresses of up to maxSitePeers other
// nodes of n's site that registered one and are not revoked, in map
// order, which varies.
func (h *handler) sitePeersLocked(n *Node) []string {
	if n.Site == "" {
		return nil
	}
	var out []string
	for _, o := range h.c.nodes {
		if o.ID != n.ID && o.Site == n.Site && o.GossipAddr != "" && !o.Revoked {
			out = append(out, o.GossipAddr)
			if len(out) == maxSitePeers {
				break
			}
		}
	}
	return out
}

func (h *handler) RenewCertificate(ctx context.Context, req *connect.Request[droverv1.RenewCertificateRequest]) (*connect.Response[droverv1.RenewCertificateResponse], error) {
	call, err := h.begin(ctx, RenewCertificate, req.Msg)
	if err != nil {
		return nil, h.finish(call, err)
	}
	n, err := h.nodeLocked(call)
	if err != nil {
		return nil, h.finish(call, err)
	}
	der, err := h.c.CA.SignCSR(req.Msg.GetCsrDer(), n.ID, pki.RoleAgent, h.c.validity)
	if err != nil {
		return nil, h.finish(call, RefusalError(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT, err.Error(), ""))
	}
	cert, _ := x509.ParseCertificate(der)
	resp := &droverv1.RenewCertificateResponse{CertificatePem: certPEM(der), CertificateExpiry: timestamppb.New(cert.NotAfter)}
	return connect.NewResponse(resp), h.finish(call, nil)
}

// streamedKey marks the context of a heartbeat that came on a stream.
type streamedKey struct{}

// HeartbeatStream answers each heartbeat on the stream as Heartbeat
// answers one, refusals included; Refuse(HeartbeatStream, …) refuses the
// stream itself, as a server that does not know it does.
func (h *handler) HeartbeatStream(ctx context.Context, stream *connect.BidiStream[droverv1.HeartbeatRequest, droverv1.HeartbeatResponse]) error {
	call, err := h.begin(ctx, HeartbeatStream, &droverv1.HeartbeatRequest{})
	call.Request = nil
	if err := h.finish(call, err); err != nil {
		return err
	}
	ctx = context.WithValue(ctx, streamedKey{}, true)
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if raw, err := proto.Marshal(msg); err == nil {
			h.c.mu.Lock()
			h.c.bodies = append(h.c.bodies, raw)
			h.c.mu.Unlock()
		}
		resp, err := h.Heartbeat(ctx, connect.NewRequest(msg))
		if err != nil {
			return err
		}
		if err := stream.Send(resp.Msg); err != nil {
			return err
		}
	}
}

func (h *handler) Heartbeat(ctx context.Context, req *connect.Request[droverv1.HeartbeatRequest]) (*connect.Response[droverv1.HeartbeatResponse], error) {
	call, err := h.begin(ctx, Heartbeat, req.Msg)
	call.Streamed, _ = ctx.Value(streamedKey{}).(bool)
	if err != nil {
		return nil, h.finish(call, err)
	}
	n, err := h.nodeLocked(call)
	if err != nil {
		return nil, h.finish(call, err)
	}
	n.Suspects = slices.Clone(req.Msg.GetSuspects())
	n.GossipMembers = req.Msg.GetGossipMembers()
	n.Instances = nil
	for _, st := range req.Msg.GetInstances() {
		n.Instances = append(n.Instances, proto.CloneOf(st))
	}
	resp := &droverv1.HeartbeatResponse{
		Ttl:        durationpb.New(h.c.ttl),
		Status:     droverv1.NodeStatus_NODE_STATUS_READY,
		Servers:    h.serversLocked(),
		Reregister: h.c.reregister,
	}
	// A pool that sees no peer gets some, as from a real server.
	if n.GossipAddr != "" && req.Msg.GetGossipMembers() <= 1 {
		resp.SitePeers = h.sitePeersLocked(n)
	}
	h.c.reregister = false
	return connect.NewResponse(resp), h.finish(call, nil)
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// randomID returns 8 random lowercase base32 characters, a valid node id.
func randomID() string {
	return strings.ToLower(base32.StdEncoding.EncodeToString(randomBytes(5)))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// WatchAssignments answers that the node runs nothing: the fake cluster
// holds no deployments. Like a real blocking query it answers only once
// the wait the request asks for (at most a few seconds here) is over, so
// an agent's watch does not spin.
func (h *handler) WatchAssignments(ctx context.Context, req *connect.Request[droverv1.WatchAssignmentsRequest]) (*connect.Response[droverv1.WatchAssignmentsResponse], error) {
	call, err := h.begin(ctx, WatchAssignments, req.Msg)
	if err == nil {
		_, err = h.nodeLocked(call)
	}
	if err := h.finish(call, err); err != nil {
		return nil, err
	}
	const index = 1
	if req.Msg.GetQuery().GetMinIndex() >= index {
		wait := min(cmp.Or(req.Msg.GetQuery().GetMaxWait().AsDuration(), 5*time.Second), 5*time.Second)
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-h.s.done:
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("agenttest: server stopped"))
		case <-t.C:
		}
	}
	return connect.NewResponse(&droverv1.WatchAssignmentsResponse{Meta: &droverv1.QueryMeta{Index: index, KnownLeader: true}}), nil
}

// GetManifest is not faked: the fake cluster holds no model versions, and
// tests of pulling run against real servers.
func (h *handler) GetManifest(context.Context, *connect.Request[droverv1.AgentGetManifestRequest]) (*connect.Response[droverv1.AgentGetManifestResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("agenttest: the fake cluster serves no model versions"))
}

// GetChunk is not faked, for the reason GetManifest is not.
func (h *handler) GetChunk(context.Context, *connect.Request[droverv1.AgentGetChunkRequest]) (*connect.Response[droverv1.AgentGetChunkResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("agenttest: the fake cluster serves no model versions"))
}
