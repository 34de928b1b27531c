package sketch

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// realisticFeatures are the feature shapes the size figures use: a
// standardized feature (bins down to tiny magnitudes on both signs), a
// positive one like an age, a heavy-tailed one like a price, small counts,
// a probability, and categorical ones (country-like codes, a long tail of
// ids).
var realisticFeatures = []struct {
	name string
	kind Kind
	draw func(r *rand.Rand) Value
}{
	{"standardized", KindNumeric, func(r *rand.Rand) Value { return Number(r.NormFloat64()) }},
	{"age", KindNumeric, func(r *rand.Rand) Value { return Number(math.Round(40 + 12*r.NormFloat64())) }},
	{"price", KindNumeric, func(r *rand.Rand) Value { return Number(math.Exp(3 + 1.5*r.NormFloat64())) }},
	{"clicks", KindNumeric, func(r *rand.Rand) Value { return Number(float64(r.IntN(20))) }},
	{"score", KindNumeric, func(r *rand.Rand) Value { return Number(r.Float64()) }},
	{"country", KindCategorical, func(r *rand.Rand) Value { return Category(fmt.Sprintf("C%02d", int(math.Abs(r.NormFloat64()*15)))) }},
	{"product_id", KindCategorical, func(r *rand.Rand) Value { return Category(fmt.Sprintf("sku-%08d", int(math.Exp(r.ExpFloat64()*3)))) }},
}

