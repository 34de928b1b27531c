package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/droverhq/drover/internal/names"
)

// Default ports. The API port serves HTTPS on TCP and HTTP/3 on UDP.
const (
	DefaultAPIPort    = 7400
	DefaultRaftPort   = 7401
	DefaultGossipPort = 7402
)

// Bounds of the telemetry store's settings.
const (
	minTelemetryRetention = 10 * time.Minute
	// minTelemetryBytes holds the largest window an agent may ship.
	minTelemetryBytes = 32 << 20
)

// minRaftTimeout is the shortest Raft timeout hashicorp/raft accepts.
const minRaftTimeout = 5 * time.Millisecond

// Bounds of the network settings.
const (
	// minHandshakeTimeout leaves a TLS handshake (two round trips and
	// the certificate checks) time even on a slow WAN link.
	minHandshakeTimeout = 100 * time.Millisecond
	// maxHandshakeTimeout: beyond it idle strangers hold connections for
	// minutes, which is what the timeout is there to stop.
	maxHandshakeTimeout = 5 * time.Minute
	// minRequestBytes fits the largest message a Drover client sends: a
	// 1 MiB chunk of "drover operator snapshot restore".
	minRequestBytes = 2 << 20
	// maxRequestBytes: the server may hold a whole message in memory per
	// call in flight, so a larger bound lets a few calls exhaust it. Bulk
	// data travels as a stream of smaller messages.
	maxRequestBytes = 256 << 20
)

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

	// The network surface facing strangers. Every TLS listener over TCP
	// (Raft, the HTTPS API) closes a connection whose handshake has not
	// completed within TLSHandshakeTimeout and lets one remote host (an
	// IPv6 /64) have at most MaxPendingHandshakesPerHost handshakes in
	// progress; QUIC aborts handshakes within the same timeout.
	// MaxRequestBytes bounds the body of an API call, and each message of
	// a streaming upload; it is refused before it is read when it says
	// its length up front.
	TLSHandshakeTimeout         Duration `json:"tls_handshake_timeout,omitempty"`
	MaxPendingHandshakesPerHost int      `json:"max_pending_handshakes_per_host,omitempty"`
	MaxRequestBytes             int64    `json:"max_request_bytes,omitempty"`

	// MaxVersionBytes bounds the total size of a pushed model version;
	// StartPush refuses a manifest over it before any byte is sent.
	MaxVersionBytes int64 `json:"max_version_bytes,omitempty"`
	// ChunkReserveBytes is free disk space the chunk store never uses, so
	// that pushed chunks cannot starve the Raft log on the same disk.
	ChunkReserveBytes int64 `json:"chunk_reserve_bytes,omitempty"`
	// ChunkGCInterval is how often the server removes chunks no version
	// references any more.
	ChunkGCInterval Duration `json:"chunk_gc_interval,omitempty"`
	// ChunkGCGrace is how long a chunk stays after it was written or last
	// held by a push, referenced or not: a version being committed on
	// another server may still need what was copied here.
	ChunkGCGrace Duration `json:"chunk_gc_grace,omitempty"`
	// ChunkFillInterval is how often the server copies from its peers the
	// chunks of versions that it lacks (a push leaves them on a quorum
	// only; a server that was down, is new or was rebuilt lacks them). It
	// also does so soon after it starts, after each new version and when
	// a server joins, and retries sooner while chunks stay missing.
	ChunkFillInterval Duration `json:"chunk_fill_interval,omitempty"`

	// TelemetryRetention is how long the server keeps agents' telemetry
	// windows after their end; older windows are deleted and refused.
	TelemetryRetention Duration `json:"telemetry_retention,omitempty"`
	// TelemetryMaxBytes bounds the server's telemetry store; past it the
	// oldest windows are deleted first.
	TelemetryMaxBytes int64 `json:"telemetry_max_bytes,omitempty"`

	// Logger receives the server's logs; nil discards them. Not in files.
	Logger *slog.Logger `json:"-"`
	// Dial, when set, opens every connection this server makes to another
	// server: Raft, and the API calls it forwards or makes to its peers.
	// Nil dials directly. Not in files.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
	// WrapListener, when set, wraps the TCP listeners other servers
	// connect to (Raft and the API), below TLS; a test cluster injects
	// network faults through it and Dial. Nil uses them as they are. Not
	// in files.
	WrapListener func(net.Listener) net.Listener `json:"-"`
	// Rebuild makes Start set this server's damaged Raft data (log, term,
	// vote and snapshots) aside and start as an empty server that the
	// leader adds back and brings up to date with a snapshot. Start refuses
	// when the data is intact. Remove the server from the cluster first
	// (operator raft remove-peer): a server that forgot its vote must not
	// vote as the same member again. See docs/operations.md. A flag, never
	// in files, so that it cannot stay on by mistake. Never bootstraps.
	Rebuild bool `json:"-"`
	// RaftNoSync turns off fsync in the Raft store. Benchmarks and tests
	// only: a crash can lose acknowledged writes. Not in files.
	RaftNoSync bool `json:"-"`
	// NoChunkFill turns off the background copying of missing chunks
	// (see ChunkFillInterval), so that a server keeps lacking what a push
	// left on the others; GetChunk still fetches a chunk it is asked for.
	// Tests of that path only: with it a server that was down stays
	// incomplete, and losing the servers that hold a version loses it. Not
	// in files.
	NoChunkFill bool `json:"-"`
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

		TLSHandshakeTimeout:         Duration(10 * time.Second),
		MaxPendingHandshakesPerHost: 32,
		MaxRequestBytes:             4 << 20,

		MaxVersionBytes:   64 << 30,
		ChunkReserveBytes: 1 << 30,
		ChunkGCInterval:   Duration(10 * time.Minute),
		ChunkGCGrace:      Duration(time.Hour),
		ChunkFillInterval: Duration(time.Minute),

		TelemetryRetention: Duration(7 * 24 * time.Hour),
		TelemetryMaxBytes:  1 << 30,
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
	if c.Rebuild && c.BootstrapExpect == 1 {
		errs = append(errs, errors.New("--rebuild copies the state back from the other servers, and a single-server cluster "+
			"(bootstrap-expect 1) has none: restore it with \"drover operator snapshot restore\" instead"))
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
	if c.TLSHandshakeTimeout < Duration(minHandshakeTimeout) || c.TLSHandshakeTimeout > Duration(maxHandshakeTimeout) {
		errs = append(errs, fmt.Errorf("tls_handshake_timeout %s is out of range: use %s to %s",
			time.Duration(c.TLSHandshakeTimeout), minHandshakeTimeout, maxHandshakeTimeout))
	}
	if c.MaxPendingHandshakesPerHost < 1 {
		errs = append(errs, fmt.Errorf("max_pending_handshakes_per_host %d must be at least 1", c.MaxPendingHandshakesPerHost))
	}
	if c.MaxRequestBytes < minRequestBytes || c.MaxRequestBytes > maxRequestBytes {
		errs = append(errs, fmt.Errorf("max_request_bytes %d is out of range: use %d (2 MiB, the largest message clients send) to %d (256 MiB)",
			c.MaxRequestBytes, minRequestBytes, maxRequestBytes))
	}
	if c.MaxVersionBytes <= 0 {
		errs = append(errs, fmt.Errorf("max_version_bytes %d must be positive (64 GiB is the default)", c.MaxVersionBytes))
	}
	if c.ChunkGCInterval <= 0 {
		errs = append(errs, fmt.Errorf("chunk_gc_interval %v must be positive (10m is the default)", time.Duration(c.ChunkGCInterval)))
	}
	if c.ChunkGCGrace < 0 {
		errs = append(errs, fmt.Errorf("chunk_gc_grace %v must not be negative (1h is the default)", time.Duration(c.ChunkGCGrace)))
	}
	if c.ChunkFillInterval <= 0 {
		errs = append(errs, fmt.Errorf("chunk_fill_interval %v must be positive (1m is the default)", time.Duration(c.ChunkFillInterval)))
	}
	if c.ChunkReserveBytes < 0 {
		errs = append(errs, fmt.Errorf("chunk_reserve_bytes %d must not be negative (use 0 to keep no disk free for other uses)", c.ChunkReserveBytes))
	}
	if c.TelemetryRetention < Duration(minTelemetryRetention) {
		errs = append(errs, fmt.Errorf("telemetry_retention (--telemetry-retention) %v is shorter than %v, which a window shipped late from an agent's spool needs (168h is the default)", time.Duration(c.TelemetryRetention), minTelemetryRetention))
	}
	if c.TelemetryMaxBytes < minTelemetryBytes {
		errs = append(errs, fmt.Errorf("telemetry_max_bytes (--telemetry-max-bytes) %d is below %d, too small to hold a window (1073741824 is the default)", c.TelemetryMaxBytes, minTelemetryBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid server config: %w", err)
	}
	return nil
}

// dial opens a connection to another server, through Dial when set.
func (c *Config) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.Dial != nil {
		return c.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// wrapListener returns ln through WrapListener when set.
func (c *Config) wrapListener(ln net.Listener) net.Listener {
	if c.WrapListener != nil {
		return c.WrapListener(ln)
	}
	return ln
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
