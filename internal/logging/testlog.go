package logging

import (
	"io"
	"log/slog"
	"strings"
	"sync"
)

// TB is the part of testing.TB that TestLogger needs. Taking it instead of
// testing.TB keeps the testing package out of product binaries.
type TB interface {
	Log(args ...any)
	Helper()
}

// cleaner is the optional part of testing.TB that lets TestLogger stop
// logging once the test is over.
type cleaner interface {
	Cleanup(func())
}

// TestLogger returns a logger that writes every record, down to LevelTrace,
// through t.Log, so that logs show only for failing tests (or with -v). If t
// has a Cleanup method, as *testing.T does, records logged after the test
// ends are dropped instead of making the testing package panic, which
// matters for goroutines that outlive a test by a moment.
func TestLogger(t TB) *slog.Logger {
	w := &tbWriter{t: t}
	if c, ok := t.(cleaner); ok {
		c.Cleanup(w.stop)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: LevelTrace,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			// t.Log shows no time of its own; a short one is enough to
			// follow what happened when.
			if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000"))
			}
			return replaceLevelName(groups, a)
		},
	}))
}

type tbWriter struct {
	t    TB
	mu   sync.Mutex // guards done, and is held across t.Log so stop waits for it
	done bool
}

var _ io.Writer = (*tbWriter)(nil)

// Write logs one record; slog's text handler writes each record with a
// single call.
func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}
