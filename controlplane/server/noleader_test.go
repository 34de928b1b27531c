package server

import (
	"strings"
	"testing"
	"time"
)

// A refusal for want of a leader never reads as if a quorum were missing
// when one is reachable, and always starts with noLeaderPrefix, which
// clients' test recorders read as "not proposed, not sent on".
func TestNoLeaderMessage(t *testing.T) {
	tests := []struct {
		name              string
		why               string
		voters, reachable int
		silent            time.Duration
		wantMsg, wantHint string
	}{
		{"quorum reachable: an election", "", 3, 2, 0,
			"no leader elected yet: 2 of 3 servers reachable (quorum is 2), so an election may be in progress",
			"retry in a few seconds"},
		{"quorum lost", "", 3, 1, 0,
			"no leader elected: only 1 of 3 servers reachable, and a quorum needs 2",
			"start or reconnect at least 1 more server(s); writes fail until a quorum is back"},
		{"with a reason", "this server is not the leader", 5, 5, 0,
			"no leader to serve the request: this server is not the leader; 5 of 5 servers reachable (quorum is 3), so an election may be in progress",
			"retry in a few seconds"},
		{"cut off although gossip still answers", "", 3, 3, 4200 * time.Millisecond,
			"no leader elected yet: 3 of 3 servers reachable (quorum is 2)",
			"this server last heard from a leader 4.2s ago: it may be cut off from the others; retry against another server and check \"drover status\" there"},
		{"membership unknown", "", 0, 0, 0, "no leader elected yet", "retry shortly; check \"drover status\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, hint := noLeaderMessage(tt.why, tt.voters, tt.reachable, tt.silent)
			if msg != tt.wantMsg || hint != tt.wantHint {
				t.Errorf("noLeaderMessage =\n%q\n%q\nwant\n%q\n%q", msg, hint, tt.wantMsg, tt.wantHint)
			}
			if !strings.HasPrefix(msg, noLeaderPrefix+" ") {
				t.Errorf("message %q does not start with %q", msg, noLeaderPrefix)
			}
		})
	}
}
