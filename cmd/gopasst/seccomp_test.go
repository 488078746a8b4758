//go:build amd64 || arm64

// The filters are tested where they are built in full (seccomp_linux.go).

package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// runBPF runs a seccomp program on a call as the kernel would, for the
// instructions seccompProgram uses.
func runBPF(t *testing.T, p []unix.SockFilter, arch, nr uint32, args ...uint64) uint32 {
	var data [64]byte
	binary.NativeEndian.PutUint32(data[seccompNr:], nr)
	binary.NativeEndian.PutUint32(data[seccompArch:], arch)
	for i, a := range args {
		binary.NativeEndian.PutUint64(data[seccompArgs+8*i:], a)
	}
	var a uint32
	for pc := 0; pc < len(p); pc++ {
		in := p[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			a = binary.NativeEndian.Uint32(data[in.K:])
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K:
			if (in.Code&unix.BPF_JSET != 0 && a&in.K != 0) || (in.Code&unix.BPF_JSET == 0 && a == in.K) {
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

// seccompCase is a call and what the filter must answer.
type seccompCase struct {
	name string
	nr   uint32
	args []uint64
	want uint32
}

func checkSeccomp(t *testing.T, p []unix.SockFilter, cases []seccompCase) {
	t.Helper()
	for _, c := range cases {
		if got := runBPF(t, p, auditArch, c.nr, c.args...); got != c.want {
			t.Errorf("%s: %#x, want %#x", c.name, got, c.want)
		}
	}
}

func TestSeccompProgram(t *testing.T) {
	if seccompAllowed == nil {
		t.Skip("no allow-list for this architecture")
	}
	const pid = 1
	deny, kill := seccompDeny(), uint32(unix.SECCOMP_RET_KILL_PROCESS)
	p := seccompProgram(seccompRules(seccompAllowed, seccompChecked(pid)), deny)
	if len(p) > 0xffff {
		t.Fatalf("%d instructions", len(p))
	}
	for _, nr := range seccompAllowed {
		if got := runBPF(t, p, auditArch, nr); got != unix.SECCOMP_RET_ALLOW {
			t.Errorf("syscall %d: %#x, want allowed", nr, got)
		}
	}
	for _, nr := range seccompKilled {
		if got := runBPF(t, p, auditArch, nr); got != kill {
			t.Errorf("syscall %d: %#x, want the process killed", nr, got)
		}
	}
	checkSeccomp(t, p, []seccompCase{
		{"execve", unix.SYS_EXECVE, nil, kill},
		{"openat", unix.SYS_OPENAT, nil, deny},
		{"mount", unix.SYS_MOUNT, nil, kill},
		{"kill", unix.SYS_KILL, []uint64{1, 9}, deny},
		{"socket(AF_INET)", unix.SYS_SOCKET, []uint64{unix.AF_INET}, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_INET6)", unix.SYS_SOCKET, []uint64{unix.AF_INET6}, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_UNIX)", unix.SYS_SOCKET, []uint64{unix.AF_UNIX}, deny},
		{"socket(AF_NETLINK)", unix.SYS_SOCKET, []uint64{unix.AF_NETLINK}, kill},
		{"socket(AF_PACKET)", unix.SYS_SOCKET, []uint64{unix.AF_PACKET}, kill},
		{"clone3", unix.SYS_CLONE3, nil, unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{"clone(thread)", unix.SYS_CLONE, []uint64{cloneThread | unix.CLONE_SETTLS}, unix.SECCOMP_RET_ALLOW},
		{"clone(glibc thread)", unix.SYS_CLONE, []uint64{cloneThread | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID}, unix.SECCOMP_RET_ALLOW},
		{"clone(fork)", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, kill},
		{"clone(NEWUSER)", unix.SYS_CLONE, []uint64{cloneThread | unix.CLONE_NEWUSER}, kill},
		{"clone(high bits)", unix.SYS_CLONE, []uint64{1<<32 | cloneThread}, kill},
		{"ioctl(SIOCOUTQ)", unix.SYS_IOCTL, []uint64{3, unix.SIOCOUTQ}, unix.SECCOMP_RET_ALLOW},
		{"ioctl(TIOCSTI)", unix.SYS_IOCTL, []uint64{2, unix.TIOCSTI}, deny},
		{"vmsplice", unix.SYS_VMSPLICE, nil, unix.SECCOMP_RET_ALLOW},
		{"mmap(RW)", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE}, unix.SECCOMP_RET_ALLOW},
		{"mmap(RWX)", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC}, kill},
		{"mprotect(R)", unix.SYS_MPROTECT, []uint64{0, 4096, unix.PROT_READ}, unix.SECCOMP_RET_ALLOW},
		{"mprotect(X)", unix.SYS_MPROTECT, []uint64{0, 4096, unix.PROT_EXEC}, kill},
		{"tgkill(self)", unix.SYS_TGKILL, []uint64{pid, 7, uint64(unix.SIGURG)}, unix.SECCOMP_RET_ALLOW},
		{"tgkill(other)", unix.SYS_TGKILL, []uint64{pid + 1, pid + 1, uint64(unix.SIGKILL)}, kill},
		{"prlimit64(0)", unix.SYS_PRLIMIT64, []uint64{0, unix.RLIMIT_NOFILE}, unix.SECCOMP_RET_ALLOW},
		{"prlimit64(other)", unix.SYS_PRLIMIT64, []uint64{pid + 1, unix.RLIMIT_NOFILE}, kill},
	})
	if got := runBPF(t, p, auditArch^1, unix.SYS_READ); got != unix.SECCOMP_RET_KILL_PROCESS {
		t.Errorf("another ABI: %#x, want the process killed", got)
	}
}

// TestRepairSeccompProgram: gopasst repair's filter allows the repair
// loop and the runtime, refuses the rest of what the engine may do and
// kills for what the engine's filter kills.
func TestRepairSeccompProgram(t *testing.T) {
	if seccompRepairAllowed == nil {
		t.Skip("no allow-list for this architecture")
	}
	const pid = 1
	deny, kill := seccompDeny(), uint32(unix.SECCOMP_RET_KILL_PROCESS)
	p := seccompProgram(seccompRules(seccompRepairAllowed, seccompRuntimeChecked(pid)), deny)
	checkSeccomp(t, p, []seccompCase{
		{"recvmsg", unix.SYS_RECVMSG, nil, unix.SECCOMP_RET_ALLOW},
		{"setsockopt", unix.SYS_SETSOCKOPT, nil, unix.SECCOMP_RET_ALLOW},
		{"close", unix.SYS_CLOSE, nil, unix.SECCOMP_RET_ALLOW},
		{"write", unix.SYS_WRITE, nil, unix.SECCOMP_RET_ALLOW},
		{"futex", unix.SYS_FUTEX, nil, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_INET)", unix.SYS_SOCKET, []uint64{unix.AF_INET}, deny},
		{"connect", unix.SYS_CONNECT, nil, deny},
		{"sendmsg", unix.SYS_SENDMSG, nil, deny},
		{"ioctl(SIOCOUTQ)", unix.SYS_IOCTL, []uint64{3, unix.SIOCOUTQ}, deny},
		{"openat", unix.SYS_OPENAT, nil, deny},
		{"execve", unix.SYS_EXECVE, nil, kill},
		{"ptrace", unix.SYS_PTRACE, nil, kill},
		{"mmap(RWX)", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC}, kill},
		{"clone(fork)", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, kill},
		{"tgkill(other)", unix.SYS_TGKILL, []uint64{pid + 1, pid + 1, uint64(unix.SIGKILL)}, kill},
	})
}

// TestAgentSeccompProgram: the pasta agent's filter allows its request
// loop and the runtime, IPv4 and IPv6 sockets only, no file opened (its
// tables are open already), and kills for what the engine's filter
// kills, setns and unshare among them.
func TestAgentSeccompProgram(t *testing.T) {
	if seccompAgentAllowed == nil {
		t.Skip("no allow-list for this architecture")
	}
	const pid = 1
	deny, kill := seccompDeny(), uint32(unix.SECCOMP_RET_KILL_PROCESS)
	p := seccompProgram(seccompRules(seccompAgentAllowed, seccompAgentChecked(pid)), deny)
	checkSeccomp(t, p, []seccompCase{
		{"recvmsg", unix.SYS_RECVMSG, nil, unix.SECCOMP_RET_ALLOW},
		{"sendmsg", unix.SYS_SENDMSG, nil, unix.SECCOMP_RET_ALLOW},
		{"bind", unix.SYS_BIND, nil, unix.SECCOMP_RET_ALLOW},
		{"listen", unix.SYS_LISTEN, nil, unix.SECCOMP_RET_ALLOW},
		{"connect", unix.SYS_CONNECT, nil, unix.SECCOMP_RET_ALLOW},
		{"fcntl", unix.SYS_FCNTL, nil, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_INET6)", unix.SYS_SOCKET, []uint64{unix.AF_INET6}, unix.SECCOMP_RET_ALLOW},
		{"socket(AF_UNIX)", unix.SYS_SOCKET, []uint64{unix.AF_UNIX}, deny},
		{"socket(AF_NETLINK)", unix.SYS_SOCKET, []uint64{unix.AF_NETLINK}, kill},
		{"openat", unix.SYS_OPENAT, nil, deny},
		{"write", unix.SYS_WRITE, nil, unix.SECCOMP_RET_ALLOW}, // the runtime's poller's eventfd
		{"ioctl(SIOCOUTQ)", unix.SYS_IOCTL, []uint64{3, unix.SIOCOUTQ}, deny},
		{"setns", unix.SYS_SETNS, nil, kill},
		{"unshare", unix.SYS_UNSHARE, nil, kill},
		{"execve", unix.SYS_EXECVE, nil, kill},
		{"mmap(RWX)", unix.SYS_MMAP, []uint64{0, 4096, unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC}, kill},
		{"clone(fork)", unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}, kill},
		{"tgkill(other)", unix.SYS_TGKILL, []uint64{pid + 1, pid + 1, uint64(unix.SIGKILL)}, kill},
	})
}

