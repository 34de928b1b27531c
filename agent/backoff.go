package agent

import (
	"math/rand/v2"
	"time"
)

// Backoff between rounds of failed attempts (every known server tried
// once): exponential from backoffBase, capped at backoffCap, with full
// jitter so that a fleet that lost its control plane does not come back in
// lockstep.
const (
	backoffBase = 250 * time.Millisecond
	backoffCap  = 30 * time.Second
)

// backoff returns how long to wait after the given number of failed rounds
// (0 for the first): a uniformly random duration in [0, min(cap,
// base·2^round)). randN returns a random int64 in [0, n); nil means
// math/rand/v2.
func backoff(round int, randN func(n int64) int64) time.Duration {
	if randN == nil {
		randN = rand.Int64N
	}
	ceiling := backoffCap
	if round < 30 { // beyond that base·2^round overflows, and is past the cap anyway
		ceiling = min(backoffCap, backoffBase<<round)
	}
	return time.Duration(randN(int64(ceiling)))
}
