package sketch

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func normals(seed uint64, n int, mean, sd float64) []float64 {
	r := rand.New(rand.NewPCG(seed, 1))
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = mean + sd*r.NormFloat64()
	}
	return xs
}

func numericOf(t testing.TB, xs []float64) *Numeric {
	n := NewNumeric()
	for _, x := range xs {
		if err := n.Add(x); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// exactQuantile is the lower empirical quantile, the one DDSketch targets.
func exactQuantile(sorted []float64, q float64) float64 {
	return sorted[int(q*float64(len(sorted)-1))]
}

func TestNumericQuantilesWithinRelativeAccuracy(t *testing.T) {
	for _, tc := range []struct {
		name string
		xs   []float64
	}{
		{"normal(50,10)", normals(1, 50000, 50, 10)},
		{"normal(0,1)", normals(2, 50000, 0, 1)},
		{"lognormal", func() []float64 {
			xs := normals(3, 50000, 0, 2)
			for i := range xs {
				xs[i] = math.Exp(xs[i])
			}
			return xs
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := numericOf(t, tc.xs)
			sorted := slices.Sorted(slices.Values(tc.xs))
			for _, q := range []float64{0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1} {
				got, err := n.Quantile(q)
				if err != nil {
					t.Fatal(err)
				}
				want := exactQuantile(sorted, q)
				if math.Abs(got-want) > RelativeAccuracy*math.Abs(want)+1e-9 {
					t.Errorf("q%.2f = %g, exact %g: off by more than %g%%", q, got, want, 100*RelativeAccuracy)
				}
			}
			if n.Count() != uint64(len(tc.xs)) || n.Min() != sorted[0] || n.Max() != sorted[len(sorted)-1] {
				t.Errorf("count/min/max %d/%g/%g, want %d/%g/%g", n.Count(), n.Min(), n.Max(), len(tc.xs), sorted[0], sorted[len(sorted)-1])
			}
			var sum float64
			for _, x := range tc.xs {
				sum += x
			}
			if math.Abs(n.Sum()-sum) > 1e-9*math.Abs(sum)+1e-9 {
				t.Errorf("sum %g, want %g", n.Sum(), sum)
			}
		})
	}
}

func TestNumericCDFWithinBinMass(t *testing.T) {
	xs := normals(4, 40000, 0, 1)
	n := numericOf(t, xs)
	d := n.Distribution()
	sorted := slices.Sorted(slices.Values(xs))
	var worst float64
	for x := -4.0; x <= 4; x += 0.01 {
		exact := float64(sortSearchLE(sorted, x)) / float64(len(sorted))
		got := d.CDF(x)
		bound := d.BinMass(x)
		if diff := math.Abs(got - exact); diff > bound+1e-12 {
			t.Errorf("CDF(%g) = %g, exact %g: error %g above the bin mass %g", x, got, exact, diff, bound)
		}
		worst = max(worst, math.Abs(got-exact))
	}
	t.Logf("worst CDF error over [-4,4] for N(0,1), 40k values: %.4f", worst)
	if d.CDF(-100) != 0 || d.CDF(100) != 1 {
		t.Errorf("CDF outside the data: %g, %g", d.CDF(-100), d.CDF(100))
	}
}

func sortSearchLE(sorted []float64, x float64) int {
	i, _ := slices.BinarySearch(sorted, math.Nextafter(x, math.Inf(1)))
	return i
}

func TestNumericZerosAndPointMass(t *testing.T) {
	n := numericOf(t, []float64{0, 0, 0, 5, 5, 5, -5})
	d := n.Distribution()
	if got := d.CDF(0); math.Abs(got-4.0/7) > 1e-12 {
		t.Errorf("CDF(0) = %g, want 4/7", got)
	}
	if got := d.CDFBelow(0); math.Abs(got-1.0/7) > 1e-12 {
		t.Errorf("CDFBelow(0) = %g, want 1/7", got)
	}
	if got := d.CDF(5); got != 1 {
		t.Errorf("CDF(max) = %g, want 1", got)
	}
	same := numericOf(t, []float64{3, 3, 3})
	if got := same.Distribution().CDF(3); got != 1 {
		t.Errorf("point mass CDF(3) = %g", got)
	}
	if got := same.Distribution().CDFBelow(3); got != 0 {
		t.Errorf("point mass CDFBelow(3) = %g", got)
	}
}

func TestNumericRejectsNonFinite(t *testing.T) {
	n := NewNumeric()
	for _, x := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), math.MaxFloat64} {
		if err := n.Add(x); !errors.Is(err, ErrNotFinite) {
			t.Errorf("Add(%g) = %v, want ErrNotFinite", x, err)
		}
	}
	if n.Count() != 0 {
		t.Errorf("count %d after refused values", n.Count())
	}
	if _, err := n.Quantile(0.5); err == nil {
		t.Error("quantile of empty sketch: no error")
	}
}

