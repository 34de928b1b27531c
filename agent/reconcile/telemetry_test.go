package reconcile

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/telemetry"
	"github.com/droverhq/drover/internal/sketch"
)

// cannedTransport answers every request in process, after reading its
// body, so that what a benchmark measures is the endpoint's own work.
type cannedTransport struct {
	body []byte
	err  error
}

func (c cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	if c.err != nil {
		return nil, c.err
	}
	return &http.Response{
		StatusCode: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(c.body)), ContentLength: int64(len(c.body)), Request: req,
	}, nil
}

// addrInstance is an Instance that is only an address.
type addrInstance struct{}

func (addrInstance) Addr() string               { return "127.0.0.1:1" }
func (addrInstance) Status() Status             { return Status{} }
func (addrInstance) Stop(context.Context) error { return nil }
func (addrInstance) Done() <-chan struct{}      { return nil }

// endpointOnly returns a reconciler whose endpoint serves deployment
// "digits" (model digits, version 7) through tr, with col observing.
func endpointOnly(t testing.TB, tr http.RoundTripper, col *telemetry.Collector) *Reconciler {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{transport: tr, telemetry: col, metrics: m, routes: map[string]*route{}}
	r.mux = r.newMux()
	rt := &route{name: "digits"}
	rt.set(r.newTarget("digits", "digits", 7, addrInstance{}), "")
	r.routes["digits"] = rt
	return r
}

func newCollector(t testing.TB, queue int) (*telemetry.Collector, *telemetry.Spool) {
	t.Helper()
	sp, err := telemetry.OpenSpool(t.TempDir(), telemetry.SpoolOptions{MaxBytes: 64 << 20, Merge: telemetry.MergeWindows})
	if err != nil {
		t.Fatal(err)
	}
	cfg := telemetry.DefaultCollectorConfig()
	cfg.NodeID, cfg.Spool, cfg.Queue = "node-1", sp, queue
	col, err := telemetry.NewCollector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return col, sp
}

const (
	digitsRequest  = `{"inputs":{"input":[[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]]}}`
	digitsResponse = `{"outputs":{"logits":[[-3.1,-2.0,-4.2,-1.5,-2.2,-0.9,-3.3,-2.8,-1.1,-2.6]]},"model":"digits","latency_ms":0.210}`
)

