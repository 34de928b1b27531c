package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// forwardedCertHeader carries the verified client certificate of an agent
// (base64 DER) when a follower forwards the agent's call to the leader:
// the leader sees the follower's own certificate on the connection, so
// the agent's identity travels in this header. A server sets it only from
// a peer certificate its TLS stack verified, and believes it only when the
// connection's own peer is a server; from anyone else it is dropped.
const forwardedCertHeader = "Drover-Forwarded-Client-Cert"

type agentCertKey struct{}

type serverPeerKey struct{}

// serverPeerFrom returns the verified certificate of the server on the
// other end of the connection, or nil when the peer is not a server.
func serverPeerFrom(ctx context.Context) *x509.Certificate {
	c, _ := ctx.Value(serverPeerKey{}).(*x509.Certificate)
	return c
}

// agentCertFrom returns the verified agent certificate of the request, or
// nil when the caller presented none.
func agentCertFrom(ctx context.Context) *x509.Certificate {
	c, _ := ctx.Value(agentCertKey{}).(*x509.Certificate)
	return c
}

// verifiedPeer returns the leaf of the TLS peer's verified chain, or nil.
func verifiedPeer(cs *tls.ConnectionState) *x509.Certificate {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	return cs.VerifiedChains[0][0]
}

// identify puts the calling agent's verified certificate into the
// request's context: the TLS peer's own when it is an agent, or the one a
// forwarding server vouches for in forwardedCertHeader. The header is
// removed from every request, so nothing further in can read an
// unvouched one.
func (s *Server) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fwd := r.Header.Get(forwardedCertHeader)
		r.Header.Del(forwardedCertHeader)
		peer := verifiedPeer(r.TLS)
		var agent *x509.Certificate
		switch role := pki.RoleOf(peer); {
		case role == pki.RoleAgent:
			agent = peer
		case role == pki.RoleServer && fwd != "":
			c, err := s.parseForwardedCert(fwd)
			if err != nil {
				s.logger.Warn("ignoring a forwarded client certificate", "from", peer.Subject.CommonName, "err", err)
				break
			}
			agent = c
		}
		if agent != nil {
			r = r.WithContext(context.WithValue(r.Context(), agentCertKey{}, agent))
		}
		if pki.RoleOf(peer) == pki.RoleServer {
			r = r.WithContext(context.WithValue(r.Context(), serverPeerKey{}, peer))
		}
		next.ServeHTTP(w, r)
	})
}

// parseForwardedCert decodes a forwarded certificate and verifies it again
// against the cluster CA: the forwarding server is trusted to vouch for
// the connection, not to make up certificates.
func (s *Server) parseForwardedCert(v string) (*x509.Certificate, error) {
	der, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{
		Roots:       s.ca.Pool(),
		CurrentTime: time.Now(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	return c, nil
}

type agentNodeKey struct{}

// agentNodeFrom returns the node an authenticated agent call is from, as
// state.NodeSummary gives it: identity and status, no inventory, labels or
// history.
func agentNodeFrom(ctx context.Context) *droverv1.Node {
	n, _ := ctx.Value(agentNodeKey{}).(*droverv1.Node)
	return n
}

// authenticateAgent checks the caller of a certificate-authenticated
// agent call: a verified agent certificate whose common name is a node
// that exists, has not left and is not revoked. An unknown node is
// refused with TOKEN_INVALID (Unauthenticated), a revoked or departed one
// with NODE_REVOKED (PermissionDenied). It returns ctx with the node and
// the audit actor "node/<id>".
func (s *Server) authenticateAgent(ctx context.Context) (context.Context, error) {
	cert := agentCertFrom(ctx)
	if cert == nil || pki.RoleOf(cert) != pki.RoleAgent {
		return ctx, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING,
			"this call needs the node's client certificate (role agent), signed by the cluster CA",
			"enroll the agent with a join token to get one")
	}
	id := cert.Subject.CommonName
	n, err := s.state.NodeSummary(id)
	if err != nil {
		return ctx, apiErr(connect.CodeUnauthenticated, droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID,
			fmt.Sprintf("node %q of this certificate is not known to the cluster", id),
			"enroll the agent again with a join token")
	}
	if n.GetRevoked() {
		return ctx, apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED,
			fmt.Sprintf("node %q was revoked: its certificate is no longer accepted; an operator must enroll the machine again with a new join token", id),
			"remove the agent's identity file and enroll the machine again with a new join token from an operator (`drover token create`)")
	}
	if n.GetStatus() == droverv1.NodeStatus_NODE_STATUS_LEFT {
		return ctx, apiErr(connect.CodePermissionDenied, droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED,
			fmt.Sprintf("node %q has left the fleet; its name may belong to another node by now", id),
			"remove the agent's identity file and enroll the machine again with a new join token")
	}
	return context.WithValue(ctx, agentNodeKey{}, n), nil
}
