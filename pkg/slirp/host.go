package slirp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sync"

	"github.com/gopasst/gopasst/pkg/portspec"
	"golang.org/x/sys/unix"
)

// Host is what the engine needs from outside its sandbox: binding a
// forwarded port (privileged ports need the caller's rights), reaching a
// host unix socket by path and running a command (both need the host's
// file system). The sandboxed daemon asks a helper process for these
// (cmd/gopasst/helper.go); LocalHost does them in-process. Every
// descriptor returned is non-blocking and close-on-exec.
type Host interface {
	// Bind opens the listening (TCP) or bound (UDP) socket of a forward.
	Bind(proto Proto, f portspec.Forward) (int, error)
	// DialUnix starts connecting to the unix stream socket at path; the
	// error is EINPROGRESS, with a valid descriptor, while it connects.
	DialUnix(path string) (int, error)
	// LookPath resolves a command's name as exec.LookPath does.
	LookPath(name string) (string, error)
	// Command runs argv (already resolved) with its stdin and stdout on
	// one end of a socket pair and returns the other end.
	Command(argv []string) (int, error)
	// EndCommand stops the command behind fd, if Command made fd.
	EndCommand(fd int)
}

// LocalHost does the Host's work in the calling process.
type LocalHost struct {
	// Freebind binds forwards to addresses the host may not have (yet),
	// as passt's --freebind.
	Freebind bool

	mu    sync.Mutex
	procs map[int]*os.Process // our end of a command's socket pair -> the command
}

// Bind binds fwd's host socket. Without an address it binds the IPv6
// wildcard with IPv4 mapped in, falling back to IPv4 alone where the host
// has no IPv6.
func (h *LocalHost) Bind(proto Proto, f portspec.Forward) (int, error) {
	typ := unix.SOCK_STREAM
	if proto == UDP {
		typ = unix.SOCK_DGRAM
	}
	addrs := []netip.Addr{f.Addr}
	if !f.Addr.IsValid() {
		addrs = []netip.Addr{netip.IPv6Unspecified(), netip.IPv4Unspecified()}
	}
	var err error
	for _, a := range addrs {
		var fd int
		fd, err = bindOne(typ, a, f, h.Freebind)
		if err == nil {
			return fd, nil
		}
	}
	return -1, err
}

func bindOne(typ int, a netip.Addr, f portspec.Forward, freebind bool) (int, error) {
	fd, err := unix.Socket(socketFamily(a), typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	fail := func(err error) (int, error) { unix.Close(fd); return -1, err }
	if typ == unix.SOCK_STREAM {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if a.Is6() {
		only := 0
		if !a.IsUnspecified() {
			only = 1
		}
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, only)
	}
	if freebind && a.Is4() {
		unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
	} else if freebind {
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

// DialUnix starts a non-blocking connect to path.
func (*LocalHost) DialUnix(path string) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	switch err = unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err {
	case nil, unix.EINPROGRESS:
		return fd, err
	case unix.EAGAIN: // a full backlog: the connection completes later
		return fd, unix.EINPROGRESS
	}
	unix.Close(fd)
	return -1, err
}

// LookPath is exec.LookPath.
func (*LocalHost) LookPath(name string) (string, error) { return exec.LookPath(name) }

// Command starts argv and keeps it until EndCommand.
func (h *LocalHost) Command(argv []string) (int, error) {
	fd, p, err := StartCommand(argv)
	if err != nil {
		return -1, err
	}
	h.mu.Lock()
	if h.procs == nil {
		h.procs = map[int]*os.Process{}
	}
	h.procs[fd] = p
	h.mu.Unlock()
	return fd, nil
}

// StartCommand starts argv with its stdin and stdout on one end of a socket
// pair and returns the other end; stderr goes where ours goes. A goroutine
// waits for each command, so none is left a zombie: commands are few and
// slow to start, and the event loop stays free of them.
func StartCommand(argv []string) (int, *os.Process, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	child := os.NewFile(uintptr(pair[1]), "cmd")
	defer child.Close()
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Files: []*os.File{child, child, os.Stderr}})
	if err != nil {
		unix.Close(pair[0])
		return -1, nil, err
	}
	go p.Wait()
	unix.SetNonblock(pair[0], true)
	return pair[0], p, nil
}

// EndCommand sends the command behind fd SIGTERM: a command forward lives
// as long as its connection.
func (h *LocalHost) EndCommand(fd int) {
	h.mu.Lock()
	p := h.procs[fd]
	delete(h.procs, fd)
	h.mu.Unlock()
	if p != nil {
		p.Signal(unix.SIGTERM)
	}
}
