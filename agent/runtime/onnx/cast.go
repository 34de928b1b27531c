package onnx

import "fmt"

// castTo converts t to element type d (a copy, even when d is t's type).
// Floats to integers truncate toward zero, as C and numpy do.
func castTo(t *Tensor, d DType) (*Tensor, error) {
	if !d.supported() {
		return nil, fmt.Errorf("cast: %w: %s", ErrUnsupportedType, d)
	}
	shape := append([]int(nil), t.shape...)
	if d == Float16 || d == BFloat16 {
		if t.dtype == Float64 && d == Float16 {
			// Straight from double, as numpy rounds: through float
			// first could round twice.
			v := t.data.([]float64)
			h := make([]uint16, len(v))
			for i, x := range v {
				h[i] = f64to16(x)
			}
			return &Tensor{dtype: Float16, shape: shape, data: h}, nil
		}
		f, _ := castTo(t, Float32)
		return narrowTo(f, d), nil
	}
	if t.dtype == Float16 || t.dtype == BFloat16 {
		t = widen16(t)
	}
	if d == Bool {
		f := t.Float64s()
		out := make([]bool, len(f))
		for i, x := range f {
			out[i] = x != 0
		}
		return mk(shape, out), nil
	}
	// 64-bit integers go through int64 or uint64 so they stay exact.
	if isInt(t.dtype) && isInt(d) {
		switch v := t.data.(type) {
		case []uint64:
			return &Tensor{dtype: d, shape: shape, data: intsTo(v, d)}, nil
		default:
			return &Tensor{dtype: d, shape: shape, data: intsTo(toInt64s(t), d)}, nil
		}
	}
	f := t.Float64s()
	out, _ := Zeros(d, shape)
	switch o := out.data.(type) {
	case []float32:
		fill(o, f)
	case []float64:
		copy(o, f)
	case []int8:
		fill(o, f)
	case []int16:
		fill(o, f)
	case []int32:
		fill(o, f)
	case []int64:
		fill(o, f)
	case []uint8:
		fill(o, f)
	case []uint16:
		fill(o, f)
	case []uint32:
		fill(o, f)
	case []uint64:
		fill(o, f)
	}
	return out, nil
}

func isInt(d DType) bool {
	switch d {
	case Int8, Int16, Int32, Int64, Uint8, Uint16, Uint32, Uint64:
		return true
	}
	return false
}

func toInt64s(t *Tensor) []int64 {
	switch v := t.data.(type) {
	case []int8:
		return convert[int8, int64](v)
	case []int16:
		return convert[int16, int64](v)
	case []int32:
		return convert[int32, int64](v)
	case []int64:
		return v
	case []uint8:
		return convert[uint8, int64](v)
	case []uint16:
		return convert[uint16, int64](v)
	case []uint32:
		return convert[uint32, int64](v)
	}
	panic("toInt64s: " + t.dtype.String())
}

func intsTo[S int64 | uint64](v []S, d DType) any {
	switch d {
	case Int8:
		return convert[S, int8](v)
	case Int16:
		return convert[S, int16](v)
	case Int32:
		return convert[S, int32](v)
	case Int64:
		return convert[S, int64](v)
	case Uint8:
		return convert[S, uint8](v)
	case Uint16:
		return convert[S, uint16](v)
	case Uint32:
		return convert[S, uint32](v)
	}
	return convert[S, uint64](v)
}

func castOp(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	to := DType(n.int("to", 0))
	if n.op == "CastLike" {
		if err := need(args, 2); err != nil {
			return nil, err
		}
		to = args[1].dtype
	}
	if !to.supported() {
		return nil, fmt.Errorf("%w: cast to %s", ErrUnsupportedType, to)
	}
	return one(castTo(args[0], to))
}
