package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/agent"
	"github.com/droverhq/drover/agent/journal"
)

func newJournalCommand() *cobra.Command {
	var output, dataDir, deployment, since string
	cmd := &cobra.Command{
		Use:   "journal",
		Short: "Print what happened to this node's model instances, from its own record",
		Long: `Print the agent's journal: every transition of the node's model instances,
oldest first, as the agent recorded it in <data-dir>/journal before acting on
it. Each line is one event:

  boot         the agent started; nothing serves until the next switch
  assigned     the control plane (or the state file, at boot) asked for VERSION
  unassigned   the deployment was removed from the node
  started      an instance of VERSION started
  healthy      it passed its health check
  switched     the inference endpoint sends requests to VERSION (FROM: what it replaced)
  stopped      the instance of VERSION stopped
  failed       VERSION did not come up; what served before serves on
  not_serving  the endpoint has nothing to send the deployment's requests to

The journal survives restarts and crashes (each line is synced to disk before
the agent goes on) and is bounded: about 16 MiB in four files, the oldest
dropped first. It can be read while the agent runs.

-o json prints the entries as the journal stores them, one JSON object a line.`,
		Example: `  drover-agent journal
  drover-agent journal --deployment defect-detector --since 1h
  drover-agent journal -o json | jq 'select(.event == "failed")'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageErr(cmd, fmt.Errorf("-o %s: want table or json", output))
			}
			var from time.Time
			if since != "" {
				d, err := time.ParseDuration(since)
				if err != nil || d <= 0 {
					return usageErr(cmd, fmt.Errorf("--since %q: want a positive duration such as 30m or 2h", since))
				}
				from = time.Now().Add(-d)
			}
			entries, skipped, err := journal.Read(agent.JournalDir(dataDir))
			if err != nil {
				return err
			}
			var keep []journal.Entry
			for _, e := range entries {
				if deployment != "" && e.Deployment != deployment && e.Event != journal.Boot {
					continue
				}
				if e.Time.Before(from) {
					continue
				}
				keep = append(keep, e)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				for _, e := range keep {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
			} else if err := printJournal(out, keep); err != nil {
				return err
			}
			if skipped > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d lines of the journal are not entries and were skipped "+
					"(a line torn by a crash, or one being written now)\n", skipped)
			}
			return nil
		},
	}
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageErr(cmd, err) })
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "table", "output `FORMAT`: table or json")
	f.StringVar(&dataDir, "data-dir", agent.DefaultDataDir, "the agent's data `DIR`")
	f.StringVar(&deployment, "deployment", "", "only the entries of deployment `NAME` (and boots)")
	f.StringVar(&since, "since", "", "only the entries of the last `DURATION`, such as 30m")
	return cmd
}

// printJournal writes entries as a table for people.
func printJournal(w io.Writer, entries []journal.Entry) error {
	if len(entries) == 0 {
		_, err := fmt.Fprintln(w, "The journal has no entries.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tDEPLOYMENT\tEVENT\tVERSION\tDETAIL")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, e := range entries {
		version := "-"
		if e.Version != 0 {
			version = fmt.Sprint(e.Version)
		}
		var detail []string
		if e.Event == journal.Switched {
			detail = append(detail, fmt.Sprintf("from %d", e.Previous))
		}
		if e.State != "" {
			detail = append(detail, e.State)
		}
		if e.Reason != "" {
			detail = append(detail, e.Reason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.RFC3339Nano), dash(e.Deployment), e.Event,
			version, dash(strings.Join(detail, ": ")))
	}
	return tw.Flush()
}
