package onnx

import (
	"fmt"
	"math"
)

func one(t *Tensor, err error) ([]*Tensor, error) {
	if err != nil {
		return nil, err
	}
	return []*Tensor{t}, nil
}

func typeErr(t *Tensor) error {
	return fmt.Errorf("%w: %s input", ErrUnsupportedType, t.dtype)
}

// unaryFloat lifts a float64 function to float and double tensors (float
// values are computed in float64 and rounded once).
func unaryFloat(mk func(n *node) func(float64) float64) opFunc {
	return func(n *node, args []*Tensor) ([]*Tensor, error) {
		if err := need(args, 1); err != nil {
			return nil, err
		}
		f := mk(n)
		switch x := args[0]; x.dtype {
		case Float32:
			return one(mapT(x, func(v float32) float32 { return float32(f(float64(v))) }))
		case Float64:
			return one(mapT(x, f))
		default:
			return nil, typeErr(x)
		}
	}
}

func fixed(f func(float64) float64) func(*node) func(float64) float64 {
	return func(*node) func(float64) float64 { return f }
}

func sigmoid(x float64) float64 {
	if x >= 0 {
		return 1 / (1 + math.Exp(-x))
	}
	e := math.Exp(x)
	return e / (1 + e)
}

func unaryOps() map[string]opFunc {
	return map[string]opFunc{
		"Acos":       unaryFloat(fixed(math.Acos)),
		"Acosh":      unaryFloat(fixed(math.Acosh)),
		"Asin":       unaryFloat(fixed(math.Asin)),
		"Asinh":      unaryFloat(fixed(math.Asinh)),
		"Atan":       unaryFloat(fixed(math.Atan)),
		"Atanh":      unaryFloat(fixed(math.Atanh)),
		"Ceil":       unaryFloat(fixed(math.Ceil)),
		"Cos":        unaryFloat(fixed(math.Cos)),
		"Cosh":       unaryFloat(fixed(math.Cosh)),
		"Erf":        unaryFloat(fixed(math.Erf)),
		"Exp":        unaryFloat(fixed(math.Exp)),
		"Floor":      unaryFloat(fixed(math.Floor)),
		"Log":        unaryFloat(fixed(math.Log)),
		"Reciprocal": unaryFloat(fixed(func(x float64) float64 { return 1 / x })),
		"Round":      unaryFloat(fixed(math.RoundToEven)),
		"Sigmoid":    unaryFloat(fixed(sigmoid)),
		"Sin":        unaryFloat(fixed(math.Sin)),
		"Sinh":       unaryFloat(fixed(math.Sinh)),
		"Softplus":   unaryFloat(fixed(func(x float64) float64 { return math.Log1p(math.Exp(x)) })),
		"Softsign":   unaryFloat(fixed(func(x float64) float64 { return x / (1 + math.Abs(x)) })),
		"Sqrt":       unaryFloat(fixed(math.Sqrt)),
		"Tan":        unaryFloat(fixed(math.Tan)),
		"Tanh":       unaryFloat(fixed(math.Tanh)),
		"Relu":       unaryFloat(fixed(func(x float64) float64 { return math.Max(x, 0) })),
		"Elu": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 1))
			return func(x float64) float64 {
				if x < 0 {
					return alpha * (math.Exp(x) - 1)
				}
				return x
			}
		}),
		"Celu": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 1))
			return func(x float64) float64 {
				return math.Max(0, x) + math.Min(0, alpha*(math.Exp(x/alpha)-1))
			}
		}),
		"Selu": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 1.67326319217681884765625))
			gamma := float64(n.float("gamma", 1.05070102214813232421875))
			return func(x float64) float64 {
				if x <= 0 {
					return gamma * (alpha*math.Exp(x) - alpha)
				}
				return gamma * x
			}
		}),
		"LeakyRelu": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 0.01))
			return func(x float64) float64 {
				if x < 0 {
					return alpha * x
				}
				return x
			}
		}),
		"ThresholdedRelu": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 1))
			return func(x float64) float64 {
				if x > alpha {
					return x
				}
				return 0
			}
		}),
		"HardSigmoid": unaryFloat(func(n *node) func(float64) float64 {
			alpha := float64(n.float("alpha", 0.2))
			beta := float64(n.float("beta", 0.5))
			return func(x float64) float64 { return math.Max(0, math.Min(1, alpha*x+beta)) }
		}),
		"HardSwish": unaryFloat(fixed(func(x float64) float64 {
			return x * math.Max(0, math.Min(1, x/6+0.5))
		})),
		"Shrink": unaryFloat(func(n *node) func(float64) float64 {
			bias := float64(n.float("bias", 0))
			lambd := float64(n.float("lambd", 0.5))
			return func(x float64) float64 {
				switch {
				case x < -lambd:
					return x + bias
				case x > lambd:
					return x - bias
				}
				return 0
			}
		}),
		"Abs":   numUnary(func(x float64) float64 { return math.Abs(x) }),
		"Neg":   numUnary(func(x float64) float64 { return -x }),
		"Sign":  numUnary(func(x float64) float64 { return sign(x) }),
		"IsNaN": isNaN,
		"IsInf": isInf,
		"Not":   not,
		"Identity": func(n *node, args []*Tensor) ([]*Tensor, error) {
			if err := need(args, 1); err != nil {
				return nil, err
			}
			return []*Tensor{args[0]}, nil
		},
	}
}

