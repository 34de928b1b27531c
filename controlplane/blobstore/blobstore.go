// Package blobstore is the server's content-addressed chunk store: the
// chunks of model versions, each named by its digest and kept as one file
// on local disk beside (never inside) the Raft log, durable before Put
// returns.
//
// A directory holds:
//
//	LOCK                 held by the one Store that has the directory open
//	chunks/ab/abcdef…    one file per chunk, named by the key's hex, in one
//	                     of 256 shard directories by the key's first byte
//	tmp/                 chunks being written; emptied by Open
//
// A file under chunks/ is always a whole chunk: Put writes into tmp/,
// checks the bytes against the key, syncs the file, and only then renames
// it into place and syncs the shard directory. A crash at any moment leaves
// either no chunk or a complete one.
package blobstore

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Errors returned by Store, wrapped as "blobstore: op KEY: …"; match them
// with errors.Is.
var (
	// ErrNotFound is returned for a chunk the store does not hold.
	ErrNotFound = errors.New("chunk not found")

	// ErrDigestMismatch is returned by Put when the bytes read do not hash
	// to the key, or there are more or fewer of them than the size given.
	// Nothing of the refused chunk is left on disk.
	ErrDigestMismatch = errors.New("chunk does not match its key")

	// ErrTooLarge is returned by Put for a chunk over Options.MaxChunkSize.
	ErrTooLarge = errors.New("chunk is too large")

	// ErrNoSpace is returned by Put when writing the chunk would leave less
	// free disk space than Options.ReserveBytes, and when the disk reports
	// itself full while the chunk is written.
	ErrNoSpace = errors.New("not enough disk space")

	// ErrCorrupt is returned by Verify for a chunk whose bytes on disk no
	// longer match its key. Verify has removed it by then, so that it can
	// be fetched again from a peer.
	ErrCorrupt = errors.New("chunk is corrupt")

	// ErrClosed is returned by every method that touches the disk once
	// Close has been called.
	ErrClosed = errors.New("chunk store is closed")
)

// Key names a chunk: the digest of its bytes under Options.Hash.
type Key [32]byte

// String returns the key in lowercase hex, as it is named on disk.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// ParseKey reads a key written by Key.String.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*len(k) {
		return Key{}, fmt.Errorf("blobstore: parse key %q: want %d hex digits", s, 2*len(k))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return Key{}, fmt.Errorf("blobstore: parse key %q: %w", s, err)
	}
	return k, nil
}

// Names inside the store's directory.
const (
	chunksDir = "chunks"
	tmpDir    = "tmp"
	lockFile  = "LOCK"
)

// Options configure Open. Start from DefaultOptions.
type Options struct {
	// MaxChunkSize is the largest chunk Put accepts, in bytes. Chunks
	// average about 1 MiB; the chunker bounds them well below this.
	MaxChunkSize int64

	// ReserveBytes is free disk space Put never uses: a Put that would
	// leave less is refused with ErrNoSpace before it writes anything, so
	// that a flood of chunks cannot starve the Raft log on the same disk.
	ReserveBytes int64

	// GCGrace is how long GC keeps an unreferenced chunk after it was last
	// written or unpinned (or, for chunks found by Open, after Open). It
	// covers a server whose state lags the cluster's: a push releases its
	// pins once its version is committed, which this server may apply a
	// little later; and a Put made before its pusher pinned it.
	GCGrace time.Duration

	// Hash returns a new hash whose 32-byte sum is a chunk's key; nil means
	// SHA-256. The store only compares sums, so it works with whatever
	// digest the chunker uses.
	Hash func() hash.Hash

	// FS is the file system the store lives on; nil means vfs.Default, the
	// operating system's. Tests pass Pebble's crash-simulating memory file
	// system, or one that injects errors.
	FS vfs.FS

	// Now tells the time for GCGrace; nil means time.Now.
	Now func() time.Time

	// Logger receives what the store reports: opening, chunks found
	// corrupt, garbage collected. Nil discards it.
	Logger *slog.Logger
}

// DefaultOptions returns the options a server uses.
func DefaultOptions() Options {
	return Options{
		MaxChunkSize: 16 << 20,
		ReserveBytes: 1 << 30,
		GCGrace:      time.Hour,
		Hash:         sha256.New,
		FS:           vfs.Default,
		Now:          time.Now,
	}
}

// Validate reports whether the options can be used.
func (o Options) Validate() error {
	switch {
	case o.MaxChunkSize <= 0:
		return fmt.Errorf("MaxChunkSize is %d; it must be positive (start from DefaultOptions)", o.MaxChunkSize)
	case o.ReserveBytes < 0:
		return fmt.Errorf("ReserveBytes is %d; it must not be negative", o.ReserveBytes)
	case o.GCGrace < 0:
		return fmt.Errorf("GCGrace is %v; it must not be negative", o.GCGrace)
	}
	if o.Hash != nil {
		if n := o.Hash().Size(); n != len(Key{}) {
			return fmt.Errorf("keys are %d bytes, but Hash makes %d-byte digests: use a 256-bit hash such as SHA-256", len(Key{}), n)
		}
	}
	return nil
}

