package tlsguard

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/droverhq/drover/internal/pki"
)

// pipeListener is an in-memory net.Listener: Dial hands it one end of a
// net.Pipe that claims to come from a given remote address, so tests can
// run inside a synctest bubble and pretend to be many hosts.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error {
	p.once.Do(func() { close(p.closed) })
	return nil
}

func (p *pipeListener) Addr() net.Addr { return pipeAddr("192.0.2.1:7401") }

// Dial returns the client end of a connection from remote ("IP:port").
func (p *pipeListener) Dial(t *testing.T, remote string) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	select {
	case p.conns <- addrConn{Conn: server, remote: pipeAddr(remote)}:
	case <-p.closed:
		t.Fatal("dial: listener closed")
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

type pipeAddr string

func (a pipeAddr) Network() string { return "tcp" }
func (a pipeAddr) String() string  { return string(a) }

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

// recorder collects rejections.
type recorder struct {
	mu  sync.Mutex
	got []Rejection
}

func (r *recorder) add(rj Rejection) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, rj)
}

func (r *recorder) reasons() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rj := range r.got {
		out = append(out, rj.Host+" "+rj.Reason)
	}
	return out
}

// tlsConfigs makes a CA, a server config and a client config that trusts
// it. Call it inside the bubble: certificates are valid from "now".
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	ca, err := pki.NewCA("tlsguard test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServerCert("s1", []string{"localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}},
		&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: ca.Pool(), ServerName: "localhost"}
}

const testTimeout = 10 * time.Second

func startGuard(t *testing.T, maxPerHost int, reply []byte) (*pipeListener, *Listener, *recorder, *tls.Config) {
	t.Helper()
	serverConf, clientConf := tlsConfigs(t)
	pl := newPipeListener()
	rec := &recorder{}
	l, err := NewListener(pl, Config{
		TLS: serverConf, HandshakeTimeout: testTimeout, MaxPendingPerHost: maxPerHost,
		PlaintextReply: reply, Rejected: rec.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return pl, l, rec, clientConf
}

// waitClosed reads from c until the server closes it and returns how long
// that took on the bubble's clock.
func waitClosed(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read until closed: %v", err)
	}
	return time.Since(start)
}

func TestIdleAndPartialConnectionsClosedAtDeadline(t *testing.T) {
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"idle", nil},
		// A handshake record header promising 512 bytes, then nothing.
		{"partial record", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				pl, l, rec, _ := startGuard(t, 0, nil)
				c := pl.Dial(t, "198.51.100.7:40000")
				if len(tc.send) > 0 {
					if _, err := c.Write(tc.send); err != nil {
						t.Fatal(err)
					}
				}
				if took := waitClosed(t, c); took != testTimeout {
					t.Errorf("connection closed after %s, want the handshake timeout %s", took, testTimeout)
				}
				synctest.Wait()
				if got := rec.reasons(); len(got) != 1 || got[0] != "198.51.100.7 "+ReasonTimeout {
					t.Errorf("rejections = %q, want one %s", got, ReasonTimeout)
				}
				if n := l.Pending(); n != 0 {
					t.Errorf("%d handshakes still pending after the deadline", n)
				}
			})
		})
	}
}

func TestPerHostCapLetsOtherHostsIn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pl, l, rec, clientConf := startGuard(t, 2, nil)
		const stranger = "198.51.100.7"
		for port := range 2 {
			pl.Dial(t, stranger+":4000"+string(rune('0'+port)))
		}
		synctest.Wait()
		if n := l.Pending(); n != 2 {
			t.Fatalf("pending = %d, want the stranger's 2", n)
		}
		over := pl.Dial(t, stranger+":40009")
		if took := waitClosed(t, over); took != 0 {
			t.Errorf("connection over the cap closed after %s, want at once", took)
		}
		if got := rec.reasons(); len(got) != 1 || got[0] != stranger+" "+ReasonTooMany {
			t.Fatalf("rejections = %q, want one %s", got, ReasonTooMany)
		}

		// A peer from another host completes its handshake and is accepted.
		peer := tls.Client(pl.Dial(t, "203.0.113.9:50000"), clientConf)
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				t.Errorf("accept: %v", err)
			}
			accepted <- c
		}()
		if err := peer.HandshakeContext(context.Background()); err != nil {
			t.Fatalf("legitimate peer's handshake: %v", err)
		}
		c := <-accepted
		if _, ok := c.(*tls.Conn); !ok {
			t.Fatalf("Accept returned %T, want *tls.Conn", c)
		}
		_ = c.Close()

		// Once the stranger's handshakes time out it may try again.
		time.Sleep(testTimeout)
		synctest.Wait()
		if n := l.Pending(); n != 0 {
			t.Fatalf("pending = %d after the deadline, want 0", n)
		}
		pl.Dial(t, stranger+":40010")
		synctest.Wait()
		if n := l.Pending(); n != 1 {
			t.Errorf("pending = %d after the stranger reconnected, want 1", n)
		}
	})
}

func TestHandshakeFailureReportedBeforeClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reply := []byte("HTTP/1.0 400 Bad Request\r\n\r\nplain HTTP to a TLS port\n")
		pl, _, rec, _ := startGuard(t, 0, reply)
		c := pl.Dial(t, "198.51.100.7:40000")
		go func() { _, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")) }()
		got, err := io.ReadAll(c)
		if err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Fatal(err)
		}
		if string(got) != string(reply) {
			t.Errorf("plain-text client got %q, want %q", got, reply)
		}
		// The rejection was reported before the connection closed.
		if r := rec.reasons(); len(r) != 1 || r[0] != "198.51.100.7 "+ReasonHandshake {
			t.Errorf("rejections = %q, want one %s", r, ReasonHandshake)
		}
	})
}

func TestCloseAbortsHandshakesAndAccept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pl, l, rec, _ := startGuard(t, 0, nil)
		c := pl.Dial(t, "198.51.100.7:40000")
		acceptErr := make(chan error, 1)
		go func() {
			_, err := l.Accept()
			acceptErr <- err
		}()
		synctest.Wait()
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if took := waitClosed(t, c); took != 0 {
			t.Errorf("pending handshake closed %s after Close, want at once", took)
		}
		if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close = %v, want net.ErrClosed", err)
		}
		if r := rec.reasons(); len(r) != 0 {
			t.Errorf("Close reported rejections %q, want none", r)
		}
	})
}

func TestNewListenerRefusesBadConfig(t *testing.T) {
	pl := newPipeListener()
	for _, cfg := range []Config{
		{HandshakeTimeout: time.Second},
		{TLS: &tls.Config{}},
		{TLS: &tls.Config{}, HandshakeTimeout: time.Second, MaxPendingPerHost: -1},
	} {
		if _, err := NewListener(pl, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("NewListener(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestHostKey(t *testing.T) {
	for addr, want := range map[string]string{
		"198.51.100.7:40000":          "198.51.100.7",
		"[::ffff:198.51.100.7]:1":     "198.51.100.7",
		"[2001:db8:1:2:3:4:5:6]:7401": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:9":    "2001:db8:1:2::/64",
		"pipe":                        "pipe",
	} {
		if got := hostKey(pipeAddr(addr)); got != want {
			t.Errorf("hostKey(%s) = %q, want %q", addr, got, want)
		}
	}
}
