package onnx

import (
	"fmt"
	"math"
)

func scatterOps() map[string]opFunc {
	return map[string]opFunc{
		"ScatterElements":           scatterElements,
		"Scatter":                   scatterElements, // its opset 9-10 name
		"ScatterND":                 scatterND,
		"GatherND":                  gatherND,
		"ReverseSequence":           reverseSequence,
		"MeanVarianceNormalization": meanVarianceNorm,
	}
}

// combine applies a scatter reduction to dst[i] with src[j] (elements of
// one type), through float64: exact for every type the tests use.
func combine(dst any, i int, src any, j int, reduction string) error {
	switch reduction {
	case "", "none":
		copyElem(dst, i, src, j)
		return nil
	case "add", "mul":
	default:
		return fmt.Errorf("%w: reduction %q", ErrUnsupportedOp, reduction)
	}
	a := (&Tensor{dtype: dtypeOfSlice(dst), shape: []int{1}, data: sliceAt(dst, i)}).Float64s()[0]
	b := (&Tensor{dtype: dtypeOfSlice(src), shape: []int{1}, data: sliceAt(src, j)}).Float64s()[0]
	v := a + b
	if reduction == "mul" {
		v = a * b
	}
	t, err := castTo(mk([]int{1}, []float64{v}), dtypeOfSlice(dst))
	if err != nil {
		return err
	}
	copyElem(dst, i, t.data, 0)
	return nil
}

func sliceAt(s any, i int) any {
	switch v := s.(type) {
	case []float32:
		return v[i : i+1]
	case []float64:
		return v[i : i+1]
	case []int8:
		return v[i : i+1]
	case []int16:
		return v[i : i+1]
	case []int32:
		return v[i : i+1]
	case []int64:
		return v[i : i+1]
	case []uint8:
		return v[i : i+1]
	case []uint16:
		return v[i : i+1]
	case []uint32:
		return v[i : i+1]
	case []uint64:
		return v[i : i+1]
	case []bool:
		return v[i : i+1]
	}
	return nil
}

func dtypeOfSlice(s any) DType {
	switch s.(type) {
	case []float32:
		return Float32
	case []float64:
		return Float64
	case []int8:
		return Int8
	case []int16:
		return Int16
	case []int32:
		return Int32
	case []int64:
		return Int64
	case []uint8:
		return Uint8
	case []uint16:
		return Uint16
	case []uint32:
		return Uint32
	case []uint64:
		return Uint64
	}
	return Bool
}

func scatterElements(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	x, it, upd := args[0], args[1], args[2]
	r := len(x.shape)
	ax, err := axis(int(n.int("axis", 0)), r)
	if err != nil {
		return nil, err
	}
	idx, err := int64s(it)
	if err != nil {
		return nil, fmt.Errorf("indices: %w", err)
	}
	if !sameShape(it.shape, upd.shape) || len(it.shape) != r || upd.dtype != x.dtype {
		return nil, fmt.Errorf("indices %v and updates %v (%s) must share a shape of data's rank (%v, %s)", it.shape, upd.shape, upd.dtype, x.shape, x.dtype)
	}
	res, _ := castTo(x, x.dtype)
	st := strides(x.shape)
	pos := make([]int, r)
	red := n.str("reduction", "none")
	for i, j := range idx {
		k := x.shape[ax]
		if j < -k || j >= k {
			return nil, fmt.Errorf("index %d is out of range for axis %d of size %d", j, ax, k)
		}
		if j < 0 {
			j += k
		}
		off := 0
		for d := 0; d < r; d++ {
			c := pos[d]
			if d == ax {
				c = j
			} else if c >= x.shape[d] {
				return nil, fmt.Errorf("indices %v do not fit data %v", it.shape, x.shape)
			}
			off += c * st[d]
		}
		if err := combine(res.data, off, upd.data, i, red); err != nil {
			return nil, err
		}
		for d := r - 1; d >= 0; d-- {
			pos[d]++
			if pos[d] < it.shape[d] {
				break
			}
			pos[d] = 0
		}
	}
	return []*Tensor{res}, nil
}

func scatterND(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	x, it, upd := args[0], args[1], args[2]
	idx, err := int64s(it)
	if err != nil {
		return nil, fmt.Errorf("indices: %w", err)
	}
	q := len(it.shape)
	if q == 0 {
		return nil, fmt.Errorf("indices must have rank at least 1")
	}
	k := it.shape[q-1]
	if k > len(x.shape) || upd.dtype != x.dtype {
		return nil, fmt.Errorf("indices %v address more dimensions than data %v has, or updates are %s, not %s", it.shape, x.shape, upd.dtype, x.dtype)
	}
	st := strides(x.shape)
	inner := numel(x.shape[k:])
	res, _ := castTo(x, x.dtype)
	red := n.str("reduction", "none")
	count := numel(it.shape[:q-1])
	if upd.Len() != count*inner {
		return nil, fmt.Errorf("updates %v do not match indices %v and data %v", upd.shape, it.shape, x.shape)
	}
	for c := 0; c < count; c++ {
		off := 0
		for d := 0; d < k; d++ {
			j := idx[c*k+d]
			if j < 0 {
				j += x.shape[d]
			}
			if j < 0 || j >= x.shape[d] {
				return nil, fmt.Errorf("index %d is out of range for dimension %d of size %d", idx[c*k+d], d, x.shape[d])
			}
			off += j * st[d]
		}
		for e := 0; e < inner; e++ {
			if err := combine(res.data, off+e, upd.data, c*inner+e, red); err != nil {
				return nil, err
			}
		}
	}
	return []*Tensor{res}, nil
}

