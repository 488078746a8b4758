package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// Frame layout offsets for IPv4 frames built in the output queue.
const (
	ethOff   = qemusock.LenSize
	ip4Off   = ethOff + header.EthernetLen
	l4Off4   = ip4Off + header.IPv4MinLen
	hdrRoom4 = l4Off4 // bytes before the L4 header, length prefix included
)

// tapInput dispatches one Ethernet frame from the guest.
func (e *Engine) tapInput(frame []byte) {
	if len(frame) < header.EthernetLen {
		e.Stats.Malformed++
		return
	}
	eth := header.Ethernet(frame)
	// Learn the guest's MAC from its frames, as passt does, so replies go
	// to whatever address the guest chose.
	if src := eth.Src(); src[0]&1 == 0 {
		copy(e.guestMAC[:], src)
	}
	switch eth.Type() {
	case header.EtherTypeARP:
		e.arpInput(header.ARP(eth.Payload()))
	case header.EtherTypeIPv4:
		e.ipv4Input(header.IPv4(eth.Payload()))
	default:
		e.Stats.Unhandled++
	}
}

func (e *Engine) ipv4Input(ip header.IPv4) {
	if !ip.IsValid() {
		e.Stats.Malformed++
		return
	}
	src, dst := ip.Src(), ip.Dst()
	switch ip.Protocol() {
	case header.ProtoTCP:
		if !e.cfg.NoTCP {
			e.tcpInput(src, dst, header.TCP(ip.Payload()))
			return
		}
	case header.ProtoUDP:
		u := header.UDP(ip.Payload())
		if !u.IsValid() {
			e.Stats.Malformed++
			return
		}
		if u.DstPort() == dhcpServerPort && !e.cfg.NoDHCP {
			e.dhcpInput(u.Payload())
			return
		}
		if !e.cfg.NoUDP {
			e.udpInput(src, dst, u)
			return
		}
	case header.ProtoICMP:
		if !e.cfg.NoICMP {
			e.icmpInput(src, dst, header.ICMP(ip.Payload()))
			return
		}
	}
	e.Stats.Unhandled++
}

// reserve4 returns queue space for one IPv4 frame with l4len bytes after
// the IP header, length prefix included, or nil when the queue is full.
func (e *Engine) reserve4(l4len int) []byte {
	if e.tapFd < 0 {
		return nil
	}
	return e.wr.Reserve(hdrRoom4 + l4len)
}

// fill4 writes the length prefix, Ethernet and IPv4 headers of a frame
// whose L4 part (l4len bytes) the caller has built or will build.
func (e *Engine) fill4(b []byte, src, dst netip.Addr, proto uint8, l4len int) {
	putFrameLen(b, header.EthernetLen+header.IPv4MinLen+l4len)
	header.Ethernet(b[ethOff:]).Encode(e.guestMAC, e.cfg.OurMAC, header.EtherTypeIPv4)
	header.IPv4(b[ip4Off:]).Encode(src, dst, proto, 64, l4len)
}

// sendUDP4 queues a UDP datagram to the guest. payload may already sit at
// its place in the queue (then the copy is a no-op) or anywhere else.
func (e *Engine) sendUDP4(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload []byte) bool {
	l4len := header.UDPLen + len(payload)
	b := e.reserve4(l4len)
	if b == nil {
		return false
	}
	e.fill4(b, src, dst, header.ProtoUDP, l4len)
	u := header.UDP(b[l4Off4:])
	u.Encode(sport, dport, len(payload))
	copy(u[header.UDPLen:], payload)
	sum := header.PseudoHeaderSum(header.ProtoUDP, src, dst, l4len)
	u.SetChecksum(header.Fold(header.Checksum(u[:l4len], sum)))
	e.wr.Commit(hdrRoom4 + l4len)
	e.Stats.FramesOut++
	return true
}

func putFrameLen(b []byte, n int) { qemusock.PutLen(b, n) }
