// Package tlsguard accepts TLS connections so that strangers cannot hold
// them open: every handshake has a deadline, each remote host may have only
// a few handshakes in progress at once, and a connection reaches Accept only
// once its handshake has completed. Every TCP listener that speaks TLS
// (Raft, the HTTPS API) goes through it.
package tlsguard

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Reasons a connection is refused before Accept returns it.
const (
	// ReasonTooMany: the remote host already has MaxPendingPerHost
	// handshakes in progress; the connection is closed at once.
	ReasonTooMany = "too_many_pending"
	// ReasonTimeout: the handshake did not complete within
	// HandshakeTimeout (an idle connection, a partial record).
	ReasonTimeout = "handshake_timeout"
	// ReasonHandshake: the handshake failed (not TLS, no or a wrong
	// certificate, an unsupported version).
	ReasonHandshake = "handshake_failed"
)

// Reasons lists every reason, for callers that pre-create metric series.
var Reasons = []string{ReasonTooMany, ReasonTimeout, ReasonHandshake}

// Config configures a Listener. TLS and HandshakeTimeout are required.
type Config struct {
	// TLS is the server configuration of every handshake.
	TLS *tls.Config
	// HandshakeTimeout bounds a handshake from accept to completion.
	HandshakeTimeout time.Duration
	// MaxPendingPerHost is how many handshakes one remote host may have in
	// progress at once; 0 means no limit. An IPv6 host is its /64, which
	// is what one machine usually gets.
	MaxPendingPerHost int
	// PlaintextReply, when set, is written to a client whose first bytes
	// are not a TLS record (a plain HTTP request to an HTTPS port) before
	// the connection is closed.
	PlaintextReply []byte
	// Rejected, when set, is called for every connection closed before
	// Accept returned it, from the goroutine that refused it and before
	// the connection is closed. It must not block for long.
	Rejected func(Rejection)
}

// Rejection describes a connection refused before Accept returned it.
type Rejection struct {
	Remote net.Addr
	// Host is the key MaxPendingPerHost counts by: the remote IP, or its
	// /64 for IPv6.
	Host   string
	Reason string // one of the Reason constants
	Err    error  // the handshake error; nil for ReasonTooMany
}

// Listener is a net.Listener whose Accept returns *tls.Conn connections
// whose handshake has completed. Handshakes run in their own goroutines,
// so a slow one never holds up another. Close stops them and waits for
// them. All methods are safe for concurrent use.
type Listener struct {
	inner net.Listener
	cfg   Config

	ready  chan *tls.Conn // handshaken connections waiting for Accept
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every handshake

	mu        sync.Mutex     // guards the fields below
	pending   map[string]int // handshakes in progress by host
	acceptErr error          // why the accept loop stopped
	closeOnce sync.Once
	closeErr  error
}

var _ net.Listener = (*Listener)(nil)

// ErrConfig means a Config lacks something it needs.
var ErrConfig = errors.New("tlsguard: invalid config")

// NewListener starts accepting on inner. The Listener owns inner and
// closes it in Close.
func NewListener(inner net.Listener, cfg Config) (*Listener, error) {
	if cfg.TLS == nil {
		return nil, fmt.Errorf("new listener: no TLS config: %w", ErrConfig)
	}
	if cfg.HandshakeTimeout <= 0 {
		return nil, fmt.Errorf("new listener: handshake timeout %s must be positive: %w", cfg.HandshakeTimeout, ErrConfig)
	}
	if cfg.MaxPendingPerHost < 0 {
		return nil, fmt.Errorf("new listener: max pending per host %d is negative: %w", cfg.MaxPendingPerHost, ErrConfig)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		inner:   inner,
		cfg:     cfg,
		ready:   make(chan *tls.Conn),
		ctx:     ctx,
		cancel:  cancel,
		pending: make(map[string]int),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Accept returns the next connection whose handshake completed.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.ctx.Done():
		l.mu.Lock()
		err := l.acceptErr
		l.mu.Unlock()
		if err == nil {
			err = net.ErrClosed
		}
		return nil, fmt.Errorf("accept: %w", err)
	}
}

// Close stops accepting, aborts handshakes in progress and waits for
// every goroutine the Listener started. It is idempotent.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.closeErr = l.inner.Close()
		l.wg.Wait()
	})
	return l.closeErr
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Pending returns how many handshakes are in progress.
func (l *Listener) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, v := range l.pending {
		n += v
	}
	return n
}

const (
	minAcceptDelay = 5 * time.Millisecond
	maxAcceptDelay = time.Second
)

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.Is(err, net.ErrClosed) || !errors.As(err, &ne) {
				l.stop(err)
				return
			}
			// Out of file descriptors and the like: back off as
			// net/http does rather than spin or give up.
			delay = min(max(2*delay, minAcceptDelay), maxAcceptDelay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		host := hostKey(c.RemoteAddr())
		if !l.admit(host) {
			l.reject(c, host, ReasonTooMany, nil)
			continue
		}
		l.wg.Add(1)
		go l.handshake(c, host)
	}
}

// stop ends Accept with err after the inner listener failed.
func (l *Listener) stop(err error) {
	l.mu.Lock()
	l.acceptErr = err
	l.mu.Unlock()
	l.cancel()
}

// admit counts a handshake for host unless it already has the most allowed.
func (l *Listener) admit(host string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.MaxPendingPerHost > 0 && l.pending[host] >= l.cfg.MaxPendingPerHost {
		return false
	}
	l.pending[host]++
	return true
}

func (l *Listener) release(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending[host]--; l.pending[host] <= 0 {
		delete(l.pending, host)
	}
}

func (l *Listener) handshake(c net.Conn, host string) {
	defer l.wg.Done()
	tc := tls.Server(c, l.cfg.TLS)
	// The deadline is the connection's, not a context's: a context that
	// expires makes crypto/tls close the connection itself, before reject
	// has counted it, and whoever sees it closed must find it counted.
	// l.ctx only aborts handshakes when the listener closes.
	err := c.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	if err == nil {
		err = tc.HandshakeContext(l.ctx)
	}
	if err == nil {
		err = c.SetDeadline(time.Time{})
	}
	l.release(host)
	if err != nil {
		if l.ctx.Err() != nil {
			_ = c.Close()
			return
		}
		reason := ReasonHandshake
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			reason = ReasonTimeout
		}
		var rhe tls.RecordHeaderError
		if len(l.cfg.PlaintextReply) > 0 && errors.As(err, &rhe) && rhe.Conn != nil {
			// Best effort: the client may already be gone.
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = c.Write(l.cfg.PlaintextReply)
		}
		l.reject(c, host, reason, err)
		return
	}
	select {
	case l.ready <- tc:
	case <-l.ctx.Done():
		_ = tc.Close()
	}
}

// reject reports a refused connection, then closes it: whoever sees the
// connection close knows it was counted.
func (l *Listener) reject(c net.Conn, host, reason string, err error) {
	if l.cfg.Rejected != nil {
		l.cfg.Rejected(Rejection{Remote: c.RemoteAddr(), Host: host, Reason: reason, Err: err})
	}
	_ = c.Close()
}

// hostKey is what MaxPendingPerHost counts by: the IP of an IPv4 peer, the
// /64 of an IPv6 one (a single machine usually has a whole /64), or the
// address as a string when it has no IP.
func hostKey(a net.Addr) string {
	if a == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := ap.Addr().Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return ip.String()
	}
	return p.String()
}
