package slirp

import (
	"net/netip"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pasta's loopback path, as passt's tcp_splice.c: a TCP connection
// between the host's loopback and the namespace is not translated into
// the guest's TCP through the link, but joined, socket to socket, to
// another, and its bytes move with splice(2) through a pipe for each
// direction, in the engine's loop like every other flow:
//
//   - a connection to a -t port from the host's loopback is joined to one
//     connected in the namespace (Config.Splicer; nil with --no-splice);
//   - a connection to a -T port in the namespace (SpliceListen) is
//     joined to one the engine connects to the host's loopback.
//
// The pipes hold what the receiving socket did not take yet; a side
// whose pipe is not empty is not read until it is, so nothing is kept
// here but what the kernel holds.

// Splicer gives the loopback path its sockets in the namespace.
type Splicer interface {
	// Dial connects a socket in the namespace for a connection (TCP) or
	// a sender (UDP, splice_udp.go) to the forwarded port whose guest
	// port is port, from the host's loopback address from. The socket
	// is non-blocking.
	Dial(proto Proto, from netip.AddrPort, port uint16) (int, error)
	// Idle tells that the loopback path has joined no pair for a while:
	// what Dial keeps for the next ones may go.
	Idle()
}

// spliceChunk bounds one splice(2): a pipe's default capacity is less.
const spliceChunk = 1 << 20

// spliceShort is a read short enough to take as all there was for now
// (spliceMove), as pasta does below a tenth of its pipe: request and
// response traffic, one message a read.
const spliceShort = 16 << 10

// splicePipeSize is what each pipe is asked to hold, so that one
// splice moves as much as a TCP socket's receive queue usually holds.
const splicePipeSize = 1 << 20

// splicePool is the empty pipes that pairs which ended left, for the
// next pairs: making and sizing two pipes, and closing them, was a tenth
// of a short connection's cost to the engine (pasta keeps a pool too). It
// holds at most splicePipesKept, and is emptied, with what the Splicer
// keeps, once the loopback path has dialled, opened or closed no pair for
// splicePipesIdle.
type splicePool struct {
	pipes [][2]int
	used  time.Duration // when a pair last took or left pipes, or a Dial was made
	idle  bool          // emptied since
}

// use notes that the loopback path is in use at now.
func (p *splicePool) use(now time.Duration) {
	p.used, p.idle = now, false
}

const (
	splicePipesKept = 16
	splicePipesIdle = time.Second
)

// splicePipesExpire empties the pool, and has the Splicer let go of what
// it keeps, once they idled long enough.
func (e *Engine) splicePipesExpire() {
	p := &e.splicePipes
	if p.idle || e.now-p.used < splicePipesIdle {
		return
	}
	for _, fds := range p.pipes {
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	p.pipes = p.pipes[:0]
	if e.cfg.Splicer != nil {
		e.cfg.Splicer.Idle()
	}
	p.idle = true
}

// spliceConn is one joined pair: pipe[i] carries what fd[i] reads to
// fd[1-i].
type spliceConn struct {
	fd   [2]int
	pipe [2][2]int // read end, write end
	held [2]int    // bytes in pipe[i]
	up   [2]bool   // bytes went through fd[i]: it is connected (spliceMove)
	eof  [2]bool   // fd[i] read its peer's FIN
	shut [2]bool   // ... which went on to fd[1-i]
	want [2]uint32 // what fd[i] is watched for
	gone [2]bool   // fd[i] left the epoll set (spliceEvent)
}

// spliceListener is a -T or -U socket in the namespace, and the host
// loopback port its connections or datagrams go to.
type spliceListener struct {
	fd   int
	port uint16
	udp  bool // -U (splice_udp.go)
}

// spliceRef is the epoll reference of side of the pair in slot i.
func (e *Engine) spliceRef(i int32, side int) epollRef {
	return epollRef{kind: kindSplice, gen: e.splice.gen(i), idx: i<<1 | int32(side)}
}

// spliceAccept joins an accepted connection to a forwarded port from
// the host's loopback to one in the namespace, and reports whether it
// took the descriptor.
func (e *Engine) spliceAccept(fd int, from netip.AddrPort, port uint16) bool {
	if e.cfg.Splicer == nil || !from.Addr().Unmap().IsLoopback() {
		return false
	}
	if e.spliceFull() {
		refuse(fd)
		return true
	}
	// What Dial keeps expires too when no pair comes of it.
	e.splicePipes.use(e.now)
	nfd, err := e.cfg.Splicer.Dial(TCP, from, port)
	if err != nil {
		e.debugf("-t %d from %v: %v", port, from, err)
		refuse(fd)
		return true
	}
	e.spliceJoin(fd, nfd)
	return true
}

// SpliceListen watches fd, a -T listening socket in the namespace (or a
// -U one, for UDP): each connection to it is joined to one to the same
// loopback address on the host, on port (each sender's datagrams relayed
// to the address they were sent to, splice_udp.go). It runs on the
// engine's goroutine (Call), or before Run.
func (e *Engine) SpliceListen(proto Proto, fd int, port uint16) error {
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	if proto == UDP {
		if err := recvPktinfo(fd); err != nil {
			return err
		}
	} else {
		spliceSockOpts(fd) // for the connections it accepts (spliceJoin)
	}
	i := int32(len(e.spliceLn))
	for j, l := range e.spliceLn {
		if l.fd < 0 {
			i = int32(j)
		}
	}
	if err := e.epollAdd(fd, unix.EPOLLIN|unix.EPOLLRDHUP, epollRef{kind: kindSpliceListen, idx: i}); err != nil {
		return err
	}
	if int(i) == len(e.spliceLn) {
		e.spliceLn = append(e.spliceLn, spliceListener{})
	}
	e.spliceLn[i] = spliceListener{fd: fd, port: port, udp: proto == UDP}
	return nil
}

// SpliceUnlisten closes fd, a listener SpliceListen watched; the TCP
// connections it made stay, the UDP senders it had are forgotten.
func (e *Engine) SpliceUnlisten(fd int) {
	for i, l := range e.spliceLn {
		if l.fd == fd && fd >= 0 {
			unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
			unix.Close(fd)
			e.spliceLn[i].fd = -1
			e.spliceUDPExpire(fd)
		}
	}
}

// spliceListenEvent accepts a connection waiting on a -T listener, or
// relays the datagrams on a -U one.
func (e *Engine) spliceListenEvent(idx int32, events uint32) {
	if int(idx) >= len(e.spliceLn) || e.spliceLn[idx].fd < 0 {
		return
	}
	l := e.spliceLn[idx]
	if shutDown(events) {
		// The namespace's agent, which bound it, shut it down through
		// a copy: readable for ever, with nothing to accept or read.
		e.warnf("-T/-U port %d: its socket was shut down: no longer forwarded", l.port)
		e.SpliceUnlisten(l.fd)
		return
	}
	if l.udp {
		if events&unix.EPOLLERR != 0 {
			dropErrors(l.fd)
		}
		e.spliceUDPIn(l)
		return
	}
	// One connection an event, as tcpAccept.
	fd, _, err := accept(l.fd)
	if err != nil {
		if outOfFds(err) {
			e.pauseAccept(l.fd, epollRef{kind: kindSpliceListen, idx: idx})
		}
		return
	}
	if e.spliceFull() {
		refuse(fd)
		return
	}
	// To the loopback address it was for, as pasta: the namespace's
	// 127.0.0.53 is the host's. The socket is on lo: nothing else
	// comes.
	local, _ := unix.Getsockname(fd)
	to := netip.AddrPortFrom(addrPortOf(local).Addr(), l.port)
	if !to.Addr().IsLoopback() {
		unix.Close(fd)
		return
	}
	hfd, err := unix.Socket(socketFamily(to.Addr()), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.Connect(hfd, sockaddrOf(to)); err == unix.EINPROGRESS {
			err = nil
		}
		if err != nil {
			unix.Close(hfd)
		}
	}
	if err != nil {
		e.debugf("-T %d: %v", l.port, err)
		refuse(fd)
		return
	}
	e.spliceJoin(fd, hfd)
}

// spliceSockOpts prepares a socket of a pair. Its bytes go out as the
// peer's kernel sent them (TCP_NODELAY), as pasta's do: the sender made
// its own choice about small segments, and Nagle's algorithm here would
// hold one that follows another not yet acknowledged, for as long as the
// receiver delays its ACK (40 ms and more on Linux), where a direct
// connection would not. Urgent data stays in the stream (spliceUrgent).
func spliceSockOpts(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	urgentInline(fd)
}

// spliceFull tells whether the spliced pairs and the guest's TCP
// connections together reach --max-tcp: the namespace is as untrusted as
// a guest, and each pair holds four descriptors and two pipes.
func (e *Engine) spliceFull() bool {
	return e.atCap(capTCP, e.tcp.count+e.splice.count, e.cfg.MaxTCP)
}

// spliceJoin makes a pair of a, accepted, and b, connected or connecting,
// both non-blocking; on failure both are closed. a has spliceSockOpts
// from its listener (hostSockOpts for -t's), as sockets inherit them on
// accept.
func (e *Engine) spliceJoin(a, b int) {
	c := spliceConn{fd: [2]int{a, b}, pipe: [2][2]int{{-1, -1}, {-1, -1}}}
	spliceSockOpts(b)
	pool := &e.splicePipes
	pool.use(e.now)
	for i := range 2 {
		if n := len(pool.pipes); n > 0 {
			c.pipe[i], pool.pipes = pool.pipes[n-1], pool.pipes[:n-1]
			continue
		}
		var p [2]int
		if unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC) != nil {
			resetOnClose(a)
			e.spliceFree(&c, false)
			return
		}
		c.pipe[i] = p
		unix.FcntlInt(uintptr(p[0]), unix.F_SETPIPE_SZ, splicePipeSize)
	}
	i, s := e.splice.add(a)
	*s = c
	for side := range 2 {
		s.want[side] = unix.EPOLLIN
		if e.epollAdd(s.fd[side], s.want[side], e.spliceRef(i, side)) != nil {
			e.spliceClose(i, s, true)
			return
		}
	}
}

// spliceEvent moves what the event on one side of a pair allows.
func (e *Engine) spliceEvent(idx int32, gen uint32, events uint32) {
	i, side := idx>>1, int(idx&1)
	c := e.splice.get(i, gen)
	if c == nil {
		return
	}
	if events&unix.EPOLLERR != 0 {
		// A peer that answered and reset (a close with input unread does)
		// before this turn: its answer is read before the error, and
		// goes on as far as the other end takes it at once, as a direct
		// connection's client reads it before the reset.
		e.spliceMove(c, side, events&unix.EPOLLIN != 0)
		e.spliceClose(i, c, true)
		return
	}
	// What fd[side] may take now, if anything waits for it (fd[1-side]
	// is read on events of its own), then what it has to give.
	for _, dir := range [2]int{1 - side, side} {
		if dir != side && c.held[dir] == 0 && (!c.eof[dir] || c.shut[dir]) {
			continue
		}
		if !e.spliceMove(c, dir, dir == side && events&unix.EPOLLIN != 0) {
			e.spliceClose(i, c, true)
			return
		}
	}
	if c.shut[0] && c.shut[1] {
		e.spliceClose(i, c, false)
		return
	}
	for s := range 2 {
		// fd[s] is read while its pipe is empty and its peer has not
		// ended, and written while the other pipe holds anything. A side
		// with nothing to wait for stays in the epoll set, which reports
		// a reset by its peer (a pair whose client went away while its
		// data waits for a server still connecting, or not reading,
		// would stay until that server ends), unless it hung up (both
		// ways ended), which epoll would report at every turn.
		var want uint32
		if c.held[s] == 0 && !c.eof[s] {
			want |= unix.EPOLLIN
		}
		if c.held[1-s] > 0 || c.eof[1-s] && !c.shut[1-s] {
			want |= unix.EPOLLOUT // to write, or to pass a FIN on once connected
		}
		switch {
		case want == 0 && s == side && events&unix.EPOLLHUP != 0:
			if !c.gone[s] {
				unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, c.fd[s], nil)
			}
			c.gone[s] = true
		case c.gone[s] && want != 0:
			e.epollAdd(c.fd[s], want, e.spliceRef(i, s))
			c.gone[s] = false
		case !c.gone[s] && want != c.want[s]:
			e.epollMod(c.fd[s], want, e.spliceRef(i, s))
		}
		c.want[s] = want
	}
}

