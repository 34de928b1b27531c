// Package serve puts an ONNX model behind the HTTP API that drover-onnx
// serves and the agent proxies inference requests to: JSON inference with
// batching, health, the model's signature, and Prometheus metrics.
package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/droverhq/drover/agent/runtime/onnx"
)

// Config tunes a Server.
type Config struct {
	// MaxBatch is the most rows one model run coalesces from concurrent
	// requests; 1 turns coalescing off. Requests carrying more rows run
	// alone, as they come.
	MaxBatch int
	// BatchWait bounds how long a request waits for others to join its
	// batch. A batch runs as soon as it is full or the wait ends.
	BatchWait time.Duration
	// Workers is how many model runs may be in flight at once; more
	// requests wait for a turn (CPU-bound runs gain nothing from more, and
	// each holds its activations in memory).
	Workers int
	// MaxBodyBytes caps a request body.
	MaxBodyBytes int64
	// Clock times the batching wait; nil means the real clock.
	Clock Clock
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// DefaultConfig leaves coalescing off: for small models the wait costs
// more than it saves; convolutional models gain from MaxBatch 8
// (docs/onnx.md has the measurements). With MaxBatch raised, a request
// waits at most 2 ms for company. Runs are bounded by the CPUs.
func DefaultConfig() Config {
	return Config{MaxBatch: 1, BatchWait: 2 * time.Millisecond, Workers: runtime.GOMAXPROCS(0), MaxBodyBytes: 64 << 20}
}

// Validate checks the fields and how they relate.
func (c Config) Validate() error {
	switch {
	case c.MaxBatch < 1:
		return fmt.Errorf("max batch %d: must be at least 1 (1 turns coalescing off)", c.MaxBatch)
	case c.BatchWait < 0:
		return fmt.Errorf("batch wait %s: must not be negative", c.BatchWait)
	case c.MaxBatch > 1 && c.BatchWait == 0:
		return fmt.Errorf("batch wait is 0 with max batch %d: give a wait or set max batch to 1", c.MaxBatch)
	case c.Workers < 1:
		return fmt.Errorf("workers %d: must be at least 1", c.Workers)
	case c.MaxBodyBytes < 1:
		return fmt.Errorf("max body bytes %d: must be positive", c.MaxBodyBytes)
	}
	return nil
}

// Clock is the source of the batching timer.
type Clock interface {
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the server uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Server answers the HTTP API for one model. Its handler may be served
// before the model is ready: health and inference answer 503 until
// SetModel has loaded and warmed one up. Close stops its goroutines.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	handler http.Handler
	turns   chan struct{} // one token per run in flight outside the batcher

	state atomic.Pointer[state] // nil until SetModel succeeds

	mu      sync.Mutex // guards the fields below
	closed  bool
	batcher *batcher
}

// state is a loaded, warmed-up model.
type state struct {
	name      string
	model     *onnx.Model
	batchable bool
	batcher   *batcher
}

// New returns a server with no model yet, registering its metrics with
// reg (which /metrics serves).
func New(cfg Config, reg *prometheus.Registry) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: m, turns: make(chan struct{}, cfg.Workers)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/infer", s.infer)
	mux.HandleFunc("GET /v1/health", s.health)
	mux.HandleFunc("GET /v1/model", s.describe)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.handler = mux
	return s, nil
}

// Handler is the HTTP API.
func (s *Server) Handler() http.Handler { return s.handler }

// SetModel warms m up with one inference on zeros and then serves it
// under name. It is called once; the warm-up's error is returned, and the
// server stays unready.
func (s *Server) SetModel(ctx context.Context, name string, m *onnx.Model) error {
	if err := warmUp(m); err != nil {
		return fmt.Errorf("warm up %s: %w", name, err)
	}
	st := &state{name: name, model: m, batchable: batchable(m)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("set model: the server is closed")
	}
	if s.batcher != nil {
		return fmt.Errorf("set model: a model is already set")
	}
	if st.batchable && s.cfg.MaxBatch > 1 {
		st.batcher = newBatcher(m, s.cfg, s.metrics)
		s.batcher = st.batcher
	}
	s.state.Store(st)
	s.log.Info("model ready", "model", name, "inputs", len(m.Inputs()), "outputs", len(m.Outputs()), "coalescing", st.batcher != nil)
	return nil
}

// Close stops the batching goroutines; requests still waiting get an
// error. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	b := s.batcher
	s.closed = true
	s.batcher = nil
	s.mu.Unlock()
	if b != nil {
		b.close()
	}
}

// batchable reports whether requests can be stacked along axis 0: every
// input and output has an open first dimension.
func batchable(m *onnx.Model) bool {
	for _, vs := range [][]onnx.ValueInfo{m.Inputs(), m.Outputs()} {
		for _, v := range vs {
			if len(v.Shape) == 0 || v.Shape[0] >= 0 {
				return false
			}
		}
	}
	return len(m.Inputs()) > 0
}

