package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/droverhq/drover/internal/logging/logtest"
)

// TestLogger must accept what tests pass it.
var (
	_ TB      = (*testing.T)(nil)
	_ TB      = (*testing.B)(nil)
	_ TB      = testing.TB(nil)
	_ cleaner = (*testing.T)(nil)
)

func TestParseLevel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want slog.Level
		ok   bool
	}{
		{"trace", LevelTrace, true},
		{"debug", slog.LevelDebug, true},
		{"info", slog.LevelInfo, true},
		{"INFO", slog.LevelInfo, true},
		{" Warn ", slog.LevelWarn, true},
		{"warning", slog.LevelWarn, true},
		{"error", slog.LevelError, true},
		{"", 0, false},
		{"verbose", 0, false},
		{"err", 0, false},
		{"4", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseLevel(tc.in)
			if tc.ok {
				if err != nil || got != tc.want {
					t.Errorf("ParseLevel(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrUnknownLevel) {
				t.Fatalf("ParseLevel(%q) error = %v, want ErrUnknownLevel", tc.in, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, fmt.Sprintf("%q", tc.in)) {
				t.Errorf("error %q does not quote the input", msg)
			}
			for _, name := range levelNames {
				if !strings.Contains(msg, name) {
					t.Errorf("error %q does not list %q", msg, name)
				}
			}
		})
	}
}

func TestCheckFormat(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"text", true},
		{"json", true},
		{"", false},
		{"JSON", false},
		{"logfmt", false},
	} {
		err := CheckFormat(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("CheckFormat(%q) = %v", tc.in, err)
		}
		if err != nil && !errors.Is(err, ErrUnknownFormat) {
			t.Errorf("CheckFormat(%q) = %v, want ErrUnknownFormat", tc.in, err)
		}
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name   string
		format string
		level  slog.Level
		log    func(*slog.Logger)
		want   []string // substrings of the output, in any order
		empty  bool
	}{
		{
			name:   "text",
			format: FormatText,
			level:  slog.LevelInfo,
			log:    func(l *slog.Logger) { l.Info("started", "node", "s1") },
			want:   []string{"level=INFO", "msg=started", "node=s1"},
		},
		{
			name:   "text filters below level",
			format: FormatText,
			level:  slog.LevelWarn,
			log:    func(l *slog.Logger) { l.Info("quiet") },
			empty:  true,
		},
		{
			name:   "text trace is named",
			format: FormatText,
			level:  LevelTrace,
			log:    func(l *slog.Logger) { l.Log(context.Background(), LevelTrace, "chatty") },
			want:   []string{"level=TRACE", "msg=chatty"},
		},
		{
			name:   "json",
			format: FormatJSON,
			level:  slog.LevelDebug,
			log:    func(l *slog.Logger) { l.Debug("started", "node", "s1") },
			want:   []string{`"level":"DEBUG"`, `"msg":"started"`, `"node":"s1"`},
		},
		{
			name:   "json trace is named",
			format: FormatJSON,
			level:  LevelTrace,
			log:    func(l *slog.Logger) { l.Log(context.Background(), LevelTrace, "chatty") },
			want:   []string{`"level":"TRACE"`},
		},
		{
			name:   "unknown format is text",
			format: "yaml",
			level:  slog.LevelInfo,
			log:    func(l *slog.Logger) { l.Info("x") },
			want:   []string{"level=INFO msg=x"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.log(New(&buf, tc.level, tc.format))
			out := buf.String()
			if tc.empty != (out == "") {
				t.Fatalf("output %q, want empty = %v", out, tc.empty)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q lacks %q", out, w)
				}
			}
			if tc.format == FormatJSON && !json.Valid(bytes.TrimSpace(buf.Bytes())) {
				t.Errorf("output %q is not JSON", out)
			}
		})
	}
}

