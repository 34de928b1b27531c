package process

import (
	"os/exec"
	"runtime"
	"syscall"
)

// On Linux every server is started with PR_SET_PDEATHSIG=SIGKILL, so the
// kernel kills it when the test binary dies for any reason (a panic that
// skips cleanups, -timeout, SIGKILL of go test). The signal fires when the
// thread that forked the child exits, not the whole process, so all
// children are forked from one goroutine locked to its OS thread for the
// life of the process: that thread never exits before the process does.

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var spawnCh = make(chan spawnReq)

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread must outlive the children
		for req := range spawnCh {
			req.done <- req.cmd.Start()
		}
	}()
}

// startCmd starts cmd so that it dies with the test binary.
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	done := make(chan error, 1)
	spawnCh <- spawnReq{cmd: cmd, done: done}
	return <-done
}