func sign(x float64) float64 {
	switch {
	case x > 0:
		return 1
	case x < 0:
		return -1
	}
	return x
}

// numUnary lifts f to every numeric type. Abs, Neg and Sign are exact in
// float64 for every type but 64-bit integers beyond 2^53, which the
// integer paths below handle without the detour.
func numUnary(f func(float64) float64) opFunc {
	return func(n *node, args []*Tensor) ([]*Tensor, error) {
		if err := need(args, 1); err != nil {
			return nil, err
		}
		x := args[0]
		switch x.dtype {
		case Float32:
			return one(mapT(x, func(v float32) float32 { return float32(f(float64(v))) }))
		case Float64:
			return one(mapT(x, f))
		case Int8:
			return one(mapT(x, intUnary[int8](n.op)))
		case Int16:
			return one(mapT(x, intUnary[int16](n.op)))
		case Int32:
			return one(mapT(x, intUnary[int32](n.op)))
		case Int64:
			return one(mapT(x, intUnary[int64](n.op)))
		case Uint8:
			return one(mapT(x, intUnary[uint8](n.op)))
		case Uint16:
			return one(mapT(x, intUnary[uint16](n.op)))
		case Uint32:
			return one(mapT(x, intUnary[uint32](n.op)))
		case Uint64:
			return one(mapT(x, intUnary[uint64](n.op)))
		}
		return nil, typeErr(x)
	}
}

func intUnary[T integer](op string) func(T) T {
	switch op {
	case "Abs":
		return func(x T) T {
			if x < 0 {
				return -x
			}
			return x
		}
	case "Neg":
		return func(x T) T { return -x }
	default: // Sign
		return func(x T) T {
			switch {
			case x > 0:
				return 1
			case x < 0:
				var one T = 1
				return -one
			}
			return 0
		}
	}
}

func isNaN(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	return floatPred(args[0], math.IsNaN)
}

func isInf(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	neg, pos := n.int("detect_negative", 1) != 0, n.int("detect_positive", 1) != 0
	return floatPred(args[0], func(x float64) bool {
		return (pos && math.IsInf(x, 1)) || (neg && math.IsInf(x, -1))
	})
}

func floatPred(x *Tensor, f func(float64) bool) ([]*Tensor, error) {
	switch x.dtype {
	case Float32:
		return one(mapT(x, func(v float32) bool { return f(float64(v)) }))
	case Float64:
		return one(mapT(x, f))
	}
	return nil, typeErr(x)
}

func not(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	return one(mapT(args[0], func(b bool) bool { return !b }))
}

func arith[T number](op string) func(x, y T) T {
	switch op {
	case "Add", "Sum":
		return func(x, y T) T { return x + y }
	case "Sub":
		return func(x, y T) T { return x - y }
	case "Mul":
		return func(x, y T) T { return x * y }
	case "Div":
		return func(x, y T) T { return x / y }
	case "Max":
		return func(x, y T) T {
			if x != x || x > y { // NaN propagates, as numpy.maximum
				return x
			}
			return y
		}
	default: // Min
		return func(x, y T) T {
			if x != x || x < y {
				return x
			}
			return y
		}
	}
}

