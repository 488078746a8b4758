package slirp

import (
	"net/netip"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// ICMP and ICMPv6 echo through unprivileged "ping" sockets (SOCK_DGRAM,
// IPPROTO_ICMP or IPPROTO_ICMPV6). The kernel owns the echo identifier of
// such a socket, so each guest identifier gets its own socket and replies
// get the guest's identifier back. The host decides who may open ping
// sockets (net.ipv4.ping_group_range, for both families); when it says
// no, we say so once.
//
// This file also builds the destination-unreachable errors that tell the
// guest at once that a host socket could not reach where it asked.

const (
	icmpIdle = time.Minute
)

type icmpKey struct {
	guest netip.Addr
	id    uint16
}

type icmpFlow struct {
	key     icmpKey
	sent    netip.Addr // where the guest last sent an echo request
	idx     int32
	fd      int
	lastAct time.Duration
	mac     remoteMAC // the source MAC of replies (flowMAC)
}

type icmpTable struct {
	flowTable[icmpKey, icmpFlow]
	warned bool
}

func (e *Engine) icmpInput(src, dst netip.Addr, m header.ICMP) {
	if !m.IsValid() {
		e.Stats.Malformed++
		return
	}
	// Echoes only, between unicast addresses (l4Input). The echo type is
	// its own family's: the other's would take a ping socket the kernel
	// then sends nothing on.
	echo := uint8(header.ICMPv4Echo)
	if src.Is6() {
		echo = header.ICMPv6Echo
	}
	if m.Type() != echo {
		e.Stats.Unhandled++
		return
	}
	// An ICMPv6 ping socket sends nothing to an IPv4-mapped address
	// (EINVAL): no route, as for a link-local address not ours.
	to := e.natFromGuest(header.ProtoICMP, netip.AddrPortFrom(dst, 0))
	if !to.IsValid() || to.Addr().Is4In6() {
		e.sendUnreachable(unix.ENETUNREACH, src, dst, icmpProto(src), m)
		return
	}
	key := icmpKey{src, m.Ident()}
	_, f := e.icmp.lookup(key)
	if f == nil {
		if e.atCap(capICMP, e.icmp.count, e.cfg.MaxICMP) {
			e.sendUnreachable(unix.EACCES, src, dst, icmpProto(src), m)
			return
		}
		if f = e.icmpOpen(key, to.Addr()); f == nil {
			return
		}
	}
	f.lastAct = e.now
	f.sent = dst
	if err := sendto(f.fd, m, to); err != nil {
		e.debugf("ICMP echo to %v: %v", dst, err)
	}
}

// icmpProto is the ICMP protocol of a's family.
func icmpProto(a netip.Addr) uint8 {
	if a.Is4() {
		return header.ProtoICMP
	}
	return header.ProtoICMPv6
}

// icmpOpen opens the ping socket for a guest's echo identifier, bound
// as outbound sockets are for dst, the first request's host address.
func (e *Engine) icmpOpen(key icmpKey, dst netip.Addr) *icmpFlow {
	fd, err := unix.Socket(socketFamily(key.guest), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(icmpProto(key.guest)))
	if err != nil {
		if !e.icmp.warned {
			e.icmp.warned = true
			e.warnf("ICMP echo unavailable: cannot open a ping socket (%v); "+
				"the host's net.ipv4.ping_group_range must include our group", err)
		}
		return nil
	}
	if err := e.bindOutbound(fd, key.guest.Is6(), dst, 0); err != nil {
		e.logLimited(openICMP, "ICMP %v: %v", key.guest, err)
		unix.Close(fd)
		return nil
	}
	idx, f := e.icmp.add(key)
	*f = icmpFlow{key: key, idx: idx, fd: fd, lastAct: e.now}
	if err := e.epollAdd(fd, unix.EPOLLIN, epollRef{kind: kindICMP, gen: e.icmp.gen(idx), idx: idx}); err != nil {
		e.logLimited(openICMP, "ICMP %v: %v", key.guest, err)
		e.icmpClose(f)
		return nil
	}
	return f
}

// icmpSockEvent relays echo replies to the guest.
func (e *Engine) icmpSockEvent(idx int32, gen uint32) {
	f := e.icmp.get(idx, gen)
	if f == nil {
		return
	}
	guest := f.key.guest
	off := l4Off(guest)
	var oob [8]byte
	for range udpMaxRead {
		room := e.mtu() - ipHdrLen(guest)
		b := e.reserveIP(guest, room)
		if b == nil {
			// No room, or no guest: the reply is dropped, as a full link
			// drops it, rather than left for epoll to report at every
			// turn with nothing to take it.
			if _, _, err := recvfrom(f.fd, e.spliceBuf[:]); err != nil {
				return
			}
			e.Stats.Dropped++
			continue
		}
		// What the frame cannot hold goes on in spliceBuf, after room
		// for the head. A ping socket cuts a longer reply to the
		// buffers and reports the length it cut it to, MSG_TRUNC or
		// not, so only full buffers tell that it did not fit.
		n, from, _, err := recvmsg(f.fd, b[off:off+room], e.spliceBuf[room:], oob[:], unix.MSG_DONTWAIT)
		if err != nil {
			return
		}
		if n < header.ICMPEchoLen {
			continue
		}
		src := e.natToGuest(header.ProtoICMP, from, guest, netip.AddrPortFrom(f.sent, 0))
		mac := e.flowMAC(&f.mac, src.Addr())
		if n <= room {
			header.ICMP(b[off:]).SetIdent(f.key.id)
			e.sendICMP(b, mac, src.Addr(), guest, n)
			continue
		}
		// Past the guest's MTU: in fragments, as a router would send it.
		if n >= len(e.spliceBuf) {
			e.Stats.Dropped++ // cut short
			continue
		}
		m := header.ICMP(e.spliceBuf[:n])
		copy(m, b[off:off+room])
		m.SetIdent(f.key.id)
		setICMPChecksum(m, src.Addr(), guest)
		e.sendFragments(mac, src.Addr(), guest, icmpProto(guest), m)
	}
}

// setICMPChecksum computes the checksum of m, from src to dst: ICMPv6's
// covers the pseudo-header, ICMP's does not.
func setICMPChecksum(m header.ICMP, src, dst netip.Addr) {
	var sum uint64
	if dst.Is6() {
		sum = header.PseudoHeaderSum(header.ProtoICMPv6, src, dst, len(m))
	}
	m.SetChecksum(0)
	m.SetChecksum(header.Fold(header.Checksum(m, sum)))
}

func (e *Engine) icmpExpire() {
	e.icmp.each(func(_ int32, f *icmpFlow) {
		if e.now-f.lastAct > icmpIdle {
			e.icmpClose(f)
		}
	})
}

func (e *Engine) icmpClose(f *icmpFlow) {
	unix.Close(f.fd)
	e.icmp.remove(f.idx, f.key)
}

func (t *icmpTable) closeAll(e *Engine) { t.each(func(_ int32, f *icmpFlow) { e.icmpClose(f) }) }

// unreachableCodes maps the error a host socket reported to the
// destination-unreachable codes of ICMP and ICMPv6.
var unreachableCodes = map[unix.Errno][2]uint8{
	unix.ECONNREFUSED: {header.ICMPv4PortUnreachable, header.ICMPv6PortUnreachable},
	unix.EHOSTUNREACH: {header.ICMPv4HostUnreachable, header.ICMPv6AddrUnreachable},
	unix.ETIMEDOUT:    {header.ICMPv4HostUnreachable, header.ICMPv6AddrUnreachable},
	unix.ENETUNREACH:  {header.ICMPv4NetUnreachable, header.ICMPv6NoRoute},
	unix.EACCES:       {header.ICMPv4AdminProhibited, header.ICMPv6AdminProhibited},
	unix.EPERM:        {header.ICMPv4AdminProhibited, header.ICMPv6AdminProhibited},
}

// icmpQuoteMax is how much of the offending packet an error to a quotes:
// as much as keeps the error within the minimum MTU (576 bytes for IPv4,
// RFC 1812; 1280 for IPv6, RFC 4443), and within the guest's, which
// IPv4 allows down to 68 bytes.
func (e *Engine) icmpQuoteMax(a netip.Addr) int {
	limit := 1280
	if a.Is4() {
		limit = min(576, e.mtu())
	}
	return limit - 2*ipHdrLen(a) - header.ICMPEchoLen
}

// sendUnreachable sends the guest a destination-unreachable error for a
// packet it sent from guest to remote, whose L4 part began with l4 (that
// is what the guest's stack matches the error against). The error comes
// from remote when the port was refused, and from the gateway otherwise,
// as a router would send it. It reports false when err has no ICMP form.
func (e *Engine) sendUnreachable(err error, guest, remote netip.Addr, proto uint8, l4 []byte) bool {
	errno, _ := err.(unix.Errno)
	codes, ok := unreachableCodes[errno]
	if !ok {
		return false
	}
	from := e.gateway(guest)
	if errno == unix.ECONNREFUSED {
		from = remote
	}
	if !from.IsValid() {
		return false // no gateway to send it from
	}
	ie := icmpErr{v6: guest.Is6(), typ: header.ICMPv4Unreachable, code: codes[0]}
	if ie.v6 {
		ie.typ, ie.code = header.ICMPv6Unreachable, codes[1]
	}
	e.sendICMPError(&ie, from, guest, remote, proto, l4)
	return true
}

// sendICMPError sends the guest, from from (and from's MAC as the guest
// should know it), the ICMP or ICMPv6 error ie about a packet it sent
// from guest to remote, whose L4 part began with l4. ie is of guest's
// family.
func (e *Engine) sendICMPError(ie *icmpErr, from, guest, remote netip.Addr, proto uint8, l4 []byte) {
	l4 = l4[:min(len(l4), e.icmpQuoteMax(guest))]
	iplen := ipHdrLen(guest)
	l4len := header.ICMPEchoLen + iplen + len(l4)
	b := e.reserveIP(guest, l4len)
	if b == nil {
		return
	}
	m := header.ICMP(b[l4Off(guest):])
	m.Encode(ie.typ, ie.code)
	quote := m[header.ICMPEchoLen:]
	if guest.Is4() {
		if ie.typ == header.ICMPv4Unreachable && ie.code == header.ICMPv4FragNeeded {
			m.SetMTU4(uint16(min(ie.mtu, 0xffff)))
		}
		header.IPv4(quote).Encode(guest, remote, proto, 64, len(l4))
	} else {
		if ie.typ == header.ICMPv6TooBig {
			m.SetMTU6(ie.mtu)
		}
		header.IPv6(quote).Encode(guest, remote, proto, 64, len(l4))
	}
	copy(quote[iplen:], l4)
	e.sendICMP(b, e.neighMAC(from), from, guest, l4len)
}
