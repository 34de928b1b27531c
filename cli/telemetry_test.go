package cli

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// fakeTelemetry answers Query with fixed groups and records the request.
type fakeTelemetry struct {
	droverv1connect.UnimplementedTelemetryServiceHandler

	mu   sync.Mutex // guards the fields below
	last *droverv1.QueryTelemetryRequest
	resp *droverv1.QueryTelemetryResponse
}

func (f *fakeTelemetry) Query(_ context.Context, req *connect.Request[droverv1.QueryTelemetryRequest]) (*connect.Response[droverv1.QueryTelemetryResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = proto.CloneOf(req.Msg)
	return connect.NewResponse(f.resp), nil
}

// latencyProfile is a profile of n requests taking 10ms, 20ms, … n×10ms,
// failed of them with kind "timeout".
func latencyProfile(t *testing.T, n, failed int) *droverv1.Profile {
	t.Helper()
	p := sketch.NewProfile(nil)
	for i := range n {
		p.Requests++
		if err := p.Latency.Add(0.01 * float64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	for range failed {
		p.AddError("timeout")
	}
	return p.ToProto()
}

func TestTelemetryQuery(t *testing.T) {
	h := newHarness(t)
	start := timestamppb.New(testNow.Add(-time.Hour))
	h.fake.telem.resp = &droverv1.QueryTelemetryResponse{
		Groups: []*droverv1.TelemetryGroup{
			{Key: "berlin", Start: start, End: timestamppb.New(testNow), Windows: 60, Nodes: 2, Profile: latencyProfile(t, 100, 4)},
			{Key: "lyon", Start: start, End: timestamppb.New(testNow), Windows: 30, Nodes: 1, Profile: latencyProfile(t, 10, 0)},
		},
		Answered: []string{"s1", "s2"},
		Missing:  []*droverv1.ServerMiss{{ServerId: "s3", Reason: "connection refused"}},
	}
	r := h.run("telemetry", "query", "--model", "defect", "--site", "berlin", "--by", "site", "--since", "2h", "--step", "1m")
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	t.Log("\n" + r.stdout)
	// p50 of 10ms…1s is about 500ms and p99 about 990ms; of 10ms…100ms,
	// 50ms and 100ms (within the sketch's 1%).
	wantContains(t, squeeze(r.stdout),
		"GROUP START WINDOWS NODES REQUESTS ERRORS ERROR% P50 P99",
		" 60 2 100 4 4.00 ",
		" 30 1 10 0 0.00 ")
	for _, want := range []string{"berlin", "lyon"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if !strings.Contains(r.stderr, "server s3 did not answer") {
		t.Errorf("no warning about the missing server on stderr: %q", r.stderr)
	}
	f := h.fake.telem
	f.mu.Lock()
	q := f.last
	f.mu.Unlock()
	if q.GetModel() != "defect" || q.GetSite() != "berlin" || q.GetGroupBy() != "site" || q.GetStepSeconds() != 60 {
		t.Errorf("request %v", q)
	}
	if d := q.GetUntil().AsTime().Sub(q.GetSince().AsTime()); d != 2*time.Hour {
		t.Errorf("range %v, want 2h", d)
	}

	out := h.ok("telemetry", "query", "-o", "json")
	var got droverv1.QueryTelemetryResponse
	if err := protojson.Unmarshal([]byte(out), &got); err != nil || len(got.GetGroups()) != 2 || got.GetMissing()[0].GetServerId() != "s3" {
		t.Errorf("-o json: %v %v", &got, err)
	}

	for _, args := range [][]string{
		{"telemetry", "query", "--since", "0s"},
		{"telemetry", "query", "--since", "1h", "--until", "2h"},
		{"telemetry", "query", "--step", "1500ms"},
	} {
		if r := h.run(args...); r.code == 0 {
			t.Errorf("%v: accepted", args)
		}
	}
}

func TestLatencyRendering(t *testing.T) {
	n := sketch.NewNumeric()
	for _, v := range []float64{0.0123, 0.0123, 0.0123} {
		_ = n.Add(v)
	}
	if got := latency(n, 0.5); !strings.HasPrefix(got, "12.") || !strings.HasSuffix(got, "ms") {
		t.Errorf("latency of 12.3ms renders as %q", got)
	}
}
