//go:build !(linux || darwin || freebsd)

package fetch

import (
	"errors"
	"fmt"
)

// freeSpace is not measured here; Pull then makes no space check.
func freeSpace(path string) (free, device uint64, err error) {
	return 0, 0, fmt.Errorf("free space of %s: %w", path, errors.ErrUnsupported)
}
