package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/droverhq/drover/internal/tlsguard"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// metrics are the server's Prometheus series, on its own registry so
// several servers in one process (tests) do not collide.
type metrics struct {
	applyLatency prometheus.Histogram
	requests     *prometheus.CounterVec
	reqLatency   *prometheus.HistogramVec
	heartbeats   prometheus.Counter
	// suspectsCounted and suspectsIgnored are the two outcomes of
	// drover_gossip_suspect_reports_total, made once so a heartbeat
	// does not look its label up.
	suspectsCounted, suspectsIgnored prometheus.Counter
	// rejectedConns counts connections refused before their TLS
	// handshake completed, by listener and tlsguard reason.
	rejectedConns *prometheus.CounterVec
	// gossipRefused counts what memberlist refused from a remote host
	// (a packet it could not decrypt, a stream with the wrong label).
	gossipRefused prometheus.Counter
	// aclDenials counts write calls refused for lack of a capability or
	// a valid token; aclDenialsDropped the refusals that did not reach
	// the audit log (over the per-interval bound, or no leader).
	aclDenials        prometheus.Counter
	aclDenialsDropped prometheus.Counter
	// chunksMissing, fillChunks, fillBytes and fillErrors follow the
	// filler: what live versions list that the store lacks, and what it
	// copied from peers.
	chunksMissing         prometheus.Gauge
	fillChunks, fillBytes prometheus.Counter
	fillErrors            prometheus.Counter
	// servedToAgents and servedToOperators count the chunk bytes pulls
	// took from this server.
	servedToAgents, servedToOperators prometheus.Counter
	// rolloutProposed and rolloutRefused count the rollout controller's
	// decisions this server wrote as leader, and those not written (stale
	// or failed).
	rolloutProposed, rolloutRefused prometheus.Counter
	// telemetryWindows counts shipped windows by outcome: stored,
	// refused (bad or foreign, never worth sending again) or unavailable
	// (not stored now; the agent keeps it). telemetryCopyFailures counts
	// copies of windows to a peer that failed.
	telemetryWindows      *prometheus.CounterVec
	telemetryCopyFailures prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, s *Server) *metrics {
	m := &metrics{
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_raft_apply_seconds",
			Help:    "Time from proposing a command until it is committed and applied on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_api_requests_total",
			Help: "API calls handled, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		reqLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "drover_api_request_seconds",
			Help:    "API call latency by procedure.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"procedure"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_heartbeats_total",
			Help: "Node heartbeats this server handled as leader.",
		}),
		gossipRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_gossip_refused_messages_total",
			Help: "Packets and streams from remote hosts that the server gossip pool refused or could not read " +
				"(not decryptable with the cluster's key, a wrong label, malformed), as memberlist reported them.",
		}),
	}
	suspects := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_gossip_suspect_reports_total",
		Help: "Site peers that agents reported as suspects in their heartbeats to this server as leader: " +
			"counted (a node of the reporter's site, whose wait for its next heartbeat is shortened) or ignored.",
	}, []string{"result"})
	m.rejectedConns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_rejected_connections_total",
		Help: "Connections closed before their TLS handshake completed, by listener (raft, api) and reason: " +
			"too_many_pending (the remote host had too many handshakes in progress), handshake_timeout, handshake_failed.",
	}, []string{"listener", "reason"})
	for _, l := range []string{listenerRaft, listenerAPI} {
		for _, r := range tlsguard.Reasons {
			m.rejectedConns.WithLabelValues(l, r)
		}
	}
	m.aclDenials = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_acl_denied_writes_total",
		Help: "Write calls this server refused because the caller's token was missing, invalid, expired or lacked the capability.",
	})
	m.aclDenialsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_acl_denials_unrecorded_total",
		Help: "Refused write calls that were not written to the audit log one by one: over the per-token bound, or no leader to record them.",
	})
	m.chunksMissing = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "drover_chunks_missing",
		Help: "Chunks that versions list and this server's chunk store lacks, as of the last fill round; the filler copies them from other servers.",
	})
	m.fillChunks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_chunk_fill_chunks_total",
		Help: "Chunks this server copied from other servers in the background because a version lists them.",
	})
	m.fillBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_chunk_fill_bytes_total",
		Help: "Bytes of the chunks this server copied from other servers in the background.",
	})
	served := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_chunk_served_bytes_total",
		Help: "Bytes of chunks this server sent to agents and operators that pulled versions: its egress for model bytes.",
	}, []string{"to"})
	m.servedToAgents = served.WithLabelValues("agent")
	m.servedToOperators = served.WithLabelValues("operator")
	m.fillErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_chunk_fill_errors_total",
		Help: "Failed background copies: a server that did not say which chunks it holds, or a chunk stream from it that failed.",
	})
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_rollout_decisions_total",
		Help: "Rollout controller decisions this server proposed as leader, by outcome: written, or refused (stale, or the write failed) and decided again.",
	}, []string{"outcome"})
	m.rolloutProposed = decisions.WithLabelValues("written")
	m.rolloutRefused = decisions.WithLabelValues("refused")
	m.telemetryWindows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_telemetry_windows_total",
		Help: "Telemetry windows agents shipped to this server, by outcome: stored (here and on one peer), " +
			"refused (malformed, foreign, too old or too far in the future) or unavailable (no copy could be made; the agent keeps them).",
	}, []string{"outcome"})
	for _, o := range []string{"stored", "refused", "unavailable"} {
		m.telemetryWindows.WithLabelValues(o)
	}
	m.telemetryCopyFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_telemetry_copy_failures_total",
		Help: "Copies of received telemetry windows to another server that failed (the next peer is tried).",
	})
	m.suspectsCounted = suspects.WithLabelValues("counted")
	m.suspectsIgnored = suspects.WithLabelValues("ignored")
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		m.applyLatency, m.requests, m.reqLatency, m.heartbeats, suspects, m.rejectedConns, m.gossipRefused, m.aclDenials, m.aclDenialsDropped, nodeCollector{s: s},
		m.chunksMissing, m.fillChunks, m.fillBytes, m.fillErrors, served, decisions,
		m.telemetryWindows, m.telemetryCopyFailures, &fleetCollector{s: s},
		gauge("drover_telemetry_store_bytes", "Bytes of the telemetry windows this server holds (keys and values), what telemetry_max_bytes bounds.", func() float64 {
			if s.telemetry == nil {
				return 0
			}
			st, err := s.telemetry.Stats()
			if err != nil {
				return 0
			}
			return float64(st.Bytes)
		}),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		gauge("drover_raft_state", "Raft state: 0 follower, 1 candidate, 2 leader, 3 shutdown.", func() float64 {
			if s.raft == nil {
				return 3
			}
			return float64(s.raft.State())
		}),
		gauge("drover_raft_is_leader", "1 when this server is the leader.", func() float64 {
			if s.raft != nil && s.raft.State() == raft.Leader {
				return 1
			}
			return 0
		}),
		gauge("drover_raft_term", "Current Raft term.", func() float64 { return raftStat(s, (*raft.Raft).CurrentTerm) }),
		gauge("drover_raft_last_index", "Last Raft log index.", func() float64 { return raftStat(s, (*raft.Raft).LastIndex) }),
		gauge("drover_raft_commit_index", "Raft commit index.", func() float64 { return raftStat(s, (*raft.Raft).CommitIndex) }),
		gauge("drover_raft_applied_index", "Last index applied to the state machine.", func() float64 { return raftStat(s, (*raft.Raft).AppliedIndex) }),
		gauge("drover_fsm_index", "Index of the replicated state.", func() float64 {
			if s.state == nil {
				return 0
			}
			return float64(s.state.Index())
		}),
		gauge("drover_raft_last_contact_seconds", "Seconds since a follower last heard from the leader (0 on the leader).", func() float64 {
			if s.raft == nil || s.raft.State() == raft.Leader {
				return 0
			}
			lc := s.raft.LastContact()
			if lc.IsZero() {
				return -1
			}
			return time.Since(lc).Seconds()
		}),
	)
	return m
}

