package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// UDP: one host socket per guest source address and port. The socket is
// not connected, so one guest socket can talk to many peers (a resolver
// and a NTP server, say); replies carry their source, which is mapped back
// to what the guest expects.

const (
	udpIdle     = 180_000_000_000 // passt's UDP flow timeout
	udpMaxFlows = 1 << 14
	udpMaxRead  = 32 // datagrams read per readiness event
	udpMaxData  = 65507
)

type udpFlow struct {
	guest   netip.AddrPort
	idx     int32
	fd      int
	lastAct int64
}

type udpTable struct {
	flowTable[netip.AddrPort, udpFlow]
}

func (e *Engine) udpInput(src, dst netip.Addr, u header.UDP) {
	guest := netip.AddrPortFrom(src, u.SrcPort())
	_, f := e.udp.lookup(guest)
	if f == nil {
		if f = e.udpOpen(guest); f == nil {
			return
		}
	}
	f.lastAct = e.now
	to := e.dnsRedirect(netip.AddrPortFrom(dst, u.DstPort()))
	if !to.IsValid() {
		to = netip.AddrPortFrom(e.mapToHost(dst), u.DstPort())
	}
	if err := unix.Sendto(f.fd, u.Payload(), 0, e.setSA4(to.Addr(), to.Port())); err != nil {
		e.debugf("UDP %v -> %v: %v", guest, to, err)
	}
}

// udpOpen creates the host socket for a guest source. It keeps the guest's
// source port when it is free, as passt does, so peers that care about
// ports see the same one.
func (e *Engine) udpOpen(guest netip.AddrPort) *udpFlow {
	if e.udp.count >= udpMaxFlows {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		e.logf("UDP: socket: %v", err)
		return nil
	}
	if unix.Bind(fd, &unix.SockaddrInet4{Port: int(guest.Port())}) != nil {
		unix.Bind(fd, &unix.SockaddrInet4{})
	}
	idx, f := e.udp.add(guest)
	*f = udpFlow{guest: guest, idx: idx, fd: fd, lastAct: e.now}
	e.epollAdd(fd, unix.EPOLLIN, epollTag(kindUDP, e.udp.gen(idx)), idx)
	return f
}

// udpSockEvent forwards datagrams from a host socket to the guest,
// receiving each straight into its frame in the output queue.
func (e *Engine) udpSockEvent(idx int32, gen uint32) {
	f := e.udp.get(idx, gen)
	if f == nil {
		return
	}
	const off = l4Off4 + header.UDPLen
	for range udpMaxRead {
		b := e.reserve4(header.UDPLen + udpMaxData)
		if b == nil {
			return // queue full: level-triggered epoll calls again
		}
		n, from, err := recvfrom4(f.fd, b[off:])
		if err != nil {
			return
		}
		f.lastAct = e.now
		src := e.dnsReverse(from)
		if !src.IsValid() {
			src = netip.AddrPortFrom(e.mapToGuest(from.Addr()), from.Port())
		}
		e.sendUDP4(src.Addr(), src.Port(), f.guest.Addr(), f.guest.Port(), b[off:off+n])
	}
}

func (e *Engine) udpExpire() {
	e.udp.each(func(_ int32, f *udpFlow) {
		if e.now-f.lastAct > udpIdle {
			e.udpClose(f)
		}
	})
}

func (e *Engine) udpClose(f *udpFlow) {
	unix.Close(f.fd)
	e.udp.remove(f.idx, f.guest)
}

func (t *udpTable) closeAll(e *Engine) { t.each(func(_ int32, f *udpFlow) { e.udpClose(f) }) }
