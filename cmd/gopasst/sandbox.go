package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The sandbox, as passt's (see docs/security.md). gopasst runs as two
// processes: the helper (helper.go), which is the process that was
// started, and the engine, which it re-executes in new user, mount, IPC
// and UTS namespaces (keeping the host's network namespace) as an
// unprivileged user. The engine does its set-up there, with its host
// sockets bound through the helper, then enters the sandbox for good:
// an empty read-only root, no capabilities, no_new_privs, not dumpable,
// and a seccomp allow-list (seccomp_*.go). A Go process cannot unshare
// a user namespace once its runtime has threads, hence the re-execution.

// identity is a user to run as.
type identity struct{ uid, gid int }

// runAsIdentity is who the engine (and, once set-up is over, the helper)
// runs as: --runas, else nobody when started as root, else ourselves.
func runAsIdentity(runas string) (identity, error) {
	self := identity{os.Geteuid(), os.Getegid()}
	if runas == "" {
		// Root in a user namespace of its own (podman's, for pasta) stays
		// itself, as passt does: nobody is often not mapped there.
		if self.uid != 0 || !initUserNamespace() {
			return self, nil
		}
		runas = "nobody"
	}
	id, err := lookupIdentity(runas)
	if err != nil {
		return identity{}, fmt.Errorf("--runas %s: %v", runas, err)
	}
	if id.uid == 0 || id.gid == 0 {
		// Root would undo the sandbox, and the helper's serving thread.
		return identity{}, fmt.Errorf("--runas %s: gopasst does not run as root", runas)
	}
	if self.uid != 0 && id != self {
		return identity{}, fmt.Errorf("--runas %s: only root can change user", runas)
	}
	return id, nil
}

// initUserNamespace tells whether we run in the initial user namespace,
// whose uid_map maps every ID to itself.
func initUserNamespace() bool {
	b, err := os.ReadFile("/proc/self/uid_map")
	return err == nil && strings.Join(strings.Fields(string(b)), " ") == "0 0 4294967295"
}

// lookupIdentity parses UID[:GID], where either may be a name; without a
// group, the user's own. nobody is 65534 where /etc/passwd lacks it.
func lookupIdentity(s string) (identity, error) {
	name, group, hasGroup := strings.Cut(s, ":")
	var id identity
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		id = identity{n, n}
		if u, err := user.LookupId(name); err == nil {
			id.gid, _ = strconv.Atoi(u.Gid)
		}
	} else if u, err := user.Lookup(name); err == nil {
		id.uid, _ = strconv.Atoi(u.Uid)
		id.gid, _ = strconv.Atoi(u.Gid)
	} else if name == "nobody" {
		id = identity{65534, 65534}
	} else {
		return identity{}, err
	}
	if hasGroup {
		if n, err := strconv.Atoi(group); err == nil && n >= 0 {
			id.gid = n
		} else if g, err := user.LookupGroup(group); err == nil {
			id.gid, _ = strconv.Atoi(g.Gid)
		} else {
			return identity{}, err
		}
	}
	return id, nil
}

// sandboxAttr is how the engine is started: in new user, mount, IPC and
// UTS namespaces where it is root, which outside is id and, when we are
// root, has no supplementary groups. With isolate false, where user
// namespaces are not allowed, the engine only runs as id.
func sandboxAttr(id identity, isolate bool) *syscall.SysProcAttr {
	// Root in a user namespace of its own keeps its groups: setgroups is
	// often denied there (unshare -r, podman).
	root := os.Geteuid() == 0 && initUserNamespace()
	// Signals reach the engine through the helper, not from the terminal.
	attr := &syscall.SysProcAttr{Pdeathsig: unix.SIGTERM, Setpgid: true}
	if !isolate {
		if root {
			attr.Credential = &syscall.Credential{Uid: uint32(id.uid), Gid: uint32(id.gid), Groups: []uint32{}}
		}
		return attr
	}
	attr.Cloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS
	attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: id.uid, Size: 1}}
	attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: id.gid, Size: 1}}
	if root {
		// Become id (root in the namespace) and drop root's groups.
		attr.GidMappingsEnableSetgroups = true
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
	}
	return attr
}

