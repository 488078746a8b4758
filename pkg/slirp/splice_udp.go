package slirp

import (
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// pasta's UDP between the host's loopback and the namespace, socket to
// socket, both ways alike: a sender's datagrams to a socket of ours (lfd)
// go on through a socket of the sender's own, connected to where they
// go, whose replies go back to the sender from lfd.
//
//   - -U: lfd is a namespace loopback port (SpliceListen); the sender's
//     socket is the engine's, connected to the port on the host's
//     loopback address the sender sent to, as pasta: 127.0.0.2 is the
//     host's 127.0.0.2. The replies go back from that address.
//   - -u from the host's loopback: lfd is the forward's host socket; the
//     sender's socket is the helper's, made in the namespace and
//     connected to where -t's loopback path goes (Config.Splicer).
//
// Senders count against --max-udp with the guest's UDP flows, and are
// forgotten after udpIdle, as those are, or when lfd is closed.

type spliceUDPKey struct {
	lfd   int            // the socket the sender sent to
	local netip.Addr     // the address it sent to on lfd, where the kernel tells (recvPktinfo); else invalid
	peer  netip.AddrPort // the sender
}

type spliceUDPFlow struct {
	key     spliceUDPKey
	idx     int32
	fd      int // connected to where the sender's datagrams go
	lastAct time.Duration
}

// spliceUDPIn relays what namespace senders sent to a -U listener.
func (e *Engine) spliceUDPIn(l spliceListener) {
	for range udpMaxRead {
		n, from, to, err := recvfromTo(l.fd, e.spliceBuf[:], nil)
		if err != nil {
			return
		}
		// Datagrams to the namespace's own addresses come through lo
		// too: only loopback ones are the host's, as spliceListenEvent.
		if n <= len(e.spliceBuf) && to.IsLoopback() {
			e.spliceUDPSend(spliceUDPKey{l.fd, to, from}, e.spliceBuf[:n], l.port, false)
		}
	}
}

// spliceUDPSend sends payload, which key's sender sent to its lfd, on
// through the sender's own socket, opened first if need be: to port on
// the host's key.local, or with the helper to the namespace's port (ns).
func (e *Engine) spliceUDPSend(key spliceUDPKey, payload []byte, port uint16, ns bool) {
	_, f := e.spliceUDP.lookup(key)
	if f == nil {
		if f = e.spliceUDPOpen(key, port, ns); f == nil {
			return
		}
	}
	f.lastAct = e.now
	// UDP may drop. A refusal may be an earlier datagram's (ICMP), which
	// a connected socket keeps for its next send, and returns instead of
	// sending: this one gets another try, as in udpFlush.
	if _, err := unix.Write(f.fd, payload); err != nil && err != unix.EAGAIN {
		unix.Write(f.fd, payload)
	}
}

// spliceUDPOpen connects a socket for the sender key, to port on the
// host's key.local or in the namespace (ns).
func (e *Engine) spliceUDPOpen(key spliceUDPKey, port uint16, ns bool) *spliceUDPFlow {
	if e.udpAtCap() {
		return nil
	}
	fd, err := -1, error(nil)
	if ns {
		fd, err = e.cfg.Splicer.Dial(UDP, key.peer, port)
	} else {
		to := netip.AddrPortFrom(key.local, port)
		if fd, err = unix.Socket(socketFamily(to.Addr()), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err == nil {
			err = connect(fd, to)
		}
	}
	if err != nil {
		e.debugf("UDP %v to port %d: %v", key.peer, port, err)
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil
	}
	idx, f := e.spliceUDP.add(key)
	*f = spliceUDPFlow{key: key, idx: idx, fd: fd}
	if err := e.epollAdd(fd, unix.EPOLLIN|unix.EPOLLRDHUP, epollRef{kind: kindSpliceUDP, gen: e.spliceUDP.gen(idx), idx: idx}); err != nil {
		e.spliceUDPClose(f)
		return nil
	}
	return f
}

// spliceUDPEvent sends a host service's replies back to the namespace's
// sender.
func (e *Engine) spliceUDPEvent(idx int32, gen uint32, events uint32) {
	f := e.spliceUDP.get(idx, gen)
	if f == nil {
		return
	}
	if shutDown(events) {
		// One from the namespace's agent, shut down through a copy it
		// kept: the sender gets a new one with its next datagram.
		e.spliceUDPClose(f)
		return
	}
	if events&unix.EPOLLERR != 0 {
		dropErrors(f.fd)
	}
	for range udpMaxRead {
		n, err := unix.Read(f.fd, e.spliceBuf[:])
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			continue // an ICMP error for an earlier datagram: UDP may drop
		}
		f.lastAct = e.now
		if f.key.local.IsValid() {
			sendtoFrom(f.key.lfd, e.spliceBuf[:n], f.key.local, f.key.peer)
		} else {
			sendto(f.key.lfd, e.spliceBuf[:n], f.key.peer)
		}
	}
}

// spliceUDPClose forgets f and closes its socket, out of epoll first: a
// socket from the namespace's agent may have a copy there, which would
// keep it watched.
func (e *Engine) spliceUDPClose(f *spliceUDPFlow) {
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, f.fd, nil)
	unix.Close(f.fd)
	e.spliceUDP.remove(f.idx, f.key)
}

// spliceUDPExpire forgets idle senders, and those that sent to lfd, which
// is being closed (lfd >= 0).
func (e *Engine) spliceUDPExpire(lfd int) {
	e.spliceUDP.each(func(_ int32, f *spliceUDPFlow) {
		if f.key.lfd == lfd || e.now-f.lastAct > udpIdle {
			e.spliceUDPClose(f)
		}
	})
}
