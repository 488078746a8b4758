package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// Pasta's command mode ("gopasst ns" is its old name): the command runs
// in new network, mount, UTS, IPC and PID namespaces, and a new user
// namespace when not run as root, so it needs no privilege. The child,
// the PID namespace's init, waits until gopasst has joined its
// namespaces as it would join any process's (pastaServe), and starts the
// command once the engine is ready; its exit status is gopasst's.

const envNSChild = "GOPASST_NS_CHILD" // set in the child: its nsSetup, as JSON

const nsFdSock = 3 // the child's end of the socket gopasst says "go" on

const hostNameMax = 64 // HOST_NAME_MAX: sethostname's limit

// nsSetup is what the child does before it waits.
type nsSetup struct {
	Resolv string // what to mount over /etc/resolv.conf, or "" for the host's
	Login  bool   // the command is $SHELL, started as a login shell
	// Hostname is the namespace's (a UTS namespace of its own), as
	// pasta's: -H, else the host's with "pasta-" before it.
	Hostname string
}

// pastaChildren runs the process gopasst re-executed itself as, if it is
// one of pasta's: the command's child, or the namespace agent.
func pastaChildren() (int, bool) {
	if js := os.Getenv(envNSChild); js != "" {
		return nsChild(js), true
	}
	if os.Getenv(envPastaAgent) != "" {
		return pastaAgent(), true
	}
	return 0, false
}

// pastaCommand runs the command in new namespaces served by the engine
// and returns its exit status.
func pastaCommand(o *pastaOptions, fwds pastaForwards, cfg netSetup, command []string, stderr io.Writer) int {
	setup := nsSetup{Resolv: resolvConfFor(&cfg.Config), Login: o.isShell(), Hostname: o.Hostname}
	if setup.Hostname == "" {
		host, _ := os.Hostname()
		setup.Hostname = "pasta-" + host
		setup.Hostname = setup.Hostname[:min(len(setup.Hostname), hostNameMax)]
	}
	cmd, sock, err := startNSChild(setup, command)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	defer unix.Close(sock)
	pid := cmd.Process.Pid
	t := nsTarget{net: fmt.Sprintf("/proc/%d/ns/net", pid)}
	if os.Geteuid() != 0 {
		t.user = fmt.Sprintf("/proc/%d/ns/user", pid)
	}
	// The terminal's ^C and ^\ reach the command itself (the engine has
	// a process group of its own); a signal aimed at us goes on to the
	// command, and its exit ends the engine.
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r := engineRun{foreground: true, cmdDone: done, signal: func(s os.Signal) {
		if s != unix.SIGINT && s != unix.SIGQUIT {
			cmd.Process.Signal(s)
		}
	}}
	// The command owns the terminal: the engine logs to --log-file, or to
	// stderr only with --debug.
	lo := *o
	lo.Silent = !(o.Debug || o.Trace)
	code := pastaServe(&lo, fwds, cfg, t, &r, stderr, func() { unix.Write(sock, []byte{1}) })
	if code != 0 {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
			return code
		}
	}
	<-done
	return exitStatus(cmd.ProcessState)
}

// resolvConfFor is the resolv.conf the program sees: the resolvers and
// search list a guest would get by DHCP. The host's own may name a
// loopback resolver, which the namespace cannot reach.
func resolvConfFor(cfg *slirp.Config) string {
	var b strings.Builder
	for _, d := range append(append([]netip.Addr{}, cfg.DNS4...), cfg.DNS6...) {
		fmt.Fprintf(&b, "nameserver %v\n", d)
	}
	if b.Len() > 0 && len(cfg.Search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(cfg.Search, " "))
	}
	return b.String()
}

// startNSChild re-executes gopasst in new namespaces, where it waits to
// become the command, and returns it with our end of its socket.
func startNSChild(setup nsSetup, command []string) (*exec.Cmd, int, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, err
	}
	child := os.NewFile(uintptr(pair[1]), "ns")
	defer child.Close()
	self, err := os.Executable()
	if err != nil {
		unix.Close(pair[0])
		return nil, -1, err
	}
	js, _ := json.Marshal(setup)
	cmd := exec.Command(self)
	cmd.Args = command // the child's os.Args: it execs exactly these
	cmd.Env = append(os.Environ(), envNSChild+"="+string(js))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{child}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWNS | unix.CLONE_NEWUTS |
		unix.CLONE_NEWPID | unix.CLONE_NEWIPC}
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		// Root in a user namespace of our own: enough to make a tap and
		// configure it, and nothing outside it.
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}}
	}
	if err := cmd.Start(); err != nil {
		unix.Close(pair[0])
		return nil, -1, fmt.Errorf("new namespaces: %w", err)
	}
	// The child's word that its mounts are done.
	if n, err := unix.Read(pair[0], make([]byte, 1)); n != 1 {
		unix.Close(pair[0])
		cmd.Wait()
		return nil, -1, fmt.Errorf("setting up the namespace failed (%v)", err)
	}
	return cmd, pair[0], nil
}

