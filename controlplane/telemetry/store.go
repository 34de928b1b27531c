// Package telemetry is a server's store of agents' telemetry windows: its
// own Pebble instance beside (never inside) the Raft log, keyed by window
// end time so that a query over a time range is one scan, with retention by
// age and by size, and the query that merges stored windows into groups.
package telemetry

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// Defaults of Options.
const (
	DefaultRetention = 7 * 24 * time.Hour
	DefaultMaxBytes  = 1 << 30
	// DefaultRetentionInterval is how often the retention loop runs.
	DefaultRetentionInterval = time.Minute
)

// Errors of the store; callers match them with errors.Is.
var (
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("telemetry store closed")
	// ErrInvalidWindow: a stored window lacks what its key is made of.
	ErrInvalidWindow = errors.New("invalid stored window")
)

// keyPrefix starts every window key; other kinds of keys may come later.
const keyPrefix = 'w'

// Options configure a Store.
type Options struct {
	// Retention is how long a window is kept after its end.
	Retention time.Duration
	// MaxBytes bounds the stored windows (keys and values); the oldest go
	// first when it is passed.
	MaxBytes int64
	// FS is the file system; nil means the OS's.
	FS vfs.FS
	// Now is the clock retention reads; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{Retention: DefaultRetention, MaxBytes: DefaultMaxBytes}
}

// Validate checks the options.
func (o Options) Validate() error {
	if o.Retention <= 0 {
		return fmt.Errorf("telemetry retention must be positive, got %v: set it to how long windows are kept (default %v)", o.Retention, DefaultRetention)
	}
	if o.MaxBytes <= 0 {
		return fmt.Errorf("telemetry max bytes must be positive, got %d: set it to the most disk the windows may use (default %d)", o.MaxBytes, int64(DefaultMaxBytes))
	}
	return nil
}

// Store keeps telemetry windows. All methods are safe for concurrent use.
type Store struct {
	db   *pebble.DB
	opts Options
	log  *slog.Logger

	// pruneMu is held by Prune throughout and by Close, so that Close
	// never closes the database under a compaction.
	pruneMu sync.Mutex

	mu     sync.Mutex // guards the fields below; serialises writes
	bytes  int64      // sum of the live windows' key and value lengths
	count  int64      // live windows
	closed bool
}

// Stats describes what a store holds.
type Stats struct {
	Windows int64
	// Bytes is the windows' key and value bytes, what MaxBytes bounds.
	Bytes int64
	// DiskBytes is what Pebble uses on disk, which lags deletes until
	// compaction.
	DiskBytes uint64
	// Oldest and Newest are the end times of the oldest and newest
	// windows; zero when empty.
	Oldest, Newest time.Time
}

// Open opens (creating if needed) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	po := &pebble.Options{FormatMajorVersion: pebble.FormatValueSeparation, Logger: quietLogger{}}
	if opts.FS != nil {
		po.FS = opts.FS
	}
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, fmt.Errorf("telemetry: open %s: %w; is another drover server using this directory?", dir, err)
	}
	s := &Store{db: db, opts: opts, log: opts.Logger.With("component", "telemetry")}
	if err := s.loadSize(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// loadSize counts the live windows' bytes once at open; writes keep the
// count up to date after.
func (s *Store) loadSize() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{keyPrefix}, UpperBound: []byte{keyPrefix + 1}})
	if err != nil {
		return fmt.Errorf("telemetry: scan: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		s.bytes += int64(len(it.Key()) + len(it.Value()))
		s.count++
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("telemetry: scan: %w", err)
	}
	return nil
}

// Close closes the store. It is idempotent.
func (s *Store) Close() error {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("telemetry: close: %w", err)
	}
	return nil
}

