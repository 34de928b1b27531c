// Package journal keeps the agent's durable record of what happened to the
// model instances on its node: which version it was assigned, when an
// instance started, became healthy, took the node's traffic, stopped or
// failed, and when the node served nothing.
//
// The record is a file of JSON lines, one Entry per line, in the order the
// agent did things. Append writes a line and syncs it to disk before it
// returns, so an entry the agent acted on survives a crash or a power
// cut. A crash in the middle of an append leaves a torn last line; Open
// cuts it off before appending again, and Read skips it. The file is
// rotated when it passes Options.MaxBytes, keeping Options.Keep older
// files, so the record is bounded.
//
// The record answers questions no sampling can: how long a node went
// without serving, whether it was ever updated twice, how many nodes of a
// site were updating at the same instant (every agent of a fleet uses the
// same events, so records from many nodes can be laid side by side, to
// the accuracy of their clocks).
package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/droverhq/drover/internal/atomicfile"
)

// Event is what an entry records.
type Event string

// The events of an instance's life, in the order a version update makes
// them. Version is the version concerned; Deployment names the deployment
// for all but Boot.
const (
	// Boot: the agent's reconciler started. Nothing serves on the node
	// until the next Switched, whatever the entries before it said.
	Boot Event = "boot"
	// Assigned: the node was told to run Version (a new assignment, or
	// the same version with a changed runtime or resources). Reason is
	// set when it came from the state file at boot rather than from a
	// server.
	Assigned Event = "assigned"
	// Unassigned: the node was told to stop running the deployment.
	Unassigned Event = "unassigned"
	// Started: an instance of Version was started.
	Started Event = "started"
	// Healthy: the instance of Version passed its health check.
	Healthy Event = "healthy"
	// Switched: the node's endpoint sends the deployment's requests to
	// Version from now on. Previous is the version it replaced (0 when
	// nothing served). Written before the agent reports the version
	// healthy to the control plane.
	Switched Event = "switched"
	// Stopped: the instance of Version stopped (it was replaced, the
	// deployment was removed, or the agent is stopping).
	Stopped Event = "stopped"
	// Failed: Version did not come up (State, Reason), and the node goes
	// on with what served before, if anything.
	Failed Event = "failed"
	// NotServing: from now on the endpoint has nothing to send the
	// deployment's requests to (Reason says why) until the next Switched.
	// Version is the version that served until then.
	NotServing Event = "not_serving"
)

