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
// a UDP sender) from the host's loopback, socket to socket, to one of the
// namespace, connected to the namespace's address (its loopback with
// --host-lo-to-ns-lo), as pasta does, and splices between them
// (slirp/splice.go).
//
// The engine asks the agent directly, on a socket pair of their own that
// the helper hands it at set-up: one 8-byte request and reply, with the
// sockets as SCM_RIGHTS.
//   - TCP: the agent hands over spliceSpares sockets of the namespace, not
//     connected, which the engine keeps and connects one a connection, as
//     pasta keeps a pool of sockets opened in the namespace. One round
//     trip to the agent per connection held TCP_CRR on this path under
//     pasta's (#24). The agent checks nothing there: a connected socket
//     could be aimed anywhere again anyway (connect with AF_UNSPEC, then
//     connect), docs/security.md.
//   - UDP: a socket connected to a port the agent checks against the
//     spliceRules the command line gave it, through the helper: one a
//     sender, which are few.

// spliceRules is where the loopback path connects in the namespace, and
// to which UDP ports: from the command line, in the agent's plan and the
// engine's splicer.
type spliceRules struct {
	Addr4, Addr6 netip.Addr // the namespace's addresses
	HostLoToNsLo bool
	UDP          portRanges // the namespace ports -u forwards to
	AutoUDP      bool       // -u auto: also what listens there
	AutoTCP      bool       // -t auto too: what listens there for TCP counts for UDP, as auto forwards it (autoScan.listening)
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
		UDP: newPortRanges(specForwards(f.udp.specs)), AutoUDP: f.udp.auto, AutoTCP: f.tcp.auto}
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

// allows tells whether a UDP sender may reach port: -u names it, or it
// listens in the namespace (ns) with -u auto.
func (r *spliceRules) allows(port uint16, ns *listenCache) bool {
	return r.UDP.contains(port) || r.AutoUDP && ns.listens(fwdPort{slirp.UDP, port})
}

// spliceRequest is the engine's request to the agent: n TCP sockets of
// family v6, or (udp) a UDP one connected to port in the namespace. On
// the wire: the protocol (0 TCP, 1 UDP), the family (4 or 6), n or the
// port, and the sequence number, big-endian; the reply is the sequence
// number and an errno (0 with the sockets).
type spliceRequest struct {
	udp, v6 bool
	n, port uint16
	seq     uint32
}

const (
	spliceMsgLen = 8
	spliceSpares = 32 // TCP sockets a request, as pasta's pool for each family
)

func (q spliceRequest) marshal() []byte {
	b := make([]byte, spliceMsgLen)
	b[0], b[1] = 0, 4
	if q.v6 {
		b[1] = 6
	}
	arg := q.n
	if q.udp {
		b[0], arg = 1, q.port
	}
	binary.BigEndian.PutUint16(b[2:], arg)
	binary.BigEndian.PutUint32(b[4:], q.seq)
	return b
}

func parseSpliceRequest(b []byte) (spliceRequest, bool) {
	if len(b) != spliceMsgLen || b[0] > 1 || (b[1] != 4 && b[1] != 6) {
		return spliceRequest{}, false
	}
	q := spliceRequest{udp: b[0] == 1, v6: b[1] == 6, seq: binary.BigEndian.Uint32(b[4:])}
	if q.udp {
		q.port = binary.BigEndian.Uint16(b[2:])
		return q, true
	}
	q.n = binary.BigEndian.Uint16(b[2:])
	return q, q.n >= 1 && q.n <= spliceSpares
}

// splicer is the engine's slirp.Splicer in pasta mode: its end of the
// agent's splice socket, and the TCP sockets the agent gave it. Only the
// engine's goroutine calls it.
type splicer struct {
	fd     int // set before the engine runs
	seq    uint32
	late   int // requests given up on, whose answers may still come
	rules  *spliceRules
	spares [2][]int // IPv4, IPv6
}

// newSplicer is the loopback path r asks for, nil with --no-splice.
func newSplicer(r *spliceRules) *splicer {
	if r == nil {
		return nil
	}
	return &splicer{fd: -1, rules: r}
}

// start takes the engine's end of the splice socket from the helper.
func (s *splicer) start(h *helperClient) error {
	fd, err := h.fdCall(helperRequest{Op: "nssplice"})
	if err != nil {
		return err
	}
	// A request waits for its answer, as long as the helper's at most.
	s.take(fd, helperTimeout)
	return nil
}

// take makes fd the socket requests go on: blocking, with a receive
// timeout, without which a signal would not end recvmsgRaw's wait (the
// kernel restarts it), and a stop of the world, for the garbage
// collector, would wait on it for good.
func (s *splicer) take(fd int, timeout time.Duration) {
	unix.SetNonblock(fd, false)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	s.fd = fd
}

