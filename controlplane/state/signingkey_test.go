package state_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/controlplane/state"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// publicKey returns an Ed25519 public key that is the same in every run.
func publicKey(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)).Public().(ed25519.PublicKey)
}

func (f *fixture) signingKey(name string, pub ed25519.PublicKey) *droverv1.SigningKey {
	f.t.Helper()
	k, err := f.s.RegisterSigningKey(f.next(), rootMeta(), &droverv1.SigningKey{Name: name, PublicKey: pub})
	if err != nil {
		f.t.Fatalf("RegisterSigningKey(%s): %v", name, err)
	}
	return k
}

func TestRegisterSigningKey(t *testing.T) {
	f := aclFixture(t)
	pub := publicKey(1)
	k := f.signingKey("ci", pub)
	id := string(artifact.KeyIDOf(pub))
	if k.GetKeyId() != id || !bytes.Equal(k.GetPublicKey(), pub) || k.GetCreatedBy() != rootAccessor ||
		k.GetCreatedByName() != state.BootstrapTokenName || k.GetCreateIndex() != f.idx || k.GetCreateTime() == nil || k.GetRevokeIndex() != 0 {
		t.Errorf("stored key %v", k)
	}
	ev := lastAudit(t, f.s)
	if ev.GetAction() != state.ActionKeyRegister || ev.GetTarget() != "key/"+id || ev.GetResult() != state.ResultOK || ev.GetDetails()["name"] != "ci" {
		t.Errorf("audit event %v", ev)
	}
	got, err := f.s.SigningKey("ci")
	if err != nil || !proto.Equal(got, k) {
		t.Errorf("SigningKey(name) = %v, %v", got, err)
	}
	if got, err := f.s.SigningKey(id); err != nil || !proto.Equal(got, k) {
		t.Errorf("SigningKey(id) = %v, %v", got, err)
	}
	trusted, revoked := f.s.TrustedSigningKeys()
	if len(trusted) != 1 || !bytes.Equal(trusted[artifact.KeyID(id)], pub) || len(revoked) != 0 {
		t.Errorf("TrustedSigningKeys() = %v, %v", trusted, revoked)
	}

	for _, tc := range []struct {
		name    string
		key     *droverv1.SigningKey
		wantErr error
		mention string
	}{
		{"name taken", &droverv1.SigningKey{Name: "ci", PublicKey: publicKey(2)}, state.ErrAlreadyExists, "drover key revoke " + id},
		{"same public key", &droverv1.SigningKey{Name: "other", PublicKey: pub}, state.ErrAlreadyExists, `already registered as "ci"`},
		{"short public key", &droverv1.SigningKey{Name: "short", PublicKey: pub[:31]}, state.ErrInvalid, "31 bytes"},
		{"bad name", &droverv1.SigningKey{Name: "CI Key", PublicKey: publicKey(3)}, state.ErrInvalid, "signing key name"},
		{"wrong key id", &droverv1.SigningKey{Name: "liar", KeyId: id, PublicKey: publicKey(3)}, state.ErrInvalid, "not " + id},
		{"nothing", nil, state.ErrInvalid, "public key"},
	} {
		before := f.s.SigningKeys()
		_, err := f.s.RegisterSigningKey(f.next(), rootMeta(), tc.key)
		if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: %v, want %v mentioning %q", tc.name, err, tc.wantErr, tc.mention)
			continue
		}
		if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionKeyRegister || ev.GetResult() != err.Error() {
			t.Errorf("%s: audit event %v", tc.name, ev)
		}
		if after := f.s.SigningKeys(); len(after) != len(before) {
			t.Errorf("%s: %d keys after a refusal, %d before", tc.name, len(after), len(before))
		}
	}
}

func TestRevokeSigningKey(t *testing.T) {
	f := aclFixture(t)
	old := f.signingKey("ci", publicKey(1))
	other := f.signingKey("release", publicKey(2))

	k, err := f.s.RevokeSigningKey(f.next(), opMeta("acc-sec", "security"), "ci")
	if err != nil {
		t.Fatal(err)
	}
	if k.GetKeyId() != old.GetKeyId() || k.GetRevokeIndex() != f.idx || k.GetRevokeTime() == nil || k.GetRevokedBy() != "acc-sec" {
		t.Errorf("revoked key %v", k)
	}
	if ev := lastAudit(t, f.s); ev.GetAction() != state.ActionKeyRevoke || ev.GetTarget() != "key/"+old.GetKeyId() || ev.GetActorName() != "security" {
		t.Errorf("audit event %v", ev)
	}
	trusted, revoked := f.s.TrustedSigningKeys()
	if len(trusted) != 1 || trusted[artifact.KeyID(other.GetKeyId())] == nil || len(revoked) != 1 || revoked[0] != old.GetKeyId() {
		t.Errorf("after revoking: trusted %v, revoked %v", trusted, revoked)
	}

	// The name is free again, for a new key; the old key stays revoked.
	renewed := f.signingKey("ci", publicKey(3))
	if _, err := f.s.RegisterSigningKey(f.next(), rootMeta(), &droverv1.SigningKey{Name: "ci-again", PublicKey: publicKey(1)}); !errors.Is(err, state.ErrAlreadyExists) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("registering a revoked key again = %v", err)
	}
	if got, err := f.s.SigningKey("ci"); err != nil || got.GetKeyId() != renewed.GetKeyId() {
		t.Errorf("SigningKey(ci) = %v, %v; want the new key", got, err)
	}
	if got, err := f.s.SigningKey(old.GetKeyId()); err != nil || got.GetRevokeIndex() == 0 {
		t.Errorf("SigningKey(old id) = %v, %v; want the revoked key", got, err)
	}

	// Revoking again changes nothing, and says so.
	idx := f.idx
	again, err := f.s.RevokeSigningKey(f.next(), rootMeta(), old.GetKeyId())
	if err != nil || again.GetRevokeIndex() != k.GetRevokeIndex() {
		t.Errorf("revoking again = %v, %v", again, err)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["already_revoked"] != "true" || ev.GetIndex() != idx+1 {
		t.Errorf("audit event %v", ev)
	}
	if _, err := f.s.RevokeSigningKey(f.next(), rootMeta(), "nobody"); !errors.Is(err, state.ErrNotFound) || !strings.Contains(err.Error(), "drover key ls") {
		t.Errorf("revoking an unknown key = %v", err)
	}

	keys := f.s.SigningKeys()
	var order []string
	for _, k := range keys {
		order = append(order, k.GetName())
	}
	if strings.Join(order, ",") != "ci,release,ci" {
		t.Errorf("SigningKeys() in order %v, want oldest first", order)
	}
}

