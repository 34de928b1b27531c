package telemetry_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/droverhq/drover/controlplane/telemetry"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// window returns a stored window of node's one-minute window ending at end
// with reqs requests of latency lat seconds.
func window(t *testing.T, node, version string, end time.Time, reqs int, lat float64, site string, holders ...string) *droverv1.StoredWindow {
	t.Helper()
	p := sketch.NewProfile(nil)
	for range reqs {
		p.Requests++
		if err := p.Latency.Add(lat); err != nil {
			t.Fatal(err)
		}
	}
	w := &sketch.Window{NodeID: node, Deployment: "det", Model: "defect", Version: version, Start: end.Add(-time.Minute), End: end, Profile: p}
	b, err := w.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return &droverv1.StoredWindow{Window: b, Site: site, Labels: map[string]string{"zone": site + "-z"}, GpuModel: "L4", Holders: holders}
}

func open(t *testing.T, dir string, opts telemetry.Options) *telemetry.Store {
	t.Helper()
	s, err := telemetry.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func query(t *testing.T, s *telemetry.Store, q *droverv1.QueryTelemetryRequest, self string, answering ...string) []*droverv1.TelemetryGroup {
	t.Helper()
	q, err := telemetry.Normalize(q, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	gs, err := s.Query(q, self, answering)
	if err != nil {
		t.Fatal(err)
	}
	return gs
}

func clockAt(now time.Time) func() time.Time { return func() time.Time { return now } }

func TestPutSurvivesReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "telemetry")
	opts := telemetry.DefaultOptions()
	opts.Now = clockAt(t0)
	s := open(t, dir, opts)
	if err := s.Put([]*droverv1.StoredWindow{
		window(t, "n1", "v1", t0.Add(time.Minute), 10, 0.01, "berlin", "a"),
		window(t, "n2", "v1", t0.Add(2*time.Minute), 5, 0.02, "lyon", "a"),
	}); err != nil {
		t.Fatal(err)
	}
	before, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, opts)
	after, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.Windows != 2 || after.Bytes != before.Bytes || !after.Oldest.Equal(t0.Add(time.Minute)) || !after.Newest.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("after reopen: %+v, before %+v", after, before)
	}
	gs := query(t, s, &droverv1.QueryTelemetryRequest{Since: tsp(t0), GroupBy: "site"}, "a")
	if len(gs) != 2 || gs[0].Key != "berlin" || gs[0].Profile.Requests != 10 || gs[1].Key != "lyon" || gs[1].Profile.Requests != 5 {
		t.Fatalf("groups after reopen: %v", gs)
	}
}

func TestPutTwiceStoresOnceWithBothHolders(t *testing.T) {
	s := open(t, t.TempDir(), telemetry.DefaultOptions())
	w := window(t, "n1", "v1", t0.Add(time.Minute), 10, 0.01, "berlin", "a", "b")
	if err := s.Put([]*droverv1.StoredWindow{w}); err != nil {
		t.Fatal(err)
	}
	again := window(t, "n1", "v1", t0.Add(time.Minute), 10, 0.01, "berlin", "c")
	if err := s.Put([]*droverv1.StoredWindow{again}); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats()
	if st.Windows != 1 {
		t.Fatalf("windows = %d, want 1", st.Windows)
	}
	var holders []string
	_ = s.Scan(t0, t0.Add(time.Hour), func(_ time.Time, sw *droverv1.StoredWindow) bool { holders = sw.Holders; return true })
	if len(holders) != 3 || holders[0] != "a" || holders[2] != "c" {
		t.Fatalf("holders = %v, want [a b c]", holders)
	}
}

