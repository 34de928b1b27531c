package artifact

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// testKey returns a key that is the same in every run.
func testKey(t *testing.T, seed string) SigningKey {
	t.Helper()
	k, err := SigningKeyFromSeed(bytes.Repeat([]byte(seed), ed25519.SeedSize/len(seed)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func signedTestManifest(t *testing.T, keys ...SigningKey) (*droverv1.SignedManifest, []byte) {
	t.Helper()
	b, err := MarshalManifest(validManifest())
	if err != nil {
		t.Fatal(err)
	}
	s := &droverv1.SignedManifest{Manifest: b}
	for _, k := range keys {
		sig, err := Sign(b, k)
		if err != nil {
			t.Fatal(err)
		}
		s.Signatures = append(s.Signatures, sig)
	}
	return s, b
}

func TestSignAndVerify(t *testing.T) {
	alice, bob := testKey(t, "alice..."), testKey(t, "bob.")
	trusted := map[KeyID]ed25519.PublicKey{alice.ID(): alice.Public()}
	signed, b := signedTestManifest(t, bob, alice)
	m, d, err := Verify(signed, trusted, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if d != Sum(b) {
		t.Errorf("digest %s, want the digest of the bytes %s", d, Sum(b))
	}
	want := new(droverv1.Manifest)
	if err := proto.Unmarshal(b, want); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(m, want) {
		t.Error("verified manifest differs from the signed one")
	}
	if len(alice.ID()) != 16 || alice.ID() == bob.ID() {
		t.Errorf("key ids %q %q", alice.ID(), bob.ID())
	}
	again, err := SigningKeyFromSeed(alice.Seed())
	if err != nil || again.ID() != alice.ID() {
		t.Errorf("key from its seed: %v, %v", again.ID(), err)
	}
	if _, err := Sign(b, SigningKey{}); err == nil {
		t.Error("the zero key signed")
	}

	// One good signature by a trusted key is enough, even beside a bad
	// one by another trusted key.
	carol := testKey(t, "carol...")
	trusted[carol.ID()] = carol.Public()
	signed, _ = signedTestManifest(t, alice, carol)
	signed.Signatures[0].Signature[0] ^= 1
	if _, _, err := Verify(signed, trusted, DefaultLimits()); err != nil {
		t.Errorf("a good signature beside a bad one: %v", err)
	}
}

func TestVerifyRefusals(t *testing.T) {
	alice, bob := testKey(t, "alice..."), testKey(t, "bob.")
	trusted := map[KeyID]ed25519.PublicKey{alice.ID(): alice.Public()}
	for _, tt := range []struct {
		name    string
		signed  func() *droverv1.SignedManifest
		trusted map[KeyID]ed25519.PublicKey
		limits  Limits
		wantErr error
		wantMsg string
	}{
		{"no signature", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t)
			return s
		}, trusted, DefaultLimits(), ErrUnsigned, ""},
		{"unknown key", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, bob)
			return s
		}, trusted, DefaultLimits(), ErrUnknownKey, string(bob.ID())},
		{"no trusted keys at all", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			return s
		}, nil, DefaultLimits(), ErrUnknownKey, ""},
		{"many junk signatures make a short error", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t)
			for range 1000 {
				s.Signatures = append(s.Signatures, &droverv1.ManifestSignature{KeyId: strings.Repeat("k", 100)})
			}
			return s
		}, trusted, DefaultLimits(), ErrUnknownKey, "and 997 more"},
		{"bytes changed after signing", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			m := validManifest()
			m.Files[0].Mode = ModeExecutable
			s.Manifest, _ = MarshalManifest(m)
			return s
		}, trusted, DefaultLimits(), ErrBadSignature, string(alice.ID())},
		{"signature changed", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			s.Signatures[0].Signature[5] ^= 1
			return s
		}, trusted, DefaultLimits(), ErrBadSignature, ""},
		{"signature cut short", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			s.Signatures[0].Signature = s.Signatures[0].Signature[:10]
			return s
		}, trusted, DefaultLimits(), ErrBadSignature, ""},
		{"bob's signature under alice's id", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, bob)
			s.Signatures[0].KeyId = string(alice.ID())
			return s
		}, trusted, DefaultLimits(), ErrBadSignature, ""},
		{"trusted key listed under another id", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, bob)
			return s
		}, map[KeyID]ed25519.PublicKey{bob.ID(): alice.Public()}, DefaultLimits(), ErrUnknownKey, "fix the list of trusted keys"},
		{"signed but invalid", func() *droverv1.SignedManifest {
			m := validManifest()
			m.Files[0].Path = "../../etc/cron.d/x"
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			sig, _ := Sign(b, alice)
			return &droverv1.SignedManifest{Manifest: b, Signatures: []*droverv1.ManifestSignature{sig}}
		}, trusted, DefaultLimits(), ErrInvalidManifest, "escapes"},
		{"signed but over the limits", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			return s
		}, trusted, Limits{MaxChunks: 2}, ErrTooLarge, "4 chunks"},
		{"too large to hash", func() *droverv1.SignedManifest {
			s, _ := signedTestManifest(t, alice)
			return s
		}, trusted, Limits{MaxManifestBytes: 10}, ErrTooLarge, "over the limit of 10"},
		{"nothing", func() *droverv1.SignedManifest { return nil }, trusted, DefaultLimits(), ErrUnsigned, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, _, err := Verify(tt.signed(), tt.trusted, tt.limits)
			if m != nil || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify = %v, %v; want %v", m, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not say %q", err, tt.wantMsg)
			}
			if len(err.Error()) > 500 {
				t.Errorf("error of %d bytes", len(err.Error()))
			}
		})
	}
}
