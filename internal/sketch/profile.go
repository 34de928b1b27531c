package sketch

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
)

const (
	// MaxFeatures bounds the inputs, and separately the outputs, of a
	// schema or a decoded profile.
	MaxFeatures = 512
	// MaxNameBytes bounds a feature's name.
	MaxNameBytes = 128
	// MaxErrorKinds bounds the distinct error kinds a profile counts;
	// further kinds are counted under OtherErrorKind.
	MaxErrorKinds = 32
	// OtherErrorKind collects error kinds past MaxErrorKinds.
	OtherErrorKind = "other"
)

// Kind is a feature's type.
type Kind uint8

// The kinds of feature; the numbers match FeatureKind on the wire.
const (
	KindNumeric     Kind = 1
	KindCategorical Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindNumeric:
		return "numeric"
	case KindCategorical:
		return "categorical"
	}
	return fmt.Sprintf("kind(%d)", k)
}

// Field names one input or output of a model and its kind.
type Field struct {
	Name string
	Kind Kind
}

// Schema is the ordered list of a model's inputs and outputs that
// observations follow positionally. It is immutable once made.
type Schema struct {
	inputs, outputs []Field
}

// NewSchema checks the fields (names unique per side, non-empty, at most
// MaxNameBytes; kinds known; at most MaxFeatures per side) and keeps their
// order.
func NewSchema(inputs, outputs []Field) (*Schema, error) {
	for _, side := range []struct {
		what   string
		fields []Field
	}{{"input", inputs}, {"output", outputs}} {
		if err := checkFields(side.what, side.fields); err != nil {
			return nil, fmt.Errorf("new schema: %w", err)
		}
	}
	return &Schema{inputs: slices.Clone(inputs), outputs: slices.Clone(outputs)}, nil
}

