package server

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigValidates(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
	if cfg.Name == "" || cfg.DataDir == "" || cfg.BootstrapExpect != 1 {
		t.Fatalf("DefaultConfig() = %+v: want a name, a data dir and a single-server bootstrap", cfg)
	}
}

// Each impossible setting is refused before anything starts, with a
// message that names the flag (or, for settings only a config file has,
// the file's key) the operator has to change.
func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		want   string // must appear in the error
	}{
		{"empty name", func(c *Config) { c.Name = "" }, "--name"},
		{"name with upper case and a space", func(c *Config) { c.Name = "Server 1" }, `name "Server 1": use 1-63 lowercase letters`},
		{"name with a slash", func(c *Config) { c.Name = "s1/a" }, "--name"},
		{"empty data dir", func(c *Config) { c.DataDir = "" }, "--data-dir"},
		{"api address without port", func(c *Config) { c.APIAddr = "127.0.0.1" }, "--api-addr"},
		{"raft address without port", func(c *Config) { c.RaftAddr = "localhost" }, "--raft-addr"},
		{"gossip address garbage", func(c *Config) { c.GossipAddr = "::1:2:3" }, "--gossip-addr"},
		{"raft and api on one port", func(c *Config) { c.RaftAddr = c.APIAddr }, "--raft-addr"},
		{"raft and gossip on one port", func(c *Config) { c.GossipAddr = c.RaftAddr }, "--gossip-addr"},
		{"api and gossip on one port", func(c *Config) { c.GossipAddr = c.APIAddr }, "--gossip-addr"},
		{"negative bootstrap-expect", func(c *Config) { c.BootstrapExpect = -1 }, "bootstrap-expect"},
		{"bootstrap-expect 2", func(c *Config) { c.BootstrapExpect = 2 }, "bootstrap-expect"},
		{"no bootstrap and nothing to join", func(c *Config) { c.BootstrapExpect = 0; c.Join = nil }, "--join"},
		{"CA cert without key", func(c *Config) { c.CACertFile = "ca.pem" }, "--ca-key-file"},
		{"CA key without cert", func(c *Config) { c.CAKeyFile = "ca-key.pem" }, "--ca-file"},
		{"zero heartbeat timeout", func(c *Config) { c.HeartbeatTimeout = 0 }, "raft_heartbeat_timeout"},
		{"negative election timeout", func(c *Config) { c.ElectionTimeout = Duration(-time.Second) }, "raft_election_timeout"},
		{"zero leader lease", func(c *Config) { c.LeaderLeaseTimeout = 0 }, "raft_leader_lease_timeout"},
		{"heartbeat below Raft's 5ms floor", func(c *Config) {
			c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = Duration(time.Millisecond), Duration(time.Second), Duration(time.Millisecond)
		}, "raft_heartbeat_timeout"},
		{"leader lease longer than heartbeat", func(c *Config) { c.LeaderLeaseTimeout = c.HeartbeatTimeout + 1 }, "raft_leader_lease_timeout"},
		{"election shorter than heartbeat", func(c *Config) { c.ElectionTimeout = c.HeartbeatTimeout / 2 }, "raft_election_timeout"},
		{"zero apply timeout", func(c *Config) { c.ApplyTimeout = 0 }, "apply_timeout"},
		{"zero snapshot threshold", func(c *Config) { c.SnapshotThreshold = 0 }, "snapshot_threshold"},
		{"heartbeat TTL shorter than a few ticks", func(c *Config) { c.HeartbeatMinTTL = Duration(100 * time.Millisecond) }, "heartbeat_min_ttl"},
		{"zero heartbeat rate", func(c *Config) { c.MaxHeartbeatsPerSecond = 0 }, "max_heartbeats_per_second"},
		{"negative leader grace", func(c *Config) { c.HeartbeatLeaderGrace = Duration(-time.Second) }, "heartbeat_leader_grace"},
		{"no handshake timeout", func(c *Config) { c.TLSHandshakeTimeout = 0 }, "tls_handshake_timeout"},
		{"handshake timeout of an hour", func(c *Config) { c.TLSHandshakeTimeout = Duration(time.Hour) }, "tls_handshake_timeout"},
		{"no pending handshakes allowed", func(c *Config) { c.MaxPendingHandshakesPerHost = 0 }, "max_pending_handshakes_per_host"},
		{"request limit below a snapshot chunk", func(c *Config) { c.MaxRequestBytes = 64 << 10 }, "max_request_bytes"},
		{"request limit of a gigabyte", func(c *Config) { c.MaxRequestBytes = 1 << 30 }, "max_request_bytes"},
		{"no room for a version", func(c *Config) { c.MaxVersionBytes = 0 }, "max_version_bytes"},
		{"negative chunk reserve", func(c *Config) { c.ChunkReserveBytes = -1 }, "chunk_reserve_bytes"},
		{"no chunk fill interval", func(c *Config) { c.ChunkFillInterval = 0 }, "chunk_fill_interval"},
		{"telemetry kept a minute", func(c *Config) { c.TelemetryRetention = Duration(time.Minute) }, "--telemetry-retention"},
		{"no room for telemetry", func(c *Config) { c.TelemetryMaxBytes = 0 }, "--telemetry-max-bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.change(&cfg)
			err := cfg.Validate()
			if err == nil {
				t.Fatalf("Validate accepted %+v", cfg)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %q: does not name %q", err, tt.want)
			}
			if _, nerr := New(cfg); nerr == nil {
				t.Fatal("New accepted a config that Validate refuses")
			}
		})
	}
}

