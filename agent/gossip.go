package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/droverhq/drover/internal/logging"
)

// The site gossip pool: the agents of one site form a memberlist pool,
// encrypted with a key every node of the site got at enrollment. Peers find
// each other through it, and a member it declares failed is reported to the
// control plane as a suspect, which makes the leader wait less for that
// node's next heartbeat; only the leader's heartbeat TTL marks a node down.
//
// What memberlist does not tell: in v0.7.0 the State of the Node values it
// hands out (Members, NotifyLeave) is always StateAlive, because its
// private nodeState shadows that field (hashicorp/memberlist#293, fix
// proposed in #321). So the pool cannot see which members are merely
// suspect, nor tell a member that left from one that failed. It reports
// the members memberlist declared failed: about 5s after a crash in a
// small pool, 10-15s at a few hundred members (the suspicion timeout grows
// with log N). That is later than a suspect state would be, but the leader
// acts on it only once the node has also missed two heartbeats, which at
// the shortest TTL (10s) is about as late. A member that stops on purpose
// says so first in its node metadata, the way Serf announces a leave
// intent, so that its departure is not taken for a failure.

// Pool tuning. The base is memberlist.DefaultLANConfig, which is what
// Consul's LAN pools run with (its gossip_lan defaults are the same
// values: probe 1s with a 500ms timeout, gossip to 3 nodes every 200ms,
// retransmit and suspicion multipliers 4), in pools of thousands. Its
// costs per member do not grow with the pool: one probe a second, gossip
// only while there is news, and a full state exchange whose interval
// memberlist itself stretches once the pool passes 32 members. Suspicion
// timeouts grow with log(N) (about 10s at 300 members) and Lifeguard
// (awareness) keeps a slow member from accusing healthy ones. The
// settings below are the only ones changed, each with its reason.
const (
	// deadNodeReclaimTime lets a node that was declared dead rejoin under
	// its name from another address (a new DHCP lease, a restart on port
	// 0) after this long; memberlist's default, zero, refuses it forever.
	// Consul uses 30s for the same reason.
	deadNodeReclaimTime = 30 * time.Second
	// poolLeaveTimeout bounds a graceful leave, metadata update and leave
	// broadcast together, so that stopping the agent stays quick.
	poolLeaveTimeout = time.Second
	// maxReportedSuspects bounds the suspects one heartbeat carries; the
	// leader reads no more than that many either.
	maxReportedSuspects = 64
	// poolBindTries is how often a pool on port 0 tries for a port free
	// for both TCP and UDP, as memberlist does for its own transport.
	poolBindTries = 10
)

// settleDelays are when, after it joined, a member exchanges its whole
// state once more with a random other member. Many members joining at
// once (a site's agents starting together) leave some with partial views:
// news gossiped while they were on another island of the forming pool,
// with the few retransmissions a small pool gets. memberlist repairs that
// only with its periodic full exchange, every 30s and stretched with the
// pool's size (150s at 300 members). A few exchanges soon after, by every
// member that joined, spread every view to every member within seconds,
// for a few state transfers (about 100 bytes a member) per join.
var settleDelays = []time.Duration{time.Second, 3 * time.Second, 10 * time.Second}

// Node metadata the pool gossips: a format version, then flags, then
// fields, each a tag byte, a length byte and that many bytes. Readers skip
// the fields they do not know, and agents that knew none read the version
// and the flags alone, so a field is added without a new version; a new
// version is for a change that old readers must not misread.
const (
	poolMetaVersion = 1
	// poolMetaLeaving says the member is stopping on purpose: its
	// departure that follows is not a failure.
	poolMetaLeaving = 1 << 0
	// poolMetaPeerAddr is the field holding the address, IP:PORT (UDP),
	// where the member serves chunks to its site peers (agent/peer).
	poolMetaPeerAddr = 1
)

// DefaultGossipAddr is where the site gossip pool listens unless told
// otherwise, on TCP and UDP.
const DefaultGossipAddr = "0.0.0.0:7947"

