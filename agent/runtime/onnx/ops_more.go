package onnx

import (
	"fmt"
	"math"
)

func moreOps() map[string]opFunc {
	return map[string]opFunc{
		"ConvTranspose": convTranspose,
		"Trilu":         trilu,
		"CumSum":        cumSum,
		"Mod":           mod,
		"BitShift":      bitShift,
	}
}

func convTranspose(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	switch args[0].dtype {
	case Float32:
		return one(convTransposeT[float32](n, args))
	case Float64:
		return one(convTransposeT[float64](n, args))
	}
	return nil, typeErr(args[0])
}

// convTransposeT scatters each input pixel's contribution (W transposed
// times X, one column per input position) into the output, whose extent
// output_shape, pads or auto_pad decide.
func convTransposeT[T float](n *node, args []*Tensor) (*Tensor, error) {
	x, w, b := args[0], args[1], in(args, 2)
	if len(x.shape) < 3 || len(w.shape) != len(x.shape) {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...) and W %v (C, M/group, kernel...)", x.shape, w.shape)
	}
	xv, ok1 := x.data.([]T)
	wv, ok2 := w.data.([]T)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("input X is %s, W is %s: they must match", x.dtype, w.dtype)
	}
	r := len(x.shape) - 2
	batch, cin := x.shape[0], x.shape[1]
	group := int(n.int("group", 1))
	if group <= 0 || cin%group != 0 || w.shape[0] != cin {
		return nil, fmt.Errorf("input X has %d channels, W %v, group %d: W's first dimension must equal the channels", cin, w.shape, group)
	}
	mg := w.shape[1]
	m := mg * group
	kernel := n.ints("kernel_shape")
	if kernel == nil {
		kernel = w.shape[2:]
	}
	if !sameShape(kernel, w.shape[2:]) {
		return nil, fmt.Errorf("kernel_shape %v differs from W's %v", kernel, w.shape[2:])
	}
	get := func(name string, def int) ([]int, error) {
		v := n.ints(name)
		if v == nil {
			v = make([]int, r)
			for i := range v {
				v[i] = def
			}
		}
		if len(v) != r {
			return nil, fmt.Errorf("%s %v does not match %d spatial dimensions", name, v, r)
		}
		return v, nil
	}
	step, err := get("strides", 1)
	if err != nil {
		return nil, err
	}
	dil, err := get("dilations", 1)
	if err != nil {
		return nil, err
	}
	outPad, err := get("output_padding", 0)
	if err != nil {
		return nil, err
	}
	pads := n.ints("pads")
	if pads == nil {
		pads = make([]int, 2*r)
	}
	if len(pads) != 2*r {
		return nil, fmt.Errorf("pads %v do not match %d spatial dimensions", pads, r)
	}
	in := x.shape[2:]
	out := make([]int, r)
	begin := make([]int, r)
	outputShape := n.ints("output_shape")
	if outputShape != nil && len(outputShape) == r+2 {
		outputShape = outputShape[2:]
	}
	mode := n.str("auto_pad", "NOTSET")
	for d := 0; d < r; d++ {
		full := step[d]*(in[d]-1) + outPad[d] + (kernel[d]-1)*dil[d] + 1
		switch {
		case outputShape != nil:
			if len(outputShape) != r {
				return nil, fmt.Errorf("output_shape %v does not match %d spatial dimensions", n.ints("output_shape"), r)
			}
			out[d] = outputShape[d]
			total := full - out[d]
			// Python's floor division: a negative total puts the extra
			// row at the end.
			half := int(math.Floor(float64(total) / 2))
			if mode == "SAME_UPPER" {
				begin[d] = half
			} else {
				begin[d] = total - half
			}
		case mode == "SAME_UPPER" || mode == "SAME_LOWER":
			out[d] = in[d] * step[d]
			total := max(0, full-out[d])
			if mode == "SAME_UPPER" {
				begin[d] = total / 2
			} else {
				begin[d] = total - total/2
			}
		case mode == "VALID":
			out[d] = full
		case mode == "NOTSET" || mode == "":
			begin[d] = pads[d]
			out[d] = full - pads[d] - pads[d+r]
		default:
			return nil, fmt.Errorf("%w: auto_pad %q", ErrUnsupportedOp, mode)
		}
		if out[d] <= 0 {
			return nil, fmt.Errorf("output size %v is empty", out)
		}
	}
	kn, inN, outN := numel(kernel), numel(in), numel(out)
	// scatter[kp][i] is where input position i lands for kernel position
	// kp, or -1 when it falls outside the output.
	outSt := strides(out)
	scatter := make([][]int, kn)
	kpos := make([]int, r)
	for kp := 0; kp < kn; kp++ {
		coord := make([][]int, r)
		for d := 0; d < r; d++ {
			coord[d] = make([]int, in[d])
			for i := range coord[d] {
				o := i*step[d] + kpos[d]*dil[d] - begin[d]
				if o >= 0 && o < out[d] {
					coord[d][i] = o * outSt[d]
				} else {
					coord[d][i] = -1
				}
			}
		}
		scatter[kp] = remap(in, coord)
		for d := r - 1; d >= 0; d-- {
			kpos[d]++
			if kpos[d] < kernel[d] {
				break
			}
			kpos[d] = 0
		}
	}
	cg := cin / group
	res := make([]T, batch*m*outN)
	cols := make([]T, mg*kn*inN)
	for bi := 0; bi < batch; bi++ {
		for g := 0; g < group; g++ {
			// cols = W_gᵀ (mg·kn × cg) · X_g (cg × inN)
			wg := wv[g*cg*mg*kn : (g+1)*cg*mg*kn]
			wt := transpose2(wg, cg, mg*kn)
			for i := range cols {
				cols[i] = 0
			}
			matmul(wt, xv[(bi*cin+g*cg)*inN:(bi*cin+(g+1)*cg)*inN], cols, mg*kn, cg, inN)
			for j := 0; j < mg; j++ {
				dst := res[(bi*m+g*mg+j)*outN : (bi*m+g*mg+j+1)*outN]
				for kp, sc := range scatter {
					col := cols[(j*kn+kp)*inN : (j*kn+kp+1)*inN]
					for i, o := range sc {
						if o >= 0 {
							dst[o] += col[i]
						}
					}
				}
			}
		}
	}
	if b != nil {
		bv, ok := b.data.([]T)
		if !ok || len(bv) != m {
			return nil, fmt.Errorf("input B %v must hold %d %s values", b.shape, m, x.dtype)
		}
		for bi := 0; bi < batch; bi++ {
			for j := 0; j < m; j++ {
				dst := res[(bi*m+j)*outN : (bi*m+j+1)*outN]
				for i := range dst {
					dst[i] += bv[j]
				}
			}
		}
	}
	return mk(append([]int{batch, m}, out...), res), nil
}

