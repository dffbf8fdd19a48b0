//go:build !linux

package e2e

import "os/exec"

// killWithParent is Linux-only (Pdeathsig); elsewhere TestMain's deferred
// stop is all there is.
func killWithParent(*exec.Cmd) {}