// spliceMove moves bytes from fd[dir] through its pipe to fd[1-dir] until
// either end would block, passes its peer's FIN on, and reports false on
// an error that ends the pair; readable says that epoll reported fd[dir]
// readable.
func (e *Engine) spliceMove(c *spliceConn, dir int, readable bool) bool {
	src, dst, p := c.fd[dir], c.fd[1-dir], &c.pipe[dir]
	moved := int64(spliceShort) // by the last read
	// At most 16 rounds, then the other flows' turn; epoll reports the rest.
	for range 16 {
		if c.held[dir] == 0 && !c.eof[dir] {
			n, err := splice(src, p[1], spliceChunk)
			if err == unix.EAGAIN && readable || err == nil && n == 0 {
				n, err = e.spliceUrgent(src, p[1])
			}
			readable = false
			switch {
			case err == unix.EAGAIN:
			case err != nil:
				return false
			case n == 0:
				c.eof[dir] = true
			default:
				c.held[dir] += int(n)
				c.up[dir] = true
				moved = n
			}
		}
		if c.held[dir] > 0 {
			n, err := splice(p[0], dst, c.held[dir])
			switch {
			case err == unix.EAGAIN:
				return true // dst is full, or still connecting: EPOLLOUT
			case err != nil:
				return false
			}
			c.held[dir] -= int(n)
			e.spliced += int(n)
			c.up[1-dir] = c.up[1-dir] || n > 0
			if c.held[dir] == 0 && moved < spliceShort {
				// A short message, passed on whole: the sender has
				// nothing more for now, or epoll (level-triggered) says
				// so; trying again would mostly meet EAGAIN.
				return true
			}
			continue
		}
		if c.eof[dir] && !c.shut[dir] {
			if !c.up[1-dir] && connecting(dst) {
				// Shutting down a socket that is still connecting aborts
				// the connection (inet_shutdown): the FIN waits for
				// EPOLLOUT, which says dst is connected.
				return true
			}
			unix.Shutdown(dst, unix.SHUT_WR)
			c.shut[dir] = true
		}
		return true
	}
	return true
}

