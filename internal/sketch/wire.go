package sketch

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/DataDog/sketches-go/ddsketch/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	// MaxWindowBytes bounds an encoded TelemetryWindow that DecodeWindow
	// accepts. A realistic feature takes well under 8 KiB (see
	// docs/telemetry.md); the worst case the other limits allow is about
	// 20 KiB per feature.
	MaxWindowBytes = 16 << 20
	// MaxLabelBytes bounds a window's node id, deployment, model and
	// version.
	MaxLabelBytes = 256
	// maxBinCount keeps every count exactly representable in the float64
	// the DDSketch stores use.
	maxBinCount = 1 << 53
)

// The bin indexes a value within the mapping's range can have; anything
// outside came from a different mapping or a corrupt message.
var (
	minBinIndex = theMapping.Index(theMapping.MinIndexableValue())
	maxBinIndex = theMapping.Index(theMapping.MaxIndexableValue())
)

// ToProto returns n's wire form.
func (n *Numeric) ToProto() *droverv1.NumericSketch {
	pb := &droverv1.NumericSketch{
		RelativeAccuracy: RelativeAccuracy,
		Mapping:          droverv1.SketchMapping_SKETCH_MAPPING_CUBIC,
		Count:            n.count,
		Sum:              n.sum,
		Min:              n.min,
		Max:              n.max,
	}
	if n.dd != nil {
		pb.Positive = binsToProto(n.dd.GetPositiveValueStore())
		pb.Negative = binsToProto(n.dd.GetNegativeValueStore())
		pb.ZeroCount = uint64(n.dd.GetZeroCount())
	}
	return pb
}

func binsToProto(s store.Store) *droverv1.SketchBins {
	if s.IsEmpty() {
		return nil
	}
	lo, _ := s.MinIndex()
	hi, _ := s.MaxIndex()
	b := &droverv1.SketchBins{Offset: int32(lo), Counts: make([]uint64, hi-lo+1)}
	s.ForEach(func(i int, c float64) bool {
		b.Counts[i-lo] = uint64(c)
		return false
	})
	return b
}

// NumericFromProto checks pb and returns the sketch it describes. Every
// problem is an error that names the field; nothing panics.
func NumericFromProto(pb *droverv1.NumericSketch) (*Numeric, error) {
	if err := checkNumeric(pb); err != nil {
		return nil, err
	}
	n := &Numeric{}
	n.mergeProto(pb)
	return n, nil
}

// MergeProto checks pb and adds the sketch it describes into n, straight
// from the wire form: no intermediate sketch is built. On error n is
// unchanged.
func (n *Numeric) MergeProto(pb *droverv1.NumericSketch) error {
	if err := checkNumeric(pb); err != nil {
		return err
	}
	n.mergeProto(pb)
	return nil
}

func checkNumeric(pb *droverv1.NumericSketch) error {
	if pb == nil {
		return fmt.Errorf("numeric sketch missing: %w", ErrInvalid)
	}
	if pb.Mapping != droverv1.SketchMapping_SKETCH_MAPPING_CUBIC || math.Abs(pb.RelativeAccuracy-RelativeAccuracy) > 1e-12 {
		return fmt.Errorf("numeric sketch mapping %v at relative accuracy %g: this build reads only %v at %g: %w",
			pb.Mapping, pb.RelativeAccuracy, droverv1.SketchMapping_SKETCH_MAPPING_CUBIC, RelativeAccuracy, ErrInvalid)
	}
	total := pb.ZeroCount
	if err := checkBins("positive", pb.Positive, &total); err != nil {
		return err
	}
	if err := checkBins("negative", pb.Negative, &total); err != nil {
		return err
	}
	if total != pb.Count {
		return fmt.Errorf("numeric sketch count %d, but its bins hold %d: %w", pb.Count, total, ErrInvalid)
	}
	if pb.Count == 0 {
		if pb.Sum != 0 || pb.Min != 0 || pb.Max != 0 {
			return fmt.Errorf("empty numeric sketch with sum, min or max set: %w", ErrInvalid)
		}
		return nil
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"sum", pb.Sum}, {"min", pb.Min}, {"max", pb.Max}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("numeric sketch %s is %g: %w", f.name, f.v, ErrInvalid)
		}
	}
	if pb.Min > pb.Max {
		return fmt.Errorf("numeric sketch min %g above max %g: %w", pb.Min, pb.Max, ErrInvalid)
	}
	return nil
}

