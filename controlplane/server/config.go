package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/droverhq/drover/internal/faultnet"
	"github.com/droverhq/drover/internal/names"
)

// Default ports. The API port serves HTTPS on TCP and HTTP/3 on UDP.
const (
	DefaultAPIPort    = 7400
	DefaultRaftPort   = 7401
	DefaultGossipPort = 7402
)

// minRaftTimeout is the shortest Raft timeout hashicorp/raft accepts.
const minRaftTimeout = 5 * time.Millisecond

// Config is everything a server needs to start. Build it with DefaultConfig
// and check it with Validate; New validates again.
type Config struct {
	// Name identifies the server in Raft and gossip; unique in the cluster.
	Name string `json:"name"`
	// DataDir holds the Raft log, snapshots and TLS material.
	DataDir string `json:"data_dir"`

	// APIAddr is HOST:PORT for the API (HTTPS on TCP, HTTP/3 on UDP).
	APIAddr string `json:"api_addr"`
	// RaftAddr is HOST:PORT for Raft traffic (mutual TLS over TCP).
	RaftAddr string `json:"raft_addr"`
	// GossipAddr is HOST:PORT for server discovery (memberlist, encrypted).
	GossipAddr string `json:"gossip_addr"`
	// AdvertiseHost, when set, replaces the host part of the addresses
	// above in what this server tells its peers (use it when binding to
	// 0.0.0.0).
	AdvertiseHost string `json:"advertise_host,omitempty"`

	// BootstrapExpect is how many servers must be present before the first
	// Raft configuration is bootstrapped. 1 makes a single-server cluster.
	// 0 means "never bootstrap; join an existing cluster".
	BootstrapExpect int `json:"bootstrap_expect"`
	// Join lists gossip addresses of other servers to contact at start.
	Join []string `json:"join,omitempty"`

	// CACertFile and CAKeyFile name the cluster CA. When both are empty the
	// server uses the CA in its data dir, creating one on a single-server
	// cluster's first start.
	CACertFile string `json:"ca_cert_file,omitempty"`
	CAKeyFile  string `json:"ca_key_file,omitempty"`

	// Raft timing. Defaults suit a LAN; see docs/performance.md for why.
	HeartbeatTimeout   Duration `json:"raft_heartbeat_timeout,omitempty"`
	ElectionTimeout    Duration `json:"raft_election_timeout,omitempty"`
	LeaderLeaseTimeout Duration `json:"raft_leader_lease_timeout,omitempty"`
	// ApplyTimeout bounds how long a write waits to be committed.
	ApplyTimeout Duration `json:"apply_timeout,omitempty"`
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64 `json:"snapshot_threshold,omitempty"`
	// TrailingLogs is how many entries stay in the log after a snapshot.
	TrailingLogs uint64 `json:"trailing_logs,omitempty"`

	// Node heartbeats. The leader hands each agent a TTL of
	// max(HeartbeatMinTTL, nodes / MaxHeartbeatsPerSecond) plus a little
	// jitter and marks a node DOWN when it has not heard from it within
	// that TTL and half as much again. After a leader change every node
	// gets one TTL plus HeartbeatLeaderGrace before it can be marked down.
	HeartbeatMinTTL        Duration `json:"heartbeat_min_ttl,omitempty"`
	MaxHeartbeatsPerSecond float64  `json:"max_heartbeats_per_second,omitempty"`
	HeartbeatLeaderGrace   Duration `json:"heartbeat_leader_grace,omitempty"`

	// Logger receives the server's logs; nil discards them. Not in files.
	Logger *slog.Logger `json:"-"`
	// Network, when set, wraps Raft and forwarding connections so tests can
	// partition and delay them. Not in files.
	Network *faultnet.Network `json:"-"`
	// RaftNoSync turns off fsync in the Raft store. Benchmarks and tests
	// only: a crash can lose acknowledged writes. Not in files.
	RaftNoSync bool `json:"-"`
}

// Duration is a time.Duration that reads and writes as "1.5s" in JSON.
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string such as "500ms".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"500ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// DefaultConfig returns a configuration for one server on this host with
// the default ports and Raft timings chosen for a LAN (a leader is replaced
// in about a second after it dies).
func DefaultConfig() Config {
	// The host name made into a name, as the agent names its node.
	host, _ := os.Hostname()
	host = names.FromHostname(host)
	if host == "" {
		host = "drover-server"
	}
	return Config{
		Name:               host,
		DataDir:            "drover-data",
		APIAddr:            fmt.Sprintf("127.0.0.1:%d", DefaultAPIPort),
		RaftAddr:           fmt.Sprintf("127.0.0.1:%d", DefaultRaftPort),
		GossipAddr:         fmt.Sprintf("127.0.0.1:%d", DefaultGossipPort),
		BootstrapExpect:    1,
		HeartbeatTimeout:   Duration(500 * time.Millisecond),
		ElectionTimeout:    Duration(500 * time.Millisecond),
		LeaderLeaseTimeout: Duration(250 * time.Millisecond),
		ApplyTimeout:       Duration(10 * time.Second),
		SnapshotThreshold:  8192,
		TrailingLogs:       10240,

		HeartbeatMinTTL:        Duration(10 * time.Second),
		MaxHeartbeatsPerSecond: 50,
		HeartbeatLeaderGrace:   Duration(10 * time.Second),
	}
}