// poolConfig configures a gossipPool.
type poolConfig struct {
	// Name is the member's name in the pool: the node id.
	Name string
	// Site names the pool; a pool only ever holds members of one site.
	Site string
	// Key encrypts every packet and stream (16, 24 or 32 bytes; the
	// control plane hands out 32, for AES-256).
	Key []byte
	// Bind is where the pool listens, IP:PORT; port 0 picks a free port.
	Bind string
	// Advertise is the IP:PORT other members dial; "" takes the bind
	// address, or for an unspecified one (0.0.0.0) a private address of
	// this machine, as memberlist chooses.
	Advertise string
	// PeerAddr is where this member serves chunks to its site peers,
	// IP:PORT, as they dial it; "" for nowhere. SetPeerAddr changes it.
	PeerAddr string
	// Logger receives the pool's and memberlist's logs.
	Logger *slog.Logger
	// Now stamps when a member was declared failed; nil means time.Now.
	// memberlist itself runs on real time.
	Now func() time.Time
}

// gossipPool is this node's membership of its site's gossip pool.
//
// Its methods are safe for concurrent use. memberlist calls the pool's
// delegates with its own locks held, so the pool never calls memberlist
// while holding mu.
type gossipPool struct {
	ml   *memberlist.Memberlist
	name string
	addr string // advertised, IP:PORT
	log  *slog.Logger
	now  func() time.Time

	// window is how long a member memberlist declared failed stays a
	// suspect, in nanoseconds: one heartbeat TTL, as long as the leader
	// keeps a suspicion without a new report.
	window   atomic.Int64
	leaving  atomic.Bool            // this member is leaving: NodeMeta says so
	peerAddr atomic.Pointer[string] // where it serves chunks: NodeMeta says so

	cancel   context.CancelFunc // stops the joiner and cuts its dials short
	joinReq  chan []string      // capacity 1: the latest join the joiner has not taken
	joined   chan struct{}      // capacity 1: a join succeeded, settling starts over
	joinDone chan struct{}      // closed when the joiner has returned

	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex           // guards the fields below
	members map[string]string    // live members (itself included) by name: their address
	peers   map[string]string    // live members that serve chunks, by name: where
	failed  map[string]time.Time // members declared failed, and when
	leavers map[string]bool      // members whose metadata says they are leaving
}

// newGossipPool binds the pool's address and starts it, alone; Join
// brings it together with its site's other members. Close stops it.
func newGossipPool(cfg poolConfig) (*gossipPool, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "gossip", "site", cfg.Site)
	bindIP, bindPort, err := splitIPPort(cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.Bind, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &gossipPool{
		name:     cfg.Name,
		log:      log,
		now:      cfg.Now,
		cancel:   cancel,
		joinReq:  make(chan []string, 1),
		joined:   make(chan struct{}, 1),
		joinDone: make(chan struct{}),
		members:  map[string]string{},
		peers:    map[string]string{},
		failed:   map[string]time.Time{},
		leavers:  map[string]bool{},
	}
	if p.now == nil {
		p.now = time.Now
	}
	p.window.Store(int64(defaultTTL))
	p.peerAddr.Store(&cfg.PeerAddr)

	// Anyone who reaches the pool's port can make memberlist log a line
	// per bad packet; the adapter keeps that to one a minute per host.
	stdlog := logging.GossipLogAdapter(log, slog.LevelInfo, nil)
	tries := 1
	if bindPort == 0 {
		// The kernel picks a port free for TCP; UDP may have it taken.
		tries = poolBindTries
	}
	var nt *memberlist.NetTransport
	for range tries {
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{bindIP.String()}, BindPort: bindPort, Logger: stdlog,
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("gossip address %s: %w", cfg.Bind, err)
	}
	conf := memberlist.DefaultLANConfig()
	conf.Name = cfg.Name
	conf.Transport = &poolTransport{NetTransport: nt, ctx: ctx}
	conf.BindAddr = bindIP.String()
	conf.BindPort = nt.GetAutoBindPort()
	conf.AdvertisePort = conf.BindPort
	if cfg.Advertise != "" {
		ip, port, err := splitIPPort(cfg.Advertise)
		if err != nil {
			_ = nt.Shutdown()
			cancel()
			return nil, fmt.Errorf("gossip advertise address %q: %w", cfg.Advertise, err)
		}
		conf.AdvertiseAddr, conf.AdvertisePort = ip.String(), port
	}
	conf.SecretKey = cfg.Key
	conf.GossipVerifyIncoming = true
	conf.GossipVerifyOutgoing = true
	// The label is authenticated with every packet: pools of two sites
	// refuse each other's traffic by name as well as by key.
	conf.Label = "drover-site/" + cfg.Site
	conf.DeadNodeReclaimTime = deadNodeReclaimTime
	conf.Logger = stdlog
	conf.Events = poolEvents{p}
	conf.Delegate = poolDelegate{p}

	// memberlist works the advertised address out the same way, but
	// failing there would leave the transport running.
	ip, port, err := nt.FinalAdvertiseAddr(conf.AdvertiseAddr, conf.AdvertisePort)
	if err != nil {
		_ = nt.Shutdown()
		cancel()
		return nil, fmt.Errorf("gossip advertise address: %w", err)
	}
	if ip.IsUnspecified() {
		_ = nt.Shutdown()
		cancel()
		return nil, fmt.Errorf("gossip address %s listens on every address and none can be advertised: name the one peers dial with --gossip-advertise", cfg.Bind)
	}
	p.addr = net.JoinHostPort(ip.String(), strconv.Itoa(port))

	ml, err := memberlist.Create(conf)
	if err != nil {
		// Create shuts the transport down only on some of its failures;
		// a second shutdown does no harm.
		_ = nt.Shutdown()
		cancel()
		return nil, fmt.Errorf("start gossip pool: %w", err)
	}
	p.ml = ml
	go p.joiner(ctx)
	log.Info("site gossip pool started", "addr", p.addr)
	return p, nil
}

