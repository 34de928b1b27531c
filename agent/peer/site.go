package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
)

// SitePriority is the fetch priority of a SiteSource: above the servers'
// (0), so that fetch.Pull asks the site first for every chunk.
const SitePriority = 1

// SiteSource is a fetch.Source that gets each chunk of one version from
// the site peer that owns it, by rendezvous hashing of the chunk's digest
// over the live peers every requester sees alike. Put it before the
// server sources: it declines (fetch.ErrDecline) every chunk it cannot
// get from the site, and fetch.Pull then asks the servers at once. It
// checks every chunk before handing it on, so a peer's corrupt bytes cost
// the pull one trip to the servers and never the source itself.
type SiteSource struct {
	n       *Node
	model   string
	version uint64
	peers   func() []Peer
}

var _ fetch.Prioritized = (*SiteSource)(nil)

// Source returns a SiteSource for version of model; peers returns the
// live site peers that serve chunks, this node included when it serves.
func (n *Node) Source(model string, version uint64, peers func() []Peer) *SiteSource {
	return &SiteSource{n: n, model: model, version: version, peers: peers}
}

// Name says the chunks come from the site.
func (s *SiteSource) Name() string { return "site peers" }

// Priority is SitePriority.
func (s *SiteSource) Priority() int { return SitePriority }

// Peer says the bytes come from the site (fetch.PeerSource), except for
// the chunks this node owns itself: those it fetches from the servers,
// once for the whole site, and says so (fetch.Origin).
func (s *SiteSource) Peer() bool { return true }

// FromServers is the origin of the chunks a site source fetched from the
// servers as their owner.
const FromServers = "servers, as the site's owner"

// ownedBody is a chunk this node fetched from the servers as its owner.
type ownedBody struct{ io.ReadCloser }

func (ownedBody) Origin() string { return FromServers }

// Chunk fetches chunk d from its owner: from the servers into the cache
// when the owner is this node, over the peer API otherwise.
func (s *SiteSource) Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error) {
	n := s.n
	var candidates []Peer
	for _, p := range s.peers() {
		if p.ID == n.cfg.ID || !n.avoid.avoided(p.ID) {
			candidates = append(candidates, p)
		}
	}
	owner, ok := Owner(d, candidates)
	if !ok {
		return nil, fmt.Errorf("no site peer to ask: %w", fetch.ErrDecline)
	}
	if owner.ID == n.cfg.ID {
		// Through the same fetch the server runs for peers that ask
		// for it meanwhile: the chunk comes from the servers once.
		if err := n.ensure(ctx, s.model, s.version, d, size); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("as owner of chunk %s: %w: %w", d, fetch.ErrDecline, err)
		}
		body, err := n.cfg.Cache.Open(d)
		if err != nil {
			return nil, fmt.Errorf("as owner of chunk %s: %w: %w", d, fetch.ErrDecline, err)
		}
		return ownedBody{body}, nil
	}
	b, err := s.ask(ctx, owner, d, size, true)
	if err == nil {
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	errs := []error{fmt.Errorf("owner %s at %s: %w", owner.ID, owner.Addr, err)}
	// The owner is busy or failing: the peers that got the chunk from it
	// already hold it. A few, picked at random so that no one of them
	// takes every such request, are asked for what they have.
	for _, h := range helpers(candidates, owner.ID, n.cfg.ID, maxHelpers) {
		b, err := s.ask(ctx, h, d, size, false)
		if err == nil {
			return io.NopCloser(bytes.NewReader(b)), nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("peer %s at %s: %w", h.ID, h.Addr, err))
	}
	err = errors.Join(errs...)
	n.log.Debug("no site peer served a chunk; it goes to the servers", "chunk", d, "err", err)
	return nil, fmt.Errorf("%w: %w", fetch.ErrDecline, err)
}

// maxHelpers is how many peers other than the owner a chunk is asked of.
const maxHelpers = 3

// helpers returns up to k of peers, other than the owner and self, in a
// random order.
func helpers(peers []Peer, owner, self string, k int) []Peer {
	var out []Peer
	for _, i := range rand.Perm(len(peers)) {
		if p := peers[i]; p.ID != owner && p.ID != self {
			out = append(out, p)
			if len(out) == k {
				break
			}
		}
	}
	return out
}

