//go:build !linux

package artifact

import (
	"errors"
	"fmt"
)

// exchange would swap the names a and b in one step; only Linux can, so
// elsewhere the caller falls back to two renames.
func exchange(a, b string) error {
	return fmt.Errorf("exchange %s and %s: %w", a, b, errors.ErrUnsupported)
}
