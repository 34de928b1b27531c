package logging

import (
	"sync"
	"time"
)

// overflowKey stands for every key a Limiter cannot track on its own
// because it already tracks maxKeys others.
const overflowKey = "\x00other"

// Limiter decides which of many similar messages to log, per key (a
// remote address, say): the first message for a key is logged, then at
// most one per interval, and each logged message learns how many were
// suppressed since the one before. A stranger who sends garbage as fast
// as it can therefore costs one log line per interval instead of one per
// packet. It remembers at most maxKeys keys; beyond that, keys share one
// slot, so memory stays bounded however many addresses send garbage. It
// is safe for concurrent use.
type Limiter struct {
	interval time.Duration
	maxKeys  int
	now      func() time.Time

	mu   sync.Mutex // guards seen
	seen map[string]*limiterEntry
}

type limiterEntry struct {
	last       time.Time // when a message for this key was last logged
	suppressed int       // messages dropped since then
}

// NewLimiter returns a Limiter that logs at most one message per key per
// interval and remembers up to maxKeys keys. now is its clock (time.Now in
// production).
func NewLimiter(interval time.Duration, maxKeys int, now func() time.Time) *Limiter {
	return &Limiter{interval: interval, maxKeys: max(maxKeys, 1), now: now, seen: make(map[string]*limiterEntry)}
}

// Allow reports whether a message for key should be logged now and, if
// so, how many messages for key it suppressed since it last allowed one.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.seen[key]
	if e == nil {
		if len(l.seen) >= l.maxKeys {
			l.sweepLocked(now)
		}
		if len(l.seen) >= l.maxKeys {
			key = overflowKey
			e = l.seen[key]
		}
	}
	if e == nil {
		l.seen[key] = &limiterEntry{last: now}
		return true, 0
	}
	if now.Sub(e.last) < l.interval {
		e.suppressed++
		return false, 0
	}
	suppressed = e.suppressed
	e.last, e.suppressed = now, 0
	return true, suppressed
}

// sweepLocked forgets keys whose interval has passed. Their next message
// would be logged anyway; only the count of what they suppressed since
// their last logged message is lost.
func (l *Limiter) sweepLocked(now time.Time) {
	for k, e := range l.seen {
		if now.Sub(e.last) >= l.interval {
			delete(l.seen, k)
		}
	}
}
