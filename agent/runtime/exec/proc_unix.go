//go:build unix

package exec

import (
	"errors"
	"syscall"
)

// killGroup sends sig to the process group led by pid. A group that is
// already gone is not an error.
func killGroup(pid int, sig syscall.Signal) {
	if err := syscall.Kill(-pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, sig)
	}
}
