package cli

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/droverhq/drover/artifact"
)

// key create writes a private key only its owner can read, never over an
// existing file, and registers its public half; a push signed with it
// carries its signature beside the cluster's, and once it is revoked the
// cluster refuses it.
func TestKeyCreateSignPushRevoke(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	keyFile := filepath.Join(h.dir, "ci.key")
	out := h.ok("key", "create", "ci", "--out", keyFile, "--description", "release pipeline")

	st, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("the private key file has mode %o, want 600", perm)
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := artifact.ParsePrivateKeyPEM(b)
	if err != nil {
		t.Fatalf("the key file does not read back: %v", err)
	}
	if !strings.Contains(out, string(key.ID())) || !strings.Contains(out, keyFile) {
		t.Errorf("create says %q; want the key id %s and the file", out, key.ID())
	}
	h.fake.art.mu.Lock()
	registered := h.fake.art.keys[string(key.ID())]
	h.fake.art.mu.Unlock()
	if !ed25519.PublicKey(registered).Equal(key.Public()) {
		t.Fatalf("the cluster got public key %x, want %x", registered, key.Public())
	}

	// Never overwritten.
	r := h.run("key", "create", "other", "--out", keyFile)
	if r.code == 0 || !strings.Contains(r.stderr, "never overwritten") {
		t.Errorf("create over an existing file: exit %d, %q", r.code, r.stderr)
	}
	if again, _ := os.ReadFile(keyFile); string(again) != string(b) {
		t.Error("the existing key file changed")
	}

	// The listing shows it, in both formats.
	ls := h.ok("key", "ls")
	if !strings.Contains(squeeze(ls), "ci "+string(key.ID())+" active release pipeline") {
		t.Errorf("key ls:\n%s", ls)
	}
	var listed struct {
		Keys []struct {
			Name, KeyID string
		}
	}
	if err := json.Unmarshal([]byte(h.ok("key", "ls", "-o", "json")), &listed); err != nil || len(listed.Keys) != 1 || listed.Keys[0].Name != "ci" {
		t.Errorf("key ls -o json = %+v, %v", listed, err)
	}

	// A signed push.
	h.ok("model", "create", "resnet")
	src := filepath.Join(h.dir, "model")
	modelTree(t, src)
	pushOut := h.ok("model", "push", src, "--model", "resnet", "--sign-key", keyFile)
	if !strings.Contains(pushOut, "Signed with key "+string(key.ID())) {
		t.Errorf("push says %q", pushOut)
	}
	h.fake.art.mu.Lock()
	sigs := h.fake.art.finish.GetManifest().GetSignatures()
	h.fake.art.mu.Unlock()
	if len(sigs) != 1 || sigs[0].GetKeyId() != string(key.ID()) {
		t.Fatalf("FinishPush carried signatures %v, want one by %s", sigs, key.ID())
	}
	// The signed version pulls: its manifest verifies with what the
	// cluster lists.
	h.ok("model", "pull", "resnet", filepath.Join(h.dir, "pulled"))

	// A file that is not a private key is refused before anything is sent.
	pubFile := filepath.Join(h.dir, "ci.pub")
	pubPEM, err := artifact.MarshalPublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	r = h.run("model", "push", src, "--model", "resnet", "--sign-key", pubFile)
	if r.code == 0 || !strings.Contains(r.stderr, "PRIVATE KEY") {
		t.Errorf("push signed with a public key file: exit %d, %q", r.code, r.stderr)
	}

	// Revoked by name: the next push signed with it is refused.
	h.ok("key", "revoke", "ci")
	if ls := squeeze(h.ok("key", "ls")); !strings.Contains(ls, "ci "+string(key.ID())+" revoked") {
		t.Errorf("key ls after revoking:\n%s", ls)
	}
	r = h.run("model", "push", src, "--model", "resnet", "--sign-key", keyFile)
	if r.code == 0 || !strings.Contains(r.stderr, "not registered") {
		t.Errorf("push signed with a revoked key: exit %d, %q", r.code, r.stderr)
	}
}

// key import registers a public key made elsewhere, from a PEM public
// key file or the public half of a private key file.
func TestKeyImport(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	k1 := artifact.SigningKey{}
	var err error
	if k1, err = artifact.SigningKeyFromSeed([]byte(strings.Repeat("h", ed25519.SeedSize))); err != nil {
		t.Fatal(err)
	}
	pubPEM, err := artifact.MarshalPublicKeyPEM(k1.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(h.dir, "hsm.pub.pem")
	if err := os.WriteFile(pubFile, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if out := h.ok("key", "import", "hsm-1", "--public", pubFile); !strings.Contains(out, string(k1.ID())) {
		t.Errorf("import says %q", out)
	}
	h.fake.art.mu.Lock()
	_, ok := h.fake.art.keys[string(k1.ID())]
	h.fake.art.mu.Unlock()
	if !ok {
		t.Error("the imported key is not registered")
	}
	if r := h.run("key", "import", "x"); r.code != 2 || !strings.Contains(r.stderr, "--public is required") {
		t.Errorf("import without --public: exit %d, %q", r.code, r.stderr)
	}
	junk := filepath.Join(h.dir, "junk")
	if err := os.WriteFile(junk, []byte("ssh-ed25519 AAAA"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := h.run("key", "import", "x", "--public", junk); r.code == 0 || !strings.Contains(r.stderr, "PUBLIC KEY") {
		t.Errorf("import of a file that is not PEM: exit %d, %q", r.code, r.stderr)
	}
}

// When the cluster refuses to register a new key, the key file is kept and
// the error says how to register it later; key import reads the public
// half from that private key file.
func TestKeyCreateKeepsFileWhenRegistrationFails(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("key", "create", "ci", "--out", filepath.Join(h.dir, "first.key"))
	second := filepath.Join(h.dir, "second.key")
	r := h.run("key", "create", "ci", "--out", second)
	if r.code == 0 || !strings.Contains(r.stderr, "already exists") || !strings.Contains(r.stderr, "drover key import NAME --public "+second) {
		t.Fatalf("create with a taken name: exit %d, %q", r.code, r.stderr)
	}
	b, err := os.ReadFile(second)
	if err != nil {
		t.Fatalf("the key file of a refused registration is gone: %v", err)
	}
	key, err := artifact.ParsePrivateKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	if out := h.ok("key", "import", "ci-2", "--public", second); !strings.Contains(out, string(key.ID())) {
		t.Errorf("import from the private key file says %q, want key id %s", out, key.ID())
	}
}