// arith2 computes one broadcast arithmetic step for any numeric type.
func arith2(op string, a, b *Tensor) (*Tensor, error) {
	if a.dtype != b.dtype {
		return nil, fmt.Errorf("inputs are %s and %s: they must have the same element type", a.dtype, b.dtype)
	}
	switch a.dtype {
	case Float32:
		return zip2(a, b, arith[float32](op))
	case Float64:
		return zip2(a, b, arith[float64](op))
	case Int8:
		return zip2(a, b, arith[int8](op))
	case Int16:
		return zip2(a, b, arith[int16](op))
	case Int32:
		return zip2(a, b, arith[int32](op))
	case Int64:
		return zip2(a, b, arith[int64](op))
	case Uint8:
		return zip2(a, b, arith[uint8](op))
	case Uint16:
		return zip2(a, b, arith[uint16](op))
	case Uint32:
		return zip2(a, b, arith[uint32](op))
	case Uint64:
		return zip2(a, b, arith[uint64](op))
	}
	return nil, typeErr(a)
}

func binaryArith(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	if n.op == "Div" && args[1].dtype != Float32 && args[1].dtype != Float64 {
		for _, y := range args[1].Float64s() {
			if y == 0 {
				return nil, fmt.Errorf("integer division by zero")
			}
		}
	}
	return one(arith2(n.op, args[0], args[1]))
}

// variadic folds Max, Min, Sum and Mean over any number of inputs.
func variadic(n *node, args []*Tensor) ([]*Tensor, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("needs at least one input")
	}
	if err := need(args, len(args)); err != nil {
		return nil, err
	}
	op := n.op
	if op == "Mean" {
		op = "Sum"
	}
	acc := args[0]
	if len(args) == 1 {
		acc = &Tensor{dtype: acc.dtype, shape: acc.shape, data: acc.Float64s()}
		acc, _ = castTo(acc, args[0].dtype)
	}
	for _, t := range args[1:] {
		var err error
		if acc, err = arith2(op, acc, t); err != nil {
			return nil, err
		}
	}
	if n.op == "Mean" {
		k := float64(len(args))
		switch acc.dtype {
		case Float32:
			return one(mapT(acc, func(v float32) float32 { return float32(float64(v) / k) }))
		case Float64:
			return one(mapT(acc, func(v float64) float64 { return v / k }))
		}
		return nil, typeErr(acc)
	}
	return []*Tensor{acc}, nil
}

// pow keeps the base's type; the exponent may be of another numeric type.
func pow(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, y := args[0], args[1]
	if x.dtype == Bool || y.dtype == Bool {
		return nil, fmt.Errorf("%w: bool input", ErrUnsupportedType)
	}
	xf := &Tensor{dtype: Float64, shape: x.shape, data: x.Float64s()}
	yf := &Tensor{dtype: Float64, shape: y.shape, data: y.Float64s()}
	r, err := zip2(xf, yf, math.Pow)
	if err != nil {
		return nil, err
	}
	return one(castTo(r, x.dtype))
}

func compare[T number](op string) func(x, y T) bool {
	switch op {
	case "Equal":
		return func(x, y T) bool { return x == y }
	case "Less":
		return func(x, y T) bool { return x < y }
	case "LessOrEqual":
		return func(x, y T) bool { return x <= y }
	case "Greater":
		return func(x, y T) bool { return x > y }
	default:
		return func(x, y T) bool { return x >= y }
	}
}

func comparison(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	a, b := args[0], args[1]
	switch a.dtype {
	case Float32:
		return one(zip2(a, b, compare[float32](n.op)))
	case Float64:
		return one(zip2(a, b, compare[float64](n.op)))
	case Int8:
		return one(zip2(a, b, compare[int8](n.op)))
	case Int16:
		return one(zip2(a, b, compare[int16](n.op)))
	case Int32:
		return one(zip2(a, b, compare[int32](n.op)))
	case Int64:
		return one(zip2(a, b, compare[int64](n.op)))
	case Uint8:
		return one(zip2(a, b, compare[uint8](n.op)))
	case Uint16:
		return one(zip2(a, b, compare[uint16](n.op)))
	case Uint32:
		return one(zip2(a, b, compare[uint32](n.op)))
	case Uint64:
		return one(zip2(a, b, compare[uint64](n.op)))
	case Bool:
		if n.op == "Equal" {
			return one(zip2(a, b, func(x, y bool) bool { return x == y }))
		}
	}
	return nil, typeErr(a)
}