// Info describes a stored chunk.
type Info struct {
	Size int64
	// Pinned says an in-flight push holds the chunk (see Pin).
	Pinned bool
	// Touched is when the chunk was last written or unpinned, or when the
	// store was opened if neither happened since; GCGrace counts from it.
	Touched time.Time
}

// Counters are running totals of what the store has done since Open, for
// the server to export as metrics. They only grow.
type Counters struct {
	Puts             uint64 // chunks written
	PutBytes         uint64 // bytes of the chunks written
	PutsPresent      uint64 // Puts answered without writing: the chunk was there
	DigestMismatches uint64 // Puts refused with ErrDigestMismatch
	NoSpace          uint64 // Puts refused with ErrNoSpace
	Removed          uint64 // chunks GC removed
	RemovedBytes     uint64 // bytes of the chunks GC removed
	Corrupt          uint64 // chunks Verify found damaged and removed
}

type counters struct {
	puts, putBytes, putsPresent, digestMismatches, noSpace atomic.Uint64
	removed, removedBytes, corrupt                         atomic.Uint64
}

// entry is what the store remembers of a chunk on disk.
type entry struct {
	size int64
	// touched is when the chunk was last written or unpinned, as time
	// since the store's epoch (Open), so that GCGrace follows the
	// monotonic clock.
	touched time.Duration
}

// Store is a content-addressed chunk store in one directory.
//
// All methods are safe for concurrent use. Has, Missing, Stat, Size, Count,
// Pin and Counters answer from memory; the index they read is built by Open
// from the files on disk and kept up to date by every change. A chunk
// enters the index only once it is durable, so Has never promises a chunk
// that a crash could take away.
//
// Close waits for Puts in progress; cancel their contexts first if their
// readers may block.
type Store struct {
	dir, chunks, tmp string
	fs               vfs.FS
	opts             Options
	log              *slog.Logger
	epoch            time.Time // Now() at Open; entry.touched counts from it
	lock             io.Closer
	bufs             sync.Pool // *[]byte copy buffers for Put and Verify
	tmpSeq           atomic.Uint64
	c                counters

	// lifeMu is held shared by every method that touches the disk and
	// exclusively by Close.
	lifeMu sync.RWMutex
	closed bool // guarded by lifeMu

	// shards[k[0]] is held while a chunk's file is renamed into place,
	// removed, or verified, so that for one key these happen one at a
	// time: GC never removes a file a Put has just renamed in, and Verify
	// never removes a good copy that replaced the damaged one it read.
	shards [256]sync.Mutex

	gcMu sync.Mutex // one GC at a time

	mu      sync.RWMutex  // guards the fields below
	index   map[Key]entry // chunks on disk
	pins    map[Key]int   // pin counts; keys need not be in index
	size    int64         // sum of index sizes
	writing int64         // bytes of Puts past their free-space check and not yet done
}

var _ io.Closer = (*Store)(nil)

// Open opens the store in dir, creating it if needed. It takes the
// directory's lock, empties tmp/, and reads every chunk's size to build the
// index; it does not re-hash chunks (Verify does that).
func Open(dir string, opts Options) (*Store, error) {
	s, err := open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("blobstore: open %s: %w", dir, err)
	}
	return s, nil
}

func open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Hash == nil {
		opts.Hash = sha256.New
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fsys := opts.FS
	s := &Store{
		dir:    dir,
		chunks: fsys.PathJoin(dir, chunksDir),
		tmp:    fsys.PathJoin(dir, tmpDir),
		fs:     fsys,
		opts:   opts,
		log:    log.With("component", "blobstore", "dir", dir),
		epoch:  opts.Now(),
		index:  map[Key]entry{},
		pins:   map[Key]int{},
	}
	s.bufs.New = func() any { b := make([]byte, 256<<10); return &b }

	if err := fsys.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	lockPath := fsys.PathJoin(dir, lockFile)
	lock, err := fsys.Lock(lockPath)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w; is another drover server using this directory? Each server needs its own", lockPath, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = lock.Close()
		}
	}()
	s.lock = lock

	start := time.Now()
	// A file in tmp/ is a Put that never finished; nobody was told it
	// succeeded.
	if err := fsys.RemoveAll(s.tmp); err != nil {
		return nil, fmt.Errorf("emptying %s: %w", s.tmp, err)
	}
	if err := fsys.MkdirAll(s.tmp, 0o755); err != nil {
		return nil, err
	}
	// Every shard directory is made here, once, so that Put only ever
	// needs to sync the one it renames into.
	for i := range 256 {
		if err := fsys.MkdirAll(s.shardDir(byte(i)), 0o755); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{s.chunks, dir, fsys.PathDir(dir)} {
		if err := syncDir(fsys, d); err != nil {
			return nil, fmt.Errorf("sync %s: %w", d, err)
		}
	}
	if err := s.loadIndex(); err != nil {
		return nil, err
	}
	ok = true
	s.log.Info("chunk store open", "chunks", len(s.index), "bytes", s.size, "took", time.Since(start).Round(time.Millisecond))
	return s, nil
}

