package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Options say how Pull fetches. Cache is required; every other zero field
// takes its default.
type Options struct {
	// Cache holds the chunks fetched and those already there.
	Cache *Cache
	// InFlight bounds the chunk requests outstanding at once, across all
	// sources. Zero means DefaultInFlight.
	InFlight int
	// Attempts bounds the tries of one chunk, across sources, before the
	// pull fails. Zero means two more than the number of sources, so each
	// source gets at least one try.
	Attempts int
	// RetryDelay is the pause before trying a chunk again from a source
	// that already failed it (another source is tried at once). Zero
	// means DefaultRetryDelay.
	RetryDelay time.Duration
	// BytesPerSecond caps the bytes read from all sources together. Zero
	// means no cap.
	BytesPerSecond int64
	// RandomOrder fetches the chunks in an order of the pull's own
	// rather than the manifest's. Agents of a site that pull one version
	// at once through its peers (agent/peer) then each ask for different
	// chunks at any moment, so that the peers owning them share the
	// uploads, rather than every agent queueing at the same few.
	RandomOrder bool
	// Progress, if set, is called with the bytes of the version now in
	// the cache and the bytes of all its distinct chunks, once at the
	// start and after each chunk is fetched and checked. Calls never
	// overlap; it must return quickly.
	Progress func(done, total int64)
	// Fetched, if set, is called with a source's name and the bytes of a
	// chunk fetched from it and checked, just before the Progress call
	// that counts them. Calls never overlap with each other or with
	// Progress; it must return quickly.
	Fetched func(source string, bytes int64)
	// FreeSpace reports the bytes free to the agent on the file system
	// that holds path, and an id equal for paths on the same file system.
	// Nil means the operating system's figure (statfs); where that is
	// unavailable no check is made.
	FreeSpace func(path string) (free, device uint64, err error)
}

// Defaults for Options.
const (
	DefaultInFlight   = 8
	DefaultRetryDelay = 250 * time.Millisecond
	// sourceFailLimit is the failures in a row after which a source is
	// dropped for the rest of a pull: a source that is down should not
	// keep taking a share of the requests.
	sourceFailLimit = 3
	// rateChunk is the most bytes read from a source between two waits
	// on the bandwidth cap, and the cap's burst.
	rateChunk = 64 << 10
)

// Validate checks the options and the relations between them.
func (o Options) Validate() error {
	switch {
	case o.Cache == nil:
		return errors.New("no cache: open one with OpenCache")
	case o.InFlight < 0:
		return fmt.Errorf("in-flight limit %d is negative", o.InFlight)
	case o.Attempts < 0:
		return fmt.Errorf("attempts %d is negative", o.Attempts)
	case o.RetryDelay < 0:
		return fmt.Errorf("retry delay %v is negative", o.RetryDelay)
	case o.BytesPerSecond < 0:
		return fmt.Errorf("bandwidth cap %d B/s is negative", o.BytesPerSecond)
	}
	return nil
}

// Stats say where a pull's bytes came from and what went wrong on the
// way.
type Stats struct {
	// ChunksFetched and BytesFetched count the distinct chunks fetched
	// from sources and checked; BytesBySource splits the bytes by source
	// name.
	ChunksFetched int
	BytesFetched  int64
	BytesBySource map[string]int64
	// ChunksFromCache and BytesFromCache count the distinct chunks that
	// were already cached.
	ChunksFromCache int
	BytesFromCache  int64
	// CorruptChunks counts chunks a source served with the wrong bytes.
	CorruptChunks int
	// Retries counts tries of a chunk after a failed one, whatever failed.
	Retries int
	// Declines counts the times a source declined a chunk (ErrDecline),
	// which sent it to another source at once.
	Declines int
	// DroppedSources names the sources this pull stopped using, for
	// serving corrupt bytes or failing too often in a row.
	DroppedSources []string
}

// Pull makes dst hold the version described by m. m must come from
// artifact.Verify. Pull fetches every chunk of m that opts.Cache lacks,
// up to opts.InFlight at a time, spreading the requests over sources (the
// highest priority first (see Prioritized), then the least loaded, in turn
// among equals), and checks each before it is cached. A source that
// declines a chunk (ErrDecline) is not asked for it again. A chunk that fails or does not match its digest is discarded
// and tried again from another source; a source that served corrupt bytes
// is not used again by this pull. Then Pull assembles dst from the cache
// with artifact.Assemble: dst holds the whole previous version or the
// whole new one, never a mix.
//
// Before fetching, Pull checks that the disk has room for the chunks to
// fetch plus the assembled version, and returns ErrNoSpace, naming the
// sizes, if not. On any failure, cancellation included, dst is as it was;
// the chunks already cached stay there, so pulling again fetches only the
// rest.
func Pull(ctx context.Context, m *droverv1.Manifest, dst string, sources []Source, opts Options) (Stats, error) {
	st, err := pull(ctx, m, dst, sources, opts)
	if err != nil {
		return st, fmt.Errorf("pull %s: %w", dst, err)
	}
	return st, nil
}

