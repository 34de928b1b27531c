package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestPutAndRead stores chunks on the operating system's file system and
// reads them back, through the store and straight from the files it names.
func TestPutAndRead(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t, vfs.Default))

	var keys []Key
	var total int64
	for i, size := range []int{0, 1, 4096, 1<<20 + 3} {
		data, k := chunk(uint64(i), size)
		if got := mustPut(t, s, data); got != k {
			t.Fatal("mustPut computed a different key")
		}
		keys = append(keys, k)
		total += int64(size)

		got, err := readChunk(s, k)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("reading back a %d-byte chunk: %d bytes, %v", size, len(got), err)
		}
		// The layout operators and backups rely on: chunks/ab/abcdef….
		onDisk, err := os.ReadFile(filepath.Join(dir, "chunks", k.String()[:2], k.String()))
		if err != nil || !bytes.Equal(onDisk, data) {
			t.Fatalf("file of a %d-byte chunk: %d bytes, %v", size, len(onDisk), err)
		}
		if size <= 4096 { // the test reads byte by byte in places
			r, _, err := s.Open(k)
			if err != nil {
				t.Fatal(err)
			}
			// Read, ReadAt and Seek in every pattern testing/iotest knows.
			if err := iotest.TestReader(r, data); err != nil {
				t.Fatalf("reading a %d-byte chunk: %v", size, err)
			}
			r.Close()
		}
		if info, err := s.Stat(k); err != nil || info.Size != int64(size) {
			t.Fatalf("Stat = %+v, %v; want size %d", info, err, size)
		}
	}
	if s.Count() != len(keys) || s.Size() != total {
		t.Fatalf("Count, Size = %d, %d; want %d, %d", s.Count(), s.Size(), len(keys), total)
	}

	// Seeking and reading at offsets, as a resumed transfer does.
	data, _ := chunk(3, 1<<20+3)
	r, size, err := s.Open(keys[3])
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if size != int64(len(data)) {
		t.Fatalf("Open size = %d, want %d", size, len(data))
	}
	if _, err := r.Seek(1<<20, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	tail, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(tail, data[1<<20:]) {
		t.Fatalf("reading from offset 1 MiB: %x, %v; want %x", tail, err, data[1<<20:])
	}

	absent := []Key{{1}, {2}}
	asked := []Key{absent[0], keys[0], keys[2], absent[1], keys[3]}
	if got := s.Missing(asked); !equalKeys(got, absent) {
		t.Fatalf("Missing = %v, want %v", got, absent)
	}
	for _, k := range keys {
		if !s.Has(k) {
			t.Fatalf("Has(%s) = false after Put", k)
		}
		if err := s.Verify(k); err != nil {
			t.Fatalf("Verify: %v", err)
		}
	}
	if s.Has(absent[0]) {
		t.Fatal("Has of a chunk never stored = true")
	}
	if _, _, err := s.Open(absent[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of an absent chunk = %v, want ErrNotFound", err)
	}
	if _, err := s.Stat(absent[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stat of an absent chunk = %v, want ErrNotFound", err)
	}
	if err := s.Verify(absent[0]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Verify of an absent chunk = %v, want ErrNotFound", err)
	}
	checkDisk(t, s)
	if c := s.Counters(); c.Puts != 4 || c.PutBytes != uint64(total) {
		t.Fatalf("Counters = %+v, want 4 puts of %d bytes", c, total)
	}
}

func equalKeys(a, b []Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestReopen checks that Open finds every chunk again with the right
// totals, empties tmp/, and leaves files that are not chunks alone.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, testOptions(t, vfs.Default))
	if err != nil {
		t.Fatal(err)
	}
	var keys []Key
	for i := range 20 {
		data, _ := chunk(uint64(i), 1000*i)
		keys = append(keys, mustPut(t, s, data))
	}
	count, size := s.Count(), s.Size()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// What a crash in the middle of a Put leaves, and a file someone put
	// in a shard directory by hand.
	leftover := filepath.Join(dir, "tmp", keys[0].String()+".7")
	if err := os.WriteFile(leftover, []byte("half a chunk"), 0o644); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(dir, "chunks", "00", "notes.txt")
	if err := os.WriteFile(stray, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}

	r := openStore(t, dir, testOptions(t, vfs.Default))
	if r.Count() != count || r.Size() != size {
		t.Fatalf("after reopening: Count, Size = %d, %d; want %d, %d", r.Count(), r.Size(), count, size)
	}
	if m := r.Missing(keys); len(m) > 0 {
		t.Fatalf("after reopening, Missing = %v", m)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a leftover temporary file survived Open: %v", err)
	}
	if _, err := os.Stat(stray); err != nil {
		t.Fatalf("Open removed a file that is not a chunk: %v", err)
	}
	checkDisk(t, r)
}

// TestLock checks that two stores never share a directory.
func TestLock(t *testing.T) {
	for name, fsys := range map[string]vfs.FS{"os": vfs.Default, "mem": newMemFS()} {
		t.Run(name, func(t *testing.T) {
			dir := memDir
			if fsys == vfs.Default {
				dir = t.TempDir()
			}
			s, err := Open(dir, testOptions(t, fsys))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Open(dir, testOptions(t, fsys))
			t.Logf("second Open: %v", err)
			if err == nil || !strings.Contains(err.Error(), "another drover server") {
				t.Fatalf("second Open of %s = %v, want an error naming the other server", dir, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			s2, err := Open(dir, testOptions(t, fsys))
			if err != nil {
				t.Fatalf("Open after Close: %v", err)
			}
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestClosed checks that a closed store refuses everything that touches
// the disk.
func TestClosed(t *testing.T) {
	s, err := Open(memDir, testOptions(t, newMemFS()))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := chunk(1, 100)
	k := mustPut(t, s, data)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"Put":    func() error { return s.Put(context.Background(), k, bytes.NewReader(data), 100) },
		"Open":   func() error { _, _, err := s.Open(k); return err },
		"Verify": func() error { return s.Verify(k) },
		"GC":     func() error { _, _, err := s.GC(context.Background(), func(Key) bool { return false }); return err },
	} {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

// TestPutPresent checks that a chunk already stored is neither read nor
// written again.
func TestPutPresent(t *testing.T) {
	var creates atomic.Int32
	fsys := errorfs.Wrap(newMemFS(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpCreate {
			creates.Add(1)
		}
		return nil
	}))
	s := openStore(t, memDir, testOptions(t, fsys))
	data, k := chunk(1, 5000)
	mustPut(t, s, data)
	before := creates.Load()
	if err := s.Put(context.Background(), k, iotest.ErrReader(errors.New("read the reader")), 5000); err != nil {
		t.Fatalf("Put of a stored chunk = %v, want nil without reading", err)
	}
	if n := creates.Load() - before; n != 0 {
		t.Fatalf("Put of a stored chunk created %d files", n)
	}
	if c := s.Counters(); c.Puts != 1 || c.PutsPresent != 1 {
		t.Fatalf("Counters = %+v, want 1 put and 1 present", c)
	}
}

// TestPutRefusesMismatch checks that bytes that do not match the key or
// the size are refused and leave nothing behind.
func TestPutRefusesMismatch(t *testing.T) {
	data, k := chunk(1, 300<<10) // more than one copy buffer
	other, _ := chunk(2, len(data))
	for _, tt := range []struct {
		name string
		key  Key
		body []byte
		size int64
		want string
	}{
		{"other bytes", k, other, int64(len(other)), "hash to"},
		{"one byte flipped", k, flip(data, len(data)-1), int64(len(data)), "hash to"},
		{"fewer bytes than size", k, data[:len(data)-1], int64(len(data)), "want"},
		{"more bytes than size", sha256.Sum256(data[:1000]), data, 1000, "more than"},
		{"wrong size", k, data, int64(len(data)) + 1, "want"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, memDir, testOptions(t, newMemFS()))
			err := s.Put(context.Background(), tt.key, bytes.NewReader(tt.body), tt.size)
			t.Logf("Put: %v", err)
			if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Put = %v, want ErrDigestMismatch saying %q", err, tt.want)
			}
			if s.Has(tt.key) || exists(t, s.fs, s.path(tt.key)) {
				t.Fatal("a refused chunk is in the store")
			}
			checkDisk(t, s)
			if c := s.Counters(); c.DigestMismatches != 1 || c.Puts != 0 {
				t.Fatalf("Counters = %+v", c)
			}
			// The right bytes are still welcome.
			mustPut(t, s, data)
		})
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

// TestPutTooLarge checks that a chunk over the limit is refused before it
// is read.
func TestPutTooLarge(t *testing.T) {
	opts := testOptions(t, newMemFS())
	opts.MaxChunkSize = 1000
	s := openStore(t, memDir, opts)
	data, k := chunk(1, 1001)
	err := s.Put(context.Background(), k, iotest.ErrReader(errors.New("read the reader")), int64(len(data)))
	t.Logf("Put: %v", err)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Put of 1001 bytes with a 1000-byte limit = %v, want ErrTooLarge", err)
	}
	data, _ = chunk(1, 1000)
	mustPut(t, s, data)
}

// TestPutNoSpace checks the free-space check: made before anything is
// written, counting Puts under way, with an error that says how much is
// free, needed and reserved.
func TestPutNoSpace(t *testing.T) {
	const reserve, size = 10 << 20, 1 << 20
	var creates atomic.Int32
	mem := newMemFS()
	fsys := errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpCreate {
			creates.Add(1)
		}
		return nil
	}))
	opts := testOptions(t, fsys)
	opts.ReserveBytes = reserve
	s := openStore(t, memDir, opts)
	data, k := chunk(1, size)

	withSpace(mem, reserve+size-1)
	err := s.Put(context.Background(), k, bytes.NewReader(data), size)
	t.Logf("Put: %v", err)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put = %v, want ErrNoSpace", err)
	}
	for _, want := range []string{"needs 1.0 MiB", "11.0 MiB is free", "10.0 MiB is kept in reserve", memDir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if n := creates.Load(); n != 0 {
		t.Fatalf("a refused Put created %d files", n)
	}
	if c := s.Counters(); c.NoSpace != 1 {
		t.Fatalf("Counters = %+v, want NoSpace 1", c)
	}

	// Room for exactly one chunk: a second Put while the first is under
	// way is refused, since the disk does not show the first one yet.
	withSpace(mem, reserve+size)
	pr, pw := io.Pipe()
	// Runs before the store's Close, which would wait for the Put forever
	// if a check below failed while it is blocked on the pipe.
	t.Cleanup(func() { pw.CloseWithError(errors.New("test over")) })
	done := make(chan error, 1)
	go func() { done <- s.Put(context.Background(), k, pr, size) }()
	if _, err := pw.Write(data[:1]); err != nil { // the first Put is writing
		t.Fatal(err)
	}
	data2, k2 := chunk(2, size)
	err = s.Put(context.Background(), k2, bytes.NewReader(data2), size)
	t.Logf("second Put: %v", err)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "11.0 MiB is free (1.0 MiB of it taken by puts under way)") {
		t.Fatalf("second Put = %v, want ErrNoSpace counting the first", err)
	}
	if _, err := pw.Write(data[1:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("first Put: %v", err)
	}
	checkDisk(t, s)
}

// TestPutDiskFull checks that a disk that fills up while a chunk is written
// is reported as ErrNoSpace too, and leaves nothing behind.
func TestPutDiskFull(t *testing.T) {
	var full atomic.Bool
	fsys := errorfs.Wrap(newMemFS(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if full.Load() && op.Kind == errorfs.OpFileWrite {
			return &os.PathError{Op: "write", Path: op.Path, Err: syscall.ENOSPC}
		}
		return nil
	}))
	s := openStore(t, memDir, testOptions(t, fsys))
	full.Store(true)
	data, k := chunk(1, 1000)
	err := s.Put(context.Background(), k, bytes.NewReader(data), int64(len(data)))
	t.Logf("Put: %v", err)
	if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk = %v, want ErrNoSpace wrapping ENOSPC", err)
	}
	checkDisk(t, s)
}

// TestPutCancel checks that a cancelled Put stops and leaves nothing.
func TestPutCancel(t *testing.T) {
	s := openStore(t, memDir, testOptions(t, newMemFS()))
	data, k := chunk(1, 1<<20)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, k, bytes.NewReader(data), int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context = %v", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	// The reader cancels once half the chunk has been read.
	r := &cancelAfter{r: bytes.NewReader(data), n: len(data) / 2, cancel: cancel}
	if err := s.Put(ctx, k, r, int64(len(data))); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put cancelled halfway = %v", err)
	}
	checkDisk(t, s)
	if s.Has(k) {
		t.Fatal("a cancelled Put stored its chunk")
	}
}

