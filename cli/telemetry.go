package cli

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/sketch"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newTelemetryCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "telemetry",
		Short: "Query the fleet's telemetry",
		Long: `Query what agents measured: requests, errors and latency of every serving
instance, merged across the fleet. Agents ship closed windows (one minute by
default) to the server they are connected to; each server keeps what it
received, copied to one other server, and a query asks every server and
merges the answers (see docs/telemetry.md).`,
		Example: `  drover telemetry query --model defect-detector --by site --since 6h`,
	}, newTelemetryQueryCommand(g))
}

func newTelemetryQueryCommand(g *globals) *cobra.Command {
	var (
		req          droverv1.QueryTelemetryRequest
		since, until time.Duration
		step         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "query",
		Short: "Merge the fleet's telemetry windows into groups",
		Long: `Merge the telemetry windows that ended in the chosen range into one row per
group and time step: requests, errors and latency quantiles.

--by groups the rows: site, label:KEY (a node label's value), gpu (the node's
GPU model), version, deployment or node. Several, separated by commas
("site,version"), group by each in turn. Without --by everything is one group.

--since and --until are ages: windows that ended between since ago and until
ago (now by default). --step cuts that range into buckets of that width; 0
merges the whole range into one.

Counts are exact; latency quantiles are within 1% of the true value. A
server that does not answer is named on stderr: the windows only it holds are
missing from the answer (with -o json, see "missing").`,
		Example: `  # Latency and errors per site of one model over the last hour
  drover telemetry query --model defect-detector --by site

  # Per version, minute by minute, over the last 15 minutes, as JSON
  drover telemetry query --model defect-detector --by version --since 15m --step 1m -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since <= 0 || until < 0 || until >= since {
				return usageErr(cmd, fmt.Errorf("--since %v and --until %v: want 0 ≤ until < since, ages like 1h and 10m", since, until))
			}
			if step < 0 || step%time.Second != 0 {
				return usageErr(cmd, fmt.Errorf("--step %v: want a whole number of seconds, like 1m", step))
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			now := time.Now()
			req.Since, req.Until = timestamppb.New(now.Add(-since)), timestamppb.New(now.Add(-until))
			req.StepSeconds = uint32(step / time.Second)
			resp, err := c.telemetry.Query(cmd.Context(), connect.NewRequest(&req))
			if err != nil {
				return err
			}
			for _, m := range resp.Msg.GetMissing() {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: server %s did not answer (%s): windows only it holds are missing\n", m.GetServerId(), m.GetReason())
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { telemetryTable(w, resp.Msg.GetGroups(), req.GroupBy, step > 0) })
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Model, "model", "", "only windows of `MODEL`")
	fl.StringVar(&req.Version, "version", "", "only windows of model version `V`")
	fl.StringVar(&req.Deployment, "deployment", "", "only windows of `DEPLOYMENT`")
	fl.StringVar(&req.Site, "site", "", "only windows of nodes in `SITE`")
	fl.StringVar(&req.NodeId, "node", "", "only windows of node `ID`")
	fl.StringVar(&req.GroupBy, "by", "", "group by site, label:KEY, gpu, version, deployment or node")
	fl.DurationVar(&since, "since", time.Hour, "windows that ended at most this long ago")
	fl.DurationVar(&until, "until", 0, "windows that ended at least this long ago")
	fl.DurationVar(&step, "step", 0, "cut the range into buckets this wide (0: one bucket)")
	return cmd
}

func telemetryTable(w io.Writer, groups []*droverv1.TelemetryGroup, by string, steps bool) {
	head := []string{}
	if by != "" {
		head = append(head, "GROUP")
	}
	if steps {
		head = append(head, "START")
	}
	row(w, append(head, "WINDOWS", "NODES", "REQUESTS", "ERRORS", "ERROR%", "P50", "P99")...)
	for _, g := range groups {
		cells := []string{}
		if by != "" {
			cells = append(cells, orDash(g.GetKey()))
		}
		if steps {
			cells = append(cells, formatTime(g.GetStart()))
		}
		p := g.GetProfile()
		errs, rate, p50, p99 := traffic(p)
		row(w, append(cells, formatUint(g.GetWindows()), formatUint(g.GetNodes()), formatUint(p.GetRequests()),
			formatUint(errs), rate, p50, p99)...)
	}
}

// traffic sums up a merged profile's requests for a table: failed
// requests, the error rate in percent, and p50 and p99 latency ("-" where
// there were no requests).
func traffic(p *droverv1.Profile) (errs uint64, errRate, p50, p99 string) {
	for _, e := range p.GetErrors() {
		errs += e.GetCount()
	}
	errRate, p50, p99 = "-", "-", "-"
	if p.GetRequests() > 0 {
		errRate = strconv.FormatFloat(100*float64(errs)/float64(p.GetRequests()), 'f', 2, 64)
	}
	if lat, err := sketch.NumericFromProto(p.GetLatencySeconds()); err == nil && lat.Count() > 0 {
		p50, p99 = latency(lat, 0.5), latency(lat, 0.99)
	}
	return errs, errRate, p50, p99
}

// latency renders a quantile of a latency sketch in seconds as a duration.
func latency(n *sketch.Numeric, q float64) string {
	v, err := n.Quantile(q)
	if err != nil {
		return "-"
	}
	d := time.Duration(v * float64(time.Second))
	switch {
	case d >= time.Second:
		d = d.Round(time.Millisecond)
	case d >= time.Millisecond:
		d = d.Round(10 * time.Microsecond)
	}
	return d.String()
}
