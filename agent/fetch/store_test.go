package fetch

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// signer signs manifests as a cluster does and hands out its key.
type signer struct {
	key  artifact.SigningKey
	keys map[artifact.KeyID]ed25519.PublicKey
}

func newSigner(t *testing.T) *signer {
	t.Helper()
	k, err := artifact.GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: k, keys: map[artifact.KeyID]ed25519.PublicKey{k.ID(): k.Public()}}
}

// sign encodes m with create time at and signs it.
func (s *signer) sign(t *testing.T, m *droverv1.Manifest, at time.Time) (*droverv1.SignedManifest, string) {
	t.Helper()
	m = proto.Clone(m).(*droverv1.Manifest)
	m.CreateTime = timestamppb.New(at)
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := artifact.Sign(b, s.key)
	if err != nil {
		t.Fatal(err)
	}
	return &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}}, artifact.Sum(b).String()
}

func (s *signer) keyFunc(calls *int) KeyFunc {
	return func(context.Context, bool) (map[artifact.KeyID]ed25519.PublicKey, error) {
		if calls != nil {
			*calls++
		}
		return s.keys, nil
	}
}

func request(model string, v uint64, signed *droverv1.SignedManifest, digest string, keys KeyFunc, src Source) PullRequest {
	return PullRequest{
		Model: model, Version: v, ArtifactDigest: digest,
		Manifest: func(context.Context) (*droverv1.SignedManifest, error) { return signed, nil },
		Keys:     keys,
		Sources:  []Source{src},
	}
}

