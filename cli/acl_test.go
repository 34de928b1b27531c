package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"github.com/droverhq/drover/proto/drover/v1/droverv1connect"
)

// newACLHarness is a harness whose cluster is bootstrapped, with the
// management token's secret in the environment.
func newACLHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	h.ok("acl", "bootstrap")
	h.env[envToken] = "s3cr3t-5678"
	return h
}

// writeFile writes a file in the harness's directory and returns its path.
func (h *harness) writeFile(name, content string) string {
	h.t.Helper()
	path := filepath.Join(h.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// sent reports how many requests of a procedure reached the server.
func (h *harness) sent(procedure string) int {
	n := 0
	for _, r := range h.fake.recordedRequests() {
		if r.path == procedure {
			n++
		}
	}
	return n
}

func TestACLTokenCreate(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)

	r := h.run("acl", "token", "create", "--name", "alice", "--policy", "read-only", "--ttl", "24h", "--description", "Alice, on call")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("acl token create: %+v", r)
	}
	secret := "secret-2"
	want := `Created token alice (index 2). The secret is shown only this once; store it safely.

Accessor ID:  1b2c3d4f-5e1f-4c0d-9a3b-000000000002
Secret ID:    secret-2
Policies:     read-only
Expires:      2026-03-02T12:00:00Z (in 24h)

Use it in this shell with:

  export DROVER_TOKEN=secret-2
`
	if r.stdout != want {
		t.Errorf("acl token create:\n%s\nwant:\n%s", r.stdout, want)
	}
	wantReq := &droverv1.CreateACLTokenRequest{Name: "alice", Description: "Alice, on call", Policies: []string{"read-only"}}
	got := proto.Clone(h.fake.acl.lastCreate).(*droverv1.CreateACLTokenRequest)
	if got.GetTtl().AsDuration() != 24*time.Hour {
		t.Errorf("ttl sent = %v, want 24h", got.GetTtl())
	}
	got.Ttl = nil
	if !proto.Equal(got, wantReq) {
		t.Errorf("CreateToken request = %v, want %v", got, wantReq)
	}
	// The secret is never shown again.
	for _, args := range [][]string{{"acl", "token", "ls"}, {"acl", "token", "show", "alice"}, {"acl", "token", "ls", "-o", "json"}} {
		if out := h.ok(args...); strings.Contains(out, secret) {
			t.Errorf("drover %s shows the secret:\n%s", strings.Join(args, " "), out)
		}
	}

	// Policies repeat or take commas; without --ttl the token never
	// expires, and no ttl is sent.
	h.ok("acl", "token", "create", "--name", "bob", "--policy", "read-only,management")
	if req := h.fake.acl.lastCreate; !slices.Equal(req.GetPolicies(), []string{"read-only", "management"}) || req.GetTtl() != nil {
		t.Errorf("CreateToken request = %v", req)
	}

	// JSON: the whole response, secret included.
	r = h.run("acl", "token", "create", "--name", "ci", "--policy", "read-only", "-o", "json")
	var resp droverv1.CreateACLTokenResponse
	if r.code != 0 || protojson.Unmarshal([]byte(r.stdout), &resp) != nil || resp.GetSecretId() != "secret-4" ||
		resp.GetToken().GetName() != "ci" || resp.GetMeta().GetIndex() != 4 {
		t.Errorf("acl token create -o json: %+v", r)
	}

	// Mistakes in the command line never reach the server.
	before := h.sent(droverv1connect.ACLServiceCreateTokenProcedure)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--policy", "read-only"}, "missing --name"},
		{[]string{"--name", "x"}, "missing --policy: a token without policies may do nothing"},
		{[]string{"--name", "x", "--policy", "read-only", "--ttl", "-1h"}, "--ttl -1h0m0s: must not be negative"},
	} {
		r := h.run(append([]string{"acl", "token", "create"}, tt.args...)...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("acl token create %v: exit %d, stderr %q; want usage error %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
	if n := h.sent(droverv1connect.ACLServiceCreateTokenProcedure); n != before {
		t.Errorf("%d CreateToken requests sent for bad command lines", n-before)
	}

	// The server's refusal, with its hint.
	r = h.run("acl", "token", "create", "--name", "x", "--policy", "nope")
	if want := "Error: policy \"nope\" not found\nHint: list policies with `drover acl policy ls`\n"; r.code != exitError || r.stderr != want {
		t.Errorf("unknown policy: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}
}

func TestACLTokenList(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)
	h.ok("acl", "token", "create", "--name", "alice", "--policy", "management")
	h.ok("acl", "token", "create", "--name", "ci-vision", "--policy", "read-only", "--ttl", "72h")
	h.env[envToken] = "secret-2" // alice creates the next two
	h.ok("acl", "token", "create", "--name", "bob", "--policy", "read-only", "--ttl", "1h")
	h.ok("acl", "token", "create", "--name", "carol", "--policy", "read-only,management")
	h.env[envToken] = "s3cr3t-5678"
	h.fake.mu.Lock()
	h.fake.acl.tokens[3].ExpireTime = timestamppb.New(testNow) // bob: usable strictly before
	h.fake.mu.Unlock()

	want := `NAME       ACCESSOR                              POLICIES               EXPIRES  CREATED               CREATED BY
-          acc-1234                              management             never    2026-03-01T10:00:00Z  bootstrap
alice      1b2c3d4f-5e1f-4c0d-9a3b-000000000002  management             never    2026-03-01T12:00:00Z  acc-1234
ci-vision  1b2c3d50-5e1f-4c0d-9a3b-000000000003  read-only              in 3d    2026-03-01T12:00:00Z  acc-1234
bob        1b2c3d51-5e1f-4c0d-9a3b-000000000004  read-only              expired  2026-03-01T12:00:00Z  alice
carol      1b2c3d52-5e1f-4c0d-9a3b-000000000005  read-only, management  never    2026-03-01T12:00:00Z  alice
`
	if got := h.ok("acl", "token", "ls"); got != want {
		t.Errorf("acl token ls:\n%s\nwant:\n%s", got, want)
	}

	// A creator that is gone shows as the start of its accessor ID.
	h.ok("acl", "token", "revoke", "alice")
	wantContains(t, h.ok("acl", "token", "ls"), "carol      1b2c3d52-5e1f-4c0d-9a3b-000000000005  read-only, management  never    2026-03-01T12:00:00Z  1b2c3d4f…\n")

	var list droverv1.ListACLTokensResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "token", "ls", "-o", "json")), &list); err != nil || len(list.GetTokens()) != 4 {
		t.Errorf("acl token ls -o json: %v, %v", err, &list)
	}
	h.ok("acl", "token", "ls", "--index", "7", "--wait", "1m")
	if q := h.fake.lastQuery; q.GetMinIndex() != 7 || q.GetMaxWait().AsDuration() != time.Minute {
		t.Errorf("acl token ls query options = %v", q)
	}
}

