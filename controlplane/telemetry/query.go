package telemetry

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Query limits.
const (
	// DefaultRange is how far back a query reaches when it names no since.
	DefaultRange = time.Hour
	// MaxSteps bounds the time buckets of one query.
	MaxSteps = 10000
	// MaxGroups bounds the groups one answer may hold.
	MaxGroups = 100000
)

// Normalize checks q and fills in its time range from now: until defaults
// to now, since to DefaultRange before until. A coordinating server
// normalizes once and sends the result to every peer, so they all cut the
// same buckets.
func Normalize(q *droverv1.QueryTelemetryRequest, now time.Time) (*droverv1.QueryTelemetryRequest, error) {
	q = proto.CloneOf(q)
	if q == nil {
		q = &droverv1.QueryTelemetryRequest{}
	}
	if _, err := groupKeyFunc(q.GroupBy); err != nil {
		return nil, err
	}
	until := now
	if q.Until != nil {
		if err := q.Until.CheckValid(); err != nil {
			return nil, fmt.Errorf("query until: %w", err)
		}
		until = q.Until.AsTime()
	}
	since := until.Add(-DefaultRange)
	if q.Since != nil {
		if err := q.Since.CheckValid(); err != nil {
			return nil, fmt.Errorf("query since: %w", err)
		}
		since = q.Since.AsTime()
	}
	if !until.After(since) {
		return nil, fmt.Errorf("query range: until %v is not after since %v; pass a since earlier than until", until, since)
	}
	if q.StepSeconds > 0 {
		if n := until.Sub(since) / (time.Duration(q.StepSeconds) * time.Second); n > MaxSteps {
			return nil, fmt.Errorf("query step %ds cuts the range into %d buckets, more than %d: use a longer step or a shorter range", q.StepSeconds, n, MaxSteps)
		}
	}
	q.Since, q.Until = timestamppb.New(since), timestamppb.New(until)
	return q, nil
}

