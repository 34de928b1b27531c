package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/agent/telemetry"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// route is the endpoint's view of one deployment: the target requests go
// to, swapped in one atomic store, and why nothing serves when none does.
type route struct {
	name string
	cur  atomic.Pointer[target]
	why  atomic.Pointer[string]
}

// set makes t (nil for none) the target new requests go to, and returns
// the one before. why is what a request is told while t is nil.
func (rt *route) set(t *target, why string) *target {
	rt.why.Store(&why)
	return rt.cur.Swap(t)
}

// setWhy changes what requests are told while nothing serves.
func (rt *route) setWhy(why string) { rt.why.Store(&why) }

// acquire returns the current target with a request counted on it, or nil
// when nothing serves. A target that closed between the load and the
// count has been replaced already, so the loop picks up its successor.
func (rt *route) acquire() *target {
	for {
		t := rt.cur.Load()
		if t == nil || t.acquire() {
			return t
		}
	}
}

func (rt *route) reason() string {
	if p := rt.why.Load(); p != nil && *p != "" {
		return *p
	}
	return "no instance has become healthy yet"
}

// target is one instance as the endpoint sees it. Requests count
// themselves in and out; close stops new ones from counting in, and idle
// is closed once the last one left, so an instance is stopped only after
// the requests it took have finished.
type target struct {
	version uint64
	model   string
	proxy   *httputil.ReverseProxy

	mu       sync.Mutex // guards the fields below
	closed   bool
	inflight int
	idle     chan struct{} // closed when closed and inflight is 0
}

func (t *target) acquire() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.inflight++
	return true
}

func (t *target) release() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.inflight--
	if t.closed && t.inflight == 0 {
		close(t.idle)
	}
}

// close takes no more requests and returns a channel closed once those in
// flight have finished.
func (t *target) close() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		if t.inflight == 0 {
			close(t.idle)
		}
	}
	return t.idle
}

// newTarget makes the proxy to inst for the deployment's requests. The
// part of the path after /v1/deployments/{name}/ goes to the instance
// under /v1/.
func (r *Reconciler) newTarget(name, model string, version uint64, inst Instance) *target {
	t := &target{version: version, model: model, idle: make(chan struct{})}
	addr := inst.Addr()
	vs := strconv.FormatUint(version, 10)
	t.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = addr
			pr.Out.URL.Path = "/v1/" + pr.In.PathValue("rest")
			pr.Out.URL.RawPath = ""
			pr.Out.Host = ""
			pr.SetXForwarded()
		},
		Transport: r.transport,
		ModifyResponse: func(res *http.Response) error {
			// Set, not added: an instance that sends a header of the
			// same name must not be able to claim another version.
			res.Header.Set(VersionHeader, vs)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			w.Header().Set(VersionHeader, vs)
			if rec, ok := w.(*statusRecorder); ok {
				rec.errKind = proxyErrKind(req, err)
			}
			if errors.Is(err, context.Canceled) && req.Context().Err() != nil {
				// The client went away; nobody reads an answer.
				w.WriteHeader(statusClientClosed)
				return
			}
			st := inst.Status()
			why := fmt.Sprintf("version %d did not answer: %v (instance %s", version, err, stateName(st.State))
			if st.Reason != "" {
				why += ": " + st.Reason
			}
			why += ")"
			writeError(w, http.StatusBadGateway, name, why)
		},
	}
	return t
}

// VersionHeader names the version of the deployment's model that took a
// request, on every answer the endpoint passes on from an instance and on
// a 502 from one that did not answer, so a client (or a test) knows which
// side of a rollout served it. Errors the endpoint answers itself (404,
// 503) carry none: no version took the request.
const VersionHeader = "Drover-Version"

// proxyErrKind names why an instance did not answer, for telemetry.
func proxyErrKind(req *http.Request, err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled) && req.Context().Err() != nil:
		return telemetry.ErrKindClientClosed
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return telemetry.ErrKindTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return telemetry.ErrKindUpstreamRefused
	}
	return telemetry.ErrKindUpstream
}

// statusClientClosed is recorded for a request whose client left before
// the instance answered (nginx's 499).
const statusClientClosed = 499

// errorBody is the JSON the endpoint answers with when it cannot pass a
// request on.
type errorBody struct {
	Error      string `json:"error"`
	Deployment string `json:"deployment,omitempty"`
}

func writeError(w http.ResponseWriter, code int, deployment, msg string) {
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg, Deployment: deployment})
}

// DeploymentInfo is one deployment as GET /v1/deployments lists it.
type DeploymentInfo struct {
	Deployment string `json:"deployment"`
	Model      string `json:"model"`
	// Version is the version the node is told to run.
	Version uint64 `json:"version"`
	// Serving is the version requests go to, 0 while none does.
	Serving uint64 `json:"serving_version"`
	// State, Reason and Since are as the heartbeat reports them
	// (InstanceStatus), State without its INSTANCE_STATE_ prefix.
	State  string    `json:"state"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitzero"`
	// Previous is the version kept on disk for a rollback, 0 for none.
	Previous uint64 `json:"previous_version,omitempty"`
	// Why is what a request is told while nothing serves.
	Why string `json:"why,omitempty"`
}

func stateName(s droverv1.InstanceState) string {
	n := s.String()
	const prefix = "INSTANCE_STATE_"
	if len(n) > len(prefix) && n[:len(prefix)] == prefix {
		return n[len(prefix):]
	}
	return n
}

