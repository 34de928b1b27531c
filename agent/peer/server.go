package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/pki"
)

// The peer API: one GET that names a chunk of a version. With fetch=1
// the requester takes this node for the chunk's owner, which fetches a
// chunk it lacks from the servers; without, it serves only what it has.
const (
	chunkPath = "/drover.peer.v1/chunk"
	// serverIdleTimeout closes a connection no peer has used for a while:
	// pulls come in bursts, and a new handshake is cheap next to a chunk.
	serverIdleTimeout = time.Minute
	// handshakeTimeout bounds a QUIC handshake on both ends: a peer
	// that is busy uploading may take a while to answer a new one.
	handshakeTimeout = 10 * time.Second
)

// serverState is a running peer server.
type serverState struct {
	h3   *http3.Server
	conn net.PacketConn
	done chan struct{} // closed when Serve has returned
}

func (s *serverState) close() error {
	err := s.h3.Close()
	if cerr := s.conn.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	<-s.done
	return err
}

// serverTLS returns the server's TLS configuration: it presents the
// node's certificate and admits only clients with an agent certificate of
// the cluster CA. Servers' and operators' certificates are refused, even
// though the same CA signed them: only agents pull.
func serverTLS(cfg Config) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(cfg.CA)
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cfg.Certificate(), nil
		},
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		VerifyConnection: pki.RequireRole(pki.RoleAgent),
	}
}

// Listen starts serving chunks on addr (IP:PORT, UDP; port 0 picks a free
// one) and returns the address it listens on. It serves until Close.
func (n *Node) Listen(addr string) (net.Addr, error) {
	conn, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("peer server %s: %w", addr, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.srv != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("peer server %s: the node is closed or serves already", addr)
	}
	s := &serverState{
		conn: conn,
		done: make(chan struct{}),
		h3: &http3.Server{
			Handler:   handler{n},
			TLSConfig: http3.ConfigureTLSConfig(serverTLS(n.cfg)),
			QUICConfig: &quic.Config{
				MaxIdleTimeout:       serverIdleTimeout,
				HandshakeIdleTimeout: handshakeTimeout,
			},
			IdleTimeout: serverIdleTimeout,
			Logger:      n.log,
		},
	}
	n.srv = s
	go func() {
		defer close(s.done)
		if err := s.h3.Serve(conn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			n.log.Debug("peer server stopped", "err", err)
		}
	}()
	n.log.Info("serving chunks to site peers", "addr", conn.LocalAddr().String(),
		"upload_bytes_per_second", n.cfg.UploadBytesPerSecond, "max_uploads", n.cfg.MaxUploads)
	return conn.LocalAddr(), nil
}

// handler serves the peer API.
type handler struct{ n *Node }

// refusal is an answer other than the chunk.
func refuse(w http.ResponseWriter, code int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), code)
}

func (h handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.n
	if !n.serving() {
		refuse(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	defer n.served.Done()
	if r.URL.Path != chunkPath {
		refuse(w, http.StatusNotFound, "no such path")
		return
	}
	if r.Method != http.MethodGet {
		refuse(w, http.StatusMethodNotAllowed, "GET only")
		return
	}
	// The TLS configuration let only verified agent certificates in.
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		refuse(w, http.StatusUnauthorized, "no client certificate")
		return
	}
	peerID := r.TLS.PeerCertificates[0].Subject.CommonName
	if n.cfg.Authorize != nil && !n.cfg.Authorize(peerID) {
		refuse(w, http.StatusForbidden, "node %s may not fetch from this one", peerID)
		return
	}
	q := r.URL.Query()
	model := q.Get("model")
	version, err := strconv.ParseUint(q.Get("version"), 10, 64)
	if model == "" || err != nil {
		refuse(w, http.StatusBadRequest, "want model and version")
		return
	}
	d, err := artifact.ParseDigest(q.Get("digest"))
	if err != nil {
		refuse(w, http.StatusBadRequest, "digest: %v", err)
		return
	}
	ctx := r.Context()
	list, err := n.chunks(ctx, model, version)
	if err != nil {
		refuse(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	size, ok := list[d]
	if !ok {
		n.log.Warn("a peer asked for a chunk its version does not list", "peer", peerID, "model", model, "version", version, "chunk", d)
		refuse(w, http.StatusForbidden, "chunk %s is not in %s version %d", d, model, version)
		return
	}
	if !n.cfg.Cache.Has(d) {
		if q.Get("fetch") != "1" || n.cfg.Upstream == nil {
			refuse(w, http.StatusNotFound, "chunk %s not cached here", d)
			return
		}
		if err := n.ensure(ctx, model, version, d, size); err != nil {
			refuse(w, http.StatusBadGateway, "%v", err)
			return
		}
	}
	// A slot is taken only to send: waiting for an owner fetch holds none.
	t := time.NewTimer(n.cfg.QueueTimeout)
	select {
	case n.slots <- struct{}{}:
		t.Stop()
	case <-t.C:
		refuse(w, http.StatusServiceUnavailable, "busy: %d uploads in progress", n.cfg.MaxUploads)
		return
	case <-ctx.Done():
		t.Stop()
		return
	}
	defer func() { <-n.slots }()
	body, err := n.cfg.Cache.Open(d)
	if err != nil {
		// Evicted since.
		refuse(w, http.StatusNotFound, "chunk %s not cached here", d)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	sent, err := n.upload(ctx, w, body, size)
	n.uploadedBytes.Add(sent)
	if err != nil && ctx.Err() == nil {
		n.log.Debug("upload to a peer cut short", "peer", peerID, "chunk", d, "sent", sent, "err", err)
	}
}

// upload copies size bytes of body to w, in pieces, waiting on the upload
// cap before each.
func (n *Node) upload(ctx context.Context, w io.Writer, body io.Reader, size int64) (int64, error) {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	var sent int64
	for sent < size {
		b := (*buf)[:min(int64(len(*buf)), size-sent)]
		k, err := io.ReadFull(body, b)
		if k > 0 {
			if n.limiter != nil {
				if werr := n.limiter.WaitN(ctx, k); werr != nil {
					return sent, werr
				}
			}
			wk, werr := w.Write(b[:k])
			sent += int64(wk)
			if werr != nil {
				return sent, werr
			}
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, uploadPiece)
	return &b
}}
