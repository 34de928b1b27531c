package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/advancedclimatesystems/gonnx"
	gonnxpb "github.com/advancedclimatesystems/gonnx/onnx"
	"google.golang.org/protobuf/proto"
	"gorgonia.org/tensor"

	"github.com/droverhq/drover/agent/runtime/onnx"
	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
	"github.com/droverhq/drover/agent/runtime/onnx/onnxtest"
)

// The ONNX runtime (agent/runtime/onnx) against github.com/advancedclimatesystems/gonnx,
// the pure-Go ONNX library it was compared with (docs/onnx.md). gonnx
// implements operator set 13 only and refuses models that import another
// version; the baseline runs get the same graphs with their opset_import
// set to 13, which changes nothing for the operators these graphs use.

const sampleDir = "../cli/sample/hello-classifier"

// gonnxModel loads a model into gonnx with its default opset set to 13.
func gonnxModel(tb testing.TB, b []byte) *gonnx.Model {
	tb.Helper()
	var mp gonnxpb.ModelProto
	if err := proto.Unmarshal(b, &mp); err != nil {
		tb.Fatal(err)
	}
	for _, o := range mp.OpsetImport {
		if o.Domain == "" || o.Domain == "ai.onnx" {
			o.Version = 13
		}
	}
	m, err := gonnx.NewModel(&mp)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

type sampleRef struct {
	Tolerance float64
	Cases     []struct {
		Input         []float64
		Probabilities []float64
	}
}

// sampleRows returns rows reference inputs and the outputs reference.json
// gives for them.
func sampleRows(tb testing.TB, rows int) ([]float32, []float64, float64) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(sampleDir, "reference.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var ref sampleRef
	if err := json.Unmarshal(b, &ref); err != nil {
		tb.Fatal(err)
	}
	var in []float32
	var want []float64
	for i := range rows {
		c := ref.Cases[i%len(ref.Cases)]
		for _, v := range c.Input {
			in = append(in, float32(v))
		}
		want = append(want, c.Probabilities...)
	}
	return in, want, ref.Tolerance
}

func within(tb testing.TB, what string, got []float32, want []float64, tol float64) {
	tb.Helper()
	if len(got) != len(want) {
		tb.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(float64(got[i])-want[i]) > tol {
			tb.Fatalf("%s: value %d is %v, want %v within %v", what, i, got[i], want[i], tol)
		}
	}
}

// engines runs each engine's benchmark in turn and reports the drover
// line's rows/s as a multiple of gonnx's (x-gonnx).
func engines(b *testing.B, rows int, drover, baseline func(b *testing.B)) {
	var gonnxRate float64
	b.Run("engine=gonnx", func(b *testing.B) {
		baseline(b)
		gonnxRate = float64(rows*b.N) / b.Elapsed().Seconds()
		b.ReportMetric(gonnxRate, "rows/s")
	})
	b.Run("engine=drover", func(b *testing.B) {
		drover(b)
		rate := float64(rows*b.N) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "rows/s")
		if gonnxRate > 0 {
			b.ReportMetric(rate/gonnxRate, "x-gonnx")
		}
	})
}

