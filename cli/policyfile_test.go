package cli

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	resModel = droverv1.ACLResource_ACL_RESOURCE_MODEL
	resNode  = droverv1.ACLResource_ACL_RESOURCE_NODE
	resAudit = droverv1.ACLResource_ACL_RESOURCE_AUDIT
	accRead  = droverv1.ACLAccess_ACL_ACCESS_READ
	accWrite = droverv1.ACLAccess_ACL_ACCESS_WRITE
	accDeny  = droverv1.ACLAccess_ACL_ACCESS_DENY
)

// testPolicyFile is the example of the help text.
const testPolicyFile = `description: Push the vision team's models from CI
rules:
  - resource: model        # model, deployment, node, join_token, telemetry, audit, operator
    prefix: vision-        # or name: exact-name
    access: write          # read, write (implies read) or deny (wins over any grant)
  - resource: model
    name: vision-prod
    access: deny
  - resource: node
    site: berlin
    labels: {role: edge}
    access: write
`

func TestParsePolicyFile(t *testing.T) {
	t.Parallel()
	p, err := parsePolicyFile("ci-vision", []byte(testPolicyFile))
	if err != nil {
		t.Fatal(err)
	}
	want := &droverv1.ACLPolicy{
		Name:        "ci-vision",
		Description: "Push the vision team's models from CI",
		Rules: []*droverv1.ACLRule{
			{Resource: resModel, Prefix: "vision-", Access: accWrite},
			{Resource: resModel, Name: "vision-prod", Access: accDeny},
			{Resource: resNode, Site: "berlin", Labels: map[string]string{"role": "edge"}, Access: accWrite},
		},
	}
	if !proto.Equal(p, want) {
		t.Errorf("parsed\n%v\nwant\n%v", p, want)
	}

	// A name: in the file is a check, not a source: it must be the
	// command's.
	named := "name: ci-vision\n" + testPolicyFile
	if p, err := parsePolicyFile("ci-vision", []byte(named)); err != nil || p.GetName() != "ci-vision" {
		t.Errorf("file naming the same policy: %v, %v", p, err)
	}
}

func TestParsePolicyFileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file string
		// want are the parts the message must have: the line, the key or
		// value at fault, and what to write instead.
		want []string
	}{
		{
			name: "unknown key in a rule",
			file: "rules:\n  - resource: model\n    prefx: vision-\n    access: write\n",
			want: []string{`line 3: unknown key "prefx" in a rule`, "resource, access, name, prefix, site and labels"},
		},
		{
			name: "unknown key at the top",
			file: "description: x\nrule:\n  - resource: model\n    access: read\n",
			want: []string{`line 2: unknown key "rule" in a policy file`, "name, description and rules"},
		},
		{
			name: "unknown resource",
			file: "rules:\n  - resource: models\n    access: read\n",
			want: []string{`line 2: unknown resource "models"`, "model, deployment, node, join_token, telemetry, audit, operator"},
		},
		{
			name: "bad access",
			file: "rules:\n  - resource: model\n    access: rw\n",
			want: []string{`line 3: unknown access "rw"`, "read, write or deny"},
		},
		{
			name: "every problem, each with its line",
			file: "rules:\n  - resource: models\n    access: read\n  - resource: node\n    acess: write\n",
			want: []string{"2 problems:", `line 2: unknown resource "models"`, `line 5: unknown key "acess" in a rule`},
		},
		{
			name: "site on a model",
			file: "rules:\n  - resource: audit\n    access: read\n  - resource: model\n    site: berlin\n    access: read\n",
			want: []string{"line 4:", "rule 2", "model objects belong to no site; remove site"},
		},
		{
			name: "name and prefix",
			file: "rules:\n  - resource: model\n    name: resnet\n    prefix: res\n    access: read\n",
			want: []string{"line 2:", "rule 1", "give name or prefix, not both"},
		},
		{
			name: "empty rules",
			file: "description: nothing\nrules: []\n",
			want: []string{"has no rules", "add at least one rule"},
		},
		{
			name: "empty file",
			file: "# only a comment\n",
			want: []string{"the file is empty"},
		},
		{
			name: "rule without resource or access",
			file: "rules:\n  - site: berlin\n",
			want: []string{"line 2: rule 1 has no resource; give one of model,", "line 2: rule 1 has no access; give read, write or deny"},
		},
		{
			name: "another policy's file",
			file: "name: ci-nlp\nrules:\n  - resource: model\n    access: read\n",
			want: []string{`line 1: the file is for policy "ci-nlp", but the command applies it as "ci-vision"`, "remove name:"},
		},
		{
			name: "rules not a list",
			file: "rules: model\n",
			want: []string{"line 1: want a list of rules, not `model`"},
		},
		{
			name: "labels not a mapping",
			file: "rules:\n  - resource: node\n    labels: [edge]\n    access: read\n",
			want: []string{"line 3: want a mapping of label names to values, not a list"},
		},
		{
			name: "two documents",
			file: "rules:\n  - resource: audit\n    access: read\n---\nrules: []\n",
			want: []string{"line 4: a second YAML document"},
		},
		{
			name: "syntax error",
			file: "rules:\n\t- resource: audit\n",
			want: []string{"line 2: found character that cannot start any token"},
		},
		{
			name: "key given twice",
			file: "rules:\n  - resource: audit\n    access: read\n    access: write\n",
			want: []string{`line 4: mapping key "access" already defined at line 3`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := parsePolicyFile("ci-vision", []byte(tt.file))
			if err == nil {
				t.Fatalf("parsed into %v, want an error", p)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "cli.") || strings.Contains(err.Error(), "yaml:") {
				t.Errorf("error %q speaks of Go types or the YAML library, not of the file", err)
			}
		})
	}
}

