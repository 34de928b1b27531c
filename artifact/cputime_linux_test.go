package artifact

import (
	"syscall"
	"time"
)

// threadCPU returns the CPU time the calling thread has used, which, unlike
// the wall clock, leaves out the time it waited for a core on a busy
// machine. The caller must hold its thread (runtime.LockOSThread).
func threadCPU() time.Duration {
	const rusageThread = 1 // RUSAGE_THREAD, Linux only
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
