package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// Garbage from one host to a gossip port costs one log line, however many
// packets it sends, and every packet is counted; other hosts, and lines
// that name no sender, are not held back.
func TestGossipLogAdapterLimitsPerHost(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var counted int
	std := GossipLogAdapter(l, slog.LevelInfo, func() { counted++ })
	for i := range 100 {
		std.Printf("[ERR] memberlist: discarding stream with unacceptable label \"\": from=192.0.2.7:%d", 40000+i)
	}
	std.Printf("[ERR] memberlist: Failed to decrypt packet: boom from=[2001:db8::1]:7946")
	std.Printf("[WARN] memberlist: Refuting a suspect message (from: n-1)")
	std.Printf("[DEBUG] memberlist: Stream connection from=192.0.2.7:1")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	count := func(s string) int {
		n := 0
		for _, line := range lines {
			if strings.Contains(line, s) {
				n++
			}
		}
		return n
	}
	if got := count("unacceptable label"); got != 1 {
		t.Errorf("100 bad streams from one host logged %d lines, want 1:\n%s", got, buf.String())
	}
	for _, want := range []string{"2001:db8::1", "Refuting a suspect", "Stream connection"} {
		if count(want) != 1 {
			t.Errorf("line with %q not logged once:\n%s", want, buf.String())
		}
	}
	if counted != 101 {
		t.Errorf("counted %d messages about what remotes sent, want 101", counted)
	}
}

func TestRemoteHost(t *testing.T) {
	for msg, want := range map[string]string{
		"memberlist: x: from=10.0.0.1:7946":          "10.0.0.1",
		"memberlist: x from=[2001:db8::1]:7946 more": "2001:db8::1",
		"memberlist: Refuting (from: n-1)":           "",
		"memberlist: x from=weird":                   "weird",
	} {
		if got := remoteHost(msg); got != want {
			t.Errorf("remoteHost(%q) = %q, want %q", msg, got, want)
		}
	}
}