// nsChild runs in the new namespaces: it mounts our resolv.conf, waits
// for gopasst to be ready, and becomes the command.
func nsChild(js string) int {
	var s nsSetup
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		return fail(os.Stderr, "namespace set-up: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail(os.Stderr, "namespace set-up: mount namespace: %v", err)
	}
	if s.Resolv != "" {
		if err := mountResolv(s.Resolv); err != nil {
			return fail(os.Stderr, "namespace set-up: %v", err)
		}
	}
	// Our PID namespace's /proc, as pasta mounts it: ps and kill see
	// only the command's processes.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: namespace set-up: /proc: %v\n", err)
	}
	// As pasta: ping sockets (icmp(7)) for the namespace's root group,
	// whose programs may not fall back to raw sockets.
	if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 0"), 0); err != nil {
		fmt.Fprintf(os.Stderr, "gopasst: namespace set-up: ping sockets: %v\n", err)
	}
	if err := unix.Sethostname([]byte(s.Hostname)); err != nil {
		// As pasta: the command runs all the same, under the host's name.
		fmt.Fprintf(os.Stderr, "gopasst: namespace set-up: hostname %q: %v\n", s.Hostname, err)
	}
	if _, err := unix.Write(nsFdSock, []byte{1}); err != nil {
		return fail(os.Stderr, "namespace set-up: %v", err)
	}
	if n, _ := unix.Read(nsFdSock, make([]byte, 1)); n != 1 {
		return 1 // gopasst failed, and said why
	}
	unix.Close(nsFdSock)
	path, err := exec.LookPath(os.Args[0])
	if err != nil {
		return fail(os.Stderr, "%v", err)
	}
	env := make([]string, 0, len(os.Environ()))
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, envNSChild+"=") {
			env = append(env, e)
		}
	}
	argv := os.Args
	if s.Login { // a leading dash, as login(1) and pasta start the shell
		argv = append([]string{"-" + argv[0]}, argv[1:]...)
	}
	// The command runs under us, its PID namespace's init: when it
	// exits, we do, and the kernel ends whatever it left running there,
	// as pasta's namespace ends with its command. A signal gopasst passes
	// on goes on to the command; the terminal's ^C and ^\ reach it
	// itself, and must not end us (Go's default would).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, stopSignals...)
	cmd := exec.Command(path)
	cmd.Args, cmd.Env = argv, env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fail(os.Stderr, "%s: %v", os.Args[0], err)
	}
	go func() {
		for v := range sig {
			if v != unix.SIGINT && v != unix.SIGQUIT {
				cmd.Process.Signal(v)
			}
		}
	}()
	// As an init, reap the orphans that the kernel gives us meanwhile.
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return fail(os.Stderr, "%s: %v", os.Args[0], err)
		case pid == cmd.Process.Pid && ws.Signaled():
			return 128 + int(ws.Signal())
		case pid == cmd.Process.Pid:
			return ws.ExitStatus()
		}
	}
}

// openTap creates the tap device name in the current network namespace
// (or opens it, if it exists) as a non-blocking descriptor, frames only
// (no packet information).
func openTap(name string) (int, error) {
	tap, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(tap)
		return -1, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(tap, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(tap)
		return -1, fmt.Errorf("%s: TUNSETIFF: %w", name, err)
	}
	return tap, nil
}

// mountResolv puts content over /etc/resolv.conf in our mount namespace,
// which nsChild made private.
// The file lives on a tmpfs mounted over /tmp just long enough to bind it
// in place: nothing is written to the host's disk, and /tmp is as before.
func mountResolv(content string) error {
	const scratch = "/tmp"
	if err := unix.Mount("tmpfs", scratch, "tmpfs", 0, "size=64k"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	defer unix.Unmount(scratch, unix.MNT_DETACH)
	p := scratch + "/resolv.conf"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return err
	}
	if err := unix.Mount(p, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	return nil
}

// linkUp sets an interface's MTU (unless 0) and brings it up.
func linkUp(name string, mtu int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, _ := unix.NewIfreq(name)
	if mtu != 0 {
		ifr.SetUint32(uint32(mtu))
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("%s: MTU %d: %w", name, mtu, err)
		}
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}
