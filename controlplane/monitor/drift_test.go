package monitor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/droverhq/drover/internal/sketch"
)

func draw(seed uint64, n int, mean, sd float64) []float64 {
	r := rand.New(rand.NewPCG(seed, 7))
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = mean + sd*r.NormFloat64()
	}
	return xs
}

func sketchOf(t *testing.T, xs []float64) *sketch.Numeric {
	n := sketch.NewNumeric()
	for _, x := range xs {
		if err := n.Add(x); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// exactPSI is PSI on raw samples: the reference's exact deciles as edges,
// exact counts, the same smoothing.
func exactPSI(ref, cur []float64) float64 {
	r := slices.Sorted(slices.Values(ref))
	var edges []float64
	for i := 1; i <= 9; i++ {
		e := r[int(float64(i)/10*float64(len(r)))-1]
		if len(edges) == 0 || e > edges[len(edges)-1] {
			edges = append(edges, e)
		}
	}
	count := func(xs []float64) []float64 {
		out := make([]float64, len(edges)+1)
		for _, x := range xs {
			i, _ := slices.BinarySearch(edges, x) // first edge ≥ x: x in (e[i-1], e[i]]
			out[i]++
		}
		return out
	}
	return PSIFromCounts(count(ref), count(cur))
}

// exactKS is the two-sample KS statistic of raw samples.
func exactKS(a, b []float64) float64 {
	a = slices.Sorted(slices.Values(a))
	b = slices.Sorted(slices.Values(b))
	var i, j int
	var d float64
	for i < len(a) && j < len(b) {
		x := math.Min(a[i], b[j])
		for i < len(a) && a[i] <= x {
			i++
		}
		for j < len(b) && b[j] <= x {
			j++
		}
		d = math.Max(d, math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))))
	}
	return d
}

// The tolerances these tests hold the sketches to, against exact
// computations on the same raw samples: PSI within 0.01 absolute (the
// deciles move by at most one 1% bin), KS within the ErrorBound KS itself
// reports, JS exact up to rounding when the categories fit in the sketch.
const psiTolerance = 0.01

func TestNumericDriftAgainstExact(t *testing.T) {
	th := DefaultThresholds()
	ref := draw(1, 20000, 50, 10)
	for _, tc := range []struct {
		name string
		cur  []float64
		want Verdict
	}{
		{"same distribution", draw(2, 20000, 50, 10), VerdictStable},
		{"mean shifted by 1 sd", draw(3, 20000, 60, 10), VerdictDrifted},
		{"mean shifted by 0.4 sd", draw(4, 20000, 54, 10), VerdictModerate},
		{"sd doubled", draw(5, 20000, 50, 20), VerdictDrifted},
		{"standardized, same", draw(6, 20000, 0, 1), VerdictDrifted}, // against ref at 50: far away
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, cs := sketchOf(t, ref), sketchOf(t, tc.cur)
			psi, err := PSI(rs, cs)
			if err != nil {
				t.Fatal(err)
			}
			wantPSI := exactPSI(ref, tc.cur)
			if math.Abs(psi-wantPSI) > psiTolerance*math.Max(1, wantPSI) {
				t.Errorf("PSI %.4f, exact %.4f: off by more than %g", psi, wantPSI, psiTolerance)
			}
			ks, err := KS(rs, cs)
			if err != nil {
				t.Fatal(err)
			}
			wantKS := exactKS(ref, tc.cur)
			if math.Abs(ks.Statistic-wantKS) > ks.ErrorBound {
				t.Errorf("KS %.4f, exact %.4f: off by more than its bound %.4f", ks.Statistic, wantKS, ks.ErrorBound)
			}
			v := max(band(psi, th.PSIModerate, th.PSIDrifted), band(ks.Statistic, th.KSModerate, th.KSDrifted))
			if v != tc.want {
				t.Errorf("verdict %s, want %s", v, tc.want)
			}
			t.Logf("PSI %.4f (exact %.4f), KS %.4f (exact %.4f, bound %.4f) → %s", psi, wantPSI, ks.Statistic, wantKS, ks.ErrorBound, v)
		})
	}
}

func TestStandardNormalNearZero(t *testing.T) {
	// Values on both sides of zero, down to tiny magnitudes: the bins
	// nearest zero and the negative store both matter.
	ref, cur := draw(7, 20000, 0, 1), draw(8, 20000, 0, 1)
	shifted := draw(9, 20000, 1, 1)
	rs := sketchOf(t, ref)
	for _, c := range [][]float64{cur, shifted} {
		cs := sketchOf(t, c)
		psi, _ := PSI(rs, cs)
		ks, _ := KS(rs, cs)
		wantPSI, wantKS := exactPSI(ref, c), exactKS(ref, c)
		if math.Abs(psi-wantPSI) > psiTolerance*math.Max(1, wantPSI) || math.Abs(ks.Statistic-wantKS) > ks.ErrorBound {
			t.Errorf("PSI %.4f exact %.4f; KS %.4f exact %.4f bound %.4f", psi, wantPSI, ks.Statistic, wantKS, ks.ErrorBound)
		}
		t.Logf("N(0,1) ref: PSI %.4f (exact %.4f), KS %.4f (exact %.4f, bound %.4f)", psi, wantPSI, ks.Statistic, wantKS, ks.ErrorBound)
	}
}

