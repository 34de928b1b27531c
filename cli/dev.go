package cli

import (
	"bytes"
	"compress/gzip"
	"context"
	"embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/controlplane/server"
	"github.com/droverhq/drover/internal/atomicfile"
	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// devFlags binds `drover dev`'s flags.
type devFlags struct {
	dataDir        string
	port           int
	logLevel       string
	noClientConfig bool
	agents         int
	servePort      int
}

// What "drover dev" keeps of agents' telemetry.
const (
	devTelemetryRetention = 24 * time.Hour
	devTelemetryMaxBytes  = 256 << 20
)

func newDevCommand(g *globals) *cobra.Command {
	f := &devFlags{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run everything on this machine, for trying Drover",
		Long: `Run a single-server control plane and a few agents in this process, with
their data in a directory it prints, so you can try Drover without setting
anything up.

On first start it creates the cluster CA and a management token, a sample
model with a version and a "prod" alias, and enrolls the local agents (3 by
default, spread over the sites dev-a and dev-b) with a join token, just as
real machines would. It writes a client config so that "drover" in another
shell talks to it with no flags. Running it again reuses the same data,
token, CA and node identities. Ctrl-C (or SIGTERM) stops it cleanly, with
exit code 0.`,
		Example: `  drover dev
  drover dev --agents 10
  # in another shell
  drover status
  drover node ls
  drover model ls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.agents < 0 || f.agents > maxDevAgents {
				return usageErr(cmd, fmt.Errorf("--agents %d: give a number from 0 to %d", f.agents, maxDevAgents))
			}
			return runDev(cmd.Context(), g, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", "", "where to keep the dev cluster's data (default $XDG_DATA_HOME/drover/dev)")
	fl.IntVar(&f.port, "port", server.DefaultAPIPort, "API port; Raft and gossip use the next two (0: any free ports)")
	fl.StringVar(&f.logLevel, "log-level", "warn", "server log level: debug, info, warn or error")
	fl.BoolVar(&f.noClientConfig, "no-client-config", false, "do not write the client config file")
	fl.IntVar(&f.servePort, "serve-port", devServePort, "inference endpoint port of the first agent; the others take the next ports (0: any free ports)")
	fl.IntVar(&f.agents, "agents", 3, fmt.Sprintf("local agents to run, spread over the sites %s (0: none, at most %d)", strings.Join(devSites, " and "), maxDevAgents))
	return cmd
}

func defaultDevDataDir(lookupEnv func(string) (string, bool)) (string, error) {
	if d := env(lookupEnv, "XDG_DATA_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "drover", "dev"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find home directory for the dev data dir: %w (pass --data-dir)", err)
	}
	return filepath.Join(home, ".local", "share", "drover", "dev"), nil
}

// maxDevAgents bounds --agents: each agent is a real one, with its own
// QUIC connection, gossip pool and hardware probe.
const maxDevAgents = 100

func runDev(ctx context.Context, g *globals, f *devFlags) error {
	dir := f.dataDir
	if dir == "" {
		var err error
		if dir, err = defaultDevDataDir(g.lookupEnv); err != nil {
			return err
		}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	level, err := logging.ParseLevel(f.logLevel)
	if err != nil {
		return err
	}
	cfg := server.DefaultConfig()
	cfg.Name = "dev"
	cfg.DataDir = dir
	port := func(offset int) string {
		if f.port == 0 {
			return "0" // any free port, for each listener
		}
		return fmt.Sprint(f.port + offset)
	}
	cfg.APIAddr = net.JoinHostPort("127.0.0.1", port(0))
	cfg.RaftAddr = net.JoinHostPort("127.0.0.1", port(1))
	cfg.GossipAddr = net.JoinHostPort("127.0.0.1", port(2))
	cfg.BootstrapExpect = 1
	// A laptop's disk: a day of telemetry, a quarter of the default space.
	cfg.TelemetryRetention = server.Duration(devTelemetryRetention)
	cfg.TelemetryMaxBytes = devTelemetryMaxBytes
	cfg.Logger = logging.New(g.stderr, level, "text")

	s, err := server.New(cfg)
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		return fmt.Errorf("start dev server: %w", err)
	}
	stop := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return s.Shutdown(sctx)
	}
	// Ctrl-C or SIGTERM at any point is how dev is meant to end: a clean
	// stop then exits 0, even when it cut the start short, so neither make
	// nor a shell reports a failure.
	stopping := func(stop func() error) error {
		fmt.Fprintln(g.stdout, "\nstopping dev cluster")
		return stop()
	}
	client, cl, err := setUpDev(ctx, g, s, dir, f.noClientConfig)
	if ctx.Err() != nil {
		return stopping(stop)
	}
	if err != nil {
		return errors.Join(err, stop())
	}
	fleet, err := startDevAgents(ctx, cl, s.APIAddr(), dir, f.agents, f.servePort, g.stderr, level)
	if ctx.Err() != nil {
		if fleet != nil {
			fleet.stop()
		}
		return stopping(stop)
	}
	if err != nil {
		return errors.Join(err, stop())
	}
	stopAll := func() error {
		fleet.stop()
		return stop()
	}
	agentsLine := "none (--agents 0)"
	if f.agents > 0 {
		fmt.Fprintf(g.stdout, "starting %d local agents...\n", f.agents)
		ready, err := fleet.waitReady(ctx)
		if ctx.Err() != nil {
			return stopping(stopAll)
		}
		if err != nil {
			fmt.Fprintf(g.stderr, "some dev agents stopped: %v\n", err)
		}
		agentsLine = fmt.Sprintf("%d of %d ready, in sites %s", ready, f.agents, strings.Join(devSites[:min(f.agents, len(devSites))], ", "))
		fmt.Fprintf(g.stdout, "deploying %s@prod to the local agents...\n", sampleModelName)
		serving, err := fleet.deploySample(ctx, cl)
		if ctx.Err() != nil {
			return stopping(stopAll)
		}
		if err != nil {
			fmt.Fprintf(g.stderr, "deploying the sample model: %v\n", err)
		}
		agentsLine += fmt.Sprintf("; %d serve %s@prod (deployment %s)", serving, sampleModelName, sampleDeployment)
	}
	fmt.Fprintf(g.stdout, `
Drover dev cluster is running.

  data dir     %s
  api          https://%s
  ca cert      %s
  token        %s
  client conf  %s
  agents       %s

Try, in another shell:
  drover status
  drover node ls
  drover model ls
  drover model show hello-classifier
  drover model card hello-classifier@prod
  drover node show dev-agent-1
  drover deploy show %s
  drover rollout history %s
  drover audit ls

Ask the model which digit an 8x8 image shows (dev-agent-1 serves on
127.0.0.1:%d, the others on the next ports):
  curl -s 127.0.0.1:%d/v1/deployments/%s/infer -d '%s'

What the agents observe of those requests reaches the servers each minute:
  drover top
  drover telemetry query --model hello-classifier --by site
  drover drift show hello-classifier@prod --by site

Press Ctrl-C to stop; run "drover dev" again to continue with the same data.
`, dir, s.APIAddr(), client.CACert, client.Token, client.path, agentsLine,
		sampleDeployment, sampleDeployment, f.servePort, f.servePort, sampleDeployment, sampleInferBody)
	select {
	case <-ctx.Done():
	case <-s.Done():
	}
	return stopping(stopAll)
}

type devClient struct {
	ClientConfig
	path string
}

// setUpDev waits for the server to lead, then makes sure the management
// token, client config and sample model exist, reusing them on later runs.
// It returns clients that use the management token.
func setUpDev(ctx context.Context, g *globals, s *server.Server, dir string, noClientConfig bool) (devClient, *clients, error) {
	out := devClient{ClientConfig: ClientConfig{
		Address: "https://" + s.APIAddr(),
		CACert:  filepath.Join(dir, "tls", "ca.pem"),
	}}
	deadline := time.Now().Add(30 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			return out, nil, errors.New("dev server did not become leader within 30s; run with --log-level debug")
		}
		select {
		case <-ctx.Done():
			return out, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	cl, err := newClients(out.ClientConfig, false)
	if err != nil {
		return out, nil, err
	}
	tokenFile := filepath.Join(dir, "dev-token")
	if b, err := os.ReadFile(tokenFile); err == nil {
		out.Token = strings.TrimSpace(string(b))
	} else {
		res, err := cl.acl.Bootstrap(ctx, connect.NewRequest(&droverv1.BootstrapRequest{}))
		if err != nil {
			return out, nil, fmt.Errorf("bootstrap ACLs: %w (if the token in %s was lost, delete %s to start over)", err, tokenFile, dir)
		}
		out.Token = res.Msg.GetSecretId()
		if err := atomicfile.Write(tokenFile, []byte(out.Token+"\n"), 0o600); err != nil {
			return out, nil, err
		}
	}
	if !noClientConfig {
		path, _, err := clientConfigPath(g.lookupEnv)
		if err == nil {
			err = WriteClientConfig(path, out.ClientConfig)
		}
		if err != nil {
			return out, nil, fmt.Errorf("write client config: %w (use --no-client-config to skip)", err)
		}
		out.path = path
	} else {
		out.path = "(not written)"
	}
	cl, err = newClients(out.ClientConfig, false)
	if err != nil {
		return out, nil, err
	}
	return out, cl, createSampleModel(ctx, g, cl, dir)
}

// sampleModel is a real model to try Drover with: a digit classifier
// trained by examples/digits (`make sample-model` regenerates it), with its
// model card (README.md) and reference outputs.
//
//go:embed sample/hello-classifier
var sampleModel embed.FS

// sampleReference is the sample model's reference data set, gzipped CSV:
// the whole digits data set it was trained and tested on (1,797 images,
// CC BY 4.0, see the card), its 64 pixels named as the agent names the
// input's elements and the true digit as the output's argmax. Pushed
// with it, it lets `drover drift show` judge what the dev agents serve.
//
//go:embed sample/hello-classifier-reference.csv.gz
var sampleReference []byte

// sampleModelName is the sample model's name in the registry.
const sampleModelName = "hello-classifier"

// sampleInferBody is an inference request for the sample model: the pixel
// counts of a handwritten 0 from the digits data set's test split (the
// first case of its reference.json).
const sampleInferBody = `{"inputs":{"input":[[0,0,4,14,11,3,0,0,0,0,10,16,12,14,1,0,0,1,14,12,0,13,3,0,0,5,16,6,0,8,6,0,0,8,16,0,0,9,8,0,0,7,16,3,7,16,5,0,0,3,15,13,16,15,2,0,0,0,4,15,12,2,0,0]]}}`

// createSampleModel pushes the sample model the first time, as version 1
// with alias prod, so a newcomer has real bytes to pull and serve. The
// files are written under dir first: a push reads a tree from disk.
func createSampleModel(ctx context.Context, g *globals, cl *clients, dir string) error {
	const name = sampleModelName
	res, err := cl.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: name}))
	if err == nil && res.Msg.GetModel().GetLatestVersion() > 0 {
		return nil
	}
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fmt.Errorf("look up sample model: %w", err)
	}
	if err != nil {
		if _, err := cl.model.CreateModel(ctx, connect.NewRequest(&droverv1.CreateModelRequest{
			Name: name, Description: "Reads handwritten digits from 8x8 images: a small real model to try Drover with", Owner: "dev",
			Tags: map[string]string{"task": "image-classification", "sample": "true"},
		})); err != nil {
			return fmt.Errorf("create sample model: %w", err)
		}
	}
	tree := filepath.Join(dir, "sample", name)
	if err := writeSampleModel(tree); err != nil {
		return err
	}
	card, err := os.ReadFile(filepath.Join(tree, "README.md"))
	if err != nil {
		return fmt.Errorf("read sample model card: %w", err)
	}
	ref, err := sampleReferenceProfile()
	if err != nil {
		return err
	}
	req := &droverv1.FinishPushRequest{
		Model: name, Card: string(card), Alias: "prod", Reference: ref,
		Lineage: &droverv1.Lineage{DatasetUri: "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"},
		Metrics: map[string]float64{"test_accuracy": 0.9666},
	}
	if _, err := pushTree(ctx, g, cl, tree, req, pushOptions{}); err != nil {
		return fmt.Errorf("push sample model: %w", err)
	}
	return nil
}

// sampleReferenceProfile sketches the embedded reference data set.
func sampleReferenceProfile() (*droverv1.Profile, error) {
	gz, err := gzip.NewReader(bytes.NewReader(sampleReference))
	if err != nil {
		return nil, fmt.Errorf("sample model reference: %w", err)
	}
	p, _, err := sketch.ReferenceFromCSV(gz)
	if err != nil {
		return nil, fmt.Errorf("sample model reference: %w", err)
	}
	return p.ToProto(), nil
}

// writeSampleModel writes the embedded sample model's files into dir,
// replacing any earlier copy.
func writeSampleModel(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("write sample model: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write sample model: %w", err)
	}
	const root = "sample/hello-classifier"
	entries, err := sampleModel.ReadDir(root)
	if err != nil {
		return fmt.Errorf("write sample model: %w", err)
	}
	for _, e := range entries {
		b, err := sampleModel.ReadFile(root + "/" + e.Name())
		if err != nil {
			return fmt.Errorf("write sample model: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("write sample model: %w", err)
		}
	}
	return nil
}
