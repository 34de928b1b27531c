package cli

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Parsers for the small languages in flags and arguments. Each error names
// the flag and the offending value, so the message stands on its own.

// parseKeyValues parses repeated KEY=VALUE flags into a map. The value may
// itself contain "=".
func parseKeyValues(flag string, pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, err := splitPair(flag, p)
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("--%s %s: key %q given twice", flag, p, k)
		}
		m[k] = v
	}
	return m, nil
}

// parseMetrics parses repeated NAME=NUMBER flags.
func parseMetrics(flag string, pairs []string) (map[string]float64, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := make(map[string]float64, len(pairs))
	for _, p := range pairs {
		k, v, err := splitPair(flag, p)
		if err != nil {
			return nil, err
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return nil, fmt.Errorf("--%s %s: value must be a number", flag, p)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("--%s %s: value must be a finite number", flag, p)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("--%s %s: key %q given twice", flag, p, k)
		}
		m[k] = f
	}
	return m, nil
}

func splitPair(flag, p string) (key, value string, err error) {
	k, v, ok := strings.Cut(p, "=")
	switch {
	case !ok:
		return "", "", fmt.Errorf("--%s %s: want KEY=VALUE", flag, p)
	case strings.TrimSpace(k) == "":
		return "", "", fmt.Errorf("--%s %s: key is empty", flag, p)
	case k != strings.TrimSpace(k):
		return "", "", fmt.Errorf("--%s %s: key has surrounding spaces", flag, p)
	}
	return k, v, nil
}

// refLatest is the version reference the server resolves to the newest
// version.
const refLatest = "latest"

// parseModelRef splits NAME@REF. REF is a version number, an alias or
// "latest"; without "@" it is "latest".
func parseModelRef(s string) (name, ref string, err error) {
	name, ref, hasRef := strings.Cut(s, "@")
	switch {
	case name == "":
		return "", "", fmt.Errorf("%q: model name is empty; want NAME or NAME@REF", s)
	case strings.Contains(ref, "@"):
		return "", "", fmt.Errorf("%q: more than one @; want NAME@REF", s)
	case hasRef && ref == "":
		return "", "", fmt.Errorf("%q: nothing after @; want a version number, an alias or latest", s)
	case !hasRef:
		ref = refLatest
	}
	return name, ref, nil
}

// parseDigest checks a content digest: "sha256:" and 64 lowercase hex
// digits, the form the server stores.
func parseDigest(s string) (string, error) {
	hex, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return "", errors.New("want sha256:<64 hex digits>")
	}
	if len(hex) != 64 {
		return "", fmt.Errorf("want 64 hex digits after sha256:, got %d", len(hex))
	}
	for _, c := range hex {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", fmt.Errorf("%q is not a lowercase hex digit", c)
		}
	}
	return s, nil
}

// parseSize parses a size in bytes. Units are not accepted on purpose: the
// size is checked against the artifact, so it must be exact.
func parseSize(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errors.New("must be a whole number of bytes")
	}
	return n, nil
}

// parseFileSpec parses PATH=sha256:HEX:SIZE, one file of a multi-file
// artifact. The path is everything before the last "=", so it may contain
// "=" itself; digests never do.
func parseFileSpec(flag, s string) (*droverv1.ArtifactFile, error) {
	i := strings.LastIndexByte(s, '=')
	if i < 0 {
		return nil, fmt.Errorf("--%s %s: want PATH=sha256:HEX:SIZE", flag, s)
	}
	path, rest := s[:i], s[i+1:]
	if path == "" {
		return nil, fmt.Errorf("--%s %s: path is empty", flag, s)
	}
	if strings.Count(rest, ":") < 2 {
		return nil, fmt.Errorf("--%s %s: want PATH=sha256:HEX:SIZE", flag, s)
	}
	j := strings.LastIndexByte(rest, ':')
	digest, err := parseDigest(rest[:j])
	if err != nil {
		return nil, fmt.Errorf("--%s %s: digest: %w", flag, s, err)
	}
	size, err := parseSize(rest[j+1:])
	if err != nil {
		return nil, fmt.Errorf("--%s %s: size %w", flag, s, err)
	}
	return &droverv1.ArtifactFile{Path: path, Digest: digest, SizeBytes: size}, nil
}

// parseVersionNumber parses a version number argument; versions count from 1.
func parseVersionNumber(s string) (uint64, bool) {
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil && n > 0
}

// parseByteSize parses a size people write; see units.ParseBytes.
func parseByteSize(s string) (uint64, error) { return units.ParseBytes(s) }

// parseLabelChanges checks the label changes of `node label`: KEY=VALUE
// arguments to set and --remove keys. It refuses an empty change and a key
// both set and removed, which would depend on the order they are applied.
func parseLabelChanges(args, remove []string) (map[string]string, []string, error) {
	if len(args) == 0 && len(remove) == 0 {
		return nil, nil, errors.New("nothing to change: give KEY=VALUE arguments to set labels or --remove KEY to remove them")
	}
	set := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		switch {
		case !ok:
			key := strings.TrimSuffix(a, "-") // kubectl's "KEY-" removes a label
			return nil, nil, fmt.Errorf("%q: want KEY=VALUE to set a label; to remove one, use --remove %s", a, key)
		case strings.TrimSpace(k) == "":
			return nil, nil, fmt.Errorf("%q: label key is empty", a)
		case k != strings.TrimSpace(k):
			return nil, nil, fmt.Errorf("%q: label key has surrounding spaces", a)
		}
		if _, dup := set[k]; dup {
			return nil, nil, fmt.Errorf("%q: label %q given twice", a, k)
		}
		set[k] = v
	}
	var rm []string
	for _, k := range remove {
		switch {
		case strings.TrimSpace(k) == "":
			return nil, nil, errors.New("--remove: label key is empty")
		case strings.Contains(k, "="):
			return nil, nil, fmt.Errorf("--remove %s: want only the label key, without a value", k)
		}
		if _, both := set[k]; both {
			return nil, nil, fmt.Errorf("label %q is both set and removed; give one or the other", k)
		}
		if !slices.Contains(rm, k) {
			rm = append(rm, k)
		}
	}
	if len(set) == 0 {
		set = nil
	}
	return set, rm, nil
}
