package main

import (
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

// runBPF runs a seccomp program on (arch, nr, arg0) as the kernel would,
// for the instructions seccompProgram uses.
func runBPF(t *testing.T, p []unix.SockFilter, arch, nr, arg0 uint32) uint32 {
	var data [64]byte
	binary.NativeEndian.PutUint32(data[seccompNr:], nr)
	binary.NativeEndian.PutUint32(data[seccompArch:], arch)
	binary.NativeEndian.PutUint64(data[seccompArg0:], uint64(arg0))
	var a uint32
	for pc := 0; pc < len(p); pc++ {
		in := p[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			a = binary.NativeEndian.Uint32(data[in.K:])
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K:
			if a == in.K {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K
		default:
			t.Fatalf("instruction %d: code %#x", pc, in.Code)
		}
	}
	t.Fatal("ran off the end of the program")
	return 0
}

func TestSeccompProgram(t *testing.T) {
	if seccompAllowed == nil {
		t.Skip("no allow-list for this architecture")
	}
	const deny = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	p := seccompProgram(seccompAllowed, deny)
	for _, nr := range seccompAllowed {
		if got := runBPF(t, p, auditArch, nr, 0); got != unix.SECCOMP_RET_ALLOW {
			t.Errorf("syscall %d: %#x, want allowed", nr, got)
		}
	}
	for _, c := range []struct {
		name          string
		arch, nr, arg uint32
		want          uint32
	}{
		{"execve", auditArch, unix.SYS_EXECVE, 0, deny},
		{"openat", auditArch, unix.SYS_OPENAT, 0, deny},
		{"mount", auditArch, unix.SYS_MOUNT, 0, deny},
		{"socket(AF_INET)", auditArch, unix.SYS_SOCKET, unix.AF_INET, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_INET6)", auditArch, unix.SYS_SOCKET, unix.AF_INET6, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_UNIX)", auditArch, unix.SYS_SOCKET, unix.AF_UNIX, deny},
		{"socket(AF_NETLINK)", auditArch, unix.SYS_SOCKET, unix.AF_NETLINK, deny},
		{"another ABI", auditArch ^ 1, unix.SYS_READ, 0, unix.SECCOMP_RET_KILL_PROCESS},
	} {
		if got := runBPF(t, p, c.arch, c.nr, c.arg); got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, got, c.want)
		}
	}
}
