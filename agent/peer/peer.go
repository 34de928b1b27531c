// Package peer lets the agents of one site share model chunks, so that the
// control plane sends each chunk of a version to a site about once rather
// than once per agent: every agent serves the chunks in its cache to the
// site's other agents over HTTP/3 with mutual TLS, and fetches each chunk
// it lacks from the chunk's owner, the live site peer that rendezvous
// hashing of the chunk's digest picks. The owner fetches a chunk it lacks
// from the servers once, however many peers ask, checks it, caches it and
// serves it.
//
// Peers are never trusted: a peer serves only chunks listed in a manifest
// it verified itself, a requester checks every chunk against its digest
// before handing it on, and a peer that served a corrupt chunk is avoided
// by this node for a while (Config.CorruptPenalty, doubling with each
// repeat), across pulls.
//
// Why plain HTTP/3 GETs rather than a Connect RPC like the agent's calls to
// the servers: a chunk is streamed from the cache file under the upload
// bandwidth cap as it is read, with no protobuf message of up to 4 MiB
// built on either side, and the peer API stays off the control plane's
// schema and capability table, which it is no part of.
package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Peer is a site peer that serves chunks.
type Peer struct {
	// ID is its node id, which its certificate names.
	ID string
	// Addr is where its peer server listens, IP:PORT (UDP).
	Addr string
}

// Manifests gives the verified manifest of a version: the one the agent
// checked against the trusted publishing keys. A peer serves only the
// chunks a verified manifest lists.
type Manifests interface {
	Manifest(ctx context.Context, model string, version uint64) (*droverv1.Manifest, error)
}

// Upstream gives the sources an owner fetches a chunk it lacks from: the
// control-plane servers, never peers.
type Upstream interface {
	Sources(model string, version uint64) []fetch.Source
}

// Config configures a Node. ID, CA, Certificate, Cache and Manifests are
// required; every zero duration or count takes its default.
type Config struct {
	// ID is this node's id.
	ID string
	// CA is the cluster CA: peers on both ends present agent
	// certificates it issued.
	CA *x509.Certificate
	// Certificate returns the node's current certificate, with its key:
	// a function, so that a renewed one is used from the next handshake.
	Certificate func() *tls.Certificate
	// Cache holds the chunks served, and those fetched as an owner.
	Cache *fetch.Cache
	// Manifests gives verified manifests.
	Manifests Manifests
	// Upstream gives the servers to fetch owned chunks from; nil means
	// the node serves only what its cache holds.
	Upstream Upstream
	// Authorize, if set, says whether a node may fetch from this one
	// (such as: it is a live member of the site's gossip pool). Its
	// certificate was already verified. Nil admits any agent of the
	// cluster.
	Authorize func(nodeID string) bool
	// UploadBytesPerSecond caps the bytes served to all peers together;
	// zero means no cap.
	UploadBytesPerSecond int64
	// MaxUploads bounds the chunks served at once; a request that finds
	// every slot taken for QueueTimeout is refused as busy, and its
	// sender falls back to the servers.
	MaxUploads   int
	QueueTimeout time.Duration
	// ResponseTimeout bounds how long a requester waits for a peer to
	// start answering, an owner's fetch from the servers included;
	// StallTimeout how long a body may send nothing. A peer slower than
	// that is given up on and the servers asked.
	ResponseTimeout time.Duration
	StallTimeout    time.Duration
	// FailPenalty is how long a peer is avoided after FailLimit failures
	// in a row; CorruptPenalty how long after its first corrupt chunk,
	// doubled for each further one up to MaxPenalty.
	FailPenalty    time.Duration
	FailLimit      int
	CorruptPenalty time.Duration
	MaxPenalty     time.Duration
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Now tells the time for penalties; nil means time.Now.
	Now func() time.Time
}

// Defaults for Config.
const (
	DefaultMaxUploads      = 64
	DefaultQueueTimeout    = 10 * time.Second
	DefaultResponseTimeout = 30 * time.Second
	DefaultStallTimeout    = 15 * time.Second
	DefaultFailPenalty     = 30 * time.Second
	DefaultFailLimit       = 3
	DefaultCorruptPenalty  = 15 * time.Minute
	DefaultMaxPenalty      = 4 * time.Hour
	// ownerFetchTimeout bounds an owner's fetch of one chunk from the
	// servers, which runs for every peer waiting on it, whoever gave up.
	ownerFetchTimeout = 2 * time.Minute
	// manifestsKept bounds the versions whose chunk lists a node keeps.
	manifestsKept = 16
	// uploadPiece is the most bytes written between two waits on the
	// upload cap, and the cap's burst.
	uploadPiece = 64 << 10
)

