package artifact

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeTree creates files (path → content) under a new directory; a path
// ending in "*" is made executable.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, "*") {
			p, mode = strings.TrimSuffix(p, "*"), 0o755
		}
		full := filepath.Join(root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(full, mode); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestBuildManifest(t *testing.T) {
	big := string(streamBytes("big", 10_000))
	root := writeTree(t, map[string]string{
		"config.json":      `{"layers": 2}`,
		"a-b":              "sorts before a/ by bytes",
		"a/x.bin":          big,
		"a/copy.bin":       big, // the same chunks again
		"bin/serve*":       "#!/bin/sh\n",
		"empty":            "",
		"unicode/naïve.md": "ok",
	})
	if err := os.MkdirAll(filepath.Join(root, "empty-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	created := time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC)
	m, refs, err := BuildManifest(context.Background(), root, BuildOptions{
		Chunker: testParams, Model: "tiny", VersionLabel: "v1", CreateTime: created,
	})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range m.GetFiles() {
		paths = append(paths, f.GetPath())
	}
	want := []string{"a-b", "a/copy.bin", "a/x.bin", "bin/serve", "config.json", "empty", "unicode/naïve.md"}
	if !slices.Equal(paths, want) {
		t.Fatalf("paths %q, want %q", paths, want)
	}
	if m.GetFiles()[3].GetMode() != ModeExecutable || m.GetFiles()[4].GetMode() != ModeRegular {
		t.Errorf("modes %#o %#o", m.GetFiles()[3].GetMode(), m.GetFiles()[4].GetMode())
	}
	if m.GetModel() != "tiny" || m.GetVersionLabel() != "v1" || !m.GetCreateTime().AsTime().Equal(created) {
		t.Errorf("metadata %v %v %v", m.GetModel(), m.GetVersionLabel(), m.GetCreateTime())
	}
	if err := ValidateManifest(m, DefaultLimits()); err != nil {
		t.Fatal(err)
	}

	// One ref per distinct chunk, and each reads back as its digest.
	distinct := map[Digest]bool{}
	for _, f := range m.GetFiles() {
		for _, c := range f.GetChunks() {
			distinct[digestOf(c)] = true
		}
	}
	if len(refs) != len(distinct) {
		t.Fatalf("%d refs for %d distinct chunks", len(refs), len(distinct))
	}
	var buf []byte
	for _, r := range refs {
		b, err := ReadChunk(r, buf)
		if err != nil {
			t.Fatal(err)
		}
		if Sum(b) != r.Digest || len(b) != r.Size {
			t.Fatalf("ref %+v reads back wrong", r)
		}
		buf = b
	}

	// Without a creation time the manifest depends on the bytes alone.
	b1 := buildBytes(t, root)
	if err := os.Chtimes(filepath.Join(root, "config.json"), created, created); err != nil {
		t.Fatal(err)
	}
	if b2 := buildBytes(t, root); string(b1) != string(b2) {
		t.Error("the same tree made two manifests")
	}
}

func buildBytes(t *testing.T, root string) []byte {
	t.Helper()
	m, _, err := BuildManifest(context.Background(), root, BuildOptions{Chunker: testParams})
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildManifestSingleFile(t *testing.T) {
	root := writeTree(t, map[string]string{"model.onnx": "weights"})
	m, refs, err := BuildManifest(context.Background(), filepath.Join(root, "model.onnx"), BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.GetFiles()) != 1 || m.GetFiles()[0].GetPath() != "model.onnx" || m.GetTotalSize() != 7 {
		t.Fatalf("manifest %v", m)
	}
	if c := m.GetChunker(); c.GetAvgSize() != DefaultAverageChunkSize || c.GetAlgorithm() != ChunkerAlgorithm {
		t.Errorf("chunker %v, want the default", c)
	}
	if b, err := ReadChunk(refs[0], nil); err != nil || string(b) != "weights" {
		t.Fatalf("chunk %q, %v", b, err)
	}
}

func TestBuildManifestRefusals(t *testing.T) {
	for _, tt := range []struct {
		name    string
		setup   func(t *testing.T, root string)
		opts    BuildOptions
		wantErr error
		wantMsg string
	}{
		{"symlink to a file", func(t *testing.T, root string) {
			must(t, os.Symlink("/etc/passwd", filepath.Join(root, "w", "passwd")))
		}, BuildOptions{}, ErrSymlink, filepath.Join("w", "passwd")},
		{"symlink to a directory", func(t *testing.T, root string) {
			must(t, os.Symlink("..", filepath.Join(root, "w", "up")))
		}, BuildOptions{}, ErrSymlink, filepath.Join("w", "up")},
		{"named pipe", func(t *testing.T, root string) {
			makeFIFO(t, filepath.Join(root, "w", "fifo"))
		}, BuildOptions{}, ErrSpecialFile, "named pipe"},
		{"socket", func(t *testing.T, root string) {
			makeSocket(t, filepath.Join(root, "w", "sock"))
		}, BuildOptions{}, ErrSpecialFile, "socket"},
		{"name not UTF-8", func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "w", "caf\xe9"), nil, 0o644))
		}, BuildOptions{}, ErrBadPath, "UTF-8"},
		{"directory name not UTF-8", func(t *testing.T, root string) {
			must(t, os.MkdirAll(filepath.Join(root, "\xff", "x"), 0o755))
			must(t, os.WriteFile(filepath.Join(root, "\xff", "x", "f"), nil, 0o644))
		}, BuildOptions{}, ErrBadPath, "UTF-8"},
		{"control character", func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "w", "a\tb"), nil, 0o644))
		}, BuildOptions{}, ErrBadPath, "U+0009"},
		{"backslash", func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "w", `a\b`), nil, 0o644))
		}, BuildOptions{}, ErrBadPath, "backslash"},
		{"too many bytes", nil, BuildOptions{Limits: Limits{MaxTotalSize: 10}}, ErrTooLarge, "over the limit of 10"},
		{"too many files", nil, BuildOptions{Limits: Limits{MaxFiles: 1}}, ErrTooLarge, "2 files"},
		{"too many chunks", nil, BuildOptions{Chunker: testParams, Limits: Limits{MaxChunks: 1}}, ErrTooLarge, "chunks"},
		{"bad chunker", nil, BuildOptions{Chunker: ChunkerParams{Min: 1, Avg: 3, Max: 5}}, nil, "power of two"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			root := writeTree(t, map[string]string{"w/ok.bin": string(streamBytes("ok", 3000)), "z": "z"})
			if tt.setup != nil {
				tt.setup(t, root)
			}
			_, _, err := BuildManifest(context.Background(), root, tt.opts)
			if err == nil {
				t.Fatal("BuildManifest succeeded")
			}
			t.Log(err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
		})
	}
}

