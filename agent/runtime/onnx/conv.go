package onnx

import (
	"fmt"
	"math"
)

// window is the geometry shared by Conv and the pooling operators: for
// spatial input size in, a kernel sliding with strides and dilations over
// the input padded by padBegin and padEnd gives out positions per axis.
type window struct {
	in, kernel, strides, dilations, padBegin, padEnd, out []int
}

// newWindow resolves auto_pad, pads, strides, dilations and ceil_mode.
func newWindow(n *node, in, kernel []int, ceil bool) (*window, error) {
	r := len(in)
	w := &window{in: in, kernel: kernel}
	if len(kernel) != r {
		return nil, fmt.Errorf("kernel %v does not match the %d spatial dimensions of the input", kernel, r)
	}
	w.strides = n.ints("strides")
	if w.strides == nil {
		w.strides = ones(r)
	}
	w.dilations = n.ints("dilations")
	if w.dilations == nil {
		w.dilations = ones(r)
	}
	pads := n.ints("pads")
	if pads == nil {
		pads = make([]int, 2*r)
	}
	if len(w.strides) != r || len(w.dilations) != r || len(pads) != 2*r {
		return nil, fmt.Errorf("strides %v, dilations %v or pads %v do not match %d spatial dimensions", w.strides, w.dilations, pads, r)
	}
	w.padBegin, w.padEnd, w.out = make([]int, r), make([]int, r), make([]int, r)
	mode := n.str("auto_pad", "NOTSET")
	for d := 0; d < r; d++ {
		s, ext := w.strides[d], (kernel[d]-1)*w.dilations[d]+1
		if s <= 0 || w.dilations[d] <= 0 || kernel[d] <= 0 {
			return nil, fmt.Errorf("kernel %v, strides %v and dilations %v must be positive", kernel, w.strides, w.dilations)
		}
		switch mode {
		case "NOTSET", "":
			w.padBegin[d], w.padEnd[d] = pads[d], pads[d+r]
			span := in[d] + pads[d] + pads[d+r] - ext
			if ceil {
				w.out[d] = int(math.Ceil(float64(span)/float64(s))) + 1
				// The last window must start inside the input or the
				// leading padding (as PyTorch and ONNX's reference do).
				if (w.out[d]-1)*s >= in[d]+pads[d] {
					w.out[d]--
				}
			} else {
				w.out[d] = span/s + 1
				if span < 0 {
					w.out[d] = 0
				}
			}
		case "VALID":
			w.out[d] = (in[d]-ext)/s + 1
			if in[d] < ext {
				w.out[d] = 0
			}
		case "SAME_UPPER", "SAME_LOWER":
			w.out[d] = (in[d] + s - 1) / s
			total := max(0, (w.out[d]-1)*s+ext-in[d])
			if mode == "SAME_UPPER" {
				w.padBegin[d] = total / 2
			} else {
				w.padBegin[d] = total - total/2
			}
			w.padEnd[d] = total - w.padBegin[d]
		default:
			return nil, fmt.Errorf("%w: auto_pad %q (want NOTSET, VALID, SAME_UPPER or SAME_LOWER)", ErrUnsupportedOp, mode)
		}
		if w.out[d] <= 0 {
			return nil, fmt.Errorf("input %v is too small for kernel %v", in, kernel)
		}
	}
	return w, nil
}

func ones(r int) []int {
	s := make([]int, r)
	for i := range s {
		s[i] = 1
	}
	return s
}

// Offsets a window reads outside the input: inside the padding, and past
// it (a ceil-mode window that overhangs the padded input).
const (
	inPad  = -1
	beyond = -2
)

// taps returns, for each kernel position kp and output position op, the
// spatial offset the window reads in one channel, or inPad / beyond.
func (w *window) taps() [][]int {
	r := len(w.in)
	kn := numel(w.kernel)
	st := strides(w.in)
	res := make([][]int, kn)
	kpos := make([]int, r)
	for kp := 0; kp < kn; kp++ {
		coord := make([][]int, r)
		for d := 0; d < r; d++ {
			coord[d] = make([]int, w.out[d])
			for o := range coord[d] {
				x := o*w.strides[d] - w.padBegin[d] + kpos[d]*w.dilations[d]
				switch {
				case x >= 0 && x < w.in[d]:
					coord[d][o] = x * st[d]
				case x >= -w.padBegin[d] && x < w.in[d]+w.padEnd[d]:
					coord[d][o] = inPad
				default:
					coord[d][o] = beyond
				}
			}
		}
		res[kp] = remapMin(w.out, coord)
		for d := r - 1; d >= 0; d-- {
			kpos[d]++
			if kpos[d] < w.kernel[d] {
				break
			}
			kpos[d] = 0
		}
	}
	return res
}

