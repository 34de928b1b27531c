package onnx

import (
	"fmt"
	"math"
)

// recurrent runs RNN, GRU and LSTM, forward, reverse or bidirectional,
// with their default activations (sigmoid for gates, tanh otherwise).
func recurrent(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	if a, ok := n.attrs["activations"]; ok && len(a.GetStrings()) > 0 {
		return nil, fmt.Errorf("%w: %s with activations other than the defaults", ErrUnsupportedOp, n.op)
	}
	if n.int("input_forget", 0) != 0 {
		return nil, fmt.Errorf("%w: LSTM with input_forget", ErrUnsupportedOp)
	}
	gates := map[string]int{"RNN": 1, "GRU": 3, "LSTM": 4}[n.op]
	x, w, r := args[0], args[1], args[2]
	layout := n.int("layout", 0)
	if len(x.shape) != 3 || len(w.shape) != 3 || len(r.shape) != 3 {
		return nil, fmt.Errorf("input X %v, W %v and R %v must have rank 3", x.shape, w.shape, r.shape)
	}
	seq, batch, inSize := x.shape[0], x.shape[1], x.shape[2]
	if layout != 0 {
		batch, seq = seq, batch
	}
	dirs := 1
	dir := n.str("direction", "forward")
	switch dir {
	case "forward", "reverse":
	case "bidirectional":
		dirs = 2
	default:
		return nil, fmt.Errorf("direction %q", dir)
	}
	h := int(n.int("hidden_size", int64(r.shape[2])))
	if w.shape[0] != dirs || w.shape[1] != gates*h || w.shape[2] != inSize || r.shape[1] != gates*h || r.shape[2] != h {
		return nil, fmt.Errorf("input W %v and R %v do not fit %d directions, hidden size %d and input size %d", w.shape, r.shape, dirs, h, inSize)
	}
	clip := math.Inf(1)
	if n.has("clip") {
		clip = float64(n.float("clip", 0))
	}
	xv, wv, rv := x.Float64s(), w.Float64s(), r.Float64s()
	bv := make([]float64, dirs*2*gates*h)
	if b := in(args, 3); b != nil {
		if b.Len() != len(bv) {
			return nil, fmt.Errorf("input B %v must hold %d values", b.shape, len(bv))
		}
		bv = b.Float64s()
	}
	lens := make([]int, batch)
	for i := range lens {
		lens[i] = seq
	}
	if t := in(args, 4); t != nil {
		l, err := int64s(t)
		if err != nil || len(l) != batch {
			return nil, fmt.Errorf("sequence_lens must hold %d int32 values", batch)
		}
		for i, v := range l {
			if v < 0 || v > seq {
				return nil, fmt.Errorf("sequence length %d is out of range", v)
			}
			lens[i] = v
		}
	}
	state := func(i int) ([]float64, error) {
		s := make([]float64, dirs*batch*h)
		if t := in(args, i); t != nil {
			if t.Len() != len(s) {
				return nil, fmt.Errorf("input %d %v must hold %d values", i, t.shape, len(s))
			}
			v := t.Float64s()
			if layout != 0 { // [batch, dirs, hidden] → [dirs, batch, hidden]
				for b := 0; b < batch; b++ {
					for d := 0; d < dirs; d++ {
						copy(s[(d*batch+b)*h:(d*batch+b+1)*h], v[(b*dirs+d)*h:(b*dirs+d+1)*h])
					}
				}
				return s, nil
			}
			copy(s, v)
		}
		return s, nil
	}
	hs, err := state(5)
	if err != nil {
		return nil, err
	}
	cs := make([]float64, dirs*batch*h)
	var peep []float64
	if n.op == "LSTM" {
		if cs, err = state(6); err != nil {
			return nil, err
		}
		if p := in(args, 7); p != nil {
			if p.Len() != dirs*3*h {
				return nil, fmt.Errorf("input P %v must hold %d values", p.shape, dirs*3*h)
			}
			peep = p.Float64s()
		}
	}
	linearBeforeReset := n.int("linear_before_reset", 0) != 0
	y := make([]float64, seq*dirs*batch*h) // [seq, dirs, batch, hidden]
	xAt := func(t, b int) []float64 {
		if layout != 0 {
			return xv[(b*seq+t)*inSize : (b*seq+t+1)*inSize]
		}
		return xv[(t*batch+b)*inSize : (t*batch+b+1)*inSize]
	}
	dot := func(a, m []float64, row, width int) float64 {
		var s float64
		for k, v := range a {
			s += v * m[row*width+k]
		}
		return s
	}
	clipped := func(v float64) float64 { return math.Max(-clip, math.Min(clip, v)) }
	gx := make([]float64, gates*h)
	gh := make([]float64, gates*h)
	for d := 0; d < dirs; d++ {
		W := wv[d*gates*h*inSize : (d+1)*gates*h*inSize]
		R := rv[d*gates*h*h : (d+1)*gates*h*h]
		Wb := bv[d*2*gates*h : d*2*gates*h+gates*h]
		Rb := bv[d*2*gates*h+gates*h : (d+1)*2*gates*h]
		reverse := dir == "reverse" || d == 1
		for b := 0; b < batch; b++ {
			H := hs[(d*batch+b)*h : (d*batch+b+1)*h]
			C := cs[(d*batch+b)*h : (d*batch+b+1)*h]
			for step := 0; step < lens[b]; step++ {
				t := step
				if reverse {
					t = lens[b] - 1 - step
				}
				xt := xAt(t, b)
				for g := 0; g < gates*h; g++ {
					gx[g] = dot(xt, W, g, inSize) + Wb[g]
					gh[g] = dot(H, R, g, h) + Rb[g]
				}
				next := make([]float64, h)
				switch n.op {
				case "RNN":
					for j := range next {
						next[j] = math.Tanh(clipped(gx[j] + gh[j]))
					}
				case "GRU":
					rvec := make([]float64, h) // r ⊙ H, for the default reset
					for k := range rvec {
						rvec[k] = sigmoid(clipped(gx[h+k]+gh[h+k])) * H[k]
					}
					for j := range next {
						z := sigmoid(clipped(gx[j] + gh[j]))
						var hh float64
						if linearBeforeReset {
							rr := sigmoid(clipped(gx[h+j] + gh[h+j]))
							hh = math.Tanh(clipped(gx[2*h+j] + rr*gh[2*h+j]))
						} else {
							hh = math.Tanh(clipped(gx[2*h+j] + dot(rvec, R, 2*h+j, h) + Rb[2*h+j]))
						}
						next[j] = (1-z)*hh + z*H[j]
					}
				case "LSTM":
					for j := range next {
						pi, po, pf := 0.0, 0.0, 0.0
						if peep != nil {
							pi, po, pf = peep[d*3*h+j], peep[d*3*h+h+j], peep[d*3*h+2*h+j]
						}
						i := sigmoid(clipped(gx[j] + gh[j] + pi*C[j]))
						f := sigmoid(clipped(gx[2*h+j] + gh[2*h+j] + pf*C[j]))
						c := math.Tanh(clipped(gx[3*h+j] + gh[3*h+j]))
						C[j] = f*C[j] + i*c
						o := sigmoid(clipped(gx[h+j] + gh[h+j] + po*C[j]))
						next[j] = o * math.Tanh(C[j])
					}
				}
				copy(H, next)
				copy(y[((t*dirs+d)*batch+b)*h:], H)
			}
		}
	}
	// Reorder for layout 1: Y [batch, seq, dirs, hidden], Y_h and Y_c
	// [batch, dirs, hidden].
	yShape, hShape := []int{seq, dirs, batch, h}, []int{dirs, batch, h}
	yt, ht, ct := mk(yShape, y), mk(hShape, hs), mk(append([]int(nil), hShape...), cs)
	if layout != 0 {
		yt = permuted(yt, yShape, []int{2, 0, 1, 3}, []int{batch, seq, dirs, h})
		ht = permuted(ht, hShape, []int{1, 0, 2}, []int{batch, dirs, h})
		ct = permuted(ct, hShape, []int{1, 0, 2}, []int{batch, dirs, h})
	}
	res := []*Tensor{yt, ht}
	if n.op == "LSTM" {
		res = append(res, ct)
	}
	for i, t := range res {
		if res[i], err = castTo(t, x.dtype); err != nil {
			return nil, err
		}
	}
	return res, nil
}
