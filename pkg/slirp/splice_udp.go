package slirp

import (
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// -U, pasta's namespace-to-host UDP: a datagram to a namespace loopback
// port (SpliceListen) goes to the host's loopback port, each namespace
// sender through a host socket of its own, connected, whose replies go
// back to that sender from the namespace's port. Senders count against
// --max-udp with the guest's UDP flows, and are forgotten after udpIdle,
// as those are.

type spliceUDPKey struct {
	ln   int32          // its listener, in e.spliceLn
	peer netip.AddrPort // the namespace's sender
}

type spliceUDPFlow struct {
	key     spliceUDPKey
	idx     int32
	fd      int // connected to the host's loopback port
	lastAct time.Duration
}

// spliceUDPIn relays what namespace senders sent to a -U listener.
func (e *Engine) spliceUDPIn(lidx int32, l spliceListener) {
	for range udpMaxRead {
		n, from, err := recvfrom(l.fd, e.spliceBuf[:])
		if err != nil {
			return
		}
		key := spliceUDPKey{lidx, from}
		_, f := e.spliceUDP.lookup(key)
		if f == nil {
			if f = e.spliceUDPOpen(key, netip.AddrPortFrom(loopbackOf(from.Addr()), l.port)); f == nil {
				continue
			}
		}
		f.lastAct = e.now
		unix.Write(f.fd, e.spliceBuf[:n]) // UDP may drop
	}
}

// spliceUDPOpen connects a host socket to to for the sender key.
func (e *Engine) spliceUDPOpen(key spliceUDPKey, to netip.AddrPort) *spliceUDPFlow {
	if e.atCap(capUDP, e.udp.count+e.fwd.udpIn.count+e.spliceUDP.count, e.cfg.MaxUDP) {
		return nil
	}
	fd, err := unix.Socket(familyOf(to.Addr()), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	if err := connect(fd, to); err != nil {
		unix.Close(fd)
		return nil
	}
	idx, f := e.spliceUDP.add(key)
	*f = spliceUDPFlow{key: key, idx: idx, fd: fd}
	if err := e.epollAdd(fd, unix.EPOLLIN, epollRef{kind: kindSpliceUDP, gen: e.spliceUDP.gen(idx), idx: idx}); err != nil {
		e.spliceUDPClose(f)
		return nil
	}
	return f
}

// spliceUDPEvent sends a host service's replies back to the namespace's
// sender.
func (e *Engine) spliceUDPEvent(idx int32, gen uint32) {
	f := e.spliceUDP.get(idx, gen)
	if f == nil {
		return
	}
	l := e.spliceLn[f.key.ln]
	for range udpMaxRead {
		n, err := unix.Read(f.fd, e.spliceBuf[:])
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			continue // an ICMP error for an earlier datagram: UDP may drop
		}
		f.lastAct = e.now
		sendto(l.fd, e.spliceBuf[:n], f.key.peer)
	}
}

func (e *Engine) spliceUDPClose(f *spliceUDPFlow) {
	unix.Close(f.fd)
	e.spliceUDP.remove(f.idx, f.key)
}

// spliceUDPExpire forgets idle senders, and those of listener ln when it
// is closed (ln >= 0).
func (e *Engine) spliceUDPExpire(ln int32) {
	e.spliceUDP.each(func(_ int32, f *spliceUDPFlow) {
		if f.key.ln == ln || e.now-f.lastAct > udpIdle {
			e.spliceUDPClose(f)
		}
	})
}
