package cli

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// modelTree writes a small model: a 6 MiB weights file of random bytes
// (several chunks, some over 1 MiB), a config, and the same config again
// under another name, whose chunk is sent once.
func modelTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	weights := make([]byte, 6<<20)
	_, _ = rand.NewChaCha8([32]byte{3}).Read(weights)
	files := map[string][]byte{
		"weights.bin":          weights,
		"config.json":          []byte(`{"layers": 50}`),
		"sub/config-copy.json": []byte(`{"layers": 50}`),
		"sub/empty":            nil,
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return files
}

// readTree reads every regular file under dir by its slash path.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	got := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func artifactRequests(h *harness) []string {
	var paths []string
	for _, r := range h.fake.recordedRequests() {
		if strings.Contains(r.path, "ArtifactService") || strings.Contains(r.path, "AgentService") {
			paths = append(paths, r.path)
		}
	}
	return paths
}

func TestModelPushSendsOnlyMissingChunks(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "create", "resnet")
	src := filepath.Join(h.dir, "model")
	modelTree(t, src)

	// The cluster already holds the first chunk of the weights.
	m, refs, err := artifact.BuildManifest(context.Background(), src, artifact.BuildOptions{Model: "resnet"})
	if err != nil {
		t.Fatal(err)
	}
	var present artifact.ChunkRef
	for _, r := range refs {
		if strings.HasSuffix(r.File, "weights.bin") {
			present = r
			break
		}
	}
	data, err := artifact.ReadChunk(present, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.fake.art.mu.Lock()
	h.fake.art.chunks[present.Digest] = data
	h.fake.art.mu.Unlock()
	var want []artifact.Digest
	var wantBytes int64
	bigChunk := false
	for _, r := range refs {
		bigChunk = bigChunk || r.Size > uploadPiece
		if r.Digest != present.Digest {
			want = append(want, r.Digest)
			wantBytes += int64(r.Size)
		}
	}
	if !bigChunk {
		t.Fatal("the test tree has no chunk over 1 MiB, so it cannot show chunks are sent in pieces")
	}

	card := filepath.Join(h.dir, "CARD.md")
	if err := os.WriteFile(card, []byte("# ResNet\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(h.dir, "reference.csv")
	if err := os.WriteFile(ref, []byte("pixel,colour,out:class\n0.5,red,3\n0.7,blue,1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const datasetDigest = "sha256:5d41402abc4b2a76b9719d911017c592ae0d6b4a3f0e5c1d2e8f7a6b5c4d3e2f"
	out := h.ok("model", "push", src, "--model", "resnet", "--card", card, "--reference", ref,
		"--metric", "top1=0.812", "--tag", "team=cv", "--parent", "1",
		"--dataset", "s3://user@bucket/imagenet@"+datasetDigest, "--alias", "canary")

	a := h.fake.art
	a.mu.Lock()
	received, pieces, finish := slices.Clone(a.received), slices.Clone(a.pieces), a.finish
	a.mu.Unlock()
	slices.SortFunc(received, func(x, y artifact.Digest) int { return bytes.Compare(x[:], y[:]) })
	slices.SortFunc(want, func(x, y artifact.Digest) int { return bytes.Compare(x[:], y[:]) })
	if !slices.Equal(received, want) {
		t.Errorf("uploaded chunks %v, want exactly the %d missing ones %v", received, len(want), want)
	}
	var sum int64
	for _, p := range pieces {
		if p > uploadPiece || p == 0 {
			t.Errorf("piece of %d bytes, want 1 to %d", p, uploadPiece)
		}
		sum += int64(p)
	}
	if sum != wantBytes {
		t.Errorf("pieces add up to %d bytes, want the missing chunks' %d", sum, wantBytes)
	}

	if finish == nil {
		t.Fatal("no FinishPush")
	}
	wantLineage := &droverv1.Lineage{ParentVersion: 1, DatasetUri: "s3://user@bucket/imagenet", DatasetDigest: datasetDigest}
	if finish.GetModel() != "resnet" || finish.GetCard() != "# ResNet\n" || finish.GetMetrics()["top1"] != 0.812 ||
		finish.GetTags()["team"] != "cv" || finish.GetAlias() != "canary" ||
		!protoEqual(finish.GetLineage(), wantLineage) || len(finish.GetManifest().GetSignatures()) != 0 {
		t.Errorf("FinishPush = %v", finish)
	}
	if r := finish.GetReference(); r.GetRequests() != 2 || len(r.GetInputs()) != 2 || len(r.GetOutputs()) != 1 ||
		r.GetInputs()[1].GetKind() != droverv1.FeatureKind_FEATURE_KIND_NUMERIC || r.GetInputs()[0].GetKind() != droverv1.FeatureKind_FEATURE_KIND_CATEGORICAL {
		t.Errorf("FinishPush's reference profile = %v, want 2 rows of pixel (numeric), colour (categorical) and output class", r)
	}
	b, _ := artifact.MarshalManifest(m)
	if !bytes.Equal(finish.GetManifest().GetManifest(), b) {
		t.Error("FinishPush's manifest is not the tree's")
	}
	digest := artifact.Sum(b)
	wantContains(t, out,
		"Created resnet@1 ("+digest.String()+", index 2)",
		"Uploaded "+units.Bytes(uint64(wantBytes))+" of "+units.Bytes(m.GetTotalSize())+": the rest was already in the cluster",
		"Stored on s1, s2",
		"resnet@canary → 1")

	// Pushing again sends nothing: it is how an interrupted push resumes.
	js := h.ok("model", "push", src, "--model", "resnet", "-o", "json")
	var resp droverv1.FinishPushResponse
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil {
		t.Fatalf("push -o json is not FinishPushResponse: %v\n%s", err, js)
	}
	if resp.GetVersion().GetVersion() != 2 || resp.GetVersion().GetArtifact().GetDigest() != digest.String() {
		t.Errorf("push -o json = %v", &resp)
	}
	a.mu.Lock()
	again := len(a.received)
	a.mu.Unlock()
	if again != len(want) {
		t.Errorf("the second push uploaded %d chunks, want none", again-len(want))
	}
	wantContains(t, h.ok("model", "push", src, "--model", "resnet"), "Uploaded nothing: all "+units.Bytes(m.GetTotalSize())+" was already in the cluster")
}

func protoEqual(a, b *droverv1.Lineage) bool {
	return a.GetParentVersion() == b.GetParentVersion() && a.GetDatasetUri() == b.GetDatasetUri() &&
		a.GetDatasetDigest() == b.GetDatasetDigest()
}

func TestModelPushRefusesBeforeAnyRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t)

	linked := filepath.Join(h.dir, "linked")
	modelTree(t, linked)
	if err := os.Symlink("/etc/passwd", filepath.Join(linked, "sub", "passwd")); err != nil {
		t.Skipf("cannot make a symbolic link here: %v", err)
	}
	empty := filepath.Join(h.dir, "empty")
	if err := os.MkdirAll(filepath.Join(empty, "only-dirs"), 0o755); err != nil {
		t.Fatal(err)
	}
	ragged := filepath.Join(h.dir, "ragged.csv")
	if err := os.WriteFile(ragged, []byte("a,b\n1,2\n3\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"symlink", []string{linked}, exitError, []string{"sub/passwd", "symbolic link", "Hint: a version holds only regular files: copy the link's target"}},
		{"empty", []string{empty}, exitError, []string{"no files to publish", "Hint: point PATH at the model's file"}},
		{"absent", []string{filepath.Join(h.dir, "nowhere")}, exitError, []string{"no such file", "Hint: check PATH"}},
		{"no model", []string{empty, "--model", ""}, exitUsage, []string{"--model is required"}},
		{"bad metric", []string{empty, "--metric", "top1=high"}, exitUsage, []string{"--metric top1=high: value must be a number"}},
		{"bad parent", []string{empty, "--parent", "two"}, exitUsage, []string{"--parent two: want a version number"}},
		{"bad dataset digest", []string{empty, "--dataset", "s3://d@sha256:12"}, exitUsage, []string{"--dataset s3://d@sha256:12: digest: want 64 hex digits"}},
		{"ragged reference", []string{empty, "--reference", ragged}, exitError, []string{"--reference " + ragged, "line 3"}},
		{"two readers of stdin", []string{empty, "--reference", "-", "--card", "-"}, exitUsage, []string{"both read standard input"}},
	} {
		args := append([]string{"model", "push"}, tc.args...)
		if !slices.Contains(tc.args, "--model") {
			args = append(args, "--model", "resnet")
		}
		r := h.run(args...)
		if r.code != tc.code {
			t.Errorf("%s: exit %d, want %d", tc.name, r.code, tc.code)
		}
		wantContains(t, r.stderr, tc.want...)
	}
	if reqs := artifactRequests(h); len(reqs) != 0 {
		t.Errorf("refused pushes reached the server: %v", reqs)
	}
}

// pushed creates model resnet and pushes a tree to it as version 1.
func pushed(t *testing.T, h *harness) map[string][]byte {
	t.Helper()
	h.ok("model", "create", "resnet")
	src := filepath.Join(h.dir, "model")
	files := modelTree(t, src)
	h.ok("model", "push", src, "--model", "resnet", "--alias", "prod")
	return files
}

func TestModelPullAssemblesVerifiedTree(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	files := pushed(t, h)

	dst := filepath.Join(h.dir, "out")
	out := h.ok("model", "pull", "resnet@prod", dst)
	wantContains(t, out, "Pulled resnet@1 (sha256:", "into "+dst+": 4 files, 6.0 MiB")
	got := readTree(t, dst)
	if len(got) != len(files) {
		t.Errorf("pulled %d files, want %d", len(got), len(files))
	}
	for name, data := range files {
		if !bytes.Equal(got[name], data) {
			t.Errorf("%s: pulled %d bytes that differ from the %d pushed", name, len(got[name]), len(data))
		}
	}

	// The config's chunk occurs twice and is fetched once.
	_, refs, err := artifact.BuildManifest(context.Background(), filepath.Join(h.dir, "model"), artifact.BuildOptions{Model: "resnet"})
	if err != nil {
		t.Fatal(err)
	}
	h.fake.art.mu.Lock()
	calls := h.fake.art.getChunk
	h.fake.art.mu.Unlock()
	if calls != len(refs) {
		t.Errorf("pull made %d GetChunk calls, want one per distinct chunk, %d", calls, len(refs))
	}

	// A non-empty directory is replaced only with --force.
	marker := filepath.Join(dst, "local-notes.txt")
	if err := os.WriteFile(marker, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := len(h.fake.recordedRequests())
	r := h.run("model", "pull", "resnet", dst)
	if r.code != exitError {
		t.Errorf("pull into a non-empty directory: exit %d", r.code)
	}
	wantContains(t, r.stderr, "exists and is not empty", "Hint: pass --force")
	if n := len(h.fake.recordedRequests()); n != before {
		t.Errorf("the refused pull sent %d requests", n-before)
	}
	js := h.ok("model", "pull", "resnet@1", dst, "--force", "-o", "json")
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("--force kept the old contents: %v", err)
	}
	var resp droverv1.GetManifestResponse
	if err := protojson.Unmarshal([]byte(js), &resp); err != nil || resp.GetVersion().GetVersion() != 1 {
		t.Errorf("pull -o json is not GetManifestResponse: %v\n%s", err, js)
	}

	// -o is the output format, not the directory.
	r = h.run("model", "pull", "resnet", "-o", dst)
	if r.code != exitUsage {
		t.Errorf("pull -o DIR: exit %d, want %d", r.code, exitUsage)
	}
	wantContains(t, r.stderr, "give the directory as the second argument")
}

func TestModelPullRefusesUntrustedOrCorrupt(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	pushed(t, h)
	a := h.fake.art

	// The version is signed by a key the cluster no longer lists.
	other, err := artifact.SigningKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	trusted := a.keys
	a.keys = map[string][]byte{string(other.ID()): other.Public()}
	a.mu.Unlock()
	dst := filepath.Join(h.dir, "out")
	r := h.run("model", "pull", "resnet", dst)
	if r.code != exitError {
		t.Errorf("pull of an untrusted manifest: exit %d", r.code)
	}
	wantContains(t, r.stderr, "not signed by a trusted key", "nothing was written", "Hint: the key that signed it is not among")
	a.mu.Lock()
	fetched := a.getChunk
	a.mu.Unlock()
	if fetched != 0 {
		t.Errorf("%d chunks fetched before the manifest was verified", fetched)
	}
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("%s exists after a refused pull: %v", dst, err)
	}

	// A cluster that lists no keys at all.
	a.mu.Lock()
	a.keys = nil
	a.mu.Unlock()
	r = h.run("model", "pull", "resnet", dst)
	wantContains(t, r.stderr, "lists no manifest signing keys", "nothing was written", "Hint: the servers are older")
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("%s exists after a refused pull: %v", dst, err)
	}

	// A chunk whose bytes are wrong.
	a.mu.Lock()
	a.keys = trusted
	for d := range a.chunks {
		a.corrupt[d] = len(a.chunks[d]) > 1000
	}
	a.mu.Unlock()
	r = h.run("model", "pull", "resnet", dst)
	if r.code != exitError {
		t.Errorf("pull of a corrupt chunk: exit %d", r.code)
	}
	wantContains(t, r.stderr, "chunk does not match the manifest", "nothing was written", "Hint: the server sent bytes")
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("%s exists after a refused pull: %v", dst, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(h.dir, ".out*")); len(leftovers) != 0 {
		t.Errorf("temporary directories left behind: %v", leftovers)
	}
}

func TestArtifactProgressOnlyOnTerminal(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "create", "resnet")
	src := filepath.Join(h.dir, "model")
	modelTree(t, src)

	r := h.run("model", "push", src, "--model", "resnet")
	if r.code != 0 || r.stderr != "" {
		t.Errorf("push with stderr not a terminal: exit %d, stderr %q, want nothing", r.code, r.stderr)
	}
	r = h.run("model", "pull", "resnet", filepath.Join(h.dir, "a"))
	if r.code != 0 || r.stderr != "" {
		t.Errorf("pull with stderr not a terminal: exit %d, stderr %q, want nothing", r.code, r.stderr)
	}

	h.terminal = true
	h.fake.art.mu.Lock()
	h.fake.art.chunks = map[artifact.Digest][]byte{} // so that the push uploads
	h.fake.art.mu.Unlock()
	r = h.run("model", "push", src, "--model", "resnet")
	wantContains(t, r.stderr, "Reading "+src+"…", "\rUploading: ", "of 6.0 MiB (100%)")
	// The test's clock stands still, so after the first line only the
	// final one may be drawn: redraws are limited by time, not by pieces.
	if n := strings.Count(r.stderr, "\rUploading: "); n != 2 {
		t.Errorf("progress drawn %d times with the clock standing still, want 2: %q", n, r.stderr)
	}
	if !strings.HasSuffix(r.stderr, "\n") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("push progress is not one line ended once: %q", r.stderr)
	}
	r = h.run("model", "pull", "resnet", filepath.Join(h.dir, "b"))
	wantContains(t, r.stderr, "\rDownloading: 6.0 MiB of 6.0 MiB (100%)\n")
}

func TestTransferStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		n, total int64
		elapsed  time.Duration
		final    bool
		want     string
	}{
		{0, 0, 0, false, "0 B"},
		{5 << 20, 0, time.Minute, false, "5.0 MiB"},
		{1 << 20, 100 << 20, 500 * time.Millisecond, false, "1.0 MiB of 100.0 MiB (1%)"},
		{10 << 20, 100 << 20, 2 * time.Second, false, "10.0 MiB of 100.0 MiB (10%), 5.0 MiB/s, 18s left"},
		{100 << 20, 100 << 20, 4 * time.Second, true, "100.0 MiB of 100.0 MiB (100%), 25.0 MiB/s"},
	} {
		if got := transferStatus(tc.n, tc.total, tc.elapsed, tc.final); got != tc.want {
			t.Errorf("transferStatus(%d, %d, %s, %t) = %q, want %q", tc.n, tc.total, tc.elapsed, tc.final, got, tc.want)
		}
	}
}

func TestParseDataset(t *testing.T) {
	t.Parallel()
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct{ in, uri, digest string }{
		{"s3://data/imagenet", "s3://data/imagenet", ""},
		{"s3://data/imagenet@" + d, "s3://data/imagenet", d},
		{"ssh://git@host/repo@" + d, "ssh://git@host/repo", d},
		{"ssh://git@host/repo", "ssh://git@host/repo", ""},
	} {
		uri, digest, err := parseDataset(tc.in)
		if err != nil || uri != tc.uri || digest != tc.digest {
			t.Errorf("parseDataset(%q) = %q, %q, %v; want %q, %q", tc.in, uri, digest, err, tc.uri, tc.digest)
		}
	}
	for _, in := range []string{"@" + d, "s3://x@sha256:00"} {
		if _, _, err := parseDataset(in); err == nil {
			t.Errorf("parseDataset(%q) accepted", in)
		}
	}
}

