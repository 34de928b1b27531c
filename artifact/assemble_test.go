package artifact

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// chunkStore serves chunks from memory, as a cache or a peer would, and
// counts what it opens and closes.
type chunkStore struct {
	chunks         map[Digest][]byte
	opened, closed int
}

func (s *chunkStore) open(d Digest) (io.ReadCloser, error) {
	b, ok := s.chunks[d]
	if !ok {
		return nil, fmt.Errorf("chunk %s: %w", d, fs.ErrNotExist)
	}
	s.opened++
	return &closeCounter{Reader: bytes.NewReader(b), closed: &s.closed}, nil
}

type closeCounter struct {
	io.Reader
	closed *int
}

func (c *closeCounter) Close() error { *c.closed++; return nil }

// publish builds, signs and verifies a tree as the CLI and an agent
// would, and returns the verified manifest and a store with its chunks.
func publish(t *testing.T, root string) (*droverv1.Manifest, *chunkStore) {
	t.Helper()
	m, refs, err := BuildManifest(context.Background(), root, BuildOptions{Chunker: testParams})
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t, "publishr")
	sig, err := Sign(b, key)
	if err != nil {
		t.Fatal(err)
	}
	verified, _, err := Verify(&droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}},
		map[KeyID]ed25519.PublicKey{key.ID(): key.Public()}, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	store := &chunkStore{chunks: map[Digest][]byte{}}
	for _, r := range refs {
		data, err := ReadChunk(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		store.chunks[r.Digest] = data
	}
	return verified, store
}

// readTree returns path → mode and content of every file under root.
func readTree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = fmt.Sprintf("%#o %s", info.Mode().Perm(), b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// entries lists a directory, to catch temporary directories left behind.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func sourceTree(t *testing.T) string {
	t.Helper()
	weights := string(streamBytes("weights", 20_000))
	return writeTree(t, map[string]string{
		"config.json":           `{"layers": 2}`,
		"weights/layer0.bin":    weights,
		"weights/layer0.copy":   weights,
		"weights/deep/layer1":   string(streamBytes("l1", 7000)),
		"bin/serve*":            "#!/bin/sh\nexec model-server\n",
		"empty":                 "",
		"tokenizer/vocab.txt":   "a\nb\n",
		"tokenizer/merges.txt*": "x",
	})
}

func TestAssembleRoundTrip(t *testing.T) {
	src := sourceTree(t)
	m, store := publish(t, src)
	parent := t.TempDir()
	dst := filepath.Join(parent, "v1")
	if err := Assemble(context.Background(), m, dst, store.open); err != nil {
		t.Fatal(err)
	}
	got, want := readTree(t, dst), readTree(t, src)
	if len(got) != len(want) {
		t.Fatalf("assembled %d files, want %d", len(got), len(want))
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: mode and content differ", p)
		}
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("destination mode %v, %v", fi.Mode(), err)
	}
	if names := entries(t, parent); !slices.Equal(names, []string{"v1"}) {
		t.Errorf("beside the destination: %v", names)
	}
	if store.opened != store.closed {
		t.Errorf("opened %d chunks, closed %d", store.opened, store.closed)
	}
}

func TestAssembleReplacesExistingOnlyOnSuccess(t *testing.T) {
	src := sourceTree(t)
	m, store := publish(t, src)
	parent := t.TempDir()
	dst := filepath.Join(parent, "current")
	must(t, os.MkdirAll(filepath.Join(dst, "old"), 0o755))
	must(t, os.WriteFile(filepath.Join(dst, "old", "model.bin"), []byte("previous"), 0o644))
	before := readTree(t, dst)

	failing := func(d Digest) (io.ReadCloser, error) { return nil, errors.New("peer went away") }
	if err := Assemble(context.Background(), m, dst, failing); err == nil {
		t.Fatal("Assemble succeeded without chunks")
	}
	if after := readTree(t, dst); !equalTrees(after, before) {
		t.Fatal("a failed assembly touched the existing destination")
	}
	if names := entries(t, parent); !slices.Equal(names, []string{"current"}) {
		t.Fatalf("beside the destination: %v", names)
	}

	if err := Assemble(context.Background(), m, dst, store.open); err != nil {
		t.Fatal(err)
	}
	if got := readTree(t, dst); !equalTrees(got, readTree(t, src)) {
		t.Fatal("the destination does not hold exactly the new version")
	}
	if names := entries(t, parent); !slices.Equal(names, []string{"current"}) {
		t.Fatalf("beside the destination: %v", names)
	}
}

func equalTrees(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// Systems without an atomic exchange of two names replace in two renames;
// the result must be the same.
func TestReplaceByRenames(t *testing.T) {
	parent := t.TempDir()
	dst, tmp := filepath.Join(parent, "v"), filepath.Join(parent, ".v.tmp-1")
	must(t, os.MkdirAll(dst, 0o755))
	must(t, os.WriteFile(filepath.Join(dst, "old"), nil, 0o644))
	must(t, os.MkdirAll(tmp, 0o755))
	must(t, os.WriteFile(filepath.Join(tmp, "new"), nil, 0o644))
	if err := replaceByRenames(tmp, dst, parent); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, dst); !slices.Equal(names, []string{"new"}) {
		t.Errorf("destination holds %v", names)
	}
	if names := entries(t, parent); !slices.Equal(names, []string{"v"}) {
		t.Errorf("beside the destination: %v", names)
	}
}

