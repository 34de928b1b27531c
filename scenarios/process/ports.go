package process

import (
	"fmt"
	"io"
	"net"
)

// portPicker hands out loopback ports that are free on TCP and, when asked,
// on UDP too. It holds every port it gave until release, so one picker
// never hands out the same port twice; after release another program could
// take a port before the server binds it, which on loopback in a test is
// rare enough to accept.
type portPicker struct {
	held []io.Closer
}

// pick returns a free port; withUDP also reserves the same UDP port (the
// API serves HTTP/3 and gossip uses UDP on their TCP port).
func (p *portPicker) pick(withUDP bool) (int, error) {
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("pick a free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if !withUDP {
			p.held = append(p.held, ln)
			return port, nil
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			_ = ln.Close()
			continue
		}
		p.held = append(p.held, ln, pc)
		return port, nil
	}
	return 0, fmt.Errorf("pick a free port: no port free on both TCP and UDP after 50 tries")
}

// release frees every held port so the servers can bind them.
func (p *portPicker) release() {
	for _, c := range p.held {
		_ = c.Close()
	}
	p.held = nil
}