func TestModelPushResumesAfterInterruption(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("model", "create", "resnet")
	src := filepath.Join(h.dir, "model")
	modelTree(t, src)
	_, refs, err := artifact.BuildManifest(context.Background(), src, artifact.BuildOptions{Model: "resnet"})
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) < 4 {
		t.Fatalf("the test tree has %d chunks; it needs a few to be cut off half way", len(refs))
	}

	a := h.fake.art
	a.mu.Lock()
	a.failAfter = 2
	a.mu.Unlock()
	r := h.run("model", "push", src, "--model", "resnet")
	if r.code != exitError {
		t.Fatalf("interrupted push: exit %d", r.code)
	}
	wantContains(t, r.stderr, "push to resnet stopped after", "server shutting down",
		"Hint: run the same command again: the push resumes")
	a.mu.Lock()
	first := len(a.received)
	finished := a.finish != nil
	a.failAfter = 0
	a.mu.Unlock()
	if finished {
		t.Error("FinishPush was called although the upload failed")
	}
	if first != 2 {
		t.Fatalf("the interrupted push stored %d chunks, want the 2 the fake takes", first)
	}

	h.ok("model", "push", src, "--model", "resnet")
	a.mu.Lock()
	received := slices.Clone(a.received)
	a.mu.Unlock()
	if len(received) != len(refs) {
		t.Errorf("the two pushes uploaded %d chunks in all, want each of the %d once", len(received), len(refs))
	}
	seen := map[artifact.Digest]bool{}
	for _, d := range received {
		if seen[d] {
			t.Errorf("chunk %s uploaded twice", d)
		}
		seen[d] = true
	}
}

