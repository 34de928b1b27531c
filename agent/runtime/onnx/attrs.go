package onnx

import "fmt"

func (n *node) has(name string) bool { _, ok := n.attrs[name]; return ok }

func (n *node) int(name string, def int64) int64 {
	if a, ok := n.attrs[name]; ok {
		return a.GetI()
	}
	return def
}

func (n *node) float(name string, def float32) float32 {
	if a, ok := n.attrs[name]; ok {
		return a.GetF()
	}
	return def
}

func (n *node) str(name, def string) string {
	if a, ok := n.attrs[name]; ok {
		return string(a.GetS())
	}
	return def
}

func (n *node) ints(name string) []int {
	a, ok := n.attrs[name]
	if !ok {
		return nil
	}
	out := make([]int, len(a.GetInts()))
	for i, v := range a.GetInts() {
		out[i] = int(v)
	}
	return out
}

// in returns input i, or nil when the model left that optional input out.
func in(args []*Tensor, i int) *Tensor {
	if i < len(args) {
		return args[i]
	}
	return nil
}

// need checks that the first k inputs are present.
func need(args []*Tensor, k int) error {
	for i := 0; i < k; i++ {
		if in(args, i) == nil {
			return fmt.Errorf("input %d is required", i)
		}
	}
	return nil
}

// int64s reads a shape-like input (axes, shape, pads) as ints.
func int64s(t *Tensor) ([]int, error) {
	switch v := t.data.(type) {
	case []int64:
		out := make([]int, len(v))
		for i, x := range v {
			out[i] = int(x)
		}
		return out, nil
	case []int32:
		out := make([]int, len(v))
		for i, x := range v {
			out[i] = int(x)
		}
		return out, nil
	}
	return nil, fmt.Errorf("want an int64 tensor, got %s", t.dtype)
}

// axis normalises a possibly negative axis against rank.
func axis(a, rank int) (int, error) {
	if a < -rank || a >= rank || (rank == 0 && a != 0) {
		if rank == 0 && (a == 0 || a == -1) {
			return 0, nil
		}
		return 0, fmt.Errorf("axis %d is out of range for rank %d", a, rank)
	}
	if a < 0 {
		a += rank
	}
	return a, nil
}