func TestStdLogAdapter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		level     slog.Level
		line      string
		wantLevel slog.Level
		wantMsg   string
	}{
		{"memberlist debug", slog.LevelInfo, "[DEBUG] memberlist: Stream connection from=1.2.3.4", slog.LevelDebug, "memberlist: Stream connection from=1.2.3.4"},
		{"memberlist err", slog.LevelInfo, "[ERR] memberlist: failed", slog.LevelError, "memberlist: failed"},
		{"memberlist warn", slog.LevelDebug, "[WARN] memberlist: slow", slog.LevelWarn, "memberlist: slow"},
		{"no prefix uses level", slog.LevelWarn, "http: TLS handshake error", slog.LevelWarn, "http: TLS handshake error"},
		{"bracket elsewhere", slog.LevelInfo, "peer [s1] left", slog.LevelInfo, "peer [s1] left"},
		{"trailing newlines trimmed", slog.LevelInfo, "x\n\n", slog.LevelInfo, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := logtest.NewRecorder(LevelTrace)
			StdLogAdapter(slog.New(rec), tc.level).Print(tc.line)
			want := []logtest.Record{{Level: tc.wantLevel, Msg: tc.wantMsg}}
			if got := rec.Take(); !slices.Equal(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
	t.Run("filtered by the handler", func(t *testing.T) {
		rec := logtest.NewRecorder(slog.LevelInfo)
		StdLogAdapter(slog.New(rec), slog.LevelInfo).Print("[DEBUG] hidden")
		if got := rec.Take(); len(got) != 0 {
			t.Errorf("got %+v, want nothing", got)
		}
	})
}

// fakeTB records what TestLogger sends to t.Log.
type fakeTB struct {
	mu       sync.Mutex
	lines    []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Log(args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, fmt.Sprint(args...))
}

func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

func (f *fakeTB) logged() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines)
}

// plainTB has no Cleanup method.
type plainTB struct{ fakeTB }

func (p *plainTB) Cleanup() {} // wrong signature: not a cleaner

func TestTestLogger(t *testing.T) {
	f := &fakeTB{}
	l := TestLogger(f)
	l.Log(context.Background(), LevelTrace, "chatty", "k", 1)
	l.With("node", "s1").Info("hello")
	got := f.logged()
	if len(got) != 2 {
		t.Fatalf("logged %q, want 2 lines", got)
	}
	for i, want := range [][]string{{"level=TRACE", "msg=chatty", "k=1"}, {"level=INFO", "msg=hello", "node=s1"}} {
		for _, w := range want {
			if !strings.Contains(got[i], w) {
				t.Errorf("line %q lacks %q", got[i], w)
			}
		}
		if strings.HasSuffix(got[i], "\n") {
			t.Errorf("line %q ends in a newline", got[i])
		}
		if !strings.HasPrefix(got[i], "time=") || len(strings.Fields(got[i])[0]) != len("time=15:04:05.000") {
			t.Errorf("line %q lacks a short time", got[i])
		}
	}

	if len(f.cleanups) != 1 {
		t.Fatalf("registered %d cleanups, want 1", len(f.cleanups))
	}
	f.cleanups[0]()
	l.Error("after the test")
	if n := len(f.logged()); n != 2 {
		t.Errorf("logged after cleanup: %d lines", n)
	}

	p := &plainTB{}
	TestLogger(p).Info("x")
	if len(p.logged()) != 1 {
		t.Error("logger without Cleanup did not log")
	}

	// And with the real thing.
	TestLogger(t).Debug("through t.Log", "ok", true)
}

func TestConcurrentUse(t *testing.T) {
	var buf logtest.Buffer
	l := New(&buf, LevelTrace, FormatJSON)
	std := StdLogAdapter(l, slog.LevelInfo)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				std.Printf("[DEBUG] goroutine %d line %d", i, j)
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 8*50 {
		t.Errorf("%d lines, want %d", len(lines), 8*50)
	}
	for _, line := range lines {
		if !json.Valid([]byte(line)) {
			t.Fatalf("interleaved output: %q", line)
		}
	}
}
