package process_test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/droverhq/drover/scenarios/process"
)

// Flags of BenchmarkAgentIdle.
var (
	idleDuration = flag.Duration("idle.duration", time.Minute, "measured idle window of BenchmarkAgentIdle")
	idleSettle   = flag.Duration("idle.settle", 15*time.Second, "wait after the deployment serves on both agents before BenchmarkAgentIdle measures")
)

// benchModelServerEnv, set in a deployment's runtime env, makes this test
// binary a trivial model server: the exec runtime starts it on
// DROVER_PORT, where it answers GET /v1/health and POST /v1/infer.
const benchModelServerEnv = "PROCESS_BENCH_MODEL_SERVER"

// Targets of an idle drover-agent.
const (
	idleCPUTarget = 0.01     // of a core
	idleRSSTarget = 25000000 // bytes
)

func serveBenchModel() int {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("POST /v1/infer", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"outputs":{"logits":[[-3.1,-2.0,-4.2,-1.5,-2.2,-0.9,-3.3,-2.8,-1.1,-2.6]]}}`))
	})
	srv := &http.Server{Addr: "127.0.0.1:" + os.Getenv("DROVER_PORT"), Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "bench model server:", err)
		return 1
	}
	return 0
}

// BenchmarkAgentIdle measures what an idle drover-agent costs its node
// with request telemetry on and off. It starts one real `drover server`
// and two real drover-agent processes built from this module, enrolled
// with a join token: one with the default telemetry spool (64 MiB, so
// telemetry on) and one with --telemetry-spool-size 0 (request telemetry
// off), both with the site gossip pool and peer serving off. A deployment
// of the exec runtime (this test binary as a trivial model server) is
// applied to both; once both serve it, and after -idle.settle, both sit
// idle (no requests: heartbeats, health checks, the node metrics) for
// -idle.duration side by side, so that the same load on the box weighs on
// both. It reports each agent's CPU over the window (utime+stime from
// /proc/PID/stat, as a share of one core) and its VmRSS, RssAnon (private
// memory) and RssFile (the binary's mapped pages, shared and reclaimable)
// from /proc/PID/status at the end, and the telemetry-on agent's ratio to the
// targets: 1% of a core and 25 MB.
func BenchmarkAgentIdle(b *testing.B) {
	if *idleDuration <= 0 || *idleSettle < 0 {
		b.Fatalf("-idle.duration %v, -idle.settle %v: out of range", *idleDuration, *idleSettle)
	}
	ctx := b.Context()
	agentBin := process.BuildAgent(b)
	droverBin := process.Build(b)
	c := process.Start(b, 1, benchOptions(b))
	leader, err := c.Leader(ctx)
	if err != nil {
		b.Fatal(err)
	}
	addr := c.APIAddr(leader)
	op, err := newOperator(c, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer op.close()
	tok, err := op.createToken(ctx, 2)
	if err != nil {
		b.Fatal(err)
	}

	// The operator's CLI, with the cluster's token and CA.
	home := b.TempDir()
	cli := func(args ...string) {
		b.Helper()
		cmd := exec.CommandContext(ctx, droverBin, append([]string{"--address", "https://" + addr}, args...)...)
		cmd.Env = append(os.Environ(), "DROVER_TOKEN="+c.Token(), "DROVER_CACERT="+c.CAFile(), "HOME="+home, "XDG_CONFIG_HOME="+home)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("drover %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	start := func(name, spool string) *idleAgent {
		b.Helper()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		serve := l.Addr().String()
		_ = l.Close()
		a := &idleAgent{name: name, serve: serve, logFile: filepath.Join(b.TempDir(), name+".log")}
		logf, err := os.Create(a.logFile)
		if err != nil {
			b.Fatal(err)
		}
		defer logf.Close()
		a.cmd = exec.Command(agentBin, "--server", addr, "--token", tok.String(), "--data-dir", b.TempDir(), "--name", name,
			"--gossip-addr", "off", "--peer-addr", "off", "--serve-addr", serve, "--telemetry-spool-size", spool, "--log-level", "warn")
		a.cmd.Stdout, a.cmd.Stderr = logf, logf
		if err := a.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = a.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = a.cmd.Process.Kill()
				<-done
			}
		})
		return a
	}
	on := start("telemetry-on", "64MiB")
	off := start("telemetry-off", "0")
	agents := []*idleAgent{on, off}

	cli("model", "create", "digits")
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "model.txt"), []byte("digits"), 0o644); err != nil {
		b.Fatal(err)
	}
	cli("model", "push", dir, "--model", "digits", "--alias", "prod")
	spec := filepath.Join(b.TempDir(), "digits.yaml")
	if err := os.WriteFile(spec, fmt.Appendf(nil, `name: digits
model: digits@prod
runtime:
  type: exec
  command: [%q]
  env: {%s: "1"}
  health_path: /v1/health
strategy:
  max_parallel: 2
  min_healthy_time: 1s
`, os.Args[0], benchModelServerEnv), 0o644); err != nil {
		b.Fatal(err)
	}
	cli("deploy", "apply", "-f", spec)
	deadline := time.Now().Add(3 * time.Minute)
	for _, a := range agents {
		for {
			resp, err := http.Get("http://" + a.serve + "/v1/deployments/digits/health")
			if err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s does not serve deployment digits after 3 minutes (last: %v)\n%s", a.name, err, a.log())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	time.Sleep(*idleSettle)

	b.ResetTimer()
	cpu0 := make([]time.Duration, len(agents))
	for i, a := range agents {
		if cpu0[i], err = procCPU(a.cmd.Process.Pid); err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Now()
	time.Sleep(*idleDuration)
	secs := time.Since(t0).Seconds()
	b.StopTimer()
	load := loadAvg()
	type figures struct {
		cores     float64
		rss, anon int64
		file      int64
		cpuUsed   time.Duration
	}
	got := make([]figures, len(agents))
	for i, a := range agents {
		cpu1, err := procCPU(a.cmd.Process.Pid)
		if err != nil {
			b.Fatalf("%s: %v\n%s", a.name, err, a.log())
		}
		st, err := procStatus(a.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		got[i] = figures{cores: (cpu1 - cpu0[i]).Seconds() / secs, rss: st["VmRSS"], anon: st["RssAnon"], file: st["RssFile"], cpuUsed: cpu1 - cpu0[i]}
	}
	f, g := got[0], got[1]
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(f.cores*100, "on-%core")
	b.ReportMetric(g.cores*100, "off-%core")
	b.ReportMetric(float64(f.rss)/1e6, "on-RSS-MB")
	b.ReportMetric(float64(g.rss)/1e6, "off-RSS-MB")
	b.ReportMetric(float64(f.anon)/1e6, "on-anon-MB")
	b.ReportMetric(float64(g.anon)/1e6, "off-anon-MB")
	b.ReportMetric(float64(f.file)/1e6, "on-file-MB")
	b.ReportMetric(f.cores/idleCPUTarget, "on-cpu/target")
	b.ReportMetric(float64(f.rss)/idleRSSTarget, "on-rss/target")
	verdict := func(ok bool) string {
		if ok {
			return "meets"
		}
		return "MISSES"
	}
	b.Logf("idle %.0fs, one deployment serving: telemetry on: CPU %v (%.2f%% of a core, %s 1%%), VmRSS %.1f MB (%s 25 MB), RssAnon %.1f MB, RssFile %.1f MB; "+
		"telemetry off: CPU %v (%.2f%% of a core), VmRSS %.1f MB, RssAnon %.1f MB, RssFile %.1f MB; load average %s",
		secs, f.cpuUsed.Round(time.Millisecond), f.cores*100, verdict(f.cores < idleCPUTarget), float64(f.rss)/1e6, verdict(f.rss < idleRSSTarget),
		float64(f.anon)/1e6, float64(f.file)/1e6, g.cpuUsed.Round(time.Millisecond), g.cores*100, float64(g.rss)/1e6, float64(g.anon)/1e6,
		float64(g.file)/1e6, load)
	for _, a := range agents {
		if s := strings.TrimSpace(a.log()); s != "" {
			logVerbose(b, "%s log:\n%s", a.name, s)
		}
	}
}

// idleAgent is one drover-agent process of BenchmarkAgentIdle.
type idleAgent struct {
	name, serve string
	cmd         *exec.Cmd
	logFile     string
}

// log is what the agent wrote so far.
func (a *idleAgent) log() string {
	b, err := os.ReadFile(a.logFile)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// procStatus reads the kB figures of /proc/PID/status, in bytes.
func procStatus(pid int) (map[string]int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if !ok || len(fs) != 2 || fs[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		out[k] = n << 10
	}
	return out, sc.Err()
}
