package onnx

import (
	"errors"
	"math"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

// graph builds a one-node model over float inputs of the given shapes.
func graph(op string, attrs []*onnxpb.AttributeProto, inputs map[string][]int64, order []string, inits []*onnxpb.TensorProto) *onnxpb.ModelProto {
	vi := func(name string, dims []int64) *onnxpb.ValueInfoProto {
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range dims {
			if d < 0 {
				ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: "N"}})
			} else {
				ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: d}})
			}
		}
		return &onnxpb.ValueInfoProto{Name: name, Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: int32(onnxpb.TensorProto_FLOAT), Shape: &onnxpb.TensorShapeProto{Dim: ds}}}}}
	}
	g := &onnxpb.GraphProto{Name: "g", Initializer: inits}
	var names []string
	for _, name := range order {
		g.Input = append(g.Input, vi(name, inputs[name]))
		names = append(names, name)
	}
	for _, in := range inits {
		names = append(names, in.GetName())
	}
	g.Node = []*onnxpb.NodeProto{{OpType: op, Input: names, Output: []string{"y"}, Attribute: attrs}}
	g.Output = []*onnxpb.ValueInfoProto{{Name: "y", Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: int32(onnxpb.TensorProto_FLOAT)}}}}}
	return &onnxpb.ModelProto{IrVersion: 8, Graph: g, OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: 17}}}
}

