package exec

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// sysProcAttr makes the child the leader of a new process group, so that
// signals reach the model server's own children too, and starts it
// inside cg when there is one (CLONE_INTO_CGROUP: it never runs outside).
func sysProcAttr(cg *cgroup) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if cg != nil {
		a.UseCgroupFD = true
		a.CgroupFD = cg.fd
	}
	return a
}

// reapBeforeGroupKill is false: waitExited waits without reaping.
const reapBeforeGroupKill = false

// waitExited blocks until pid has exited, leaving it unreaped (WNOWAIT),
// so that its process group id stays reserved while the rest of the group
// is killed.
func waitExited(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
