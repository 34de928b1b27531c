// Package logfile keeps a model server's output in size-bounded rotating
// files (out.log, out.log.1, … out.log.N, oldest last) and lets readers
// take its tail and follow it as it grows, across rotations.
package logfile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
)

// Config bounds the files. Zero fields take DefaultConfig's values.
type Config struct {
	// MaxBytes is the size at which the current file is rotated.
	MaxBytes int64
	// MaxFiles is how many rotated files are kept besides the current one.
	MaxFiles int
}

// DefaultConfig keeps up to 4 × 8 MiB per stream.
func DefaultConfig() Config { return Config{MaxBytes: 8 << 20, MaxFiles: 3} }

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxBytes <= 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.MaxFiles <= 0 {
		c.MaxFiles = d.MaxFiles
	}
	return c
}

// Writer appends to the current file and rotates it when it is full. It is
// safe for concurrent use; each Write lands whole in one file.
type Writer struct {
	path string
	cfg  Config

	mu     sync.Mutex // guards the fields below
	f      *os.File
	size   int64
	gen    uint64        // rotations so far
	notify chan struct{} // closed and replaced on every change
	closed bool
}

// Create opens path for appending, keeping what an earlier writer left
// there (a restarted process's output continues its predecessor's).
func Create(path string, cfg Config) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open log: %w", err)
	}
	return &Writer{path: path, cfg: cfg.withDefaults(), f: f, size: fi.Size(), notify: make(chan struct{})}, nil
}

// Path is the current file's path.
func (w *Writer) Path() string { return w.path }

// Write appends p, filling the current file to MaxBytes and rotating as
// often as p needs.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	defer w.changedLocked()
	written := 0
	for len(p) > 0 {
		if w.size >= w.cfg.MaxBytes {
			if err := w.rotateLocked(); err != nil {
				return written, err
			}
		}
		chunk := p[:min(int64(len(p)), w.cfg.MaxBytes-w.size)]
		n, err := w.f.Write(chunk)
		w.size += int64(n)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (w *Writer) changedLocked() {
	close(w.notify)
	w.notify = make(chan struct{})
}

// rotateLocked shifts out.log.i to out.log.i+1, dropping the oldest, and
// starts an empty out.log.
func (w *Writer) rotateLocked() error {
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("rotate log: %w", err)
	}
	_ = os.Remove(name(w.path, w.cfg.MaxFiles))
	for i := w.cfg.MaxFiles - 1; i >= 0; i-- {
		if err := os.Rename(name(w.path, i), name(w.path, i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("rotate log: %w", err)
		}
	}
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o640)
	if err != nil {
		w.closed = true // nowhere left to write
		return fmt.Errorf("rotate log: %w", err)
	}
	w.f, w.size = f, 0
	w.gen++
	return nil
}

// Close closes the file; followers finish what was written and return.
// Closing twice is harmless.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	w.changedLocked()
	return w.f.Close()
}

// name is the path of the file i rotations old (0: the current one).
func name(path string, i int) string {
	if i == 0 {
		return path
	}
	return path + "." + strconv.Itoa(i)
}

// Copy writes the last tail bytes kept (all of them when tail ≤ 0) to out
// and, with follow, what is written after, until ctx ends (returning its
// error) or the writer is closed (returning nil). A follower that falls
// more than MaxFiles rotations behind skips what was dropped.
func (w *Writer) Copy(ctx context.Context, tail int64, follow bool, out io.Writer) error {
	w.mu.Lock()
	files, err := openAll(w.path, w.cfg.MaxFiles)
	size, gen, closed := w.size, w.gen, w.closed
	w.mu.Unlock()
	if err != nil {
		return err
	}
	cur := files[len(files)-1]
	pos, err := copyTail(files, size, tail, out)
	for _, f := range files[:len(files)-1] {
		f.Close()
	}
	if err != nil || !follow || closed {
		cur.Close()
		return err
	}
	defer func() { cur.Close() }()
	for {
		n, err := copyFrom(cur, pos, out)
		pos += n
		if err != nil {
			return err
		}
		w.mu.Lock()
		switch {
		case w.gen == gen && w.size > pos:
			w.mu.Unlock()
			continue
		case w.gen == gen && w.closed:
			w.mu.Unlock()
			return nil
		case w.gen == gen:
			wait := w.notify
			w.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Our file was rotated away and is complete: finish it, then move
		// to the one written after it, or the oldest kept if that is gone.
		w.mu.Unlock()
		if _, err := copyFrom(cur, pos, out); err != nil {
			return err
		}
		cur.Close()
		w.mu.Lock()
		oldest := uint64(0)
		if w.gen > uint64(w.cfg.MaxFiles) {
			oldest = w.gen - uint64(w.cfg.MaxFiles)
		}
		gen = max(gen+1, oldest)
		next, err := os.Open(name(w.path, int(w.gen-gen)))
		w.mu.Unlock()
		if err != nil {
			return fmt.Errorf("follow log: %w", err)
		}
		cur, pos = next, 0
	}
}

// Tail writes the last tail bytes kept at path (all when tail ≤ 0) to out,
// for logs whose writer is gone, such as a previous agent's.
func Tail(path string, maxFiles int, tail int64, out io.Writer) error {
	files, err := openAll(path, max(maxFiles, DefaultConfig().MaxFiles))
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	fi, err := files[len(files)-1].Stat()
	if err != nil {
		return fmt.Errorf("read log: %w", err)
	}
	_, err = copyTail(files, fi.Size(), tail, out)
	return err
}

// openAll opens the rotated files that exist, oldest first, then the
// current one, which must exist.
func openAll(path string, maxFiles int) ([]*os.File, error) {
	var files []*os.File
	for i := maxFiles; i >= 0; i-- {
		f, err := os.Open(name(path, i))
		if errors.Is(err, os.ErrNotExist) && i > 0 {
			continue
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("read log: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

// copyTail writes the last tail bytes of files (the last read only up to
// curSize) and returns the position reached in the last.
func copyTail(files []*os.File, curSize, tail int64, out io.Writer) (int64, error) {
	sizes := make([]int64, len(files))
	var total int64
	for i, f := range files[:len(files)-1] {
		fi, err := f.Stat()
		if err != nil {
			return 0, fmt.Errorf("read log: %w", err)
		}
		sizes[i] = fi.Size()
		total += sizes[i]
	}
	sizes[len(files)-1] = curSize
	total += curSize
	skip := int64(0)
	if tail > 0 && total > tail {
		skip = total - tail
	}
	for i, f := range files {
		if skip >= sizes[i] {
			skip -= sizes[i]
			continue
		}
		if _, err := io.Copy(out, io.NewSectionReader(f, skip, sizes[i]-skip)); err != nil {
			return 0, fmt.Errorf("read log: %w", err)
		}
		skip = 0
	}
	return curSize, nil
}

// copyFrom copies f from pos to its current end.
func copyFrom(f *os.File, pos int64, out io.Writer) (int64, error) {
	n, err := io.Copy(out, io.NewSectionReader(f, pos, 1<<62))
	if err != nil {
		return n, fmt.Errorf("follow log: %w", err)
	}
	return n, nil
}
