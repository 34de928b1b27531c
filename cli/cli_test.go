package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"math/rand/v2"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/internal/buildinfo"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// testNow is the clock of every command-line test; the fake server stamps
// objects two hours earlier.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const testDigest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// harness runs real command lines against an in-process TLS + HTTP/2
// server backed by fakeServer.
type harness struct {
	t      *testing.T
	fake   *fakeServer
	srv    *httptest.Server
	caFile string
	dir    string
	// env is the environment the command line sees, nothing else.
	env map[string]string
	// stdin and terminal are what the next run sees.
	stdin    string
	terminal bool
}

type result struct {
	stdout, stderr string
	code           int
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	fake := newFakeServer(testNow.Add(-2 * time.Hour))
	fake.now = testNow
	srv := httptest.NewUnstartedServer(fake.handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	fake.crash = srv.CloseClientConnections

	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return &harness{
		t: t, fake: fake, srv: srv, caFile: caFile, dir: dir,
		env: map[string]string{
			envAddress:        srv.URL,
			envCACert:         caFile,
			"HOME":            filepath.Join(dir, "home"),
			"XDG_CONFIG_HOME": filepath.Join(dir, "xdg"),
		},
	}
}

func (h *harness) run(args ...string) result {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	g := &globals{
		stdin:  strings.NewReader(h.stdin),
		stdout: &stdout,
		stderr: &stderr,
		lookupEnv: func(k string) (string, bool) {
			v, ok := h.env[k]
			return v, ok
		},
		isTerminal: func(any) bool { return h.terminal },
		now:        func() time.Time { return testNow },
	}
	code := g.run(context.Background(), args)
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	h.t.Logf("drover %s\n-> exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// ok runs a command line that must succeed and returns its stdout.
func (h *harness) ok(args ...string) string {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 {
		h.t.Fatalf("drover %s: exit %d, stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// squeeze collapses runs of spaces, for checking aligned views without
// depending on the width of their widest key.
func squeeze(s string) string {
	for strings.Contains(s, "  ") {
		s = strings.ReplaceAll(s, "  ", " ")
	}
	return s
}

func wantContains(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("output lacks %q; got:\n%s", w, got)
		}
	}
}

func TestModelLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t)

	wantContains(t, h.ok("model", "create", "resnet", "--owner", "vision", "--description", "Image classifier",
		"--tag", "task=classification", "--tag", "notes=a,b=c"),
		"Created model resnet (index 1)")

	h.stdin = "# ResNet\n\nClassifies images.\n"
	wantContains(t, h.ok("model", "version", "create", "resnet", "--digest", testDigest, "--size", "102400000",
		"--format", "onnx", "--card-file", "-", "--metric", "top1=0.812", "--metric", "top5=0.957",
		"--tag", "team=cv", "--run-id", "run-417", "--dataset-uri", "s3://data/imagenet",
		"--file", "weights.bin="+testDigest+":102399000", "--file", "config.json="+testDigest+":1000"),
		"Created resnet@1 ("+testDigest+", index 2)")
	h.stdin = ""
	wantContains(t, h.ok("model", "version", "create", "resnet", "--digest", testDigest, "--size", "2048", "--parent", "1"),
		"Created resnet@2")

	wantContains(t, h.ok("model", "alias", "set", "resnet", "prod", "1"), "resnet@prod: (new) → 1")
	wantContains(t, h.ok("model", "alias", "set", "resnet", "canary", "latest"), "resnet@canary: (new) → 2")
	wantContains(t, h.ok("model", "alias", "set", "resnet", "prod", "canary"), "resnet@prod: 1 → 2")
	wantContains(t, h.ok("model", "alias", "set", "resnet", "stable", "1"), "resnet@stable: (new) → 1")

	h.ok("model", "create", "bert")
	ls := h.ok("model", "ls")
	want := `NAME    LATEST  ALIASES                     OWNER   CREATED               AGE
bert    -       -                           -       2026-03-01T10:00:00Z  2h
resnet  2       canary=2, prod=2, stable=1  vision  2026-03-01T10:00:00Z  2h
`
	if ls != want {
		t.Errorf("model ls:\n%s\nwant:\n%s", ls, want)
	}

	var list droverv1.ListModelsResponse
	js := h.ok("model", "ls", "-o", "json")
	if err := protojson.Unmarshal([]byte(js), &list); err != nil {
		t.Fatalf("model ls -o json is not the response message: %v\n%s", err, js)
	}
	if len(list.GetModels()) != 2 || list.GetMeta().GetServedBy() != "s1" {
		t.Errorf("model ls -o json = %v", &list)
	}
	wantContains(t, js, `"latestVersion": "2"`, `"servedBy": "s1"`) // camelCase JSON names, uint64 as strings

	show := h.ok("model", "show", "resnet")
	wantContains(t, show,
		"Name:            resnet",
		"Description:     Image classifier",
		"Tags:            notes=a,b=c, task=classification",
		"Latest version:  2",
		"Created:         2026-03-01T10:00:00Z (2h ago) by anonymous",
		"ALIAS   VERSION\ncanary  2\nprod    2\nstable  1\n",
		"VERSION  DIGEST               SIZE      FORMAT  ALIASES      CREATED               AGE\n"+
			"1        sha256:9f86d081884c  97.7 MiB  onnx    stable       2026-03-01T10:00:00Z  2h\n"+
			"2        sha256:9f86d081884c  2.0 KiB   -       canary,prod  2026-03-01T10:00:00Z  2h\n")

	wantContains(t, h.ok("model", "version", "ls", "resnet"), "1        sha256:9f86d081884c  97.7 MiB  onnx    stable")

	v1 := squeeze(h.ok("model", "version", "show", "resnet@stable"))
	wantContains(t, v1,
		"Version: 1",
		"Digest: "+testDigest,
		"Size: 97.7 MiB (102400000 bytes)",
		"Training run: run-417",
		"Card: 3 lines; print it with `drover model card resnet@1`",
		"METRIC VALUE\ntop1 0.812\ntop5 0.957\n",
		"FILE DIGEST SIZE\nconfig.json "+testDigest+" 1000 B\nweights.bin")
	wantContains(t, squeeze(h.ok("model", "version", "show", "resnet")), "Version: 2", "Parent version: 1", "Card: none")

	if got := h.ok("model", "card", "resnet@1"); got != "# ResNet\n\nClassifies images.\n" {
		t.Errorf("model card = %q", got)
	}
	var gv droverv1.GetVersionResponse
	if err := protojson.Unmarshal([]byte(h.ok("model", "card", "resnet@1", "-o", "json")), &gv); err != nil || gv.GetVersion().GetCard() == "" {
		t.Errorf("model card -o json: %v, %v", err, &gv)
	}
	r := h.run("model", "card", "resnet@2")
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "resnet@2 has no model card") {
		t.Errorf("card of a version without one: %+v", r)
	}

	wantContains(t, h.ok("model", "alias", "rm", "resnet", "canary"), "resnet@canary: 2 → (removed)")
	wantContains(t, h.ok("model", "rm", "resnet"), "Deleted model resnet")

	r = h.run("model", "show", "resnet")
	if r.code != exitError || r.stdout != "" {
		t.Errorf("show of a deleted model: %+v", r)
	}
	if want := "Error: model \"resnet\" not found\nHint: list models with `drover model ls`\n"; r.stderr != want {
		t.Errorf("stderr = %q, want %q", r.stderr, want)
	}

	for _, rq := range h.fake.recordedRequests() {
		if rq.protoMajor != 2 {
			t.Errorf("%s went over HTTP/%d, want HTTP/2", rq.path, rq.protoMajor)
		}
		if ct := rq.header.Get("Content-Type"); ct != "application/proto" {
			t.Errorf("%s Content-Type = %q, want binary protobuf", rq.path, ct)
		}
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	got := h.ok("status")
	want := `Cluster:    c-7f3a
Leader:     s1
Quorum:     2 of 3 voters
Served by:  s2

NAME  ADDRESS        HEALTH  RAFT               LEADER  TERM  COMMIT  APPLIED  MISSING  ERROR
s1    10.0.0.1:7400  alive   leader/voter       *       4     120     120      0
s2    10.0.0.2:7400  alive   follower/voter             4     120     118      0
s3    10.0.0.3:7400  failed  -/voter                    -     -       -        -        context deadline exceeded
s4    10.0.0.4:7400  alive   follower/nonvoter          4     120     90       37
`
	if got != want {
		t.Errorf("status:\n%s\nwant:\n%s", got, want)
	}

	var resp droverv1.GetStatusResponse
	if err := protojson.Unmarshal([]byte(h.ok("status", "-o", "json")), &resp); err != nil || resp.GetClusterId() != "c-7f3a" {
		t.Errorf("status -o json: %v %v", err, &resp)
	}
}

func TestTokenHeader(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "ls")
	h.env[envToken] = "tok-123"
	h.ok("model", "ls")
	h.ok("status", "--token", "tok-flag")
	reqs := h.fake.recordedRequests()
	var got []string
	for _, r := range reqs {
		got = append(got, r.header.Get("Authorization"))
	}
	if want := []string{"", "Bearer tok-123", "Bearer tok-flag"}; !slices.Equal(got, want) {
		t.Errorf("Authorization headers = %q, want %q", got, want)
	}
}

func TestStaleHeader(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "ls")
	h.ok("model", "ls", "--stale")
	h.ok("status", "--stale")
	var got []string
	for _, r := range h.fake.recordedRequests() {
		got = append(got, r.header.Get(headerConsistency))
	}
	if want := []string{"", "stale", "stale"}; !slices.Equal(got, want) {
		t.Errorf("%s headers = %q, want %q", headerConsistency, got, want)
	}
}

