package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/pki"
)

// client fetches chunks from peers over one HTTP/3 transport.
type client struct {
	tr       *http3.Transport
	hc       *http.Client
	response time.Duration
	stall    time.Duration
}

// clientTLS returns the TLS configuration for dialing peers: the node's
// certificate, and a peer that must present an agent certificate the
// cluster CA issued. Agent certificates are for client authentication
// only (the CA gives no agent a server certificate), so the standard
// verification, which wants a server certificate naming the address
// dialed, is replaced by one that checks the chain, the usage and the
// role; which node answered is checked per request.
func clientTLS(cfg Config) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(cfg.CA)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Verified in VerifyConnection, which runs on resumed sessions
		// too.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cfg.Certificate(), nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("verify peer: no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{
				Roots:         pool,
				Intermediates: inter,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}); err != nil {
				return fmt.Errorf("verify peer %q: %w", leaf.Subject.CommonName, err)
			}
			if role := pki.RoleOf(leaf); role != pki.RoleAgent {
				return fmt.Errorf("verify peer %q: role %q, want %q: %w", leaf.Subject.CommonName, role, pki.RoleAgent, pki.ErrWrongRole)
			}
			return nil
		},
	}
}

func newClient(cfg Config) *client {
	tr := &http3.Transport{
		TLSClientConfig: clientTLS(cfg),
		QUICConfig: &quic.Config{
			HandshakeIdleTimeout: handshakeTimeout,
			MaxIdleTimeout:       serverIdleTimeout,
		},
	}
	return &client{
		tr:       tr,
		hc:       &http.Client{Transport: tr},
		response: cfg.ResponseTimeout,
		stall:    cfg.StallTimeout,
	}
}

func (c *client) close() error { return c.tr.Close() }

// errBusy, errNotHere and errRefused are a peer's answers that say nothing
// bad of it: it is busy, lacks the chunk, or does not serve it.
var (
	errBusy    = errors.New("peer busy")
	errNotHere = errors.New("peer does not hold the chunk")
	errRefused = errors.New("peer refused the request")
)

// get fetches chunk d, size bytes long, of version of model from p,
// whole: the caller checks it before anyone reads it. With own set p is
// asked as the chunk's owner, to fetch it from the servers if it lacks
// it.
func (c *client) get(ctx context.Context, p Peer, model string, version uint64, d artifact.Digest, size int64, own bool) ([]byte, error) {
	q := url.Values{}
	q.Set("model", model)
	q.Set("version", strconv.FormatUint(version, 10))
	q.Set("digest", d.String())
	if own {
		q.Set("fetch", "1")
	}
	u := url.URL{Scheme: "https", Host: p.Addr, Path: chunkPath, RawQuery: q.Encode()}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// One timer stands for the response timeout, then for the stall
	// timeout after each read.
	stalled := errors.New("peer too slow")
	watch := time.AfterFunc(c.response, func() { cancel(stalled) })
	defer watch.Stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if context.Cause(ctx) == stalled {
			return nil, fmt.Errorf("no answer within %v: %w", c.response, stalled)
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Subject.CommonName != p.ID {
		return nil, fmt.Errorf("the node at %s is not %s", p.Addr, p.ID)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w: %s", errNotHere, readReason(resp.Body))
	case http.StatusServiceUnavailable:
		return nil, fmt.Errorf("%w: %s", errBusy, readReason(resp.Body))
	case http.StatusForbidden, http.StatusBadGateway:
		return nil, fmt.Errorf("%w: %s: %s", errRefused, resp.Status, readReason(resp.Body))
	default:
		return nil, fmt.Errorf("%s: %s", resp.Status, readReason(resp.Body))
	}
	if resp.ContentLength >= 0 && resp.ContentLength != size {
		return nil, fmt.Errorf("peer sends %d bytes for a chunk of %d", resp.ContentLength, size)
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	chunk := make([]byte, uploadPiece)
	for {
		watch.Reset(c.stall)
		k, err := resp.Body.Read(chunk)
		buf.Write(chunk[:k])
		if int64(buf.Len()) > size {
			return nil, fmt.Errorf("peer sends more than the chunk's %d bytes", size)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if context.Cause(ctx) == stalled {
				return nil, fmt.Errorf("nothing received for %v: %w", c.stall, stalled)
			}
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// readReason returns the start of a refusal's text.
func readReason(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 512))
	return string(bytes.TrimSpace(b))
}
