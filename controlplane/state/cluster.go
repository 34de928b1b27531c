package state

import (
	"fmt"
	"strings"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// InitCluster applies the command that sets the cluster's identity, once
// per cluster. When c has no create_time, the command's time is used.
func (s *Store) InitCluster(idx uint64, meta *droverv1.CommandMeta, c *droverv1.ClusterMeta) error {
	return s.write(idx, meta, ActionClusterInit, func() (string, map[string]string, error) {
		target := "cluster/" + c.GetClusterId()
		if s.t.cluster != nil {
			return target, nil, fmt.Errorf("init cluster %q: %w (cluster id %q)", c.GetClusterId(), ErrClusterInitialized, s.t.cluster.GetClusterId())
		}
		if c.GetClusterId() == "" {
			return target, nil, fmt.Errorf("cluster id is %w: it is empty", ErrInvalid)
		}
		if h := c.GetCaSha256(); h != "" && (len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "") {
			return target, nil, fmt.Errorf("cluster CA hash %q is %w: use 64 lowercase hex digits", h, ErrInvalid)
		}
		stored := clone(c)
		if stored.CreateTime == nil && meta.GetTime() != nil {
			stored.CreateTime = clone(meta.GetTime())
		}
		s.t.cluster = stored
		var details map[string]string
		if h := c.GetCaSha256(); h != "" {
			details = map[string]string{"ca_sha256": h}
		}
		return target, details, nil
	})
}

// Cluster returns the cluster's identity, or nil before InitCluster.
func (s *Store) Cluster() *droverv1.ClusterMeta {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.t.cluster == nil {
		return nil
	}
	return clone(s.t.cluster)
}

// BootstrapACL applies the command that stores the first management
// token, once per cluster. The token carries only the SHA-256 of its
// secret. Its create_index is set to idx; when it has no create_time, the
// command's time is used.
func (s *Store) BootstrapACL(idx uint64, meta *droverv1.CommandMeta, token *droverv1.ACLToken) error {
	return s.write(idx, meta, ActionACLBootstrap, func() (string, map[string]string, error) {
		target := "acl/token/" + token.GetAccessorId()
		if s.t.aclBootstrapped {
			return target, nil, fmt.Errorf("%w: use the management token it created", ErrACLBootstrapped)
		}
		if err := validateToken(token); err != nil {
			return target, nil, err
		}
		t := clone(token)
		t.CreateIndex = idx
		if t.CreateTime == nil && meta.GetTime() != nil {
			t.CreateTime = clone(meta.GetTime())
		}
		s.t.tokens[t.GetAccessorId()] = t
		s.t.secrets[[32]byte(t.GetSecretSha256())] = t
		s.t.aclBootstrapped = true
		return target, nil, nil
	})
}

func validateToken(t *droverv1.ACLToken) error {
	if t.GetAccessorId() == "" {
		return fmt.Errorf("token accessor id is %w: it is empty", ErrInvalid)
	}
	if n := len(t.GetSecretSha256()); n != 32 {
		return fmt.Errorf("token %q secret hash is %w: it is %d bytes, a SHA-256 is 32", t.GetAccessorId(), ErrInvalid, n)
	}
	return nil
}

// TokenBySecretHash returns the token whose secret hashes to h.
func (s *Store) TokenBySecretHash(h [32]byte) (*droverv1.ACLToken, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.t.secrets[h]
	if !ok {
		return nil, false
	}
	return clone(t), true
}

// ACLBootstrapped reports whether the management token has been created.
func (s *Store) ACLBootstrapped() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.t.aclBootstrapped
}