func realisticSchema(t testing.TB) *Schema {
	var fs []Field
	for _, f := range realisticFeatures {
		fs = append(fs, Field{f.name, f.kind})
	}
	s, err := NewSchema(fs, []Field{{"prediction", KindNumeric}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func realisticProfile(t testing.TB, seed uint64, requests int) *Profile {
	r := rand.New(rand.NewPCG(seed, 9))
	rec := NewRecorder(realisticSchema(t), 1)
	in := make([]Value, len(realisticFeatures))
	for range requests {
		for i, f := range realisticFeatures {
			in[i] = f.draw(r)
		}
		o := Observation{Inputs: in, Outputs: []Value{Number(r.Float64())}, Latency: time.Duration(2e6 * math.Exp(0.5*r.NormFloat64()))}
		if r.IntN(100) == 0 {
			o.ErrKind = "timeout"
		}
		rec.Record(&o)
	}
	return rec.Flush()
}

func testWindow(p *Profile) *Window {
	start := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	return &Window{NodeID: "node-1", Deployment: "fraud", Model: "fraud-model", Version: "v3", Start: start, End: start.Add(time.Minute), Profile: p}
}

func TestWindowRoundTrip(t *testing.T) {
	p := realisticProfile(t, 1, 5000)
	b, err := testWindow(p).Encode()
	if err != nil {
		t.Fatal(err)
	}
	w, err := DecodeWindow(b)
	if err != nil {
		t.Fatal(err)
	}
	got := w.Profile
	if got.Requests != p.Requests || got.Errors["timeout"] != p.Errors["timeout"] || len(got.Inputs) != len(p.Inputs) {
		t.Fatalf("round trip changed counts")
	}
	for i, f := range p.Inputs {
		g := got.Inputs[i]
		if g.Name != f.Name || g.Count() != f.Count() || g.Missing != f.Missing || g.OutOfSchema != f.OutOfSchema {
			t.Errorf("%s: round trip changed counts", f.Name)
		}
		if f.Kind == KindNumeric {
			for _, q := range []float64{0.01, 0.5, 0.99} {
				a, _ := f.Numeric.Quantile(q)
				b, _ := g.Numeric.Quantile(q)
				if a != b {
					t.Errorf("%s q%g: %g before, %g after", f.Name, q, a, b)
				}
			}
			if f.Numeric.Sum() != g.Numeric.Sum() || f.Numeric.Min() != g.Numeric.Min() {
				t.Errorf("%s: sum or min changed", f.Name)
			}
		} else if fmt.Sprint(f.Categorical.Items()) != fmt.Sprint(g.Categorical.Items()) {
			t.Errorf("%s: items changed", f.Name)
		}
	}
	// Re-encoding the decoded window gives the same bytes.
	b2, _ := w.Encode()
	if string(b) != string(b2) {
		t.Error("re-encoding differs")
	}
}

// TestEncodedSizePerFeature measures the wire size of each realistic
// feature for windows of increasing traffic and holds it to 8 KiB.
func TestEncodedSizePerFeature(t *testing.T) {
	for _, n := range []int{1000, 10000, 100000} {
		p := realisticProfile(t, 2, n)
		line := fmt.Sprintf("%6d requests:", n)
		for _, f := range append(p.Inputs, p.Outputs...) {
			size := proto.Size(f.ToProto())
			line += fmt.Sprintf(" %s %d B;", f.Name, size)
			if size > 8<<10 {
				t.Errorf("%s at %d requests: %d bytes, above the 8 KiB target", f.Name, n, size)
			}
		}
		b, _ := testWindow(p).Encode()
		t.Logf("%s latency %d B; window %d B", line, proto.Size(p.Latency.ToProto()), len(b))
	}
}

// worstNumeric is a numeric feature with every bin of both signs in use,
// each bin holding perBin values, and a name of the longest length.
func worstNumeric(t *testing.T, perBin uint64) *FeatureProfile {
	t.Helper()
	counts := make([]uint64, MaxBins)
	for i := range counts {
		counts[i] = perBin
	}
	first := int32(theMapping.Index(1e-3))
	pb := &droverv1.NumericSketch{
		RelativeAccuracy: RelativeAccuracy, Mapping: droverv1.SketchMapping_SKETCH_MAPPING_CUBIC,
		Positive:  &droverv1.SketchBins{Offset: first, Counts: counts},
		Negative:  &droverv1.SketchBins{Offset: first, Counts: counts},
		ZeroCount: perBin, Count: perBin * (2*MaxBins + 1),
		Sum: -math.Pi * 1e300, Min: -math.MaxFloat64 / 3, Max: math.MaxFloat64 / 3,
	}
	n, err := NumericFromProto(pb)
	if err != nil {
		t.Fatal(err)
	}
	return &FeatureProfile{Name: strings.Repeat("n", MaxNameBytes), Kind: KindNumeric, Numeric: n, Missing: math.MaxUint64 / 4, OutOfSchema: math.MaxUint64 / 4}
}

// The 8 KiB per feature per window bound in the worst case an agent can
// produce: every numeric bin of both signs in use, and a categorical
// sketch at the agents' capacity with values of the longest length and
// counts of the largest encoding. Numeric bins cost their count's varint
// size: every bin under 2^21 values keeps the feature at 6.2 KiB, and
// passing 8 KiB takes more than 1,800 bins of 2^21 values each, some 3.8
// billion values of one feature in one window. The largest the decoder
// accepts (8-byte counts, up to 2^53 per bin) is about twice the target.
func TestEncodedSizeWorstCase(t *testing.T) {
	for _, c := range []struct {
		perBin uint64
		within bool
	}{{1, true}, {1<<14 - 1, true}, {1<<21 - 1, true}, {1 << 21, false}, {1 << 52, false}} {
		f := worstNumeric(t, c.perBin)
		size := proto.Size(f.ToProto())
		t.Logf("numeric, %d bins of %d values: %d B", 2*MaxBins, c.perBin, size)
		if c.within != (size <= 8<<10) {
			t.Errorf("numeric, %d per bin: %d bytes; want within 8 KiB: %v", c.perBin, size, c.within)
		}
		if size > 20<<10 {
			t.Errorf("numeric, %d per bin: %d bytes, more than the 20 KiB documented as the decoder's worst case", c.perBin, size)
		}
	}
	pb := &droverv1.CategoricalSketch{Capacity: DefaultCapacity}
	for i := range DefaultCapacity {
		// Two-byte runes to MaxValueBytes: the longest value Clip keeps.
		v := fmt.Sprintf("%02d", i) + strings.Repeat("é", (MaxValueBytes-2)/2)
		pb.Items = append(pb.Items, &droverv1.CategoryCount{Value: v, Count: math.MaxUint64 / (2 * DefaultCapacity)})
		pb.Total += math.MaxUint64 / (2 * DefaultCapacity)
	}
	cat, err := CategoricalFromProto(pb)
	if err != nil {
		t.Fatal(err)
	}
	f := &FeatureProfile{Name: strings.Repeat("c", MaxNameBytes), Kind: KindCategorical, Categorical: cat, Missing: math.MaxUint64 / 4, OutOfSchema: math.MaxUint64 / 4}
	size := proto.Size(f.ToProto())
	t.Logf("categorical, %d values of %d bytes: %d B", DefaultCapacity, len(pb.Items[0].Value), size)
	if size > 8<<10 {
		t.Errorf("categorical at capacity %d with the longest values: %d bytes, above 8 KiB", DefaultCapacity, size)
	}
	// Filled by Add, the same size: the decoder's form is what agents make.
	added := NewCategorical(DefaultCapacity)
	for _, it := range pb.Items {
		added.Add(it.Value + "cut off by Clip")
	}
	if got := proto.Size(added.ToProto()); got > size {
		t.Errorf("a sketch filled by Add takes %d bytes, more than the %d of the worst case", got, size)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	good := func() *droverv1.TelemetryWindow { return testWindow(realisticProfile(t, 3, 200)).ToProto() }
	numeric := func(w *droverv1.TelemetryWindow) *droverv1.NumericSketch {
		for _, f := range w.Profile.Inputs {
			if f.Name == "price" {
				return f.Numeric
			}
		}
		panic("no price")
	}
	categorical := func(w *droverv1.TelemetryWindow) *droverv1.CategoricalSketch {
		for _, f := range w.Profile.Inputs {
			if f.Name == "country" {
				return f.Categorical
			}
		}
		panic("no country")
	}
	for _, tc := range []struct {
		name   string
		break_ func(w *droverv1.TelemetryWindow)
		want   string
	}{
		{"no node", func(w *droverv1.TelemetryWindow) { w.NodeId = "" }, "node id"},
		{"end before start", func(w *droverv1.TelemetryWindow) { w.End = w.Start }, "not after its start"},
		{"no profile", func(w *droverv1.TelemetryWindow) { w.Profile = nil }, "profile missing"},
		{"other accuracy", func(w *droverv1.TelemetryWindow) { numeric(w).RelativeAccuracy = 0.02 }, "relative accuracy"},
		{"count mismatch", func(w *droverv1.TelemetryWindow) { numeric(w).Count++ }, "bins hold"},
		{"too many bins", func(w *droverv1.TelemetryWindow) { numeric(w).Positive.Counts = make([]uint64, MaxBins+1) }, "more than 1024"},
		{"bins off the mapping", func(w *droverv1.TelemetryWindow) { numeric(w).Positive.Offset = math.MaxInt32 - 2 }, "outside the mapping"},
		{"huge count", func(w *droverv1.TelemetryWindow) { numeric(w).Positive.Counts[0] = math.MaxUint64 }, "above 2^53"},
		{"nan sum", func(w *droverv1.TelemetryWindow) { numeric(w).Sum = math.NaN() }, "sum is NaN"},
		{"min above max", func(w *droverv1.TelemetryWindow) { n := numeric(w); n.Min, n.Max = n.Max+1, n.Min }, "above max"},
		{"capacity", func(w *droverv1.TelemetryWindow) { categorical(w).Capacity = 0 }, "capacity 0"},
		{"items over capacity", func(w *droverv1.TelemetryWindow) { categorical(w).Capacity = 1 }, "more than its capacity"},
		{"duplicate item", func(w *droverv1.TelemetryWindow) { c := categorical(w); c.Items[1].Value = c.Items[0].Value }, "sorted and unique"},
		{"long item", func(w *droverv1.TelemetryWindow) { categorical(w).Items[0].Value = strings.Repeat("x", 65) }, "at most 64"},
		{"items above total", func(w *droverv1.TelemetryWindow) { categorical(w).Total = 1 }, "more than the total"},
		{"kind", func(w *droverv1.TelemetryWindow) { w.Profile.Inputs[0].Kind = 7 }, "want numeric or categorical"},
		{"both sketches", func(w *droverv1.TelemetryWindow) {
			numeric(w)
			w.Profile.Inputs[0].Numeric = &droverv1.NumericSketch{}
			w.Profile.Inputs[0].Categorical = &droverv1.CategoricalSketch{}
		}, "carries a"},
		{"unsorted", func(w *droverv1.TelemetryWindow) { in := w.Profile.Inputs; in[0], in[1] = in[1], in[0] }, "sorted and unique"},
		{"errors above requests", func(w *droverv1.TelemetryWindow) { w.Profile.Errors[0].Count = w.Profile.Requests + 1 }, "more failed requests"},
		{"latency", func(w *droverv1.TelemetryWindow) { w.Profile.LatencySeconds.Max = math.Inf(1) }, "latency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := good()
			tc.break_(w)
			b, err := proto.Marshal(w)
			if err != nil {
				t.Fatal(err)
			}
			_, err = DecodeWindow(b)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrInvalid saying %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	if _, err := DecodeWindow(make([]byte, MaxWindowBytes+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversized window: %v", err)
	}
	if _, err := DecodeWindow([]byte{0xff, 0xff}); !errors.Is(err, ErrInvalid) {
		t.Errorf("garbage: %v", err)
	}
}

func FuzzDecodeWindow(f *testing.F) {
	b, err := testWindow(realisticProfile(f, 4, 300)).Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	empty, _ := testWindow(NewProfile(nil)).Encode()
	f.Add(empty)
	base := realisticProfile(f, 5, 300)
	f.Fuzz(func(t *testing.T, b []byte) {
		// The leader's path: check, then merge into a cohort profile that
		// already holds data. A refused window leaves it as it was.
		cohort := base.Clone()
		if pb, err := UnmarshalWindow(b); err == nil {
			if err := cohort.MergeProto(pb.Profile); err != nil && !errors.Is(err, ErrKindMismatch) {
				t.Fatalf("checked window refused by MergeProto: %v", err)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error without ErrInvalid: %v", err)
		}
		w, err := DecodeWindow(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error without ErrInvalid: %v", err)
			}
			return
		}
		// Whatever decodes must be usable: merge, query, re-encode, decode.
		p := w.Profile.Clone()
		if err := p.Merge(w.Profile); err != nil {
			t.Fatal(err)
		}
		for _, fp := range p.Inputs {
			if fp.Numeric != nil && fp.Numeric.Count() > 0 {
				if _, err := fp.Numeric.Quantile(0.5); err != nil {
					t.Fatal(err)
				}
				fp.Numeric.Distribution().CDF(fp.Numeric.Mean())
			}
		}
		again, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeWindow(again); err != nil {
			t.Fatalf("re-encoded window does not decode: %v", err)
		}
	})
}

func TestMergeProtoMatchesMerge(t *testing.T) {
	a, b := realisticProfile(t, 5, 3000), realisticProfile(t, 6, 3000)
	viaSketches := a.Clone()
	if err := viaSketches.Merge(b); err != nil {
		t.Fatal(err)
	}
	viaWire := a.Clone()
	if err := viaWire.MergeProto(b.ToProto()); err != nil {
		t.Fatal(err)
	}
	x, _ := proto.Marshal(viaSketches.ToProto())
	y, _ := proto.Marshal(viaWire.ToProto())
	if string(x) != string(y) {
		t.Fatal("merging the wire form gives another profile than merging the sketches")
	}
	// Into an empty profile, too.
	empty := NewProfile(nil)
	if err := empty.MergeProto(a.ToProto()); err != nil {
		t.Fatal(err)
	}
	z, _ := proto.Marshal(empty.ToProto())
	w, _ := proto.Marshal(a.ToProto())
	if string(z) != string(w) {
		t.Fatal("merging into an empty profile changed it")
	}
}

func TestMergeProtoRefusesWithoutChange(t *testing.T) {
	p := realisticProfile(t, 7, 500)
	before, _ := proto.Marshal(p.ToProto())
	bad := realisticProfile(t, 8, 500).ToProto()
	bad.Inputs[len(bad.Inputs)-1].Numeric.Count++ // the last feature: the others would merge first if unchecked
	if err := p.MergeProto(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid profile: %v", err)
	}
	other := realisticProfile(t, 9, 500).ToProto()
	f := other.Inputs[len(other.Inputs)-1]
	f.Kind, f.Categorical, f.Numeric = droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL, &droverv1.CategoricalSketch{Capacity: 4}, nil
	if err := p.MergeProto(other); !errors.Is(err, ErrKindMismatch) {
		t.Fatalf("kind mismatch: %v", err)
	}
	after, _ := proto.Marshal(p.ToProto())
	if string(before) != string(after) {
		t.Fatal("a refused merge changed the profile")
	}
}