func checkBins(which string, pb *droverv1.SketchBins, total *uint64) error {
	if pb == nil || len(pb.Counts) == 0 {
		return nil
	}
	if len(pb.Counts) > MaxBins {
		return fmt.Errorf("numeric sketch %s bins: %d, more than %d: %w", which, len(pb.Counts), MaxBins, ErrInvalid)
	}
	first, last := int(pb.Offset), int(pb.Offset)+len(pb.Counts)-1
	if first < minBinIndex || last > maxBinIndex {
		return fmt.Errorf("numeric sketch %s bins %d..%d outside the mapping's %d..%d: %w", which, first, last, minBinIndex, maxBinIndex, ErrInvalid)
	}
	for i, c := range pb.Counts {
		if c > maxBinCount {
			return fmt.Errorf("numeric sketch %s bin %d: count %d above 2^53: %w", which, first+i, c, ErrInvalid)
		}
		var carry uint64
		if *total, carry = bits.Add64(*total, c, 0); carry != 0 {
			return fmt.Errorf("numeric sketch %s bins: counts overflow: %w", which, ErrInvalid)
		}
	}
	return nil
}

// mergeProto adds a checked wire sketch into n.
func (n *Numeric) mergeProto(pb *droverv1.NumericSketch) {
	if pb.Count == 0 {
		return
	}
	if n.dd == nil {
		n.dd = newDD()
	}
	addBins(n.dd.GetPositiveValueStore(), pb.Positive)
	addBins(n.dd.GetNegativeValueStore(), pb.Negative)
	if pb.ZeroCount > 0 {
		_ = n.dd.AddWithCount(0, float64(pb.ZeroCount))
	}
	if n.count == 0 || pb.Min < n.min {
		n.min = pb.Min
	}
	if n.count == 0 || pb.Max > n.max {
		n.max = pb.Max
	}
	n.count += pb.Count
	n.sum += pb.Sum
}

func addBins(s store.Store, pb *droverv1.SketchBins) {
	if pb == nil {
		return
	}
	lo, hi := -1, -1
	for i, c := range pb.Counts {
		if c > 0 {
			if lo < 0 {
				lo = i
			}
			hi = i
		}
	}
	if lo < 0 {
		return
	}
	first := int(pb.Offset)
	// Into an empty store, the outermost bins go first so it sizes its
	// array once instead of growing it bin by bin.
	if s.IsEmpty() {
		s.AddWithCount(first+hi, float64(pb.Counts[hi]))
		if lo != hi {
			s.AddWithCount(first+lo, float64(pb.Counts[lo]))
		}
		for i := lo + 1; i < hi; i++ {
			s.AddWithCount(first+i, float64(pb.Counts[i]))
		}
		return
	}
	for i := lo; i <= hi; i++ {
		s.AddWithCount(first+i, float64(pb.Counts[i]))
	}
}

// ToProto returns c's wire form, items sorted by value (so a decoder
// finds duplicates by comparing neighbours).
func (c *Categorical) ToProto() *droverv1.CategoricalSketch {
	items := c.items
	if !c.sorted {
		items = slices.SortedFunc(slices.Values(c.items), compareItems)
	}
	pb := &droverv1.CategoricalSketch{Capacity: uint32(c.capacity), Total: c.total, Items: make([]*droverv1.CategoryCount, len(items))}
	for i, it := range items {
		pb.Items[i] = &droverv1.CategoryCount{Value: it.Value, Count: it.Count}
	}
	return pb
}

