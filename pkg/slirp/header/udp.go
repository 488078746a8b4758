package header

import "encoding/binary"

// UDPLen is the size of a UDP header.
const UDPLen = 8

// UDP is a view of a UDP datagram.
type UDP []byte

// IsValid reports whether the length field fits the datagram.
func (u UDP) IsValid() bool {
	if len(u) < UDPLen {
		return false
	}
	l := int(u.Length())
	return l >= UDPLen && l <= len(u)
}

// SrcPort is the source port.
func (u UDP) SrcPort() uint16 { return binary.BigEndian.Uint16(u[0:]) }

// DstPort is the destination port.
func (u UDP) DstPort() uint16 { return binary.BigEndian.Uint16(u[2:]) }

// Length is the length field, header included.
func (u UDP) Length() uint16 { return binary.BigEndian.Uint16(u[4:]) }

// Payload is the datagram's data, trimmed to the length field.
func (u UDP) Payload() []byte { return u[UDPLen:u.Length()] }

// Encode fills the header, checksum zeroed.
func (u UDP) Encode(src, dst uint16, payloadLen int) {
	binary.BigEndian.PutUint16(u[0:], src)
	binary.BigEndian.PutUint16(u[2:], dst)
	binary.BigEndian.PutUint16(u[4:], uint16(UDPLen+payloadLen))
	u[6], u[7] = 0, 0
}

// SetChecksum stores a checksum; zero becomes 0xffff as RFC 768 asks.
func (u UDP) SetChecksum(c uint16) {
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
}
