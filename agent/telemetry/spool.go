// Package telemetry is the agent's side of telemetry: closed windows of
// what its instances and its machine saw, kept durably until a server has
// taken them.
package telemetry

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/droverhq/drover/internal/atomicfile"
)

// Record is one closed telemetry window, or several adjacent windows of
// one stream merged into a coarser one.
type Record struct {
	// Key names the stream the window belongs to (a deployment's
	// instance, the node itself); only windows of one key are merged.
	Key        string
	Start, End time.Time
	// Windows is how many original windows the record holds: 1 for a
	// window as it closed, more once merged. Drop counts are in these.
	Windows int
	Data    []byte
}

// MergeFunc merges b into a, where a and b have the same key and a ends no
// later than b starts; the result covers both spans. Merged sketches are
// about as large as either input, which is what lets the spool keep a
// long outage in a bounded space.
type MergeFunc func(a, b Record) (Record, error)

// SpoolOptions bound a Spool.
type SpoolOptions struct {
	// MaxBytes bounds the disk space the records take: each record's
	// file, header included, counted in whole blocks (spoolBlock), as
	// the file system allocates it. When an Add would go over it, the
	// oldest adjacent windows of a stream are merged, then, if still
	// over, the oldest records are dropped and counted.
	MaxBytes int64
	// Merge merges two windows; nil drops without merging.
	Merge MergeFunc
	// MaxSpan is the longest span a merged record may cover (default 1h):
	// past it, old windows are dropped rather than made coarser still.
	MaxSpan time.Duration
}

// SpoolStats is what a spool holds and what it had to give up, since it
// was created (across restarts).
type SpoolStats struct {
	Records int
	// Bytes is the disk space the records take, in whole blocks.
	Bytes int64
	// Merges is how many times two records became one.
	Merges uint64
	// DroppedWindows and DroppedRecords count what was thrown away to
	// stay within MaxBytes, or found damaged on disk: windows as they
	// closed, and the (possibly merged) records holding them.
	DroppedWindows uint64
	DroppedRecords uint64
}

// Entry is a record the spool holds, with the id that acknowledges it.
type Entry struct {
	ID string
	Record
}

// Spool keeps closed windows on disk, one file each, until they are
// acknowledged. Add returns once the window is durable, so a window the
// agent closed is never lost to a crash or a restart. Methods are safe
// for concurrent use.
type Spool struct {
	dir  string
	opts SpoolOptions

	mu      sync.Mutex // guards the fields below
	entries []*spoolEntry
	bytes   int64
	seq     uint64
	stats   SpoolStats
}

type spoolEntry struct {
	id   string // file name
	rec  Record
	size int64 // on disk: footprint of the file
}

const (
	spoolSuffix    = ".win"
	spoolStatsFile = "stats.json"
	spoolMagic     = "DRWIN1\n"
	// DefaultMaxSpan is the coarsest a merged record becomes.
	DefaultMaxSpan = time.Hour
)

// spoolBlock is the unit the spool counts a record's file in: the block
// most file systems allocate. A window of 600 bytes takes a 4 KiB block,
// and it is the disk that the size limit protects; counting bytes alone
// let a full spool take 30% more than its limit.
const spoolBlock = 4096

// footprint is the disk space a record file of n bytes takes.
func footprint(n int) int64 { return (int64(n) + spoolBlock - 1) / spoolBlock * spoolBlock }

// ErrRecordTooLarge: one window is larger than the whole spool may hold.
var ErrRecordTooLarge = errors.New("telemetry window larger than the spool's size limit")

