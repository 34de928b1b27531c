package state

import (
	"cmp"
	"crypto/subtle"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// CreateJoinToken applies a create-join-token command and returns the new
// token. The token carries only the SHA-256 of its secret. Its create and
// modify indexes are set to idx and created_by to the command's actor;
// when it has no create_time, the command's time is used. A new token must
// not claim uses or be revoked.
func (s *Store) CreateJoinToken(idx uint64, meta *droverv1.CommandMeta, tok *droverv1.JoinToken) (*droverv1.JoinToken, error) {
	var out *droverv1.JoinToken
	err := s.write(idx, meta, ActionTokenCreate, func() (string, map[string]string, error) {
		target := joinTokenTarget(tok.GetId())
		t := clone(tok)
		if t == nil {
			t = &droverv1.JoinToken{}
		}
		if t.CreateTime == nil && meta.GetTime() != nil {
			t.CreateTime = clone(meta.GetTime())
		}
		if err := validateNewJoinToken(t); err != nil {
			return target, nil, err
		}
		if _, ok := s.t.joinTokens[t.GetId()]; ok {
			return target, nil, fmt.Errorf("join token %q %w", t.GetId(), ErrAlreadyExists)
		}
		t.CreatedBy = actorOf(meta)
		t.CreateIndex = idx
		t.ModifyIndex = idx
		s.t.joinTokens[t.GetId()] = t
		out = clone(t)
		var details map[string]string
		if n := t.GetMaxUses(); n > 0 {
			details = map[string]string{"max_uses": strconv.FormatUint(uint64(n), 10)}
		}
		if e := t.GetExpireTime(); e != nil {
			if details == nil {
				details = make(map[string]string)
			}
			details["expire_time"] = formatTime(e)
		}
		return target, details, nil
	})
	return out, err
}

// validateNewJoinToken checks a token about to be created, its create_time
// already defaulted.
func validateNewJoinToken(t *droverv1.JoinToken) error {
	if err := validateJoinToken(t); err != nil {
		return err
	}
	if n := len(t.GetDescription()); n > maxDescriptionBytes {
		return fmt.Errorf("join token %q description is %w: %d bytes is more than the %d allowed", t.GetId(), ErrInvalid, n, maxDescriptionBytes)
	}
	if err := ValidateLabels(t.GetLabels()); err != nil {
		return fmt.Errorf("join token %q: %w", t.GetId(), err)
	}
	if site := t.GetSite(); site != "" {
		if err := ValidateName("site", site); err != nil {
			return fmt.Errorf("join token %q: %w", t.GetId(), err)
		}
	}
	if t.GetUses() != 0 || t.GetRevoked() {
		return fmt.Errorf("join token %q is %w: a new token has no uses and is not revoked", t.GetId(), ErrInvalid)
	}
	for _, ts := range []struct {
		name string
		t    *timestamppb.Timestamp
	}{{"create_time", t.GetCreateTime()}, {"expire_time", t.GetExpireTime()}} {
		if ts.t != nil {
			if err := ts.t.CheckValid(); err != nil {
				return fmt.Errorf("join token %q %s is %w: %v", t.GetId(), ts.name, ErrInvalid, err)
			}
		}
	}
	if e, c := t.GetExpireTime(), t.GetCreateTime(); e != nil && c != nil && !e.AsTime().After(c.AsTime()) {
		return fmt.Errorf("join token %q expire_time is %w: %s is not after its create_time %s", t.GetId(), ErrInvalid, formatTime(e), formatTime(c))
	}
	return nil
}

// validateJoinToken checks what every stored join token satisfies, new or
// restored from a snapshot.
func validateJoinToken(t *droverv1.JoinToken) error {
	if err := validateID("join token", t.GetId()); err != nil {
		return err
	}
	if n := len(t.GetSecretSha256()); n != 32 {
		return fmt.Errorf("join token %q secret hash is %w: it is %d bytes, a SHA-256 is 32", t.GetId(), ErrInvalid, n)
	}
	return nil
}

// RevokeJoinToken applies a revoke-join-token command and returns the
// token. Nodes that enrolled with it stay; no node can enroll with it
// again. Revoking a revoked token changes nothing but is still recorded in
// the audit log; revoking an unknown one is refused with [ErrNotFound].
func (s *Store) RevokeJoinToken(idx uint64, meta *droverv1.CommandMeta, id string) (*droverv1.JoinToken, error) {
	var out *droverv1.JoinToken
	err := s.write(idx, meta, ActionTokenRevoke, func() (string, map[string]string, error) {
		target := joinTokenTarget(id)
		t, ok := s.t.joinTokens[id]
		if !ok {
			return target, nil, fmt.Errorf("join token %q %w", id, ErrNotFound)
		}
		var details map[string]string
		if t.GetRevoked() {
			details = map[string]string{"already_revoked": "true"}
		} else {
			t = clone(t)
			t.Revoked = true
			t.ModifyIndex = idx
			s.t.joinTokens[id] = t
		}
		out = clone(t)
		return target, details, nil
	})
	return out, err
}

// JoinToken returns the join token with the given id.
func (s *Store) JoinToken(id string) (*droverv1.JoinToken, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.t.joinTokens[id]
	if !ok {
		return nil, fmt.Errorf("join token %q %w", id, ErrNotFound)
	}
	return clone(t), nil
}

// JoinTokens returns every join token, revoked, expired and used-up ones
// included, oldest first (by create index).
func (s *Store) JoinTokens() []*droverv1.JoinToken {
	s.mu.RLock()
	out := make([]*droverv1.JoinToken, 0, len(s.t.joinTokens))
	for _, t := range s.t.joinTokens {
		out = append(out, clone(t))
	}
	s.mu.RUnlock()
	slices.SortFunc(out, compareJoinTokens)
	return out
}

// compareJoinTokens orders tokens by create index, then id (two tokens
// share a create index only in a hand-made snapshot).
func compareJoinTokens(a, b *droverv1.JoinToken) int {
	return cmp.Or(cmp.Compare(a.GetCreateIndex(), b.GetCreateIndex()), strings.Compare(a.GetId(), b.GetId()))
}

// useJoinTokenLocked checks that an enrollment may use the token: it
// exists, the secret hash matches (compared in constant time), and it is
// neither revoked, nor expired at the command's time, nor used up. It
// returns the stored token, or the refusal and audit details that say why
// (the details tell an unknown id from a wrong secret, the error does not).
// s.mu must be held.
func (s *Store) useJoinTokenLocked(meta *droverv1.CommandMeta, id string, secretHash []byte) (*droverv1.JoinToken, map[string]string, error) {
	details := map[string]string{"token": id}
	invalid := func(why string) (*droverv1.JoinToken, map[string]string, error) {
		details["refused"] = why
		return nil, details, &refusal{
			msg:  fmt.Sprintf("join token %q is not valid: unknown id or wrong secret; check the token string the agent was given", id),
			kind: ErrTokenInvalid,
		}
	}
	t, ok := s.t.joinTokens[id]
	if !ok {
		return invalid("unknown token id")
	}
	if subtle.ConstantTimeCompare(t.GetSecretSha256(), secretHash) != 1 {
		return invalid("wrong secret")
	}
	const fix = `create a new one with "drover token create"`
	if t.GetRevoked() {
		return nil, details, &refusal{
			msg:  fmt.Sprintf("join token %q was revoked: %s", id, fix),
			kind: ErrTokenRevoked,
		}
	}
	if e := t.GetExpireTime(); e != nil {
		now := meta.GetTime()
		if now == nil {
			return nil, details, fmt.Errorf("enrollment command is %w: it has no time to check join token %q's expiry against", ErrInvalid, id)
		}
		if !now.AsTime().Before(e.AsTime()) {
			return nil, details, &refusal{
				msg:  fmt.Sprintf("join token %q expired at %s: %s", id, formatTime(e), fix),
				kind: ErrTokenExpired,
			}
		}
	}
	if n := t.GetMaxUses(); n > 0 && t.GetUses() >= n {
		return nil, details, &refusal{
			msg:  fmt.Sprintf("join token %q is used up (max_uses %d): %s", id, n, fix),
			kind: ErrTokenUsedUp,
		}
	}
	return t, details, nil
}

// formatTime writes a timestamp for messages and audit details, the same
// way on every server.
func formatTime(ts *timestamppb.Timestamp) string {
	return ts.AsTime().UTC().Format(time.RFC3339Nano)
}

// mergeLabels returns the agent's labels overlaid with the token's: on a
// conflict the token wins, because the operator who made it is
// authoritative. It also returns the keys the token overrode, sorted.
func mergeLabels(agent, token map[string]string) (map[string]string, []string) {
	if len(agent) == 0 && len(token) == 0 {
		return nil, nil
	}
	out := maps.Clone(agent)
	if out == nil {
		out = make(map[string]string, len(token))
	}
	var overridden []string
	for _, k := range slices.Sorted(maps.Keys(token)) {
		if v, ok := out[k]; ok && v != token[k] {
			overridden = append(overridden, k)
		}
		out[k] = token[k]
	}
	return out, overridden
}
