package onnx

import (
	"fmt"
	"math"
)

// floatOut converts float64 results back to x's float type.
func floatOut(x *Tensor, shape []int, v []float64) (*Tensor, error) {
	if x.dtype != Float32 && x.dtype != Float64 {
		return nil, typeErr(x)
	}
	return castTo(mk(shape, v), x.dtype)
}

func batchNorm(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 5); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) < 2 {
		return nil, fmt.Errorf("input X %v must be (N, C, ...)", x.shape)
	}
	c := x.shape[1]
	for i, name := range []string{"scale", "B", "input_mean", "input_var"} {
		if args[i+1].Len() != c {
			return nil, fmt.Errorf("%s has shape %v, want %d values (one per channel)", name, args[i+1].shape, c)
		}
	}
	scale, bias, mean, vr := args[1].Float64s(), args[2].Float64s(), args[3].Float64s(), args[4].Float64s()
	eps := float64(n.float("epsilon", 1e-5))
	batch, inner := x.shape[0], numel(x.shape[2:])
	training := n.opset >= 14 && n.int("training_mode", 0) != 0
	if xf, ok := x.data.([]float32); ok && !training {
		// Inference on float, the common case: one multiply-add per
		// value in float, with the per-channel factors in float64.
		out := make([]float32, len(xf))
		for b := 0; b < batch; b++ {
			for ch := 0; ch < c; ch++ {
				k := scale[ch] / math.Sqrt(vr[ch]+eps)
				kf, off := float32(k), float32(bias[ch]-mean[ch]*k)
				base := (b*c + ch) * inner
				src, dst := xf[base:base+inner], out[base:base+inner]
				for i, v := range src {
					dst[i] = v*kf + off
				}
			}
		}
		return []*Tensor{mk(append([]int(nil), x.shape...), out)}, nil
	}
	xv := x.Float64s()
	if n.opset < 9 && n.has("spatial") && n.int("spatial", 1) == 0 {
		return nil, fmt.Errorf("%w: BatchNormalization with spatial=0", ErrUnsupportedOp)
	}
	if n.opset < 7 && n.int("is_test", 0) == 0 && len(n.outputs) > 1 {
		return nil, fmt.Errorf("%w: BatchNormalization in training mode before opset 7", ErrUnsupportedOp)
	}
	useMean, useVar := mean, vr
	if training {
		useMean, useVar = make([]float64, c), make([]float64, c)
		cnt := float64(batch * inner)
		for ch := 0; ch < c; ch++ {
			var s, s2 float64
			for b := 0; b < batch; b++ {
				for _, e := range xv[(b*c+ch)*inner : (b*c+ch+1)*inner] {
					s += e
				}
			}
			m := s / cnt
			for b := 0; b < batch; b++ {
				for _, e := range xv[(b*c+ch)*inner : (b*c+ch+1)*inner] {
					s2 += (e - m) * (e - m)
				}
			}
			useMean[ch], useVar[ch] = m, s2/cnt
		}
	}
	out := make([]float64, len(xv))
	for b := 0; b < batch; b++ {
		for ch := 0; ch < c; ch++ {
			k := scale[ch] / math.Sqrt(useVar[ch]+eps)
			off := bias[ch] - useMean[ch]*k
			base := (b*c + ch) * inner
			for i := base; i < base+inner; i++ {
				out[i] = xv[i]*k + off
			}
		}
	}
	y, err := floatOut(x, append([]int(nil), x.shape...), out)
	if err != nil {
		return nil, err
	}
	res := []*Tensor{y}
	if training && len(n.outputs) > 1 {
		mom := float64(n.float("momentum", 0.9))
		rm, rv := make([]float64, c), make([]float64, c)
		for ch := range rm {
			rm[ch] = mean[ch]*mom + useMean[ch]*(1-mom)
			rv[ch] = vr[ch]*mom + useVar[ch]*(1-mom)
		}
		t1, err := floatOut(args[3], []int{c}, rm)
		if err != nil {
			return nil, err
		}
		t2, err := floatOut(args[4], []int{c}, rv)
		if err != nil {
			return nil, err
		}
		res = append(res, t1, t2)
	}
	return res, nil
}

func instanceNorm(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) < 3 {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...)", x.shape)
	}
	c, inner := x.shape[1], numel(x.shape[2:])
	scale, bias := args[1].Float64s(), args[2].Float64s()
	if len(scale) != c || len(bias) != c {
		return nil, fmt.Errorf("scale %v and B %v must hold %d values", args[1].shape, args[2].shape, c)
	}
	eps := float64(n.float("epsilon", 1e-5))
	xv := x.Float64s()
	out := make([]float64, len(xv))
	for i := 0; i < x.shape[0]*c; i++ {
		ch := xv[i*inner : (i+1)*inner]
		m, v := meanVar(ch)
		k := scale[i%c] / math.Sqrt(v+eps)
		for j, e := range ch {
			out[i*inner+j] = (e-m)*k + bias[i%c]
		}
	}
	return one(floatOut(x, append([]int(nil), x.shape...), out))
}

