package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The engine's seccomp filter: an allow-list of what it and the Go runtime
// call once they serve (seccomp_linux.go), built as classic BPF by hand.
// Anything else fails with EPERM, and the kernel logs it (audit type 1326,
// in dmesg) with the syscall's number: a call nobody foresaw fails like a
// refused one, which gopasst reports and survives, where passt's
// kill-on-violation turns the same mistake into an outage. A system call
// for the wrong architecture (x32, i386 on amd64) kills the process.
// GOPASST_SECCOMP=log allows and logs instead: how the list was made.
// Other architectures have no list yet (seccomp_other.go).

// seccompSocket is the one call whose arguments are checked: the engine
// opens only IPv4 and IPv6 sockets; unix sockets go through the helper.
var seccompSocketFamilies = []uint32{unix.AF_INET, unix.AF_INET6}

// BPF offsets into struct seccomp_data.
const (
	seccompNr   = 0
	seccompArch = 4
	seccompArg0 = 16
)

func seccompProgram(allowed []uint32, deny uint32) []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jeq := func(k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: k}
	}
	ld := func(off uint32) unix.SockFilter { return stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, off) }
	ret := func(k uint32) unix.SockFilter { return stmt(unix.BPF_RET|unix.BPF_K, k) }

	p := []unix.SockFilter{
		ld(seccompArch),
		jeq(auditArch, 1, 0),
		ret(unix.SECCOMP_RET_KILL_PROCESS),
		ld(seccompNr),
	}
	// Each allowed number jumps to the ALLOW at the end; socket jumps to
	// the check of its family after that.
	n := len(allowed)
	for i, nr := range allowed {
		p = append(p, jeq(nr, uint8(n-i+1), 0))
	}
	p = append(p, jeq(unix.SYS_SOCKET, 2, 0), ret(deny), ret(unix.SECCOMP_RET_ALLOW))
	arg0 := uint32(seccompArg0)
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 { // big-endian: the low half is second
		arg0 += 4
	}
	p = append(p, ld(arg0))
	for i, fam := range seccompSocketFamilies {
		p = append(p, jeq(fam, uint8(len(seccompSocketFamilies)-i), 0))
	}
	return append(p, ret(deny), ret(unix.SECCOMP_RET_ALLOW))
}

func installSeccomp() error {
	if seccompAllowed == nil {
		fmt.Fprintf(os.Stderr, "gopasst: warning: no seccomp allow-list for %s; running without seccomp\n", runtime.GOARCH)
		return nil
	}
	deny := uint32(unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM))
	if os.Getenv("GOPASST_SECCOMP") == "log" {
		deny = unix.SECCOMP_RET_LOG
	}
	prog := seccompProgram(seccompAllowed, deny)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	r, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER,
		unix.SECCOMP_FILTER_FLAG_TSYNC|unix.SECCOMP_FILTER_FLAG_LOG, uintptr(unsafe.Pointer(&fprog)))
	switch {
	case e != 0:
		return fmt.Errorf("seccomp: %w", e)
	case r != 0: // TSYNC: the thread that could not take the filter
		return fmt.Errorf("seccomp: thread %d could not take the filter", r)
	}
	return nil
}
