package cli

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/logging"
)

// serverFlags binds the server's command-line flags.
type serverFlags struct {
	configFile string
	logLevel   string
	logFormat  string
	cfg        server.Config
}

func newServerCommand(g *globals) *cobra.Command {
	f := &serverFlags{cfg: server.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane server",
		Long: `Run one Drover control-plane server in the foreground.

A cluster forms by itself: start three servers with --bootstrap-expect 3, each
with --join pointing at the gossip address of another. They find each other
over encrypted gossip and bootstrap Raft once three are present. Servers added
later (a 4th and 5th) join the same way and the leader makes them voters.

All servers of a cluster share one CA (create it once with
"drover tls ca create" and pass --ca-file/--ca-key-file). A single server
(--bootstrap-expect 1) creates its own CA in its data dir when none is given.

Settings come from the defaults, then --config (JSON, unknown fields are an
error), then flags. SIGINT or SIGTERM stops the server gracefully; it stays a
member of the cluster. Use "drover operator leave" to leave for good.

A server whose Raft data is damaged refuses to start and says so. Rebuild it
from the other servers: remove it with "drover operator raft remove-peer NAME"
on a healthy server, then start it with the same flags plus --rebuild. It sets
the damaged data aside (damaged-TIME in the data dir), joins as an empty
server and catches up from the leader. --rebuild refuses to touch intact data.`,
		Example: `  # A three-server cluster on one host
  drover tls ca create --dir ./ca
  for i in 1 2 3; do
    drover server --name s$i --data-dir ./s$i \
      --api-addr 127.0.0.1:74${i}0 --raft-addr 127.0.0.1:74${i}1 --gossip-addr 127.0.0.1:74${i}2 \
      --bootstrap-expect 3 --join 127.0.0.1:7412 \
      --ca-file ./ca/ca.pem --ca-key-file ./ca/ca-key.pem &
  done`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.resolve(cmd)
			if err != nil {
				return usageErr(cmd, err)
			}
			logger, err := f.logger(g)
			if err != nil {
				return usageErr(cmd, err)
			}
			cfg.Logger = logger
			return runServer(cmd.Context(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.configFile, "config", "", "JSON config file; flags given on the command line override it")
	fl.StringVar(&f.cfg.Name, "name", f.cfg.Name, "server name, unique in the cluster (default: host name)")
	fl.StringVar(&f.cfg.DataDir, "data-dir", f.cfg.DataDir, "directory for the Raft log, snapshots and TLS material")
	fl.StringVar(&f.cfg.APIAddr, "api-addr", f.cfg.APIAddr, "HOST:PORT for the API (HTTPS on TCP, HTTP/3 on UDP)")
	fl.StringVar(&f.cfg.RaftAddr, "raft-addr", f.cfg.RaftAddr, "HOST:PORT for Raft traffic between servers")
	fl.StringVar(&f.cfg.GossipAddr, "gossip-addr", f.cfg.GossipAddr, "HOST:PORT for server discovery (gossip)")
	fl.StringVar(&f.cfg.AdvertiseHost, "advertise-host", "", "host other servers use to reach this one (when binding 0.0.0.0)")
	fl.IntVar(&f.cfg.BootstrapExpect, "bootstrap-expect", f.cfg.BootstrapExpect, "servers to wait for before bootstrapping a new cluster (1, 3 or 5; 0 to only join)")
	fl.StringArrayVar(&f.cfg.Join, "join", nil, "gossip address of another server (repeatable)")
	fl.StringVar(&f.cfg.CACertFile, "ca-file", "", "cluster CA certificate (PEM)")
	fl.StringVar(&f.cfg.CAKeyFile, "ca-key-file", "", "cluster CA private key (PEM)")
	fl.BoolVar(&f.cfg.Rebuild, "rebuild", false, "set this server's damaged Raft data aside and catch up from the other servers "+
		"(remove it with \"drover operator raft remove-peer\" first; see docs/operations.md)")
	fl.DurationVar((*time.Duration)(&f.cfg.TelemetryRetention), "telemetry-retention", time.Duration(f.cfg.TelemetryRetention),
		"how long agents' telemetry windows are kept (at least 10m)")
	fl.Int64Var(&f.cfg.TelemetryMaxBytes, "telemetry-max-bytes", f.cfg.TelemetryMaxBytes,
		"most bytes of telemetry windows kept; the oldest go first (at least 32 MiB)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	return cmd
}

// resolve applies the config file under the flags the user gave.
func (f *serverFlags) resolve(cmd *cobra.Command) (server.Config, error) {
	cfg := f.cfg
	if f.configFile != "" {
		fromFile, err := server.LoadConfigFile(f.configFile, server.DefaultConfig())
		if err != nil {
			return cfg, err
		}
		// Flags given on the command line win over the file.
		fl := cmd.Flags()
		override := func(name string, set func()) {
			if fl.Changed(name) {
				set()
			}
		}
		override("name", func() { fromFile.Name = cfg.Name })
		override("data-dir", func() { fromFile.DataDir = cfg.DataDir })
		override("api-addr", func() { fromFile.APIAddr = cfg.APIAddr })
		override("raft-addr", func() { fromFile.RaftAddr = cfg.RaftAddr })
		override("gossip-addr", func() { fromFile.GossipAddr = cfg.GossipAddr })
		override("advertise-host", func() { fromFile.AdvertiseHost = cfg.AdvertiseHost })
		override("bootstrap-expect", func() { fromFile.BootstrapExpect = cfg.BootstrapExpect })
		override("join", func() { fromFile.Join = cfg.Join })
		override("ca-file", func() { fromFile.CACertFile = cfg.CACertFile })
		override("ca-key-file", func() { fromFile.CAKeyFile = cfg.CAKeyFile })
		override("telemetry-retention", func() { fromFile.TelemetryRetention = cfg.TelemetryRetention })
		override("telemetry-max-bytes", func() { fromFile.TelemetryMaxBytes = cfg.TelemetryMaxBytes })
		fromFile.Rebuild = cfg.Rebuild // a flag only
		cfg = fromFile
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func (f *serverFlags) logger(g *globals) (*slog.Logger, error) {
	level, err := logging.ParseLevel(f.logLevel)
	if err != nil {
		return nil, err
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return nil, fmt.Errorf("--log-format %q: use text or json", f.logFormat)
	}
	return logging.New(g.stderr, level, f.logFormat), nil
}

// runServer starts a server and runs it until ctx ends (a signal) or the
// server leaves the cluster, then stops it gracefully.
func runServer(ctx context.Context, cfg server.Config) error {
	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return err
	}
	var failed error
	select {
	case <-ctx.Done():
	case <-s.LeaveRequested():
	case <-s.Done():
	case <-s.StoreFailed():
		failed = fmt.Errorf("stopped: %w", s.StoreErr())
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	err = s.Shutdown(shutdownCtx)
	if failed != nil {
		return failed
	}
	return err
}
