package scenarios

import (
	"context"
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
)

// modelServerEnv, set in a deployment's runtime env, makes this test binary
// a model server instead of running tests: the exec runtime starts it as
// it would start Triton or a Python script. It serves the version
// directory's files under /v1/ and answers /v1/health with 200, or with
// 500 when the version holds a file named "broken", which is how scenarios
// make a version that fails its health check on start. It prints a line
// on stdout when it starts and per request, and one on stderr, for the
// logs scenario.
const modelServerEnv = "SCENARIO_MODEL_SERVER"

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
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) {
		if broken {
			http.Error(w, "this version is broken", http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
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
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "model server:", err)
		return 1
	}
	return 0
}