func TestBlockingQuery(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "ls", "--index", "5", "--wait", "90s")
	q := h.fake.lastQuery
	if q.GetMinIndex() != 5 || q.GetMaxWait().AsDuration() != 90*time.Second {
		t.Errorf("query options = %v, want min_index 5, max_wait 90s", q)
	}
	h.ok("model", "ls")
	if h.fake.lastQuery != nil {
		t.Errorf("a plain read sent query options %v", h.fake.lastQuery)
	}
}

func TestAuditList(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "create", "resnet")
	h.ok("model", "create", "bert")
	h.run("model", "alias", "set", "resnet", "prod", "1") // refused (no versions); the fake does not audit refusals
	got := h.ok("audit", "ls")
	want := `TIME                  INDEX  ACTOR      ACTION        TARGET        RESULT
2026-03-01T10:00:01Z  1      anonymous  model.create  model/resnet  ok
2026-03-01T10:00:02Z  2      anonymous  model.create  model/bert    ok
`
	if got != want {
		t.Errorf("audit ls:\n%s\nwant:\n%s", got, want)
	}
	wantContains(t, h.ok("audit", "ls", "--target", "model/res", "--limit", "5", "--after", "0"), "model/resnet")
	if a := h.fake.lastAudit; a.GetTargetPrefix() != "model/res" || a.GetLimit() != 5 {
		t.Errorf("audit request = %v", a)
	}
}

