package main

// The ONNX file is encoded with protowire by hand rather than with
// generated ONNX types. The one kept-up Go module that ships them
// (github.com/advancedclimatesystems/gonnx, package onnx) also imports
// gorgonia.org/tensor and a dozen modules behind it, and registers the
// "onnx" protobuf package in the process-wide registry. An MLP needs a
// handful of messages; the field numbers below are those of ONNX's
// onnx/onnx.proto.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"gonum.org/v1/gonum/mat"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	onnxIRVersion = 8  // the IR version of ONNX 1.10 to 1.12, which defined opset 17
	onnxOpset     = 17 // Gemm 13, Relu 14, Softmax 13
	onnxFloat     = 1  // TensorProto.DataType FLOAT
	onnxAttrInt   = 2  // AttributeProto.AttributeType INT

	// Tensor names that other programs see.
	inputName  = "input"
	outputName = "probabilities"
)

// Field numbers, per message of onnx.proto.
const (
	modelIRVersion    = 1
	modelProducerName = 2
	modelGraph        = 7
	modelOpsetImport  = 8

	opsetVersion = 2

	graphNode        = 1
	graphName        = 2
	graphInitializer = 5
	graphInput       = 11
	graphOutput      = 12

	nodeInput     = 1
	nodeOutput    = 2
	nodeName      = 3
	nodeOpType    = 4
	nodeAttribute = 5

	attrName = 1
	attrI    = 3
	attrType = 20

	tensorDims     = 1
	tensorDataType = 2
	tensorName     = 8
	tensorRawData  = 9

	valueInfoName       = 1
	valueInfoType       = 2
	typeTensorType      = 1
	tensorTypeElemType  = 1
	tensorTypeShape     = 2
	shapeDim            = 1
	dimValue            = 1
	dimParam            = 2
	batchDimensionParam = "N"
)

// layerName names layer i of n in the graph: hidden1, hidden2, …, head.
func layerName(i, n int) string {
	if i == n-1 {
		return "head"
	}
	return "hidden" + strconv.Itoa(i+1)
}

// encodeONNX returns m as an ONNX model: input "input", float32 [N,64], raw
// pixel counts 0..16; output "probabilities", float32 [N,10].
//
// The initializers are written in layer order, so the head's weights and
// bias are the last large bytes of the file: retraining only the head
// changes one run of bytes at the end, which content-defined chunking
// turns into a few new chunks at the end of the file (see docs/artifacts.md).
func encodeONNX(m *mlp) []byte {
	var g []byte
	prev := inputName
	for i := range m.layers {
		name := layerName(i, len(m.layers))
		out := name + ".out"
		g = appendMessage(g, graphNode, gemmNode(name, prev, out))
		prev = out
		if i < len(m.layers)-1 {
			relu := name + ".relu"
			g = appendMessage(g, graphNode, node(relu, "Relu", []string{prev}, relu, nil))
			prev = relu
		}
	}
	axis := protowire.AppendTag(nil, attrName, protowire.BytesType)
	axis = protowire.AppendString(axis, "axis")
	axis = protowire.AppendTag(axis, attrI, protowire.VarintType)
	axis = protowire.AppendVarint(axis, 1)
	axis = protowire.AppendTag(axis, attrType, protowire.VarintType)
	axis = protowire.AppendVarint(axis, onnxAttrInt)
	g = appendMessage(g, graphNode, node("softmax", "Softmax", []string{prev}, outputName, axis))

	g = protowire.AppendTag(g, graphName, protowire.BytesType)
	g = protowire.AppendString(g, "digits-mlp")
	for i, l := range m.layers {
		name := layerName(i, len(m.layers))
		in, out := l.w.Dims()
		scale := 1.0
		if i == 0 {
			// Folding the input scaling into the first layer lets the model
			// take raw pixel counts. Dividing by 16 is exact in binary
			// floating point, so reading the file back recovers the weights
			// bit for bit.
			scale = 1.0 / maxPixel
		}
		g = appendMessage(g, graphInitializer, tensor(name+".weight", []int{in, out}, l.w.RawMatrix().Data, scale))
		g = appendMessage(g, graphInitializer, tensor(name+".bias", []int{out}, l.b, 1))
	}
	g = appendMessage(g, graphInput, valueInfo(inputName, numFeatures))
	g = appendMessage(g, graphOutput, valueInfo(outputName, numClasses))

	var b []byte
	b = protowire.AppendTag(b, modelIRVersion, protowire.VarintType)
	b = protowire.AppendVarint(b, onnxIRVersion)
	b = protowire.AppendTag(b, modelProducerName, protowire.BytesType)
	b = protowire.AppendString(b, "drover examples/digits")
	b = appendMessage(b, modelGraph, g)
	opset := protowire.AppendTag(nil, opsetVersion, protowire.VarintType)
	opset = protowire.AppendVarint(opset, onnxOpset)
	b = appendMessage(b, modelOpsetImport, opset)
	return b
}

