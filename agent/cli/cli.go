// Package cli is the drover-agent command line: running the agent,
// probing the hardware without joining anything, and reading the journal
// of the node's model instances.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/agent"
)

// Exit codes. Service managers and scripts branch on them.
const (
	exitOK          = 0
	exitError       = 1   // the agent ran and failed
	exitUsage       = 2   // the command line itself was wrong
	exitInterrupted = 130 // a probe cancelled by a signal
)

// envToken is the environment variable that holds the join token.
const envToken = "DROVER_TOKEN"

// Main runs the drover-agent command line with args (without the program
// name) and returns the process exit code. The agent runs until ctx ends,
// which is a clean stop (exit 0). Main reads the environment but changes no
// process-wide state.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, args, stdout, stderr, os.LookupEnv)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool)) int {
	root := newRootCommand(stdout, stderr, lookupEnv)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		return renderError(stderr, err)
	}
	return exitOK
}

// usageError is a mistake in how a command was called: exit code 2, with
// the usage line.
type usageError struct {
	err         error
	useLine     string
	commandPath string
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErr(cmd *cobra.Command, err error) error {
	return &usageError{err: err, useLine: cmd.UseLine(), commandPath: cmd.CommandPath()}
}

// renderError prints err for a person and returns the exit code:
//
//	Error: <message>
//	Hint: <what to do>     (when known)
//	Usage: <usage line>    (usage errors only)
func renderError(w io.Writer, err error) int {
	var usage *usageError
	switch {
	case errors.As(err, &usage):
		fmt.Fprintf(w, "Error: %s\nUsage: %s\nRun '%s --help' for details.\n", err, usage.useLine, usage.commandPath)
		return exitUsage
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(w, "Error: interrupted")
		return exitInterrupted
	}
	fmt.Fprintf(w, "Error: %s\n", err)
	if h := agent.Hint(err); h != "" {
		fmt.Fprintf(w, "Hint: %s\n", h)
	}
	return exitError
}

// noArgs refuses positional arguments, suggesting a subcommand for a typo.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unexpected argument %q", args[0])
	if cmd.HasAvailableSubCommands() {
		msg = fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf("; did you mean %q?", s[0])
		}
	}
	return usageErr(cmd, errors.New(msg))
}

// parseLabels turns repeated KEY=VALUE flags into a map.
func parseLabels(flag string, values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(values))
	for _, v := range values {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: want KEY=VALUE, such as gpu=h100", flag, v)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("--%s: key %q given twice", flag, k)
		}
		out[k] = val
	}
	return out, nil
}

// splitServers accepts --server repeated and comma-separated.
func splitServers(values []string) []string {
	var out []string
	for _, v := range values {
		for s := range strings.SplitSeq(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}
