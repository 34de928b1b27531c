package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/controlplane/alert"
	"github.com/droverhq/drover/controlplane/monitor"
	"github.com/droverhq/drover/controlplane/placement"
	"github.com/droverhq/drover/controlplane/rollout"
	"github.com/droverhq/drover/controlplane/state"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// monitorLoop runs deployments' monitor policies on the leader. Every
// interval it merges each watched deployment's telemetry of the interval
// before last (windows reach the servers a little after they close) per
// cohort, judges it against the policy and the version's reference, and
// acts when a check has failed for the policy's number of windows in a
// row: an alert, a pause, or a rollback whose reason holds the evidence.
// It also gives a version without a reference its canary's first windows.
//
// Its streaks live in its memory: a new leader starts counting afresh,
// which delays an action by at most a policy's windows and never repeats
// one that was written (a rollback moves the deployment to another
// version, whose streaks are new).
type monitorLoop struct {
	s        *Server
	query    func(context.Context, *droverv1.QueryTelemetryRequest) (*droverv1.QueryTelemetryResponse, error)
	interval time.Duration
	now      func() time.Time
	watcher  *monitor.Watcher
	alerts   *alert.Sender
	metrics  *monitorMetrics
}

// monitorMetrics count what the policies did, by check, action and
// outcome: a handful of label values, never a deployment's name.
type monitorMetrics struct {
	triggers *prometheus.CounterVec
	alerts   *prometheus.CounterVec
}

func newMonitorMetrics(reg prometheus.Registerer) *monitorMetrics {
	m := &monitorMetrics{
		triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_monitor_triggers_total",
			Help: "Monitor policy checks that failed for their number of windows in a row, by check (drift, slo), action and outcome (done, failed).",
		}, []string{"check", "action", "outcome"}),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_monitor_webhook_calls_total",
			Help: "Alert webhook deliveries by outcome: delivered, or given up after the retries.",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.triggers, m.alerts)
	return m
}

func newMonitorLoop(s *Server) *monitorLoop {
	l := &monitorLoop{
		s:        s,
		query:    s.queryFleet,
		interval: time.Duration(s.cfg.MonitorInterval),
		now:      time.Now,
		watcher:  monitor.NewWatcher(),
		metrics:  s.metrics.monitor,
	}
	l.alerts = alert.NewSender(s.signingKey, alert.Options{
		Logger: s.logger.With("component", "alerts"),
		Outcome: func(ok bool) {
			if ok {
				l.metrics.alerts.WithLabelValues("delivered").Inc()
			} else {
				l.metrics.alerts.WithLabelValues("failed").Inc()
			}
		},
	})
	return l
}

// run evaluates every interval until ctx ends.
func (l *monitorLoop) run(ctx context.Context) {
	l.alerts.Start()
	defer l.alerts.Close()
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			// The interval before last: windows that closed in it have had
			// a whole interval to be shipped.
			l.step(ctx, now.Add(-2*l.interval), now.Add(-l.interval))
		}
	}
}

// step evaluates the windows that ended in (from, to].
func (l *monitorLoop) step(ctx context.Context, from, to time.Time) {
	current := map[string]uint64{}
	for _, d := range l.s.state.Deployments() {
		pol := d.GetSpec().GetMonitor()
		if pol == nil || d.GetVersion() == 0 {
			continue
		}
		current[d.GetSpec().GetName()] = d.GetVersion()
		if err := l.evaluate(ctx, d, from, to); err != nil && ctx.Err() == nil {
			l.s.logger.Warn("monitor policy not evaluated", "deployment", d.GetSpec().GetName(), "err", err)
		}
	}
	l.watcher.Forget(func(dep string, v uint64) bool { return current[dep] == v })
}

func (l *monitorLoop) evaluate(ctx context.Context, d *droverv1.Deployment, from, to time.Time) error {
	spec, pol := d.GetSpec(), d.GetSpec().GetMonitor()
	model, _, err := placement.ParseModelRef(spec.GetModel())
	if err != nil {
		return err
	}
	v, err := l.s.state.Version(model, strconv.FormatUint(d.GetVersion(), 10))
	if err != nil {
		return err
	}
	var ref *sketch.Profile
	if pb := v.GetReference(); pb != nil {
		if ref, err = sketch.ProfileFromProto(pb); err != nil {
			return fmt.Errorf("reference of %s@%d: %w", model, v.GetVersion(), err)
		}
	} else if pol.GetDrift() != nil {
		if err := l.canaryReference(ctx, d, model, to); err != nil {
			l.s.logger.Warn("no reference from the canary yet", "deployment", spec.GetName(), "err", err)
		}
	}
	resp, err := l.query(ctx, &droverv1.QueryTelemetryRequest{
		Model: model, Version: strconv.FormatUint(d.GetVersion(), 10), Deployment: spec.GetName(),
		Since: timestamppb.New(from), Until: timestamppb.New(to), GroupBy: pol.GetBy(),
	})
	if err != nil {
		return err
	}
	var cohorts []monitor.Cohort
	for _, g := range resp.GetGroups() {
		p, err := sketch.ProfileFromProto(g.GetProfile())
		if err != nil {
			return fmt.Errorf("cohort %q: %w", g.GetKey(), err)
		}
		cohorts = append(cohorts, monitor.Cohort{Key: g.GetKey(), Profile: p})
	}
	for _, t := range l.watcher.Observe(spec.GetName(), d.GetVersion(), pol, ref, cohorts) {
		l.act(ctx, d, model, t)
	}
	return nil
}

