//go:build unix && !linux

package exec

import (
	"errors"
	"syscall"
)

// sysProcAttr makes the child the leader of a new process group; cgroups
// are Linux only.
func sysProcAttr(*cgroup) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// reapBeforeGroupKill: without waitid(WNOWAIT) the leader is reaped first
// and its group killed after, a narrow window in which the group's id
// could be reused.
const reapBeforeGroupKill = true

func waitExited(int) {}

// procStartTicks is unknown here: leftovers are not identified.
func procStartTicks(int) (uint64, error) { return 0, errors.ErrUnsupported }

func cgroupCloneRefused(error) bool { return false }
