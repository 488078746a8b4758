package slirp

import (
	"encoding/binary"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Thin wrappers over system calls whose x/sys/unix forms allocate (they
// return a Sockaddr interface) or do not exist.
//
// The data path's calls (peek, discard, writev, recvfrom, sendto,
// sendmmsg, splice) are raw: every socket here is non-blocking, so none
// can wait, and the engine's goroutine owns its thread, so the
// scheduler's bookkeeping around a call that might block (entersyscall,
// exitsyscall) is pure cost: about 5% of gopasst's time in a download,
// measured.

// soPeekOff is SO_PEEK_OFF: the kernel keeps a peek offset so consecutive
// MSG_PEEK reads return new data. TCP supports it since Linux 6.9.
const soPeekOff = 42

// fdRoomAhead grows the process's descriptor table, once, so that n more
// descriptors fit. The kernel doubles the table as descriptors are
// opened, and in a process with more threads than one (every Go process)
// each doubling first waits for an RCU grace period, 8-13 ms here, with
// the engine standing still; passt, with one thread, never waits. A
// migration's destination opening 1,000 sockets waited five times, while
// the guest was stopped. Past RLIMIT_NOFILE the table grows as far as it
// allows; any failure leaves growth to the kernel, as before.
func (e *Engine) fdRoomAhead(n int) {
	low, err := unix.FcntlInt(uintptr(e.epfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	unix.Close(low) // the lowest free descriptor: new ones start there
	want := low + n
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < uint64(want) {
		want = int(lim.Cur)
	}
	if fd, err := unix.FcntlInt(uintptr(e.epfd), unix.F_DUPFD_CLOEXEC, want-1); err == nil {
		unix.Close(fd)
	}
}

// fdTableAhead is how many descriptors the engine makes room for at its
// start (32 KiB of the kernel's memory), so that a guest's ordinary use
// never waits for the table to grow.
const fdTableAhead = 4096

// recvmsgIov reads into iov with flags and returns the byte count.
func recvmsgIov(fd int, iov []unix.Iovec, flags int) (int, error) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// writev writes iov with one system call (unix.Writev allocates).
func writev(fd int, iov []unix.Iovec) (int, error) {
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// splice moves up to n bytes from in to out, one of them a pipe, without
// waiting (SPLICE_F_NONBLOCK; both sockets of a spliced pair are
// non-blocking). Raw too: a splice of a megabyte takes longer than the
// runtime's monitor waits before it hands the processor of a goroutine
// in a system call to another thread, so the engine's goroutine went on
// on whichever thread had it; through a spliced iperf3 stream, its system
// time was spread over three threads, where raw it stays on one.
func splice(in, out int, n int) (int64, error) {
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n),
			unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int64(r), nil
	}
}

// discard drops n bytes from a TCP socket's receive queue without copying
// them: MSG_TRUNC on TCP means "throw away". A read stops short at urgent
// data (the host peer's MSG_OOB) and goes past it when it starts there,
// so it takes two. The bytes are there: EAGAIN can only be a read that
// started at urgent data with a signal pending (blockSignals).
func discard(fd int, n int) error {
	for n > 0 {
		r, errno := recvTrunc(fd, n)
		if errno == unix.EAGAIN {
			old := blockSignals()
			r, errno = recvTrunc(fd, n)
			unblockSignals(old)
		}
		if errno != 0 {
			return errno
		}
		if r == 0 {
			return unix.EIO // the stream ended before bytes the guest acknowledged
		}
		n -= int(r)
	}
	return nil
}

// recvTrunc drops up to n bytes from a TCP socket (discard).
func recvTrunc(fd, n int) (uintptr, unix.Errno) {
	r, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), 0, uintptr(n),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	return r, errno
}

// blockSignals pins the goroutine to its thread and blocks the thread's
// signals, until unblockSignals(old). A read or a peek that starts at
// urgent data (the host peer's MSG_OOB, kept in line) fails with EAGAIN,
// having read nothing, while a signal is pending (tcp_recvmsg), and the
// runtime signals its threads to preempt them: the read is tried again
// with none pending.
func blockSignals() (old unix.Sigset_t) {
	runtime.LockOSThread()
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^all.Val[i]
	}
	unix.PthreadSigmask(unix.SIG_SETMASK, &all, &old)
	return old
}

func unblockSignals(old unix.Sigset_t) {
	unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	runtime.UnlockOSThread()
}

// inq is how many bytes a TCP socket has to read (SIOCINQ), 0 if unknown.
func inq(fd int) int {
	n, _ := sockQueued(fd, unix.SIOCINQ)
	return n
}

// sockQueued reads a socket's queue (SIOCINQ, SIOCOUTQ). The kernel
// writes a C int: IoctlGetInt would read 8 bytes, wrong on a 64-bit
// big-endian machine.
func sockQueued(fd int, req uint) (int, error) {
	n, err := unix.IoctlGetUint32(fd, req)
	if err != nil {
		return 0, err
	}
	return int(int32(n)), nil
}

// sockaddr is a kernel socket address of either family: a sockaddr_in6
// is large enough to hold a sockaddr_in too. putSockaddr and
// sockaddrAddrPort are the only conversions between it and
// netip.AddrPort; they allocate nothing, and keep the port in network
// byte order on any machine.
type sockaddr = unix.RawSockaddrInet6

// putSockaddr writes ap into sa, as a sockaddr of ap's family, and
// returns its address and length for a system call. A dual-stack IPv6
// socket takes an IPv4 sockaddr too.
func putSockaddr(sa *sockaddr, ap netip.AddrPort) (unsafe.Pointer, uint32) {
	if ap.Addr().Is4() {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*sa4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:], ap.Port())
		return unsafe.Pointer(sa4), unix.SizeofSockaddrInet4
	}
	*sa = sockaddr{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], ap.Port())
	if z := ap.Addr().Zone(); z != "" {
		id, _ := strconv.ParseUint(z, 10, 32) // an interface's index: a link-local resolver's (Config.DNSMap)
		sa.Scope_id = uint32(id)
	}
	return unsafe.Pointer(sa), unix.SizeofSockaddrInet6
}

