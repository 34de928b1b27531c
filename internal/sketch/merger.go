package sketch

import (
	"fmt"
	"slices"
	"strings"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/store"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Merger merges many profiles into one, with exactly the result of
// merging them one after the other with Profile.Merge (or MergeProto)
// into an empty profile, at a fraction of the cost: the leader's path for
// a cohort's windows. (One exception, shared with Profile.Merge: past
// MaxErrorKinds error kinds, which fall under OtherErrorKind depends on
// map order.)
//
// What makes it cheaper: a feature's state is found by position when the
// names line up with the previous profile's (every agent of a version has
// the same schema); categorical values are kept sorted, so a merge is a
// walk of two sorted lists instead of a hash per value (the wire form and
// a Recorder's Flush give them sorted); wire bins are summed into one
// array per sign, a loop over slices instead of a call per bin. Profile
// builds the sketches once, at the end.
//
// The zero value is not usable; call NewMerger. A Merger is not safe for
// concurrent use. Parts of a cohort merged in separate Mergers (one per
// core) and then together keep every error bound, but their categorical
// counts can differ from the in-order result's.
type Merger struct {
	requests uint64
	// errors counts by kind through pointers, so adding to a kind never
	// assigns to the map: an assignment would store the key given, which
	// may point into a WindowReader's bytes.
	errors  map[string]*uint64
	latency numAcc
	inputs  []*featAcc // sorted by name
	outputs []*featAcc
	// scratch receives a categorical merge walk's output; sorted holds a
	// decoded sketch's items in value order. Both are reused.
	scratch, sorted []Item
	// fresh holds the positions, in a merge walk's output, of values the
	// merged-in side brought; the ones kept are copied (see AddProto).
	fresh []int32
}

// NewMerger returns an empty Merger.
func NewMerger() *Merger {
	return &Merger{errors: map[string]*uint64{}}
}

// featAcc is one feature's merge state.
type featAcc struct {
	name        string
	kind        Kind
	missing     uint64
	outOfSchema uint64
	num         numAcc
	cat         catAcc
}

// Add merges p; like Profile.Merge it fails, changing nothing, when a
// feature has different kinds in p and in what was merged so far.
func (m *Merger) Add(p *Profile) error {
	if p == nil {
		return nil
	}
	if err := checkAccMergeable("input", m.inputs, p.Inputs, func(f *FeatureProfile) (string, Kind) { return f.Name, f.Kind }); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	if err := checkAccMergeable("output", m.outputs, p.Outputs, func(f *FeatureProfile) (string, Kind) { return f.Name, f.Kind }); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	m.requests += p.Requests
	// Map order, as Profile.Merge: with more kinds than MaxErrorKinds,
	// which fall under OtherErrorKind is as arbitrary there as here.
	for k, n := range p.Errors {
		m.addError(k, n)
	}
	if p.Latency != nil {
		m.latency.addNumeric(p.Latency, false)
	}
	m.inputs = mergeAccs(m, m.inputs, p.Inputs, (*FeatureProfile).name, addFeature)
	m.outputs = mergeAccs(m, m.outputs, p.Outputs, (*FeatureProfile).name, addFeature)
	return nil
}

// AddProto checks pb and merges it, straight from the wire form; like
// Profile.MergeProto it changes nothing on error. It copies every string
// it keeps, so pb may be a WindowReader's, whose strings point into the
// bytes read.
func (m *Merger) AddProto(pb *droverv1.Profile) error {
	if err := checkProfile(pb); err != nil {
		return err
	}
	return m.addChecked(pb)
}

// addChecked is AddProto for a profile already checked.
func (m *Merger) addChecked(pb *droverv1.Profile) error {
	kindOf := func(f *droverv1.FeatureProfile) (string, Kind) { return f.Name, Kind(f.Kind) }
	if err := checkAccMergeable("input", m.inputs, pb.Inputs, kindOf); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	if err := checkAccMergeable("output", m.outputs, pb.Outputs, kindOf); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	m.requests += pb.Requests
	for _, e := range pb.Errors {
		m.addError(e.Kind, e.Count)
	}
	if pb.LatencySeconds != nil {
		m.latency.addProto(pb.LatencySeconds)
	}
	m.inputs = mergeAccs(m, m.inputs, pb.Inputs, (*droverv1.FeatureProfile).GetName, addFeatureProto)
	m.outputs = mergeAccs(m, m.outputs, pb.Outputs, (*droverv1.FeatureProfile).GetName, addFeatureProto)
	return nil
}

func (f *FeatureProfile) name() string { return f.Name }

// addError is addError for the Merger's map; a new kind is copied.
func (m *Merger) addError(kind string, n uint64) {
	kind = Clip(kind)
	if c, ok := m.errors[kind]; ok {
		*c += n
		return
	}
	if kind != OtherErrorKind && len(m.errors) >= MaxErrorKinds-1 {
		kind = OtherErrorKind
		if c, ok := m.errors[kind]; ok {
			*c += n
			return
		}
	}
	m.errors[strings.Clone(kind)] = &n
}

// checkAccMergeable walks the sorted accumulators and sorted features and
// reports the first feature whose kinds differ.
func checkAccMergeable[F any](what string, a []*featAcc, b []F, nk func(F) (string, Kind)) error {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		name, kind := nk(b[j])
		switch c := strings.Compare(a[i].name, name); {
		case c < 0:
			i++
		case c > 0:
			j++
		default:
			if a[i].kind != kind {
				return fmt.Errorf("%s %q: %s with %s: %w", what, name, a[i].kind, kind, ErrKindMismatch)
			}
			i++
			j++
		}
	}
	return nil
}

