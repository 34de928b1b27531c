package telemetry_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/telemetry"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// nodeWindow is node's metrics window ending at end: one GPU at util
// percent, and the Xid events given.
func nodeWindow(t *testing.T, node string, end time.Time, util float64, site string, xids ...uint64) *droverv1.StoredWindow {
	t.Helper()
	u := sketch.NewNumeric()
	if err := u.Add(util); err != nil {
		t.Fatal(err)
	}
	g := &droverv1.GPUMetrics{Uuid: "GPU-" + node, Model: "L4", UtilizationPercent: u.ToProto(), EccUncorrected: 1}
	for _, x := range xids {
		g.XidEvents = append(g.XidEvents, &droverv1.XidEvent{GpuUuid: g.Uuid, Xid: x, At: tsp(end)})
	}
	w := &droverv1.TelemetryWindow{NodeId: node, Start: tsp(end.Add(-time.Minute)), End: tsp(end),
		Node: &droverv1.NodeMetrics{MemoryTotalBytes: 64 << 30, Gpus: []*droverv1.GPUMetrics{g}}}
	b, err := proto.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sketch.UnmarshalWindow(b); err != nil {
		t.Fatalf("a node window the agent sends is refused: %v", err)
	}
	return &droverv1.StoredWindow{Window: b, Site: site, Holders: []string{"s1"}}
}

// Node metrics windows are stored beside the model windows and merged on
// their own: GPUs by UUID, ECC counts summed, Xid events kept. A query of
// model windows never sees them, and the other way round.
func TestNodeMetricsWindowsMerge(t *testing.T) {
	opts := telemetry.DefaultOptions()
	opts.Now = clockAt(t0)
	s := open(t, t.TempDir(), opts)
	if err := s.Put([]*droverv1.StoredWindow{
		nodeWindow(t, "n1", t0.Add(time.Minute), 40, "berlin"),
		nodeWindow(t, "n1", t0.Add(2*time.Minute), 60, "berlin", 79),
		nodeWindow(t, "n2", t0.Add(2*time.Minute), 90, "lyon"),
		window(t, "n1", "v1", t0.Add(2*time.Minute), 5, 0.01, "berlin", "s1"),
	}); err != nil {
		t.Fatal(err)
	}
	gs := query(t, s, &droverv1.QueryTelemetryRequest{Since: tsp(t0), Until: tsp(t0.Add(time.Hour)), GroupBy: "site", NodeMetrics: true}, "s1", "s1")
	if len(gs) != 2 || gs[0].GetKey() != "berlin" || gs[0].GetWindows() != 2 {
		t.Fatalf("node groups: %v", gs)
	}
	b := gs[0].GetNode()
	if len(b.GetGpus()) != 1 {
		t.Fatalf("berlin's node metrics: %v", b)
	}
	g := b.GetGpus()[0]
	if g.GetUuid() != "GPU-n1" || g.GetUtilizationPercent().GetCount() != 2 || g.GetUtilizationPercent().GetSum() != 100 ||
		g.GetEccUncorrected() != 2 || len(g.GetXidEvents()) != 1 || g.GetXidEvents()[0].GetXid() != 79 || b.GetMemoryTotalBytes() != 64<<30 {
		t.Errorf("berlin's GPU: %v", g)
	}
	if gs[0].GetProfile().GetRequests() != 0 {
		t.Errorf("a node metrics query counted model requests: %v", gs[0].GetProfile())
	}
	model := query(t, s, &droverv1.QueryTelemetryRequest{Since: tsp(t0), Until: tsp(t0.Add(time.Hour))}, "s1", "s1")
	if len(model) != 1 || model[0].GetProfile().GetRequests() != 5 || model[0].GetNode() != nil || model[0].GetWindows() != 1 {
		t.Errorf("model query: %v", model)
	}
}
