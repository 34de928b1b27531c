//go:build unix

package artifact

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func makeFIFO(t *testing.T, path string) {
	t.Helper()
	must(t, syscall.Mkfifo(path, 0o644))
}

func makeSocket(t *testing.T, path string) {
	t.Helper()
	// A socket's path is limited to about 100 bytes: bind it in a short
	// directory, then move it into the tree.
	dir, err := os.MkdirTemp("", "s")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	must(t, err)
	t.Cleanup(func() { l.Close() })
	must(t, os.Rename(filepath.Join(dir, "s"), path))
}

// File modes come from the manifest, whatever the process umask.
func TestAssembleModesIgnoreUmask(t *testing.T) {
	m, store := publish(t, sourceTree(t))
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dst := filepath.Join(t.TempDir(), "v")
	if err := Assemble(context.Background(), m, dst, store.open); err != nil {
		t.Fatal(err)
	}
	for _, f := range m.GetFiles() {
		fi, err := os.Stat(filepath.Join(dst, filepath.FromSlash(f.GetPath())))
		if err != nil {
			t.Fatal(err)
		}
		if uint32(fi.Mode().Perm()) != f.GetMode() {
			t.Errorf("%s: mode %#o, want %#o", f.GetPath(), fi.Mode().Perm(), f.GetMode())
		}
	}
	for _, d := range []string{".", "weights", "weights/deep", "bin"} {
		fi, err := os.Stat(filepath.Join(dst, d))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("directory %s: mode %#o, want 0755", d, fi.Mode().Perm())
		}
	}
}