// mergeAccs merges sorted features b into sorted accumulators a.
func mergeAccs[F any](m *Merger, a []*featAcc, b []F, name func(F) string, add func(*Merger, *featAcc, F, bool)) []*featAcc {
	// The common case: the same schema as the last profile, so the names
	// line up one to one and no new accumulator is needed.
	if len(a) == len(b) {
		same := true
		for i := range a {
			if a[i].name != name(b[i]) {
				same = false
				break
			}
		}
		if same {
			for i := range a {
				add(m, a[i], b[i], false)
			}
			return a
		}
	}
	out := make([]*featAcc, 0, max(len(a), len(b)))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].name < name(b[j])):
			out = append(out, a[i])
			i++
		case i == len(a) || name(b[j]) < a[i].name:
			f := &featAcc{}
			add(m, f, b[j], true)
			out = append(out, f)
			j++
		default:
			add(m, a[i], b[j], false)
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// addFeature merges f into a; first is true for a new accumulator, which
// then takes f's values as Profile.Merge's copy of a new feature does.
func addFeature(m *Merger, a *featAcc, f *FeatureProfile, first bool) {
	if first {
		a.name, a.kind = f.Name, f.Kind
		if f.Kind == KindCategorical {
			a.cat.capacity = f.Categorical.capacity
		}
	}
	a.missing += f.Missing
	a.outOfSchema += f.OutOfSchema
	if a.kind == KindNumeric {
		a.num.addNumeric(f.Numeric, first)
		return
	}
	c := f.Categorical
	items := c.items
	if !c.sorted {
		m.sorted = append(m.sorted[:0], items...)
		slices.SortFunc(m.sorted, compareItems)
		items = m.sorted
	}
	a.cat.merge(m, items, c.capacity, c.total)
}

// addFeatureProto merges a checked wire feature into a.
func addFeatureProto(m *Merger, a *featAcc, pb *droverv1.FeatureProfile, first bool) {
	if first {
		a.name, a.kind = strings.Clone(pb.Name), Kind(pb.Kind)
		if a.kind == KindCategorical {
			a.cat.capacity = int(pb.Categorical.Capacity)
		}
	}
	a.missing += pb.Missing
	a.outOfSchema += pb.OutOfSchema
	if a.kind == KindNumeric {
		a.num.addProto(pb.Numeric)
		return
	}
	a.cat.mergeProto(m, pb.Categorical)
}