func appendMessage(b []byte, field protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

// gemmNode computes out = in·weight + bias (Gemm's defaults: no
// transposes, alpha = beta = 1).
func gemmNode(layer, in, out string) []byte {
	return node(layer, "Gemm", []string{in, layer + ".weight", layer + ".bias"}, out, nil)
}

func node(name, op string, inputs []string, output string, attr []byte) []byte {
	var b []byte
	for _, in := range inputs {
		b = protowire.AppendTag(b, nodeInput, protowire.BytesType)
		b = protowire.AppendString(b, in)
	}
	b = protowire.AppendTag(b, nodeOutput, protowire.BytesType)
	b = protowire.AppendString(b, output)
	b = protowire.AppendTag(b, nodeName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	b = protowire.AppendTag(b, nodeOpType, protowire.BytesType)
	b = protowire.AppendString(b, op)
	if attr != nil {
		b = appendMessage(b, nodeAttribute, attr)
	}
	return b
}

// tensor encodes data times scale as a float32 tensor in raw_data (little
// endian, as ONNX specifies).
func tensor(name string, dims []int, data []float64, scale float64) []byte {
	var b []byte
	for _, d := range dims {
		b = protowire.AppendTag(b, tensorDims, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d))
	}
	b = protowire.AppendTag(b, tensorDataType, protowire.VarintType)
	b = protowire.AppendVarint(b, onnxFloat)
	b = protowire.AppendTag(b, tensorName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(v*scale)))
	}
	b = protowire.AppendTag(b, tensorRawData, protowire.BytesType)
	return protowire.AppendBytes(b, raw)
}

// valueInfo describes a float32 tensor of shape [N, width].
func valueInfo(name string, width int) []byte {
	batch := protowire.AppendTag(nil, dimParam, protowire.BytesType)
	batch = protowire.AppendString(batch, batchDimensionParam)
	cols := protowire.AppendTag(nil, dimValue, protowire.VarintType)
	cols = protowire.AppendVarint(cols, uint64(width))
	shape := appendMessage(nil, shapeDim, batch)
	shape = appendMessage(shape, shapeDim, cols)
	tt := protowire.AppendTag(nil, tensorTypeElemType, protowire.VarintType)
	tt = protowire.AppendVarint(tt, onnxFloat)
	tt = appendMessage(tt, tensorTypeShape, shape)
	b := protowire.AppendTag(nil, valueInfoName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	return appendMessage(b, valueInfoType, appendMessage(nil, typeTensorType, tt))
}

// decodeONNX reads back the weights of a model encodeONNX wrote. It reads
// the initializers by name and trusts the graph to be the one encodeONNX
// makes of them; it is no general ONNX reader.
func decodeONNX(b []byte) (*mlp, error) {
	var graph []byte
	err := eachField(b, func(num protowire.Number, v []byte) error {
		if num == modelGraph {
			graph = v
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode model: %w", err)
	}
	if graph == nil {
		return nil, errors.New("decode model: no graph")
	}
	type rawTensor struct {
		dims []int
		data []float32
	}
	tensors := make(map[string]rawTensor)
	err = eachField(graph, func(num protowire.Number, v []byte) error {
		if num != graphInitializer {
			return nil
		}
		var t rawTensor
		var name string
		var raw []byte
		dataType := uint64(0)
		err := eachField(v, func(num protowire.Number, v []byte) error {
			switch num {
			case tensorDims:
				d, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return protowire.ParseError(n)
				}
				t.dims = append(t.dims, int(d))
			case tensorDataType:
				d, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return protowire.ParseError(n)
				}
				dataType = d
			case tensorName:
				name = string(v)
			case tensorRawData:
				raw = v
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("initializer: %w", err)
		}
		size := 1
		for _, d := range t.dims {
			size *= d
		}
		if dataType != onnxFloat || len(raw) != 4*size {
			return fmt.Errorf("initializer %q: want float32 raw data of shape %v", name, t.dims)
		}
		t.data = make([]float32, size)
		for i := range t.data {
			t.data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		tensors[name] = t
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode graph: %w", err)
	}

	hidden := 0
	for {
		if _, ok := tensors["hidden"+strconv.Itoa(hidden+1)+".weight"]; !ok {
			break
		}
		hidden++
	}
	n := hidden + 1
	m := &mlp{}
	in := numFeatures
	for i := range n {
		name := layerName(i, n)
		w, bias := tensors[name+".weight"], tensors[name+".bias"]
		if len(w.dims) != 2 || w.dims[0] != in || len(bias.dims) != 1 || bias.dims[0] != w.dims[1] {
			return nil, fmt.Errorf("decode graph: layer %s: weight %v and bias %v do not follow a layer of %d outputs", name, w.dims, bias.dims, in)
		}
		scale := 1.0
		if i == 0 {
			scale = maxPixel // undo the folded input scaling
		}
		l := layer{w: mat.NewDense(w.dims[0], w.dims[1], nil), b: make([]float64, len(bias.data))}
		for j, v := range w.data {
			l.w.RawMatrix().Data[j] = float64(v) * scale
		}
		for j, v := range bias.data {
			l.b[j] = float64(v)
		}
		m.layers = append(m.layers, l)
		in = w.dims[1]
	}
	if in != numClasses {
		return nil, fmt.Errorf("decode graph: the head has %d outputs, want %d", in, numClasses)
	}
	return m, nil
}

// eachField calls f with each field of the message b: a varint's own
// bytes, a length-delimited field's contents.
func eachField(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var v []byte
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				v = b[:n]
			}
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		if err := f(num, v); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