type want struct {
	d    artifact.Digest
	size int64
}

func pull(ctx context.Context, m *droverv1.Manifest, dst string, sources []Source, opts Options) (Stats, error) {
	st := Stats{BytesBySource: make(map[string]int64)}
	if err := opts.Validate(); err != nil {
		return st, err
	}
	if err := artifact.ValidateManifest(m, artifact.Limits{}); err != nil {
		return st, err
	}
	if opts.InFlight == 0 {
		opts.InFlight = DefaultInFlight
	}
	if opts.Attempts == 0 {
		opts.Attempts = len(sources) + 2
	}
	if opts.RetryDelay == 0 {
		opts.RetryDelay = DefaultRetryDelay
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = freeSpace
	}
	cache := opts.Cache

	// The distinct chunks, in manifest order.
	var all []want
	seen := make(map[artifact.Digest]bool)
	var total int64
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			d, _ := artifact.DigestFromBytes(c.GetDigest())
			if seen[d] {
				continue
			}
			seen[d] = true
			all = append(all, want{d, int64(c.GetSize())})
			total += int64(c.GetSize())
		}
	}
	ds := make([]artifact.Digest, len(all))
	for i, w := range all {
		ds[i] = w.d
	}
	cache.pin(ds)
	defer cache.unpin(ds)

	var missing []want
	var missingBytes int64
	for _, w := range all {
		switch cache.sizeOf(w.d) {
		case w.size:
			st.ChunksFromCache++
			st.BytesFromCache += w.size
			continue
		case -1:
		default:
			// A chunk of another size cannot have this digest.
			if err := cache.Remove(w.d); err != nil {
				return st, err
			}
		}
		missing = append(missing, w)
		missingBytes += w.size
	}
	if err := checkSpace(opts.FreeSpace, cache.Dir(), dst, missingBytes, int64(m.GetTotalSize())); err != nil {
		return st, err
	}
	if opts.RandomOrder {
		rand.Shuffle(len(missing), func(i, j int) { missing[i], missing[j] = missing[j], missing[i] })
	}

	p := &puller{
		opts:    opts,
		sources: sources,
		prio:    make([]int, len(sources)),
		load:    make([]int, len(sources)),
		fails:   make([]int, len(sources)),
		dropped: make([]error, len(sources)),
		st:      &st,
		done:    st.BytesFromCache,
		checked: make(map[artifact.Digest]bool),
		total:   total,
	}
	if opts.BytesPerSecond > 0 {
		burst := int(min(opts.BytesPerSecond, rateChunk))
		p.limiter = rate.NewLimiter(rate.Limit(opts.BytesPerSecond), burst)
	}
	for i, src := range sources {
		p.prio[i] = priority(src)
	}
	p.progress()
	if err := p.fetchAll(ctx, missing); err != nil {
		return st, err
	}

	// The cache's bytes were checked when written; if one rotted on disk
	// since, Assemble finds it, and it is fetched again once. The chunks
	// this pull fetched were hashed as they were cached, seconds ago:
	// Assemble copies those without hashing them a second time.
	var last artifact.Digest
	open := func(d artifact.Digest) (io.ReadCloser, error) {
		last = d
		rc, err := cache.Open(d)
		if err != nil {
			return nil, err
		}
		if f, ok := rc.(*os.File); ok && p.fetched(d) {
			return checkedChunk{f}, nil
		}
		return rc, nil
	}
	for try := 0; ; try++ {
		err := artifact.Assemble(ctx, m, dst, open)
		if err == nil || try > 0 || !errors.Is(err, artifact.ErrChunkCorrupt) {
			return st, err
		}
		if err := cache.Remove(last); err != nil {
			return st, err
		}
		size := int64(-1)
		for _, w := range all {
			if w.d == last {
				size = w.size
			}
		}
		p.mu.Lock()
		p.done -= size
		p.mu.Unlock()
		if err := p.fetchAll(ctx, []want{{last, size}}); err != nil {
			return st, err
		}
	}
}

// puller is the state of one pull's fetching.
type puller struct {
	opts    Options
	sources []Source
	prio    []int         // by source, read once: see Prioritized
	limiter *rate.Limiter // nil: no bandwidth cap

	mu      sync.Mutex // guards the fields below
	load    []int      // requests in flight, by source
	fails   []int      // failures in a row, by source
	dropped []error    // why each source was dropped; nil while in use
	next    int        // where the round robin among equally loaded sources starts
	st      *Stats
	done    int64
	total   int64
	checked map[artifact.Digest]bool // chunks this pull fetched and checked
}

