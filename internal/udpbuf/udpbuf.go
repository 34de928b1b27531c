// Package udpbuf sizes the UDP socket buffers QUIC needs and words the one
// warning an operator should see when the kernel caps them: with small
// buffers, transfers over long or lossy links stall far below the link's
// speed, and nothing else says why.
package udpbuf

import (
	"fmt"
	"net"
	"syscall"
)

// Wanted is the buffer size quic-go asks the kernel for, each way, and
// what a socket needs to keep a fast link with a long round trip full.
const Wanted = 7 << 20

// SysctlHint is what an operator runs (as root) to raise the kernel's caps
// so every program may ask for Wanted. The values leave some headroom
// above Wanted.
const SysctlHint = "sysctl -w net.core.rmem_max=7500000 net.core.wmem_max=7500000"

// Sizes is what the kernel granted a socket, in bytes, as getsockopt
// reports it.
type Sizes struct {
	Read, Write int
}

// Raise asks the kernel for Wanted bytes of receive and send buffer on c
// and returns what it granted. A kernel that caps the sizes is not an
// error: Warning says what to do about it.
func Raise(c *net.UDPConn) (Sizes, error) {
	// Set errors are ignored: the sizes read back are what counts.
	_ = c.SetReadBuffer(Wanted)
	_ = c.SetWriteBuffer(Wanted)
	raw, err := c.SyscallConn()
	if err != nil {
		return Sizes{}, fmt.Errorf("udp buffers: %w", err)
	}
	var s Sizes
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		s.Read, sockErr = getsockoptInt(fd, syscall.SO_RCVBUF)
		if sockErr == nil {
			s.Write, sockErr = getsockoptInt(fd, syscall.SO_SNDBUF)
		}
	})
	if err == nil {
		err = sockErr
	}
	if err != nil {
		return Sizes{}, fmt.Errorf("udp buffers: read back sizes: %w", err)
	}
	return s, nil
}

// Probe opens a UDP socket on loopback only to learn what the kernel
// grants, for programs (the agent) whose QUIC sockets are made by the
// library as it dials: the caps are the kernel's, the same for every
// socket.
func Probe() (Sizes, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return Sizes{}, fmt.Errorf("udp buffers: probe socket: %w", err)
	}
	defer c.Close()
	return Raise(c)
}

// Warning returns the sentence to log when s falls short of Wanted either
// way, or "" when it does not.
func Warning(s Sizes) string {
	if s.Read >= Wanted && s.Write >= Wanted {
		return ""
	}
	return fmt.Sprintf("the kernel caps UDP socket buffers at %d KiB receive and %d KiB send, below the %d KiB QUIC needs: "+
		"transfers over long or lossy links will stall far below the link's speed; raise the caps with `%s` "+
		"(and persist them in /etc/sysctl.d/)", s.Read/1024, s.Write/1024, Wanted/1024, SysctlHint)
}
