package monitor

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/droverhq/drover/internal/sketch"
)

// profile builds a profile of ten numeric inputs, shifting the first
// `shifted` of them by one standard deviation, and one categorical output.
func profile(t *testing.T, seed uint64, n, shifted int) *sketch.Profile {
	var in []sketch.Field
	for i := range 10 {
		in = append(in, sketch.Field{Name: fmt.Sprintf("f%d", i), Kind: sketch.KindNumeric})
	}
	s, err := sketch.NewSchema(in, []sketch.Field{{Name: "label", Kind: sketch.KindCategorical}})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 5))
	p := sketch.NewProfile(s)
	for range n {
		for i := range 10 {
			x := 5 + r.NormFloat64()
			if i < shifted {
				x++
			}
			p.Input(fmt.Sprintf("f%d", i)).Observe(sketch.Number(x))
		}
		p.Output("label").Observe(sketch.Category([]string{"yes", "no"}[r.IntN(2)]))
	}
	p.Requests = uint64(n)
	return p
}

func TestEvaluateModelVerdict(t *testing.T) {
	th := DefaultThresholds()
	ref := profile(t, 1, 5000, 0)
	for _, tc := range []struct {
		shifted int
		want    Verdict
	}{{0, VerdictStable}, {2, VerdictModerate}, {3, VerdictDrifted}, {10, VerdictDrifted}} {
		rep, err := Evaluate(ref, profile(t, 2, 5000, tc.shifted), th)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Verdict != tc.want || rep.Drifted != tc.shifted || rep.Evaluated != 10 {
			t.Errorf("%d shifted: verdict %s, %d of %d drifted; want %s", tc.shifted, rep.Verdict, rep.Drifted, rep.Evaluated, tc.want)
		}
		if len(rep.Outputs) != 1 || rep.Outputs[0].Verdict != VerdictStable {
			t.Errorf("output: %+v", rep.Outputs)
		}
	}
}

func TestEvaluateUnknownAndAbsent(t *testing.T) {
	th := DefaultThresholds()
	rep, err := Evaluate(profile(t, 1, 5000, 0), profile(t, 2, 50, 0), th)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Verdict != VerdictUnknown || rep.Evaluated != 0 || !strings.Contains(rep.Inputs[0].Reason, "fewer than 100") {
		t.Errorf("too little data: %s, evaluated %d, reason %q", rep.Verdict, rep.Evaluated, rep.Inputs[0].Reason)
	}
	ref := profile(t, 1, 1000, 0)
	cur := profile(t, 2, 1000, 0)
	cur.Inputs = cur.Inputs[1:]
	rep, _ = Evaluate(ref, cur, th)
	if rep.Inputs[0].Name != "f0" || rep.Inputs[0].Verdict != VerdictUnknown || !strings.Contains(rep.Inputs[0].Reason, "absent") {
		t.Errorf("absent feature: %+v", rep.Inputs[0])
	}
	if rep.Evaluated != 9 {
		t.Errorf("evaluated %d, want 9", rep.Evaluated)
	}
}

func TestThresholdsValidate(t *testing.T) {
	if err := DefaultThresholds().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := DefaultThresholds()
	bad.PSIModerate, bad.PSIDrifted = 0.3, 0.2
	bad.DriftedShare = 0
	err := bad.Validate()
	if err == nil || !strings.Contains(err.Error(), "psi thresholds") || !strings.Contains(err.Error(), "drifted share") {
		t.Fatalf("error %v, want both problems named", err)
	}
	if _, err := Evaluate(sketch.NewProfile(nil), sketch.NewProfile(nil), bad); err == nil {
		t.Error("Evaluate took bad thresholds")
	}
}