// remapMin is remap where a negative coordinate marks the element with
// the most negative marker among its dimensions.
func remapMin(out []int, coord [][]int) []int {
	n := numel(out)
	idx := make([]int, n)
	r := len(out)
	pos := make([]int, r)
	for o := 0; o < n; o++ {
		off := 0
		for d := 0; d < r; d++ {
			c := coord[d][pos[d]]
			if c < 0 {
				if off >= 0 || c < off {
					off = c
				}
				continue
			}
			if off >= 0 {
				off += c
			}
		}
		idx[o] = off
		for d := r - 1; d >= 0; d-- {
			pos[d]++
			if pos[d] < out[d] {
				break
			}
			pos[d] = 0
		}
	}
	return idx
}

func conv(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	switch args[0].dtype {
	case Float32:
		return one(convT[float32](n, args))
	case Float64:
		return one(convT[float64](n, args))
	}
	return nil, typeErr(args[0])
}

func convT[T float](n *node, args []*Tensor) (*Tensor, error) {
	x, w, b := args[0], args[1], in(args, 2)
	if len(x.shape) < 3 || len(w.shape) != len(x.shape) {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...) and W %v (M, C/group, kernel...)", x.shape, w.shape)
	}
	xv, ok1 := x.data.([]T)
	wv, ok2 := w.data.([]T)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("input X is %s, W is %s: they must match", x.dtype, w.dtype)
	}
	batch, cin := x.shape[0], x.shape[1]
	m := w.shape[0]
	group := int(n.int("group", 1))
	kernel := n.ints("kernel_shape")
	if kernel == nil {
		kernel = w.shape[2:]
	}
	if group <= 0 || cin%group != 0 || m%group != 0 || w.shape[1] != cin/group {
		return nil, fmt.Errorf("input X has %d channels, W %v, group %d: want W's second dimension = channels/group and both divisible by group", cin, w.shape, group)
	}
	if !sameShape(kernel, w.shape[2:]) {
		return nil, fmt.Errorf("kernel_shape %v differs from W's %v", kernel, w.shape[2:])
	}
	win, err := newWindow(n, x.shape[2:], kernel, false)
	if err != nil {
		return nil, err
	}
	var bv []T
	if b != nil {
		if bv, _ = b.data.([]T); len(bv) != m {
			return nil, fmt.Errorf("input B %v must hold %d %s values", b.shape, m, x.dtype)
		}
	}
	taps := win.taps()
	kn, on, inN := numel(kernel), numel(win.out), numel(win.in)
	cg, mg := cin/group, m/group
	rows := cg * kn
	out := make([]T, batch*m*on)
	// A 1×1 kernel with unit stride and no padding reads the input as it
	// is: the product needs no column matrix.
	direct := kn == 1 && on == inN && taps[0][on-1] == on-1
	var col []T
	if !direct {
		col = make([]T, rows*on)
	}
	for bi := 0; bi < batch; bi++ {
		for g := 0; g < group; g++ {
			src := xv[(bi*cin+g*cg)*inN : (bi*cin+(g+1)*cg)*inN]
			if direct {
				col = src
			} else {
				for c := 0; c < cg; c++ {
					ch := src[c*inN : (c+1)*inN]
					for kp, tp := range taps {
						row := col[(c*kn+kp)*on : (c*kn+kp+1)*on]
						for o, off := range tp {
							if off >= 0 {
								row[o] = ch[off]
							} else {
								row[o] = 0
							}
						}
					}
				}
			}
			dst := out[(bi*m+g*mg)*on : (bi*m+(g+1)*mg)*on]
			if bv != nil {
				for j := 0; j < mg; j++ {
					v := bv[g*mg+j]
					d := dst[j*on : (j+1)*on]
					for i := range d {
						d[i] = v
					}
				}
			}
			matmul(wv[g*mg*rows:(g+1)*mg*rows], col, dst, mg, rows, on)
		}
	}
	shape := append([]int{batch, m}, win.out...)
	return mk(shape, out), nil
}

