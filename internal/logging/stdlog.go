package logging

import (
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
)

// StdLogAdapter returns a *log.Logger, as memberlist and net/http want,
// whose lines go to l. A line starting with a level in brackets, as
// memberlist writes them ("[DEBUG] memberlist: ..."), is logged at that
// level with the prefix removed; any other line is logged at level.
func StdLogAdapter(l *slog.Logger, level slog.Level) *log.Logger {
	w := &LineWriter{
		Level: level,
		Infer: true,
		Emit: func(level slog.Level, msg string) {
			l.Log(context.Background(), level, msg)
		},
	}
	return log.New(w, "", 0)
}

// LineWriter logs each write as one message through Emit. The standard log
// package writes each message with a single Write, so one write is one
// message. Adapters for libraries with their own level conventions (such as
// the control plane's hclog adapter) build on it. Safe for concurrent use
// when Emit is.
type LineWriter struct {
	Emit  func(level slog.Level, msg string)
	Level slog.Level // for lines without a recognized prefix, or always if Force
	Force bool       // strip any level prefix but log at Level regardless
	Infer bool       // take the level from a "[LEVEL]" prefix
	// InferWithTimestamp skips a leading timestamp before looking for the
	// prefix, for libraries that format their own time.
	InferWithTimestamp bool
}

var _ io.Writer = (*LineWriter)(nil)

func (w *LineWriter) Write(p []byte) (int, error) {
	msg := strings.TrimRight(string(p), " \t\r\n")
	level := w.Level
	if w.Force || w.Infer {
		s := msg
		if w.InferWithTimestamp {
			s = trimTimestamp(s)
		}
		if l, rest, ok := levelPrefix(s); ok {
			msg = rest
			if !w.Force {
				level = l
			}
		}
	}
	w.Emit(level, msg)
	return len(p), nil
}

// levelPrefixes are the bracketed levels that hclog and memberlist write.
var levelPrefixes = []struct {
	prefix string
	level  slog.Level
}{
	{"[TRACE]", LevelTrace},
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[WARNING]", slog.LevelWarn},
	{"[ERROR]", slog.LevelError},
	{"[ERR]", slog.LevelError},
}

func levelPrefix(s string) (slog.Level, string, bool) {
	for _, p := range levelPrefixes {
		if rest, ok := strings.CutPrefix(s, p.prefix); ok {
			return p.level, strings.TrimSpace(rest), true
		}
	}
	return 0, s, false
}

// trimTimestamp removes what looks like a timestamp before the first "[",
// so "2024/01/02 15:04:05 [WARN] x" is seen as "[WARN] x". Lines without a
// "[" after only timestamp characters are returned unchanged.
func trimTimestamp(s string) string {
	i := strings.IndexByte(s, '[')
	if i <= 0 {
		return s
	}
	if strings.Trim(s[:i], "0123456789 \t:/.,+-TZ") != "" {
		return s
	}
	return s[i:]
}
