package placement

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/droverhq/drover/controlplane/monitor"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Defaults of a deployment's monitor policy.
const (
	DefaultPolicyWindows    = 3
	DefaultReferenceWindows = 5
	DefaultSLOMinRequests   = 20
	maxPolicyWindows        = 1440
)

// checkMonitor checks a monitor policy and fills in its defaults.
func checkMonitor(p *problems, m *droverv1.MonitorPolicy) {
	if m == nil {
		return
	}
	if err := CheckCohort(m.GetBy(), false); err != nil {
		p.add("monitor.by: %v", err)
	}
	if w := m.GetWebhook(); w != "" {
		u, err := url.Parse(w)
		switch {
		case err != nil:
			p.add("monitor.webhook: %v", err)
		case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
			p.add("monitor.webhook %q: want an absolute https:// URL", w)
		case len(w) > maxStringBytes:
			p.add("monitor.webhook: longer than %d bytes", maxStringBytes)
		}
	}
	if d := m.GetDrift(); d != nil {
		t, err := monitor.ThresholdsFromProto(d.GetThresholds())
		if err != nil {
			p.add("monitor.drift.thresholds: %v", err)
		} else {
			d.Thresholds = t.ToProto()
		}
		defaultWindows(p, "monitor.drift.windows", &d.Windows, DefaultPolicyWindows)
		defaultWindows(p, "monitor.drift.reference_windows", &d.ReferenceWindows, DefaultReferenceWindows)
		defaultAction(&d.Action)
	}
	if s := m.GetSlo(); s != nil {
		if r := s.GetMaxErrorRate(); r < 0 || r >= 1 || r != r {
			p.add("monitor.slo.max_error_rate: %v is not a share of requests in [0, 1)", r)
		}
		if d := s.GetMaxP99(); d != nil && (!d.IsValid() || d.AsDuration() < 0) {
			p.add("monitor.slo.max_p99: %v is negative", d.AsDuration())
		}
		if s.GetMaxErrorRate() == 0 && s.GetMaxP99().AsDuration() == 0 {
			p.add("monitor.slo checks nothing: set max_error_rate, max_p99 or both")
		}
		defaultWindows(p, "monitor.slo.windows", &s.Windows, DefaultPolicyWindows)
		if s.GetMinRequests() == 0 {
			s.MinRequests = DefaultSLOMinRequests
		}
		defaultAction(&s.Action)
	}
}

func defaultWindows(p *problems, field string, n *uint32, def uint32) {
	switch {
	case *n == 0:
		*n = def
	case *n > maxPolicyWindows:
		p.add("%s: %d is more than %d windows (a day of one-minute windows)", field, *n, maxPolicyWindows)
	}
}

func defaultAction(a *droverv1.PolicyAction) {
	if *a == droverv1.PolicyAction_POLICY_ACTION_UNSPECIFIED {
		*a = droverv1.PolicyAction_POLICY_ACTION_ALERT
	}
}

// CheckCohort checks how telemetry is split into cohorts: "" (none),
// "site", "gpu", "label:KEY", and with extra also "version", "deployment"
// and "node", which only queries take.
func CheckCohort(by string, extra bool) error {
	switch by {
	case "", "site", "gpu":
		return nil
	case "version", "deployment", "node":
		if extra {
			return nil
		}
	}
	if key, ok := strings.CutPrefix(by, "label:"); ok {
		if key == "" {
			return fmt.Errorf("label: needs a key, such as label:camera")
		}
		return nil
	}
	if extra {
		return fmt.Errorf("%q: want site, gpu, label:KEY, version, deployment or node", by)
	}
	return fmt.Errorf("%q: want site, gpu or label:KEY", by)
}
