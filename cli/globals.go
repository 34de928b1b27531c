package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// globals is what every command of one Main call shares: the standard
// streams, the environment, and the root's persistent flags. Nothing of it
// is package state, so tests run many command lines in parallel.
//
// A command that talks to a server calls g.clients() inside its RunE, after
// cobra has parsed the flags, and uses cmd.Context() for the calls.
type globals struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookupEnv      func(string) (string, bool)
	// isTerminal reports whether a stream (stdin or stderr) is a terminal;
	// it decides whether to prompt and whether to draw progress.
	isTerminal func(stream any) bool
	now        func() time.Time

	// persistent is the root's persistent flag set, kept to tell a flag
	// given on the command line from its empty default.
	persistent *pflag.FlagSet
	address    string
	token      string
	caCert     string
	output     string
	// stale is bound to the --stale flag of read commands.
	stale bool

	// target is the connection settings in use once clients() has resolved
	// them; error rendering uses it for specific hints.
	target ClientConfig
}

func (g *globals) addConnectionFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.address, "address", "", "server API address, https://HOST:PORT or HOST:PORT (env "+envAddress+"; default "+defaultAddress+")")
	f.StringVar(&g.token, "token", "", "operator token secret (env "+envToken+")")
	f.StringVar(&g.caCert, "ca-cert", "", "PEM bundle of CAs that sign the server's certificate (env "+envCACert+"; default: system roots)")
	f.StringVarP(&g.output, "output", "o", outputTable, "output format: table or json")
	g.persistent = f
}

// clientConfig resolves the connection settings, each from the first of:
// flag, environment, client config file, default.
func (g *globals) clientConfig() (ClientConfig, error) {
	file, err := loadClientConfig(g.lookupEnv)
	if err != nil {
		return ClientConfig{}, err
	}
	pick := func(flag, flagValue, envName, fileValue, def string) string {
		if g.persistent != nil && g.persistent.Changed(flag) {
			return flagValue
		}
		if v := env(g.lookupEnv, envName); v != "" {
			return v
		}
		if fileValue != "" {
			return fileValue
		}
		return def
	}
	c := ClientConfig{
		Address: pick("address", g.address, envAddress, file.Address, defaultAddress),
		Token:   pick("token", g.token, envToken, file.Token, ""),
		CACert:  pick("ca-cert", g.caCert, envCACert, file.CACert, ""),
	}
	if c.Address, err = normalizeAddress(c.Address); err != nil {
		return ClientConfig{}, err
	}
	if err := checkToken(c.Token); err != nil {
		return ClientConfig{}, err
	}
	return c, nil
}

// clients connects the API clients to the configured server. It does
// no I/O beyond reading the config and CA files; the first call dials.
func (g *globals) clients() (*clients, error) {
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, err
	}
	g.target = cfg
	return newClients(cfg, g.stale)
}

// progress returns where to draw transfer progress: stderr when it is a
// terminal, nothing otherwise, so logs and pipes stay clean.
func (g *globals) progress(label string) *progress {
	if !g.isTerminal(g.stderr) {
		return nil
	}
	return &progress{w: g.stderr, label: label, now: g.now}
}

// isTerminal reports whether stream is an *os.File attached to a terminal.
func isTerminal(stream any) bool {
	f, ok := stream.(*os.File)
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

// progress redraws one status line on a terminal, at most every 100ms.
type progress struct {
	w     io.Writer
	label string
	now   func() time.Time
	last  time.Time
	drawn bool
}

func (p *progress) update(n int64) {
	if p == nil {
		return
	}
	if t := p.now(); !p.drawn || t.Sub(p.last) >= 100*time.Millisecond {
		p.last = t
		p.drawn = true
		fmt.Fprintf(p.w, "\r%s: %s", p.label, units.Bytes(uint64(n)))
	}
}

func (p *progress) done(n int64) {
	if p == nil {
		return
	}
	fmt.Fprintf(p.w, "\r%s: %s\n", p.label, units.Bytes(uint64(n)))
}

// queryFlags are the blocking-query flags of a read.
type queryFlags struct {
	index uint64
	wait  time.Duration
}

// addReadFlags gives a read command --stale and, when q is not nil, the
// blocking-query flags --index and --wait.
func addReadFlags(cmd *cobra.Command, g *globals, q *queryFlags) {
	cmd.Flags().BoolVar(&g.stale, "stale", false, "let any server answer from its local state, which may lag the leader")
	if q != nil {
		cmd.Flags().Uint64Var(&q.index, "index", 0, "block until the state index is greater than N (the index of an earlier answer)")
		cmd.Flags().DurationVar(&q.wait, "wait", 0, "longest time to block with --index (the server caps it at 10m)")
	}
}

// readClients checks a read command's query flags and returns the API
// clients with the query options, as every read command begins.
func (g *globals) readClients(cmd *cobra.Command, q *queryFlags) (*clients, *droverv1.QueryOptions, error) {
	opts, err := q.options(cmd)
	if err != nil {
		return nil, nil, err
	}
	c, err := g.clients()
	return c, opts, err
}

// options turns the flags into the request's QueryOptions, nil when the
// read should not block.
func (q *queryFlags) options(cmd *cobra.Command) (*droverv1.QueryOptions, error) {
	if q.wait < 0 {
		return nil, usageErr(cmd, fmt.Errorf("--wait %s: must not be negative", q.wait))
	}
	if q.wait > 0 && q.index == 0 {
		return nil, usageErr(cmd, fmt.Errorf("--wait needs --index: it bounds how long to wait for the index to pass N"))
	}
	if q.index == 0 {
		return nil, nil
	}
	opts := &droverv1.QueryOptions{MinIndex: q.index}
	if q.wait > 0 {
		opts.MaxWait = durationpb.New(q.wait)
	}
	return opts, nil
}
