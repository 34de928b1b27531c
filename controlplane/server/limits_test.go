package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/tlsguard"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// failSafe bounds waits that only a broken server would reach: a
// connection the server should close but never does.
const failSafe = time.Minute

// warnCounter passes records on and counts those at Warn and above.
type warnCounter struct {
	slog.Handler
	n *atomic.Int64
}

func (h warnCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h warnCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return warnCounter{Handler: h.Handler.WithAttrs(as), n: h.n}
}

func (h warnCounter) WithGroup(name string) slog.Handler {
	return warnCounter{Handler: h.Handler.WithGroup(name), n: h.n}
}

// startSolo starts a single server on loopback with cfg adjusted by
// change, and counts the records it logs at Warn and above.
func startSolo(t *testing.T, change func(*Config)) (*Server, *atomic.Int64) {
	t.Helper()
	cfg := singleServerConfig(t, t.TempDir())
	warns := new(atomic.Int64)
	cfg.Logger = slog.New(warnCounter{Handler: logging.TestLogger(t).Handler(), n: warns})
	if change != nil {
		change(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s, warns
}

// waitLeading waits until s leads and serves consistent requests.
func waitLeading(t *testing.T, s *Server) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(failSafe)
	for !s.LeadershipEstablished() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("the single server did not lead within %s", failSafe)
		}
	}
}

// rejected reads drover_rejected_connections_total for a listener and
// reason from the server's registry.
func rejected(t *testing.T, s *Server, listener, reason string) float64 {
	t.Helper()
	fams, err := s.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "drover_rejected_connections_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["listener"] == listener && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no drover_rejected_connections_total{listener=%q,reason=%q}", listener, reason)
	return 0
}

// dialFrom opens a TCP connection to addr from the loopback address
// local ("127.0.0.1", "127.0.0.2", ...).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		if local != "127.0.0.1" {
			t.Skipf("cannot dial from %s on this host: %v", local, err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// readUntilClosed reads c until the server closes it; it fails the test if
// that has not happened within failSafe.
func readUntilClosed(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(failSafe)); err != nil {
		t.Fatal(err)
	}
	_, err := io.Copy(io.Discard, c)
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("the server still holds the connection open after %s", failSafe)
	}
}

// A stranger that connects to the Raft port and never finishes a TLS
// handshake is disconnected at the handshake deadline, whether it says
// nothing or stops inside a record.
func TestRaftPortClosesUnfinishedHandshakes(t *testing.T) {
	s, _ := startSolo(t, func(c *Config) { c.TLSHandshakeTimeout = Duration(200 * time.Millisecond) })
	idle := dialFrom(t, "127.0.0.1", s.cfg.RaftAddr)
	partial := dialFrom(t, "127.0.0.1", s.cfg.RaftAddr)
	// A handshake record header that promises 512 bytes, and 1 of them.
	if _, err := partial.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}); err != nil {
		t.Fatal(err)
	}
	readUntilClosed(t, idle)
	readUntilClosed(t, partial)
	if n := rejected(t, s, listenerRaft, tlsguard.ReasonTimeout); n != 2 {
		t.Errorf("raft handshake timeouts counted = %v, want 2", n)
	}
}

// One host can hold only a few handshakes open at once; its next
// connection is closed at once, and a peer from another address still
// connects.
func TestRaftPortCapsPendingHandshakesPerHost(t *testing.T) {
	const perHost = 4
	s, _ := startSolo(t, func(c *Config) { c.MaxPendingHandshakesPerHost = perHost })
	for range perHost {
		dialFrom(t, "127.0.0.2", s.cfg.RaftAddr)
	}
	// The guard accepts in order, so the connections above are pending
	// (for the default 10s) when it gets to this one.
	over := dialFrom(t, "127.0.0.2", s.cfg.RaftAddr)
	readUntilClosed(t, over)
	if n := rejected(t, s, listenerRaft, tlsguard.ReasonTooMany); n != 1 {
		t.Errorf("connections refused over the cap = %v, want 1", n)
	}
	if n := rejected(t, s, listenerRaft, tlsguard.ReasonTimeout); n != 0 {
		t.Errorf("%v handshakes timed out: the refused connection was not closed at once", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), failSafe)
	defer cancel()
	peer, err := (&tls.Dialer{Config: s.peerTLS}).DialContext(ctx, "tcp", s.cfg.RaftAddr)
	if err != nil {
		t.Fatalf("a server peer could not connect while a stranger filled its own quota: %v", err)
	}
	_ = peer.Close()
}

