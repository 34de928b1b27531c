package exec

import (
	"context"
	"io"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/agent/runtime"
)

// TestONNXBinaryServes runs the real drover-onnx through the onnx preset
// on the sample model, when the binary is at hand: $DROVER_ONNX, or
// drover-onnx on the PATH.
func TestONNXBinaryServes(t *testing.T) {
	bin := os.Getenv("DROVER_ONNX")
	if bin == "" {
		p, err := osexec.LookPath("drover-onnx")
		if err != nil {
			t.Skip("no drover-onnx binary: set DROVER_ONNX or put drover-onnx on the PATH")
		}
		bin = p
	}
	model, err := filepath.Abs("../../../cli/sample/hello-classifier")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig(t.TempDir())
	r, err := NewONNX(bin, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(context.Background())
	began := time.Now()
	in, err := r.Start(context.Background(), runtime.InstanceSpec{
		Deployment: "digits", Model: "digits-small", Version: 3, Dir: model,
		Health: runtime.HealthCheck{StartInterval: 20 * time.Millisecond, StartTimeout: 30 * time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := runtime.WaitHealthy(ctx, in); err != nil {
		var stderr strings.Builder
		in.(runtime.LogReader).Logs(context.Background(), runtime.Stderr, 4096, false, &stderr)
		t.Fatalf("%v; stderr:\n%s", err, stderr.String())
	}
	t.Logf("start to healthy: %v", time.Since(began))
	resp, err := http.Get("http://" + in.Addr() + "/v1/model")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("GET /v1/model: %s %s", resp.Status, b)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"model":"digits-small"`) {
		t.Fatalf("GET /v1/model: %s %s", resp.Status, b)
	}
	began = time.Now()
	if err := in.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop (SIGTERM, clean exit): %v", time.Since(began))
	if st := in.Status(); st.State != runtime.StateStopped || st.LastExit.Code != 0 {
		t.Fatalf("after stop: %+v %v", st, st.LastExit)
	}
}