// warmUp runs m once on zeros, open dimensions taken as 1, so the first
// real request finds the code paths and memory already in use.
func warmUp(m *onnx.Model) error {
	in := map[string]*onnx.Tensor{}
	for _, v := range m.Inputs() {
		if v.Shape == nil {
			return nil // rank unknown: nothing sensible to try
		}
		shape := make([]int, len(v.Shape))
		for i, d := range v.Shape {
			shape[i] = max(d, 1)
		}
		t, err := onnx.Zeros(v.DType, shape)
		if err != nil {
			return err
		}
		in[v.Name] = t
	}
	_, err := m.Run(in)
	return err
}

// inferRequest is POST /v1/infer's body.
type inferRequest struct {
	Inputs map[string]json.RawMessage `json:"inputs"`
}

// apiError is every error response's body.
type apiError struct {
	Error string `json:"error"`
}

func (s *Server) fail(w http.ResponseWriter, code int, reason string, err error) {
	s.metrics.errors.WithLabelValues(reason).Inc()
	writeJSON(w, code, apiError{Error: err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// statusWriter remembers the status code for the request counter.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (s *Server) infer(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := &statusWriter{ResponseWriter: rw, code: http.StatusOK}
	defer func() {
		s.metrics.requests.WithLabelValues(strconv.Itoa(w.code)).Inc()
		s.metrics.latency.Observe(time.Since(start).Seconds())
	}()
	st := s.state.Load()
	if st == nil {
		s.fail(w, http.StatusServiceUnavailable, "not_ready", errors.New("the model is still loading"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Errorf("the body is over %d bytes: send fewer rows per request", tooBig.Limit))
			return
		}
		s.fail(w, http.StatusBadRequest, "bad_input", fmt.Errorf("reading the body: %v", err))
		return
	}
	var req inferRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.fail(w, http.StatusBadRequest, "bad_input", fmt.Errorf(`the body is not JSON of the form {"inputs": {"NAME": [[...], ...]}}: %v`, err))
		return
	}
	inputs, rows, err := s.decodeInputs(st, req.Inputs)
	if err != nil {
		s.fail(w, http.StatusBadRequest, "bad_input", err)
		return
	}
	var out map[string]*onnx.Tensor
	if st.batcher != nil && rows < s.cfg.MaxBatch {
		out, err = st.batcher.submit(r.Context(), inputs, rows)
	} else {
		out, err = s.runAlone(r.Context(), st, inputs, rows)
	}
	if err != nil {
		switch {
		case errors.Is(err, onnx.ErrBadInput):
			s.fail(w, http.StatusBadRequest, "bad_input", err)
		case errors.Is(err, context.Canceled), errors.Is(err, errClosed):
			s.fail(w, http.StatusServiceUnavailable, "not_ready", err)
		default:
			s.log.Warn("inference failed", "err", err)
			s.fail(w, http.StatusInternalServerError, "inference", err)
		}
		return
	}
	b := make([]byte, 0, 256)
	b = append(b, `{"outputs":{`...)
	for i, o := range st.model.Outputs() {
		if i > 0 {
			b = append(b, ',')
		}
		name, _ := json.Marshal(o.Name)
		b = append(append(b, name...), ':')
		b = appendTensor(b, out[o.Name])
	}
	model, _ := json.Marshal(st.name)
	b = append(append(append(b, `},"model":`...), model...), `,"latency_ms":`...)
	b = strconv.AppendFloat(b, float64(time.Since(start).Microseconds())/1000, 'f', 3, 64)
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// runAlone runs one request's inputs when a worker's turn is free.
func (s *Server) runAlone(ctx context.Context, st *state, inputs map[string]*onnx.Tensor, rows int) (map[string]*onnx.Tensor, error) {
	select {
	case s.turns <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-s.turns }()
	s.metrics.batchRows.Observe(float64(rows))
	return st.model.Run(inputs)
}

// decodeInputs checks a request's inputs against the model's signature.
// A request may leave out the batch dimension of a batchable model (one
// row); the outputs keep it.
func (s *Server) decodeInputs(st *state, raw map[string]json.RawMessage) (map[string]*onnx.Tensor, int, error) {
	for name := range raw {
		found := false
		for _, v := range st.model.Inputs() {
			found = found || v.Name == name
		}
		if !found {
			return nil, 0, fmt.Errorf("the model has no input %q (inputs: %s)", name, signature(st.model.Inputs()))
		}
	}
	inputs := map[string]*onnx.Tensor{}
	rows := -1
	for _, v := range st.model.Inputs() {
		r, ok := raw[v.Name]
		if !ok {
			return nil, 0, fmt.Errorf(`input %q is missing: send {"inputs": {%q: ...}} with %s values of shape %s`, v.Name, v.Name, v.DType, shapeString(v.Shape))
		}
		shape, vals, err := decodeArray(r)
		if err != nil {
			return nil, 0, fmt.Errorf("input %q: %v (want %s values of shape %s)", v.Name, err, v.DType, shapeString(v.Shape))
		}
		if v.Shape != nil && len(shape) == len(v.Shape)-1 && v.Shape[0] < 0 {
			shape = append([]int{1}, shape...)
		}
		if err := fits(shape, v.Shape); err != nil {
			return nil, 0, fmt.Errorf("input %q has shape %v, the model wants %s values of shape %s: %v", v.Name, shape, v.DType, shapeString(v.Shape), err)
		}
		t, err := onnx.FromFloat64s(v.DType, shape, vals)
		if err != nil {
			return nil, 0, fmt.Errorf("input %q: %v (want %s values of shape %s)", v.Name, err, v.DType, shapeString(v.Shape))
		}
		if st.batchable {
			if rows >= 0 && shape[0] != rows {
				return nil, 0, fmt.Errorf("input %q has %d rows, another input %d: every input needs the same first dimension", v.Name, shape[0], rows)
			}
			rows = shape[0]
		}
		inputs[v.Name] = t
	}
	return inputs, max(rows, 1), nil
}

func fits(shape, want []int) error {
	if want == nil {
		return nil
	}
	if len(shape) != len(want) {
		return fmt.Errorf("rank %d, want %d", len(shape), len(want))
	}
	for i, d := range want {
		if d >= 0 && shape[i] != d {
			return fmt.Errorf("dimension %d is %d, want %d", i, shape[i], d)
		}
	}
	return nil
}

func shapeString(shape []int) string {
	if shape == nil {
		return "(any)"
	}
	b := []byte{'['}
	for i, d := range shape {
		if i > 0 {
			b = append(b, ", "...)
		}
		if d < 0 {
			b = append(b, 'N')
		} else {
			b = strconv.AppendInt(b, int64(d), 10)
		}
	}
	return string(append(b, ']'))
}

func signature(vs []onnx.ValueInfo) string {
	var b []byte
	for i, v := range vs {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = fmt.Appendf(b, "%s %s %s", v.Name, v.DType, shapeString(v.Shape))
	}
	return string(b)
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	st := s.state.Load()
	if st == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "loading"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "model": st.name})
}