// groupKeyFunc returns the function giving a window's group for groupBy:
// one dimension, or several separated by commas ("site,deployment"), whose
// values the key joins with commas in the same order.
func groupKeyFunc(groupBy string) (func(w *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string, error) {
	if dims := strings.Split(groupBy, ","); len(dims) > 1 {
		fs := make([]func(*droverv1.TelemetryWindow, *droverv1.StoredWindow) string, len(dims))
		for i, d := range dims {
			f, err := groupKeyFunc(d)
			if err != nil || d == "" {
				return nil, fmt.Errorf("query group by %q: want dimensions among site, label:KEY, gpu, version, deployment, node, separated by commas", groupBy)
			}
			fs[i] = f
		}
		return func(w *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string {
			parts := make([]string, len(fs))
			for i, f := range fs {
				parts[i] = f(w, sw)
			}
			return strings.Join(parts, ",")
		}, nil
	}
	return groupKey1(groupBy)
}

func groupKey1(groupBy string) (func(w *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string, error) {
	switch {
	case groupBy == "":
		return func(*droverv1.TelemetryWindow, *droverv1.StoredWindow) string { return "" }, nil
	case groupBy == "site":
		return func(_ *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string { return sw.Site }, nil
	case groupBy == "gpu":
		return func(_ *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string { return sw.GpuModel }, nil
	case groupBy == "version":
		return func(w *droverv1.TelemetryWindow, _ *droverv1.StoredWindow) string { return w.Version }, nil
	case groupBy == "deployment":
		return func(w *droverv1.TelemetryWindow, _ *droverv1.StoredWindow) string { return w.Deployment }, nil
	case groupBy == "node":
		return func(w *droverv1.TelemetryWindow, _ *droverv1.StoredWindow) string { return w.NodeId }, nil
	case strings.HasPrefix(groupBy, "label:") && len(groupBy) > len("label:"):
		k := strings.TrimPrefix(groupBy, "label:")
		return func(_ *droverv1.TelemetryWindow, sw *droverv1.StoredWindow) string { return sw.Labels[k] }, nil
	}
	return nil, fmt.Errorf("query group by %q: want one of \"\", site, label:KEY, gpu, version, deployment, node", groupBy)
}

// Counter says whether this server counts a window: the first of the
// window's holders that is among the answering servers counts it, so that
// merging every answering server's part counts each window exactly once.
// With no answering list (a query of one store) every window counts.
func Counter(self string, answering []string) func(holders []string) bool {
	if len(answering) == 0 {
		return func([]string) bool { return true }
	}
	in := make(map[string]bool, len(answering))
	for _, a := range answering {
		in[a] = true
	}
	return func(holders []string) bool {
		for _, h := range holders {
			if in[h] {
				return h == self
			}
		}
		// No holder answers, yet this server holds the window (its holder
		// list predates a rename, say): count it here rather than nowhere.
		return true
	}
}

// Query merges the windows of q (normalized) that this server counts among
// the answering servers (see Counter) into groups.
func (s *Store) Query(q *droverv1.QueryTelemetryRequest, self string, answering []string) ([]*droverv1.TelemetryGroup, error) {
	keyOf, err := groupKeyFunc(q.GroupBy)
	if err != nil {
		return nil, err
	}
	counts := Counter(self, answering)
	since, until := q.Since.AsTime(), q.Until.AsTime()
	m := newMerger(since, until, q.StepSeconds)
	var scanErr error
	err = s.Scan(since, until, func(end time.Time, sw *droverv1.StoredWindow) bool {
		if !counts(sw.Holders) {
			return true
		}
		if q.Site != "" && sw.Site != q.Site {
			return true
		}
		var w droverv1.TelemetryWindow
		if err := proto.Unmarshal(sw.Window, &w); err != nil {
			scanErr = fmt.Errorf("telemetry: query: decode window: %w", err)
			return false
		}
		if (q.Model != "" && w.Model != q.Model) || (q.Version != "" && w.Version != q.Version) ||
			(q.Deployment != "" && w.Deployment != q.Deployment) || (q.NodeId != "" && w.NodeId != q.NodeId) {
			return true
		}
		if q.NodeMetrics != (w.Profile == nil) {
			return true
		}
		if err := m.add(keyOf(&w, sw), end, 1, []string{w.NodeId}, w.Profile, w.Node); err != nil {
			scanErr = err
			return false
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if scanErr != nil {
		return nil, scanErr
	}
	return m.groups(), nil
}

// Merger merges groups from several servers' answers into one.
type Merger struct{ m *merger }

// NewMerger returns a merger for answers to q (normalized).
func NewMerger(q *droverv1.QueryTelemetryRequest) *Merger {
	return &Merger{m: newMerger(q.Since.AsTime(), q.Until.AsTime(), q.StepSeconds)}
}

// Add merges one server's groups.
func (m *Merger) Add(gs []*droverv1.TelemetryGroup) error {
	for _, g := range gs {
		if err := m.m.addGroup(g); err != nil {
			return err
		}
	}
	return nil
}

// Groups returns the merged groups, by key then start.
func (m *Merger) Groups() []*droverv1.TelemetryGroup { return m.m.groups() }

type bucketKey struct {
	key   string
	start int64
}

type bucket struct {
	key        string
	start, end time.Time
	windows    uint64
	nodes      map[string]struct{}
	extraNodes uint64 // nodes counted by other servers, not named
	profile    *sketch.Profile
	node       *sketch.NodeMetrics // node metrics windows' merge
}

type merger struct {
	since, until time.Time
	step         time.Duration
	buckets      map[bucketKey]*bucket
}

func newMerger(since, until time.Time, stepSeconds uint32) *merger {
	return &merger{since: since, until: until, step: time.Duration(stepSeconds) * time.Second, buckets: map[bucketKey]*bucket{}}
}

// span returns the bucket a window ending at end falls in: (since, until]
// cut into steps from since.
func (m *merger) span(end time.Time) (time.Time, time.Time) {
	if m.step <= 0 {
		return m.since, m.until
	}
	i := (end.Sub(m.since) - 1) / m.step
	start := m.since.Add(i * m.step)
	end = start.Add(m.step)
	if end.After(m.until) {
		end = m.until
	}
	return start, end
}

func (m *merger) bucket(key string, start, end time.Time) (*bucket, error) {
	bk := bucketKey{key, start.UnixNano()}
	b := m.buckets[bk]
	if b == nil {
		if len(m.buckets) >= MaxGroups {
			return nil, fmt.Errorf("telemetry: query: more than %d groups: filter more, group less finely or use a longer step", MaxGroups)
		}
		b = &bucket{key: key, start: start, end: end, nodes: map[string]struct{}{}, profile: sketch.NewProfile(nil), node: sketch.NewNodeMetrics()}
		m.buckets[bk] = b
	}
	return b, nil
}

func (m *merger) add(key string, end time.Time, windows uint64, nodes []string, p *droverv1.Profile, nm *droverv1.NodeMetrics) error {
	start, stop := m.span(end)
	b, err := m.bucket(key, start, stop)
	if err != nil {
		return err
	}
	b.windows += windows
	for _, n := range nodes {
		b.nodes[n] = struct{}{}
	}
	mergeProfile(b.profile, p)
	return mergeNode(b.node, nm)
}

// mergeNode merges a node metrics window; one that does not merge (a
// malformed sketch stored before a check existed) fails the query rather
// than skewing it silently.
func mergeNode(n *sketch.NodeMetrics, pb *droverv1.NodeMetrics) error {
	if err := n.MergeProto(pb); err != nil {
		return fmt.Errorf("telemetry: query: node metrics: %w", err)
	}
	return nil
}

func (m *merger) addGroup(g *droverv1.TelemetryGroup) error {
	b, err := m.bucket(g.Key, g.GetStart().AsTime(), g.GetEnd().AsTime())
	if err != nil {
		return err
	}
	b.windows += g.Windows
	// Servers send counts, not names: a node whose windows reached two
	// servers in one step is counted by each (see docs/telemetry.md).
	b.extraNodes += g.Nodes
	mergeProfile(b.profile, g.Profile)
	return mergeNode(b.node, g.Node)
}

// mergeProfile merges pb into p. Windows whose features changed kind (a
// new version's schema) still add their requests, errors and latency.
func mergeProfile(p *sketch.Profile, pb *droverv1.Profile) {
	if pb == nil {
		return
	}
	if err := p.MergeProto(pb); err != nil {
		_ = p.MergeProto(&droverv1.Profile{Requests: pb.Requests, Errors: pb.Errors, LatencySeconds: pb.LatencySeconds})
	}
}

func (m *merger) groups() []*droverv1.TelemetryGroup {
	bs := make([]*bucket, 0, len(m.buckets))
	for _, b := range m.buckets {
		bs = append(bs, b)
	}
	slices.SortFunc(bs, func(a, b *bucket) int {
		return cmp.Or(strings.Compare(a.key, b.key), a.start.Compare(b.start))
	})
	out := make([]*droverv1.TelemetryGroup, 0, len(bs))
	for _, b := range bs {
		out = append(out, &droverv1.TelemetryGroup{
			Key:     b.key,
			Start:   timestamppb.New(b.start),
			End:     timestamppb.New(b.end),
			Windows: b.windows,
			Nodes:   uint64(len(b.nodes)) + b.extraNodes,
			Profile: b.profile.ToProto(),
		})
		if !b.node.Empty() {
			out[len(out)-1].Node = b.node.ToProto()
		}
	}
	return out
}
