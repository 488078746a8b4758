package slirp

import (
	"net/netip"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Frame layout offsets for frames built for the guest: the Ethernet
// header, the IP header, then the L4 header. What a transport puts before
// a frame is the link's (qemusock.Link).
const (
	ipOff  = header.EthernetLen
	l4Off4 = ipOff + header.IPv4MinLen
	l4Off6 = ipOff + header.IPv6Len
)

// l4Off is where the L4 header of a frame to or from a starts: the room a
// frame needs before its L4 part.
func l4Off(a netip.Addr) int {
	if a.Is4() {
		return l4Off4
	}
	return l4Off6
}

// ipHdrLen is the IP header size of a's family.
func ipHdrLen(a netip.Addr) int { return l4Off(a) - ipOff }

// frameInput dispatches a frame from the link. A frame with a tail (its
// bytes past the head the link copied, left in guest memory by
// vhost-user) is taken as it lies only if it is a TCP segment, whose data
// goes from there to the host socket (splitTCP); any other is made whole
// first. Nothing but TCP data is ever read from guest memory.
func (e *Engine) frameInput(frame []byte, tail []unix.Iovec) {
	if len(e.fwd.held) > 0 && e.fatal == nil {
		e.fatal = e.bindHeld() // the guest runs here
	}
	if len(tail) > 0 {
		var ok bool
		if e.tail, ok = splitTCP(frame, tail); !ok {
			n := copy(e.whole[:], frame)
			for _, v := range tail {
				n += copy(e.whole[n:], unsafe.Slice(v.Base, v.Len))
			}
			frame = e.whole[:n]
		}
	}
	e.tapInput(frame)
	e.tail, e.frame = nil, nil // nothing of the link's buffers kept past its life
}

// inWhole tells whether b lies in e.whole: a frame made whole there
// (frameInput) is gone at the next such frame, before its batch ends.
func (e *Engine) inWhole(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	p, w := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(&e.whole[0]))
	return p >= w && p < w+uintptr(len(e.whole))
}

// splitTCP readies a TCP segment whose data runs on into tail: its IP
// length, in the head (the link's copy), is made to cover the head alone,
// and the tail is cut to the rest of what it claimed (past that is
// padding). The segment's headers must all be in the head. It reports
// false for anything else, which is then made whole and parsed as such.
func splitTCP(frame []byte, tail []unix.Iovec) ([]unix.Iovec, bool) {
	if len(frame) < header.EthernetLen {
		return nil, false
	}
	eth := header.Ethernet(frame)
	ip := eth.Payload()
	var l3, claimed int // the IP header's length, and the packet's
	switch eth.Type() {
	case header.EtherTypeIPv4:
		if v4 := header.IPv4(ip); len(v4) >= header.IPv4MinLen && v4.Protocol() == header.ProtoTCP {
			l3, claimed = v4.HeaderLen(), int(v4.TotalLen())
		}
	case header.EtherTypeIPv6:
		if v6 := header.IPv6(ip); len(v6) >= header.IPv6Len && v6.NextHeader() == header.ProtoTCP {
			l3, claimed = header.IPv6Len, header.IPv6Len+int(v6.PayloadLen())
		}
	}
	if l3 < header.IPv4MinLen || l3+header.TCPMinLen > len(ip) ||
		l3+header.TCP(ip[l3:]).DataOffset() > len(ip) || claimed < len(ip) {
		return nil, false
	}
	rest := claimed - len(ip)
	if rest == 0 {
		return nil, true // the tail is all padding
	}
	if iovLen(tail) < rest {
		return nil, false // truncated: parsed whole, and refused
	}
	if eth.Type() == header.EtherTypeIPv4 {
		header.IPv4(ip).SetTotalLen(len(ip))
	} else {
		header.IPv6(ip).SetPayloadLen(len(ip) - header.IPv6Len)
	}
	return trimIov(tail, 0, rest), true
}

// tapInput dispatches one Ethernet frame from the guest.
func (e *Engine) tapInput(frame []byte) {
	e.frame = frame
	if len(frame) < header.EthernetLen {
		e.Stats.Malformed++
		return
	}
	eth := header.Ethernet(frame)
	// Learn the guest's MAC from its frames, as passt does, so replies go
	// to whatever address the guest chose.
	if src := eth.Src(); src[0]&1 == 0 {
		if e.guestMAC == broadcastMAC {
			e.nextRA = e.now // a new guest: its first RA (attach)
		}
		copy(e.guestMAC[:], src)
	}
	switch {
	case eth.Type() == header.EtherTypeARP && e.cfg.has4():
		e.arpInput(header.ARP(eth.Payload()))
	case eth.Type() == header.EtherTypeIPv4 && e.cfg.has4():
		e.ipv4Input(header.IPv4(eth.Payload()))
	case eth.Type() == header.EtherTypeIPv6 && e.cfg.has6():
		e.ipv6Input(header.IPv6(eth.Payload()))
	default:
		e.Stats.Unhandled++
	}
}

