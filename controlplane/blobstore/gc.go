package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"
)

// Garbage collection.
//
// A chunk may be removed only when no committed version references it
// (live says so), no push in flight needs it (it is not pinned), and it was
// last written or unpinned more than Options.GCGrace ago.
//
// A push holds its chunks from the moment it asks Missing until its version
// is committed:
//
//	release := store.Pin(keys...)
//	defer release()
//	for _, k := range store.Missing(keys) { store.Put(ctx, k, …) }
//	… commit the version through Raft; wait until this server applied it …
//
// Why this order is enough: GC takes a chunk out of the index, under the
// same lock Pin takes, before it asks live and removes the file. So a pin
// taken before that moment stops GC, and a Missing asked after it reports
// the chunk missing, so the push writes it again (its Put waits until GC is
// done with that key). A pin released after the version was applied here
// leaves the chunk live. GCGrace covers what the pins cannot: a release
// before this server applied the commit (a lagging follower), and a Put
// made before the push pinned the chunk.

// Pin protects the chunks named by keys from GC until release is called;
// the keys need not be stored yet. Pins nest: a chunk stays pinned until
// every Pin naming it has been released. Releasing counts as touching each
// stored chunk, so GCGrace starts again from then. release is idempotent.
//
// Pins live in memory only: a restart drops them, and every chunk found by
// Open counts as touched at Open.
func (s *Store) Pin(keys ...Key) (release func()) {
	keys = append([]Key(nil), keys...) // the caller may reuse its slice
	s.mu.Lock()
	for _, k := range keys {
		s.pins[k]++
	}
	s.mu.Unlock()
	released := false
	return func() {
		now := s.since()
		s.mu.Lock()
		defer s.mu.Unlock()
		if released {
			return
		}
		released = true
		for _, k := range keys {
			if n := s.pins[k] - 1; n > 0 {
				s.pins[k] = n
			} else {
				delete(s.pins, k)
			}
			if e, ok := s.index[k]; ok {
				e.touched = max(e.touched, now)
				s.index[k] = e
			}
		}
	}
}

// GC removes the chunks that are not live, not pinned, and were last
// touched more than Options.GCGrace ago, and returns how many it removed
// and their total size. It stops early, returning ctx's error, when ctx is
// done. One GC runs at a time; a second call waits for the first.
//
// live reports whether a committed version this server knows references
// the chunk. GC calls it from the calling goroutine, once per candidate,
// while holding a lock that Puts, GCs and Verifies of chunks sharing the
// key's first byte wait for, and while the candidate is out of the index:
// it must be quick and must not call the store's Put, GC or Verify.
//
// A removal is not synced: after a crash a removed chunk may be back,
// whole, and the next GC removes it again.
func (s *Store) GC(ctx context.Context, live func(Key) bool) (removed int, freed int64, err error) {
	if err := s.begin(); err != nil {
		return 0, 0, fmt.Errorf("blobstore: gc: %w", err)
	}
	defer s.end()
	s.gcMu.Lock()
	defer s.gcMu.Unlock()

	cutoff := s.since() - s.opts.GCGrace
	var candidates []Key
	s.mu.RLock()
	for k, e := range s.index {
		if e.touched <= cutoff && s.pins[k] == 0 {
			candidates = append(candidates, k)
		}
	}
	s.mu.RUnlock()

	for _, k := range candidates {
		if err := context.Cause(ctx); err != nil {
			return removed, freed, fmt.Errorf("blobstore: gc: %w", err)
		}
		size, ok, err := s.collect(k, cutoff, live)
		if err != nil {
			return removed, freed, fmt.Errorf("blobstore: gc %s: %w", k, err)
		}
		if ok {
			removed++
			freed += size
		}
	}
	if removed > 0 {
		s.log.Info("garbage collected chunks", "removed", removed, "bytes", freed, "candidates", len(candidates))
	}
	return removed, freed, nil
}

// collect removes the chunk k if it is still collectable: in the index,
// unpinned, touched no later than cutoff, and not live.
func (s *Store) collect(k Key, cutoff time.Duration, live func(Key) bool) (size int64, removed bool, err error) {
	sh := &s.shards[k[0]]
	sh.Lock()
	defer sh.Unlock()

	s.mu.Lock()
	e, ok := s.index[k]
	if !ok || s.pins[k] > 0 || e.touched > cutoff {
		s.mu.Unlock()
		return 0, false, nil
	}
	// Out of the index before live is asked: from here on Missing reports
	// the chunk missing, so a push that pins it now writes it again
	// instead of counting on this copy.
	s.dropLocked(k, e)
	s.mu.Unlock()

	if live(k) {
		s.mu.Lock()
		s.addLocked(k, e)
		s.mu.Unlock()
		return 0, false, nil
	}
	if err := s.fs.Remove(s.path(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.mu.Lock()
		s.addLocked(k, e)
		s.mu.Unlock()
		return 0, false, err
	}
	s.c.removed.Add(1)
	s.c.removedBytes.Add(uint64(e.size))
	return e.size, true, nil
}

// Verify re-reads the chunk k and checks it against its key. A chunk whose
// bytes no longer match (or whose file is gone) is removed from disk and
// from the index, and Verify returns an error wrapping ErrCorrupt: Missing
// reports it from then on, so that it is fetched again from a peer. An
// error reading the file is returned as it is, and the chunk kept.
func (s *Store) Verify(k Key) error {
	if err := s.verify(k); err != nil {
		return fmt.Errorf("blobstore: verify %s: %w", k, err)
	}
	return nil
}

func (s *Store) verify(k Key) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	// Held while reading, so that the file removed below is the one read.
	sh := &s.shards[k[0]]
	sh.Lock()
	defer sh.Unlock()

	s.mu.RLock()
	e, ok := s.index[k]
	s.mu.RUnlock()
	if !ok {
		return ErrNotFound
	}
	p := s.path(k)
	f, err := s.fs.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return s.corrupt(k, e, "its file is gone")
	}
	if err != nil {
		return err
	}
	defer f.Close()
	h := s.opts.Hash()
	bp := s.bufs.Get().(*[]byte)
	n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, *bp)
	s.bufs.Put(bp)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if n != e.size {
		return s.corrupt(k, e, fmt.Sprintf("its file holds %d bytes, %d were written", n, e.size))
	}
	if sum := h.Sum(nil); !bytes.Equal(sum, k[:]) {
		return s.corrupt(k, e, fmt.Sprintf("its bytes hash to %x", sum))
	}
	return nil
}

// corrupt removes the damaged chunk k; the caller holds k's shard lock.
func (s *Store) corrupt(k Key, e entry, why string) error {
	p := s.path(k)
	s.mu.Lock()
	s.dropLocked(k, e)
	s.mu.Unlock()
	s.c.corrupt.Add(1)
	s.log.Error("removed a corrupt chunk; fetch it again from a peer", "key", k.String(), "path", p, "why", why)
	if err := s.fs.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		// Out of the index, so never served or counted on; a later Put
		// of the chunk renames a good copy over it.
		s.log.Error("removing a corrupt chunk", "path", p, "err", err)
	}
	return fmt.Errorf("%w: %s (removed; fetch it again)", ErrCorrupt, why)
}

func (s *Store) dropLocked(k Key, e entry) {
	delete(s.index, k)
	s.size -= e.size
}

func (s *Store) addLocked(k Key, e entry) {
	s.index[k] = e
	s.size += e.size
}
