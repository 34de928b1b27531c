package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	"github.com/droverhq/drover/agent/runtime/onnx"
)

// decodeArray turns a JSON number, bool, or (nested) array of them into a
// shape and flat values. Rows must all have the same length.
func decodeArray(raw json.RawMessage) (shape []int, vals []float64, err error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %v", err)
	}
	if err := walkShape(v, 0, &shape); err != nil {
		return nil, nil, err
	}
	vals = make([]float64, 0, max(1, prod(shape)))
	if err := flatten(v, 0, shape, &vals); err != nil {
		return nil, nil, err
	}
	return shape, vals, nil
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// walkShape reads the shape off the first element at every depth.
func walkShape(v any, depth int, shape *[]int) error {
	a, ok := v.([]any)
	if !ok {
		return nil
	}
	*shape = append(*shape, len(a))
	if len(a) == 0 {
		return nil
	}
	return walkShape(a[0], depth+1, shape)
}

func flatten(v any, depth int, shape []int, out *[]float64) error {
	if depth < len(shape) {
		a, ok := v.([]any)
		if !ok || len(a) != shape[depth] {
			return fmt.Errorf("ragged array: every row at depth %d must have %d elements", depth, shape[depth])
		}
		for _, e := range a {
			if err := flatten(e, depth+1, shape, out); err != nil {
				return err
			}
		}
		return nil
	}
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return fmt.Errorf("number %s: %v", x, err)
		}
		*out = append(*out, f)
	case bool:
		if x {
			*out = append(*out, 1)
		} else {
			*out = append(*out, 0)
		}
	case []any:
		return fmt.Errorf("ragged array: an element at depth %d is an array, others are not", depth)
	default:
		return fmt.Errorf("element %v is not a number or bool", v)
	}
	return nil
}

// appendTensor writes t as nested JSON arrays. Floats use the shortest
// decimal that reads back as the same float (or double); NaN and ±Inf,
// which JSON cannot carry, are written as null.
func appendTensor(b []byte, t *onnx.Tensor) []byte {
	shape := t.Shape()
	var f []float64
	bits := 64
	var ints []int64
	var u64 []uint64
	var bools []bool
	switch v := t.Data().(type) {
	case []float32:
		bits = 32
		f = t.Float64s()
	case []float64:
		f = v
	case []bool:
		bools = v
	case []int64:
		ints = v
	case []uint64:
		u64 = v
	default:
		if t.DType() == onnx.Float16 || t.DType() == onnx.BFloat16 {
			bits = 32
			f = t.Float64s()
		} else {
			f = t.Float64s() // narrower integers are exact in float64
			bits = 0
		}
	}
	i := 0
	var elem func(b []byte, depth int) []byte
	elem = func(b []byte, depth int) []byte {
		if depth == len(shape) {
			switch {
			case bools != nil:
				b = strconv.AppendBool(b, bools[i])
			case ints != nil:
				b = strconv.AppendInt(b, ints[i], 10)
			case u64 != nil:
				b = strconv.AppendUint(b, u64[i], 10)
			case bits == 0:
				b = strconv.AppendInt(b, int64(f[i]), 10)
			case math.IsNaN(f[i]) || math.IsInf(f[i], 0):
				b = append(b, "null"...)
			default:
				b = strconv.AppendFloat(b, f[i], 'g', -1, bits)
			}
			i++
			return b
		}
		b = append(b, '[')
		for k := 0; k < shape[depth]; k++ {
			if k > 0 {
				b = append(b, ',')
			}
			b = elem(b, depth+1)
		}
		return append(b, ']')
	}
	return elem(b, 0)
}