func raftStat(s *Server, f func(*raft.Raft) uint64) float64 {
	if s.raft == nil {
		return 0
	}
	return float64(f(s.raft))
}

// interceptor counts API calls and measures their latency.
func (m *metrics) interceptor() connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			start := time.Now()
			res, err := next(ctx, req)
			code := "ok"
			if err != nil {
				code = connect.CodeOf(err).String()
				var ce *connect.Error
				if !errors.As(err, &ce) {
					code = connect.CodeUnknown.String()
				}
			}
			proc := req.Spec().Procedure
			m.requests.WithLabelValues(proc, code).Inc()
			m.reqLatency.WithLabelValues(proc).Observe(time.Since(start).Seconds())
			return res, err
		}
	})
}

// nodeCollector reports drover_nodes: how many nodes this server's state
// holds in each status, counted once per scrape.
type nodeCollector struct{ s *Server }

var nodesDesc = prometheus.NewDesc("drover_nodes", "Nodes by status, from this server's state.", []string{"status"}, nil)

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- nodesDesc }

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[droverv1.NodeStatus]int{}
	if c.s.state != nil {
		for _, n := range c.s.state.Nodes() {
			counts[n.GetStatus()]++
		}
	}
	for _, st := range []droverv1.NodeStatus{
		droverv1.NodeStatus_NODE_STATUS_INITIALIZING, droverv1.NodeStatus_NODE_STATUS_READY,
		droverv1.NodeStatus_NODE_STATUS_DOWN, droverv1.NodeStatus_NODE_STATUS_LEFT,
	} {
		label := strings.ToLower(strings.TrimPrefix(st.String(), "NODE_STATUS_"))
		ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(counts[st]), label)
	}
}
