package raftstore

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/hashicorp/raft"
)

// On-disk form of one log entry, format version 1:
//
//	version    1 byte   (entryVersion)
//	index      uvarint
//	term       uvarint
//	type       1 byte   (raft.LogType)
//	flags      1 byte   (flagAppendedAt; every other bit must be zero)
//	data       uvarint length, then the bytes
//	extensions uvarint length, then the bytes
//	appendedAt varint Unix nanoseconds, present only with flagAppendedAt
//	checksum   4 bytes, little-endian CRC-32C of everything before it
//
// The index is stored although the key holds it too, so that a value that
// ends up under the wrong key is caught rather than served. The checksum
// covers the version byte, so a flipped version is reported as damage, not as
// a format from the future.
const (
	entryVersion = 1

	// flagAppendedAt says the entry carries an AppendedAt time. A flag rather
	// than a sentinel value, because every int64 is a valid UnixNano.
	flagAppendedAt = 1 << 0

	checksumLen = 4
	// minEntryLen is the shortest well-formed entry: version, index, term,
	// type, flags, two empty lengths and the checksum.
	minEntryLen = 1 + 1 + 1 + 1 + 1 + 1 + 1 + checksumLen
)

// castagnoli is built once; crc32.MakeTable caches the table internally, so
// this is a constant table, not mutable state.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// encodedLen returns the exact length encodeLog writes for l, so that a batch
// can reserve the space and the entry is encoded in place.
func encodedLen(l *raft.Log) int {
	n := 1 + uvarintLen(l.Index) + uvarintLen(l.Term) + 1 + 1
	n += uvarintLen(uint64(len(l.Data))) + len(l.Data)
	n += uvarintLen(uint64(len(l.Extensions))) + len(l.Extensions)
	if !l.AppendedAt.IsZero() {
		n += varintLen(l.AppendedAt.UnixNano())
	}
	return n + checksumLen
}

// encodeLog writes l into dst, which must be exactly encodedLen(l) long.
func encodeLog(dst []byte, l *raft.Log) {
	dst[0] = entryVersion
	i := 1
	i += binary.PutUvarint(dst[i:], l.Index)
	i += binary.PutUvarint(dst[i:], l.Term)
	dst[i] = byte(l.Type)
	i++
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= flagAppendedAt
	}
	dst[i] = flags
	i++
	i += binary.PutUvarint(dst[i:], uint64(len(l.Data)))
	i += copy(dst[i:], l.Data)
	i += binary.PutUvarint(dst[i:], uint64(len(l.Extensions)))
	i += copy(dst[i:], l.Extensions)
	if flags&flagAppendedAt != 0 {
		i += binary.PutVarint(dst[i:], l.AppendedAt.UnixNano())
	}
	binary.LittleEndian.PutUint32(dst[i:], crc32.Checksum(dst[:i], castagnoli))
}

// decodeLog fills out from buf, the value stored under wantIndex. Data and
// Extensions alias buf, so the caller must hand over a buffer it owns. Every
// failure wraps ErrCorrupt or ErrUnsupportedFormat; decodeLog never panics,
// whatever buf holds.
func decodeLog(buf []byte, wantIndex uint64, out *raft.Log) error {
	if len(buf) < minEntryLen {
		return fmt.Errorf("entry is %d bytes, shorter than any valid entry: %w", len(buf), ErrCorrupt)
	}
	body := buf[:len(buf)-checksumLen]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(buf[len(body):]); got != want {
		return fmt.Errorf("checksum mismatch (stored %08x, computed %08x): %w", want, got, ErrCorrupt)
	}
	if body[0] != entryVersion {
		return fmt.Errorf("entry format version %d: %w", body[0], ErrUnsupportedFormat)
	}
	r := reader{buf: body, off: 1}
	index := r.uvarint()
	term := r.uvarint()
	typ := r.byte()
	flags := r.byte()
	data := r.bytes()
	ext := r.bytes()
	var appendedAt time.Time
	if flags&flagAppendedAt != 0 {
		appendedAt = time.Unix(0, r.varint())
	}
	if r.err != nil {
		return fmt.Errorf("%s: %w", r.err, ErrCorrupt)
	}
	if r.off != len(body) {
		return fmt.Errorf("%d unexpected bytes after the entry: %w", len(body)-r.off, ErrCorrupt)
	}
	if flags&^flagAppendedAt != 0 {
		return fmt.Errorf("unknown flags %#x: %w", flags, ErrCorrupt)
	}
	if index != wantIndex {
		return fmt.Errorf("entry holds index %d: %w", index, ErrCorrupt)
	}
	*out = raft.Log{
		Index:      index,
		Term:       term,
		Type:       raft.LogType(typ),
		Data:       data,
		Extensions: ext,
		AppendedAt: appendedAt,
	}
	return nil
}

// reader walks a byte slice and remembers the first problem, so decodeLog
// reads straight through and checks once.
type reader struct {
	buf []byte
	off int
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%s at offset %d", what, r.off)
	}
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.buf[r.off:])
	if n <= 0 {
		r.fail("bad uvarint")
		return 0
	}
	r.off += n
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.buf[r.off:])
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.off += n
	return v
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.off >= len(r.buf) {
		r.fail("truncated entry")
		return 0
	}
	b := r.buf[r.off]
	r.off++
	return b
}

// bytes reads a length-prefixed field. An empty field decodes as nil, the
// way raft builds entries that carry nothing.
func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.buf)-r.off) {
		r.fail(fmt.Sprintf("field of %d bytes overruns the entry", n))
		return nil
	}
	if n == 0 {
		return nil
	}
	b := r.buf[r.off : r.off+int(n) : r.off+int(n)]
	r.off += int(n)
	return b
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func varintLen(v int64) int {
	// Zig-zag, as binary.PutVarint does.
	u := uint64(v) << 1
	if v < 0 {
		u = ^u
	}
	return uvarintLen(u)
}
