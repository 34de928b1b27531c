package process

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The drover binary is built once per test binary and shared by every
// cluster it starts.
var build struct {
	once sync.Once
	dir  string // temp dir holding the binary; removed by RemoveBuild
	bin  string
	err  error
}

// Build compiles ./cmd/drover of the module under test into a temp dir,
// once per process, and returns the binary's path. A failed build fails
// every caller. Call RemoveBuild from TestMain to delete the binary when
// the test binary exits.
func Build(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		build.bin, build.err = buildDrover()
	})
	if build.err != nil {
		t.Fatalf("process: %v", build.err)
	}
	return build.bin
}

// RemoveBuild deletes the binary Build made, if any. Use it in TestMain
// after m.Run; later calls to Build fail. A test binary that panics or
// times out never gets there and leaves the binary in the temp dir.
func RemoveBuild() {
	build.once.Do(func() { build.err = fmt.Errorf("build removed") })
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
}

// agentBuild is the drover-agent binary BuildAgent made.
var agentBuild struct {
	once sync.Once
	path string
	err  error
}

// BuildAgent compiles ./cmd/drover-agent beside the drover binary, once
// per process, stripped as it ships (-trimpath -ldflags='-s -w'), so that
// the memory it maps is a real agent's; RemoveBuild deletes it too.
func BuildAgent(t testing.TB) string {
	t.Helper()
	drover := Build(t)
	agentBuild.once.Do(func() {
		agentBuild.path, agentBuild.err = goBuild(filepath.Dir(drover), "drover-agent", "-trimpath", "-ldflags=-s -w")
	})
	if agentBuild.err != nil {
		t.Fatal(agentBuild.err)
	}
	return agentBuild.path
}

// goBuild builds ./cmd/NAME of the module under test into dir, with
// flags added to go build's.
func goBuild(dir, name string, flags ...string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, "./cmd/"+name)...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/%s in %s: %w\n%s", name, root, err, out.String())
	}
	return bin, nil
}

func buildDrover() (string, error) {
	dir, err := os.MkdirTemp("", "drover-process-")
	if err != nil {
		return "", fmt.Errorf("build drover: %w", err)
	}
	build.dir = dir
	return goBuild(dir, "drover")
}

// moduleRoot is the directory of the go.mod that holds the current
// directory (a test runs in its package's directory).
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a module (got %q)", gomod)
	}
	return filepath.Dir(gomod), nil
}
