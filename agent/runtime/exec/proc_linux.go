package exec

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// procStartTicks reads when pid started, in clock ticks since boot
// (field 22 of /proc/PID/stat): with the pid it names one process for
// good, where a pid alone may be reused.
func procStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after it follow the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, os.ErrNotExist // dead, waiting to be reaped
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// cgroupCloneRefused reports whether a failed start is the kernel refusing
// clone3 with CLONE_INTO_CGROUP (missing before 5.3, a smaller argument
// struct before 5.7, or a cgroup that cannot take processes), rather than
// the program failing to start.
func cgroupCloneRefused(err error) bool {
	for _, e := range []error{syscall.ENOSYS, syscall.E2BIG, syscall.EINVAL, syscall.EOPNOTSUPP, syscall.EBUSY} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
