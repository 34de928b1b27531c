package cli

import (
	"bytes"
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestTokenCreate(t *testing.T) {
	t.Parallel()
	h := newHarness(t)

	r := h.run("token", "create", "--max-uses", "3", "--site", "edge-eu", "--label", "class=jetson",
		"--label", "pool=edge", "--description", "EU edge boxes")
	if r.code != 0 {
		t.Fatalf("token create: %+v", r)
	}
	tok := "drover-join.v1." + testCAHash + ".tok1.s3cr3ttok1"
	// The token alone on stdout, so TOKEN=$(drover token create) works.
	if r.stdout != tok+"\n" {
		t.Errorf("stdout = %q, want the token string alone on a line", r.stdout)
	}
	if line1, _, _ := strings.Cut(r.stdout, "\n"); line1 != tok {
		t.Errorf("stdout line 1 = %q", line1)
	}
	wantContains(t, r.stderr,
		"Created join token tok1 (index 1). The token string is shown only this once.\n",
		"  Expires:  2026-03-01T13:00:00Z (in 1h)\n",
		"  Uses:     at most 3\n",
		"  Site:     edge-eu\n",
		"  Labels:   class=jetson, pool=edge\n",
		"  drover-agent --server "+strings.TrimPrefix(h.srv.URL, "https://")+" --token <token>\n")
	if strings.Contains(r.stderr, "s3cr3t") {
		t.Errorf("stderr repeats the secret:\n%s", r.stderr)
	}
	req := h.fake.lastCreateToken
	if req.GetTtl().AsDuration() != time.Hour || req.GetMaxUses() != 3 || req.GetSite() != "edge-eu" ||
		req.GetDescription() != "EU edge boxes" || !maps.Equal(req.GetLabels(), map[string]string{"class": "jetson", "pool": "edge"}) {
		t.Errorf("CreateToken request = %v", req)
	}

	// --ttl 0 is sent as 0s, which the server reads as "never expires".
	r = h.run("token", "create", "--ttl", "0")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "drover-join.v1.") {
		t.Fatalf("token create --ttl 0: %+v", r)
	}
	if ttl := h.fake.lastCreateToken.GetTtl(); ttl == nil || ttl.AsDuration() != 0 {
		t.Errorf("--ttl 0 sent ttl %v, want 0s", ttl)
	}
	wantContains(t, r.stderr, "  Expires:  never\n", "  Uses:     no limit\n")

	// JSON: the whole response, token string included, and nothing on stderr.
	r = h.run("token", "create", "--ttl", "24h", "--max-uses", "1", "-o", "json")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("token create -o json: %+v", r)
	}
	var resp droverv1.CreateTokenResponse
	if err := protojson.Unmarshal([]byte(r.stdout), &resp); err != nil {
		t.Fatalf("not a CreateTokenResponse: %v\n%s", err, r.stdout)
	}
	if resp.GetTokenString() == "" || resp.GetToken().GetId() != "tok3" || resp.GetMeta().GetIndex() != 3 ||
		!resp.GetToken().GetExpireTime().AsTime().Equal(testNow.Add(24*time.Hour)) {
		t.Errorf("token create -o json = %v", &resp)
	}
}

func TestTokenList(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.ok("token", "create", "--description", "lab", "--label", "gpu=a100", "--site", "lab-2")
	h.ok("token", "create", "--ttl", "0", "--max-uses", "2")
	h.ok("token", "create", "--ttl", "72h")
	h.ok("token", "create", "--max-uses", "1")
	h.ok("token", "create")
	wantContains(t, h.ok("token", "revoke", "tok3"), "Revoked join token tok3 (index 6); nodes that enrolled with it are unaffected.")

	h.fake.mu.Lock()
	h.fake.tokens[1].Uses = 1                                                // 1/2, never expires
	h.fake.tokens[3].Uses = 1                                                // used up
	h.fake.tokens[4].ExpireTime = timestamppb.New(testNow.Add(-time.Minute)) // expired
	h.fake.mu.Unlock()

	got := h.ok("token", "ls")
	want := `ID    DESCRIPTION  SITE   LABELS    USES  EXPIRES  STATUS   CREATED
tok1  lab          lab-2  gpu=a100  0/∞   in 1h    active   2026-03-01T12:00:00Z
tok2  -            -      -         1/2   never    active   2026-03-01T12:00:00Z
tok3  -            -      -         0/∞   in 3d    revoked  2026-03-01T12:00:00Z
tok4  -            -      -         1/1   in 1h    used up  2026-03-01T12:00:00Z
tok5  -            -      -         0/∞   expired  expired  2026-03-01T12:00:00Z
`
	if got != want {
		t.Errorf("token ls:\n%s\nwant:\n%s", got, want)
	}

	var list droverv1.ListTokensResponse
	if err := protojson.Unmarshal([]byte(h.ok("token", "ls", "-o", "json")), &list); err != nil || len(list.GetTokens()) != 5 {
		t.Errorf("token ls -o json: %v, %v", err, &list)
	}
	h.ok("token", "ls", "--index", "6", "--wait", "1m")
	if q := h.fake.lastQuery; q.GetMinIndex() != 6 || q.GetMaxWait().AsDuration() != time.Minute {
		t.Errorf("token ls query options = %v", q)
	}

	r := h.run("token", "revoke", "tok9")
	if want := "Error: join token \"tok9\" not found\nHint: list join tokens with `drover token ls`\n"; r.code != exitError || r.stderr != want {
		t.Errorf("revoke of an unknown token: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
}

func TestTokenStatus(t *testing.T) {
	t.Parallel()
	at := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(testNow.Add(d)) }
	tests := []struct {
		tok             *droverv1.JoinToken
		status, expires string
	}{
		{&droverv1.JoinToken{}, "active", "never"},
		{&droverv1.JoinToken{ExpireTime: at(90 * time.Second)}, "active", "in 1m"},
		{&droverv1.JoinToken{ExpireTime: at(0)}, "expired", "expired"}, // usable strictly before
		{&droverv1.JoinToken{MaxUses: 2, Uses: 2}, "used up", "never"},
		{&droverv1.JoinToken{MaxUses: 2, Uses: 2, ExpireTime: at(-time.Hour)}, "expired", "expired"},
		{&droverv1.JoinToken{Revoked: true, ExpireTime: at(-time.Hour)}, "revoked", "expired"},
	}
	for _, tt := range tests {
		if s, e := tokenStatus(tt.tok, testNow), tokenExpires(tt.tok, testNow); s != tt.status || e != tt.expires {
			t.Errorf("%v: status %q, expires %q; want %q, %q", tt.tok, s, e, tt.status, tt.expires)
		}
	}
}

func TestTokenCreateHelp(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	if code := Main(context.Background(), []string{"token", "create", "--help"}, strings.NewReader(""), &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	wantContains(t, stdout.String(), "0 means it never expires", "--ttl duration", "(default 1h0m0s)", "Examples:")
}
