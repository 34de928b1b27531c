package main

import (
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/mat"
)

// layer is one fully connected layer: out = in·w + b.
type layer struct {
	w *mat.Dense // inputs × outputs
	b []float64  // outputs
}

// mlp is a stack of layers with a ReLU after each but the last, the
// classifier head, whose outputs are logits (softmax makes them
// probabilities).
type mlp struct {
	layers []layer
}

// newMLP makes a network whose layer widths are widths, inputs first and
// classes last, with He-initialised weights (drawn from seed) and zero
// biases.
func newMLP(widths []int, seed uint64) *mlp {
	rng := rand.New(rand.NewPCG(seed, 3))
	m := &mlp{}
	for i := 1; i < len(widths); i++ {
		in, out := widths[i-1], widths[i]
		std := math.Sqrt(2 / float64(in)) // He: keeps the variance through ReLUs
		if i == len(widths)-1 {
			std = math.Sqrt(1 / float64(in)) // no ReLU after the head
		}
		w := make([]float64, in*out)
		for j := range w {
			w[j] = rng.NormFloat64() * std
		}
		m.layers = append(m.layers, layer{w: mat.NewDense(in, out, w), b: make([]float64, out)})
	}
	return m
}

// widths returns the input width and every layer's output width.
func (m *mlp) widths() []int {
	in, _ := m.layers[0].w.Dims()
	ws := []int{in}
	for _, l := range m.layers {
		ws = append(ws, len(l.b))
	}
	return ws
}

func (m *mlp) numParams() int {
	n := 0
	for _, l := range m.layers {
		r, c := l.w.Dims()
		n += r*c + len(l.b)
	}
	return n
}

// inputMatrix turns images into the network's input: one row an image,
// pixel counts scaled to 0..1 (the ONNX export folds this scaling into the
// first layer, so that the exported model takes raw counts).
func inputMatrix(x [][]float64) *mat.Dense {
	m := mat.NewDense(len(x), numFeatures, nil)
	for i, row := range x {
		for j, v := range row {
			m.Set(i, j, v/maxPixel)
		}
	}
	return m
}

// forward returns every layer's output for the rows of x: ReLU outputs for
// the hidden layers, logits for the head.
func (m *mlp) forward(x *mat.Dense) []*mat.Dense {
	outs := make([]*mat.Dense, len(m.layers))
	in := x
	for i, l := range m.layers {
		z := new(mat.Dense)
		z.Mul(in, l.w)
		rows, _ := z.Dims()
		for r := range rows {
			row := z.RawRowView(r)
			for j := range row {
				row[j] += l.b[j]
				if i < len(m.layers)-1 && row[j] < 0 {
					row[j] = 0
				}
			}
		}
		outs[i] = z
		in = z
	}
	return outs
}

// probabilities returns the class probabilities for the rows of x.
func (m *mlp) probabilities(x *mat.Dense) *mat.Dense {
	outs := m.forward(x)
	p := outs[len(outs)-1]
	softmaxRows(p)
	return p
}

func softmaxRows(z *mat.Dense) {
	rows, _ := z.Dims()
	for r := range rows {
		row := z.RawRowView(r)
		hi := row[0]
		for _, v := range row {
			hi = max(hi, v)
		}
		var sum float64
		for j, v := range row {
			row[j] = math.Exp(v - hi)
			sum += row[j]
		}
		for j := range row {
			row[j] /= sum
		}
	}
}

// accuracy is the fraction of d that m classifies correctly.
func (m *mlp) accuracy(d dataset) float64 {
	outs := m.forward(inputMatrix(d.x))
	logits := outs[len(outs)-1]
	right := 0
	for i, label := range d.y {
		if argmax(logits.RawRowView(i)) == label {
			right++
		}
	}
	return float64(right) / float64(d.len())
}

func argmax(v []float64) int {
	best := 0
	for i := range v {
		if v[i] > v[best] {
			best = i
		}
	}
	return best
}

// trainConfig says how fit trains.
type trainConfig struct {
	epochs int
	batch  int
	lr     float64 // Adam's step size
	seed   uint64  // the order of the images in each epoch
}

