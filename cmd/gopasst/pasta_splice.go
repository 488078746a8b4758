package main

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// pasta's loopback path for -t and -u: the engine joins a connection (or
// a UDP sender) from the host's loopback, socket to socket, to one the
// agent makes in the namespace, connected to the namespace's address (its
// loopback with --host-lo-to-ns-lo), as pasta does, and splices between
// them (slirp/splice.go).
//
// The engine asks the agent directly, on a socket pair of their own that
// the helper hands it at set-up: one 8-byte request and reply, with the
// socket as SCM_RIGHTS, per connection. The engine names only the
// protocol, the family and the port; the agent decides the address and
// checks the port against the spliceRules the command line gave it,
// through the helper. Relayed by the helper, in JSON, a connection cost
// two round trips and three processes' wake-ups (#24's TCP_CRR).

// spliceRules is where the loopback path connects in the namespace, and
// to which ports: from the command line, in the agent's plan.
type spliceRules struct {
	Addr4, Addr6     netip.Addr // the namespace's addresses
	HostLoToNsLo     bool
	TCP, UDP         portRanges // the namespace ports -t and -u forward to
	AutoTCP, AutoUDP bool       // -t, -u auto: also what listens there
}

// portRanges is a set of ports, as ranges, first and last: in the
// agent's environment, the list of what -t ~80 names would not fit.
type portRanges [][2]uint16

// newPortRanges is the set of the guest ports of fwds.
func newPortRanges(fwds []portspec.Forward) portRanges {
	ports := make([]uint16, 0, len(fwds))
	for _, fw := range fwds {
		ports = append(ports, fw.GuestPort)
	}
	slices.Sort(ports)
	var r portRanges
	for _, p := range slices.Compact(ports) {
		if n := len(r); n > 0 && r[n-1][1]+1 == p {
			r[n-1][1] = p
		} else {
			r = append(r, [2]uint16{p, p})
		}
	}
	return r
}

func (r portRanges) contains(port uint16) bool {
	return slices.ContainsFunc(r, func(x [2]uint16) bool { return port >= x[0] && port <= x[1] })
}

// newSpliceRules is the loopback path the options ask for, nil with
// --no-splice.
func newSpliceRules(o *pastaOptions, cfg netSetup, f pastaForwards) *spliceRules {
	if o.NoSplice {
		return nil
	}
	return &spliceRules{Addr4: cfg.Addr4, Addr6: cfg.Addr6, HostLoToNsLo: o.HostLoToNsLo,
		TCP: newPortRanges(specForwards(f.tcp.specs)), UDP: newPortRanges(specForwards(f.udp.specs)),
		AutoTCP: f.tcp.auto, AutoUDP: f.udp.auto}
}

// target is where a connection from the host's loopback of family v6
// goes in the namespace.
func (r *spliceRules) target(v6 bool) netip.Addr {
	switch {
	case r.HostLoToNsLo || (v6 && !r.Addr6.IsValid()) || (!v6 && !r.Addr4.IsValid()):
		if v6 {
			return netip.IPv6Loopback()
		}
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case v6:
		return r.Addr6
	}
	return r.Addr4
}

// named tells whether -t (TCP) or -u (UDP) names port.
func (r *spliceRules) named(proto slirp.Proto, port uint16) bool {
	if proto == slirp.UDP {
		return r.UDP.contains(port)
	}
	return r.TCP.contains(port)
}

// auto tells whether -t (TCP) or -u (UDP) is auto.
func (r *spliceRules) auto(proto slirp.Proto) bool {
	return proto == slirp.TCP && r.AutoTCP || proto == slirp.UDP && r.AutoUDP
}

// spliceRequest is the engine's request to the agent: a socket of proto
// and family (v6) connected to port in the namespace. On the wire: the
// protocol (0 TCP, 1 UDP), the family (4 or 6), the port and the
// sequence number, big-endian; the reply is the sequence number and an
// errno (0 with the socket).
type spliceRequest struct {
	udp, v6 bool
	port    uint16
	seq     uint32
}

const spliceMsgLen = 8

func (q spliceRequest) marshal() []byte {
	b := make([]byte, spliceMsgLen)
	b[0], b[1] = 0, 4
	if q.udp {
		b[0] = 1
	}
	if q.v6 {
		b[1] = 6
	}
	binary.BigEndian.PutUint16(b[2:], q.port)
	binary.BigEndian.PutUint32(b[4:], q.seq)
	return b
}

func parseSpliceRequest(b []byte) (spliceRequest, bool) {
	if len(b) != spliceMsgLen || b[0] > 1 || (b[1] != 4 && b[1] != 6) {
		return spliceRequest{}, false
	}
	return spliceRequest{udp: b[0] == 1, v6: b[1] == 6, port: binary.BigEndian.Uint16(b[2:]),
		seq: binary.BigEndian.Uint32(b[4:])}, true
}

// splicer is the engine's slirp.SpliceDial in pasta mode: its end of the
// agent's splice socket. Only the engine's goroutine calls it.
type splicer struct {
	fd  int // set before the engine runs
	seq uint32
}

// newSplicer is the loopback path the options ask for, nil with
// --no-splice.
func newSplicer(o *pastaOptions) *splicer {
	if o.NoSplice {
		return nil
	}
	return &splicer{fd: -1}
}