// TestSeccompTimers: under gopasst repair's and the pasta agent's
// filters, the Go runtime still sleeps on its timers (the GC's scavenger
// has one, and gopasst repair sleeps while a socket it found does not
// listen yet), which wait in its network poller. Refused the poller's
// epoll_pwait, or the read and write of its eventfd, the runtime threw
// and the helper died. Each filter is taken for good, so in a child,
// which then holds on until its input ends, for its threads to be read:
// every one has the filter and no_new_privs, which installFilter sets.
func TestSeccompTimers(t *testing.T) {
	if which := os.Getenv("GOPASST_TEST_SECCOMP_TIMERS"); which != "" {
		install := map[string]func() error{"repair": installRepairSeccomp, "agent": installAgentSeccomp}[which]
		if err := install(); err != nil {
			os.Exit(2)
		}
		for range 20 {
			done := make(chan bool)
			time.AfterFunc(time.Millisecond, func() { close(done) })
			<-done
			time.Sleep(time.Millisecond)
			runtime.GC()
		}
		unix.Write(1, []byte("installed\n"))
		unix.Read(0, make([]byte, 1))
		os.Exit(0)
	}
	if seccompRepairAllowed == nil {
		t.Skip("no allow-list for this architecture")
	}
	for _, which := range []string{"repair", "agent"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSeccompTimers$")
		cmd.Env = append(os.Environ(), "GOPASST_TEST_SECCOMP_TIMERS="+which)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line == "installed\n" {
			checkThreadsConfined(t, which, cmd.Process.Pid)
		}
		in.Close()
		if err := cmd.Wait(); err != nil || line != "installed\n" {
			t.Errorf("%s's filter: %v, said %q\n%s", which, err, line, stderr.String())
		}
	}
}

// checkThreadsConfined fails the test unless every thread of pid has a
// seccomp filter and no_new_privs.
func checkThreadsConfined(t *testing.T, which string, pid int) {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(st, []byte("\nSeccomp:\t2\n")) || !bytes.Contains(st, []byte("\nNoNewPrivs:\t1\n")) {
			t.Errorf("%s's filter: thread %s lacks the filter or no_new_privs:\n%s", which, task.Name(), st)
		}
	}
}
