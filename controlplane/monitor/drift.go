// Package monitor evaluates the drift and health of deployed model
// versions: it compares the telemetry sketches agents report (merged per
// cohort) with a version's reference profile and turns the differences
// into verdicts that policies act on.
//
// This file holds the drift statistics. They are pure functions of two
// sketches: PSI and Kolmogorov–Smirnov for numeric features, Jensen–Shannon
// divergence for categorical ones; docs/telemetry.md explains each and its
// error.
package monitor

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/droverhq/drover/internal/sketch"
)

// ErrEmpty: a statistic needs values on both sides.
var ErrEmpty = errors.New("sketch holds no values")

// PSISmoothing is the count added to every PSI bin on both sides, so an
// empty bin gives a large but finite term instead of an infinite one
// (the Jeffreys prior, a half count per bin): proportion_i =
// (count_i + 0.5) / (N + 0.5·bins). With thousands of values per side it
// moves PSI by well under 0.001.
const PSISmoothing = 0.5

// PSIEdges returns the bin edges PSI uses for a reference sketch: its
// deciles (10%…90%), duplicates removed, so at most 10 bins (fewer when
// the reference has point masses, e.g. a feature that is mostly 0).
func PSIEdges(ref *sketch.Numeric) ([]float64, error) {
	if ref.Count() == 0 {
		return nil, fmt.Errorf("psi edges: reference: %w", ErrEmpty)
	}
	d := ref.Distribution()
	edges := make([]float64, 0, 9)
	for i := 1; i <= 9; i++ {
		e := d.Quantile(float64(i) / 10)
		if len(edges) == 0 || e > edges[len(edges)-1] {
			edges = append(edges, e)
		}
	}
	return edges, nil
}

// PSI returns the population stability index of cur against ref on the
// reference's decile bins (PSIEdges): Σ (c_i − r_i)·ln(c_i / r_i) over the
// bins' proportions. Each sketch's share of a bin comes from its CDF at the
// edges, so its error is at most the mass of the sketch bins (1% wide)
// that contain an edge.
func PSI(ref, cur *sketch.Numeric) (float64, error) {
	if cur.Count() == 0 {
		return 0, fmt.Errorf("psi: current: %w", ErrEmpty)
	}
	edges, err := PSIEdges(ref)
	if err != nil {
		return 0, fmt.Errorf("psi: %w", err)
	}
	r := binCounts(ref.Distribution(), edges)
	c := binCounts(cur.Distribution(), edges)
	return PSIFromCounts(r, c), nil
}

// binCounts returns how many of d's values fall in (−∞,e0], (e0,e1], …,
// (e_last,∞).
func binCounts(d sketch.Distribution, edges []float64) []float64 {
	out := make([]float64, len(edges)+1)
	prev := 0.0
	for i, e := range edges {
		f := d.CDF(e) * d.Total()
		out[i] = math.Max(f-prev, 0)
		prev = math.Max(f, prev)
	}
	out[len(edges)] = math.Max(d.Total()-prev, 0)
	return out
}

// PSIFromCounts is PSI on two sets of bin counts of equal length, with
// PSISmoothing; callers with exact counts (tests, a reference built from
// raw data) use it directly.
func PSIFromCounts(ref, cur []float64) float64 {
	var nr, nc float64
	for i := range ref {
		nr += ref[i]
		nc += cur[i]
	}
	b := float64(len(ref))
	var psi float64
	for i := range ref {
		r := (ref[i] + PSISmoothing) / (nr + PSISmoothing*b)
		c := (cur[i] + PSISmoothing) / (nc + PSISmoothing*b)
		psi += (c - r) * math.Log(c/r)
	}
	return psi
}

