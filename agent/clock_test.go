package agent

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock that moves only when a test advances it. Tests
// observe what the agent waits for with nextTimer, then advance time to
// fire it, so that no test sleeps.
type fakeClock struct {
	mu      sync.Mutex // guards the fields below
	now     time.Time
	timers  []*fakeTimer  // pending, in creation order
	changed chan struct{} // closed and replaced when a timer is made
}

var _ clock = (*fakeClock)(nil)

type fakeTimer struct {
	c    *fakeClock
	ch   chan time.Time
	when time.Time
	d    time.Duration // as asked for
}

func newFakeClock() *fakeClock {
	// Real time at the start, so certificates issued by the real CA are
	// valid on both clocks.
	return &fakeClock{now: time.Now(), changed: make(chan struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), when: c.now.Add(d), d: d}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	close(c.changed)
	c.changed = make(chan struct{})
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves time forward by d and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.when.After(c.now) {
			return false
		}
		t.ch <- c.now
		return true
	})
}

// nextTimer waits (in real time, up to a generous limit) until a timer is
// pending and returns how long it was asked for and how long is left of
// it. The agent's timers are all made by one goroutine at a time, so there
// is at most one.
func (c *fakeClock) nextTimer(t *testing.T) (asked, left time.Duration) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		if len(c.timers) > 0 {
			tm := c.timers[0]
			asked, left = tm.d, tm.when.Sub(c.now)
			c.mu.Unlock()
			return asked, left
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatal("the agent set no timer")
		}
	}
}

// fireNext waits for the pending timer, advances time to fire it, and
// returns how long it was asked for.
func (c *fakeClock) fireNext(t *testing.T) time.Duration {
	t.Helper()
	asked, left := c.nextTimer(t)
	c.Advance(left)
	return asked
}