func f32(t *testing.T, shape []int, v ...float32) *Tensor {
	t.Helper()
	x, err := New(shape, v)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestLoadNamesTheUnsupportedOperator(t *testing.T) {
	b, _ := proto.Marshal(graph("Einsum", nil, map[string][]int64{"x": {2}}, []string{"x"}, nil))
	_, err := Load(b)
	if !errors.Is(err, ErrUnsupportedOp) || !strings.Contains(err.Error(), "Einsum") {
		t.Fatalf("Load: %v, want ErrUnsupportedOp naming Einsum", err)
	}
	mp := graph("Relu", nil, map[string][]int64{"x": {2}}, []string{"x"}, nil)
	mp.Graph.Node[0].Domain = "ai.onnx.ml"
	b, _ = proto.Marshal(mp)
	if _, err := Load(b); !errors.Is(err, ErrUnsupportedOp) || !strings.Contains(err.Error(), "ai.onnx.ml") {
		t.Fatalf("Load with a foreign domain: %v", err)
	}
}

func TestLoadRejectsMalformedModels(t *testing.T) {
	if _, err := Load([]byte("not a model at all")); !errors.Is(err, ErrBadModel) {
		t.Fatalf("garbage: %v", err)
	}
	if _, err := Load(nil); !errors.Is(err, ErrBadModel) {
		t.Fatalf("empty: %v", err)
	}
	mp := graph("Relu", nil, map[string][]int64{"x": {2}}, []string{"x"}, nil)
	mp.Graph.Node[0].Input = []string{"nowhere"}
	if _, err := FromProto(mp); !errors.Is(err, ErrBadModel) || !strings.Contains(err.Error(), "nowhere") {
		t.Fatalf("dangling input: %v", err)
	}
	mp = graph("Relu", nil, map[string][]int64{"x": {2}}, []string{"x"}, nil)
	mp.Graph.Initializer = []*onnxpb.TensorProto{{Name: "w", Dims: []int64{3}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: []float32{1}}}
	if _, err := FromProto(mp); err == nil || !strings.Contains(err.Error(), "w") {
		t.Fatalf("short initializer: %v", err)
	}
	mp.Graph.Initializer = []*onnxpb.TensorProto{{Name: "s", Dims: []int64{1}, DataType: int32(onnxpb.TensorProto_STRING)}}
	if _, err := FromProto(mp); !errors.Is(err, ErrUnsupportedType) {
		t.Fatalf("string initializer: %v", err)
	}
	mp.Graph.Initializer = []*onnxpb.TensorProto{{Name: "e", Dims: []int64{1}, DataType: int32(onnxpb.TensorProto_FLOAT), DataLocation: onnxpb.TensorProto_EXTERNAL}}
	if _, err := FromProto(mp); err == nil || !strings.Contains(err.Error(), "outside the model file") {
		t.Fatalf("external data: %v", err)
	}
}

func TestRunChecksInputs(t *testing.T) {
	m, err := FromProto(graph("Relu", nil, map[string][]int64{"x": {-1, 3}}, []string{"x"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   map[string]*Tensor
		want string
	}{
		{map[string]*Tensor{}, `input "x" is missing`},
		{map[string]*Tensor{"x": f32(t, []int{2, 2}, 1, 2, 3, 4)}, "[? 3]"},
		{map[string]*Tensor{"x": mk([]int{1, 3}, []int64{1, 2, 3})}, "is int64"},
		{map[string]*Tensor{"x": f32(t, []int{1, 3}, 1, 2, 3), "z": f32(t, []int{1}, 1)}, `no input "z"`},
	} {
		_, err := m.Run(tc.in)
		if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run: %v, want ErrBadInput containing %q", err, tc.want)
		}
	}
	out, err := m.Run(map[string]*Tensor{"x": f32(t, []int{2, 3}, -1, 2, -3, 4, -5, 6)})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := Values[float32](out["y"]); len(got) != 6 || got[0] != 0 || got[1] != 2 || got[5] != 6 {
		t.Fatalf("relu: %v", got)
	}
}

// A Model is shared by every request: concurrent runs must neither race
// nor mix up their values.
func TestRunConcurrently(t *testing.T) {
	w := &onnxpb.TensorProto{Name: "w", Dims: []int64{3, 2}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: []float32{1, 2, 3, 4, 5, 6}}
	m, err := FromProto(graph("MatMul", nil, map[string][]int64{"x": {-1, 3}}, []string{"x"}, []*onnxpb.TensorProto{w}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for k := range 50 {
				v := float32(g*100 + k)
				out, err := m.Run(map[string]*Tensor{"x": f32(t, []int{1, 3}, v, 0, 1)})
				if err != nil {
					t.Error(err)
					return
				}
				got, _ := Values[float32](out["y"])
				if got[0] != v+5 || got[1] != 2*v+6 {
					t.Errorf("x=[%v 0 1]: %v", v, got)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestFloat16RoundTrip(t *testing.T) {
	for _, f := range []float32{0, 1, -2.5, 65504, 6.1035156e-05, 5.9604645e-08, 0.1, float32(math.Inf(1)), -3.1415927} {
		h := f32to16(f)
		back := f16to32(h)
		if math.Abs(float64(back-f)) > math.Abs(float64(f))*1e-3+6e-8 {
			t.Errorf("%v -> %#04x -> %v", f, h, back)
		}
	}
	if f32to16(1e6) != 0x7c00 || !math.IsNaN(float64(f16to32(f32to16(float32(math.NaN()))))) {
		t.Error("overflow or NaN")
	}
}

func TestFromFloat64sRejectsLossyIntegers(t *testing.T) {
	if _, err := FromFloat64s(Int64, []int{2}, []float64{1, 2.5}); err == nil {
		t.Error("2.5 as int64")
	}
	if _, err := FromFloat64s(Int64, []int{1}, []float64{1 << 63}); err == nil {
		t.Error("2^63 as int64")
	}
	if _, err := FromFloat64s(Uint8, []int{1}, []float64{256}); err == nil {
		t.Error("256 as uint8")
	}
	if _, err := FromFloat64s(Bool, []int{1}, []float64{2}); err == nil {
		t.Error("2 as bool")
	}
	x, err := FromFloat64s(Int32, []int{2}, []float64{-7, 9})
	if v, _ := Values[int32](x); err != nil || v[0] != -7 || v[1] != 9 {
		t.Fatalf("%v %v", v, err)
	}
}

func TestConcatAndRows(t *testing.T) {
	a, b := f32(t, []int{1, 2}, 1, 2), f32(t, []int{2, 2}, 3, 4, 5, 6)
	c, err := Concat(a, b)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.Rows(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := Values[float32](r); len(v) != 4 || v[0] != 3 || v[3] != 6 || r.Shape()[0] != 2 {
		t.Fatalf("rows: %v %v", r.Shape(), v)
	}
	if _, err := c.Rows(2, 4); err == nil {
		t.Fatal("rows past the end")
	}
}

// A model that passes Load never panics the caller, whatever its bytes.
func FuzzLoad(f *testing.F) {
	seed, _ := proto.Marshal(graph("Relu", nil, map[string][]int64{"x": {2}}, []string{"x"}, nil))
	f.Add(seed)
	seed2, _ := proto.Marshal(graph("Conv", nil, map[string][]int64{"x": {1, 1, 3, 3}, "w": {1, 1, 2, 2}}, []string{"x", "w"}, nil))
	f.Add(seed2)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Load(b)
		if err != nil {
			return
		}
		in := map[string]*Tensor{}
		for _, v := range m.Inputs() {
			shape := []int{}
			for _, d := range v.Shape {
				shape = append(shape, min(max(d, 1), 4))
			}
			x, err := Zeros(v.DType, shape)
			if err != nil {
				return
			}
			in[v.Name] = x
		}
		_, _ = m.Run(in) // errors are fine; a panic is not
	})
}

// A tensor's declared shape is checked against the values it carries
// before anything is allocated for it.
func TestTensorFromProtoRefusesHugeShapes(t *testing.T) {
	for _, tp := range []*onnxpb.TensorProto{
		{Name: "a", Dims: []int64{1 << 40, 1 << 20}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: []float32{1}},
		{Name: "b", Dims: []int64{1 << 62}, DataType: int32(onnxpb.TensorProto_FLOAT), RawData: []byte{1, 2, 3, 4}},
		{Name: "c", Dims: []int64{3}, DataType: int32(onnxpb.TensorProto_INT64), Int64Data: []int64{1, 2}},
	} {
		if _, err := TensorFromProto(tp); err == nil {
			t.Errorf("%s: dims %v accepted", tp.Name, tp.Dims)
		}
	}
	x, err := TensorFromProto(&onnxpb.TensorProto{Dims: []int64{2, 0}, DataType: int32(onnxpb.TensorProto_FLOAT)})
	if err != nil || x.Len() != 0 {
		t.Fatalf("empty tensor: %v", err)
	}
}
