// Package faultnet injects network faults (partitions, cut links, delay,
// killed nodes) into the real sockets between the nodes of an in-process
// cluster, so that every package's tests can exercise failures.
//
// Each node has a name. A node's listener is wrapped with Network.Listener
// and its outgoing connections are made with the dial function from
// Network.Dialer. The dialer learns the destination node from the address it
// dials (see Network.Register); the listener learns the source node from a
// short preamble the dialer writes first on every connection. Faults apply
// only to connections whose two ends were both made this way, through the
// same Network: a plain client talking to a wrapped listener is dropped,
// because its first bytes are not a valid preamble, and a wrapped dialer
// talking to a plain listener sends that listener a preamble it does not
// expect. A port that outside clients use too (a server's API) takes
// Network.SharedListener instead, which passes such strangers through
// untouched. For TLS, wrap below it: a TLS listener (tlsguard.NewListener
// or tls.NewListener) over Network.Listener, and tls.Client over a
// connection from the dial function.
//
// Faults are symmetric: if a cannot reach b, b cannot reach a. A fault
// closes every open connection it affects at once, and refuses new ones
// before dialing.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Errors returned by dial functions and by reads and writes on connections
// that a fault cut. Test for them with errors.Is.
var (
	// ErrPartitioned means a partition, Cut or Isolate separates the nodes.
	ErrPartitioned = errors.New("faultnet: partitioned")
	// ErrKilled means one of the nodes was killed with Kill.
	ErrKilled = errors.New("faultnet: node killed")
	// ErrUnknownAddr means a dial went to an address no node registered.
	ErrUnknownAddr = errors.New("faultnet: no node registered for address")
)

// Network holds the fault state of one in-process cluster and every
// connection made through it. The zero value is not usable; call New.
//
// All methods are safe for concurrent use. Methods that add a fault return
// only after every connection the fault affects has been cut.
type Network struct {
	mu       sync.Mutex          // guards the fields below
	addrs    map[string]string   // dial address → node
	groups   map[string]int      // node → partition group; absent nodes are in none
	cuts     map[link]struct{}   // pairs cut by Cut
	isolated map[string]struct{} // nodes cut off by Isolate
	killed   map[string]struct{} // nodes stopped by Kill
	delays   map[link]time.Duration
	delayAll time.Duration
	conns    map[*conn]struct{} // open connections, both ends
}

// link is an unordered pair of nodes: a <= b.
type link struct{ a, b string }

func linkOf(a, b string) link {
	if b < a {
		a, b = b, a
	}
	return link{a, b}
}

// New returns a network with no faults.
func New() *Network {
	return &Network{
		addrs:    make(map[string]string),
		cuts:     make(map[link]struct{}),
		isolated: make(map[string]struct{}),
		killed:   make(map[string]struct{}),
		delays:   make(map[link]time.Duration),
		conns:    make(map[*conn]struct{}),
	}
}

// Register records that a dial to addr reaches node. Listener registers the
// address of the listener it wraps; call Register for any other address
// that leads to the node, such as an advertised address. Addresses are
// compared as strings, so "localhost:7000" and "127.0.0.1:7000" are
// different addresses.
func (n *Network) Register(node, addr string) {
	checkNode(node)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.addrs[addr] = node
}

// Partition splits the nodes into groups: nodes in different groups cannot
// talk to each other. Nodes in no group are not affected. A new partition
// replaces the previous one; Cut and Isolate stay in force. Partition panics
// if a node is listed in two groups.
func (n *Network) Partition(groups ...[]string) {
	m := make(map[string]int)
	for i, g := range groups {
		for _, node := range g {
			if j, dup := m[node]; dup && j != i {
				panic(fmt.Sprintf("faultnet: Partition: node %q in groups %d and %d", node, j, i))
			}
			m[node] = i
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.groups = m
	n.enforceLocked()
}

// Cut stops all traffic between a and b, both ways, until Heal.
func (n *Network) Cut(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cuts[linkOf(a, b)] = struct{}{}
	n.enforceLocked()
}

// Isolate cuts node off from every other node until Heal.
func (n *Network) Isolate(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.isolated[node] = struct{}{}
	n.enforceLocked()
}

// Heal removes every partition, Cut and Isolate. It does not revive killed
// nodes or remove delays.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.groups = nil
	clear(n.cuts)
	clear(n.isolated)
}

// Kill closes every connection to or from node and refuses new ones, as if
// the node's process had died, until Revive. The node's listeners stay open
// but drop whatever they accept.
func (n *Network) Kill(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.killed[node] = struct{}{}
	n.enforceLocked()
}

// Revive undoes Kill.
func (n *Network) Revive(node string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.killed, node)
}

// SetDelay adds d of latency to data written between a and b, in both
// directions, on top of any SetDelayAll delay. A zero or negative d removes
// it. It applies to data written from now on, on open and new connections.
func (n *Network) SetDelay(a, b string, d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d <= 0 {
		delete(n.delays, linkOf(a, b))
		return
	}
	n.delays[linkOf(a, b)] = d
}