func trilu(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) < 2 {
		return nil, fmt.Errorf("input %v must have rank at least 2", x.shape)
	}
	k := 0
	if t := in(args, 1); t != nil {
		v, err := int64s(t)
		if err != nil || len(v) != 1 {
			return nil, fmt.Errorf("k must be one int64")
		}
		k = v[0]
	}
	upper := n.int("upper", 1) != 0
	rows, cols := x.shape[len(x.shape)-2], x.shape[len(x.shape)-1]
	res, _ := Zeros(x.dtype, x.shape)
	for i := 0; i < x.Len(); i++ {
		c := i % cols
		rr := (i / cols) % rows
		keep := c-rr >= k
		if !upper {
			keep = c-rr <= k
		}
		if keep {
			copyElem(res.data, i, x.data, i)
		}
	}
	return []*Tensor{res}, nil
}

func cumSum(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x := args[0]
	av, err := int64s(args[1])
	if err != nil || len(av) != 1 {
		return nil, fmt.Errorf("axis must be one integer")
	}
	ax, err := axis(av[0], len(x.shape))
	if err != nil {
		return nil, err
	}
	exclusive, reverse := n.int("exclusive", 0) != 0, n.int("reverse", 0) != 0
	outer, size, inner := numel(x.shape[:ax]), x.shape[ax], numel(x.shape[ax+1:])
	var isInt64 bool
	var iv []int64
	if x.dtype == Int64 || x.dtype == Int32 || x.dtype == Uint32 || x.dtype == Uint64 {
		isInt64 = true
		iv = toInt64sAny(x)
	}
	fv := x.Float64s()
	outF := make([]float64, len(fv))
	outI := make([]int64, len(fv))
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			var sf float64
			var si int64
			for s := 0; s < size; s++ {
				k := s
				if reverse {
					k = size - 1 - s
				}
				j := (o*size+k)*inner + i
				if exclusive {
					outF[j], outI[j] = sf, si
				}
				sf += fv[j]
				if isInt64 {
					si += iv[j]
				}
				if !exclusive {
					outF[j], outI[j] = sf, si
				}
			}
		}
	}
	shape := append([]int(nil), x.shape...)
	if isInt64 {
		return one(castTo(mk(shape, outI), x.dtype))
	}
	return one(castTo(mk(shape, outF), x.dtype))
}