// ask fetches chunk d from p, as its owner with own, and checks it. A peer
// that fails, or serves bytes that are not the chunk, is held to account
// in the node's penalties; one that is busy or lacks the chunk is not.
func (s *SiteSource) ask(ctx context.Context, p Peer, d artifact.Digest, size int64, own bool) ([]byte, error) {
	n := s.n
	b, err := n.client.get(ctx, p, s.model, s.version, d, size, own)
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, errBusy) && !errors.Is(err, errNotHere) && !errors.Is(err, errRefused) {
			n.avoid.fail(p.ID)
		}
		return nil, err
	}
	if got := artifact.Sum(b); int64(len(b)) != size || got != d {
		until := n.avoid.corrupt(p.ID)
		n.log.Warn("a site peer served a corrupt chunk; avoiding it", "peer", p.ID, "addr", p.Addr,
			"chunk", d, "bytes", len(b), "want_bytes", size, "until", until)
		return nil, fmt.Errorf("served corrupt bytes for chunk %s", d)
	}
	n.avoid.ok(p.ID)
	return b, nil
}

// Owner returns the peer that owns chunk d among peers: the one whose
// hash of its id with d is highest (rendezvous hashing). Every requester
// that sees the same peers picks the same owner, and a peer joining or
// leaving moves only the chunks it gains or held. ok is false for no
// peers.
func Owner(d artifact.Digest, peers []Peer) (owner Peer, ok bool) {
	var best uint64
	for _, p := range peers {
		h := sha256.New()
		h.Write(d[:])
		h.Write([]byte(p.ID))
		var sum [sha256.Size]byte
		score := binary.BigEndian.Uint64(h.Sum(sum[:0]))
		if !ok || score > best || score == best && p.ID < owner.ID {
			owner, best, ok = p, score, true
		}
	}
	return owner, ok
}

// penalties are the peers this node avoids, and until when. They outlive
// pulls: a peer that served corrupt bytes is avoided by the next pull too.
type penalties struct {
	now                         func() time.Time
	failLimit                   int
	failFor, corruptFor, maxFor time.Duration

	mu sync.Mutex // guards m
	m  map[string]*penalty
}

type penalty struct {
	until   time.Time
	fails   int // in a row
	strikes int // corrupt chunks served
	seen    time.Time
}

func newPenalties(cfg Config) *penalties {
	return &penalties{
		now: cfg.Now, failLimit: cfg.FailLimit,
		failFor: cfg.FailPenalty, corruptFor: cfg.CorruptPenalty, maxFor: cfg.MaxPenalty,
		m: make(map[string]*penalty),
	}
}

// entryLocked returns id's record, and drops records idle for longer
// than the longest penalty, so that they do not pile up.
func (p *penalties) entryLocked(id string, now time.Time) *penalty {
	for k, e := range p.m {
		if now.Sub(e.seen) > p.maxFor && now.After(e.until) {
			delete(p.m, k)
		}
	}
	e, ok := p.m[id]
	if !ok {
		e = &penalty{}
		p.m[id] = e
	}
	e.seen = now
	return e
}

func (p *penalties) avoided(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.m[id]
	return ok && p.now().Before(e.until)
}

func (p *penalties) ok(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.m[id]; ok {
		e.fails = 0
	}
}

func (p *penalties) fail(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	e := p.entryLocked(id, now)
	if e.fails++; e.fails >= p.failLimit {
		e.fails = 0
		e.until = later(e.until, now.Add(p.failFor))
	}
}

// corrupt records a corrupt chunk from id and returns until when id is
// avoided: CorruptPenalty, doubled for each earlier strike, at most
// MaxPenalty.
func (p *penalties) corrupt(id string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	e := p.entryLocked(id, now)
	d := p.corruptFor << min(e.strikes, 16)
	if d > p.maxFor || d <= 0 {
		d = p.maxFor
	}
	e.strikes++
	e.until = later(e.until, now.Add(d))
	return e.until
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
