// Package logging builds the structured log/slog loggers every Drover
// process uses, and adapts them for libraries that log through the standard
// log package, so that all output shares one format and one level. (The
// control plane's hclog adapter, for Raft, lives in controlplane/raftlog so
// that the agent does not link hclog.)
package logging

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// LevelTrace is below slog.LevelDebug, for the very chatty output that
// hclog-based libraries (Raft) log at their Trace level.
const LevelTrace = slog.LevelDebug - 4

// Output formats accepted by New.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// NameKey is the attribute that carries an hclog logger's name.
const NameKey = "logger"

// Errors returned by this package, wrapped with the operation that failed;
// test for them with errors.Is.
var (
	// ErrUnknownLevel means a level name is not one ParseLevel accepts.
	ErrUnknownLevel = errors.New("unknown log level")
	// ErrUnknownFormat means a format is neither FormatText nor FormatJSON.
	ErrUnknownFormat = errors.New("unknown log format")
)

// levelNames lists the names ParseLevel accepts, in order, for messages.
var levelNames = []string{"trace", "debug", "info", "warn", "error"}

// ParseLevel turns a level name (trace, debug, info, warn or warning,
// error; any case) into a slog level.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("parse log level %q: %w (valid levels: %s)", s, ErrUnknownLevel, strings.Join(levelNames, ", "))
}

// CheckFormat reports whether New understands format, for validating flags
// before a logger is needed.
func CheckFormat(format string) error {
	switch format {
	case FormatText, FormatJSON:
		return nil
	}
	return fmt.Errorf("check log format %q: %w (valid formats: %s, %s)", format, ErrUnknownFormat, FormatText, FormatJSON)
}

// New returns a logger writing records at level and above to w, as logfmt
// text for FormatText or one JSON object per line for FormatJSON. Any other
// format gives text; check flags with CheckFormat first. The logger is safe
// for concurrent use if w is, as slog's handlers serialize their writes.
func New(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: replaceLevelName}
	if format == FormatJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// replaceLevelName names LevelTrace "TRACE" instead of slog's "DEBUG-4".
func replaceLevelName(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.LevelKey {
		if l, ok := a.Value.Any().(slog.Level); ok && l <= LevelTrace {
			a.Value = slog.StringValue("TRACE")
		}
	}
	return a
}
