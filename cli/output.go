package cli

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/droverhq/drover/internal/protoout"
)

// Output formats of -o.
const (
	outputTable = "table"
	outputJSON  = "json"
)

func outputFormat(cmd *cobra.Command) string {
	f, _ := cmd.Flags().GetString("output")
	return f
}

// checkOutputFormat runs before every command, so a bad -o fails before any
// request is sent rather than after a write has happened.
func checkOutputFormat(cmd *cobra.Command) error {
	switch f := outputFormat(cmd); f {
	case outputTable, outputJSON:
		return nil
	default:
		return usageErr(cmd, fmt.Errorf("-o %s: want table or json", f))
	}
}

// printResult prints a command's result: with -o json the protobuf JSON form
// of msg, the API's own schema, so scripts need no second format; otherwise
// whatever table writes. table writes through a tabwriter, so cells are
// separated by tabs and lines without tabs pass through.
func printResult(cmd *cobra.Command, msg proto.Message, table func(w io.Writer)) error {
	return printResultTo(cmd.OutOrStdout(), cmd, msg, table)
}

// printResultTo is printResult writing to out.
func printResultTo(out io.Writer, cmd *cobra.Command, msg proto.Message, table func(w io.Writer)) error {
	if outputFormat(cmd) == outputJSON {
		return protoout.WriteJSON(out, msg)
	}
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	table(tw)
	if err := tw.Flush(); err != nil {
		return err
	}
	// tabwriter pads every cell but the last, which leaves trailing spaces
	// where the last column is empty.
	var trimmed bytes.Buffer
	for line := range strings.Lines(buf.String()) {
		trimmed.WriteString(strings.TrimRight(line, " \n"))
		trimmed.WriteByte('\n')
	}
	_, err := out.Write(trimmed.Bytes())
	return err
}

// row writes one table row of tab-separated cells.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// field writes one "Key:  value" line; empty values are left out so that
// optional fields do not clutter the view.
func field(w io.Writer, key, value string) {
	if value != "" {
		fmt.Fprintf(w, "%s:\t%s\n", key, value)
	}
}

// formatTime renders a timestamp as RFC 3339 in UTC, which sorts and
// compares across machines in different zones.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// formatTimeAge is formatTime with the age appended, for detail views.
func formatTimeAge(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "-"
	}
	return formatTime(ts) + " (" + formatAge(ts, now) + " ago)"
}

// formatAge renders how long ago ts was, in its largest unit, as kubectl
// does: 45s, 12m, 3h, 5d.
func formatAge(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "-"
	}
	d := now.Sub(ts.AsTime())
	if d < 0 {
		return "0s" // the server's clock is ahead of ours
	}
	return roughDuration(d)
}

// formatUntil renders how far in the future ts is, as "in 45m", or how
// long ago it passed, as "3h ago".
func formatUntil(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "-"
	}
	d := ts.AsTime().Sub(now)
	if d <= 0 {
		return roughDuration(-d) + " ago"
	}
	return "in " + roughDuration(d)
}

// roughDuration renders a non-negative duration in its largest unit,
// rounded down: 45s, 12m, 3h; days from 48 hours on.
func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

// shortDigest cuts "sha256:<64 hex>" to 12 hex digits for tables; the full
// digest is in show and in -o json.
func shortDigest(d string) string {
	algo, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return algo + ":" + hex[:12]
}

// formatPairs renders a map as "k=v, k=v" in key order, so output is
// deterministic.
func formatPairs[V any](m map[string]V, format func(V) string) string {
	parts := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+format(m[k]))
	}
	return strings.Join(parts, ", ")
}

func formatString(s string) string { return s }
func formatUint(n uint64) string   { return strconv.FormatUint(n, 10) }
func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