func TestNumericMergeEqualsOneStream(t *testing.T) {
	xs := normals(5, 30000, 10, 3)
	whole := numericOf(t, xs)
	merged := NewNumeric()
	for i := 0; i < len(xs); i += 1000 {
		merged.Merge(numericOf(t, xs[i:i+1000]))
	}
	if merged.Count() != whole.Count() || merged.Min() != whole.Min() || merged.Max() != whole.Max() {
		t.Fatalf("merged count/min/max differ")
	}
	for _, q := range []float64{0.01, 0.5, 0.99} {
		a, _ := whole.Quantile(q)
		b, _ := merged.Quantile(q)
		if a != b {
			t.Errorf("q%g: one stream %g, merged %g", q, a, b)
		}
	}
}

func TestNumericBinsBounded(t *testing.T) {
	// Magnitudes from 1e-200 to 1e200: far more than MaxBins bins' range.
	n := NewNumeric()
	var xs []float64
	for e := -200.0; e <= 200; e += 0.05 {
		xs = append(xs, math.Pow(10, e), -math.Pow(10, e))
	}
	for _, x := range xs {
		_ = n.Add(x)
	}
	slices.Sort(xs)
	pb := n.ToProto()
	if len(pb.Positive.Counts) > MaxBins || len(pb.Negative.Counts) > MaxBins {
		t.Fatalf("bins %d/%d above MaxBins %d", len(pb.Positive.Counts), len(pb.Negative.Counts), MaxBins)
	}
	// The top quantiles keep their accuracy; only the collapsed low end loses it.
	got, _ := n.Quantile(0.99)
	want := exactQuantile(xs, 0.99)
	if math.Abs(got-want) > RelativeAccuracy*want {
		t.Errorf("q0.99 = %g, want about %g", got, want)
	}
}

func TestCategoricalExactUnderCapacity(t *testing.T) {
	c := NewCategorical(8)
	for i := range 100 {
		c.Add(fmt.Sprint("v", i%5))
	}
	if c.Other() != 0 || c.ErrorBound() != 0 || c.Count("v3") != 20 || c.Total() != 100 {
		t.Fatalf("other %d bound %d v3 %d total %d", c.Other(), c.ErrorBound(), c.Count("v3"), c.Total())
	}
}

// zipf draws n values from a Zipf law over m values.
func zipf(seed uint64, n, m int) []string {
	r := rand.New(rand.NewPCG(seed, 2))
	z := rand.NewZipf(r, 1.2, 1, uint64(m-1))
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint("cat-", z.Uint64())
	}
	return out
}

func checkMisraGries(t *testing.T, c *Categorical, truth map[string]uint64) {
	t.Helper()
	bound := c.ErrorBound()
	if limit := c.Total() / uint64(c.Capacity()+1); bound > limit {
		t.Errorf("error bound %d above N/(k+1) = %d", bound, limit)
	}
	for v, n := range truth {
		est := c.Count(v)
		if est > n || n-est > bound {
			t.Errorf("%s: estimate %d, true %d, bound %d", v, est, n, bound)
		}
		if n > bound && est == 0 {
			t.Errorf("%s: true count %d above the bound %d but not kept", v, n, bound)
		}
	}
}

