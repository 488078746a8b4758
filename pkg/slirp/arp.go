package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// arpInput answers every ARP request except those for the guest's own
// address: gopasst stands for the whole network, so every other address is
// reachable through it, at the MAC the host's neighbour table has for the
// address, else ours (neigh.go). Not answering for the guest's address
// keeps the guest's duplicate address detection quiet.
func (e *Engine) arpInput(a header.ARP) {
	if !a.IsValid() {
		e.Stats.Malformed++
		return
	}
	if a.Op() != header.ARPRequest {
		return
	}
	target := netip.AddrFrom4([4]byte(a.TargetIP()))
	if target == e.cfg.Addr4 || target == netip.AddrFrom4([4]byte(a.SenderIP())) {
		return
	}
	b := e.reserve(header.EthernetLen + header.ARPLen)
	if b == nil {
		return
	}
	var senderMAC [6]byte
	copy(senderMAC[:], a.SenderMAC())
	mac := e.neighMAC(target)
	header.Ethernet(b).Encode(senderMAC, e.cfg.OurMAC, header.EtherTypeARP)
	header.ARP(b[header.EthernetLen:]).Encode(header.ARPReply,
		mac[:], a.TargetIP(), senderMAC[:], a.SenderIP())
	e.commit(pad(b, header.EthernetLen+header.ARPLen))
}