type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		c.cancel()
	}
	n, err := c.r.Read(p[:min(len(p), 4096)])
	c.n -= n
	return n, err
}

// TestConcurrentPutsOfOneChunk runs many Puts of the same chunk at once,
// some with the wrong bytes: the right ones all succeed, the wrong ones are
// refused, and the store holds one copy.
func TestConcurrentPutsOfOneChunk(t *testing.T) {
	s := openStore(t, memDir, testOptions(t, newMemFS()))
	data, k := chunk(1, 600<<10)
	bad := flip(data, 12345)
	var wg sync.WaitGroup
	errs := make([]error, 24)
	for i := range errs {
		wg.Go(func() {
			body := data
			if i%4 == 3 {
				body = bad
			}
			errs[i] = s.Put(context.Background(), k, iotest.HalfReader(bytes.NewReader(body)), int64(len(body)))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%4 == 3 {
			// A wrong Put that starts after a right one finished is
			// answered "present" without reading.
			if err != nil && !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("Put %d (wrong bytes) = %v", i, err)
			}
		} else if err != nil {
			t.Errorf("Put %d = %v", i, err)
		}
	}
	if s.Count() != 1 || s.Size() != int64(len(data)) {
		t.Fatalf("Count, Size = %d, %d; want 1, %d", s.Count(), s.Size(), len(data))
	}
	checkDisk(t, s)
	if c := s.Counters(); c.Puts != 1 {
		t.Fatalf("Counters = %+v, want one chunk written", c)
	}
}

// TestVerify damages chunks on disk and checks that Verify finds each,
// removes it, and lets it be stored again.
func TestVerify(t *testing.T) {
	damage := map[string]func(t *testing.T, fsys vfs.FS, path string){
		"flipped byte": func(t *testing.T, fsys vfs.FS, path string) {
			f, err := fsys.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, 777); err != nil {
				t.Fatal(err)
			}
			b[0] ^= 0x80
			if _, err := f.WriteAt(b, 777); err != nil {
				t.Fatal(err)
			}
		},
		"truncated": func(t *testing.T, fsys vfs.FS, path string) {
			f, err := fsys.Create(path, vfs.WriteCategoryUnspecified)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
		},
		"gone": func(t *testing.T, fsys vfs.FS, path string) {
			if err := fsys.Remove(path); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, spoil := range damage {
		t.Run(name, func(t *testing.T) {
			s := openStore(t, memDir, testOptions(t, newMemFS()))
			good, _ := chunk(1, 3000)
			kg := mustPut(t, s, good)
			data, _ := chunk(2, 5000)
			k := mustPut(t, s, data)
			spoil(t, s.fs, s.path(k))

			err := s.Verify(k)
			t.Logf("Verify: %v", err)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify of a damaged chunk = %v, want ErrCorrupt", err)
			}
			if s.Has(k) || exists(t, s.fs, s.path(k)) {
				t.Fatal("a corrupt chunk is still in the store")
			}
			if m := s.Missing([]Key{kg, k}); !equalKeys(m, []Key{k}) {
				t.Fatalf("Missing = %v, want the corrupt chunk only", m)
			}
			if err := s.Verify(kg); err != nil {
				t.Fatalf("Verify of a good chunk: %v", err)
			}
			if c := s.Counters(); c.Corrupt != 1 {
				t.Fatalf("Counters = %+v, want Corrupt 1", c)
			}
			checkDisk(t, s)
			mustPut(t, s, data) // fetched again from a peer
			if err := s.Verify(k); err != nil {
				t.Fatalf("Verify after storing the chunk again: %v", err)
			}
		})
	}
}

// TestVerifyReadError checks that a chunk Verify cannot read is reported
// but kept: an I/O error says nothing about the bytes.
func TestVerifyReadError(t *testing.T) {
	var failing atomic.Bool
	injected := errors.New("injected: read: input/output error")
	fsys := errorfs.Wrap(newMemFS(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failing.Load() && (op.Kind == errorfs.OpFileRead || op.Kind == errorfs.OpFileReadAt) {
			return injected
		}
		return nil
	}))
	s := openStore(t, memDir, testOptions(t, fsys))
	data, _ := chunk(1, 3000)
	k := mustPut(t, s, data)
	failing.Store(true)
	if err := s.Verify(k); !errors.Is(err, injected) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify with a failing read = %v, want the read error", err)
	}
	failing.Store(false)
	if !s.Has(k) || s.Verify(k) != nil {
		t.Fatal("a chunk that could not be read was removed")
	}
}