// Garbage sent to the Raft port, 100 connections of it from one host,
// logs a line or two and counts every connection.
func TestBadConnectionsLoggedOncePerHostAndCounted(t *testing.T) {
	s, warns := startSolo(t, nil)
	before := warns.Load()
	for range 100 {
		c := dialFrom(t, "127.0.0.1", s.cfg.RaftAddr)
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: drover\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		// The server reports a refused connection before it closes it.
		readUntilClosed(t, c)
		_ = c.Close()
	}
	if n := rejected(t, s, listenerRaft, tlsguard.ReasonHandshake); n != 100 {
		t.Errorf("failed raft handshakes counted = %v, want 100", n)
	}
	if n := warns.Load() - before; n > 2 {
		t.Errorf("100 bad connections from one host logged %d warnings or errors, want at most 2", n)
	}
}

// hugeBody is a request body of n bytes that is never in memory: it makes
// bytes as the transport reads them and counts how many it was asked for.
type hugeBody struct {
	left int64
	read atomic.Int64
}

func (b *hugeBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.left))
	for i := range n {
		p[i] = ' '
	}
	b.left -= int64(n)
	b.read.Add(int64(n))
	return n, nil
}

const hugeSize = 300 << 20

// post sends a body of hugeSize bytes of JSON whitespace to path, with the
// length declared or not, and returns the status, the Connect error code
// if the answer is one, and how many body bytes the transport took.
func post(t *testing.T, rt http.RoundTripper, url string, declared bool) (status int, code string, sent int64) {
	t.Helper()
	body := &hugeBody{left: hugeSize}
	ctx, cancel := context.WithTimeout(context.Background(), failSafe)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, io.NopCloser(body))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	if declared {
		req.ContentLength = hugeSize
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connect-Protocol-Version", "1")
	res, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	raw, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	var ce struct{ Code string }
	_ = json.Unmarshal(raw, &ce)
	return res.StatusCode, ce.Code, body.read.Load()
}

// A huge request body, sent without a token, is refused with
// ResourceExhausted (413 outside the RPCs), without the server reading
// it: at once when its length is declared, after the limit otherwise.
func TestOversizedRequestRefusedUnread(t *testing.T) {
	s, _ := startSolo(t, func(c *Config) { c.MaxRequestBytes = minRequestBytes })
	// On the leader a write without a token reaches its handler, which
	// reads the body before the token is checked: the case to guard.
	waitLeading(t, s)
	limit := s.cfg.MaxRequestBytes
	base := "https://" + s.APIAddr()
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CA().Pool()}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	h3 := &http3.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CA().Pool()}}
	t.Cleanup(func() { _ = h3.Close() })
	rpc := base + droverv1connect.ModelServiceCreateModelProcedure
	// A body without a length is read up to the limit by the procedure's
	// handler, so this one is answered locally: a write would wait for
	// the server to lead (or, on a follower, be forwarded and cut off on
	// the way).
	local := base + droverv1connect.ClusterServiceGetServerInfoProcedure

	for _, tc := range []struct {
		name       string
		rt         http.RoundTripper
		url        string
		declared   bool
		wantStatus int
		wantCode   string
		maxSent    int64
	}{
		// A declared length is refused before the body: what the client
		// got out is what flow control let it send before the answer.
		{"rpc, declared, http/2", h2, rpc, true, http.StatusTooManyRequests, "resource_exhausted", limit},
		{"rpc, declared, http/3", h3, rpc, true, http.StatusTooManyRequests, "resource_exhausted", limit},
		// An undeclared length is read up to the limit, no further.
		{"rpc, undeclared, http/2", h2, local, false, http.StatusTooManyRequests, "resource_exhausted", 4 * limit},
		{"health, declared", h2, base + LivePath, true, http.StatusRequestEntityTooLarge, "", limit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, code, sent := post(t, tc.rt, tc.url, tc.declared)
			if status != tc.wantStatus || code != tc.wantCode {
				t.Errorf("status %d code %q, want %d %q", status, code, tc.wantStatus, tc.wantCode)
			}
			t.Logf("client sent %d of %d bytes", sent, hugeSize)
			if sent > tc.maxSent {
				t.Errorf("client sent %d bytes before the refusal, want at most %d", sent, tc.maxSent)
			}
		})
	}
}