// Port 0 means "any free port", so several listeners may all ask for it.
func TestValidateAllowsPortZeroEverywhere(t *testing.T) {
	cfg := DefaultConfig()
	cfg.APIAddr, cfg.RaftAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
}

// Validate reports every problem at once, so an operator fixes a config
// in one pass.
func TestValidateReportsAllProblems(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Name, cfg.DataDir = "", ""
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "--name") || !strings.Contains(err.Error(), "--data-dir") {
		t.Fatalf("Validate() = %v, want both --name and --data-dir", err)
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigFile(t *testing.T) {
	base := DefaultConfig()

	t.Run("values and durations", func(t *testing.T) {
		path := writeFile(t, `{
			"name": "s7",
			"data_dir": "/var/lib/drover",
			"bootstrap_expect": 3,
			"join": ["10.0.0.1:7402"],
			"raft_heartbeat_timeout": "1s",
			"raft_election_timeout": "1.5s",
			"raft_leader_lease_timeout": "500ms",
			"apply_timeout": "2m",
			"tls_handshake_timeout": "3s",
			"max_pending_handshakes_per_host": 8,
			"max_request_bytes": 16777216
		}`)
		cfg, err := LoadConfigFile(path, base)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Name != "s7" || cfg.DataDir != "/var/lib/drover" || cfg.BootstrapExpect != 3 ||
			len(cfg.Join) != 1 || cfg.Join[0] != "10.0.0.1:7402" {
			t.Fatalf("loaded %+v", cfg)
		}
		for _, d := range []struct {
			name      string
			got, want Duration
		}{
			{"heartbeat", cfg.HeartbeatTimeout, Duration(time.Second)},
			{"election", cfg.ElectionTimeout, Duration(1500 * time.Millisecond)},
			{"lease", cfg.LeaderLeaseTimeout, Duration(500 * time.Millisecond)},
			{"apply", cfg.ApplyTimeout, Duration(2 * time.Minute)},
			{"tls handshake", cfg.TLSHandshakeTimeout, Duration(3 * time.Second)},
		} {
			if d.got != d.want {
				t.Errorf("%s timeout = %v, want %v", d.name, time.Duration(d.got), time.Duration(d.want))
			}
		}
		if cfg.MaxPendingHandshakesPerHost != 8 || cfg.MaxRequestBytes != 16<<20 {
			t.Errorf("network limits: %d pending per host, %d request bytes; want 8, 16 MiB",
				cfg.MaxPendingHandshakesPerHost, cfg.MaxRequestBytes)
		}
		// What the file does not mention keeps the base value.
		if cfg.APIAddr != base.APIAddr || cfg.SnapshotThreshold != base.SnapshotThreshold {
			t.Errorf("unmentioned fields changed: api %q, snapshot threshold %d", cfg.APIAddr, cfg.SnapshotThreshold)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("loaded config does not validate: %v", err)
		}
	})

	t.Run("overrides the base it is given", func(t *testing.T) {
		// The CLI loads the file over the defaults and then applies the
		// flags the user gave; here the base stands in for earlier values.
		b := base
		b.Name, b.AdvertiseHost = "from-base", "10.1.1.1"
		cfg, err := LoadConfigFile(writeFile(t, `{"name": "from-file"}`), b)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Name != "from-file" || cfg.AdvertiseHost != "10.1.1.1" {
			t.Fatalf("name %q advertise %q, want from-file and the base's 10.1.1.1", cfg.Name, cfg.AdvertiseHost)
		}
	})

	for _, tt := range []struct {
		name, body string
		want       []string
	}{
		{"unknown field", `{"name": "s1", "bootstrap_expekt": 3}`, []string{`"bootstrap_expekt"`}},
		{"duration as a number", `{"apply_timeout": 5}`, []string{"500ms"}},
		{"bad duration", `{"raft_heartbeat_timeout": "fast"}`, []string{"fast"}},
		{"not JSON", `name = "s1"`, []string{"server.json"}},
		{"Go-only field", `{"Logger": null}`, []string{`"Logger"`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.body)
			cfg, err := LoadConfigFile(path, base)
			if err == nil {
				t.Fatalf("LoadConfigFile accepted %s: %+v", tt.body, cfg)
			}
			for _, w := range append(tt.want, path) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if cfg.Name != base.Name || cfg.DataDir != base.DataDir {
				t.Errorf("on error LoadConfigFile returned %+v, want the base unchanged", cfg)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "nope.json")
		if _, err := LoadConfigFile(path, base); err == nil || !strings.Contains(err.Error(), "nope.json") {
			t.Fatalf("LoadConfigFile(missing) = %v, want an error naming the file", err)
		}
	})
}

func TestDurationJSONRoundTrip(t *testing.T) {
	d := Duration(1500 * time.Millisecond)
	b, err := d.MarshalJSON()
	if err != nil || string(b) != `"1.5s"` {
		t.Fatalf("MarshalJSON = %s, %v", b, err)
	}
	var back Duration
	if err := back.UnmarshalJSON(b); err != nil || back != d {
		t.Fatalf("UnmarshalJSON(%s) = %v, %v", b, time.Duration(back), err)
	}
}