func TestCategoricalBoundsOneStreamAndMerged(t *testing.T) {
	vals := zipf(7, 200000, 5000)
	truth := map[string]uint64{}
	for _, v := range vals {
		truth[v]++
	}
	one := NewCategorical(DefaultCapacity)
	for _, v := range vals {
		one.Add(v)
	}
	checkMisraGries(t, one, truth)
	merged := NewCategorical(DefaultCapacity)
	for i := 0; i < len(vals); i += 2000 {
		part := NewCategorical(DefaultCapacity)
		for _, v := range vals[i : i+2000] {
			part.Add(v)
		}
		merged.Merge(part)
	}
	checkMisraGries(t, merged, truth)
	if merged.Total() != uint64(len(vals)) {
		t.Errorf("merged total %d", merged.Total())
	}
	t.Logf("one stream: bound %d, other %d; 100 merged parts: bound %d, other %d (N %d, k %d)",
		one.ErrorBound(), one.Other(), merged.ErrorBound(), merged.Other(), len(vals), DefaultCapacity)
}

func TestClipKeepsUTF8(t *testing.T) {
	long := strings.Repeat("é", 40) // 80 bytes
	c := Clip(long)
	if len(c) > MaxValueBytes || !strings.HasPrefix(long, c) || len(c) != 64 {
		t.Fatalf("clip: %d bytes %q", len(c), c)
	}
	c = Clip("a" + long)
	if len(c) != 63 {
		t.Fatalf("clip at rune boundary: %d bytes", len(c))
	}
}

func testSchema(t testing.TB) *Schema {
	s, err := NewSchema(
		[]Field{{"zeta", KindNumeric}, {"alpha", KindCategorical}, {"mid", KindNumeric}},
		[]Field{{"score", KindNumeric}, {"label", KindCategorical}},
	)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSchemaRejectsBadFields(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inputs []Field
		want   string
	}{
		{"empty name", []Field{{"", KindNumeric}}, "empty name"},
		{"duplicate", []Field{{"a", KindNumeric}, {"a", KindCategorical}}, "twice"},
		{"kind", []Field{{"a", 9}}, "unknown kind"},
		{"long name", []Field{{strings.Repeat("x", MaxNameBytes+1), KindNumeric}}, "longer than"},
	} {
		if _, err := NewSchema(tc.inputs, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to say %q", tc.name, err, tc.want)
		}
	}
}