// start takes the engine's end of the splice socket from the helper.
func (s *splicer) start(h *helperClient) error {
	fd, err := h.fdCall(helperRequest{Op: "nssplice"})
	if err != nil {
		return err
	}
	// A request waits for its answer, as long as the helper's at most.
	unix.SetNonblock(fd, false)
	tv := unix.NsecToTimeval(helperTimeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	s.fd = fd
	return nil
}

// dial has the agent connect, in the namespace, the other end of a
// connection or of a UDP sender's datagrams to port from from.
func (s *splicer) dial(proto slirp.Proto, from netip.AddrPort, port uint16) (int, error) {
	s.seq++
	q := spliceRequest{udp: proto == slirp.UDP, v6: from.Addr().Is6() && !from.Addr().Is4In6(), port: port, seq: s.seq}
	if err := retryEINTR(func() error { return unix.Sendmsg(s.fd, q.marshal(), nil, nil, 0) }); err != nil {
		return -1, err
	}
	for {
		var b [spliceMsgLen]byte
		n, fds, err := recvMsgVia(recvmsgRaw, s.fd, b[:], 1)
		fd := -1
		if len(fds) == 1 && err == nil {
			fd, fds = fds[0], nil
		}
		closeFds(fds)
		switch {
		case err != nil:
			closeFd(fd)
			return -1, err
		case n != spliceMsgLen:
			closeFd(fd)
			return -1, unix.EPROTO
		case binary.BigEndian.Uint32(b[:]) != s.seq:
			closeFd(fd) // the answer to a request that timed out
			continue
		}
		errno := unix.Errno(binary.BigEndian.Uint32(b[4:]))
		if errno == 0 && fd < 0 {
			errno = unix.EPROTO
		}
		if errno != 0 {
			closeFd(fd)
			return -1, errno
		}
		return fd, nil
	}
}

// serveSplice answers the engine's requests on sock until it goes, each
// checked against r: a socket of the protocol and family asked for,
// connected (or connecting) to r's target and a port r allows, or
// EPERM. ns are the namespace's /proc/net tables, for auto.
func serveSplice(sock int, r *spliceRules, ns []procTable) {
	listen := listenCache{tables: ns}
	w := &spliceWaiter{fd: sock}
	var b [spliceMsgLen]byte
	reply := make([]byte, spliceMsgLen)
	for {
		n, stray, err := recvMsgVia(w.recvmsg, sock, b[:], 0)
		closeFds(stray)
		if (err != nil && err != errCtrunc) || n == 0 {
			return
		}
		q, ok := parseSpliceRequest(b[:n])
		proto := slirp.TCP
		if q.udp {
			proto = slirp.UDP
		}
		fd, cerr := -1, error(unix.EPERM)
		if ok && err == nil && (r.named(proto, q.port) || r.auto(proto) && listen.listens(fwdPort{proto, q.port})) {
			fd, cerr = connectNS(proto, netip.AddrPortFrom(r.target(q.v6), q.port))
		}
		errno, _ := cerr.(unix.Errno)
		if cerr != nil && errno == 0 {
			errno = unix.EIO
		}
		binary.BigEndian.PutUint32(reply, q.seq)
		binary.BigEndian.PutUint32(reply[4:], uint32(errno))
		var oob []byte
		if fd >= 0 {
			oob = unix.UnixRights(fd)
		}
		retryEINTR(func() error { return unix.Sendmsg(sock, reply, oob, nil, 0) })
		closeFd(fd)
	}
}

// A request and its answer are each waited for with a raw system call,
// which the Go runtime does not see: its machinery for a blocking call
// (its monitor thread taking the processor back and handing it off,
// waking threads) cost as much CPU per connection as the agent's own
// work. A signal (the runtime's preemption, for the garbage collector
// too) ends such a wait with EINTR, as both ends' sockets have a receive
// timeout, and the rest of the wait is a call the runtime knows of: it
// signals a goroutine it takes for running every 10 ms or so, and a raw
// wait taken up again would have the whole timeout again each time, and
// never run out.

// recvmsgRaw is unix.Recvmsg by a raw system call until a signal; the
// socket must have a receive timeout, which is EAGAIN.
func recvmsgRaw(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, from unix.Sockaddr, err error) {
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
		iov.SetLen(len(p))
	}
	msg := unix.Msghdr{Iov: &iov}
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if errno == unix.EINTR {
		return unix.Recvmsg(fd, p, oob, flags)
	}
	if errno != 0 {
		return 0, 0, 0, nil, errno
	}
	return int(r), int(msg.Controllen), int(msg.Flags), nil, nil
}

// spliceWaiter is the agent's wait for the engine's requests: raw while
// they come (a connection's set-up each millisecond or so), with a
// receive timeout of spliceHot; after that long with none, as any call,
// with no timeout, so that an idle agent sleeps.
type spliceWaiter struct {
	fd  int
	hot bool
}

const spliceHot = 5 * time.Millisecond

func (w *spliceWaiter) recvmsg(fd int, p, oob []byte, flags int) (n, oobn, recvflags int, from unix.Sockaddr, err error) {
	if w.hot {
		n, oobn, recvflags, from, err = recvmsgRaw(fd, p, oob, flags)
		if err != unix.EAGAIN {
			return
		}
		w.setHot(false)
	}
	n, oobn, recvflags, from, err = unix.Recvmsg(fd, p, oob, flags)
	if err == nil {
		w.setHot(true)
	}
	return
}

func (w *spliceWaiter) setHot(hot bool) {
	var tv unix.Timeval
	if hot {
		tv = unix.NsecToTimeval(spliceHot.Nanoseconds())
	}
	if unix.SetsockoptTimeval(w.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) == nil {
		w.hot = hot
	}
}

// connectNS starts a connection to ap (TCP), or connects a UDP socket to
// it, for the loopback path: the engine gets it aimed, not a socket it
// could aim elsewhere first.
func connectNS(proto slirp.Proto, ap netip.AddrPort) (int, error) {
	family, typ := unix.AF_INET6, unix.SOCK_STREAM
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	if proto == slirp.UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sockaddrOf(ap)); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}
