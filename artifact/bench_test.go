package artifact

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// benchInput is what the throughput benchmarks chunk and hash: 64 MiB of
// pseudo-model weights (see pseudoModel), made once per process.
var benchInput = func() func() []byte {
	var b []byte
	return func() []byte {
		if b == nil {
			b = pseudoModel(modelTensors())
		}
		return b
	}
}()

// BenchmarkChunkAndHash measures what publishing costs per byte: cutting
// a stream into chunks and hashing each, beside the baseline of hashing
// the same bytes in one pass. Publishing can go no faster than the
// baseline; the chunk+hash line reports its speed as a fraction of it
// (x-hash). On Linux each line also reports its speed in the CPU time of
// its thread (cpu-MB/s, and cpu-x-hash), which a shared machine's load
// disturbs much less than the wall clock.
func BenchmarkChunkAndHash(b *testing.B) {
	data := benchInput()
	var hashRate, hashCPURate float64
	b.Run("baseline=hash", func(b *testing.B) {
		hashRate, hashCPURate = measure(b, data, func() {
			h := NewHasher()
			for s := data; len(s) > 0; {
				n := min(len(s), 1<<20)
				h.Write(s[:n])
				s = s[n:]
			}
			h.Sum(nil)
		})
	})
	c, err := NewChunker(nil, DefaultChunkerParams())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("chunk", func(b *testing.B) {
		measure(b, data, func() {
			c.Reset(bytes.NewReader(data))
			for {
				if _, err := c.Next(); errors.Is(err, io.EOF) {
					break
				}
			}
		})
	})
	b.Run("chunk+hash", func(b *testing.B) {
		r, cpu := measure(b, data, func() {
			c.Reset(bytes.NewReader(data))
			for {
				ch, err := c.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				Sum(ch.Data)
			}
		})
		if hashRate > 0 {
			b.ReportMetric(r/hashRate, "x-hash")
		}
		if hashCPURate > 0 && cpu > 0 {
			b.ReportMetric(cpu/hashCPURate, "cpu-x-hash")
		}
	})
}

// measure runs f over data in a benchmark loop and returns the bytes per
// second by the wall clock and by the thread's CPU time (0 where that is
// not known), reporting the second as cpu-MB/s.
func measure(b *testing.B, data []byte, f func()) (wall, cpu float64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.SetBytes(int64(len(data)))
	n := 0
	start := threadCPU()
	for b.Loop() {
		f()
		n++
	}
	used := threadCPU() - start
	bytes := float64(len(data)) * float64(n)
	wall = bytes / b.Elapsed().Seconds()
	if used > 0 {
		cpu = bytes / used.Seconds()
		b.ReportMetric(cpu/1e6, "cpu-MB/s")
	}
	return wall, cpu
}

// tensor is one weight tensor of a pseudo-model: size bytes of float32
// values drawn from the random stream (seed, stream).
type tensor struct {
	size         int
	seed, stream uint64
}

// modelTensors are the tensors of the pseudo-model: an embedding, twelve
// 4 MiB layers and an output head, 60 MiB in all.
func modelTensors() []tensor {
	ts := []tensor{{size: 8 << 20}}
	for range 12 {
		ts = append(ts, tensor{size: 4 << 20})
	}
	ts = append(ts, tensor{size: 4 << 20})
	for i := range ts {
		ts[i].seed, ts[i].stream = 1, uint64(i)
	}
	return ts
}

// pseudoModel lays out a model file the way safetensors does: a JSON
// header naming each tensor and its offsets, then the tensors, float32
// weights drawn from N(0, 0.02) as a trained layer's roughly are.
func pseudoModel(ts []tensor) []byte {
	var header bytes.Buffer
	header.WriteString("{")
	off := 0
	for i, t := range ts {
		fmt.Fprintf(&header, `"layer.%d.weight":{"dtype":"F32","shape":[%d],"data_offsets":[%d,%d]},`, i, t.size/4, off, off+t.size)
		off += t.size
	}
	header.WriteString(`"__metadata__":{"format":"pt"}}`)
	out := make([]byte, 0, 8+header.Len()+off)
	out = binary.LittleEndian.AppendUint64(out, uint64(header.Len()))
	out = append(out, header.Bytes()...)
	for _, t := range ts {
		rng := rand.New(rand.NewPCG(t.seed, t.stream))
		for range t.size / 4 {
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(rng.NormFloat64()*0.02)))
		}
	}
	return out
}

