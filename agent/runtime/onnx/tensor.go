package onnx

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

// DType is an element type, numbered as ONNX's TensorProto.DataType.
type DType int32

// The element types the engine computes with. Others (strings, float16,
// bfloat16, complex) are refused when a model or request names them.
const (
	Float32 DType = DType(onnxpb.TensorProto_FLOAT)
	Uint8   DType = DType(onnxpb.TensorProto_UINT8)
	Int8    DType = DType(onnxpb.TensorProto_INT8)
	Uint16  DType = DType(onnxpb.TensorProto_UINT16)
	Int16   DType = DType(onnxpb.TensorProto_INT16)
	Int32   DType = DType(onnxpb.TensorProto_INT32)
	Int64   DType = DType(onnxpb.TensorProto_INT64)
	Bool    DType = DType(onnxpb.TensorProto_BOOL)
	Float64 DType = DType(onnxpb.TensorProto_DOUBLE)
	Uint32  DType = DType(onnxpb.TensorProto_UINT32)
	Uint64  DType = DType(onnxpb.TensorProto_UINT64)
	Float16 DType = DType(onnxpb.TensorProto_FLOAT16)
	// BFloat16 holds the upper 16 bits of a float32.
	BFloat16 DType = DType(onnxpb.TensorProto_BFLOAT16)
)