func TestSigningKeySnapshotRoundTrip(t *testing.T) {
	f := aclFixture(t)
	f.signingKey("ci", publicKey(1))
	f.signingKey("release", publicKey(2))
	if _, err := f.s.RevokeSigningKey(f.next(), rootMeta(), "ci"); err != nil {
		t.Fatal(err)
	}
	f.signingKey("ci", publicKey(3))

	var b bytes.Buffer
	if _, err := f.s.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	snap, err := state.ReadSnapshot(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if c := snap.Counts(); c["signing_keys"] != "3" {
		t.Errorf("Counts() = %v", c)
	}
	r := state.New()
	if err := r.Restore(bytes.NewReader(b.Bytes())); err != nil {
		t.Fatal(err)
	}
	a, got := f.s.SigningKeys(), r.SigningKeys()
	if len(a) != 3 || len(got) != len(a) {
		t.Fatalf("%d keys restored as %d", len(a), len(got))
	}
	for i := range a {
		if !proto.Equal(a[i], got[i]) {
			t.Errorf("key\n%v\nrestored as\n%v", a[i], got[i])
		}
	}
	ta, ra := f.s.TrustedSigningKeys()
	tb, rb := r.TrustedSigningKeys()
	if len(ta) != 2 || len(tb) != 2 || len(ra) != 1 || len(rb) != 1 || ra[0] != rb[0] {
		t.Errorf("trusted %v / %v, revoked %v / %v", ta, tb, ra, rb)
	}
	// The restored store refuses what the original refuses.
	if _, err := r.RegisterSigningKey(r.Index()+1, rootMeta(), &droverv1.SigningKey{Name: "back", PublicKey: publicKey(1)}); !errors.Is(err, state.ErrAlreadyExists) {
		t.Errorf("registering a revoked key after restore = %v", err)
	}
}

func TestRestoreSigningKeyRecords(t *testing.T) {
	end := &droverv1.SnapshotRecord{}
	rec := func(k *droverv1.SigningKey) *droverv1.SnapshotRecord {
		return &droverv1.SnapshotRecord{Record: &droverv1.SnapshotRecord_SigningKey{SigningKey: k}}
	}
	key := func(name string, seed byte) *droverv1.SigningKey {
		pub := publicKey(seed)
		return &droverv1.SigningKey{Name: name, PublicKey: pub, KeyId: string(artifact.KeyIDOf(pub)), CreateIndex: 1}
	}
	revoked := key("ci", 1)
	revoked.RevokeIndex = 2

	err := state.New().Restore(bytes.NewReader(stream(t, &droverv1.SnapshotHeader{Format: 4, Index: 5}, rec(key("ci", 1)), end)))
	if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), "format 4 snapshots do not have") {
		t.Errorf("format 4 with a signing key = %v", err)
	}
	hdr := &droverv1.SnapshotHeader{Format: state.SnapshotFormat, Index: 10}
	wrongID := key("ci", 1)
	wrongID.KeyId = "0000000000000000"
	for _, tc := range []struct {
		name    string
		recs    []proto.Message
		mention string
	}{
		{"key id not of its key", []proto.Message{rec(wrongID)}, "its key id is"},
		{"key twice", []proto.Message{rec(key("ci", 1)), rec(key("other", 1))}, "twice"},
		{"two active keys share a name", []proto.Message{rec(key("ci", 1)), rec(key("ci", 2))}, "share the name"},
		{"bad name", []proto.Message{rec(key("", 1))}, "signing key name"},
	} {
		recs := append(append([]proto.Message{hdr}, tc.recs...), end)
		err := state.New().Restore(bytes.NewReader(stream(t, recs...)))
		if !errors.Is(err, state.ErrSnapshotInvalid) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: %v, want ErrSnapshotInvalid mentioning %q", tc.name, err, tc.mention)
		}
	}
	// A revoked key may share its name with the key that replaced it.
	if err := state.New().Restore(bytes.NewReader(stream(t, hdr, rec(revoked), rec(key("ci", 2)), end))); err != nil {
		t.Errorf("Restore(valid) = %v", err)
	}
}

// A version's audit event names the keys that signed its manifest.
func TestVersionAuditNamesSigningKeys(t *testing.T) {
	f := newFixture(t)
	f.model("resnet")
	b := []byte("manifest bytes")
	sum := sha256.Sum256(b)
	_, err := f.s.CreateVersion(f.next(), meta("acc-ci"), &droverv1.CreateVersionRequest{
		Model: "resnet",
		Artifact: &droverv1.ArtifactManifest{
			Digest: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: 1,
			Signed: &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{
				{KeyId: "1111111111111111"}, {KeyId: "2222222222222222"},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if ev := lastAudit(t, f.s); ev.GetDetails()["signed_by"] != "1111111111111111,2222222222222222" {
		t.Errorf("version.create details %v", ev.GetDetails())
	}
}
