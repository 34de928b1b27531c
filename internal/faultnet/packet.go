package faultnet

import (
	"errors"
	"net"
)

// PacketConn wraps a datagram socket so that a scenario can cut it off
// from some or all peers: while blocked(peer) reports true, datagrams
// written to the peer are dropped as a lossy network would drop them (the
// write succeeds) and datagrams from it are discarded. It is how QUIC
// clients such as in-process agents are partitioned, and how a killed
// server is made as silent as a dead host; TCP between servers goes
// through a Network instead.
type PacketConn struct {
	net.PacketConn
	blocked func(peer net.Addr) bool
}

// NewPacketConn wraps inner; blocked is called for every datagram and must
// be cheap and safe for concurrent use.
func NewPacketConn(inner net.PacketConn, blocked func(peer net.Addr) bool) *PacketConn {
	return &PacketConn{PacketConn: inner, blocked: blocked}
}

// WriteTo sends p unless the way to addr is blocked.
func (c *PacketConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if c.blocked(addr) {
		return len(p), nil
	}
	return c.PacketConn.WriteTo(p, addr)
}

// ReadFrom returns the next datagram that arrives from a peer that is not
// blocked.
func (c *PacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, addr, err := c.PacketConn.ReadFrom(p)
		if err != nil || !c.blocked(addr) {
			return n, addr, err
		}
	}
}

// SetReadBuffer sizes the socket's receive buffer when the wrapped
// connection can, as QUIC asks of every socket it uses.
func (c *PacketConn) SetReadBuffer(bytes int) error {
	if s, ok := c.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		return s.SetReadBuffer(bytes)
	}
	return errors.ErrUnsupported
}

// SetWriteBuffer sizes the socket's send buffer when the wrapped
// connection can.
func (c *PacketConn) SetWriteBuffer(bytes int) error {
	if s, ok := c.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		return s.SetWriteBuffer(bytes)
	}
	return errors.ErrUnsupported
}
