// Package cli is the drover command line.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/buildinfo"
)

// Exit codes. Scripts branch on them, so they never change meaning.
const (
	exitOK          = 0
	exitError       = 1   // the command ran and failed
	exitUsage       = 2   // the command line itself was wrong
	exitInterrupted = 130 // cancelled by a signal, as shells report SIGINT
)

// Main runs the drover command line with args (without the program name) and
// returns the process exit code. It reads the environment but changes no
// process-wide state, so it may run concurrently with itself.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	g := &globals{
		stdin:      stdin,
		stdout:     stdout,
		stderr:     stderr,
		lookupEnv:  os.LookupEnv,
		isTerminal: isTerminal,
		now:        time.Now,
	}
	return g.run(ctx, args)
}

// run builds a fresh command tree, executes it and renders any error.
func (g *globals) run(ctx context.Context, args []string) int {
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetIn(g.stdin)
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		return renderError(g.stderr, err, g.target)
	}
	return exitOK
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "drover",
		Short: "Operate a Drover control plane and the models it serves",
		Long: `drover is the operator command line for Drover, a Raft-replicated control
plane for machine-learning fleets.

Every command that talks to a server needs to know where the server is and
who you are. Each setting is taken from the first of: the flag, the
environment variable, the client config file, the default.

  --address   DROVER_ADDR    address   https://127.0.0.1:7400
  --token     DROVER_TOKEN   token     (none)
  --ca-cert   DROVER_CACERT  ca_cert   (the system's trusted roots)

The client config file is JSON, for example
  {"address": "https://10.0.0.5:7400", "token": "…", "ca_cert": "/etc/drover/ca.pem"}
read from $DROVER_CONFIG, else $XDG_CONFIG_HOME/drover/config.json, else
~/.config/drover/config.json. ` + "`drover dev`" + ` writes one for you.

Reads are answered by the leader unless you pass --stale, and print a table
or, with -o json, the API's response message.`,
		Example: `  # Try it on one machine, then look around.
  drover dev
  drover status
  drover model ls -o json`,
		Args:                       groupArgs,
		RunE:                       showHelp,
		Version:                    buildinfo.Read().String(),
		SuggestionsMinimumDistance: 2,
		SilenceErrors:              true, // renderError prints errors, once, in one format
		SilenceUsage:               true,
		// Completion is still available as "drover completion"; the default
		// would list it first in every help page.
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return checkOutputFormat(cmd)
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageErr(cmd, err)
	})
	root.SetVersionTemplate("drover {{.Version}}\n")
	g.addConnectionFlags(root)

	root.AddCommand(
		newStatusCommand(g),
		newModelCommand(g),
		newTokenCommand(g),
		newNodeCommand(g),
		newLogsCommand(g),
		newDeployCommand(g),
		newRolloutCommand(g),
		newACLCommand(g),
		newKeyCommand(g),
		newAuditCommand(g),
		newDriftCommand(g),
		newTelemetryCommand(g),
		newTopCommand(g),
		newOperatorCommand(g),
		newServerCommand(g),
		newDevCommand(g),
		newTLSCommand(g),
		newDroverVersionCommand(),
	)
	return root
}

// newGroup makes cmd a command that only holds subcommands: run bare it
// prints its help, and an unknown subcommand is a usage error rather than
// silently showing help with exit code 0.
func newGroup(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.Args = groupArgs
	cmd.SuggestionsMinimumDistance = 2
	cmd.RunE = showHelp
	cmd.AddCommand(subs...)
	return cmd
}

func showHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageErr(cmd, fmt.Errorf("%s", msg))
}

// exactArgs wants one positional argument per name and names the missing
// ones, which reads better than cobra's "accepts 1 arg(s), received 0".
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usageErr(cmd, fmt.Errorf("missing %s", strings.Join(names[len(args):], " ")))
		case len(args) > len(names):
			return usageErr(cmd, fmt.Errorf("unexpected argument %q", args[len(names)]))
		}
		return nil
	}
}