func TestACLTokenShowAndSelf(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)
	h.ok("acl", "policy", "apply", "ci-vision", "-f", h.writeFile("ci.yaml", testPolicyFile))
	h.ok("acl", "token", "create", "--name", "ci-vision", "--policy", "ci-vision", "--ttl", "2160h", "--description", "CI")

	want := `Name:            ci-vision
Accessor ID:     1b2c3d4f-5e1f-4c0d-9a3b-000000000002
Description:     CI
Policies:        ci-vision
Expires:         2026-05-30T12:00:00Z (in 90d)
Created:         2026-03-01T12:00:00Z (0s ago) by token acc-1234
Secret rotated:  never
Index:           created 3, modified 3
`
	if got := h.ok("acl", "token", "show", "ci-vision"); got != want {
		t.Errorf("acl token show:\n%s\nwant:\n%s", got, want)
	}
	h.ok("acl", "token", "show", "1b2c3d4f-5e1f-4c0d-9a3b-000000000002", "--stale")
	if id := h.fake.acl.lastGet.GetId(); id != "1b2c3d4f-5e1f-4c0d-9a3b-000000000002" {
		t.Errorf("GetToken id = %q", id)
	}
	r := h.run("acl", "token", "show", "nobody")
	if want := "Error: token \"nobody\" not found\nHint: list tokens with `drover acl token ls`\n"; r.code != exitError || r.stderr != want {
		t.Errorf("show of an unknown token: exit %d, stderr %q; want %q", r.code, r.stderr, want)
	}

	// self is the token the command line sends.
	wantContains(t, h.ok("acl", "token", "self"), "Accessor ID:     acc-1234\n", "by `drover acl bootstrap`",
		"\nIt has the management policy: it may do everything.\n")
	h.env[envToken] = "secret-2"
	out := h.ok("acl", "token", "self")
	wantContains(t, out, "Name:            ci-vision\n", "Policies:        ci-vision\n", "`drover acl policy show POLICY`")
	var resp droverv1.GetACLTokenResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "token", "self", "-o", "json")), &resp); err != nil || resp.GetToken().GetName() != "ci-vision" {
		t.Errorf("acl token self -o json: %v, %v", err, &resp)
	}

	// Without a token there is nothing to ask about.
	delete(h.env, envToken)
	before := h.sent(droverv1connect.ACLServiceGetTokenSelfProcedure)
	r = h.run("acl", "token", "self")
	if r.code != exitError || !strings.Contains(r.stderr, "no operator token is set") || !strings.Contains(r.stderr, "Hint: set DROVER_TOKEN") {
		t.Errorf("acl token self without a token: %+v", r)
	}
	if h.sent(droverv1connect.ACLServiceGetTokenSelfProcedure) != before {
		t.Error("acl token self without a token asked the server")
	}
}

