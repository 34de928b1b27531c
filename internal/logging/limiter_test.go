package logging

import (
	"fmt"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLimiterFirstThenOnePerInterval(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := NewLimiter(time.Minute, 16, clk.now)

	logged := 0
	for range 100 {
		if ok, _ := l.Allow("10.0.0.1"); ok {
			logged++
		}
		clk.t = clk.t.Add(100 * time.Millisecond) // 100 messages in 10s
	}
	if logged != 1 {
		t.Fatalf("100 messages within one interval logged %d times, want 1", logged)
	}
	// Another key is not held back by the first.
	if ok, _ := l.Allow("10.0.0.2"); !ok {
		t.Fatal("first message of a second key was suppressed")
	}
	clk.t = clk.t.Add(time.Minute)
	ok, suppressed := l.Allow("10.0.0.1")
	if !ok || suppressed != 99 {
		t.Fatalf("after the interval: Allow = %v, %d suppressed; want true, 99", ok, suppressed)
	}
	if ok, _ := l.Allow("10.0.0.1"); ok {
		t.Fatal("a message right after a logged one was allowed")
	}
}

// Many distinct keys share one slot once maxKeys are tracked, so memory
// stays bounded and the flood is still limited.
func TestLimiterBoundsKeys(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := NewLimiter(time.Minute, 4, clk.now)
	logged := 0
	for i := range 1000 {
		if ok, _ := l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256)); ok {
			logged++
		}
	}
	if logged != 5 {
		t.Errorf("1000 keys with room for 4 logged %d messages, want 5 (4 keys and the shared slot)", logged)
	}
	if n := len(l.seen); n > 5 {
		t.Errorf("limiter tracks %d keys, want at most 5", n)
	}
	// Once the interval has passed, old keys make room for new ones.
	clk.t = clk.t.Add(time.Minute)
	if ok, _ := l.Allow("192.0.2.1"); !ok {
		t.Error("a new key after the interval was suppressed")
	}
	if _, tracked := l.seen["192.0.2.1"]; !tracked {
		t.Error("a new key after the interval went to the shared slot, want its own")
	}
}
