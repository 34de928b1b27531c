// Package raftlog feeds the logs of hashicorp/raft, which speaks hclog,
// into the control plane's slog logger, so Raft's output shares the
// server's format and level. It lives beside the control plane, its only
// user, so that the agent never links hclog.
package raftlog

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strconv"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"

	"github.com/droverhq/drover/internal/logging"
)

// New returns an hclog.Logger, as hashicorp/raft wants, that forwards
// every message to l. Levels map one to one (Trace to logging.LevelTrace);
// key/value arguments become attributes; the logger's name, set with name
// and extended with Named, goes under logging.NameKey. SetLevel filters on top of
// l's own level and affects every logger derived from the returned one;
// until it is called, l's handler alone decides. The returned logger is safe
// for concurrent use.
func New(l *slog.Logger, name string) hclog.Logger {
	a := &hclogAdapter{root: l, name: name, level: new(atomic.Int32)}
	a.level.Store(int32(hclog.NoLevel))
	a.build()
	return a
}

type hclogAdapter struct {
	root    *slog.Logger // as given to New
	l       *slog.Logger // root with the name and implied arguments attached
	name    string
	implied []any
	// level is shared by every logger derived from one New call,
	// as hclog's SetLevel contract asks. hclog.NoLevel means no filter.
	level *atomic.Int32
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// build attaches the name and implied arguments once, so logging a message
// does not redo it.
func (a *hclogAdapter) build() {
	l := a.root
	if a.name != "" {
		l = l.With(slog.String(logging.NameKey, a.name))
	}
	if len(a.implied) > 0 {
		l = l.With(attrsToAny(argsToAttrs(a.implied))...)
	}
	a.l = l
}

func (a *hclogAdapter) derive(name string, implied []any) *hclogAdapter {
	d := &hclogAdapter{root: a.root, name: name, implied: implied, level: a.level}
	d.build()
	return d
}

// toSlog maps an hclog level to a slog level. NoLevel, which hclog uses for
// "unset", logs at Info.
func toSlog(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return logging.LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// fromSlog maps a slog level to the hclog level that covers it.
func fromSlog(l slog.Level) hclog.Level {
	switch {
	case l <= logging.LevelTrace:
		return hclog.Trace
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	default:
		return hclog.Error
	}
}

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	if l == hclog.Off {
		return false
	}
	if min := hclog.Level(a.level.Load()); min != hclog.NoLevel && (min == hclog.Off || l < min) {
		return false
	}
	return a.l.Enabled(context.Background(), toSlog(l))
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	if !a.enabled(level) {
		return
	}
	a.l.LogAttrs(context.Background(), toSlog(level), msg, argsToAttrs(args)...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

// ImpliedArgs returns a copy of the key/value pairs added with With.
func (a *hclogAdapter) ImpliedArgs() []any {
	return append([]any(nil), a.implied...)
}

// With returns a logger that adds args to every message. As in hclog, a key
// given again replaces the earlier value instead of appearing twice.
func (a *hclogAdapter) With(args ...any) hclog.Logger {
	implied := append([]any(nil), a.implied...)
	var extra []any
	if len(args)%2 == 1 {
		extra = []any{hclog.MissingKey, args[len(args)-1]}
		args = args[:len(args)-1]
	}
	for _, kvs := range [][]any{args, extra} {
		for i := 0; i+1 < len(kvs); i += 2 {
			key := keyString(kvs[i])
			replaced := false
			for j := 0; j+1 < len(implied); j += 2 {
				if keyString(implied[j]) == key {
					implied[j+1] = kvs[i+1]
					replaced = true
					break
				}
			}
			if !replaced {
				implied = append(implied, key, kvs[i+1])
			}
		}
	}
	return a.derive(a.name, implied)
}

func (a *hclogAdapter) Name() string { return a.name }

// Named returns a logger whose name is this one's with "." and name
// appended, keeping the implied arguments.
func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.derive(name, a.implied)
}

// ResetNamed returns a logger named name, keeping the implied arguments.
func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	return a.derive(name, a.implied)
}

// SetLevel sets a filter shared by this logger and every logger derived
// from the same New call. It can only hide messages l's handler
// would show, never show ones it hides. hclog.NoLevel removes the filter.
func (a *hclogAdapter) SetLevel(level hclog.Level) {
	a.level.Store(int32(level))
}

// GetLevel returns the lowest level that is logged: the SetLevel filter if
// one is set, otherwise what l's handler enables.
func (a *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

// StandardLogger returns a *log.Logger whose lines go to this logger, with
// levels taken from opts as hclog does.
func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer that logs each write as one message,
// with levels taken from opts as hclog does: ForceLevel if set, else a
// "[LEVEL]" prefix if InferLevels, else Info.
func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	if opts == nil {
		opts = &hclog.StandardLoggerOptions{}
	}
	w := &logging.LineWriter{
		Level: slog.LevelInfo,
		Emit: func(level slog.Level, msg string) {
			a.Log(fromSlog(level), msg)
		},
	}
	switch {
	case opts.ForceLevel != hclog.NoLevel:
		w.Force = true
		w.Level = toSlog(opts.ForceLevel)
	case opts.InferLevels:
		w.Infer = true
		w.InferWithTimestamp = opts.InferLevelsWithTimestamp
	}
	return w
}

// argsToAttrs turns hclog's alternating keys and values into attributes,
// rendering hclog's special value types the way hclog prints them. An odd
// final value goes under hclog.MissingKey, as hclog does.
func argsToAttrs(args []any) []slog.Attr {
	if len(args) == 0 {
		return nil
	}
	attrs := make([]slog.Attr, 0, (len(args)+1)/2)
	for i := 0; i < len(args); i += 2 {
		if i+1 == len(args) {
			if st, ok := args[i].(hclog.CapturedStacktrace); ok {
				attrs = append(attrs, slog.String("stacktrace", string(st)))
			} else {
				attrs = append(attrs, slog.Any(hclog.MissingKey, hclogValue(args[i])))
			}
			break
		}
		attrs = append(attrs, slog.Any(keyString(args[i]), hclogValue(args[i+1])))
	}
	return attrs
}

func attrsToAny(attrs []slog.Attr) []any {
	out := make([]any, len(attrs))
	for i, a := range attrs {
		out[i] = a
	}
	return out
}

func keyString(k any) string {
	if s, ok := k.(string); ok {
		return s
	}
	return fmt.Sprint(k)
}

func hclogValue(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) == 0 {
			return ""
		}
		if f, ok := v[0].(string); ok {
			return fmt.Sprintf(f, v[1:]...)
		}
		return fmt.Sprint(v...)
	case hclog.Hex:
		return "0x" + strconv.FormatUint(uint64(v), 16)
	case hclog.Octal:
		return "0" + strconv.FormatUint(uint64(v), 8)
	case hclog.Binary:
		return "0b" + strconv.FormatUint(uint64(v), 2)
	case hclog.Quote:
		return string(v)
	case hclog.CapturedStacktrace:
		return string(v)
	}
	return v
}