func TestEndpointHandsRequestsToTelemetry(t *testing.T) {
	col, sp := newCollector(t, 16)
	r := endpointOnly(t, cannedTransport{body: []byte(digitsResponse)}, col)
	for range 3 {
		w := httptest.NewRecorder()
		r.Handler().ServeHTTP(w, httptest.NewRequest("POST", "/v1/deployments/digits/infer", strings.NewReader(digitsRequest)))
		if w.Code != 200 || w.Body.String() != digitsResponse {
			t.Fatalf("answer %d %q: the endpoint changed it", w.Code, w.Body)
		}
	}
	refused := endpointOnly(t, cannedTransport{err: syscall.ECONNREFUSED}, col)
	w := httptest.NewRecorder()
	refused.Handler().ServeHTTP(w, httptest.NewRequest("POST", "/v1/deployments/digits/infer", strings.NewReader(digitsRequest)))
	if w.Code != http.StatusBadGateway {
		t.Fatalf("answer %d, want 502", w.Code)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	col.Run(ctx) // drains the queue and spools the open window
	es := sp.Oldest(10)
	if len(es) != 1 {
		t.Fatalf("%d windows, want 1", len(es))
	}
	win, err := sketch.DecodeWindow(es[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	p := win.Profile
	if win.Deployment != "digits" || win.Model != "digits" || win.Version != "7" || p.Requests != 4 {
		t.Fatalf("window %s %s@%s with %d requests, want digits digits@7 with 4", win.Deployment, win.Model, win.Version, p.Requests)
	}
	if p.Errors[telemetry.ErrKindUpstreamRefused] != 1 {
		t.Errorf("errors %v, want one upstream_refused", p.Errors)
	}
	if f := p.Input("input[2]"); f == nil || f.Numeric.Count() != 4 || f.Numeric.Max() != 5 {
		t.Errorf("input[2]: %+v, want 4 values of 5", f)
	}
	if f := p.Output("logits.argmax"); f == nil || f.Categorical.Count("5") != 3 || f.Missing != 1 {
		t.Errorf("logits.argmax: %+v, want class 5 three times and one missing", f)
	}
}

func TestProxyErrKind(t *testing.T) {
	req := httptest.NewRequest("GET", "/", nil)
	for _, c := range []struct {
		err  error
		want string
	}{
		{syscall.ECONNREFUSED, telemetry.ErrKindUpstreamRefused},
		{context.DeadlineExceeded, telemetry.ErrKindTimeout},
		{errors.New("EOF"), telemetry.ErrKindUpstream},
	} {
		if got := proxyErrKind(req, c.err); got != c.want {
			t.Errorf("%v: %q, want %q", c.err, got, c.want)
		}
	}
}

// BenchmarkEndpoint measures one request through the endpoint to an
// in-process instance: "off" without telemetry (the baseline), "on" with
// a collector whose queue holds every request (so none is dropped) and
// which runs after the timing: the request's own cost of being observed.
// "on+collector" runs the collector meanwhile: on a machine with a spare
// core it costs the request nothing more; on a busy one it competes for
// the CPU. Parsing and sketching alone: BenchmarkCollector in
// agent/telemetry.
func BenchmarkEndpoint(b *testing.B) {
	body := []byte(digitsRequest)
	run := func(b *testing.B, col *telemetry.Collector) {
		h := endpointOnly(b, cannedTransport{body: []byte(digitsResponse)}, col).Handler()
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest("POST", "/v1/deployments/digits/infer", bytes.NewReader(body)))
		}
		b.StopTimer()
	}
	b.Run("off", func(b *testing.B) { run(b, nil) })
	b.Run("on", func(b *testing.B) {
		col, _ := newCollector(b, b.N+1)
		run(b, col)
		if d := col.Stats().Dropped; d != 0 {
			b.Fatalf("%d observations dropped", d)
		}
	})
	b.Run("on+collector", func(b *testing.B) {
		col, _ := newCollector(b, 1<<16)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { col.Run(ctx); close(done) }()
		run(b, col)
		cancel()
		<-done
		b.ReportMetric(float64(col.Stats().Dropped)/float64(b.N), "dropped/op")
	})
}

// BenchmarkEndpointInterleaved runs requests without and with telemetry
// in turn (as BenchmarkEndpoint's "off" and "on"), timing each, so that
// both see the same load on a busy machine; it reports each one's ns per
// request and their ratio.
func BenchmarkEndpointInterleaved(b *testing.B) {
	col, _ := newCollector(b, b.N+1)
	off := endpointOnly(b, cannedTransport{body: []byte(digitsResponse)}, nil).Handler()
	on := endpointOnly(b, cannedTransport{body: []byte(digitsResponse)}, col).Handler()
	body := []byte(digitsRequest)
	var took [2]time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Alternate which goes first, so neither always warms the other's
		// caches.
		for k := range 2 {
			which := (i + k) % 2
			h := off
			if which == 1 {
				h = on
			}
			w := httptest.NewRecorder()
			req := httptest.NewRequest("POST", "/v1/deployments/digits/infer", bytes.NewReader(body))
			start := time.Now()
			h.ServeHTTP(w, req)
			took[which] += time.Since(start)
		}
	}
	b.StopTimer()
	if d := col.Stats().Dropped; d != 0 {
		b.Fatalf("%d observations dropped", d)
	}
	b.ReportMetric(float64(took[0].Nanoseconds())/float64(b.N), "off-ns/req")
	b.ReportMetric(float64(took[1].Nanoseconds())/float64(b.N), "on-ns/req")
	b.ReportMetric(float64(took[1])/float64(took[0]), "on/off")
}
