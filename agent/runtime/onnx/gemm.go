package onnx

import (
	"fmt"
	"runtime"
	"sync"
)

// matmul adds a (m×k) times b (k×n) into c (m×n), all row-major. Rows of
// a large product are split across the CPUs; the loop order (i, p, j)
// walks b and c along rows so the inner loop is a contiguous axpy.
func matmul[T float](a, b, c []T, m, k, n int) {
	splitRows(m, k, n, func(lo, hi int) { matmulRows(a, b, c, lo, hi, k, n) })
}

// splitRows runs rows(lo, hi) over the m rows of an m×k by k×n product,
// split across the CPUs when the product is large enough to pay for the
// goroutines; it returns when every part is done.
func splitRows(m, k, n int, rows func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), m)
	if m*k*n < 1<<16 || workers < 2 {
		rows(0, m)
		return
	}
	var wg sync.WaitGroup
	per := (m + workers - 1) / workers
	for lo := 0; lo < m; lo += per {
		hi := min(lo+per, m)
		wg.Go(func() { rows(lo, hi) })
	}
	wg.Wait()
}

func matmulRows[T float](a, b, c []T, lo, hi, k, n int) {
	for i := lo; i < hi; i++ {
		ci := c[i*n : i*n+n]
		ai := a[i*k : i*k+k]
		p := 0
		// Four rows of b per pass: a quarter of the loads and stores of c.
		for ; p+4 <= k; p += 4 {
			a0, a1, a2, a3 := ai[p], ai[p+1], ai[p+2], ai[p+3]
			// Equal lengths let the compiler drop the bounds checks.
			b0 := b[p*n : p*n+n]
			b1 := b[(p+1)*n : (p+1)*n+n][:len(b0)]
			b2 := b[(p+2)*n : (p+2)*n+n][:len(b0)]
			b3 := b[(p+3)*n : (p+3)*n+n][:len(b0)]
			ci := ci[:len(b0)]
			for j := range ci {
				ci[j] += a0*b0[j] + a1*b1[j] + a2*b2[j] + a3*b3[j]
			}
		}
		for ; p < k; p++ {
			av := ai[p]
			if av == 0 {
				continue
			}
			bp := b[p*n : p*n+n]
			for j := range ci {
				ci[j] += av * bp[j]
			}
		}
	}
}

// matmulBT adds a (m×k) times the transpose of b (n×k) into c (m×n):
// Gemm with transB, the layout of most exported fully connected layers,
// computed as dot products of rows without transposing b.
func matmulBT[T float](a, b, c []T, m, k, n int) {
	splitRows(m, k, n, func(lo, hi int) { matmulBTRows(a, b, c, lo, hi, k, n) })
}

func matmulBTRows[T float](a, b, c []T, lo, hi, k, n int) {
	for i := lo; i < hi; i++ {
		ai := a[i*k : i*k+k]
		ci := c[i*n : i*n+n]
		for j := range ci {
			bj := b[j*k : j*k+k][:len(ai)]
			var s0, s1, s2, s3 T
			p := 0
			for ; p+4 <= len(ai); p += 4 {
				s0 += ai[p] * bj[p]
				s1 += ai[p+1] * bj[p+1]
				s2 += ai[p+2] * bj[p+2]
				s3 += ai[p+3] * bj[p+3]
			}
			for ; p < len(ai); p++ {
				s0 += ai[p] * bj[p]
			}
			ci[j] += (s0 + s1) + (s2 + s3)
		}
	}
}

// transpose2 returns the transpose of a rows×cols matrix.
func transpose2[T Elem](a []T, rows, cols int) []T {
	out := make([]T, len(a))
	for i := 0; i < rows; i++ {
		for j := 0; j < cols; j++ {
			out[j*rows+i] = a[i*cols+j]
		}
	}
	return out
}

func gemm(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	switch args[0].dtype {
	case Float32:
		return one(gemmT[float32](n, args))
	case Float64:
		return one(gemmT[float64](n, args))
	}
	return nil, typeErr(args[0])
}

