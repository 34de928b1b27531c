// Package sketch holds the shared sketch types used by agents and servers:
// mergeable summaries of what a model sees (numeric and categorical
// features, outputs, latency) that an agent fills per telemetry window and
// the leader merges and compares with a model version's reference profile.
//
// Every sketch here has a bounded size whatever the traffic, merges
// exactly for counts, and has a wire form in proto/drover/v1/telemetry.proto
// whose decoder validates everything it reads.
package sketch

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

const (
	// RelativeAccuracy is the numeric sketch's guarantee: a quantile it
	// returns is within 1% of the true value's magnitude (for values whose
	// bins were not collapsed, see MaxBins).
	RelativeAccuracy = 0.01
	// MaxBins bounds each of the positive and negative bin stores. At 1%
	// one store covers a dynamic range of about e^(1024·0.0199) ≈ 7·10^8,
	// e.g. 10^-4 to 7·10^4; values smaller in magnitude than that window
	// are collapsed into its lowest bin, so only they lose the guarantee.
	MaxBins = 1024
)

// Errors of the sketch package; callers match them with errors.Is.
var (
	// ErrNotFinite: a numeric sketch takes finite values only; NaN and ±Inf
	// are counted as out of schema by a FeatureProfile instead.
	ErrNotFinite = errors.New("value is not finite")
	// ErrKindMismatch: two profiles of one feature hold different kinds.
	ErrKindMismatch = errors.New("feature kinds differ")
	// ErrInvalid: a decoded sketch or profile breaks an invariant.
	ErrInvalid = errors.New("invalid sketch")
)

// The one index mapping every numeric sketch uses, so any two merge. The
// cubic approximation of log2 avoids a math.Log per value.
var theMapping = func() mapping.IndexMapping {
	m, err := mapping.NewCubicallyInterpolatedMapping(RelativeAccuracy)
	if err != nil {
		panic(err) // a constant accuracy in (0,1) never fails
	}
	return m
}()

// Numeric is a DDSketch with a collapsing store and exact count, sum,
// minimum and maximum. The zero value is an empty sketch ready to use.
// A Numeric is not safe for concurrent use; Recorder shards them.
type Numeric struct {
	dd       *ddsketch.DDSketch // nil until the first value or merge
	count    uint64
	sum      float64
	min, max float64
}

// NewNumeric returns an empty numeric sketch.
func NewNumeric() *Numeric { return &Numeric{} }

func newDD() *ddsketch.DDSketch {
	return ddsketch.NewDDSketch(theMapping, store.NewCollapsingLowestDenseStore(MaxBins), store.NewCollapsingLowestDenseStore(MaxBins))
}

// Add records one value. It returns ErrNotFinite for NaN or ±Inf and
// leaves the sketch unchanged.
func (n *Numeric) Add(x float64) error {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return ErrNotFinite
	}
	if n.dd == nil {
		n.dd = newDD()
	}
	// Finite values beyond the mapping's range (|x| > ~10^308/γ) cannot
	// be indexed; they are as unusable as infinities.
	if err := n.dd.Add(x); err != nil {
		return fmt.Errorf("add %g: %w", x, ErrNotFinite)
	}
	if n.count == 0 || x < n.min {
		n.min = x
	}
	if n.count == 0 || x > n.max {
		n.max = x
	}
	n.count++
	n.sum += x
	return nil
}

// Merge adds o's values into n. Counts, sum, min and max stay exact; the
// bins are the sum of both sketches' bins, so the relative accuracy holds
// for the merged data as it did for each.
func (n *Numeric) Merge(o *Numeric) {
	if o == nil || o.count == 0 {
		return
	}
	if n.dd == nil {
		n.dd = newDD()
	}
	// Both sides use theMapping, so MergeWith cannot fail.
	_ = n.dd.MergeWith(o.dd)
	if n.count == 0 || o.min < n.min {
		n.min = o.min
	}
	if n.count == 0 || o.max > n.max {
		n.max = o.max
	}
	n.count += o.count
	n.sum += o.sum
}

// Clone returns an independent copy.
func (n *Numeric) Clone() *Numeric {
	c := *n
	if n.dd != nil {
		c.dd = n.dd.Copy()
	}
	return &c
}

// Count is the exact number of values added.
func (n *Numeric) Count() uint64 { return n.count }

// Sum is the exact sum of the values (up to float64 rounding).
func (n *Numeric) Sum() float64 { return n.sum }

// Min is the smallest value, 0 when empty.
func (n *Numeric) Min() float64 { return n.min }

// Max is the largest value, 0 when empty.
func (n *Numeric) Max() float64 { return n.max }

// Mean is Sum/Count, 0 when empty.
func (n *Numeric) Mean() float64 {
	if n.count == 0 {
		return 0
	}
	return n.sum / float64(n.count)
}

// Quantile returns the value at quantile q in [0,1], within
// RelativeAccuracy of the true one, clamped to the exact min and max.
func (n *Numeric) Quantile(q float64) (float64, error) {
	if n.count == 0 {
		return 0, errors.New("quantile of an empty sketch")
	}
	if !(q >= 0 && q <= 1) {
		return 0, fmt.Errorf("quantile %g: want a number in [0,1]", q)
	}
	v, err := n.dd.GetValueAtQuantile(q)
	if err != nil {
		return 0, fmt.Errorf("quantile %g: %w", q, err)
	}
	return math.Min(math.Max(v, n.min), n.max), nil
}

