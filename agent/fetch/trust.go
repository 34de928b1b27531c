package fetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/droverhq/drover/internal/atomicfile"
)

// TrustRecord is what a node remembers of the manifests it trusted for one
// model, so that a server (or anyone who can answer for one) cannot roll
// the node back: a version's manifest is trusted once, and a version's
// manifest may not be older than that of a higher version already trusted.
// It is kept in <dir>/models/<model>/trust.json, written atomically before
// any chunk of a newly trusted manifest is fetched.
type TrustRecord struct {
	Model string `json:"model"`
	// Versions are the trusted manifests, by ascending version.
	Versions []TrustedManifest `json:"versions"`
}

// TrustedManifest is one manifest a node trusted.
type TrustedManifest struct {
	Version uint64 `json:"version"`
	// Digest is the SHA-256 of the signed manifest bytes, "sha256:<hex>".
	Digest string `json:"digest"`
	// CreateTime is the manifest's create_time; zero when it had none.
	CreateTime time.Time `json:"create_time,omitzero"`
	// TrustTime is when the node trusted it, on its own clock.
	TrustTime time.Time `json:"trust_time"`
}

// find returns the trusted manifest of version v, or nil.
func (r *TrustRecord) find(v uint64) *TrustedManifest {
	for i := range r.Versions {
		if r.Versions[i].Version == v {
			return &r.Versions[i]
		}
	}
	return nil
}

// Check refuses a manifest the record rules out for version v: one whose
// digest is not the one already trusted for v (ErrManifestConflict), or
// one whose create time is out of order with the versions trusted already
// (ErrManifestReplay): created before the manifest of a lower version, as
// an old manifest replayed as a newer version is, or after that of a
// higher one, as a newer manifest passed off as an older version is.
// Versions are numbered as they are pushed, so their manifests' create
// times rise with them. A manifest, or a trusted one, without a create
// time cannot be ordered and passes the second check.
func (r *TrustRecord) Check(v uint64, digest string, created time.Time) error {
	if t := r.find(v); t != nil {
		if t.Digest != digest {
			return fmt.Errorf("version %d of %s: the manifest offered is %s, but this node trusted %s for that version on %s: %w",
				v, r.Model, digest, t.Digest, t.TrustTime.UTC().Format(time.RFC3339), ErrManifestConflict)
		}
		return nil
	}
	if created.IsZero() {
		return nil
	}
	for _, t := range r.Versions {
		switch {
		case t.CreateTime.IsZero():
		case t.Version < v && created.Before(t.CreateTime):
			return fmt.Errorf("version %d of %s: its manifest was created %s, before that of version %d (%s), which this node trusts: %w",
				v, r.Model, created.UTC().Format(time.RFC3339), t.Version, t.CreateTime.UTC().Format(time.RFC3339), ErrManifestReplay)
		case t.Version > v && created.After(t.CreateTime):
			return fmt.Errorf("version %d of %s: its manifest was created %s, after that of version %d (%s), which this node trusts: %w",
				v, r.Model, created.UTC().Format(time.RFC3339), t.Version, t.CreateTime.UTC().Format(time.RFC3339), ErrManifestReplay)
		}
	}
	return nil
}

// add records a manifest Check passed; it reports whether the record
// changed.
func (r *TrustRecord) add(t TrustedManifest) bool {
	if r.find(t.Version) != nil {
		return false
	}
	r.Versions = append(r.Versions, t)
	slices.SortFunc(r.Versions, func(a, b TrustedManifest) int {
		switch {
		case a.Version < b.Version:
			return -1
		case a.Version > b.Version:
			return 1
		}
		return 0
	})
	return true
}

// loadJSON reads path into v; a missing file leaves v as it is.
func loadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// saveJSON replaces path with v, atomically.
func saveJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}
