package monitor

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// window sketches n requests whose two inputs are normal around shift,
// with errs of them failed and every latency lat.
func window(t *testing.T, rng *rand.Rand, n int, shift float64, errs int, lat time.Duration) *sketch.Profile {
	t.Helper()
	s, err := sketch.NewSchema([]sketch.Field{{Name: "a", Kind: sketch.KindNumeric}, {Name: "b", Kind: sketch.KindNumeric}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := sketch.NewRecorder(s, 1)
	for i := range n {
		o := &sketch.Observation{
			Inputs:  []sketch.Value{sketch.Number(rng.NormFloat64() + shift), sketch.Number(rng.NormFloat64() + shift)},
			Latency: lat,
		}
		if i < errs {
			o.ErrKind = "runtime"
		}
		r.Record(o)
	}
	return r.Flush()
}

func TestWatcherActsOnceAfterConsecutiveDriftedWindows(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	ref := window(t, rng, 5000, 0, 0, time.Millisecond)
	policy := &droverv1.MonitorPolicy{By: "site", Drift: &droverv1.DriftPolicy{
		Windows: 3, Action: droverv1.PolicyAction_POLICY_ACTION_ROLLBACK, Thresholds: DefaultThresholds().ToProto()}}
	w := NewWatcher()
	observe := func(berlin, lyon *sketch.Profile) []Trigger {
		return w.Observe("det", 7, policy, ref, []Cohort{{Key: "berlin", Profile: berlin}, {Key: "lyon", Profile: lyon}})
	}
	for i := range 2 {
		if tr := observe(window(t, rng, 500, 2, 0, 0), window(t, rng, 500, 0, 0, 0)); len(tr) != 0 {
			t.Fatalf("window %d: %v, want nothing before 3 drifted windows", i+1, tr)
		}
	}
	// Too little traffic to judge: the streak neither grows nor resets.
	if tr := observe(window(t, rng, 10, 2, 0, 0), window(t, rng, 10, 0, 0, 0)); len(tr) != 0 {
		t.Fatalf("quiet window: %v", tr)
	}
	tr := observe(window(t, rng, 500, 2, 0, 0), window(t, rng, 500, 0, 0, 0))
	if len(tr) != 1 || tr[0].Cohort != "berlin" || tr[0].Check != CheckDrift || tr[0].Windows != 3 ||
		tr[0].Action != droverv1.PolicyAction_POLICY_ACTION_ROLLBACK || tr[0].Version != 7 {
		t.Fatalf("third drifted window: %+v, want one rollback trigger for berlin", tr)
	}
	if !strings.Contains(tr[0].Evidence, "2 of 2 judged inputs drifted") || !strings.Contains(tr[0].Evidence, "PSI") {
		t.Errorf("evidence %q does not name the drifted features", tr[0].Evidence)
	}
	// Still drifted: acted on already.
	if tr := observe(window(t, rng, 500, 2, 0, 0), window(t, rng, 500, 0, 0, 0)); len(tr) != 0 {
		t.Fatalf("a streak triggered twice: %v", tr)
	}
	// A stable window resets the streak; three more drifted ones act again.
	observe(window(t, rng, 500, 0, 0, 0), window(t, rng, 500, 0, 0, 0))
	var again []Trigger
	for range 3 {
		again = append(again, observe(window(t, rng, 500, 2, 0, 0), window(t, rng, 500, 0, 0, 0))...)
	}
	if len(again) != 1 || again[0].Cohort != "berlin" {
		t.Fatalf("after a reset: %v, want one trigger", again)
	}
}

func TestWatcherSLO(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	policy := &droverv1.MonitorPolicy{Slo: &droverv1.SLOPolicy{
		Windows: 2, MaxErrorRate: 0.05, MaxP99: durationpb.New(100 * time.Millisecond), MinRequests: 20,
		Action: droverv1.PolicyAction_POLICY_ACTION_PAUSE}}
	w := NewWatcher()
	ok := window(t, rng, 100, 0, 1, 10*time.Millisecond)
	failing := window(t, rng, 100, 0, 10, 10*time.Millisecond)
	slow := window(t, rng, 100, 0, 0, 300*time.Millisecond)
	if tr := w.Observe("det", 1, policy, nil, []Cohort{{Profile: failing}}); len(tr) != 0 {
		t.Fatalf("one failing window: %v", tr)
	}
	tr := w.Observe("det", 1, policy, nil, []Cohort{{Profile: slow}})
	if len(tr) != 1 || tr[0].Check != CheckSLO || tr[0].Action != droverv1.PolicyAction_POLICY_ACTION_PAUSE ||
		!strings.Contains(tr[0].Evidence, "p99 300ms > 100ms") {
		t.Fatalf("two breaching windows: %+v", tr)
	}
	w2 := NewWatcher()
	for range 3 {
		if tr := w2.Observe("det", 1, policy, nil, []Cohort{{Profile: ok}}); len(tr) != 0 {
			t.Fatalf("1%% errors at 10ms breached: %v", tr)
		}
	}
	tr = append(w2.Observe("det", 1, policy, nil, []Cohort{{Profile: failing}}), w2.Observe("det", 1, policy, nil, []Cohort{{Profile: failing}})...)
	if len(tr) != 1 || !strings.Contains(tr[0].Evidence, "error rate 10.00% > 5.00% (10 of 100 requests)") {
		t.Fatalf("error-rate breach: %+v", tr)
	}
}
