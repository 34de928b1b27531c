// Package onnxcmd is drover-onnx's command line: serving an ONNX model over
// HTTP as a child process of the agent, and checking a model before that.
package onnxcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/agent/runtime/onnx"
	"github.com/droverhq/drover/agent/runtime/onnx/serve"
	"github.com/droverhq/drover/internal/buildinfo"
	"github.com/droverhq/drover/internal/logging"
)

// The environment the agent sets for a runtime it starts; flags win.
const (
	EnvPort      = "DROVER_PORT"       // the loopback port to listen on
	EnvModelDir  = "DROVER_MODEL_DIR"  // the model version's folder
	EnvModelName = "DROVER_MODEL_NAME" // the name responses carry
	EnvMaxBatch  = "DROVER_MAX_BATCH"  // the deployment's runtime.max_batch
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // a bad model, a port in use, a failed warm-up
	exitUsage = 2 // the command line itself was wrong
)

// shutdownGrace bounds how long SIGTERM waits for requests in flight.
const shutdownGrace = 10 * time.Second

// Main runs the command line with args (without the program name) and
// returns the exit code. serve runs until ctx ends, which is a clean stop.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, args, stdout, stderr, os.LookupEnv)
}

type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	root := &cobra.Command{
		Use:   "drover-onnx",
		Short: "Drover's built-in ONNX runtime",
		Long: `drover-onnx runs an ONNX model on the CPU, in pure Go, and answers
inference requests over HTTP. The Drover agent starts one per model version
it serves and proxies requests to it; it can also run by hand.`,
		Version:       buildinfo.Read().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	root.AddCommand(newServeCommand(stderr, lookupEnv), newCheckCommand(stdout, lookupEnv), newOpsCommand(stdout), &cobra.Command{
		Use:   "version",
		Short: "Print drover-onnx's version, commit and Go version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(stdout, "drover-onnx", buildinfo.Read())
		},
	})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "Error: %s\n", err)
		var u *usageError
		if errors.As(err, &u) || strings.HasPrefix(err.Error(), "unknown command") {
			fmt.Fprintln(stderr, "Run 'drover-onnx --help' for usage.")
			return exitUsage
		}
		if errors.Is(err, onnx.ErrUnsupportedOp) {
			fmt.Fprintln(stderr, "Hint: 'drover-onnx ops' lists the operators this runtime implements; re-export the model with those, or serve it with the exec runtime.")
		}
		return exitError
	}
	return exitOK
}

// modelFlags are the flags every command that reads a model shares.
type modelFlags struct {
	path string
	name string
}

func (f *modelFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.path, "model", "", "`PATH` of the model: a .onnx file, or a folder holding model.onnx or a single .onnx file (default $"+EnvModelDir+")")
	cmd.Flags().StringVar(&f.name, "name", "", "`NAME` the responses carry (default $"+EnvModelName+", else the model's folder or file name)")
}

// resolve finds the model file and its name from flags and environment.
func (f *modelFlags) resolve(lookupEnv func(string) (string, bool)) (file, name string, err error) {
	path := f.path
	if path == "" {
		path, _ = lookupEnv(EnvModelDir)
	}
	if path == "" {
		return "", "", &usageError{fmt.Errorf("no model: give --model PATH or set %s", EnvModelDir)}
	}
	file, err = FindModel(path)
	if err != nil {
		return "", "", err
	}
	name = f.name
	if name == "" {
		name, _ = lookupEnv(EnvModelName)
	}
	if name == "" {
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			name = filepath.Base(filepath.Clean(path))
		} else {
			name = strings.TrimSuffix(filepath.Base(file), ".onnx")
		}
	}
	return file, name, nil
}

// FindModel returns the model file path names: the path itself when it is
// a file, else PATH/model.onnx, else the one .onnx file in the folder.
func FindModel(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("model: %w", err)
	}
	if !st.IsDir() {
		return path, nil
	}
	if p := filepath.Join(path, "model.onnx"); fileExists(p) {
		return p, nil
	}
	found, _ := filepath.Glob(filepath.Join(path, "*.onnx"))
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("model: %s holds no model.onnx and no other .onnx file", path)
	}
	return "", fmt.Errorf("model: %s holds %d .onnx files and no model.onnx: name one with --model FILE", path, len(found))
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