func TestProfileObserveAndMerge(t *testing.T) {
	s := testSchema(t)
	r := NewRecorder(s, 1)
	obs := []Observation{
		{Inputs: []Value{Number(1), Category("x"), Number(2)}, Outputs: []Value{Number(0.5), Category("cat")}, Latency: 3 * time.Millisecond},
		{Inputs: []Value{Number(math.NaN()), Number(4)}, Outputs: []Value{Number(0.7)}, Latency: time.Millisecond, ErrKind: "timeout"},
	}
	for i := range obs {
		r.Record(&obs[i])
	}
	p := r.Flush()
	if p.Requests != 2 || p.Errors["timeout"] != 1 || p.Latency.Count() != 2 {
		t.Fatalf("requests %d errors %v latency count %d", p.Requests, p.Errors, p.Latency.Count())
	}
	zeta, alpha, mid := p.Input("zeta"), p.Input("alpha"), p.Input("mid")
	if zeta.Numeric.Count() != 1 || zeta.OutOfSchema != 1 {
		t.Errorf("zeta: %d values, %d out of schema", zeta.Numeric.Count(), zeta.OutOfSchema)
	}
	if alpha.Categorical.Count("x") != 1 || alpha.OutOfSchema != 1 {
		t.Errorf("alpha: x %d, %d out of schema", alpha.Categorical.Count("x"), alpha.OutOfSchema)
	}
	if mid.Numeric.Count() != 1 || mid.Missing != 1 {
		t.Errorf("mid: %d values, %d missing", mid.Numeric.Count(), mid.Missing)
	}
	if p.Output("label").Missing != 1 {
		t.Errorf("label missing %d", p.Output("label").Missing)
	}
	if r.Flush().Requests != 0 {
		t.Error("flush did not reset the window")
	}

	q := p.Clone()
	if err := q.Merge(p); err != nil {
		t.Fatal(err)
	}
	if q.Requests != 4 || q.Errors["timeout"] != 2 || q.Input("zeta").OutOfSchema != 2 || q.Input("mid").Missing != 2 || q.Input("alpha").Categorical.Total() != 2 {
		t.Errorf("merged counts wrong: %+v", q)
	}
	if p.Requests != 2 {
		t.Error("merging a clone changed the original")
	}

	// A profile with another feature set merges by name.
	other, _ := NewSchema([]Field{{"beta", KindNumeric}, {"mid", KindNumeric}}, nil)
	o := NewProfile(other)
	o.Input("mid").Observe(Number(9))
	if err := q.Merge(o); err != nil {
		t.Fatal(err)
	}
	if len(q.Inputs) != 4 || q.Input("beta") == nil || q.Input("mid").Numeric.Count() != 3 {
		t.Errorf("merge by name: %d inputs, mid count %d", len(q.Inputs), q.Input("mid").Numeric.Count())
	}
	for i := 1; i < len(q.Inputs); i++ {
		if q.Inputs[i-1].Name >= q.Inputs[i].Name {
			t.Errorf("inputs not sorted: %q, %q", q.Inputs[i-1].Name, q.Inputs[i].Name)
		}
	}

	// Kinds that differ: an error, nothing changed.
	bad, _ := NewSchema([]Field{{"mid", KindCategorical}}, nil)
	before := q.Requests
	b := NewProfile(bad)
	b.Requests = 5
	if err := q.Merge(b); !errors.Is(err, ErrKindMismatch) {
		t.Fatalf("merge of differing kinds: %v", err)
	}
	if q.Requests != before {
		t.Error("failed merge changed the profile")
	}
}

func TestErrorKindsBounded(t *testing.T) {
	p := NewProfile(nil)
	for i := range 100 {
		p.AddError(fmt.Sprint("kind", i))
	}
	if len(p.Errors) > MaxErrorKinds {
		t.Fatalf("%d error kinds", len(p.Errors))
	}
	if p.Errors[OtherErrorKind] != 100-(MaxErrorKinds-1) {
		t.Errorf("other: %d", p.Errors[OtherErrorKind])
	}
}

func TestRecorderConcurrent(t *testing.T) {
	s := testSchema(t)
	r := NewRecorder(s, 4)
	const goroutines, each = 8, 2000
	var wg sync.WaitGroup
	var flushed []*Profile
	var mu sync.Mutex
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for i := range each {
				o := Observation{
					Inputs:  []Value{Number(rng.NormFloat64()), Category(fmt.Sprint(i % 7)), Number(1)},
					Outputs: []Value{Number(rng.Float64()), Category("a")},
					Latency: time.Duration(rng.IntN(1000)) * time.Microsecond,
				}
				r.Record(&o)
				if g == 0 && i%500 == 0 {
					p := r.Flush()
					mu.Lock()
					flushed = append(flushed, p)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	total := r.Flush()
	for _, p := range flushed {
		if err := total.Merge(p); err != nil {
			t.Fatal(err)
		}
	}
	if total.Requests != goroutines*each {
		t.Fatalf("requests %d, want %d", total.Requests, goroutines*each)
	}
	for _, f := range append(total.Inputs, total.Outputs...) {
		if f.Count() != goroutines*each {
			t.Errorf("%s: %d observations", f.Name, f.Count())
		}
	}
}

func TestLargest(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	for range 500 {
		n := 1 + r.IntN(200)
		ns := make([]uint64, n)
		for i := range ns {
			ns[i] = uint64(r.IntN(10))
		}
		sorted := slices.Sorted(slices.Values(ns))
		slices.Reverse(sorted)
		k := 1 + r.IntN(n)
		if got := largest(slices.Clone(ns), k); got != sorted[k-1] {
			t.Fatalf("largest(%v, %d) = %d, want %d", ns, k, got, sorted[k-1])
		}
	}
}
