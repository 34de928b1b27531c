// Package logtest holds a slog handler that keeps records in memory, for
// tests of the adapters that feed other libraries' logs into slog.
package logtest

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
)

// Record is one logged record, flattened for comparison.
type Record struct {
	Level slog.Level
	Msg   string
	Attrs string // "k=v k=v", handler attributes first
}

// Recorder is a slog.Handler that keeps the records at or above its level
// in memory. Handlers made from it by WithAttrs share its records. Safe for
// concurrent use.
type Recorder struct {
	min   slog.Level
	mu    *sync.Mutex
	recs  *[]Record
	attrs []slog.Attr
}

var _ slog.Handler = (*Recorder)(nil)

// NewRecorder returns a Recorder that keeps records at min and above.
func NewRecorder(min slog.Level) *Recorder {
	return &Recorder{min: min, mu: new(sync.Mutex), recs: new([]Record)}
}

// Enabled implements slog.Handler.
func (r *Recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.min }

// Handle implements slog.Handler.
func (r *Recorder) Handle(_ context.Context, rec slog.Record) error {
	var parts []string
	for _, a := range r.attrs {
		parts = append(parts, a.String())
	}
	rec.Attrs(func(a slog.Attr) bool {
		parts = append(parts, a.String())
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	*r.recs = append(*r.recs, Record{rec.Level, rec.Message, strings.Join(parts, " ")})
	return nil
}

// WithAttrs implements slog.Handler.
func (r *Recorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *r
	c.attrs = append(slices.Clone(r.attrs), attrs...)
	return &c
}

// WithGroup implements slog.Handler; the adapters never use groups.
func (r *Recorder) WithGroup(string) slog.Handler { panic("logtest: groups are not supported") }

// Take returns the records kept so far and forgets them.
func (r *Recorder) Take() []Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := *r.recs
	*r.recs = nil
	return out
}

// Buffer is a bytes.Buffer that a logger may write while the test reads
// it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
