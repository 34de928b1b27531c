package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// agentCertValidity is how long a node certificate is valid; agents renew
// well before.
const agentCertValidity = 24 * time.Hour

// agentHandler serves what drover-agent calls. GetClusterInfo and Enroll
// are public (Enroll checks the join token); the other calls are
// authenticated by the node's client certificate in the auth interceptor.
type agentHandler struct {
	s         *Server
	artifacts *artifactHandler // serves GetManifest and GetChunk
}

var _ droverv1connect.AgentServiceHandler = (*agentHandler)(nil)

func (h *agentHandler) GetClusterInfo(_ context.Context, _ *connect.Request[droverv1.GetClusterInfoRequest]) (*connect.Response[droverv1.GetClusterInfoResponse], error) {
	// The trust anchors for the manifests of pushed versions.
	keys, revoked := h.s.manifestKeyBytes()
	return connect.NewResponse(&droverv1.GetClusterInfoResponse{
		CaPem:               h.s.ca.CertPEM(),
		ClusterId:           h.s.state.Cluster().GetClusterId(),
		Servers:             h.s.serverAPIAddrs(),
		ManifestKeys:        keys,
		RevokedManifestKeys: revoked,
	}), nil
}

// GetManifest returns a pushed version's signed manifest, as
// ArtifactService.GetManifest does for operators.
func (h *agentHandler) GetManifest(ctx context.Context, req *connect.Request[droverv1.AgentGetManifestRequest]) (*connect.Response[droverv1.AgentGetManifestResponse], error) {
	if _, err := h.s.query(ctx, req.Header(), nil); err != nil {
		return nil, err
	}
	v, signed, err := h.artifacts.manifest(req.Msg.GetModel(), req.Msg.GetRef())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.AgentGetManifestResponse{Version: v, Manifest: signed}), nil
}

// GetChunk returns one chunk of a pushed version, as
// ArtifactService.GetChunk does for operators.
func (h *agentHandler) GetChunk(ctx context.Context, req *connect.Request[droverv1.AgentGetChunkRequest]) (*connect.Response[droverv1.AgentGetChunkResponse], error) {
	data, err := h.artifacts.chunk(ctx, req.Msg.GetModel(), req.Msg.GetVersion(), req.Msg.GetDigest())
	if err != nil {
		return nil, err
	}
	h.s.metrics.servedToAgents.Add(float64(len(data)))
	return connect.NewResponse(&droverv1.AgentGetChunkResponse{Data: data}), nil
}

// serverAPIAddrs lists the API addresses of the servers alive in gossip.
func (s *Server) serverAPIAddrs() []string {
	var out []string
	for _, m := range s.gossipServers() {
		if m.Status == memberAlive && m.APIAddr != "" {
			out = append(out, m.APIAddr)
		}
	}
	return out
}

// Enroll trades a join token and a CSR for a node identity. The
// certificate is signed before the token is used, so a bad CSR never
// costs a use; it is handed out only if the enrollment is committed.
//
// It is idempotent: the enrollment records the hash of the CSR's public
// key, and a retry (the same key and token, its answer lost) gets the node
// the first try made, with a certificate for it, and uses no more of the
// token (see state.Store.EnrollNode).
func (h *agentHandler) Enroll(ctx context.Context, req *connect.Request[droverv1.EnrollRequest]) (*connect.Response[droverv1.EnrollResponse], error) {
	tok, err := jointoken.Parse(req.Msg.GetToken())
	if err != nil {
		// Parse's messages never contain the secret.
		return nil, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			err.Error(), "pass the whole token string \"drover token create\" printed")
	}
	if tok.CAHash != h.s.ca.Fingerprint() {
		return nil, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_WRONG_CLUSTER,
			fmt.Sprintf("join token %q is for another cluster: it pins CA %.12s..., this cluster's CA is %.12s...",
				tok.ID, tok.CAHash, h.s.ca.Fingerprint()),
			"the token belongs to another cluster: point the agent's --server at that cluster, "+
				"or create a token for this one with `drover token create`")
	}
	name := req.Msg.GetName()
	if name == "" {
		name = req.Msg.GetInventory().GetHost().GetHostname()
	}
	name = normalizeNodeName(name)
	if err := state.ValidateName("node", name); err != nil {
		return nil, toAPIError(err)
	}
	id, err := newNodeID()
	if err != nil {
		return nil, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
	}
	certPEM, expiry, err := h.signCSR(req.Msg.GetCsrDer(), id)
	if err != nil {
		return nil, err
	}
	keySum, err := csrKeyHash(req.Msg.GetCsrDer())
	if err != nil {
		return nil, err
	}
	sum := tok.SecretHash()
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_ENROLL_NODE, &droverv1.EnrollNodeCommand{
		Meta:              &droverv1.CommandMeta{Time: timestamppb.Now(), Actor: "agent/" + name},
		TokenId:           tok.ID,
		TokenSecretSha256: sum[:],
		Node: &droverv1.Node{
			Id:              id,
			Name:            name,
			Labels:          req.Msg.GetLabels(),
			Site:            req.Msg.GetSite(),
			Inventory:       req.Msg.GetInventory(),
			AgentVersion:    req.Msg.GetAgentVersion(),
			PublicKeySha256: keySum[:],
		},
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	n := res.Value.(*droverv1.Node)
	if n.GetId() != id {
		// A retry: the certificate must name the node it got back.
		if certPEM, expiry, err = h.signCSR(req.Msg.GetCsrDer(), n.GetId()); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&droverv1.EnrollResponse{
		Node:              n,
		CertificatePem:    certPEM,
		CertificateExpiry: timestamppb.New(expiry),
		SiteGossipKey:     pki.DeriveKey(h.s.ca, "drover site gossip v1 "+n.GetSite(), 32),
		Servers:           h.s.serverAPIAddrs(),
		Meta:              &droverv1.WriteMeta{Index: res.Index},
	}), nil
}

