package linkemu

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/droverhq/drover/internal/udpbuf"
)

var linkMbit = flag.Int64("link.mbit", 500, "BenchmarkQUICOverLink: the emulated link's cap in Mbit/s")

// BenchmarkQUICOverLink moves data with quic-go over an emulated 100 ms
// RTT link capped at -link.mbit (500 Mbit/s by default), once with
// quic-go's default flow-control windows and once with windows sized to
// the link's bandwidth-delay product, and reports the share of the cap
// each reaches (link-share). In the same run: the bare loopback transfer
// (what the machine can push at all) and the relay without shaping (what
// the emulator itself can carry; a cap near it measures the emulator, not
// QUIC).
//
//	go test -run=NONE -bench=QUICOverLink -benchtime=1x ./internal/linkemu/ -args -link.mbit=100
func BenchmarkQUICOverLink(b *testing.B) {
	capBytes := *linkMbit * 1_000_000 / 8
	size := int(capBytes*3) / (1 << 20) * (1 << 20) // about 3 s at the cap, whole MiB
	link := Shape{Delay: 50 * time.Millisecond, Rate: capBytes, QueueBytes: int(capBytes / 10)}
	back := Shape{Delay: 50 * time.Millisecond}
	bdp := uint64(capBytes / 10) // bytes in flight at 100 ms
	tuned := &quic.Config{
		InitialStreamReceiveWindow:     bdp,
		MaxStreamReceiveWindow:         2 * bdp,
		InitialConnectionReceiveWindow: bdp,
		MaxConnectionReceiveWindow:     3 * bdp,
	}
	for _, tc := range []struct {
		name   string
		shaped bool
		conf   *quic.Config
	}{
		{"loopback", false, nil},
		{"relay-unshaped", true, nil},
		{"link/default-windows", true, nil},
		{"link/bdp-windows", true, tuned},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				l, bk := link, back
				if tc.name == "relay-unshaped" {
					l, bk = Shape{}, Shape{}
				}
				d := quicTransfer(b, size, tc.shaped, l, bk, tc.conf)
				rate := float64(size) / d.Seconds()
				b.ReportMetric(rate/1e6, "MB/s")
				if tc.shaped {
					b.ReportMetric(rate/float64(capBytes), "link-share")
				}
			}
		})
	}
}

// quicTransfer sends size bytes from a quic-go server to a client, through
// a relay when shaped, and returns how long the client took to read them
// after the connection was up.
func quicTransfer(b *testing.B, size int, shaped bool, up, down Shape, conf *quic.Config) time.Duration {
	b.Helper()
	tlsConf := selfSignedTB(b)
	ln, err := quic.ListenAddr("127.0.0.1:0", tlsConf, conf)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		s, err := conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		buf := make([]byte, 1<<20)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := s.Write(buf); err != nil {
				return
			}
		}
		_ = s.Close()
	}()
	addr := ln.Addr().String()
	if shaped {
		// The link's cap is on the data's way (server → client).
		r, err := New(addr, down, up, 1)
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			_, st := r.Stats()
			b.ReportMetric(float64(st.QueueDrops), "queue-drops")
			_ = r.Close()
		}()
		addr = r.Addr()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, &tls.Config{RootCAs: tlsConf.RootCAs, ServerName: "localhost", NextProtos: []string{"test"}}, conf)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseWithError(0, "")
	s, err := conn.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Write([]byte("go")); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	n, err := io.Copy(io.Discard, s)
	if err != nil {
		b.Fatal(err)
	}
	if n != int64(size) {
		b.Fatal(fmt.Errorf("received %d of %d bytes", n, size))
	}
	return time.Since(start)
}

// BenchmarkRelayCapacity measures what the relay alone carries, without
// QUIC's congestion control in the way: a sender writes 1200-byte
// datagrams (QUIC's usual size) as fast as it can, straight to a sink and
// then through an unshaped relay to it, in the same run, and the sink
// counts what arrives. It reports the MB/s delivered each way and the
// relay's share of the direct figure.
func BenchmarkRelayCapacity(b *testing.B) {
	const count, size = 200_000, 1200
	for b.Loop() {
		direct := blast(b, count, size, false)
		relayed := blast(b, count, size, true)
		b.ReportMetric(direct/1e6, "direct-MB/s")
		b.ReportMetric(relayed/1e6, "relay-MB/s")
		b.ReportMetric(relayed/direct, "relay/direct")
	}
}

// blast sends count datagrams of size bytes to a sink, through a relay
// when relayed, and returns the bytes per second the sink received, from
// the first datagram sent to the last one received.
func blast(b *testing.B, count, size int, relayed bool) float64 {
	b.Helper()
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	_, _ = udpbuf.Raise(sink)
	type result struct {
		bytes int64
		last  time.Time
	}
	got := make(chan result)
	go func() {
		var r result
		buf := make([]byte, maxDatagram)
		for {
			// The sender is done once nothing came for a while.
			_ = sink.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := sink.Read(buf)
			if err != nil {
				got <- r
				return
			}
			r.bytes += int64(n)
			r.last = time.Now()
		}
	}()
	addr := sink.LocalAddr().String()
	if relayed {
		r, err := New(addr, Shape{}, Shape{}, 1)
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		addr = r.Addr()
	}
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := make([]byte, size)
	start := time.Now()
	for range count {
		_, _ = c.Write(p)
	}
	r := <-got
	if r.bytes == 0 {
		b.Fatal("the sink received nothing")
	}
	return float64(r.bytes) / r.last.Sub(start).Seconds()
}
