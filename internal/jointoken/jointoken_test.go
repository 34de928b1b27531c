package jointoken

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/droverhq/drover/internal/pki"
)

// A fixed, valid token's parts. The secret is distinctive so tests can
// search error messages for it and for pieces of it.
const (
	testCA     = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	testID     = "q7m2xk4p"
	testSecret = "n4kq7zr2wt5x3vbm6yhc2pjd7sfl4gae"
	testToken  = "drover-join.v1." + testCA + "." + testID + "." + testSecret
)

var parseSentinels = []error{ErrMalformed, ErrUnsupportedVersion, ErrBadCAHash, ErrBadID, ErrBadSecret}

// assertNoSecret fails if msg contains secret or any 8-character piece of
// it.
func assertNoSecret(t *testing.T, msg, secret string) {
	t.Helper()
	if secret == "" {
		return
	}
	if strings.Contains(msg, secret) {
		t.Fatalf("error message contains the secret: %q", msg)
	}
	for i := 0; i+8 <= len(secret); i++ {
		if piece := secret[i : i+8]; strings.Contains(msg, piece) {
			t.Fatalf("error message contains %q, a piece of the secret: %q", piece, msg)
		}
	}
}

// assertOnlySentinel fails unless err wraps want and no other parse
// sentinel.
func assertOnlySentinel(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want it to wrap %v", err, want)
	}
	for _, other := range parseSentinels {
		if other != want && errors.Is(err, other) {
			t.Fatalf("err = %v wraps %v as well as %v", err, other, want)
		}
	}
}

func join(parts ...string) string { return strings.Join(parts, ".") }

