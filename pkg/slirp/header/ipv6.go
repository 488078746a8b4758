package header

import (
	"encoding/binary"
	"net/netip"
)

// IPv6Len is the size of the fixed IPv6 header.
const IPv6Len = 40

// IPv6 extension headers that Transport walks past. A fragment header
// (IPv6Fragment) is not among them: it ends the walk, for reassembly.
const (
	ipv6HopByHop = 0
	ipv6Routing  = 43
	ipv6DestOpts = 60
)

// IPv6Fragment is the fragment header's protocol number, and
// IPv6FragmentLen its size.
const (
	IPv6Fragment    = 44
	IPv6FragmentLen = 8
)

// EncodeFragment writes a fragment header at b: the fragments carry
// proto, this one its data at byte offset off (a multiple of 8) of what
// was fragmented, more if fragments follow, all of them identification id.
func EncodeFragment(b []byte, proto uint8, off int, more bool, id uint32) {
	fo := uint16(off)
	if more {
		fo |= 1 // M
	}
	b[0], b[1] = proto, 0
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], id)
}

// IPv6Frag is a view of a fragment header followed by its fragment.
type IPv6Frag []byte

// IsValid reports whether the header is complete.
func (f IPv6Frag) IsValid() bool { return len(f) >= IPv6FragmentLen }

// NextHeader is the protocol of what was fragmented.
func (f IPv6Frag) NextHeader() uint8 { return f[0] }

// Offset is where the fragment lies in what was fragmented, in bytes.
func (f IPv6Frag) Offset() int { return int(binary.BigEndian.Uint16(f[2:]) &^ 7) }

// More reports the M flag: fragments follow.
func (f IPv6Frag) More() bool { return f[3]&1 != 0 }

// ID is the identification, which the fragments share.
func (f IPv6Frag) ID() uint32 { return binary.BigEndian.Uint32(f[4:]) }

// Payload is the fragment.
func (f IPv6Frag) Payload() []byte { return f[IPv6FragmentLen:] }

// IPv6 is a view of an IPv6 header followed by its payload.
type IPv6 []byte

// IsValid reports whether the fixed header is complete and the payload
// length fits the buffer.
func (ip IPv6) IsValid() bool {
	return len(ip) >= IPv6Len && ip[0]>>4 == 6 && IPv6Len+int(ip.PayloadLen()) <= len(ip)
}

// PayloadLen is the length of everything after the fixed header.
func (ip IPv6) PayloadLen() uint16 { return binary.BigEndian.Uint16(ip[4:]) }

// SetPayloadLen rewrites the payload length.
func (ip IPv6) SetPayloadLen(n int) { binary.BigEndian.PutUint16(ip[4:], uint16(n)) }

// NextHeader is the protocol number of the first header after the fixed one.
func (ip IPv6) NextHeader() uint8 { return ip[6] }

// HopLimit is the hop limit.
func (ip IPv6) HopLimit() uint8 { return ip[7] }

// Src is the source address.
func (ip IPv6) Src() netip.Addr { return netip.AddrFrom16([16]byte(ip[8:24])) }

// Dst is the destination address.
func (ip IPv6) Dst() netip.Addr { return netip.AddrFrom16([16]byte(ip[24:40])) }

// Payload is what follows the fixed header, trimmed to the payload length.
func (ip IPv6) Payload() []byte { return ip[IPv6Len : IPv6Len+int(ip.PayloadLen())] }

// Transport skips hop-by-hop, routing and destination options headers (a
// guest's MLD reports carry a hop-by-hop header) and returns the upper
// layer protocol and its bytes. ok is false for a truncated chain.
func (ip IPv6) Transport() (proto uint8, payload []byte, ok bool) {
	return SkipExtensions(ip.NextHeader(), ip.Payload())
}

// SkipExtensions walks past the extension headers Transport skips, from
// proto's at payload: a reassembled datagram's may have some before its
// upper layer.
func SkipExtensions(proto uint8, payload []byte) (uint8, []byte, bool) {
	for IsExtension(proto) {
		if len(payload) < 8 {
			return 0, nil, false
		}
		l := (int(payload[1]) + 1) * 8
		if l > len(payload) {
			return 0, nil, false
		}
		proto, payload = payload[0], payload[l:]
	}
	return proto, payload, true
}

// IsExtension tells whether proto is an extension header that Transport
// skips.
func IsExtension(proto uint8) bool {
	return proto == ipv6HopByHop || proto == ipv6Routing || proto == ipv6DestOpts
}

// Encode writes the fixed header for a payload of payloadLen bytes.
func (ip IPv6) Encode(src, dst netip.Addr, proto uint8, hopLimit uint8, payloadLen int) {
	binary.BigEndian.PutUint32(ip[0:], 6<<28)
	binary.BigEndian.PutUint16(ip[4:], uint16(payloadLen))
	ip[6] = proto
	ip[7] = hopLimit
	s, d := src.As16(), dst.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
}

// MulticastMAC is the Ethernet address an IPv6 multicast group maps to
// (RFC 2464): 33:33 and the group's last four bytes.
func MulticastMAC(group netip.Addr) [6]byte {
	g := group.As16()
	return [6]byte{0x33, 0x33, g[12], g[13], g[14], g[15]}
}