func meanVar(v []float64) (float64, float64) {
	var s, s2 float64
	for _, e := range v {
		s += e
	}
	m := s / float64(len(v))
	for _, e := range v {
		s2 += (e - m) * (e - m)
	}
	return m, s2 / float64(len(v))
}

func layerNorm(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, scale, bias := args[0], args[1], in(args, 2)
	ax, err := axis(int(n.int("axis", -1)), len(x.shape))
	if err != nil {
		return nil, err
	}
	outer, inner := numel(x.shape[:ax]), numel(x.shape[ax:])
	xv := x.Float64s()
	sv, err := broadcastFloat(scale, x.shape[ax:])
	if err != nil {
		return nil, fmt.Errorf("scale: %w", err)
	}
	bv := make([]float64, inner)
	if bias != nil {
		if bv, err = broadcastFloat(bias, x.shape[ax:]); err != nil {
			return nil, fmt.Errorf("input B: %w", err)
		}
	}
	eps := float64(n.float("epsilon", 1e-5))
	out := make([]float64, len(xv))
	means, inv := make([]float64, outer), make([]float64, outer)
	for i := 0; i < outer; i++ {
		row := xv[i*inner : (i+1)*inner]
		m, v := meanVar(row)
		k := 1 / math.Sqrt(v+eps)
		means[i], inv[i] = m, k
		for j, e := range row {
			out[i*inner+j] = (e-m)*k*sv[j] + bv[j]
		}
	}
	y, err := floatOut(x, append([]int(nil), x.shape...), out)
	if err != nil {
		return nil, err
	}
	stat := append([]int(nil), x.shape...)
	for d := ax; d < len(stat); d++ {
		stat[d] = 1
	}
	// Mean and InvStdDev are float unless stash_type says double.
	st := Float32
	if n.int("stash_type", 1) == int64(Float64) {
		st = Float64
	}
	mt, _ := castTo(mk(stat, means), st)
	it, _ := castTo(mk(append([]int(nil), stat...), inv), st)
	return []*Tensor{y, mt, it}, nil
}

func broadcastFloat(t *Tensor, shape []int) ([]float64, error) {
	if _, err := broadcastShape(t.shape, shape); err != nil {
		return nil, err
	}
	f := &Tensor{dtype: Float64, shape: t.shape, data: t.Float64s()}
	return expandTo[float64](f, shape).data.([]float64), nil
}

func lrn(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	if len(x.shape) < 3 {
		return nil, fmt.Errorf("input X %v must be (N, C, spatial...)", x.shape)
	}
	size := int(n.int("size", 0))
	if size <= 0 {
		return nil, fmt.Errorf("%w: LRN needs a positive size", ErrBadModel)
	}
	alpha, beta, bias := float64(n.float("alpha", 1e-4)), float64(n.float("beta", 0.75)), float64(n.float("bias", 1))
	c, inner := x.shape[1], numel(x.shape[2:])
	lo, hi := (size-1)/2, (size-1)-(size-1)/2
	xv := x.Float64s()
	out := make([]float64, len(xv))
	for b := 0; b < x.shape[0]; b++ {
		for ch := 0; ch < c; ch++ {
			for i := 0; i < inner; i++ {
				var sq float64
				for k := max(0, ch-lo); k <= min(c-1, ch+hi); k++ {
					e := xv[(b*c+k)*inner+i]
					sq += e * e
				}
				j := (b*c+ch)*inner + i
				out[j] = xv[j] / math.Pow(bias+alpha/float64(size)*sq, beta)
			}
		}
	}
	return one(floatOut(x, append([]int(nil), x.shape...), out))
}

// softmax covers Softmax, LogSoftmax and Hardmax. Before opset 13 they
// flatten the input to a matrix at axis (default 1) and normalise rows;
// from 13 they normalise along one axis (default -1).
func softmax(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	var outer, size, inner int
	if n.opset < 13 {
		ax, err := axis(int(n.int("axis", 1)), max(r, 1))
		if err != nil {
			return nil, err
		}
		outer, size, inner = numel(x.shape[:ax]), numel(x.shape[ax:]), 1
	} else {
		ax, err := axis(int(n.int("axis", -1)), max(r, 1))
		if err != nil {
			return nil, err
		}
		if r == 0 {
			outer, size, inner = 1, 1, 1
		} else {
			outer, size, inner = numel(x.shape[:ax]), x.shape[ax], numel(x.shape[ax+1:])
		}
	}
	xv := x.Float64s()
	out := make([]float64, len(xv))
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			base := o*size*inner + i
			m := math.Inf(-1)
			at := 0
			for k := 0; k < size; k++ {
				if v := xv[base+k*inner]; v > m {
					m, at = v, k
				}
			}
			if n.op == "Hardmax" {
				out[base+at*inner] = 1
				continue
			}
			var s float64
			for k := 0; k < size; k++ {
				e := math.Exp(xv[base+k*inner] - m)
				out[base+k*inner] = e
				s += e
			}
			for k := 0; k < size; k++ {
				j := base + k*inner
				if n.op == "LogSoftmax" {
					out[j] = xv[j] - m - math.Log(s)
				} else {
					out[j] /= s
				}
			}
		}
	}
	return one(floatOut(x, append([]int(nil), x.shape...), out))
}