func compareItems(a, b Item) int { return strings.Compare(a.Value, b.Value) }

// Profile returns the merge of every profile added so far, as a new
// profile independent of the Merger, which stays usable.
func (m *Merger) Profile() *Profile {
	p := &Profile{Requests: m.requests, Errors: make(map[string]uint64, len(m.errors)), Latency: m.latency.numeric()}
	for k, n := range m.errors {
		p.Errors[k] = *n
	}
	for _, side := range []struct {
		accs []*featAcc
		to   *[]*FeatureProfile
	}{{m.inputs, &p.Inputs}, {m.outputs, &p.Outputs}} {
		for _, a := range side.accs {
			f := &FeatureProfile{Name: a.name, Kind: a.kind, Missing: a.missing, OutOfSchema: a.outOfSchema}
			if a.kind == KindNumeric {
				f.Numeric = a.num.numeric()
			} else {
				f.Categorical = a.cat.categorical()
			}
			*side.to = append(*side.to, f)
		}
	}
	return p
}

// catAcc is a categorical sketch in merge form: the same counts as
// Categorical, its items sorted by value and no index.
type catAcc struct {
	capacity int
	total    uint64
	items    []Item
}

// merge is Categorical.Merge with o's items sorted by value: the sum of
// the two sorted lists is one walk, and the cut keeps them sorted. The
// counts after it are exactly Categorical.Merge's.
func (c *catAcc) merge(m *Merger, o []Item, capacity int, total uint64) {
	c.capacity = min(c.capacity, capacity)
	c.total += total
	c.keep(m, mergeSorted(m.scratch[:0], c.items, o, nil), nil)
}

// mergeProto is merge from the wire form, whose items are sorted and
// unique (checked).
func (c *catAcc) mergeProto(m *Merger, pb *droverv1.CategoricalSketch) {
	m.sorted = m.sorted[:0]
	for _, it := range pb.Items {
		m.sorted = append(m.sorted, Item{it.Value, it.Count})
	}
	c.capacity = min(c.capacity, int(pb.Capacity))
	c.total += pb.Total
	m.fresh = m.fresh[:0]
	out := mergeSorted(m.scratch[:0], c.items, m.sorted, &m.fresh)
	c.keep(m, out, m.fresh)
}

// mergeSorted appends to out the sum of a and b, both sorted by value;
// with fresh set, it notes there where values only b has went.
func mergeSorted(out, a, b []Item, fresh *[]int32) []Item {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		x, y := a[i].Value, b[j].Value
		switch {
		case x == y: // the common case between windows of one cohort
			out = append(out, Item{x, a[i].Count + b[j].Count})
			i++
			j++
		case x < y:
			out = append(out, a[i])
			i++
		default:
			if fresh != nil {
				*fresh = append(*fresh, int32(len(out)))
			}
			out = append(out, b[j])
			j++
		}
	}
	out = append(out, a[i:]...)
	if fresh != nil {
		for k := range len(b) - j {
			*fresh = append(*fresh, int32(len(out)+k))
		}
	}
	return append(out, b[j:]...)
}

