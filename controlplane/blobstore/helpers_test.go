package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// memDir is where tests keep a store on an in-memory file system.
const memDir = "/blobs"

// plentyFree is the free space the in-memory file systems report.
const plentyFree = 1 << 40

// testLogger sends the store's logs to the test's log, shown only when the
// test fails.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newMemFS returns a crash-simulating in-memory file system that reports
// plenty of free space.
func newMemFS() *vfs.MemFS {
	fs := vfs.NewCrashableMem()
	withSpace(fs, plentyFree)
	return fs
}

// withSpace makes fs report avail bytes free; a MemFS reports nothing until
// told, and a crash clone starts without it.
func withSpace(fs *vfs.MemFS, avail uint64) *vfs.MemFS {
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: avail, TotalBytes: 2 * plentyFree, UsedBytes: 2*plentyFree - avail})
	return fs
}

// testOptions returns DefaultOptions on fsys, logging to the test.
func testOptions(t testing.TB, fsys vfs.FS) Options {
	o := DefaultOptions()
	o.FS = fsys
	o.Logger = testLogger(t)
	return o
}

// openStore opens a store and closes it when the test ends.
func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// chunk returns size bytes that are a function of seed alone, and their
// SHA-256 key.
func chunk(seed uint64, size int) ([]byte, Key) {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	b := make([]byte, size)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b, sha256.Sum256(b)
}

// mustPut stores data under its SHA-256 key.
func mustPut(t testing.TB, s *Store, data []byte) Key {
	t.Helper()
	k := Key(sha256.Sum256(data))
	if err := s.Put(context.Background(), k, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%d bytes): %v", len(data), err)
	}
	return k
}

// readChunk reads the chunk k through Open.
func readChunk(s *Store, k Key) ([]byte, error) {
	r, size, err := s.Open(k)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err == nil && int64(len(b)) != size {
		err = errors.New("Open's size differs from what was read")
	}
	return b, err
}

// checkDisk fails the test unless the files under chunks/ are exactly the
// chunks in s's index, each whole (hashing to its key), and tmp/ is empty.
func checkDisk(t testing.TB, s *Store) {
	t.Helper()
	onDisk := 0
	var total int64
	for i := range 256 {
		dir := s.shardDir(byte(i))
		names, err := s.fs.List(dir)
		if err != nil {
			t.Fatalf("List(%s): %v", dir, err)
		}
		for _, name := range names {
			k, err := ParseKey(name)
			if err != nil {
				continue // a stray file a test left on purpose
			}
			onDisk++
			if !s.Has(k) {
				t.Errorf("chunk %s is on disk but not in the index", k)
			}
			b, err := readChunk(s, k)
			if err != nil {
				t.Fatalf("reading %s: %v", k, err)
			}
			if sha256.Sum256(b) != k {
				t.Errorf("chunk %s on disk (%d bytes) does not hash to its name", k, len(b))
			}
			total += int64(len(b))
		}
	}
	if onDisk != s.Count() || total != s.Size() {
		t.Errorf("disk holds %d chunks, %d bytes; Count() = %d, Size() = %d", onDisk, total, s.Count(), s.Size())
	}
	if names, err := s.fs.List(s.tmp); err != nil || len(names) > 0 {
		t.Errorf("tmp/ holds %v (%v), want nothing", names, err)
	}
}

// exists reports whether name exists on fsys.
func exists(t testing.TB, fsys vfs.FS, name string) bool {
	t.Helper()
	_, err := fsys.Stat(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Stat(%s): %v", name, err)
	}
	return err == nil
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