// fetched reports whether this pull fetched and checked the chunk d.
func (p *puller) fetched(d artifact.Digest) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checked[d]
}

// checkedChunk is a cached chunk this pull hashed while caching it.
type checkedChunk struct{ *os.File }

var _ artifact.CheckedChunk = checkedChunk{}

func (c checkedChunk) CheckedFile() *os.File { return c.File }

// fetchAll fetches ws with up to InFlight workers; the first chunk that
// cannot be fetched stops the others.
func (p *puller) fetchAll(ctx context.Context, ws []want) error {
	if len(ws) == 0 {
		return nil
	}
	if len(p.sources) == 0 {
		return fmt.Errorf("%d chunks to fetch and no source to fetch them from: %w", len(ws), ErrNoSource)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan want)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(p.opts.InFlight, len(ws)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for w := range jobs {
				if err := p.fetch(ctx, w); err != nil {
					errOnce.Do(func() { firstErr = err })
					cancel()
				}
			}
		}()
	}
feed:
	for _, w := range ws {
		select {
		case jobs <- w:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// fetch gets one chunk into the cache, trying sources in turn. A decline
// is not an attempt: it costs the source nothing and the chunk no time.
func (p *puller) fetch(ctx context.Context, w want) error {
	tried := make([]bool, len(p.sources))
	declined := make([]bool, len(p.sources))
	var errs []error
	for attempt := 0; attempt < p.opts.Attempts; {
		if err := ctx.Err(); err != nil {
			return err
		}
		i, again := p.pick(tried, declined)
		if i < 0 {
			if why := p.dropReasons(); why != nil {
				errs = append(errs, why)
			}
			break
		}
		if attempt > 0 {
			p.mu.Lock()
			p.st.Retries++
			p.mu.Unlock()
		}
		if again {
			// Every source still in use has failed this chunk: give the
			// fault a moment to pass.
			t := time.NewTimer(p.opts.RetryDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				p.release(i)
				return ctx.Err()
			case <-t.C:
			}
		}
		origin, err := p.fetchFrom(ctx, p.sources[i], w)
		var local *localError
		if errors.As(err, &local) {
			p.release(i)
			return fmt.Errorf("chunk %s: %w", w.d, local.err)
		}
		if errors.Is(err, ErrDecline) && ctx.Err() == nil {
			p.decline(i)
			declined[i] = true
			errs = append(errs, fmt.Errorf("from %s: %w", p.sources[i].Name(), err))
			continue
		}
		tried[i] = true
		attempt++
		p.finish(i, origin, w, err)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		errs = append(errs, fmt.Errorf("from %s: %w", p.sources[i].Name(), err))
	}
	return fmt.Errorf("chunk %s (%s): %w: %w", w.d, units.Bytes(uint64(w.size)), ErrNoSource, errors.Join(errs...))
}

func (p *puller) fetchFrom(ctx context.Context, src Source, w want) (origin string, err error) {
	body, err := src.Chunk(ctx, w.d, w.size)
	if err != nil {
		return "", err
	}
	defer body.Close()
	origin = src.Name()
	if o, ok := body.(Origin); ok {
		origin = o.Origin()
	}
	sr := &sourceReader{ctx: ctx, r: body}
	var r io.Reader = sr
	if p.limiter != nil {
		r = &limitedReader{ctx, r, p.limiter}
	}
	err = p.opts.Cache.Put(w.d, w.size, r)
	if err != nil && sr.err == nil && !errors.Is(err, artifact.ErrChunkCorrupt) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
		// The source served its bytes (a short or wrong body is
		// ErrChunkCorrupt); the cache could not keep them. That holds even
		// when the pull is stopping meanwhile, as it does once another
		// worker met the same local failure: blamed on the source, it
		// would be dropped for this machine's fault.
		return origin, &localError{err}
	}
	return origin, err
}

// Origin is what a chunk body a Source returns may implement when its
// bytes came from elsewhere than the source's name says, such as a site
// source passing on a chunk it fetched from the servers: Stats and
// Options.Fetched then name Origin instead.
type Origin interface {
	Origin() string
}

// localError is a failure of this machine (a full disk, a broken cache
// directory), not of a source: trying other sources cannot help.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// pick chooses the source for the next try of a chunk and counts the
// request as in flight: among the sources neither dropped nor declining
// the chunk, those that have not failed it first (again reports when only
// such sources are left), then the highest priority, then the least
// loaded. It returns -1 when no source is left.
func (p *puller) pick(tried, declined []bool) (i int, again bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	best, bestTried := -1, false
	n := len(p.sources)
	for k := range n {
		j := (p.next + k) % n
		if p.dropped[j] != nil || declined[j] {
			continue
		}
		better := best < 0 ||
			(bestTried && !tried[j]) ||
			(bestTried == tried[j] && (p.prio[j] > p.prio[best] ||
				p.prio[j] == p.prio[best] && p.load[j] < p.load[best]))
		if better {
			best, bestTried = j, tried[j]
		}
	}
	if best < 0 {
		return -1, false
	}
	p.next = (best + 1) % n
	p.load[best]++
	return best, bestTried
}

func (p *puller) release(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.load[i]--
}

// decline records that source i declined a chunk: not a failure, so its
// failures in a row stand as they were.
func (p *puller) decline(i int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.load[i]--
	p.st.Declines++
}

// finish records the outcome of one try from source i, whose bytes came
// from origin.
func (p *puller) finish(i int, origin string, w want, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.load[i]--
	switch {
	case err == nil:
		p.fails[i] = 0
		p.st.ChunksFetched++
		p.st.BytesFetched += w.size
		p.st.BytesBySource[origin] += w.size
		p.checked[w.d] = true
		p.done += w.size
		if p.opts.Fetched != nil {
			p.opts.Fetched(origin, w.size)
		}
		p.progressLocked()
		return
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		// The pull is stopping; that says nothing about the source.
		return
	case errors.Is(err, artifact.ErrChunkCorrupt):
		p.st.CorruptChunks++
		p.dropLocked(i, fmt.Errorf("served corrupt bytes: %w", err))
	default:
		if p.fails[i]++; p.fails[i] >= sourceFailLimit {
			p.dropLocked(i, fmt.Errorf("failed %d times in a row, last: %w", p.fails[i], err))
		}
	}
}

func (p *puller) dropLocked(i int, why error) {
	if p.dropped[i] == nil {
		p.dropped[i] = why
		p.st.DroppedSources = append(p.st.DroppedSources, p.sources[i].Name())
	}
}

// dropReasons says why every source was dropped.
func (p *puller) dropReasons() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	errs := make([]error, 0, len(p.sources))
	for i, why := range p.dropped {
		if why != nil {
			errs = append(errs, fmt.Errorf("source %s dropped: %w", p.sources[i].Name(), why))
		}
	}
	return errors.Join(errs...)
}