// OpenSpool opens (creating) the spool in dir. A record file that does
// not read back whole is removed and counted as dropped: it is the only
// loss a damaged disk can cause.
func OpenSpool(dir string, opts SpoolOptions) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		return nil, fmt.Errorf("open telemetry spool: the size limit must be positive, got %d", opts.MaxBytes)
	}
	if opts.MaxSpan <= 0 {
		opts.MaxSpan = DefaultMaxSpan
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open telemetry spool: %w", err)
	}
	s := &Spool{dir: dir, opts: opts}
	if b, err := os.ReadFile(filepath.Join(dir, spoolStatsFile)); err == nil {
		if err := json.Unmarshal(b, &s.stats); err != nil {
			return nil, fmt.Errorf("open telemetry spool: %s is damaged (%v): remove it to reset the drop counters", filepath.Join(dir, spoolStatsFile), err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open telemetry spool: %w", err)
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open telemetry spool: %w", err)
	}
	damaged := false
	for _, de := range names {
		name := de.Name()
		if strings.HasPrefix(name, ".") {
			// A temporary file of a write a crash cut short.
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		if !strings.HasSuffix(name, spoolSuffix) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("open telemetry spool: %w", err)
		}
		rec, err := decodeRecord(b)
		if err != nil {
			_ = os.Remove(filepath.Join(dir, name))
			s.stats.DroppedRecords++
			s.stats.DroppedWindows++ // at least one; its header is unreadable
			damaged = true
			continue
		}
		e := &spoolEntry{id: name, rec: rec, size: footprint(len(b))}
		s.entries = append(s.entries, e)
		s.bytes += e.size
		var seq uint64
		if _, err := fmt.Sscanf(name[21:], "%d", &seq); err == nil && seq > s.seq {
			s.seq = seq
		}
	}
	s.sortLocked()
	if damaged {
		if err := s.saveStatsLocked(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// sortLocked orders entries oldest first: by start, then by the order
// they were added.
func (s *Spool) sortLocked() {
	slices.SortFunc(s.entries, func(a, b *spoolEntry) int {
		if c := a.rec.Start.Compare(b.rec.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.id, b.id)
	})
}

// Add stores r durably, first merging or dropping the oldest records if
// it would not fit.
func (s *Spool) Add(r Record) error {
	if r.Windows <= 0 {
		r.Windows = 1
	}
	b := encodeRecord(r)
	if footprint(len(b)) > s.opts.MaxBytes {
		return fmt.Errorf("add a window of %d bytes (%d on disk) to a spool of %d: %w", len(b), footprint(len(b)), s.opts.MaxBytes, ErrRecordTooLarge)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.makeRoomLocked(footprint(len(b))); err != nil {
		return err
	}
	_, err := s.writeLocked(r, b)
	return err
}

func (s *Spool) writeLocked(r Record, b []byte) (*spoolEntry, error) {
	s.seq++
	// Sortable by start time, then by the order of writing.
	name := fmt.Sprintf("%020d-%016d%s", r.Start.UnixNano(), s.seq, spoolSuffix)
	if err := atomicfile.Write(filepath.Join(s.dir, name), b, 0o600); err != nil {
		return nil, fmt.Errorf("spool a telemetry window: %w", err)
	}
	e := &spoolEntry{id: name, rec: r, size: footprint(len(b))}
	s.entries = append(s.entries, e)
	s.bytes += e.size
	s.sortLocked()
	return e, nil
}

func (s *Spool) removeLocked(e *spoolEntry) error {
	if err := os.Remove(filepath.Join(s.dir, e.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	s.entries = slices.DeleteFunc(s.entries, func(x *spoolEntry) bool { return x == e })
	s.bytes -= e.size
	return nil
}

// makeRoomLocked frees space for need more bytes: merging the oldest
// mergeable pair first, dropping the oldest record when nothing merges.
func (s *Spool) makeRoomLocked(need int64) error {
	changed := false
	defer func() {
		if changed {
			// Best effort: the counters are advisory beside the data,
			// and a failure here must not lose the window being added.
			_ = s.saveStatsLocked()
		}
	}()
	for s.bytes+need > s.opts.MaxBytes && len(s.entries) > 0 {
		merged, err := s.mergeOldestLocked()
		if err != nil {
			return err
		}
		if merged {
			changed = true
			continue
		}
		oldest := s.entries[0]
		if err := s.removeLocked(oldest); err != nil {
			return err
		}
		s.stats.DroppedRecords++
		s.stats.DroppedWindows += uint64(oldest.rec.Windows)
		changed = true
	}
	return nil
}

// mergeOldestLocked merges the oldest record that has a next record of
// the same stream into it, when their merge stays within MaxSpan. It
// reports whether it merged; a merge that does not save space counts as
// none.
func (s *Spool) mergeOldestLocked() (bool, error) {
	if s.opts.Merge == nil {
		return false, nil
	}
	for i, a := range s.entries {
		j := slices.IndexFunc(s.entries[i+1:], func(e *spoolEntry) bool { return e.rec.Key == a.rec.Key })
		if j < 0 {
			continue
		}
		b := s.entries[i+1+j]
		if b.rec.End.Sub(a.rec.Start) > s.opts.MaxSpan {
			continue
		}
		m, err := s.opts.Merge(a.rec, b.rec)
		if err != nil {
			return false, fmt.Errorf("merge telemetry windows: %w", err)
		}
		m.Key, m.Start, m.End, m.Windows = a.rec.Key, a.rec.Start, b.rec.End, a.rec.Windows+b.rec.Windows
		enc := encodeRecord(m)
		if footprint(len(enc)) >= a.size+b.size {
			continue
		}
		// The merged record is durable before its parts go: a crash in
		// between leaves both, and the windows counted twice rather than
		// lost.
		if _, err := s.writeLocked(m, enc); err != nil {
			return false, err
		}
		if err := s.removeLocked(a); err != nil {
			return false, err
		}
		if err := s.removeLocked(b); err != nil {
			return false, err
		}
		s.stats.Merges++
		return true, nil
	}
	return false, nil
}

// Batch returns up to n records to ship: the newest first, so fresh
// windows are never starved by a backlog, then the oldest, in order. It
// removes nothing; Ack does once a server took them.
func (s *Spool) Batch(n int) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n <= 0 || len(s.entries) == 0 {
		return nil
	}
	out := make([]Entry, 0, min(n, len(s.entries)))
	newest := s.entries[len(s.entries)-1]
	out = append(out, Entry{ID: newest.id, Record: newest.rec})
	for _, e := range s.entries[:len(s.entries)-1] {
		if len(out) == n {
			break
		}
		out = append(out, Entry{ID: e.id, Record: e.rec})
	}
	return out
}

// Ack removes the records with these ids: a server has stored them.
// Unknown ids (acknowledged before, or merged away since the batch was
// taken) are ignored.
func (s *Spool) Ack(ids ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		i := slices.IndexFunc(s.entries, func(e *spoolEntry) bool { return e.id == id })
		if i < 0 {
			continue
		}
		if err := s.removeLocked(s.entries[i]); err != nil {
			return err
		}
	}
	return nil
}

// Stats returns what the spool holds and the drop counters.
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Records, st.Bytes = len(s.entries), s.bytes
	return st
}

func (s *Spool) saveStatsLocked() error {
	st := s.stats
	st.Records, st.Bytes = 0, 0
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(s.dir, spoolStatsFile), b, 0o600); err != nil {
		return fmt.Errorf("telemetry spool: %w", err)
	}
	return nil
}

// A record file is spoolMagic, a JSON header line, the data, and a
// CRC-32C of everything before it.
type recordHeader struct {
	Key     string    `json:"key"`
	Start   time.Time `json:"start"`
	End     time.Time `json:"end"`
	Windows int       `json:"windows"`
	Size    int       `json:"size"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeRecord(r Record) []byte {
	h, _ := json.Marshal(recordHeader{Key: r.Key, Start: r.Start.UTC(), End: r.End.UTC(), Windows: r.Windows, Size: len(r.Data)})
	var buf bytes.Buffer
	buf.WriteString(spoolMagic)
	buf.Write(h)
	buf.WriteByte('\n')
	buf.Write(r.Data)
	return binary.BigEndian.AppendUint32(buf.Bytes(), crc32.Checksum(buf.Bytes(), castagnoli))
}

func decodeRecord(b []byte) (Record, error) {
	if len(b) < len(spoolMagic)+4 || string(b[:len(spoolMagic)]) != spoolMagic {
		return Record{}, errors.New("not a telemetry window file")
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return Record{}, errors.New("checksum mismatch")
	}
	rest := body[len(spoolMagic):]
	nl := bytes.IndexByte(rest, '\n')
	if nl < 0 {
		return Record{}, errors.New("no header")
	}
	var h recordHeader
	if err := json.Unmarshal(rest[:nl], &h); err != nil {
		return Record{}, fmt.Errorf("header: %w", err)
	}
	data := rest[nl+1:]
	if len(data) != h.Size || h.Windows <= 0 {
		return Record{}, errors.New("header does not match the data")
	}
	return Record{Key: h.Key, Start: h.Start, End: h.End, Windows: h.Windows, Data: bytes.Clone(data)}, nil
}

// Oldest returns up to n records, oldest first. It removes nothing.
func (s *Spool) Oldest(n int) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return entriesOf(s.entries[:min(max(n, 0), len(s.entries))])
}

// Newest returns up to n records, the newest of them last. It removes
// nothing.
func (s *Spool) Newest(n int) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return entriesOf(s.entries[len(s.entries)-min(max(n, 0), len(s.entries)):])
}

func entriesOf(es []*spoolEntry) []Entry {
	out := make([]Entry, len(es))
	for i, e := range es {
		out[i] = Entry{ID: e.id, Record: e.rec}
	}
	return out
}