// Handler is the node's inference endpoint:
//
//	GET  /v1/deployments                 what the node runs, as []DeploymentInfo under "deployments"
//	GET  /v1/deployments/{name}          one DeploymentInfo
//	ANY  /v1/deployments/{name}/{rest…}  proxied to the serving instance's /v1/{rest…}
//
// so POST /v1/deployments/digits/infer reaches the instance's /v1/infer.
// Every answer from an instance carries VersionHeader, the version that
// served it.
// A deployment the node is not told to run is 404; one with no healthy
// instance is 503 with Retry-After; an instance that does not answer is
// 502. Every error is JSON, {"error": …, "deployment": …}.
func (r *Reconciler) Handler() http.Handler { return r.mux }

func (r *Reconciler) newMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/deployments", func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Deployments []DeploymentInfo `json:"deployments"`
		}{r.Deployments()})
	})
	mux.HandleFunc("GET /v1/deployments/{name}", func(w http.ResponseWriter, req *http.Request) {
		name := req.PathValue("name")
		for _, d := range r.Deployments() {
			if d.Deployment == name {
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(d)
				return
			}
		}
		writeError(w, http.StatusNotFound, name, fmt.Sprintf("this node does not run deployment %s", name))
	})
	mux.HandleFunc("/v1/deployments/{name}/{rest...}", r.serveInference)
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, "", fmt.Sprintf("no such endpoint %s: use /v1/deployments/{name}/…", req.URL.Path))
	})
	return mux
}

func (r *Reconciler) serveInference(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	name := req.PathValue("name")
	rt := r.route(name)
	if rt == nil {
		writeError(w, http.StatusNotFound, name, fmt.Sprintf("this node does not run deployment %s", name))
		r.metrics.observe(unknownDeployment, "", http.StatusNotFound, time.Since(start))
		return
	}
	t := rt.acquire()
	if t == nil {
		writeError(w, http.StatusServiceUnavailable, name, fmt.Sprintf("no instance of deployment %s serves: %s", name, rt.reason()))
		r.metrics.observe(name, "", http.StatusServiceUnavailable, time.Since(start))
		return
	}
	defer t.release()
	rec := &statusRecorder{ResponseWriter: w}
	col := r.telemetry
	var ex *telemetry.Exchange
	if col != nil {
		// The bodies are copied as they pass, up to a bound; everything
		// else about them happens on the collector's goroutine.
		ex = col.Get()
		rec.ex, rec.limit = ex, col.CaptureBytes()
		if req.Body != nil && req.Body != http.NoBody {
			req.Body = &captureBody{ReadCloser: req.Body, ex: ex, limit: rec.limit}
		}
	}
	t.proxy.ServeHTTP(rec, req)
	took := time.Since(start)
	r.metrics.observe(name, strconv.FormatUint(t.version, 10), rec.code(), took)
	if ex != nil {
		ex.Deployment, ex.Model, ex.Version = name, t.model, t.version
		ex.Latency, ex.Status, ex.ErrKind = took, rec.code(), rec.errKind
		col.Submit(ex)
	}
}

// captureBody copies what the proxy reads of a request body into an
// exchange, up to limit.
type captureBody struct {
	io.ReadCloser
	ex    *telemetry.Exchange
	limit int
}

func (c *captureBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.ex.CaptureRequest(p[:n], c.limit)
	}
	return n, err
}

// unknownDeployment labels requests for deployments the node does not
// run: naming them would let any client grow the metrics without bound.
const unknownDeployment = "(unknown)"

// statusRecorder notes the status code written through it. Unwrap lets
// http.ResponseController reach the writer's Flush, which streamed
// answers need.
type statusRecorder struct {
	http.ResponseWriter
	status int
	// errKind is why the instance did not answer, if it did not.
	errKind string
	// ex, when set, receives the answer's first limit bytes.
	ex    *telemetry.Exchange
	limit int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	if s.ex != nil {
		s.ex.CaptureResponse(b, s.limit)
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) code() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

// newTransport is the transport to instances: they are on this node, so
// no proxy from the environment, short dials, and enough idle
// connections for a busy endpoint.
func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // inference may take long; the client's context bounds it
		ExpectContinueTimeout: time.Second,
	}
}

// metrics are the endpoint's and the reconciler's Prometheus series.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	updates  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_agent_inference_requests_total",
			Help: "Requests to the node's inference endpoint, by deployment, version that served them (empty when none did) and HTTP status.",
		}, []string{"deployment", "version", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "drover_agent_inference_request_seconds",
			Help:    "Time from a request reaching the node's inference endpoint until its answer was written, by deployment and serving version.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
		}, []string{"deployment", "version"}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_agent_deployment_updates_total",
			Help: "Versions the reconciler tried to bring up, by deployment and result: switched (healthy and serving), failed, restored (the previous version serves again after a failed stop-then-start).",
		}, []string{"deployment", "result"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.latency, m.updates} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(deployment, version string, code int, d time.Duration) {
	m.requests.WithLabelValues(deployment, version, strconv.Itoa(code)).Inc()
	m.latency.WithLabelValues(deployment, version).Observe(d.Seconds())
}

// forget drops a removed deployment's series.
func (m *metrics) forget(deployment string) {
	l := prometheus.Labels{"deployment": deployment}
	m.requests.DeletePartialMatch(l)
	m.latency.DeletePartialMatch(l)
	m.updates.DeletePartialMatch(l)
}
