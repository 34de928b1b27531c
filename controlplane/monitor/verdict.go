package monitor

import (
	"errors"
	"fmt"

	"github.com/droverhq/drover/internal/sketch"
)

// Verdict is how far a feature, or a model version, has drifted from its
// reference.
type Verdict int

// Verdicts, worst last, so max() of two is the worse.
const (
	// VerdictUnknown: too few values on one side to judge (MinCount).
	VerdictUnknown Verdict = iota
	VerdictStable
	VerdictModerate
	VerdictDrifted
)

func (v Verdict) String() string {
	switch v {
	case VerdictUnknown:
		return "unknown"
	case VerdictStable:
		return "stable"
	case VerdictModerate:
		return "moderate"
	case VerdictDrifted:
		return "drifted"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Thresholds are the verdict bands. A statistic below its Moderate bound
// is stable, from Moderate up to Drifted moderate, from Drifted up drifted.
type Thresholds struct {
	// PSI bands; the usual credit-scoring rule of thumb: < 0.1 stable,
	// 0.1–0.25 moderate, ≥ 0.25 drifted.
	PSIModerate, PSIDrifted float64
	// KS bands on the statistic itself (an effect size, not a p-value:
	// with the thousands of values a window holds, any real difference is
	// "significant"). Defaults 0.1 and 0.2; a one-sd mean shift of a
	// normal gives 0.38, and two samples of 1,000 from one distribution
	// stay under 0.061 with 95% probability.
	KSModerate, KSDrifted float64
	// JS divergence (base 2) bands for categorical features. Defaults
	// 0.05 and 0.1: moving 30% of the mass from one category to a new one
	// gives about 0.22, reversing a 40/30/15/10/5 distribution 0.30.
	JSModerate, JSDrifted float64
	// DriftedShare: a model version is drifted when at least this share of
	// its evaluated input features is drifted. Default 0.3.
	DriftedShare float64
	// MinCount: a feature is judged only when both sides hold at least
	// this many values; below it its verdict is unknown. Default 100.
	MinCount uint64
}

// DefaultThresholds returns the documented defaults.
func DefaultThresholds() Thresholds {
	return Thresholds{
		PSIModerate: 0.1, PSIDrifted: 0.25,
		KSModerate: 0.1, KSDrifted: 0.2,
		JSModerate: 0.05, JSDrifted: 0.1,
		DriftedShare: 0.3,
		MinCount:     100,
	}
}

// Validate checks each band is ordered and in range.
func (t Thresholds) Validate() error {
	var errs []error
	for _, b := range []struct {
		name          string
		moderate, top float64
		limit         float64
	}{
		{"psi", t.PSIModerate, t.PSIDrifted, 100},
		{"ks", t.KSModerate, t.KSDrifted, 1},
		{"js", t.JSModerate, t.JSDrifted, 1},
	} {
		if !(b.moderate > 0 && b.moderate <= b.top && b.top <= b.limit) {
			errs = append(errs, fmt.Errorf("%s thresholds %g and %g: want 0 < moderate ≤ drifted ≤ %g", b.name, b.moderate, b.top, b.limit))
		}
	}
	if !(t.DriftedShare > 0 && t.DriftedShare <= 1) {
		errs = append(errs, fmt.Errorf("drifted share %g: want a share in (0,1]", t.DriftedShare))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("drift thresholds: %w", err)
	}
	return nil
}

func band(x, moderate, drifted float64) Verdict {
	switch {
	case x >= drifted:
		return VerdictDrifted
	case x >= moderate:
		return VerdictModerate
	}
	return VerdictStable
}

// FeatureDrift is one feature's comparison.
type FeatureDrift struct {
	Name string
	Kind sketch.Kind
	// RefCount and CurCount are the values sketched on each side.
	RefCount, CurCount uint64
	// PSI and KS for numeric features; JS for categorical ones.
	PSI, KS, KSErrorBound, JS float64
	// RefMissing and CurMissing are the shares of observations without
	// the feature, reported beside the verdict (not part of it).
	RefMissing, CurMissing float64
	Verdict                Verdict
	// Reason says why the verdict is unknown or forced (absent feature,
	// kinds that differ); empty otherwise.
	Reason string
}

// Report is a model version's drift: one entry per input feature and per
// output, and the model-level verdict over the inputs.
type Report struct {
	Inputs, Outputs []FeatureDrift
	// Evaluated counts inputs with a verdict other than unknown; Drifted
	// those drifted among them.
	Evaluated, Drifted int
	// DriftedShare is Drifted/Evaluated (0 when nothing was evaluated).
	DriftedShare float64
	// Verdict: drifted when DriftedShare ≥ Thresholds.DriftedShare,
	// moderate when any input is moderate or drifted, stable otherwise,
	// unknown when no input could be evaluated.
	Verdict Verdict
}

// Evaluate compares a current profile (a cohort's merged windows) with
// the reference profile of its model version.
func Evaluate(ref, cur *sketch.Profile, t Thresholds) (Report, error) {
	if err := t.Validate(); err != nil {
		return Report{}, fmt.Errorf("evaluate drift: %w", err)
	}
	var r Report
	r.Inputs = compareAll(ref.Inputs, cur.Inputs, t)
	r.Outputs = compareAll(ref.Outputs, cur.Outputs, t)
	anyMoved := false
	for _, f := range r.Inputs {
		if f.Verdict == VerdictUnknown {
			continue
		}
		r.Evaluated++
		if f.Verdict == VerdictDrifted {
			r.Drifted++
		}
		anyMoved = anyMoved || f.Verdict >= VerdictModerate
	}
	switch {
	case r.Evaluated == 0:
		r.Verdict = VerdictUnknown
	default:
		r.DriftedShare = float64(r.Drifted) / float64(r.Evaluated)
		switch {
		case r.DriftedShare >= t.DriftedShare:
			r.Verdict = VerdictDrifted
		case anyMoved:
			r.Verdict = VerdictModerate
		default:
			r.Verdict = VerdictStable
		}
	}
	return r, nil
}

// compareAll pairs the features of two name-sorted lists.
func compareAll(ref, cur []*sketch.FeatureProfile, t Thresholds) []FeatureDrift {
	var out []FeatureDrift
	i, j := 0, 0
	for i < len(ref) || j < len(cur) {
		switch {
		case j == len(cur) || (i < len(ref) && ref[i].Name < cur[j].Name):
			out = append(out, FeatureDrift{Name: ref[i].Name, Kind: ref[i].Kind, RefCount: sketched(ref[i]), Reason: "absent from the current profile"})
			i++
		case i == len(ref) || cur[j].Name < ref[i].Name:
			out = append(out, FeatureDrift{Name: cur[j].Name, Kind: cur[j].Kind, CurCount: sketched(cur[j]), Reason: "absent from the reference profile"})
			j++
		default:
			out = append(out, CompareFeature(ref[i], cur[j], t))
			i++
			j++
		}
	}
	return out
}

func sketched(f *sketch.FeatureProfile) uint64 {
	if f.Numeric != nil {
		return f.Numeric.Count()
	}
	if f.Categorical != nil {
		return f.Categorical.Total()
	}
	return 0
}

func missingShare(f *sketch.FeatureProfile) float64 {
	if n := f.Count(); n > 0 {
		return float64(f.Missing) / float64(n)
	}
	return 0
}

// CompareFeature judges one feature: numeric by the worse of its PSI and
// KS bands, categorical by its JS band.
func CompareFeature(ref, cur *sketch.FeatureProfile, t Thresholds) FeatureDrift {
	d := FeatureDrift{
		Name: ref.Name, Kind: ref.Kind,
		RefCount: sketched(ref), CurCount: sketched(cur),
		RefMissing: missingShare(ref), CurMissing: missingShare(cur),
	}
	if ref.Kind != cur.Kind {
		d.Verdict = VerdictDrifted
		d.Reason = fmt.Sprintf("kind changed from %s to %s", ref.Kind, cur.Kind)
		return d
	}
	if least := max(t.MinCount, 1); d.RefCount < least || d.CurCount < least {
		d.Reason = fmt.Sprintf("%d reference and %d current values, fewer than %d", d.RefCount, d.CurCount, least)
		return d
	}
	switch ref.Kind {
	case sketch.KindNumeric:
		// Both sides hold values, so neither statistic can fail.
		d.PSI, _ = PSI(ref.Numeric, cur.Numeric)
		ks, _ := KS(ref.Numeric, cur.Numeric)
		d.KS, d.KSErrorBound = ks.Statistic, ks.ErrorBound
		d.Verdict = max(band(d.PSI, t.PSIModerate, t.PSIDrifted), band(d.KS, t.KSModerate, t.KSDrifted))
	case sketch.KindCategorical:
		d.JS, _ = JS(ref.Categorical, cur.Categorical)
		d.Verdict = band(d.JS, t.JSModerate, t.JSDrifted)
	}
	return d
}
