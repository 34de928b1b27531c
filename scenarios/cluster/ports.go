package cluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
)

// Servers get fixed ports from below the kernel's ephemeral range. A port
// the kernel handed out for ":0" can be handed out again, to anyone, once
// its owner lets go: an agent's QUIC socket or gossip pool would sooner or
// later take the port of a killed server, and the server could not start
// again on its own address. Ports the kernel never hands out on its own do
// not have that problem.
const (
	// lowestPort is where the picker starts looking.
	lowestPort = 20000
	// ephemeralRange is where Linux's ephemeral range is read.
	ephemeralRange = "/proc/sys/net/ipv4/ip_local_port_range"
)

// pickPort returns a loopback port that is free now on TCP and, with
// withUDP, on UDP too, from below the ephemeral range when the system has
// room there, and from the ephemeral range otherwise.
func pickPort(withUDP bool) (int, error) {
	first := 32768 // Linux's default
	if b, err := os.ReadFile(ephemeralRange); err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil {
			first = lo
		}
	}
	for range 100 {
		port := 0
		if first-lowestPort >= 1000 {
			port = lowestPort + rand.IntN(first-lowestPort)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		port = ln.Addr().(*net.TCPAddr).Port
		free := true
		if withUDP {
			pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				free = false
			} else {
				_ = pc.Close()
			}
		}
		_ = ln.Close()
		if free {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no loopback port free on TCP and UDP after 100 tries")
}