// spliceUrgent reads src past TCP urgent data into the empty pipe w, for
// splice(2), which stops at urgent data (tcp_read_sock) and, reporting
// nothing to read from a socket epoll reports readable, would have the
// loop spin and the stream stall for good; or which reports an end of
// stream there if a FIN followed. A read(2) goes past it, and the byte
// is in the stream (SO_OOBINLINE, spliceJoin), as a relay must keep it.
// What it reads, at most PIPE_BUF bytes, goes whole into the empty pipe.
func (e *Engine) spliceUrgent(src, w int) (int64, error) {
	n, err := unix.Read(src, e.spliceBuf[:4096])
	if err != nil || n == 0 {
		return 0, err
	}
	if m, err := unix.Write(w, e.spliceBuf[:n]); err != nil || m != n {
		return 0, unix.EIO // the pipe is out of memory: what was read is lost
	}
	return int64(n), nil
}

// connecting tells whether a TCP socket is still connecting: its state,
// TCP_INFO's first byte, is TCP_SYN_SENT (2).
func connecting(fd int) bool {
	var state uint8
	l := uint32(1)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&state)), uintptr(unsafe.Pointer(&l)), 0)
	return errno == 0 && state == 2
}

// spliceClose ends a pair; reset says that one end failed, and the other
// is reset, not closed in order.
func (e *Engine) spliceClose(i int32, c *spliceConn, reset bool) {
	for _, fd := range c.fd {
		unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		if reset {
			resetOnClose(fd)
		}
	}
	e.splice.remove(i, c.fd[0])
	e.spliceFree(c, !reset)
}

