package header

import "encoding/binary"

// EtherType values gopasst handles.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806
	EtherTypeIPv6 = 0x86dd
)

// EthernetLen is the size of an untagged Ethernet header.
const EthernetLen = 14

// Ethernet is a view of an Ethernet II header.
type Ethernet []byte

// Dst is the destination MAC address.
func (e Ethernet) Dst() []byte { return e[0:6] }

// Src is the source MAC address.
func (e Ethernet) Src() []byte { return e[6:12] }

// Type is the EtherType.
func (e Ethernet) Type() uint16 { return binary.BigEndian.Uint16(e[12:]) }

// Encode fills the header in place.
func (e Ethernet) Encode(dst, src [6]byte, typ uint16) {
	copy(e[0:6], dst[:])
	copy(e[6:12], src[:])
	binary.BigEndian.PutUint16(e[12:], typ)
}

// Payload is what follows the header.
func (e Ethernet) Payload() []byte { return e[EthernetLen:] }
