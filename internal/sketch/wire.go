package sketch

import (
	"fmt"
	"math"
	"math/bits"
	"time"
	"unicode/utf8"

	"github.com/DataDog/sketches-go/ddsketch"
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
	if pb == nil {
		return nil, fmt.Errorf("numeric sketch missing: %w", ErrInvalid)
	}
	if pb.Mapping != droverv1.SketchMapping_SKETCH_MAPPING_CUBIC || math.Abs(pb.RelativeAccuracy-RelativeAccuracy) > 1e-12 {
		return nil, fmt.Errorf("numeric sketch mapping %v at relative accuracy %g: this build reads only %v at %g: %w",
			pb.Mapping, pb.RelativeAccuracy, droverv1.SketchMapping_SKETCH_MAPPING_CUBIC, RelativeAccuracy, ErrInvalid)
	}
	total := pb.ZeroCount
	pos, err := binsFromProto("positive", pb.Positive, &total)
	if err != nil {
		return nil, err
	}
	neg, err := binsFromProto("negative", pb.Negative, &total)
	if err != nil {
		return nil, err
	}
	if total != pb.Count {
		return nil, fmt.Errorf("numeric sketch count %d, but its bins hold %d: %w", pb.Count, total, ErrInvalid)
	}
	n := &Numeric{count: pb.Count}
	if pb.Count == 0 {
		if pb.Sum != 0 || pb.Min != 0 || pb.Max != 0 {
			return nil, fmt.Errorf("empty numeric sketch with sum, min or max set: %w", ErrInvalid)
		}
		return n, nil
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"sum", pb.Sum}, {"min", pb.Min}, {"max", pb.Max}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return nil, fmt.Errorf("numeric sketch %s is %g: %w", f.name, f.v, ErrInvalid)
		}
	}
	if pb.Min > pb.Max {
		return nil, fmt.Errorf("numeric sketch min %g above max %g: %w", pb.Min, pb.Max, ErrInvalid)
	}
	n.sum, n.min, n.max = pb.Sum, pb.Min, pb.Max
	n.dd = ddsketch.NewDDSketch(theMapping, pos, neg)
	if pb.ZeroCount > 0 {
		_ = n.dd.AddWithCount(0, float64(pb.ZeroCount))
	}
	return n, nil
}

func binsFromProto(which string, pb *droverv1.SketchBins, total *uint64) (*store.CollapsingLowestDenseStore, error) {
	s := store.NewCollapsingLowestDenseStore(MaxBins)
	if pb == nil || len(pb.Counts) == 0 {
		return s, nil
	}
	if len(pb.Counts) > MaxBins {
		return nil, fmt.Errorf("numeric sketch %s bins: %d, more than %d: %w", which, len(pb.Counts), MaxBins, ErrInvalid)
	}
	first, last := int(pb.Offset), int(pb.Offset)+len(pb.Counts)-1
	if first < minBinIndex || last > maxBinIndex {
		return nil, fmt.Errorf("numeric sketch %s bins %d..%d outside the mapping's %d..%d: %w", which, first, last, minBinIndex, maxBinIndex, ErrInvalid)
	}
	// Touch the outermost non-empty bins first so the store sizes its
	// array once instead of growing it bin by bin.
	for _, i := range []int{len(pb.Counts) - 1, 0} {
		if c := pb.Counts[i]; c > 0 && c <= maxBinCount {
			s.AddWithCount(first+i, 0.5)
			s.AddWithCount(first+i, -0.5)
		}
	}
	for i, c := range pb.Counts {
		if c > maxBinCount {
			return nil, fmt.Errorf("numeric sketch %s bin %d: count %d above 2^53: %w", which, first+i, c, ErrInvalid)
		}
		var carry uint64
		if *total, carry = bits.Add64(*total, c, 0); carry != 0 {
			return nil, fmt.Errorf("numeric sketch %s bins: counts overflow: %w", which, ErrInvalid)
		}
		if c > 0 {
			s.AddWithCount(first+i, float64(c))
		}
	}
	return s, nil
}