// LoadConfigFile reads a JSON config file over base. Unknown fields are an
// error, so a typo never silently falls back to a default.
func LoadConfigFile(path string, base Config) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return base, fmt.Errorf("read config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	cfg := base
	if err := dec.Decode(&cfg); err != nil {
		return base, fmt.Errorf("config file %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks each field and the relations between them.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.Name == "":
		errs = append(errs, errors.New("name is empty: set --name"))
	case !names.IsName(c.Name):
		// The same rules as node, model and site names: the name goes
		// into Raft, certificates, file names and `drover status`.
		errs = append(errs, fmt.Errorf("name %q: %s, such as \"s1\": set --name", c.Name, names.Rule))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir is empty: set --data-dir"))
	}
	addrs := map[string]string{"api": c.APIAddr, "raft": c.RaftAddr, "gossip": c.GossipAddr}
	for _, kind := range []string{"api", "raft", "gossip"} {
		if _, _, err := net.SplitHostPort(addrs[kind]); err != nil {
			errs = append(errs, fmt.Errorf("%s address %q is not HOST:PORT: set --%s-addr", kind, addrs[kind], kind))
		}
	}
	// Every pair collides: API and gossip both use TCP and UDP, Raft TCP.
	for _, p := range [][2]string{{"api", "raft"}, {"api", "gossip"}, {"raft", "gossip"}} {
		a, b := addrs[p[0]], addrs[p[1]]
		if a == b && !strings.HasSuffix(a, ":0") {
			errs = append(errs, fmt.Errorf("%s and %s addresses are both %s: give --%s-addr and --%s-addr different ports",
				p[0], p[1], a, p[0], p[1]))
		}
	}
	if c.BootstrapExpect < 0 {
		errs = append(errs, fmt.Errorf("bootstrap-expect %d is negative", c.BootstrapExpect))
	}
	if c.BootstrapExpect == 2 {
		errs = append(errs, errors.New("bootstrap-expect 2 makes a cluster that cannot lose any server: use 1, 3 or 5"))
	}
	if c.BootstrapExpect == 0 && len(c.Join) == 0 {
		errs = append(errs, errors.New("a server that does not bootstrap (bootstrap-expect 0) must --join an existing cluster"))
	}
	if (c.CACertFile == "") != (c.CAKeyFile == "") {
		errs = append(errs, errors.New("give both --ca-file and --ca-key-file, or neither"))
	}
	// Raft timings are config-file settings only; messages name the keys.
	// Raft itself refuses less than 5ms, an election timeout shorter than
	// the heartbeat timeout, and a lease longer than the heartbeat.
	for _, d := range []struct {
		key string
		v   Duration
	}{
		{"raft_heartbeat_timeout", c.HeartbeatTimeout},
		{"raft_election_timeout", c.ElectionTimeout},
		{"raft_leader_lease_timeout", c.LeaderLeaseTimeout},
	} {
		if d.v < Duration(minRaftTimeout) {
			errs = append(errs, fmt.Errorf("%s %s is too short: use at least %s", d.key, time.Duration(d.v), minRaftTimeout))
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("raft_leader_lease_timeout %s must not exceed raft_heartbeat_timeout %s",
			time.Duration(c.LeaderLeaseTimeout), time.Duration(c.HeartbeatTimeout)))
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("raft_election_timeout %s must not be shorter than raft_heartbeat_timeout %s",
			time.Duration(c.ElectionTimeout), time.Duration(c.HeartbeatTimeout)))
	}
	if c.ApplyTimeout <= 0 {
		errs = append(errs, errors.New("apply_timeout must be positive"))
	}
	if c.SnapshotThreshold == 0 {
		errs = append(errs, errors.New("snapshot_threshold must be positive"))
	}
	if c.HeartbeatMinTTL < Duration(minHeartbeatTTL) {
		errs = append(errs, fmt.Errorf("heartbeat_min_ttl %s is too short: use at least %s (the leader checks deadlines every %s)",
			time.Duration(c.HeartbeatMinTTL), minHeartbeatTTL, heartbeatTick))
	}
	if c.MaxHeartbeatsPerSecond <= 0 {
		errs = append(errs, fmt.Errorf("max_heartbeats_per_second %v must be positive", c.MaxHeartbeatsPerSecond))
	}
	if c.HeartbeatLeaderGrace < 0 {
		errs = append(errs, fmt.Errorf("heartbeat_leader_grace %s is negative", time.Duration(c.HeartbeatLeaderGrace)))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid server config: %w", err)
	}
	return nil
}

// raftDir, snapshotDir and tlsDir lay out the data dir.
func (c *Config) raftDir() string     { return filepath.Join(c.DataDir, "raft") }
func (c *Config) snapshotDir() string { return filepath.Join(c.DataDir, "snapshots") }
func (c *Config) tlsDir() string      { return filepath.Join(c.DataDir, "tls") }

// advertise replaces the host of addr with AdvertiseHost when set.
func (c *Config) advertise(addr string) string {
	if c.AdvertiseHost == "" {
		return addr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(c.AdvertiseHost, port)
}
