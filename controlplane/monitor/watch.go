package monitor

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Check names what a deployment's monitor policy checks.
type Check string

// The checks a monitor policy holds.
const (
	CheckDrift Check = "drift"
	CheckSLO   Check = "slo"
)

// Cohort is one cohort's merged telemetry for one evaluation window.
type Cohort struct {
	// Key is the cohort's value (a site, a label value, a GPU model); ""
	// when the policy judges the whole deployment.
	Key     string
	Profile *sketch.Profile
}

// Trigger is a check that failed for its policy's number of consecutive
// windows in one cohort: the leader acts on it.
type Trigger struct {
	Deployment string
	Version    uint64
	Cohort     string
	Check      Check
	Action     droverv1.PolicyAction
	// Windows is how many consecutive windows failed.
	Windows int
	// Evidence says what failed, in words, for the rollout's reason, the
	// webhook and the log: the worst features and their scores, or the
	// error rate and p99 against their bounds.
	Evidence string
}

// Watcher keeps, per deployment, version, cohort and check, how many
// consecutive windows failed, and says when a policy's count is reached.
// Windows with too little traffic to judge neither count nor reset a
// streak: a quiet night does not clear a drifting site.
//
// It holds no goroutine and is not safe for concurrent use; the leader's
// monitor loop owns one and drops it when leadership ends, so a new
// leader starts counting afresh (at most a policy's windows late).
type Watcher struct {
	streaks map[streakKey]int
	// fired remembers streaks that already triggered, so that a check
	// that stays failed acts once, not every window.
	fired map[streakKey]bool
}

type streakKey struct {
	deployment string
	version    uint64
	cohort     string
	check      Check
}

// NewWatcher returns a watcher with no history.
func NewWatcher() *Watcher {
	return &Watcher{streaks: map[streakKey]int{}, fired: map[streakKey]bool{}}
}

// Observe judges one window of a deployment's cohorts against its policy
// and the version's reference (nil: drift is not judged) and returns the
// checks that reached their count in this window.
func (w *Watcher) Observe(deployment string, version uint64, policy *droverv1.MonitorPolicy, ref *sketch.Profile, cohorts []Cohort) []Trigger {
	var out []Trigger
	for _, c := range cohorts {
		if d := policy.GetDrift(); d != nil && ref != nil {
			failed, judged, evidence := judgeDrift(d, ref, c.Profile)
			if t, ok := w.step(streakKey{deployment, version, c.Key, CheckDrift}, judged, failed, int(d.GetWindows())); ok {
				out = append(out, Trigger{Deployment: deployment, Version: version, Cohort: c.Key, Check: CheckDrift,
					Action: d.GetAction(), Windows: t, Evidence: evidence})
			}
		}
		if s := policy.GetSlo(); s != nil {
			failed, judged, evidence := judgeSLO(s, c.Profile)
			if t, ok := w.step(streakKey{deployment, version, c.Key, CheckSLO}, judged, failed, int(s.GetWindows())); ok {
				out = append(out, Trigger{Deployment: deployment, Version: version, Cohort: c.Key, Check: CheckSLO,
					Action: s.GetAction(), Windows: t, Evidence: evidence})
			}
		}
	}
	return out
}

// step advances one streak and reports whether it just reached need.
func (w *Watcher) step(k streakKey, judged, failed bool, need int) (int, bool) {
	switch {
	case !judged:
		return 0, false
	case !failed:
		delete(w.streaks, k)
		delete(w.fired, k)
		return 0, false
	}
	w.streaks[k]++
	n := w.streaks[k]
	if n < max(need, 1) || w.fired[k] {
		return n, false
	}
	w.fired[k] = true
	return n, true
}

// Forget drops the history of deployments not in keep: removed ones, and
// versions that are no longer current.
func (w *Watcher) Forget(keep func(deployment string, version uint64) bool) {
	for k := range w.streaks {
		if !keep(k.deployment, k.version) {
			delete(w.streaks, k)
		}
	}
	for k := range w.fired {
		if !keep(k.deployment, k.version) {
			delete(w.fired, k)
		}
	}
}

// judgeDrift says whether a cohort's window is drifted at model level,
// whether it could be judged at all, and the evidence: the drifted
// features, worst first.
func judgeDrift(p *droverv1.DriftPolicy, ref, cur *sketch.Profile) (failed, judged bool, evidence string) {
	t, err := ThresholdsFromProto(p.GetThresholds())
	if err != nil {
		return false, false, ""
	}
	r, err := Evaluate(ref, cur, t)
	if err != nil || r.Verdict == VerdictUnknown {
		return false, false, ""
	}
	if r.Verdict != VerdictDrifted {
		return false, true, ""
	}
	drifted := slices.DeleteFunc(slices.Clone(r.Inputs), func(f FeatureDrift) bool { return f.Verdict != VerdictDrifted })
	slices.SortFunc(drifted, func(a, b FeatureDrift) int { return -compareScore(a, b) })
	var parts []string
	for i, f := range drifted {
		if i == 5 {
			parts = append(parts, fmt.Sprintf("and %d more", len(drifted)-5))
			break
		}
		parts = append(parts, f.scoreText())
	}
	return true, true, fmt.Sprintf("%d of %d judged inputs drifted (at least %.0f%% needed): %s",
		r.Drifted, r.Evaluated, t.DriftedShare*100, strings.Join(parts, ", "))
}

// score is a feature's statistic against its drifted bound, so numeric
// and categorical features sort together.
func (f FeatureDrift) score() float64 {
	if f.Kind == sketch.KindCategorical {
		return f.JS
	}
	return max(f.PSI, f.KS)
}

func compareScore(a, b FeatureDrift) int {
	switch sa, sb := a.score(), b.score(); {
	case sa < sb:
		return -1
	case sa > sb:
		return 1
	}
	return strings.Compare(b.Name, a.Name)
}

func (f FeatureDrift) scoreText() string {
	if f.Kind == sketch.KindCategorical {
		return fmt.Sprintf("%s JS %.3f", f.Name, f.JS)
	}
	return fmt.Sprintf("%s PSI %.3f KS %.3f", f.Name, f.PSI, f.KS)
}

// judgeSLO says whether a cohort's window breached the SLO: too many
// failed requests or too slow a p99.
func judgeSLO(p *droverv1.SLOPolicy, cur *sketch.Profile) (failed, judged bool, evidence string) {
	if cur.Requests == 0 || cur.Requests < max(p.GetMinRequests(), 1) {
		return false, false, ""
	}
	var breaches []string
	var errs uint64
	for _, n := range cur.Errors {
		errs += n
	}
	rate := float64(errs) / float64(cur.Requests)
	if limit := p.GetMaxErrorRate(); limit > 0 && rate > limit {
		breaches = append(breaches, fmt.Sprintf("error rate %.2f%% > %.2f%% (%d of %d requests)", rate*100, limit*100, errs, cur.Requests))
	}
	if limit := p.GetMaxP99().AsDuration(); limit > 0 && cur.Latency.Count() > 0 {
		if q, err := cur.Latency.Quantile(0.99); err == nil {
			if p99 := time.Duration(q * float64(time.Second)); p99 > limit {
				breaches = append(breaches, fmt.Sprintf("p99 %s > %s", p99.Round(time.Millisecond), limit))
			}
		}
	}
	return len(breaches) > 0, true, strings.Join(breaches, "; ")
}
