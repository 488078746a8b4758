package main

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_X86_64

// seccompArchOnly: what x86-64 has beside the common list (seccomp_linux.go).
var seccompArchOnly = []uint32{unix.SYS_EPOLL_WAIT}
