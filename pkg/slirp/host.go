package slirp

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"golang.org/x/sys/unix"
)

// Host is what the engine needs from outside its sandbox: binding a
// forwarded port (privileged ports need the caller's rights) and opening
// a diverted gateway port, which leads to a host unix socket or a command
// (both need the host's file system). The sandboxed daemon asks a helper
// process for these (cmd/gopasst/helper.go), which keeps its own table of
// what it may bind and where each diverted port leads: the engine names a
// port, never a path or a command. LocalHost does them in-process. Every
// descriptor returned is non-blocking and close-on-exec.
type Host interface {
	// Bind opens the listening (TCP) or bound (UDP) socket of a forward.
	Bind(proto Proto, f portspec.Forward) (int, error)
	// DialSpecial opens the host end of a guest connection to the
	// diverted gateway port: a unix socket connection (the error is
	// EINPROGRESS, with a valid descriptor, while it connects) or one
	// end of a socket pair on a new command's stdin and stdout.
	DialSpecial(port uint16) (int, error)
	// EndCommand stops the command behind fd, if DialSpecial made fd.
	EndCommand(fd int)
}

// Special is where a diverted gateway port leads: the unix stream socket
// at Path, or a new instance of the command Argv (resolved: Argv[0] is
// a path) per connection, at most Max at once (DefaultCmdMax if 0).
type Special struct {
	Path    string
	Argv    []string
	Max     int
	running int // instances that have not exited
}

// DefaultCmdMax is how many instances of one command forward may run at
// once: a guest opening connections must not fill the host with
// processes.
const DefaultCmdMax = 16

// LocalHost does the Host's work in the calling process, with the
// credentials of the calling thread, from its own table of diverted
// ports.
type LocalHost struct {
	// Freebind binds forwards to addresses the host may not have (yet),
	// as passt's --freebind.
	Freebind bool
	// Only4 and Only6 bind a forward without an address to one family's
	// wildcard alone, as passt's -4 and -6 do: the other family's clients
	// are refused, not carried to the guest.
	Only4, Only6 bool

	mu      sync.Mutex
	special map[uint16]*Special
	procs   map[int]*Command // our end of a command's socket pair -> the command
}

// SetSpecial makes port lead to s; nil ends the diversion. Commands
// already running go on.
func (h *LocalHost) SetSpecial(port uint16, s *Special) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.special == nil {
		h.special = map[uint16]*Special{}
	}
	if s == nil {
		delete(h.special, port)
	} else {
		h.special[port] = s
	}
}

// HasSpecial tells whether port is diverted.
func (h *LocalHost) HasSpecial(port uint16) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.special[port] != nil
}

// Bind binds fwd's host socket. Without an address it binds the IPv6
// wildcard with IPv4 mapped in, falling back to IPv4 alone where the host
// has no IPv6; with Only4 or Only6, that family's wildcard alone.
func (h *LocalHost) Bind(proto Proto, f portspec.Forward) (int, error) {
	typ := unix.SOCK_STREAM
	if proto == UDP {
		typ = unix.SOCK_DGRAM
	}
	addrs := []netip.Addr{f.Addr}
	switch {
	case f.Addr.IsValid():
	case h.Only4:
		addrs = []netip.Addr{netip.IPv4Unspecified()}
	case h.Only6:
		addrs = []netip.Addr{netip.IPv6Unspecified()}
	default:
		addrs = []netip.Addr{netip.IPv6Unspecified(), netip.IPv4Unspecified()}
	}
	var err error
	for _, a := range addrs {
		var fd int
		fd, err = h.bindOne(typ, a, f)
		if err == nil {
			return fd, nil
		}
	}
	return -1, err
}

