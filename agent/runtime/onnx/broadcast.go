package onnx

import "fmt"

// broadcastShape is the numpy-style broadcast of shapes.
func broadcastShape(shapes ...[]int) ([]int, error) {
	rank := 0
	for _, s := range shapes {
		rank = max(rank, len(s))
	}
	out := make([]int, rank)
	for i := range out {
		out[i] = 1
	}
	for _, s := range shapes {
		off := rank - len(s)
		for i, d := range s {
			switch {
			case out[off+i] == d || d == 1:
			case out[off+i] == 1:
				out[off+i] = d
			default:
				return nil, fmt.Errorf("shapes %v do not broadcast", shapes)
			}
		}
	}
	return out, nil
}

// bstrides are in's strides for walking out's index space: 0 along the
// dimensions in broadcasts.
func bstrides(in, out []int) []int {
	s := make([]int, len(out))
	st := strides(in)
	off := len(out) - len(in)
	for i, d := range in {
		if d != 1 {
			s[off+i] = st[i]
		}
	}
	return s
}

// walk visits out's index space in runs along the last dimension: for
// each run it passes the first output offset, the run's length, each
// input's offset at the run's start, and each input's step along it.
func walk(out []int, ins [][]int, f func(o, n int, offs, steps []int)) {
	r := len(out)
	k := len(ins)
	offs := make([]int, k)
	steps := make([]int, k)
	if r == 0 {
		f(0, 1, offs, steps)
		return
	}
	if numel(out) == 0 {
		return
	}
	for j := range ins {
		steps[j] = ins[j][r-1]
	}
	n := out[r-1]
	idx := make([]int, r-1)
	base := make([]int, k)
	for o := 0; ; o += n {
		copy(offs, base)
		f(o, n, offs, steps)
		// Advance the outer index like an odometer.
		d := r - 2
		for ; d >= 0; d-- {
			idx[d]++
			for j := range ins {
				base[j] += ins[j][d]
			}
			if idx[d] < out[d] {
				break
			}
			for j := range ins {
				base[j] -= ins[j][d] * out[d]
			}
			idx[d] = 0
		}
		if d < 0 {
			return
		}
	}
}

func sameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// zip2 applies f elementwise over a and b, broadcasting.
func zip2[T, R Elem](a, b *Tensor, f func(x, y T) R) (*Tensor, error) {
	av, ok1 := a.data.([]T)
	bv, ok2 := b.data.([]T)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("inputs are %s and %s: they must have the same element type", a.dtype, b.dtype)
	}
	if sameShape(a.shape, b.shape) {
		res := make([]R, len(av))
		for i := range res {
			res[i] = f(av[i], bv[i])
		}
		return mk(append([]int(nil), a.shape...), res), nil
	}
	out, err := broadcastShape(a.shape, b.shape)
	if err != nil {
		return nil, err
	}
	res := make([]R, numel(out))
	walk(out, [][]int{bstrides(a.shape, out), bstrides(b.shape, out)}, func(o, n int, offs, steps []int) {
		ia, ib, da, db := offs[0], offs[1], steps[0], steps[1]
		for k := 0; k < n; k++ {
			res[o+k] = f(av[ia], bv[ib])
			ia += da
			ib += db
		}
	})
	return mk(out, res), nil
}

// mapT applies f to every element of t.
func mapT[T, R Elem](t *Tensor, f func(T) R) (*Tensor, error) {
	v, ok := t.data.([]T)
	if !ok {
		return nil, fmt.Errorf("%w: %s here", ErrUnsupportedType, t.dtype)
	}
	res := make([]R, len(v))
	for i, x := range v {
		res[i] = f(x)
	}
	return mk(append([]int(nil), t.shape...), res), nil
}

// expandTo copies t's values broadcast to shape out.
func expandTo[T Elem](t *Tensor, out []int) *Tensor {
	v := t.data.([]T)
	res := make([]T, numel(out))
	walk(out, [][]int{bstrides(t.shape, out)}, func(o, n int, offs, steps []int) {
		i, d := offs[0], steps[0]
		for k := 0; k < n; k++ {
			res[o+k] = v[i]
			i += d
		}
	})
	return mk(append([]int(nil), out...), res)
}
