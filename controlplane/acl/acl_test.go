package acl

import (
	"errors"
	"strings"
	"testing"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	deny = droverv1.ACLAccess_ACL_ACCESS_DENY
)

func policy(name string, rules ...*droverv1.ACLRule) *droverv1.ACLPolicy {
	return &droverv1.ACLPolicy{Name: name, Rules: rules}
}

func rule(r droverv1.ACLResource, a droverv1.ACLAccess) *droverv1.ACLRule {
	return &droverv1.ACLRule{Resource: r, Access: a}
}

func TestValidatePolicy(t *testing.T) {
	tests := []struct {
		name string
		p    *droverv1.ACLPolicy
		want string // substring of the error; "" for valid
	}{
		{"model prefix write", policy("ci", &droverv1.ACLRule{Resource: model, Access: write, Prefix: "vision-"}), ""},
		{"prefix ending in a dash", policy("ci", &droverv1.ACLRule{Resource: model, Access: read, Prefix: "a-"}), ""},
		{"node by site and labels", policy("berlin", &droverv1.ACLRule{Resource: node, Access: write, Site: "berlin", Labels: map[string]string{"role": "edge"}}), ""},
		{"join token by site", policy("berlin", &droverv1.ACLRule{Resource: joinToken, Access: write, Site: "berlin"}), ""},
		{"deny operator", policy("no-ops", rule(operator, deny)), ""},
		{"no name", policy("", rule(model, read)), "no name"},
		{"bad name", policy("Vision Team", rule(model, read)), "lowercase"},
		{"built-in name", policy("management", rule(model, read)), "built-in"},
		{"no rules", policy("empty"), "no rules"},
		{"unknown resource", policy("p", rule(droverv1.ACLResource(99), read)), "unknown resource"},
		{"unspecified resource", policy("p", rule(droverv1.ACLResource_ACL_RESOURCE_UNSPECIFIED, read)), "unknown resource"},
		{"unknown access", policy("p", rule(model, droverv1.ACLAccess_ACL_ACCESS_UNSPECIFIED)), "unknown access"},
		{"site on a model", policy("p", &droverv1.ACLRule{Resource: model, Access: read, Site: "berlin"}), "belong to no site"},
		{"labels on a join token", policy("p", &droverv1.ACLRule{Resource: joinToken, Access: read, Labels: map[string]string{"a": "b"}}), "carry no labels"},
		{"name on a node", policy("p", &droverv1.ACLRule{Resource: node, Access: read, Name: "n1"}), "no names"},
		{"name on audit", policy("p", &droverv1.ACLRule{Resource: audit, Access: read, Prefix: "x"}), "no names"},
		{"name and prefix", policy("p", &droverv1.ACLRule{Resource: model, Access: read, Name: "a", Prefix: "a"}), "not both"},
		{"impossible name", policy("p", &droverv1.ACLRule{Resource: model, Access: read, Name: "Resnet"}), "match nothing"},
		{"impossible prefix", policy("p", &droverv1.ACLRule{Resource: model, Access: read, Prefix: "-x"}), "match nothing"},
		{"impossible site", policy("p", &droverv1.ACLRule{Resource: node, Access: read, Site: "Berlin Mitte"}), "match nothing"},
		{"impossible label", policy("p", &droverv1.ACLRule{Resource: node, Access: read, Labels: map[string]string{"a b": "c"}}), "match nothing"},
		{"second rule is named", policy("p", rule(model, read), &droverv1.ACLRule{Resource: model, Access: read, Site: "x"}), "rule 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePolicy(tt.p)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("ValidatePolicy: %v, want nil", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ValidatePolicy = %v, want an ErrInvalidPolicy containing %q", err, tt.want)
			}
		})
	}
}

func TestBuiltinPoliciesValidateApartFromTheirNames(t *testing.T) {
	for _, p := range Builtin() {
		if !IsBuiltin(p.GetName()) || !p.GetBuiltin() {
			t.Errorf("built-in policy %q is not marked built-in", p.GetName())
		}
		p.Name = "copy-of-" + p.GetName()
		if err := ValidatePolicy(p); err != nil {
			t.Errorf("built-in policy rules are invalid: %v", err)
		}
	}
}

