package slirp

import (
	"net/netip"
	"slices"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// arpInput answers every ARP request except those for the guest's own
// address: gopasst stands for the whole network, so every other address is
// reachable through it, at the MAC the host's neighbour table has for the
// address, else ours (neigh.go). Not answering for the guest's address
// keeps the guest's duplicate address detection quiet.
//
// A probe (RFC 5227: from 0.0.0.0) asks whether anyone holds an address
// the guest means to take, and is answered only for an address someone
// does hold: gopasst's own, or a host neighbour's. Answered for any, as
// passt answers it, a guest that checks a static address of its own
// (NetworkManager does, by default) found it taken and gave it up.
func (e *Engine) arpInput(a header.ARP) {
	if !a.IsValid() {
		e.Stats.Malformed++
		return
	}
	if a.Op() != header.ARPRequest {
		return
	}
	target := netip.AddrFrom4([4]byte(a.TargetIP()))
	sender := netip.AddrFrom4([4]byte(a.SenderIP()))
	if target == e.cfg.Addr4 || target == e.addrSeen4 || target == sender ||
		sender.IsUnspecified() && !e.held4(target) {
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

// held4 tells whether an IPv4 address of the guest's network is held:
// gopasst's own (the gateway, the mapped addresses, the resolvers it
// stands for), or a host neighbour's.
func (e *Engine) held4(a netip.Addr) bool {
	_, neigh := e.neigh.entries[a]
	_, dns := e.cfg.DNSMap[a]
	return neigh || dns || a == e.cfg.Gateway4 || a == e.cfg.MapHostLoopback4 || a == e.cfg.MapGuestAddr4 ||
		slices.Contains(e.cfg.DNS4, a)
}
