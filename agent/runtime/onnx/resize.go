package onnx

import (
	"fmt"
	"math"
	"sort"
)

// resizer is one Resize node's settings, following ONNX's reference
// implementation (onnx/backend/test/case/node/resize.py): the output is
// interpolated one axis at a time, last axis first, which equals the
// reference's nesting of one-dimensional interpolations.
type resizer struct {
	mode, coord, nearest string
	cubicA               float64
	excludeOutside       bool
	extrapolation        float64
}

func resize(n *node, args []*Tensor) ([]*Tensor, error) {
	if err := need(args, 1); err != nil {
		return nil, err
	}
	x := args[0]
	r := len(x.shape)
	rz := resizer{
		mode:           n.str("mode", "nearest"),
		coord:          n.str("coordinate_transformation_mode", "half_pixel"),
		nearest:        n.str("nearest_mode", "round_prefer_floor"),
		cubicA:         float64(n.float("cubic_coeff_a", -0.75)),
		excludeOutside: n.int("exclude_outside", 0) != 0,
		extrapolation:  float64(n.float("extrapolation_value", 0)),
	}
	var roiT, scalesT, sizesT *Tensor
	switch {
	case n.op == "Upsample" || n.opset < 11:
		// Upsample and Resize-10: X and scales, asymmetric coordinates,
		// nearest rounding down.
		rz.coord, rz.nearest = "asymmetric", "floor"
		scalesT = in(args, 1)
		if n.op == "Upsample" && n.opset < 9 {
			if a, ok := n.attrs["scales"]; ok {
				scalesT = mk([]int{len(a.GetFloats())}, append([]float32(nil), a.GetFloats()...))
			}
		}
	default:
		roiT, scalesT, sizesT = in(args, 1), in(args, 2), in(args, 3)
	}
	switch rz.mode {
	case "nearest", "linear", "cubic":
	default:
		return nil, fmt.Errorf("%w: Resize mode %q", ErrUnsupportedOp, rz.mode)
	}
	switch rz.coord {
	case "half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize":
	default:
		return nil, fmt.Errorf("%w: coordinate_transformation_mode %q", ErrUnsupportedOp, rz.coord)
	}
	scales := make([]float64, r)
	out := make([]int, r)
	switch {
	case scalesT != nil && scalesT.Len() > 0:
		s := scalesT.Float64s()
		if len(s) != r {
			return nil, fmt.Errorf("scales %v do not match rank %d", s, r)
		}
		for d := range s {
			if s[d] <= 0 {
				return nil, fmt.Errorf("scales %v must be positive", s)
			}
			scales[d] = s[d]
			out[d] = int(s[d] * float64(x.shape[d]))
		}
	case sizesT != nil && sizesT.Len() > 0:
		sz, err := int64s(sizesT)
		if err != nil || len(sz) != r {
			return nil, fmt.Errorf("sizes must be %d int64 values", r)
		}
		for d := range sz {
			if sz[d] <= 0 || x.shape[d] == 0 {
				return nil, fmt.Errorf("sizes %v must be positive", sz)
			}
			out[d] = sz[d]
			scales[d] = float64(sz[d]) / float64(x.shape[d])
		}
	default:
		return nil, fmt.Errorf("one of scales and sizes is required")
	}
	var roi []float64
	if roiT != nil && roiT.Len() > 0 {
		roi = roiT.Float64s()
		if len(roi) != 2*r {
			return nil, fmt.Errorf("roi has %d values, want %d", len(roi), 2*r)
		}
	}
	if rz.coord == "tf_crop_and_resize" && roi == nil {
		return nil, fmt.Errorf("tf_crop_and_resize needs roi")
	}
	cur := &Tensor{dtype: Float64, shape: append([]int(nil), x.shape...), data: x.Float64s()}
	for d := r - 1; d >= 0; d-- {
		if out[d] == cur.shape[d] && scales[d] == 1 && rz.coord != "tf_crop_and_resize" {
			continue
		}
		var lohi [2]float64
		if roi != nil {
			lohi = [2]float64{roi[d], roi[d+r]}
		}
		cur = rz.axis(cur, d, out[d], scales[d], lohi)
	}
	if x.dtype == Float32 || x.dtype == Float64 {
		return one(castTo(cur, x.dtype))
	}
	if rz.mode != "nearest" {
		return nil, typeErr(x)
	}
	return one(castTo(cur, x.dtype))
}