func pool(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	if n.op == "AveragePool" {
		switch x.dtype {
		case Float32:
			return poolT[float32](n, x)
		case Float64:
			return poolT[float64](n, x)
		}
		return nil, typeErr(x)
	}
	switch x.dtype {
	case Float32:
		return poolT[float32](n, x)
	case Float64:
		return poolT[float64](n, x)
	case Int8:
		return poolT[int8](n, x)
	case Uint8:
		return poolT[uint8](n, x)
	}
	return nil, typeErr(x)
}

func poolT[T number](n *node, x *Tensor) ([]*Tensor, error) {
	if len(x.shape) < 3 {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...)", x.shape)
	}
	kernel := n.ints("kernel_shape")
	if kernel == nil {
		return nil, fmt.Errorf("%w: %s needs kernel_shape", ErrBadModel, n.op)
	}
	win, err := newWindow(n, x.shape[2:], kernel, n.int("ceil_mode", 0) != 0)
	if err != nil {
		return nil, err
	}
	if n.op == "AveragePool" && n.has("dilations") {
		for _, d := range win.dilations {
			if d != 1 {
				return nil, fmt.Errorf("%w: AveragePool with dilations", ErrUnsupportedOp)
			}
		}
	}
	taps := win.taps()
	xv := x.data.([]T)
	chans := x.shape[0] * x.shape[1]
	inN, on := numel(win.in), numel(win.out)
	out := make([]T, chans*on)
	shape := append([]int{x.shape[0], x.shape[1]}, win.out...)
	switch n.op {
	case "MaxPool":
		wantIdx := len(n.outputs) > 1 && n.outputs[1] != ""
		var idx []int64
		if wantIdx {
			idx = make([]int64, chans*on)
		}
		colMajor := n.int("storage_order", 0) != 0
		for c := 0; c < chans; c++ {
			ch := xv[c*inN : (c+1)*inN]
			for o := 0; o < on; o++ {
				best, at := T(0), -1
				for _, tp := range taps {
					if off := tp[o]; off >= 0 && (at < 0 || ch[off] > best) {
						best, at = ch[off], off
					}
				}
				out[c*on+o] = best
				if wantIdx {
					if colMajor {
						at = colMajorIndex(at, win.in)
					}
					idx[c*on+o] = int64(c*inN + at)
				}
			}
		}
		res := []*Tensor{mk(shape, out)}
		if wantIdx {
			res = append(res, mk(append([]int(nil), shape...), idx))
		}
		return res, nil
	}
	includePad := n.int("count_include_pad", 0) != 0
	for c := 0; c < chans; c++ {
		ch := xv[c*inN : (c+1)*inN]
		for o := 0; o < on; o++ {
			var sum float64
			cnt := 0
			for _, tp := range taps {
				switch off := tp[o]; {
				case off >= 0:
					sum += float64(ch[off])
					cnt++
				case off == inPad && includePad:
					cnt++
				}
			}
			if cnt > 0 {
				out[c*on+o] = T(sum / float64(cnt))
			}
		}
	}
	return []*Tensor{mk(shape, out)}, nil
}

// colMajorIndex converts a row-major spatial offset to column-major.
func colMajorIndex(off int, dims []int) int {
	r := len(dims)
	coord := make([]int, r)
	for d := r - 1; d >= 0; d-- {
		coord[d] = off % dims[d]
		off /= dims[d]
	}
	res, mul := 0, 1
	for d := 0; d < r; d++ {
		res += coord[d] * mul
		mul *= dims[d]
	}
	return res
}

func globalPool(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) < 3 {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...)", x.shape)
	}
	chans, inN := x.shape[0]*x.shape[1], numel(x.shape[2:])
	shape := []int{x.shape[0], x.shape[1]}
	for range x.shape[2:] {
		shape = append(shape, 1)
	}
	v := x.Float64s()
	out := make([]float64, chans)
	for c := range out {
		ch := v[c*inN : (c+1)*inN]
		switch n.op {
		case "GlobalMaxPool":
			m := math.Inf(-1)
			for _, e := range ch {
				m = math.Max(m, e)
			}
			out[c] = m
		case "GlobalAveragePool":
			var s float64
			for _, e := range ch {
				s += e
			}
			out[c] = s / float64(inN)
		}
	}
	if x.dtype != Float32 && x.dtype != Float64 {
		return nil, typeErr(x)
	}
	return one(castTo(mk(shape, out), x.dtype))
}
