//go:build amd64 || arm64

package main

import "golang.org/x/sys/unix"

// seccompAllowed: the engine's and the Go runtime's system calls, on the
// architectures that have a list (see seccomp.go), the busiest first;
// seccompArchOnly adds each one's own.
var seccompAllowed = append([]uint32{
	// The data path.
	unix.SYS_EPOLL_PWAIT, unix.SYS_EPOLL_CTL,
	unix.SYS_READ, unix.SYS_WRITE, unix.SYS_READV, unix.SYS_WRITEV,
	unix.SYS_RECVFROM, unix.SYS_SENDTO, unix.SYS_RECVMSG, unix.SYS_SENDMSG,
	unix.SYS_RECVMMSG, unix.SYS_SENDMMSG,
	unix.SYS_CONNECT, unix.SYS_BIND, unix.SYS_ACCEPT4, unix.SYS_SHUTDOWN, unix.SYS_CLOSE,
	unix.SYS_SETSOCKOPT, unix.SYS_GETSOCKOPT, unix.SYS_GETSOCKNAME, unix.SYS_GETPEERNAME,
	unix.SYS_FCNTL, unix.SYS_GETRANDOM,
	// pasta's loopback path: socket to socket through a pipe; a stream
	// link lends its queue's pages to a pipe (qemusock's zeroCopy).
	unix.SYS_SPLICE, unix.SYS_PIPE2, unix.SYS_VMSPLICE,
	// The log file and counting descriptors (fdRoom).
	unix.SYS_PWRITE64, unix.SYS_FTRUNCATE, unix.SYS_LSEEK, unix.SYS_GETDENTS64,
	// vhost-user: a memory region's file must hold the region; the
	// device state's pipe is waited on, within bounds; the front-end's
	// descriptors are read and written without waiting (qemusock).
	unix.SYS_FSTAT, unix.SYS_PPOLL, unix.SYS_PREADV2, unix.SYS_PWRITEV2,
}, append(seccompRuntime, seccompArchOnly...)...)

// seccompRuntime: the Go runtime's calls, for the engine's list and gopasst
// repair's.
var seccompRuntime = []uint32{
	unix.SYS_FUTEX, unix.SYS_NANOSLEEP, unix.SYS_CLOCK_GETTIME, unix.SYS_SCHED_YIELD,
	unix.SYS_MUNMAP, unix.SYS_MADVISE,
	unix.SYS_GETTID, unix.SYS_GETPID,
	unix.SYS_RT_SIGACTION, unix.SYS_RT_SIGPROCMASK, unix.SYS_RT_SIGRETURN, unix.SYS_SIGALTSTACK,
	unix.SYS_SCHED_GETAFFINITY, unix.SYS_PREAD64, unix.SYS_EXIT, unix.SYS_EXIT_GROUP,
	// glibc's new threads (a cgo build), which it aborts if rseq fails.
	unix.SYS_RSEQ, unix.SYS_SET_ROBUST_LIST,
}

// seccompPoller: the Go runtime's network poller, which the engine uses
// anyway, and which the runtime's timers wait in (a helper's own sleeps,
// the GC's scavenger): the wait, and the read and write of the eventfd
// that wakes it. installFilter starts the poller before the filter.
var seccompPoller = []uint32{unix.SYS_EPOLL_PWAIT, unix.SYS_READ, unix.SYS_WRITE}

// seccompRepairAllowed: gopasst repair's list once it is connected: the
// repair loop (tcprepair.Serve: receive sockets, set TCP_REPAIR, close
// them, answer), the Go runtime's calls and its poller's.
var seccompRepairAllowed = append(append([]uint32{
	unix.SYS_RECVMSG, unix.SYS_SETSOCKOPT, unix.SYS_CLOSE,
}, seccompRuntime...), seccompPoller...)

// seccompAgentAllowed: the pasta agent's list once it serves: its request
// loop (receive a request, make a socket bound or connecting in the
// namespace, hand over a copy of a table opened before, answer, close)
// and the Go runtime's calls and its poller's.
var seccompAgentAllowed = append(append([]uint32{
	unix.SYS_RECVMSG, unix.SYS_SENDMSG, unix.SYS_CLOSE,
	unix.SYS_SETSOCKOPT, unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_CONNECT, unix.SYS_FCNTL,
}, seccompRuntime...), seccompPoller...)