func gatherND(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, it := args[0], args[1]
	idx, err := int64s(it)
	if err != nil {
		return nil, fmt.Errorf("indices: %w", err)
	}
	b := int(n.int("batch_dims", 0))
	q, r := len(it.shape), len(x.shape)
	if q == 0 || b < 0 || b >= min(q, r) {
		return nil, fmt.Errorf("batch_dims %d does not fit indices %v and data %v", b, it.shape, x.shape)
	}
	k := it.shape[q-1]
	if b+k > r {
		return nil, fmt.Errorf("indices %v address more dimensions than data %v has", it.shape, x.shape)
	}
	batch := numel(x.shape[:b])
	perBatch := numel(it.shape[b : q-1])
	inner := numel(x.shape[b+k:])
	batchSize := numel(x.shape[b:])
	st := strides(x.shape[b:])
	out := append(append([]int{}, it.shape[:q-1]...), x.shape[b+k:]...)
	res, _ := Zeros(x.dtype, out)
	di := 0
	for bi := 0; bi < batch; bi++ {
		for c := 0; c < perBatch; c++ {
			base := (bi*perBatch + c) * k
			off := bi * batchSize
			for d := 0; d < k; d++ {
				j := idx[base+d]
				dim := x.shape[b+d]
				if j < 0 {
					j += dim
				}
				if j < 0 || j >= dim {
					return nil, fmt.Errorf("index %d is out of range for dimension %d of size %d", idx[base+d], b+d, dim)
				}
				off += j * st[d]
			}
			copyRange(res.data, di, x.data, off, inner)
			di += inner
		}
	}
	return []*Tensor{res}, nil
}

func reverseSequence(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x := args[0]
	lens, err := int64s(args[1])
	if err != nil {
		return nil, fmt.Errorf("sequence_lens: %w", err)
	}
	bax, tax := int(n.int("batch_axis", 1)), int(n.int("time_axis", 0))
	if len(x.shape) < 2 || (bax != 0 && bax != 1) || (tax != 0 && tax != 1) || bax == tax {
		return nil, fmt.Errorf("batch_axis %d and time_axis %d must be 0 and 1 in some order, input %v", bax, tax, x.shape)
	}
	if len(lens) != x.shape[bax] {
		return nil, fmt.Errorf("sequence_lens has %d values, batch axis %d holds %d", len(lens), bax, x.shape[bax])
	}
	st := strides(x.shape)
	inner := numel(x.shape[2:])
	res, _ := castTo(x, x.dtype)
	for bi, l := range lens {
		if l < 0 || l > x.shape[tax] {
			return nil, fmt.Errorf("sequence length %d is out of range", l)
		}
		for t := 0; t < l; t++ {
			src := bi*st[bax] + t*st[tax]
			dst := bi*st[bax] + (l-1-t)*st[tax]
			copyRange(res.data, dst, x.data, src, inner)
		}
	}
	return []*Tensor{res}, nil
}

func meanVarianceNorm(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	axes := n.ints("axes")
	if axes == nil {
		axes = []int{0, 2, 3}
	}
	r := len(x.shape)
	red := make([]bool, r)
	for _, a := range axes {
		a, err := axis(a, r)
		if err != nil {
			return nil, err
		}
		red[a] = true
	}
	full := make([]int, r)
	for d, s := range x.shape {
		full[d] = s
		if red[d] {
			full[d] = 1
		}
	}
	ost := strides(full)
	coord := make([][]int, r)
	for d := range coord {
		coord[d] = make([]int, x.shape[d])
		if !red[d] {
			for i := range coord[d] {
				coord[d][i] = i * ost[d]
			}
		}
	}
	dst := remap(x.shape, coord)
	xv := x.Float64s()
	groups := numel(full)
	cnt := float64(len(xv)) / float64(max(groups, 1))
	mean, sq := make([]float64, groups), make([]float64, groups)
	for i, j := range dst {
		mean[j] += xv[i]
		sq[j] += xv[i] * xv[i]
	}
	out := make([]float64, len(xv))
	for i, j := range dst {
		m := mean[j] / cnt
		v := sq[j]/cnt - m*m
		out[i] = (xv[i] - m) / (math.Sqrt(v) + 1e-9)
	}
	return one(floatOut(x, append([]int(nil), x.shape...), out))
}
