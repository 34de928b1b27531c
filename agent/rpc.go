package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/apierror"
	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	"github.com/droverhq/drover/internal/quicflow"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

const (
	// rpcTimeout bounds one enrollment call, so that a server that stopped
	// answering is given up on and the next one tried. It is longer than
	// the session's calls (sessionCallTimeout): an enrollment does more
	// work (a Raft write and a certificate), and although a retry with the
	// same key gets the same node back, one that succeeds saves a round.
	rpcTimeout = 15 * time.Second
	// defaultDialTimeout bounds a QUIC handshake. A server that is down
	// does not answer at all (QUIC does not see ICMP errors), so this is
	// how long the agent waits before trying the next server.
	defaultDialTimeout = 5 * time.Second
	// idleTimeout closes a QUIC connection with no traffic; the next call
	// dials again. Servers wait as long (apiIdleTimeout there).
	idleTimeout = 5 * time.Minute
	// keepAlivePeriod is how long a connection may be quiet before the
	// agent sends a keep-alive: the session is one connection for as long
	// as the agent runs, also when a large fleet's TTL spaces heartbeats
	// out by minutes, and a keep-alive is one small packet where a new
	// connection would be a full handshake.
	keepAlivePeriod = time.Minute
	// maxMessageBytes bounds a response the agent reads.
	maxMessageBytes = 4 << 20
)

// newTransport returns an HTTP/3 transport with tlsConf; the caller closes
// it.
func (a *Agent) newTransport(tlsConf *tls.Config) *http3.Transport {
	return &http3.Transport{
		TLSClientConfig: tlsConf,
		// The receive windows decide how fast a pull can go over a
		// long link: quicflow sizes them for 500 Mbit/s at 100 ms.
		QUICConfig: quicflow.Apply(&quic.Config{
			HandshakeIdleTimeout: a.dialTimeout,
			MaxIdleTimeout:       idleTimeout,
			KeepAlivePeriod:      keepAlivePeriod,
		}),
		Dial: a.cfg.DialQUIC,
	}
}

// newClient returns an AgentService client for the server at addr
// (HOST:PORT) over tr.
func newClient(tr *http3.Transport, addr string) droverv1connect.AgentServiceClient {
	return droverv1connect.NewAgentServiceClient(&http.Client{Transport: tr}, "https://"+addr,
		connect.WithReadMaxBytes(maxMessageBytes))
}

// pinnedTLS returns a TLS configuration that trusts only the cluster CA and
// only server certificates (every one names pki.PeerServerName, whatever
// address was dialed). getCert, if not nil, supplies the node's client
// certificate.
func pinnedTLS(ca *x509.Certificate, getCert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              pool,
		ServerName:           pki.PeerServerName,
		GetClientCertificate: getCert,
		VerifyConnection:     pki.RequireRole(pki.RoleServer),
	}
}

// serverWords is what a server said in a refusal, for error messages.
func serverWords(ce *connect.Error) string {
	if m := ce.Message(); m != "" {
		return m
	}
	return ce.Code().String()
}

// tokenRefusal returns advice for the person running the agent and the
// agent's error for a join token refusal the server named with a reason of
// its own; a nil error for any other reason. addr is the server.
func tokenRefusal(reason droverv1.ErrorReason, addr string) (hint string, kind error) {
	const ask = "ask an operator for a new join token (`drover token create`) and start the agent with it"
	switch reason {
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID:
		return "the server does not know this token, or its secret is wrong or garbled: pass the whole string " +
			"`drover token create` printed, in DROVER_TOKEN or --token; if it is lost, " + ask, ErrTokenInvalid
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_EXPIRED:
		return "the token outlived its --ttl; " + ask, ErrTokenExpired
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_REVOKED:
		return "an operator revoked this token; " + ask, ErrTokenRevoked
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_USED_UP:
		return "the token's --max-uses are spent: as many machines as it allowed have enrolled with it; " + ask, ErrTokenUsedUp
	case droverv1.ErrorReason_ERROR_REASON_TOKEN_WRONG_CLUSTER:
		return fmt.Sprintf("the token belongs to another cluster than the one at %s: "+
			"point --server at a server of the cluster that made the token, or ask for a token made by this one", addr), ErrTokenWrongCluster
	}
	return "", nil
}