// spliceCloseAll ends the pairs as the engine ends, as closeAll its
// flows: neither end closed, and the FIN the process's exit would send
// each end passes the cut stream off as whole. Each way moves what it
// can at once first, and a FIN already come goes on (a stop may be
// handled before the event of a command's last words); then each
// socket, closed with a reset, lingers until its peer has what it holds
// (tcpLinger), and one whose peer had the other's FIN ends with it.
func (e *Engine) spliceCloseAll() {
	e.splice.each(func(i int32, c *spliceConn) {
		for dir := range 2 {
			e.spliceMove(c, dir, true)
		}
		e.splice.remove(i, c.fd[0])
		for side, fd := range c.fd {
			resetOnClose(fd)
			if e.tcpLingerAdd(fd, c.shut[1-side]) {
				c.fd[side] = -1
			}
		}
		e.spliceFree(c, false)
	})
}

// shutDown tells whether events, on a socket watched for EPOLLIN and
// EPOLLRDHUP, say that its reading side was shut down: a listening TCP
// socket so shut is closed (EPOLLHUP), a UDP one reads as empty
// (EPOLLRDHUP), and either is reported readable for ever.
func shutDown(events uint32) bool {
	return events&(unix.EPOLLHUP|unix.EPOLLRDHUP) != 0
}

// spliceFree closes a pair's sockets, and its pipes, unless kept (the
// pair ended in order, both ways: its pipes are empty) for the next
// pairs.
func (e *Engine) spliceFree(c *spliceConn, keep bool) {
	pool := &e.splicePipes
	for i, p := range c.pipe {
		if keep && p[0] >= 0 && c.held[i] == 0 && len(pool.pipes) < splicePipesKept {
			pool.pipes = append(pool.pipes, p)
			pool.use(e.now)
			c.pipe[i] = [2]int{-1, -1}
		}
	}
	for _, fd := range []int{c.fd[0], c.fd[1], c.pipe[0][0], c.pipe[0][1], c.pipe[1][0], c.pipe[1][1]} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
