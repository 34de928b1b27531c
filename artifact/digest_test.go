package artifact

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDigestKnownValue(t *testing.T) {
	// FIPS 180-2's example: SHA-256("abc").
	const want = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := Sum([]byte("abc")).String(); got != want {
		t.Fatalf("Sum(abc) = %s, want %s", got, want)
	}
	h := NewHasher()
	h.Write([]byte("a"))
	h.Write([]byte("bc"))
	d, err := DigestFromBytes(h.Sum(nil))
	if err != nil || d.String() != want {
		t.Fatalf("hasher: %s, %v", d, err)
	}
}

func TestParseDigest(t *testing.T) {
	good := Sum([]byte("x"))
	if got, err := ParseDigest(good.String()); err != nil || got != good {
		t.Fatalf("round trip: %s, %v", got, err)
	}
	hex := strings.TrimPrefix(good.String(), "sha256:")
	for _, tt := range []struct {
		in, wantErr string
	}{
		{hex, "no algorithm prefix"},
		{"blake3:" + hex, `algorithm "blake3" is not supported`},
		{"sha256:" + hex[:63], "63 hex digits, want 64"},
		{"sha256:" + hex + "00", "66 hex digits, want 64"},
		{"sha256:" + strings.ToUpper(hex), "not a lowercase hex digit"},
		{"sha256:" + hex[:10] + "g" + hex[11:], `'g' at position 17`},
		{"", "no algorithm prefix"},
	} {
		_, err := ParseDigest(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ParseDigest(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestDigestFromBytes(t *testing.T) {
	if _, err := DigestFromBytes(make([]byte, 31)); err == nil {
		t.Error("31 bytes accepted")
	}
	if d, err := DigestFromBytes(make([]byte, 32)); err != nil || !d.IsZero() {
		t.Errorf("32 zero bytes: %s, %v", d, err)
	}
}

func TestDigestJSON(t *testing.T) {
	in := struct{ D Digest }{Sum([]byte("y"))}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), in.D.String()) {
		t.Fatalf("JSON %s does not hold %s", b, in.D)
	}
	var out struct{ D Digest }
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Fatalf("round trip: %v, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"D":"sha256:00"}`), &out); err == nil {
		t.Fatal("short digest accepted")
	}
}
