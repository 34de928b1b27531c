package onnx

import "math"

// Float16 tensors hold IEEE half-precision bits in a []uint16. Operators
// never see them: Run widens float16 inputs to float and narrows float
// outputs back, which is what numpy does for float16 arithmetic too.

func f16to32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf, NaN
		return math.Float32frombits(sign | 0xff<<23 | frac<<13)
	case exp == 0:
		if frac == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: frac × 2^-24.
		v := float32(frac) * (1.0 / (1 << 24))
		if sign != 0 {
			v = -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
}

// f32to16 rounds to the nearest half, ties to even.
func f32to16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	frac := b & 0x7fffff
	if exp == 0xff {
		if frac != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		m := frac | 0x800000
		shift := uint(14 - e)
		half := uint32(1) << (shift - 1)
		r := m >> shift
		rem := m & (1<<shift - 1)
		if rem > half || (rem == half && r&1 == 1) {
			r++
		}
		return sign | uint16(r)
	}
	r := frac >> 13
	rem := frac & 0x1fff
	out := uint32(e)<<10 | r
	if rem > 0x1000 || (rem == 0x1000 && out&1 == 1) {
		out++ // may carry into the exponent, which is the right rounding
	}
	return sign | uint16(out)
}

// widen16 converts a float16 or bfloat16 tensor to float.
func widen16(t *Tensor) *Tensor {
	h := t.data.([]uint16)
	f := make([]float32, len(h))
	for i, x := range h {
		if t.dtype == BFloat16 {
			f[i] = math.Float32frombits(uint32(x) << 16)
		} else {
			f[i] = f16to32(x)
		}
	}
	return mk(t.shape, f)
}

// narrowTo converts a float tensor to float16 or bfloat16. Bfloat16 keeps
// the upper half of each float's bits (truncation, as ONNX's reference
// implementation does).
func narrowTo(t *Tensor, d DType) *Tensor {
	if d == Float16 {
		return narrow16(t)
	}
	f := t.data.([]float32)
	h := make([]uint16, len(f))
	for i, x := range f {
		h[i] = uint16(math.Float32bits(x) >> 16)
	}
	return &Tensor{dtype: BFloat16, shape: t.shape, data: h}
}

func narrow16(t *Tensor) *Tensor {
	f := t.data.([]float32)
	h := make([]uint16, len(f))
	for i, x := range f {
		h[i] = f32to16(x)
	}
	return &Tensor{dtype: Float16, shape: t.shape, data: h}
}

// runHalf runs n with float16 (or bfloat16) inputs computed as float, and
// its float outputs narrowed back. Cast and CastLike convert types
// themselves.
func runHalf(n *node, args []*Tensor) ([]*Tensor, error) {
	if n.op == "Cast" || n.op == "CastLike" {
		return n.run(n, args)
	}
	wide := make([]*Tensor, len(args))
	half := DType(0)
	for i, a := range args {
		wide[i] = a
		if a != nil && (a.dtype == Float16 || a.dtype == BFloat16) {
			wide[i] = widen16(a)
			half = a.dtype
		}
	}
	res, err := n.run(n, wide)
	if err != nil || half == 0 {
		return res, err
	}
	for i, r := range res {
		if r != nil && r.dtype == Float32 {
			res[i] = narrowTo(r, half)
		}
	}
	return res, nil
}

// f64to16 rounds a double to the nearest half, ties to even.
func f64to16(f float64) uint16 {
	if math.IsNaN(f) || math.IsInf(f, 0) || f == 0 {
		return f32to16(float32(f))
	}
	sign := uint16(0)
	if f < 0 {
		sign, f = 0x8000, -f
	}
	if f >= 65520 { // rounds past the largest half, 65504
		return sign | 0x7c00
	}
	frac, exp := math.Frexp(f) // f = frac × 2^exp, frac in [0.5, 1)
	e := exp - 1               // f = (2·frac) × 2^e
	if e < -14 {
		// Subnormal: a multiple of 2^-24.
		m := math.RoundToEven(f * (1 << 24))
		return sign | uint16(m)
	}
	m := math.RoundToEven((2*frac - 1) * 1024)
	if m == 1024 {
		m = 0
		e++
	}
	if e > 15 {
		return sign | 0x7c00
	}
	return sign | uint16(e+15)<<10 | uint16(m)
}