func TestACLTokenRotateAndRevoke(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)
	h.ok("acl", "token", "create", "--name", "alice", "--policy", "read-only")

	// Rotating the bootstrap token, by accessor ID: the new secret, once,
	// and the old one stops working.
	r := h.run("acl", "token", "rotate", "acc-1234")
	want := `Rotated the secret of token acc-1234 (index 3). The old secret no longer works;
the new one is shown only this once; store it safely.

Accessor ID:  acc-1234
Secret ID:    rotated-1

Use it in this shell with:

  export DROVER_TOKEN=rotated-1
`
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Errorf("acl token rotate: %+v\nwant stdout:\n%s", r, want)
	}
	if r := h.run("acl", "token", "self"); r.code != exitError || !strings.Contains(r.stderr, "token not found") {
		t.Errorf("old secret after rotation: %+v", r)
	}
	h.env[envToken] = "rotated-1"
	wantContains(t, h.ok("acl", "token", "show", "acc-1234"), "Secret rotated:  2026-03-01T12:00:00Z (0s ago)\n")

	var rot droverv1.RotateACLTokenResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "token", "rotate", "alice", "-o", "json")), &rot); err != nil ||
		rot.GetSecretId() != "rotated-2" || rot.GetToken().GetName() != "alice" {
		t.Errorf("acl token rotate -o json: %v, %v", err, &rot)
	}

	if got, want := h.ok("acl", "token", "revoke", "alice"), "Revoked token alice (index 5); its secret no longer works.\n"; got != want {
		t.Errorf("acl token revoke = %q, want %q", got, want)
	}
	if out := h.ok("acl", "token", "ls"); strings.Contains(out, "alice") {
		t.Errorf("revoked token still listed:\n%s", out)
	}
	if r := h.run("acl", "token", "revoke", "alice"); r.code != exitError || !strings.Contains(r.stderr, `token "alice" not found`) {
		t.Errorf("second revoke: %+v", r)
	}
	if want := []string{"alice", "alice"}; !slices.Equal(h.fake.acl.revoked, want) {
		t.Errorf("RevokeToken ids = %q, want %q", h.fake.acl.revoked, want)
	}
}