func checkFields(what string, fs []Field) error {
	if len(fs) > MaxFeatures {
		return fmt.Errorf("%d %ss, more than the %d a profile holds", len(fs), what, MaxFeatures)
	}
	seen := make(map[string]bool, len(fs))
	for i, f := range fs {
		if err := checkName(f.Name); err != nil {
			return fmt.Errorf("%s %d: %w", what, i, err)
		}
		if f.Kind != KindNumeric && f.Kind != KindCategorical {
			return fmt.Errorf("%s %q: unknown kind %d (want numeric or categorical)", what, f.Name, f.Kind)
		}
		if seen[f.Name] {
			return fmt.Errorf("%s %q appears twice", what, f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

func checkName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("empty name")
	case len(n) > MaxNameBytes:
		return fmt.Errorf("name of %d bytes, longer than %d", len(n), MaxNameBytes)
	}
	return nil
}

// Inputs returns the input fields in observation order.
func (s *Schema) Inputs() []Field { return slices.Clone(s.inputs) }

// Outputs returns the output fields in observation order.
func (s *Schema) Outputs() []Field { return slices.Clone(s.outputs) }

// Value is one observed value of a feature: a number, a category, or
// missing (the zero Value).
type Value struct {
	kind Kind // 0: missing
	num  float64
	str  string
}

// Number is a numeric value.
func Number(x float64) Value { return Value{kind: KindNumeric, num: x} }

// Category is a categorical value.
func Category(s string) Value { return Value{kind: KindCategorical, str: s} }

// Missing is an absent value; the zero Value is the same.
func Missing() Value { return Value{} }

// FeatureProfile is one feature's sketch plus counts of missing and
// out-of-schema values. Exactly one of Numeric and Categorical is set,
// matching Kind.
type FeatureProfile struct {
	Name        string
	Kind        Kind
	Numeric     *Numeric
	Categorical *Categorical
	// Missing counts observations without this feature.
	Missing uint64
	// OutOfSchema counts values of the wrong kind, and NaN or ±Inf for a
	// numeric feature; none of them reach the sketch.
	OutOfSchema uint64
}

// NewFeatureProfile returns an empty profile for f.
func NewFeatureProfile(f Field) *FeatureProfile {
	fp := &FeatureProfile{Name: f.Name, Kind: f.Kind}
	if f.Kind == KindCategorical {
		fp.Categorical = NewCategorical(DefaultCapacity)
	} else {
		fp.Numeric = NewNumeric()
	}
	return fp
}

// Observe records one value.
func (f *FeatureProfile) Observe(v Value) {
	switch {
	case v.kind == 0:
		f.Missing++
	case v.kind != f.Kind:
		f.OutOfSchema++
	case f.Kind == KindNumeric:
		if f.Numeric.Add(v.num) != nil {
			f.OutOfSchema++
		}
	default:
		f.Categorical.Add(v.str)
	}
}

// Count is the number of observations: sketched, missing and out of
// schema.
func (f *FeatureProfile) Count() uint64 {
	n := f.Missing + f.OutOfSchema
	if f.Numeric != nil {
		n += f.Numeric.Count()
	}
	if f.Categorical != nil {
		n += f.Categorical.Total()
	}
	return n
}

// Merge adds o into f; it fails, changing nothing, when names or kinds
// differ.
func (f *FeatureProfile) Merge(o *FeatureProfile) error {
	if f.Name != o.Name {
		return fmt.Errorf("merge feature %q with %q: names differ", f.Name, o.Name)
	}
	if f.Kind != o.Kind {
		return fmt.Errorf("merge feature %q: %s with %s: %w", f.Name, f.Kind, o.Kind, ErrKindMismatch)
	}
	f.mergeChecked(o)
	return nil
}

func (f *FeatureProfile) mergeChecked(o *FeatureProfile) {
	f.Missing += o.Missing
	f.OutOfSchema += o.OutOfSchema
	if f.Kind == KindNumeric {
		f.Numeric.Merge(o.Numeric)
	} else {
		f.Categorical.Merge(o.Categorical)
	}
}

// Clone returns an independent copy.
func (f *FeatureProfile) Clone() *FeatureProfile {
	c := *f
	if f.Numeric != nil {
		c.Numeric = f.Numeric.Clone()
	}
	if f.Categorical != nil {
		c.Categorical = f.Categorical.Clone()
	}
	return &c
}

// Observation is one request as the sketches see it. Inputs and Outputs
// follow the schema's order; absent trailing values count as missing and
// values past the schema's length are ignored.
type Observation struct {
	Inputs  []Value
	Outputs []Value
	Latency time.Duration
	// ErrKind is empty for a request that succeeded, else a short, stable
	// name of its failure ("timeout", "runtime", "bad_input"…).
	ErrKind string
}

// Profile is the contents of one telemetry window for one instance (or,
// merged, for a cohort): per-feature and per-output profiles, the request
// count, failures by kind, and latency.
type Profile struct {
	Requests uint64
	// Inputs and Outputs are sorted by name.
	Inputs, Outputs []*FeatureProfile
	// Errors counts failed requests by kind, at most MaxErrorKinds keys.
	Errors map[string]uint64
	// Latency holds request latency in seconds.
	Latency *Numeric
}

// NewProfile returns an empty profile with one feature profile per field
// of s.
func NewProfile(s *Schema) *Profile {
	p := &Profile{Errors: map[string]uint64{}, Latency: NewNumeric()}
	if s == nil {
		return p
	}
	for _, f := range s.inputs {
		p.Inputs = append(p.Inputs, NewFeatureProfile(f))
	}
	for _, f := range s.outputs {
		p.Outputs = append(p.Outputs, NewFeatureProfile(f))
	}
	sortFeatures(p.Inputs)
	sortFeatures(p.Outputs)
	return p
}

func sortFeatures(fs []*FeatureProfile) {
	slices.SortFunc(fs, func(a, b *FeatureProfile) int { return strings.Compare(a.Name, b.Name) })
}

// Input returns the input feature named name, or nil.
func (p *Profile) Input(name string) *FeatureProfile { return lookup(p.Inputs, name) }

// Output returns the output named name, or nil.
func (p *Profile) Output(name string) *FeatureProfile { return lookup(p.Outputs, name) }

func lookup(fs []*FeatureProfile, name string) *FeatureProfile {
	i, ok := slices.BinarySearchFunc(fs, name, func(f *FeatureProfile, n string) int { return strings.Compare(f.Name, n) })
	if !ok {
		return nil
	}
	return fs[i]
}

// AddError counts one failed request of the given kind (the request
// itself is counted by the caller or by Recorder).
func (p *Profile) AddError(kind string) {
	addError(p.Errors, kind, 1)
}

func addError(m map[string]uint64, kind string, n uint64) {
	kind = Clip(kind)
	// MaxErrorKinds-1 named kinds, so OtherErrorKind always has room.
	if _, ok := m[kind]; !ok && kind != OtherErrorKind && len(m) >= MaxErrorKinds-1 {
		kind = OtherErrorKind
	}
	m[kind] += n
}

// Clone returns an independent copy.
func (p *Profile) Clone() *Profile {
	c := &Profile{Requests: p.Requests, Errors: make(map[string]uint64, len(p.Errors)), Latency: p.Latency.Clone()}
	for k, n := range p.Errors {
		c.Errors[k] = n
	}
	for _, f := range p.Inputs {
		c.Inputs = append(c.Inputs, f.Clone())
	}
	for _, f := range p.Outputs {
		c.Outputs = append(c.Outputs, f.Clone())
	}
	return c
}

// Merge adds o into p: counts add exactly, sketches merge, features only
// o has are copied in. It fails, changing nothing, when a feature has
// different kinds on the two sides.
func (p *Profile) Merge(o *Profile) error {
	if o == nil {
		return nil
	}
	if err := checkMergeable("input", p.Inputs, o.Inputs); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	if err := checkMergeable("output", p.Outputs, o.Outputs); err != nil {
		return fmt.Errorf("merge profile: %w", err)
	}
	p.Requests += o.Requests
	if p.Errors == nil {
		p.Errors = map[string]uint64{}
	}
	for k, n := range o.Errors {
		addError(p.Errors, k, n)
	}
	if p.Latency == nil {
		p.Latency = NewNumeric()
	}
	p.Latency.Merge(o.Latency)
	p.Inputs = mergeFeatures(p.Inputs, o.Inputs)
	p.Outputs = mergeFeatures(p.Outputs, o.Outputs)
	return nil
}

// checkMergeable walks both sorted lists and reports the first feature
// whose kinds differ.
func checkMergeable(what string, a, b []*FeatureProfile) error {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := strings.Compare(a[i].Name, b[j].Name); {
		case c < 0:
			i++
		case c > 0:
			j++
		default:
			if a[i].Kind != b[j].Kind {
				return fmt.Errorf("%s %q: %s with %s: %w", what, a[i].Name, a[i].Kind, b[j].Kind, ErrKindMismatch)
			}
			i++
			j++
		}
	}
	return nil
}

// mergeFeatures merges sorted b into sorted a (kinds already checked).
func mergeFeatures(a, b []*FeatureProfile) []*FeatureProfile {
	// The common case, every agent of a version with the same schema:
	// the names line up one to one.
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
				a[i].mergeChecked(b[i])
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
			out = append(out, b[j].Clone())
			j++
		default:
			a[i].mergeChecked(b[j])
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// sortedErrors returns p's error counts sorted by kind.
func (p *Profile) sortedErrors() []Item {
	out := make([]Item, 0, len(p.Errors))
	for k, n := range p.Errors {
		out = append(out, Item{k, n})
	}
	slices.SortFunc(out, func(a, b Item) int { return cmp.Compare(a.Value, b.Value) })
	return out
}