// CategoricalFromProto checks pb and returns the sketch it describes.
func CategoricalFromProto(pb *droverv1.CategoricalSketch) (*Categorical, error) {
	if err := checkCategorical(pb); err != nil {
		return nil, err
	}
	// Checked sorted by value, so the sketch is too.
	c := &Categorical{capacity: int(pb.Capacity), total: pb.Total, items: make([]Item, 0, len(pb.Items)), index: make(map[string]int32, len(pb.Items)), sorted: true}
	for _, it := range pb.Items {
		c.index[it.Value] = int32(len(c.items))
		c.items = append(c.items, Item{it.Value, it.Count})
	}
	return c, nil
}

// MergeProto checks pb and merges the sketch it describes into c (see
// Merge), straight from the wire form. On error c is unchanged.
func (c *Categorical) MergeProto(pb *droverv1.CategoricalSketch) error {
	if err := checkCategorical(pb); err != nil {
		return err
	}
	c.mergeProto(pb)
	return nil
}

func (c *Categorical) mergeProto(pb *droverv1.CategoricalSketch) {
	c.capacity = min(c.capacity, int(pb.Capacity))
	c.total += pb.Total
	for _, it := range pb.Items {
		c.addCount(it.Value, it.Count)
	}
	c.shrink()
}

func checkCategorical(pb *droverv1.CategoricalSketch) error {
	if pb == nil {
		return fmt.Errorf("categorical sketch missing: %w", ErrInvalid)
	}
	if pb.Capacity < 1 || pb.Capacity > MaxCapacity {
		return fmt.Errorf("categorical sketch capacity %d: want 1..%d: %w", pb.Capacity, MaxCapacity, ErrInvalid)
	}
	if len(pb.Items) > int(pb.Capacity) {
		return fmt.Errorf("categorical sketch: %d items, more than its capacity %d: %w", len(pb.Items), pb.Capacity, ErrInvalid)
	}
	var kept uint64
	for i, it := range pb.Items {
		if it == nil || it.Count == 0 {
			return fmt.Errorf("categorical sketch item %d: zero count: %w", i, ErrInvalid)
		}
		if len(it.Value) > MaxValueBytes || !utf8.ValidString(it.Value) {
			return fmt.Errorf("categorical sketch item %d: value of %d bytes, want valid UTF-8 of at most %d: %w", i, len(it.Value), MaxValueBytes, ErrInvalid)
		}
		if i > 0 && pb.Items[i-1].Value >= it.Value {
			return fmt.Errorf("categorical sketch item %d: value %q after %q: want values sorted and unique: %w", i, it.Value, pb.Items[i-1].Value, ErrInvalid)
		}
		var carry uint64
		if kept, carry = bits.Add64(kept, it.Count, 0); carry != 0 {
			return fmt.Errorf("categorical sketch: item counts overflow: %w", ErrInvalid)
		}
	}
	if kept > pb.Total {
		return fmt.Errorf("categorical sketch: items count %d, more than the total %d: %w", kept, pb.Total, ErrInvalid)
	}
	return nil
}

// ToProto returns f's wire form.
func (f *FeatureProfile) ToProto() *droverv1.FeatureProfile {
	pb := &droverv1.FeatureProfile{Name: f.Name, Kind: droverv1.FeatureKind(f.Kind), Missing: f.Missing, OutOfSchema: f.OutOfSchema}
	if f.Numeric != nil {
		pb.Numeric = f.Numeric.ToProto()
	}
	if f.Categorical != nil {
		pb.Categorical = f.Categorical.ToProto()
	}
	return pb
}

// FeatureProfileFromProto checks pb and returns the profile it describes.
func FeatureProfileFromProto(pb *droverv1.FeatureProfile) (*FeatureProfile, error) {
	if err := checkFeature(pb); err != nil {
		return nil, err
	}
	return featureFromChecked(pb), nil
}