// The policy's own checks apply to the name from the command line, and
// their errors stay recognisable.
func TestParsePolicyFileChecksName(t *testing.T) {
	t.Parallel()
	file := []byte("rules:\n  - resource: audit\n    access: read\n")
	for _, name := range []string{acl.PolicyManagement, "Bad_Name", ""} {
		_, err := parsePolicyFile(name, file)
		if !errors.Is(err, acl.ErrInvalidPolicy) || strings.Contains(err.Error(), "line ") {
			t.Errorf("policy name %q: error %v; want an invalid policy without a line", name, err)
		}
	}
}

// refusedRule points at the rule ValidatePolicy refuses, and at none when
// it refuses the policy as a whole, whatever the rules.
func TestRefusedRule(t *testing.T) {
	t.Parallel()
	good := &droverv1.ACLRule{Resource: resAudit, Access: accRead}
	siteOnModel := &droverv1.ACLRule{Resource: resModel, Site: "berlin", Access: accRead}
	tests := []struct {
		p    *droverv1.ACLPolicy
		want int
	}{
		{&droverv1.ACLPolicy{Name: "p", Rules: []*droverv1.ACLRule{good, siteOnModel, siteOnModel}}, 1},
		{&droverv1.ACLPolicy{Name: "p", Rules: []*droverv1.ACLRule{siteOnModel}}, 0},
		{&droverv1.ACLPolicy{Name: "Bad_Name", Rules: []*droverv1.ACLRule{good, siteOnModel}}, -1},
		{&droverv1.ACLPolicy{Name: "p", Description: strings.Repeat("x", 1000), Rules: []*droverv1.ACLRule{siteOnModel}}, -1},
		{&droverv1.ACLPolicy{Name: "p"}, -1},
	}
	for _, tt := range tests {
		if acl.ValidatePolicy(tt.p) == nil {
			t.Fatalf("%v: valid; the test wants an invalid policy", tt.p)
		}
		if got := refusedRule(tt.p); got != tt.want {
			t.Errorf("refusedRule(%v) = %d, want %d", tt.p, got, tt.want)
		}
	}
}

// FuzzParsePolicyFile: whatever the file, the parser does not panic, and a
// policy it returns is one the server accepts, named as the command said.
func FuzzParsePolicyFile(f *testing.F) {
	for _, seed := range []string{
		testPolicyFile,
		"name: p\nrules:\n  - {resource: audit, access: read}\n",
		"rules:\n  - resource: models\n    prefx: a\n",
		"rules: &r\n  - *r\n",
		"a: &a [*a, *a]\n",
		"rules:\n  - resource: node\n    labels: {a: [b]}\n    access: read\n",
		"---\n---\n",
		"rules: !!binary aGk=\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parsePolicyFile("fuzzed", data)
		if err != nil {
			if err.Error() == "" {
				t.Errorf("empty error for %q", data)
			}
			return
		}
		if p.GetName() != "fuzzed" {
			t.Errorf("policy named %q, want fuzzed", p.GetName())
		}
		if err := acl.ValidatePolicy(p); err != nil {
			t.Errorf("parsed a policy the server refuses: %v\n%q", err, data)
		}
	})
}