// csrKeyHash returns the SHA-256 of the public key (DER
// SubjectPublicKeyInfo) a CSR asks a certificate for.
func csrKeyHash(der []byte) ([32]byte, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return [32]byte{}, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			fmt.Sprintf("certificate request: %v", err), "send a PKCS#10 request (DER) for an ECDSA P-256 key")
	}
	return sha256.Sum256(csr.RawSubjectPublicKeyInfo), nil
}

// signCSR signs a node's CSR as an agent certificate for node id and
// returns it as PEM with its expiry.
func (h *agentHandler) signCSR(csr []byte, id string) ([]byte, time.Time, error) {
	der, err := h.s.ca.SignCSR(csr, id, pki.RoleAgent, agentCertValidity)
	if err != nil {
		return nil, time.Time{}, apiErr(connect.CodeInvalidArgument, droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT,
			err.Error(), "send a PKCS#10 request (DER) for an ECDSA P-256 key")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, time.Time{}, apiErr(connect.CodeInternal, droverv1.ErrorReason_ERROR_REASON_INTERNAL, err.Error(), "")
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert.NotAfter, nil
}

// Register records the node's inventory and makes it READY; from then on
// the leader expects its heartbeats.
func (h *agentHandler) Register(ctx context.Context, req *connect.Request[droverv1.RegisterRequest]) (*connect.Response[droverv1.RegisterResponse], error) {
	node := agentNodeFrom(ctx)
	res, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_REGISTER_NODE, &droverv1.RegisterNodeCommand{
		Meta:         commandMeta(ctx),
		NodeId:       node.GetId(),
		Inventory:    req.Msg.GetInventory(),
		AgentVersion: req.Msg.GetAgentVersion(),
		GossipAddr:   req.Msg.GetGossipAddr(),
	})
	if err != nil {
		return nil, toAPIError(err)
	}
	n := res.Value.(*droverv1.Node)
	return connect.NewResponse(&droverv1.RegisterResponse{
		Node: n, Meta: &droverv1.WriteMeta{Index: res.Index}, SitePeers: h.s.trackRegistration(n),
	}), nil
}

// trackRegistration tells the leader's tracker, if it is installed, that
// node n (as the registration left it in the state) registered, and
// returns site peers for its pool to join. Without a tracker it does
// nothing: the tracker reads the node from the state when it is installed
// (see startHeartbeats).
func (s *Server) trackRegistration(n *droverv1.Node) []string {
	hb := s.heartbeatTracker()
	if hb == nil {
		return nil
	}
	return s.checkSitePeers(n, hb.registered(n, 2*maxSitePeers), maxSitePeers)
}