func checkFeature(pb *droverv1.FeatureProfile) error {
	if pb == nil {
		return fmt.Errorf("feature profile missing: %w", ErrInvalid)
	}
	if err := checkName(pb.Name); err != nil {
		return fmt.Errorf("feature profile: %w: %w", err, ErrInvalid)
	}
	var err error
	switch pb.Kind {
	case droverv1.FeatureKind_FEATURE_KIND_NUMERIC:
		if pb.Categorical != nil {
			return fmt.Errorf("feature %q: numeric, but carries a categorical sketch: %w", pb.Name, ErrInvalid)
		}
		err = checkNumeric(pb.Numeric)
	case droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL:
		if pb.Numeric != nil {
			return fmt.Errorf("feature %q: categorical, but carries a numeric sketch: %w", pb.Name, ErrInvalid)
		}
		err = checkCategorical(pb.Categorical)
	default:
		return fmt.Errorf("feature %q: kind %v, want numeric or categorical: %w", pb.Name, pb.Kind, ErrInvalid)
	}
	if err != nil {
		return fmt.Errorf("feature %q: %w", pb.Name, err)
	}
	return nil
}

// featureFromChecked builds a feature profile from a checked wire form.
func featureFromChecked(pb *droverv1.FeatureProfile) *FeatureProfile {
	f := &FeatureProfile{Name: pb.Name, Kind: Kind(pb.Kind)}
	if f.Kind == KindNumeric {
		f.Numeric = NewNumeric()
	} else {
		f.Categorical = NewCategorical(int(pb.Categorical.Capacity))
	}
	f.mergeProto(pb)
	return f
}

// mergeProto adds a checked wire form of the same name and kind into f.
func (f *FeatureProfile) mergeProto(pb *droverv1.FeatureProfile) {
	f.Missing += pb.Missing
	f.OutOfSchema += pb.OutOfSchema
	if f.Kind == KindNumeric {
		f.Numeric.mergeProto(pb.Numeric)
	} else {
		f.Categorical.mergeProto(pb.Categorical)
	}
}

// ToProto returns p's wire form.
func (p *Profile) ToProto() *droverv1.Profile {
	pb := &droverv1.Profile{Requests: p.Requests}
	for _, f := range p.Inputs {
		pb.Inputs = append(pb.Inputs, f.ToProto())
	}
	for _, f := range p.Outputs {
		pb.Outputs = append(pb.Outputs, f.ToProto())
	}
	for _, e := range p.sortedErrors() {
		pb.Errors = append(pb.Errors, &droverv1.ErrorCount{Kind: e.Value, Count: e.Count})
	}
	if p.Latency != nil {
		pb.LatencySeconds = p.Latency.ToProto()
	}
	return pb
}

// ProfileFromProto checks pb and returns the profile it describes.
func ProfileFromProto(pb *droverv1.Profile) (*Profile, error) {
	if err := checkProfile(pb); err != nil {
		return nil, err
	}
	p := NewProfile(nil)
	p.mergeProto(pb)
	return p, nil
}

// MergeProto checks pb and merges the profile it describes into p (see
// Merge) straight from the wire form: the leader's path, which builds no
// sketch per window. On error p is unchanged.
func (p *Profile) MergeProto(pb *droverv1.Profile) error {
	if err := checkProfile(pb); err != nil {
		return err
	}
	for _, side := range []struct {
		what string
		fs   []*FeatureProfile
		pbs  []*droverv1.FeatureProfile
	}{{"input", p.Inputs, pb.Inputs}, {"output", p.Outputs, pb.Outputs}} {
		i, j := 0, 0
		for i < len(side.fs) && j < len(side.pbs) {
			switch c := strings.Compare(side.fs[i].Name, side.pbs[j].Name); {
			case c < 0:
				i++
			case c > 0:
				j++
			default:
				if k := Kind(side.pbs[j].Kind); side.fs[i].Kind != k {
					return fmt.Errorf("merge profile: %s %q: %s with %s: %w", side.what, side.fs[i].Name, side.fs[i].Kind, k, ErrKindMismatch)
				}
				i++
				j++
			}
		}
	}
	p.mergeProto(pb)
	return nil
}