func (e *Engine) ipv4Input(ip header.IPv4) {
	if !ip.IsValid() {
		e.Stats.Malformed++
		return
	}
	e.seen4(ip.Src())
	if ip.IsFragment() {
		e.frag4Input(ip)
		return
	}
	e.ip4Deliver(ip.Src(), ip.Dst(), ip.Protocol(), ip.TTL(), ip.Payload())
}

// ip4Deliver takes the upper layer of an IPv4 packet, whole or put
// together from fragments (frag.go), which must go the same way: what
// gopasst serves itself (DHCP), else on to l4Input.
func (e *Engine) ip4Deliver(src, dst netip.Addr, proto, ttl uint8, payload []byte) {
	if proto == header.ProtoUDP && !e.cfg.NoDHCP {
		if u := header.UDP(payload); u.IsValid() && u.DstPort() == dhcpServerPort {
			e.dhcpInput(u.Payload())
			return
		}
	}
	e.l4Input(src, dst, proto, ttl, payload)
}

func (e *Engine) ipv6Input(ip header.IPv6) {
	if !ip.IsValid() {
		e.Stats.Malformed++
		return
	}
	proto, payload, ok := ip.Transport()
	if !ok {
		e.Stats.Malformed++
		return
	}
	src, dst := ip.Src(), ip.Dst()
	if src.Is4In6() {
		// An IPv4-mapped source is none on the wire (RFC 6890).
		// Taken, it became the guest's address (seen6) and its flows'
		// guest side, which passt's migration stream, IPv4 mapped
		// into IPv6, reads back as IPv4 beside an IPv6 peer, and
		// refuses whole.
		e.Stats.Malformed++
		return
	}
	e.seen6(src)
	switch proto {
	case header.IPv6Fragment:
		e.frag6Input(src, dst, ip.HopLimit(), header.IPv6Frag(payload))
		return
	case header.ProtoICMPv6:
		if m := header.ICMP(payload); m.IsValid() && isNDP(m.Type()) {
			e.ndpInput(src, m, ip.HopLimit())
			return
		}
	}
	e.ip6Deliver(src, dst, proto, ip.HopLimit(), payload)
}

// ip6Deliver takes the upper layer of an IPv6 packet, whole or put
// together from fragments (frag.go), which must go the same way: what
// gopasst serves itself (DHCPv6), else on to l4Input. NDP is the
// caller's: in fragments it is ignored (RFC 6980).
func (e *Engine) ip6Deliver(src, dst netip.Addr, proto, hop uint8, payload []byte) {
	if proto == header.ProtoUDP && !e.cfg.NoDHCPv6 {
		if u := header.UDP(payload); u.IsValid() && u.DstPort() == dhcpv6ServerPort {
			// Clients send to a group; a server that gives no Server
			// Unicast option drops what comes by unicast (RFC 8415
			// 16, 18.4), as passt does.
			if dst.IsMulticast() {
				e.dhcpv6Input(src, u.Payload())
			} else {
				e.Stats.Unhandled++
			}
			return
		}
	}
	e.l4Input(src, dst, proto, hop, payload)
}

// l4Input hands a TCP, UDP or ICMP packet of either family to its
// protocol's translation, between unicast addresses only, neither of
// them loopback, as passt's tap.c and flows take them. A guest's
// multicast or broadcast (MLD reports, mDNS) would go on to the host's
// network; a host socket takes an unspecified destination, or a loopback
// one, for the host itself, which the guest reaches only through the
// address mapped to it (--map-host-loopback, none with --no-map-gw).
// ttl is the packet's TTL or hop limit, which UDP passes on.
func (e *Engine) l4Input(src, dst netip.Addr, proto, ttl uint8, payload []byte) {
	switch {
	case !isUnicast(src) || !isUnicast(dst) || src.IsLoopback() || dst.Unmap().IsLoopback():
		e.Stats.Unhandled++
	case proto == header.ProtoTCP && !e.cfg.NoTCP:
		e.tcpInput(src, dst, header.TCP(payload))
	case proto == header.ProtoUDP && !e.cfg.NoUDP:
		u := header.UDP(payload)
		if !u.IsValid() {
			e.Stats.Malformed++
			return
		}
		e.udpInput(src, dst, ttl, u)
	case (proto == header.ProtoICMP && src.Is4() || proto == header.ProtoICMPv6 && src.Is6()) && !e.cfg.NoICMP:
		e.icmpInput(src, dst, header.ICMP(payload))
	default:
		e.Stats.Unhandled++
	}
}

