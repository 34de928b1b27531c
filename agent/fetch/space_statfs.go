//go:build linux || darwin || freebsd

package fetch

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// freeSpace returns the bytes an unprivileged writer may still use on the
// file system holding path, and its device number.
func freeSpace(path string) (free, device uint64, err error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return uint64(fs.Bavail) * uint64(fs.Bsize), uint64(s.Dev), nil
}