// sockaddrAddrPort reads a kernel sockaddr of either family; IPv4-mapped
// addresses are unmapped.
func sockaddrAddrPort(sa *sockaddr) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
}

// recvfrom reads one datagram and its IPv4 or IPv6 source (IPv4-mapped
// sources are unmapped). It returns the datagram's whole length, which
// is more than len(p) when the datagram did not fit (MSG_TRUNC).
func recvfrom(fd int, p []byte) (int, netip.AddrPort, error) {
	var sa sockaddr
	salen := uint32(unix.SizeofSockaddrInet6)
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_DONTWAIT|unix.MSG_TRUNC,
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
	if errno != 0 {
		return 0, netip.AddrPort{}, errno
	}
	return int(n), sockaddrAddrPort(&sa), nil
}

// sendto sends p to ap.
func sendto(fd int, p []byte, ap netip.AddrPort) error {
	var sa sockaddr
	ptr, l := putSockaddr(&sa, ap)
	var base unsafe.Pointer
	if len(p) > 0 {
		base = unsafe.Pointer(&p[0])
	}
	_, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(base), uintptr(len(p)),
		unix.MSG_DONTWAIT, uintptr(ptr), uintptr(l))
	if errno != 0 {
		return errno
	}
	return nil
}

// bind binds fd to ap.
func bind(fd int, ap netip.AddrPort) error {
	return sockaddrCall(unix.SYS_BIND, fd, ap)
}

// connect starts connecting fd to ap; a non-blocking socket returns
// EINPROGRESS.
func connect(fd int, ap netip.AddrPort) error {
	return sockaddrCall(unix.SYS_CONNECT, fd, ap)
}

func sockaddrCall(trap uintptr, fd int, ap netip.AddrPort) error {
	var sa sockaddr
	ptr, l := putSockaddr(&sa, ap)
	_, _, errno := unix.Syscall(trap, uintptr(fd), uintptr(ptr), uintptr(l))
	if errno != 0 {
		return errno
	}
	return nil
}

// accept takes one pending connection, non-blocking, and its peer.
func accept(lfd int) (int, netip.AddrPort, error) {
	var sa sockaddr
	salen := uint32(unix.SizeofSockaddrInet6)
	fd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&sa)),
		uintptr(unsafe.Pointer(&salen)), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return int(fd), sockaddrAddrPort(&sa), nil
}

