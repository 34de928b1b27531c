// Package artifact is the format of model bytes that the CLI, the servers
// and the agents share: digests, content-defined chunking, manifests, their
// signatures, and assembling a verified manifest into a directory. It is a
// leaf the agent links, so it imports only proto/ and internal/.
package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
)

// DigestAlgorithm names the hash of every digest in format version 1.
//
// SHA-256 was chosen over BLAKE3 by measurement (docs/artifacts.md): BLAKE3
// hashes about twice as fast on an amd64 server, but neither Go BLAKE3
// library has arm64 assembly, while crypto/sha256 uses the ARMv8 SHA-2
// instructions. Agents on arm64 edge devices verify every chunk they pull,
// so there SHA-256 is the faster of the two, and it needs no dependency.
const DigestAlgorithm = "sha256"

// DigestSize is the length of a digest in bytes.
const DigestSize = sha256.Size

// Digest identifies bytes by their SHA-256: a chunk, a public key, or a
// manifest (the artifact's identity). The zero value is no digest.
type Digest [DigestSize]byte

// NewHasher returns a hash that computes digests incrementally; its Sum
// fits DigestFromBytes.
func NewHasher() hash.Hash { return sha256.New() }

// Sum returns the digest of b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

// DigestFromBytes converts a digest held as bytes (as in a manifest).
func DigestFromBytes(b []byte) (Digest, error) {
	var d Digest
	if len(b) != DigestSize {
		return d, fmt.Errorf("digest: %d bytes, want %d", len(b), DigestSize)
	}
	copy(d[:], b)
	return d, nil
}

// String renders the digest as "sha256:<64 lowercase hex digits>".
func (d Digest) String() string {
	return DigestAlgorithm + ":" + hex.EncodeToString(d[:])
}

// IsZero reports whether d is the zero value.
func (d Digest) IsZero() bool { return d == Digest{} }

// MarshalText renders the digest as String does, for JSON and YAML.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses what MarshalText renders.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// ParseDigest parses "sha256:<64 lowercase hex digits>". Only one spelling
// is accepted, so that a digest used as a name or map key has one form.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	alg, h, ok := strings.Cut(s, ":")
	if !ok {
		return d, fmt.Errorf("parse digest %q: no algorithm prefix: write it as %s:<%d hex digits>", s, DigestAlgorithm, 2*DigestSize)
	}
	if alg != DigestAlgorithm {
		return d, fmt.Errorf("parse digest %q: algorithm %q is not supported: Drover digests are %s:<%d hex digits>", s, alg, DigestAlgorithm, 2*DigestSize)
	}
	if len(h) != 2*DigestSize {
		return d, fmt.Errorf("parse digest %q: %d hex digits, want %d", s, len(h), 2*DigestSize)
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return d, fmt.Errorf("parse digest %q: %q at position %d is not a lowercase hex digit", s, c, len(alg)+1+i)
		}
	}
	if _, err := hex.Decode(d[:], []byte(h)); err != nil {
		return Digest{}, fmt.Errorf("parse digest %q: %w", s, err)
	}
	return d, nil
}
