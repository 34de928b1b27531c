package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newDriftCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "drift",
		Short: "Compare what models see in the fleet with their reference data",
		Long: `Compare what a model version sees in the fleet with its reference profile.

Agents sketch every request their models serve (inputs and outputs) in
windows; a version's reference profile comes from its reference data set
(drover model push --reference). Drift is measured per feature: PSI on a
fixed binning and Kolmogorov-Smirnov for numeric features, Jensen-Shannon
divergence for categorical ones, each with a verdict (stable, moderate,
drifted, or unknown with too few values). A model version is drifted when
at least a share of its judged inputs is (30% by default).`,
		Example: `  drover drift show fraud-detector@prod --by site --since 6h`,
	}, newDriftShowCommand(g))
}

func newDriftShowCommand(g *globals) *cobra.Command {
	var (
		by, deployment string
		since          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "show MODEL[@REF]",
		Short: "Show a model version's drift per feature, per cohort",
		Long: `Show a model version's drift from its reference, per input feature and per
output, for each cohort of the fleet.

REF is a version number or an alias (default: latest). --by splits the
fleet into cohorts: site, label:KEY (a node label's value), gpu (the
nodes' GPU model) or deployment; without it the whole fleet is one cohort.
--since is how far back to look (default 6h). --deployment keeps only one
deployment's traffic and applies its drift thresholds.

The table shows, per feature, the values seen on each side and the
statistics: PSI and KS for numbers, JS for categories. Verdict bands by
default: PSI 0.1 / 0.25, KS 0.1 / 0.2, JS 0.05 / 0.1; a feature with fewer
than 100 values on either side is not judged. -o json prints the answer
whole (GetDriftResponse).

Servers that did not answer are named; the windows only they held are
missing from the answer.`,
		Example: `  # Is the detector drifting in one site but not another?
  drover drift show defect-detector@prod --by site

  # Per GPU model, over the last day:
  drover drift show defect-detector@7 --by gpu --since 24h -o json`,
		Args: exactArgs("MODEL[@REF]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ref, err := parseModelRef(args[0])
			if err != nil {
				return usageErr(cmd, err)
			}
			if err := checkGroupBy(by); err != nil {
				return usageErr(cmd, fmt.Errorf("--by %s: %w", by, err))
			}
			if since <= 0 {
				return usageErr(cmd, fmt.Errorf("--since %s: want a positive duration such as 30m or 6h", since))
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			now := g.now()
			resp, err := c.drift.GetDrift(cmd.Context(), connect.NewRequest(&droverv1.GetDriftRequest{
				Model: name, Ref: ref, GroupBy: by, Deployment: deployment,
				Since: timestamppb.New(now.Add(-since)), Until: timestamppb.New(now),
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { driftView(w, resp.Msg, by) })
		},
	}
	cmd.Flags().StringVar(&by, "by", "", "split the fleet into cohorts by `site|label:KEY|gpu|deployment`")
	cmd.Flags().DurationVar(&since, "since", 6*time.Hour, "look back this far: a `DURATION` such as 30m or 24h")
	cmd.Flags().StringVar(&deployment, "deployment", "", "only this `DEPLOYMENT`'s traffic, with its thresholds")
	return cmd
}

// checkGroupBy checks a cohort split before anything is asked.
func checkGroupBy(by string) error {
	switch {
	case by == "", by == "site", by == "gpu", by == "deployment":
		return nil
	case strings.HasPrefix(by, "label:"):
		if strings.TrimPrefix(by, "label:") == "" {
			return errors.New("label: needs a key, such as label:camera")
		}
		return nil
	}
	return errors.New("want site, label:KEY, gpu or deployment")
}

func driftView(w io.Writer, r *droverv1.GetDriftResponse, by string) {
	source := r.GetReferenceSource()
	if source == "" {
		source = "?"
	}
	fmt.Fprintf(w, "%s@%d, reference from the %s\n", r.GetModel(), r.GetVersion(), source)
	if len(r.GetCohorts()) == 0 {
		fmt.Fprintln(w, "No telemetry in this range: no serving instance of this version reported any.")
	}
	for _, c := range r.GetCohorts() {
		fmt.Fprintln(w)
		name := "fleet"
		if by != "" {
			name = by + " " + orDash(c.GetKey())
		}
		fmt.Fprintf(w, "%s: %s (%d of %d judged inputs drifted), %d requests from %d nodes\n",
			name, verdictText(c.GetVerdict()), c.GetDrifted(), c.GetEvaluated(), c.GetRequests(), c.GetNodes())
		row(w, "FEATURE", "KIND", "VALUES", "PSI", "KS", "JS", "VERDICT", "NOTE")
		for _, side := range []struct {
			prefix string
			fs     []*droverv1.FeatureDrift
		}{{"", c.GetInputs()}, {"out:", c.GetOutputs()}} {
			fs := slices.Clone(side.fs)
			slices.SortStableFunc(fs, func(a, b *droverv1.FeatureDrift) int { return naturalCompare(a.GetName(), b.GetName()) })
			for _, f := range fs {
				numeric := f.GetKind() == droverv1.FeatureKind_FEATURE_KIND_NUMERIC
				row(w, side.prefix+f.GetName(), kindText(f.GetKind()),
					strconv.FormatUint(f.GetCurrentCount(), 10),
					statText(f.GetPsi(), numeric && f.GetReason() == ""),
					statText(f.GetKs(), numeric && f.GetReason() == ""),
					statText(f.GetJs(), !numeric && f.GetReason() == ""),
					verdictText(f.GetVerdict()), orDash(f.GetReason()))
			}
		}
	}
	for _, m := range r.GetMissing() {
		fmt.Fprintf(w, "\nWarning: server %s did not answer (%s); windows only it held are missing.\n", m.GetServerId(), m.GetReason())
	}
}

// naturalCompare orders names as a reader expects them, numbers by value:
// input[2] before input[10], which byte order puts after input[1]. Vector
// elements are what most features of a model are named after.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitRun(a), digitRun(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// digitRun is the length of the run of ASCII digits s starts with.
func digitRun(s string) int {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

func verdictText(v droverv1.DriftVerdict) string {
	return strings.ToLower(strings.TrimPrefix(v.String(), "DRIFT_VERDICT_"))
}

func kindText(k droverv1.FeatureKind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "FEATURE_KIND_"))
}

func statText(x float64, shown bool) string {
	if !shown {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 3, 64)
}