// isUnicast tells whether a is an address one host has: neither
// unspecified, multicast nor the limited broadcast address, even mapped
// into IPv6.
func isUnicast(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// seen4 records the address the guest last sent from, as passt does:
// inbound connections go there, since the guest may have left the DHCP
// address for one of its own (a router VM's static WAN address). A
// DHCP client's 0.0.0.0 is none.
func (e *Engine) seen4(src netip.Addr) {
	if isUnicast(src) && !src.IsLoopback() {
		e.addrSeen4 = src
	}
}

// seen6 records the global address the guest last used, as passt does:
// inbound connections go there, since the guest may have picked an
// address by SLAAC rather than take ours by DHCPv6. An IPv4-mapped
// address, global to netip, is none (ipv6Input).
func (e *Engine) seen6(src netip.Addr) {
	if src.IsGlobalUnicast() && !src.Is4In6() { // link-local is not global
		e.addrSeen6 = src
	}
}

// reserveIP returns room for one frame to dst with l4len bytes after the
// IP header, or nil when the link is full.
func (e *Engine) reserveIP(dst netip.Addr, l4len int) []byte {
	return e.reserve(l4Off(dst) + l4len)
}

// reserve returns room for one frame of n bytes, padding included, or
// nil when the link is full or no guest is attached. Frames built one at
// a time have no other reservation open: one that a caller gave up on
// (a datagram read that failed) is dropped here.
func (e *Engine) reserve(n int) []byte {
	if e.link == nil {
		return nil
	}
	e.link.Cancel()
	return e.link.Reserve(max(n, minFrameLen))
}

// minFrameLen is Ethernet's minimum frame, without the FCS. Shorter
// frames (an ARP reply, a small TCP segment) are padded with zeros, as
// passt pads them, since a guest NIC model may expect it.
const minFrameLen = 60

// pad pads a frame of size bytes with zeros to minFrameLen and returns
// its padded size.
func pad(b []byte, size int) int {
	if size < minFrameLen {
		clear(b[size:minFrameLen])
		size = minFrameLen
	}
	return size
}

// fillIP writes the Ethernet and IP headers of a frame whose L4 part
// (l4len bytes) the caller has built or will build, and returns the
// frame's size, padding included. smac is the frame's source MAC: ours
// for what gopasst itself says, the remote's as the guest should know it
// for a flow's (flowMAC). ICMPv6 goes out with hop limit 255, which
// Neighbor Discovery requires and nothing else minds.
func (e *Engine) fillIP(b []byte, smac [6]byte, src, dst netip.Addr, proto uint8, l4len int) int {
	size := pad(b, l4Off(dst)+l4len)
	eth := header.Ethernet(b)
	if dst.Is4() {
		eth.Encode(e.guestMAC, smac, header.EtherTypeIPv4)
		header.IPv4(b[ipOff:]).Encode(src, dst, proto, 64, l4len)
		return size
	}
	dmac := e.guestMAC
	if dst.IsMulticast() {
		dmac = header.MulticastMAC(dst)
	}
	eth.Encode(dmac, smac, header.EtherTypeIPv6)
	hop := uint8(64)
	if proto == header.ProtoICMPv6 {
		hop = 255
	}
	header.IPv6(b[ipOff:]).Encode(src, dst, proto, hop, l4len)
	return size
}

// sendUDP queues a UDP datagram of gopasst's own (DHCP) to the guest.
func (e *Engine) sendUDP(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload []byte) {
	b := e.reserveIP(dst, header.UDPLen+len(payload))
	if b == nil {
		return
	}
	copy(b[l4Off(dst)+header.UDPLen:], payload)
	e.commit(e.fillUDP(b, e.cfg.OurMAC, src, sport, dst, dport, len(payload)))
}

// fillUDP writes the headers of a datagram from smac whose n bytes of
// payload sit after them in b, and returns the frame's size.
func (e *Engine) fillUDP(b []byte, smac [6]byte, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, n int) int {
	l4len := header.UDPLen + n
	size := e.fillIP(b, smac, src, dst, header.ProtoUDP, l4len)
	u := header.UDP(b[l4Off(dst) : l4Off(dst)+l4len])
	u.Encode(sport, dport, n)
	sum := header.PseudoHeaderSum(header.ProtoUDP, src, dst, l4len)
	u.SetChecksum(header.Fold(header.Checksum(u, sum)))
	return size
}

// sendICMP queues an ICMP or ICMPv6 message from smac that the caller
// has built in place after fillIP, computing its checksum.
func (e *Engine) sendICMP(b []byte, smac [6]byte, src, dst netip.Addr, l4len int) {
	size := e.fillIP(b, smac, src, dst, icmpProto(dst), l4len)
	setICMPChecksum(header.ICMP(b[l4Off(dst):l4Off(dst)+l4len]), src, dst)
	e.commit(size)
}

// commit queues the frame of size bytes at the start of the oldest open
// reservation.
func (e *Engine) commit(size int) {
	e.link.Commit(size)
	e.Stats.FramesOut++
}