func (h *LocalHost) bindOne(typ int, a netip.Addr, f portspec.Forward) (int, error) {
	fd, err := unix.Socket(socketFamily(a), typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) { unix.Close(fd); return -1, err }
	if typ == unix.SOCK_STREAM {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if a.Is6() {
		// Only the wildcard of a forward without an address takes IPv4
		// too: "::" given, as passt, means IPv6 alone.
		only := 0
		if f.Addr.IsValid() || h.Only6 {
			only = 1
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, only)
	}
	if h.Freebind && a.Is4() {
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	} else if h.Freebind {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
	}
	if f.Iface != "" {
		if err := unix.BindToDevice(fd, f.Iface); err != nil {
			return fail(fmt.Errorf("bind to %s: %w", f.Iface, err))
		}
	}
	if err := bind(fd, netip.AddrPortFrom(a, f.HostPort)); err != nil {
		return fail(err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 128); err != nil {
			return fail(err)
		}
	}
	return fd, nil
}

// OpenSpecial opens the host end of a connection to the diverted port,
// as DialSpecial does, and returns the command it started, if any, for
// the caller to keep.
func (h *LocalHost) OpenSpecial(port uint16) (int, *Command, error) {
	h.mu.Lock()
	s := h.special[port]
	if s == nil {
		h.mu.Unlock()
		return -1, nil, fmt.Errorf("gateway port %d is not diverted", port)
	}
	if s.Path != "" {
		h.mu.Unlock()
		fd, err := dialUnix(s.Path)
		return fd, nil, err
	}
	if s.running >= cmp.Or(s.Max, DefaultCmdMax) {
		h.mu.Unlock()
		return -1, nil, fmt.Errorf("gateway port %d: %d commands already running (--cmd-fwd-max)", port, s.running)
	}
	s.running++
	h.mu.Unlock()
	fd, p, err := startCommand(s.Argv, func() {
		h.mu.Lock()
		s.running--
		h.mu.Unlock()
	})
	if err != nil {
		h.mu.Lock()
		s.running--
		h.mu.Unlock()
	}
	return fd, p, err
}

// DialSpecial is OpenSpecial, keeping the command until EndCommand.
func (h *LocalHost) DialSpecial(port uint16) (int, error) {
	fd, p, err := h.OpenSpecial(port)
	if p != nil {
		h.mu.Lock()
		if h.procs == nil {
			h.procs = map[int]*Command{}
		}
		h.procs[fd] = p
		h.mu.Unlock()
	}
	return fd, err
}

// dialUnix connects to path without waiting. A full backlog fails with
// EAGAIN, leaving the socket unconnected: the caller tries again later.
func dialUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err = unix.Connect(fd, &unix.SockaddrUnix{Name: qemusock.FileName(path)}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// startCommand starts argv with its stdin and stdout on one end of a
// socket pair and returns the other end; stderr goes where ours goes. It
// runs in a session of its own, away from our terminal, and gets SIGTERM
// if the thread that started it ends. A goroutine waits for each command,
// so none is left a zombie, and calls exited then: commands are few and
// slow to start, and the event loop stays free of them.
func startCommand(argv []string, exited func()) (int, *Command, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	child := os.NewFile(uintptr(pair[1]), "cmd")
	defer child.Close()
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Files: []*os.File{child, child, os.Stderr},
		Sys: &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}})
	if err != nil {
		unix.Close(pair[0])
		return -1, nil, err
	}
	// Opened before the command can be reaped, so that its number is
	// still its own. (SysProcAttr.PidFD fails the start under qemu-user.)
	c := &Command{pid: p.Pid}
	if c.pidfd, err = unix.PidfdOpen(p.Pid, unix.PIDFD_NONBLOCK); err != nil {
		c.pidfd = -1
	}
	go func() { p.Wait(); exited() }()
	unix.SetNonblock(pair[0], true)
	return pair[0], c, nil
}

// EndCommand stops the command behind fd (Command.Stop): a command
// forward lives as long as its connection.
func (h *LocalHost) EndCommand(fd int) {
	h.mu.Lock()
	c := h.procs[fd]
	delete(h.procs, fd)
	h.mu.Unlock()
	if c != nil {
		c.Stop()
	}
}

// Command is a command that a --cmd-fwd connection started, with its
// process group, which it leads (its own session): a shell's children
// would outlive it, uncounted by --cmd-fwd-max, and a guest that opened
// and closed connections piled them up without bound. The group is
// named by a pidfd of its leader, not by its number: once the last
// member is gone the number is free for another process to lead a group
// by (pid_max is often 32768), and a signal sent by number would then
// reach that stranger's group.
type Command struct {
	pid   int
	pidfd int // -1 when the kernel gave none
}

// signalGroup signals the command's group. A kernel before 6.9 cannot
// signal a group through a pidfd: by number, then.
func (c *Command) signalGroup(sig unix.Signal) error {
	if c.pidfd >= 0 {
		err := unix.PidfdSendSignal(c.pidfd, sig, nil, unix.PIDFD_SIGNAL_PROCESS_GROUP)
		if err != unix.EINVAL && err != unix.ENOSYS {
			return err
		}
	}
	return unix.Kill(-c.pid, sig)
}

// Gone says whether nothing of the command's group is left.
func (c *Command) Gone() bool { return c.signalGroup(0) == unix.ESRCH }

// Stop sends SIGTERM to the command's group and lets go of it.
func (c *Command) Stop() {
	c.signalGroup(unix.SIGTERM)
	c.Release()
}

// Release lets go of the command without a signal.
func (c *Command) Release() {
	if c.pidfd >= 0 {
		unix.Close(c.pidfd)
		c.pidfd = -1
	}
}