func logical(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	var f func(x, y bool) bool
	switch n.op {
	case "And":
		f = func(x, y bool) bool { return x && y }
	case "Or":
		f = func(x, y bool) bool { return x || y }
	default:
		f = func(x, y bool) bool { return x != y }
	}
	if args[0].dtype != Bool {
		return nil, typeErr(args[0])
	}
	return one(zip2(args[0], args[1], f))
}

func where(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 3); err != nil {
		return nil, err
	}
	c, x, y := args[0], args[1], args[2]
	if c.dtype != Bool {
		return nil, fmt.Errorf("condition is %s, want bool", c.dtype)
	}
	if x.dtype != y.dtype {
		return nil, fmt.Errorf("input X is %s and Y is %s: they must match", x.dtype, y.dtype)
	}
	out, err := broadcastShape(c.shape, x.shape, y.shape)
	if err != nil {
		return nil, err
	}
	cv := c.data.([]bool)
	res, _ := Zeros(x.dtype, out)
	sc, sx, sy := bstrides(c.shape, out), bstrides(x.shape, out), bstrides(y.shape, out)
	walk(out, [][]int{sc, sx, sy}, func(o, k int, offs, steps []int) {
		ic, ix, iy := offs[0], offs[1], offs[2]
		for j := 0; j < k; j++ {
			if cv[ic] {
				copyElem(res.data, o+j, x.data, ix)
			} else {
				copyElem(res.data, o+j, y.data, iy)
			}
			ic += steps[0]
			ix += steps[1]
			iy += steps[2]
		}
	})
	return []*Tensor{res}, nil
}

// copyElem sets dst[i] = src[j] for slices of the same element type.
func copyElem(dst any, i int, src any, j int) {
	switch d := dst.(type) {
	case []float32:
		d[i] = src.([]float32)[j]
	case []float64:
		d[i] = src.([]float64)[j]
	case []int8:
		d[i] = src.([]int8)[j]
	case []int16:
		d[i] = src.([]int16)[j]
	case []int32:
		d[i] = src.([]int32)[j]
	case []int64:
		d[i] = src.([]int64)[j]
	case []uint8:
		d[i] = src.([]uint8)[j]
	case []uint16:
		d[i] = src.([]uint16)[j]
	case []uint32:
		d[i] = src.([]uint32)[j]
	case []uint64:
		d[i] = src.([]uint64)[j]
	case []bool:
		d[i] = src.([]bool)[j]
	}
}

func prelu(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 2); err != nil {
		return nil, err
	}
	x, s := args[0], args[1]
	// Before opset 7 a 1-D slope was per channel (axis 1), not trailing.
	if n.opset < 7 && len(s.shape) == 1 && len(x.shape) > 2 && s.shape[0] == x.shape[1] {
		shape := ones(len(x.shape) - 1)
		shape[0] = s.shape[0]
		s = s.reshaped(shape)
	}
	switch x.dtype {
	case Float32:
		return one(zip2(x, s, func(v, a float32) float32 {
			if v < 0 {
				return a * v
			}
			return v
		}))
	case Float64:
		return one(zip2(x, s, func(v, a float64) float64 {
			if v < 0 {
				return a * v
			}
			return v
		}))
	}
	return nil, typeErr(x)
}

// clip bounds x by optional scalar min and max: inputs from opset 11,
// attributes before.
func clip(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	lo, hi := math.Inf(-1), math.Inf(1)
	if n.opset < 11 {
		lo, hi = float64(n.float("min", float32(math.Inf(-1)))), float64(n.float("max", float32(math.Inf(1))))
	} else {
		if t := in(args, 1); t != nil {
			if t.Len() != 1 {
				return nil, fmt.Errorf("min must be a scalar, got shape %v", t.shape)
			}
			lo = t.Float64s()[0]
		}
		if t := in(args, 2); t != nil {
			if t.Len() != 1 {
				return nil, fmt.Errorf("max must be a scalar, got shape %v", t.shape)
			}
			hi = t.Float64s()[0]
		}
	}
	f := func(v float64) float64 {
		if v < lo {
			v = lo
		}
		if v > hi {
			v = hi
		}
		return v
	}
	// Every type's values and bounds are exact in float64 except 64-bit
	// integers past 2^53, which no model clips.
	xf := &Tensor{dtype: Float64, shape: x.shape, data: x.Float64s()}
	r, err := mapT(xf, f)
	if err != nil {
		return nil, err
	}
	return one(castTo(r, x.dtype))
}
