package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// runDevUntilReady starts `drover dev` and returns once it says it is
// running; stop ends it as Ctrl-C would and returns its exit code.
func runDevUntilReady(t *testing.T, dataDir, configPath string) (out *syncBuffer, stop func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, errOut := &syncBuffer{}, &syncBuffer{}
	g := &globals{
		stdin: strings.NewReader(""), stdout: out, stderr: errOut,
		lookupEnv: func(k string) (string, bool) {
			if k == envConfig {
				return configPath, true
			}
			return "", false
		},
		isTerminal: func(any) bool { return false },
		now:        time.Now,
	}
	done := make(chan int, 1)
	go func() { done <- g.run(ctx, []string{"dev", "--port", "0", "--serve-port", "0", "--data-dir", dataDir}) }()
	// Enrolling three agents and serving the sample model on each: a
	// minute or two on a loaded machine.
	deadline := time.After(2 * time.Minute)
	for !strings.Contains(out.String(), "Drover dev cluster is running") {
		select {
		case code := <-done:
			cancel()
			t.Fatalf("drover dev exited with %d before it was ready:\n%s\n%s", code, out, errOut)
		case <-deadline:
			cancel()
			t.Fatalf("drover dev not ready after 2m:\n%s\n%s", out, errOut)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return out, func() int {
		cancel()
		select {
		case code := <-done:
			return code
		case <-time.After(30 * time.Second):
			t.Fatal("drover dev did not stop within 30s of Ctrl-C")
			return -1
		}
	}
}

// A newcomer's first run creates a CA, a token, a client config and a
// sample model; the CLI then works with no flags; a second run reuses all
// of it.
func TestDevRunsAndResumes(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	configPath := filepath.Join(dir, "config.json")
	// The dev agents run the sample model with drover-onnx, which they
	// look for on the PATH when it is not beside the running binary.
	bin := filepath.Join(dir, "bin")
	if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, "drover-onnx"), "github.com/droverhq/drover/cmd/drover-onnx").CombinedOutput(); err != nil {
		t.Fatalf("build drover-onnx: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	out, stop := runDevUntilReady(t, dataDir, configPath)
	if !strings.Contains(out.String(), dataDir) {
		t.Errorf("drover dev does not print its data dir:\n%s", out)
	}
	cfg, err := loadClientConfig(func(k string) (string, bool) {
		if k == envConfig {
			return configPath, true
		}
		return "", false
	})
	if err != nil {
		t.Fatalf("client config: %v", err)
	}
	if cfg.Token == "" || cfg.CACert == "" || cfg.Address == "" {
		t.Fatalf("client config incomplete: %+v", cfg)
	}
	// The CLI, configured only by the file dev wrote, sees the sample.
	h := &globals{
		stdin: strings.NewReader(""), stdout: &syncBuffer{}, stderr: &syncBuffer{},
		lookupEnv: func(k string) (string, bool) {
			if k == envConfig {
				return configPath, true
			}
			return "", false
		},
		isTerminal: func(any) bool { return false }, now: time.Now,
	}
	if code := h.run(context.Background(), []string{"model", "card", "hello-classifier@prod"}); code != exitOK {
		t.Fatalf("model card exited %d: %s", code, h.stderr)
	}
	if !strings.Contains(h.stdout.(*syncBuffer).String(), "# hello-classifier") {
		t.Fatalf("sample card not printed: %s", h.stdout)
	}
	// It carries its reference profile, so drift can be judged at once.
	h.stdout = &syncBuffer{}
	if code := h.run(context.Background(), []string{"model", "version", "show", "hello-classifier@prod"}); code != exitOK {
		t.Fatalf("model version show exited %d: %s", code, h.stderr)
	}
	if got := h.stdout.(*syncBuffer).String(); !strings.Contains(got, "65 features, from the push (1797 rows)") {
		t.Errorf("the sample version's reference is not the embedded data set:\n%s", got)
	}
	// The sample has real bytes: pulled back, they are the embedded model.
	pulled := filepath.Join(t.TempDir(), "pulled")
	if code := h.run(context.Background(), []string{"model", "pull", "hello-classifier@prod", pulled}); code != exitOK {
		t.Fatalf("model pull exited %d: %s", code, h.stderr)
	}
	want, err := sampleModel.ReadFile("sample/hello-classifier/model.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(pulled, "model.onnx")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pulled sample model.onnx: %d bytes, err %v; want the %d embedded bytes", len(got), err, len(want))
	}
	// Its three local agents enrolled and are ready, in two sites.
	firstNodes := devNodes(t, h)
	if len(firstNodes) != 3 {
		t.Fatalf("drover dev runs %d nodes, want its 3 default agents: %v", len(firstNodes), firstNodes)
	}
	sites := map[string]bool{}
	for _, n := range firstNodes {
		if n.Status != "NODE_STATUS_READY" {
			t.Errorf("dev node %s is %s, want ready", n.Name, n.Status)
		}
		sites[n.Site] = true
	}
	if len(sites) != 2 {
		t.Errorf("dev agents are in sites %v, want two sites", sites)
	}
	if !strings.Contains(out.String(), "3 of 3 ready") {
		t.Errorf("drover dev does not say its agents are ready:\n%s", out)
	}
	if !strings.Contains(out.String(), "3 serve hello-classifier@prod") {
		t.Errorf("drover dev does not say its agents serve the sample model:\n%s", out)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("drover dev exited %d after Ctrl-C, want a clean stop's 0", code)
	}
	token, err := os.ReadFile(filepath.Join(dataDir, "dev-token"))
	if err != nil {
		t.Fatal(err)
	}

	// Second run: same data, same token, no second sample.
	out, stop = runDevUntilReady(t, dataDir, configPath)
	if !strings.Contains(out.String(), strings.TrimSpace(string(token))) {
		t.Errorf("second run uses another token:\n%s", out)
	}
	h.stdout = &syncBuffer{}
	if code := h.run(context.Background(), []string{"model", "version", "ls", "hello-classifier", "-o", "json"}); code != exitOK {
		t.Fatalf("version ls exited %d: %s", code, h.stderr)
	}
	if n := strings.Count(h.stdout.(*syncBuffer).String(), `"version":`); n != 1 {
		t.Errorf("sample model has %d versions after a rerun, want 1", n)
	}
	// The agents came back as the same nodes: no second enrollment.
	again := devNodes(t, h)
	if len(again) != len(firstNodes) {
		t.Errorf("after a rerun there are %d nodes, want the same %d: %v", len(again), len(firstNodes), again)
	}
	for i := range min(len(again), len(firstNodes)) {
		if again[i].ID != firstNodes[i].ID {
			t.Errorf("node %d is %s after a rerun, was %s", i, again[i].ID, firstNodes[i].ID)
		}
	}
	if code := stop(); code != exitOK {
		t.Fatalf("second drover dev exited %d after Ctrl-C, want 0", code)
	}
}

// Ctrl-C while dev is still starting is a clean stop too: exit 0 and no
// error, so `make dev` does not end with a make error.
func TestDevInterruptedWhileStarting(t *testing.T) {
	dir := t.TempDir()
	var out, errOut syncBuffer
	g := &globals{
		stdin: strings.NewReader(""), stdout: &out, stderr: &errOut,
		lookupEnv: func(k string) (string, bool) {
			if k == envConfig {
				return filepath.Join(dir, "config.json"), true
			}
			return "", false
		},
		isTerminal: func(any) bool { return false },
		now:        time.Now,
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the signal arrives before the server leads
	code := g.run(ctx, []string{"dev", "--port", "0", "--data-dir", filepath.Join(dir, "data"), "--agents", "0"})
	if code != exitOK || strings.Contains(errOut.String(), "Error") {
		t.Fatalf("drover dev interrupted while starting: exit %d, stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "stopping dev cluster") {
		t.Errorf("drover dev does not say it stops:\n%s", out.String())
	}
}

type devNode struct {
	ID, Name, Site, Status string
}

// devNodes lists the nodes with `drover node ls -o json`, sorted by name,
// once every node is ready (or after 30 seconds, as they are).
func devNodes(t *testing.T, h *globals) []devNode {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := &syncBuffer{}
		h.stdout = out
		if code := h.run(context.Background(), []string{"node", "ls", "-o", "json"}); code != exitOK {
			t.Fatalf("node ls exited %d: %s", code, h.stderr)
		}
		var res struct{ Nodes []devNode }
		if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
			t.Fatalf("node ls -o json: %v\n%s", err, out)
		}
		slices.SortFunc(res.Nodes, func(a, b devNode) int { return strings.Compare(a.Name, b.Name) })
		allReady := len(res.Nodes) > 0
		for _, n := range res.Nodes {
			allReady = allReady && n.Status == "NODE_STATUS_READY"
		}
		if allReady || time.Now().After(deadline) {
			return res.Nodes
		}
		time.Sleep(100 * time.Millisecond)
	}
}