func TestACLPolicyApply(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)
	path := h.writeFile("ci.yaml", testPolicyFile)

	got := h.ok("acl", "policy", "apply", "ci-vision", "-f", path)
	if want := "Created policy ci-vision with 3 rules (index 2). Give it to a token with `drover acl token create --policy ci-vision`.\n"; got != want {
		t.Errorf("acl policy apply = %q, want %q", got, want)
	}
	want, err := parsePolicyFile("ci-vision", []byte(testPolicyFile))
	if err != nil {
		t.Fatal(err)
	}
	if sent := h.fake.acl.lastApply.GetPolicy(); !proto.Equal(sent, want) {
		t.Errorf("ApplyPolicy sent\n%v\nwant\n%v", sent, want)
	}

	// Again, from stdin: replaced.
	h.stdin = "description: Read the audit log\nrules:\n  - {resource: audit, access: read}\n"
	got = h.ok("acl", "policy", "apply", "ci-vision", "-f", "-")
	if want := "Replaced policy ci-vision: 1 rule now (index 3). Tokens with it have the new rules.\n"; got != want {
		t.Errorf("acl policy apply again = %q, want %q", got, want)
	}
	if d := h.fake.acl.lastApply.GetPolicy().GetDescription(); d != "Read the audit log" {
		t.Errorf("description sent = %q", d)
	}
	h.stdin = ""

	var resp droverv1.ApplyACLPolicyResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "policy", "apply", "ops", "-f", path, "-o", "json")), &resp); err != nil ||
		resp.GetPolicy().GetName() != "ops" || resp.GetReplaced() || len(resp.GetPolicy().GetRules()) != 3 {
		t.Errorf("acl policy apply -o json: %v, %v", err, &resp)
	}

	// A bad file is refused here, with its line, and nothing is sent.
	before := h.sent(droverv1connect.ACLServiceApplyPolicyProcedure)
	bad := h.writeFile("bad.yaml", "rules:\n  - resource: model\n    site: berlin\n    access: write\n")
	r := h.run("acl", "policy", "apply", "ci-vision", "-f", bad)
	if r.code != exitError || !strings.HasPrefix(r.stderr, "Error: policy file "+bad+": line 2: ") ||
		!strings.Contains(r.stderr, "model objects belong to no site") ||
		!strings.Contains(r.stderr, "Hint: `drover acl policy apply --help` describes the file\n") {
		t.Errorf("apply of a bad file: %+v", r)
	}
	h.stdin = "rules:\n  - resource: model\n    acces: write\n"
	if r := h.run("acl", "policy", "apply", "ci-vision", "-f", "-"); r.code != exitError ||
		!strings.Contains(r.stderr, `Error: policy file <stdin>: line 3: unknown key "acces" in a rule`) {
		t.Errorf("apply of a bad file from stdin: %+v", r)
	}
	h.stdin = ""
	if r := h.run("acl", "policy", "apply", "ci-vision"); r.code != exitUsage || !strings.Contains(r.stderr, "missing -f FILE") {
		t.Errorf("apply without -f: %+v", r)
	}
	if r := h.run("acl", "policy", "apply", "ci-vision", "-f", filepath.Join(h.dir, "nope.yaml")); r.code != exitError ||
		!strings.Contains(r.stderr, "read policy file: open ") {
		t.Errorf("apply of a missing file: %+v", r)
	}
	if r := h.run("acl", "policy", "apply", "management", "-f", path); r.code != exitError ||
		!strings.Contains(r.stderr, `Error: "management" is a built-in policy: every cluster has it, and it cannot be changed`) {
		t.Errorf("apply over a built-in policy: %+v", r)
	}
	if n := h.sent(droverv1connect.ACLServiceApplyPolicyProcedure); n != before {
		t.Errorf("%d ApplyPolicy requests sent for bad files", n-before)
	}
}

