package main

import "golang.org/x/sys/unix"

const auditArch = unix.AUDIT_ARCH_AARCH64

// seccompArchOnly: arm64 has nothing beside the common list (seccomp_linux.go).
var seccompArchOnly []uint32
