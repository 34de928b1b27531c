package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
	buildOut  []byte
)

const sampleDir = "../../cli/sample/hello-classifier"

// noCgoBinary builds drover-onnx with CGO_ENABLED=0, once per test run:
// the runtime is pure Go, and this keeps it so.
func noCgoBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-onnx-test-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "drover-onnx")
		cmd := exec.Command("go", "build", "-o", binary, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", buildErr, buildOut)
	}
	return binary
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary != "" {
		_ = os.RemoveAll(filepath.Dir(binary))
	}
	os.Exit(code)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a child's stderr while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The agent starts drover-onnx with the port and model folder in the
// environment; the runtime answers the example model's reference inputs
// with its reference outputs, and stops cleanly on SIGTERM.
func TestServeAnswersTheReferenceInputs(t *testing.T) {
	bin := noCgoBinary(t)
	port := freePort(t)
	model, err := filepath.Abs(sampleDir)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env = append(os.Environ(), fmt.Sprintf("DROVER_PORT=%d", port), "DROVER_MODEL_DIR="+model)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		t.Logf("drover-onnx stderr:\n%s", stderr.String())
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy after 30s (last error %v)", err)
		}
		select {
		case err := <-exited:
			t.Fatalf("drover-onnx exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}

	b, err := os.ReadFile(filepath.Join(sampleDir, "reference.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ref struct {
		Input, Output string
		Tolerance     float64
		Cases         []map[string]any
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	var rows []any
	for _, c := range ref.Cases {
		rows = append(rows, c[ref.Input])
	}
	check := func(rows []any, cases []map[string]any) {
		body, _ := json.Marshal(map[string]any{"inputs": map[string]any{ref.Input: rows}})
		resp, err := http.Post(base+"/v1/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			Outputs   map[string][][]float64
			Model     string
			LatencyMS float64 `json:"latency_ms"`
		}
		if err := json.Unmarshal(raw, &out); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%d %s: %v", resp.StatusCode, raw, err)
		}
		if out.Model != "hello-classifier" || out.LatencyMS <= 0 {
			t.Fatalf("model %q, latency %v", out.Model, out.LatencyMS)
		}
		got := out.Outputs[ref.Output]
		if len(got) != len(cases) {
			t.Fatalf("%d rows of %s, want %d", len(got), ref.Output, len(cases))
		}
		for i, c := range cases {
			for j, w := range c[ref.Output].([]any) {
				if d := math.Abs(got[i][j] - w.(float64)); d > ref.Tolerance {
					t.Fatalf("case %d, %s[%d] = %v, want %v within %v", i, ref.Output, j, got[i][j], w, ref.Tolerance)
				}
			}
		}
	}
	check(rows, ref.Cases) // all cases in one request
	for i := range ref.Cases {
		check(rows[i:i+1], ref.Cases[i:i+1])
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v, want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("drover-onnx did not stop within 15s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), "stopping") {
		t.Errorf("no stop logged")
	}
}

func runBinary(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(noCgoBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String()
}

// A model the runtime cannot serve ends serve with exit 1 and a message
// that names what is wrong, before any request is answered.
func TestBadModelsExitWithTheReason(t *testing.T) {
	garbage := t.TempDir()
	if err := os.WriteFile(filepath.Join(garbage, "model.onnx"), []byte("this is not protobuf"), 0o644); err != nil {
		t.Fatal(err)
	}
	unsupported := t.TempDir()
	f := &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: 1}}}
	mp := &onnxpb.ModelProto{IrVersion: 8, OpsetImport: []*onnxpb.OperatorSetIdProto{{Version: 17}}, Graph: &onnxpb.GraphProto{
		Name:   "g",
		Input:  []*onnxpb.ValueInfoProto{{Name: "x", Type: f}},
		Output: []*onnxpb.ValueInfoProto{{Name: "y", Type: f}},
		Node:   []*onnxpb.NodeProto{{Name: "mix", OpType: "Einsum", Input: []string{"x"}, Output: []string{"y"}}},
	}}
	b, _ := proto.Marshal(mp)
	if err := os.WriteFile(filepath.Join(unsupported, "net.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	two := t.TempDir()
	for _, name := range []string{"a.onnx", "b.onnx"} {
		if err := os.WriteFile(filepath.Join(two, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		code int
		want []string
	}{
		{"garbage", []string{"serve", "--model", garbage, "--listen", listen}, nil, 1, []string{"not an ONNX protobuf"}},
		{"unsupported operator", []string{"serve", "--listen", listen}, []string{"DROVER_MODEL_DIR=" + unsupported}, 1, []string{"node mix", "unsupported operator: Einsum", "Hint: 'drover-onnx ops'"}},
		{"two models", []string{"check", "--model", two}, nil, 1, []string{"2 .onnx files"}},
		{"no model", []string{"serve", "--listen", listen}, []string{"DROVER_MODEL_DIR="}, 2, []string{"--model PATH or set DROVER_MODEL_DIR"}},
		{"no address", []string{"serve", "--model", garbage}, []string{"DROVER_PORT="}, 2, []string{"--listen HOST:PORT or set DROVER_PORT"}},
		{"check", []string{"check", "--model", sampleDir}, nil, 0, []string{"opset 17: ok", "input  input float [-1 64]"}},
	} {
		code, out := runBinary(t, tc.env, tc.args...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, code, tc.code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, w, out)
			}
		}
	}
}
