package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/user"
	"runtime"
	"strconv"
	"strings"
	"syscall"

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

// sandboxAttr is how the engine is started: in new user, mount, IPC,
// UTS and PID namespaces where it is root, which outside is id and, when we are
// root, has no supplementary groups. With isolate false, where user
// namespaces are not allowed, the engine only runs as id.
func sandboxAttr(id identity, isolate bool) *syscall.SysProcAttr {
	// Root in a user namespace of its own keeps its groups: setgroups is
	// often denied there (unshare -r, podman).
	root := os.Geteuid() == 0 && initUserNamespace()
	// A session of its own, with no controlling terminal: signals reach
	// the engine through the helper, and TIOCSTI has no terminal to
	// queue input on.
	attr := &syscall.SysProcAttr{Pdeathsig: unix.SIGTERM, Setsid: true}
	if !isolate {
		if root {
			attr.Credential = &syscall.Credential{Uid: uint32(id.uid), Gid: uint32(id.gid), Groups: []uint32{}}
		}
		return attr
	}
	// A PID namespace of its own: the engine sees no other process to
	// signal or to change the limits of (seccomp also checks both).
	attr.Cloneflags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWPID
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

// The engine starts in three steps, so that no thread of the engine
// that serves ever holds a capability, whether the Go runtime can change
// every thread at once (syscall.AllThreadsSyscall, without cgo) or not
// (with cgo, as a plain go build makes it):
//   - the process the helper starts, root in its namespaces, starts the
//     keeper (a copy of itself that keeps root there until the engine is
//     set up), then, on one thread, empties its bounding set, sets
//     no_new_privs and SECBIT_NOROOT (exec no longer makes root
//     privileged) and execs itself: the new image starts with that one
//     thread, and every thread the runtime makes inherits from it;
//   - that image, the engine, sets up with the host's file system, then
//     asks the keeper to empty the root: pivot_root moves the root of
//     every process in the mount namespace, the engine's too;
//   - the keeper exits, and the engine enters seccomp on every thread
//     (SECCOMP_FILTER_FLAG_TSYNC).

// Steps of the engine's start (engineEnv.Step).
const (
	stepConfine = ""       // as the helper started it: confineExec
	stepServe   = "serve"  // the engine, with no capabilities
	stepKeeper  = "keeper" // the keeper: keepRoot
)

// Securebits (linux/securebits.h): exec as root grants nothing, and
// nothing raises an ambient capability, for good.
const (
	secbitNoroot                  = 1 << 0
	secbitNorootLocked            = 1 << 1
	secbitNoCapAmbientRaise       = 1 << 6
	secbitNoCapAmbientRaiseLocked = 1 << 7
)

// confineExec is the first step: it never returns but with an error.
func confineExec(env engineEnv) error {
	runtime.LockOSThread() // for good: the exec keeps only this thread
	// The helper's Pdeathsig belongs to the thread it started, which need
	// not be this one: the engine must still end with the helper.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0); err != nil {
		return fmt.Errorf("parent death signal: %w", err)
	}
	if env.Isolated {
		// No user namespace can be made in ours: what the engine could
		// reach through one (raw sockets, x_tables) stays out of reach
		// even if the filter let a clone through.
		if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0"), 0); err != nil {
			return fmt.Errorf("sandbox: max_user_namespaces: %w", err)
		}
		if err := makePivotable(); err != nil {
			return err
		}
		pid, fd, err := startKeeper(env)
		if err != nil {
			return err
		}
		env.KeeperPid, env.Keeper = pid, fd
		lastCap, err := readInt("/proc/sys/kernel/cap_last_cap")
		if err != nil {
			lastCap = 63
		}
		for c := 0; c <= lastCap; c++ {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("dropping the capability bounding set: %w", err)
			}
		}
		bits := secbitNoroot | secbitNorootLocked | secbitNoCapAmbientRaise | secbitNoCapAmbientRaiseLocked
		if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits), 0, 0, 0); err != nil {
			return fmt.Errorf("securebits: %w", err)
		}
	}
	// Without a user namespace too: what an ambient or inheritable
	// capability would carry through the exec.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	env.Step = stepServe
	return syscall.Exec("/proc/self/exe", os.Args, engineEnviron(env))
}

// sandboxProbe is set only in the test build (sandbox_probe.go, build
// tag sandboxtest): once the engine serves, it tries what the sandbox
// must refuse and logs what happened.
var sandboxProbe func(log *log.Logger)