// fit trains every layer of m on the rows of x, labelled y, with Adam and
// the softmax cross-entropy loss. progress, if not nil, gets each epoch's
// mean loss.
func (m *mlp) fit(x *mat.Dense, y []int, cfg trainConfig, progress func(epoch int, loss float64)) {
	rng := rand.New(rand.NewPCG(cfg.seed, 4))
	n, in := x.Dims()
	grads := make([]layer, len(m.layers))
	for i, l := range m.layers {
		r, c := l.w.Dims()
		grads[i] = layer{w: mat.NewDense(r, c, nil), b: make([]float64, c)}
	}
	opt := newAdam(params(m.layers), cfg.lr)
	for epoch := 1; epoch <= cfg.epochs; epoch++ {
		var total float64
		perm := rng.Perm(n)
		for start := 0; start < n; start += cfg.batch {
			idx := perm[start:min(start+cfg.batch, n)]
			xb := mat.NewDense(len(idx), in, nil)
			labels := make([]int, len(idx))
			for r, i := range idx {
				xb.SetRow(r, x.RawRowView(i))
				labels[r] = y[i]
			}
			total += m.backprop(xb, labels, grads) * float64(len(idx))
			opt.step(params(m.layers), params(grads))
		}
		if progress != nil {
			progress(epoch, total/float64(n))
		}
	}
}

// fitHead trains the classifier head alone on x, every other layer
// frozen: the images go through the frozen layers once, and the head is
// fitted to what comes out.
func (m *mlp) fitHead(x *mat.Dense, y []int, cfg trainConfig, progress func(epoch int, loss float64)) {
	last := len(m.layers) - 1
	features := x
	if last > 0 {
		body := &mlp{layers: m.layers[:last]}
		features = body.forward(x)[last-1]
	}
	head := &mlp{layers: m.layers[last:]} // shares the head's weights with m
	head.fit(features, y, cfg, progress)
}

// backprop stores the gradient of the mean loss over the batch xb into
// grads and returns that loss.
func (m *mlp) backprop(xb *mat.Dense, labels []int, grads []layer) float64 {
	outs := m.forward(xb)
	last := len(m.layers) - 1
	d := outs[last]
	softmaxRows(d)
	rows, _ := d.Dims()
	var loss float64
	for r, label := range labels {
		row := d.RawRowView(r)
		loss -= math.Log(max(row[label], 1e-300))
		row[label]-- // d loss / d logits = p - onehot
	}
	d.Scale(1/float64(rows), d)
	for i := last; i >= 0; i-- {
		in := xb
		if i > 0 {
			in = outs[i-1]
		}
		grads[i].w.Mul(in.T(), d)
		clear(grads[i].b)
		for r := range rows {
			for j, v := range d.RawRowView(r) {
				grads[i].b[j] += v
			}
		}
		if i == 0 {
			break
		}
		prev := new(mat.Dense)
		prev.Mul(d, m.layers[i].w.T())
		// The ReLU passes the gradient only where its output was positive.
		for r := range rows {
			act, g := in.RawRowView(r), prev.RawRowView(r)
			for j := range g {
				if act[j] <= 0 {
					g[j] = 0
				}
			}
		}
		d = prev
	}
	return loss / float64(rows)
}

// params lists the layers' parameters as flat slices that alias them.
func params(layers []layer) [][]float64 {
	var ps [][]float64
	for _, l := range layers {
		ps = append(ps, l.w.RawMatrix().Data, l.b)
	}
	return ps
}

// adam is the Adam optimiser (Kingma and Ba, 2015) with its usual
// constants.
type adam struct {
	lr   float64
	t    int
	m, v [][]float64 // moment estimates, shaped as the parameters
}

func newAdam(ps [][]float64, lr float64) *adam {
	a := &adam{lr: lr}
	for _, p := range ps {
		a.m = append(a.m, make([]float64, len(p)))
		a.v = append(a.v, make([]float64, len(p)))
	}
	return a
}

func (a *adam) step(ps, grads [][]float64) {
	const beta1, beta2, eps = 0.9, 0.999, 1e-8
	a.t++
	c1 := 1 - math.Pow(beta1, float64(a.t))
	c2 := 1 - math.Pow(beta2, float64(a.t))
	for k, p := range ps {
		g, m, v := grads[k], a.m[k], a.v[k]
		for i := range p {
			m[i] = beta1*m[i] + (1-beta1)*g[i]
			v[i] = beta2*v[i] + (1-beta2)*g[i]*g[i]
			p[i] -= a.lr * (m[i] / c1) / (math.Sqrt(v[i]/c2) + eps)
		}
	}
}