// splitIPPort splits IP:PORT, or :PORT for every address.
func splitIPPort(s string) (netip.Addr, int, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.Addr{}, 0, errors.New("want IP:PORT, such as 10.0.0.7:7947")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if host == "" {
		return netip.IPv4Unspecified(), int(n), nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address", host)
	}
	return ip.Unmap(), int(n), nil
}

// Addr returns the address other members dial, IP:PORT.
func (p *gossipPool) Addr() string { return p.addr }

// SetSuspectWindow sets how long a member declared failed is reported as
// a suspect: the heartbeat TTL, so that a report outlives the leader's
// suspicion by no more than one heartbeat.
func (p *gossipPool) SetSuspectWindow(d time.Duration) {
	if d > 0 {
		p.window.Store(int64(d))
	}
}

// Join contacts the members at addrs (IP:PORT) and exchanges the whole
// state with each, so that the pools merge. It returns how many answered;
// the error is set only when none did. Its own address is skipped. It
// blocks while it talks to them; JoinAsync does not.
func (p *gossipPool) Join(addrs []string) (int, error) {
	var targets []string
	for _, a := range addrs {
		if a != "" && a != p.addr && !slices.Contains(targets, a) {
			targets = append(targets, a)
		}
	}
	if len(targets) == 0 {
		return 0, nil
	}
	n, err := p.ml.Join(targets)
	if err != nil {
		return n, fmt.Errorf("join site gossip pool at %v: %w", targets, err)
	}
	select {
	case p.joined <- struct{}{}:
	default: // the joiner has one to take already
	}
	return n, nil
}

// JoinAsync hands addrs to the pool's joiner and returns at once. A join
// requested while the joiner still has one waiting replaces it.
func (p *gossipPool) JoinAsync(addrs []string) {
	if len(addrs) == 0 {
		return
	}
	addrs = slices.Clone(addrs)
	for {
		select {
		case p.joinReq <- addrs:
			return
		default:
		}
		select {
		case <-p.joinReq: // superseded
		default:
		}
	}
}

// joiner runs the joins JoinAsync asks for, one at a time, and after each
// successful join the state exchanges of settleDelays, until ctx ends.
// memberlist runs on real time, and so does this.
func (p *gossipPool) joiner(ctx context.Context) {
	defer close(p.joinDone)
	settle := time.NewTimer(time.Hour)
	settle.Stop() // runs after a join
	defer settle.Stop()
	var pending []time.Duration // settle delays to go, from the last join
	for {
		select {
		case <-ctx.Done():
			return
		case addrs := <-p.joinReq:
			n, err := p.Join(addrs)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				p.log.Warn("could not join the site's gossip pool; trying again with the next peers the control plane sends", "peers", addrs, "err", err)
			case n > 0:
				p.log.Debug("joined site gossip pool", "contacted", n, "members", p.NumMembers())
			}
		case <-p.joined:
			pending = settleDelays
			settle.Reset(pending[0])
		case <-settle.C:
			if peer := p.randomPeer(); peer != "" {
				if _, err := p.ml.Join([]string{peer}); err != nil && ctx.Err() == nil {
					p.log.Debug("state exchange with a site peer failed", "peer", peer, "err", err)
				}
			}
			if len(pending) > 1 {
				settle.Reset(pending[1] - pending[0])
			}
			pending = pending[1:]
		}
	}
}