// A refused request costs the server memory for its headers (or the
// limit, when its length is not declared), never for its body.
func TestRefusedRequestAllocatesFarLessThanItsBody(t *testing.T) {
	s, _ := startSolo(t, func(c *Config) { c.MaxRequestBytes = minRequestBytes })
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CA().Pool()}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	url := "https://" + s.APIAddr() + droverv1connect.ClusterServiceGetServerInfoProcedure
	post(t, h2, url, true) // warm up the connection and pools

	for _, tc := range []struct {
		name     string
		declared bool
		max      uint64 // bytes allocated per request, server and client
	}{
		{"declared", true, 2 << 20},
		// The server reads up to the limit (and its transport a window
		// more); what that allocates grows several-fold under the race
		// detector, whose sync.Pool drops buffers. Still a tenth of the
		// body at most, where reading it all would allocate it twice.
		{"undeclared", false, hugeSize / 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 10
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range n {
				if _, code, _ := post(t, h2, url, tc.declared); code != "resource_exhausted" {
					t.Fatalf("code %q, want resource_exhausted", code)
				}
			}
			runtime.ReadMemStats(&after)
			per := (after.TotalAlloc - before.TotalAlloc) / n
			t.Logf("%d bytes allocated per refused %d-byte request", per, hugeSize)
			if per > tc.max {
				t.Errorf("%d bytes allocated per refused request, want at most %d (the body is %d)", per, tc.max, hugeSize)
			}
		})
	}
}

// Plain HTTP to the HTTPS port gets a plain answer that says why; HTTPS
// through the guarded listener still speaks HTTP/2.
func TestPlainHTTPToAPIPortAnswered(t *testing.T) {
	s, _ := startSolo(t, nil)
	h2 := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CA().Pool()}, ForceAttemptHTTP2: true}
	t.Cleanup(h2.CloseIdleConnections)
	req, err := http.NewRequest(http.MethodGet, "https://"+s.APIAddr()+LivePath, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := h2.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 2 {
		t.Fatalf("GET %s: %s over %s, want 200 over HTTP/2", LivePath, res.Status, res.Proto)
	}

	c := dialFrom(t, "127.0.0.1", s.APIAddr())
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: drover\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(failSafe)); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(got), "HTTP/1.0 400") || !strings.Contains(string(got), "HTTPS") {
		t.Errorf("plain HTTP got %q, want a 400 that mentions HTTPS", got)
	}
	if n := rejected(t, s, listenerAPI, tlsguard.ReasonHandshake); n != 1 {
		t.Errorf("failed api handshakes counted = %v, want 1", n)
	}
}

// Garbage sent to the gossip port is refused by memberlist, which logs a
// line per packet; the server logs one per host a minute and counts every
// packet.
func TestGossipGarbageLoggedOncePerHostAndCounted(t *testing.T) {
	s, warns := startSolo(t, nil)
	before := warns.Load()
	conn, err := net.Dial("udp", s.cfg.GossipAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	const packets = 100
	for i := range packets {
		if _, err := conn.Write([]byte(fmt.Sprintf("not an encrypted gossip message %d, padded to look real", i))); err != nil {
			t.Fatal(err)
		}
	}
	// memberlist reads packets on its own goroutine: wait for the count.
	deadline := time.Now().Add(failSafe)
	for n := testutil.ToFloat64(s.metrics.gossipRefused); n != packets; n = testutil.ToFloat64(s.metrics.gossipRefused) {
		if time.Now().After(deadline) {
			t.Fatalf("drover_gossip_refused_messages_total = %v after %v, want %d", n, failSafe, packets)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := warns.Load() - before; n > 2 {
		t.Errorf("%d garbage packets from one host logged %d warnings or errors, want at most 2", packets, n)
	}
}
