package reconcile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/droverhq/drover/internal/atomicfile"
)

// Pins: the reconciler keeps its own hard-linked copy of each version it
// starts, under <Dir>/versions/<deployment>/<version>, and removes a copy
// only when that version neither serves nor is the one kept for a
// rollback. The version store keeps the current and previous version of
// each model, which is not always what serves: after a new version was
// pulled and failed, the next pull would remove the directory of the
// version still serving, and an agent restarted without a server could
// not start it again. Hard links cost no space; where they are impossible
// (another file system) the store's directory is used as it is.

// pinDir is where deployment's copy of version lives.
func (r *Reconciler) pinDir(deployment string, version uint64) string {
	return filepath.Join(r.cfg.Dir, "versions", deployment, strconv.FormatUint(version, 10))
}

// pinned returns deployment's copy of version, if it has one.
func (r *Reconciler) pinned(deployment string, version uint64) (string, bool) {
	dir := r.pinDir(deployment, version)
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return dir, true
	}
	return "", false
}

// pin makes deployment's copy of version from src and returns its
// directory. The copy appears in one rename, so a copy that exists is
// complete.
func (r *Reconciler) pin(deployment string, version uint64, src string) (string, error) {
	dst := r.pinDir(deployment, version)
	if _, ok := r.pinned(deployment, version); ok {
		return dst, nil
	}
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("keep version %d: %w", version, err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dst)+".tmp-")
	if err != nil {
		return "", fmt.Errorf("keep version %d: %w", version, err)
	}
	if err := linkTree(src, tmp); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("keep version %d: %w", version, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		_ = os.RemoveAll(tmp)
		return "", fmt.Errorf("keep version %d: %w", version, err)
	}
	if err := atomicfile.SyncDir(parent); err != nil {
		return "", fmt.Errorf("keep version %d: %w", version, err)
	}
	return dst, nil
}

// linkTree makes dst (an empty directory) hold src's tree: directories
// made, files hard-linked, symbolic links copied as links.
func linkTree(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	return filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil || rel == "." {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case e.IsDir():
			info, err := e.Info()
			if err != nil {
				return err
			}
			return os.Mkdir(to, info.Mode().Perm())
		case e.Type().IsRegular():
			return os.Link(path, to)
		case e.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		}
		return fmt.Errorf("%s is neither a file, a directory nor a link", path)
	})
}

// prune removes deployment's copies of every version but keep's, and
// what an interrupted pin left.
func (r *Reconciler) prune(deployment string, keep ...uint64) {
	dir := filepath.Join(r.cfg.Dir, "versions", deployment)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, ".") {
			v, err := strconv.ParseUint(name, 10, 64)
			if err != nil {
				continue
			}
			kept := false
			for _, k := range keep {
				kept = kept || k == v
			}
			if kept {
				continue
			}
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			r.log.Warn("cannot remove a version copy no longer needed", "deployment", deployment, "dir", name, "err", err)
		}
	}
}

// unpinAll removes every copy of a removed deployment.
func (r *Reconciler) unpinAll(deployment string) {
	err := os.RemoveAll(filepath.Join(r.cfg.Dir, "versions", deployment))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("cannot remove a removed deployment's version copies", "deployment", deployment, "err", err)
	}
}
