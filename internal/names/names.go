// Package names holds the naming rules the control plane enforces and the
// agent checks before it sends anything, so both read the same rules.
package names

import (
	"regexp"
	"strings"
)

var (
	// nameRE is the rule for model, alias, node and site names and ids:
	// short, lowercase, safe in URLs, file names and NAME@REF.
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)
	// Label rules as Kubernetes has them, so labels read the same in a
	// node selector as operators know them from there.
	labelNameRE   = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)
	labelPrefixRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)
)

// Rule says what IsName accepts, for error messages.
const Rule = "use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit"

// IsName reports whether s is 1-63 lowercase letters, digits, '.', '_' or
// '-', starting and ending with a letter or digit.
func IsName(s string) bool { return nameRE.MatchString(s) }

// FromHostname makes a host name into a name: lowercased, with characters
// a name cannot hold replaced by '-', at most 63 long. It returns "" when
// nothing of the host name is left.
func FromHostname(h string) string {
	b := []byte(strings.ToLower(h))
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	return strings.Trim(string(b), "._-")
}

// IsLabelKey reports whether k is a label name (1-63 letters, digits, '.',
// '_' or '-', starting and ending with a letter or digit), optionally
// after a lowercase DNS prefix and '/' ("drover.dev/zone").
func IsLabelKey(k string) bool {
	name := k
	prefix, rest, hasPrefix := strings.Cut(k, "/")
	if hasPrefix {
		name = rest
	}
	return labelNameRE.MatchString(name) && (!hasPrefix || labelPrefixRE.MatchString(prefix))
}

// IsLabelValue reports whether v is empty or a label name.
func IsLabelValue(v string) bool { return v == "" || labelNameRE.MatchString(v) }
