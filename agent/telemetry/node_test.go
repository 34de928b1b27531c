package telemetry

import (
	"testing"
	"time"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The spool merges the node's own windows as it merges request windows:
// when an outage outlasts its room, two node windows become one that spans
// both, with every GPU's samples, ECC counts and Xid events.
func TestMergeNodeWindows(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rec := func(start time.Time, util float64, xid uint64) Record {
		u := sketch.NewNumeric()
		if err := u.Add(util); err != nil {
			t.Fatal(err)
		}
		m := &droverv1.NodeMetrics{Gpus: []*droverv1.GPUMetrics{{Uuid: "GPU-0", UtilizationPercent: u.ToProto(), EccCorrected: 2,
			XidEvents: []*droverv1.XidEvent{{GpuUuid: "GPU-0", Xid: xid}}}}}
		data, err := EncodeNodeWindow("n1", start, start.Add(time.Minute), m)
		if err != nil {
			t.Fatal(err)
		}
		return Record{Key: NodeRecordKey, Start: start, End: start.Add(time.Minute), Windows: 1, Data: data}
	}
	got, err := MergeWindows(rec(t0, 20, 13), rec(t0.Add(time.Minute), 80, 79))
	if err != nil {
		t.Fatal(err)
	}
	if got.Windows != 2 || !got.Start.Equal(t0) || !got.End.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("merged record %+v", got)
	}
	w, err := sketch.UnmarshalWindow(got.Data)
	if err != nil {
		t.Fatalf("merged node window is refused by the servers' check: %v", err)
	}
	g := w.GetNode().GetGpus()
	if w.GetNodeId() != "n1" || len(g) != 1 || g[0].GetUtilizationPercent().GetCount() != 2 || g[0].GetUtilizationPercent().GetSum() != 100 ||
		g[0].GetEccCorrected() != 4 || len(g[0].GetXidEvents()) != 2 {
		t.Fatalf("merged node window: %v", w)
	}
}
