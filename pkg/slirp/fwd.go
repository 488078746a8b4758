package slirp

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Inbound forwarding (passt's -t/-u) and gopasst's special forwards:
// listeners on host ports whose connections and datagrams go to the guest,
// and guest connections to the gateway diverted to a host unix socket or
// to a command (libvdeslirp's add_unixfwd and add_cmdexec). Everything here
// can change at runtime; established flows are never touched, because each
// one owns its own socket.

// Proto names a forwarded protocol.
type Proto string

// Protocols that can be forwarded.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// forward is one forwarded port, as given: bound (listener), or held,
// its host socket closed until the guest is here (holdForwards).
type forward struct {
	proto Proto
	fwd   portspec.Forward
	wide  bool // from a wide spec ("all"): busy, it is skipped (AddForwards' skipBusy)
}

type listener struct {
	forward
	fd  int
	off int // UDP: where the last datagram's L4 header went (udpToGuest)
}

type fwdKey struct {
	proto Proto
	addr  netip.Addr
	port  uint16
}

// special is a guest port on the gateway address that leads to a unix
// socket or a command. Where it leads is the Host's to know; the engine
// keeps what to list.
type special struct {
	cmd  bool
	what string // the socket's path or the command line
}

type fwdTable struct {
	listeners []*listener // indexed as in epoll; nil when removed
	free      []int32     // slots removed, for the next added: pasta's auto adds and removes without end
	byKey     map[fwdKey]int32
	special   map[uint16]special
	udpIn     flowTable[udpInKey, udpInFlow]
	held      []forward
}

func (t *fwdTable) init() {
	t.byKey = map[fwdKey]int32{}
	t.special = map[uint16]special{}
	t.udpIn.init()
}

// AddForwards binds host ports for fwds, all or nothing: if one cannot be
// bound, none stays bound. With skipBusy (for "all"), ports that cannot be
// bound are skipped instead.
func (e *Engine) AddForwards(proto Proto, fwds []portspec.Forward, skipBusy bool) error {
	if skipBusy {
		if room := e.fdRoom(); len(fwds) > room {
			e.warnf("%s: forwarding only %d of %d ports: the open file limit leaves no room for more", proto, room, len(fwds))
			fwds = fwds[:room]
		}
	}
	var added []int32
	for _, f := range fwds {
		k := fwdKey{proto, f.Addr, f.HostPort}
		if _, dup := e.fwd.byKey[k]; dup {
			if skipBusy {
				continue
			}
			e.removeListeners(added)
			return fmt.Errorf("%s port %d is already forwarded", proto, f.HostPort)
		}
		fd, err := e.host.Bind(proto, f)
		if err != nil {
			if skipBusy {
				continue
			}
			if errors.Is(err, unix.EADDRINUSE) && e.cfg.Migration && !e.running {
				e.warnf("%s port %s is busy: it is bound when the guest arrives by migration, "+
					"or when it starts here (gopasst exits then if the port is still busy)", proto, hostPortString(f))
				e.fwd.held = append(e.fwd.held, forward{proto, f, false})
				continue
			}
			e.removeListeners(added)
			return fmt.Errorf("%s port %s: %w", proto, hostPortString(f), err)
		}
		if proto == TCP {
			e.tcp.hostSockOpts(fd) // for the connections it accepts (tcpAccept, spliceAccept)
		} else if !f.Addr.IsValid() {
			recvPktinfo(fd) // to answer from where each sender sent (udpReply)
		}
		l := &listener{forward: forward{proto, f, skipBusy}, fd: fd, off: l4Off4}
		idx := int32(len(e.fwd.listeners))
		if n := len(e.fwd.free); n > 0 {
			idx, e.fwd.free = e.fwd.free[n-1], e.fwd.free[:n-1]
			e.fwd.listeners[idx] = l
		} else {
			e.fwd.listeners = append(e.fwd.listeners, l)
		}
		e.fwd.byKey[k] = idx
		added = append(added, idx)
		ref := epollRef{kind: kindTCPListen, idx: idx}
		if proto == UDP {
			ref.kind = kindUDPListen
		}
		if err := e.epollAdd(fd, unix.EPOLLIN, ref); err != nil {
			e.removeListeners(added)
			return fmt.Errorf("%s port %s: %w", proto, hostPortString(f), err)
		}
	}
	return nil
}

// RemoveForwards closes the listeners for fwds, or forgets them if they
// are held. Connections already made through them go on.
func (e *Engine) RemoveForwards(proto Proto, fwds []portspec.Forward) error {
	var idx []int32
	held := slices.Clone(e.fwd.held)
	for _, f := range fwds {
		i, ok := e.fwd.byKey[fwdKey{proto, f.Addr, f.HostPort}]
		if ok {
			idx = append(idx, i)
			continue
		}
		n := len(held)
		held = slices.DeleteFunc(held, func(h forward) bool {
			return h.proto == proto && h.fwd.Addr == f.Addr && h.fwd.HostPort == f.HostPort
		})
		if len(held) == n {
			return fmt.Errorf("%s port %s is not forwarded", proto, hostPortString(f))
		}
	}
	e.removeListeners(idx)
	e.fwd.held = held
	return nil
}

func (e *Engine) removeListeners(idx []int32) {
	for _, i := range idx {
		l := e.fwd.listeners[i]
		if l == nil {
			continue
		}
		e.spliceUDPExpire(l.fd)
		unix.Close(l.fd)
		l.fd = -1 // for the host senders' flows that outlive it (udpReply)
		delete(e.fwd.byKey, fwdKey{l.proto, l.fwd.Addr, l.fwd.HostPort})
		e.fwd.listeners[i] = nil
		e.fwd.free = append(e.fwd.free, i)
	}
}

// Live migration on one host: the source and the destination want the
// same forwarded ports, as passt's do (flow.c's "HACK"). The source lets
// go of its forwards' sockets when it sends the guest's state, and a
// destination started while they are still bound holds those forwards
// (AddForwards, with Config.Migration, before Run). Held forwards are
// bound when the guest is here: when its state is loaded, or at its
// first frame, which is also how a source whose migration failed, and
// whose guest goes on here, gets them back. Binding them then is binding
// them at start, postponed: a failure is fatal (passt dies too when it
// cannot listen again), and with a loaded state it fails the migration,
// which leaves the guest on its source.

// holdForwards closes every forward's host socket, to be bound again by
// bindHeld.
func (e *Engine) holdForwards() {
	var idx []int32
	for i, l := range e.fwd.listeners {
		if l != nil {
			e.fwd.held = append(e.fwd.held, l.forward)
			idx = append(idx, int32(i))
		}
	}
	e.removeListeners(idx)
}

// bindHeld binds the held forwards: the guest is here. Those it could
// not bind stay held.
func (e *Engine) bindHeld() error {
	held := e.fwd.held
	e.fwd.held = nil
	for len(held) > 0 {
		// One call for each run of the same kind: a wide forward's is
		// thousands of ports, and each call counts descriptors.
		n := 1
		for n < len(held) && held[n].proto == held[0].proto && held[n].wide == held[0].wide {
			n++
		}
		fwds := make([]portspec.Forward, n)
		for i := range fwds {
			fwds[i] = held[i].fwd
		}
		if err := e.AddForwards(held[0].proto, fwds, held[0].wide); err != nil {
			e.fwd.held = append(e.fwd.held, held...)
			return err
		}
		held = held[n:]
	}
	e.logf("forwarded ports bound again")
	return nil
}

// Forwards describes the forwards, active or held, one line each, sorted.
func (e *Engine) Forwards() []string {
	var out []string
	for _, l := range e.fwd.listeners {
		if l != nil {
			out = append(out, fmt.Sprintf("%s %s -> guest port %d", l.proto, hostPortString(l.fwd), l.fwd.GuestPort))
		}
	}
	for _, h := range e.fwd.held {
		out = append(out, fmt.Sprintf("%s %s -> guest port %d (held: bound when the guest is here)", h.proto, hostPortString(h.fwd), h.fwd.GuestPort))
	}
	for port, s := range e.fwd.special {
		kind := "unix"
		if s.cmd {
			kind = "cmd"
		}
		out = append(out, fmt.Sprintf("%s gateway port %d -> %s", kind, port, s.what))
	}
	sort.Strings(out)
	return out
}

// AddUnixForward diverts guest connections to the gateway on port to the
// host unix stream socket at path, which the Host connects to.
func (e *Engine) AddUnixForward(port uint16, path string) error {
	if path == "" {
		return errors.New("empty socket path")
	}
	return e.addSpecial(port, special{what: path})
}

// AddCmdForward diverts guest connections to the gateway on port to a new
// instance of the command, wired through its stdin and stdout, which the
// Host starts.
func (e *Engine) AddCmdForward(port uint16, command string) error {
	if command == "" {
		return errors.New("empty command")
	}
	return e.addSpecial(port, special{cmd: true, what: command})
}

func (e *Engine) addSpecial(port uint16, s special) error {
	if port == 0 {
		return errors.New("port 0")
	}
	if _, dup := e.fwd.special[port]; dup {
		return fmt.Errorf("gateway port %d is already diverted", port)
	}
	e.fwd.special[port] = s
	return nil
}

// RemoveSpecial ends the diversion of a gateway port.
func (e *Engine) RemoveSpecial(port uint16) error {
	if _, ok := e.fwd.special[port]; !ok {
		return fmt.Errorf("gateway port %d is not diverted", port)
	}
	delete(e.fwd.special, port)
	return nil
}

// fdReserve is how many descriptors wide forwards ("all") leave free for
// the guest's own connections.
const fdReserve = 4096

// fdRoom is how many more descriptors a wide forward may take. It counts
// the open ones in /proc/self/fd, opened by New: in the sandbox, /proc is
// out of reach by path.
func (e *Engine) fdRoom() int {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || e.fdDir == nil {
		return 0
	}
	e.fdDir.Seek(0, io.SeekStart)
	open, _ := e.fdDir.Readdirnames(-1)
	return max(int(lim.Cur)-len(open)-fdReserve, 0)
}

func hostPortString(f portspec.Forward) string {
	s := fmt.Sprint(f.HostPort)
	if f.Addr.IsValid() {
		s = netip.AddrPortFrom(f.Addr, f.HostPort).String()
	}
	if f.Iface != "" {
		s += "%" + f.Iface
	}
	return s
}

// tcpDial opens the host end of a guest connection: a TCP connect, or for
// a diverted gateway port a unix socket or a command. notTCP tells the
// data path it cannot use TCP-only socket calls.
func (e *Engine) tcpDial(key tcpKey) (fd int, notTCP bool, err error) {
	if _, ok := e.fwd.special[key.remote.Port()]; ok && key.remote.Addr() == e.gateway(key.remote.Addr()) {
		fd, err = e.host.DialSpecial(key.remote.Port())
		return fd, true, err
	}
	dst := e.natFromGuest(header.ProtoTCP, key.remote)
	if !dst.IsValid() {
		return -1, false, unix.ENETUNREACH
	}
	fd, err = unix.Socket(socketFamily(dst.Addr()), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, false, err
	}
	e.tcp.hostSockOpts(fd)
	if err = e.bindOutbound(fd, dst.Addr().Is6(), dst.Addr(), 0); err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	err = connect(fd, dst)
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, false, err
	}
	return fd, false, err
}

// listenerEvent dispatches readiness of a forwarded host port.
func (e *Engine) listenerEvent(idx int32) {
	if int(idx) >= len(e.fwd.listeners) || e.fwd.listeners[idx] == nil {
		return
	}
	l := e.fwd.listeners[idx]
	if l.proto == TCP {
		e.tcpAccept(l)
	} else {
		e.udpInbound(l)
	}
}
