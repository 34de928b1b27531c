package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/agent/agenttest"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
	buildOut  []byte
)

// noCgoBinary builds drover-agent with CGO_ENABLED=0, once per test run:
// the static build that edge devices and FROM-scratch images get.
func noCgoBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "drover-agent-test-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "drover-agent")
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

// Without cgo there is no NVML; the probe says so instead of failing.
func TestProbeWithoutCgo(t *testing.T) {
	bin := noCgoBinary(t)
	out, err := exec.Command(bin, "probe", "-o", "json", "--data-dir", t.TempDir()).Output()
	if err != nil {
		t.Fatalf("probe -o json: %v", err)
	}
	var inv droverv1.NodeInventory
	if err := protojson.Unmarshal(out, &inv); err != nil {
		t.Fatalf("probe -o json: %v\n%s", err, out)
	}
	if inv.GetHost().GetHostname() == "" || inv.GetHost().GetArch() == "" {
		t.Errorf("no host section in %s", out)
	}
	if gp := inv.GetGpuProbe(); gp.GetAvailable() || !strings.Contains(gp.GetReason(), "without cgo") {
		t.Errorf("gpuProbe = %v, want NVML unavailable because of no cgo", gp)
	}
	table, err := exec.Command(bin, "probe", "--data-dir", t.TempDir()).Output()
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if !strings.Contains(string(table), "none: built without cgo: NVML unavailable") {
		t.Errorf("probe table does not say why there are no GPUs:\n%s", table)
	}
}

// SIGTERM stops a running agent cleanly: exit 0.
func TestSIGTERMStopsCleanly(t *testing.T) {
	bin := noCgoBinary(t)
	c := agenttest.NewCluster(t, 1)
	cmd := exec.Command(bin, "--server", c.Addrs()[0], "--data-dir", t.TempDir(), "--name", "edge-1")
	cmd.Env = append(os.Environ(), "DROVER_TOKEN="+c.NewToken())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waited := false
	defer func() {
		if !waited {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	c.WaitForCalls(agenttest.Heartbeat, 1)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		waited = true
		if err != nil {
			t.Fatalf("agent exited with %v after SIGTERM; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent still running 30s after SIGTERM; stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "drover-agent stopped") {
		t.Errorf("no clean stop in the log:\n%s", stderr.String())
	}
}
