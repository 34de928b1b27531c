package cli

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestPrintResult(t *testing.T) {
	t.Parallel()
	msg := &droverv1.ListPeersResponse{Index: 7, Peers: []*droverv1.RaftPeer{{Id: "s1", Leader: true}}}
	table := func(w io.Writer) {
		row(w, "ID", "LEADER", "NOTE")
		row(w, "s1", "*", "")
		row(w, "server-22", "", "")
	}
	tests := []struct{ output, want string }{
		// No trailing spaces where last columns are empty.
		{"table", "ID         LEADER  NOTE\ns1         *\nserver-22\n"},
		{"json", "{\n  \"peers\": [\n    {\n      \"id\": \"s1\",\n      \"leader\": true\n    }\n  ],\n  \"index\": \"7\"\n}\n"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		cmd := &cobra.Command{}
		cmd.Flags().StringP("output", "o", tt.output, "")
		cmd.SetOut(&out)
		if err := printResult(cmd, msg, table); err != nil {
			t.Fatal(err)
		}
		if out.String() != tt.want {
			t.Errorf("-o %s:\n%q\nwant\n%q", tt.output, out.String(), tt.want)
		}
	}
}

func TestFormatAge(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		ago  time.Duration
		want string
	}{
		{-time.Minute, "0s"},
		{0, "0s"},
		{45 * time.Second, "45s"},
		{12*time.Minute + 59*time.Second, "12m"},
		{3 * time.Hour, "3h"},
		{47 * time.Hour, "47h"},
		{5 * 24 * time.Hour, "5d"},
	}
	for _, tt := range tests {
		if got := formatAge(timestamppb.New(now.Add(-tt.ago)), now); got != tt.want {
			t.Errorf("formatAge(%v ago) = %q, want %q", tt.ago, got, tt.want)
		}
	}
	if got := formatAge(nil, now); got != "-" {
		t.Errorf("formatAge(nil) = %q", got)
	}
	if got := formatTimeAge(timestamppb.New(now.Add(-90*time.Second)), now); got != "2026-03-01T11:58:30Z (1m ago)" {
		t.Errorf("formatTimeAge = %q", got)
	}
}

func TestFormatUntil(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{
		59 * time.Minute: "in 59m",
		72 * time.Hour:   "in 3d",
		0:                "0s ago",
		-3 * time.Hour:   "3h ago",
	} {
		if got := formatUntil(timestamppb.New(now.Add(d)), now); got != want {
			t.Errorf("formatUntil(now%+v) = %q, want %q", d, got, want)
		}
	}
	if got := formatUntil(nil, now); got != "-" {
		t.Errorf("formatUntil(nil) = %q", got)
	}
}

func TestShortDigest(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		testDigest:   "sha256:9f86d081884c",
		"sha256:abc": "sha256:abc",
		"opaque":     "opaque",
	} {
		if got := shortDigest(in); got != want {
			t.Errorf("shortDigest(%q) = %q, want %q", in, got, want)
		}
	}
}

func ExampleformatPairs() {
	fmt.Println(formatPairs(map[string]uint64{"prod": 3, "canary": 4}, formatUint))
	// Output: canary=4, prod=3
}