func (c *Config) validate() error {
	switch {
	case c.ID == "":
		return errors.New("no node id")
	case c.CA == nil:
		return errors.New("no cluster CA")
	case c.Certificate == nil:
		return errors.New("no node certificate")
	case c.Cache == nil:
		return errors.New("no chunk cache")
	case c.Manifests == nil:
		return errors.New("no manifest source")
	case c.UploadBytesPerSecond < 0:
		return fmt.Errorf("upload cap %d B/s is negative", c.UploadBytesPerSecond)
	case c.MaxUploads < 0 || c.FailLimit < 0:
		return errors.New("negative upload or failure limit")
	}
	for _, d := range []time.Duration{c.QueueTimeout, c.ResponseTimeout, c.StallTimeout, c.FailPenalty, c.CorruptPenalty, c.MaxPenalty} {
		if d < 0 {
			return fmt.Errorf("duration %v is negative", d)
		}
	}
	return nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Node is this agent's part in its site's chunk sharing: the server its
// peers fetch from, the client it fetches from them with, and what both
// share (the owner fetches in flight, the peers avoided). Make it with
// New, start serving with Listen, and Close it.
type Node struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context // ends at Close: owner fetches stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // every owner fetch and manifest load
	served sync.WaitGroup // every request being served: http3 does not wait for them

	limiter *rate.Limiter // nil: no upload cap
	slots   chan struct{} // upload slots
	client  *client
	avoid   *penalties

	owned flights[artifact.Digest] // owner fetches from the servers
	mfs   manifestCache

	// Figures for tests and metrics.
	upstreamBytes atomic.Int64 // fetched from the servers as owner
	uploadedBytes atomic.Int64 // served to peers

	mu       sync.Mutex // guards the fields below
	srv      *serverState
	closed   bool
	closeErr error
}

// New checks cfg and returns a node that neither serves nor has fetched
// anything yet.
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("peer node: %w", err)
	}
	cfg.MaxUploads = orDefault(cfg.MaxUploads, DefaultMaxUploads)
	cfg.QueueTimeout = orDefault(cfg.QueueTimeout, DefaultQueueTimeout)
	cfg.ResponseTimeout = orDefault(cfg.ResponseTimeout, DefaultResponseTimeout)
	cfg.StallTimeout = orDefault(cfg.StallTimeout, DefaultStallTimeout)
	cfg.FailPenalty = orDefault(cfg.FailPenalty, DefaultFailPenalty)
	cfg.FailLimit = orDefault(cfg.FailLimit, DefaultFailLimit)
	cfg.CorruptPenalty = orDefault(cfg.CorruptPenalty, DefaultCorruptPenalty)
	cfg.MaxPenalty = orDefault(cfg.MaxPenalty, DefaultMaxPenalty)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg:    cfg,
		log:    log.With("component", "peer"),
		ctx:    ctx,
		cancel: cancel,
		slots:  make(chan struct{}, cfg.MaxUploads),
		avoid:  newPenalties(cfg),
	}
	if cfg.UploadBytesPerSecond > 0 {
		n.limiter = rate.NewLimiter(rate.Limit(cfg.UploadBytesPerSecond), int(min(cfg.UploadBytesPerSecond, uploadPiece)))
	}
	n.client = newClient(cfg)
	return n, nil
}

// ID returns the node's id.
func (n *Node) ID() string { return n.cfg.ID }

// UpstreamBytes returns the bytes this node fetched from the servers as
// the owner of chunks, for itself and its peers.
func (n *Node) UpstreamBytes() int64 { return n.upstreamBytes.Load() }

// UploadedBytes returns the bytes this node served to its peers.
func (n *Node) UploadedBytes() int64 { return n.uploadedBytes.Load() }

// Avoided reports whether this node avoids the peer id now, for failing
// or for serving corrupt bytes.
func (n *Node) Avoided(id string) bool { return n.avoid.avoided(id) }

// Close stops serving, cuts short the owner fetches and the requests to
// peers in progress, and waits for what the node started. It is
// idempotent.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return n.closeErr
	}
	n.closed = true
	srv := n.srv
	n.mu.Unlock()
	n.cancel()
	var errs []error
	if srv != nil {
		errs = append(errs, srv.close())
	}
	errs = append(errs, n.client.close())
	// Closing the connections ended the requests' contexts.
	n.served.Wait()
	n.wg.Wait()
	err := errors.Join(errs...)
	n.mu.Lock()
	n.closeErr = err
	n.mu.Unlock()
	return err
}

// spawn runs f(n.ctx) in a goroutine Close waits for, unless the node is
// closed.
func (n *Node) spawn(f func(context.Context)) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return net.ErrClosed
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
	return nil
}

// serving counts a request in served, unless the node is closed.
func (n *Node) serving() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.served.Add(1)
	return true
}

