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

func widen16(t *Tensor) *Tensor {
	h := t.data.([]uint16)
	f := make([]float32, len(h))
	for i, x := range h {
		f[i] = f16to32(x)
	}
	return mk(t.shape, f)
}

func narrow16(t *Tensor) *Tensor {
	f := t.data.([]float32)
	h := make([]uint16, len(f))
	for i, x := range f {
		h[i] = f32to16(x)
	}
	return &Tensor{dtype: Float16, shape: t.shape, data: h}
}

// runHalf runs n with float16 inputs computed as float.
func runHalf(n *node, args []*Tensor) ([]*Tensor, error) {
	wide := make([]*Tensor, len(args))
	any16 := false
	for i, a := range args {
		wide[i] = a
		if a != nil && a.dtype == Float16 {
			wide[i] = widen16(a)
			any16 = true
		}
	}
	res, err := n.run(n, wide)
	if err != nil || !any16 {
		return res, err
	}
	for i, r := range res {
		if r != nil && r.dtype == Float32 {
			res[i] = narrow16(r)
		}
	}
	return res, nil
}