func newServeCommand(stderr io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		mf        modelFlags
		listen    string
		cfg       = serve.DefaultConfig()
		logLevel  string
		logFormat string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve a model over HTTP",
		Long: `Load a model, warm it up with one inference, and answer:

  POST /v1/infer    {"inputs": {"NAME": [[...], ...]}} -> {"outputs": {...}, "model": ..., "latency_ms": ...}
  GET  /v1/health   200 once the model is loaded and warmed up, 503 before
  GET  /v1/model    the model's inputs and outputs with their types and shapes
  GET  /metrics     Prometheus metrics

With --max-batch above 1, concurrent requests of a model whose inputs and
outputs all have an open first (batch) dimension are coalesced into one run
of up to --max-batch rows, each waiting at most --batch-wait for company.
Off by default; --max-batch 8 pays for convolutional models (docs/onnx.md).
At most --workers model runs are in flight; other requests wait their turn. SIGTERM or SIGINT stops the
server after the requests in flight (at most 10s).`,
		Example: `  drover-onnx serve --model cli/sample/hello-classifier --listen 127.0.0.1:8500
  DROVER_MODEL_DIR=/var/lib/drover/versions/digits/3 DROVER_PORT=8500 drover-onnx serve`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, err := logging.ParseLevel(logLevel)
			if err != nil {
				return &usageError{err}
			}
			if err := logging.CheckFormat(logFormat); err != nil {
				return &usageError{err}
			}
			if v, ok := lookupEnv(EnvMaxBatch); ok && v != "" && !cmd.Flags().Changed("max-batch") {
				n, err := strconv.Atoi(v)
				if err != nil {
					return &usageError{fmt.Errorf("%s=%q is not a number of rows", EnvMaxBatch, v)}
				}
				cfg.MaxBatch = n
			}
			if err := cfg.Validate(); err != nil {
				return &usageError{err}
			}
			if listen == "" {
				port, ok := lookupEnv(EnvPort)
				if !ok || port == "" {
					return &usageError{fmt.Errorf("no address: give --listen HOST:PORT or set %s", EnvPort)}
				}
				listen = net.JoinHostPort("127.0.0.1", port)
			}
			file, name, err := mf.resolve(lookupEnv)
			if err != nil {
				return err
			}
			cfg.Logger = logging.New(stderr, level, logFormat)
			return Serve(cmd.Context(), cfg, listen, file, name)
		},
	}
	mf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "", "`HOST:PORT` to listen on (default 127.0.0.1:$"+EnvPort+")")
	f.IntVar(&cfg.MaxBatch, "max-batch", cfg.MaxBatch, "most `ROWS` one run coalesces from concurrent requests; 1 turns coalescing off (default $"+EnvMaxBatch+" when set)")
	f.DurationVar(&cfg.BatchWait, "batch-wait", cfg.BatchWait, "longest a request waits for others to join its batch")
	f.IntVar(&cfg.Workers, "workers", cfg.Workers, "model runs in flight at once; more requests wait their turn")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest request body accepted")
	f.StringVar(&logLevel, "log-level", "info", "`LEVEL`: trace, debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "`FORMAT`: text or json")
	return cmd
}

// Serve listens on addr at once (health answers 503 while the model loads),
// loads and warms up the model, and serves until ctx ends. A model that
// does not load ends it with the loader's error.
func Serve(ctx context.Context, cfg serve.Config, addr, file, name string) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := serve.New(cfg, reg)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "model", file)

	stop := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		err := hs.Shutdown(sctx)
		<-served
		return err
	}
	start := time.Now()
	m, err := onnx.LoadFile(file)
	if err == nil {
		err = srv.SetModel(ctx, name, m)
	}
	if err != nil {
		_ = stop()
		return err
	}
	log.Info("serving", "model", name, "load_ms", time.Since(start).Milliseconds())
	select {
	case <-ctx.Done():
		log.Info("stopping")
		if err := stop(); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
		return nil
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	}
}

func newCheckCommand(stdout io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	var mf modelFlags
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Load a model and run it once, without serving it",
		Long: `Load a model, check every operator against those this runtime implements,
run one inference on zeros, and print the model's inputs and outputs.
Exits 1, naming the operator or field, when the model cannot be served.`,
		Example: `  drover-onnx check --model cli/sample/hello-classifier`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			file, name, err := mf.resolve(lookupEnv)
			if err != nil {
				return err
			}
			m, err := onnx.LoadFile(file)
			if err != nil {
				return err
			}
			srv, err := serve.New(serve.DefaultConfig(), prometheus.NewRegistry())
			if err != nil {
				return err
			}
			defer srv.Close()
			if err := srv.SetModel(cmd.Context(), name, m); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: %s, opset %d: ok\n", name, file, m.Opset())
			for _, v := range m.Inputs() {
				fmt.Fprintf(stdout, "  input  %s %s %v\n", v.Name, v.DType, v.Shape)
			}
			for _, v := range m.Outputs() {
				fmt.Fprintf(stdout, "  output %s %s %v\n", v.Name, v.DType, v.Shape)
			}
			return nil
		},
	}
	mf.register(cmd)
	return cmd
}

func newOpsCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "ops",
		Short: "List the ONNX operators this runtime implements",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			for _, op := range onnx.Operators() {
				fmt.Fprintln(stdout, op)
			}
		},
	}
}