// Key returns the key a window is stored under: its end time, then model,
// version, deployment, node and start time, so that windows are ordered by
// end time and a window shipped twice (a retry, a copy) lands on itself.
func Key(w *droverv1.TelemetryWindow) ([]byte, error) {
	if w.GetEnd() == nil || w.GetStart() == nil {
		return nil, fmt.Errorf("window without start or end: %w", ErrInvalidWindow)
	}
	k := make([]byte, 0, 1+8+len(w.Model)+len(w.Version)+len(w.Deployment)+len(w.NodeId)+4+8)
	k = append(k, keyPrefix)
	k = binary.BigEndian.AppendUint64(k, timeBits(w.End.AsTime()))
	for _, p := range []string{w.Model, w.Version, w.Deployment, w.NodeId} {
		if bytes.IndexByte([]byte(p), 0) >= 0 {
			return nil, fmt.Errorf("window label %q holds a NUL byte: %w", p, ErrInvalidWindow)
		}
		k = append(k, p...)
		k = append(k, 0)
	}
	k = binary.BigEndian.AppendUint64(k, timeBits(w.Start.AsTime()))
	return k, nil
}

// timeBits orders times as unsigned integers: nanoseconds since the epoch,
// shifted so that times before 1970 sort first.
func timeBits(t time.Time) uint64 { return uint64(t.UnixNano()) ^ (1 << 63) }

func timeKey(t time.Time) []byte {
	return binary.BigEndian.AppendUint64([]byte{keyPrefix}, timeBits(t))
}

func keyEnd(k []byte) time.Time {
	if len(k) < 9 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[1:9])^(1<<63))).UTC()
}

// Put stores windows in one synced batch: when it returns nil they survive
// a crash. A window already stored is replaced, with the union of both
// holder lists.
func (s *Store) Put(ws []*droverv1.StoredWindow) error {
	type kv struct{ k, v []byte }
	kvs := make([]kv, 0, len(ws))
	for _, sw := range ws {
		var w droverv1.TelemetryWindow
		if err := proto.Unmarshal(sw.GetWindow(), &w); err != nil {
			return fmt.Errorf("telemetry: put: decode window: %w: %w", err, ErrInvalidWindow)
		}
		k, err := Key(&w)
		if err != nil {
			return fmt.Errorf("telemetry: put: %w", err)
		}
		kvs = append(kvs, kv{k: k})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	b := s.db.NewBatch()
	defer b.Close()
	var dBytes, dCount int64
	seen := make(map[string]int, len(kvs))
	for i, sw := range ws {
		k := kvs[i].k
		holders := sw.GetHolders()
		var oldLen int
		if j, ok := seen[string(k)]; ok {
			// The same window twice in one batch: keep one.
			oldLen = len(kvs[j].v)
			holders = union(holders, prevHolders(kvs[j].v))
		} else {
			old, closer, err := s.db.Get(k)
			switch {
			case err == nil:
				oldLen = len(old)
				holders = union(prevHolders(old), holders)
				_ = closer.Close()
			case errors.Is(err, pebble.ErrNotFound):
				oldLen = -1
			default:
				return fmt.Errorf("telemetry: put: read %x: %w", k, err)
			}
		}
		c := proto.CloneOf(sw)
		c.Holders = holders
		v, err := proto.Marshal(c)
		if err != nil {
			return fmt.Errorf("telemetry: put: encode: %w", err)
		}
		kvs[i].v = v
		if err := b.Set(k, v, nil); err != nil {
			return fmt.Errorf("telemetry: put: %w", err)
		}
		if oldLen < 0 {
			dCount++
			dBytes += int64(len(k) + len(v))
		} else {
			dBytes += int64(len(v) - oldLen)
		}
		seen[string(k)] = i
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("telemetry: put: commit: %w", err)
	}
	s.bytes += dBytes
	s.count += dCount
	return nil
}

func prevHolders(v []byte) []string {
	var sw droverv1.StoredWindow
	if proto.Unmarshal(v, &sw) != nil {
		return nil
	}
	return sw.Holders
}

// union returns a's holders then b's not already in a, in order: the
// receiving server stays first.
func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, h := range b {
		found := false
		for _, x := range out {
			if x == h {
				found = true
				break
			}
		}
		if !found {
			out = append(out, h)
		}
	}
	return out
}