// Whatever goes wrong part way, nothing appears at the destination and no
// temporary directory is left.
func TestAssembleFailureLeavesNothing(t *testing.T) {
	src := sourceTree(t)
	m, store := publish(t, src)
	nChunks := 0
	for _, f := range m.GetFiles() {
		nChunks += len(f.GetChunks())
	}
	mid := nChunks / 2
	for _, tt := range []struct {
		name    string
		open    func(ctx context.CancelFunc) OpenChunkFunc
		wantErr error
		wantMsg string
	}{
		{"open fails mid-way", func(context.CancelFunc) OpenChunkFunc {
			n := 0
			return func(d Digest) (io.ReadCloser, error) {
				if n++; n == mid {
					return nil, errors.New("peer went away")
				}
				return store.open(d)
			}
		}, nil, "peer went away"},
		{"read fails mid-chunk", func(context.CancelFunc) OpenChunkFunc {
			n := 0
			return func(d Digest) (io.ReadCloser, error) {
				if n++; n == mid {
					return io.NopCloser(io.MultiReader(bytes.NewReader(store.chunks[d][:10]), errReader{})), nil
				}
				return store.open(d)
			}
		}, nil, "connection reset"},
		{"corrupt chunk", func(context.CancelFunc) OpenChunkFunc {
			return func(d Digest) (io.ReadCloser, error) {
				b := slices.Clone(store.chunks[d])
				b[len(b)/2] ^= 0x80
				return io.NopCloser(bytes.NewReader(b)), nil
			}
		}, ErrChunkCorrupt, "the bytes have digest"},
		{"short chunk", func(context.CancelFunc) OpenChunkFunc {
			return func(d Digest) (io.ReadCloser, error) {
				b := store.chunks[d]
				return io.NopCloser(bytes.NewReader(b[:len(b)-1])), nil
			}
		}, ErrChunkCorrupt, "want"},
		{"long chunk", func(context.CancelFunc) OpenChunkFunc {
			return func(d Digest) (io.ReadCloser, error) {
				return io.NopCloser(bytes.NewReader(append(slices.Clone(store.chunks[d]), 0))), nil
			}
		}, ErrChunkCorrupt, "more than"},
		{"cancelled mid-way", func(cancel context.CancelFunc) OpenChunkFunc {
			n := 0
			return func(d Digest) (io.ReadCloser, error) {
				if n++; n == mid {
					cancel()
				}
				return store.open(d)
			}
		}, context.Canceled, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "v2")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err := Assemble(ctx, m, dst, tt.open(cancel))
			if err == nil {
				t.Fatal("Assemble succeeded")
			}
			t.Log(err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if names := entries(t, parent); len(names) != 0 {
				t.Errorf("left behind: %v", names)
			}
		})
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestAssembleRefusesInvalidManifest(t *testing.T) {
	for _, edit := range []func(m *droverv1.Manifest){
		func(m *droverv1.Manifest) { m.Files[0].Path = "../outside" },
		func(m *droverv1.Manifest) { m.Files[0].Path = "/etc/x" },
		func(m *droverv1.Manifest) { m.Files[1].Path = "config.json/x"; m.Files[2].Path = "z" },
	} {
		m := validManifest()
		edit(m)
		parent := t.TempDir()
		opened := false
		open := func(Digest) (io.ReadCloser, error) { opened = true; return nil, errors.New("unreachable") }
		err := Assemble(context.Background(), m, filepath.Join(parent, "v"), open)
		if !errors.Is(err, ErrInvalidManifest) {
			t.Errorf("error %v, want ErrInvalidManifest", err)
		}
		if opened {
			t.Error("a chunk was fetched for an invalid manifest")
		}
		if names := entries(t, parent); len(names) != 0 {
			t.Errorf("left behind: %v", names)
		}
	}
}

func TestAssembleRefusesFileAtDestination(t *testing.T) {
	m, store := publish(t, sourceTree(t))
	dst := filepath.Join(t.TempDir(), "v")
	must(t, os.WriteFile(dst, []byte("keep"), 0o644))
	if err := Assemble(context.Background(), m, dst, store.open); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("error %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep" {
		t.Fatal("the file at the destination changed")
	}
}

// checkedFile is a chunk in a file that its opener vouches for.
type checkedFile struct{ *os.File }

func (c checkedFile) CheckedFile() *os.File { return c.File }

// Chunks opened as CheckedChunk are copied from their files into the
// tree, and one whose length is wrong is still refused.
func TestAssembleCopiesCheckedChunks(t *testing.T) {
	src := sourceTree(t)
	m, store := publish(t, src)
	dir := t.TempDir()
	for d, b := range store.chunks {
		if err := os.WriteFile(filepath.Join(dir, d.String()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	open := func(d Digest) (io.ReadCloser, error) {
		f, err := os.Open(filepath.Join(dir, d.String()))
		if err != nil {
			return nil, err
		}
		return checkedFile{f}, nil
	}
	dst := filepath.Join(t.TempDir(), "v1")
	if err := Assemble(context.Background(), m, dst, open); err != nil {
		t.Fatal(err)
	}
	got, want := readTree(t, dst), readTree(t, src)
	if len(got) != len(want) {
		t.Fatalf("assembled %d files, want %d", len(got), len(want))
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: mode and content differ", p)
		}
	}

	// Cut one chunk short: its length gives it away.
	for d, b := range store.chunks {
		if len(b) > 1 {
			if err := os.WriteFile(filepath.Join(dir, d.String()), b[:len(b)-1], 0o600); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	err := Assemble(context.Background(), m, filepath.Join(t.TempDir(), "v2"), open)
	if !errors.Is(err, ErrChunkCorrupt) {
		t.Fatalf("assemble with a short checked chunk: %v, want ErrChunkCorrupt", err)
	}
}