// makePivotable lets the keeper pivot_root away from our root even where
// that is not a mount with a parent: an initramfs (rootfs, the root of a
// small VM), or a chroot. The host's tree is bound over it and made our
// root, as switch_root does, before the engine and the keeper inherit it.
func makePivotable() error {
	const dir = "/tmp" // any directory: the mount is only seen here
	return runSteps([]step{
		{"private mounts", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }},
		{"binding /", func() error { return unix.Mount("/", dir, "", unix.MS_BIND|unix.MS_REC, "") }},
		{"chdir", func() error { return unix.Chdir(dir) }},
		{"moving /", func() error { return unix.Mount(".", "/", "", unix.MS_MOVE, "") }},
		{"chroot", func() error { return unix.Chroot(".") }},
		{"chdir", func() error { return unix.Chdir("/") }},
	})
}

// startKeeper starts the keeper with one end of a socket pair, and
// returns its pid and the other end, open across the exec.
func startKeeper(env engineEnv) (int, int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, -1, fmt.Errorf("keeper: %w", err)
	}
	keeper := os.NewFile(uintptr(pair[1]), "keeper")
	defer keeper.Close()
	// What the engine was given stays out of the keeper.
	unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	env.Step = stepKeeper
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = engineEnviron(env)
	cmd.Stderr = os.Stderr
	cmd.ExtraFiles = []*os.File{keeper}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: unix.SIGKILL}
	err = cmd.Start()
	for _, fd := range []int{env.Link, env.Helper, env.Log, env.Pcap, env.Control, env.Repair, pair[0]} {
		if fd >= 0 {
			if _, e := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); e != nil && err == nil {
				err = e
			}
		}
	}
	if err != nil {
		return 0, -1, fmt.Errorf("keeper: %w", err)
	}
	return cmd.Process.Pid, pair[0], nil
}

// keepRoot is the keeper: on the engine's word, it empties the root of
// the mount namespace, answers with the error if any, and exits.
func keepRoot() int {
	const fd = 3
	var b [1]byte
	if n, err := unix.Read(fd, b[:]); n != 1 || err != nil {
		return 1 // the engine failed in set-up
	}
	msg := ""
	if err := emptyRoot(); err != nil {
		msg = err.Error()
	}
	unix.Write(fd, append([]byte{'.'}, msg...))
	return 0
}

// enterSandbox is the engine's last step before it serves: everything it
// will use is open. env says whether it runs in namespaces of its own,
// with a keeper.
func enterSandbox(env engineEnv) error {
	if env.Isolated {
		if err := askKeeper(env.Keeper, env.KeeperPid); err != nil {
			return err
		}
	}
	// confineExec made sure of this; a mistake must not go unnoticed.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil || data[0].Permitted|data[1].Permitted != 0 {
		return fmt.Errorf("sandbox: the engine holds capabilities (%v)", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("not dumpable: %w", err)
	}
	// no_new_privs is already on every thread; TSYNC would carry it.
	return installSeccomp()
}

// askKeeper has the keeper empty our root, and reaps it.
func askKeeper(fd, pid int) error {
	defer unix.Close(fd)
	buf := make([]byte, 512)
	_, err := unix.Write(fd, []byte{'.'})
	n := 0
	if err == nil {
		n, err = unix.Read(fd, buf)
	}
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, 0, nil)
	switch {
	case err != nil:
		return fmt.Errorf("sandbox: keeper: %w", err)
	case n == 0:
		return fmt.Errorf("sandbox: the keeper exited: %v", ws)
	case n > 1:
		return fmt.Errorf("%s", buf[1:n])
	}
	return nil
}

// emptyRoot makes an empty, read-only tmpfs the root of our mount
// namespace and lets go of the host's file system, as passt does.
// pivot_root moves the root and working directory of every process in
// the namespace that had the old ones: the engine's, from the keeper.
func emptyRoot() error {
	const dir = "/tmp" // any directory: the mount is only seen here
	return runSteps([]step{
		{"tmpfs", func() error {
			return unix.Mount("gopasst", dir, "tmpfs", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_NOSUID, "nr_inodes=2")
		}},
		{"chdir", func() error { return unix.Chdir(dir) }},
		{"pivot_root", func() error { return unix.PivotRoot(".", ".") }},
		{"unmounting the host's tree", func() error { return unix.Unmount(".", unix.MNT_DETACH) }},
		{"chdir", func() error { return unix.Chdir("/") }},
	})
}

// step is one step of the sandbox's set-up.
type step struct {
	what string
	err  func() error
}

// runSteps runs set-up steps in order, up to the first that fails.
func runSteps(steps []step) error {
	for _, s := range steps {
		if err := s.err(); err != nil {
			return fmt.Errorf("sandbox: %s: %w", s.what, err)
		}
	}
	return nil
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
