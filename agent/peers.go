package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/agent/peer"
)

// Chunk sharing between the agents of a site (agent/peer): each agent
// serves the chunks in its cache to the others at --peer-addr, gossips
// that address in the site pool's metadata, and fetches each chunk it
// lacks from the site peer that owns it before asking the servers. The
// pieces the agent owns (its chunk cache, the verified manifests and the
// server sources) are handed to startPeerNode by whoever pulls.

// DefaultPeerAddr is where the agent serves chunks to its site's other
// agents unless told otherwise, on UDP: the port after the gossip pool's.
const DefaultPeerAddr = "0.0.0.0:7948"

// peerAnnounceTimeout bounds the gossip of a changed peer address.
const peerAnnounceTimeout = time.Second

// peerNodeConfig is what startPeerNode needs beyond the agent itself.
type peerNodeConfig struct {
	// ID is the node id, CA the cluster CA, Certificate the node's
	// current certificate (it changes at renewal).
	ID          string
	CA          *x509.Certificate
	Certificate func() *tls.Certificate
	// Cache is the agent's chunk cache.
	Cache *fetch.Cache
	// Manifests gives versions' manifests, verified against the
	// cluster's publishing keys.
	Manifests peer.Manifests
	// Upstream gives server sources for a version: servers only, never
	// a site source, or owners would ask each other in circles.
	Upstream peer.Upstream
}

// startPeerNode starts serving chunks to the site's other agents at
// --peer-addr and announces it in the site gossip pool. It returns nil and
// no error when peer serving is off or the node has no pool: pulls then
// go to the servers alone. The caller closes the node it returns, after
// announcing that it serves no more (AnnouncePeerAddr("")).
func (a *Agent) startPeerNode(pc peerNodeConfig) (*peer.Node, error) {
	pool := a.pool.Load()
	if a.cfg.PeerAddr == "" || pool == nil {
		return nil, nil
	}
	listen := a.cfg.PeerAddr
	if listen == DefaultPeerAddr && a.cfg.GossipAddr != DefaultGossipAddr {
		// The default follows a gossip address set elsewhere, as the
		// command line's does: several agents on one machine each get
		// their own port.
		listen = PeerAddrNextTo(a.cfg.GossipAddr)
	}
	n, err := peer.New(peer.Config{
		ID:                   pc.ID,
		CA:                   pc.CA,
		Certificate:          pc.Certificate,
		Cache:                pc.Cache,
		Manifests:            pc.Manifests,
		Upstream:             pc.Upstream,
		UploadBytesPerSecond: a.cfg.PeerUploadBytesPerSecond,
		// Only live members of the site's pool fetch from this node:
		// a node of another site, or one that left, goes to its servers.
		Authorize: func(id string) bool {
			p := a.pool.Load()
			return p != nil && p.isMember(id)
		},
		Logger: a.log,
	})
	if err != nil {
		return nil, err
	}
	addr, err := n.Listen(listen)
	if err == nil {
		err = a.AnnouncePeerAddr(addr.String())
	}
	if err != nil {
		_ = n.Close()
		return nil, withHint(err, "give the peer server a free UDP address with --peer-addr IP:PORT, or turn it off with --peer-addr off")
	}
	return n, nil
}

// siteSource returns the source that gets a version's chunks from the
// site's peers through n, to put before the server sources; nil when n is.
func (a *Agent) siteSource(n *peer.Node, model string, version uint64) fetch.Source {
	if n == nil {
		return nil
	}
	return n.Source(model, version, a.SitePeers)
}

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