// Indices into SO_MEMINFO's array (linux/sock_diag.h).
const (
	skMemWmemAlloc  = 2
	skMemSndbuf     = 3
	skMemWmemQueued = 5
	skMemVars       = 9
)

// sockMeminfo reads a socket's memory counters (SO_MEMINFO). It reports
// false where there are none: before Linux 4.6, gVisor, and qemu-user,
// which answers with zeros (no real send buffer is empty).
func sockMeminfo(fd int) (m [skMemVars]uint32, ok bool) {
	l := uint32(unsafe.Sizeof(m))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
		uintptr(unsafe.Pointer(&m[0])), uintptr(unsafe.Pointer(&l)), 0)
	return m, errno == 0 && m[skMemSndbuf] != 0
}

// sendRoom is how many more bytes of memory a socket's send buffer takes
// before the kernel refuses a write: SO_SNDBUF less what is queued, both
// as the kernel counts them (with per-buffer overhead). TCP counts its
// queue in wmem_queued, unix sockets in wmem_alloc; one call reads both.
//
// full tells that the kernel would not report EPOLLOUT now, so that it
// will when the buffer drains: with less than a third of a TCP socket's
// buffer free (sk_stream_is_writeable), or of a unix socket's, less than
// three quarters (unix_writable). Only then may EPOLLOUT be awaited;
// awaited on a socket that is writable already, it would come at once,
// again and again.
func sendRoom(fd int, unixSock bool) (room int, full bool) {
	if m, ok := sockMeminfo(fd); ok {
		sndbuf, queued, alloc := int(m[skMemSndbuf]), int(m[skMemWmemQueued]), int(m[skMemWmemAlloc])
		if unixSock {
			full = 4*alloc > sndbuf
		} else {
			full = 3*queued > 2*sndbuf
		}
		return sndbuf - max(queued, alloc), full
	}
	// Without the counters, count bytes instead: the kernel doubles
	// SO_SNDBUF to cover its overhead, so half of it is the data it
	// takes, less what is still queued. The bytes queued are fewer than
	// the kernel counts, so past two thirds of SO_SNDBUF, by either
	// rule, no EPOLLOUT is due; short of that, one may be, and none is
	// awaited: the guest's window probe asks for the window instead.
	sndbuf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return 0, false
	}
	queued, err := sockQueued(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, false
	}
	return sndbuf/2 - queued, 3*queued > 2*sndbuf
}

// fixedSndbuf is the SO_SNDBUF to set on host TCP sockets: net.core.wmem_max
// when the kernel's doubling of it beats the autotuning limit (the third
// field of net.ipv4.tcp_wmem), else 0. Setting SO_SNDBUF turns autotuning
// off, so a smaller fixed buffer would only hurt.
func fixedSndbuf() int {
	limit, err := readSysctl("net/core/wmem_max")
	if err != nil || len(limit) != 1 {
		return 0
	}
	auto, err := readSysctl("net/ipv4/tcp_wmem")
	if err != nil || len(auto) != 3 || 2*limit[0] <= auto[2] {
		return 0
	}
	return limit[0]
}

// readSysctl reads the integers of a file under /proc/sys.
func readSysctl(name string) ([]int, error) {
	data, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return nil, err
	}
	var v []int
	for _, f := range strings.Fields(string(data)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		v = append(v, n)
	}
	return v, nil
}

func sockError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}

// Origins of an extended socket error (linux/errqueue.h): only errors a
// peer sent as ICMP are the guest's business.
const (
	soEEOriginICMP  = 2
	soEEOriginICMP6 = 3
)

// icmpErr is an ICMP or ICMPv6 error that a socket's datagram met, as
// the kernel queues it (IP_RECVERR): its type and code, the router or
// host that sent it (unspecified if the kernel does not know), and the
// MTU of a "too big" error.
type icmpErr struct {
	v6        bool // ICMPv6, else ICMP
	typ, code uint8
	offender  netip.Addr
	mtu       uint32
}

