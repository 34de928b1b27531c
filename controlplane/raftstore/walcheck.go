package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	"github.com/cockroachdb/pebble/v2/record"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/wal"
)

// Pebble's WAL chunk format (record/record.go in Pebble; part of its on-disk
// format, so it does not change under us). Records are split into chunks
// that never cross a 32 KiB block. A chunk in the format our stores write
// (FormatWALSyncChunks and later) has this header:
//
//	CRC (4) | payload length (2) | type (1) | log number (4) | synced offset (8)
//
// The CRC covers everything from the type to the end of the payload. The
// synced offset is how far the file had been synced when the chunk was
// written. A clean close ends the file with an 11-byte trailer of an older
// chunk type: CRC 0, length 0, type recyclableFull, log number + 1.
const (
	walBlockSize          = 32 << 10
	walSyncHeaderSize     = 19
	walSyncFullChunkType  = 9 // then first, middle and last: 9 to 12
	walSyncFirstChunkType = 10
	walSyncLastChunkType  = 12
	walRecyclableFullType = 5 // the type of the end-of-log trailer
	walTrailerSize        = 11
)

var walCRCTable = crc32.MakeTable(crc32.Castagnoli)

// walChunkCRC is Pebble's masked CRC-32C of a chunk.
func walChunkCRC(b []byte) uint32 {
	c := crc32.Update(0, walCRCTable, b)
	return (c>>15 | c<<17) + 0xa282ead8
}

// WALDamageError reports a WAL file that recovery cannot read to its end
// although the file proves that what it could not read had been synced: a
// write the store acknowledged is lost. It wraps ErrCorrupt.
type WALDamageError struct {
	// File is the WAL file's path.
	File string
	// Offset is where recovery stops reading: the start of the first record
	// it cannot read.
	Offset int64
	// Proof says what shows the unreadable bytes had been synced.
	Proof string
}

func (e *WALDamageError) Error() string {
	return fmt.Sprintf("WAL file %s is damaged at byte %d, but %s: writes this server acknowledged are lost",
		e.File, e.Offset, e.Proof)
}

func (e *WALDamageError) Unwrap() error { return ErrCorrupt }

// checkWAL reads the WAL file at path as recovery will and returns a
// *WALDamageError when recovery would silently drop synced records.
//
// Why this exists: Pebble stops replaying the newest WAL at the first chunk
// it cannot read and, unless a later 32 KiB block holds a chunk whose synced
// offset lies past that chunk, takes the rest for a write torn by a crash
// and drops it without a word. Damage early in a WAL whose later records
// share the damaged block thus loses every later acknowledged entry, term
// and vote. (The synced offsets also lag behind the truth by a little more
// at each block boundary, so even a later block is no sure proof.)
//
// checkWAL looks at every byte after the stopping point, the rest of the
// same block included, for proof that the unread record had been synced:
//   - with oneAtATime (the store's writes are synced and never overlap, see
//     Store.write), the start of any later intact record: it was written
//     only after the damaged one's sync returned;
//   - a chunk of this log whose synced offset lies past the stopping point;
//   - the end-of-log trailer of a clean close.
//
// What it cannot catch is damage to the very last record written before a
// crash: nothing after it says it was synced, so it looks exactly like a
// torn write, which Raft never acknowledged.
func checkWAL(fs vfs.FS, path string, oneAtATime bool) error {
	num, ok := walNum(fs.PathBase(path))
	if !ok {
		return nil // not a file Pebble would replay
	}
	logs, err := wal.Scan(wal.Dir{FS: fs, Dirname: fs.PathDir(path)})
	if err != nil {
		return fmt.Errorf("check WAL %s: %w", path, err)
	}
	ll, found := logs.Get(wal.NumWAL(num))
	if !found {
		return nil
	}
	stop, readErr := walReadableEnd(ll)
	if readErr == nil {
		return nil // read to a clean end
	}
	if !errors.Is(readErr, record.ErrUnexpectedEOF) {
		if errors.Is(readErr, record.ErrInvalidChunk) || errors.Is(readErr, record.ErrZeroedChunk) {
			// Pebble has its own proof and will refuse too; say which file.
			return &WALDamageError{File: path, Offset: stop,
				Proof: "a later chunk says the file had been synced past it"}
		}
		return fmt.Errorf("check WAL %s: %w", path, readErr)
	}
	f, err := fs.Open(path)
	if err != nil {
		return fmt.Errorf("check WAL %s: %w", path, err)
	}
	data, err := io.ReadAll(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("check WAL %s: %w", path, err)
	}
	if proof := walSyncedPast(data, uint32(num), stop, oneAtATime); proof != "" {
		return &WALDamageError{File: path, Offset: stop, Proof: proof}
	}
	return nil
}

// walNum parses the number of a WAL file named like 000123.log.
func walNum(base string) (uint64, bool) {
	digits, ok := strings.CutSuffix(base, ".log")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	return n, err == nil
}

// walReadableEnd reads every record of ll with Pebble's own reader and
// returns the offset of the first one it cannot read, with the reader's
// error, or nil at a clean end.
func walReadableEnd(ll wal.LogicalLog) (int64, error) {
	r := ll.OpenForRead()
	defer r.Close()
	for {
		rec, off, err := r.NextRecord()
		if err == nil {
			_, err = io.Copy(io.Discard, rec)
		}
		if errors.Is(err, io.EOF) {
			return off.Physical, nil
		}
		if err != nil {
			return off.Physical, err
		}
	}
}

// walSyncedPast looks in data, from stop on, for proof that the record at
// stop had been synced (see checkWAL) and says what it found; "" if
// nothing. Every byte offset is tried, since the damage may have garbled the
// lengths that lead from one chunk to the next; the CRC rules out chance
// matches.
func walSyncedPast(data []byte, num uint32, stop int64, oneAtATime bool) string {
	for p := int(stop); p+walTrailerSize <= len(data); p++ {
		blockEnd := min(len(data), (p/walBlockSize+1)*walBlockSize)
		typ := data[p+6]
		logNum := binary.LittleEndian.Uint32(data[p+7 : p+11])
		switch {
		case typ >= walSyncFullChunkType && typ <= walSyncLastChunkType && logNum == num:
			if p+walSyncHeaderSize > blockEnd {
				continue
			}
			end := p + walSyncHeaderSize + int(binary.LittleEndian.Uint16(data[p+4:p+6]))
			if end > blockEnd || walChunkCRC(data[p+6:end]) != binary.LittleEndian.Uint32(data[p:p+4]) {
				continue
			}
			if synced := binary.LittleEndian.Uint64(data[p+11 : p+19]); synced > uint64(stop) {
				return fmt.Sprintf("an intact record at byte %d says the file had been synced up to byte %d", p, synced)
			}
			// A full or first chunk starts a record; past stop it is a
			// later record, not a piece of the damaged one.
			if starts := typ == walSyncFullChunkType || typ == walSyncFirstChunkType; oneAtATime && starts && p > int(stop) {
				return fmt.Sprintf("an intact record at byte %d was written after it, and the store writes a record only once the one before is synced", p)
			}
		case typ == walRecyclableFullType && logNum == num+1 &&
			binary.LittleEndian.Uint32(data[p:p+4]) == 0 && binary.LittleEndian.Uint16(data[p+4:p+6]) == 0:
			return fmt.Sprintf("the file was closed cleanly (its end-of-log trailer is at byte %d)", p)
		}
	}
	return ""
}