// KSResult is a two-sample Kolmogorov–Smirnov statistic computed from
// sketches.
type KSResult struct {
	// Statistic is sup_x |F_ref(x) − F_cur(x)| of the sketches' CDFs.
	Statistic float64
	// At is an x where the supremum is reached.
	At float64
	// ErrorBound bounds |Statistic − the exact KS of the raw values|, in
	// the worst case: the largest sum, over x, of the masses of the
	// sketch bins that contain x on each side. A bin spans about 2% of |x|
	// (the 1% relative accuracy both ways), so for smooth data it is about
	// 0.02·|x|·(f_ref(x)+f_cur(x)) at the worst x: ≈0.02 for N(0,1), ≈0.08
	// for N(50,10), whose bins near the mean hold 4% each. Linear
	// interpolation inside bins does far better on smooth data: the tests
	// see errors under 0.002.
	ErrorBound float64
}

// KS returns the Kolmogorov–Smirnov statistic of two numeric sketches.
// Both CDFs are linear within each sketch bin, so their difference is
// linear between consecutive bin edges of the two sketches together and
// its supremum lies on one of those edges (or just left of one, at a point
// mass): evaluating every edge finds it exactly.
func KS(ref, cur *sketch.Numeric) (KSResult, error) {
	if ref.Count() == 0 || cur.Count() == 0 {
		return KSResult{}, fmt.Errorf("ks: %w", ErrEmpty)
	}
	dr, dc := ref.Distribution(), cur.Distribution()
	grid := make([]float64, 0, 2*(len(dr.Bins())+len(dc.Bins())))
	for _, d := range []sketch.Distribution{dr, dc} {
		for _, b := range d.Bins() {
			grid = append(grid, b.Lo, b.Hi)
		}
	}
	slices.Sort(grid)
	grid = slices.Compact(grid)
	var res KSResult
	for i, x := range grid {
		for _, diff := range []float64{
			math.Abs(dr.CDF(x) - dc.CDF(x)),
			math.Abs(dr.CDFBelow(x) - dc.CDFBelow(x)),
		} {
			if diff > res.Statistic {
				res.Statistic, res.At = diff, x
			}
		}
		// At an edge the linear CDF equals the cumulative count, so the
		// error peaks inside intervals: one bin per side covers each.
		if i > 0 {
			mid := grid[i-1] + (x-grid[i-1])/2
			res.ErrorBound = math.Max(res.ErrorBound, dr.BinMass(mid)+dc.BinMass(mid))
		}
	}
	res.ErrorBound = math.Min(res.ErrorBound, 1)
	return res, nil
}

// OtherCategory names the bucket JS compares for the values a categorical
// sketch did not keep.
const OtherCategory = "\x00other"

// JS returns the Jensen–Shannon divergence, base 2 (0 for equal
// distributions, 1 for disjoint ones), between two categorical sketches.
// The distributions are over the values either side kept plus one "other"
// bucket holding each side's unattributed count; a value kept on one side
// only counts 0 on the other (its mass there sits in "other"). With at
// most k distinct values the sketches are exact and so is JS.
func JS(ref, cur *sketch.Categorical) (float64, error) {
	if ref.Total() == 0 || cur.Total() == 0 {
		return 0, fmt.Errorf("js: %w", ErrEmpty)
	}
	p := shares(ref)
	q := shares(cur)
	return JSFromShares(p, q), nil
}

func shares(c *sketch.Categorical) map[string]float64 {
	n := float64(c.Total())
	m := map[string]float64{OtherCategory: float64(c.Other()) / n}
	for _, it := range c.Items() {
		m[it.Value] = float64(it.Count) / n
	}
	return m
}

// JSFromShares is the Jensen–Shannon divergence (base 2) of two
// distributions given as shares per category (each summing to 1).
func JSFromShares(p, q map[string]float64) float64 {
	var js float64
	term := func(a, m float64) float64 {
		if a == 0 {
			return 0
		}
		return a * math.Log2(a/m)
	}
	for k, a := range p {
		b := q[k]
		m := (a + b) / 2
		js += term(a, m)/2 + term(b, m)/2
	}
	for k, b := range q {
		if _, seen := p[k]; !seen {
			js += term(b, b/2) / 2
		}
	}
	// Rounding can leave a hair outside [0,1].
	return math.Min(math.Max(js, 0), 1)
}
