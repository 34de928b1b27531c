package cli

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// fakeDrift answers GetDrift with a fixed answer and records the request.
type fakeDrift struct {
	f    *fakeServer // its mu guards the fields below
	last *droverv1.GetDriftRequest
	resp *droverv1.GetDriftResponse
}

func (d *fakeDrift) GetDrift(_ context.Context, req *connect.Request[droverv1.GetDriftRequest]) (*connect.Response[droverv1.GetDriftResponse], error) {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	d.last = proto.CloneOf(req.Msg)
	return connect.NewResponse(proto.CloneOf(d.resp)), nil
}

func TestDriftShowPrintsEachCohortsFeatures(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	numeric, categorical := droverv1.FeatureKind_FEATURE_KIND_NUMERIC, droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL
	h.fake.drift.resp = &droverv1.GetDriftResponse{
		Model: "fraud", Version: 7, ReferenceSource: "push",
		Cohorts: []*droverv1.CohortDrift{
			{Key: "berlin", Requests: 5000, Nodes: 3, Evaluated: 2, Drifted: 2, Verdict: droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED,
				Inputs: []*droverv1.FeatureDrift{
					{Name: "amount", Kind: numeric, CurrentCount: 5000, Psi: 0.412, Ks: 0.31, Verdict: droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED},
					{Name: "country", Kind: categorical, CurrentCount: 5000, Js: 0.2, Verdict: droverv1.DriftVerdict_DRIFT_VERDICT_DRIFTED},
				},
				Outputs: []*droverv1.FeatureDrift{{Name: "score", Kind: numeric, CurrentCount: 40, Reason: "100 reference and 40 current values, fewer than 100"}}},
			{Key: "lyon", Requests: 4000, Nodes: 2, Evaluated: 2, Verdict: droverv1.DriftVerdict_DRIFT_VERDICT_STABLE},
		},
		Missing: []*droverv1.ServerMiss{{ServerId: "s3", Reason: "unavailable"}},
	}
	out := h.ok("drift", "show", "fraud@prod", "--by", "site", "--since", "2h")
	wantContains(t, out,
		"fraud@7, reference from the push",
		"site berlin: drifted (2 of 2 judged inputs drifted), 5000 requests from 3 nodes",
		"amount", "0.412", "0.310",
		"country", "0.200",
		"out:score", "fewer than 100",
		"site lyon: stable",
		"server s3 did not answer (unavailable)")

	h.fake.mu.Lock()
	req := h.fake.drift.last
	h.fake.mu.Unlock()
	if req.GetModel() != "fraud" || req.GetRef() != "prod" || req.GetGroupBy() != "site" ||
		req.GetUntil().AsTime().Sub(req.GetSince().AsTime()) != 2*time.Hour {
		t.Errorf("GetDrift request = %v", req)
	}

	js := h.ok("drift", "show", "fraud", "-o", "json")
	var resp droverv1.GetDriftResponse
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil || len(resp.GetCohorts()) != 2 {
		t.Fatalf("-o json is not the GetDriftResponse (%v):\n%s", err, js)
	}
}

func TestDriftShowRefusesBadFlagsBeforeAsking(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fraud", "--by", "colour"}, "--by colour: want site, label:KEY, gpu or deployment"},
		{[]string{"fraud", "--by", "label:"}, "label: needs a key"},
		{[]string{"fraud", "--since", "-1h"}, "want a positive duration"},
		{[]string{"@prod"}, "model"},
	} {
		r := h.run(append([]string{"drift", "show"}, tc.args...)...)
		if r.code != exitUsage {
			t.Errorf("%v: exit %d, want %d", tc.args, r.code, exitUsage)
		}
		wantContains(t, r.stderr, tc.want)
	}
	h.fake.mu.Lock()
	defer h.fake.mu.Unlock()
	if h.fake.drift.last != nil {
		t.Error("a refused command reached the server")
	}
}

func TestNaturalCompareOrdersVectorElementsByIndex(t *testing.T) {
	names := []string{"input[10]", "p.argmax", "input[2]", "input[1]", "age", "input[02]", "input[100]", "input", "input[9]x"}
	slices.SortStableFunc(names, naturalCompare)
	want := []string{"age", "input", "input[1]", "input[2]", "input[02]", "input[9]x", "input[10]", "input[100]", "p.argmax"}
	if !slices.Equal(names, want) {
		t.Fatalf("sorted %q, want %q", names, want)
	}
}
