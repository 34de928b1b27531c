package onnx

import (
	"fmt"
	"math"
)

func quantOps() map[string]opFunc {
	return map[string]opFunc{
		"QuantizeLinear":        quantizeLinear,
		"DequantizeLinear":      dequantizeLinear,
		"DynamicQuantizeLinear": dynamicQuantizeLinear,
		"MatMulInteger":         matMulInteger,
		"QLinearMatMul":         qlinearMatMul,
		"ConvInteger":           convInteger,
		"QLinearConv":           qlinearConv,
	}
}

// f64 views t as float64 values under a Float64 tensor of the same shape.
func f64(t *Tensor) *Tensor {
	return &Tensor{dtype: Float64, shape: t.shape, data: t.Float64s()}
}

// perAxis broadcasts a scale or zero point (a scalar, or a 1-D tensor
// along axis) to x's shape.
func perAxis(p *Tensor, x *Tensor, ax int) ([]float64, error) {
	v := p.Float64s()
	if p.Len() == 1 {
		out := make([]float64, x.Len())
		for i := range out {
			out[i] = v[0]
		}
		return out, nil
	}
	a, err := axis(ax, len(x.shape))
	if err != nil {
		return nil, err
	}
	if len(p.shape) != 1 || p.shape[0] != x.shape[a] {
		return nil, fmt.Errorf("a per-axis scale or zero point %v must hold %d values (axis %d of %v)", p.shape, x.shape[a], a, x.shape)
	}
	shape := ones(len(x.shape))
	shape[a] = p.shape[0]
	return expandTo[float64](f64(p).reshaped(shape), x.shape).data.([]float64), nil
}

// div divides in x's precision: a float quotient rounds to float before
// it is rounded to an integer, as the reference's numpy float32 does.
func div(x, s float64, d DType) float64 {
	if d == Float32 || d == Float16 || d == BFloat16 {
		return float64(float32(x) / float32(s))
	}
	return x / s
}

// saturate rounds half to even and clamps to d's range.
func saturate(v float64, d DType) float64 {
	lo, hi := 0.0, 255.0
	if d == Int8 {
		lo, hi = -128, 127
	}
	return math.Max(lo, math.Min(hi, math.RoundToEven(v)))
}

func quantizeLinear(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, scale, zp := args[0], args[1], in(args, 2)
	to := Uint8
	if zp != nil {
		to = zp.dtype
	}
	if to != Uint8 && to != Int8 {
		return nil, fmt.Errorf("%w: quantizing to %s", ErrUnsupportedType, to)
	}
	ax := int(n.int("axis", 1))
	s, err := perAxis(scale, x, ax)
	if err != nil {
		return nil, err
	}
	z := make([]float64, x.Len())
	if zp != nil {
		if z, err = perAxis(zp, x, ax); err != nil {
			return nil, err
		}
	}
	xv := x.Float64s()
	out := make([]float64, len(xv))
	for i, v := range xv {
		out[i] = saturate(math.RoundToEven(div(v, s[i], x.dtype))+z[i], to)
	}
	return one(castTo(mk(append([]int(nil), x.shape...), out), to))
}

func dequantizeLinear(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, scale, zp := args[0], args[1], in(args, 2)
	ax := int(n.int("axis", 1))
	s, err := perAxis(scale, x, ax)
	if err != nil {
		return nil, err
	}
	z := make([]float64, x.Len())
	if zp != nil {
		if z, err = perAxis(zp, x, ax); err != nil {
			return nil, err
		}
	}
	xv := x.Float64s()
	out := make([]float32, len(xv))
	for i, v := range xv {
		out[i] = float32((v - z[i]) * s[i])
	}
	return []*Tensor{mk(append([]int(nil), x.shape...), out)}, nil
}

