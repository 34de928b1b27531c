package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/controlplane/alert"
	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// featureProfile sketches n values of input x, normal around mean.
func featureProfile(t *testing.T, rng *rand.Rand, n int, mean float64) *sketch.Profile {
	t.Helper()
	s, err := sketch.NewSchema([]sketch.Field{{Name: "x", Kind: sketch.KindNumeric}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := sketch.NewRecorder(s, 1)
	for range n {
		r.Record(&sketch.Observation{Inputs: []sketch.Value{sketch.Number(rng.NormFloat64() + mean)}, Latency: time.Millisecond})
	}
	return r.Flush()
}

// webhookReceiver keeps the alerts whose signature verifies with the
// cluster's key.
type webhookReceiver struct {
	mu     sync.Mutex
	events []alert.Event
	bad    []error
}

func (w *webhookReceiver) serve(t *testing.T, keys func() map[string][]byte) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var err error
		for _, pub := range keys() {
			if err = alert.Verify(pub, r.Header.Get(alert.SignatureHeader), body, time.Now(), time.Minute); err == nil {
				break
			}
		}
		var ev alert.Event
		if err == nil {
			err = json.Unmarshal(body, &ev)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			w.bad = append(w.bad, err)
			rw.WriteHeader(http.StatusBadRequest)
			return
		}
		w.events = append(w.events, ev)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// A deployment whose new version sees drifted inputs in one site is rolled
// back by the leader after the policy's number of drifted windows, with the
// evidence in the rollback's reason and a signed alert; drover drift show's
// call reports the site drifted.
func TestMonitorPolicyRollsBackOnDrift(t *testing.T) {
	never := func(uint64) bool { return false }
	f := newRolloutFleetWith(t, 1, 2, never, func(cfg *server.Config) { cfg.MonitorInterval = server.Duration(time.Second) })
	l := f.c.Leader()
	cl := clientsWith(t, f.c, l, f.c.Token(), false)
	ctx := testCtx(t, 2*time.Minute)
	rng := rand.New(rand.NewPCG(7, 7))

	var hook webhookReceiver
	srv := hook.serve(t, func() map[string][]byte {
		info, err := f.agents[0].client.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
		if err != nil {
			return nil
		}
		return info.Msg.GetManifestKeys()
	})

	// Versions 4 and 5 carry a reference: x around 0.
	ref := featureProfile(t, rng, 5000, 0).ToProto()
	for i := 4; i <= 5; i++ {
		if _, err := cl.Models.CreateVersion(ctx, connect.NewRequest(&droverv1.CreateVersionRequest{
			Model: "det", Artifact: &droverv1.ArtifactManifest{Digest: digest(i), SizeBytes: uint64(100 + i), Format: "onnx"}, Reference: ref,
		})); err != nil {
			t.Fatal(err)
		}
	}
	apply := func(ref string) *droverv1.ApplyDeploymentResponse {
		res, err := f.deploys.ApplyDeployment(ctx, connect.NewRequest(&droverv1.ApplyDeploymentRequest{Spec: &droverv1.DeploymentSpec{
			Name: "cams", Model: ref,
			Runtime: &droverv1.RuntimeSpec{Type: "onnx", StartTimeout: durationpb.New(500 * time.Millisecond)},
			Strategy: &droverv1.RolloutStrategy{MaxParallel: 2, MaxUnavailablePerSite: 2,
				MinHealthyTime: durationpb.New(200 * time.Millisecond), ProgressDeadline: durationpb.New(10 * time.Second), AutoPromote: true},
			Monitor: &droverv1.MonitorPolicy{By: "site", Webhook: srv.URL,
				Drift: &droverv1.DriftPolicy{Windows: 2, Action: droverv1.PolicyAction_POLICY_ACTION_ROLLBACK}},
		}}))
		if err != nil {
			t.Fatalf("apply %s: %v", ref, err)
		}
		return res.Msg
	}
	first := apply("det@4")
	f.waitRollout(t, first.GetRollout().GetId(), droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 30*time.Second)
	second := apply("det@5")
	f.waitRollout(t, second.GetRollout().GetId(), droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 30*time.Second)

	// One agent's traffic drifts: x around 3, in windows of 200ms.
	shipper := f.agents[0].a
	tel := shipper.telemetry(t, l.APIAddr())
	shipCtx, stopShipping := context.WithCancel(ctx)
	defer stopShipping()
	shipped := make(chan error, 1)
	go func() {
		defer close(shipped)
		for shipCtx.Err() == nil {
			end := time.Now()
			w := &sketch.Window{NodeID: shipper.node.GetId(), Deployment: "cams", Model: "det", Version: "5",
				Start: end.Add(-200 * time.Millisecond), End: end, Profile: featureProfile(t, rng, 200, 3)}
			b, err := w.Encode()
			if err == nil {
				var res *connect.Response[droverv1.ShipTelemetryResponse]
				res, err = tel.ShipTelemetry(shipCtx, connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: [][]byte{b}}))
				if err == nil && len(res.Msg.GetRefused()) > 0 {
					err = fmt.Errorf("window refused: %s", res.Msg.GetRefused()[0].GetReason())
				}
			}
			if err != nil && shipCtx.Err() == nil {
				shipped <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()

	var back *droverv1.Rollout
	eventually(t, 45*time.Second, "the drift policy rolls cams back to version 4", func() error {
		select {
		case err := <-shipped:
			t.Fatalf("shipping telemetry: %v", err)
		default:
		}
		hist, err := f.rollouts.ListRollouts(ctx, connect.NewRequest(&droverv1.ListRolloutsRequest{Deployment: "cams"}))
		if err != nil {
			return err
		}
		for _, r := range hist.Msg.GetRollouts() {
			if r.GetToVersion() == 4 && r.GetFromVersion() == 5 {
				back = r
				return nil
			}
		}
		return fmt.Errorf("%d rollouts, none back to 4", len(hist.Msg.GetRollouts()))
	})
	stopShipping()
	for _, want := range []string{"drift policy: site s1 failed 2 windows in a row", "1 of 1 judged inputs drifted", "x PSI"} {
		if !strings.Contains(back.GetReason(), want) {
			t.Errorf("rollback reason %q does not say %q", back.GetReason(), want)
		}
	}

	eventually(t, 20*time.Second, "a signed alert reaches the webhook", func() error {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		if len(hook.bad) > 0 {
			t.Fatalf("webhook calls refused: %v", hook.bad)
		}
		for _, ev := range hook.events {
			if ev.Deployment == "cams" && ev.Cohort == "s1" && ev.Check == "drift" && ev.Action == "rollback" && ev.Outcome == "rolled back" && ev.Version == 5 {
				return nil
			}
		}
		return fmt.Errorf("alerts so far: %+v", hook.events)
	})

	res, err := cl.Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{Model: "det", Ref: "5", GroupBy: "site"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.GetCohorts()) != 1 || res.Msg.GetCohorts()[0].GetKey() != "s1" ||
		res.Msg.GetCohorts()[0].GetVerdict() != droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED || res.Msg.GetReferenceSource() != "push" {
		t.Fatalf("GetDrift = %v", res.Msg)
	}
	// A version without a reference has nothing to compare with.
	if _, err := cl.Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{Model: "det", Ref: "1"})); connect.CodeOf(err) != connect.CodeFailedPrecondition ||
		!strings.Contains(err.Error(), "has no reference profile") {
		t.Errorf("drift of a version without reference: %v", err)
	}
}

// A version pushed without a reference gets one from its first windows in
// a deployment with a drift policy, once, from the canary that runs it.
func TestCanaryWindowsBecomeTheReference(t *testing.T) {
	never := func(uint64) bool { return false }
	f := newRolloutFleetWith(t, 1, 1, never, func(cfg *server.Config) { cfg.MonitorInterval = server.Duration(time.Second) })
	l := f.c.Leader()
	cl := clientsWith(t, f.c, l, f.c.Token(), false)
	ctx := testCtx(t, time.Minute)
	rng := rand.New(rand.NewPCG(1, 1))
	res, err := f.deploys.ApplyDeployment(ctx, connect.NewRequest(&droverv1.ApplyDeploymentRequest{Spec: &droverv1.DeploymentSpec{
		Name: "cams", Model: "det@3",
		Runtime:  &droverv1.RuntimeSpec{Type: "onnx", StartTimeout: durationpb.New(500 * time.Millisecond)},
		Strategy: &droverv1.RolloutStrategy{MinHealthyTime: durationpb.New(200 * time.Millisecond), ProgressDeadline: durationpb.New(10 * time.Second)},
		Monitor:  &droverv1.MonitorPolicy{Drift: &droverv1.DriftPolicy{ReferenceWindows: 3}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(t, res.Msg.GetRollout().GetId(), droverv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, 30*time.Second)

	a := f.agents[0].a
	tel := a.telemetry(t, l.APIAddr())
	// Windows of the canary: they end after its rollout began.
	time.Sleep(time.Second)
	end := time.Now()
	var windows [][]byte
	for i := range 4 {
		w := &sketch.Window{NodeID: a.node.GetId(), Deployment: "cams", Model: "det", Version: "3",
			Start: end.Add(time.Duration(i-4) * 100 * time.Millisecond), End: end.Add(time.Duration(i-3) * 100 * time.Millisecond),
			Profile: featureProfile(t, rng, 250, 1)}
		b, err := w.Encode()
		if err != nil {
			t.Fatal(err)
		}
		windows = append(windows, b)
	}
	if r, err := tel.ShipTelemetry(ctx, connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: windows})); err != nil || len(r.Msg.GetRefused()) > 0 {
		t.Fatalf("ship: %v %v", r, err)
	}
	eventually(t, 20*time.Second, "version 3 gets its reference from the canary", func() error {
		v, err := cl.Models.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: "det", Ref: "3"}))
		if err != nil {
			return err
		}
		if v.Msg.GetVersion().GetReferenceSource() != "canary" {
			return fmt.Errorf("reference source %q", v.Msg.GetVersion().GetReferenceSource())
		}
		ref := v.Msg.GetVersion().GetReference()
		// Taken once at least 3 windows were in: 3 or all 4 of them.
		if n := ref.GetRequests(); (n != 750 && n != 1000) || len(ref.GetInputs()) != 1 || ref.GetInputs()[0].GetName() != "x" {
			t.Fatalf("reference from the canary: %d requests, %d inputs; want 3 or 4 windows of 250 requests of x", n, len(ref.GetInputs()))
		}
		return nil
	})
	// Drift is now measured against it: the canary's own traffic is stable.
	d, err := cl.Drift.GetDrift(ctx, connect.NewRequest(&droverv1.GetDriftRequest{Model: "det", Ref: "3"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Msg.GetCohorts()) != 1 || d.Msg.GetCohorts()[0].GetVerdict() != droverv1.DriftVerdict_DRIFT_VERDICT_STABLE || d.Msg.GetReferenceSource() != "canary" {
		t.Errorf("drift against the canary's reference: %v", d.Msg)
	}
}