// axis interpolates t along dimension d to size outN.
func (rz resizer) axis(t *Tensor, d, outN int, scale float64, roi [2]float64) *Tensor {
	inN := t.shape[d]
	outer, inner := numel(t.shape[:d]), numel(t.shape[d+1:])
	src := t.data.([]float64)
	shape := append([]int(nil), t.shape...)
	shape[d] = outN
	res := make([]float64, outer*outN*inner)
	// Each output index reads fixed positions with fixed weights.
	type tap struct {
		idx     []int
		w       []float64
		outside bool
	}
	taps := make([]tap, outN)
	for o := range taps {
		idx, w, outside := rz.weights(o, inN, scale, roi)
		taps[o] = tap{idx, w, outside}
	}
	for a := 0; a < outer; a++ {
		for o, tp := range taps {
			for i := 0; i < inner; i++ {
				dst := (a*outN+o)*inner + i
				if tp.outside {
					res[dst] = rz.extrapolation
					continue
				}
				var s float64
				for k, j := range tp.idx {
					s += tp.w[k] * src[(a*inN+j)*inner+i]
				}
				res[dst] = s
			}
		}
	}
	return mk(shape, res)
}

// weights returns the input indices (edge-clamped) and weights output
// index o reads, or outside for a tf_crop_and_resize point off the input.
func (rz resizer) weights(o, inN int, scale float64, roi [2]float64) ([]int, []float64, bool) {
	x := float64(o)
	// The reference's output width is scale × input, not the rounded
	// output size.
	in, out := float64(inN), scale*float64(inN)
	var xo float64
	switch rz.coord {
	case "align_corners":
		if out != 1 {
			xo = x * (in - 1) / (out - 1)
		}
	case "asymmetric":
		xo = x / scale
	case "tf_crop_and_resize":
		if out == 1 {
			xo = (roi[1] - roi[0]) * (in - 1) / 2
		} else {
			xo = x * (roi[1] - roi[0]) * (in - 1) / (out - 1)
		}
		xo += roi[0] * (in - 1)
		if xo < 0 || xo > in-1 {
			return nil, nil, true
		}
	case "pytorch_half_pixel":
		if out == 1 {
			xo = -0.5
		} else {
			xo = (x+0.5)/scale - 0.5
		}
	case "half_pixel":
		xo = (x+0.5)/scale - 0.5
	case "tf_half_pixel_for_nn":
		xo = (x + 0.5) / scale
	}
	ratio := 1.0
	if xo != math.Floor(xo) {
		ratio = xo - math.Floor(xo)
	}
	var coeffs []float64
	switch rz.mode {
	case "nearest":
		coeffs = []float64{0, 1}
		if ratio != 1 {
			var right bool
			switch rz.nearest {
			case "round_prefer_ceil":
				right = ratio >= 0.5
			case "floor":
				right = false
			case "ceil":
				right = true
			default: // round_prefer_floor
				right = ratio > 0.5
			}
			if right {
				coeffs = []float64{0, 1}
			} else {
				coeffs = []float64{1, 0}
			}
		}
	case "linear":
		coeffs = []float64{1 - ratio, ratio}
	case "cubic":
		a := rz.cubicA
		r1, r2 := ratio+1, 2-ratio
		coeffs = []float64{
			((a*r1-5*a)*r1+8*a)*r1 - 4*a,
			((a+2)*ratio-(a+3))*ratio*ratio + 1,
			((a+2)*(1-ratio)-(a+3))*(1-ratio)*(1-ratio) + 1,
			((a*r2-5*a)*r2+8*a)*r2 - 4*a,
		}
	}
	// The reference pads the input by ceil(n/2) on each side (edge mode)
	// and takes the n indices nearest xo, ties to the lower one.
	nTaps := len(coeffs)
	pad := (nTaps + 1) / 2
	xp := xo + float64(pad)
	limit := inN + 2*pad
	var cand []int
	for j := int(math.Floor(xp)) - nTaps - 1; j <= int(math.Floor(xp))+nTaps+1; j++ {
		if j >= 0 && j < limit {
			cand = append(cand, j)
		}
	}
	sort.Slice(cand, func(a, b int) bool {
		da, db := math.Abs(xp-float64(cand[a])), math.Abs(xp-float64(cand[b]))
		if da != db {
			return da < db
		}
		return cand[a] < cand[b]
	})
	cand = cand[:min(nTaps, len(cand))]
	sort.Ints(cand)
	idx := make([]int, len(cand))
	w := append([]float64(nil), coeffs[:len(cand)]...)
	var sum float64
	for k, j := range cand {
		orig := j - pad
		if rz.excludeOutside && (orig < 0 || orig >= inN) {
			w[k] = 0
		}
		sum += w[k]
		idx[k] = clampRange(orig, 0, inN-1)
	}
	if rz.excludeOutside && sum != 0 {
		for k := range w {
			w[k] /= sum
		}
	}
	return idx, w, false
}
