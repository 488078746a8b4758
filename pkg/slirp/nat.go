package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// Address translation, decided here and nowhere else, as passt decides it
// in fwd_nat_from_tap and its way back:
//
//   - natFromGuest: where a guest packet to dst goes on the host. The
//     gateway addresses (and gopasst's own link-local address, which the
//     guest uses as its IPv6 router) stand for the host's loopback; a DNS
//     stand-in leads to the host resolver behind it, for UDP and TCP, on
//     port 53 and 853 (DNS over TLS); any other address is itself.
//   - natToGuest: how a host peer appears to the guest: as the address
//     the guest sent to, when that is what the peer stands for, else by
//     the reverse of the rules above.
//   - inboundRoute: the same for traffic that starts on the host side, at
//     a forwarded port.

// isDNS reports whether a flow to port is DNS, which passt redirects: port
// 53, or 853 for DNS over TLS, over UDP or TCP.
func isDNS(proto uint8, port uint16) bool {
	return (proto == header.ProtoUDP || proto == header.ProtoTCP) && (port == dnsPort || port == dnsTLSPort)
}

// natFromGuest returns the host address for a guest packet to dst, or the
// zero AddrPort when no host socket can reach dst: a link-local address
// other than ours has no scope on the host to be sent with.
func (e *Engine) natFromGuest(proto uint8, dst netip.AddrPort) netip.AddrPort {
	a, port := dst.Addr(), dst.Port()
	if r, ok := e.cfg.DNSMap[a]; ok && isDNS(proto, port) {
		return netip.AddrPortFrom(r.Addr(), port)
	}
	if a == e.cfg.OurLL6 && e.cfg.has6() {
		a = e.cfg.Gateway6 // our link-local address is the guest's router
	}
	switch {
	case e.cfg.NoMapGW:
	case a == e.cfg.Gateway4 && e.cfg.has4():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	case a == e.cfg.Gateway6 && e.cfg.has6():
		return netip.AddrPortFrom(netip.IPv6Loopback(), port)
	}
	if a.IsLinkLocalUnicast() {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(a, port)
}

// natToGuest returns how a host peer, from, appears to a guest address
// of guest's family. sent is where the guest last sent on this flow, if
// anywhere: a reply from what sent stands for comes from sent, so the
// guest sees its answer come from where it asked.
func (e *Engine) natToGuest(proto uint8, from netip.AddrPort, guest netip.Addr, sent netip.AddrPort) netip.AddrPort {
	if sent.IsValid() && e.natFromGuest(proto, sent) == from {
		return sent
	}
	if isDNS(proto, from.Port()) {
		for standIn, r := range e.cfg.DNSMap {
			if r.Addr() == from.Addr() && standIn.Is4() == guest.Is4() {
				return netip.AddrPortFrom(standIn, from.Port())
			}
		}
	}
	if !e.cfg.NoMapGW && from.Addr().IsLoopback() {
		return netip.AddrPortFrom(e.gateway(from.Addr()), from.Port())
	}
	return from
}

// gateway is the gateway address of a's family.
func (e *Engine) gateway(a netip.Addr) netip.Addr {
	if a.Is4() {
		return e.cfg.Gateway4
	}
	return e.cfg.Gateway6
}

// inboundRoute picks, for a connection or datagram from the host side to
// guest port gport, the guest's address and how the sender appears to
// the guest. An IPv6 sender reaches the guest over IPv6 once the guest
// uses IPv6 (it has sent from a global address, or taken the DHCPv6
// lease), at the address it last used, as with passt; until then, or
// without IPv6, it arrives over IPv4, so a guest that never configured
// IPv6 is still reachable. The host itself (its loopback, or its own
// address, which the guest shares) appears as the gateway, and so does a
// sender the guest's family cannot address.
func (e *Engine) inboundRoute(from netip.AddrPort, gport uint16) (remote, guest netip.AddrPort) {
	a := from.Addr()
	if a.Is6() && e.addrSeen6.IsValid() || !e.cfg.has4() {
		if !a.Is6() || a.IsLoopback() || a == e.cfg.Addr6 || a.IsLinkLocalUnicast() {
			a = e.cfg.Gateway6
		}
		to := e.addrSeen6
		if !to.IsValid() {
			to = e.cfg.Addr6 // an IPv6-only guest that has not spoken yet
		}
		return netip.AddrPortFrom(a, from.Port()), netip.AddrPortFrom(to, gport)
	}
	if !a.Is4() || a.IsLoopback() || a == e.cfg.Addr4 {
		a = e.cfg.Gateway4
	}
	return netip.AddrPortFrom(a, from.Port()), netip.AddrPortFrom(e.cfg.Addr4, gport)
}