// Scan calls fn for each stored window ending in (since, until], oldest
// first, until fn returns false.
func (s *Store) Scan(since, until time.Time, fn func(end time.Time, sw *droverv1.StoredWindow) bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	snap := s.db.NewSnapshot()
	s.mu.Unlock()
	defer snap.Close()
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: timeKey(since.Add(time.Nanosecond)),
		UpperBound: timeKey(until.Add(time.Nanosecond)),
	})
	if err != nil {
		return fmt.Errorf("telemetry: scan: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var sw droverv1.StoredWindow
		if err := proto.Unmarshal(it.Value(), &sw); err != nil {
			return fmt.Errorf("telemetry: scan: decode %x: %w", it.Key(), err)
		}
		if !fn(keyEnd(it.Key()), &sw) {
			break
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("telemetry: scan: %w", err)
	}
	return nil
}

// Stats returns what the store holds.
func (s *Store) Stats() (Stats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return Stats{}, ErrClosed
	}
	st := Stats{Windows: s.count, Bytes: s.bytes, DiskBytes: s.db.Metrics().DiskSpaceUsage()}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{keyPrefix}, UpperBound: []byte{keyPrefix + 1}})
	if err != nil {
		return st, fmt.Errorf("telemetry: stats: %w", err)
	}
	defer it.Close()
	if it.First() {
		st.Oldest = keyEnd(it.Key())
	}
	if it.Last() {
		st.Newest = keyEnd(it.Key())
	}
	return st, it.Error()
}

// Retained reports whether a window ending at end is young enough to keep.
func (s *Store) Retained(end time.Time) bool {
	return end.After(s.opts.Now().Add(-s.opts.Retention))
}

// Retention is how long windows are kept.
func (s *Store) Retention() time.Duration { return s.opts.Retention }

// Prune deletes windows older than the retention, then the oldest windows
// until the store is within MaxBytes. It returns how many it deleted.
func (s *Store) Prune() (int, error) {
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()
	n, end, err := s.deleteOld()
	if err != nil || n == 0 {
		return n, err
	}
	// Give the disk back now rather than at Pebble's next compaction of
	// that range. Outside the lock: writes go on meanwhile.
	if err := s.db.Compact(context.Background(), []byte{keyPrefix}, end, false); err != nil {
		s.log.Warn("telemetry: compact after prune", "err", err)
	}
	return n, nil
}

// deleteOld deletes what Prune prunes and returns how many windows and
// the key just past the last one.
func (s *Store) deleteOld() (int, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, nil, ErrClosed
	}
	cutoff := timeKey(s.opts.Now().Add(-s.opts.Retention).Add(time.Nanosecond))
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{keyPrefix}, UpperBound: []byte{keyPrefix + 1}})
	if err != nil {
		return 0, nil, fmt.Errorf("telemetry: prune: %w", err)
	}
	var (
		n      int
		remain = s.bytes
		last   []byte
	)
	for it.First(); it.Valid(); it.Next() {
		old := bytes.Compare(it.Key(), cutoff) < 0
		if !old && remain <= s.opts.MaxBytes {
			break
		}
		remain -= int64(len(it.Key()) + len(it.Value()))
		n++
		last = append(last[:0], it.Key()...)
	}
	err = it.Error()
	_ = it.Close()
	if err != nil {
		return 0, nil, fmt.Errorf("telemetry: prune: %w", err)
	}
	if n == 0 {
		return 0, nil, nil
	}
	end := append(bytes.Clone(last), 0) // the first key after the last deleted
	if err := s.db.DeleteRange([]byte{keyPrefix}, end, pebble.Sync); err != nil {
		return 0, nil, fmt.Errorf("telemetry: prune: delete: %w", err)
	}
	s.bytes = remain
	s.count -= int64(n)
	return n, end, nil
}

// RetentionLoop prunes every interval until ctx ends.
func (s *Store) RetentionLoop(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRetentionInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := s.Prune(); err != nil {
			if !errors.Is(err, ErrClosed) {
				s.log.Warn("telemetry retention", "err", err)
			}
		} else if n > 0 {
			s.log.Debug("telemetry retention deleted windows", "windows", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// quietLogger drops Pebble's info lines; errors and fatals still reach
// stderr through pebble's default.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	pebble.DefaultLogger.Errorf(format, args...)
}
func (quietLogger) Fatalf(format string, args ...any) {
	pebble.DefaultLogger.Fatalf(format, args...)
}
