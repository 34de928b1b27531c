// Package raftstore is the durable Raft log and stable store on Pebble: one
// Store per server keeps hashicorp/raft's log entries and its few stable
// values (current term, last vote) in a single Pebble database.
package raftstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
)

// Errors returned by Store. Errors about stored data wrap ErrCorrupt, both
// for damage this package detects (checksums, malformed entries) and for
// damage Pebble reports.
var (
	// ErrKeyNotFound is returned by Get and GetUint64 for a key that was never
	// set. Its text is exactly "not found" and it is returned unwrapped:
	// hashicorp/raft recognises a missing current term on first start by
	// comparing err.Error() with that string, exactly as raft-boltdb's
	// ErrKeyNotFound is matched.
	ErrKeyNotFound = errors.New("not found")

	// ErrCorrupt marks stored data that failed an integrity check. A server
	// whose store is corrupt must be rebuilt from its peers (RebuildHint).
	ErrCorrupt = errors.New("raft store is corrupt")

	// ErrWriteFailed is returned by every call after a write failed to reach
	// stable storage (an fsync error, say). The kernel may already have
	// dropped the dirty pages, so a retry could report success for data that
	// is not on disk: the store refuses everything instead, and the server
	// must stop. Failed reports the moment.
	ErrWriteFailed = errors.New("a write failed to reach the disk; the raft store takes no more")

	// ErrUnsupportedFormat marks an entry written in a format this build does
	// not know, such as one written by a newer release.
	ErrUnsupportedFormat = errors.New("raft store entry has an unsupported format")

	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("raft store is closed")

	// ErrZeroIndex is returned by StoreLog(s) for an entry with index 0,
	// which hashicorp/raft never writes and which FirstIndex and LastIndex
	// use to mean "no entries".
	ErrZeroIndex = errors.New("log index 0 is reserved")
)

// RebuildHint ends every corruption error from Open, so that the operator
// reading it knows the way out. The cluster still has every committed entry:
// only this server's copy is damaged, and a Raft server must not carry on
// with less than it acknowledged, so it is rebuilt from its peers rather
// than the whole cluster restored.
const RebuildHint = "rebuild this server from its peers: 'drover operator raft remove-peer NAME' on a healthy server, " +
	"then start this one with 'drover server --rebuild' (docs/operations.md, \"Rebuilding one server\")"

// Key layout. Every key starts with a prefix byte, so log entries and stable
// values never collide and each kind is one contiguous key range. Log keys
// are the prefix and the index as big-endian uint64, so that byte order is
// index order and a range of indexes is a range of keys.
const (
	prefixLog    byte = 0x01
	prefixStable byte = 0x02

	logKeyLen = 1 + 8
)

// memTableSize is Pebble's memtable size, and so about the most a WAL file
// holds before Pebble starts the next. Log entries live briefly (Raft deletes them once a snapshot
// covers them), so a memtable that holds many seconds of a busy cluster's log
// (some 15 s at 15k applies/s of 100-byte commands) means few flushes of
// entries that are about to be deleted anyway. Pebble stops writes while two
// full memtables wait to be flushed, so memtables take about 100 MiB at most.
const memTableSize = 32 << 20

// Options configure Open.
type Options struct {
	// NoSync makes writes return before they reach stable storage. It is for
	// tests and benchmarks only: a server running with it can lose
	// acknowledged entries on power loss, which breaks Raft's safety.
	NoSync bool

	// Logger receives what Pebble reports: routine messages at Debug,
	// problems at Error. Nil discards them.
	Logger *slog.Logger

	// FS is the file system the store lives on; nil means vfs.Default, the
	// operating system's. Tests pass Pebble's crash-simulating memory file
	// system or one that injects errors.
	FS vfs.FS
}

// DefaultOptions returns the options a server uses: durable writes on the
// operating system's file system, no logging.
func DefaultOptions() Options {
	return Options{FS: vfs.Default}
}

// Validate reports whether the options can be used. Every combination of
// the present fields is valid; Validate exists so that callers check options
// the same way for every package, and new fields have a place to be checked.
func (o Options) Validate() error {
	return nil
}