// recvErr reads one error from a socket's error queue (IP_RECVERR): the
// payload of the datagram it is about, that datagram's destination, and
// into ie the ICMP or ICMPv6 message that caused it; ok is false for a
// local error.
func recvErr(fd int, p, oob []byte, ie *icmpErr) (n int, dst netip.AddrPort, ok bool, err error) {
	n, dst, ctl, err := recvmsg(fd, p, nil, oob, unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
	if err != nil {
		return 0, netip.AddrPort{}, false, err
	}
	for h, data, c := cmsgNext(ctl); h != nil; h, data, c = cmsgNext(c) {
		recverr := h.Level == unix.IPPROTO_IP && h.Type == unix.IP_RECVERR ||
			h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_RECVERR
		const extLen = int(unsafe.Sizeof(unix.SockExtendedErr{}))
		if recverr && len(data) >= extLen {
			ext := (*unix.SockExtendedErr)(unsafe.Pointer(&data[0]))
			if ext.Origin == soEEOriginICMP || ext.Origin == soEEOriginICMP6 {
				*ie = icmpErr{v6: ext.Origin == soEEOriginICMP6, typ: ext.Type, code: ext.Code, mtu: ext.Info}
				ie.offender = offender(data[extLen:])
				ok = true
			}
		}
	}
	return n, dst, ok, nil
}

// dropErrors empties a UDP socket's error queue, which epoll reports
// (EPOLLERR) for as long as it holds anything. Only a socket with
// IP_RECVERR on has one: the guest's flows read theirs (udpErrors); on
// pasta's loopback path, a socket from the namespace's agent may have had
// it turned on through a copy the agent kept, and nothing there would
// read it.
func dropErrors(fd int) {
	var b [1]byte
	var oob [64]byte
	for {
		if _, _, _, err := recvmsg(fd, b[:], nil, oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT); err != nil {
			return
		}
	}
}

// recvmsg reads one datagram into p and its control messages into oob,
// with flags: its length (MSG_TRUNC: its whole length), its source
// (unmapped) and the control messages it came with.
func recvmsg(fd int, p, spill, oob []byte, flags int) (int, netip.AddrPort, []byte, error) {
	var sa sockaddr
	iov := [2]unix.Iovec{iovec(&p[0], len(p))}
	msg := unix.Msghdr{Name: (*byte)(unsafe.Pointer(&sa)), Namelen: unix.SizeofSockaddrInet6, Iov: &iov[0], Control: &oob[0]}
	msg.SetIovlen(1)
	if len(spill) > 0 {
		iov[1] = iovec(&spill[0], len(spill))
		msg.SetIovlen(2)
	}
	msg.SetControllen(len(oob))
	n, _, errno := unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if errno != 0 {
		return 0, netip.AddrPort{}, nil, errno
	}
	return int(n), sockaddrAddrPort(&sa), oob[:msg.Controllen], nil
}

// cmsgNext splits the first control message off c: its header, its data
// and the messages after it; h is nil at the end, or where c is
// malformed.
func cmsgNext(c []byte) (h *unix.Cmsghdr, data, rest []byte) {
	if len(c) < unix.SizeofCmsghdr {
		return nil, nil, nil
	}
	h = (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	if h.Len < unix.SizeofCmsghdr || int(h.Len) > len(c) {
		return nil, nil, nil
	}
	return h, c[unix.SizeofCmsghdr:h.Len], c[min(unix.CmsgSpace(int(h.Len)-unix.SizeofCmsghdr), len(c)):]
}

// pktinfoSpace holds one IP_PKTINFO or IPV6_PKTINFO control message.
const pktinfoSpace = 64

// recvPktinfo has the kernel tell each datagram's destination on fd
// (recvfromTo): on a socket bound to a wildcard, it is only known so. A
// dual-stack socket's IPV6_RECVPKTINFO tells IPv4 ones too, mapped.
func recvPktinfo(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return err
	}
	if domain == unix.AF_INET6 {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
}

// recvfromTo is recvfrom, and also returns the address the datagram was
// sent to (recvPktinfo), unmapped; invalid if the kernel did not tell.
// What of the datagram p cannot hold goes on in spill, if any.
func recvfromTo(fd int, p, spill []byte) (int, netip.AddrPort, netip.Addr, error) {
	var oob [pktinfoSpace]byte
	n, from, ctl, err := recvmsg(fd, p, spill, oob[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	if err != nil {
		return 0, netip.AddrPort{}, netip.Addr{}, err
	}
	var to netip.Addr
	for h, data, c := cmsgNext(ctl); h != nil; h, data, c = cmsgNext(c) {
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			to = netip.AddrFrom4((*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0])).Addr)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			to = netip.AddrFrom16((*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0])).Addr).Unmap()
		}
	}
	return n, from, to, nil
}

