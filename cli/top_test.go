package cli

import (
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// samples sketches values.
func samples(t *testing.T, values ...float64) *droverv1.NumericSketch {
	t.Helper()
	n := sketch.NewNumeric()
	for _, v := range values {
		if err := n.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	return n.ToProto()
}

func TestTopShowsTrafficAndGPUsPerSite(t *testing.T) {
	h := newHarness(t)
	h.fake.telem.resp = &droverv1.QueryTelemetryResponse{Groups: []*droverv1.TelemetryGroup{
		{Key: "berlin", Nodes: 3, Profile: latencyProfile(t, 1200, 12), Node: &droverv1.NodeMetrics{Gpus: []*droverv1.GPUMetrics{
			{Uuid: "GPU-a", UtilizationPercent: samples(t, 40, 60), MemoryUsedBytes: samples(t, 2<<30, 2<<30)},
			{Uuid: "GPU-b", UtilizationPercent: samples(t, 70, 50), MemoryUsedBytes: samples(t, 4<<30, 4<<30),
				XidEvents: []*droverv1.XidEvent{{GpuUuid: "GPU-b", Xid: 79}}},
		}}},
		{Key: "lyon", Nodes: 1, Profile: latencyProfile(t, 120, 0)},
	}}
	out := h.ok("top", "--once")
	wantContains(t, out,
		"GROUP   NODES  REQ/S  ERROR%",
		// 1,200 requests over the 2m window, 1% failed; 2 GPUs at a mean
		// of 55%, 6 GiB in use, one Xid.
		"berlin  3      10.0   1.00",
		"2     55    6.0 GiB  1",
		"lyon    1      1.0    0.00")
	h.fake.telem.mu.Lock()
	last := h.fake.telem.last
	h.fake.telem.mu.Unlock()
	if !last.GetNodeMetrics() || last.GetGroupBy() != "site" || last.GetUntil().AsTime().Sub(last.GetSince().AsTime()) != 2*time.Minute {
		t.Errorf("last query %v: want node metrics by site over 2m", last)
	}

	js := h.ok("top", "-o", "json")
	var resp droverv1.QueryTelemetryResponse
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil || len(resp.GetGroups()) != 2 || resp.GetGroups()[0].GetNode() == nil {
		t.Fatalf("top -o json is not one joined snapshot (%v):\n%s", err, js)
	}
	if r := h.run("top", "--interval", "1ms"); r.code != exitUsage {
		t.Errorf("--interval 1ms: exit %d, want usage", r.code)
	}
}
