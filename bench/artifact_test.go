package bench

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc"
	jotfs "github.com/jotfs/fastcdc-go"
	zeebo "github.com/zeebo/blake3"
	luke "lukechampine.com/blake3"

	"github.com/droverhq/drover/artifact"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{1}).Read(b)
	return b
}

// BenchmarkDigest compares the hash Drover digests chunks with (SHA-256
// from the standard library) against the two Go BLAKE3 libraries, on one
// core, over buffers of a typical chunk's size and of a small one. The
// BLAKE3 lines report their speed as a multiple of SHA-256's in the same
// run (x-sha256). With -tags purego every library runs without its
// assembly, as BLAKE3 does on arm64 (lukechampine.com/blake3 ignores the
// tag on amd64).
func BenchmarkDigest(b *testing.B) {
	hashes := []struct {
		name string
		sum  func([]byte)
	}{
		{"sha256", func(p []byte) { sha256.Sum256(p) }},
		{"blake3-zeebo", func(p []byte) { zeebo.Sum256(p) }},
		{"blake3-lukechampine", func(p []byte) { luke.Sum256(p) }},
	}
	for _, size := range []int{64 << 10, 1 << 20} {
		data := randomBytes(size)
		var base float64
		for _, h := range hashes {
			b.Run(fmt.Sprintf("size=%dKiB/hash=%s", size>>10, h.name), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					h.sum(data)
				}
				r := float64(size) * float64(b.N) / b.Elapsed().Seconds()
				if h.name == "sha256" {
					base = r
				} else if base > 0 {
					b.ReportMetric(r/base, "x-sha256")
				}
			})
		}
	}
}

// BenchmarkChunkers compares Drover's FastCDC with the two Go FastCDC
// libraries it could have used, at the same sizes (1 MiB average, 256 KiB
// minimum, 4 MiB maximum) over the same 64 MiB, chunking only. The
// libraries report their speed as a multiple of Drover's (x-drover).
func BenchmarkChunkers(b *testing.B) {
	data := randomBytes(64 << 20)
	p := artifact.DefaultChunkerParams()
	chunkers := []struct {
		name string
		run  func(b *testing.B) int
	}{
		{"drover", func(b *testing.B) int {
			c, err := artifact.NewChunker(bytes.NewReader(data), p)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				_, err := c.Next()
				if errors.Is(err, io.EOF) {
					return n
				}
				n++
			}
		}},
		{"plakar", func(b *testing.B) int {
			c, err := chunkers.NewChunker("fastcdc-v1.0.0", bytes.NewReader(data), &chunkers.ChunkerOpts{MinSize: p.Min, NormalSize: p.Avg, MaxSize: p.Max})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				_, err := c.Next()
				n++
				if err != nil {
					return n
				}
			}
		}},
		{"jotfs", func(b *testing.B) int {
			c, err := jotfs.NewChunker(bytes.NewReader(data), jotfs.Options{MinSize: p.Min, AverageSize: p.Avg, MaxSize: p.Max})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for {
				if _, err := c.Next(); err != nil {
					return n
				}
				n++
			}
		}},
	}
	var base float64
	for _, c := range chunkers {
		b.Run("chunker="+c.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			n := 0
			for b.Loop() {
				n = c.run(b)
			}
			b.ReportMetric(float64(n), "chunks")
			r := float64(len(data)) * float64(b.N) / b.Elapsed().Seconds()
			if c.name == "drover" {
				base = r
			} else if base > 0 {
				b.ReportMetric(r/base, "x-drover")
			}
		})
	}
}
