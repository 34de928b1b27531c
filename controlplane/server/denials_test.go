package server

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newTestRecorder(t *testing.T) (*denialRecorder, *Server) {
	t.Helper()
	s := &Server{logger: slog.New(slog.DiscardHandler)}
	s.metrics = newMetrics(prometheus.NewRegistry(), s)
	return newDenialRecorder(s), s
}

// A token that keeps calling what it may not gets a bounded number of
// audit events per interval, and the rest are counted on the last one, so
// the replicated log records that it happened and how often without
// growing with the attack.
func TestDenialRecorderBoundsEachToken(t *testing.T) {
	d, s := newTestRecorder(t)
	for range denialsPerActor + 3 {
		d.add(&droverv1.AccessDenial{AccessorId: "a", Procedure: "/p", Capability: "model:write"})
	}
	d.add(&droverv1.AccessDenial{AccessorId: "b", Procedure: "/p", Capability: "model:write"})

	batch := d.take()
	perActor := map[string]int{}
	var suppressed uint32
	for _, den := range batch {
		perActor[den.GetAccessorId()]++
		suppressed += den.GetSuppressed()
		if den.GetTime() == nil {
			t.Errorf("denial of %s has no time", den.GetAccessorId())
		}
	}
	if perActor["a"] != denialsPerActor || perActor["b"] != 1 || suppressed != 3 {
		t.Fatalf("recorded %v with %d suppressed; want %d of a, 1 of b, 3 suppressed", perActor, suppressed, denialsPerActor)
	}
	if got := testutil.ToFloat64(s.metrics.aclDenials); got != denialsPerActor+4 {
		t.Errorf("drover_acl_denied_writes_total = %v, want every refusal counted (%d)", got, denialsPerActor+4)
	}
	if len(d.take()) != 0 {
		t.Error("take left refusals behind")
	}
	// The next interval starts afresh.
	d.add(&droverv1.AccessDenial{AccessorId: "a", Procedure: "/p", Capability: "model:write"})
	if got := d.take(); len(got) != 1 || got[0].GetSuppressed() != 0 {
		t.Fatalf("after a take, a new refusal of a gave %v", got)
	}
}

// Many tokens at once fill one batch, which never grows past what one
// command may carry; the rest are counted as unrecorded.
func TestDenialRecorderBoundsTheBatch(t *testing.T) {
	d, s := newTestRecorder(t)
	for i := range maxPendingDenials + 10 {
		d.add(&droverv1.AccessDenial{AccessorId: fmt.Sprint(i), Procedure: "/p", Capability: "model:write"})
	}
	if got := len(d.take()); got != maxPendingDenials {
		t.Fatalf("batch of %d, want %d", got, maxPendingDenials)
	}
	if got := testutil.ToFloat64(s.metrics.aclDenialsDropped); got != 10 {
		t.Errorf("drover_acl_denials_unrecorded_total = %v, want 10", got)
	}
}
