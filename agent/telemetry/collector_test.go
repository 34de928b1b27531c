package telemetry

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/internal/sketch"
)

// fakeNow is a settable clock for the collector.
type fakeNow struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeNow) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeNow) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = t
}

// newTestCollector returns a collector on a fresh spool and a clock at t0.
// The collector is not running: tests call observe and closeEnded on it
// directly, from their own goroutine, as Run would.
func newTestCollector(t *testing.T, edit func(*CollectorConfig)) (*Collector, *Spool, *fakeNow) {
	t.Helper()
	sp, err := OpenSpool(t.TempDir(), SpoolOptions{MaxBytes: 16 << 20, Merge: MergeWindows})
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeNow{t: t0}
	cfg := DefaultCollectorConfig()
	cfg.NodeID, cfg.Spool, cfg.Now = "node-1", sp, clk.Now
	if edit != nil {
		edit(&cfg)
	}
	c, err := NewCollector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, sp, clk
}

func exchange(c *Collector, req, resp string, status int) *Exchange {
	e := c.Get()
	e.Deployment, e.Model, e.Version = "digits-prod", "digits", 3
	e.Latency, e.Status = 20*time.Millisecond, status
	e.CaptureRequest([]byte(req), c.CaptureBytes())
	e.CaptureResponse([]byte(resp), c.CaptureBytes())
	return e
}

