package e2e

import (
	"os/exec"
	"syscall"
)

// killWithParent makes the kernel kill Caddy when the test binary dies, so
// that a panicking test leaves no server behind.
func killWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