// Dial connects, in the namespace, the other end of a connection or of a
// UDP sender's datagrams to port from from.
func (s *splicer) Dial(proto slirp.Proto, from netip.AddrPort, port uint16) (int, error) {
	v6 := from.Addr().Is6() && !from.Addr().Is4In6()
	fd, err := s.socket(proto, v6, port)
	if err != nil {
		return -1, err
	}
	if proto == slirp.UDP {
		err = agentSocket(fd, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	} else if err = agentSocket(fd, unix.SOCK_STREAM, unix.IPPROTO_TCP); err == nil {
		if err = unix.Connect(fd, sockaddrOf(netip.AddrPortFrom(s.rules.target(v6), port))); err == unix.EINPROGRESS {
			err = nil
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// socket is a UDP socket the agent connects to port, or one of the TCP
// sockets it gave, asked for when none is left.
func (s *splicer) socket(proto slirp.Proto, v6 bool, port uint16) (int, error) {
	if proto == slirp.UDP {
		fds, err := s.ask(spliceRequest{udp: true, v6: v6, port: port})
		if err != nil {
			return -1, err
		}
		return fds[0], nil
	}
	spares := &s.spares[0]
	if v6 {
		spares = &s.spares[1]
	}
	if len(*spares) == 0 {
		fds, err := s.ask(spliceRequest{v6: v6, n: spliceSpares})
		if err != nil {
			return -1, err
		}
		*spares = fds
	}
	n := len(*spares) - 1
	fd := (*spares)[n]
	*spares = (*spares)[:n]
	return fd, nil
}

// agentSocket makes fd, from the agent, fit for the engine's loop, or
// tells why not: a socket of typ and proto, which a descriptor of any
// other kind (a UDP socket connects too) would not be, and non-blocking
// (a blocking one would stall the loop). One the agent already connected
// or listens on fails connect.
func agentSocket(fd, typ, proto int) error {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || v != typ {
		return unix.EPROTO
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || v != proto {
		return unix.EPROTO
	}
	// F_SETFL sets only status flags, of which these sockets need no
	// other: one call, where SetNonblock reads them first.
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_NONBLOCK)
	return err
}

// Idle closes the TCP sockets kept: the loopback path has been idle a
// while (slirp.Splicer).
func (s *splicer) Idle() {
	for i := range s.spares {
		closeFds(s.spares[i])
		s.spares[i] = nil
	}
}

// ask sends q to the agent and returns the descriptors it answers with,
// at least one. A TCP answer cut short (MSG_CTRUNC: the engine out of
// descriptors, or more sent than asked for, which the kernel closes)
// keeps those that came. The answers to requests that timed out are
// skipped, no more of them than there were.
func (s *splicer) ask(q spliceRequest) ([]int, error) {
	s.seq++
	q.seq = s.seq
	if err := retryEINTR(func() error { return unix.Sendmsg(s.fd, q.marshal(), nil, nil, 0) }); err != nil {
		return nil, err
	}
	for {
		var b [spliceMsgLen + 1]byte // one more: a longer answer is not cut to size
		n, fds, err := recvMsgVia(recvmsgRaw, s.fd, b[:], max(int(q.n), 1))
		if err == errCtrunc && !q.udp && len(fds) > 0 && len(fds) <= int(q.n) {
			err = nil
		}
		switch {
		case err != nil:
			if err == unix.EAGAIN {
				s.late++ // its answer may come yet
			}
			closeFds(fds)
			return nil, err
		case n != spliceMsgLen:
			closeFds(fds)
			return nil, unix.EPROTO
		case binary.BigEndian.Uint32(b[:]) != s.seq:
			closeFds(fds)
			if s.late == 0 {
				return nil, unix.EPROTO
			}
			s.late--
			continue
		}
		errno := unix.Errno(binary.BigEndian.Uint32(b[4:]))
		if errno == 0 && (len(fds) == 0 || q.udp && len(fds) != 1) {
			errno = unix.EPROTO
		}
		if errno != 0 {
			closeFds(fds)
			return nil, errno
		}
		return fds, nil
	}
}

// serveSplice answers the engine's requests on sock until it goes: TCP
// sockets of the family asked for, not connected, or a UDP socket
// connected to r's target on a port r allows, or EPERM. ns are the
// namespace's /proc/net tables, for -u auto.
func serveSplice(sock int, r *spliceRules, ns []procTable) {
	listen := listenCache{tables: ns}
	w := &spliceWaiter{fd: sock}
	var b [spliceMsgLen + 1]byte // one more: a longer request is not cut to size
	reply := make([]byte, spliceMsgLen)
	fds := make([]int, 0, spliceSpares)
	for {
		n, stray, err := recvMsgVia(w.recvmsg, sock, b[:], 0)
		closeFds(stray)
		if err != nil && err != errCtrunc {
			return
		}
		q, ok := parseSpliceRequest(b[:n])
		cerr := error(unix.EPERM)
		switch {
		case !ok || err != nil:
		case !q.udp:
			fds, cerr = spares(fds[:0], q)
		case r.allows(q.port, &listen):
			var fd int
			if fd, cerr = connectUDP(netip.AddrPortFrom(r.target(q.v6), q.port)); cerr == nil {
				fds = append(fds[:0], fd)
			}
		}
		errno, _ := cerr.(unix.Errno)
		if cerr != nil && errno == 0 {
			errno = unix.EIO
		}
		binary.BigEndian.PutUint32(reply, q.seq)
		binary.BigEndian.PutUint32(reply[4:], uint32(errno))
		var oob []byte
		if cerr == nil {
			oob = unix.UnixRights(fds...)
		}
		// A read of nothing is an empty request, or the engine's end
		// closed: the answer, refused, fails then.
		err = retryEINTR(func() error { return unix.Sendmsg(sock, reply, oob, nil, unix.MSG_NOSIGNAL) })
		if cerr == nil {
			closeFds(fds)
		}
		if err == unix.EPIPE {
			return
		}
	}
}

// spares appends q.n TCP sockets of q's family to fds, fewer if the
// namespace runs out, an error if none.
func spares(fds []int, q spliceRequest) ([]int, error) {
	family := unix.AF_INET
	if q.v6 {
		family = unix.AF_INET6
	}
	for range q.n {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if len(fds) == 0 {
				return fds, err
			}
			break
		}
		fds = append(fds, fd)
	}
	return fds, nil
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

// connectUDP is a UDP socket connected to ap.
func connectUDP(ap netip.AddrPort) (int, error) {
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, sockaddrOf(ap)); err != nil {
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