func dynamicQuantizeLinear(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	xv := x.Float64s()
	lo, hi := 0.0, 0.0
	for _, v := range xv {
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	// The scale and zero point are float32 in the reference.
	scale := float64(float32(hi-lo) / 255)
	zp := 0.0
	if scale != 0 {
		zp = saturate(math.RoundToEven(float64(0-float32(lo)/float32(scale))), Uint8)
	}
	out := make([]float64, len(xv))
	for i, v := range xv {
		q := 0.0
		if scale != 0 {
			q = math.RoundToEven(div(v, scale, Float32))
		}
		out[i] = saturate(q+zp, Uint8)
	}
	y, _ := castTo(mk(append([]int(nil), x.shape...), out), Uint8)
	return []*Tensor{y, mk([]int{}, []float32{float32(scale)}), mk([]int{}, []uint8{uint8(zp)})}, nil
}

// shifted is t minus its zero point (scalar, or per row/column where the
// operator allows), as float64: exact for 8-bit inputs.
func shifted(t, zp *Tensor, ax int) (*Tensor, error) {
	v := t.Float64s()
	if zp == nil {
		return mk(t.shape, v), nil
	}
	z, err := perAxis(zp, t, ax)
	if err != nil {
		return nil, err
	}
	for i := range v {
		v[i] -= z[i]
	}
	return mk(t.shape, v), nil
}

func matMulInteger(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	a, err := shifted(args[0], in(args, 2), -2)
	if err != nil {
		return nil, err
	}
	b, err := shifted(args[1], in(args, 3), -1)
	if err != nil {
		return nil, err
	}
	r, err := matMulT[float64](a, b)
	if err != nil {
		return nil, err
	}
	return one(castTo(r, Int32))
}

func qlinearMatMul(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 8); err != nil {
		return nil, err
	}
	a, err := shifted(args[0], args[2], -2)
	if err != nil {
		return nil, err
	}
	b, err := shifted(args[3], args[5], -1)
	if err != nil {
		return nil, err
	}
	r, err := matMulT[float64](a, b)
	if err != nil {
		return nil, err
	}
	as, bs := args[1].Float64s(), args[4].Float64s()
	if len(as) != 1 || len(bs) != 1 {
		return nil, fmt.Errorf("%w: QLinearMatMul with per-axis scales", ErrUnsupportedOp)
	}
	return requantize(r, as[0]*bs[0], args[6], args[7])
}

// requantize maps real = acc × accScale to the output's quantized type.
func requantize(acc *Tensor, accScale float64, yScale, yZero *Tensor) ([]*Tensor, error) {
	ys, yz := yScale.Float64s(), yZero.Float64s()
	if len(ys) != 1 || len(yz) != 1 {
		return nil, fmt.Errorf("%w: per-axis output scales", ErrUnsupportedOp)
	}
	v := acc.data.([]float64)
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = saturate(math.RoundToEven(x*accScale/ys[0])+yz[0], yZero.dtype)
	}
	return one(castTo(mk(acc.shape, out), yZero.dtype))
}

func convInteger(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, err := shifted(args[0], in(args, 2), 1)
	if err != nil {
		return nil, err
	}
	w, err := shifted(args[1], in(args, 3), 0)
	if err != nil {
		return nil, err
	}
	r, err := convT[float64](n, []*Tensor{x, w})
	if err != nil {
		return nil, err
	}
	return one(castTo(r, Int32))
}

func qlinearConv(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 8); err != nil {
		return nil, err
	}
	x, err := shifted(args[0], args[2], 1)
	if err != nil {
		return nil, err
	}
	w, err := shifted(args[3], args[5], 0)
	if err != nil {
		return nil, err
	}
	xs := args[1].Float64s()
	if len(xs) != 1 {
		return nil, fmt.Errorf("x_scale must be a scalar")
	}
	ws, err := perAxis(args[4], args[3], 0)
	if err != nil {
		return nil, err
	}
	// Fold each output channel's weight scale into its weights, so one
	// float64 convolution gives real values (8-bit products are exact).
	wv := w.data.([]float64)
	for i := range wv {
		wv[i] *= ws[i] * xs[0]
	}
	conv := []*Tensor{x, w}
	if b := in(args, 8); b != nil {
		bv := b.Float64s()
		m := args[3].shape[0]
		per := args[4].Float64s()
		for j := range bv {
			s := per[0]
			if len(per) == m {
				s = per[j]
			}
			bv[j] *= s * xs[0]
		}
		conv = append(conv, mk(b.shape, bv))
	}
	r, err := convT[float64](n, conv)
	if err != nil {
		return nil, err
	}
	return requantize(r, 1, args[6], args[7])
}