// checkSitePeers returns the gossip addresses of up to limit of peers that
// the state has as READY nodes of n's site, neither revoked nor left,
// with a gossip address. The tracker's view may lag the state by a tick;
// a registration is rare enough to afford a look at the state.
func (s *Server) checkSitePeers(n *droverv1.Node, peers []sitePeer, limit int) []string {
	var out []string
	for _, p := range peers {
		if len(out) == limit {
			break
		}
		cur, err := s.state.NodeSummary(p.id)
		if err != nil || cur.GetRevoked() || cur.GetStatus() != droverv1.NodeStatus_NODE_STATUS_READY ||
			cur.GetSite() != n.GetSite() || cur.GetGossipAddr() == "" || cur.GetId() == n.GetId() {
			continue
		}
		out = append(out, cur.GetGossipAddr())
	}
	return out
}

func (h *agentHandler) RenewCertificate(ctx context.Context, req *connect.Request[droverv1.RenewCertificateRequest]) (*connect.Response[droverv1.RenewCertificateResponse], error) {
	node := agentNodeFrom(ctx)
	certPEM, expiry, err := h.signCSR(req.Msg.GetCsrDer(), node.GetId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&droverv1.RenewCertificateResponse{
		CertificatePem: certPEM, CertificateExpiry: timestamppb.New(expiry),
	}), nil
}

// Heartbeat resets the node's deadline on the leader, takes the suspects
// its site pool reports and the state of its pull, and hands it site peers
// when its pool is alone and the version it is asked to pull.
// It writes nothing to the log unless the node was down.
func (h *agentHandler) Heartbeat(ctx context.Context, req *connect.Request[droverv1.HeartbeatRequest]) (*connect.Response[droverv1.HeartbeatResponse], error) {
	node := agentNodeFrom(ctx)
	hb := h.s.heartbeatTracker()
	if hb == nil {
		return nil, h.s.noLeaderError("this server is not (yet) an established leader")
	}
	h.s.metrics.heartbeats.Inc()
	resp := &droverv1.HeartbeatResponse{Status: node.GetStatus(), Servers: h.s.serverAPIAddrs()}
	if node.GetStatus() == droverv1.NodeStatus_NODE_STATUS_INITIALIZING {
		// Not registered yet: it is tracked once it has.
		resp.Reregister = true
		resp.Ttl = durationpb.New(time.Duration(h.s.cfg.HeartbeatMinTTL))
		return connect.NewResponse(resp), nil
	}
	wasDown := node.GetStatus() == droverv1.NodeStatus_NODE_STATUS_DOWN
	beat := hb.agentHeartbeat(node, wasDown, req.Msg.GetSuspects(), req.Msg.GetGossipMembers())
	hb.reportPull(node.GetId(), req.Msg.GetPull())
	if hb.reportInstances(node.GetId(), req.Msg.GetInstances()) {
		h.s.kickRollouts()
	}
	h.recordConditions(ctx, node, req.Msg.GetConditions())
	resp.Pull = node.GetRequestedPull()
	resp.Ttl = durationpb.New(beat.TTL)
	resp.SitePeers = beat.Peers
	if beat.Counted > 0 {
		h.s.metrics.suspectsCounted.Add(float64(beat.Counted))
	}
	if beat.Ignored > 0 {
		h.s.metrics.suspectsIgnored.Add(float64(beat.Ignored))
	}
	if wasDown {
		resp.Status = droverv1.NodeStatus_NODE_STATUS_READY
	}
	return connect.NewResponse(resp), nil
}

// recordConditions writes the conditions a heartbeat reports when they
// differ from the node's record, cordoning the node when one of them is a
// new occurrence (see state.NewConditions). Heartbeats carry them whole, so
// a write that fails is simply tried again at the next heartbeat; a
// list the state would refuse is logged and left out, not written: it
// would be refused again at every heartbeat, growing the log, and the
// node's liveness must not hang on it.
func (h *agentHandler) recordConditions(ctx context.Context, node *droverv1.Node, reported []*droverv1.NodeCondition) {
	if err := state.ValidateConditions(reported); err != nil {
		h.s.logger.Warn("heartbeat conditions ignored; upgrade the agent or the servers so they agree", "node", node.GetId(), "err", err)
		return
	}
	reported = slices.Clone(reported)
	state.SortConditions(reported)
	if state.ConditionsEqual(node.GetConditions(), reported) {
		return
	}
	cmd := &droverv1.SetNodeConditionsCommand{Meta: commandMeta(ctx), NodeId: node.GetId(), Conditions: reported}
	if fresh := state.NewConditions(node.GetConditions(), reported); len(fresh) > 0 {
		cmd.Cordon = true
		cmd.Reason = state.ConditionReason(fresh[0])
	}
	if _, err := h.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_NODE_CONDITIONS, cmd); err != nil {
		h.s.logger.Warn("recording node conditions", "node", node.GetId(), "err", err)
		return
	}
	if cmd.Cordon {
		h.s.logger.Warn("node cordoned", "node", node.GetId(), "reason", cmd.Reason)
		h.s.kickRollouts()
	}
}

