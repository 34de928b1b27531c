package blobstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// BenchmarkPut measures durable Puts of 1 MiB chunks on the operating
// system's file system (TMPDIR), after a baseline in the same run: the same
// bytes written to a new file with os.WriteFile's steps and an fsync. The
// store's line adds its time per chunk as a multiple of the baseline's
// (x-writefile): what hashing, the free-space check, the rename and the
// directory sync cost on top of writing the bytes durably. Each chunk is
// new (its first 8 bytes count up), so no Put is answered "present"; the
// keys are hashed with the timer stopped, as a pusher hashes before it
// sends.
//
// With TMPDIR on a tmpfs syncs cost nothing and the ratio shows CPU cost
// only; on shared virtual disks compare ratios from one run, and run it
// more than once (-count=3).
func BenchmarkPut(b *testing.B) {
	const size = 1 << 20
	data, _ := chunk(1, size)
	var baseline float64 // ns per chunk
	b.Run("writefile+fsync", func(b *testing.B) {
		dir := b.TempDir()
		b.SetBytes(size)
		n := 0
		for b.Loop() {
			n++
			binary.LittleEndian.PutUint64(data, uint64(n))
			f, err := os.Create(filepath.Join(dir, strconv.Itoa(n)))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		baseline = float64(b.Elapsed().Nanoseconds()) / float64(n)
	})
	b.Run("blobstore", func(b *testing.B) {
		opts := DefaultOptions()
		opts.ReserveBytes = 0 // the check still runs; a small TMPDIR must not stop the benchmark
		s, err := Open(b.TempDir(), opts)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.SetBytes(size)
		n := 0
		for b.Loop() {
			b.StopTimer()
			n++
			binary.LittleEndian.PutUint64(data, uint64(n))
			k := Key(sha256.Sum256(data))
			b.StartTimer()
			if err := s.Put(context.Background(), k, bytes.NewReader(data), size); err != nil {
				b.Fatal(err)
			}
		}
		ns := float64(b.Elapsed().Nanoseconds()) / float64(n)
		if baseline > 0 {
			b.ReportMetric(ns/baseline, "x-writefile")
		}
	})
}

// BenchmarkMissing measures the question every push starts with: which of
// 10,000 chunks (half of them stored) does this server lack, asked of a
// store holding 50,000.
func BenchmarkMissing(b *testing.B) {
	const stored, asked = 50_000, 10_000
	fsys := vfs.NewMem()
	fsys.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: plentyFree})
	opts := DefaultOptions()
	opts.FS = fsys
	s, err := Open(memDir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var keys []Key
	var buf [8]byte
	for i := range stored + asked/2 {
		binary.LittleEndian.PutUint64(buf[:], uint64(i))
		k := Key(sha256.Sum256(buf[:]))
		if i < stored {
			if err := s.Put(context.Background(), k, bytes.NewReader(buf[:]), int64(len(buf))); err != nil {
				b.Fatal(err)
			}
		}
		if i%10 == 0 || i >= stored { // asked/2 stored, asked/2 not
			keys = append(keys, k)
		}
	}
	keys = keys[len(keys)-asked:]
	n := 0
	for b.Loop() {
		n++
		if m := s.Missing(keys); len(m) != asked/2 {
			b.Fatalf("Missing returned %d keys, want %d", len(m), asked/2)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n)/asked, "ns/key")
}
