package runtimetest

import (
	"testing"
	"time"
)

func TestFakeClock(t *testing.T) {
	start := time.Unix(100, 0)
	c := NewFakeClock(start)
	added := c.TimerAdded()
	a := c.NewTimer(2 * time.Second)
	select {
	case <-added:
	default:
		t.Fatal("TimerAdded not signalled")
	}
	b := c.NewTimer(time.Second)
	stopped := c.NewTimer(time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop should report true once")
	}
	if p := c.Pending(); len(p) != 2 || !p[0].Equal(start.Add(time.Second)) {
		t.Fatalf("pending %v", p)
	}
	c.Advance(time.Second)
	select {
	case <-b.C():
	default:
		t.Fatal("1s timer did not fire at 1s")
	}
	select {
	case <-a.C():
		t.Fatal("2s timer fired at 1s")
	case <-stopped.C():
		t.Fatal("a stopped timer fired")
	default:
	}
	c.Advance(time.Second)
	if got := <-a.C(); !got.Equal(start.Add(2*time.Second)) || !c.Now().Equal(got) {
		t.Fatalf("fired at %v, now %v", got, c.Now())
	}
	if a.Stop() {
		t.Fatal("Stop of a fired timer reported true")
	}
	if z := c.NewTimer(0); len(c.Pending()) != 0 {
		t.Fatal("a zero timer is pending")
	} else {
		<-z.C()
	}
}