func gemmT[T float](n *node, args []*Tensor) (*Tensor, error) {
	a, b, c := args[0], args[1], in(args, 2)
	if len(a.shape) != 2 || len(b.shape) != 2 {
		return nil, fmt.Errorf("input A %v and B %v must be matrices", a.shape, b.shape)
	}
	av, ok1 := a.data.([]T)
	bv, ok2 := b.data.([]T)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("input A is %s, B is %s: they must match", a.dtype, b.dtype)
	}
	m, k := a.shape[0], a.shape[1]
	if n.int("transA", 0) != 0 {
		av = transpose2(av, m, k)
		m, k = k, m
	}
	kb, nn := b.shape[0], b.shape[1]
	transB := n.int("transB", 0) != 0
	if transB {
		kb, nn = nn, kb
	}
	if k != kb {
		return nil, fmt.Errorf("input A is %d×%d and B %d×%d (after transA, transB): inner sizes differ", m, k, kb, nn)
	}
	out := make([]T, m*nn)
	if transB {
		matmulBT(av, bv, out, m, k, nn)
	} else {
		matmul(av, bv, out, m, k, nn)
	}
	alpha := T(n.float("alpha", 1))
	if alpha != 1 {
		for i := range out {
			out[i] *= alpha
		}
	}
	res := mk([]int{m, nn}, out)
	if c != nil {
		beta := T(n.float("beta", 1))
		if _, err := broadcastShape(c.shape, res.shape); err != nil || len(c.shape) > 2 {
			return nil, fmt.Errorf("input C %v does not broadcast to %v", c.shape, res.shape)
		}
		cv, ok := expandTo[T](c, res.shape).data.([]T)
		if !ok {
			return nil, fmt.Errorf("input C is %s, want %s", c.dtype, a.dtype)
		}
		for i := range out {
			out[i] += beta * cv[i]
		}
	}
	return res, nil
}

func matMul(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	switch args[0].dtype {
	case Float32:
		return one(matMulT[float32](args[0], args[1]))
	case Float64:
		return one(matMulT[float64](args[0], args[1]))
	}
	return nil, typeErr(args[0])
}

// matMulT is numpy.matmul: 1-D operands are promoted to matrices and the
// leading (batch) dimensions broadcast.
func matMulT[T float](a, b *Tensor) (*Tensor, error) {
	as, bs := a.shape, b.shape
	if len(as) == 0 || len(bs) == 0 {
		return nil, fmt.Errorf("operands must have rank at least 1, got %v and %v", as, bs)
	}
	if a.dtype != b.dtype {
		return nil, fmt.Errorf("input A is %s, B is %s: they must match", a.dtype, b.dtype)
	}
	if len(as) == 1 {
		as = []int{1, as[0]}
	}
	if len(bs) == 1 {
		bs = []int{bs[0], 1}
	}
	m, k := as[len(as)-2], as[len(as)-1]
	kb, n := bs[len(bs)-2], bs[len(bs)-1]
	if k != kb {
		return nil, fmt.Errorf("shapes %v and %v: inner sizes %d and %d differ", a.shape, b.shape, k, kb)
	}
	batch, err := broadcastShape(as[:len(as)-2], bs[:len(bs)-2])
	if err != nil {
		return nil, err
	}
	av, bv := a.data.([]T), b.data.([]T)
	nb := numel(batch)
	out := make([]T, nb*m*n)
	sa, sb := bstrides(as[:len(as)-2], batch), bstrides(bs[:len(bs)-2], batch)
	// Walk the batch index and find each operand's matrix.
	idx := make([]int, len(batch))
	for bi := 0; bi < nb; bi++ {
		oa, ob := 0, 0
		for d := range idx {
			oa += idx[d] * sa[d]
			ob += idx[d] * sb[d]
		}
		matmul(av[oa*m*k:(oa+1)*m*k], bv[ob*k*n:(ob+1)*k*n], out[bi*m*n:(bi+1)*m*n], m, k, n)
		for d := len(idx) - 1; d >= 0; d-- {
			idx[d]++
			if idx[d] < batch[d] {
				break
			}
			idx[d] = 0
		}
	}
	shape := append([]int(nil), batch...)
	if len(a.shape) > 1 {
		shape = append(shape, m)
	}
	if len(b.shape) > 1 {
		shape = append(shape, n)
	}
	return mk(shape, out), nil
}