func toInt64sAny(t *Tensor) []int64 {
	if v, ok := t.data.([]uint64); ok {
		return convert[uint64, int64](v)
	}
	return toInt64s(t)
}

func modInt[T integer](fmod bool) func(a, b T) T {
	return func(a, b T) T {
		if b == 0 {
			return 0
		}
		r := a % b
		if !fmod && r != 0 && (r < 0) != (b < 0) {
			r += b
		}
		return r
	}
}

// mod is Mod: with fmod=0 (integers only) the result takes the divisor's
// sign, as Python's %; with fmod=1, the dividend's, as C's fmod.
func mod(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	a, b := args[0], args[1]
	fm := n.int("fmod", 0) != 0
	if (a.dtype == Float32 || a.dtype == Float64) && !fm {
		return nil, fmt.Errorf("float inputs need fmod=1")
	}
	for _, y := range b.Float64s() {
		if y == 0 && isInt(b.dtype) {
			return nil, fmt.Errorf("integer modulo by zero")
		}
	}
	switch a.dtype {
	case Float32:
		return one(zip2(a, b, func(x, y float32) float32 { return float32(math.Mod(float64(x), float64(y))) }))
	case Float64:
		return one(zip2(a, b, math.Mod))
	case Int8:
		return one(zip2(a, b, modInt[int8](fm)))
	case Int16:
		return one(zip2(a, b, modInt[int16](fm)))
	case Int32:
		return one(zip2(a, b, modInt[int32](fm)))
	case Int64:
		return one(zip2(a, b, modInt[int64](fm)))
	case Uint8:
		return one(zip2(a, b, modInt[uint8](fm)))
	case Uint16:
		return one(zip2(a, b, modInt[uint16](fm)))
	case Uint32:
		return one(zip2(a, b, modInt[uint32](fm)))
	case Uint64:
		return one(zip2(a, b, modInt[uint64](fm)))
	}
	return nil, typeErr(a)
}

func shiftFn[T integer](left bool) func(a, b T) T {
	return func(a, b T) T {
		if left {
			return a << b
		}
		return a >> b
	}
}

func bitShift(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	left := n.str("direction", "") == "LEFT"
	if !left && n.str("direction", "") != "RIGHT" {
		return nil, fmt.Errorf("direction must be LEFT or RIGHT")
	}
	a, b := args[0], args[1]
	switch a.dtype {
	case Uint8:
		return one(zip2(a, b, shiftFn[uint8](left)))
	case Uint16:
		return one(zip2(a, b, shiftFn[uint16](left)))
	case Uint32:
		return one(zip2(a, b, shiftFn[uint32](left)))
	case Uint64:
		return one(zip2(a, b, shiftFn[uint64](left)))
	}
	return nil, typeErr(a)
}