// keep makes out, the merged sorted items, c's items after the
// Misra–Gries cut: with more than capacity values, subtract the
// (capacity+1)-th largest count from all and drop those left at zero, as
// Categorical.shrink does.
// Of the values at the positions fresh, the ones kept get a copy of their
// own string.
func (c *catAcc) keep(m *Merger, out []Item, fresh []int32) {
	if len(out) <= c.capacity {
		for _, k := range fresh {
			out[k].Value = strings.Clone(out[k].Value)
		}
	}
	if len(out) > c.capacity {
		var buf [2 * MaxCapacity]uint64
		ns := buf[:0]
		for _, it := range out {
			ns = append(ns, it.Count)
		}
		d := largest(ns, c.capacity+1)
		k := 0
		for i, it := range out {
			if it.Count > d {
				if len(fresh) > 0 && int(fresh[0]) == i {
					it.Value = strings.Clone(it.Value)
				}
				out[k] = Item{it.Value, it.Count - d}
				k++
			}
			if len(fresh) > 0 && int(fresh[0]) == i {
				fresh = fresh[1:]
			}
		}
		clear(out[k:])
		out = out[:k]
	}
	// Swap: the old items become the next merge's scratch.
	old := c.items
	c.items = out
	m.scratch = old[:0]
}

// categorical builds the sketch.
func (c *catAcc) categorical() *Categorical {
	d := NewCategorical(c.capacity)
	d.capacity = c.capacity // NewCategorical clamps; a merged capacity is already in range
	d.total = c.total
	d.sorted = true
	for _, it := range c.items {
		d.index[it.Value] = int32(len(d.items))
		d.items = append(d.items, it)
	}
	return d
}

// numAcc is a numeric sketch in merge form: exact count, sum, min and
// max; decoded sketches merge into dd with the store's own array merge
// (the fastest way to read another store's bins), wire bins into one
// array of MaxBins counts per sign that folds its lowest bins as the
// collapsing store does. Both folds keep each value at max(its index,
// highest index − MaxBins + 1), whatever the order of the merges, so the
// bins they end with together are the ones merging one by one gives.
type numAcc struct {
	count    uint64
	sum      float64
	min, max float64
	dd       *ddsketch.DDSketch // nil until a decoded sketch merges
	zero     float64            // wire zero counts
	pos, neg binAcc             // wire bins
}

// addNumeric merges o as Numeric.Merge does; first makes it take o's
// values as a Clone would.
func (a *numAcc) addNumeric(o *Numeric, first bool) {
	if o == nil {
		return
	}
	if first {
		a.sum = o.sum
		a.min, a.max = o.min, o.max
		a.count = o.count
		if o.count > 0 && o.dd != nil {
			a.mergeDD(o.dd)
		}
		return
	}
	if o.count == 0 {
		return
	}
	a.mergeDD(o.dd)
	a.addMoments(o.count, o.sum, o.min, o.max)
}

func (a *numAcc) mergeDD(dd *ddsketch.DDSketch) {
	if a.dd == nil {
		a.dd = newDD()
	}
	// Both sides use theMapping, so MergeWith cannot fail.
	_ = a.dd.MergeWith(dd)
}

func (a *numAcc) addMoments(count uint64, sum, lo, hi float64) {
	if a.count == 0 || lo < a.min {
		a.min = lo
	}
	if a.count == 0 || hi > a.max {
		a.max = hi
	}
	a.count += count
	a.sum += sum
}

// addProto merges a checked wire sketch as Numeric.mergeProto does.
func (a *numAcc) addProto(pb *droverv1.NumericSketch) {
	if pb.Count == 0 {
		return
	}
	if b := pb.Positive; b != nil {
		a.pos.addRun(int(b.Offset), b.Counts)
	}
	if b := pb.Negative; b != nil {
		a.neg.addRun(int(b.Offset), b.Counts)
	}
	a.zero += float64(pb.ZeroCount)
	a.addMoments(pb.Count, pb.Sum, pb.Min, pb.Max)
}

// numeric builds the sketch.
func (a *numAcc) numeric() *Numeric {
	n := &Numeric{count: a.count, sum: a.sum, min: a.min, max: a.max}
	if a.dd == nil && !a.pos.used && !a.neg.used && a.zero == 0 {
		return n
	}
	if a.dd != nil {
		n.dd = a.dd.Copy()
	} else {
		n.dd = newDD()
	}
	a.pos.fill(n.dd.GetPositiveValueStore())
	a.neg.fill(n.dd.GetNegativeValueStore())
	if a.zero > 0 {
		_ = n.dd.AddWithCount(0, a.zero)
	}
	return n
}