func TestBuildManifestEmptyTree(t *testing.T) {
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "only", "dirs"), 0o755))
	if _, _, err := BuildManifest(context.Background(), root, BuildOptions{}); !errors.Is(err, ErrEmptyTree) {
		t.Fatalf("error %v, want ErrEmptyTree", err)
	}
	if _, _, err := BuildManifest(context.Background(), filepath.Join(root, "missing"), BuildOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing root: %v", err)
	}
}

func TestBuildManifestRootMayBeALink(t *testing.T) {
	root := writeTree(t, map[string]string{"f": "x"})
	link := filepath.Join(t.TempDir(), "current")
	must(t, os.Symlink(root, link))
	if _, _, err := BuildManifest(context.Background(), link, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBuildManifestCancelled(t *testing.T) {
	root := writeTree(t, map[string]string{"f": "x"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := BuildManifest(ctx, root, BuildOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

// An uploader reads chunks again after the manifest is built; if the file
// changed meanwhile, the chunk must not go up under the old digest.
func TestReadChunkNoticesAChangedFile(t *testing.T) {
	root := writeTree(t, map[string]string{"f": string(streamBytes("f", 5000))})
	_, refs, err := BuildManifest(context.Background(), root, BuildOptions{Chunker: testParams})
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(root, "f"), streamBytes("g", 5000), 0o644))
	if _, err := ReadChunk(refs[0], nil); !errors.Is(err, ErrFileChanged) {
		t.Fatalf("changed file: %v, want ErrFileChanged", err)
	}
	must(t, os.Truncate(filepath.Join(root, "f"), 10))
	if _, err := ReadChunk(refs[len(refs)-1], nil); !errors.Is(err, ErrFileChanged) {
		t.Fatalf("truncated file: %v, want ErrFileChanged", err)
	}
}

// A file that grows while it is chunked must not make a manifest that
// matches neither the old nor the new content.
func TestBuildManifestNoticesAGrowingFile(t *testing.T) {
	root := writeTree(t, map[string]string{"f": string(streamBytes("f", 5000))})
	tr, err := listTree(root)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	f, err := os.OpenFile(filepath.Join(root, "f"), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	_, err = f.Write([]byte("more"))
	must(t, err)
	must(t, f.Close())
	c, err := NewChunker(nil, testParams)
	must(t, err)
	_, err = tr.chunkFile(context.Background(), tr.files[0], c, func(ChunkRef) {})
	if !errors.Is(err, ErrFileChanged) {
		t.Fatalf("error %v, want ErrFileChanged", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
