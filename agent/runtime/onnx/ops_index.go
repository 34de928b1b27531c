package onnx

import (
	"fmt"
	"sort"
)

func indexOps() map[string]opFunc {
	return map[string]opFunc{
		"DepthToSpace":   depthToSpace,
		"SpaceToDepth":   spaceToDepth,
		"GatherElements": gatherElements,
		"EyeLike":        eyeLike,
		"OneHot":         oneHot,
		"TopK":           topK,
		"NonZero":        nonZero,
		"Compress":       compress,
	}
}

// permuted returns x reshaped to shape, transposed by perm, reshaped to out.
func permuted(x *Tensor, shape, perm, out []int) *Tensor {
	v := x.reshaped(shape)
	st := strides(shape)
	ts := make([]int, len(perm))
	coord := make([][]int, len(perm))
	for d, p := range perm {
		ts[d] = shape[p]
		coord[d] = make([]int, ts[d])
		for i := range coord[d] {
			coord[d][i] = i * st[p]
		}
	}
	return take(v, ts, remap(ts, coord), nil).reshaped(out)
}

func depthToSpace(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	bs := int(n.int("blocksize", 0))
	if len(x.shape) != 4 || bs <= 0 || x.shape[1]%(bs*bs) != 0 {
		return nil, fmt.Errorf("input %v must be (N, C, H, W) with C divisible by blocksize² (blocksize %d)", x.shape, bs)
	}
	b, c, h, w := x.shape[0], x.shape[1], x.shape[2], x.shape[3]
	out := []int{b, c / (bs * bs), h * bs, w * bs}
	if n.str("mode", "DCR") == "CRD" {
		return []*Tensor{permuted(x, []int{b, c / (bs * bs), bs, bs, h, w}, []int{0, 1, 4, 2, 5, 3}, out)}, nil
	}
	return []*Tensor{permuted(x, []int{b, bs, bs, c / (bs * bs), h, w}, []int{0, 3, 4, 1, 5, 2}, out)}, nil
}

func spaceToDepth(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	bs := int(n.int("blocksize", 0))
	if len(x.shape) != 4 || bs <= 0 || x.shape[2]%bs != 0 || x.shape[3]%bs != 0 {
		return nil, fmt.Errorf("input %v must be (N, C, H, W) with H and W divisible by blocksize %d", x.shape, bs)
	}
	b, c, h, w := x.shape[0], x.shape[1], x.shape[2], x.shape[3]
	return []*Tensor{permuted(x, []int{b, c, h / bs, bs, w / bs, bs}, []int{0, 3, 5, 1, 2, 4}, []int{b, c * bs * bs, h / bs, w / bs})}, nil
}

func gatherElements(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, it := args[0], args[1]
	r := len(x.shape)
	ax, err := axis(int(n.int("axis", 0)), r)
	if err != nil {
		return nil, err
	}
	idx, err := int64s(it)
	if err != nil {
		return nil, fmt.Errorf("indices: %w", err)
	}
	if len(it.shape) != r {
		return nil, fmt.Errorf("indices %v must have the rank of data %v", it.shape, x.shape)
	}
	st := strides(x.shape)
	res, _ := Zeros(x.dtype, it.shape)
	pos := make([]int, r)
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
		copyElem(res.data, i, x.data, off)
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

func eyeLike(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) != 2 {
		return nil, fmt.Errorf("input %v must be a matrix", x.shape)
	}
	d := x.dtype
	if n.has("dtype") {
		d = DType(n.int("dtype", 0))
	}
	k := int(n.int("k", 0))
	rows, cols := x.shape[0], x.shape[1]
	v := make([]float64, rows*cols)
	for i := 0; i < rows; i++ {
		if j := i + k; j >= 0 && j < cols {
			v[i*cols+j] = 1
		}
	}
	return one(castTo(mk([]int{rows, cols}, v), d))
}

