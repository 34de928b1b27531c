//go:build linux

package exec

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests run this test binary as the model server: with EXECTEST_MODE
// set, TestMain runs serverMain instead of the tests.
const modeEnv = "EXECTEST_MODE"

func TestMain(m *testing.M) {
	if mode := os.Getenv(modeEnv); mode != "" {
		serverMain(mode)
		return
	}
	os.Exit(m.Run())
}

// serverMain is a tiny model server. Modes:
//
//	serve   serve HTTP on DROVER_HOST:DROVER_PORT (see the handlers)
//	crash   print to stderr and exit with EXECTEST_CODE (default 3)
//	sleep   sleep for ever, ignoring SIGTERM
func serverMain(mode string) {
	if os.Getenv("EXECTEST_IGNORE_TERM") == "1" || mode == "sleep" {
		signal.Ignore(syscall.SIGTERM)
	}
	switch mode {
	case "crash":
		fmt.Fprintln(os.Stderr, "boom: the model file is missing")
		code, _ := strconv.Atoi(os.Getenv("EXECTEST_CODE"))
		if os.Getenv("EXECTEST_CODE") == "" {
			code = 3
		}
		os.Exit(code)
	case "sleep":
		select {}
	case "serve":
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
	var healthy atomic.Bool
	healthy.Store(os.Getenv("EXECTEST_NEVER_READY") != "1")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /sick", func(w http.ResponseWriter, r *http.Request) { healthy.Store(false) })
	mux.HandleFunc("GET /well", func(w http.ResponseWriter, r *http.Request) { healthy.Store(true) })
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(os.Environ())
	})
	mux.HandleFunc("GET /print", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		for i := range n {
			fmt.Printf("line %d\n", i)
		}
	})
	mux.HandleFunc("GET /spawn", func(w http.ResponseWriter, r *http.Request) {
		self, _ := os.Executable()
		cmd := osexec.Command(self)
		cmd.Env = append(os.Environ(), modeEnv+"=sleep")
		cmd.Stdout = os.Stdout // holds the instance's pipe, as a real worker would
		if r.URL.Query().Get("setsid") == "1" {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // leaves the process group
		}
		if err := cmd.Start(); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, cmd.Process.Pid)
	})
	mux.HandleFunc("GET /exit", func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		fmt.Fprintln(os.Stderr, "exiting on request with", code)
		os.Exit(code)
	})
	l, err := net.Listen("tcp", net.JoinHostPort(os.Getenv("DROVER_HOST"), os.Getenv("DROVER_PORT")))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Println("hello stdout")
	fmt.Fprintln(os.Stderr, "hello stderr")
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	err = srv.Serve(l)
	fmt.Fprintln(os.Stderr, "serve:", err)
	os.Exit(1)
}
