package artifact

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// signingContext starts every signed message, so that a Drover signing
// key's signature over a manifest can never be taken for its signature
// over anything else, and the reverse.
const signingContext = "drover manifest v1\n"

// keyIDBytes is how much of a public key's digest its KeyID keeps: 64
// bits tell an operator's keys apart. Security does not rest on it: a
// signature is checked with the trusted public key the id selects.
const keyIDBytes = 8

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex (16
// characters).
type KeyID string

// KeyIDOf returns the id of a public key.
func KeyIDOf(pub ed25519.PublicKey) KeyID {
	d := Sum(pub)
	return KeyID(hex.EncodeToString(d[:keyIDBytes]))
}

// SigningKey signs manifests. The zero value has no key and cannot sign.
type SigningKey struct {
	priv ed25519.PrivateKey
}

// GenerateSigningKey makes a new key from rand (crypto/rand.Reader in
// production).
func GenerateSigningKey(rand io.Reader) (SigningKey, error) {
	_, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return SigningKey{}, fmt.Errorf("generate signing key: %w", err)
	}
	return SigningKey{priv: priv}, nil
}

// SigningKeyFromSeed rebuilds a key from the 32-byte seed Seed returns.
func SigningKeyFromSeed(seed []byte) (SigningKey, error) {
	if len(seed) != ed25519.SeedSize {
		return SigningKey{}, fmt.Errorf("signing key: seed of %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return SigningKey{priv: ed25519.NewKeyFromSeed(seed)}, nil
}

// Seed returns the 32 secret bytes the key is made from, for storing it.
func (k SigningKey) Seed() []byte { return slices.Clone(k.priv.Seed()) }

// Public returns the key's public half, which verifiers trust.
func (k SigningKey) Public() ed25519.PublicKey {
	return slices.Clone(k.priv.Public().(ed25519.PublicKey))
}

// ID returns the id of the key's public half.
func (k SigningKey) ID() KeyID { return KeyIDOf(k.priv.Public().(ed25519.PublicKey)) }

// SignWithContext signs msg prefixed by context, for the cluster's other
// signed messages (alert webhooks). The context keeps such a signature from
// ever passing for a manifest's: manifest signatures cover their own
// context, so give one that no other use shares, ending in a newline.
func (k SigningKey) SignWithContext(context string, msg []byte) []byte {
	return ed25519.Sign(k.priv, append([]byte(context), msg...))
}

// signedMessage is what a signature covers: the context and the digest of
// the manifest's bytes.
func signedMessage(d Digest) []byte {
	return append([]byte(signingContext), d[:]...)
}

// Sign signs the exact manifestBytes (as MarshalManifest returned them).
// Add the signature to a SignedManifest that carries the same bytes; a
// manifest may carry several, one per key.
func Sign(manifestBytes []byte, key SigningKey) (*droverv1.ManifestSignature, error) {
	if len(key.priv) != ed25519.PrivateKeySize {
		return nil, errors.New("sign manifest: no signing key")
	}
	return &droverv1.ManifestSignature{
		KeyId:     string(key.ID()),
		Signature: ed25519.Sign(key.priv, signedMessage(Sum(manifestBytes))),
	}, nil
}

// Verify checks that a trusted key signed the manifest bytes, and only
// then decodes and validates them against limits. It returns the manifest
// and its digest (the artifact's identity, over the bytes as received).
// One good signature by a trusted key is enough; signatures by keys not in
// trusted are ignored. It refuses, each with its own error:
//   - a manifest over limits.MaxManifestBytes, before hashing it
//     (ErrInvalidManifest and ErrTooLarge);
//   - no signature (ErrUnsigned);
//   - only signatures by untrusted keys, or a trusted key listed under an
//     id that is not its own (ErrUnknownKey);
//   - a trusted key's signature that does not verify, with no good one
//     beside it (ErrBadSignature);
//   - bytes that do not decode or validate (ErrInvalidManifest).
func Verify(signed *droverv1.SignedManifest, trusted map[KeyID]ed25519.PublicKey, limits Limits) (*droverv1.Manifest, Digest, error) {
	b := signed.GetManifest()
	if limits.MaxManifestBytes > 0 && len(b) > limits.MaxManifestBytes {
		return nil, Digest{}, fmt.Errorf("verify manifest: %d bytes, over the limit of %d: %w", len(b), limits.MaxManifestBytes, errors.Join(ErrInvalidManifest, ErrTooLarge))
	}
	d := Sum(b)
	sigs := signed.GetSignatures()
	if len(sigs) == 0 {
		return nil, d, fmt.Errorf("verify manifest %s: %w: sign it with a trusted key (drover key)", d, ErrUnsigned)
	}
	msg := signedMessage(d)
	var unknown, bad []string
	good := false
	for _, s := range sigs {
		id := KeyID(s.GetKeyId())
		pub, ok := trusted[id]
		if !ok {
			unknown = append(unknown, shortID(id))
			continue
		}
		if len(pub) != ed25519.PublicKeySize || KeyIDOf(pub) != id {
			return nil, d, fmt.Errorf("verify manifest %s: the trusted key listed as %s is not a key with that id: %w: fix the list of trusted keys", d, shortID(id), ErrUnknownKey)
		}
		if ed25519.Verify(pub, msg, s.GetSignature()) {
			good = true
			break
		}
		bad = append(bad, shortID(id))
	}
	switch {
	case good:
	case len(bad) > 0:
		return nil, d, fmt.Errorf("verify manifest %s: by trusted key %s: %w: the bytes are not what the key signed", d, strings.Join(bad, ", "), ErrBadSignature)
	default:
		return nil, d, fmt.Errorf("verify manifest %s: signed by %s: %w: trust the key, or sign with a trusted one", d, listSome(unknown), ErrUnknownKey)
	}
	m, err := DecodeManifest(b, limits)
	if err != nil {
		return nil, d, fmt.Errorf("verify manifest %s: %w", d, err)
	}
	return m, d, nil
}

// shortID quotes a key id from a signature, cut short: the id is not
// trusted and could be of any length.
func shortID(id KeyID) string {
	const most = 2 * keyIDBytes
	if len(id) > most {
		return fmt.Sprintf("%q…", id[:most])
	}
	return fmt.Sprintf("%q", id)
}

// listSome joins up to three items, so that a manifest with thousands of
// junk signatures makes a short error.
func listSome(items []string) string {
	const show = 3
	if len(items) <= show {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:show], ", "), len(items)-show)
}

// VerifySignature checks one signature over the exact manifestBytes with
// pub, the key the signature's id names. Verify accepts a manifest on one
// good signature; a receiver that must vouch for every signature it
// keeps (a server storing a pushed manifest) checks each with this. It
// refuses a pub whose id is not the signature's (ErrUnknownKey) and a
// signature that does not verify (ErrBadSignature).
func VerifySignature(manifestBytes []byte, sig *droverv1.ManifestSignature, pub ed25519.PublicKey) error {
	id := KeyID(sig.GetKeyId())
	if len(pub) != ed25519.PublicKeySize || KeyIDOf(pub) != id {
		return fmt.Errorf("verify signature by %s: the key given is not a key with that id: %w", shortID(id), ErrUnknownKey)
	}
	if !ed25519.Verify(pub, signedMessage(Sum(manifestBytes)), sig.GetSignature()) {
		return fmt.Errorf("verify signature by %s: %w: the bytes are not what the key signed", shortID(id), ErrBadSignature)
	}
	return nil
}
