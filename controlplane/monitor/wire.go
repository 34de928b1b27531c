package monitor

import (
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// ThresholdsFromProto fills the bands pb leaves unset with the defaults
// and checks the result.
func ThresholdsFromProto(pb *droverv1.DriftThresholds) (Thresholds, error) {
	t := DefaultThresholds()
	set := func(dst *float64, v float64) {
		if v != 0 {
			*dst = v
		}
	}
	set(&t.PSIModerate, pb.GetPsiModerate())
	set(&t.PSIDrifted, pb.GetPsiDrifted())
	set(&t.KSModerate, pb.GetKsModerate())
	set(&t.KSDrifted, pb.GetKsDrifted())
	set(&t.JSModerate, pb.GetJsModerate())
	set(&t.JSDrifted, pb.GetJsDrifted())
	set(&t.DriftedShare, pb.GetDriftedShare())
	if n := pb.GetMinCount(); n != 0 {
		t.MinCount = n
	}
	return t, t.Validate()
}

// ToProto is t's wire form, every band set.
func (t Thresholds) ToProto() *droverv1.DriftThresholds {
	return &droverv1.DriftThresholds{
		PsiModerate: t.PSIModerate, PsiDrifted: t.PSIDrifted,
		KsModerate: t.KSModerate, KsDrifted: t.KSDrifted,
		JsModerate: t.JSModerate, JsDrifted: t.JSDrifted,
		DriftedShare: t.DriftedShare, MinCount: t.MinCount,
	}
}

// ToProto is v's wire form; the numbers match.
func (v Verdict) ToProto() droverv1.DriftVerdict { return droverv1.DriftVerdict(v) }

// ToProto is r's wire form, as the drift of the cohort named key.
func (r Report) ToProto(key string) *droverv1.CohortDrift {
	return &droverv1.CohortDrift{
		Key:       key,
		Inputs:    featuresToProto(r.Inputs),
		Outputs:   featuresToProto(r.Outputs),
		Evaluated: uint32(r.Evaluated),
		Drifted:   uint32(r.Drifted),
		Verdict:   r.Verdict.ToProto(),
	}
}

func featuresToProto(fs []FeatureDrift) []*droverv1.FeatureDrift {
	out := make([]*droverv1.FeatureDrift, len(fs))
	for i, f := range fs {
		out[i] = &droverv1.FeatureDrift{
			Name: f.Name, Kind: droverv1.FeatureKind(f.Kind),
			ReferenceCount: f.RefCount, CurrentCount: f.CurCount,
			Psi: f.PSI, Ks: f.KS, KsErrorBound: f.KSErrorBound, Js: f.JS,
			ReferenceMissing: f.RefMissing, CurrentMissing: f.CurMissing,
			Verdict: f.Verdict.ToProto(), Reason: f.Reason,
		}
	}
	return out
}
