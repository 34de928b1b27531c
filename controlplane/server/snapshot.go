package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// A snapshot file, as written by "drover operator snapshot save":
//
//	magic   8 bytes  "DRVSNAP" + format version 0x01
//	hlen    4 bytes  big-endian length of the header
//	header  hlen     SnapshotHeader (cluster identity, Raft index)
//	body    ...      the state machine's snapshot stream
//	sum     32 bytes SHA-256 of everything before it
//
// The trailing checksum catches truncation and corruption anywhere in the
// file before anything is restored; the header's cluster id catches a file
// from another cluster.
var snapshotMagic = []byte("DRVSNAP\x01")

const (
	snapshotSumLen    = sha256.Size
	maxSnapshotHeader = 1 << 20
)

// Snapshot errors.
var (
	// ErrSnapshotInvalid means the file is not a complete Drover snapshot.
	ErrSnapshotInvalid = errors.New("invalid snapshot file")
	// ErrRaftSnapshotsUnusable means a server cannot start: its newest
	// Raft snapshot cannot be restored, and no older snapshot with the log
	// after it (or the log alone) rebuilds its state.
	ErrRaftSnapshotsUnusable = errors.New("raft snapshots unusable")
)

// snapshotWriter writes the snapshot file format to w, summing as it goes.
type snapshotWriter struct {
	w   io.Writer
	sum hash.Hash
}

func newSnapshotWriter(w io.Writer, header *droverv1.SnapshotHeader) (*snapshotWriter, error) {
	hb, err := proto.Marshal(header)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot header: %w", err)
	}
	sw := &snapshotWriter{w: w, sum: sha256.New()}
	var hlen [4]byte
	binary.BigEndian.PutUint32(hlen[:], uint32(len(hb)))
	for _, b := range [][]byte{snapshotMagic, hlen[:], hb} {
		if _, err := sw.Write(b); err != nil {
			return nil, err
		}
	}
	return sw, nil
}

func (sw *snapshotWriter) Write(p []byte) (int, error) {
	n, err := sw.w.Write(p)
	sw.sum.Write(p[:n])
	return n, err
}

// finish writes the checksum trailer.
func (sw *snapshotWriter) finish() error {
	_, err := sw.w.Write(sw.sum.Sum(nil))
	return err
}

// snapshotFile is a verified snapshot file on disk.
type snapshotFile struct {
	header  *droverv1.SnapshotHeader
	f       *os.File
	bodyOff int64
	bodyLen int64
}

// body returns a reader of the state machine stream inside the file.
func (sf *snapshotFile) body() io.Reader {
	return io.NewSectionReader(sf.f, sf.bodyOff, sf.bodyLen)
}

func (sf *snapshotFile) Close() error { return sf.f.Close() }

// openSnapshotFile checks a snapshot file's format and checksum and
// returns its header. The caller closes the result.
func openSnapshotFile(path string) (*snapshotFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	sf, err := verifySnapshot(f)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return sf, nil
}

func verifySnapshot(f *os.File) (*snapshotFile, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	minLen := int64(len(snapshotMagic) + 4 + snapshotSumLen)
	if size < minLen {
		return nil, fmt.Errorf("%w: only %d bytes, too short to be a snapshot (truncated?)", ErrSnapshotInvalid, size)
	}
	head := make([]byte, len(snapshotMagic)+4)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, fmt.Errorf("%w: read header: %v", ErrSnapshotInvalid, err)
	}
	if !bytes.Equal(head[:len(snapshotMagic)], snapshotMagic) {
		return nil, fmt.Errorf("%w: not a Drover snapshot (bad magic bytes); make one with \"drover operator snapshot save\"", ErrSnapshotInvalid)
	}
	hlen := int64(binary.BigEndian.Uint32(head[len(snapshotMagic):]))
	if hlen > maxSnapshotHeader || int64(len(head))+hlen+snapshotSumLen > size {
		return nil, fmt.Errorf("%w: header length %d does not fit a %d-byte file (truncated?)", ErrSnapshotInvalid, hlen, size)
	}
	// Verify the checksum over everything but the trailer.
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(f, 0, size-snapshotSumLen)); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSnapshotInvalid, err)
	}
	want := make([]byte, snapshotSumLen)
	if _, err := f.ReadAt(want, size-snapshotSumLen); err != nil {
		return nil, fmt.Errorf("%w: read checksum: %v", ErrSnapshotInvalid, err)
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		return nil, fmt.Errorf("%w: checksum mismatch: the file is truncated or corrupted", ErrSnapshotInvalid)
	}
	hb := make([]byte, hlen)
	if _, err := f.ReadAt(hb, int64(len(head))); err != nil {
		return nil, fmt.Errorf("%w: read header: %v", ErrSnapshotInvalid, err)
	}
	header := &droverv1.SnapshotHeader{}
	if err := proto.Unmarshal(hb, header); err != nil {
		return nil, fmt.Errorf("%w: decode header: %v", ErrSnapshotInvalid, err)
	}
	off := int64(len(head)) + hlen
	return &snapshotFile{header: header, f: f, bodyOff: off, bodyLen: size - snapshotSumLen - off}, nil
}
