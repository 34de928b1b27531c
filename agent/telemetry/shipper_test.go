package telemetry

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/droverhq/drover/internal/sketch"
)

// fakeServer stands for ShipTelemetry: it stores what it is sent, can
// fail calls and refuse windows.
type fakeServer struct {
	mu      sync.Mutex
	calls   [][]time.Time // each call's window starts
	stored  map[time.Time]uint64
	failing bool
	refuse  func(w *sketch.Window) string
	got     chan struct{}
}

func newFakeServer() *fakeServer {
	return &fakeServer{stored: map[time.Time]uint64{}, got: make(chan struct{}, 1000)}
}

func (f *fakeServer) Send(_ context.Context, wins [][]byte) (map[int]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() { f.got <- struct{}{} }()
	if f.failing {
		f.calls = append(f.calls, nil)
		return nil, errors.New("connection refused")
	}
	var starts []time.Time
	refused := map[int]string{}
	for i, b := range wins {
		w, err := sketch.DecodeWindow(b)
		if err != nil {
			refused[i] = err.Error()
			continue
		}
		starts = append(starts, w.Start)
		if f.refuse != nil {
			if why := f.refuse(w); why != "" {
				refused[i] = why
				continue
			}
		}
		f.stored[w.Start] += w.Profile.Requests
	}
	f.calls = append(f.calls, starts)
	return refused, nil
}

// spoolWindows spools n one-minute windows of one request each, from t0.
func spoolWindows(t *testing.T, n int) *Spool {
	t.Helper()
	c, sp, clk := newTestCollector(t, nil)
	for i := range n {
		clk.Set(t0.Add(time.Duration(i) * time.Minute))
		c.observe(exchange(c, `{"inputs": {"x": 1}}`, `{}`, 200))
	}
	c.closeEnded(clk.Now(), true)
	if got := sp.Stats().Records; got != n {
		t.Fatalf("spooled %d windows, want %d", got, n)
	}
	return sp
}

func runShipper(t *testing.T, cfg ShipperConfig) *Shipper {
	t.Helper()
	sh, err := NewShipper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sh.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return sh
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestShipperAlternatesNewestAndOldest(t *testing.T) {
	sp := spoolWindows(t, 10)
	srv := newFakeServer()
	sh := runShipper(t, ShipperConfig{Spool: sp, Batch: 2})
	sh.SetSender(srv)
	waitFor(t, "every window shipped", func() bool { return sp.Stats().Records == 0 && sh.Stats().Shipped == 10 })

	min := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Minute) }
	want := [][]time.Time{
		{min(8), min(9)}, // the newest first: fresh windows do not wait
		{min(0), min(1)}, // then the backlog, oldest first
		{min(6), min(7)},
		{min(2), min(3)},
		{min(4), min(5)},
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.calls) != len(want) {
		t.Fatalf("calls %v, want %v", srv.calls, want)
	}
	for i := range want {
		for j := range want[i] {
			if !srv.calls[i][j].Equal(want[i][j]) {
				t.Fatalf("call %d: %v, want %v", i, srv.calls[i], want[i])
			}
		}
	}
	if len(srv.stored) != 10 {
		t.Errorf("server stored %d windows, want 10", len(srv.stored))
	}
	if st := sh.Stats(); st.Shipped != 10 || st.Refused != 0 || st.LastError != "" {
		t.Errorf("stats %+v", st)
	}
}

func TestShipperKeepsWindowsUntilAServerTakesThem(t *testing.T) {
	sp := spoolWindows(t, 5)
	srv := newFakeServer()
	srv.failing = true
	sh := runShipper(t, ShipperConfig{Spool: sp, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
	// No server yet: nothing is sent.
	time.Sleep(20 * time.Millisecond)
	if len(srv.got) != 0 {
		t.Fatal("the shipper sent with no server")
	}
	sh.SetSender(srv)
	for range 3 {
		<-srv.got
	}
	if st := sh.Stats(); !strings.Contains(st.LastError, "connection refused") || st.LastErrorAt.IsZero() {
		t.Errorf("last error %q at %v, want the failure", st.LastError, st.LastErrorAt)
	}
	if n := sp.Stats().Records; n != 5 {
		t.Fatalf("%d windows left after failed calls, want all 5", n)
	}
	srv.mu.Lock()
	srv.failing = false
	// A window the server refuses is not sent again.
	srv.refuse = func(w *sketch.Window) string {
		if w.Start.Equal(t0.Add(2 * time.Minute)) {
			return "too old"
		}
		return ""
	}
	srv.mu.Unlock()
	waitFor(t, "every window shipped or refused", func() bool {
		st := sh.Stats()
		return sp.Stats().Records == 0 && st.Shipped+st.Refused == 5
	})
	st := sh.Stats()
	if st.Shipped != 4 || st.Refused != 1 || st.LastError != "" {
		t.Errorf("stats %+v, want 4 shipped, 1 refused, no error", st)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.stored) != 4 {
		t.Errorf("server stored %d windows, want 4", len(srv.stored))
	}
}

func TestShipperBoundsBatchBytes(t *testing.T) {
	sp := spoolWindows(t, 6)
	size := len(sp.Oldest(1)[0].Data)
	srv := newFakeServer()
	sh := runShipper(t, ShipperConfig{Spool: sp, Batch: 64, BatchBytes: 2*size + size/2})
	sh.SetSender(srv)
	waitFor(t, "the spool to empty", func() bool { return sp.Stats().Records == 0 })
	srv.mu.Lock()
	defer srv.mu.Unlock()
	for i, c := range srv.calls {
		if len(c) > 2 {
			t.Errorf("call %d carried %d windows, over the byte bound", i, len(c))
		}
	}
}
