package serve

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/agent/runtime/onnx"
	"github.com/droverhq/drover/internal/logging"
)

const sampleDir = "../../../../cli/sample/hello-classifier"

type reference struct {
	Tolerance float64 `json:"tolerance"`
	Cases     []struct {
		Label         int       `json:"label"`
		Input         []float64 `json:"input"`
		Probabilities []float64 `json:"probabilities"`
	} `json:"cases"`
}

func loadReference(t testing.TB) reference {
	t.Helper()
	b, err := os.ReadFile(sampleDir + "/reference.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref reference
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	return ref
}

func newTestServer(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	cfg.Logger = logging.TestLogger(t)
	s, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		hs.Close()
		s.Close()
	})
	return s, hs
}

func setSample(t *testing.T, s *Server) {
	t.Helper()
	m, err := onnx.LoadFile(sampleDir + "/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetModel(context.Background(), "hello-classifier", m); err != nil {
		t.Fatal(err)
	}
}

type inferResponse struct {
	Outputs   map[string][][]float64 `json:"outputs"`
	Model     string                 `json:"model"`
	LatencyMS float64                `json:"latency_ms"`
	Error     string                 `json:"error"`
}

func post(t testing.TB, url, body string) (int, inferResponse) {
	t.Helper()
	resp, err := http.Post(url+"/v1/infer", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r inferResponse
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("response %q: %v", b, err)
	}
	return resp.StatusCode, r
}

func rowsJSON(rows ...[]float64) string {
	b, _ := json.Marshal(map[string]any{"inputs": map[string]any{"input": rows}})
	return string(b)
}

func checkProbs(t testing.TB, got, want []float64, tol float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d probabilities, want %d", len(got), len(want))
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > tol {
			t.Fatalf("probability %d is %v, want %v within %v", i, got[i], want[i], tol)
		}
	}
}

func TestHealthIs503UntilTheModelIsWarm(t *testing.T) {
	s, hs := newTestServer(t, DefaultConfig())
	for _, path := range []string{"/v1/health", "/v1/model"} {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s before the model: %d, want 503", path, resp.StatusCode)
		}
	}
	if code, r := post(t, hs.URL, rowsJSON(make([]float64, 64))); code != http.StatusServiceUnavailable || r.Error == "" {
		t.Fatalf("infer before the model: %d %+v, want 503 with an error", code, r)
	}
	setSample(t, s)
	resp, err := http.Get(hs.URL + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("health after SetModel: %d", resp.StatusCode)
	}
}

func TestInferMatchesReference(t *testing.T) {
	ref := loadReference(t)
	for _, cfg := range []Config{DefaultConfig(), {MaxBatch: 32, BatchWait: 2 * time.Millisecond, Workers: 2, MaxBodyBytes: 1 << 20}} {
		t.Run(fmt.Sprintf("max-batch-%d", cfg.MaxBatch), func(t *testing.T) {
			s, hs := newTestServer(t, cfg)
			setSample(t, s)
			// One row per request, with and without the batch dimension.
			for i, c := range ref.Cases {
				body := rowsJSON(c.Input)
				if i%2 == 1 {
					b, _ := json.Marshal(map[string]any{"inputs": map[string]any{"input": c.Input}})
					body = string(b)
				}
				code, r := post(t, hs.URL, body)
				if code != http.StatusOK {
					t.Fatalf("case %d: %d %s", i, code, r.Error)
				}
				if r.Model != "hello-classifier" || len(r.Outputs["probabilities"]) != 1 {
					t.Fatalf("case %d: %+v", i, r)
				}
				checkProbs(t, r.Outputs["probabilities"][0], c.Probabilities, ref.Tolerance)
			}
			// Every case in one request.
			var rows [][]float64
			for _, c := range ref.Cases {
				rows = append(rows, c.Input)
			}
			code, r := post(t, hs.URL, rowsJSON(rows...))
			if code != http.StatusOK || len(r.Outputs["probabilities"]) != len(rows) {
				t.Fatalf("batch: %d %+v", code, r)
			}
			for i, c := range ref.Cases {
				checkProbs(t, r.Outputs["probabilities"][i], c.Probabilities, ref.Tolerance)
			}
		})
	}
}