// chunkSet cuts data and returns its chunks' digests and sizes.
func chunkSet(tb testing.TB, data []byte, p ChunkerParams) (digests []Digest, sizes []int) {
	c, err := NewChunker(bytes.NewReader(data), p)
	if err != nil {
		tb.Fatal(err)
	}
	for {
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			return digests, sizes
		}
		if err != nil {
			tb.Fatal(err)
		}
		digests = append(digests, Sum(ch.Data))
		sizes = append(sizes, ch.Len())
	}
}

// newBytes returns how many chunks, and bytes, of after are not in have:
// what a push of after uploads and a pull downloads.
func newBytes(tb testing.TB, have map[Digest]bool, after []byte, p ChunkerParams) (chunks, n int) {
	ds, sizes := chunkSet(tb, after, p)
	for i, d := range ds {
		if !have[d] {
			chunks++
			n += sizes[i]
		}
	}
	return chunks, n
}

// manifestSize encodes a one-file manifest of data, for its size.
func manifestSize(tb testing.TB, data []byte, p ChunkerParams) int {
	ds, sizes := chunkSet(tb, data, p)
	f := &droverv1.ManifestFile{Path: "model.safetensors", Mode: ModeRegular, Size: uint64(len(data))}
	for i, d := range ds {
		f.Chunks = append(f.Chunks, &droverv1.ManifestChunk{Digest: d[:], Size: uint32(sizes[i])})
	}
	return proto.Size(&droverv1.Manifest{FormatVersion: FormatVersion, Chunker: p.Proto(), Files: []*droverv1.ManifestFile{f}, TotalSize: uint64(len(data))})
}

// BenchmarkChunkSize is the measurement behind DefaultAverageChunkSize
// (docs/artifacts.md): for each average size, what two realistic edits
// of a 60 MiB model cost to push again, against what each chunk costs in
// manifest bytes and requests. Run it with -benchtime=1x; it takes about
// a minute.
//
//   - layer: one 4 MiB layer trained again, all its bytes new; each of
//     the twelve layers in turn, averaged.
//   - insert: a new 1 MiB tensor before one of the twelve layers, which
//     also rewrites the header and shifts every byte after it; each
//     position in turn, averaged.
//
// Metrics: chunks and mean chunk size of the model; manifest bytes per
// GiB of model; for each edit, the new chunks and MiB per edit, and the
// new bytes as a multiple of the bytes the edit really added.
func BenchmarkChunkSize(b *testing.B) {
	v1 := benchInput()
	for _, avg := range []int{64 << 10, 256 << 10, 1 << 20, 4 << 20} {
		p := ChunkerParamsForAverage(avg)
		b.Run(fmt.Sprintf("avg=%dKiB", avg>>10), func(b *testing.B) {
			for b.Loop() {
				ds, _ := chunkSet(b, v1, p)
				have := make(map[Digest]bool, len(ds))
				for _, d := range ds {
					have[d] = true
				}
				var lc, ln, ic, in int
				for k := 1; k <= 12; k++ {
					ts := modelTensors()
					ts[k].seed = 2
					c, n := newBytes(b, have, pseudoModel(ts), p)
					lc, ln = lc+c, ln+n
					ts = slices.Insert(modelTensors(), k, tensor{size: 1 << 20, seed: 3})
					c, n = newBytes(b, have, pseudoModel(ts), p)
					ic, in = ic+c, in+n
				}
				b.ReportMetric(float64(len(ds)), "chunks")
				b.ReportMetric(float64(len(v1))/float64(len(ds))/(1<<10), "mean-KiB")
				b.ReportMetric(float64(manifestSize(b, v1, p))*float64(1<<30)/float64(len(v1))/1000, "manifest-KB/GiB")
				b.ReportMetric(float64(lc)/12, "layer-chunks")
				b.ReportMetric(float64(ln)/12/(1<<20), "layer-MiB")
				b.ReportMetric(float64(ln)/12/float64(4<<20), "layer-x")
				b.ReportMetric(float64(ic)/12, "insert-chunks")
				b.ReportMetric(float64(in)/12/(1<<20), "insert-MiB")
				b.ReportMetric(float64(in)/12/float64(1<<20), "insert-x")
			}
		})
	}
}