// seccompKilled: calls that only an attacker makes in the engine, which
// never execs, debugs, mounts, changes namespace or loads anything into
// the kernel once it serves. openat is not among them, only refused: the
// Go library opens files lazily (the time zone, /etc/hosts), and the
// empty root has nothing to open anyway.
var seccompKilled = []uint32{
	unix.SYS_EXECVE, unix.SYS_EXECVEAT,
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV, unix.SYS_PIDFD_GETFD, unix.SYS_KCMP,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT, unix.SYS_CHROOT, unix.SYS_UNSHARE, unix.SYS_SETNS,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK,
	unix.SYS_MOUNT_SETATTR,
	unix.SYS_BPF, unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY, unix.SYS_USERFAULTFD,
	unix.SYS_PERF_EVENT_OPEN, unix.SYS_IO_URING_SETUP, unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE,
	unix.SYS_DELETE_MODULE, unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD,
}

// cloneThread is how the Go runtime makes a thread (runtime/os_linux.go).
const cloneThread = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
	unix.CLONE_SYSVSEM | unix.CLONE_THREAD

// seccompChecked: the calls whose arguments are checked, and those with
// an answer of their own.
func seccompChecked(pid int) []seccompRule {
	return append([]seccompRule{
		seccompSocket(),
		// ioctl only to read a socket's queues (fdRoom, TCP repair): no
		// terminal request (TIOCSTI), no device's. Refused, not fatal: a
		// library may ask a harmless one on a path nobody foresaw.
		{nr: unix.SYS_IOCTL, action: seccompDeny(), check: &argCheck{arg: 1, values: []uint32{unix.SIOCINQ, unix.SIOCOUTQ, unix.SIOCOUTQNSD}}},
	}, seccompRuntimeChecked(pid)...)
}

// seccompAgentChecked: the pasta agent's checked calls: the engine's
// socket rule and the runtime's.
func seccompAgentChecked(pid int) []seccompRule {
	return append([]seccompRule{seccompSocket()}, seccompRuntimeChecked(pid)...)
}

// seccompSocket: the engine and the pasta agent open only IPv4 and IPv6
// sockets; unix sockets go through the helper. A unix socket fails
// gently: log/syslog redials /dev/log when a write fails (the journal
// restarted).
func seccompSocket() seccompRule {
	return seccompRule{nr: unix.SYS_SOCKET, action: unix.SECCOMP_RET_KILL_PROCESS,
		check: &argCheck{arg: 0, values: []uint32{unix.AF_INET, unix.AF_INET6}, denied: []uint32{unix.AF_UNIX}}}
}

// seccompRuntimeChecked: the Go runtime's (and glibc's) calls whose
// arguments are checked, for the engine and gopasst repair.
func seccompRuntimeChecked(pid int) []seccompRule {
	kill := uint32(unix.SECCOMP_RET_KILL_PROCESS)
	return []seccompRule{
		// Memory, never executable: the Go runtime and glibc's threads
		// map only data once the engine serves (the binary and the vDSO
		// were mapped at exec).
		{nr: unix.SYS_MMAP, action: kill, check: &argCheck{arg: 2, mask: unix.PROT_EXEC}},
		{nr: unix.SYS_MPROTECT, action: kill, check: &argCheck{arg: 2, mask: unix.PROT_EXEC}},
		// The runtime signals its own threads (preemption), and raises
		// its descriptor limit: no other process's.
		{nr: unix.SYS_TGKILL, action: kill, check: &argCheck{arg: 0, values: []uint32{uint32(pid)}}},
		{nr: unix.SYS_PRLIMIT64, action: kill, check: &argCheck{arg: 0, values: []uint32{0}}},
		// New threads, never processes or namespaces: the flags Go's
		// runtime uses (with CLONE_SETTLS on amd64) and glibc's
		// pthread_create (a cgo build).
		{nr: unix.SYS_CLONE, action: kill, check: &argCheck{arg: 0, wide: true, values: []uint32{
			cloneThread, cloneThread | unix.CLONE_SETTLS,
			cloneThread | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID | unix.CLONE_CHILD_CLEARTID,
		}}},
		// glibc's pthread_create (a cgo build) tries clone3 first, whose
		// flags a filter cannot read, and falls back to clone on ENOSYS.
		{nr: unix.SYS_CLONE3, action: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
	}
}
