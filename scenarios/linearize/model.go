// Package linearize is a porcupine model of Drover's model registry and a
// recorder of client operations, so any scenario (in-process or against
// containers) can check that what its clients saw is linearizable.
//
// The model covers one registered model: how many versions it has and
// where its aliases point. Clients record [CreateVersion], [SetAlias],
// [GetAlias] and [LatestVersion] operations with a [Recorder]; a call whose
// outcome is unknown (a timeout, a lost connection, "may or may not have
// been applied") is kept with an output that matches anything and a return
// time at the end of the history, porcupine's convention for an operation
// that may take effect at any moment after its call, or never.
package linearize

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Op names one kind of registry operation.
type Op uint8

// Operations of the model. The zero Op is not an operation.
const (
	// OpCreateVersion adds a version; its number is the count of versions
	// plus one.
	OpCreateVersion Op = iota + 1
	// OpSetAlias points an alias at an existing version.
	OpSetAlias
	// OpGetAlias reads the version an alias points to.
	OpGetAlias
	// OpLatestVersion reads the highest version number.
	OpLatestVersion
)

func (o Op) String() string {
	switch o {
	case OpCreateVersion:
		return "CreateVersion"
	case OpSetAlias:
		return "SetAlias"
	case OpGetAlias:
		return "GetAlias"
	case OpLatestVersion:
		return "LatestVersion"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// IsRead reports whether the operation never changes state.
func (o Op) IsRead() bool { return o == OpGetAlias || o == OpLatestVersion }

// Input is one call made to the registry. Build it with [CreateVersion],
// [SetAlias], [GetAlias] or [LatestVersion].
type Input struct {
	Op Op
	// Alias is the alias that SetAlias moves or GetAlias reads. It must
	// not contain ',' or '=' (Drover's alias names never do).
	Alias string
	// Version is the version SetAlias points the alias at.
	Version uint64
	// Tag, optional on CreateVersion, is a caller-chosen label unique to
	// this call (for example stored in the version's tags), so that an
	// unknown outcome can be settled later from the final state with
	// [Recorder.Resolve]. The model ignores it.
	Tag string
}

// CreateVersion is a call that creates a version labelled tag (may be
// empty).
func CreateVersion(tag string) Input { return Input{Op: OpCreateVersion, Tag: tag} }

// SetAlias is a call that points alias at version.
func SetAlias(alias string, version uint64) Input {
	return Input{Op: OpSetAlias, Alias: alias, Version: version}
}

// GetAlias is a read of the version alias points to.
func GetAlias(alias string) Input { return Input{Op: OpGetAlias, Alias: alias} }

// LatestVersion is a read of the highest version number.
func LatestVersion() Input { return Input{Op: OpLatestVersion} }

func (in Input) String() string {
	switch in.Op {
	case OpCreateVersion:
		if in.Tag != "" {
			return fmt.Sprintf("CreateVersion(%s)", in.Tag)
		}
		return "CreateVersion()"
	case OpSetAlias:
		return fmt.Sprintf("SetAlias(%s, %d)", in.Alias, in.Version)
	case OpGetAlias:
		return fmt.Sprintf("GetAlias(%s)", in.Alias)
	}
	return in.Op.String() + "()"
}

// Output is what a call returned. Which fields matter depends on the
// operation:
//
//   - CreateVersion: Version is the number the server assigned.
//   - SetAlias: Previous is the version the alias pointed to before (0 when
//     it was new), as the API's SetAliasResponse reports it; NotFound means
//     the call was refused because the version does not exist.
//   - GetAlias: Version is the alias's target; NotFound means the alias is
//     not set.
//   - LatestVersion: Version is the highest version; NotFound means there
//     are no versions yet (Version 0 means the same).
//
// Unknown marks an outcome nobody knows; it matches whatever the model
// allows, with or without the call's effect.
type Output struct {
	Version  uint64
	Previous uint64
	NotFound bool
	Unknown  bool
}

func (out Output) String() string {
	switch {
	case out.Unknown:
		return "unknown"
	case out.NotFound:
		return "not found"
	case out.Previous != 0:
		return fmt.Sprintf("%d (was %d)", out.Version, out.Previous)
	}
	return fmt.Sprint(out.Version)
}

// describe renders a call and its answer for the visualization.
func describe(in Input, out Output) string {
	if in.Op == OpSetAlias && !out.Unknown && !out.NotFound {
		if out.Previous == 0 {
			return in.String() + " -> ok (new)"
		}
		return fmt.Sprintf("%v -> ok (was %d)", in, out.Previous)
	}
	return fmt.Sprintf("%v -> %v", in, out)
}

// State is the model's state: a comparable value, so porcupine can cache
// visited states cheaply.
type State struct {
	// Versions is how many versions exist; they are numbered 1..Versions.
	Versions uint64
	// aliases is the alias map in a canonical encoding ("a=1,b=2", sorted),
	// which keeps State comparable with ==.
	aliases string
}

// Aliases decodes the alias map.
func (s State) Aliases() map[string]uint64 {
	m := map[string]uint64{}
	for kv := range strings.SplitSeq(s.aliases, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			m[k] = n
		}
	}
	return m
}

// alias returns the alias's target, 0 when it is not set.
func (s State) alias(name string) uint64 {
	for kv := range strings.SplitSeq(s.aliases, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

func (s State) withAlias(name string, v uint64) State {
	m := s.Aliases()
	m[name] = v
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+strconv.FormatUint(m[k], 10))
	}
	s.aliases = strings.Join(parts, ",")
	return s
}

func (s State) String() string {
	return fmt.Sprintf("versions=%d aliases={%s}", s.Versions, s.aliases)
}

// Step applies in with the observed out to s. It reports whether the
// registry could have returned out, and the state after the call. An
// Unknown output is taken as the call having taken effect, where it could;
// [Model] adds the state without it. Step is pure: s is never modified.
func Step(s State, in Input, out Output) (bool, State) {
	switch in.Op {
	case OpCreateVersion:
		if !out.Unknown && (out.NotFound || out.Version != s.Versions+1) {
			return false, s
		}
		s.Versions++
		return true, s
	case OpSetAlias:
		exists := in.Version >= 1 && in.Version <= s.Versions
		if out.Unknown {
			if exists {
				s = s.withAlias(in.Alias, in.Version)
			}
			return true, s
		}
		if out.NotFound {
			return !exists, s
		}
		if !exists || out.Previous != s.alias(in.Alias) {
			return false, s
		}
		return true, s.withAlias(in.Alias, in.Version)
	case OpGetAlias:
		if out.Unknown {
			return true, s
		}
		v := s.alias(in.Alias)
		if out.NotFound {
			return v == 0, s
		}
		return v != 0 && out.Version == v, s
	case OpLatestVersion:
		if out.Unknown {
			return true, s
		}
		if out.NotFound {
			return s.Versions == 0, s
		}
		return out.Version == s.Versions, s
	}
	return false, s
}

// Model returns the porcupine model of one registered model, which starts
// with no versions and no aliases. Inputs must be [Input] and outputs
// [Output]; operation metadata, when present, is shown as text in the
// visualization.
//
// A call with an unknown outcome may take effect at any moment after it
// began, or never. Rather than leave "never" to porcupine's search (which
// would place the call after everything else, and backtrack over every
// such placement), the model steps it into the set of both states, with
// and without its effect, and lets later calls rule one out. The two are
// equivalent; the set keeps histories with dozens of unknown alias moves,
// as around a leader's death, checkable in well under a second.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{State{}} },
		Step: func(state, input, output any) []any {
			s, out := state.(State), output.(Output)
			ok, next := Step(s, input.(Input), out)
			switch {
			case !ok:
				return nil
			case out.Unknown && next != s:
				return []any{s, next}
			}
			return []any{next}
		},
		Equal: func(a, b any) bool { return a.(State) == b.(State) },
		Hash: func(state any) uint64 {
			s := state.(State)
			h := fnv.New64a()
			fmt.Fprintf(h, "%d|%s", s.Versions, s.aliases)
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			return describe(input.(Input), output.(Output))
		},
		DescribeState: func(state any) string { return state.(State).String() },
		DescribeOperationMetadata: func(info any) string {
			if info == nil {
				return ""
			}
			return fmt.Sprint(info)
		},
	}
	return nm.ToModel()
}
