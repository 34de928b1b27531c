package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// modelServerEnv, set in a deployment's runtime env, makes this test binary
// a model server instead of running tests: the exec runtime starts it as
// it would start Triton or a Python script. It serves the version
// directory's files under /v1/ and answers /v1/health with 200, or with
// 500 when the version holds a file named "broken", which is how scenarios
// make a version that fails its health check on start. GET /v1/env
// answers with the environment the agent gave it (modelEnv), so that
// scenarios see which GPUs an instance was handed. It prints a line on
// stdout when it starts and per request, and one on stderr, for the logs
// scenario.
const modelServerEnv = "SCENARIO_MODEL_SERVER"

// modelLogEnv, when set in a deployment's runtime env, names a file each
// model server appends a lifeRecord to as it starts serving and another as
// it is told to stop: the whole run's instances, those a reconciler
// replaced included, for invariants no sampling would catch.
const modelLogEnv = "SCENARIO_MODEL_LOG"

// modelEnv is what GET /v1/env answers and what a lifeRecord carries.
type modelEnv struct {
	PID     int    `json:"pid"`
	Dir     string `json:"dir"`
	Version string `json:"version"`
	CUDA    string `json:"cuda_visible_devices"`
	NVIDIA  string `json:"nvidia_visible_devices"`
}

// lifeRecord is one line of a modelLogEnv file.
type lifeRecord struct {
	Event string    `json:"event"` // "start" or "stop"
	Time  time.Time `json:"time"`
	modelEnv
}

// appendLife appends one record to the modelLogEnv file, in one write so
// that servers writing at once never interleave.
func appendLife(event string, env modelEnv) {
	path := os.Getenv(modelLogEnv)
	if path == "" {
		return
	}
	b, _ := json.Marshal(lifeRecord{Event: event, Time: time.Now(), modelEnv: env})
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "model server: life log:", err)
		return
	}
	defer f.Close()
	if _, err := f.Write(append(b, '\n')); err != nil {
		fmt.Fprintln(os.Stderr, "model server: life log:", err)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(modelServerEnv) != "" {
		os.Exit(serveModel())
	}
	os.Exit(m.Run())
}

func serveModel() int {
	dir, port := os.Getenv("DROVER_MODEL_DIR"), os.Getenv("DROVER_PORT")
	host := os.Getenv("DROVER_HOST")
	if dir == "" || port == "" {
		fmt.Fprintln(os.Stderr, "model server: DROVER_MODEL_DIR and DROVER_PORT must be set")
		return 2
	}
	_, brokenErr := os.Stat(filepath.Join(dir, "broken"))
	broken := brokenErr == nil
	env := modelEnv{PID: os.Getpid(), Dir: dir, Version: os.Getenv("DROVER_VERSION"),
		CUDA: os.Getenv("CUDA_VISIBLE_DEVICES"), NVIDIA: os.Getenv("NVIDIA_VISIBLE_DEVICES")}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/env", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(env)
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) {
		if broken {
			http.Error(w, "this version is broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// A model of sorts: {"inputs": {"x": N, "color": S}} is answered with
	// {"outputs": {"y": 2N, "scores": [...]}}, the scores' largest at
	// index N mod 3, so telemetry scenarios know every feature and output.
	mux.HandleFunc("POST /v1/infer", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Inputs struct {
				X float64 `json:"x"`
			} `json:"inputs"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, "bad input: "+err.Error(), http.StatusBadRequest)
			return
		}
		scores := []float64{0.1, 0.1, 0.1}
		scores[int(req.Inputs.X)%3] = 0.8
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"outputs": map[string]any{"y": 2 * req.Inputs.X, "scores": scores}})
	})
	mux.HandleFunc("/v1/{path...}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("path")
		// One line per request on stdout, as model servers log them:
		// what `drover logs -f` shows.
		fmt.Printf("%s /v1/%s\n", r.Method, name)
		if strings.Contains(name, "..") {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		http.ServeFile(w, r, filepath.Join(dir, filepath.FromSlash(name)))
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "model server:", err)
		return 1
	}
	fmt.Printf("model server listening on %s, serving %s\n", ln.Addr(), dir)
	fmt.Fprintln(os.Stderr, "model server: no GPU, running on CPU")
	srv := &http.Server{Handler: mux}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	appendLife("start", env)
	go func() {
		<-ctx.Done()
		appendLife("stop", env)
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "model server:", err)
		return 1
	}
	return 0
}