func oneHot(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	ind, depthT, vals := args[0], args[1], args[2]
	if depthT.Len() != 1 || vals.Len() != 2 {
		return nil, fmt.Errorf("depth must be a scalar and values hold [off, on]")
	}
	depth := int(depthT.Float64s()[0])
	if depth <= 0 {
		return nil, fmt.Errorf("depth %d must be positive", depth)
	}
	r := len(ind.shape) + 1
	ax, err := axis(int(n.int("axis", -1)), r)
	if err != nil {
		return nil, err
	}
	iv := ind.Float64s()
	out := append(append(append([]int{}, ind.shape[:ax]...), depth), ind.shape[ax:]...)
	outer, inner := numel(ind.shape[:ax]), numel(ind.shape[ax:])
	res, _ := Zeros(vals.dtype, out)
	for i := 0; i < res.Len(); i++ {
		copyElem(res.data, i, vals.data, 0)
	}
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			j := int(iv[o*inner+i])
			if j < 0 {
				j += depth
			}
			if j >= 0 && j < depth {
				copyElem(res.data, (o*depth+j)*inner+i, vals.data, 1)
			}
		}
	}
	return []*Tensor{res}, nil
}

func topK(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x := args[0]
	kv, err := int64s(args[1])
	if err != nil || len(kv) != 1 {
		return nil, fmt.Errorf("input K must be one int64")
	}
	ax, err := axis(int(n.int("axis", -1)), len(x.shape))
	if err != nil {
		return nil, err
	}
	k := kv[0]
	// The result is always sorted (sorted=0 leaves the order open), and of
	// equal values the lower index comes first.
	largest := n.int("largest", 1) != 0
	outer, size, inner := numel(x.shape[:ax]), x.shape[ax], numel(x.shape[ax+1:])
	if k < 0 || k > size {
		return nil, fmt.Errorf("input K %d is out of range for axis %d of size %d", k, ax, size)
	}
	fv := x.Float64s()
	shape := append([]int(nil), x.shape...)
	shape[ax] = k
	values, _ := Zeros(x.dtype, shape)
	idxs := make([]int64, numel(shape))
	order := make([]int, size)
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			for s := range order {
				order[s] = s
			}
			at := func(s int) float64 { return fv[(o*size+s)*inner+i] }
			sort.SliceStable(order, func(a, b int) bool {
				if largest {
					return at(order[a]) > at(order[b])
				}
				return at(order[a]) < at(order[b])
			})
			for s := 0; s < k; s++ {
				dst := (o*k+s)*inner + i
				copyElem(values.data, dst, x.data, (o*size+order[s])*inner+i)
				idxs[dst] = int64(order[s])
			}
		}
	}
	return []*Tensor{values, mk(append([]int(nil), shape...), idxs)}, nil
}

func nonZero(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	fv := x.Float64s()
	var hits []int
	for i, v := range fv {
		if v != 0 {
			hits = append(hits, i)
		}
	}
	out := make([]int64, r*len(hits))
	st := strides(x.shape)
	for j, i := range hits {
		for d := 0; d < r; d++ {
			out[d*len(hits)+j] = int64((i / st[d]) % x.shape[d])
		}
	}
	return []*Tensor{mk([]int{r, len(hits)}, out)}, nil
}

func compress(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, cond := args[0], args[1]
	cv := cond.Float64s()
	if !n.has("axis") {
		x = x.reshaped([]int{x.Len()})
	}
	ax, err := axis(int(n.int("axis", 0)), len(x.shape))
	if err != nil {
		return nil, err
	}
	var keep []int
	for i, c := range cv {
		if i < x.shape[ax] && c != 0 {
			keep = append(keep, i)
		}
	}
	outer, size, inner := numel(x.shape[:ax]), x.shape[ax], numel(x.shape[ax+1:])
	shape := append([]int(nil), x.shape...)
	shape[ax] = len(keep)
	res, _ := Zeros(x.dtype, shape)
	di := 0
	for o := 0; o < outer; o++ {
		for _, k := range keep {
			copyRange(res.data, di, x.data, (o*size+k)*inner, inner)
			di += inner
		}
	}
	return []*Tensor{res}, nil
}