// Concurrent single-row requests are coalesced, and each still gets its
// own row back.
func TestConcurrentRequestsGetTheirOwnRows(t *testing.T) {
	ref := loadReference(t)
	cfg := DefaultConfig()
	cfg.MaxBatch, cfg.BatchWait = 4, 20*time.Millisecond
	s, hs := newTestServer(t, cfg)
	setSample(t, s)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for k := range 4 {
				c := ref.Cases[(g+k)%len(ref.Cases)]
				code, r := post(t, hs.URL, rowsJSON(c.Input))
				if code != http.StatusOK {
					errs <- fmt.Errorf("%d %s", code, r.Error)
					return
				}
				for i, p := range c.Probabilities {
					if math.Abs(r.Outputs["probabilities"][0][i]-p) > ref.Tolerance {
						errs <- fmt.Errorf("request %d/%d: probability %d is %v, want %v", g, k, i, r.Outputs["probabilities"][0][i], p)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	body := metricsText(t, hs.URL)
	if !strings.Contains(body, "drover_onnx_requests_total{code=\"200\"} 64") {
		t.Fatalf("metrics do not count 64 answered requests:\n%s", body)
	}
	t.Logf("batch sizes:\n%s", grepLines(body, "drover_onnx_batch_rows"))
}

func metricsText(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestBadRequestsNameTheProblem(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBodyBytes = 4096
	s, hs := newTestServer(t, cfg)
	setSample(t, s)
	row := make([]float64, 64)
	for _, tc := range []struct {
		name, body string
		code       int
		want       string
	}{
		{"not json", "{", 400, "not JSON"},
		{"missing input", `{"inputs": {}}`, 400, `input "input" is missing`},
		{"unknown input", `{"inputs": {"input": [[1]], "pixels": [[1]]}}`, 400, `no input "pixels"`},
		{"wrong width", rowsJSON([]float64{1, 2, 3}), 400, "shape [N, 64]"},
		{"wrong rank", `{"inputs": {"input": [[[1]]]}}`, 400, "rank 3, want 2"},
		{"ragged", rowsJSON(row, []float64{1}), 400, "ragged"},
		{"string", `{"inputs": {"input": [["a"]]}}`, 400, "not a number"},
		{"too large", rowsJSON(row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row, row), 413, "over 4096 bytes"},
	} {
		code, r := post(t, hs.URL, tc.body)
		if code != tc.code || !strings.Contains(r.Error, tc.want) {
			t.Errorf("%s: %d %q, want %d containing %q", tc.name, code, r.Error, tc.code, tc.want)
		}
		if code == 400 && !strings.Contains(r.Error, "input") {
			t.Errorf("%s: %q names no input", tc.name, r.Error)
		}
	}
	body := metricsText(t, hs.URL)
	if !strings.Contains(body, `drover_onnx_errors_total{reason="bad_input"} 7`) || !strings.Contains(body, `drover_onnx_errors_total{reason="too_large"} 1`) {
		t.Fatalf("error counters:\n%s", grepLines(body, "drover_onnx_errors_total"))
	}
	if !strings.Contains(body, "drover_onnx_request_duration_seconds_count 8") {
		t.Fatalf("latency histogram:\n%s", grepLines(body, "drover_onnx_request_duration"))
	}
}

func TestModelDescribesTheSignature(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBatch = 16
	s, hs := newTestServer(t, cfg)
	setSample(t, s)
	resp, err := http.Get(hs.URL + "/v1/model")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info ModelInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	if info.Model != "hello-classifier" || info.Opset != 17 || len(info.Inputs) != 1 || len(info.Outputs) != 1 {
		t.Fatalf("%+v", info)
	}
	in, out := info.Inputs[0], info.Outputs[0]
	if in.Name != "input" || in.DType != "float" || fmt.Sprint(in.Shape) != "[-1 64]" || in.DimNames[0] != "N" {
		t.Fatalf("input %+v", in)
	}
	if out.Name != "probabilities" || fmt.Sprint(out.Shape) != "[-1 10]" || !info.Coalesced {
		t.Fatalf("output %+v, coalesced %v", out, info.Coalesced)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*Config){
		func(c *Config) { c.MaxBatch = 0 },
		func(c *Config) { c.BatchWait = -1 },
		func(c *Config) { c.Workers = 0 },
		func(c *Config) { c.MaxBodyBytes = 0 },
	} {
		c := DefaultConfig()
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%+v validated", c)
		}
	}
	c := DefaultConfig()
	c.MaxBatch, c.BatchWait = 32, 0
	if err := c.Validate(); err == nil {
		t.Error("coalescing without a wait validated")
	}
	c.MaxBatch = 1
	if err := c.Validate(); err != nil {
		t.Errorf("no coalescing without a wait: %v", err)
	}
}

// Close fails a request still waiting for company instead of hanging it.
func TestCloseFailsWaitingRequests(t *testing.T) {
	m, err := onnx.LoadFile(sampleDir + "/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.MaxBatch = 32
	cfg.Clock = stuckClock{}
	mt, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	b := newBatcher(m, cfg, mt)
	// Others seem to be in flight, and the timer never fires: the request
	// waits in the batch being gathered until Close.
	b.inflight.Add(5)
	x, _ := onnx.Zeros(onnx.Float32, []int{1, 64})
	done := make(chan error, 1)
	go func() {
		_, err := b.submit(context.Background(), map[string]*onnx.Tensor{"input": x}, 1)
		done <- err
	}()
	for b.inflight.Load() != 6 {
		time.Sleep(time.Millisecond)
	}
	b.close()
	select {
	case err := <-done:
		if err != errClosed {
			t.Fatalf("waiting request after close: %v, want %v", err, errClosed)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a request hung across close")
	}
}

type stuckClock struct{}

func (stuckClock) NewTimer(time.Duration) Timer { return stuckTimer{} }

type stuckTimer struct{}

func (stuckTimer) C() <-chan time.Time { return nil }
func (stuckTimer) Stop() bool          { return true }

func FuzzDecodeArray(f *testing.F) {
	for _, s := range []string{"[[1,2],[3,4]]", "1", "[]", "[[]]", "[[1],[2,3]]", "[true,false]", `["x"]`, "[[[1e400]]]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		shape, vals, err := decodeArray(json.RawMessage(s))
		if err != nil {
			return
		}
		if prod(shape) != len(vals) {
			t.Fatalf("%q: shape %v with %d values", s, shape, len(vals))
		}
	})
}