func TestParseErrors(t *testing.T) {
	const p, v = "drover-join", "v1"
	tests := []struct {
		name string
		in   string
		want error
		// secret is a value that must not appear in the message; empty
		// means testSecret.
		secret string
		// contains are substrings the message must have.
		contains []string
	}{
		{name: "empty", in: "", want: ErrMalformed},
		{name: "only whitespace", in: " \n\t ", want: ErrMalformed},
		{name: "other prefix", in: join("k3s-join", v, testCA, testID, testSecret), want: ErrMalformed},
		{name: "upper-case prefix", in: join("DROVER-JOIN", v, testCA, testID, testSecret), want: ErrMalformed},
		{name: "prefix without dot", in: "drover-join", want: ErrMalformed},
		{name: "prefix glued to version", in: "drover-joinv1." + join(testCA, testID, testSecret), want: ErrMalformed},
		{name: "leading junk", in: "x" + testToken, want: ErrMalformed},
		{name: "bare secret", in: testSecret, want: ErrMalformed},
		{name: "empty version", in: join(p, "", testCA, testID, testSecret), want: ErrMalformed},
		{name: "upper-case version", in: join(p, "V1", testCA, testID, testSecret), want: ErrMalformed},
		{name: "version with letters", in: join(p, "v1x", testCA, testID, testSecret), want: ErrMalformed},
		{name: "version too long to name", in: join(p, "v1234567", testCA, testID, testSecret), want: ErrMalformed},
		{name: "secret where version goes", in: join(p, testSecret), want: ErrMalformed},
		{name: "v-prefixed secret where version goes", in: join(p, "v"+testSecret), want: ErrMalformed},
		{name: "version 2", in: join(p, "v2", testCA, testID, testSecret), want: ErrUnsupportedVersion,
			contains: []string{"v2", "upgrade the agent"}},
		{name: "version 2 with another shape", in: join(p, "v2", "a", "b", "c", "d", testSecret), want: ErrUnsupportedVersion,
			contains: []string{"v2", "upgrade the agent"}},
		{name: "version 10", in: join(p, "v10", testCA, testID, testSecret), want: ErrUnsupportedVersion,
			contains: []string{"v10"}},
		{name: "version 0", in: join(p, "v0", testCA, testID, testSecret), want: ErrUnsupportedVersion,
			contains: []string{"v0"}},
		{name: "version only", in: join(p, v), want: ErrMalformed},
		{name: "missing id", in: join(p, v, testCA, testSecret), want: ErrMalformed},
		{name: "missing CA", in: join(p, v, testID, testSecret), want: ErrMalformed},
		{name: "extra part", in: join(p, v, testCA, testID, testSecret, "x"), want: ErrMalformed},
		{name: "trailing dot", in: testToken + ".", want: ErrMalformed},
		{name: "doubled dot", in: join(p, v, testCA, "", testID, testSecret), want: ErrMalformed},
		{name: "empty CA", in: join(p, v, "", testID, testSecret), want: ErrBadCAHash},
		{name: "short CA", in: join(p, v, testCA[:63], testID, testSecret), want: ErrBadCAHash,
			contains: []string{"63"}},
		{name: "long CA", in: join(p, v, testCA+"0", testID, testSecret), want: ErrBadCAHash},
		{name: "upper-case CA", in: join(p, v, strings.ToUpper(testCA), testID, testSecret), want: ErrBadCAHash},
		{name: "non-hex CA", in: join(p, v, "g"+testCA[1:], testID, testSecret), want: ErrBadCAHash},
		{name: "secret where CA goes", in: join(p, v, testSecret, testID, testCA), want: ErrBadCAHash},
		{name: "64-char secret-like CA", in: join(p, v, testSecret+testSecret, testID, testSecret), want: ErrBadCAHash},
		{name: "empty id", in: join(p, v, testCA, "", testSecret), want: ErrBadID},
		{name: "short id", in: join(p, v, testCA, testID[:7], testSecret), want: ErrBadID},
		{name: "long id", in: join(p, v, testCA, testID+"a", testSecret), want: ErrBadID},
		{name: "upper-case id", in: join(p, v, testCA, strings.ToUpper(testID), testSecret), want: ErrBadID},
		{name: "id with 1", in: join(p, v, testCA, "q7m2xk41", testSecret), want: ErrBadID},
		{name: "id with 8", in: join(p, v, testCA, "q7m2xk48", testSecret), want: ErrBadID},
		{name: "id with padding", in: join(p, v, testCA, "q7m2xk4=", testSecret), want: ErrBadID},
		{name: "secret where id goes", in: join(p, v, testCA, testSecret, testID), want: ErrBadID},
		{name: "empty secret", in: join(p, v, testCA, testID, ""), want: ErrBadSecret},
		{name: "short secret", in: join(p, v, testCA, testID, testSecret[:31]), want: ErrBadSecret,
			secret: testSecret[:31], contains: []string{"31"}},
		{name: "long secret", in: join(p, v, testCA, testID, testSecret+"a"), want: ErrBadSecret,
			secret: testSecret + "a"},
		{name: "upper-case secret", in: join(p, v, testCA, testID, strings.ToUpper(testSecret)), want: ErrBadSecret,
			secret: strings.ToUpper(testSecret)},
		{name: "secret with 0", in: join(p, v, testCA, testID, "0"+testSecret[1:]), want: ErrBadSecret,
			secret: "0" + testSecret[1:]},
		{name: "secret with padding", in: join(p, v, testCA, testID, testSecret[:31]+"="), want: ErrBadSecret,
			secret: testSecret[:31] + "="},
		{name: "secret with inner space", in: join(p, v, testCA, testID, testSecret[:16]+" "+testSecret[17:]), want: ErrBadSecret},
		{name: "secret broken by a newline", in: join(p, v, testCA, testID, testSecret[:16]+"\n"+testSecret[16:]), want: ErrBadSecret},
		{name: "secret with non-ASCII", in: join(p, v, testCA, testID, testSecret[:30]+"é"), want: ErrBadSecret},
		{name: "hex secret", in: join(p, v, testCA, testID, testCA[:32]), want: ErrBadSecret, secret: testCA[:32]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.in, tok)
			}
			if tok != (Token{}) {
				t.Errorf("Parse returned %+v with its error, want the zero Token", tok)
			}
			assertOnlySentinel(t, err, tt.want)
			secret := tt.secret
			if secret == "" {
				secret = testSecret
			}
			msg := err.Error()
			assertNoSecret(t, msg, secret)
			if !strings.HasPrefix(msg, "parse join token: ") {
				t.Errorf("message %q does not name the operation", msg)
			}
			for _, c := range tt.contains {
				if !strings.Contains(msg, c) {
					t.Errorf("message %q does not contain %q", msg, c)
				}
			}
		})
	}
}

func TestParseValid(t *testing.T) {
	tok, err := Parse(testToken)
	if err != nil {
		t.Fatal(err)
	}
	want := Token{CAHash: testCA, ID: testID, Secret: testSecret}
	if tok != want {
		t.Errorf("Parse = %+v, want %+v", tok, want)
	}
	if got := tok.String(); got != testToken {
		t.Errorf("String = %q, want %q", got, testToken)
	}
}

