package sketch

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// mixedProfiles draws profiles that exercise every merge branch: schemas
// that differ between profiles (features only some have), categorical
// capacities that differ and far more distinct values than capacity,
// numeric values of both signs, exact zeros, and ranges wide enough that
// the collapsing stores fold their lowest bins, rising and falling across
// the sequence.
func mixedProfiles(t *testing.T, seed uint64, n int) []*Profile {
	r := rand.New(rand.NewPCG(seed, 11))
	var out []*Profile
	for a := range n {
		var in []Field
		for i := range 6 {
			if r.IntN(5) > 0 || a == 0 {
				in = append(in, Field{fmt.Sprintf("num%d", i), KindNumeric})
			}
		}
		for i := range 3 {
			if r.IntN(5) > 0 || a == 0 {
				in = append(in, Field{fmt.Sprintf("cat%d", i), KindCategorical})
			}
		}
		s, err := NewSchema(in, []Field{{"out", KindNumeric}})
		if err != nil {
			t.Fatal(err)
		}
		p := NewProfile(s)
		for _, f := range p.Inputs {
			if f.Kind == KindCategorical {
				f.Categorical = NewCategorical(4 + r.IntN(60))
			}
		}
		// The wide feature's magnitudes drift over the sequence: up for
		// the first half, down for the second, so the fold moves both ways.
		shift := float64(min(a, n-a)) * 40
		for range 50 + r.IntN(200) {
			obs := Observation{Latency: 1e6}
			for _, f := range p.Inputs { // sorted by name, as Observe below walks them
				var v Value
				switch f.Name {
				case "num0":
					v = Number(r.NormFloat64())
				case "num1":
					v = Number(math.Exp(r.NormFloat64()*20 + shift/10))
				case "num2":
					v = Number(-math.Exp(r.NormFloat64() * 3))
				case "num3":
					v = Number(float64(r.IntN(3))) // zeros
				case "num4":
					v = Number(math.Pow(10, -300+600*r.Float64())) // the mapping's whole range
				case "num5":
					if r.IntN(10) == 0 {
						v = Missing()
					} else {
						v = Category("wrong kind")
					}
				default:
					v = Category(fmt.Sprintf("v%d", int(math.Exp(r.ExpFloat64()*4))))
				}
				obs.Inputs = append(obs.Inputs, v)
			}
			obs.Outputs = []Value{Number(r.Float64())}
			if r.IntN(8) == 0 {
				// Fewer kinds than MaxErrorKinds: past it, which kinds fall
				// under "other" depends on map order in Profile.Merge too.
				obs.ErrKind = fmt.Sprintf("kind%d", r.IntN(20))
			}
			p.Requests++
			for i, f := range p.Inputs {
				f.Observe(obs.Inputs[i])
			}
			p.Outputs[0].Observe(obs.Outputs[0])
			_ = p.Latency.Add(obs.Latency.Seconds())
			if obs.ErrKind != "" {
				p.AddError(obs.ErrKind)
			}
		}
		out = append(out, p)
	}
	return out
}

func marshalProfile(t *testing.T, p *Profile) string {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(p.ToProto())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMergerEqualsMergingOneByOne(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		ps := mixedProfiles(t, seed, 60)
		slow := NewProfile(nil)
		m := NewMerger()
		for i, p := range ps {
			if err := slow.Merge(p); err != nil {
				t.Fatal(err)
			}
			if err := m.Add(p); err != nil {
				t.Fatal(err)
			}
			if i%20 == 19 || i == 0 {
				if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
					t.Fatalf("seed %d, after %d profiles: Merger.Add differs from Profile.Merge", seed, i+1)
				}
			}
		}
		// The folds happened: the wide features span more than MaxBins.
		if f := slow.Input("num4"); f.Numeric.ToProto().Positive == nil || len(f.Numeric.ToProto().Positive.Counts) != MaxBins {
			t.Fatalf("the wide feature did not fill its bins, so no fold was tested: %v", f.Numeric.ToProto())
		}
		// Profiles from the Merger merge on like any other.
		more := mixedProfiles(t, seed+10, 5)
		got := m.Profile()
		for _, p := range more {
			if err := slow.Merge(p); err != nil {
				t.Fatal(err)
			}
			if err := got.Merge(p); err != nil {
				t.Fatal(err)
			}
		}
		if marshalProfile(t, got) != marshalProfile(t, slow) {
			t.Fatalf("seed %d: merging into the Merger's profile differs", seed)
		}
	}
}

func TestMergerAddProtoEqualsMergeProto(t *testing.T) {
	ps := mixedProfiles(t, 4, 80)
	slow := NewProfile(nil)
	m := NewMerger()
	for _, p := range ps {
		pb := p.ToProto()
		if err := slow.MergeProto(pb); err != nil {
			t.Fatal(err)
		}
		if err := m.AddProto(pb); err != nil {
			t.Fatal(err)
		}
	}
	if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
		t.Fatal("Merger.AddProto differs from Profile.MergeProto")
	}
	// And the realistic shape, with its sorted wire items.
	slow, m = NewProfile(nil), NewMerger()
	for i := range 30 {
		pb := realisticProfile(t, uint64(100+i), 400).ToProto()
		if err := slow.MergeProto(pb); err != nil {
			t.Fatal(err)
		}
		if err := m.AddProto(pb); err != nil {
			t.Fatal(err)
		}
	}
	if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
		t.Fatal("Merger.AddProto differs from Profile.MergeProto on realistic profiles")
	}
}