// SetDelayAll adds d of latency to data written between any two nodes, on
// top of any SetDelay delay for the pair. A zero or negative d removes it.
func (n *Network) SetDelayAll(d time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.delayAll = max(d, 0)
}

// Blocked reports whether a fault stops traffic between a and b.
func (n *Network) Blocked(a, b string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.blockedLocked(a, b) != nil
}

// blockedLocked returns why a and b cannot talk, or nil if they can.
func (n *Network) blockedLocked(a, b string) error {
	for _, node := range []string{a, b} {
		if _, ok := n.killed[node]; ok {
			return fmt.Errorf("%w: %s (%s -> %s)", ErrKilled, node, a, b)
		}
	}
	if a == b {
		return nil
	}
	_, ia := n.isolated[a]
	_, ib := n.isolated[b]
	_, cut := n.cuts[linkOf(a, b)]
	ga, oka := n.groups[a]
	gb, okb := n.groups[b]
	if ia || ib || cut || (oka && okb && ga != gb) {
		return fmt.Errorf("%w: %s -> %s", ErrPartitioned, a, b)
	}
	return nil
}

// enforceLocked cuts every open connection that a fault now blocks.
func (n *Network) enforceLocked() {
	for c := range n.conns {
		if err := n.blockedLocked(c.local, c.remote); err != nil {
			delete(n.conns, c)
			c.cut(err)
		}
	}
}

func (n *Network) delayLocked(a, b string) time.Duration {
	return n.delayAll + n.delays[linkOf(a, b)]
}

func (n *Network) delay(a, b string) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.delayLocked(a, b)
}

// track wraps raw as a connection from local to remote and records it, or
// returns why the nodes cannot talk. Checking and recording under one lock
// means a fault added at any moment either sees the connection and cuts it,
// or is seen here.
func (n *Network) track(raw net.Conn, local, remote string) (*conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.blockedLocked(local, remote); err != nil {
		return nil, err
	}
	c := newConn(raw, n, local, remote)
	n.conns[c] = struct{}{}
	return c, nil
}

func (n *Network) untrack(c *conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.conns, c)
}

// numConns returns how many connection ends are open, for tests.
func (n *Network) numConns() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

// Dialer returns a dial function for node's outgoing connections, shaped
// like net.Dialer.DialContext. The destination node is looked up from addr
// (see Register); a blocked destination fails at once, without dialing.
// Errors are *net.OpError with Op "dial", as a real failed dial's are, so
// callers that tell "never sent" from "sent, then lost" see a fault as the
// former; errors.Is finds the faultnet sentinel inside.
func (n *Network) Dialer(node string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	checkNode(node)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialErr := func(err error) error {
			return &net.OpError{Op: "dial", Net: network, Addr: dialAddr{network, addr}, Err: err}
		}
		n.mu.Lock()
		remote, ok := n.addrs[addr]
		var err error
		if !ok {
			err = fmt.Errorf("%w: %s (dialing from %s)", ErrUnknownAddr, addr, node)
		} else {
			err = n.blockedLocked(node, remote)
		}
		n.mu.Unlock()
		if err != nil {
			return nil, dialErr(err)
		}
		var d net.Dialer
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := writePreamble(ctx, raw, node); err != nil {
			raw.Close()
			return nil, dialErr(fmt.Errorf("faultnet: preamble %s -> %s: %w", node, remote, err))
		}
		c, err := n.track(raw, node, remote)
		if err != nil {
			raw.Close()
			return nil, dialErr(err)
		}
		return c, nil
	}
}

// dialAddr is the address a dial went to, for net.OpError.
type dialAddr struct{ network, addr string }

func (a dialAddr) Network() string { return a.network }
func (a dialAddr) String() string  { return a.addr }

// Listener wraps inner, the listener of node, and registers its address
// for node. Accept returns only connections made by a Dialer of this
// network whose source node may talk to node; it drops any other connection
// and waits for the next. Closing the returned listener closes inner.
func (n *Network) Listener(node string, inner net.Listener) net.Listener {
	checkNode(node)
	n.Register(node, inner.Addr().String())
	return &listener{Listener: inner, n: n, node: node}
}

// SharedListener is Listener for a port that other nodes and outside
// clients both use, such as a server's API: connections from this
// network's dialers are subject to its faults as with Listener, and any
// other connection is returned as it is, never cut or delayed (clients
// reach every node whatever the partition). A stranger that says nothing
// holds up Accept for up to five seconds, so use it only for protocols
// where the client speaks first, such as TLS.
func (n *Network) SharedListener(node string, inner net.Listener) net.Listener {
	checkNode(node)
	n.Register(node, inner.Addr().String())
	return &listener{Listener: inner, n: n, node: node, shared: true}
}

func checkNode(node string) {
	if node == "" || len(node) > maxNodeName {
		panic(fmt.Sprintf("faultnet: node name %q must be 1 to %d bytes", node, maxNodeName))
	}
}
