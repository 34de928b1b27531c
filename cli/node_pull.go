package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// pullPollInterval is how often `node pull --wait` reads the node: the
// agent reports in each heartbeat, a third of its TTL apart.
const pullPollInterval = 500 * time.Millisecond

func newNodePullCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "pull NODE NAME[@REF]",
		Short: "Ask a node to pull a model version",
		Long: `Ask a node to download a pushed model version into its data directory
(<data-dir>/versions/NAME/VERSION on the machine), ready to serve.

REF is a version number, an alias or latest (the default). It is resolved
now: moving the alias later does not change what the node pulls. The
request replaces the node's previous one; asking again for the same version
makes a node whose pull failed try again.

The node's agent hears of the request in its next heartbeat. It checks the
version's manifest against the cluster's signing keys and against the
manifests it trusted before, fetches the chunks it lacks, and assembles the
version directory in one step: the previous version is untouched until the
new one is complete. ` + "`drover node show`" + ` reports how far it got, or why it
failed (a full disk, a manifest the node refuses).

With --wait the command follows the pull, printing its progress on
standard error, until the node reports it done (exit 0) or failed (exit 1,
with the reason). -o json prints the PullVersionResponse, or with --wait
the node as it was when the pull ended (GetNodeResponse).

Needs node:write on the node and model:read on the model.`,
		Example: `  drover node pull gpu-01 llama@prod
  drover node pull gpu-01 llama@7 --wait
  drover node pull gpu-01 llama --wait -o json | jq .node.pullStatus`,
		Args: exactArgs("NODE", "NAME[@REF]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ref, err := parseModelRef(args[1])
			if err != nil {
				return usageErr(cmd, err)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			resp, err := c.node.PullVersion(ctx, connect.NewRequest(&droverv1.PullVersionRequest{Node: args[0], Model: name, Ref: ref}))
			if err != nil {
				return err
			}
			p := resp.Msg.GetPull()
			node := cmp.Or(resp.Msg.GetNode().GetName(), args[0])
			if !wait {
				return printResult(cmd, resp.Msg, func(w io.Writer) {
					fmt.Fprintf(w, "Asked node %s to pull %s@%d (%s; index %d). Follow it with `drover node show %s`.\n",
						node, p.GetModel(), p.GetVersion(), p.GetArtifactDigest(), resp.Msg.GetMeta().GetIndex(), node)
				})
			}
			if outputFormat(cmd) != outputJSON {
				fmt.Fprintf(g.stderr, "Asked node %s to pull %s@%d; waiting for its agent to report.\n", node, p.GetModel(), p.GetVersion())
			}
			final, err := waitPull(ctx, c.node, resp.Msg.GetNode().GetId(), p, func(st *droverv1.NodePullStatus) {
				if outputFormat(cmd) != outputJSON {
					fmt.Fprintln(g.stderr, pullLine(st))
				}
			})
			if err != nil {
				return err
			}
			st := final.GetNode().GetPullStatus()
			if st.GetPhase() == droverv1.PullPhase_PULL_PHASE_FAILED {
				if outputFormat(cmd) == outputJSON {
					_ = printResult(cmd, final, nil)
				}
				return withHint(fmt.Errorf("node %s could not pull %s@%d: %s", node, p.GetModel(), p.GetVersion(), st.GetError()),
					fmt.Sprintf("fix the cause, then ask again with `drover node pull %s %s@%d`", node, p.GetModel(), p.GetVersion()))
			}
			return printResult(cmd, final, func(w io.Writer) {
				fmt.Fprintf(w, "Node %s pulled %s@%d: %s\n", node, p.GetModel(), p.GetVersion(), pullLine(st))
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the pull until the node reports it done or failed")
	return cmd
}

// nodeGetter is what waitPull needs of NodeService.
type nodeGetter interface {
	GetNode(context.Context, *connect.Request[droverv1.GetNodeRequest]) (*connect.Response[droverv1.GetNodeResponse], error)
}

// waitPull reads node id until it reports request p done or failed, and
// returns that reading. report is called with each new state of the pull
// (phase, or a tenth more of the bytes). Reads that find no leader (an
// election) are tried again.
func waitPull(ctx context.Context, nodes nodeGetter, id string, p *droverv1.NodePull, report func(*droverv1.NodePullStatus)) (*droverv1.GetNodeResponse, error) {
	var last *droverv1.NodePullStatus
	for {
		resp, err := nodes.GetNode(ctx, connect.NewRequest(&droverv1.GetNodeRequest{Node: id}))
		switch {
		case connect.CodeOf(err) == connect.CodeUnavailable:
		case err != nil:
			return nil, err
		default:
			st := resp.Msg.GetNode().GetPullStatus()
			if st.GetRequestIndex() == p.GetRequestIndex() {
				if last == nil || st.GetPhase() != last.GetPhase() || tenths(st) != tenths(last) {
					report(st)
					last = st
				}
				switch st.GetPhase() {
				case droverv1.PullPhase_PULL_PHASE_DONE, droverv1.PullPhase_PULL_PHASE_FAILED:
					return resp.Msg, nil
				}
			}
		}
		t := time.NewTimer(pullPollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// tenths is how many tenths of its bytes a pull has.
func tenths(st *droverv1.NodePullStatus) uint64 {
	if st.GetBytesTotal() == 0 {
		return 0
	}
	return st.GetBytesDone() * 10 / st.GetBytesTotal()
}

// pullLine describes a pull status in one line, such as
// "llama@7  fetching 45% (120.0 MiB of 260.0 MiB)".
func pullLine(st *droverv1.NodePullStatus) string {
	v := fmt.Sprintf("%s@%d", st.GetModel(), st.GetVersion())
	done, total := st.GetBytesDone(), st.GetBytesTotal()
	switch st.GetPhase() {
	case droverv1.PullPhase_PULL_PHASE_VERIFYING:
		return v + "  verifying the manifest"
	case droverv1.PullPhase_PULL_PHASE_FETCHING:
		pct := uint64(0)
		if total > 0 {
			pct = done * 100 / total
		}
		return fmt.Sprintf("%s  fetching %d%% (%s of %s)", v, pct, units.Bytes(done), units.Bytes(total))
	case droverv1.PullPhase_PULL_PHASE_ASSEMBLING:
		return fmt.Sprintf("%s  assembling (%s)", v, units.Bytes(total))
	case droverv1.PullPhase_PULL_PHASE_DONE:
		return fmt.Sprintf("%s  done (%s; fetched %s from servers, %s from peers)", v, units.Bytes(total),
			units.Bytes(st.GetBytesFromServers()), units.Bytes(st.GetBytesFromPeers()))
	case droverv1.PullPhase_PULL_PHASE_FAILED:
		return v + "  failed: " + cmp.Or(st.GetError(), "no reason given")
	}
	return v + "  (unknown phase)"
}

// pullView writes node show's "Pull:" section: what the node was asked to
// pull, and what its agent last reported.
func pullView(w io.Writer, n *droverv1.Node, now time.Time) {
	req, st := n.GetRequestedPull(), n.GetPullStatus()
	if req == nil && st == nil {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Pull:")
	if req != nil {
		who := cmp.Or(req.GetRequestedByName(), req.GetRequestedBy())
		field(w, "  Requested", fmt.Sprintf("%s@%d (%s) by %s at %s", req.GetModel(), req.GetVersion(),
			req.GetArtifactDigest(), orDash(who), formatTimeAge(req.GetRequestTime(), now)))
	}
	switch {
	case st == nil:
		field(w, "  Status", "not reported: the agent reports in its heartbeats to the leader (a stale read shows none)")
	case req != nil && st.GetRequestIndex() != req.GetRequestIndex():
		field(w, "  Status", "not started yet; the last report was "+pullLine(st))
	default:
		field(w, "  Status", pullLine(st)+", reported "+formatAge(st.GetReportTime(), now)+" ago")
	}
}