// The Merger keeps the Misra–Gries guarantee against exact counts, like
// the merge it reproduces.
func TestMergerCategoricalBounds(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	exact := map[string]uint64{}
	m := NewMerger()
	s, err := NewSchema([]Field{{"c", KindCategorical}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 300 {
		p := NewProfile(s)
		for range 100 {
			v := fmt.Sprintf("v%d", int(math.Exp(r.ExpFloat64()*3)))
			exact[v]++
			p.Inputs[0].Observe(Category(v))
		}
		if err := m.AddProto(p.ToProto()); err != nil {
			t.Fatal(err)
		}
	}
	c := m.Profile().Input("c").Categorical
	if c.Total() != 30000 {
		t.Fatalf("total %d, want 30000", c.Total())
	}
	bound := c.ErrorBound()
	for v, n := range exact {
		got := c.Count(v)
		if got > n || n-got > bound {
			t.Fatalf("%s: kept %d of true %d, bound %d", v, got, n, bound)
		}
	}
}

func TestMergerRefusesKindMismatchWithoutChange(t *testing.T) {
	p := realisticProfile(t, 7, 300)
	m := NewMerger()
	if err := m.Add(p); err != nil {
		t.Fatal(err)
	}
	before := marshalProfile(t, m.Profile())
	other := realisticProfile(t, 8, 300).ToProto()
	f := other.Inputs[len(other.Inputs)-1]
	f.Kind, f.Categorical, f.Numeric = droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL, &droverv1.CategoricalSketch{Capacity: 4}, nil
	if err := m.AddProto(other); !errors.Is(err, ErrKindMismatch) {
		t.Fatalf("kind mismatch on the wire: %v", err)
	}
	bad := realisticProfile(t, 9, 300).ToProto()
	bad.Inputs[len(bad.Inputs)-1].Numeric.Count++
	if err := m.AddProto(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid profile: %v", err)
	}
	decoded, err := ProfileFromProto(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(decoded); !errors.Is(err, ErrKindMismatch) {
		t.Fatalf("kind mismatch: %v", err)
	}
	if marshalProfile(t, m.Profile()) != before {
		t.Fatal("a refused merge changed the Merger")
	}
}

// A Merger fed both decoded and wire profiles folds both kinds of bins
// into the same result as merging them one by one.
func TestMergerMixesDecodedAndWire(t *testing.T) {
	ps := mixedProfiles(t, 6, 60)
	slow := NewProfile(nil)
	m := NewMerger()
	for i, p := range ps {
		if i%2 == 0 {
			if err := slow.Merge(p); err != nil {
				t.Fatal(err)
			}
			if err := m.Add(p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := slow.MergeProto(p.ToProto()); err != nil {
			t.Fatal(err)
		}
		if err := m.AddProto(p.ToProto()); err != nil {
			t.Fatal(err)
		}
	}
	if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
		t.Fatal("a Merger fed decoded and wire profiles differs from merging them one by one")
	}
	// Recorder profiles, whose categorical values come sorted.
	slow, m = NewProfile(nil), NewMerger()
	for i := range 20 {
		p := realisticProfile(t, uint64(200+i), 300)
		if err := slow.Merge(p); err != nil {
			t.Fatal(err)
		}
		if err := m.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if marshalProfile(t, m.Profile()) != marshalProfile(t, slow) {
		t.Fatal("Merger.Add differs from Profile.Merge on Recorder profiles")
	}
}

// The sorted mark is a promise the encoder and the Merger rely on: it
// must hold after any mix of adds, merges, clones and decodes.
func TestCategoricalSortedMarkHolds(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	check := func(c *Categorical, what string) {
		t.Helper()
		if c.sorted && !slices.IsSortedFunc(c.items, compareItems) {
			t.Fatalf("%s: marked sorted, items out of order", what)
		}
		for v, i := range c.index {
			if c.items[i].Value != v {
				t.Fatalf("%s: index of %q points at %q", what, v, c.items[i].Value)
			}
		}
	}
	sketches := []*Categorical{NewCategorical(8)}
	for step := range 3000 {
		c := sketches[r.IntN(len(sketches))]
		switch r.IntN(6) {
		case 0, 1:
			c.Add(fmt.Sprintf("v%d", r.IntN(30)))
		case 2:
			if o := sketches[r.IntN(len(sketches))]; c.total < 1<<40 && o.total < 1<<40 {
				c.Merge(o.Clone())
			}
		case 3:
			c.sortItems()
		case 4:
			d, err := CategoricalFromProto(c.ToProto())
			if err != nil {
				t.Fatal(err)
			}
			sketches = append(sketches, d)
		default:
			sketches = append(sketches, c.Clone())
		}
		for _, c := range sketches {
			check(c, fmt.Sprintf("step %d", step))
		}
		if len(sketches) > 8 {
			sketches = sketches[1:]
		}
	}
	// Flush ends a window with its values in order.
	p := realisticProfile(t, 3, 500)
	if c := p.Input("product_id").Categorical; !c.sorted || len(c.items) < 2 {
		t.Fatalf("Flush left the categorical values unsorted (%d kept)", len(c.items))
	}
}