func (p *puller) progress() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.progressLocked()
}

func (p *puller) progressLocked() {
	if p.opts.Progress != nil {
		p.opts.Progress(p.done, p.total)
	}
}

// sourceReader ends a read from a source once the pull is cancelled, even
// if the source's body does not watch the context itself, and keeps the
// source's error apart from the cache's.
type sourceReader struct {
	ctx context.Context
	r   io.Reader
	err error // the first error other than io.EOF
}

func (s *sourceReader) Read(b []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// limitedReader reads at most rateChunk bytes at a time and waits on the
// pull's shared limiter for each read, so all sources together keep to
// the cap.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (l *limitedReader) Read(b []byte) (int, error) {
	if len(b) > l.l.Burst() {
		b = b[:l.l.Burst()]
	}
	n, err := l.r.Read(b)
	if n > 0 {
		if werr := l.l.WaitN(l.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

// checkSpace refuses a pull that would fill the disk: the chunks to fetch
// land in the cache, and the assembled version beside dst.
func checkSpace(free func(string) (uint64, uint64, error), cacheDir, dst string, fetchBytes, versionBytes int64) error {
	cacheFree, cacheDev, err := free(cacheDir)
	if errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check free space: %w", err)
	}
	parent := filepath.Dir(filepath.Clean(dst))
	dstFree, dstDev, err := free(parent)
	if err != nil {
		return fmt.Errorf("check free space: %w", err)
	}
	if cacheDev == dstDev {
		need := uint64(fetchBytes + versionBytes)
		if need > cacheFree {
			return fmt.Errorf("%w: %s needed on the disk holding %s and %s (%s of chunks to fetch, %s for the assembled version), %s free: free space there or lower the chunk cache budget",
				ErrNoSpace, units.Bytes(need), cacheDir, parent, units.Bytes(uint64(fetchBytes)), units.Bytes(uint64(versionBytes)), units.Bytes(cacheFree))
		}
		return nil
	}
	if uint64(fetchBytes) > cacheFree {
		return fmt.Errorf("%w: %s of chunks to fetch into %s, %s free there: free space or lower the chunk cache budget",
			ErrNoSpace, units.Bytes(uint64(fetchBytes)), cacheDir, units.Bytes(cacheFree))
	}
	if uint64(versionBytes) > dstFree {
		return fmt.Errorf("%w: %s for the assembled version in %s, %s free there: free space on that disk",
			ErrNoSpace, units.Bytes(uint64(versionBytes)), parent, units.Bytes(dstFree))
	}
	return nil
}
