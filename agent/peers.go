package agent

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/droverhq/drover/agent/peer"
)

// DefaultPeerAddr is where the agent serves chunks to its site's other
// agents unless told otherwise, on UDP: the port after the gossip pool's.
const DefaultPeerAddr = "0.0.0.0:7948"

// peerAnnounceTimeout bounds the gossip of a changed peer address.
const peerAnnounceTimeout = time.Second

// SitePeers returns the live agents of this node's site that serve
// chunks, this node included when it does, sorted by node id: what a
// peer.SiteSource routes chunks over. It returns nil without a site
// gossip pool.
func (a *Agent) SitePeers() []peer.Peer {
	p := a.pool.Load()
	if p == nil {
		return nil
	}
	var out []peer.Peer
	for _, m := range p.Members() {
		if m.PeerAddr != "" {
			out = append(out, peer.Peer{ID: m.Name, Addr: m.PeerAddr})
		}
	}
	return out
}

// AnnouncePeerAddr tells the site's other agents that this node serves
// chunks at listen, the address its peer server listens on ("" for
// nowhere). An unspecified IP (0.0.0.0) is replaced by the IP the gossip
// pool advertises, which is where the site's agents reach this machine.
func (a *Agent) AnnouncePeerAddr(listen string) error {
	p := a.pool.Load()
	if p == nil {
		return fmt.Errorf("announce peer address: no site gossip pool")
	}
	addr, err := advertisedPeerAddr(listen, p.Addr())
	if err != nil {
		return err
	}
	return p.SetPeerAddr(addr, peerAnnounceTimeout)
}

// advertisedPeerAddr returns the address peers dial for a peer server
// listening on listen, given the gossip pool's advertised address.
func advertisedPeerAddr(listen, gossip string) (string, error) {
	if listen == "" {
		return "", nil
	}
	ip, port, err := splitIPPort(listen)
	if err != nil || port == 0 {
		return "", fmt.Errorf("peer address %q: want the IP:PORT the server listens on", listen)
	}
	if ip.IsUnspecified() {
		gip, _, err := splitIPPort(gossip)
		if err != nil {
			return "", fmt.Errorf("gossip address %q: %w", gossip, err)
		}
		ip = gip
	}
	return netip.AddrPortFrom(ip, uint16(port)).String(), nil
}

// PeerAddrNextTo returns the default peer address for a gossip pool at
// gossip: the same IP, the next port (the one before for 65535; port 0
// stays 0, for a free port).
func PeerAddrNextTo(gossip string) string {
	ip, port, err := splitIPPort(gossip)
	if err != nil {
		return DefaultPeerAddr
	}
	if port != 0 {
		port++
		if port > 65535 {
			port = 65534
		}
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}