func TestParseTrimsWhitespace(t *testing.T) {
	for _, in := range []string{
		testToken + "\n",
		testToken + "\r\n",
		"  " + testToken + "  ",
		"\t" + testToken + "\n\n",
		"\u00a0" + testToken + "\u2003", // non-breaking and em spaces from rich text
	} {
		tok, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if tok.String() != testToken {
			t.Errorf("Parse(%q).String() = %q, want %q", in, tok.String(), testToken)
		}
	}
}

func TestNewRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		tok, err := New(testCA)
		if err != nil {
			t.Fatal(err)
		}
		if tok.CAHash != testCA || len(tok.ID) != idLen || len(tok.Secret) != secretLen {
			t.Fatalf("New = %+v: wrong CA hash or part lengths", tok)
		}
		s := tok.String()
		if !strings.HasPrefix(s, "drover-join.v1.") {
			t.Fatalf("String = %q, want the drover-join.v1. prefix", s)
		}
		got, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(New().String()): %v", err)
		}
		if got != tok {
			t.Fatalf("round trip: got %+v, want %+v", got, tok)
		}
		if seen[tok.ID] || seen[tok.Secret] {
			t.Fatalf("New repeated an id or secret: %+v", tok)
		}
		seen[tok.ID], seen[tok.Secret] = true, true
	}
}

func TestNewRejectsBadCAHash(t *testing.T) {
	for _, h := range []string{
		"",
		testCA[:63],
		testCA + "0",
		strings.ToUpper(testCA),
		"z" + testCA[1:],
		" " + testCA[1:],
	} {
		tok, err := New(h)
		if !errors.Is(err, ErrBadCAHash) {
			t.Errorf("New(%q) = %+v, %v; want ErrBadCAHash", h, tok, err)
		}
		if tok != (Token{}) {
			t.Errorf("New(%q) returned %+v with its error, want the zero Token", h, tok)
		}
	}
}

func TestRedacted(t *testing.T) {
	tok := Token{CAHash: testCA, ID: testID, Secret: testSecret}
	want := "drover-join.v1." + testCA + "." + testID + ".****"
	if got := tok.Redacted(); got != want {
		t.Errorf("Redacted = %q, want %q", got, want)
	}
	assertNoSecret(t, tok.Redacted(), testSecret)

	// A Token handed to slog by mistake logs redacted.
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	logger.Info("enrolling", "token", tok)
	logger.Info("enrolling", slog.Any("token", tok))
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("enrolling", "token", tok)
	assertNoSecret(t, buf.String(), testSecret)
	if !strings.Contains(buf.String(), testID) {
		t.Errorf("log %q does not name the token id", buf.String())
	}
}

func TestSecretHash(t *testing.T) {
	tok := Token{CAHash: testCA, ID: testID, Secret: testSecret}
	want := sha256.Sum256([]byte(testSecret))
	if got := tok.SecretHash(); got != want {
		t.Errorf("SecretHash = %x, want %x", got, want)
	}
	for range 3 {
		if got := tok.SecretHash(); got != want {
			t.Fatalf("SecretHash changed between calls: %x, then %x", want, got)
		}
	}
	parsed, err := Parse(testToken)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.SecretHash() != want {
		t.Error("SecretHash differs after a round trip through the string form")
	}
	other := tok
	other.CAHash, other.ID = strings.Repeat("0", 64), "aaaaaaaa"
	if other.SecretHash() != want {
		t.Error("SecretHash depends on more than the secret")
	}
	other.Secret = strings.Repeat("a", 32)
	if other.SecretHash() == want {
		t.Error("different secrets hash the same")
	}
}

