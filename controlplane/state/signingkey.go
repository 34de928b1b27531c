package state

import (
	"cmp"
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"

	"github.com/droverhq/drover/artifact"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The signed_by detail of a version.create audit event names at most
// maxAuditKeyIDs signatures' key ids, each cut to maxAuditKeyIDBytes.
const (
	maxAuditKeyIDs     = 8
	maxAuditKeyIDBytes = 32
)

// signingKeyTarget is the audit target of a signing key: its id, which,
// unlike its name, never passes to another key.
func signingKeyTarget(id string) string { return "key/" + id }

// RegisterSigningKey applies a register-signing-key command and returns
// the stored key. The key carries only its public half. Its key id is
// computed from the public key (a key id in the command must match it),
// created_by and created_by_name are the command's actor, create_index is
// idx, and create_time the command's time when the key has none.
//
// It is refused when the public key is not 32 bytes, the name is not
// valid, a key that is not revoked has the name, or any key, revoked or
// not, has the same public key: a revoked key stays revoked.
func (s *Store) RegisterSigningKey(idx uint64, meta *droverv1.CommandMeta, key *droverv1.SigningKey) (*droverv1.SigningKey, error) {
	var out *droverv1.SigningKey
	err := s.write(idx, meta, ActionKeyRegister, func() (string, map[string]string, error) {
		k := clone(key)
		if k == nil {
			k = &droverv1.SigningKey{}
		}
		var id string
		if len(k.GetPublicKey()) == ed25519.PublicKeySize {
			id = string(artifact.KeyIDOf(k.GetPublicKey()))
		}
		target := signingKeyTarget(cmp.Or(id, k.GetKeyId()))
		if id == "" {
			return target, nil, fmt.Errorf("signing key %q public key is %w: it is %d bytes, an Ed25519 public key is %d",
				k.GetName(), ErrInvalid, len(k.GetPublicKey()), ed25519.PublicKeySize)
		}
		if k.GetKeyId() != "" && k.GetKeyId() != id {
			return target, nil, fmt.Errorf("signing key %q is %w: its key id is %s, not %s", k.GetName(), ErrInvalid, id, k.GetKeyId())
		}
		k.KeyId = id
		k.CreatedBy = actorOf(meta)
		k.CreatedByName = meta.GetActorName()
		k.CreateIndex = idx
		k.RevokeTime, k.RevokeIndex, k.RevokedBy = nil, 0, ""
		if k.CreateTime == nil && meta.GetTime() != nil {
			k.CreateTime = clone(meta.GetTime())
		}
		if err := validateSigningKey(k); err != nil {
			return target, nil, err
		}
		if n := len(k.GetDescription()); n > maxDescriptionBytes {
			return target, nil, fmt.Errorf("signing key %q description is %w: %d bytes is more than the %d allowed", k.GetName(), ErrInvalid, n, maxDescriptionBytes)
		}
		details := map[string]string{"name": k.GetName()}
		if prev, ok := s.t.signingKeys[id]; ok {
			if prev.GetRevokeTime() != nil || prev.GetRevokeIndex() != 0 {
				return target, details, &refusal{
					msg:  fmt.Sprintf("signing key %s was revoked (as %q) and cannot be registered again: create a new key with \"drover key create\"", id, prev.GetName()),
					kind: ErrAlreadyExists,
				}
			}
			return target, details, &refusal{
				msg:  fmt.Sprintf("signing key %s is already registered as %q", id, prev.GetName()),
				kind: ErrAlreadyExists,
			}
		}
		if other := s.activeSigningKeyByNameLocked(k.GetName()); other != nil {
			return target, details, &refusal{
				msg: fmt.Sprintf("signing key name %q is taken by key %s: choose another name, or revoke that key first with \"drover key revoke %s\"",
					k.GetName(), other.GetKeyId(), other.GetKeyId()),
				kind: ErrAlreadyExists,
			}
		}
		s.t.signingKeys[id] = k
		out = clone(k)
		return target, details, nil
	})
	return out, err
}

// validateSigningKey checks what every stored signing key satisfies, new
// or restored from a snapshot.
func validateSigningKey(k *droverv1.SigningKey) error {
	if err := ValidateName("signing key", k.GetName()); err != nil {
		return err
	}
	if n := len(k.GetPublicKey()); n != ed25519.PublicKeySize {
		return fmt.Errorf("signing key %q public key is %w: it is %d bytes, an Ed25519 public key is %d", k.GetName(), ErrInvalid, n, ed25519.PublicKeySize)
	}
	if id := string(artifact.KeyIDOf(k.GetPublicKey())); k.GetKeyId() != id {
		return fmt.Errorf("signing key %q is %w: its key id is %s, not %q", k.GetName(), ErrInvalid, id, k.GetKeyId())
	}
	if t := k.GetCreateTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return fmt.Errorf("signing key %q create_time is %w: %v", k.GetName(), ErrInvalid, err)
		}
	}
	return nil
}