func TestACLPolicyListShowRemove(t *testing.T) {
	t.Parallel()
	h := newACLHarness(t)
	h.ok("acl", "policy", "apply", "vision", "-f", h.writeFile("ci.yaml", testPolicyFile))
	h.stdin = "rules:\n  - {resource: audit, access: read}\n"
	h.ok("acl", "policy", "apply", "auditor", "-f", "-")
	h.stdin = ""

	want := `NAME        BUILT-IN  RULES  DESCRIPTION
management  yes       7      Everything, including what later versions add
read-only   yes       7      Read everything; change nothing
auditor     no        1      -
vision      no        3      Push the vision team's models from CI
`
	if got := h.ok("acl", "policy", "ls"); got != want {
		t.Errorf("acl policy ls:\n%s\nwant:\n%s", got, want)
	}
	var list droverv1.ListACLPoliciesResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "policy", "ls", "-o", "json")), &list); err != nil || len(list.GetPolicies()) != 4 {
		t.Errorf("acl policy ls -o json: %v, %v", err, &list)
	}

	want = `Name:         vision
Description:  Push the vision team's models from CI
Created:      2026-03-01T12:00:00Z (0s ago)
Modified:     2026-03-01T12:00:00Z (0s ago)
Index:        created 2, modified 2

RESOURCE  ACCESS  MATCHES
model     write   prefix vision-
model     deny    name vision-prod
node      write   site berlin, labels role=edge
`
	if got := h.ok("acl", "policy", "show", "vision"); got != want {
		t.Errorf("acl policy show:\n%s\nwant:\n%s", got, want)
	}
	wantContains(t, h.ok("acl", "policy", "show", "management"), "Built-in:     yes",
		"It grants everything, including what later versions of Drover add", "operator    write   all\n")
	var show droverv1.GetACLPolicyResponse
	if err := protojson.Unmarshal([]byte(h.ok("acl", "policy", "show", "vision", "-o", "json")), &show); err != nil ||
		show.GetPolicy().GetRules()[2].GetLabels()["role"] != "edge" {
		t.Errorf("acl policy show -o json: %v, %v", err, &show)
	}

	if got := h.ok("acl", "policy", "rm", "auditor"); got != "Removed policy auditor (index 4)\n" {
		t.Errorf("acl policy rm = %q", got)
	}
	r := h.run("acl", "policy", "rm", "read-only")
	if r.code != exitError || !strings.Contains(r.stderr, `"read-only" is a built-in policy`) {
		t.Errorf("rm of a built-in policy: %+v", r)
	}
	if r := h.run("acl", "policy", "rm", "auditor"); r.code != exitError || !strings.Contains(r.stderr, `policy "auditor" not found`) {
		t.Errorf("second rm: %+v", r)
	}
	if want := []string{"auditor", "auditor"}; !slices.Equal(h.fake.acl.deleted, want) {
		t.Errorf("DeletePolicy names = %q, want %q (built-in ones are refused before the call)", h.fake.acl.deleted, want)
	}
}

func TestAuditListActor(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	at := timestamppb.New(testNow)
	h.fake.mu.Lock()
	h.fake.events = []*droverv1.AuditEvent{
		{Index: 1, Time: at, Actor: "acc-1234", Action: "acl.bootstrap", Target: "acl", Result: "ok"},
		{Index: 2, Time: at, Actor: "1b2c3d4f-5e1f-4c0d-9a3b-000000000002", ActorName: "alice", Action: "model.create", Target: "model/resnet", Result: "ok"},
		{Index: 3, Time: at, Actor: "agent/gpu-01", Action: "node.register", Target: "node/gpu-01", Result: "ok"},
	}
	h.fake.mu.Unlock()
	want := `TIME                  INDEX  ACTOR              ACTION         TARGET        RESULT
2026-03-01T12:00:00Z  1      acc-1234           acl.bootstrap  acl           ok
2026-03-01T12:00:00Z  2      alice (1b2c3d4f…)  model.create   model/resnet  ok
2026-03-01T12:00:00Z  3      agent/gpu-01       node.register  node/gpu-01   ok
`
	if got := h.ok("audit", "ls"); got != want {
		t.Errorf("audit ls:\n%s\nwant:\n%s", got, want)
	}
	h.ok("audit", "ls", "--actor", "alice")
	if a := h.fake.lastAudit.GetActor(); a != "alice" {
		t.Errorf("audit ls --actor sent actor %q", a)
	}
	// JSON keeps the whole accessor ID and the name apart.
	var resp droverv1.ListAuditEventsResponse
	if err := protojson.Unmarshal([]byte(h.ok("audit", "ls", "-o", "json")), &resp); err != nil ||
		resp.GetEvents()[1].GetActor() != "1b2c3d4f-5e1f-4c0d-9a3b-000000000002" || resp.GetEvents()[1].GetActorName() != "alice" {
		t.Errorf("audit ls -o json: %v, %v", err, &resp)
	}
	// The operator token's secret keeps its flag.
	h.ok("audit", "ls", "--token", "s3cr3t")
	if hdr := h.fake.recordedRequests(); hdr[len(hdr)-1].header.Get("Authorization") != "Bearer s3cr3t" {
		t.Error("audit ls --token did not send the token")
	}
}
