package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/droverhq/drover/artifact"
)

// headUpdate trains a wide model with two hidden layers of the given width
// briefly on generated images, exports it, retrains its head alone,
// exports that, and measures the second version against the first with
// chunker's sizes. It also returns the bytes of the head's tensors.
func headUpdate(tb testing.TB, width int, chunker artifact.ChunkerParams) (d delta, headBytes int64) {
	tb.Helper()
	images := syntheticDigits(300, 3)
	train, test := split(images, 0.2, splitSeed)
	x := inputMatrix(train.x)
	m := newMLP([]int{numFeatures, width, width, numClasses}, 1)
	m.fit(x, train.y, trainConfig{epochs: 1, batch: 32, lr: 0.001, seed: 1}, nil)
	dir := tb.TempDir()
	v1, v2 := filepath.Join(dir, "v1"), filepath.Join(dir, "v2")
	info := cardInfo{Name: "wide", Data: "generated", TrainSize: train.len(), TestSize: test.len()}
	info.Accuracy = m.accuracy(test)
	if err := export(v1, m, test, info); err != nil {
		tb.Fatal(err)
	}
	m.fitHead(x, train.y, trainConfig{epochs: 3, batch: 32, lr: 0.001, seed: 2}, nil)
	info.Accuracy = m.accuracy(test)
	if err := export(v2, m, test, info); err != nil {
		tb.Fatal(err)
	}
	d, err := measureDelta(context.Background(), v1, v2, chunker)
	if err != nil {
		tb.Fatal(err)
	}
	head := m.layers[len(m.layers)-1]
	r, c := head.w.Dims()
	return d, int64(4 * (r*c + len(head.b)))
}

// TestHeadUpdateDelta checks what pushing a model whose classifier head
// alone was retrained costs: the chunks that differ hold the head's bytes
// and at most about one chunk of unchanged bytes before them, well under
// 5% of the model. Two 3072-wide hidden layers make a 39 MB model, 37
// chunks of the default 1 MiB average; -short scales both down by 16
// (768-wide layers, 2.4 MB, 64 KiB chunks).
func TestHeadUpdateDelta(t *testing.T) {
	width, chunker := 3072, artifact.ChunkerParams{}
	if testing.Short() {
		width, chunker = 768, artifact.ChunkerParamsForAverage(64<<10)
	}
	d, headBytes := headUpdate(t, width, chunker)
	t.Logf("hidden %d,%d: %v; head tensors %d bytes", width, width, d, headBytes)
	if d.Moved > d.Changed+d.Size/20 {
		t.Errorf("moved %d bytes for %d changed: more than 5%% of the %d-byte model on top", d.Moved, d.Changed, d.Size)
	}
	// Only the head and the two small files (reference.json, README.md)
	// change: the frozen layers must come out byte for byte as they were.
	if small := int64(16 << 10); d.Changed > headBytes+small || d.Changed == 0 {
		t.Errorf("%d bytes changed; the head holds %d", d.Changed, headBytes)
	}
}

// BenchmarkDelta reports, for a 39 MB model whose classifier head alone
// was retrained, the bytes a push moves and the bytes that changed, each
// as a fraction of the model's size. The work is fixed: run it with
// -benchtime=1x.
func BenchmarkDelta(b *testing.B) {
	var d delta
	for b.Loop() {
		d, _ = headUpdate(b, 3072, artifact.ChunkerParams{})
	}
	b.ReportMetric(float64(d.Moved)/float64(d.Size), "moved/size")
	b.ReportMetric(float64(d.Changed)/float64(d.Size), "changed/size")
	b.ReportMetric(float64(d.Size), "bytes")
}

// BenchmarkHeadPlacement shows why encodeONNX writes the head's tensors
// last. It lays out a 39 MB model as bytes, float32 weights from
// N(0, 0.02): the body (the hidden layers, 38.5 MB) and the head (123 KB),
// with the head first, in the middle of the body, or last. The body
// stays, the head is drawn again, and the benchmark reports the mean bytes
// of the new version's chunks that the old one lacks (default chunking),
// over 16 draws. The work is fixed: run it with -benchtime=1x.
func BenchmarkHeadPlacement(b *testing.B) {
	const bodySize, headSize = 38_560_000, 122_920
	for _, place := range []string{"first", "middle", "last"} {
		b.Run("head="+place, func(b *testing.B) {
			var moved int64
			draws := 0
			for b.Loop() {
				for seed := range 16 {
					rng := rand.New(rand.NewPCG(uint64(seed), 5))
					body := randomWeights(rng, bodySize)
					layout := func(head []byte) []byte {
						switch place {
						case "first":
							return slices.Concat(head, body)
						case "middle":
							return slices.Concat(body[:bodySize/2], head, body[bodySize/2:])
						}
						return slices.Concat(body, head)
					}
					v1 := chunkSizes(b, layout(randomWeights(rng, headSize)))
					for d, size := range chunkSizes(b, layout(randomWeights(rng, headSize))) {
						if _, ok := v1[d]; !ok {
							moved += int64(size)
						}
					}
					draws++
				}
			}
			b.ReportMetric(float64(moved)/float64(draws), "moved-bytes")
			b.ReportMetric(float64(moved)/float64(draws)/(bodySize+headSize), "moved/size")
		})
	}
}

func randomWeights(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+4 <= n; i += 4 {
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(float32(rng.NormFloat64()*0.02)))
	}
	return b
}

// chunkSizes cuts b with the default chunking and returns each distinct
// chunk's size by digest.
func chunkSizes(tb testing.TB, b []byte) map[artifact.Digest]int {
	tb.Helper()
	c, err := artifact.NewChunker(bytes.NewReader(b), artifact.DefaultChunkerParams())
	if err != nil {
		tb.Fatal(err)
	}
	sizes := make(map[artifact.Digest]int)
	for {
		ch, err := c.Next()
		if err == io.EOF {
			return sizes
		}
		if err != nil {
			tb.Fatal(err)
		}
		sizes[artifact.Sum(ch.Data)] = ch.Len()
	}
}
