package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
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

// clientsAt returns clients of the server at address (an https:// URL),
// with everything else as configured: how a command moves on to another
// server of the cluster.
func (g *globals) clientsAt(address string) (*clients, error) {
	cfg, err := g.clientConfig()
	if err != nil {
		return nil, err
	}
	cfg.Address = address
	g.target = cfg
	return newClients(cfg, g.stale)
}

// progress returns where to draw transfer progress: stderr when it is a
// terminal, nothing otherwise, so logs and pipes stay clean.
func (g *globals) progress(label string) *progress {
	return g.transferProgress(label, 0)
}

// transferProgress is progress towards a known total: the line also shows
// the share done, the rate and the time left.
func (g *globals) transferProgress(label string, total int64) *progress {
	if !g.isTerminal(g.stderr) {
		return nil
	}
	return &progress{w: g.stderr, label: label, now: g.now, total: total, start: g.now()}
}

// isTerminal reports whether stream is an *os.File attached to a terminal.
func isTerminal(stream any) bool {
	f, ok := stream.(*os.File)
	if !ok {
		return false
	}
	return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
}

// progressInterval is the least time between two redraws: often enough to
// look alive, rarely enough to cost nothing on a slow terminal.
const progressInterval = 100 * time.Millisecond

// progress redraws one status line on a terminal, at most every
// progressInterval. A nil *progress draws nothing. It may be updated from
// several goroutines.
type progress struct {
	w     io.Writer
	label string
	now   func() time.Time
	total int64 // 0 when unknown: only the bytes so far are shown
	start time.Time

	mu    sync.Mutex // guards the fields below
	n     int64
	last  time.Time
	drawn bool
	width int // of the last line drawn, to blank what a shorter one leaves
}

// update records that n bytes are done in all.
func (p *progress) update(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n = n
	p.drawLocked(false)
}

// add records d more bytes done.
func (p *progress) add(d int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n += d
	p.drawLocked(false)
}

// done draws the final line, n bytes in all, and ends it.
func (p *progress) done(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n = n
	p.drawLocked(true)
}

func (p *progress) drawLocked(final bool) {
	t := p.now()
	if !final && p.drawn && t.Sub(p.last) < progressInterval {
		return
	}
	p.last, p.drawn = t, true
	line := p.label + ": " + transferStatus(p.n, p.total, t.Sub(p.start), final)
	pad := ""
	if len(line) < p.width {
		pad = strings.Repeat(" ", p.width-len(line))
	}
	p.width = len(line)
	end := ""
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.w, "\r%s%s%s", line, pad, end)
}

// transferStatus describes n bytes of total done after elapsed:
// "12.3 MiB of 1.2 GiB (1%), 45.6 MiB/s, 26s left". The rate and time left
// wait for a second of data, since the first moments of a transfer say
// little about the rest; a final status has no time left.
func transferStatus(n, total int64, elapsed time.Duration, final bool) string {
	if total <= 0 {
		return units.Bytes(uint64(max(n, 0)))
	}
	s := fmt.Sprintf("%s of %s (%d%%)", units.Bytes(uint64(max(n, 0))), units.Bytes(uint64(total)), min(100, n*100/total))
	if elapsed < time.Second || n <= 0 {
		return s
	}
	rate := float64(n) / elapsed.Seconds()
	s += fmt.Sprintf(", %s/s", units.Bytes(uint64(rate)))
	if !final && n < total {
		left := time.Duration(float64(total-n) / rate * float64(time.Second))
		s += ", " + roughDuration(left.Round(time.Second)) + " left"
	}
	return s
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