// reduce covers the Reduce* family. Axes are an input for ReduceSum from
// opset 13 and an attribute otherwise (as of opset 17).
func reduce(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	from := int64(1 << 30)
	if n.op == "ReduceSum" {
		from = 13
	}
	axes, _, err := axesArg(n, args, from)
	if err != nil {
		return nil, fmt.Errorf("axes: %w", err)
	}
	keep := n.int("keepdims", 1) != 0
	if len(axes) == 0 && n.int("noop_with_empty_axes", 0) != 0 {
		return []*Tensor{x}, nil
	}
	red := make([]bool, r)
	if len(axes) == 0 {
		for i := range red {
			red[i] = true
		}
	}
	for _, a := range axes {
		a, err := axis(a, r)
		if err != nil {
			return nil, err
		}
		red[a] = true
	}
	full := make([]int, r) // the output shape with reduced axes kept as 1
	var shape []int
	for d, s := range x.shape {
		full[d] = s
		if red[d] {
			full[d] = 1
			if keep {
				shape = append(shape, 1)
			}
		} else {
			shape = append(shape, s)
		}
	}
	if shape == nil {
		shape = []int{}
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
	acc := make([]float64, numel(full))
	init := 0.0
	switch n.op {
	case "ReduceMax":
		init = math.Inf(-1)
	case "ReduceMin":
		init = math.Inf(1)
	case "ReduceProd":
		init = 1
	}
	for i := range acc {
		acc[i] = init
	}
	var mx []float64
	if n.op == "ReduceLogSumExp" {
		mx = make([]float64, len(acc))
		for i := range mx {
			mx[i] = math.Inf(-1)
		}
		for i, j := range dst {
			mx[j] = math.Max(mx[j], xv[i])
		}
	}
	for i, j := range dst {
		v := xv[i]
		switch n.op {
		case "ReduceSum", "ReduceMean":
			acc[j] += v
		case "ReduceMax":
			acc[j] = math.Max(acc[j], v)
		case "ReduceMin":
			acc[j] = math.Min(acc[j], v)
		case "ReduceProd":
			acc[j] *= v
		case "ReduceL1":
			acc[j] += math.Abs(v)
		case "ReduceL2", "ReduceSumSquare":
			acc[j] += v * v
		case "ReduceLogSum":
			acc[j] += v
		case "ReduceLogSumExp":
			acc[j] += math.Exp(v - mx[j])
		}
	}
	cnt := float64(x.Len()) / float64(max(1, len(acc)))
	for j := range acc {
		switch n.op {
		case "ReduceMean":
			acc[j] /= cnt
		case "ReduceL2":
			acc[j] = math.Sqrt(acc[j])
		case "ReduceLogSum":
			acc[j] = math.Log(acc[j])
		case "ReduceLogSumExp":
			acc[j] = math.Log(acc[j]) + mx[j]
		}
	}
	if x.dtype == Bool {
		return nil, typeErr(x)
	}
	return one(castTo(mk(shape, acc), x.dtype))
}

func argExtreme(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	ax, err := axis(int(n.int("axis", 0)), len(x.shape))
	if err != nil {
		return nil, err
	}
	last := n.int("select_last_index", 0) != 0
	keep := n.int("keepdims", 1) != 0
	outer, size, inner := numel(x.shape[:ax]), x.shape[ax], numel(x.shape[ax+1:])
	xv := x.Float64s()
	out := make([]int64, outer*inner)
	for o := 0; o < outer; o++ {
		for i := 0; i < inner; i++ {
			base := o*size*inner + i
			best, at := xv[base], 0
			for k := 1; k < size; k++ {
				v := xv[base+k*inner]
				better := v > best
				if n.op == "ArgMin" {
					better = v < best
				}
				if better || (last && v == best) {
					best, at = v, k
				}
			}
			out[o*inner+i] = int64(at)
		}
	}
	shape := append([]int(nil), x.shape...)
	if keep {
		shape[ax] = 1
	} else {
		shape = append(shape[:ax], shape[ax+1:]...)
	}
	return []*Tensor{mk(shape, out)}, nil
}
