package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/quic-go/quic-go/http3"

	"github.com/droverhq/drover/agent/telemetry"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// TelemetryStatus is where the node's request telemetry stands.
type TelemetryStatus struct {
	// On is false when telemetry is turned off.
	On bool
	// SpooledRecords and SpooledBytes are what waits on disk for a
	// server; a record is a window, or several merged.
	SpooledRecords int
	SpooledBytes   int64
	// Observed counts requests taken into windows since the agent
	// started.
	Observed uint64
	// Shipped and Refused count windows servers stored, and refused.
	Shipped, Refused uint64
	// DroppedWindows counts closed windows the spool threw away to stay
	// within its size (exact, across restarts); DroppedObservations
	// counts requests the endpoint could not hand to the collector
	// (it was behind) since the agent started.
	DroppedWindows      uint64
	DroppedObservations uint64
	// Merges counts merges the spool made to keep a long outage
	// in its size.
	Merges uint64
	// LastShipError is the last failed shipment's error, "" once one
	// succeeds.
	LastShipError   string
	LastShipErrorAt time.Time
}

// telemetryParts are the node's collector, spool and shipper; they live
// as long as serving does, across sessions.
type telemetryParts struct {
	spool     *telemetry.Spool
	collector *telemetry.Collector
	shipper   *telemetry.Shipper
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// startTelemetry opens the spool under the data directory and starts the
// collector and shipper. The shipper sends nothing until a session gives
// it a server.
func (a *Agent) startTelemetry(nodeID string, log *slog.Logger) (*telemetryParts, error) {
	dir := filepath.Join(a.cfg.DataDir, "telemetry")
	spool, err := telemetry.OpenSpool(dir, telemetry.SpoolOptions{
		MaxBytes: cmp.Or(a.cfg.TelemetrySpoolBytes, DefaultTelemetrySpoolBytes),
		Merge:    telemetry.MergeWindows,
		MaxSpan:  a.cfg.TelemetryMaxMerge,
	})
	if err != nil {
		return nil, withHint(err, "remove %s to start the telemetry spool afresh (its windows are lost)", dir)
	}
	sh, err := telemetry.NewShipper(telemetry.ShipperConfig{Spool: spool, Logger: log})
	if err != nil {
		return nil, err
	}
	ccfg := telemetry.DefaultCollectorConfig()
	ccfg.NodeID, ccfg.Spool, ccfg.Logger = nodeID, spool, log
	ccfg.Window = cmp.Or(a.cfg.TelemetryWindow, DefaultTelemetryWindow)
	ccfg.Now = a.cfg.TelemetryNow
	ccfg.Notify = sh.Poke
	if a.cfg.TelemetryNow != nil {
		// Simulated time jumps; look for ended windows often.
		ccfg.Tick = 10 * time.Millisecond
	}
	col, err := telemetry.NewCollector(ccfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &telemetryParts{spool: spool, collector: col, shipper: sh, cancel: cancel}
	tp.wg.Go(func() { col.Run(ctx) })
	tp.wg.Go(func() { sh.Run(ctx) })
	if a.cfg.TelemetryNow == nil {
		// The health monitor samples on the real clock: with a simulated
		// one its windows would not line up, so they are left out.
		tp.wg.Go(func() { a.spoolNodeWindows(ctx, tp, nodeID, ccfg.Window, log) })
	}
	return tp, nil
}

// spoolNodeWindows spools the node's own metrics (CPU, memory, disk, GPUs
// and their Xid events, from the health monitor) once per window, on the
// same boundaries as the request windows, until ctx ends.
func (a *Agent) spoolNodeWindows(ctx context.Context, tp *telemetryParts, nodeID string, window time.Duration, log *slog.Logger) {
	next := time.Now().Truncate(window).Add(window)
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start, end := next.Add(-window), next
		next = next.Add(window)
		t.Reset(time.Until(next))
		m := a.NodeMetrics(start, end)
		if m == nil || sketch.NodeMetricsEmpty(m) {
			continue
		}
		data, err := telemetry.EncodeNodeWindow(nodeID, start, end, m)
		if err == nil {
			err = tp.spool.Add(telemetry.Record{Key: telemetry.NodeRecordKey, Start: start, End: end, Windows: 1, Data: data})
		}
		if err != nil {
			log.Warn("node metrics window not spooled", "err", err)
			continue
		}
		tp.shipper.Poke()
	}
}

// stop ends the collector, which spools the windows still open, and the
// shipper. Call it after the endpoint stopped taking requests.
func (tp *telemetryParts) stop() {
	if tp == nil {
		return
	}
	tp.cancel()
	tp.wg.Wait()
}

func (tp *telemetryParts) status() TelemetryStatus {
	if tp == nil {
		return TelemetryStatus{}
	}
	sp, sh, col := tp.spool.Stats(), tp.shipper.Stats(), tp.collector.Stats()
	return TelemetryStatus{
		On:             true,
		SpooledRecords: sp.Records, SpooledBytes: sp.Bytes,
		Observed: col.Observed, Shipped: sh.Shipped, Refused: sh.Refused,
		DroppedWindows: sp.DroppedWindows, DroppedObservations: col.Dropped,
		Merges:        sp.Merges,
		LastShipError: sh.LastError, LastShipErrorAt: sh.LastErrorAt,
	}
}

// telemetrySender ships windows to one server over the session's QUIC
// transport, the connection heartbeats use.
type telemetrySender struct {
	c droverv1connect.TelemetryServiceClient
}

func newTelemetrySender(tr *http3.Transport, addr string) telemetrySender {
	return telemetrySender{droverv1connect.NewTelemetryServiceClient(&http.Client{Transport: tr}, "https://"+addr,
		connect.WithReadMaxBytes(maxMessageBytes))}
}

func (s telemetrySender) Send(ctx context.Context, windows [][]byte) (map[int]string, error) {
	resp, err := s.c.ShipTelemetry(ctx, connect.NewRequest(&droverv1.ShipTelemetryRequest{Windows: windows}))
	if err != nil {
		return nil, err
	}
	refused := make(map[int]string, len(resp.Msg.GetRefused()))
	for _, r := range resp.Msg.GetRefused() {
		if int(r.GetIndex()) >= len(windows) {
			return nil, fmt.Errorf("the server refused window %d of %d", r.GetIndex(), len(windows))
		}
		refused[int(r.GetIndex())] = r.GetReason()
	}
	return refused, nil
}
