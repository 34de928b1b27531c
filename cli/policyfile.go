package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/droverhq/drover/controlplane/acl"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// policyFile is a policy as `drover acl policy apply` reads it from YAML.
// The policy's name is the command's argument; name here is only checked
// against it, so a file that says which policy it is cannot be applied
// over another one by mistake.
type policyFile struct {
	Name        string       `yaml:"name"`
	Description string       `yaml:"description"`
	Rules       []policyRule `yaml:"rules"`
}

// policyRule is one rule of a policy file; the fields are those of
// droverv1.ACLRule, with resource and access by name.
type policyRule struct {
	Resource ruleResource      `yaml:"resource"`
	Access   ruleAccess        `yaml:"access"`
	Name     string            `yaml:"name"`
	Prefix   string            `yaml:"prefix"`
	Site     string            `yaml:"site"`
	Labels   map[string]string `yaml:"labels"`
}

// maxPolicyFile bounds what apply reads, from a file or stdin. A policy
// of the most rules the server takes is far smaller.
const maxPolicyFile = 1 << 20

// ruleResource is a rule's resource, read by the name acl gives it.
type ruleResource struct{ value droverv1.ACLResource }

func (r *ruleResource) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n.Line, "resource takes one name: %s", acl.ResourceNames())
	}
	v, ok := acl.ParseResource(n.Value)
	if !ok {
		return lineError(n.Line, "unknown resource %q; use one of %s", n.Value, acl.ResourceNames())
	}
	r.value = v
	return nil
}

// ruleAccess is a rule's access, read by the name acl gives it.
type ruleAccess struct{ value droverv1.ACLAccess }

func (a *ruleAccess) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return lineError(n.Line, "access takes one of %s", accessNames())
	}
	v, ok := acl.ParseAccess(n.Value)
	if !ok {
		return lineError(n.Line, "unknown access %q; use %s", n.Value, accessNames())
	}
	a.value = v
	return nil
}

// lineError is a problem at a line of the file. It is a *yaml.TypeError
// so that the decoder collects it with the others and goes on.
func lineError(line int, format string, args ...any) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", line) + fmt.Sprintf(format, args...)}}
}

// accessNames lists the accesses a rule may give, as "read, write or
// deny", in the order of the schema.
func accessNames() string {
	var out []string
	for _, v := range slices.Sorted(maps.Keys(droverv1.ACLAccess_name)) {
		a := droverv1.ACLAccess(v)
		if p, ok := acl.ParseAccess(acl.AccessName(a)); ok && p == a {
			out = append(out, acl.AccessName(a))
		}
	}
	if len(out) < 2 {
		return strings.Join(out, "")
	}
	return strings.Join(out[:len(out)-1], ", ") + " or " + out[len(out)-1]
}

// parsePolicyFile reads a policy file (YAML) into the policy called name
// and checks it as the server will, so that a mistake is reported with its
// line before anything is sent. Unknown keys are errors: a misspelt
// qualifier would otherwise widen a rule silently. The error lists every
// problem the decoder found, each with its line.
func parsePolicyFile(name string, data []byte) (*droverv1.ACLPolicy, error) {
	var f policyFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch err := dec.Decode(&f); {
	case errors.Is(err, io.EOF):
		return nil, errors.New("the file is empty; a policy needs at least one rule")
	case err != nil:
		return nil, yamlProblems(err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, yamlProblems(err)
	default:
		return nil, fmt.Errorf("line %d: a second YAML document; a file holds one policy, so remove the \"---\" and what follows or apply it from a file of its own", extra.Line)
	}

	// The decode succeeded, so the file is a mapping with this shape; a
	// second pass as nodes gives the lines of what it holds.
	lines := policyFileLines(data)
	if f.Name != "" && f.Name != name {
		return nil, fmt.Errorf("line %d: the file is for policy %q, but the command applies it as %q; apply it as %q, or remove name: from the file",
			lines.name, f.Name, name, f.Name)
	}
	p := &droverv1.ACLPolicy{Name: name, Description: f.Description}
	var problems []string
	for i, r := range f.Rules {
		if r.Resource.value == droverv1.ACLResource_ACL_RESOURCE_UNSPECIFIED {
			problems = append(problems, fmt.Sprintf("line %d: rule %d has no resource; give one of %s", lines.rule(i), i+1, acl.ResourceNames()))
		}
		if r.Access.value == droverv1.ACLAccess_ACL_ACCESS_UNSPECIFIED {
			problems = append(problems, fmt.Sprintf("line %d: rule %d has no access; give %s", lines.rule(i), i+1, accessNames()))
		}
		p.Rules = append(p.Rules, &droverv1.ACLRule{
			Resource: r.Resource.value, Access: r.Access.value,
			Name: r.Name, Prefix: r.Prefix, Site: r.Site, Labels: r.Labels,
		})
	}
	if len(problems) > 0 {
		return nil, joinProblems(problems)
	}
	if err := acl.ValidatePolicy(p); err != nil {
		if i := refusedRule(p); i >= 0 {
			return nil, fmt.Errorf("line %d: %w", lines.rule(i), err)
		}
		return nil, err
	}
	return p, nil
}

// refusedRule returns the index of the rule ValidatePolicy refuses p for,
// or -1 when it refuses the policy as a whole (its name, its description,
// the number of rules). It asks ValidatePolicy rather than reading its
// message: with every invalid rule replaced by a valid one, the policy
// passes exactly when the refusal was about a rule, and then it was about
// the first invalid rule, as ValidatePolicy checks rules in order.
func refusedRule(p *droverv1.ACLPolicy) int {
	valid := &droverv1.ACLRule{Resource: droverv1.ACLResource_ACL_RESOURCE_AUDIT, Access: droverv1.ACLAccess_ACL_ACCESS_READ}
	ruleOK := func(r *droverv1.ACLRule) bool {
		return acl.ValidatePolicy(&droverv1.ACLPolicy{Name: "rule-check", Rules: []*droverv1.ACLRule{r}}) == nil
	}
	first := -1
	probe := &droverv1.ACLPolicy{Name: p.GetName(), Description: p.GetDescription()}
	for i, r := range p.GetRules() {
		if !ruleOK(r) {
			r = valid
			if first < 0 {
				first = i
			}
		}
		probe.Rules = append(probe.Rules, r)
	}
	if first < 0 || acl.ValidatePolicy(probe) != nil {
		return -1
	}
	return first
}

// policyLines are the lines where a policy file's parts start.
type policyLines struct {
	name  int
	rules []int
}

func (l policyLines) rule(i int) int {
	if i < len(l.rules) {
		return l.rules[i]
	}
	return 0
}

func policyFileLines(data []byte) policyLines {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return policyLines{}
	}
	top := resolveAlias(doc.Content[0])
	var l policyLines
	if n := mappingValue(top, "name"); n != nil {
		l.name = n.Line
	}
	if rules := resolveAlias(mappingValue(top, "rules")); rules != nil {
		for _, r := range rules.Content {
			l.rules = append(l.rules, r.Line)
		}
	}
	return l
}

