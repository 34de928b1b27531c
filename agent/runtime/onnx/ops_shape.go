package onnx

import (
	"fmt"
	"math"
)

// remap lists, for every element of a tensor of shape out, the flat index
// of the source element it copies: coord[d][i] is the offset dimension d's
// index i contributes (index times stride), or -1 where it reads padding,
// which makes the whole element -1.
func remap(out []int, coord [][]int) []int {
	n := numel(out)
	idx := make([]int, n)
	if n == 0 {
		return idx
	}
	r := len(out)
	if r == 0 {
		return idx // one element at offset 0
	}
	pos := make([]int, r)
	for o := 0; o < n; o++ {
		off := 0
		for d := 0; d < r; d++ {
			c := coord[d][pos[d]]
			if c < 0 {
				off = -1
				break
			}
			off += c
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

// take copies src[idx[i]] into a new tensor of shape out, and fill (or
// zero) where idx is -1.
func take(src *Tensor, out []int, idx []int, fill *Tensor) *Tensor {
	res, _ := Zeros(src.dtype, out)
	for i, j := range idx {
		if j >= 0 {
			copyElem(res.data, i, src.data, j)
		} else if fill != nil {
			copyElem(res.data, i, fill.data, 0)
		}
	}
	return res
}

// copyRange copies n elements from src[si:] to dst[di:].
func copyRange(dst any, di int, src any, si, n int) {
	switch d := dst.(type) {
	case []float32:
		copy(d[di:di+n], src.([]float32)[si:si+n])
	case []float64:
		copy(d[di:di+n], src.([]float64)[si:si+n])
	case []int8:
		copy(d[di:di+n], src.([]int8)[si:si+n])
	case []int16:
		copy(d[di:di+n], src.([]int16)[si:si+n])
	case []int32:
		copy(d[di:di+n], src.([]int32)[si:si+n])
	case []int64:
		copy(d[di:di+n], src.([]int64)[si:si+n])
	case []uint8:
		copy(d[di:di+n], src.([]uint8)[si:si+n])
	case []uint16:
		copy(d[di:di+n], src.([]uint16)[si:si+n])
	case []uint32:
		copy(d[di:di+n], src.([]uint32)[si:si+n])
	case []uint64:
		copy(d[di:di+n], src.([]uint64)[si:si+n])
	case []bool:
		copy(d[di:di+n], src.([]bool)[si:si+n])
	}
}

func shapeOps() map[string]opFunc {
	return map[string]opFunc{
		"Reshape":         reshape,
		"Flatten":         flatten,
		"Concat":          concat,
		"Transpose":       transpose,
		"Squeeze":         squeeze,
		"Unsqueeze":       unsqueeze,
		"Shape":           shapeOp,
		"Size":            sizeOp,
		"Constant":        constant,
		"ConstantOfShape": constantOfShape,
		"Gather":          gather,
		"Slice":           slice,
		"Split":           split,
		"Tile":            tile,
		"Expand":          expand,
		"Pad":             pad,
		"Range":           rangeOp,
	}
}

func reshape(n *node, args []*Tensor) ([]*Tensor, error) {
	var want []int
	if n.opset < 5 {
		want = n.ints("shape")
	} else {
		if err := need(args, 2); err != nil {
			return nil, err
		}
		var err error
		if want, err = int64s(args[1]); err != nil {
			return nil, fmt.Errorf("shape: %w", err)
		}
	}
	x := args[0]
	allowZero := n.int("allowzero", 0) != 0
	out := make([]int, len(want))
	infer := -1
	known := 1
	for i, d := range want {
		switch {
		case d == 0 && !allowZero:
			if i >= len(x.shape) {
				return nil, fmt.Errorf("shape %v copies dimension %d, but the input %v has rank %d", want, i, x.shape, len(x.shape))
			}
			out[i] = x.shape[i]
		case d == -1:
			if infer >= 0 {
				return nil, fmt.Errorf("shape %v has more than one -1", want)
			}
			infer = i
			continue
		case d < 0:
			return nil, fmt.Errorf("shape %v has a negative dimension", want)
		default:
			out[i] = d
		}
		known *= out[i]
	}
	if infer >= 0 {
		if known == 0 || x.Len()%known != 0 {
			return nil, fmt.Errorf("cannot reshape %v to %v", x.shape, want)
		}
		out[infer] = x.Len() / known
	}
	if numel(out) != x.Len() {
		return nil, fmt.Errorf("cannot reshape %v (%d values) to %v", x.shape, x.Len(), want)
	}
	return []*Tensor{x.reshaped(out)}, nil
}

func flatten(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	a := int(n.int("axis", 1))
	r := len(x.shape)
	if a < -r || a > r {
		return nil, fmt.Errorf("axis %d is out of range for rank %d", a, r)
	}
	if a < 0 {
		a += r
	}
	return []*Tensor{x.reshaped([]int{numel(x.shape[:a]), numel(x.shape[a:])})}, nil
}

func concat(n *node, args []*Tensor) ([]*Tensor, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("needs at least one input")
	}
	if err := need(args, len(args)); err != nil {
		return nil, err
	}
	first := args[0]
	r := len(first.shape)
	ax, err := axis(int(n.int("axis", 0)), r)
	if err != nil {
		return nil, err
	}
	out := append([]int(nil), first.shape...)
	out[ax] = 0
	for i, t := range args {
		if t.dtype != first.dtype || len(t.shape) != r {
			return nil, fmt.Errorf("input %d is %s %v, input 0 is %s %v", i, t.dtype, t.shape, first.dtype, first.shape)
		}
		for d := range t.shape {
			if d != ax && t.shape[d] != first.shape[d] {
				return nil, fmt.Errorf("input %d has shape %v, input 0 %v: only axis %d may differ", i, t.shape, first.shape, ax)
			}
		}
		out[ax] += t.shape[ax]
	}
	res, _ := Zeros(first.dtype, out)
	outer := numel(out[:ax])
	inner := numel(out[ax+1:])
	di := 0
	for o := 0; o < outer; o++ {
		for _, t := range args {
			block := t.shape[ax] * inner
			copyRange(res.data, di, t.data, o*block, block)
			di += block
		}
	}
	return []*Tensor{res}, nil
}

func transpose(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	perm := n.ints("perm")
	if perm == nil {
		for i := r - 1; i >= 0; i-- {
			perm = append(perm, i)
		}
	}
	if len(perm) != r {
		return nil, fmt.Errorf("perm %v does not match rank %d", perm, r)
	}
	seen := make([]bool, r)
	st := strides(x.shape)
	out := make([]int, r)
	coord := make([][]int, r)
	for d, p := range perm {
		if p < 0 || p >= r || seen[p] {
			return nil, fmt.Errorf("perm %v is not a permutation of 0..%d", perm, r-1)
		}
		seen[p] = true
		out[d] = x.shape[p]
		coord[d] = make([]int, out[d])
		for i := range coord[d] {
			coord[d][i] = i * st[p]
		}
	}
	return []*Tensor{take(x, out, remap(out, coord), nil)}, nil
}

// axesArg reads the axes of Squeeze, Unsqueeze and ReduceSum: an input
// from opset 13 (ReduceSum from 13 as well), an attribute before.
func axesArg(n *node, args []*Tensor, inputFrom int64) ([]int, bool, error) {
	if n.opset >= inputFrom {
		t := in(args, 1)
		if t == nil {
			return nil, false, nil
		}
		a, err := int64s(t)
		return a, true, err
	}
	return n.ints("axes"), n.has("axes"), nil
}

func squeeze(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	axes, given, err := axesArg(n, args, 13)
	if err != nil {
		return nil, fmt.Errorf("axes: %w", err)
	}
	drop := make([]bool, len(x.shape))
	if !given {
		for i, d := range x.shape {
			drop[i] = d == 1
		}
	}
	for _, a := range axes {
		a, err := axis(a, len(x.shape))
		if err != nil {
			return nil, err
		}
		if x.shape[a] != 1 {
			return nil, fmt.Errorf("cannot squeeze axis %d of shape %v: its size is not 1", a, x.shape)
		}
		drop[a] = true
	}
	out := []int{}
	for i, d := range x.shape {
		if !drop[i] {
			out = append(out, d)
		}
	}
	return []*Tensor{x.reshaped(out)}, nil
}

func unsqueeze(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	axes, _, err := axesArg(n, args, 13)
	if err != nil {
		return nil, fmt.Errorf("axes: %w", err)
	}
	r := len(x.shape) + len(axes)
	ins := make([]bool, r)
	for _, a := range axes {
		a, err := axis(a, r)
		if err != nil {
			return nil, err
		}
		if ins[a] {
			return nil, fmt.Errorf("axes %v repeat %d", axes, a)
		}
		ins[a] = true
	}
	out := make([]int, 0, r)
	j := 0
	for i := 0; i < r; i++ {
		if ins[i] {
			out = append(out, 1)
		} else {
			out = append(out, x.shape[j])
			j++
		}
	}
	return []*Tensor{x.reshaped(out)}, nil
}

func clampRange(v, lo, hi int) int { return max(lo, min(v, hi)) }

func shapeOp(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	r := len(args[0].shape)
	start, end := int(n.int("start", 0)), int(n.int("end", int64(r)))
	if start < 0 {
		start += r
	}
	if end < 0 {
		end += r
	}
	start, end = clampRange(start, 0, r), clampRange(end, 0, r)
	var dims []int64
	for _, d := range args[0].shape[start:max(start, end)] {
		dims = append(dims, int64(d))
	}
	if dims == nil {
		dims = []int64{}
	}
	return []*Tensor{mk([]int{len(dims)}, dims)}, nil
}

func sizeOp(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	return []*Tensor{mk([]int{}, []int64{int64(args[0].Len())})}, nil
}

func constant(n *node, args []*Tensor) ([]*Tensor, error) {
	switch {
	case n.has("value"):
		t, err := TensorFromProto(n.attrs["value"].GetT())
		return one(t, err)
	case n.has("value_float"):
		return []*Tensor{mk([]int{}, []float32{n.float("value_float", 0)})}, nil
	case n.has("value_floats"):
		v := append([]float32(nil), n.attrs["value_floats"].GetFloats()...)
		return []*Tensor{mk([]int{len(v)}, v)}, nil
	case n.has("value_int"):
		return []*Tensor{mk([]int{}, []int64{n.int("value_int", 0)})}, nil
	case n.has("value_ints"):
		v := append([]int64(nil), n.attrs["value_ints"].GetInts()...)
		return []*Tensor{mk([]int{len(v)}, v)}, nil
	}
	return nil, fmt.Errorf("%w: Constant without a value, value_float(s) or value_int(s) (strings and sparse values are not supported)", ErrUnsupportedOp)
}

func constantOfShape(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	shape, err := int64s(args[0])
	if err != nil {
		return nil, fmt.Errorf("shape: %w", err)
	}
	val := mk([]int{1}, []float32{0})
	if n.has("value") {
		if val, err = TensorFromProto(n.attrs["value"].GetT()); err != nil {
			return nil, err
		}
		if val.Len() != 1 {
			return nil, fmt.Errorf("value must hold one element, got shape %v", val.shape)
		}
	}
	res, _ := Zeros(val.dtype, shape)
	for i := 0; i < res.Len(); i++ {
		copyElem(res.data, i, val.data, 0)
	}
	return []*Tensor{res}, nil
}

func gather(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, it := args[0], args[1]
	ax, err := axis(int(n.int("axis", 0)), len(x.shape))
	if err != nil {
		return nil, err
	}
	idx, err := int64s(it)
	if err != nil {
		return nil, fmt.Errorf("indices: %w", err)
	}
	k := x.shape[ax]
	out := append(append(append([]int{}, x.shape[:ax]...), it.shape...), x.shape[ax+1:]...)
	res, _ := Zeros(x.dtype, out)
	outer, inner := numel(x.shape[:ax]), numel(x.shape[ax+1:])
	di := 0
	for o := 0; o < outer; o++ {
		for _, j := range idx {
			if j < -k || j >= k {
				return nil, fmt.Errorf("index %d is out of range for axis %d of size %d", j, ax, k)
			}
			if j < 0 {
				j += k
			}
			copyRange(res.data, di, x.data, (o*k+j)*inner, inner)
			di += inner
		}
	}
	return []*Tensor{res}, nil
}

func slice(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	var starts, ends, axes, steps []int
	if n.opset < 10 {
		starts, ends, axes = n.ints("starts"), n.ints("ends"), n.ints("axes")
	} else {
		if err := need(args, 3); err != nil {
			return nil, err
		}
		var err error
		if starts, err = int64s(args[1]); err != nil {
			return nil, fmt.Errorf("starts: %w", err)
		}
		if ends, err = int64s(args[2]); err != nil {
			return nil, fmt.Errorf("ends: %w", err)
		}
		if t := in(args, 3); t != nil {
			if axes, err = int64s(t); err != nil {
				return nil, fmt.Errorf("axes: %w", err)
			}
		}
		if t := in(args, 4); t != nil {
			if steps, err = int64s(t); err != nil {
				return nil, fmt.Errorf("steps: %w", err)
			}
		}
	}
	if len(starts) != len(ends) {
		return nil, fmt.Errorf("starts %v and ends %v differ in length", starts, ends)
	}
	if axes == nil {
		for i := range starts {
			axes = append(axes, i)
		}
	}
	if steps == nil {
		steps = make([]int, len(starts))
		for i := range steps {
			steps[i] = 1
		}
	}
	if len(axes) != len(starts) || len(steps) != len(starts) {
		return nil, fmt.Errorf("starts, ends, axes and steps differ in length")
	}
	begin := make([]int, r)
	step := make([]int, r)
	out := append([]int(nil), x.shape...)
	for d := range step {
		step[d] = 1
	}
	for i, a := range axes {
		a, err := axis(a, r)
		if err != nil {
			return nil, err
		}
		dim, s := x.shape[a], steps[i]
		if s == 0 {
			return nil, fmt.Errorf("step 0 on axis %d", a)
		}
		st, en := starts[i], ends[i]
		if st < 0 {
			st += dim
		}
		if en < 0 {
			en += dim
		}
		var cnt int
		if s > 0 {
			st, en = clampRange(st, 0, dim), clampRange(en, 0, dim)
			cnt = max(0, (en-st+s-1)/s)
		} else {
			st, en = clampRange(st, 0, dim-1), clampRange(en, -1, dim-1)
			cnt = max(0, (st-en-s-1)/(-s))
		}
		begin[a], step[a], out[a] = st, s, cnt
	}
	st := strides(x.shape)
	coord := make([][]int, r)
	for d := range coord {
		coord[d] = make([]int, out[d])
		for i := range coord[d] {
			coord[d][i] = (begin[d] + i*step[d]) * st[d]
		}
	}
	return []*Tensor{take(x, out, remap(out, coord), nil)}, nil
}

func split(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	ax, err := axis(int(n.int("axis", 0)), len(x.shape))
	if err != nil {
		return nil, err
	}
	var parts []int
	if n.opset < 13 {
		parts = n.ints("split")
	} else if t := in(args, 1); t != nil {
		if parts, err = int64s(t); err != nil {
			return nil, fmt.Errorf("split: %w", err)
		}
	}
	k := len(n.outputs)
	dim := x.shape[ax]
	if parts == nil {
		if k == 0 || dim%k != 0 {
			return nil, fmt.Errorf("axis %d of size %d does not split evenly into %d outputs", ax, dim, k)
		}
		for i := 0; i < k; i++ {
			parts = append(parts, dim/k)
		}
	}
	sum := 0
	for _, p := range parts {
		sum += p
	}
	if sum != dim || len(parts) != k {
		return nil, fmt.Errorf("split %v does not divide axis %d of size %d into %d outputs", parts, ax, dim, k)
	}
	outer, inner := numel(x.shape[:ax]), numel(x.shape[ax+1:])
	res := make([]*Tensor, k)
	off := 0
	for i, p := range parts {
		shape := append([]int(nil), x.shape...)
		shape[ax] = p
		t, _ := Zeros(x.dtype, shape)
		for o := 0; o < outer; o++ {
			copyRange(t.data, o*p*inner, x.data, (o*dim+off)*inner, p*inner)
		}
		res[i] = t
		off += p
	}
	return res, nil
}

func tile(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x := args[0]
	reps, err := int64s(args[1])
	if err != nil {
		return nil, fmt.Errorf("repeats: %w", err)
	}
	if len(reps) != len(x.shape) {
		return nil, fmt.Errorf("repeats %v do not match rank %d", reps, len(x.shape))
	}
	st := strides(x.shape)
	out := make([]int, len(reps))
	coord := make([][]int, len(reps))
	for d, k := range reps {
		if k < 0 {
			return nil, fmt.Errorf("negative repeat %d", k)
		}
		out[d] = x.shape[d] * k
		coord[d] = make([]int, out[d])
		for i := range coord[d] {
			coord[d][i] = (i % x.shape[d]) * st[d]
		}
	}
	return []*Tensor{take(x, out, remap(out, coord), nil)}, nil
}

func expand(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x := args[0]
	shape, err := int64s(args[1])
	if err != nil {
		return nil, fmt.Errorf("shape: %w", err)
	}
	out, err := broadcastShape(x.shape, shape)
	if err != nil {
		return nil, err
	}
	st := bstrides(x.shape, out)
	coord := make([][]int, len(out))
	for d := range out {
		coord[d] = make([]int, out[d])
		for i := range coord[d] {
			coord[d][i] = i * st[d]
		}
	}
	return []*Tensor{take(x, out, remap(out, coord), nil)}, nil
}

func pad(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	mode := n.str("mode", "constant")
	var pads []int
	var fill *Tensor
	if n.opset < 11 {
		pads = n.ints("pads")
		if v := float64(n.float("value", 0)); v != 0 {
			fill, _ = FromFloat64s(Float64, []int{1}, []float64{v})
			var err error
			if fill, err = castTo(fill, x.dtype); err != nil {
				return nil, err
			}
		}
	} else {
		if err := need(args, 2); err != nil {
			return nil, err
		}
		var err error
		if pads, err = int64s(args[1]); err != nil {
			return nil, fmt.Errorf("pads: %w", err)
		}
		if t := in(args, 2); t != nil && t.Len() > 0 {
			if t.dtype != x.dtype {
				return nil, fmt.Errorf("constant_value is %s, data is %s", t.dtype, x.dtype)
			}
			fill = t
		}
	}
	if len(pads) != 2*r {
		return nil, fmt.Errorf("pads %v: want %d values for rank %d", pads, 2*r, r)
	}
	st := strides(x.shape)
	out := make([]int, r)
	coord := make([][]int, r)
	for d := 0; d < r; d++ {
		b, e, dim := pads[d], pads[d+r], x.shape[d]
		out[d] = dim + b + e
		if out[d] < 0 {
			return nil, fmt.Errorf("pads %v remove more than axis %d holds", pads, d)
		}
		coord[d] = make([]int, out[d])
		for i := range coord[d] {
			j := i - b
			switch mode {
			case "constant":
				if j < 0 || j >= dim {
					j = -1
				}
			case "edge":
				j = clampRange(j, 0, dim-1)
			case "reflect":
				if dim == 1 {
					j = 0
					break
				}
				period := 2 * (dim - 1)
				j = ((j % period) + period) % period
				if j >= dim {
					j = period - j
				}
			default:
				return nil, fmt.Errorf("%w: Pad mode %q (want constant, reflect or edge)", ErrUnsupportedOp, mode)
			}
			if j >= 0 {
				j *= st[d]
			}
			coord[d][i] = j
		}
	}
	return []*Tensor{take(x, out, remap(out, coord), fill)}, nil
}

func rangeOp(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	for i, t := range args[:3] {
		if t.Len() != 1 {
			return nil, fmt.Errorf("input %d must be a scalar, got shape %v", i, t.shape)
		}
	}
	d := args[0].dtype
	if isInt(d) {
		s, l, dl := toInt64s(args[0])[0], toInt64s(args[1])[0], toInt64s(args[2])[0]
		if dl == 0 {
			return nil, fmt.Errorf("delta is 0")
		}
		cnt := max(0, int(math.Ceil(float64(l-s)/float64(dl))))
		v := make([]int64, cnt)
		for i := range v {
			v[i] = s + int64(i)*dl
		}
		r, err := castTo(mk([]int{cnt}, v), d)
		return one(r, err)
	}
	s, l, dl := args[0].Float64s()[0], args[1].Float64s()[0], args[2].Float64s()[0]
	if dl == 0 {
		return nil, fmt.Errorf("delta is 0")
	}
	cnt := max(0, int(math.Ceil((l-s)/dl)))
	v := make([]float64, cnt)
	for i := range v {
		v[i] = s + float64(i)*dl
	}
	r, err := castTo(mk([]int{cnt}, v), d)
	return one(r, err)
}
