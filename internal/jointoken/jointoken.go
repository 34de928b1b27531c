// Package jointoken defines the join token format agents enroll with; it
// carries the cluster CA's fingerprint so an agent can check the server
// before sending the secret, kubeadm/k3s style.
//
// # Format
//
// A join token is one copy-pastable string of five dot-separated parts:
//
//	drover-join.v1.<ca>.<id>.<secret>
//
// Each part exists for a reason:
//
//   - "drover-join" names what the string is, so a token pasted into the
//     wrong flag, file or chat message is recognisable at a glance and by
//     secret scanners, and so Parse can reject anything else early.
//   - "v1" is the format version. Parse reads it before counting parts, so a
//     future format, whatever its shape, is reported as a version this
//     program does not understand (upgrade the agent) rather than as garbage.
//   - <ca> is the lowercase hex SHA-256 of the cluster CA certificate's DER
//     encoding (64 characters, the value pki.CA.Fingerprint returns). A new
//     agent has no trust anchor yet; it pins the CA the server presents to
//     this hash (VerifyCA) and refuses to send the secret to any server
//     whose CA does not match, so a man in the middle never sees it.
//   - <id> is a short public token id: 8 characters of lowercase base32
//     without padding (40 random bits). The server looks tokens up by it,
//     and it names a token in listings, revocations and the audit log
//     without revealing the secret.
//   - <secret> is 32 characters of lowercase base32 without padding (160
//     random bits). It is the credential: the server stores only its
//     SHA-256 (SecretHash) and compares what an agent sends against that.
//
// The parts use only [a-z0-9] so a token survives shells, URLs, YAML and
// double-click selection without quoting. Parse is strict: besides trimming
// surrounding whitespace it accepts exactly what String produces, and its
// errors never contain the secret.
//
// A Token is a plain value, safe to copy and to use from many goroutines.
package jointoken

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

// Errors returned by this package, wrapped with a message that names the
// problem; test for them with errors.Is. No error message ever contains a
// token's secret.
var (
	// ErrMalformed means a string is not a join token at all: a missing
	// "drover-join." prefix, an unreadable version field, or the wrong
	// number of parts.
	ErrMalformed = errors.New("malformed join token")
	// ErrUnsupportedVersion means a token is in a format version this
	// program does not read; the message names the version.
	ErrUnsupportedVersion = errors.New("unsupported join token version")
	// ErrBadCAHash means a CA hash is not 64 lowercase hex digits.
	ErrBadCAHash = errors.New("bad CA hash in join token")
	// ErrBadID means a token id is not 8 lowercase base32 characters.
	ErrBadID = errors.New("bad token id in join token")
	// ErrBadSecret means a token secret is not 32 lowercase base32
	// characters.
	ErrBadSecret = errors.New("bad secret in join token")
	// ErrCAMismatch means the CA a server presented is not the one the
	// token pins, so the agent must not send the secret to that server.
	ErrCAMismatch = errors.New("server CA does not match join token")
)

const (
	prefix    = "drover-join"
	version   = "v1"
	numParts  = 5  // prefix, version, ca, id, secret
	caHashLen = 64 // hex digits of a SHA-256
	idLen     = 8  // base32 characters of 5 random bytes
	secretLen = 32 // base32 characters of 20 random bytes
	idBytes   = 5
	secBytes  = 20

	// maxVersionDigits bounds how long a version field may be and still
	// be named in an error message, so a misplaced secret is never echoed.
	maxVersionDigits = 6
	// shownFingerprint is how many hex digits of a fingerprint
	// ErrCAMismatch's message shows.
	shownFingerprint = 12
)

// Token is a parsed join token. Its String form holds the secret; log
// Redacted instead. As a slog value it logs itself redacted.
type Token struct {
	// CAHash is the lowercase hex SHA-256 of the cluster CA certificate's
	// DER encoding.
	CAHash string
	// ID is the public token id, 8 lowercase base32 characters.
	ID string
	// Secret is the token's secret, 32 lowercase base32 characters.
	Secret string
}

// New returns a token with a fresh random id and secret that pins the CA
// whose fingerprint is caHash (as pki.CA.Fingerprint returns it).
func New(caHash string) (Token, error) {
	if err := checkCAHash(caHash); err != nil {
		return Token{}, fmt.Errorf("new join token: %w", err)
	}
	id, err := randomBase32(idBytes)
	if err != nil {
		return Token{}, fmt.Errorf("new join token: id: %w", err)
	}
	secret, err := randomBase32(secBytes)
	if err != nil {
		return Token{}, fmt.Errorf("new join token: secret: %w", err)
	}
	return Token{CAHash: caHash, ID: id, Secret: secret}, nil
}

// String returns the token in its one-line form,
// drover-join.v1.<ca>.<id>.<secret>. It contains the secret.
func (t Token) String() string {
	return t.format(t.Secret)
}

// Redacted returns the token's string form with the secret replaced by
// "****", for logs and error messages.
func (t Token) Redacted() string {
	return t.format("****")
}

// LogValue makes slog log the token redacted, so passing a Token to a
// logger by mistake does not leak its secret.
func (t Token) LogValue() slog.Value {
	return slog.StringValue(t.Redacted())
}

