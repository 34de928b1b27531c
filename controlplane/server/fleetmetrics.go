package server

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Fleet aggregates on /metrics.
const (
	// fleetWindow is the span the aggregates cover: the last whole minute,
	// the agents' default window.
	fleetWindow = time.Minute
	// fleetRefresh is how long a computed set of aggregates is served
	// before a scrape computes it again: a query fans out to every server.
	fleetRefresh = 15 * time.Second
	// fleetQueryTimeout bounds that query; a scrape waits for it.
	fleetQueryTimeout = 5 * time.Second
	// maxFleetSeries bounds the (site, deployment) pairs exposed; the
	// rest are counted in drover_fleet_series_dropped.
	maxFleetSeries = 1000
)

// fleetQuantiles are the latency quantiles exposed, one gauge each: the
// "quantile" label belongs to summaries, whose count and sum are
// cumulative, and these cover one minute.
var fleetQuantiles = []struct {
	q    float64
	desc *prometheus.Desc
}{
	{0.5, fleetLatencyDesc("p50", "median")},
	{0.9, fleetLatencyDesc("p90", "90th percentile")},
	{0.99, fleetLatencyDesc("p99", "99th percentile")},
}

func fleetLatencyDesc(name, what string) *prometheus.Desc {
	return prometheus.NewDesc("drover_fleet_latency_"+name+"_seconds",
		"Request latency, "+what+", over the last whole minute by site and deployment (within the sketch's 1% relative error).",
		[]string{"site", "deployment"}, nil)
}

var (
	fleetRequestsDesc = prometheus.NewDesc("drover_fleet_requests",
		"Requests the fleet's instances served in the last whole minute, by site and deployment, from every server's telemetry.",
		[]string{"site", "deployment"}, nil)
	fleetErrorsDesc = prometheus.NewDesc("drover_fleet_errors",
		"Failed requests in the last whole minute, by site and deployment.",
		[]string{"site", "deployment"}, nil)
	fleetWindowEndDesc = prometheus.NewDesc("drover_fleet_window_end_timestamp_seconds",
		"End of the minute the drover_fleet_* aggregates cover, in Unix seconds.", nil, nil)
	fleetMissingDesc = prometheus.NewDesc("drover_fleet_servers_missing",
		"Servers whose telemetry is missing from the drover_fleet_* aggregates (they did not answer).", nil, nil)
	fleetDroppedDesc = prometheus.NewDesc("drover_fleet_series_dropped",
		"Site and deployment pairs left out of the drover_fleet_* aggregates to bound their cardinality.", nil, nil)
)

// fleetCollector exposes fleet-wide aggregates of the telemetry every
// server holds, per site and deployment (never per node, to keep the
// series few). A scrape reuses the last answer for fleetRefresh.
type fleetCollector struct {
	s *Server

	mu      sync.Mutex // guards the fields below; held while computing
	at      time.Time  // when metrics were computed
	metrics []prometheus.Metric
}

var _ prometheus.Collector = (*fleetCollector)(nil)

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{fleetRequestsDesc, fleetErrorsDesc, fleetWindowEndDesc, fleetMissingDesc, fleetDroppedDesc} {
		ch <- d
	}
	for _, q := range fleetQuantiles {
		ch <- q.desc
	}
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.at) >= fleetRefresh || c.metrics == nil {
		if ms, ok := c.compute(now); ok {
			c.metrics, c.at = ms, now
		}
	}
	for _, m := range c.metrics {
		ch <- m
	}
}

// compute queries the fleet for the last whole minute.
func (c *fleetCollector) compute(now time.Time) ([]prometheus.Metric, bool) {
	if c.s.telemetry == nil || c.s.forwarder == nil {
		return nil, false
	}
	until := now.Truncate(fleetWindow)
	ctx, cancel := c.s.waitCtx(context.Background(), fleetQueryTimeout)
	defer cancel()
	res, err := c.s.queryFleet(ctx, &droverv1.QueryTelemetryRequest{
		Since: timestamppb.New(until.Add(-fleetWindow)), Until: timestamppb.New(until), GroupBy: "site,deployment",
	})
	if err != nil {
		c.s.logger.Debug("fleet metrics: query telemetry", "err", err)
		return nil, false
	}
	ms := []prometheus.Metric{
		prometheus.MustNewConstMetric(fleetWindowEndDesc, prometheus.GaugeValue, float64(until.Unix())),
		prometheus.MustNewConstMetric(fleetMissingDesc, prometheus.GaugeValue, float64(len(res.GetMissing()))),
	}
	dropped := 0
	for i, g := range res.GetGroups() {
		if i >= maxFleetSeries {
			dropped++
			continue
		}
		site, deployment, _ := strings.Cut(g.GetKey(), ",")
		p := g.GetProfile()
		var errs uint64
		for _, e := range p.GetErrors() {
			errs += e.GetCount()
		}
		ms = append(ms,
			prometheus.MustNewConstMetric(fleetRequestsDesc, prometheus.GaugeValue, float64(p.GetRequests()), site, deployment),
			prometheus.MustNewConstMetric(fleetErrorsDesc, prometheus.GaugeValue, float64(errs), site, deployment))
		lat, err := sketch.NumericFromProto(p.GetLatencySeconds())
		if err != nil || lat.Count() == 0 {
			continue
		}
		for _, q := range fleetQuantiles {
			if v, err := lat.Quantile(q.q); err == nil {
				ms = append(ms, prometheus.MustNewConstMetric(q.desc, prometheus.GaugeValue, v, site, deployment))
			}
		}
	}
	ms = append(ms, prometheus.MustNewConstMetric(fleetDroppedDesc, prometheus.GaugeValue, float64(dropped)))
	return ms, true
}
