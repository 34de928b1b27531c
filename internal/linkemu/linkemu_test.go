package linkemu

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// echo starts a UDP server that sends every datagram back.
func echo(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDP(buf[:n], from)
		}
	}()
	return c.LocalAddr().String()
}

func relay(t *testing.T, target string, up, down Shape) *Relay {
	t.Helper()
	r, err := New(target, up, down, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func dial(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// A round trip through the relay takes at least both delays: nothing can
// arrive before the link would have carried it. (Only the lower bound is
// checked; how late a loaded machine delivers is not the relay's doing.)
func TestDelayIsAtLeastTheShape(t *testing.T) {
	r := relay(t, echo(t), Shape{Delay: 40 * time.Millisecond}, Shape{Delay: 30 * time.Millisecond})
	c := dial(t, r.Addr())
	buf := make([]byte, 16)
	for i := range 3 {
		start := time.Now()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("round trip %d: %v", i, err)
		}
		if rtt := time.Since(start); rtt < 70*time.Millisecond {
			t.Fatalf("round trip %d took %v, under the 70ms the two delays add up to", i, rtt)
		}
	}
	up, down := r.Stats()
	if up.Packets != 3 || down.Packets != 3 {
		t.Fatalf("stats up %+v down %+v, want 3 datagrams each way", up, down)
	}
}

// Loss drops about the share of datagrams asked for, and the seed makes
// the choice repeatable.
func TestLossDropsItsShare(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r := relay(t, sink.LocalAddr().String(), Shape{Loss: 0.2}, Shape{})
	c := dial(t, r.Addr())
	const n = 2000
	for range n {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel may drop some of a burst before the relay reads them;
	// the share is taken of what entered the link.
	up := settled(t, r)
	if up.Sent < n/2 {
		t.Fatalf("only %d of %d datagrams reached the relay", up.Sent, n)
	}
	if share := float64(up.Lost) / float64(up.Sent); share < 0.15 || share > 0.25 {
		t.Fatalf("lost %d of %d datagrams (%.1f%%) at 20%% loss", up.Lost, up.Sent, 100*share)
	}
}

// Jitter reorders datagrams sent close together, as a real path does.
func TestJitterReorders(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r := relay(t, sink.LocalAddr().String(), Shape{Delay: 20 * time.Millisecond, Jitter: 15 * time.Millisecond}, Shape{})
	c := dial(t, r.Addr())
	const n = 200
	for i := range n {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(i))
		if _, err := c.Write(b[:]); err != nil {
			t.Fatal(err)
		}
	}
	reordered, last := 0, -1
	buf := make([]byte, 16)
	for range n {
		_ = sink.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := sink.Read(buf); err != nil {
			t.Fatal(err)
		}
		seq := int(binary.BigEndian.Uint32(buf))
		if seq < last {
			reordered++
		}
		last = max(last, seq)
	}
	if reordered == 0 {
		t.Fatal("no datagram arrived out of order with 15ms jitter")
	}
}

// A capped link delivers no faster than its rate, and a sender that
// overruns its queue loses what does not fit.
func TestRateCapsAndQueueDrops(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	const rate = 1 << 20 // 1 MiB/s
	r := relay(t, sink.LocalAddr().String(), Shape{Rate: rate, QueueBytes: 128 << 10}, Shape{})
	c := dial(t, r.Addr())
	payload := make([]byte, 1000)
	start := time.Now()
	for range 1000 { // 1 MB at once: far more than the 128 KiB queue
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
	}
	up := settled(t, r)
	if up.QueueDrops == 0 {
		t.Fatalf("a 1 MB burst into a 128 KiB queue dropped nothing: %+v", up)
	}
	if min := time.Duration(float64(up.Bytes) / rate * float64(time.Second)); time.Since(start) < min*9/10 {
		t.Fatalf("delivered %d bytes in %v, faster than %d B/s allows (%v)", up.Bytes, time.Since(start), rate, min)
	}
}

// QUIC gets a transfer through a long, lossy, reordering path: the link
// the artifact scenarios put between agents and servers.
func TestQUICTransferOverLossyLink(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 4 MiB over an emulated 100ms, 1%-loss link (several seconds); runs without -short")
	}
	tlsConf := selfSigned(t)
	ln, err := quic.ListenAddr("127.0.0.1:0", tlsConf, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 4 << 20
	want := make([]byte, size)
	_, _ = rand.Read(want)
	go func() {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		s, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		_, _ = s.Write(want)
		_ = s.Close()
	}()
	link := Shape{Delay: 50 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01}
	r := relay(t, ln.Addr().String(), link, link)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := quic.DialAddr(ctx, r.Addr(), &tls.Config{RootCAs: tlsConf.RootCAs, ServerName: "localhost", NextProtos: []string{"test"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("go")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes that differ from the %d sent", len(got), len(want))
	}
	up, down := r.Stats()
	t.Logf("4 MiB in %v over 100ms RTT at 1%% loss; up %+v, down %+v", time.Since(start), up, down)
	if down.Lost == 0 {
		t.Fatal("the link lost nothing: the test did not exercise loss")
	}
}

func selfSigned(t *testing.T) *tls.Config { return selfSignedTB(t) }

func selfSignedTB(t testing.TB) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		RootCAs:      pool, NextProtos: []string{"test"},
	}
}

// settled waits until the up direction has delivered or dropped all it
// took in and has taken nothing new for a while, and returns its stats.
func settled(t *testing.T, r *Relay) Stats {
	t.Helper()
	var last Stats
	stable := 0
	waitFor(t, func() bool {
		up, _ := r.Stats()
		if up == last && up.Sent > 0 && up.Sent == up.Packets+up.Lost+up.QueueDrops {
			stable++
		} else {
			stable = 0
		}
		last = up
		return stable >= 20 // 200ms without change
	})
	return last
}

// waitFor polls cond until it holds, or fails the test after a while.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
