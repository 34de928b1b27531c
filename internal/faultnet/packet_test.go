package faultnet

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestPacketConnBlocks(t *testing.T) {
	listen := func() net.PacketConn {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc
	}
	var blocked atomic.Bool
	b := listen()
	other := listen()
	// Only the way to and from b is cut; other stays reachable.
	a := NewPacketConn(listen(), func(peer net.Addr) bool {
		return blocked.Load() && peer.String() == b.LocalAddr().String()
	})

	recv := func(pc net.PacketConn, wait time.Duration) (string, error) {
		buf := make([]byte, 64)
		pc.SetReadDeadline(time.Now().Add(wait))
		n, _, err := pc.ReadFrom(buf)
		return string(buf[:n]), err
	}
	send := func(from, to net.PacketConn, msg string) {
		if _, err := from.WriteTo([]byte(msg), to.LocalAddr()); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
	}

	send(a, b, "a1")
	if got, err := recv(b, 5*time.Second); err != nil || got != "a1" {
		t.Fatalf("open: b got %q, %v; want a1", got, err)
	}
	send(b, a, "b1")
	if got, err := recv(a, 5*time.Second); err != nil || got != "b1" {
		t.Fatalf("open: a got %q, %v; want b1", got, err)
	}

	blocked.Store(true)
	send(a, b, "lost-out")
	if got, err := recv(b, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked: b got %q, %v; want nothing", got, err)
	}
	send(b, a, "lost-in")
	if got, err := recv(a, 200*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked: a got %q, %v; want nothing", got, err)
	}
	send(a, other, "a-other")
	if got, err := recv(other, 5*time.Second); err != nil || got != "a-other" {
		t.Fatalf("blocked from b only: other got %q, %v; want a-other", got, err)
	}
	send(other, a, "other-a")
	if got, err := recv(a, 5*time.Second); err != nil || got != "other-a" {
		t.Fatalf("blocked from b only: a got %q, %v; want other-a", got, err)
	}

	blocked.Store(false)
	send(b, a, "b2")
	if got, err := recv(a, 5*time.Second); err != nil || got != "b2" {
		t.Fatalf("healed: a got %q, %v; want b2 (the datagram sent while blocked must stay lost)", got, err)
	}
}
