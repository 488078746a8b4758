package header

import "encoding/binary"

// ICMPEchoLen is the size of an ICMP or ICMPv6 echo header, and of the
// header of their error messages.
const ICMPEchoLen = 8

// ICMPv4 types and destination-unreachable codes gopasst handles.
const (
	ICMPv4EchoReply   = 0
	ICMPv4Unreachable = 3
	ICMPv4Echo        = 8

	ICMPv4NetUnreachable  = 0
	ICMPv4HostUnreachable = 1
	ICMPv4PortUnreachable = 3
	ICMPv4FragNeeded      = 4
	ICMPv4AdminProhibited = 13
)

// ICMPv6 types and destination-unreachable codes gopasst handles.
const (
	ICMPv6Unreachable = 1
	ICMPv6TooBig      = 2
	ICMPv6Echo        = 128
	ICMPv6EchoReply   = 129
	ICMPv6RouterSol   = 133
	ICMPv6RouterAdv   = 134
	ICMPv6NeighSol    = 135
	ICMPv6NeighAdv    = 136

	ICMPv6NoRoute         = 0
	ICMPv6AdminProhibited = 1
	ICMPv6AddrUnreachable = 3
	ICMPv6PortUnreachable = 4
)

// ICMP is a view of an ICMP (v4 or v6) message.
type ICMP []byte

// IsValid reports whether the message holds at least an echo header.
func (i ICMP) IsValid() bool { return len(i) >= ICMPEchoLen }

// Type is the message type.
func (i ICMP) Type() uint8 { return i[0] }

// Code is the message code.
func (i ICMP) Code() uint8 { return i[1] }

// Ident is the echo identifier.
func (i ICMP) Ident() uint16 { return binary.BigEndian.Uint16(i[4:]) }

// SetIdent rewrites the echo identifier.
func (i ICMP) SetIdent(id uint16) { binary.BigEndian.PutUint16(i[4:], id) }

// Seq is the echo sequence number.
func (i ICMP) Seq() uint16 { return binary.BigEndian.Uint16(i[6:]) }

// SetChecksum stores the checksum field.
func (i ICMP) SetChecksum(c uint16) { binary.BigEndian.PutUint16(i[2:], c) }

// SetMTU4 stores the next hop's MTU of an ICMP "fragmentation needed"
// error (RFC 1191).
func (i ICMP) SetMTU4(mtu uint16) { binary.BigEndian.PutUint16(i[6:], mtu) }

// SetMTU6 stores the MTU of an ICMPv6 "packet too big" error.
func (i ICMP) SetMTU6(mtu uint32) { binary.BigEndian.PutUint32(i[4:], mtu) }

// Encode writes type and code, and zeroes the checksum and the four bytes
// after it (the unused field of an error message).
func (i ICMP) Encode(typ, code uint8) {
	i[0], i[1] = typ, code
	clear(i[2:ICMPEchoLen])
}
