package raftstore

import (
	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// walExtendStep is how far ahead of its writes a WAL file is extended. Each
// extension costs one sync a journal commit, and the zeros it leaves past the
// last record are what recovery reads through after a crash: 1 MiB keeps
// both small.
const walExtendStep = 1 << 20

// extendFile returns f extending itself ahead of its writes.
func extendFile(f vfs.File) vfs.File {
	if f.Fd() == vfs.InvalidFd {
		return f
	}
	var size int64
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	return &extendingFile{File: f, fd: int(f.Fd()), extended: size}
}

// extendingFile extends the file (fallocate mode 0, which moves the end of
// the file) in steps of walExtendStep before the writes that need the space.
// Pebble writes a WAL file from one goroutine at a time, so it needs no
// lock.
type extendingFile struct {
	vfs.File
	fd       int
	written  int64 // offset after the last Write
	extended int64 // size the file has been extended to
	cannot   bool  // fallocate failed once; do not try again
}

func (f *extendingFile) Write(p []byte) (int, error) {
	if need := f.written + int64(len(p)); need > f.extended && !f.cannot {
		size := (need/walExtendStep + 1) * walExtendStep
		// On failure (a file system without fallocate, say) writes just
		// grow the file, as they would have without this.
		if err := unix.Fallocate(f.fd, 0, f.extended, size-f.extended); err != nil {
			f.cannot = true
		} else {
			f.extended = size
		}
	}
	n, err := f.File.Write(p)
	f.written += int64(n)
	return n, err
}

// Preallocate does nothing: Write extends the file, and Pebble's own
// preallocation (blocks past the end of the file, 1.1 memtables at a time)
// would only reserve space the extensions allocate anyway.
func (f *extendingFile) Preallocate(off, n int64) error { return nil }
