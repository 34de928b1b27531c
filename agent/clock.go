package agent

import (
	"context"
	"time"
)

// clock is the agent's source of time. Every wait in the agent goes through
// one, so that tests can replace it with a fake and step time forward
// instead of sleeping. RPC deadlines are the exception: they guard against
// a hung network, which tests never wait for.
type clock interface {
	Now() time.Time
	NewTimer(d time.Duration) timer
}

// timer is the part of *time.Timer the agent uses.
type timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

var _ clock = realClock{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// sleep waits for d on clk, or until ctx ends, and returns ctx's error in
// that case.
func sleep(ctx context.Context, clk clock, d time.Duration) error {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
