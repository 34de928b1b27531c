//go:build !linux

package hwprobe

import "errors"

// statfs is only implemented for Linux, where the agent runs; elsewhere the
// disk prober records a warning.
func statfs(path string) (diskUsage, error) {
	return diskUsage{}, errors.ErrUnsupported
}
