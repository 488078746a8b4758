//go:build sandboxtest

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// seccompDeny, in the test build only, takes GOPASST_SECCOMP=log: a call
// off the list is allowed and logged, which is how the list is made. The
// release build has no such switch.
func seccompDeny() uint32 {
	if os.Getenv("GOPASST_SECCOMP") == "log" {
		return unix.SECCOMP_RET_LOG
	}
	return unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
}
