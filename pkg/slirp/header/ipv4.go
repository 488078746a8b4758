package header

import (
	"encoding/binary"
	"net/netip"
)

// IPv4MinLen is the size of an IPv4 header without options.
const IPv4MinLen = 20

// IP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// IPv4 is a view of an IPv4 header followed by its payload.
type IPv4 []byte

// IsValid reports whether the header is complete and self-consistent. A
// fragment may be valid: IsFragment tells it.
func (ip IPv4) IsValid() bool {
	if len(ip) < IPv4MinLen || ip[0]>>4 != 4 {
		return false
	}
	hl := ip.HeaderLen()
	tl := int(ip.TotalLen())
	return hl >= IPv4MinLen && tl >= hl && tl <= len(ip)
}

// HeaderLen is the header length in bytes, options included.
func (ip IPv4) HeaderLen() int { return int(ip[0]&0xf) * 4 }

// TotalLen is the datagram length from the header.
func (ip IPv4) TotalLen() uint16 { return binary.BigEndian.Uint16(ip[2:]) }

// SetTotalLen rewrites the datagram length. The header checksum is left
// as it was: gopasst never checks a guest's.
func (ip IPv4) SetTotalLen(n int) { binary.BigEndian.PutUint16(ip[2:], uint16(n)) }

// IsFragment reports a non-first fragment or a set More Fragments flag.
func (ip IPv4) IsFragment() bool { return binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 }

// ID is the identification, which a datagram's fragments share.
func (ip IPv4) ID() uint16 { return binary.BigEndian.Uint16(ip[4:]) }

// DontFragment reports the Don't Fragment flag.
func (ip IPv4) DontFragment() bool { return ip[6]&0x40 != 0 }

// MoreFragments reports the More Fragments flag.
func (ip IPv4) MoreFragments() bool { return ip[6]&0x20 != 0 }

// FragmentOffset is where the payload lies in its datagram, in bytes.
func (ip IPv4) FragmentOffset() int { return int(binary.BigEndian.Uint16(ip[6:])&0x1fff) * 8 }

// TTL is the time to live.
func (ip IPv4) TTL() uint8 { return ip[8] }

// Protocol is the payload's IP protocol number.
func (ip IPv4) Protocol() uint8 { return ip[9] }

// Src is the source address.
func (ip IPv4) Src() netip.Addr { return netip.AddrFrom4([4]byte(ip[12:16])) }

// Dst is the destination address.
func (ip IPv4) Dst() netip.Addr { return netip.AddrFrom4([4]byte(ip[16:20])) }

// Payload is the datagram's payload, trimmed to the header's total length.
func (ip IPv4) Payload() []byte { return ip[ip.HeaderLen():ip.TotalLen()] }

// Encode writes a 20-byte header with its checksum for a payload of
// payloadLen bytes.
func (ip IPv4) Encode(src, dst netip.Addr, proto uint8, ttl uint8, payloadLen int) {
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:], uint16(IPv4MinLen+payloadLen))
	binary.BigEndian.PutUint32(ip[4:], 0x00004000) // ID 0, DF
	ip[8] = ttl
	ip[9] = proto
	ip[10], ip[11] = 0, 0
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], Fold(Checksum(ip[:IPv4MinLen], 0)))
}

// SetFragment makes an encoded header a fragment's: identification id,
// data at byte offset off (a multiple of 8) of the whole datagram, more
// if fragments follow. The header checksum is computed again.
func (ip IPv4) SetFragment(id uint16, off int, more bool) {
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000 // MF
	}
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], Fold(Checksum(ip[:IPv4MinLen], 0)))
}