func openStore(t *testing.T, root string) *Store {
	t.Helper()
	s, err := OpenStore(root, openCache(t, filepath.Join(root, "cache"), 0), StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A pulled version becomes current, the one before previous; a restarted
// store knows both and does not pull the current one again; a third
// version removes the first one's directory.
func TestStorePullCurrentAndPrevious(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	sg := newSigner(t)
	chunks := store{}
	files1, files2, files3 := sampleFiles(1), sampleFiles(2), sampleFiles(3)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m1, d1 := sg.sign(t, buildVersion(t, chunks, files1), t0)
	m2, d2 := sg.sign(t, buildVersion(t, chunks, files2), t0.Add(time.Hour))
	m3, d3 := sg.sign(t, buildVersion(t, chunks, files3), t0.Add(2*time.Hour))
	src := newSource("server-1", chunks)

	var phases []Phase
	req := request("llama", 1, m1, d1, sg.keyFunc(nil), src)
	req.Progress = func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}
	res, err := s.Pull(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	checkTree(t, s.VersionDir("llama", 1), files1)
	if res.Dir != s.VersionDir("llama", 1) || res.Installed.Digest != d1 || res.Stats.ChunksFetched == 0 {
		t.Errorf("result %+v, want version 1 in %s", res, s.VersionDir("llama", 1))
	}
	if want := []Phase{PhaseVerifying, PhaseFetching, PhaseAssembling, PhaseDone}; !equalPhases(phases, want) {
		t.Errorf("phases %v, want %v", phases, want)
	}
	if _, err := s.Pull(ctx, request("llama", 2, m2, d2, sg.keyFunc(nil), src)); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.Current("llama")
	prev, _ := s.Previous("llama")
	if cur.Version != 2 || prev.Version != 1 {
		t.Errorf("current %d, previous %d; want 2 and 1", cur.Version, prev.Version)
	}

	// A restart knows the versions: the current one is not pulled again.
	s = openStore(t, root)
	before := src.count()
	res, err = s.Pull(ctx, request("llama", 2, m2, d2, sg.keyFunc(nil), src))
	if err != nil || !res.AlreadyCurrent || src.count() != before {
		t.Errorf("pull of the current version after a restart: %+v, %v, %d chunk requests; want nothing done", res, err, src.count()-before)
	}
	if _, err := s.Pull(ctx, request("llama", 3, m3, d3, sg.keyFunc(nil), src)); err != nil {
		t.Fatal(err)
	}
	checkTree(t, s.VersionDir("llama", 3), files3)
	checkTree(t, s.VersionDir("llama", 2), files2)
	if _, err := os.Stat(s.VersionDir("llama", 1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("version 1, neither current nor previous, is still on disk: %v", err)
	}
	if tr := s.Trust("llama"); len(tr.Versions) != 3 || tr.Versions[0].Digest != d1 || !tr.Versions[2].CreateTime.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("trust record %+v, want versions 1-3 with their digests and create times", tr)
	}
}

func equalPhases(a, b []Phase) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Manifests that would roll the node back, or that no trusted key signed,
// are refused before a chunk is fetched, and the current version stays.
func TestStoreRefusesUntrustedManifests(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openStore(t, root)
	sg := newSigner(t)
	chunks := store{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	base1, base2 := buildVersion(t, chunks, sampleFiles(1)), buildVersion(t, chunks, sampleFiles(2))
	m1, d1 := sg.sign(t, base1, t0)
	m2, d2 := sg.sign(t, base2, t0.Add(time.Hour))
	src := newSource("server-1", chunks)
	for _, v := range []struct {
		n      uint64
		m      *droverv1.SignedManifest
		digest string
	}{{1, m1, d1}, {2, m2, d2}} {
		if _, err := s.Pull(ctx, request("llama", v.n, v.m, v.digest, sg.keyFunc(nil), src)); err != nil {
			t.Fatal(err)
		}
	}
	calls := src.count()

	other := newSigner(t)
	forged, forgedDigest := other.sign(t, base2, t0.Add(3*time.Hour))
	var keyCalls int
	// Another manifest for a trusted version, properly signed.
	conflict, conflictDigest := sg.sign(t, base1, t0.Add(5*time.Hour))
	// Version 1's manifest offered as version 3: older than version 2's.
	tooBig := &droverv1.SignedManifest{Manifest: make([]byte, DefaultMaxManifestBytes+1)}
	for _, tc := range []struct {
		name string
		req  PullRequest
		want error
	}{
		{"unknown key", request("llama", 3, forged, forgedDigest, sg.keyFunc(&keyCalls), src), artifact.ErrUnknownKey},
		{"other manifest for a trusted version", request("llama", 1, conflict, conflictDigest, sg.keyFunc(nil), src), ErrManifestConflict},
		{"replayed older manifest", request("llama", 3, m1, d1, sg.keyFunc(nil), src), ErrManifestReplay},
		{"digest the control plane did not record", request("llama", 3, m2, d1, sg.keyFunc(nil), src), ErrManifestMismatch},
		{"manifest over the limit", request("llama", 3, tooBig, "", sg.keyFunc(nil), src), ErrManifestTooLarge},
	} {
		_, err := s.Pull(ctx, tc.req)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if _, err := os.Stat(s.VersionDir("llama", 3)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: version 3's directory exists", tc.name)
		}
	}
	if keyCalls != 2 {
		t.Errorf("keys asked for %d times for a manifest by an unknown key, want 2 (once more, afresh)", keyCalls)
	}
	if src.count() != calls {
		t.Errorf("%d chunks fetched for refused manifests", src.count()-calls)
	}
	if cur, _ := s.Current("llama"); cur.Version != 2 || cur.Digest != d2 {
		t.Errorf("current %+v after refusals, want version 2", cur)
	}
	// The trust record survives a restart.
	s = openStore(t, root)
	if _, err := s.Pull(ctx, request("llama", 1, conflict, conflictDigest, sg.keyFunc(nil), src)); !errors.Is(err, ErrManifestConflict) {
		t.Errorf("after a restart, another manifest for version 1: %v, want ErrManifestConflict", err)
	}
}

// A full disk fails the pull with ErrNoSpace and leaves the current
// version as it was.
func TestStorePullDiskFull(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	sg := newSigner(t)
	chunks := store{}
	m1, d1 := sg.sign(t, buildVersion(t, chunks, sampleFiles(1)), time.Unix(1, 0))
	m2, d2 := sg.sign(t, buildVersion(t, chunks, sampleFiles(2)), time.Unix(2, 0))
	s := openStore(t, root)
	src := newSource("server-1", chunks)
	if _, err := s.Pull(ctx, request("llama", 1, m1, d1, sg.keyFunc(nil), src)); err != nil {
		t.Fatal(err)
	}
	full, err := OpenStore(root, s.cache, StoreOptions{
		FreeSpace: func(string) (uint64, uint64, error) { return 10, 1, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = full.Pull(ctx, request("llama", 2, m2, d2, sg.keyFunc(nil), src))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("pull onto a full disk: %v, want ErrNoSpace", err)
	}
	if cur, _ := full.Current("llama"); cur.Version != 1 {
		t.Errorf("current %+v after a failed pull, want version 1", cur)
	}
	checkTree(t, full.VersionDir("llama", 1), sampleFiles(1))
}

func TestTrustRecordCheck(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := TrustRecord{Model: "m"}
	r.add(TrustedManifest{Version: 2, Digest: "sha256:b", CreateTime: t0})
	r.add(TrustedManifest{Version: 5, Digest: "sha256:e", CreateTime: t0.Add(time.Hour)})
	for _, tc := range []struct {
		v       uint64
		digest  string
		created time.Time
		want    error
	}{
		{2, "sha256:b", t0, nil},
		{2, "sha256:x", t0, ErrManifestConflict},
		{3, "sha256:c", t0.Add(30 * time.Minute), nil},            // between 2 and 5
		{1, "sha256:a", t0.Add(-time.Hour), nil},                  // an older version, older
		{6, "sha256:f", t0.Add(2 * time.Hour), nil},               // a newer version, newer
		{6, "sha256:f", t0.Add(-time.Hour), ErrManifestReplay},    // an old manifest replayed as the next version
		{3, "sha256:c", t0.Add(2 * time.Hour), ErrManifestReplay}, // newer than version 5's
		{4, "sha256:d", time.Time{}, nil},                         // no create time: cannot be ordered
	} {
		if err := r.Check(tc.v, tc.digest, tc.created); !errors.Is(err, tc.want) {
			t.Errorf("Check(%d, %s, %s) = %v, want %v", tc.v, tc.digest, tc.created, err, tc.want)
		}
	}
}
