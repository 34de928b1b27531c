package cli

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/internal/buildinfo"
	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/units"
)

func newRootCommand(stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) *cobra.Command {
	var (
		servers, labels      []string
		token, dataDir, name string
		site, root           string
		gossipAddr, gossipAd string
		peerAddr             string
		peerUpload           string
		logLevel, logFormat  string
		cacheDir, cacheSize  string
		bandwidth, manifest  string
		serveAddr            string
		onnxRuntime          string
		telemetryWindow      time.Duration
		telemetrySpool       string
	)
	defaults := agent.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "drover-agent",
		Short: "Run the Drover agent on this machine",
		Long: `drover-agent runs on every machine of a Drover fleet, GPU server or edge
device. It probes the hardware, enrolls the machine in a cluster, and keeps a
mutually authenticated HTTP/3 (QUIC) session to the control plane, through
which it registers the hardware and heartbeats.

The first start enrolls: it needs the address of at least one server and a
join token, which an operator makes with ` + "`drover token create`" + `. The
token pins the cluster's CA, so the agent refuses to send it to a server of
any other cluster. Enrolling saves the node's identity (its key, certificate
and the servers it knows) in the data directory, and every later start uses
that identity instead: no token needed. To enroll again, remove
<data-dir>/identity.json.

Pass the token in ` + envToken + ` rather than --token where you can: other
users can read command lines, not environments.

The agents of one site form an encrypted gossip pool, on TCP and UDP at
--gossip-addr (` + agent.DefaultGossipAddr + ` by default): they find each other
through it, and it tells the control plane sooner when one of them fails.
A node without a site has no pool; --gossip-addr off turns it off.
Agents of a site also serve each other the chunks of model versions they
pull, over HTTP/3 with mutual TLS on UDP --peer-addr (the port after the
gossip port by default; --peer-addr off turns it off), so that the control
plane sends a chunk to a site about once; --peer-upload-bandwidth caps what
an agent serves.

When an operator asks the node to pull a model version (` + "`drover node pull`" + `),
the agent checks the version's manifest against the cluster's signing keys
and against what it trusted before (a version's manifest never changes, and
an older manifest is never taken for a newer version), fetches the chunks
its cache lacks, and assembles <data-dir>/versions/MODEL/VERSION in one step.
The chunk cache (--cache-dir, default <data-dir>/cache) keeps the current
and previous version of each model whatever its --cache-budget, and evicts
the least recently used other chunks beyond it. A pull cut short by a
restart goes on where it stopped.

The agent runs the model deployments the control plane assigns to the node
(` + "`drover deploy apply`" + `): it pulls each assigned version, starts it beside the
one that serves, waits until it is healthy, switches the node's inference
endpoint to it and stops the old one, keeping the old version on disk for an
instant rollback. Each instance is a child process: drover-onnx for runtime
onnx (found next to drover-agent or with --onnx-runtime), the deployment's
own command for runtime exec. The endpoint (--serve-addr, ` + agent.DefaultServeAddr + `
by default) sends /v1/deployments/NAME/... to the instance serving NAME.
With every server unreachable, the agent keeps serving its last good
versions, across its own restarts.

The agent runs until SIGINT or SIGTERM, then stops cleanly (exit 0). It
exits 1 when it cannot go on (no identity and no token, a refused token, a
revoked node) with a hint saying what to do, and 2 for a wrong command line.`,
		Example: `  # First start: enroll with a token from ` + "`drover token create`" + `.
  export ` + envToken + `=drover-join.v1.…
  drover-agent --server 10.0.0.5:7400 --server 10.0.0.6:7400 \
    --label gpu=h100 --site eu-west-1

  # Later starts need no token: the identity in the data directory is enough.
  drover-agent

  # A second agent on one machine, with its own identity, its own gossip
  # port and debug logs.
  drover-agent --data-dir /tmp/agent2 --name gpu-01-b --gossip-addr 0.0.0.0:7957 \
    --log-level debug

  # Behind NAT: listen on every address, tell the site's peers where to dial.
  drover-agent --gossip-addr 0.0.0.0:7947 --gossip-advertise 203.0.113.7:17947

  # Cap pulls at 80 megabits per second, and keep at most 200 GiB of chunks.
  drover-agent --pull-bandwidth 80Mbit --cache-budget 200GiB

  # Serve inference to other machines on port 7950.
  drover-agent --serve-addr 0.0.0.0:7950
  curl -s localhost:7950/v1/deployments/digits/infer -d '{"inputs":{"input":[[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]]}}'

  # In a container, read the host's hardware from its root mounted at /host.
  drover-agent --root /host --server 10.0.0.5:7400

  # What happened to this node's model instances, from its own record.
  drover-agent journal --deployment digits

  # What this machine would report, without joining anything.
  drover-agent probe
  drover-agent probe -o json | jq .gpus

  # Which build this is.
  drover-agent version`,
		Version:                    buildinfo.Read().String(),
		Args:                       noArgs,
		SuggestionsMinimumDistance: 2,
		SilenceErrors:              true, // renderError prints errors, once
		SilenceUsage:               true,
		CompletionOptions:          cobra.CompletionOptions{HiddenDefaultCmd: true},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := agent.DefaultConfig()
			cfg.Servers = splitServers(servers)
			cfg.Token = token
			if !cmd.Flags().Changed("token") {
				cfg.Token, _ = lookupEnv(envToken)
				if t := strings.TrimSpace(cfg.Token); t != "" && !strings.HasPrefix(t, "drover-join.") {
					return usageErr(cmd, fmt.Errorf("%s does not hold a join token (one starts with \"drover-join.\"); "+
						"the drover CLI keeps operator tokens in the same variable: unset it for the agent, or pass --token", envToken))
				}
			}
			cfg.DataDir, cfg.Root, cfg.Site = dataDir, root, site
			cfg.CacheDir = cacheDir
			budget, err := units.ParseBytes(cacheSize)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--cache-budget %q: %w", cacheSize, err))
			}
			cfg.CacheBudget = int64(min(budget, math.MaxInt64))
			rate, err := units.ParseBandwidth(bandwidth)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--pull-bandwidth %q: %w", bandwidth, err))
			}
			cfg.PullBandwidth = int64(min(rate, math.MaxInt64))
			limit, err := units.ParseBytes(manifest)
			if err != nil || limit > math.MaxInt32 {
				if err == nil {
					err = errors.New("at most 2GiB")
				}
				return usageErr(cmd, fmt.Errorf("--max-manifest-size %q: %w", manifest, err))
			}
			cfg.MaxManifestBytes = int(limit)
			cfg.GossipAddr, cfg.GossipAdvertise = gossipAddr, gossipAd
			if strings.EqualFold(strings.TrimSpace(gossipAddr), "off") {
				cfg.GossipAddr = ""
			}
			upload, err := units.ParseBandwidth(peerUpload)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--peer-upload-bandwidth %q: %w", peerUpload, err))
			}
			cfg.PeerAddr, cfg.PeerUploadBytesPerSecond = peerAddr, int64(min(upload, math.MaxInt64))
			switch {
			case strings.EqualFold(strings.TrimSpace(peerAddr), "off"):
				cfg.PeerAddr = ""
			case !cmd.Flags().Changed("peer-addr") && cfg.GossipAddr != "":
				cfg.PeerAddr = agent.PeerAddrNextTo(cfg.GossipAddr)
			}
			cfg.ServeAddr, cfg.ONNXRuntime = serveAddr, onnxRuntime
			if strings.EqualFold(strings.TrimSpace(serveAddr), "off") {
				cfg.ServeAddr = ""
			}
			cfg.TelemetryWindow = telemetryWindow
			spool, err := units.ParseBytes(telemetrySpool)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--telemetry-spool-size %q: %w", telemetrySpool, err))
			}
			cfg.TelemetrySpoolBytes = int64(min(spool, math.MaxInt64))
			if cfg.TelemetrySpoolBytes == 0 {
				cfg.TelemetryOff = true
			}
			if name != "" {
				cfg.Name = name
			}
			if cfg.Labels, err = parseLabels("label", labels); err != nil {
				return usageErr(cmd, err)
			}
			level, err := logging.ParseLevel(logLevel)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--log-level: %w", err))
			}
			if err := logging.CheckFormat(logFormat); err != nil {
				return usageErr(cmd, fmt.Errorf("--log-format: %w", err))
			}
			cfg.Logger = logging.New(stderr, level, logFormat)
			a, err := agent.New(cfg)
			if errors.Is(err, agent.ErrInvalidConfig) {
				return usageErr(cmd, err)
			}
			if err != nil {
				return err
			}
			cfg.Logger.Info("drover-agent starting", "version", agent.Version, "data_dir", cfg.DataDir, "name", cfg.Name)
			if err := a.Run(cmd.Context()); err != nil {
				return err
			}
			cfg.Logger.Info("drover-agent stopped")
			return nil
		},
	}
	cmd.SetVersionTemplate("drover-agent {{.Version}}\n")
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageErr(cmd, err) })
	f := cmd.Flags()
	f.StringArrayVar(&servers, "server", nil, "control-plane API address `HOST:PORT` to enroll with (repeatable, or comma-separated)")
	f.StringVar(&token, "token", "", "join `TOKEN` to enroll with (default $"+envToken+")")
	f.StringVar(&dataDir, "data-dir", defaults.DataDir, "`DIR` for the node's identity")
	f.StringVar(&name, "name", "", "node `NAME` to ask for at enrollment (default: the hostname)")
	f.StringArrayVar(&labels, "label", nil, "label to ask for at enrollment, `KEY=VALUE` (repeatable)")
	f.StringVar(&site, "site", "", "`SITE` to ask for at enrollment, such as eu-west-1")
	f.StringVar(&root, "root", defaults.Root, "`DIR` that stands for / when reading /proc, /sys and /etc")
	f.StringVar(&gossipAddr, "gossip-addr", defaults.GossipAddr, "`IP:PORT` (TCP and UDP) of the site gossip pool; \"\" or \"off\" turns the pool off, port 0 picks a free port")
	f.StringVar(&gossipAd, "gossip-advertise", "", "`IP:PORT` the site's other agents dial to reach this one's pool (default: the --gossip-addr address, or for 0.0.0.0 a private address of this machine)")
	f.StringVar(&peerAddr, "peer-addr", defaults.PeerAddr, "`IP:PORT` (UDP) where this agent serves model chunks to its site's other agents (default: the port after --gossip-addr's); \"off\" turns it off")
	f.StringVar(&peerUpload, "peer-upload-bandwidth", "0", "`RATE` this agent serves site peers at, all together, such as 10MiB (bytes per second) or 80Mbit; 0 for no cap")
	f.StringVar(&cacheDir, "cache-dir", "", "`DIR` of the chunk cache pulls fill (default <data-dir>/cache)")
	f.StringVar(&cacheSize, "cache-budget", "50GiB", "`SIZE` the chunk cache keeps to, such as 200GiB or 0 for no bound; the current and previous version of each model are kept beyond it")
	f.StringVar(&bandwidth, "pull-bandwidth", "0", "`RATE` pulls may read at, such as 10MiB (bytes per second) or 80Mbit; 0 for no cap")
	f.StringVar(&manifest, "max-manifest-size", "16MiB", "`SIZE` of the largest version manifest to accept")
	f.StringVar(&serveAddr, "serve-addr", defaults.ServeAddr, "`IP:PORT` of the node's inference endpoint (HTTP): /v1/deployments/NAME/infer reaches the model deployment NAME serves; 0.0.0.0:7950 serves other machines, \"off\" turns it off")
	f.StringVar(&onnxRuntime, "onnx-runtime", "", "`PATH` of the drover-onnx binary that runs deployments of runtime onnx (default: next to drover-agent, then the PATH)")
	f.DurationVar(&telemetryWindow, "telemetry-window", agent.DefaultTelemetryWindow, "`LENGTH` of a telemetry window: each deployment's requests are summed up per window and shipped to the control plane (1s to 24h)")
	f.StringVar(&telemetrySpool, "telemetry-spool-size", "64MiB", "`SIZE` of the on-disk spool that keeps closed telemetry windows while no server answers; older windows are merged into coarser ones, then dropped (counted), to stay under it; 0 turns request telemetry off")
	f.StringVar(&logLevel, "log-level", "info", "log `LEVEL`: trace, debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", logging.FormatText, "log `FORMAT`: text or json")

	cmd.AddCommand(newProbeCommand(), newJournalCommand(), newVersionCommand())
	return cmd
}

// newVersionCommand prints this binary's build, as --version does.
func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print drover-agent's version, commit and Go version",
		Long: `Print the version of this drover-agent binary, the commit it was built from
(", modified" when the tree had uncommitted changes) and the Go toolchain
that built it. The agent reports the same version to the control plane
(` + "`drover node show`" + `).`,
		Example: `  drover-agent version
  drover-agent --version`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "drover-agent %s\n", buildinfo.Read())
			return err
		},
	}
}