// ToProto returns c's wire form, items largest first.
func (c *Categorical) ToProto() *droverv1.CategoricalSketch {
	pb := &droverv1.CategoricalSketch{Capacity: uint32(c.capacity), Total: c.total}
	for _, it := range c.Items() {
		pb.Items = append(pb.Items, &droverv1.CategoryCount{Value: it.Value, Count: it.Count})
	}
	return pb
}

// CategoricalFromProto checks pb and returns the sketch it describes.
func CategoricalFromProto(pb *droverv1.CategoricalSketch) (*Categorical, error) {
	if pb == nil {
		return nil, fmt.Errorf("categorical sketch missing: %w", ErrInvalid)
	}
	if pb.Capacity < 1 || pb.Capacity > MaxCapacity {
		return nil, fmt.Errorf("categorical sketch capacity %d: want 1..%d: %w", pb.Capacity, MaxCapacity, ErrInvalid)
	}
	if len(pb.Items) > int(pb.Capacity) {
		return nil, fmt.Errorf("categorical sketch: %d items, more than its capacity %d: %w", len(pb.Items), pb.Capacity, ErrInvalid)
	}
	c := &Categorical{capacity: int(pb.Capacity), total: pb.Total, items: make([]Item, 0, len(pb.Items)), index: make(map[string]int32, len(pb.Items))}
	var kept uint64
	for i, it := range pb.Items {
		if it == nil || it.Count == 0 {
			return nil, fmt.Errorf("categorical sketch item %d: zero count: %w", i, ErrInvalid)
		}
		if len(it.Value) > MaxValueBytes || !utf8.ValidString(it.Value) {
			return nil, fmt.Errorf("categorical sketch item %d: value of %d bytes, want valid UTF-8 of at most %d: %w", i, len(it.Value), MaxValueBytes, ErrInvalid)
		}
		if _, dup := c.index[it.Value]; dup {
			return nil, fmt.Errorf("categorical sketch item %d: value %q listed twice: %w", i, it.Value, ErrInvalid)
		}
		var carry uint64
		if kept, carry = bits.Add64(kept, it.Count, 0); carry != 0 {
			return nil, fmt.Errorf("categorical sketch: item counts overflow: %w", ErrInvalid)
		}
		c.index[it.Value] = int32(len(c.items))
		c.items = append(c.items, Item{it.Value, it.Count})
	}
	if kept > pb.Total {
		return nil, fmt.Errorf("categorical sketch: items count %d, more than the total %d: %w", kept, pb.Total, ErrInvalid)
	}
	return c, nil
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
	if pb == nil {
		return nil, fmt.Errorf("feature profile missing: %w", ErrInvalid)
	}
	if err := checkName(pb.Name); err != nil {
		return nil, fmt.Errorf("feature profile: %w: %w", err, ErrInvalid)
	}
	f := &FeatureProfile{Name: pb.Name, Kind: Kind(pb.Kind), Missing: pb.Missing, OutOfSchema: pb.OutOfSchema}
	var err error
	switch pb.Kind {
	case droverv1.FeatureKind_FEATURE_KIND_NUMERIC:
		if pb.Categorical != nil {
			return nil, fmt.Errorf("feature %q: numeric, but carries a categorical sketch: %w", pb.Name, ErrInvalid)
		}
		f.Numeric, err = NumericFromProto(pb.Numeric)
	case droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL:
		if pb.Numeric != nil {
			return nil, fmt.Errorf("feature %q: categorical, but carries a numeric sketch: %w", pb.Name, ErrInvalid)
		}
		f.Categorical, err = CategoricalFromProto(pb.Categorical)
	default:
		return nil, fmt.Errorf("feature %q: kind %v, want numeric or categorical: %w", pb.Name, pb.Kind, ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("feature %q: %w", pb.Name, err)
	}
	return f, nil
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
	if pb == nil {
		return nil, fmt.Errorf("profile missing: %w", ErrInvalid)
	}
	p := &Profile{Requests: pb.Requests, Errors: make(map[string]uint64, len(pb.Errors)), Latency: NewNumeric()}
	var err error
	if p.Inputs, err = featuresFromProto("input", pb.Inputs); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if p.Outputs, err = featuresFromProto("output", pb.Outputs); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if len(pb.Errors) > MaxErrorKinds {
		return nil, fmt.Errorf("profile: %d error kinds, more than %d: %w", len(pb.Errors), MaxErrorKinds, ErrInvalid)
	}
	var failed uint64
	for i, e := range pb.Errors {
		if e == nil || e.Kind == "" || len(e.Kind) > MaxValueBytes {
			return nil, fmt.Errorf("profile: error kind %d: want a name of 1..%d bytes: %w", i, MaxValueBytes, ErrInvalid)
		}
		if _, dup := p.Errors[e.Kind]; dup {
			return nil, fmt.Errorf("profile: error kind %q listed twice: %w", e.Kind, ErrInvalid)
		}
		var carry uint64
		if failed, carry = bits.Add64(failed, e.Count, 0); carry != 0 || failed > pb.Requests {
			return nil, fmt.Errorf("profile: more failed requests than the %d requests: %w", pb.Requests, ErrInvalid)
		}
		p.Errors[e.Kind] = e.Count
	}
	if pb.LatencySeconds != nil {
		if p.Latency, err = NumericFromProto(pb.LatencySeconds); err != nil {
			return nil, fmt.Errorf("profile: latency: %w", err)
		}
	}
	return p, nil
}

func featuresFromProto(what string, pbs []*droverv1.FeatureProfile) ([]*FeatureProfile, error) {
	if len(pbs) > MaxFeatures {
		return nil, fmt.Errorf("%d %ss, more than %d: %w", len(pbs), what, MaxFeatures, ErrInvalid)
	}
	out := make([]*FeatureProfile, 0, len(pbs))
	for i, pb := range pbs {
		f, err := FeatureProfileFromProto(pb)
		if err != nil {
			return nil, fmt.Errorf("%s %d: %w", what, i, err)
		}
		// Sorted and unique, so merges can walk both lists in step.
		if i > 0 && out[i-1].Name >= f.Name {
			return nil, fmt.Errorf("%s %q after %q: want names sorted and unique: %w", what, f.Name, out[i-1].Name, ErrInvalid)
		}
		out = append(out, f)
	}
	return out, nil
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
	if pb == nil {
		return nil, fmt.Errorf("window missing: %w", ErrInvalid)
	}
	w := &Window{NodeID: pb.NodeId, Deployment: pb.Deployment, Model: pb.Model, Version: pb.Version}
	for _, l := range []struct{ name, v string }{
		{"node id", pb.NodeId}, {"deployment", pb.Deployment}, {"model", pb.Model}, {"version", pb.Version},
	} {
		if l.v == "" || len(l.v) > MaxLabelBytes {
			return nil, fmt.Errorf("window %s: want 1..%d bytes, got %d: %w", l.name, MaxLabelBytes, len(l.v), ErrInvalid)
		}
	}
	for _, t := range []struct {
		name string
		ts   *timestamppb.Timestamp
		to   *time.Time
	}{{"start", pb.Start, &w.Start}, {"end", pb.End, &w.End}} {
		if err := t.ts.CheckValid(); err != nil {
			return nil, fmt.Errorf("window %s: %w: %w", t.name, err, ErrInvalid)
		}
		*t.to = t.ts.AsTime()
	}
	if !w.End.After(w.Start) {
		return nil, fmt.Errorf("window ends at %v, not after its start %v: %w", w.End, w.Start, ErrInvalid)
	}
	p, err := ProfileFromProto(pb.Profile)
	if err != nil {
		return nil, fmt.Errorf("window: %w", err)
	}
	w.Profile = p
	return w, nil
}

// DecodeWindow parses and checks an encoded TelemetryWindow.
func DecodeWindow(b []byte) (*Window, error) {
	if len(b) > MaxWindowBytes {
		return nil, fmt.Errorf("decode window: %d bytes, more than %d: %w", len(b), MaxWindowBytes, ErrInvalid)
	}
	var pb droverv1.TelemetryWindow
	if err := proto.Unmarshal(b, &pb); err != nil {
		return nil, fmt.Errorf("decode window: %w: %w", err, ErrInvalid)
	}
	w, err := WindowFromProto(&pb)
	if err != nil {
		return nil, fmt.Errorf("decode window: %w", err)
	}
	return w, nil
}