func TestPSIWithPointMasses(t *testing.T) {
	// A binary feature: deciles collapse to two edges.
	ref := make([]float64, 1000)
	cur := make([]float64, 1000)
	for i := range ref {
		if i%10 < 3 {
			ref[i] = 1
		}
		if i%10 < 6 {
			cur[i] = 1
		}
	}
	rs, cs := sketchOf(t, ref), sketchOf(t, cur)
	psi, err := PSI(rs, cs)
	if err != nil {
		t.Fatal(err)
	}
	// Exact: 30%→60% ones, 70%→40% zeros.
	want := (0.6-0.3)*math.Log(0.6/0.3) + (0.4-0.7)*math.Log(0.4/0.7)
	if math.Abs(psi-want) > 0.01 {
		t.Errorf("PSI %.4f, want %.4f", psi, want)
	}
	ks, _ := KS(rs, cs)
	if math.Abs(ks.Statistic-0.3) > 1e-9 {
		t.Errorf("KS %.4f, want 0.3", ks.Statistic)
	}
	same, _ := PSI(rs, rs)
	if same != 0 {
		t.Errorf("PSI of a sketch with itself: %g", same)
	}
}

func exactJS(a, b []string) float64 {
	share := func(xs []string) map[string]float64 {
		m := map[string]float64{}
		for _, x := range xs {
			m[x] += 1 / float64(len(xs))
		}
		return m
	}
	return JSFromShares(share(a), share(b))
}

func categorical(vals []string) *sketch.Categorical {
	c := sketch.NewCategorical(sketch.DefaultCapacity)
	for _, v := range vals {
		c.Add(v)
	}
	return c
}

func drawCategories(seed uint64, n int, weights []float64, names []string) []string {
	r := rand.New(rand.NewPCG(seed, 11))
	var total float64
	for _, w := range weights {
		total += w
	}
	out := make([]string, n)
	for i := range out {
		u := r.Float64() * total
		k := 0
		for ; k < len(weights)-1 && u >= weights[k]; k++ {
			u -= weights[k]
		}
		out[i] = names[k]
	}
	return out
}

func TestJSAgainstExact(t *testing.T) {
	th := DefaultThresholds()
	names := []string{"a", "b", "c", "d", "e"}
	ref := drawCategories(1, 20000, []float64{40, 30, 15, 10, 5}, names)
	for _, tc := range []struct {
		name string
		cur  []string
		want Verdict
	}{
		{"same", drawCategories(2, 20000, []float64{40, 30, 15, 10, 5}, names), VerdictStable},
		{"30% to a new value", drawCategories(3, 20000, []float64{10, 30, 15, 10, 5, 30}, append(names, "new")), VerdictDrifted},
		{"reversed", drawCategories(4, 20000, []float64{5, 10, 15, 30, 40}, names), VerdictDrifted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, err := JS(categorical(ref), categorical(tc.cur))
			if err != nil {
				t.Fatal(err)
			}
			want := exactJS(ref, tc.cur)
			if math.Abs(js-want) > 1e-9 {
				t.Errorf("JS %.6f, exact %.6f", js, want)
			}
			if v := band(js, th.JSModerate, th.JSDrifted); v != tc.want {
				t.Errorf("JS %.4f: verdict %s, want %s", js, v, tc.want)
			}
			t.Logf("JS %.4f (exact %.4f)", js, want)
		})
	}
}

func TestJSLongTail(t *testing.T) {
	// 5,000 values under a Zipf law: the sketch keeps 64 and lumps the tail
	// into "other", so JS is an approximation. Same law → small; a
	// different law → large, on both the sketch and the exact values.
	zipf := func(seed uint64, s float64, offset int) []string {
		r := rand.New(rand.NewPCG(seed, 12))
		z := rand.NewZipf(r, s, 1, 4999)
		out := make([]string, 50000)
		for i := range out {
			out[i] = fmt.Sprint("v", (int(z.Uint64())+offset)%5000)
		}
		return out
	}
	ref := zipf(1, 1.3, 0)
	for _, tc := range []struct {
		name  string
		cur   []string
		drift bool
	}{
		{"same law", zipf(2, 1.3, 0), false},
		{"popular values moved", zipf(3, 1.3, 7), true},
	} {
		js, _ := JS(categorical(ref), categorical(tc.cur))
		want := exactJS(ref, tc.cur)
		t.Logf("%s: JS %.4f from sketches, %.4f exact", tc.name, js, want)
		if got := js >= DefaultThresholds().JSDrifted; got != tc.drift {
			t.Errorf("%s: JS %.4f, drifted %v, want %v", tc.name, js, got, tc.drift)
		}
		if math.Abs(js-want) > 0.05 {
			t.Errorf("%s: sketch JS %.4f, exact %.4f: off by more than 0.05", tc.name, js, want)
		}
	}
}

func TestEmptySketches(t *testing.T) {
	full := sketchOf(t, []float64{1, 2, 3})
	if _, err := PSI(sketch.NewNumeric(), full); err == nil {
		t.Error("PSI with empty reference: no error")
	}
	if _, err := PSI(full, sketch.NewNumeric()); err == nil {
		t.Error("PSI with empty current: no error")
	}
	if _, err := KS(full, sketch.NewNumeric()); err == nil {
		t.Error("KS with empty current: no error")
	}
	if _, err := JS(sketch.NewCategorical(4), categorical([]string{"a"})); err == nil {
		t.Error("JS with empty reference: no error")
	}
}