// Every window held by two of three servers is counted once in the merge
// of the answering servers' parts, whichever server is missing.
func TestHoldersRuleCountsEachWindowOnce(t *testing.T) {
	servers := []string{"a", "b", "c"}
	stores := map[string]*telemetry.Store{}
	for _, n := range servers {
		stores[n] = open(t, t.TempDir(), telemetry.DefaultOptions())
	}
	// Window i is received by servers[i%3] and copied to servers[(i+1)%3].
	const n = 30
	for i := range n {
		r, c := servers[i%3], servers[(i+1)%3]
		w := window(t, "n"+string(rune('0'+i%7)), "v1", t0.Add(time.Duration(i+1)*time.Second), 1, 0.01, "berlin", r, c)
		for _, h := range []string{r, c} {
			if err := stores[h].Put([]*droverv1.StoredWindow{w}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, answering := range [][]string{{"a", "b", "c"}, {"a", "b"}, {"b", "c"}, {"a", "c"}} {
		q, err := telemetry.Normalize(&droverv1.QueryTelemetryRequest{Since: tsp(t0)}, t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		m := telemetry.NewMerger(q)
		for _, srv := range answering {
			gs, err := stores[srv].Query(q, srv, answering)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Add(gs); err != nil {
				t.Fatal(err)
			}
		}
		gs := m.Groups()
		if len(gs) != 1 || gs[0].Windows != n || gs[0].Profile.Requests != n {
			t.Fatalf("answering %v: groups %v, want one with %d windows and requests", answering, gs, n)
		}
	}
}

func TestQueryGroupsStepsAndFilters(t *testing.T) {
	s := open(t, t.TempDir(), telemetry.DefaultOptions())
	if err := s.Put([]*droverv1.StoredWindow{
		window(t, "n1", "v1", t0.Add(1*time.Minute), 1, 0.01, "berlin"),
		window(t, "n1", "v1", t0.Add(2*time.Minute), 2, 0.01, "berlin"),
		window(t, "n2", "v2", t0.Add(2*time.Minute), 4, 0.01, "lyon"),
		window(t, "n3", "v2", t0.Add(3*time.Minute), 8, 0.01, "lyon"),
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		q    *droverv1.QueryTelemetryRequest
		want map[string]uint64 // key@minute → requests
	}{
		{"all", &droverv1.QueryTelemetryRequest{}, map[string]uint64{"@0": 15}},
		{"by version", &droverv1.QueryTelemetryRequest{GroupBy: "version"}, map[string]uint64{"v1@0": 3, "v2@0": 12}},
		{"by label", &droverv1.QueryTelemetryRequest{GroupBy: "label:zone"}, map[string]uint64{"berlin-z@0": 3, "lyon-z@0": 12}},
		{"by node in steps", &droverv1.QueryTelemetryRequest{GroupBy: "node", StepSeconds: 120},
			map[string]uint64{"n1@0": 3, "n2@0": 4, "n3@2": 8}},
		{"by site and version", &droverv1.QueryTelemetryRequest{GroupBy: "site,version"}, map[string]uint64{"berlin,v1@0": 3, "lyon,v2@0": 12}},
		{"site filter", &droverv1.QueryTelemetryRequest{Site: "lyon", GroupBy: "gpu"}, map[string]uint64{"L4@0": 12}},
		{"range excludes older", &droverv1.QueryTelemetryRequest{Since: tsp(t0.Add(2 * time.Minute))}, map[string]uint64{"@2": 8}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.q.Since == nil {
				tt.q.Since = tsp(t0)
			}
			gs := query(t, s, tt.q, "a")
			got := map[string]uint64{}
			for _, g := range gs {
				got[g.Key+"@"+itoa(int(g.Start.AsTime().Sub(t0)/time.Minute))] = g.Profile.Requests
			}
			if len(got) != len(tt.want) {
				t.Fatalf("groups %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Fatalf("groups %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestNormalizeRefusesBadQueries(t *testing.T) {
	for _, q := range []*droverv1.QueryTelemetryRequest{
		{GroupBy: "colour"},
		{GroupBy: "label:"},
		{GroupBy: "site,"},
		{GroupBy: "site,colour"},
		{Since: tsp(t0), Until: tsp(t0)},
		{Since: tsp(t0.Add(-24 * time.Hour)), Until: tsp(t0), StepSeconds: 1},
	} {
		if _, err := telemetry.Normalize(q, t0); err == nil {
			t.Errorf("Normalize(%v) = nil error", q)
		}
	}
}

func TestPruneByAgeAndSize(t *testing.T) {
	now := t0.Add(8 * 24 * time.Hour)
	opts := telemetry.DefaultOptions()
	opts.Now = clockAt(now)
	s := open(t, t.TempDir(), opts)
	old := window(t, "n1", "v1", now.Add(-7*24*time.Hour-time.Minute), 1, 0.01, "berlin")
	var recent []*droverv1.StoredWindow
	for i := range 10 {
		recent = append(recent, window(t, "n1", "v1", now.Add(-time.Duration(10-i)*time.Minute), 1, 0.01, "berlin"))
	}
	if err := s.Put(append([]*droverv1.StoredWindow{old}, recent...)); err != nil {
		t.Fatal(err)
	}
	n, err := s.Prune()
	if err != nil || n != 1 {
		t.Fatalf("prune by age: %d, %v; want 1 deleted", n, err)
	}
	st, _ := s.Stats()
	if st.Windows != 10 || !st.Oldest.Equal(now.Add(-10*time.Minute)) {
		t.Fatalf("after age prune: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Half the bytes: the five oldest go.
	opts.MaxBytes = st.Bytes/2 + 1
	dir := t.TempDir()
	s = open(t, dir, opts)
	if err := s.Put(recent); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Prune(); err != nil || n != 5 {
		t.Fatalf("prune by size: %d, %v; want 5 deleted", n, err)
	}
	st2, _ := s.Stats()
	if st2.Windows != 5 || st2.Bytes > opts.MaxBytes || !st2.Oldest.Equal(now.Add(-5*time.Minute)) {
		t.Fatalf("after size prune: %+v (max %d)", st2, opts.MaxBytes)
	}
}

func TestOptionsValidate(t *testing.T) {
	if _, err := telemetry.Open(t.TempDir(), telemetry.Options{Retention: 0, MaxBytes: 1}); err == nil {
		t.Fatal("zero retention accepted")
	}
	if _, err := telemetry.Open(t.TempDir(), telemetry.Options{Retention: time.Hour, MaxBytes: -1}); err == nil {
		t.Fatal("negative max bytes accepted")
	}
}

// A Put that returned is on disk: a crash right after it (only what was
// synced survives) keeps every window, and a store reopened on the crashed
// disk counts their bytes again.
func TestPutSurvivesCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	opts := telemetry.DefaultOptions()
	opts.FS = fs
	s, err := telemetry.Open("/telemetry", opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Put([]*droverv1.StoredWindow{window(t, "n1", "v1", t0.Add(time.Duration(i+1)*time.Minute), i+1, 0.01, "berlin", "a", "b")}); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := s.Stats()
	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	_ = s.Close()
	opts.FS = crashed
	s2, err := telemetry.Open("/telemetry", opts)
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s2.Close()
	after, _ := s2.Stats()
	if after.Windows != 5 || after.Bytes != before.Bytes {
		t.Fatalf("after crash: %+v; before %+v", after, before)
	}
	gs := query(t, s2, &droverv1.QueryTelemetryRequest{Since: tsp(t0)}, "a", "a", "b")
	if len(gs) != 1 || gs[0].Profile.Requests != 15 || gs[0].Windows != 5 {
		t.Fatalf("groups after crash: %v", gs)
	}
}
