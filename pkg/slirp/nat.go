package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Address translation, decided here and nowhere else, as passt decides it
// in fwd_nat_from_tap and its way back:
//
//   - natFromGuest: where a guest packet to dst goes on the host. The
//     --map-host-loopback addresses (the gateways by default, and
//     gopasst's own link-local address, which the guest uses as its IPv6
//     router) stand for the host's loopback; the --map-guest-addr ones
//     for the host's own address, which the guest's shadows; a DNS
//     stand-in leads to the host resolver behind it, for UDP and TCP, on
//     port 53 and 853 (DNS over TLS); any other address is itself.
//   - natToGuest: how a host peer appears to the guest: as the address
//     the guest sent to, when that is what the peer stands for, else by
//     the reverse of the rules above.
//   - inboundRoute: the same for traffic that starts on the host side, at
//     a forwarded port.
//   - outbound: the source address and interface of a host socket that
//     carries a guest flow (-o, --outbound-if4, --outbound-if6).

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
	if a == e.cfg.OurLL6 && e.cfg.has6() && e.cfg.Gateway6.IsValid() {
		a = e.cfg.Gateway6 // our link-local address is the guest's router
	}
	switch {
	case a == e.cfg.HostLoopback(false):
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	case a == e.cfg.HostLoopback(true):
		return netip.AddrPortFrom(netip.IPv6Loopback(), port)
	case a == e.cfg.MapGuestAddr4:
		return netip.AddrPortFrom(e.cfg.Addr4, port)
	case a == e.cfg.MapGuestAddr6:
		return netip.AddrPortFrom(e.cfg.Addr6, port)
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
	if sent.IsValid() && withoutZone(e.natFromGuest(proto, sent)) == from {
		return sent
	}
	if isDNS(proto, from.Port()) {
		for standIn, r := range e.cfg.DNSMap {
			if r.Addr().WithZone("") == from.Addr() && standIn.Is4() == guest.Is4() {
				return netip.AddrPortFrom(standIn, from.Port())
			}
		}
	}
	if m := e.hostStandIn(from.Addr()); m.IsValid() {
		return netip.AddrPortFrom(m, from.Port())
	}
	return from
}

// withoutZone is ap as a host peer's address comes, without the zone
// of a link-local resolver's (Config.DNSMap).
func withoutZone(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().WithZone(""), ap.Port())
}

// hostStandIn is the guest address mapped to a, the host's loopback or
// its own address, if there is one.
func (e *Engine) hostStandIn(a netip.Addr) netip.Addr {
	switch {
	case a.IsLoopback():
		return e.cfg.HostLoopback(a.Is6())
	case a == e.cfg.Addr4:
		return e.cfg.MapGuestAddr4
	case a == e.cfg.Addr6:
		return e.cfg.MapGuestAddr6
	}
	return netip.Addr{}
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
// lease, or has had Addr6 from the start: Configured6); until then, or
// without IPv6, it arrives over IPv4, so a guest that never configured
// IPv6 is still reachable. Either family reaches the address the guest
// last sent from (seen4, seen6), as with passt.
// The host itself (its loopback, or its own address, which the guest
// shares) appears as the address mapped to it (--map-host-loopback,
// --map-guest-addr), else as the gateway, and so does a sender the
// guest's family cannot address; without a gateway, or a guest address
// to reach, remote is invalid and, as in passt, the flow is not forwarded.
func (e *Engine) inboundRoute(from netip.AddrPort, gport uint16) (remote, guest netip.AddrPort) {
	a := from.Addr()
	if a.Is6() && (e.addrSeen6.IsValid() || e.cfg.Configured6 && e.cfg.Addr6.IsValid()) || !e.cfg.has4() {
		switch m := e.hostStandIn(a); {
		case m.Is6():
			a = m
		case !a.Is6() || a.IsLoopback() || a == e.cfg.Addr6 || a.IsLinkLocalUnicast():
			a = e.cfg.Gateway6
		}
		to := e.addrSeen6
		if !to.IsValid() {
			to = e.cfg.Addr6 // an IPv6-only guest that has not spoken yet
		}
		if !to.IsValid() {
			return netip.AddrPort{}, netip.AddrPort{} // a link-local guest, not seen yet
		}
		return netip.AddrPortFrom(a, from.Port()), netip.AddrPortFrom(to, gport)
	}
	switch m := e.hostStandIn(a); {
	case m.Is4():
		a = m
	case !a.Is4() || a.IsLoopback() || a == e.cfg.Addr4:
		a = e.cfg.Gateway4
	}
	return netip.AddrPortFrom(a, from.Port()), netip.AddrPortFrom(e.addrSeen4, gport)
}

// bindOutbound binds fd, a new host socket for a guest flow to dst, to
// the outbound interface and source address of dst's family, keeping
// source port port if it is free (0: any). It binds a wildcard address
// only to keep a port. A flow to the host's loopback gets no interface
// and no source address: no other interface reaches it. A UDP socket
// serves one guest port whatever it sends to, so its first destination
// decides. as6 says fd is an IPv6 socket, which takes an IPv4 source
// mapped into IPv6. An IPv4-mapped dst is IPv4's, as it is to passt: the
// flow leaves over IPv4.
func (e *Engine) bindOutbound(fd int, as6 bool, dst netip.Addr, port uint16) error {
	dst = dst.Unmap()
	var src netip.Addr
	var ifname string
	switch {
	case dst.IsLoopback():
	case dst.Is4():
		src, ifname = e.cfg.Outbound4, e.cfg.OutboundIf4
	default:
		src, ifname = e.cfg.Outbound6, e.cfg.OutboundIf6
	}
	if ifname != "" {
		if err := unix.BindToDevice(fd, ifname); err != nil {
			return err
		}
	}
	switch {
	case !src.IsValid() && port == 0:
		return nil
	case !src.IsValid() && as6:
		src = netip.IPv6Unspecified()
	case !src.IsValid():
		src = netip.IPv4Unspecified()
	case as6:
		src = netip.AddrFrom16(src.As16())
	}
	if port != 0 && bind(fd, netip.AddrPortFrom(src, port)) == nil {
		return nil
	}
	return bind(fd, netip.AddrPortFrom(src, 0))
}