// CDF returns the share of values ≤ x. It walks every bin; to evaluate
// many points, take a Distribution once.
func (n *Numeric) CDF(x float64) float64 { return n.Distribution().CDF(x) }

// Bin is one interval of a Distribution: Count values lie in [Lo, Hi]
// (a point mass when Lo == Hi).
type Bin struct {
	Lo, Hi float64
	Count  float64
}

// Distribution is a numeric sketch laid out as sorted, non-overlapping
// bins for evaluating its cumulative distribution. Within a bin the CDF is
// taken as linear, so its error at any x is at most the mass of the bin
// that contains x (BinMass): a bin spans a relative width of about
// 2·RelativeAccuracy, so for a smooth density f the error is about
// 2·0.01·|x|·f(x).
type Distribution struct {
	bins   []Bin
	before []float64 // count of all bins before bins[i]
	total  float64
}

// Distribution lays the sketch out for CDF evaluation. An empty sketch
// gives an empty Distribution whose CDF is 0 everywhere.
func (n *Numeric) Distribution() Distribution {
	if n.count == 0 || n.dd == nil {
		return Distribution{}
	}
	var neg, pos []Bin
	// Negative store: index i holds values v with -v in bin i; the lowest
	// index (closest to zero) reaches up to zero, because collapsing folds
	// every smaller magnitude into it.
	n.dd.GetNegativeValueStore().ForEach(func(i int, c float64) bool {
		neg = append(neg, Bin{Lo: -theMapping.LowerBound(i + 1), Hi: -theMapping.LowerBound(i), Count: c})
		return false
	})
	if len(neg) > 0 {
		neg[0].Hi = 0
	}
	n.dd.GetPositiveValueStore().ForEach(func(i int, c float64) bool {
		pos = append(pos, Bin{Lo: theMapping.LowerBound(i), Hi: theMapping.LowerBound(i + 1), Count: c})
		return false
	})
	if len(pos) > 0 {
		pos[0].Lo = 0
	}
	bins := make([]Bin, 0, len(neg)+len(pos)+1)
	for i := len(neg) - 1; i >= 0; i-- {
		bins = append(bins, neg[i])
	}
	if z := n.dd.GetZeroCount(); z > 0 {
		bins = append(bins, Bin{Lo: 0, Hi: 0, Count: z})
	}
	bins = append(bins, pos...)
	// The exact extremes narrow the outer bins (and the collapsed ones).
	for i := range bins {
		b := &bins[i]
		b.Lo = math.Min(math.Max(b.Lo, n.min), n.max)
		b.Hi = math.Min(math.Max(b.Hi, n.min), n.max)
	}
	d := Distribution{bins: bins, before: make([]float64, len(bins))}
	for i, b := range bins {
		d.before[i] = d.total
		d.total += b.Count
	}
	return d
}

// Bins returns the distribution's bins in increasing order; callers must
// not modify them.
func (d Distribution) Bins() []Bin { return d.bins }

// Total is the number of values the distribution holds.
func (d Distribution) Total() float64 { return d.total }

// find returns the index of the last bin whose Lo ≤ x, or -1.
func (d Distribution) find(x float64) int {
	return sort.Search(len(d.bins), func(i int) bool { return d.bins[i].Lo > x }) - 1
}

// CDF returns the share of values ≤ x.
func (d Distribution) CDF(x float64) float64 {
	if d.total == 0 {
		return 0
	}
	i := d.find(x)
	if i < 0 {
		return 0
	}
	b := d.bins[i]
	c := d.before[i] + b.Count
	if x < b.Hi && b.Hi > b.Lo {
		c = d.before[i] + b.Count*(x-b.Lo)/(b.Hi-b.Lo)
	}
	return math.Min(c/d.total, 1)
}

// CDFBelow returns the share of values < x: it differs from CDF only at a
// point mass (exact zeros, or a sketch whose values are all equal).
func (d Distribution) CDFBelow(x float64) float64 {
	if d.total == 0 {
		return 0
	}
	i := sort.Search(len(d.bins), func(i int) bool { return d.bins[i].Lo >= x }) - 1
	if i < 0 {
		return 0
	}
	b := d.bins[i]
	c := d.before[i] + b.Count
	if x <= b.Hi && b.Hi > b.Lo {
		c = d.before[i] + b.Count*(x-b.Lo)/(b.Hi-b.Lo)
	}
	return math.Min(c/d.total, 1)
}

// BinMass returns the share of values in the bins that contain x: the
// bound on CDF's error at x.
func (d Distribution) BinMass(x float64) float64 {
	if d.total == 0 {
		return 0
	}
	var m float64
	for i := d.find(x); i >= 0 && d.bins[i].Hi >= x; i-- {
		m += d.bins[i].Count
		if d.bins[i].Lo < x {
			break
		}
	}
	return m / d.total
}

// Quantile returns the x at which the linear-within-bin CDF reaches q,
// the inverse of CDF.
func (d Distribution) Quantile(q float64) float64 {
	if d.total == 0 {
		return 0
	}
	r := q * d.total
	i := sort.Search(len(d.bins), func(i int) bool { return d.before[i]+d.bins[i].Count >= r })
	if i >= len(d.bins) {
		return d.bins[len(d.bins)-1].Hi
	}
	b := d.bins[i]
	if b.Count == 0 || b.Hi == b.Lo {
		return b.Lo
	}
	return b.Lo + (b.Hi-b.Lo)*math.Max(0, r-d.before[i])/b.Count
}