// TestCustomHash checks that the store checks chunks with the hash it is
// given, not SHA-256.
func TestCustomHash(t *testing.T) {
	opts := testOptions(t, newMemFS())
	opts.Hash = sha512.New512_256
	s := openStore(t, memDir, opts)
	data, _ := chunk(1, 4000)
	k := Key(sha512.Sum512_256(data))
	if err := s.Put(context.Background(), k, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put with the configured hash: %v", err)
	}
	k256 := Key(sha256.Sum256(data))
	if err := s.Put(context.Background(), k256, bytes.NewReader(data), int64(len(data))); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Put under the SHA-256 key = %v, want ErrDigestMismatch", err)
	}
	if err := s.Verify(k); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	if err := DefaultOptions().Validate(); err != nil {
		t.Fatalf("DefaultOptions().Validate() = %v", err)
	}
	for _, tt := range []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no max", func(o *Options) { o.MaxChunkSize = 0 }, "MaxChunkSize"},
		{"negative reserve", func(o *Options) { o.ReserveBytes = -1 }, "ReserveBytes"},
		{"negative grace", func(o *Options) { o.GCGrace = -time.Second }, "GCGrace"},
		{"short hash", func(o *Options) { o.Hash = sha512.New }, "64-byte digests"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := DefaultOptions()
			tt.change(&o)
			err := o.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error about %s", err, tt.want)
			}
			if _, err := Open(t.TempDir(), o); err == nil {
				t.Fatal("Open accepted options that do not validate")
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	_, k := chunk(1, 10)
	got, err := ParseKey(k.String())
	if err != nil || got != k {
		t.Fatalf("ParseKey(String()) = %v, %v", got, err)
	}
	for _, bad := range []string{"", "ab", k.String()[:63], k.String() + "0", strings.Replace(k.String(), k.String()[:1], "g", 1)} {
		if _, err := ParseKey(bad); err == nil {
			t.Errorf("ParseKey(%q) succeeded", bad)
		}
	}
}

// ExampleStore_Pin shows how a push uses the store on one server.
func ExampleStore_Pin() {
	fsys := vfs.NewMem()
	fsys.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 40})
	opts := DefaultOptions()
	opts.FS = fsys
	s, err := Open("/blobs", opts)
	if err != nil {
		panic(err)
	}
	defer s.Close()

	chunks := map[Key][]byte{}
	for _, text := range []string{"weights, part one", "weights, part two"} {
		chunks[sha256.Sum256([]byte(text))] = []byte(text)
	}
	var keys []Key
	for k := range chunks {
		keys = append(keys, k)
	}

	release := s.Pin(keys...) // before Missing: from here GC leaves these alone
	defer release()           // once the version is committed and applied
	for _, k := range s.Missing(keys) {
		if err := s.Put(context.Background(), k, bytes.NewReader(chunks[k]), int64(len(chunks[k]))); err != nil {
			panic(err)
		}
	}
	fmt.Println(len(s.Missing(keys)), "missing,", s.Count(), "stored")
	// Output: 0 missing, 2 stored
}