// mappingValue returns the value of key in mapping m, or nil.
func mappingValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// The decoder's messages name Go types; these patterns find them so that
// yamlProblems can say what the file should hold instead.
var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (.*) not found in type (.*)$`)
	wrongTypeRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal (!!\\w+)(?: `(.*)`)? into (.*)$")
)

// yamlTypes says what each Go type of a policy file is, in the file's
// terms.
var yamlTypes = map[string]string{
	typeName[policyFile]():        "a policy (a mapping with description and rules)",
	typeName[[]policyRule]():      "a list of rules",
	typeName[policyRule]():        "a rule (a mapping with resource, access and what it matches)",
	typeName[map[string]string](): "a mapping of label names to values",
	typeName[string]():            "text",
}

func typeName[T any]() string { return reflect.TypeFor[T]().String() }

// yamlKeys lists the keys a mapping of type t takes, from its yaml tags.
func yamlKeys(t string) (where, keys string, ok bool) {
	var typ reflect.Type
	switch t {
	case typeName[policyFile]():
		where, typ = "a policy file", reflect.TypeFor[policyFile]()
	case typeName[policyRule]():
		where, typ = "a rule", reflect.TypeFor[policyRule]()
	default:
		return "", "", false
	}
	var names []string
	for i := range typ.NumField() {
		names = append(names, strings.Split(typ.Field(i).Tag.Get("yaml"), ",")[0])
	}
	return where, strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1], true
}

// yamlProblems turns a decoding error into the file's problems, in its
// own terms, each with its line.
func yamlProblems(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		// A syntax error: "yaml: line 3: did not find expected key".
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	problems := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		if m := unknownFieldRE.FindStringSubmatch(e); m != nil {
			if where, keys, ok := yamlKeys(m[3]); ok {
				e = fmt.Sprintf("line %s: unknown key %q in %s; %s takes %s", m[1], m[2], where, where, keys)
			}
		} else if m := wrongTypeRE.FindStringSubmatch(e); m != nil {
			if want, ok := yamlTypes[m[4]]; ok {
				e = fmt.Sprintf("line %s: want %s, not %s", m[1], want, yamlFound(m[2], m[3]))
			}
		}
		problems = append(problems, e)
	}
	return joinProblems(problems)
}

// yamlFound describes a value the decoder could not use.
func yamlFound(tag, value string) string {
	switch tag {
	case "!!seq":
		return "a list"
	case "!!map":
		return "a mapping"
	}
	return "`" + value + "`"
}

// joinProblems makes one error of a file's problems: the problem itself
// when there is one, else a count and one problem a line.
func joinProblems(problems []string) error {
	if len(problems) == 1 {
		return errors.New(problems[0])
	}
	return fmt.Errorf("%d problems:\n  %s", len(problems), strings.Join(problems, "\n  "))
}

// readPolicyFile reads path, or stdin when path is "-", refusing what is
// too large to be a policy.
func readPolicyFile(path string, stdin io.Reader) ([]byte, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read policy file: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxPolicyFile+1))
	if err != nil {
		return nil, fmt.Errorf("read policy file %s: %w", policySource(path), err)
	}
	if len(data) > maxPolicyFile {
		return nil, fmt.Errorf("policy file %s is larger than %d KiB; a policy file holds one policy of at most a few hundred rules", policySource(path), maxPolicyFile>>10)
	}
	return data, nil
}

// policySource names where a policy file was read from, for messages.
func policySource(path string) string {
	if path == "-" {
		return "<stdin>"
	}
	return path
}