// sendtoFrom sends p to ap from src, an address of ap's family the
// socket, bound to a wildcard, would not choose itself (IP_PKTINFO,
// IPV6_PKTINFO; a dual-stack socket takes the IPv4 one too).
func sendtoFrom(fd int, p []byte, src netip.Addr, ap netip.AddrPort) error {
	var sa sockaddr
	name, namelen := putSockaddr(&sa, ap)
	var oob [pktinfoSpace]byte
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	info := unsafe.Pointer(&oob[unix.CmsgLen(0)])
	size := unix.SizeofInet6Pktinfo
	if src.Is4() {
		size = unix.SizeofInet4Pktinfo
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		(*unix.Inet4Pktinfo)(info).Spec_dst = src.As4()
	} else {
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		(*unix.Inet6Pktinfo)(info).Addr = src.As16()
	}
	h.SetLen(unix.CmsgLen(size))
	iov := iovec(unsafe.SliceData(p), len(p))
	msg := unix.Msghdr{Name: (*byte)(name), Namelen: namelen, Iov: &iov, Control: &oob[0]}
	msg.SetIovlen(1)
	msg.SetControllen(unix.CmsgSpace(size))
	_, _, errno := unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
	if errno != 0 {
		return errno
	}
	return nil
}

// offender is the address in the sockaddr that follows an extended
// error (SO_EE_OFFENDER), unmapped; unspecified if there is none.
func offender(b []byte) netip.Addr {
	var sa sockaddr
	copy((*[unix.SizeofSockaddrInet6]byte)(unsafe.Pointer(&sa))[:], b)
	switch sa.Family {
	case unix.AF_INET, unix.AF_INET6:
		return sockaddrAddrPort(&sa).Addr()
	}
	return netip.IPv4Unspecified()
}

// mmsghdr is the kernel's struct mmsghdr (x/sys has no type for it). Its
// size is the C struct's, msg_len rounded up to msghdr's alignment, with
// no padding spelled out: 4 bytes more where pointers are 32 bits wide,
// and the kernel read each message after the first 4 bytes off.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// sendmmsg sends msgs with one system call and returns how many went.
func sendmmsg(fd int, msgs []mmsghdr) (int, error) {
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])),
			uintptr(len(msgs)), unix.MSG_DONTWAIT, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// trimIov cuts the pieces iov[from:] to n bytes.
func trimIov(iov []unix.Iovec, from, n int) []unix.Iovec {
	for i := from; i < len(iov); i++ {
		if n <= int(iov[i].Len) {
			iov[i].SetLen(n)
			return iov[:i+1]
		}
		n -= int(iov[i].Len)
	}
	return iov
}

// iovSum is the checksum sum of the first n bytes in the pieces iov.
func iovSum(iov []unix.Iovec, n int) uint64 {
	var sum uint64
	for off, i := 0, 0; off < n; i++ {
		k := min(int(iov[i].Len), n-off)
		sum = header.ChecksumAt(unsafe.Slice(iov[i].Base, k), sum, off)
		off += k
	}
	return sum
}

// iovec is the piece of n bytes at p. Its length is set through SetLen
// because the field is 32 bits wide on 32-bit machines.
func iovec(p *byte, n int) unix.Iovec {
	v := unix.Iovec{Base: p}
	v.SetLen(n)
	return v
}

// iovLen is the number of bytes in the pieces iov.
func iovLen(iov []unix.Iovec) int {
	n := 0
	for _, v := range iov {
		n += int(v.Len)
	}
	return n
}

// refuse closes fd, an accepted connection that cannot be joined to its
// other end (a cap reached, no guest, the loopback path's Dial failed),
// with a reset, as when that end is refused: closed in order, it read as
// an empty answer, all there was, to a client that reads to the end.
func refuse(fd int) {
	resetOnClose(fd)
	unix.Close(fd)
}

// resetOnClose makes fd's close reset its connection.
func resetOnClose(fd int) {
	unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
}
