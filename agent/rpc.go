package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/jointoken"
	"github.com/droverhq/drover/internal/pki"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

const (
	// rpcTimeout bounds one call to a server, so that a server that stopped
	// answering is given up on and the next one tried.
	rpcTimeout = 15 * time.Second
	// defaultDialTimeout bounds a QUIC handshake. A server that is down
	// does not answer at all (QUIC does not see ICMP errors), so this is
	// how long the agent waits before trying the next server.
	defaultDialTimeout = 5 * time.Second
	// idleTimeout closes a QUIC connection with no traffic; the next call
	// dials again.
	idleTimeout = time.Minute
	// maxMessageBytes bounds a response the agent reads.
	maxMessageBytes = 4 << 20
)

// newTransport returns an HTTP/3 transport with tlsConf; the caller closes
// it.
func (a *Agent) newTransport(tlsConf *tls.Config) *http3.Transport {
	return &http3.Transport{
		TLSClientConfig: tlsConf,
		QUICConfig: &quic.Config{
			HandshakeIdleTimeout: a.dialTimeout,
			MaxIdleTimeout:       idleTimeout,
		},
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

// errorDetail returns the connect error in err and the ErrorDetail the
// server attached to it, either of which may be nil.
func errorDetail(err error) (*connect.Error, *droverv1.ErrorDetail) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil, nil
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ed, ok := v.(*droverv1.ErrorDetail); ok {
				return ce, ed
			}
		}
	}
	return ce, nil
}

// serverWords is what a server said in a refusal, for error messages.
func serverWords(ce *connect.Error) string {
	if m := ce.Message(); m != "" {
		return m
	}
	return ce.Code().String()
}

// enrollRefusal turns an Enroll error from addr into a permanent error, or
// returns nil when the error is worth retrying, on this server or another.
// maybeEnrolled says an earlier attempt's outcome is unknown (its answer was
// lost), so that a name now taken may be this machine's own.
func enrollRefusal(addr string, tok jointoken.Token, maybeEnrolled bool, err error) error {
	ce, detail := errorDetail(err)
	if ce == nil {
		return nil
	}
	reason, code := detail.GetReason(), ce.Code()
	switch {
	case reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID ||
		reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_MISSING ||
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
		if reason == droverv1.ErrorReason_ERROR_REASON_ALREADY_EXISTS || code == connect.CodeAlreadyExists {
			switch {
			case maybeEnrolled:
				hint = "an earlier attempt may have enrolled this machine under this name without its answer arriving: " +
					"revoke that node (`drover node revoke NAME`) and enroll again with a new join token, or choose another name with --name"
			case hint == "":
				hint = "another node has this name; choose another with --name"
			}
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
// the node's certificate refused (revoked), or the node unknown or its
// request invalid; anything else is retried, because an agent that gives up
// stays down until someone restarts it. idPath names the identity file for
// the advice.
func sessionRefusal(op, addr, nodeID, idPath string, err error) error {
	ce, detail := errorDetail(err)
	if ce == nil {
		return nil
	}
	reason, code := detail.GetReason(), ce.Code()
	switch {
	case code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied ||
		reason == droverv1.ErrorReason_ERROR_REASON_TOKEN_INVALID:
		return withHint(fmt.Errorf("%s: server %s refused node %s: %s: %w", op, addr, nodeID, serverWords(ce), ErrRevoked),
			"the control plane no longer accepts this node, and the agent will not enroll again by itself; to rejoin, remove %s and start the agent with a new join token", idPath)
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
