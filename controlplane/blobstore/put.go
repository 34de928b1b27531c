package blobstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/droverhq/drover/internal/units"
)

// Put stores the chunk named k, reading exactly size bytes from r. It
// returns once the chunk is durable: written, checked against k, synced,
// renamed into place, and its directory synced.
//
// A chunk the store already holds is not read or rewritten; Put returns nil
// at once. Put refuses a chunk over Options.MaxChunkSize (ErrTooLarge), one
// that would leave less free disk than Options.ReserveBytes (ErrNoSpace,
// checked before anything is written), and bytes that do not hash to k or
// are more or fewer than size (ErrDigestMismatch). A Put that fails for any
// reason leaves nothing behind.
//
// Concurrent Puts of the same key are safe: each writes its own temporary
// file, and the first to finish renames it into place.
func (s *Store) Put(ctx context.Context, k Key, r io.Reader, size int64) error {
	err := s.put(ctx, k, r, size)
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, ErrNoSpace):
		s.c.noSpace.Add(1)
	case errors.Is(err, ErrDigestMismatch):
		s.c.digestMismatches.Add(1)
	}
	return fmt.Errorf("blobstore: put %s: %w", k, err)
}

func (s *Store) put(ctx context.Context, k Key, r io.Reader, size int64) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	switch {
	case size < 0:
		return fmt.Errorf("size %d is negative", size)
	case size > s.opts.MaxChunkSize:
		return fmt.Errorf("%w: %s, over the limit of %s", ErrTooLarge, units.Bytes(uint64(size)), units.Bytes(uint64(s.opts.MaxChunkSize)))
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if s.Has(k) {
		s.c.putsPresent.Add(1)
		return nil
	}
	unreserve, err := s.reserve(size)
	if err != nil {
		return err
	}
	defer unreserve()

	tmp := s.fs.PathJoin(s.tmp, fmt.Sprintf("%s.%d", k, s.tmpSeq.Add(1)))
	f, err := s.fs.Create(tmp, vfs.WriteCategoryUnspecified)
	if err != nil {
		return noSpace(fmt.Errorf("create %s: %w", tmp, err))
	}
	renamed := false
	defer func() {
		if f != nil {
			_ = f.Close()
		}
		if !renamed {
			if err := s.fs.Remove(tmp); err != nil {
				// Open empties tmp/ anyway; only the space is lost until then.
				s.log.Warn("removing a temporary chunk file", "path", tmp, "err", err)
			}
		}
	}()

	if err := s.write(ctx, f, k, r, size); err != nil {
		return err
	}
	// The data must be durable before the file gets its final name:
	// otherwise a crash after the rename could leave a short or zeroed
	// file there.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return noSpace(fmt.Errorf("close %s: %w", tmp, err))
	}

	sh := &s.shards[k[0]]
	sh.Lock()
	defer sh.Unlock()
	if s.Has(k) {
		// A concurrent Put of the same chunk finished first.
		s.c.putsPresent.Add(1)
		return nil
	}
	final := s.path(k)
	if err := s.fs.Rename(tmp, final); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, final, err)
	}
	renamed = true
	if err := syncDir(s.fs, s.fs.PathDir(final)); err != nil {
		// The file is whole (it was synced before the rename), but whether
		// its name survives a crash is unknown: take it away, so that the
		// index never holds a chunk that might not be durable, and the
		// caller can retry.
		if rerr := s.fs.Remove(final); rerr != nil {
			s.log.Warn("removing a chunk whose directory did not sync", "path", final, "err", rerr)
		}
		return fmt.Errorf("sync %s: %w", s.fs.PathDir(final), err)
	}
	s.mu.Lock()
	s.addLocked(k, entry{size: size, touched: s.since()})
	s.mu.Unlock()
	s.c.puts.Add(1)
	s.c.putBytes.Add(uint64(size))
	return nil
}

// write copies the chunk from r into f, hashing it on the way, and checks
// it against k and size.
func (s *Store) write(ctx context.Context, f vfs.File, k Key, r io.Reader, size int64) error {
	h := s.opts.Hash()
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	// One byte more than size is read, to catch a reader that has more.
	src := &io.LimitedReader{R: ctxReader{ctx, r}, N: size + 1}
	var n int64
	buf := *bp
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			// Hash before writing: a vfs.File may change the bytes it is
			// given.
			h.Write(buf[:m])
			if _, err := f.Write(buf[:m]); err != nil {
				return noSpace(fmt.Errorf("writing the chunk: %w", err))
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if cerr := context.Cause(ctx); cerr != nil {
				return cerr
			}
			return fmt.Errorf("reading the chunk: %w", rerr)
		}
	}
	switch {
	case n < size:
		return fmt.Errorf("%w: got %d bytes, want %d", ErrDigestMismatch, n, size)
	case n > size:
		return fmt.Errorf("%w: got more than the %d bytes announced", ErrDigestMismatch, size)
	}
	if sum := h.Sum(nil); !bytes.Equal(sum, k[:]) {
		return fmt.Errorf("%w: the bytes hash to %x", ErrDigestMismatch, sum)
	}
	return nil
}

// reserve checks that writing size more bytes leaves Options.ReserveBytes
// free, counting the bytes of Puts already under way, and counts these in
// until the returned function is called.
func (s *Store) reserve(size int64) (unreserve func(), err error) {
	du, err := s.fs.GetDiskUsage(s.dir)
	if err != nil {
		return nil, fmt.Errorf("reading free disk space: %w", err)
	}
	avail := int64(min(du.AvailBytes, math.MaxInt64))
	s.mu.Lock()
	defer s.mu.Unlock()
	if avail-s.writing-size < s.opts.ReserveBytes {
		var writing string
		if s.writing > 0 {
			writing = fmt.Sprintf(" (%s of it taken by puts under way)", units.Bytes(uint64(s.writing)))
		}
		return nil, fmt.Errorf("%w on %s: the chunk needs %s, %s is free%s, and %s is kept in reserve: free some space or give the server a larger disk",
			ErrNoSpace, s.dir, units.Bytes(uint64(size)), units.Bytes(uint64(max(avail, 0))), writing, units.Bytes(uint64(s.opts.ReserveBytes)))
	}
	s.writing += size
	return func() {
		s.mu.Lock()
		s.writing -= size
		s.mu.Unlock()
	}, nil
}

// noSpace marks err with ErrNoSpace too when it says the disk is full.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// ctxReader stops reading once ctx is done, so that a cancelled Put stops
// at its next read instead of at the end of the chunk.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := context.Cause(c.ctx); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
