package cli

import (
	"cmp"
	"io"
	"slices"
	"strconv"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newAuditCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "audit",
		Short: "Read the audit log of every change",
		Long: `Read the audit log. Every change that reached the replicated log is recorded
with who made it, what it was and whether it was applied or refused. The log
is replicated like all other state, so every server has the same history.`,
		Example: `  drover audit ls
  drover audit ls --target model/resnet
  drover audit ls --actor ci-vision`,
	}, newAuditListCommand(g))
}

func newAuditListCommand(g *globals) *cobra.Command {
	var (
		q      queryFlags
		limit  uint32
		after  uint64
		target string
		actor  string
	)
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List audit events, oldest first",
		Long: `List audit events, oldest first.

By default it shows the most recent 100 events. Each event has the Raft index
at which the change was committed; pass the last one to --after to read only
newer events, or to --index to wait for the next change.

TARGET is the object acted on, such as model/resnet or model/resnet@prod;
--target keeps only events whose target starts with the prefix.

ACTOR is who made the change: an operator token, shown as its name and the
start of its accessor ID ("alice (1b2c3d4e…)"), or "agent/NAME",
"server/NAME" or "anonymous"; with -o json, actor has the whole accessor ID
and actorName the name. --actor keeps only the events of one actor: a
token's name or accessor ID, or one of the others as the column spells it.`,
		Example: `  # The last 20 changes:
  drover audit ls --limit 20

  # Everything that happened to one model, including its aliases:
  drover audit ls --target model/resnet

  # What one operator token did (its name or accessor ID):
  drover audit ls --actor ci-vision

  # Follow the log: wait up to 5 minutes for changes after index 812.
  drover audit ls --after 812 --index 812 --wait 5m`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.audit.ListEvents(cmd.Context(), connect.NewRequest(&droverv1.ListAuditEventsRequest{
				AfterIndex:   after,
				Limit:        limit,
				TargetPrefix: target,
				Actor:        actor,
				Options:      opts,
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { auditTable(w, resp.Msg.GetEvents()) })
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 0, "show at most N most recent events (default 100)")
	cmd.Flags().Uint64Var(&after, "after", 0, "show only events with an index greater than N")
	cmd.Flags().StringVar(&target, "target", "", "show only events whose target starts with `PREFIX`")
	// Not --token: that flag is the operator token's secret, on every
	// command, and a filter must never be mistaken for it.
	cmd.Flags().StringVar(&actor, "actor", "", "show only events of `ACTOR`: a token's name or accessor ID, or agent/NAME")
	addReadFlags(cmd, g, &q)
	return cmd
}

func auditTable(w io.Writer, events []*droverv1.AuditEvent) {
	events = slices.Clone(events)
	slices.SortStableFunc(events, func(a, b *droverv1.AuditEvent) int { return cmp.Compare(a.GetIndex(), b.GetIndex()) })
	row(w, "TIME", "INDEX", "ACTOR", "ACTION", "TARGET", "RESULT")
	for _, e := range events {
		row(w, formatTime(e.GetTime()), strconv.FormatUint(e.GetIndex(), 10), auditActor(e),
			e.GetAction(), orDash(e.GetTarget()), orDash(e.GetResult()))
	}
}

// auditActor renders who made a change: a named token as its name and the
// start of its accessor ID, which tells apart tokens that had the same name
// at different times; anything else as the server wrote it.
func auditActor(e *droverv1.AuditEvent) string {
	if n := e.GetActorName(); n != "" {
		return n + " (" + shortAccessor(e.GetActor()) + ")"
	}
	return orDash(e.GetActor())
}