// Entry is one line of the journal.
type Entry struct {
	Time       time.Time `json:"time"`
	Event      Event     `json:"event"`
	Deployment string    `json:"deployment,omitempty"`
	Model      string    `json:"model,omitempty"`
	Version    uint64    `json:"version,omitempty"`
	Previous   uint64    `json:"previous,omitempty"`
	State      string    `json:"state,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// maxReason bounds an entry's Reason: reasons quote process output, and
// one entry must not take the room of thousands.
const maxReason = 1024

// File is the journal's current file in its directory; rotated files are
// File with ".1", ".2", … before the extension, ".1" the newest.
const File = "journal.jsonl"

// Options bound the journal.
type Options struct {
	// MaxBytes is the size past which the current file is rotated;
	// 0 means DefaultMaxBytes.
	MaxBytes int64
	// Keep is how many rotated files are kept; 0 means DefaultKeep.
	Keep int
	// Now stamps entries; nil means time.Now.
	Now func() time.Time
}

// The defaults keep at most 16 MiB of journal: at a few hundred bytes an
// entry and some ten entries per update, tens of thousands of updates.
const (
	DefaultMaxBytes = 4 << 20
	DefaultKeep     = 3
)

// Journal appends entries to the journal in one directory. Its methods may
// be called from any goroutine; appends are serialized.
type Journal struct {
	dir  string
	opts Options

	mu   sync.Mutex // guards f and size
	f    *os.File
	size int64
}

// Open opens (creating it if needed) the journal in dir. A torn last line
// left by a crash is cut off, so the next entry starts a line of its own.
func Open(dir string, opts Options) (*Journal, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Keep <= 0 {
		opts.Keep = DefaultKeep
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	j := &Journal{dir: dir, opts: opts}
	if err := j.openCurrent(); err != nil {
		return nil, err
	}
	return j, nil
}

// Dir is the journal's directory.
func (j *Journal) Dir() string { return j.dir }

// openCurrent opens the current file for appending, after cutting off
// anything after its last newline.
func (j *Journal) openCurrent() error {
	path := filepath.Join(j.dir, File)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open journal: %w", err)
	}
	size, err := completeLines(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("open journal %s: %w", path, err)
	}
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("open journal %s: %w", path, err)
	}
	j.f, j.size = f, size
	return nil
}

// completeLines returns the length of f up to and including its last
// newline, and truncates f there if something follows it.
func completeLines(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	if size == 0 {
		return 0, nil
	}
	// Look back in blocks for the last newline.
	const block = 4096
	buf := make([]byte, block)
	end := size
	for end > 0 {
		start := max(0, end-block)
		n, err := f.ReadAt(buf[:end-start], start)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			end = start + int64(i) + 1
			break
		}
		end = start
	}
	if end != size {
		if err := f.Truncate(end); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	return end, nil
}

// Append stamps e with the journal's clock, unless it has a time, writes
// it as one line and syncs the file before it returns.
func (j *Journal) Append(e Entry) error {
	if len(e.Reason) > maxReason {
		e.Reason = e.Reason[:maxReason] + "…"
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return errors.New("append to journal: it is closed")
	}
	if e.Time.IsZero() {
		e.Time = j.opts.Now()
	}
	e.Time = e.Time.UTC()
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("append to journal: %w", err)
	}
	line = append(line, '\n')
	if j.size > 0 && j.size+int64(len(line)) > j.opts.MaxBytes {
		if err := j.rotate(); err != nil {
			return err
		}
	}
	n, err := j.f.Write(line)
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("append to journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("append to journal: %w", err)
	}
	return nil
}

// rotated is the path of the i-th rotated file (1 the newest).
func rotated(dir string, i int) string {
	ext := filepath.Ext(File)
	return filepath.Join(dir, File[:len(File)-len(ext)]+"."+strconv.Itoa(i)+ext)
}

// rotate moves the current file to ".1", shifting older ones along and
// dropping the oldest past Keep, and starts an empty current file.
func (j *Journal) rotate() error {
	if err := j.f.Close(); err != nil {
		return fmt.Errorf("rotate journal: %w", err)
	}
	j.f = nil
	if err := os.Remove(rotated(j.dir, j.opts.Keep)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotate journal: %w", err)
	}
	for i := j.opts.Keep - 1; i >= 1; i-- {
		if err := os.Rename(rotated(j.dir, i), rotated(j.dir, i+1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("rotate journal: %w", err)
		}
	}
	if err := os.Rename(filepath.Join(j.dir, File), rotated(j.dir, 1)); err != nil {
		return fmt.Errorf("rotate journal: %w", err)
	}
	if err := atomicfile.SyncDir(j.dir); err != nil {
		return fmt.Errorf("rotate journal: %w", err)
	}
	return j.openCurrent()
}

// Close closes the journal's file; later appends fail.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}

// Read returns every entry of the journal in dir, the oldest rotated file
// first, and how many lines it skipped because they are not entries: a
// torn last line left by a crash (or by an append under way while Read
// runs), or a line damaged on disk. A missing journal has no entries.
func Read(dir string) (entries []Entry, skipped int, err error) {
	paths := []string{}
	for i := 1; ; i++ {
		p := rotated(dir, i)
		if _, err := os.Stat(p); err != nil {
			break
		}
		paths = append([]string{p}, paths...)
	}
	paths = append(paths, filepath.Join(dir, File))
	for _, p := range paths {
		es, sk, err := readFile(p)
		if err != nil {
			return nil, 0, err
		}
		entries = append(entries, es...)
		skipped += sk
	}
	return entries, skipped, nil
}

func readFile(path string) (entries []Entry, skipped int, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read journal: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			var e Entry
			// A line without its newline was torn by a crash, even if it
			// happens to parse.
			if line[len(line)-1] != '\n' || json.Unmarshal(line, &e) != nil || e.Event == "" {
				skipped++
			} else {
				entries = append(entries, e)
			}
		}
		if errors.Is(err, io.EOF) {
			return entries, skipped, nil
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read journal %s: %w", path, err)
		}
	}
}