// Store is a raft.LogStore and raft.StableStore on Pebble.
//
// All methods are safe for concurrent use. Writes are durable when they
// return (unless Options.NoSync): StoreLog, StoreLogs, DeleteRange, Set and
// SetUint64 return only after Pebble has synced its write-ahead log.
// FirstIndex and LastIndex are answered from memory. Writes are serialised
// with each other (see writeMu for why); reads run alongside them. After
// Close every method returns ErrClosed; after a failed write, see
// ErrWriteFailed.
type Store struct {
	dir       string
	db        *pebble.DB
	writeOpts *pebble.WriteOptions

	// lifeMu is held shared by every method and exclusively by Close, so
	// that Pebble, which panics when used after Close, never is.
	lifeMu sync.RWMutex
	closed bool // guarded by lifeMu

	// writeMu serialises writes, log writes together with the bounds update
	// that follows each, so the cached bounds always describe the last
	// commit, and so that the WAL never holds a record written before the
	// one ahead of it was synced (see checkWAL).
	writeMu sync.Mutex

	mu    sync.Mutex // guards the fields below
	first uint64     // lowest stored index; 0 when the log is empty
	last  uint64     // highest stored index; 0 when the log is empty

	failOnce sync.Once
	failed   chan struct{} // closed when a write fails; see ErrWriteFailed
	failErr  error         // the first failed write's error; set before failed closes
}

var (
	_ raft.LogStore    = (*Store)(nil)
	_ raft.StableStore = (*Store)(nil)
	_ io.Closer        = (*Store)(nil)
)

// Store deliberately does not implement raft.MonotonicLogStore: it handles
// gaps between indexes (the bounds are found by seeking, not by counting),
// and claiming monotonicity would only make Raft delete the whole log after
// every snapshot restore.

// Open opens the store in dir, creating it if needed. A damaged store is
// reported as an error that wraps ErrCorrupt, names dir and says how to
// recover; Open does not panic on damaged data.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("raftstore: open %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "raftstore", "dir", dir)

	fsys := opts.FS
	if fsys == nil {
		fsys = vfs.Default
	}
	s := &Store{dir: dir, writeOpts: pebble.Sync, failed: make(chan struct{})}
	if opts.NoSync {
		s.writeOpts = pebble.NoSync
	}
	err := catchPanic(func() error {
		// Pebble writes the WAL it creates while opening in the format the
		// directory had before Open moved it to ours. For a new (or older)
		// directory that first WAL would lack the sync offsets that let
		// recovery tell a torn tail from damage in the middle, so open once
		// to set the format and again for a WAL that has them.
		if upgrade, err := needsFormatUpgrade(fsys, dir); err != nil {
			return err
		} else if upgrade {
			db, err := pebble.Open(dir, pebbleOptions(fsys, log, !opts.NoSync))
			if err != nil {
				return err
			}
			if err := db.Close(); err != nil {
				return err
			}
		}
		db, err := pebble.Open(dir, pebbleOptions(fsys, log, !opts.NoSync))
		if err != nil {
			return err
		}
		s.db = db
		return s.loadBounds()
	})
	if err != nil {
		if s.db != nil {
			// The database opened but failed a check. Closing is best effort:
			// after a panic Pebble may be in no state to close.
			_ = catchPanic(s.db.Close)
		}
		return nil, openError(dir, err)
	}
	return s, nil
}

// formatVersion is the Pebble format the store writes. It is pinned rather
// than FormatNewest, so that upgrading Pebble never moves the on-disk format
// (which rules out downgrading) unasked. It is at least FormatWALSyncChunks,
// whose WAL records carry the offset already synced: recovery then reports
// damage before that offset as corruption instead of taking it for a torn
// tail and silently dropping every later, acknowledged, entry.
const formatVersion = pebble.FormatValueSeparation

func pebbleOptions(fsys vfs.FS, log *slog.Logger, sync bool) *pebble.Options {
	return &pebble.Options{
		Logger:             pebbleLogger{log: log.With("from", "pebble")},
		EventListener:      eventListener(log),
		FormatMajorVersion: formatVersion,
		MemTableSize:       memTableSize,
		FS:                 walFS{FS: fsys, oneAtATime: sync},
	}
}

// needsFormatUpgrade reports whether dir holds no store yet, or one in a
// format older than formatVersion.
func needsFormatUpgrade(fsys vfs.FS, dir string) (bool, error) {
	desc, err := pebble.Peek(dir, fsys)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return !desc.Exists || desc.FormatMajorVersion < formatVersion, nil
}