// BenchmarkONNXHelloClassifier: the example model (Gemm, Relu, Softmax) on
// its reference inputs, one row and 64 rows per run, outputs checked
// against reference.json before timing.
func BenchmarkONNXHelloClassifier(b *testing.B) {
	model, err := os.ReadFile(filepath.Join(sampleDir, "model.onnx"))
	if err != nil {
		b.Fatal(err)
	}
	for _, rows := range []int{1, 64} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			in, want, tol := sampleRows(b, rows)
			engines(b, rows, func(b *testing.B) {
				m, err := onnx.Load(model)
				if err != nil {
					b.Fatal(err)
				}
				x, _ := onnx.New([]int{rows, 64}, in)
				feed := map[string]*onnx.Tensor{"input": x}
				out, err := m.Run(feed)
				if err != nil {
					b.Fatal(err)
				}
				got, _ := onnx.Values[float32](out["probabilities"])
				within(b, "drover", got, want, tol)
				b.ResetTimer()
				for b.Loop() {
					if _, err := m.Run(feed); err != nil {
						b.Fatal(err)
					}
				}
			}, func(b *testing.B) {
				m := gonnxModel(b, model)
				feed := gonnx.Tensors{"input": tensor.New(tensor.WithShape(rows, 64), tensor.WithBacking(in))}
				out, err := m.Run(feed)
				if err != nil {
					b.Fatal(err)
				}
				within(b, "gonnx", out["probabilities"].Data().([]float32), want, tol)
				b.ResetTimer()
				for b.Loop() {
					if _, err := m.Run(feed); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// BenchmarkONNXConvNet: a 32×32 RGB classifier of three strided 3×3
// convolutions (16, 32, 64 channels) with ReLU, Flatten, Gemm and Softmax:
// the layers gonnx implements (it has no pooling and no batch norm, and
// its Conv fails on a bias: "Cannot reshape (1, 16, 1, 1) into [1 1 1 1]",
// so the convolutions here have none). Both
// engines' outputs are checked against each other before timing.
func BenchmarkONNXConvNet(b *testing.B) {
	c := onnxtest.DefaultCNN()
	c.Pool, c.BatchNorm, c.NoBias, c.Opset = false, false, true, 13
	model, err := c.Build()
	if err != nil {
		b.Fatal(err)
	}
	const rows = 1
	img := c.Images(rows, 3)
	shape := []int{rows, c.Channels, c.Size, c.Size}
	m, err := onnx.Load(model)
	if err != nil {
		b.Fatal(err)
	}
	x, _ := onnx.New(shape, img)
	feed := map[string]*onnx.Tensor{onnxtest.Input: x}
	ref, err := m.Run(feed)
	if err != nil {
		b.Fatal(err)
	}
	want := ref[onnxtest.Output].Float64s()
	engines(b, rows, func(b *testing.B) {
		for b.Loop() {
			if _, err := m.Run(feed); err != nil {
				b.Fatal(err)
			}
		}
	}, func(b *testing.B) {
		g := gonnxModel(b, model)
		gfeed := gonnx.Tensors{onnxtest.Input: tensor.New(tensor.WithShape(shape...), tensor.WithBacking(img))}
		out, err := g.Run(gfeed)
		if err != nil {
			b.Fatal(err)
		}
		within(b, "gonnx against drover", out[onnxtest.Output].Data().([]float32), want, 1e-5)
		b.ResetTimer()
		for b.Loop() {
			if _, err := g.Run(gfeed); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestONNXNodeTestsAgainstGonnx runs gonnx on every ONNX backend node test
// that exercises one operator (Debian's libonnx-testdata), once as shipped
// and once with the opset set to 13, and logs a table of passes per
// operator beside the engine's. It fails where gonnx passes a case of an
// operator the engine claims and the engine does not.
func TestONNXNodeTestsAgainstGonnx(t *testing.T) {
	root := "/usr/share/libonnx-testdata/data/node"
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Skipf("the ONNX backend node tests are missing (apt-get install libonnx-testdata): %v", err)
	}
	claimed := map[string]bool{}
	for _, op := range onnx.Operators() {
		claimed[op] = true
	}
	type counts struct{ total, asShipped, opset13, drover int }
	byOp := map[string]*counts{}
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
		if err != nil {
			continue
		}
		var mp onnxpb.ModelProto
		if err := proto.Unmarshal(b, &mp); err != nil {
			t.Fatal(err)
		}
		ops := map[string]bool{}
		for _, n := range mp.GetGraph().GetNode() {
			ops[n.GetOpType()] = true
		}
		if len(ops) != 1 {
			continue
		}
		op := mp.GetGraph().GetNode()[0].GetOpType()
		c := byOp[op]
		if c == nil {
			c = &counts{}
			byOp[op] = c
		}
		c.total++
		shipped := runGonnx(dir, b, false) == nil
		forced := runGonnx(dir, b, true) == nil
		ours := runDrover(dir, b) == nil
		if shipped {
			c.asShipped++
		}
		if forced {
			c.opset13++
		}
		if ours {
			c.drover++
		}
		if (shipped || forced) && claimed[op] && !ours {
			t.Errorf("%s: gonnx passes, the engine does not", e.Name())
		}
	}
	var ops []string
	for op := range byOp {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	var sum counts
	var lines []string
	for _, op := range ops {
		c := byOp[op]
		sum.total += c.total
		sum.asShipped += c.asShipped
		sum.opset13 += c.opset13
		sum.drover += c.drover
		lines = append(lines, fmt.Sprintf("| %s | %d | %d | %d | %d |", op, c.total, c.asShipped, c.opset13, c.drover))
	}
	t.Logf("single-operator node tests: %d; gonnx passes %d as shipped, %d at opset 13; drover passes %d\n| operator | cases | gonnx | gonnx, opset 13 | drover |\n| --- | --- | --- | --- | --- |\n%s",
		sum.total, sum.asShipped, sum.opset13, sum.drover, strings.Join(lines, "\n"))
}

func readPB(path string) (*onnx.Tensor, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var tp onnxpb.TensorProto
	if err := proto.Unmarshal(b, &tp); err != nil {
		return nil, err
	}
	return onnx.TensorFromProto(&tp)
}

func closeTo(got, want []float64) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d values, want %d", len(got), len(want))
	}
	for i := range want {
		if math.IsNaN(want[i]) && math.IsNaN(got[i]) || got[i] == want[i] {
			continue
		}
		if math.Abs(got[i]-want[i]) > 1e-7+1e-3*math.Abs(want[i]) {
			return fmt.Errorf("value %d is %v, want %v", i, got[i], want[i])
		}
	}
	return nil
}

func runDrover(dir string, model []byte) error {
	m, err := onnx.Load(model)
	if err != nil {
		return err
	}
	in := map[string]*onnx.Tensor{}
	for i, v := range m.Inputs() {
		t, err := readPB(filepath.Join(dir, "test_data_set_0", fmt.Sprintf("input_%d.pb", i)))
		if err != nil {
			return err
		}
		in[v.Name] = t
	}
	out, err := m.Run(in)
	if err != nil {
		return err
	}
	for i, v := range m.Outputs() {
		want, err := readPB(filepath.Join(dir, "test_data_set_0", fmt.Sprintf("output_%d.pb", i)))
		if err != nil {
			return err
		}
		if out[v.Name].DType() != want.DType() {
			return fmt.Errorf("type %s, want %s", out[v.Name].DType(), want.DType())
		}
		if err := closeTo(out[v.Name].Float64s(), want.Float64s()); err != nil {
			return err
		}
	}
	return nil
}

// runGonnx runs one node test in gonnx; a panic counts as a failure.
func runGonnx(dir string, model []byte, force13 bool) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	var mp gonnxpb.ModelProto
	if err := proto.Unmarshal(model, &mp); err != nil {
		return err
	}
	if force13 {
		for _, o := range mp.OpsetImport {
			if o.Domain == "" {
				o.Version = 13
			}
		}
	}
	m, err := gonnx.NewModel(&mp)
	if err != nil {
		return err
	}
	in := gonnx.Tensors{}
	for i, name := range m.InputNames() {
		t, err := readPB(filepath.Join(dir, "test_data_set_0", fmt.Sprintf("input_%d.pb", i)))
		if err != nil {
			return err
		}
		shape := t.Shape()
		if len(shape) == 0 {
			shape = []int{1}
		}
		in[name] = tensor.New(tensor.WithShape(shape...), tensor.WithBacking(t.Data()))
	}
	out, err := m.Run(in)
	if err != nil {
		return err
	}
	for i, name := range m.OutputNames() {
		want, err := readPB(filepath.Join(dir, "test_data_set_0", fmt.Sprintf("output_%d.pb", i)))
		if err != nil {
			return err
		}
		got := out[name]
		if got == nil {
			return fmt.Errorf("no output %s", name)
		}
		var g []float64
		switch v := got.Data().(type) {
		case []float32:
			for _, x := range v {
				g = append(g, float64(x))
			}
		case []float64:
			g = v
		case []int64:
			for _, x := range v {
				g = append(g, float64(x))
			}
		case []int32:
			for _, x := range v {
				g = append(g, float64(x))
			}
		case []bool:
			for _, x := range v {
				if x {
					g = append(g, 1)
				} else {
					g = append(g, 0)
				}
			}
		default:
			return fmt.Errorf("output type %T", v)
		}
		if err := closeTo(g, want.Float64s()); err != nil {
			return err
		}
	}
	return nil
}