var _ slog.LogValuer = Token{}

func (t Token) format(secret string) string {
	return prefix + "." + version + "." + t.CAHash + "." + t.ID + "." + secret
}

// SecretHash returns the SHA-256 of the token's secret: what the server
// stores and compares against, instead of the secret itself.
func (t Token) SecretHash() [32]byte {
	return sha256.Sum256([]byte(t.Secret))
}

// Parse reads a token in the form String returns, ignoring whitespace
// around it (a pasted token often ends with a newline). It checks, in order,
// the prefix, the version, the number of parts, the CA hash, the id and the
// secret, and reports the first problem wrapped around one of ErrMalformed,
// ErrUnsupportedVersion, ErrBadCAHash, ErrBadID or ErrBadSecret. Error
// messages name the problem but never echo the secret.
func Parse(s string) (Token, error) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, prefix+".")
	if !ok {
		return Token{}, fmt.Errorf("parse join token: does not start with %q: %w", prefix+".", ErrMalformed)
	}
	ver, _, _ := strings.Cut(rest, ".")
	if ver != version {
		if !isVersion(ver) {
			return Token{}, fmt.Errorf("parse join token: version field is not of the form v<number>: %w", ErrMalformed)
		}
		return Token{}, fmt.Errorf("parse join token: token format %s is not supported (this program reads %s); upgrade the agent: %w",
			ver, version, ErrUnsupportedVersion)
	}
	parts := strings.Split(s, ".")
	if len(parts) != numParts {
		return Token{}, fmt.Errorf("parse join token: %d dot-separated parts, want %d (%s.%s.<ca>.<id>.<secret>): %w",
			len(parts), numParts, prefix, version, ErrMalformed)
	}
	t := Token{CAHash: parts[2], ID: parts[3], Secret: parts[4]}
	if err := checkCAHash(t.CAHash); err != nil {
		return Token{}, fmt.Errorf("parse join token: %w", err)
	}
	if err := checkBase32(t.ID, idLen); err != nil {
		return Token{}, fmt.Errorf("parse join token: token id %s: %w", err, ErrBadID)
	}
	if err := checkBase32(t.Secret, secretLen); err != nil {
		return Token{}, fmt.Errorf("parse join token: secret %s: %w", err, ErrBadSecret)
	}
	return t, nil
}

// VerifyCA checks that caCertDER, the DER encoding of the CA certificate a
// server presented, is the CA that t pins. An agent calls it before sending
// t's secret; on ErrCAMismatch it must not send it. The comparison takes
// constant time. A token whose CAHash is malformed never matches; its error
// also wraps ErrBadCAHash.
func VerifyCA(t Token, caCertDER []byte) error {
	sum := sha256.Sum256(caCertDER)
	got := hex.EncodeToString(sum[:])
	if subtle.ConstantTimeCompare([]byte(got), []byte(t.CAHash)) == 1 {
		return nil
	}
	if err := checkCAHash(t.CAHash); err != nil {
		// Not a hash at all: name the problem, not the content.
		return fmt.Errorf("verify CA: server CA fingerprint %s... cannot match the token's: %w; the agent refused to send the join secret: %w",
			shorten(got), err, ErrCAMismatch)
	}
	return fmt.Errorf("verify CA: server CA fingerprint %s... does not match the token's %s...; the agent refused to send the join secret: %w",
		shorten(got), shorten(t.CAHash), ErrCAMismatch)
}

// checkCAHash reports whether h is 64 lowercase hex digits, wrapping
// ErrBadCAHash. Its message gives lengths and positions, never content.
func checkCAHash(h string) error {
	if len(h) != caHashLen {
		return fmt.Errorf("CA hash has %d characters, want %d lowercase hex digits: %w", len(h), caHashLen, ErrBadCAHash)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("CA hash character %d is not a lowercase hex digit: %w", i+1, ErrBadCAHash)
		}
	}
	return nil
}

// checkBase32 checks that s is n characters of lowercase base32 (a-z, 2-7).
// Every such string decodes, because n is a whole number of 8-character
// base32 blocks. The error describes the problem without content.
func checkBase32(s string, n int) error {
	if len(s) != n {
		return fmt.Errorf("has %d characters, want %d", len(s), n)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return fmt.Errorf("character %d is not lowercase base32 (a-z, 2-7)", i+1)
		}
	}
	return nil
}

// isVersion reports whether v looks like a format version, "v" and a few
// digits, short enough that naming it in an error cannot leak a secret.
func isVersion(v string) bool {
	digits, ok := strings.CutPrefix(v, "v")
	if !ok || len(digits) == 0 || len(digits) > maxVersionDigits {
		return false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return false
		}
	}
	return true
}

// randomBase32 returns n random bytes from crypto/rand as lowercase base32
// without padding.
func randomBase32(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b)), nil
}

// shorten returns the first shownFingerprint bytes of a fingerprint, or all
// of it if shorter.
func shorten(fp string) string {
	if len(fp) > shownFingerprint {
		return fp[:shownFingerprint]
	}
	return fp
}