// loadBounds finds the first and last index by seeking, and reads both
// entries back, so that a store whose newest entry is damaged fails at Open
// rather than in the middle of an election.
func (s *Store) loadBounds() error {
	first, last, err := s.seekBounds()
	if err != nil {
		return err
	}
	s.first, s.last = first, last
	if last == 0 {
		return nil
	}
	var l raft.Log
	for _, idx := range []uint64{first, last} {
		err := s.getLog(idx, &l)
		if err == raft.ErrLogNotFound {
			// The iterator just saw this key.
			err = fmt.Errorf("iteration finds log %d but reading it does not: %w", idx, ErrCorrupt)
		}
		if err != nil {
			return fmt.Errorf("read log %d: %w", idx, err)
		}
	}
	return nil
}

// catchPanic runs f and turns a panic in it, such as pebbleLogger.Fatalf's,
// into an error wrapping ErrCorrupt.
func catchPanic(f func() error) (err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if msg, ok := r.(pebbleFatal); ok {
			err = fmt.Errorf("pebble gave up: %s: %w", string(msg), ErrCorrupt)
			return
		}
		err = fmt.Errorf("pebble panicked: %v: %w", r, ErrCorrupt)
	}()
	return f()
}

// openError wraps an Open failure with the directory and, for damage, the way
// to recover. A file that Pebble's manifest lists but that is gone is damage
// too: the directory was opened, so it exists, and Pebble removes only files
// it no longer lists.
func openError(dir string, err error) error {
	// A damaged WAL is reported through Pebble's replay, which wraps it in
	// words that add nothing: the damage error names the file and says all.
	if wd, ok := errors.AsType[*WALDamageError](err); ok {
		err = wd
	}
	err = pebbleError(err)
	switch {
	case errors.Is(err, ErrCorrupt):
		return fmt.Errorf("raftstore: open %s: %w; %s", dir, err, RebuildHint)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("raftstore: open %s: %w: a file is missing: %w; %s", dir, ErrCorrupt, err, RebuildHint)
	default:
		return fmt.Errorf("raftstore: open %s: %w", dir, err)
	}
}

// pebbleError marks corruption that Pebble reports with ErrCorrupt, so that
// callers need to know only ErrCorrupt, and trims Pebble's messages to their
// first line.
func pebbleError(err error) error {
	if err == nil || errors.Is(err, ErrCorrupt) {
		return err
	}
	if pebble.IsCorruptionError(err) {
		return fmt.Errorf("%w: %w", ErrCorrupt, firstLine{err})
	}
	return firstLine{err}
}

// firstLine keeps an error in the chain but prints only its first line:
// Pebble joins a multi-line detail carrier onto its corruption errors, which
// reads badly inside a log line or a CLI message.
type firstLine struct{ err error }

func (e firstLine) Error() string {
	msg := e.err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return msg[:i]
	}
	return msg
}

func (e firstLine) Unwrap() error { return e.err }

// acquire takes lifeMu shared; every method that touches Pebble calls it
// first and release when done.
func (s *Store) acquire() error {
	s.lifeMu.RLock()
	if s.closed {
		s.lifeMu.RUnlock()
		return ErrClosed
	}
	select {
	case <-s.failed:
		s.lifeMu.RUnlock()
		return s.failErr
	default:
	}
	return nil
}

// write runs one Pebble write (f), with writeMu held, and, if it fails,
// fails the store: every
// later call returns the error, which wraps ErrWriteFailed, and Failed is
// closed. Pebble treats a failed WAL write or sync as fatal (it calls
// Fatalf, which panics here), and rightly: after a failed fsync the kernel
// may have dropped the dirty pages and marked them clean, so nothing written
// since the last good sync can be trusted to be on disk, nor can a later
// sync that happens to succeed.
func (s *Store) write(op string, f func() error) error {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("pebble gave up: %v", r)
			}
		}()
		return f()
	}()
	if err == nil {
		return nil
	}
	err = fmt.Errorf("raftstore: %s: %w: %w", op, ErrWriteFailed, pebbleError(err))
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failed)
	})
	return err
}

// Failed is closed when a write has failed to reach the disk; from then on
// every call returns Err. A server stops when it closes.
func (s *Store) Failed() <-chan struct{} { return s.failed }