// dropThreadPrivileges makes the calling thread id for good, with no
// capabilities: the helper serves the engine from such a thread (locked
// to its goroutine), so what it does for the engine, it does as the
// engine's user. Raw system calls change this thread alone, where Go's
// syscall.Setuid would change them all: the helper's other threads keep
// the rights to remove the files gopasst made as root, at exit. Threads
// the runtime creates later are cloned from its template thread, never
// from a locked one.
func dropThreadPrivileges(id identity) error {
	if os.Geteuid() != 0 || id == (identity{os.Geteuid(), os.Getegid()}) {
		return nil
	}
	for _, c := range []struct {
		what string
		nr   uintptr
		id   int
	}{{"setgroups", unix.SYS_SETGROUPS, 0}, {"setresgid", unix.SYS_SETRESGID, id.gid}, {"setresuid", unix.SYS_SETRESUID, id.uid}} {
		a := uintptr(c.id)
		if _, _, e := unix.RawSyscall(c.nr, a, a, a); e != 0 {
			return fmt.Errorf("%s: %w", c.what, e)
		}
	}
	return nil
}

// enterSandbox is the engine's last step before it serves: everything it
// will use is open. isolated says it runs in namespaces of its own.
func enterSandbox(isolated bool) error {
	lastCap, err := readInt("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		lastCap = 63
	}
	if isolated {
		if err := emptyRoot(); err != nil {
			return err
		}
	}
	// Capabilities and no_new_privs belong to each thread, and the Go
	// runtime has several by now.
	for c := 0; c <= lastCap && isolated; c++ {
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); e != 0 {
			return allThreadsError("dropping the capability bounding set", e)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); e != 0 {
		return allThreadsError("dropping capabilities", e)
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		return allThreadsError("no_new_privs", e)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("not dumpable: %w", err)
	}
	return installSeccomp()
}

func allThreadsError(what string, e syscall.Errno) error {
	if e == unix.ENOTSUP {
		return fmt.Errorf("%s: this gopasst was built with cgo; the sandbox needs CGO_ENABLED=0 (make build does that)", what)
	}
	return fmt.Errorf("%s: %w", what, e)
}

// emptyRoot makes an empty, read-only tmpfs the root of our mount
// namespace and lets go of the host's file system, as passt does.
func emptyRoot() error {
	const dir = "/tmp" // any directory: the mount is only seen here
	steps := []struct {
		what string
		err  func() error
	}{
		{"private mounts", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"tmpfs", func() error {
			return unix.Mount("gopasst", dir, "tmpfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_NOSUID, "nr_inodes=2")
		}},
		{"chdir", func() error { return unix.Chdir(dir) }},
		{"pivot_root", pivotHere},
		{"chdir", func() error { return unix.Chdir("/") }},
	}
	for _, s := range steps {
		if err := s.err(); err != nil {
			return fmt.Errorf("sandbox: %s: %w", s.what, err)
		}
	}
	return nil
}

// pivotHere makes the working directory, a mount point, the root. An
// initramfs (the root of a small VM) cannot be pivoted away from; there,
// as switch_root does, the new root is moved over it and chrooted into:
// with no capabilities and no chroot call left, there is no way back.
func pivotHere() error {
	err := unix.PivotRoot(".", ".")
	if err == nil {
		return unix.Unmount(".", unix.MNT_DETACH)
	}
	if err != unix.EINVAL {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return err
	}
	return unix.Chroot(".")
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// isolationRefused tells whether starting in new namespaces failed because
// the host does not allow unprivileged user namespaces (a sysctl, an LSM,
// a container), in which case the engine runs without them.
func isolationRefused(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EUSERS)
}