// activeSigningKeyByNameLocked returns the key that is not revoked and
// has the given name, or nil. Keys are few, so a scan is enough. s.mu
// must be held.
func (s *Store) activeSigningKeyByNameLocked(name string) *droverv1.SigningKey {
	for _, k := range s.t.signingKeys {
		if k.GetName() == name && !signingKeyRevoked(k) {
			return k
		}
	}
	return nil
}

// signingKeyRevoked reports whether a stored key was revoked.
func signingKeyRevoked(k *droverv1.SigningKey) bool { return k.GetRevokeIndex() != 0 }

// signingKeyLocked finds a key by id or, failing that, by name among the
// keys not revoked. s.mu must be held.
func (s *Store) signingKeyLocked(idOrName string) *droverv1.SigningKey {
	if k, ok := s.t.signingKeys[idOrName]; ok {
		return k
	}
	return s.activeSigningKeyByNameLocked(idOrName)
}

// RevokeSigningKey applies a revoke-signing-key command: the key, named
// by id or by the name of a key not revoked, stops being trusted. It
// stays stored with its revoke_time (the command's), revoke_index (idx)
// and revoked_by, so that it cannot be registered again. Revoking a
// revoked key changes nothing but is recorded; an unknown key is refused
// with [ErrNotFound].
func (s *Store) RevokeSigningKey(idx uint64, meta *droverv1.CommandMeta, idOrName string) (*droverv1.SigningKey, error) {
	var out *droverv1.SigningKey
	err := s.write(idx, meta, ActionKeyRevoke, func() (string, map[string]string, error) {
		k := s.signingKeyLocked(idOrName)
		if k == nil {
			return signingKeyTarget(idOrName), nil, fmt.Errorf("signing key %q %w: give a key id or the name of a key that is not revoked; list them with \"drover key ls\"", idOrName, ErrNotFound)
		}
		details := map[string]string{"name": k.GetName()}
		if signingKeyRevoked(k) {
			details["already_revoked"] = "true"
		} else {
			k = shallowCopy(k)
			k.RevokeIndex = idx
			k.RevokedBy = actorOf(meta)
			if now := meta.GetTime(); now != nil {
				k.RevokeTime = clone(now)
			}
			s.t.signingKeys[k.GetKeyId()] = k
		}
		out = clone(k)
		return signingKeyTarget(k.GetKeyId()), details, nil
	})
	return out, err
}

// SigningKey returns the key with the given id or, failing that, the key
// not revoked with the given name.
func (s *Store) SigningKey(idOrName string) (*droverv1.SigningKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.signingKeyLocked(idOrName)
	if k == nil {
		return nil, fmt.Errorf("signing key %q %w: list the keys with \"drover key ls\"", idOrName, ErrNotFound)
	}
	return clone(k), nil
}

// SigningKeys returns every signing key, revoked ones included, oldest
// first (by create index).
func (s *Store) SigningKeys() []*droverv1.SigningKey {
	s.mu.RLock()
	out := make([]*droverv1.SigningKey, 0, len(s.t.signingKeys))
	for _, k := range s.t.signingKeys {
		out = append(out, clone(k))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, compareSigningKeys)
	return out
}

// TrustedSigningKeys returns the public keys of the signing keys that are
// not revoked, by key id, and the ids of the revoked ones, sorted, in one
// consistent read. Pushes and GetClusterInfo call it, so it copies only
// the public keys.
func (s *Store) TrustedSigningKeys() (trusted map[artifact.KeyID]ed25519.PublicKey, revoked []string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	trusted = make(map[artifact.KeyID]ed25519.PublicKey, len(s.t.signingKeys))
	for id, k := range s.t.signingKeys {
		if signingKeyRevoked(k) {
			revoked = append(revoked, id)
			continue
		}
		trusted[artifact.KeyID(id)] = slices.Clone(k.GetPublicKey())
	}
	slices.Sort(revoked)
	return trusted, revoked
}

// compareSigningKeys orders keys by create index, then id.
func compareSigningKeys(a, b *droverv1.SigningKey) int {
	return cmp.Or(cmp.Compare(a.GetCreateIndex(), b.GetCreateIndex()), strings.Compare(a.GetKeyId(), b.GetKeyId()))
}

// checkSigningKeys checks that keys from a snapshot describe a state the
// write methods could have produced: valid keys, each id once, names
// unique among the keys not revoked.
func checkSigningKeys(keys []*droverv1.SigningKey) error {
	ids := make(map[string]bool, len(keys))
	names := make(map[string]string, len(keys))
	for _, k := range keys {
		if err := validateSigningKey(k); err != nil {
			return err
		}
		if ids[k.GetKeyId()] {
			return fmt.Errorf("signing key %s appears twice", k.GetKeyId())
		}
		ids[k.GetKeyId()] = true
		if signingKeyRevoked(k) {
			continue
		}
		if other, dup := names[k.GetName()]; dup {
			return fmt.Errorf("signing keys %s and %s share the name %q and neither is revoked", other, k.GetKeyId(), k.GetName())
		}
		names[k.GetName()] = k.GetKeyId()
	}
	return nil
}
