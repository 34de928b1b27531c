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
