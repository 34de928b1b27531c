package fetch

import (
	"container/list"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Cache holds verified chunks on disk under <dir>/chunks/ab/<hex>, where
// <hex> is the chunk's SHA-256 in hex and ab its first two digits. A chunk
// is written to <dir>/tmp, checked, synced, and only then renamed to its
// name, so every named chunk was whole and correct when written. The cache
// is the resume point of a pull: after a crash or a kill, the chunks
// already named are kept and only those that were in flight are fetched
// again.
//
// The cache keeps to a byte budget by evicting the least recently used
// chunks, except those of the protected manifests (Protect) and those of
// a pull in progress. Protected and in-use chunks may hold it over budget.
//
// A Cache is safe for concurrent use. Two Caches must not share a
// directory.
type Cache struct {
	dir    string
	budget int64

	mu        sync.Mutex // guards the fields below
	entries   map[artifact.Digest]*list.Element
	lru       list.List // of *cacheEntry, least recently used at the front
	size      int64
	protected map[artifact.Digest]bool
	pinned    map[artifact.Digest]int // chunks of pulls in progress, counted
}

type cacheEntry struct {
	digest artifact.Digest
	size   int64
}

// OpenCache opens or creates the cache in dir with a budget in bytes (zero
// or less means no budget). It lists the chunks already there, ordered by
// their last use before a restart, and removes temporary files left by
// writes that never finished. It evicts nothing until the first Put or
// Protect, so call Protect with the versions in use before pulling.
func OpenCache(dir string, budget int64) (*Cache, error) {
	c := &Cache{
		dir:       dir,
		budget:    budget,
		entries:   make(map[artifact.Digest]*list.Element),
		protected: make(map[artifact.Digest]bool),
		pinned:    make(map[artifact.Digest]int),
	}
	if err := c.load(); err != nil {
		return nil, fmt.Errorf("open chunk cache %s: %w", dir, err)
	}
	return c, nil
}

func (c *Cache) load() error {
	// A temporary file is a chunk whose write was cut short; it was never
	// named, so nothing refers to it.
	if err := os.RemoveAll(c.tmpDir()); err != nil {
		return err
	}
	if err := os.MkdirAll(c.tmpDir(), 0o700); err != nil {
		return err
	}
	chunks := filepath.Join(c.dir, "chunks")
	if err := os.MkdirAll(chunks, 0o755); err != nil {
		return err
	}
	type found struct {
		e     cacheEntry
		mtime time.Time
	}
	var all []found
	shards, err := os.ReadDir(chunks)
	if err != nil {
		return err
	}
	for _, sh := range shards {
		if !sh.IsDir() || len(sh.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(chunks, sh.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			d, ok := parseChunkName(f.Name())
			if !ok || !f.Type().IsRegular() || f.Name()[:2] != sh.Name() {
				continue
			}
			fi, err := f.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			all = append(all, found{cacheEntry{d, fi.Size()}, fi.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mtime.Before(all[j].mtime) })
	for _, f := range all {
		c.addLocked(f.e.digest, f.e.size)
	}
	return nil
}

func parseChunkName(name string) (artifact.Digest, bool) {
	var d artifact.Digest
	if len(name) != 2*artifact.DigestSize {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(name)); err != nil {
		return d, false
	}
	// Only the one lowercase spelling is a chunk's name.
	return d, hex.EncodeToString(d[:]) == name
}

func (c *Cache) tmpDir() string { return filepath.Join(c.dir, "tmp") }

func (c *Cache) path(d artifact.Digest) string {
	h := hex.EncodeToString(d[:])
	return filepath.Join(c.dir, "chunks", h[:2], h)
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// Size returns the bytes of all cached chunks.
func (c *Cache) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Has reports whether the chunk d is cached.
func (c *Cache) Has(d artifact.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[d]
	return ok
}

// sizeOf returns the size of the cached chunk d, or -1.
func (c *Cache) sizeOf(d artifact.Digest) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d]; ok {
		return el.Value.(*cacheEntry).size
	}
	return -1
}

// Open returns the bytes of the cached chunk d and marks it used. The
// bytes were checked when written, not when read: a reader that must
// trust them (Assemble) checks them again.
func (c *Cache) Open(d artifact.Digest) (io.ReadCloser, error) {
	c.mu.Lock()
	el, ok := c.entries[d]
	if ok {
		c.lru.MoveToBack(el)
	}
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("open cached chunk %s: %w", d, fs.ErrNotExist)
	}
	p := c.path(d)
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("open cached chunk %s: %w", d, err)
	}
	// The modification time is the use order a restarted agent reads
	// back; failing to set it only makes eviction less exact.
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return f, nil
}

// Put reads the chunk d of size bytes from r and caches it if, and only
// if, the bytes have that size and digest; otherwise it returns an error
// wrapping artifact.ErrChunkCorrupt and caches nothing. The chunk's bytes
// are synced to disk before Put returns (its name may be lost to a crash
// soon after, and the chunk with it). Putting a chunk already cached reads
// and checks r all the same.
func (c *Cache) Put(d artifact.Digest, size int64, r io.Reader) (err error) {
	if err := c.put(d, size, r); err != nil {
		return fmt.Errorf("cache chunk %s: %w", d, err)
	}
	return nil
}

func (c *Cache) put(d artifact.Digest, size int64, r io.Reader) (err error) {
	f, err := os.CreateTemp(c.tmpDir(), "chunk-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	h := artifact.NewHasher()
	// One byte more than the size, to tell a long chunk from a right one.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, size+1))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%d bytes served, want %d: %w", n, size, artifact.ErrChunkCorrupt)
	}
	var got artifact.Digest
	h.Sum(got[:0])
	if got != d {
		return fmt.Errorf("the bytes served have digest %s: %w", got, artifact.ErrChunkCorrupt)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	final := c.path(d)
	shard := filepath.Dir(final)
	if err := os.MkdirAll(shard, 0o755); err != nil {
		return err
	}
	// The bytes are synced before the rename, so a named chunk is whole
	// after a crash. The rename itself is not synced: losing it costs a
	// fetch of that chunk again, while syncing the directory for every
	// chunk cost a pull about a third of its speed.
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d]; ok {
		c.lru.MoveToBack(el)
		return nil
	}
	c.addLocked(d, size)
	c.evictLocked()
	return nil
}

// Remove drops the chunk d from the cache, as when its bytes on disk
// turned out to be corrupt. Removing a chunk not cached is not an error.
func (c *Cache) Remove(d artifact.Digest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeLocked(d)
}

// Protect replaces the set of protected manifests: their chunks are never
// evicted. Pass the current and the previous version of each model, so a
// rollback and the next delta pull find their chunks here. Protect then
// evicts down to the budget.
func (c *Cache) Protect(ms ...*droverv1.Manifest) {
	p := make(map[artifact.Digest]bool)
	for _, m := range ms {
		for _, f := range m.GetFiles() {
			for _, ch := range f.GetChunks() {
				if d, err := artifact.DigestFromBytes(ch.GetDigest()); err == nil {
					p[d] = true
				}
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.protected = p
	c.evictLocked()
}

// pin keeps the chunks ds from eviction until unpin, while a pull fetches
// them one by one and then assembles from them.
func (c *Cache) pin(ds []artifact.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range ds {
		c.pinned[d]++
	}
}

func (c *Cache) unpin(ds []artifact.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range ds {
		if c.pinned[d]--; c.pinned[d] <= 0 {
			delete(c.pinned, d)
		}
	}
	c.evictLocked()
}

func (c *Cache) addLocked(d artifact.Digest, size int64) {
	c.entries[d] = c.lru.PushBack(&cacheEntry{d, size})
	c.size += size
}

func (c *Cache) removeLocked(d artifact.Digest) error {
	el, ok := c.entries[d]
	if !ok {
		return nil
	}
	if err := os.Remove(c.path(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove cached chunk %s: %w", d, err)
	}
	c.lru.Remove(el)
	delete(c.entries, d)
	c.size -= el.Value.(*cacheEntry).size
	return nil
}

// evictLocked removes least recently used chunks, skipping protected and
// pinned ones, until the cache is within its budget or nothing more may
// go. A chunk that cannot be removed stays listed and is tried again at
// the next eviction.
func (c *Cache) evictLocked() {
	if c.budget <= 0 {
		return
	}
	for el := c.lru.Front(); el != nil && c.size > c.budget; {
		next := el.Next()
		e := el.Value.(*cacheEntry)
		if !c.protected[e.digest] && c.pinned[e.digest] == 0 {
			_ = c.removeLocked(e.digest)
		}
		el = next
	}
}
