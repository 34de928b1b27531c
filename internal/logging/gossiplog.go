package logging

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Gossip limits: one line per remote host per interval, for up to this
// many hosts at once.
const (
	gossipLimitInterval = time.Minute
	gossipLimitHosts    = 1024
)

// GossipLogAdapter is StdLogAdapter for memberlist, which logs one line per
// bad packet or stream and names its sender ("from=HOST:PORT"): anyone who
// can reach a gossip port could fill the logs at will. Such lines at Warn
// and above are limited per sending host to one a minute, each saying how
// many it stands for; every one of them, logged or not, is counted by
// counted (nil counts nothing). Other lines pass as StdLogAdapter passes
// them.
func GossipLogAdapter(l *slog.Logger, level slog.Level, counted func()) *log.Logger {
	lim := NewLimiter(gossipLimitInterval, gossipLimitHosts, time.Now)
	w := &LineWriter{
		Level: level,
		Infer: true,
		Emit: func(level slog.Level, msg string) {
			if host := remoteHost(msg); host != "" && level >= slog.LevelWarn {
				if counted != nil {
					counted()
				}
				ok, suppressed := lim.Allow(host)
				if !ok {
					return
				}
				if suppressed > 0 {
					msg = fmt.Sprintf("%s (and %d more from %s in the last %s, not logged)", msg, suppressed, host, gossipLimitInterval)
				}
			}
			l.Log(context.Background(), level, msg)
		},
	}
	return log.New(w, "", 0)
}

// remoteHost is the host of the "from=HOST:PORT" memberlist puts in a
// message about what a remote sent, or "" when it names none.
func remoteHost(msg string) string {
	_, rest, ok := strings.Cut(msg, "from=")
	if !ok {
		return ""
	}
	addr, _, _ := strings.Cut(rest, " ")
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