// Err returns the error of the write that failed the store, or nil.
func (s *Store) Err() error {
	select {
	case <-s.failed:
		return s.failErr
	default:
		return nil
	}
}

func (s *Store) release() { s.lifeMu.RUnlock() }

// Close closes the database. It waits for methods in progress, and is safe
// to call more than once.
func (s *Store) Close() error {
	s.lifeMu.Lock()
	defer s.lifeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	// After a failed write Pebble may panic on Close; the store is done
	// either way.
	if err := catchPanic(s.db.Close); err != nil {
		return fmt.Errorf("raftstore: close: %w", pebbleError(err))
	}
	return nil
}

// Dir returns the directory the store lives in.
func (s *Store) Dir() string { return s.dir }

// FirstIndex returns the lowest index in the log, or 0 if it is empty.
func (s *Store) FirstIndex() (uint64, error) {
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first, nil
}

// LastIndex returns the highest index in the log, or 0 if it is empty.
func (s *Store) LastIndex() (uint64, error) {
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, nil
}

// GetLog reads the entry at index into out. It returns raft.ErrLogNotFound,
// unwrapped as Raft expects, when there is none, and an error wrapping
// ErrCorrupt that names the index when the entry is damaged.
func (s *Store) GetLog(index uint64, out *raft.Log) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	err := s.getLog(index, out)
	if err != nil && err != raft.ErrLogNotFound {
		return fmt.Errorf("raftstore: get log %d: %w", index, err)
	}
	return err
}

func (s *Store) getLog(index uint64, out *raft.Log) error {
	key := logKey(index)
	val, closer, err := s.db.Get(key[:])
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return pebbleError(err)
	}
	// Pebble's slice is valid only until closer.Close; one copy, which the
	// decoded Data and Extensions then share.
	buf := bytes.Clone(val)
	if err := closer.Close(); err != nil {
		return pebbleError(err)
	}
	return decodeLog(buf, index, out)
}

// StoreLog stores one entry; see StoreLogs.
func (s *Store) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs stores entries in one atomic, synced Pebble batch: after a crash
// either all of them are there or none is. An entry whose index is already
// stored is overwritten.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()

	size := 0
	for _, l := range logs {
		// Batch record: kind byte, two length varints, key and value.
		size += 1 + 2*binary.MaxVarintLen32 + logKeyLen + encodedLen(l)
	}
	b := s.db.NewBatchWithSize(size)
	defer b.Close()
	lo, hi := logs[0].Index, logs[0].Index
	for _, l := range logs {
		if l.Index == 0 {
			return fmt.Errorf("raftstore: store logs: %w", ErrZeroIndex)
		}
		// Encoding straight into the batch saves a copy of every entry.
		op := b.SetDeferred(logKeyLen, encodedLen(l))
		key := logKey(l.Index)
		copy(op.Key, key[:])
		encodeLog(op.Value, l)
		if err := op.Finish(); err != nil {
			return fmt.Errorf("raftstore: store logs: %w", err)
		}
		lo, hi = min(lo, l.Index), max(hi, l.Index)
	}

	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.write(fmt.Sprintf("store logs %d-%d", lo, hi), func() error { return b.Commit(s.writeOpts) }); err != nil {
		return err
	}
	s.mu.Lock()
	if s.last == 0 {
		s.first, s.last = lo, hi
	} else {
		s.first, s.last = min(s.first, lo), max(s.last, hi)
	}
	s.mu.Unlock()
	return nil
}