// String is the type's lower-case ONNX name ("float", "int64").
func (d DType) String() string {
	switch d {
	case Float32:
		return "float"
	case Float64:
		return "double"
	case Float16:
		return "float16"
	case BFloat16:
		return "bfloat16"
	}
	name, ok := onnxpb.TensorProto_DataType_name[int32(d)]
	if !ok {
		return fmt.Sprintf("dtype(%d)", int32(d))
	}
	return toLower(name)
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// supported reports whether the engine computes with d.
func (d DType) supported() bool {
	switch d {
	case Float32, Float64, Float16, BFloat16, Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64, Bool:
		return true
	}
	return false
}

// Elem is the set of Go element types a Tensor holds.
type Elem interface {
	float32 | float64 | int8 | int16 | int32 | int64 | uint8 | uint16 | uint32 | uint64 | bool
}

// number is Elem without bool.
type number interface {
	float32 | float64 | int8 | int16 | int32 | int64 | uint8 | uint16 | uint32 | uint64
}

type float interface{ float32 | float64 }

type integer interface {
	int8 | int16 | int32 | int64 | uint8 | uint16 | uint32 | uint64
}

func dtypeOf[T Elem]() DType {
	var z T
	switch any(z).(type) {
	case float32:
		return Float32
	case float64:
		return Float64
	case int8:
		return Int8
	case int16:
		return Int16
	case int32:
		return Int32
	case int64:
		return Int64
	case uint8:
		return Uint8
	case uint16:
		return Uint16
	case uint32:
		return Uint32
	case uint64:
		return Uint64
	default:
		return Bool
	}
}

// Tensor is a dense, row-major array. A Tensor handed to or returned by
// Model.Run is never written afterwards, so it may be shared; operators
// always allocate their outputs.
type Tensor struct {
	dtype DType
	shape []int
	data  any // []T for the T that dtype names
}

// New returns a tensor of shape over data, which it keeps (not a copy).
func New[T Elem](shape []int, data []T) (*Tensor, error) {
	if n := numel(shape); n != len(data) {
		return nil, fmt.Errorf("new tensor: shape %v holds %d values, got %d", shape, n, len(data))
	}
	return &Tensor{dtype: dtypeOf[T](), shape: append([]int(nil), shape...), data: data}, nil
}

// mk is New for shapes the caller computed from data's length.
func mk[T Elem](shape []int, data []T) *Tensor {
	return &Tensor{dtype: dtypeOf[T](), shape: shape, data: data}
}

// Zeros returns a zero tensor of the given type and shape.
func Zeros(d DType, shape []int) (*Tensor, error) {
	if !d.supported() {
		return nil, fmt.Errorf("zeros: %w: %s", ErrUnsupportedType, d)
	}
	n := numel(shape)
	return &Tensor{dtype: d, shape: append([]int(nil), shape...), data: makeSlice(d, n)}, nil
}

func makeSlice(d DType, n int) any {
	switch d {
	case Float32:
		return make([]float32, n)
	case Float64:
		return make([]float64, n)
	case Int8:
		return make([]int8, n)
	case Int16:
		return make([]int16, n)
	case Int32:
		return make([]int32, n)
	case Int64:
		return make([]int64, n)
	case Uint8:
		return make([]uint8, n)
	case Uint16, Float16, BFloat16:
		return make([]uint16, n)
	case Uint32:
		return make([]uint32, n)
	case Uint64:
		return make([]uint64, n)
	case Bool:
		return make([]bool, n)
	}
	panic(fmt.Sprintf("makeSlice: %s", d))
}

// DType is the element type.
func (t *Tensor) DType() DType { return t.dtype }

// Shape is the tensor's dimensions; callers must not modify it.
func (t *Tensor) Shape() []int { return t.shape }

// Len is the number of elements.
func (t *Tensor) Len() int { return numel(t.shape) }

// Data is the tensor's values as []T for its element type; callers must
// not modify them.
func (t *Tensor) Data() any { return t.data }

// Values returns t's elements when T is its element type.
func Values[T Elem](t *Tensor) ([]T, bool) {
	v, ok := t.data.([]T)
	return v, ok
}

// Float64s converts every element to float64 (bool as 0 or 1).
func (t *Tensor) Float64s() []float64 {
	if t.dtype == Float16 || t.dtype == BFloat16 {
		return widen16(t).Float64s()
	}
	switch v := t.data.(type) {
	case []float32:
		return convert[float32, float64](v)
	case []float64:
		return append([]float64(nil), v...)
	case []int8:
		return convert[int8, float64](v)
	case []int16:
		return convert[int16, float64](v)
	case []int32:
		return convert[int32, float64](v)
	case []int64:
		return convert[int64, float64](v)
	case []uint8:
		return convert[uint8, float64](v)
	case []uint16:
		return convert[uint16, float64](v)
	case []uint32:
		return convert[uint32, float64](v)
	case []uint64:
		return convert[uint64, float64](v)
	case []bool:
		out := make([]float64, len(v))
		for i, b := range v {
			if b {
				out[i] = 1
			}
		}
		return out
	}
	return nil
}

// FromFloat64s builds a tensor of type d from float64 values, the way a
// JSON request carries them. Integer types reject values with a fraction
// or outside their range, so a request cannot be silently truncated.
func FromFloat64s(d DType, shape []int, v []float64) (*Tensor, error) {
	if numel(shape) != len(v) {
		return nil, fmt.Errorf("from float64s: shape %v holds %d values, got %d", shape, numel(shape), len(v))
	}
	shape = append([]int(nil), shape...)
	switch d {
	case Float32:
		return mk(shape, convert[float64, float32](v)), nil
	case Float64:
		return mk(shape, append([]float64(nil), v...)), nil
	case Float16, BFloat16:
		return narrowTo(mk(shape, convert[float64, float32](v)), d), nil
	case Bool:
		out := make([]bool, len(v))
		for i, x := range v {
			if x != 0 && x != 1 {
				return nil, fmt.Errorf("from float64s: element %d is %v, a bool must be 0 or 1 (or true/false)", i, x)
			}
			out[i] = x == 1
		}
		return mk(shape, out), nil
	}
	lo, hi := intRange(d)
	if hi == 0 {
		return nil, fmt.Errorf("from float64s: %w: %s", ErrUnsupportedType, d)
	}
	for i, x := range v {
		// 2^63 and 2^64 are one past the largest int64 and uint64.
		over := x > hi || ((d == Int64 || d == Uint64) && x >= hi)
		if x != math.Trunc(x) || x < lo || over {
			return nil, fmt.Errorf("from float64s: element %d is %v, not an integer in %s's range", i, x, d)
		}
	}
	t, _ := Zeros(d, shape)
	switch dst := t.data.(type) {
	case []int8:
		fill(dst, v)
	case []int16:
		fill(dst, v)
	case []int32:
		fill(dst, v)
	case []int64:
		fill(dst, v)
	case []uint8:
		fill(dst, v)
	case []uint16:
		fill(dst, v)
	case []uint32:
		fill(dst, v)
	case []uint64:
		fill(dst, v)
	}
	return t, nil
}

func fill[T number](dst []T, v []float64) {
	for i, x := range v {
		dst[i] = T(x)
	}
}

func intRange(d DType) (lo, hi float64) {
	switch d {
	case Int8:
		return math.MinInt8, math.MaxInt8
	case Int16:
		return math.MinInt16, math.MaxInt16
	case Int32:
		return math.MinInt32, math.MaxInt32
	case Int64:
		return -(1 << 63), 1 << 63
	case Uint8:
		return 0, math.MaxUint8
	case Uint16:
		return 0, math.MaxUint16
	case Uint32:
		return 0, math.MaxUint32
	case Uint64:
		return 0, 1 << 64
	}
	return 0, 0
}

func convert[S, D number](s []S) []D {
	out := make([]D, len(s))
	for i, x := range s {
		out[i] = D(x)
	}
	return out
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func strides(shape []int) []int {
	s := make([]int, len(shape))
	acc := 1
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = acc
		acc *= shape[i]
	}
	return s
}

// reshaped returns a tensor sharing t's data under another shape.
func (t *Tensor) reshaped(shape []int) *Tensor {
	return &Tensor{dtype: t.dtype, shape: shape, data: t.data}
}

// TensorFromProto decodes an ONNX TensorProto (an initializer, a Constant,
// or a test's input_N.pb).
func TensorFromProto(p *onnxpb.TensorProto) (*Tensor, error) {
	d := DType(p.GetDataType())
	name := p.GetName()
	if name == "" {
		name = "(unnamed)"
	}
	if !d.supported() {
		return nil, fmt.Errorf("tensor %s: %w: %s", name, ErrUnsupportedType, onnxpb.TensorProto_DataType(d))
	}
	if p.GetDataLocation() == onnxpb.TensorProto_EXTERNAL || len(p.GetExternalData()) > 0 {
		return nil, fmt.Errorf("tensor %s: data stored outside the model file is not supported: save the model with its weights inside (onnx.save_model(..., save_as_external_data=False))", name)
	}
	if p.GetSegment() != nil {
		return nil, fmt.Errorf("tensor %s: segmented tensors are not supported", name)
	}
	shape := make([]int, len(p.GetDims()))
	// The values must be in the message, so a count larger than the
	// message holds is a lie: check before allocating anything for it.
	limit := int64(len(p.GetRawData())) + int64(len(p.GetFloatData())) + int64(len(p.GetDoubleData())) +
		int64(len(p.GetInt32Data())) + int64(len(p.GetInt64Data())) + int64(len(p.GetUint64Data()))
	n64 := int64(1)
	empty := false
	for _, x := range p.GetDims() {
		empty = empty || x == 0
	}
	for i, x := range p.GetDims() {
		if x < 0 {
			return nil, fmt.Errorf("tensor %s: negative dimension %d", name, x)
		}
		if !empty && (n64 > limit/x+1 || n64*x > limit) {
			return nil, fmt.Errorf("tensor %s: shape %v holds more values than the tensor carries", name, p.GetDims())
		}
		if !empty {
			n64 *= x
		}
		shape[i] = int(x)
	}
	n := int(n64)
	if empty {
		n = 0
	}
	if raw := p.GetRawData(); raw != nil || n == 0 {
		size := elemSize(d)
		if len(raw) != n*size {
			return nil, fmt.Errorf("tensor %s: raw_data has %d bytes, shape %v of %s needs %d", name, len(raw), shape, d, n*size)
		}
		t := &Tensor{dtype: d, shape: shape, data: makeSlice(d, n)}
		decodeRaw(t.data, raw)
		return t, nil
	}
	var have int
	switch d {
	case Float32:
		have = len(p.GetFloatData())
	case Float64:
		have = len(p.GetDoubleData())
	case Int64:
		have = len(p.GetInt64Data())
	case Uint32, Uint64:
		have = len(p.GetUint64Data())
	default: // int32_data carries the narrow types, bool and float16 bits
		have = len(p.GetInt32Data())
	}
	if have != n {
		return nil, fmt.Errorf("tensor %s: shape %v holds %d values, the typed data field has %d", name, shape, n, have)
	}
	t := &Tensor{dtype: d, shape: shape, data: makeSlice(d, n)}
	switch dst := t.data.(type) {
	case []float32:
		copy(dst, p.GetFloatData())
	case []float64:
		copy(dst, p.GetDoubleData())
	case []int64:
		copy(dst, p.GetInt64Data())
	case []uint64:
		copy(dst, p.GetUint64Data())
	case []uint32:
		for i, x := range p.GetUint64Data() {
			dst[i] = uint32(x)
		}
	case []int32:
		copy(dst, p.GetInt32Data())
	case []int8:
		fillInt(dst, p.GetInt32Data())
	case []int16:
		fillInt(dst, p.GetInt32Data())
	case []uint8:
		fillInt(dst, p.GetInt32Data())
	case []uint16: // uint16, or float16 bits
		fillInt(dst, p.GetInt32Data())
	case []bool:
		for i, x := range p.GetInt32Data() {
			dst[i] = x != 0
		}
	}
	return t, nil
}

func fillInt[T integer](dst []T, src []int32) {
	for i, x := range src {
		dst[i] = T(x)
	}
}

func elemSize(d DType) int {
	switch d {
	case Int8, Uint8, Bool:
		return 1
	case Int16, Uint16, Float16, BFloat16:
		return 2
	case Float32, Int32, Uint32:
		return 4
	}
	return 8
}

func decodeRaw(dst any, raw []byte) {
	le := binary.LittleEndian
	switch v := dst.(type) {
	case []float32:
		for i := range v {
			v[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
	case []float64:
		for i := range v {
			v[i] = math.Float64frombits(le.Uint64(raw[8*i:]))
		}
	case []int8:
		for i := range v {
			v[i] = int8(raw[i])
		}
	case []uint8:
		copy(v, raw)
	case []bool:
		for i := range v {
			v[i] = raw[i] != 0
		}
	case []int16:
		for i := range v {
			v[i] = int16(le.Uint16(raw[2*i:]))
		}
	case []uint16:
		for i := range v {
			v[i] = le.Uint16(raw[2*i:])
		}
	case []int32:
		for i := range v {
			v[i] = int32(le.Uint32(raw[4*i:]))
		}
	case []uint32:
		for i := range v {
			v[i] = le.Uint32(raw[4*i:])
		}
	case []int64:
		for i := range v {
			v[i] = int64(le.Uint64(raw[8*i:]))
		}
	case []uint64:
		for i := range v {
			v[i] = le.Uint64(raw[8*i:])
		}
	}
}

// Concat joins tensors of one element type along axis 0: the rows of
// several requests become one batch.
func Concat(ts ...*Tensor) (*Tensor, error) {
	if len(ts) == 0 {
		return nil, fmt.Errorf("concat: no tensors")
	}
	if len(ts) == 1 {
		return ts[0], nil
	}
	n := &node{op: "Concat"}
	res, err := concat(n, ts)
	if err != nil {
		return nil, fmt.Errorf("concat: %w", err)
	}
	return res[0], nil
}

// Rows returns a copy of rows lo..hi-1 along axis 0.
func (t *Tensor) Rows(lo, hi int) (*Tensor, error) {
	if len(t.shape) == 0 || lo < 0 || hi < lo || hi > t.shape[0] {
		return nil, fmt.Errorf("rows %d..%d of shape %v: out of range", lo, hi, t.shape)
	}
	inner := numel(t.shape[1:])
	shape := append([]int{hi - lo}, t.shape[1:]...)
	res := &Tensor{dtype: t.dtype, shape: shape, data: makeSlice(t.dtype, (hi-lo)*inner)}
	copyRange(res.data, 0, t.data, lo*inner, (hi-lo)*inner)
	return res, nil
}
