package header

import "encoding/binary"

// ARPLen is the size of an ARP packet for IPv4 over Ethernet.
const ARPLen = 28

// ARP opcodes.
const (
	ARPRequest = 1
	ARPReply   = 2
)

// ARP is a view of an Ethernet/IPv4 ARP packet.
type ARP []byte

// IsValid reports whether a is an Ethernet/IPv4 ARP packet we can read.
func (a ARP) IsValid() bool {
	return len(a) >= ARPLen && binary.BigEndian.Uint16(a[0:]) == 1 &&
		binary.BigEndian.Uint16(a[2:]) == EtherTypeIPv4 && a[4] == 6 && a[5] == 4
}

// Op is the ARP opcode.
func (a ARP) Op() uint16 { return binary.BigEndian.Uint16(a[6:]) }

// SenderMAC is the sender hardware address.
func (a ARP) SenderMAC() []byte { return a[8:14] }

// SenderIP is the sender protocol address.
func (a ARP) SenderIP() []byte { return a[14:18] }

// TargetMAC is the target hardware address.
func (a ARP) TargetMAC() []byte { return a[18:24] }

// TargetIP is the target protocol address.
func (a ARP) TargetIP() []byte { return a[24:28] }

// Encode fills a complete ARP packet in place.
func (a ARP) Encode(op uint16, sha []byte, spa []byte, tha []byte, tpa []byte) {
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], EtherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], op)
	copy(a[8:14], sha)
	copy(a[14:18], spa)
	copy(a[18:24], tha)
	copy(a[24:28], tpa)
}
