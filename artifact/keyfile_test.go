package artifact

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestKeyFilesRoundTrip(t *testing.T) {
	k, err := GenerateSigningKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privPEM, err := k.MarshalPrivateKeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(privPEM, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Errorf("private key file starts %q", privPEM[:30])
	}
	back, err := ParsePrivateKeyPEM(privPEM)
	if err != nil || back.ID() != k.ID() {
		t.Fatalf("ParsePrivateKeyPEM = %v, %v", back.ID(), err)
	}
	pubPEM, err := MarshalPublicKeyPEM(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{pubPEM, privPEM} {
		pub, err := ParsePublicKeyPEM(b)
		if err != nil || KeyIDOf(pub) != k.ID() {
			t.Errorf("ParsePublicKeyPEM = %v, %v", KeyIDOf(pub), err)
		}
	}
	if _, err := ParsePrivateKeyPEM(pubPEM); err == nil || !strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Errorf("a public key read as a private one: %v", err)
	}
	if _, err := ParsePublicKeyPEM([]byte("ssh-ed25519 AAAA")); err == nil {
		t.Error("a non-PEM public key was read")
	}
}

func TestVerifySignature(t *testing.T) {
	alice, bob := testKey(t, "alice..."), testKey(t, "bob.")
	signed, b := signedTestManifest(t, alice)
	sig := signed.GetSignatures()[0]
	if err := VerifySignature(b, sig, alice.Public()); err != nil {
		t.Fatal(err)
	}
	if err := VerifySignature(b, sig, bob.Public()); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("with another key = %v", err)
	}
	other := append(bytes.Clone(b), 0)
	if err := VerifySignature(other, sig, alice.Public()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("over other bytes = %v", err)
	}
}
