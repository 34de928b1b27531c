package onnx_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/droverhq/drover/agent/runtime/onnx"
	"github.com/droverhq/drover/agent/runtime/onnx/onnxtest"
)

const sampleDir = "../../../cli/sample/hello-classifier"

type reference struct {
	Tolerance float64
	Cases     []struct {
		Input         []float64
		Probabilities []float64
	}
}

// sampleBatch returns the example model, rows of its reference inputs
// (the reference cases repeated), and the matching expected outputs.
func sampleBatch(tb testing.TB, rows int) (*onnx.Model, *onnx.Tensor, [][]float64, float64) {
	tb.Helper()
	m, err := onnx.LoadFile(filepath.Join(sampleDir, "model.onnx"))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(sampleDir, "reference.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var ref reference
	if err := json.Unmarshal(b, &ref); err != nil {
		tb.Fatal(err)
	}
	var in []float64
	var want [][]float64
	for i := range rows {
		c := ref.Cases[i%len(ref.Cases)]
		in = append(in, c.Input...)
		want = append(want, c.Probabilities)
	}
	x, err := onnx.FromFloat64s(onnx.Float32, []int{rows, 64}, in)
	if err != nil {
		tb.Fatal(err)
	}
	return m, x, want, ref.Tolerance
}

func checkRows(tb testing.TB, got *onnx.Tensor, want [][]float64, tol float64) {
	tb.Helper()
	v := got.Float64s()
	width := len(want[0])
	if len(v) != len(want)*width {
		tb.Fatalf("%d outputs, want %d", len(v), len(want)*width)
	}
	for i, row := range want {
		for j, w := range row {
			if math.Abs(v[i*width+j]-w) > tol {
				tb.Fatalf("row %d, output %d: %v, want %v within %v", i, j, v[i*width+j], w, tol)
			}
		}
	}
}

// TestSampleModelMatchesReference runs the example model on its reference
// inputs, one at a time and all at once.
func TestSampleModelMatchesReference(t *testing.T) {
	for _, rows := range []int{1, 8, 64} {
		m, x, want, tol := sampleBatch(t, rows)
		out, err := m.Run(map[string]*onnx.Tensor{"input": x})
		if err != nil {
			t.Fatal(err)
		}
		checkRows(t, out["probabilities"], want, tol)
	}
}

func BenchmarkHelloClassifier(b *testing.B) {
	for _, rows := range []int{1, 64} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			m, x, want, tol := sampleBatch(b, rows)
			in := map[string]*onnx.Tensor{"input": x}
			out, err := m.Run(in)
			if err != nil {
				b.Fatal(err)
			}
			checkRows(b, out["probabilities"], want, tol)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := m.Run(in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

func cnnInput(tb testing.TB, c onnxtest.CNN, rows int) *onnx.Tensor {
	tb.Helper()
	x, err := onnx.New([]int{rows, c.Channels, c.Size, c.Size}, c.Images(rows, 7))
	if err != nil {
		tb.Fatal(err)
	}
	return x
}

// TestCNNBatchMatchesSingleRows checks the convolutional benchmark model
// (which has no reference outputs of its own: each operator in it is
// checked by the node tests) for the properties a batch must keep: each
// row of a batched run equals that image run alone, and each row's
// probabilities sum to 1.
func TestCNNBatchMatchesSingleRows(t *testing.T) {
	c := onnxtest.DefaultCNN()
	b, err := c.Build()
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnx.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	const rows = 4
	x := cnnInput(t, c, rows)
	out, err := m.Run(map[string]*onnx.Tensor{onnxtest.Input: x})
	if err != nil {
		t.Fatal(err)
	}
	all := out[onnxtest.Output].Float64s()
	for r := range rows {
		xr, _ := x.Rows(r, r+1)
		one, err := m.Run(map[string]*onnx.Tensor{onnxtest.Input: xr})
		if err != nil {
			t.Fatal(err)
		}
		var sum float64
		for j, v := range one[onnxtest.Output].Float64s() {
			sum += v
			if math.Abs(v-all[r*c.Classes+j]) > 1e-6 {
				t.Fatalf("row %d class %d: %v alone, %v in the batch", r, j, v, all[r*c.Classes+j])
			}
		}
		if math.Abs(sum-1) > 1e-5 {
			t.Fatalf("row %d sums to %v", r, sum)
		}
	}
}

func BenchmarkCNN(b *testing.B) {
	c := onnxtest.DefaultCNN()
	model, err := c.Build()
	if err != nil {
		b.Fatal(err)
	}
	m, err := onnx.Load(model)
	if err != nil {
		b.Fatal(err)
	}
	for _, rows := range []int{1, 16} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			in := map[string]*onnx.Tensor{onnxtest.Input: cnnInput(b, c, rows)}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Run(in); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}

// BenchmarkRealConvNet would time a published convolutional network from
// the backend tests' real-model suite, but Debian's libonnx-testdata ships
// those (ResNet-50, SqueezeNet, …) as download links only (data.json), with
// no weights; BenchmarkCNN stands in for them.
func BenchmarkRealConvNet(b *testing.B) {
	matches, _ := filepath.Glob("/usr/share/libonnx-testdata/data/real/*/model.onnx")
	if len(matches) == 0 {
		b.Skip("no real convolutional network ships with weights in /usr/share/libonnx-testdata/data/real: it holds download links (data.json) only; see BenchmarkCNN")
	}
	for _, path := range matches {
		m, err := onnx.LoadFile(path)
		if err != nil {
			b.Logf("%s: %v", path, err)
			continue
		}
		b.Run(filepath.Base(filepath.Dir(path)), func(b *testing.B) {
			in := map[string]*onnx.Tensor{}
			for _, v := range m.Inputs() {
				shape := make([]int, len(v.Shape))
				for i, d := range v.Shape {
					shape[i] = max(d, 1)
				}
				in[v.Name], _ = onnx.Zeros(v.DType, shape)
			}
			for b.Loop() {
				if _, err := m.Run(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