// binAcc is one sign's bins: bins[i] counts index base+i. Every non-zero
// bin lies in [lo, hi]; hi is the highest index ever added, and nothing
// below hi-MaxBins+1 is kept (it folds into that bin, as the collapsing
// store folds its lowest bins).
type binAcc struct {
	used   bool
	base   int
	lo, hi int
	bins   []float64
}

// floor is the lowest index the bins may hold once hi is the highest.
func floor(hi int) int { return hi - MaxBins + 1 }

// prepare makes room for indexes first..last (both holding non-zero
// counts) and returns the floor below which they fold.
func (b *binAcc) prepare(first, last int) int {
	if !b.used {
		if b.bins == nil {
			b.bins = make([]float64, MaxBins)
		}
		b.used = true
		b.hi = last
		b.lo = max(first, floor(last))
		b.base = b.lo - (MaxBins-(b.hi-b.lo+1))/2
		return floor(last)
	}
	hi := max(b.hi, last)
	f := floor(hi)
	lo := max(min(b.lo, first), f)
	if lo >= b.base && hi < b.base+MaxBins {
		if b.lo < f {
			// The highest index rose: fold the bins now below the floor.
			var n float64
			for i := b.lo; i < f; i++ {
				n += b.bins[i-b.base]
				b.bins[i-b.base] = 0
			}
			b.bins[f-b.base] += n
		}
		b.lo, b.hi = lo, hi
		return f
	}
	// Move the window: fold what falls below the floor, then recentre.
	var folded float64
	keepLo := b.lo
	if b.lo < f {
		for i := b.lo; i < min(f, b.hi+1); i++ {
			folded += b.bins[i-b.base]
		}
		keepLo = f
	}
	var tmp [MaxBins]float64
	base := lo - (MaxBins-(hi-lo+1))/2
	if keepLo <= b.hi {
		copy(tmp[keepLo-base:], b.bins[keepLo-b.base:b.hi-b.base+1])
	}
	copy(b.bins, tmp[:])
	if folded > 0 {
		// Something folded, so lo == f and the new window holds f.
		b.bins[f-base] += folded
	}
	b.base, b.lo, b.hi = base, lo, hi
	return f
}

// addRun adds wire counts of indexes first, first+1, ….
func (b *binAcc) addRun(first int, counts []uint64) {
	lo, hi := 0, len(counts)-1
	for lo <= hi && counts[lo] == 0 {
		lo++
	}
	for hi >= lo && counts[hi] == 0 {
		hi--
	}
	if lo > hi {
		return
	}
	counts = counts[lo : hi+1]
	first += lo
	last := first + len(counts) - 1
	f := b.prepare(first, last)
	start := 0
	if first < f {
		var n float64
		start = min(f-first, len(counts))
		for _, c := range counts[:start] {
			n += float64(c)
		}
		b.bins[f-b.base] += n
	}
	if start == len(counts) {
		return
	}
	dst := b.bins[first+start-b.base : last-b.base+1]
	src := counts[start:]
	for i := range dst {
		dst[i] += float64(src[i])
	}
}

// fill adds the bins into a store: highest and lowest first, so an empty
// store sizes its array once (the span is at most MaxBins, so it does not
// collapse).
func (b *binAcc) fill(s store.Store) {
	if !b.used {
		return
	}
	lo, hi := b.lo, b.hi
	for lo <= hi && b.bins[lo-b.base] == 0 {
		lo++
	}
	if lo > hi {
		return
	}
	s.AddWithCount(hi, b.bins[hi-b.base])
	if lo != hi {
		s.AddWithCount(lo, b.bins[lo-b.base])
	}
	for i := lo + 1; i < hi; i++ {
		s.AddWithCount(i, b.bins[i-b.base])
	}
}