// randomPeer returns the address of a random live member other than
// itself, or "" if there is none.
func (p *gossipPool) randomPeer() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	peers := make([]string, 0, len(p.members))
	for name, addr := range p.members {
		if name != p.name {
			peers = append(peers, addr)
		}
	}
	if len(peers) == 0 {
		return ""
	}
	return peers[rand.IntN(len(peers))]
}

// poolMember is one member of a site gossip pool.
type poolMember struct {
	// Name is the member's node id.
	Name string
	// Addr is where it gossips, IP:PORT.
	Addr string
	// PeerAddr is where it serves chunks to its site peers, IP:PORT;
	// "" for nowhere.
	PeerAddr string
}

// Members returns the live members, itself included, sorted by name.
func (p *gossipPool) Members() []poolMember {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]poolMember, 0, len(p.members))
	for name, addr := range p.members {
		out = append(out, poolMember{Name: name, Addr: addr, PeerAddr: p.peers[name]})
	}
	slices.SortFunc(out, func(a, b poolMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// isMember reports whether name is a live member of the pool.
func (p *gossipPool) isMember(name string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.members[name]
	return ok
}

// SetPeerAddr changes where this member says it serves chunks ("" for
// nowhere) and tells the pool, waiting at most timeout for that to go out.
func (p *gossipPool) SetPeerAddr(addr string, timeout time.Duration) error {
	if len(addr) > 255 {
		return fmt.Errorf("peer address %q is too long", addr)
	}
	p.peerAddr.Store(&addr)
	if err := p.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("announce peer address %q to the site gossip pool: %w", addr, err)
	}
	return nil
}

// NumMembers returns how many live members the pool sees, itself included.
func (p *gossipPool) NumMembers() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.members)
}