func TestACLBootstrap(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	out := h.ok("acl", "bootstrap")
	wantContains(t, out, "Accessor ID:  acc-1234", "Secret ID:    s3cr3t-5678", "export DROVER_TOKEN=s3cr3t-5678")

	r := h.run("acl", "bootstrap")
	want := "Error: ACL already bootstrapped\nHint: use the management token from the first bootstrap\n"
	if r.code != exitError || r.stderr != want {
		t.Errorf("second bootstrap: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
}

func TestOperatorRaft(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	want := `ID  ADDRESS        SUFFRAGE  LEADER
s1  10.0.0.1:7401  voter     *
s2  10.0.0.2:7401  voter
`
	if got := h.ok("operator", "raft", "list-peers"); got != want {
		t.Errorf("list-peers:\n%s\nwant:\n%s", got, want)
	}
	wantContains(t, h.ok("operator", "raft", "remove-peer", "s2"), "Removed peer s2 (index 43)")
	r := h.run("operator", "raft", "remove-peer", "s9")
	if r.code != exitError || !strings.Contains(r.stderr, "Hint: list peers with `drover operator raft list-peers`") {
		t.Errorf("remove of an unknown peer: %+v", r)
	}
	wantContains(t, h.ok("operator", "leave"), "The server at "+h.srv.URL+" left the cluster")
	if !h.fake.left {
		t.Error("Leave was not called")
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	rng := rand.NewChaCha8([32]byte{1})
	// Save streams a few server messages. The server gzips them (the client
	// asks for it), which is slow under the race detector for random bytes,
	// so this one is smaller than the restore below.
	snap := make([]byte, 600<<10)
	_, _ = rng.Read(snap)
	h.fake.snapshot = snap

	path := filepath.Join(h.dir, "backup.snap")
	h.terminal = true // draws progress on stderr
	r := h.run("operator", "snapshot", "save", path)
	if r.code != 0 {
		t.Fatalf("save: %+v", r)
	}
	wantContains(t, r.stdout, "Saved snapshot to "+path+" (600.0 KiB)")
	wantContains(t, r.stderr, "\rSaving snapshot: 600.0 KiB\n")
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, snap) {
		t.Fatalf("saved file differs from the server's snapshot (err %v, %d bytes, want %d)", err, len(got), len(snap))
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("snapshot mode = %v, want 0600", st.Mode().Perm())
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp left behind: %v", path, err)
	}

	h.terminal = false
	r = h.run("operator", "snapshot", "save", path)
	if r.code != exitError || !strings.Contains(r.stderr, "already exists\nHint: pass --force") {
		t.Errorf("save over an existing file: %+v", r)
	}
	h.fake.snapshot = snap[:1000]
	h.ok("operator", "snapshot", "save", "--force", path)
	if got, _ := os.ReadFile(path); !bytes.Equal(got, snap[:1000]) {
		t.Errorf("--force did not replace the file")
	}

	// Restore sends fixed-size chunks and a short last one.
	snap = make([]byte, 2*snapshotChunk+12345)
	_, _ = rng.Read(snap)
	big := filepath.Join(h.dir, "big.snap")
	if err := os.WriteFile(big, snap, 0o600); err != nil {
		t.Fatal(err)
	}
	wantContains(t, h.ok("operator", "snapshot", "restore", "--yes", big), "state is now at index 777")
	if !bytes.Equal(h.fake.restored, snap) {
		t.Fatalf("server received %d bytes, want the %d of the file", len(h.fake.restored), len(snap))
	}
	if want := []int{snapshotChunk, snapshotChunk, 12345}; !slices.Equal(h.fake.chunks, want) {
		t.Errorf("restore chunks = %v, want %v", h.fake.chunks, want)
	}
	if h.fake.forced {
		t.Error("a plain restore asked to restore another cluster's snapshot")
	}
	h.ok("operator", "snapshot", "restore", "--yes", "--force-foreign-cluster", big)
	if !h.fake.forced {
		t.Error("--force-foreign-cluster did not reach the server")
	}
}

func TestSnapshotRestoreConfirm(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	path := filepath.Join(h.dir, "s.snap")
	if err := os.WriteFile(path, []byte("snapshot bytes"), 0o600); err != nil {
		t.Fatal(err)
	}

	h.terminal, h.stdin = true, "n\n"
	r := h.run("operator", "snapshot", "restore", path)
	if r.code != exitError || !strings.Contains(r.stderr, "[y/N]") || !strings.Contains(r.stderr, "restore cancelled") {
		t.Errorf("declined restore: %+v", r)
	}
	if h.fake.restored != nil {
		t.Fatal("restored although the operator said no")
	}

	h.stdin = "yes\n"
	h.ok("operator", "snapshot", "restore", path)
	if string(h.fake.restored) != "snapshot bytes" {
		t.Errorf("restored %q", h.fake.restored)
	}

	// Not a terminal: no question, as for scripts.
	h.fake.restored = nil
	h.terminal, h.stdin = false, ""
	r = h.run("operator", "snapshot", "restore", path)
	if r.code != 0 || strings.Contains(r.stderr, "[y/N]") || h.fake.restored == nil {
		t.Errorf("restore from a script: %+v", r)
	}
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	// The file names the CA relatively, next to itself.
	cfgDir := filepath.Join(h.dir, "xdg", "drover")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, _ := os.ReadFile(h.caFile)
	if err := os.WriteFile(filepath.Join(cfgDir, "cluster-ca.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteClientConfig(filepath.Join(cfgDir, "config.json"), ClientConfig{
		Address: h.srv.URL, Token: "file-token", CACert: "cluster-ca.pem",
	}); err != nil {
		t.Fatal(err)
	}
	delete(h.env, envAddress)
	delete(h.env, envCACert)

	lastAuth := func() string {
		reqs := h.fake.recordedRequests()
		return reqs[len(reqs)-1].header.Get("Authorization")
	}

	h.ok("model", "ls") // everything from the file
	if got := lastAuth(); got != "Bearer file-token" {
		t.Errorf("file: Authorization = %q", got)
	}
	h.env[envToken] = "env-token"
	h.ok("model", "ls")
	if got := lastAuth(); got != "Bearer env-token" {
		t.Errorf("env over file: Authorization = %q", got)
	}
	h.ok("model", "ls", "--token", "flag-token")
	if got := lastAuth(); got != "Bearer flag-token" {
		t.Errorf("flag over env: Authorization = %q", got)
	}

	// Address: env over file, flag over env.
	dead := deadAddress(t)
	if err := WriteClientConfig(filepath.Join(cfgDir, "config.json"), ClientConfig{Address: dead, CACert: h.caFile}); err != nil {
		t.Fatal(err)
	}
	h.env[envAddress] = h.srv.URL
	h.ok("model", "ls")
	h.env[envAddress] = dead
	if r := h.run("model", "ls"); r.code != exitError || !strings.Contains(r.stderr, "cannot reach a drover server at https://"+dead) {
		t.Errorf("env address not used: %+v", r)
	}
	h.ok("model", "ls", "--address", strings.TrimPrefix(h.srv.URL, "https://"))

	// DROVER_CONFIG wins over the XDG location; a missing file there is an error.
	h.env[envConfig] = filepath.Join(h.dir, "missing.json")
	r := h.run("model", "ls")
	if r.code != exitError || !strings.Contains(r.stderr, "missing.json") || !strings.Contains(r.stderr, "Hint: the file is named by "+envConfig) {
		t.Errorf("missing DROVER_CONFIG file: %+v", r)
	}
}

func TestConfigUnknownField(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	path := filepath.Join(h.dir, "drover.json")
	if err := os.WriteFile(path, []byte(`{"adress": "https://10.0.0.1:7400"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	h.env[envConfig] = path
	r := h.run("status")
	want := "Error: client config " + path + ": unknown field \"adress\" (known fields: address, token, ca_cert)\n"
	if r.code != exitError || r.stderr != want {
		t.Errorf("exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
	if n := len(h.fake.recordedRequests()); n != 0 {
		t.Errorf("%d requests sent with a broken config", n)
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	dead := deadAddress(t)
	r := h.run("status", "--address", dead)
	want := "Error: cannot reach a drover server at https://" + dead + ": dial tcp " + dead + ": connect: connection refused; " +
		"start one with `drover dev` or point --address/DROVER_ADDR at a server\n"
	if r.code != exitError || r.stderr != want {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", r.code, r.stderr, want)
	}
}

// Drover servers speak only HTTPS: an http:// address is refused with the
// address to use, before anything is sent.
func TestPlainHTTPAddress(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r := h.run("status", "--address", "http://127.0.0.1:7400")
	want := `Error: server address "http://127.0.0.1:7400": Drover servers speak only HTTPS: use https://127.0.0.1:7400` + "\n"
	if r.code != exitError || r.stderr != want {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", r.code, r.stderr, want)
	}
	if n := len(h.fake.recordedRequests()); n != 0 {
		t.Errorf("an http:// address sent %d requests", n)
	}
}

// A write cut off by a server crash after it was sent may have been
// committed: the CLI says so and how to find out. A read cut off the same
// way says nothing of the kind.
func TestWriteCutByCrash(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.fake.mu.Lock()
	h.fake.crashOn = "/drover.v1.ModelService/CreateModel"
	h.fake.mu.Unlock()
	r := h.run("model", "create", "resnet")
	if r.code != exitError ||
		!strings.Contains(r.stderr, "Error: the connection to the server broke after the request was sent, so the change may or may not have been applied: ") ||
		!strings.Contains(r.stderr, "Hint: "+outcomeUnknownHint) {
		t.Errorf("exit %d, stderr:\n%s", r.code, r.stderr)
	}

	h.fake.mu.Lock()
	h.fake.crashOn = "/drover.v1.ModelService/ListModels"
	h.fake.mu.Unlock()
	r = h.run("model", "ls")
	if r.code != exitError || strings.Contains(r.stderr, "may or may not") {
		t.Errorf("a cut read: exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func TestUnknownAuthority(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	delete(h.env, envCACert) // system roots do not know httptest's certificate
	r := h.run("status")
	if r.code != exitError || !strings.Contains(r.stderr, "Hint: the server's certificate is not signed by a CA this system trusts; pass --ca-cert or set DROVER_CACERT") {
		t.Errorf("%+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	tests := []struct {
		args       []string
		err, usage string
	}{
		{[]string{"model", "show"}, "missing NAME", "drover model show NAME [flags]"},
		{[]string{"model", "show", "a", "b"}, `unexpected argument "b"`, "drover model show NAME [flags]"},
		{[]string{"bogus"}, `unknown command "bogus" for "drover"`, "drover COMMAND"},
		{[]string{"model", "lss"}, `unknown command "lss" for "drover model"; did you mean "ls"?`, "drover model COMMAND"},
		{[]string{"model", "ls", "--bogus"}, "unknown flag: --bogus", "drover model ls [flags]"},
		{[]string{"-o", "yaml", "status"}, "-o yaml: want table or json", "drover status [flags]"},
		{[]string{"model", "ls", "--wait", "5s"}, "--wait needs --index", "drover model ls [flags]"},
		{[]string{"model", "card", "@3"}, `"@3": model name is empty`, "drover model card NAME[@REF] [flags]"},
		{[]string{"model", "alias", "set", "resnet", "prod"}, "missing VERSION", "drover model alias set NAME ALIAS VERSION"},
		{[]string{"model", "create", "m", "--tag", "team"}, "--tag team: want KEY=VALUE", "drover model create NAME [flags]"},
		{[]string{"model", "version", "create", "m", "--size", "1"}, "--digest is required", "drover model version create NAME"},
		{[]string{"model", "version", "create", "m", "--digest", "md5:abc", "--size", "1"}, "--digest md5:abc: want sha256:<64 hex digits>", ""},
		{[]string{"model", "version", "create", "m", "--digest", testDigest, "--size", "1k"}, "--size 1k: must be a whole number of bytes", ""},
		{[]string{"model", "version", "create", "m", "--digest", testDigest, "--size", "1", "--metric", "accuracy=high"},
			"--metric accuracy=high: value must be a number", ""},
		{[]string{"operator", "snapshot", "save"}, "missing FILE", "drover operator snapshot save FILE [flags]"},
		{[]string{"token", "create", "--ttl", "-1h"}, "--ttl -1h0m0s: must not be negative; 0 means the token never expires", "drover token create [flags]"},
		{[]string{"token", "create", "--ttl", "1d"}, `invalid argument "1d" for "--ttl" flag`, "drover token create [flags]"},
		{[]string{"token", "create", "--label", "gpu"}, "--label gpu: want KEY=VALUE", "drover token create [flags]"},
		{[]string{"token", "create", "--max-uses", "-1"}, `invalid argument "-1" for "--max-uses" flag`, "drover token create [flags]"},
		{[]string{"token", "revoke"}, "missing ID", "drover token revoke ID [flags]"},
		{[]string{"node", "ls", "--status", "busy"}, "--status busy: want ready, down, initializing or left", "drover node ls [flags]"},
		{[]string{"node", "ls", "--min-gpu-memory", "40XB"}, `--min-gpu-memory 40XB: unknown unit "XB"; want B, KB`, "drover node ls [flags]"},
		{[]string{"node", "ls", "--min-gpu-memory", "lots"}, "--min-gpu-memory lots: want a size such as 40GiB, 80G, 512MiB or a number of bytes", ""},
		{[]string{"node", "ls", "--label", "pool"}, "--label pool: want KEY=VALUE", "drover node ls [flags]"},
		{[]string{"node", "ls", "extra"}, `unexpected argument "extra"`, "drover node ls [flags]"},
		{[]string{"node", "show"}, "missing NODE", "drover node show NODE [flags]"},
		{[]string{"node", "drain"}, "missing NODE", "drover node drain NODE [flags]"},
		{[]string{"node", "undrain", "a", "b"}, `unexpected argument "b"`, "drover node undrain NODE [flags]"},
		{[]string{"node", "label"}, "missing NODE", "drover node label NODE [KEY=VALUE]... [--remove KEY]... [flags]"},
		{[]string{"node", "label", "gpu-01"}, "nothing to change: give KEY=VALUE arguments", "drover node label NODE"},
		{[]string{"node", "label", "gpu-01", "spare-"}, `"spare-": want KEY=VALUE to set a label; to remove one, use --remove spare`, ""},
		{[]string{"node", "label", "gpu-01", "a=1", "--remove", "a"}, `label "a" is both set and removed`, ""},
		{[]string{"node", "revoke"}, "missing NODE", "drover node revoke NODE [flags]"},
		{[]string{"node", "bogus"}, `unknown command "bogus" for "drover node"`, "drover node COMMAND"},
	}
	for _, tt := range tests {
		r := h.run(tt.args...)
		if r.code != exitUsage {
			t.Errorf("drover %s: exit %d, want %d", strings.Join(tt.args, " "), r.code, exitUsage)
		}
		lines := strings.SplitN(r.stderr, "\n", 3)
		if len(lines) < 3 || !strings.HasPrefix(lines[0], "Error: "+tt.err) || !strings.HasPrefix(lines[1], "Usage: "+tt.usage) {
			t.Errorf("drover %s: stderr\n%s\nwant Error: %s\nUsage: %s…", strings.Join(tt.args, " "), r.stderr, tt.err, tt.usage)
		}
	}
	if n := len(h.fake.recordedRequests()); n != 0 {
		t.Errorf("usage errors sent %d requests", n)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := Main(context.Background(), []string{"model", "version", "create", "--help"}, strings.NewReader(""), &stdout, &stderr)
	if code != 0 || stderr.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	wantContains(t, stdout.String(), "Register a new, immutable version", "Examples:", "--card-file PATH")

	stdout.Reset()
	if code := Main(context.Background(), []string{"model"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Errorf("bare group: exit %d", code)
	}
	wantContains(t, stdout.String(), "Available Commands:", "alias", "version")
}

// TestCommandTree checks every command teaches (Short, Long, Example) and
// validates its arguments itself, so wrong arguments are usage errors.
func TestCommandTree(t *testing.T) {
	t.Parallel()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Short == "" || c.Long == "" || c.Example == "" {
			t.Errorf("%q lacks Short, Long or Example", c.CommandPath())
		}
		if c.Args == nil || c.RunE == nil {
			t.Errorf("%q lacks Args or RunE", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCommand(&globals{}))
}

// deadAddress returns a loopback HOST:PORT where nothing listens.
func deadAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// The JSON of a response must be protojson, never encoding/json of the Go
// struct (which would leak internal fields and snake_case names).
func TestJSONIsProtoJSON(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var m map[string]any
	if err := json.Unmarshal([]byte(h.ok("operator", "raft", "list-peers", "-o", "json")), &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["index"]; !ok {
		t.Errorf("list-peers JSON = %v", m)
	}
	if _, ok := m["state"]; ok {
		t.Errorf("JSON has internal fields: %v", m)
	}
}

// `drover version` and `drover --version` say which build this is,
// without a server.
func TestVersion(t *testing.T) {
	t.Parallel()
	info := buildinfo.Read()
	want := "drover " + info.String() + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
		if code != exitOK || stdout.String() != want {
			t.Errorf("drover %s: exit %d, %q (stderr %q); want %q", strings.Join(args, " "), code, stdout.String(), stderr.String(), want)
		}
	}
	if !strings.Contains(want, info.GoVersion) || !strings.Contains(want, "commit ") {
		t.Errorf("version line %q lacks the commit or Go version", want)
	}

	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"version", "-o", "json"}, strings.NewReader(""), &stdout, &stderr); code != exitOK {
		t.Fatalf("version -o json: exit %d: %s", code, stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, stdout.String())
	}
	if got["version"] != info.Version || got["goVersion"] != info.GoVersion || got["commit"] != info.Commit {
		t.Errorf("version -o json = %v, want %+v", got, info)
	}
}

// Help never names a command that does not exist: every `drover …` in a
// Long text (between backticks) or an example line resolves to a command,
// with only arguments after it.
func TestHelpNamesOnlyCommandsThatExist(t *testing.T) {
	t.Parallel()
	root := newRootCommand(&globals{})
	backticked := regexp.MustCompile("`drover ([^`]*)`")
	exampleLine := regexp.MustCompile(`(?m)^\s*(?:[A-Z_]+=\$\()?drover ([^#\n|]*)`)
	check := func(c *cobra.Command, mention string) {
		cur := root
		for _, w := range strings.Fields(mention) {
			if strings.HasPrefix(w, "-") || !cur.HasSubCommands() {
				return
			}
			next := func() *cobra.Command {
				for _, sub := range cur.Commands() {
					if sub.Name() == w || slices.Contains(sub.Aliases, w) {
						return sub
					}
				}
				return nil
			}()
			if next == nil {
				if cur != root && cur.Runnable() && cur.Args != nil && cur.Args(cur, []string{w}) == nil {
					return // an argument of a group that runs
				}
				t.Errorf("%q mentions `drover %s`, but %q has no command %q", c.CommandPath(), mention, cur.CommandPath(), w)
				return
			}
			cur = next
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, m := range backticked.FindAllStringSubmatch(c.Long, -1) {
			check(c, m[1])
		}
		for _, m := range exampleLine.FindAllStringSubmatch(c.Example, -1) {
			check(c, m[1])
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	// A group's one-line summary lists only what it holds.
	acl, _, err := root.Find([]string{"acl"})
	if err != nil {
		t.Fatal(err)
	}
	for word, sub := range map[string]string{"token": "token", "polic": "policy"} {
		has := slices.ContainsFunc(acl.Commands(), func(c *cobra.Command) bool { return c.Name() == sub })
		if strings.Contains(acl.Short, word) && !has {
			t.Errorf("acl summary %q names %ss, but acl has no %q command", acl.Short, sub, sub)
		}
	}
}
