package raftlog

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/droverhq/drover/internal/logging"
	"github.com/droverhq/drover/internal/logging/logtest"
)

func TestHCLogLevels(t *testing.T) {
	rec := logtest.NewRecorder(logging.LevelTrace)
	hl := New(slog.New(rec), "raft")
	for _, tc := range []struct {
		name string
		log  func(msg string, args ...any)
		want slog.Level
	}{
		{"Trace", hl.Trace, logging.LevelTrace},
		{"Debug", hl.Debug, slog.LevelDebug},
		{"Info", hl.Info, slog.LevelInfo},
		{"Warn", hl.Warn, slog.LevelWarn},
		{"Error", hl.Error, slog.LevelError},
		{"Log(Trace)", func(m string, a ...any) { hl.Log(hclog.Trace, m, a...) }, logging.LevelTrace},
		{"Log(Warn)", func(m string, a ...any) { hl.Log(hclog.Warn, m, a...) }, slog.LevelWarn},
		{"Log(NoLevel)", func(m string, a ...any) { hl.Log(hclog.NoLevel, m, a...) }, slog.LevelInfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.log("hello", "term", 3)
			got := rec.Take()
			want := []logtest.Record{{Level: tc.want, Msg: "hello", Attrs: "logger=raft term=3"}}
			if !slices.Equal(got, want) {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
	hl.Log(hclog.Off, "never")
	if got := rec.Take(); len(got) != 0 {
		t.Errorf("Log(Off) logged %+v", got)
	}
}

func TestHCLogHandlerLevel(t *testing.T) {
	for _, tc := range []struct {
		handler slog.Level
		setTo   hclog.Level // NoLevel: leave unset
		want    hclog.Level
		is      [5]bool // IsTrace .. IsError
	}{
		{logging.LevelTrace, hclog.NoLevel, hclog.Trace, [5]bool{true, true, true, true, true}},
		{slog.LevelInfo, hclog.NoLevel, hclog.Info, [5]bool{false, false, true, true, true}},
		{slog.LevelError, hclog.NoLevel, hclog.Error, [5]bool{false, false, false, false, true}},
		{slog.LevelError + 4, hclog.NoLevel, hclog.Off, [5]bool{}},
		{slog.LevelDebug, hclog.Warn, hclog.Warn, [5]bool{false, false, false, true, true}},
		// SetLevel cannot show what the handler hides.
		{slog.LevelWarn, hclog.Debug, hclog.Warn, [5]bool{false, false, false, true, true}},
		{logging.LevelTrace, hclog.Off, hclog.Off, [5]bool{}},
	} {
		t.Run(fmt.Sprintf("%v/%v", tc.handler, tc.setTo), func(t *testing.T) {
			rec := logtest.NewRecorder(tc.handler)
			hl := New(slog.New(rec), "")
			if tc.setTo != hclog.NoLevel {
				hl.SetLevel(tc.setTo)
			}
			if got := hl.GetLevel(); got != tc.want {
				t.Errorf("GetLevel = %v, want %v", got, tc.want)
			}
			is := [5]bool{hl.IsTrace(), hl.IsDebug(), hl.IsInfo(), hl.IsWarn(), hl.IsError()}
			if is != tc.is {
				t.Errorf("IsTrace..IsError = %v, want %v", is, tc.is)
			}
			hl.Trace("t")
			hl.Debug("d")
			hl.Info("i")
			hl.Warn("w")
			hl.Error("e")
			if n := len(rec.Take()); n != countTrue(tc.is) {
				t.Errorf("logged %d records, want %d", n, countTrue(tc.is))
			}
		})
	}
}

func countTrue(bs [5]bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func TestHCLogSetLevelShared(t *testing.T) {
	rec := logtest.NewRecorder(logging.LevelTrace)
	root := New(slog.New(rec), "raft")
	child := root.Named("net").With("peer", "s2")
	child.SetLevel(hclog.Error)
	root.Info("hidden")
	child.Warn("hidden")
	if got := rec.Take(); len(got) != 0 {
		t.Errorf("SetLevel on a derived logger did not reach the root: %+v", got)
	}
	root.SetLevel(hclog.NoLevel)
	child.Debug("shown")
	if got := rec.Take(); len(got) != 1 {
		t.Errorf("SetLevel(NoLevel) did not lift the filter: %+v", got)
	}
}

func TestHCLogWithNamed(t *testing.T) {
	for _, tc := range []struct {
		name      string
		build     func(hclog.Logger) hclog.Logger
		args      []any
		wantName  string
		wantAttrs string
		implied   []any
	}{
		{
			name:      "plain",
			build:     func(l hclog.Logger) hclog.Logger { return l },
			args:      []any{"k", "v"},
			wantName:  "raft",
			wantAttrs: "logger=raft k=v",
		},
		{
			name:      "With keeps fields",
			build:     func(l hclog.Logger) hclog.Logger { return l.With("node", "s1").With("term", 4) },
			args:      []any{"k", "v"},
			wantName:  "raft",
			wantAttrs: "logger=raft node=s1 term=4 k=v",
			implied:   []any{"node", "s1", "term", 4},
		},
		{
			name:      "Named keeps fields and nests",
			build:     func(l hclog.Logger) hclog.Logger { return l.With("node", "s1").Named("net").Named("tcp") },
			wantName:  "raft.net.tcp",
			wantAttrs: "logger=raft.net.tcp node=s1",
			implied:   []any{"node", "s1"},
		},
		{
			name:      "With after Named",
			build:     func(l hclog.Logger) hclog.Logger { return l.Named("net").With("peer", "s2") },
			wantName:  "raft.net",
			wantAttrs: "logger=raft.net peer=s2",
			implied:   []any{"peer", "s2"},
		},
		{
			name:      "ResetNamed keeps fields",
			build:     func(l hclog.Logger) hclog.Logger { return l.With("node", "s1").Named("net").ResetNamed("fsm") },
			wantName:  "fsm",
			wantAttrs: "logger=fsm node=s1",
			implied:   []any{"node", "s1"},
		},
		{
			name:      "With replaces a repeated key",
			build:     func(l hclog.Logger) hclog.Logger { return l.With("term", 1, "node", "s1").With("term", 2) },
			wantName:  "raft",
			wantAttrs: "logger=raft term=2 node=s1",
			implied:   []any{"term", 2, "node", "s1"},
		},
		{
			name:      "With odd argument",
			build:     func(l hclog.Logger) hclog.Logger { return l.With("node", "s1", "stray") },
			wantName:  "raft",
			wantAttrs: "logger=raft node=s1 " + hclog.MissingKey + "=stray",
			implied:   []any{"node", "s1", hclog.MissingKey, "stray"},
		},
		{
			name:      "odd message argument",
			build:     func(l hclog.Logger) hclog.Logger { return l },
			args:      []any{"k", "v", "stray"},
			wantName:  "raft",
			wantAttrs: "logger=raft k=v " + hclog.MissingKey + "=stray",
		},
		{
			name:  "hclog value types",
			build: func(l hclog.Logger) hclog.Logger { return l },
			args: []any{
				"hex", hclog.Hex(255), "oct", hclog.Octal(8), "bin", hclog.Binary(5),
				"fmt", hclog.Fmt("%d-%s", 7, "x"), "q", hclog.Quote("a b"), 42, "non-string key",
			},
			wantName:  "raft",
			wantAttrs: "logger=raft hex=0xff oct=010 bin=0b101 fmt=7-x q=a b 42=non-string key",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := logtest.NewRecorder(logging.LevelTrace)
			l := tc.build(New(slog.New(rec), "raft"))
			if l.Name() != tc.wantName {
				t.Errorf("Name = %q, want %q", l.Name(), tc.wantName)
			}
			if got := l.ImpliedArgs(); !slices.Equal(got, tc.implied) {
				t.Errorf("ImpliedArgs = %v, want %v", got, tc.implied)
			}
			l.Info("msg", tc.args...)
			got := rec.Take()
			if len(got) != 1 || got[0].Attrs != tc.wantAttrs {
				t.Errorf("logged %+v, want attrs %q", got, tc.wantAttrs)
			}
		})
	}

	t.Run("derived loggers do not affect their parent", func(t *testing.T) {
		rec := logtest.NewRecorder(logging.LevelTrace)
		parent := New(slog.New(rec), "").With("a", 1)
		implied := parent.ImpliedArgs()
		implied[1] = 99
		_ = parent.With("b", 2)
		_ = parent.Named("child")
		parent.Info("m")
		got := rec.Take()
		if len(got) != 1 || got[0].Attrs != "a=1" {
			t.Errorf("parent logged %+v, want attrs a=1", got)
		}
	})
}

func TestHCLogStandardLogger(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      *hclog.StandardLoggerOptions
		line      string
		wantLevel slog.Level
		wantMsg   string
	}{
		{"nil options", nil, "[WARN] plain", slog.LevelInfo, "[WARN] plain"},
		{"no inference", &hclog.StandardLoggerOptions{}, "[ERROR] x", slog.LevelInfo, "[ERROR] x"},
		{"infer warn", &hclog.StandardLoggerOptions{InferLevels: true}, "[WARN] disk slow", slog.LevelWarn, "disk slow"},
		{"infer err", &hclog.StandardLoggerOptions{InferLevels: true}, "[ERR] boom", slog.LevelError, "boom"},
		{"infer trace", &hclog.StandardLoggerOptions{InferLevels: true}, "[TRACE] t", logging.LevelTrace, "t"},
		{"infer none", &hclog.StandardLoggerOptions{InferLevels: true}, "no prefix", slog.LevelInfo, "no prefix"},
		{"infer with timestamp", &hclog.StandardLoggerOptions{InferLevels: true, InferLevelsWithTimestamp: true},
			"2024/01/02 15:04:05.000 [DEBUG] d", slog.LevelDebug, "d"},
		{"timestamp not skipped without option", &hclog.StandardLoggerOptions{InferLevels: true},
			"2024/01/02 15:04:05 [DEBUG] d", slog.LevelInfo, "2024/01/02 15:04:05 [DEBUG] d"},
		{"force", &hclog.StandardLoggerOptions{ForceLevel: hclog.Error, InferLevels: true}, "[DEBUG] forced", slog.LevelError, "forced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := logtest.NewRecorder(logging.LevelTrace)
			hl := New(slog.New(rec), "http")
			hl.StandardLogger(tc.opts).Print(tc.line)
			if _, err := fmt.Fprintln(hl.StandardWriter(tc.opts), tc.line); err != nil {
				t.Fatal(err)
			}
			want := logtest.Record{Level: tc.wantLevel, Msg: tc.wantMsg, Attrs: "logger=http"}
			got := rec.Take()
			if !slices.Equal(got, []logtest.Record{want, want}) {
				t.Errorf("got %+v, want twice %+v", got, want)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	var buf logtest.Buffer
	hl := New(logging.New(&buf, logging.LevelTrace, logging.FormatJSON), "raft")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				hl.Named("n").With("i", i).Info("m", "j", j)
				hl.SetLevel(hclog.Trace)
				_ = hl.GetLevel()
				hl.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}).Printf("[DEBUG] line %d", j)
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 8*50*2 {
		t.Errorf("%d lines, want %d", len(lines), 8*50*2)
	}
	for _, line := range lines {
		if !json.Valid([]byte(line)) {
			t.Fatalf("interleaved output: %q", line)
		}
	}
}

// Raft's messages reach a test's log through logging.TestLogger.
func TestThroughTestLogger(t *testing.T) {
	New(logging.TestLogger(t), "raft").Trace("hclog through t.Log")
}