// Suspects returns the node ids of the members memberlist declared failed
// within the suspect window and that have not come back, sorted, at most
// maxReportedSuspects of them. Members that left on purpose are not among
// them.
func (p *gossipPool) Suspects() []string {
	now := p.now()
	window := time.Duration(p.window.Load())
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for name, at := range p.failed {
		if now.Sub(at) > window {
			delete(p.failed, name)
			continue
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out[:min(len(out), maxReportedSuspects)]
}

// Close stops the pool and waits for what it started. With leave set it
// first tells the other members that this one is leaving on purpose and
// waits, at most poolLeaveTimeout, for that to go out; without, the
// others find out by themselves that it failed, as after a crash. Close is
// idempotent; the first call decides whether to leave.
func (p *gossipPool) Close(leave bool) error {
	p.closeOnce.Do(func() {
		p.cancel()
		<-p.joinDone
		if leave {
			p.leaving.Store(true)
			// The metadata must be out before the leave: a leave that
			// overtakes it reads as a failure.
			start := time.Now()
			if err := p.ml.UpdateNode(poolLeaveTimeout / 2); err != nil {
				p.log.Debug("leaving the site gossip pool: metadata update", "err", err)
			}
			if err := p.ml.Leave(poolLeaveTimeout - time.Since(start)); err != nil {
				p.log.Debug("leaving the site gossip pool", "err", err)
			}
		}
		p.closeErr = p.ml.Shutdown()
		p.log.Info("site gossip pool stopped", "left", leave)
	})
	return p.closeErr
}

// poolTransport is memberlist's network transport with TCP streams that
// Close cuts short, dialing or not, so that a join to a peer that does not
// answer never holds up the agent's shutdown for memberlist's 10s TCP
// timeout.
type poolTransport struct {
	*memberlist.NetTransport
	ctx context.Context
}

var _ memberlist.NodeAwareTransport = (*poolTransport)(nil)

func (t *poolTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(t.ctx, "tcp", a.Addr)
	if err != nil {
		return nil, err
	}
	return &ctxConn{Conn: conn, stop: context.AfterFunc(t.ctx, func() { _ = conn.Close() })}, nil
}

func (t *poolTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// ctxConn is a stream that its transport's context closes.
type ctxConn struct {
	net.Conn
	stop func() bool // undoes the context.AfterFunc that closes it
}

func (c *ctxConn) Close() error {
	c.stop()
	return c.Conn.Close()
}

// poolEvents keeps the pool's view of its members. memberlist calls it
// with its node lock held, one event at a time.
type poolEvents struct{ p *gossipPool }

var _ memberlist.EventDelegate = poolEvents{}

func memberAddr(n *memberlist.Node) string {
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

func leavingMeta(meta []byte) bool {
	return len(meta) >= 2 && meta[0] == poolMetaVersion && meta[1]&poolMetaLeaving != 0
}

// metaField returns the field tag of meta, or nil. A field cut short ends
// the reading: what follows it cannot be trusted to be a field.
func metaField(meta []byte, tag byte) []byte {
	if len(meta) < 2 || meta[0] != poolMetaVersion {
		return nil
	}
	for rest := meta[2:]; len(rest) >= 2; {
		t, n := rest[0], int(rest[1])
		if len(rest) < 2+n {
			return nil
		}
		if t == tag {
			return rest[2 : 2+n]
		}
		rest = rest[2+n:]
	}
	return nil
}

// peerAddrMeta returns the peer address in meta, or "" for none or one
// that is not IP:PORT.
func peerAddrMeta(meta []byte) string {
	addr := string(metaField(meta, poolMetaPeerAddr))
	if ip, port, err := splitIPPort(addr); err != nil || ip.IsUnspecified() || port == 0 {
		return ""
	}
	return addr
}

// notePeerLocked records the peer address n's metadata holds.
func (p *gossipPool) notePeerLocked(n *memberlist.Node) {
	if addr := peerAddrMeta(n.Meta); addr != "" {
		p.peers[n.Name] = addr
	} else {
		delete(p.peers, n.Name)
	}
}

func (e poolEvents) NotifyJoin(n *memberlist.Node) {
	p := e.p
	addr := memberAddr(n)
	p.mu.Lock()
	_, wasFailed := p.failed[n.Name]
	p.members[n.Name] = addr
	p.notePeerLocked(n)
	delete(p.failed, n.Name)
	if leavingMeta(n.Meta) {
		p.leavers[n.Name] = true
	} else {
		delete(p.leavers, n.Name)
	}
	p.mu.Unlock()
	if n.Name != p.name {
		p.log.Debug("site peer joined", "peer", n.Name, "addr", addr, "was_failed", wasFailed)
	}
}

func (e poolEvents) NotifyUpdate(n *memberlist.Node) {
	p := e.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.members[n.Name] = memberAddr(n)
	p.notePeerLocked(n)
	if leavingMeta(n.Meta) {
		p.leavers[n.Name] = true
	} else {
		delete(p.leavers, n.Name)
	}
}

func (e poolEvents) NotifyLeave(n *memberlist.Node) {
	p := e.p
	if n.Name == p.name {
		return // our own leave
	}
	p.mu.Lock()
	delete(p.members, n.Name)
	delete(p.peers, n.Name)
	left := p.leavers[n.Name]
	delete(p.leavers, n.Name)
	if !left {
		p.failed[n.Name] = p.now()
	}
	p.mu.Unlock()
	if left {
		p.log.Debug("site peer left", "peer", n.Name)
	} else {
		p.log.Warn("site peer failed; reporting it to the control plane as a suspect", "peer", n.Name, "addr", memberAddr(n))
	}
}

// poolDelegate gives memberlist this member's metadata. The pool sends
// no messages of its own yet.
type poolDelegate struct{ p *gossipPool }

var _ memberlist.Delegate = poolDelegate{}

func (d poolDelegate) NodeMeta(limit int) []byte {
	var flags byte
	if d.p.leaving.Load() {
		flags |= poolMetaLeaving
	}
	meta := []byte{poolMetaVersion, flags}
	// A member that leaves stops serving chunks too.
	if addr := *d.p.peerAddr.Load(); addr != "" && flags&poolMetaLeaving == 0 && len(addr) <= 255 {
		meta = append(meta, poolMetaPeerAddr, byte(len(addr)))
		meta = append(meta, addr...)
	}
	if len(meta) > limit {
		// Fields are extras; the version and flags must go out.
		meta = meta[:min(2, limit)]
	}
	return meta
}

func (poolDelegate) NotifyMsg([]byte)                           {}
func (poolDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (poolDelegate) LocalState(join bool) []byte                { return nil }
func (poolDelegate) MergeRemoteState(buf []byte, join bool)     {}
