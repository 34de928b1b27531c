package main

import (
	"context"
	"path/filepath"
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