// canaryReference gives the deployment's version a reference from its
// first windows, once it has at least the policy's number of them: the
// first windows of a new version come from its canary nodes.
func (l *monitorLoop) canaryReference(ctx context.Context, d *droverv1.Deployment, model string, until time.Time) error {
	since := d.GetCreateTime().AsTime()
	if r, err := l.s.state.Rollout(d.GetSpec().GetName(), 0); err == nil && r.GetToVersion() == d.GetVersion() {
		since = r.GetCreateTime().AsTime()
	}
	resp, err := l.query(ctx, &droverv1.QueryTelemetryRequest{
		Model: model, Version: strconv.FormatUint(d.GetVersion(), 10), Deployment: d.GetSpec().GetName(),
		Since: timestamppb.New(since), Until: timestamppb.New(until),
	})
	if err != nil {
		return err
	}
	need := uint64(d.GetSpec().GetMonitor().GetDrift().GetReferenceWindows())
	if len(resp.GetGroups()) != 1 || resp.GetGroups()[0].GetWindows() < need {
		return nil // not enough yet
	}
	ref := resp.GetGroups()[0].GetProfile()
	if len(ref.GetInputs())+len(ref.GetOutputs()) == 0 {
		return nil // the canary's requests carried no features to compare
	}
	_, err = l.s.apply(ctx, droverv1.CommandType_COMMAND_TYPE_SET_VERSION_REFERENCE, &droverv1.SetVersionReferenceCommand{
		Meta:  &droverv1.CommandMeta{Time: timestamppb.New(l.now()), Actor: "server/" + l.s.cfg.Name},
		Model: model, Version: d.GetVersion(), Reference: ref, Source: state.ReferenceFromCanary,
	})
	return err
}

// act carries out a trigger's action and tells the webhook.
func (l *monitorLoop) act(ctx context.Context, d *droverv1.Deployment, model string, t monitor.Trigger) {
	name := d.GetSpec().GetName()
	where := "the deployment"
	if t.Cohort != "" {
		where = d.GetSpec().GetMonitor().GetBy() + " " + t.Cohort
	}
	reason := fmt.Sprintf("%s policy: %s failed %d windows in a row: %s", t.Check, where, t.Windows, t.Evidence)
	if len(reason) > maxRolloutReasonBytes {
		reason = reason[:maxRolloutReasonBytes-3] + "..."
	}
	outcome, err := l.decide(ctx, d, t.Action, reason)
	result := "done"
	if err != nil {
		outcome, result = "could not "+actionVerb(t.Action)+": "+err.Error(), "failed"
	}
	l.metrics.triggers.WithLabelValues(string(t.Check), actionVerb(t.Action), result).Inc()
	l.s.logger.Warn("monitor policy triggered", "deployment", name, "version", t.Version, "cohort", t.Cohort,
		"check", t.Check, "action", actionVerb(t.Action), "outcome", outcome, "evidence", t.Evidence)
	if url := d.GetSpec().GetMonitor().GetWebhook(); url != "" {
		l.alerts.Send(url, alert.Event{
			Time: l.now(), Deployment: name, Model: model, Version: t.Version,
			Cohort: t.Cohort, By: d.GetSpec().GetMonitor().GetBy(), Check: string(t.Check),
			Action: actionVerb(t.Action), Outcome: outcome, Windows: t.Windows, Evidence: t.Evidence, Server: l.s.cfg.Name,
		})
	}
}

// decide writes a pause or a rollback through the same rules and command
// an operator's would, with the policy as the actor and the evidence as
// the reason.
func (l *monitorLoop) decide(ctx context.Context, d *droverv1.Deployment, action droverv1.PolicyAction, reason string) (string, error) {
	if action == droverv1.PolicyAction_POLICY_ACTION_ALERT {
		return "alerted", nil
	}
	var r *droverv1.Rollout
	if d.GetRolloutId() > 0 {
		var err error
		if r, err = l.s.state.Rollout(d.GetSpec().GetName(), 0); err != nil {
			return "", err
		}
	}
	meta := &droverv1.CommandMeta{Time: timestamppb.New(l.now()), Actor: "server/" + l.s.cfg.Name, ActorName: "monitor policy"}
	var (
		dec  rollout.Decision
		err  error
		done string
	)
	switch action {
	case droverv1.PolicyAction_POLICY_ACTION_PAUSE:
		if r == nil || r.GetState() != droverv1.RolloutState_ROLLOUT_STATE_PROGRESSING {
			return "alerted: no rollout in progress to pause", nil
		}
		dec, err = rollout.Pause(d, r, reason, l.now())
		done = "paused"
	case droverv1.PolicyAction_POLICY_ACTION_ROLLBACK:
		dec, err = rollout.Rollback(d, r, "monitor policy", reason, l.now())
		done = "rolled back"
	default:
		return "", fmt.Errorf("unknown action %v", action)
	}
	if err != nil {
		return "", err
	}
	t, cmd := decisionCommand(dec, meta)
	if _, err := l.s.apply(ctx, t, cmd); err != nil {
		return "", err
	}
	l.s.kickRollouts()
	return done, nil
}

func actionVerb(a droverv1.PolicyAction) string {
	return strings.ToLower(strings.TrimPrefix(a.String(), "POLICY_ACTION_"))
}