// mergeProto merges a checked wire profile whose kinds match p's.
func (p *Profile) mergeProto(pb *droverv1.Profile) {
	p.Requests += pb.Requests
	if p.Errors == nil {
		p.Errors = map[string]uint64{}
	}
	for _, e := range pb.Errors {
		addError(p.Errors, e.Kind, e.Count)
	}
	if p.Latency == nil {
		p.Latency = NewNumeric()
	}
	if pb.LatencySeconds != nil {
		p.Latency.mergeProto(pb.LatencySeconds)
	}
	p.Inputs = mergeFeaturesProto(p.Inputs, pb.Inputs)
	p.Outputs = mergeFeaturesProto(p.Outputs, pb.Outputs)
}

// mergeFeaturesProto merges sorted checked wire features into sorted a.
func mergeFeaturesProto(a []*FeatureProfile, b []*droverv1.FeatureProfile) []*FeatureProfile {
	if len(a) == len(b) {
		same := true
		for i := range a {
			if a[i].Name != b[i].Name {
				same = false
				break
			}
		}
		if same {
			for i := range a {
				a[i].mergeProto(b[i])
			}
			return a
		}
	}
	out := make([]*FeatureProfile, 0, max(len(a), len(b)))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].Name < b[j].Name):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j].Name < a[i].Name:
			out = append(out, featureFromChecked(b[j]))
			j++
		default:
			a[i].mergeProto(b[j])
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

func checkProfile(pb *droverv1.Profile) error {
	if pb == nil {
		return fmt.Errorf("profile missing: %w", ErrInvalid)
	}
	if err := checkFeatures("input", pb.Inputs); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if err := checkFeatures("output", pb.Outputs); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	if len(pb.Errors) > MaxErrorKinds {
		return fmt.Errorf("profile: %d error kinds, more than %d: %w", len(pb.Errors), MaxErrorKinds, ErrInvalid)
	}
	var failed uint64
	for i, e := range pb.Errors {
		if e == nil || e.Kind == "" || len(e.Kind) > MaxValueBytes {
			return fmt.Errorf("profile: error kind %d: want a name of 1..%d bytes: %w", i, MaxValueBytes, ErrInvalid)
		}
		if i > 0 && pb.Errors[i-1].Kind >= e.Kind {
			return fmt.Errorf("profile: error kind %q after %q: want kinds sorted and unique: %w", e.Kind, pb.Errors[i-1].Kind, ErrInvalid)
		}
		var carry uint64
		if failed, carry = bits.Add64(failed, e.Count, 0); carry != 0 || failed > pb.Requests {
			return fmt.Errorf("profile: more failed requests than the %d requests: %w", pb.Requests, ErrInvalid)
		}
	}
	if pb.LatencySeconds != nil {
		if err := checkNumeric(pb.LatencySeconds); err != nil {
			return fmt.Errorf("profile: latency: %w", err)
		}
	}
	return nil
}

func checkFeatures(what string, pbs []*droverv1.FeatureProfile) error {
	if len(pbs) > MaxFeatures {
		return fmt.Errorf("%d %ss, more than %d: %w", len(pbs), what, MaxFeatures, ErrInvalid)
	}
	for i, pb := range pbs {
		if err := checkFeature(pb); err != nil {
			return fmt.Errorf("%s %d: %w", what, i, err)
		}
		// Sorted and unique, so merges can walk both lists in step.
		if i > 0 && pbs[i-1].Name >= pb.Name {
			return fmt.Errorf("%s %q after %q: want names sorted and unique: %w", what, pb.Name, pbs[i-1].Name, ErrInvalid)
		}
	}
	return nil
}

// Window is one instance's telemetry over [Start, End).
type Window struct {
	NodeID, Deployment, Model, Version string
	Start, End                         time.Time
	Profile                            *Profile
}

// ToProto returns w's wire form.
func (w *Window) ToProto() *droverv1.TelemetryWindow {
	return &droverv1.TelemetryWindow{
		NodeId: w.NodeID, Deployment: w.Deployment, Model: w.Model, Version: w.Version,
		Start: timestamppb.New(w.Start), End: timestamppb.New(w.End), Profile: w.Profile.ToProto(),
	}
}

