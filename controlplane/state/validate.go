package state

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/internal/names"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Limits enforced on writes. They are part of the replicated rules: every
// server must refuse exactly the same commands, so changing one is a
// change to the command semantics, not a local tuning knob.
const (
	// MaxCardBytes bounds a model card (Markdown).
	MaxCardBytes = 1 << 20
	// MaxInventoryBytes bounds a node's hardware inventory, encoded.
	MaxInventoryBytes = 1 << 20
	// MaxLabels bounds the labels of a join token or a node (after the
	// token's labels are merged into the agent's).
	MaxLabels = 64
	// MaxNodeHistory is how many status changes a node keeps, most recent
	// last; older ones are dropped.
	MaxNodeHistory = 50
	// MaxReasonBytes bounds the reason of one status change.
	MaxReasonBytes = 1024
	// maxDescriptionBytes bounds a join token's description.
	maxDescriptionBytes = 1024
	// maxRecordBytes bounds one stored object. Snapshot restore refuses
	// larger records, so the same bound on writes guarantees that every
	// state the cluster can reach can also be restored.
	maxRecordBytes = 16 << 20
)

// ValidateName checks a model, alias, node or site name (kind is "model",
// "alias", "node" or "site" and appears in the message). The error wraps
// [ErrInvalid] and states the rule with an example.
func ValidateName(kind, name string) error {
	if names.IsName(name) {
		return nil
	}
	example := "resnet-50"
	switch kind {
	case "alias":
		example = "prod"
	case "node":
		example = "gpu-01"
	case "site":
		example = "eu-west-1"
	case "signing key":
		example = "ci-release"
	}
	return fmt.Errorf("%s name %q is %w: use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit, e.g. %q",
		kind, name, ErrInvalid, example)
}

// ValidateAlias checks an alias name: a valid name that is not a version
// reference. "latest" and pure numbers are reserved because NAME@REF must
// resolve the same way whatever aliases exist.
func ValidateAlias(name string) error {
	if err := ValidateName("alias", name); err != nil {
		return err
	}
	if name == refLatest {
		return fmt.Errorf("alias name %q is %w: it is reserved for the newest version; pick another name such as \"prod\"", name, ErrInvalid)
	}
	if isNumber(name) {
		return fmt.Errorf("alias name %q is %w: numbers are reserved for version numbers; pick a name with a letter such as \"v%s\"", name, ErrInvalid, name)
	}
	return nil
}

// validateID checks the id of a join token or node: the same rule as
// names, so that an id is safe in audit targets, URLs and the CLI.
func validateID(kind, id string) error {
	if names.IsName(id) {
		return nil
	}
	return fmt.Errorf("%s id %q is %w: use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
		kind, id, ErrInvalid)
}

// ValidateLabelKey checks one label key. The error wraps [ErrInvalid] and
// states the rule with an example.
func ValidateLabelKey(key string) error {
	if names.IsLabelKey(key) {
		return nil
	}
	return fmt.Errorf("label key %q is %w: use 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, optionally after a lowercase DNS prefix and '/', e.g. \"gpu\" or \"drover.dev/zone\"",
		key, ErrInvalid)
}