// ensure makes the cache hold chunk d of version of model, fetching it
// from the servers if it lacks it. However many callers ask for a digest
// at once, it is fetched once; the fetch runs on the node's context, so a
// caller that gives up does not cut it short for the others.
func (n *Node) ensure(ctx context.Context, model string, version uint64, d artifact.Digest, size int64) error {
	if n.cfg.Cache.Has(d) {
		return nil
	}
	if n.cfg.Upstream == nil {
		return fmt.Errorf("chunk %s not cached and no servers to fetch it from: %w", d, fetch.ErrDecline)
	}
	return n.owned.do(ctx, n.spawn, d, func(fctx context.Context) error {
		if n.cfg.Cache.Has(d) {
			return nil
		}
		fctx, cancel := context.WithTimeout(fctx, ownerFetchTimeout)
		defer cancel()
		return n.fetchUpstream(fctx, model, version, d, size)
	})
}

// fetchUpstream fetches chunk d from the servers in turn until one serves
// the right bytes.
func (n *Node) fetchUpstream(ctx context.Context, model string, version uint64, d artifact.Digest, size int64) error {
	srcs := n.cfg.Upstream.Sources(model, version)
	if len(srcs) == 0 {
		return fmt.Errorf("chunk %s: no server to fetch it from", d)
	}
	var errs []error
	start := int(d[0]) % len(srcs) // spread owners over the servers
	for k := range srcs {
		src := srcs[(start+k)%len(srcs)]
		body, err := src.Chunk(ctx, d, size)
		if err == nil {
			cr := &countingReader{r: body}
			err = n.cfg.Cache.Put(d, size, cr)
			_ = body.Close()
			n.upstreamBytes.Add(cr.n)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("from %s: %w", src.Name(), err))
	}
	return fmt.Errorf("fetch chunk %s from the servers: %w", d, errors.Join(errs...))
}

// flights runs one function per key at a time and lets every caller of
// that key wait for its outcome, each as long as its own context allows.
type flights[K comparable] struct {
	mu sync.Mutex
	m  map[K]*flight
}

type flight struct {
	done chan struct{}
	err  error
}

// do runs fn for key with spawn, unless it runs already, and waits for it
// or for ctx.
func (g *flights[K]) do(ctx context.Context, spawn func(func(context.Context)) error, key K, fn func(context.Context) error) error {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[K]*flight)
	}
	f, ok := g.m[key]
	if !ok {
		f = &flight{done: make(chan struct{})}
		err := spawn(func(base context.Context) {
			f.err = fn(base)
			g.mu.Lock()
			delete(g.m, key)
			g.mu.Unlock()
			close(f.done)
		})
		if err != nil {
			g.mu.Unlock()
			return err
		}
		g.m[key] = f
	}
	g.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// manifestCache keeps the chunk lists of the last versions asked about:
// a version never changes, so its list is read and checked once.
type manifestCache struct {
	mu    sync.Mutex
	lists map[versionKey]map[artifact.Digest]int64
	order []versionKey // oldest first
	load  flights[versionKey]
}

type versionKey struct {
	model   string
	version uint64
}

// chunks returns the digests the verified manifest of version lists, with
// their sizes.
func (n *Node) chunks(ctx context.Context, model string, version uint64) (map[artifact.Digest]int64, error) {
	k := versionKey{model, version}
	c := &n.mfs
	c.mu.Lock()
	list, ok := c.lists[k]
	c.mu.Unlock()
	if ok {
		return list, nil
	}
	err := c.load.do(ctx, n.spawn, k, func(lctx context.Context) error {
		lctx, cancel := context.WithTimeout(lctx, n.cfg.ResponseTimeout)
		defer cancel()
		m, err := n.cfg.Manifests.Manifest(lctx, model, version)
		if err != nil {
			return err
		}
		if err := artifact.ValidateManifest(m, artifact.Limits{}); err != nil {
			return err
		}
		list := make(map[artifact.Digest]int64)
		for _, f := range m.GetFiles() {
			for _, ch := range f.GetChunks() {
				d, err := artifact.DigestFromBytes(ch.GetDigest())
				if err != nil {
					return err
				}
				list[d] = int64(ch.GetSize())
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.lists == nil {
			c.lists = make(map[versionKey]map[artifact.Digest]int64)
		}
		if _, ok := c.lists[k]; !ok {
			c.order = append(c.order, k)
		}
		c.lists[k] = list
		for len(c.order) > manifestsKept {
			delete(c.lists, c.order[0])
			c.order = c.order[1:]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("manifest of %s version %d: %w", model, version, err)
	}
	c.mu.Lock()
	list = c.lists[k]
	c.mu.Unlock()
	if list == nil {
		// Evicted between the load and now, by many other versions.
		return nil, fmt.Errorf("manifest of %s version %d: evicted while loading", model, version)
	}
	return list, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	k, err := c.r.Read(b)
	c.n += int64(k)
	return k, err
}