// Tensor describes an input or output in GET /v1/model. An open
// dimension is -1 in Shape, with its symbolic name (if any) in DimNames.
type Tensor struct {
	Name     string   `json:"name"`
	DType    string   `json:"dtype"`
	Shape    []int    `json:"shape"`
	DimNames []string `json:"dim_names,omitempty"`
}

// ModelInfo is GET /v1/model's body.
type ModelInfo struct {
	Model     string   `json:"model"`
	Graph     string   `json:"graph"`
	Opset     int64    `json:"opset"`
	Inputs    []Tensor `json:"inputs"`
	Outputs   []Tensor `json:"outputs"`
	MaxBatch  int      `json:"max_batch"`
	Coalesced bool     `json:"coalesced"`
}

func (s *Server) describe(w http.ResponseWriter, r *http.Request) {
	st := s.state.Load()
	if st == nil {
		writeJSON(w, http.StatusServiceUnavailable, apiError{Error: "the model is still loading"})
		return
	}
	conv := func(vs []onnx.ValueInfo) []Tensor {
		out := []Tensor{}
		for _, v := range vs {
			t := Tensor{Name: v.Name, DType: v.DType.String(), Shape: v.Shape}
			for _, n := range v.DimNames {
				if n != "" {
					t.DimNames = v.DimNames
				}
			}
			out = append(out, t)
		}
		return out
	}
	writeJSON(w, http.StatusOK, ModelInfo{
		Model: st.name, Graph: st.model.Name(), Opset: st.model.Opset(),
		Inputs: conv(st.model.Inputs()), Outputs: conv(st.model.Outputs()),
		MaxBatch: s.cfg.MaxBatch, Coalesced: st.batcher != nil,
	})
}

type metrics struct {
	requests  *prometheus.CounterVec
	errors    *prometheus.CounterVec
	latency   prometheus.Histogram
	batchRows prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_onnx_requests_total",
			Help: "Inference requests answered, by HTTP status code.",
		}, []string{"code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_onnx_errors_total",
			Help: "Inference requests that failed, by reason: bad_input, too_large, not_ready, inference.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_onnx_request_duration_seconds",
			Help:    "Time from receiving an inference request to writing its response.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18), // 50µs .. 6.5s
		}),
		batchRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_onnx_batch_rows",
			Help:    "Rows per model run (several requests' rows when coalesced).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.errors, m.latency, m.batchRows} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	for _, reason := range []string{"bad_input", "too_large", "not_ready", "inference"} {
		m.errors.WithLabelValues(reason)
	}
	return m, nil
}