// ValidateLabels checks a set of labels: at most [MaxLabels], every key
// valid (see [ValidateLabelKey]) and every value empty or 1-63 letters,
// digits, '.', '_' or '-' starting and ending with a letter or digit. Keys
// are checked in sorted order, so the error reported is the same on every
// server.
func ValidateLabels(labels map[string]string) error {
	if n := len(labels); n > MaxLabels {
		return fmt.Errorf("labels are %w: %d labels is more than the %d allowed", ErrInvalid, n, MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := ValidateLabelKey(k); err != nil {
			return err
		}
		if v := labels[k]; !names.IsLabelValue(v) {
			return fmt.Errorf("label %q value %q is %w: use an empty value or 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, e.g. \"a100\"",
				k, v, ErrInvalid)
		}
	}
	return nil
}

// refLatest is the version reference that always resolves to the newest
// version.
const refLatest = "latest"

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func validateTags(what string, tags map[string]string) error {
	if _, ok := tags[""]; ok {
		return fmt.Errorf("%s tag with an empty key is %w: every tag needs a key", what, ErrInvalid)
	}
	return nil
}

func validateCreateModel(req *droverv1.CreateModelRequest) error {
	if req == nil {
		return fmt.Errorf("create model request is %w: it is empty", ErrInvalid)
	}
	if err := ValidateName("model", req.GetName()); err != nil {
		return err
	}
	return validateTags("model", req.GetTags())
}

// validateDigest accepts only the canonical form, so two spellings of one
// digest can never name two different objects.
func validateDigest(what, d string) error {
	hex, ok := strings.CutPrefix(d, "sha256:")
	if ok && len(hex) == 64 && strings.Trim(hex, "0123456789abcdef") == "" {
		return nil
	}
	return fmt.Errorf("%s %q is %w: use \"sha256:\" followed by 64 lowercase hex digits", what, d, ErrInvalid)
}

// validateVersion checks a new version against the request rules; the
// caller checks references to other versions. Map keys are checked in sorted order so that the first
// error reported is the same on every server.
func validateVersion(v *droverv1.ModelVersion) error {
	if ref := v.GetReference(); ref != nil {
		if n := proto.Size(ref); n > sketch.MaxReferenceBytes {
			return fmt.Errorf("reference profile is %w: %d bytes encoded is more than the %d allowed; profile fewer features", ErrInvalid, n, sketch.MaxReferenceBytes)
		}
		if _, err := sketch.ProfileFromProto(ref); err != nil {
			return fmt.Errorf("reference profile is %w: %v", ErrInvalid, err)
		}
	}
	if a := v.GetArtifact(); a != nil {
		if signed := a.GetSigned(); signed != nil {
			// The digest names the manifest bytes; a version whose digest
			// is of other bytes would serve a manifest no one pushed.
			sum := sha256.Sum256(signed.GetManifest())
			if want := "sha256:" + hex.EncodeToString(sum[:]); a.GetDigest() != want {
				return fmt.Errorf("artifact digest %q is %w: the signed manifest's bytes hash to %s; push the version again", a.GetDigest(), ErrInvalid, want)
			}
		}
		if a.GetDigest() != "" {
			if err := validateDigest("artifact digest", a.GetDigest()); err != nil {
				return err
			}
			if a.GetSizeBytes() == 0 {
				return fmt.Errorf("artifact size is %w: a version with a digest needs size_bytes > 0", ErrInvalid)
			}
		}
		for i, f := range a.GetFiles() {
			if f.GetPath() == "" {
				return fmt.Errorf("artifact file %d is %w: it has no path", i, ErrInvalid)
			}
			if f.GetDigest() != "" {
				if err := validateDigest(fmt.Sprintf("digest of artifact file %q", f.GetPath()), f.GetDigest()); err != nil {
					return err
				}
			}
		}
	}
	if len(v.GetCard()) > MaxCardBytes {
		return fmt.Errorf("model card is %w: %d bytes is more than the %d allowed", ErrInvalid, len(v.GetCard()), MaxCardBytes)
	}
	keys := make([]string, 0, len(v.GetMetrics()))
	for k := range v.GetMetrics() {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k == "" {
			return fmt.Errorf("metric with an empty name is %w: every metric needs a name", ErrInvalid)
		}
		if x := v.GetMetrics()[k]; math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Errorf("metric %q is %w: %v is not a finite number", k, ErrInvalid, x)
		}
	}
	if err := validateTags("version", v.GetTags()); err != nil {
		return err
	}
	if n := proto.Size(v); n > maxRecordBytes {
		return fmt.Errorf("version is %w: its manifest is %d bytes encoded, more than the %d allowed", ErrInvalid, n, maxRecordBytes)
	}
	return nil
}

// describeVersions says which version numbers exist, for error messages.
// vs are a model's versions, ascending; their numbers run without a gap,
// from 1 or, for a model created again under a deleted one's name, from
// past the numbers that one gave.
func describeVersions(vs []*droverv1.ModelVersion) string {
	switch len(vs) {
	case 0:
		return "no versions yet"
	case 1:
		return fmt.Sprintf("only version %d", vs[0].GetVersion())
	default:
		return fmt.Sprintf("versions %d-%d", vs[0].GetVersion(), vs[len(vs)-1].GetVersion())
	}
}