// DeleteRange deletes the entries from lo to hi, both included, with one
// Pebble range deletion, so its cost does not grow with the number of
// entries.
func (s *Store) DeleteRange(lo, hi uint64) error {
	if lo > hi {
		return nil
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()

	start := logKey(lo)
	end := logKeyAfter(hi)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	err := s.write(fmt.Sprintf("delete logs %d-%d", lo, hi), func() error {
		return s.db.DeleteRange(start[:], end, s.writeOpts)
	})
	if err != nil {
		return err
	}

	s.mu.Lock()
	first, last := s.first, s.last
	s.mu.Unlock()
	if last == 0 || hi < first || lo > last {
		return nil // nothing at the ends moved
	}
	// Seek rather than compute: the entries next to the deleted range may be
	// anywhere if the log has gaps.
	first, last, err = s.seekBounds()
	if err != nil {
		return fmt.Errorf("raftstore: delete logs %d-%d: %w", lo, hi, err)
	}
	s.mu.Lock()
	s.first, s.last = first, last
	s.mu.Unlock()
	return nil
}

// seekBounds finds the lowest and highest stored index with an iterator.
func (s *Store) seekBounds() (first, last uint64, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{prefixLog},
		UpperBound: []byte{prefixLog + 1},
	})
	if err != nil {
		return 0, 0, pebbleError(err)
	}
	// Check the error after each positioning: positioning again clears it,
	// and an unreadable file would otherwise look like an empty range.
	if it.First() {
		first, err = parseLogKey(it.Key())
	}
	if err == nil {
		err = it.Error()
	}
	if err == nil && it.Last() {
		last, err = parseLogKey(it.Key())
	}
	if err == nil {
		err = it.Error()
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err == nil && (first == 0) != (last == 0) {
		err = fmt.Errorf("log bounds [%d, %d] are inconsistent: %w", first, last, ErrCorrupt)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("seek log bounds: %w", pebbleError(err))
	}
	return first, last, nil
}

// Set stores a stable value, durably.
func (s *Store) Set(key, val []byte) error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.write(fmt.Sprintf("set %q", key), func() error {
		return s.db.Set(stableKey(key), val, s.writeOpts)
	}); err != nil {
		return err
	}
	return nil
}

// Get returns a stable value, or ErrKeyNotFound (unwrapped, see there) if
// key was never set.
func (s *Store) Get(key []byte) ([]byte, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	val, closer, err := s.db.Get(stableKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("raftstore: get %q: %w", key, pebbleError(err))
	}
	// Never nil, so a key set to an empty value reads as set.
	out := append([]byte{}, val...)
	if err := closer.Close(); err != nil {
		return nil, fmt.Errorf("raftstore: get %q: %w", key, pebbleError(err))
	}
	return out, nil
}

// SetUint64 stores a stable value as 8 big-endian bytes, durably.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns a value stored by SetUint64, or ErrKeyNotFound
// (unwrapped, see there) if key was never set.
func (s *Store) GetUint64(key []byte) (uint64, error) {
	val, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("raftstore: get uint64 %q: value is %d bytes, not 8: %w", key, len(val), ErrCorrupt)
	}
	return binary.BigEndian.Uint64(val), nil
}

func logKey(index uint64) [logKeyLen]byte {
	var k [logKeyLen]byte
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], index)
	return k
}

// logKeyAfter returns the exclusive upper bound of the keys up to index.
func logKeyAfter(index uint64) []byte {
	if index == ^uint64(0) {
		return []byte{prefixLog + 1}
	}
	k := logKey(index + 1)
	return k[:]
}

func parseLogKey(k []byte) (uint64, error) {
	if len(k) != logKeyLen || k[0] != prefixLog {
		return 0, fmt.Errorf("malformed log key %x: %w", k, ErrCorrupt)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

func stableKey(key []byte) []byte {
	k := make([]byte, 1+len(key))
	k[0] = prefixStable
	copy(k[1:], key)
	return k
}

// Verify reads every log entry and stable value and returns the first
// damage it finds, as an error wrapping ErrCorrupt. Open checks only the
// first and last entries, so that a server starts quickly; Verify is for
// deciding whether a store is damaged at all (drover server --rebuild).
func (s *Store) Verify() error {
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{prefixLog},
		UpperBound: []byte{prefixStable + 1},
	})
	if err != nil {
		return fmt.Errorf("raftstore: verify: %w", pebbleError(err))
	}
	var l raft.Log
	for ok := it.First(); ok && err == nil; ok = it.Next() {
		k := it.Key()
		var val []byte
		if val, err = it.ValueAndErr(); err != nil {
			break
		}
		if len(k) > 0 && k[0] == prefixStable {
			continue // no format beyond Pebble's checksums
		}
		var idx uint64
		if idx, err = parseLogKey(k); err != nil {
			break
		}
		if err = decodeLog(bytes.Clone(val), idx, &l); err != nil {
			err = fmt.Errorf("log %d: %w", idx, err)
		}
	}
	if err == nil {
		err = it.Error()
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("raftstore: verify %s: %w", s.dir, pebbleError(err))
	}
	return nil
}