// loadIndex reads the size of every chunk on disk. Chunks found here count
// as touched now: pins live in memory, so a push that was in flight when
// the server stopped has GCGrace to pin its chunks again.
func (s *Store) loadIndex() error {
	for i := range 256 {
		dir := s.shardDir(byte(i))
		names, err := s.fs.List(dir)
		if err != nil {
			return fmt.Errorf("listing %s: %w", dir, err)
		}
		for _, name := range names {
			p := s.fs.PathJoin(dir, name)
			k, err := ParseKey(name)
			if err != nil || k[0] != byte(i) {
				s.log.Warn("leaving alone a file that is not a chunk", "path", p)
				continue
			}
			fi, err := s.fs.Stat(p)
			if err != nil {
				return fmt.Errorf("stat %s: %w", p, err)
			}
			if !fi.Mode().IsRegular() {
				s.log.Warn("leaving alone a file that is not a chunk", "path", p)
				continue
			}
			s.index[k] = entry{size: fi.Size()}
			s.size += fi.Size()
		}
	}
	return nil
}

// Close releases the directory's lock. It waits for Puts, GCs and Verifies
// in progress; afterwards they return ErrClosed. Readers returned by Open
// stay readable until closed. Close is idempotent.
func (s *Store) Close() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.lock.Close(); err != nil {
		return fmt.Errorf("blobstore: close %s: %w", s.dir, err)
	}
	return nil
}

// begin holds the store open for one operation that touches the disk; the
// caller calls end when done.
func (s *Store) begin() error {
	s.lifeMu.RLock()
	if s.closed {
		s.lifeMu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *Store) end() { s.lifeMu.RUnlock() }

func (s *Store) shardDir(b byte) string {
	return s.fs.PathJoin(s.chunks, hex.EncodeToString([]byte{b}))
}

func (s *Store) path(k Key) string {
	return s.fs.PathJoin(s.shardDir(k[0]), k.String())
}

// since is the time since the store's epoch, for entry.touched.
func (s *Store) since() time.Duration { return s.opts.Now().Sub(s.epoch) }

// Has reports whether the store holds the chunk, durably.
func (s *Store) Has(k Key) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.index[k]
	return ok
}

// Missing returns the keys the store does not hold, in the order given: the
// chunks a pusher must still send. A key given twice and missing is
// returned twice. Call it with the keys pinned (see Pin), or GC may remove
// a chunk it reported present before the push is committed.
func (s *Store) Missing(keys []Key) []Key {
	var missing []Key
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, k := range keys {
		if _, ok := s.index[k]; !ok {
			missing = append(missing, k)
		}
	}
	return missing
}

// Stat describes a stored chunk, or returns ErrNotFound.
func (s *Store) Stat(k Key) (Info, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.index[k]
	if !ok {
		return Info{}, fmt.Errorf("blobstore: stat %s: %w", k, ErrNotFound)
	}
	return Info{Size: e.size, Pinned: s.pins[k] > 0, Touched: s.epoch.Add(e.touched)}, nil
}

// Size returns the total size of the stored chunks in bytes.
func (s *Store) Size() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.size
}

// Count returns the number of stored chunks.
func (s *Store) Count() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.index)
}

// Counters returns the store's running totals.
func (s *Store) Counters() Counters {
	return Counters{
		Puts:             s.c.puts.Load(),
		PutBytes:         s.c.putBytes.Load(),
		PutsPresent:      s.c.putsPresent.Load(),
		DigestMismatches: s.c.digestMismatches.Load(),
		NoSpace:          s.c.noSpace.Load(),
		Removed:          s.c.removed.Load(),
		RemovedBytes:     s.c.removedBytes.Load(),
		Corrupt:          s.c.corrupt.Load(),
	}
}

// chunkReader reads one chunk file.
type chunkReader struct {
	*io.SectionReader
	f vfs.File
}

func (r chunkReader) Close() error { return r.f.Close() }

// Open opens a chunk for reading and returns its size, or ErrNotFound. The
// bytes are not re-hashed (Verify does that); a chunk removed by GC while
// it is open stays readable through the returned reader, which also
// implements io.ReaderAt.
func (s *Store) Open(k Key) (io.ReadSeekCloser, int64, error) {
	if err := s.begin(); err != nil {
		return nil, 0, fmt.Errorf("blobstore: open %s: %w", k, err)
	}
	defer s.end()
	// The file, not the index, answers: GC takes a chunk out of the index
	// for a moment while it asks whether the chunk is live, and a reader
	// must not fail because of that.
	f, err := s.fs.Open(s.path(k))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("blobstore: open %s: %w", k, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blobstore: open %s: %w", k, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, 0, fmt.Errorf("blobstore: open %s: %w", k, err)
	}
	return chunkReader{SectionReader: io.NewSectionReader(f, 0, fi.Size()), f: f}, fi.Size(), nil
}

// syncDir makes the entries of dir durable. Some file systems refuse to
// sync a directory; that only weakens durability, so it is not reported
// (internal/atomicfile.SyncDir does the same on the operating system's
// file system).
func syncDir(fsys vfs.FS, dir string) error {
	d, err := fsys.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, errors.ErrUnsupported) {
		return nil
	}
	return err
}