func TestAuthorizer(t *testing.T) {
	berlinEdge := Object{Site: "berlin", Labels: map[string]string{"role": "edge", "rack": "r1"}}
	tests := []struct {
		name     string
		policies []*droverv1.ACLPolicy
		resource droverv1.ACLResource
		access   droverv1.ACLAccess
		obj      Object
		want     bool
	}{
		{"nothing granted", nil, model, read, Object{Name: "a"}, false},
		{"write implies read", []*droverv1.ACLPolicy{policy("p", rule(model, write))}, model, read, Object{Name: "a"}, true},
		{"read does not imply write", []*droverv1.ACLPolicy{policy("p", rule(model, read))}, model, write, Object{Name: "a"}, false},
		{"other resource", []*droverv1.ACLPolicy{policy("p", rule(model, write))}, node, read, Object{}, false},
		{"exact name", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Name: "resnet"})}, model, write, Object{Name: "resnet"}, true},
		{"exact name is not a prefix", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Name: "resnet"})}, model, write, Object{Name: "resnet-v2"}, false},
		{"prefix", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Prefix: "vision-"})}, model, write, Object{Name: "vision-yolo"}, true},
		{"prefix misses", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Prefix: "vision-"})}, model, write, Object{Name: "nlp-bert"}, false},
		{"deny wins over a grant in another policy", []*droverv1.ACLPolicy{
			policy("a", rule(model, write)),
			policy("b", &droverv1.ACLRule{Resource: model, Access: deny, Prefix: "secret-"}),
		}, model, read, Object{Name: "secret-x"}, false},
		{"deny of other objects leaves the grant", []*droverv1.ACLPolicy{
			policy("a", rule(model, write)),
			policy("b", &droverv1.ACLRule{Resource: model, Access: deny, Prefix: "secret-"}),
		}, model, read, Object{Name: "public-x"}, true},
		{"deny wins over management's rules but not management", []*droverv1.ACLPolicy{
			Builtin()[0], policy("b", rule(model, deny)),
		}, model, read, Object{Name: "x"}, true},
		{"site", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: node, Access: write, Site: "berlin"})}, node, write, berlinEdge, true},
		{"other site", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: node, Access: write, Site: "paris"})}, node, write, berlinEdge, false},
		{"labels subset", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: node, Access: write, Site: "berlin", Labels: map[string]string{"role": "edge"}})}, node, write, berlinEdge, true},
		{"label value differs", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: node, Access: write, Labels: map[string]string{"role": "gpu"}})}, node, write, berlinEdge, false},
		{"label missing", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: node, Access: write, Labels: map[string]string{"zone": "a"}})}, node, write, berlinEdge, false},
		{"site rule and a siteless object", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: joinToken, Access: write, Site: "berlin"})}, joinToken, write, Object{}, false},
		{"read-only reads", Builtin()[1:], telemetry, read, Object{}, true},
		{"read-only does not write", Builtin()[1:], model, write, Object{Name: "a"}, false},
		{"management writes what no rule names", Builtin()[:1], droverv1.ACLResource(99), write, Object{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewAuthorizer(tt.policies).Allowed(tt.resource, tt.access, tt.obj); got != tt.want {
				t.Fatalf("Allowed(%s, %s, %+v) = %v, want %v", ResourceName(tt.resource), AccessName(tt.access), tt.obj, got, tt.want)
			}
		})
	}
}

func TestAllowedSome(t *testing.T) {
	tests := []struct {
		name     string
		policies []*droverv1.ACLPolicy
		access   droverv1.ACLAccess
		want     bool
	}{
		{"no rule", nil, read, false},
		{"a prefix grant", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Prefix: "v-"})}, write, true},
		{"write grant allows some read", []*droverv1.ACLPolicy{policy("p", &droverv1.ACLRule{Resource: model, Access: write, Prefix: "v-"})}, read, true},
		{"read grant allows no write", []*droverv1.ACLPolicy{policy("p", rule(model, read))}, write, false},
		{"qualified deny leaves some", []*droverv1.ACLPolicy{policy("p", rule(model, write), &droverv1.ACLRule{Resource: model, Access: deny, Name: "x"})}, write, true},
		{"unqualified deny leaves none", []*droverv1.ACLPolicy{policy("p", rule(model, write)), policy("q", rule(model, deny))}, read, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewAuthorizer(tt.policies).AllowedSome(model, tt.access); got != tt.want {
				t.Fatalf("AllowedSome(model, %s) = %v, want %v", AccessName(tt.access), got, tt.want)
			}
		})
	}
}

func TestNamesRoundTrip(t *testing.T) {
	for _, r := range Resources {
		got, ok := ParseResource(ResourceName(r))
		if !ok || got != r {
			t.Errorf("ParseResource(%q) = %v, %v", ResourceName(r), got, ok)
		}
	}
	for _, a := range []droverv1.ACLAccess{read, write, deny} {
		got, ok := ParseAccess(AccessName(a))
		if !ok || got != a {
			t.Errorf("ParseAccess(%q) = %v, %v", AccessName(a), got, ok)
		}
	}
	if _, ok := ParseResource("models"); ok {
		t.Error(`ParseResource("models") accepted a misspelling`)
	}
	if len(Resources) != len(resources) {
		t.Errorf("Resources lists %d resources, the table has %d", len(Resources), len(resources))
	}
}