// enrollRefusal turns an Enroll error from addr into a permanent error, or
// returns nil when the error is worth retrying, on this server or another.
// A retry after a lost answer sends the same key, and the server answers it
// with the node the first attempt made, so a name found taken belongs to
// another machine. A refused
// token wraps ErrTokenRefused and, when the server said which refusal it
// was, that refusal's own error (ErrTokenExpired, …).
func enrollRefusal(addr string, tok jointoken.Token, err error) error {
	ce, detail := apierror.Detail(err)
	if ce == nil {
		return nil
	}
	reason, code := detail.GetReason(), ce.Code()
	if hint, kind := tokenRefusal(reason, addr); kind != nil {
		return withHint(fmt.Errorf("enroll with %s: server refused join token %s: %s: %w",
			addr, tok.ID, serverWords(ce), kind), "%s", hint)
	}
	switch {
	case reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING ||
		code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied:
		hint := detail.GetHint()
		if hint == "" {
			hint = "ask an operator for a new join token (`drover token create`) and start the agent with it"
		}
		return withHint(fmt.Errorf("enroll with %s: server refused join token %s: %s: %w",
			addr, tok.ID, serverWords(ce), ErrTokenRefused), "%s", hint)
	case reason == droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT ||
		reason == droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS ||
		code == connect.CodeInvalidArgument || code == connect.CodeAlreadyExists:
		hint := detail.GetHint()
		if (reason == droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS || code == connect.CodeAlreadyExists) && hint == "" {
			hint = "another node has this name; choose another with --name"
		}
		err := fmt.Errorf("enroll with %s: %s: %w", addr, serverWords(ce), ErrRefused)
		if hint != "" {
			err = withHint(err, "%s", hint)
		}
		return err
	}
	return nil
}

// sessionRefusal turns an error from a call made with the node's
// certificate into a permanent error, or returns nil when it is worth
// retrying on this server or another. Only clear answers stop the agent:
// the node's certificate refused (revoked, left, or unknown to the
// cluster), or the node's request invalid; anything else is retried,
// because an agent that gives up stays down until someone restarts it.
// idPath names the identity file for the advice.
func sessionRefusal(op, addr, nodeID, idPath string, err error) error {
	ce, detail := apierror.Detail(err)
	if ce == nil {
		return nil
	}
	reason, code := detail.GetReason(), ce.Code()
	rejoin := fmt.Sprintf("the agent will not enroll again by itself; to rejoin, remove %s and start the agent with a new join token (`drover token create`)", idPath)
	switch {
	case reason == droverv1.ErrorReason_ERROR_REASON_NODE_REVOKED:
		return withHint(fmt.Errorf("%s: server %s refused node %s: %s: %w", op, addr, nodeID, serverWords(ce), ErrRevoked),
			"an operator revoked this node, or it left the fleet; %s", rejoin)
	case reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID && code == connect.CodeUnauthenticated:
		// Servers before NODE_REVOKED sent TOKEN_INVALID with
		// PermissionDenied for a revoked node; that is the case below.
		return withHint(fmt.Errorf("%s: server %s refused node %s: %s: %w", op, addr, nodeID, serverWords(ce), ErrNodeUnknown),
			"the cluster has no record of this node (was it rebuilt?); %s", rejoin)
	case code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied ||
		reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID:
		return withHint(fmt.Errorf("%s: server %s refused node %s: %s: %w", op, addr, nodeID, serverWords(ce), ErrRevoked),
			"the control plane no longer accepts this node; %s", rejoin)
	case code == connect.CodeInvalidArgument || code == connect.CodeNotFound ||
		reason == droverv1.ErrorReason_ERROR_REASON_INVALID_ARGUMENT ||
		reason == droverv1.ErrorReason_ERROR_REASON_NOT_FOUND:
		hint := detail.GetHint()
		if hint == "" {
			hint = fmt.Sprintf("if the node left the fleet or the cluster was rebuilt, remove %s and enroll again with a new join token", idPath)
		}
		return withHint(fmt.Errorf("%s: server %s: %s: %w", op, addr, serverWords(ce), ErrRefused), "%s", hint)
	}
	return nil
}
