package reconcile

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/agent/fetch"
	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// memSource serves chunks from memory.
type memSource map[artifact.Digest][]byte

func (memSource) Name() string { return "mem" }

func (s memSource) Chunk(_ context.Context, d artifact.Digest, _ int64) (io.ReadCloser, error) {
	b, ok := s[d]
	if !ok {
		return nil, fmt.Errorf("no chunk %s", d)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// StoreVersions knows a version as local exactly while the store keeps
// it: current or previous, its directory on disk; a version the store
// moved past is not local, nor is one never pulled.
func TestStoreVersionsFollowsTheStore(t *testing.T) {
	root := t.TempDir()
	cache, err := fetch.OpenCache(filepath.Join(root, "cache"), 0)
	if err != nil {
		t.Fatal(err)
	}
	store, err := fetch.OpenStore(root, cache, fetch.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[artifact.KeyID]ed25519.PublicKey{key.ID(): key.Public()}
	src := memSource{}
	created := time.Now().Add(-time.Hour)
	pull := func(v uint64) {
		t.Helper()
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "model.onnx"), []byte(fmt.Sprintf("weights of version %d", v)), 0o600); err != nil {
			t.Fatal(err)
		}
		m, refs, err := artifact.BuildManifest(context.Background(), dir, artifact.BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range refs {
			b, err := artifact.ReadChunk(r, nil)
			if err != nil {
				t.Fatal(err)
			}
			src[r.Digest] = b
		}
		m.Model = "digits"
		m.CreateTime = timestamppb.New(created.Add(time.Duration(v) * time.Minute))
		b, err := artifact.MarshalManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := artifact.Sign(b, key)
		if err != nil {
			t.Fatal(err)
		}
		signed := &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}}
		_, err = store.Pull(context.Background(), fetch.PullRequest{
			Model: "digits", Version: v,
			Manifest: func(context.Context) (*droverv1.SignedManifest, error) { return signed, nil },
			Keys:     func(context.Context, bool) (map[artifact.KeyID]ed25519.PublicKey, error) { return keys, nil },
			Sources:  []fetch.Source{src},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	local := StoreVersions{Store: store}
	if _, ok := local.Local("digits", 1); ok {
		t.Fatal("version 1 local before any pull")
	}
	pull(1)
	pull(2)
	pull(3)
	for v, want := range map[uint64]bool{1: false, 2: true, 3: true, 4: false} {
		dir, ok := local.Local("digits", v)
		if ok != want {
			t.Errorf("version %d: local %v, want %v", v, ok, want)
		}
		if ok {
			b, err := os.ReadFile(filepath.Join(dir, "model.onnx"))
			if err != nil || string(b) != fmt.Sprintf("weights of version %d", v) {
				t.Errorf("version %d: %s holds %q, %v", v, dir, b, err)
			}
		}
	}
	if _, ok := local.Local("faces", 3); ok {
		t.Error("a model never pulled is local")
	}
	// A directory removed behind the store's back is not local.
	if err := os.RemoveAll(store.VersionDir("digits", 2)); err != nil {
		t.Fatal(err)
	}
	if _, ok := local.Local("digits", 2); ok {
		t.Error("version 2 local without its directory")
	}
}