// Encode returns w's binary protobuf form.
func (w *Window) Encode() ([]byte, error) {
	b, err := proto.Marshal(w.ToProto())
	if err != nil {
		return nil, fmt.Errorf("encode window: %w", err)
	}
	return b, nil
}

// WindowFromProto checks pb and returns the window it describes.
func WindowFromProto(pb *droverv1.TelemetryWindow) (*Window, error) {
	start, end, err := checkWindowHeader(pb)
	if err != nil {
		return nil, err
	}
	p, err := ProfileFromProto(pb.Profile)
	if err != nil {
		return nil, fmt.Errorf("window: %w", err)
	}
	return &Window{NodeID: pb.NodeId, Deployment: pb.Deployment, Model: pb.Model, Version: pb.Version, Start: start, End: end, Profile: p}, nil
}

// checkWindowHeader checks everything in a window but its profile.
func checkWindowHeader(pb *droverv1.TelemetryWindow) (start, end time.Time, err error) {
	if pb == nil {
		return start, end, fmt.Errorf("window missing: %w", ErrInvalid)
	}
	labels := []struct{ name, v string }{
		{"node id", pb.NodeId}, {"deployment", pb.Deployment}, {"model", pb.Model}, {"version", pb.Version},
	}
	if pb.Node != nil {
		// The node's own window: what the machine felt, no model's.
		if pb.Profile != nil || pb.Deployment != "" || pb.Model != "" || pb.Version != "" {
			return start, end, fmt.Errorf("window: node metrics come alone, without a profile, deployment, model or version: %w", ErrInvalid)
		}
		labels = labels[:1]
	}
	for _, l := range labels {
		if l.v == "" || len(l.v) > MaxLabelBytes {
			return start, end, fmt.Errorf("window %s: want 1..%d bytes, got %d: %w", l.name, MaxLabelBytes, len(l.v), ErrInvalid)
		}
	}
	for _, t := range []struct {
		name string
		ts   *timestamppb.Timestamp
		to   *time.Time
	}{{"start", pb.Start, &start}, {"end", pb.End, &end}} {
		if err := t.ts.CheckValid(); err != nil {
			return start, end, fmt.Errorf("window %s: %w: %w", t.name, err, ErrInvalid)
		}
		*t.to = t.ts.AsTime()
	}
	if !end.After(start) {
		return start, end, fmt.Errorf("window ends at %v, not after its start %v: %w", end, start, ErrInvalid)
	}
	if pb.Profile == nil && pb.Node == nil {
		return start, end, fmt.Errorf("window: profile missing: %w", ErrInvalid)
	}
	return start, end, nil
}

// DecodeWindow parses and checks an encoded TelemetryWindow.
func DecodeWindow(b []byte) (*Window, error) {
	pb, err := UnmarshalWindow(b)
	if err != nil {
		return nil, err
	}
	w, err := WindowFromProto(pb)
	if err != nil {
		return nil, fmt.Errorf("decode window: %w", err)
	}
	return w, nil
}

// UnmarshalWindow parses an encoded TelemetryWindow and checks all of it,
// building no sketch: a caller merges its profile with Profile.MergeProto.
func UnmarshalWindow(b []byte) (*droverv1.TelemetryWindow, error) {
	if len(b) > MaxWindowBytes {
		return nil, fmt.Errorf("decode window: %d bytes, more than %d: %w", len(b), MaxWindowBytes, ErrInvalid)
	}
	var pb droverv1.TelemetryWindow
	if err := proto.Unmarshal(b, &pb); err != nil {
		return nil, fmt.Errorf("decode window: %w: %w", err, ErrInvalid)
	}
	if _, _, err := checkWindowHeader(&pb); err != nil {
		return nil, fmt.Errorf("decode window: %w", err)
	}
	if pb.Node != nil {
		if err := checkNodeMetrics(pb.Node); err != nil {
			return nil, fmt.Errorf("decode window: node metrics: %w", err)
		}
		return &pb, nil
	}
	if err := checkProfile(pb.Profile); err != nil {
		return nil, fmt.Errorf("decode window: %w", err)
	}
	return &pb, nil
}