// HeartbeatStream answers each heartbeat on the stream as Heartbeat
// answers one. The node is looked up again for each (as the call's
// authorization does for a unary heartbeat), so a node revoked or gone
// while its stream is open is refused on its next heartbeat, and a status
// change is seen at once. The stream ends with the first error: a server
// that stops leading answers NO_LEADER, and the agent's new stream is
// forwarded to the new leader.
func (h *agentHandler) HeartbeatStream(ctx context.Context, stream *connect.BidiStream[droverv1.HeartbeatRequest, droverv1.HeartbeatResponse]) error {
	for {
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		beatCtx, err := h.s.authenticateAgent(ctx)
		if err != nil {
			return err
		}
		res, err := h.Heartbeat(beatCtx, connect.NewRequest(msg))
		if err != nil {
			return err
		}
		if err := stream.Send(res.Msg); err != nil {
			return fmt.Errorf("answer a heartbeat: %w", err)
		}
	}
}

// WatchAssignments answers what the calling node should run. With
// query.min_index it blocks until the node's assignments (or a deployment
// they belong to) change past it, or query.max_wait passes; changes to
// other nodes or other state do not wake it, so a fleet of watching agents
// costs nothing while nothing of theirs changes.
func (h *agentHandler) WatchAssignments(ctx context.Context, req *connect.Request[droverv1.WatchAssignmentsRequest]) (*connect.Response[droverv1.WatchAssignmentsResponse], error) {
	node := agentNodeFrom(ctx)
	opts := req.Msg.GetQuery()
	if minIndex := opts.GetMinIndex(); minIndex > 0 {
		wait := defaultMaxWait
		if d := opts.GetMaxWait(); d != nil {
			wait = min(d.AsDuration(), maxMaxWait)
		}
		wctx, cancel := h.s.waitCtx(ctx, wait)
		err := waitForAssignments(wctx, h.s.state, node.GetId(), minIndex)
		cancel()
		if err != nil && ctx.Err() != nil {
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
	// min_index is handled above; query only checks consistency.
	meta, err := h.s.query(ctx, req.Header(), nil)
	if err != nil {
		return nil, err
	}
	as, index := h.s.state.NodeAssignments(node.GetId())
	// The index a watcher passes back: the last change to this node's
	// assignments, never 0, so that passing it back blocks.
	meta.Index = max(index, 1)
	return connect.NewResponse(&droverv1.WatchAssignmentsResponse{Assignments: as, Meta: meta}), nil
}

// waitForAssignments blocks until node id's assignment index passes
// minIndex or ctx ends (a deadline is no error, as for WaitForIndex).
func waitForAssignments(ctx context.Context, st *state.Store, id string, minIndex uint64) error {
	seen := minIndex
	for {
		if _, idx := st.NodeAssignments(id); idx > minIndex {
			return nil
		}
		next, err := st.WaitForIndex(ctx, seen)
		if err != nil {
			return err
		}
		if next <= seen {
			return nil // the deadline passed
		}
		seen = next
	}
}

// heartbeatTracker returns the leader's tracker, or nil when this server
// is not an established leader.
func (s *Server) heartbeatTracker() *heartbeatTracker {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heartbeats
}

// normalizeNodeName turns a host name into a node name: lowercase, any
// character a name may not hold replaced by '-', at most 63 characters,
// starting and ending with a letter or digit.
func normalizeNodeName(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(name)) {
		switch {
		case 'a' <= r && r <= 'z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	out := b.String()
	if len(out) > 63 {
		out = out[:63]
	}
	return strings.Trim(out, "-._")
}

// newNodeID returns a random node id: "n-" and 12 lowercase base32
// characters (60 bits).
func newNodeID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random node id: %w", err)
	}
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
	return "n-" + strings.ToLower(enc[:12]), nil
}