// windows decodes everything in the spool, oldest first.
func windows(t *testing.T, sp *Spool) []*sketch.Window {
	t.Helper()
	var out []*sketch.Window
	for _, e := range sp.Oldest(1 << 20) {
		w, err := sketch.DecodeWindow(e.Data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	return out
}

func TestCollectorExtractsFeatures(t *testing.T) {
	c, sp, _ := newTestCollector(t, func(cfg *CollectorConfig) { cfg.MaxElements = 3 })
	// A batch of two rows (of four elements, one past the bound), a
	// categorical and a scalar, and two rows of output probabilities.
	c.observe(exchange(c,
		`{"inputs": {"pixels": [[1, 2, 3, 99], [4, 5, 6, 99]], "camera": "north", "gain": 1.5}}`,
		`{"outputs": {"probs": [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]}, "model": "digits", "latency_ms": 1.2}`, 200))
	// The second request lacks camera and gain: they count as missing.
	c.observe(exchange(c, `{"inputs": {"pixels": [[7, 8, 9]]}}`, `{"outputs": {"probs": [[0.2, 0.2, 0.6]]}}`, 200))
	// A failed request: its inputs count, its (error) answer does not.
	c.observe(exchange(c, `{"inputs": {"pixels": [[1, 1, 1]], "camera": 7}}`, `{"error": "boom"}`, 500))
	c.closeEnded(t0, true)

	ws := windows(t, sp)
	if len(ws) != 1 {
		t.Fatalf("%d windows, want 1", len(ws))
	}
	w := ws[0]
	if w.NodeID != "node-1" || w.Deployment != "digits-prod" || w.Model != "digits" || w.Version != "3" {
		t.Errorf("window labels %+v", w)
	}
	p := w.Profile
	if p.Requests != 3 || p.Errors["http_5xx"] != 1 || len(p.Errors) != 1 {
		t.Errorf("requests %d, errors %v: want 3 and one http_5xx", p.Requests, p.Errors)
	}
	if p.Latency.Count() != 3 {
		t.Errorf("latency count %d, want 3", p.Latency.Count())
	}
	for _, name := range []string{"pixels[0]", "pixels[1]", "pixels[2]"} {
		f := p.Input(name)
		if f == nil || f.Kind != sketch.KindNumeric || f.Numeric.Count() != 4 || f.Missing != 0 {
			t.Errorf("%s: %+v, want 4 numeric values, none missing", name, f)
		}
	}
	if f := p.Input("pixels[0]"); f != nil && (f.Numeric.Min() != 1 || f.Numeric.Max() != 7) {
		t.Errorf("pixels[0] from %v to %v, want 1 to 7", f.Numeric.Min(), f.Numeric.Max())
	}
	if p.Input("pixels[3]") != nil {
		t.Error("pixels[3] is past MaxElements but was observed")
	}
	cam := p.Input("camera")
	if cam == nil || cam.Kind != sketch.KindCategorical || cam.Categorical.Count("north") != 1 || cam.Missing != 1 || cam.OutOfSchema != 1 {
		t.Errorf("camera: %+v, want north once, one missing, one out of schema", cam)
	}
	if g := p.Input("gain"); g == nil || g.Numeric.Count() != 1 || g.Missing != 2 {
		t.Errorf("gain: %+v, want one value and two missing", g)
	}
	am := p.Output("probs.argmax")
	if am == nil || am.Kind != sketch.KindCategorical || am.Categorical.Count("1") != 1 || am.Categorical.Count("0") != 1 || am.Categorical.Count("2") != 1 {
		t.Errorf("probs.argmax: %+v, want 1, 0 and 2 once each", am)
	}
	if am != nil && am.Missing != 1 {
		t.Errorf("probs.argmax missing %d, want 1 (the failed request)", am.Missing)
	}
	if f := p.Output("probs[1]"); f == nil || f.Numeric.Count() != 3 {
		t.Errorf("probs[1]: %+v, want 3 values", f)
	}
	if st := c.Stats(); st.Observed != 3 || st.Unparsed != 0 {
		t.Errorf("stats %+v, want 3 observed, none unparsed", st)
	}
}

func TestCollectorCountsWithoutFeaturesWhenBodiesAreCutOrNotJSON(t *testing.T) {
	c, sp, _ := newTestCollector(t, func(cfg *CollectorConfig) { cfg.CaptureBytes = 16 })
	c.observe(exchange(c, `{"inputs": {"pixels": [[1, 2, 3, 4, 5]]}}`, `{}`, 200)) // cut at 16 bytes
	c.observe(exchange(c, `not json`, `{"outputs": {}}`, 200))
	e := exchange(c, ``, ``, 502)
	e.ErrKind = ErrKindUpstreamRefused
	c.observe(e)
	c.closeEnded(t0, true)
	ws := windows(t, sp)
	if len(ws) != 1 {
		t.Fatalf("%d windows, want 1", len(ws))
	}
	p := ws[0].Profile
	if p.Requests != 3 || len(p.Inputs) != 0 || p.Errors[ErrKindUpstreamRefused] != 1 {
		t.Errorf("requests %d, inputs %d, errors %v: want 3 requests, no features, one upstream_refused", p.Requests, len(p.Inputs), p.Errors)
	}
	if st := c.Stats(); st.Unparsed != 3 {
		t.Errorf("unparsed %d, want 3", st.Unparsed)
	}
}

func TestCollectorAlignsWindows(t *testing.T) {
	c, sp, clk := newTestCollector(t, nil)
	at := func(d time.Duration, n int) {
		clk.Set(t0.Add(d))
		for range n {
			c.observe(exchange(c, `{"inputs": {"x": 1}}`, `{"outputs": {"y": 2}}`, 200))
		}
	}
	at(17*time.Second, 2)                      // window [10:00, 10:01)
	at(59*time.Second+999*time.Millisecond, 1) // still that window
	if n := len(windows(t, sp)); n != 0 {
		t.Fatalf("%d windows spooled before the first ended", n)
	}
	at(time.Minute, 4) // closes the first, opens [10:01, 10:02)
	if n := len(windows(t, sp)); n != 1 {
		t.Fatalf("%d windows after the first ended, want 1", n)
	}
	// Nothing for a while: the tick closes the second window once its
	// end passed, without waiting for another request.
	c.closeEnded(t0.Add(time.Minute+59*time.Second), false)
	if n := len(windows(t, sp)); n != 1 {
		t.Fatalf("the open window was closed before its end")
	}
	c.closeEnded(t0.Add(2*time.Minute), false)
	at(5*time.Minute+time.Second, 1) // a window after a gap
	c.closeEnded(t0.Add(6*time.Minute), false)

	ws := windows(t, sp)
	want := []struct {
		start    time.Duration
		requests uint64
	}{{0, 3}, {time.Minute, 4}, {5 * time.Minute, 1}}
	if len(ws) != len(want) {
		t.Fatalf("%d windows, want %d", len(ws), len(want))
	}
	for i, w := range want {
		got := ws[i]
		if !got.Start.Equal(t0.Add(w.start)) || got.End.Sub(got.Start) != time.Minute || got.Profile.Requests != w.requests {
			t.Errorf("window %d: [%v, %v) with %d requests, want start %v, 1m long, %d requests",
				i, got.Start, got.End, got.Profile.Requests, t0.Add(w.start), w.requests)
		}
	}
}

func TestCollectorDropsObservationsItCannotQueue(t *testing.T) {
	c, sp, _ := newTestCollector(t, func(cfg *CollectorConfig) { cfg.Queue = 3 })
	// The collector is not running yet: the queue fills and the rest are
	// dropped, without the caller waiting.
	for range 10 {
		c.Submit(exchange(c, `{"inputs": {"x": 1}}`, `{}`, 200))
	}
	if st := c.Stats(); st.Dropped != 7 {
		t.Fatalf("dropped %d, want 7", st.Dropped)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	cancel()
	<-done
	ws := windows(t, sp)
	if len(ws) != 1 || ws[0].Profile.Requests != 3 {
		t.Fatalf("windows %d, want one of the 3 queued requests", len(ws))
	}
	if st := c.Stats(); st.Observed != 3 || st.Dropped != 7 {
		t.Errorf("stats %+v, want 3 observed and 7 dropped", st)
	}
}

func TestMergeWindowsAddsCounts(t *testing.T) {
	c, sp, clk := newTestCollector(t, nil)
	for i := range 3 {
		clk.Set(t0.Add(time.Duration(i) * time.Minute))
		for range i + 1 {
			c.observe(exchange(c, `{"inputs": {"x": 1}}`, `{}`, 200))
		}
	}
	c.closeEnded(clk.Now(), true)
	es := sp.Oldest(10)
	if len(es) != 3 {
		t.Fatalf("%d records", len(es))
	}
	m, err := MergeWindows(es[0].Record, es[1].Record)
	if err == nil {
		m, err = MergeWindows(m, es[2].Record)
	}
	if err != nil {
		t.Fatal(err)
	}
	w, err := sketch.DecodeWindow(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if w.Profile.Requests != 6 || !w.Start.Equal(t0) || !w.End.Equal(t0.Add(3*time.Minute)) || m.Windows != 3 {
		t.Errorf("merged: %d requests over [%v, %v), %d windows; want 6 over three minutes, 3 windows", w.Profile.Requests, w.Start, w.End, m.Windows)
	}
	if f := w.Profile.Input("x"); f == nil || f.Numeric.Count() != 6 {
		t.Errorf("merged feature x: %+v", f)
	}
}

// BenchmarkCollector measures the collector's goroutine: parsing one
// digits request and answer (64 inputs, 10 outputs) and sketching them.
// The endpoint drops observations rather than wait when requests arrive
// faster than this.
func BenchmarkCollector(b *testing.B) {
	sp, err := OpenSpool(b.TempDir(), SpoolOptions{MaxBytes: 64 << 20, Merge: MergeWindows})
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultCollectorConfig()
	cfg.NodeID, cfg.Spool = "node-1", sp
	c, err := NewCollector(cfg)
	if err != nil {
		b.Fatal(err)
	}
	req := []byte(`{"inputs":{"input":[[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]]}}`)
	resp := []byte(`{"outputs":{"logits":[[-3.1,-2.0,-4.2,-1.5,-2.2,-0.9,-3.3,-2.8,-1.1,-2.6]]},"model":"digits","latency_ms":0.210}`)
	b.ReportAllocs()
	for b.Loop() {
		e := c.Get()
		e.Deployment, e.Model, e.Version, e.Status, e.Latency = "digits", "digits", 1, 200, time.Millisecond
		e.CaptureRequest(req, cfg.CaptureBytes)
		e.CaptureResponse(resp, cfg.CaptureBytes)
		c.observe(e)
	}
}