func TestModelPullRefusesAnotherModelsManifest(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	pushed(t, h)

	// A manifest the cluster key really signed, but for another model,
	// passed off as resnet@1 with a digest to match.
	m, _, err := artifact.BuildManifest(context.Background(), filepath.Join(h.dir, "model"), artifact.BuildOptions{Model: "bert"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := artifact.Sign(b, h.fake.art.key)
	if err != nil {
		t.Fatal(err)
	}
	h.fake.mu.Lock()
	v := h.fake.versions["resnet"][0]
	v.Artifact.Digest = artifact.Sum(b).String()
	v.Artifact.Signed = &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}}
	h.fake.mu.Unlock()

	dst := filepath.Join(h.dir, "out")
	r := h.run("model", "pull", "resnet", dst)
	if r.code != exitError {
		t.Errorf("pull of another model's manifest: exit %d", r.code)
	}
	wantContains(t, r.stderr, "signed for model bert, not resnet; nothing was written")
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("%s exists after a refused pull: %v", dst, err)
	}
}

func TestModelPullRefusesManifestOfAnotherVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	pushed(t, h)
	h.fake.mu.Lock()
	h.fake.versions["resnet"][0].Artifact.Digest = testDigest
	h.fake.mu.Unlock()

	dst := filepath.Join(h.dir, "out")
	r := h.run("model", "pull", "resnet@1", dst)
	if r.code != exitError {
		t.Errorf("pull of a manifest that is not the version's: exit %d", r.code)
	}
	wantContains(t, r.stderr, "but the version's artifact is "+testDigest+"; nothing was written")
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("%s exists after a refused pull: %v", dst, err)
	}
}

