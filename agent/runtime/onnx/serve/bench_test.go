package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/droverhq/drover/agent/runtime/onnx"
	"github.com/droverhq/drover/agent/runtime/onnx/onnxtest"
)

// BenchmarkServe posts single-row requests from 32 concurrent clients
// over loopback HTTP, with coalescing off (max-batch=1) and on, for the
// example model and for a small CNN, whose runs cost more than the HTTP
// around them. p50 and p99 are per-request latencies seen by the client.
func BenchmarkServe(b *testing.B) {
	sample, err := onnx.LoadFile(sampleDir + "/model.onnx")
	if err != nil {
		b.Fatal(err)
	}
	ref := loadReference(b)
	sampleBody, _ := json.Marshal(map[string]any{"inputs": map[string]any{"input": [][]float64{ref.Cases[0].Input}}})

	c := onnxtest.DefaultCNN()
	cb, err := c.Build()
	if err != nil {
		b.Fatal(err)
	}
	cnn, err := onnx.Load(cb)
	if err != nil {
		b.Fatal(err)
	}
	img := c.Images(1, 1)
	pixels := make([][][]float32, c.Channels)
	for ch := range pixels {
		pixels[ch] = make([][]float32, c.Size)
		for y := range pixels[ch] {
			pixels[ch][y] = img[(ch*c.Size+y)*c.Size : (ch*c.Size+y+1)*c.Size]
		}
	}
	cnnBody, _ := json.Marshal(map[string]any{"inputs": map[string]any{onnxtest.Input: [][][][]float32{pixels}}})

	for _, model := range []struct {
		name string
		m    *onnx.Model
		body []byte
	}{{"hello-classifier", sample, sampleBody}, {"cnn", cnn, cnnBody}} {
		for _, maxBatch := range []int{1, 8, 32} {
			b.Run(fmt.Sprintf("model=%s/max-batch=%d", model.name, maxBatch), func(b *testing.B) {
				cfg := DefaultConfig()
				cfg.MaxBatch = maxBatch
				s, err := New(cfg, prometheus.NewRegistry())
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				if err := s.SetModel(context.Background(), model.name, model.m); err != nil {
					b.Fatal(err)
				}
				hs := httptest.NewServer(s.Handler())
				defer hs.Close()
				client := hs.Client()
				client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
				lat := make(chan time.Duration, 1<<20)
				b.SetParallelism(16)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						start := time.Now()
						resp, err := client.Post(hs.URL+"/v1/infer", "application/json", bytes.NewReader(model.body))
						if err != nil {
							b.Error(err)
							return
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							b.Errorf("status %d", resp.StatusCode)
							return
						}
						select {
						case lat <- time.Since(start):
						default:
						}
					}
				})
				b.StopTimer()
				close(lat)
				var all []time.Duration
				for d := range lat {
					all = append(all, d)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
				if len(all) > 0 {
					sortDurations(all)
					b.ReportMetric(float64(all[len(all)/2].Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(all[len(all)*99/100].Microseconds())/1000, "p99-ms")
				}
			})
		}
	}
}

func sortDurations(d []time.Duration) {
	for i := 1; i < len(d); i++ {
		for j := i; j > 0 && d[j] < d[j-1]; j-- {
			d[j], d[j-1] = d[j-1], d[j]
		}
	}
}
