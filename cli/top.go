package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newTopCommand(g *globals) *cobra.Command {
	var (
		by               string
		window, interval time.Duration
		once             bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "A live view of the fleet: traffic, latency, errors and GPUs per site",
		Long: `A live view of the fleet, refreshed every --interval until Ctrl-C: per site (or
per --by group), the nodes reporting, requests per second, the error rate,
p50 and p99 latency, and, for nodes with GPUs, their mean utilisation, the
GPU memory in use and the Xid errors they reported.

Each refresh merges the telemetry windows that ended in the last --window
(default 2m, two of the agents' default one-minute windows) from every
server, so a row moves a window at a time; rates are per second over that
range. --by takes site, deployment, version, label:KEY or gpu.

With --once, when standard output is not a terminal, or with -o json, it
prints one snapshot and exits; -o json prints it as a QueryTelemetryResponse
whose groups carry both the traffic profile and the node metrics.`,
		Example: `  drover top
  drover top --by deployment --window 5m
  drover top --once -o json | jq '.groups[] | {key, requests: .profile.requests}'`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if window < time.Second || interval < 500*time.Millisecond {
				return usageErr(cmd, fmt.Errorf("--window %v and --interval %v: want a window of at least 1s and an interval of at least 500ms", window, interval))
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			live := !once && outputFormat(cmd) != outputJSON && g.isTerminal(cmd.OutOrStdout())
			for {
				snap, err := fleetSnapshot(cmd.Context(), c, by, g.now(), window)
				if err != nil {
					return err
				}
				if live {
					// Home and clear, as top does.
					fmt.Fprint(cmd.OutOrStdout(), "\x1b[H\x1b[2J")
					fmt.Fprintf(cmd.OutOrStdout(), "drover top: last %s, every %s, Ctrl-C to quit\n\n", window, interval)
				}
				if err := printResult(cmd, snap, func(w io.Writer) { topTable(w, snap, by, window) }); err != nil {
					return err
				}
				if !live {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	cmd.Flags().StringVar(&by, "by", "site", "group rows by `site|deployment|version|label:KEY|gpu`")
	cmd.Flags().DurationVar(&window, "window", 2*time.Minute, "merge the windows that ended this long ago or less")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh this often")
	cmd.Flags().BoolVar(&once, "once", false, "print one snapshot and exit")
	return cmd
}

// fleetSnapshot asks for the traffic windows and the node windows of the
// last window, grouped by, and joins them by group.
func fleetSnapshot(ctx context.Context, c *clients, by string, now time.Time, window time.Duration) (*droverv1.QueryTelemetryResponse, error) {
	q := &droverv1.QueryTelemetryRequest{GroupBy: by, Since: timestamppb.New(now.Add(-window)), Until: timestamppb.New(now)}
	traffic, err := c.telemetry.Query(ctx, connect.NewRequest(q))
	if err != nil {
		return nil, err
	}
	nq := proto.CloneOf(q)
	nq.NodeMetrics = true
	nodes, err := c.telemetry.Query(ctx, connect.NewRequest(nq))
	if err != nil {
		return nil, err
	}
	out := traffic.Msg
	byKey := map[string]*droverv1.TelemetryGroup{}
	for _, g := range out.GetGroups() {
		byKey[g.GetKey()] = g
	}
	for _, ng := range nodes.Msg.GetGroups() {
		g, ok := byKey[ng.GetKey()]
		if !ok {
			g = &droverv1.TelemetryGroup{Key: ng.GetKey(), Start: ng.GetStart(), End: ng.GetEnd(), Nodes: ng.GetNodes()}
			out.Groups = append(out.Groups, g)
			byKey[g.GetKey()] = g
		}
		g.Node = ng.GetNode()
		g.Nodes = max(g.GetNodes(), ng.GetNodes())
	}
	slices.SortFunc(out.Groups, func(a, b *droverv1.TelemetryGroup) int { return cmp.Compare(a.GetKey(), b.GetKey()) })
	return out, nil
}

func topTable(w io.Writer, snap *droverv1.QueryTelemetryResponse, by string, window time.Duration) {
	row(w, "GROUP", "NODES", "REQ/S", "ERROR%", "P50", "P99", "GPUS", "GPU%", "GPU MEM", "XID")
	for _, g := range snap.GetGroups() {
		p := g.GetProfile()
		_, errRate, p50, p99 := traffic(p)
		rate := "-"
		if p.GetRequests() > 0 {
			rate = strconv.FormatFloat(float64(p.GetRequests())/window.Seconds(), 'f', 1, 64)
		}
		gpus, util, mem, xids := gpuUse(g.GetNode())
		row(w, orDash(g.GetKey()), formatUint(g.GetNodes()), rate, errRate, p50, p99, gpus, util, mem, xids)
	}
	for _, m := range snap.GetMissing() {
		fmt.Fprintf(w, "warning: server %s did not answer (%s): windows only it holds are missing\n", m.GetServerId(), m.GetReason())
	}
}

// gpuUse sums up a group's GPUs: how many, their mean utilisation and
// memory in use over the range, and the Xid errors reported.
func gpuUse(n *droverv1.NodeMetrics) (gpus, util, mem, xids string) {
	if len(n.GetGpus()) == 0 {
		return "-", "-", "-", "-"
	}
	var uSum, mSum float64
	var uCount, mCount uint64
	var xid int
	for _, g := range n.GetGpus() {
		uSum += g.GetUtilizationPercent().GetSum()
		uCount += g.GetUtilizationPercent().GetCount()
		mSum += g.GetMemoryUsedBytes().GetSum()
		mCount += g.GetMemoryUsedBytes().GetCount()
		xid += len(g.GetXidEvents())
	}
	util, mem = "-", "-"
	if uCount > 0 {
		util = strconv.FormatFloat(uSum/float64(uCount), 'f', 0, 64)
	}
	if mCount > 0 {
		// The mean per GPU sample times the GPUs: what the group holds.
		mem = units.Bytes(uint64(mSum / float64(mCount) * float64(len(n.GetGpus()))))
	}
	return strconv.Itoa(len(n.GetGpus())), util, mem, strconv.Itoa(xid)
}