func TestPlanFetchesKeepsRepeatsWithinBudget(t *testing.T) {
	t.Parallel()
	a, b, c := artifact.Digest{1}, artifact.Digest{2}, artifact.Digest{3}
	order := []artifact.Digest{a, b, a, c, b, a}
	sizes := []int64{10, 20, 10, 5, 20, 10}
	type step = fetchStep
	for _, tc := range []struct {
		budget int64
		want   []step
	}{
		// Room for both repeated chunks: each is fetched once.
		{30, []step{{true, true}, {true, true}, {false, true}, {true, false}, {false, false}, {false, false}}},
		// Room for a alone: b is fetched each time it occurs.
		{15, []step{{true, true}, {true, false}, {false, true}, {true, false}, {true, false}, {false, false}}},
		// No room: everything is fetched where it occurs.
		{0, []step{{true, false}, {true, false}, {true, false}, {true, false}, {true, false}, {true, false}}},
	} {
		if got := planFetches(order, sizes, tc.budget); !slices.Equal(got, tc.want) {
			t.Errorf("budget %d: plan %v, want %v", tc.budget, got, tc.want)
		}
	}
}

// --reference takes Parquet as well as CSV, from a file or standard input,
// and the same data gives the same profile in both.
func TestReadReferenceParquet(t *testing.T) {
	type row struct {
		Pixel  float64 `parquet:"pixel"`
		Colour string  `parquet:"colour"`
		Class  int32   `parquet:"out:class"`
	}
	var buf bytes.Buffer
	if err := parquet.Write(&buf, []row{{0.5, "red", 3}, {0.7, "blue", 1}}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pq := filepath.Join(dir, "reference.parquet")
	csv := filepath.Join(dir, "reference.csv")
	if err := os.WriteFile(pq, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(csv, []byte("pixel,colour,out:class\n0.5,red,3\n0.7,blue,1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := readReference(csv, nil)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := readReference(pq, nil)
	if err != nil {
		t.Fatal(err)
	}
	fromStdin, err := readReference("-", bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(fromFile, want) || !proto.Equal(fromStdin, want) {
		t.Fatalf("Parquet profiles\n%v\n%v\ndiffer from the CSV one\n%v", fromFile, fromStdin, want)
	}
	// A Parquet file cut short is refused with the flag and file named.
	if err := os.WriteFile(pq, buf.Bytes()[:buf.Len()-8], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readReference(pq, nil); err == nil || !strings.Contains(err.Error(), "--reference "+pq+": reference: not a readable Parquet file") {
		t.Fatalf("truncated Parquet: err = %v", err)
	}
}
