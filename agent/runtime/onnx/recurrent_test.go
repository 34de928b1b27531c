package onnx

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

// The node tests cover the forward direction only. A reverse run is the
// forward run of the time-reversed sequence, and a bidirectional run is
// both side by side: check each recurrent operator that way.
func TestRecurrentDirections(t *testing.T) {
	const seq, batch, in, hid = 4, 2, 3, 5
	rng := rand.New(rand.NewPCG(1, 2))
	randT := func(shape ...int) *Tensor {
		v := make([]float32, numel(shape))
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.5)
		}
		return mk(shape, v)
	}
	for _, op := range []string{"RNN", "GRU", "LSTM"} {
		gates := map[string]int{"RNN": 1, "GRU": 3, "LSTM": 4}[op]
		x := randT(seq, batch, in)
		w := randT(1, gates*hid, in)
		r := randT(1, gates*hid, hid)
		b := randT(1, 2*gates*hid)
		run := func(dir string, x, w, r, b *Tensor) []*Tensor {
			t.Helper()
			n := &node{op: op, opset: 14, outputs: []string{"Y", "Y_h"}, attrs: map[string]*onnxpb.AttributeProto{
				"hidden_size": {Name: "hidden_size", Type: onnxpb.AttributeProto_INT, I: hid},
				"direction":   {Name: "direction", Type: onnxpb.AttributeProto_STRING, S: []byte(dir)},
			}}
			out, err := recurrent(n, []*Tensor{x, w, r, b})
			if err != nil {
				t.Fatalf("%s %s: %v", op, dir, err)
			}
			return out
		}
		reversed := func(x *Tensor) *Tensor {
			v, _ := Values[float32](x)
			out := make([]float32, len(v))
			step := len(v) / seq
			for s := 0; s < seq; s++ {
				copy(out[s*step:(s+1)*step], v[(seq-1-s)*step:(seq-s)*step])
			}
			return mk(x.shape, out)
		}
		fwd := run("forward", x, w, r, b)
		rev := run("reverse", x, w, r, b)
		fwdOfReversed := run("forward", reversed(x), w, r, b)
		close := func(what string, got, want []float64) {
			t.Helper()
			for i := range want {
				if math.Abs(got[i]-want[i]) > 1e-6 {
					t.Fatalf("%s %s: value %d is %v, want %v", op, what, i, got[i], want[i])
				}
			}
		}
		close("reverse Y_h", rev[1].Float64s(), fwdOfReversed[1].Float64s())
		close("reverse Y", rev[0].Float64s(), reversed(fwdOfReversed[0]).Float64s())

		stack := func(a, c *Tensor) *Tensor {
			s, _ := Concat(a, c)
			return s
		}
		bi := run("bidirectional", x, stack(w, w), stack(r, r), stack(b, b))
		yb := bi[0].Float64s() // [seq, 2, batch, hidden]
		yf, yr := fwd[0].Float64s(), rev[0].Float64s()
		for s := 0; s < seq; s++ {
			for k := 0; k < batch*hid; k++ {
				if math.Abs(yb[(s*2+0)*batch*hid+k]-yf[s*batch*hid+k]) > 1e-6 || math.Abs(yb[(s*2+1)*batch*hid+k]-yr[s*batch*hid+k]) > 1e-6 {
					t.Fatalf("%s bidirectional: step %d differs from forward and reverse", op, s)
				}
			}
		}
		hb := bi[1].Float64s()
		close("bidirectional Y_h forward", hb[:batch*hid], fwd[1].Float64s())
		close("bidirectional Y_h reverse", hb[batch*hid:], rev[1].Float64s())
	}
}
