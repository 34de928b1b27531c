package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Sender ships encoded windows to a server in one call. refused maps a
// window's position in the batch to why the server would not store it;
// every window not refused was stored. An error means nothing is known to
// be stored, and the batch is sent again later.
type Sender interface {
	Send(ctx context.Context, windows [][]byte) (refused map[int]string, err error)
}

// SenderFunc adapts a function to Sender.
type SenderFunc func(ctx context.Context, windows [][]byte) (map[int]string, error)

// Send calls f.
func (f SenderFunc) Send(ctx context.Context, windows [][]byte) (map[int]string, error) {
	return f(ctx, windows)
}

// ShipperConfig configures a Shipper.
type ShipperConfig struct {
	Spool *Spool
	// Batch is the most windows per call (default 64).
	Batch int
	// BatchBytes bounds a call's windows in bytes (default 2 MiB, under
	// what a server reads in one message); a call carries at least one
	// window whatever its size.
	BatchBytes int
	// BackoffMin and BackoffMax bound the wait after a failed call; it
	// doubles per failure in a row, with jitter (defaults 1s and 1m).
	BackoffMin, BackoffMax time.Duration
	// CallTimeout bounds one call (default 10s).
	CallTimeout time.Duration
	Logger      *slog.Logger
}

// ShipperStats is what the shipper did.
type ShipperStats struct {
	// Shipped and Refused count windows a server stored, and refused
	// (they are removed from the spool all the same: sending them again
	// would be refused again).
	Shipped, Refused uint64
	// LastError is the last failed call's error, cleared by a call that
	// succeeds; LastErrorAt is when it happened.
	LastError   string
	LastErrorAt time.Time
}

// Shipper sends spooled windows to whichever server the agent is
// connected to. It alternates a batch of the newest windows with a batch
// of the oldest: the backlog left by an outage drains oldest first, in
// order, while windows that just closed, which drift and SLO evaluation
// act on, reach a server within one round trip of a batch instead of
// waiting behind hours of backlog. The newest batch is mostly small (what
// closed since the previous round), so the backlog gets nearly all the
// throughput.
//
// SetSender and Poke may be called from any goroutine; Run owns the
// shipping goroutine.
type Shipper struct {
	cfg    ShipperConfig
	log    *slog.Logger
	sender atomic.Pointer[Sender]
	poke   chan struct{}
	// reconnected cuts a backoff short: a new server is worth trying at
	// once. (Poke does not: windows close at the same aligned instant on
	// every node, and would bring a whole fleet back in step.)
	reconnected chan struct{}
	// cancelCall ends the call in flight: the connection it went out on
	// is gone once the sender changes.
	cancelCall atomic.Pointer[context.CancelFunc]

	mu    sync.Mutex // guards stats
	stats ShipperStats
}

// NewShipper returns a shipper of cfg.Spool's windows.
func NewShipper(cfg ShipperConfig) (*Shipper, error) {
	if cfg.Spool == nil {
		return nil, errors.New("telemetry shipper: no spool")
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 64
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 2 << 20
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = time.Second
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(time.Minute, cfg.BackoffMin)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 10 * time.Second
	}
	s := &Shipper{cfg: cfg, log: cfg.Logger, poke: make(chan struct{}, 1), reconnected: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// SetSender makes snd the way to a server; nil while none is connected.
func (s *Shipper) SetSender(snd Sender) {
	if cancel := s.cancelCall.Load(); cancel != nil {
		(*cancel)()
	}
	if snd == nil {
		s.sender.Store(nil)
		return
	}
	s.sender.Store(&snd)
	select {
	case s.reconnected <- struct{}{}:
	default:
	}
	s.Poke()
}

// Poke tells the shipper there may be something to send now (a window
// closed, a server came back). It never blocks.
func (s *Shipper) Poke() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Stats returns what the shipper did.
func (s *Shipper) Stats() ShipperStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Run ships until ctx ends.
func (s *Shipper) Run(ctx context.Context) {
	failures := 0
	newest := true
	for {
		sp := s.sender.Load()
		if sp == nil || s.cfg.Spool.Stats().Records == 0 {
			select {
			case <-ctx.Done():
				return
			case <-s.poke:
			}
			continue
		}
		var batch []Entry
		if newest {
			batch = s.cfg.Spool.Newest(s.cfg.Batch)
			// Keep the newest within the byte bound.
			for i, n := len(batch)-1, 0; i >= 0; i-- {
				if n += len(batch[i].Data); n > s.cfg.BatchBytes && i < len(batch)-1 {
					batch = batch[i+1:]
					break
				}
			}
		} else {
			batch = s.cfg.Spool.Oldest(s.cfg.Batch)
			for i, n := 0, 0; i < len(batch); i++ {
				if n += len(batch[i].Data); n > s.cfg.BatchBytes && i > 0 {
					batch = batch[:i]
					break
				}
			}
		}
		newest = !newest
		err := s.ship(ctx, *sp, batch)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			continue
		}
		d := jitter(min(s.cfg.BackoffMin<<min(failures, 20), s.cfg.BackoffMax))
		failures++
		s.log.Debug("shipping telemetry failed; trying again", "err", err, "in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-s.reconnected:
			t.Stop()
		}
	}
}

// jitter spreads d over [d/2, d), so agents cut off together do not come
// back in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2+1)
}

// ship sends one batch and removes what the server stored or refused.
func (s *Shipper) ship(ctx context.Context, snd Sender, batch []Entry) error {
	wins := make([][]byte, len(batch))
	for i, e := range batch {
		wins[i] = e.Data
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	s.cancelCall.Store(&cancel)
	refused, err := snd.Send(cctx, wins)
	s.cancelCall.Store(nil)
	cancel()
	if err != nil {
		err = fmt.Errorf("ship %d telemetry windows: %w", len(batch), err)
		s.mu.Lock()
		s.stats.LastError, s.stats.LastErrorAt = err.Error(), time.Now()
		s.mu.Unlock()
		return err
	}
	ids := make([]string, len(batch))
	for i, e := range batch {
		ids[i] = e.ID
		if why, ok := refused[i]; ok {
			s.log.Warn("a server refused a telemetry window; it is dropped", "key", e.Key, "start", e.Start, "reason", why)
		}
	}
	if err := s.cfg.Spool.Ack(ids...); err != nil {
		return err
	}
	s.mu.Lock()
	s.stats.Shipped += uint64(len(batch) - len(refused))
	s.stats.Refused += uint64(len(refused))
	s.stats.LastError, s.stats.LastErrorAt = "", time.Time{}
	s.mu.Unlock()
	return nil
}