// makeCA returns the DER encoding of a fresh self-signed CA certificate.
func makeCA(t *testing.T, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func TestVerifyCA(t *testing.T) {
	ours, theirs := makeCA(t, "drover cluster CA"), makeCA(t, "impostor CA")
	tok, err := New(fingerprint(ours))
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyCA(tok, ours); err != nil {
		t.Errorf("VerifyCA with the pinned CA: %v", err)
	}

	err = VerifyCA(tok, theirs)
	if !errors.Is(err, ErrCAMismatch) {
		t.Fatalf("VerifyCA with another CA = %v, want ErrCAMismatch", err)
	}
	msg := err.Error()
	for _, want := range []string{fingerprint(ours)[:12], fingerprint(theirs)[:12], "refused to send"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
	if strings.Contains(msg, fingerprint(ours)[:13]) || strings.Contains(msg, fingerprint(theirs)[:13]) {
		t.Errorf("message %q shows more than 12 characters of a fingerprint", msg)
	}
	assertNoSecret(t, msg, tok.Secret)

	if err := VerifyCA(tok, nil); !errors.Is(err, ErrCAMismatch) {
		t.Errorf("VerifyCA with no certificate = %v, want ErrCAMismatch", err)
	}
	if err := VerifyCA(tok, ours[:len(ours)-1]); !errors.Is(err, ErrCAMismatch) {
		t.Errorf("VerifyCA with a truncated certificate = %v, want ErrCAMismatch", err)
	}

	// An upper-case pin is not accepted: the format is lower-case only.
	upper := tok
	upper.CAHash = strings.ToUpper(tok.CAHash)
	if err := VerifyCA(upper, ours); !errors.Is(err, ErrCAMismatch) {
		t.Errorf("VerifyCA with an upper-case pin = %v, want ErrCAMismatch", err)
	}

	// A hand-built token whose CAHash is not a hash never matches, and the
	// message does not echo what was there.
	bad := tok
	bad.CAHash = tok.Secret
	err = VerifyCA(bad, ours)
	if !errors.Is(err, ErrCAMismatch) || !errors.Is(err, ErrBadCAHash) {
		t.Errorf("VerifyCA with a malformed pin = %v, want ErrCAMismatch and ErrBadCAHash", err)
	}
	assertNoSecret(t, err.Error(), tok.Secret)
	bad.CAHash = ""
	if err := VerifyCA(bad, ours); !errors.Is(err, ErrCAMismatch) {
		t.Errorf("VerifyCA with an empty pin = %v, want ErrCAMismatch", err)
	}
}

// TestPKIFingerprint checks that a token made from pki.CA.Fingerprint pins
// that CA, so the two packages agree on what the hash is.
func TestPKIFingerprint(t *testing.T) {
	ca, err := pki.NewCA("drover test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := New(ca.Fingerprint())
	if err != nil {
		t.Fatalf("New(pki fingerprint): %v", err)
	}
	if err := VerifyCA(tok, ca.Certificate().Raw); err != nil {
		t.Errorf("VerifyCA(token for pki CA, its certificate): %v", err)
	}
}

// longRuns returns the maximal runs of [a-z0-9] in s at least n bytes long.
func longRuns(s string, n int) []string {
	var runs []string
	start := -1
	for i := 0; i <= len(s); i++ {
		in := i < len(s) && ('a' <= s[i] && s[i] <= 'z' || '0' <= s[i] && s[i] <= '9')
		switch {
		case in && start < 0:
			start = i
		case !in && start >= 0:
			if i-start >= n {
				runs = append(runs, s[start:i])
			}
			start = -1
		}
	}
	return runs
}

// FuzzParse checks that Parse never panics; that what it accepts is exactly
// what String gives back, around surrounding whitespace; and that what it
// rejects wraps exactly one sentinel and echoes no secret-length run of
// token characters from the input.
func FuzzParse(f *testing.F) {
	f.Add(testToken)
	f.Add(" " + testToken + "\n")
	f.Add(join("drover-join", "v2", testCA, testID, testSecret))
	f.Add(join("drover-join", "v1", testCA, testID))
	f.Add(join("drover-join", "v1", testCA, testID, testSecret, ""))
	f.Add(join("drover-join", testSecret))
	f.Add(join("drover-join", "v1", testSecret, testID, testCA))
	f.Add("drover-join.")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		tok, err := Parse(in)
		if err != nil {
			if tok != (Token{}) {
				t.Fatalf("Parse returned %+v with its error", tok)
			}
			n := 0
			for _, s := range parseSentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("Parse error %v wraps %d sentinels, want 1", err, n)
			}
			// Messages contain no run of [a-z0-9] of 12 or more, so any
			// such run from the input would be an echo.
			for _, run := range longRuns(in, 12) {
				if strings.Contains(err.Error(), run) {
					t.Fatalf("Parse error %q echoes %q from the input", err, run)
				}
			}
			return
		}
		if got, want := tok.String(), strings.TrimSpace(in); got != want {
			t.Fatalf("Parse(%q).String() = %q, want %q", in, got, want)
		}
		again, err := Parse(tok.String())
		if err != nil || again != tok {
			t.Fatalf("Parse(String()) = %+v, %v; want %+v", again, err, tok)
		}
		if r := tok.Redacted(); !strings.HasSuffix(r, ".****") || strings.HasSuffix(r, tok.Secret) {
			t.Fatalf("Redacted = %q, want the secret replaced by ****", r)
		}
	})
}
