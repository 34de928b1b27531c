// Package onnxtest builds ONNX models in code for the engine's tests and
// benchmarks: small convolutional networks with deterministic weights.
package onnxtest

import (
	"fmt"
	"math/rand/v2"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

// CNN describes a VGG-style image classifier: blocks of 3×3 convolutions
// (padding 1), each block followed by 2×2 max pooling, then global average
// pooling, a fully connected layer and softmax.
type CNN struct {
	Size      int   // input height and width
	Channels  int   // input channels
	Blocks    []int // output channels of each block's convolution
	Classes   int
	NoBias    bool  // convolutions without a bias input
	BatchNorm bool  // BatchNormalization after each convolution
	Pool      bool  // MaxPool after each block and GlobalAveragePool at the end; else strided convolutions and Flatten
	Opset     int64 // default operator set version
	Seed      uint64
}

// DefaultCNN is a 32×32 RGB classifier with three blocks (16, 32, 64
// channels): about 25 thousand parameters and 2.8 million multiply-adds
// per image.
func DefaultCNN() CNN {
	return CNN{Size: 32, Channels: 3, Blocks: []int{16, 32, 64}, Classes: 10, BatchNorm: true, Pool: true, Opset: 17, Seed: 1}
}

// Input and Output are the graph's value names.
const (
	Input  = "image"
	Output = "probabilities"
)

// Build returns the serialized model. Its input is float [N, Channels,
// Size, Size] and its output float [N, Classes].
func (c CNN) Build() ([]byte, error) {
	if c.Size <= 0 || c.Channels <= 0 || c.Classes <= 0 || len(c.Blocks) == 0 {
		return nil, fmt.Errorf("cnn: size, channels, classes and blocks must be positive")
	}
	rng := rand.New(rand.NewPCG(c.Seed, c.Seed+1))
	g := &onnxpb.GraphProto{Name: "cnn"}
	weight := func(name string, dims ...int64) string {
		n := int64(1)
		for _, d := range dims {
			n *= d
		}
		fan := float64(n / dims[0])
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 1.4 / (fan + 1))
		}
		g.Initializer = append(g.Initializer, &onnxpb.TensorProto{Name: name, Dims: dims, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: v})
		return name
	}
	positive := func(name string, n int64) string {
		v := make([]float32, n)
		for i := range v {
			v[i] = 0.5 + rng.Float32()
		}
		g.Initializer = append(g.Initializer, &onnxpb.TensorProto{Name: name, Dims: []int64{n}, DataType: int32(onnxpb.TensorProto_FLOAT), FloatData: v})
		return name
	}
	ints := func(name string, v ...int64) *onnxpb.AttributeProto {
		return &onnxpb.AttributeProto{Name: name, Type: onnxpb.AttributeProto_INTS, Ints: v}
	}
	node := func(op string, in []string, out string, attrs ...*onnxpb.AttributeProto) string {
		g.Node = append(g.Node, &onnxpb.NodeProto{Name: out, OpType: op, Input: in, Output: []string{out}, Attribute: attrs})
		return out
	}
	x := Input
	cin := int64(c.Channels)
	for i, cout := range c.Blocks {
		co := int64(cout)
		p := fmt.Sprintf("block%d", i)
		attrs := []*onnxpb.AttributeProto{ints("kernel_shape", 3, 3), ints("pads", 1, 1, 1, 1)}
		if !c.Pool {
			attrs = append(attrs, ints("strides", 2, 2))
		}
		in := []string{x, weight(p+".w", co, cin, 3, 3)}
		if !c.NoBias {
			in = append(in, weight(p+".b", co))
		}
		x = node("Conv", in, p+".conv", attrs...)
		if c.BatchNorm {
			x = node("BatchNormalization", []string{x, positive(p+".scale", co), weight(p+".shift", co), weight(p+".mean", co), positive(p+".var", co)}, p+".bn")
		}
		x = node("Relu", []string{x}, p+".relu")
		if c.Pool {
			x = node("MaxPool", []string{x}, p+".pool", ints("kernel_shape", 2, 2), ints("strides", 2, 2))
		}
		cin = co
	}
	features := cin
	if c.Pool {
		x = node("GlobalAveragePool", []string{x}, "gap")
	} else {
		side := int64(c.Size)
		for range c.Blocks {
			side = (side + 1) / 2
		}
		features = cin * side * side
	}
	x = node("Flatten", []string{x}, "flat")
	x = node("Gemm", []string{x, weight("fc.w", int64(c.Classes), features), weight("fc.b", int64(c.Classes))}, "logits",
		&onnxpb.AttributeProto{Name: "transB", Type: onnxpb.AttributeProto_INT, I: 1})
	node("Softmax", []string{x}, Output)
	tensor := func(name string, dims ...any) *onnxpb.ValueInfoProto {
		var ds []*onnxpb.TensorShapeProto_Dimension
		for _, d := range dims {
			switch d := d.(type) {
			case string:
				ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}})
			case int:
				ds = append(ds, &onnxpb.TensorShapeProto_Dimension{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}})
			}
		}
		return &onnxpb.ValueInfoProto{Name: name, Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{
			ElemType: int32(onnxpb.TensorProto_FLOAT), Shape: &onnxpb.TensorShapeProto{Dim: ds}}}}}
	}
	g.Input = []*onnxpb.ValueInfoProto{tensor(Input, "N", c.Channels, c.Size, c.Size)}
	g.Output = []*onnxpb.ValueInfoProto{tensor(Output, "N", c.Classes)}
	opset := c.Opset
	if opset == 0 {
		opset = 17
	}
	mp := &onnxpb.ModelProto{IrVersion: 8, ProducerName: "drover onnxtest", Graph: g, OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: opset}}}
	return proto.Marshal(mp)
}

// Images returns n deterministic images for c, flattened N×C×H×W.
func (c CNN) Images(n int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	v := make([]float32, n*c.Channels*c.Size*c.Size)
	for i := range v {
		v[i] = rng.Float32()
	}
	return v
}
