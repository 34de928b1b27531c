package artifact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/droverhq/drover/internal/atomicfile"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// OpenChunkFunc returns the bytes of the chunk with digest d: from a local
// cache, a peer or a server. Assemble checks them; the function need not.
type OpenChunkFunc func(d Digest) (io.ReadCloser, error)

// CheckedChunk is an optional ability of what an OpenChunkFunc returns: a
// chunk held in a file whose bytes the caller checked against their
// digest after they were written, as a cache does while it stores a chunk
// it has just fetched. Assemble copies such a chunk without hashing it
// again (on Linux inside the kernel, with copy_file_range), checking its
// size only. Return it only for bytes checked moments ago: a chunk that
// may have sat on disk since it was checked is hashed again.
type CheckedChunk interface {
	io.ReadCloser
	// CheckedFile is the file that holds the chunk, read from its
	// current offset.
	CheckedFile() *os.File
}

// copyBufferSize is what Assemble copies at a time from a chunk to a file.
const copyBufferSize = 256 << 10

// Assemble writes the files of m into the directory dst. m should come
// from Verify; Assemble validates it again and refuses what
// ValidateManifest refuses (without size limits: the caller chose those
// when it verified).
//
// The files are written into a new directory beside dst, checking each
// chunk's size and digest as it is read (ErrChunkCorrupt names the chunk,
// so the caller can drop it from where it came from) and each file's size.
// Files and directories are synced, then the new directory is renamed to
// dst in one step: readers of dst see the whole previous content or the
// whole new one, never part of a version. An existing dst (a directory) is
// replaced only on success; on any failure, cancellation included, dst is
// as it was and the temporary directory is removed.
//
// Assemble calls open once per chunk of each file, in manifest order, from
// the calling goroutine.
func Assemble(ctx context.Context, m *droverv1.Manifest, dst string, open OpenChunkFunc) error {
	if err := assemble(ctx, m, dst, open); err != nil {
		return fmt.Errorf("assemble %s: %w", dst, err)
	}
	return nil
}

func assemble(ctx context.Context, m *droverv1.Manifest, dst string, open OpenChunkFunc) (err error) {
	if err := ValidateManifest(m, Limits{}); err != nil {
		return err
	}
	dst = filepath.Clean(dst)
	parent, base := filepath.Split(dst)
	if parent == "" {
		parent = "."
	}
	replace := false
	if fi, err := os.Lstat(dst); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory: remove it or choose another destination", dst)
		}
		replace = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	tmp, err := os.MkdirTemp(parent, "."+base+".tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(tmp)
		}
	}()
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer root.Close()

	dirs := map[string]bool{".": true}
	buf := make([]byte, copyBufferSize)
	for _, f := range m.GetFiles() {
		if dir := path.Dir(f.GetPath()); !dirs[dir] {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			for ; dir != "." && !dirs[dir]; dir = path.Dir(dir) {
				dirs[dir] = true
			}
		}
		if err := writeFile(ctx, root, f, open, buf); err != nil {
			return err
		}
	}
	// Deepest first, so each directory's entries are durable before the
	// entry that names it.
	order := make([]string, 0, len(dirs))
	for d := range dirs {
		order = append(order, d)
	}
	slices.SortFunc(order, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range order {
		if d == "." {
			continue
		}
		// As for files, the mode must not depend on the umask.
		if err := root.Chmod(d, 0o755); err != nil {
			return err
		}
		if err := atomicfile.SyncDir(filepath.Join(tmp, filepath.FromSlash(d))); err != nil {
			return err
		}
	}
	// MkdirTemp made it 0700; a version is read by runtimes that may run
	// as other users.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(tmp); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !replace {
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		return atomicfile.SyncDir(parent)
	}
	return replaceDir(tmp, dst, parent)
}

// replaceDir puts the complete directory tmp at dst, where a directory
// already is, and removes the old one. Where the system can swap two
// names in one step it does; elsewhere replaceByRenames does it in two.
func replaceDir(tmp, dst, parent string) error {
	err := exchange(tmp, dst)
	if errors.Is(err, errors.ErrUnsupported) {
		return replaceByRenames(tmp, dst, parent)
	}
	if err != nil {
		return err
	}
	// tmp now holds the previous content.
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("the new version is in place, but removing the previous one (%s) failed: %w", tmp, err)
	}
	return nil
}

// replaceByRenames moves dst aside and tmp into its place. Between the two
// renames dst is absent, but it never holds part of a version; if the
// second rename fails the first is undone.
func replaceByRenames(tmp, dst, parent string) error {
	old := tmp + ".old"
	if err := os.Rename(dst, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		if rerr := os.Rename(old, dst); rerr != nil {
			return fmt.Errorf("%w; putting the previous version back also failed, it is at %s: %v", err, old, rerr)
		}
		return err
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("the new version is in place, but removing the previous one (%s) failed: %w", old, err)
	}
	return nil
}

// writeFile writes one file from its chunks, checking each.
func writeFile(ctx context.Context, root *os.Root, f *droverv1.ManifestFile, open OpenChunkFunc, buf []byte) (err error) {
	out, err := root.OpenFile(f.GetPath(), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	var written uint64
	for i, c := range f.GetChunks() {
		if err := ctx.Err(); err != nil {
			return err
		}
		d := digestOf(c)
		if err := copyChunk(out, d, int64(c.GetSize()), open, buf); err != nil {
			return fmt.Errorf("file %q, chunk %d: %w", f.GetPath(), i, err)
		}
		written += uint64(c.GetSize())
	}
	if written != f.GetSize() {
		// ValidateManifest makes this impossible; a file of the wrong
		// size must still never be renamed into place.
		return fmt.Errorf("file %q: wrote %d bytes, want %d: %w", f.GetPath(), written, f.GetSize(), ErrInvalidManifest)
	}
	// Chmod after create: the mode must not depend on the umask.
	if err := out.Chmod(os.FileMode(f.GetMode())); err != nil {
		return err
	}
	return out.Sync()
}

// copyChunk appends the chunk d of size bytes to out and checks it.
func copyChunk(out io.Writer, d Digest, size int64, open OpenChunkFunc, buf []byte) error {
	rc, err := open(d)
	if err != nil {
		return fmt.Errorf("open chunk %s: %w", d, err)
	}
	defer rc.Close()
	if c, ok := rc.(CheckedChunk); ok {
		n, err := io.Copy(out, io.LimitReader(c.CheckedFile(), size+1))
		if err != nil {
			return fmt.Errorf("read chunk %s: %w", d, err)
		}
		if n != size {
			return fmt.Errorf("chunk %s: %d bytes, want %d: %w", d, n, size, ErrChunkCorrupt)
		}
		return nil
	}
	h := NewHasher()
	// One byte more than the size, to tell a long chunk from a right one.
	n, err := io.CopyBuffer(io.MultiWriter(out, h), io.LimitReader(rc, size+1), buf)
	if err != nil {
		return fmt.Errorf("read chunk %s: %w", d, err)
	}
	if n > size {
		return fmt.Errorf("chunk %s: more than %d bytes: %w", d, size, ErrChunkCorrupt)
	}
	if n < size {
		return fmt.Errorf("chunk %s: %d bytes, want %d: %w", d, n, size, ErrChunkCorrupt)
	}
	var got Digest
	h.Sum(got[:0])
	if got != d {
		return fmt.Errorf("chunk %s: the bytes have digest %s: %w", d, got, ErrChunkCorrupt)
	}
	return nil
}
