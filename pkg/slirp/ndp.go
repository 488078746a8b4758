package slirp

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// Neighbor Discovery (RFC 4861), as passt answers it. gopasst stands for
// every address on the link but the guest's own, so it answers every
// Neighbor Solicitation except duplicate address detection, with the MAC
// the host's neighbour table has for the target, else its own
// (neigh.go). Router Advertisements, solicited and every raRepeat, give
// the guest the /64 of its address to autoconfigure in, the MTU, and the
// resolvers and search list (RFC 8106); the M and O flags send it to
// DHCPv6 for the address gopasst offers and the rest.

const (
	raRepeat      = 10 * time.Minute // RFC 4861's MaxRtrAdvInterval
	raRouterLife  = 65535            // the longest RFC 8319 allows, in seconds
	raInfinite    = 0xffffffff       // prefix and DNS lifetimes
	raFlagManaged = 0x80
	raFlagOther   = 0x40
	naRouter      = 0x80
	naSolicited   = 0x40
	naOverride    = 0x20
	prefixFlags   = 0xc0 // on-link, autonomous
)

var allNodes = netip.MustParseAddr("ff02::1")

func isNDP(typ uint8) bool {
	return typ >= header.ICMPv6RouterSol && typ <= header.ICMPv6NeighAdv
}

// ndpInput answers a Router or Neighbor Solicitation. Messages that could
// not have come from a neighbour (hop limit below 255) or whose options
// are broken are dropped, as RFC 4861 requires.
func (e *Engine) ndpInput(src netip.Addr, m header.ICMP, hopLimit uint8) {
	if e.cfg.NoNDP {
		return
	}
	var optOff int
	switch m.Type() {
	case header.ICMPv6NeighSol:
		optOff = header.NDPNSLen
	case header.ICMPv6RouterSol:
		optOff = header.NDPRSLen
	default:
		return // advertisements from the guest: nothing to learn
	}
	if hopLimit != 255 || len(m) < optOff || !header.NDPOptionsValid(m[optOff:]) {
		e.Stats.Malformed++
		return
	}
	if m.Type() == header.ICMPv6RouterSol {
		if !e.cfg.NoRA {
			dst := src
			if src.IsUnspecified() {
				dst = allNodes
			}
			e.sendRA(dst)
		}
		return
	}
	// An unspecified source is duplicate address detection: the address
	// is the guest's to take, so nobody answers.
	if target := header.NDPTarget(m); !src.IsUnspecified() && target != src {
		e.sendNA(src, target)
	}
}

// sendNA advertises target's MAC as the guest should know it (neighMAC)
// to dst: an answer to a solicitation, or, to a multicast dst, an
// unsolicited one, whose solicited flag a guest requires clear (RFC 4861
// 7.1.2: it drops the advertisement otherwise). Either says router,
// which the gateway is to the guest.
func (e *Engine) sendNA(dst, target netip.Addr) {
	const l4len = header.NDPNALen + 8
	b := e.reserveIP(dst, l4len)
	if b == nil {
		return
	}
	m := header.ICMP(b[l4Off6 : l4Off6+l4len])
	m.Encode(header.ICMPv6NeighAdv, 0)
	m[4] = naRouter | naOverride
	if !dst.IsMulticast() {
		m[4] |= naSolicited
	}
	t := target.As16()
	copy(m[8:24], t[:])
	putLLOption(m[header.NDPNALen:], header.NDPOptTgtLL, e.neighMAC(target))
	e.sendICMP(b, e.cfg.OurMAC, e.cfg.OurLL6, dst, l4len)
}

// putLLOption writes a link-layer address option with mac.
func putLLOption(b []byte, typ uint8, mac [6]byte) {
	b[0], b[1] = typ, 1
	copy(b[2:8], mac[:])
}

// linkLocal6 is the link-local prefix, fe80::/64.
var linkLocal6 = netip.MustParseAddr("fe80::")

// sendRA sends a Router Advertisement to dst.
func (e *Engine) sendRA(dst netip.Addr) {
	e.nextRA = e.now + raRepeat
	var rdnss []netip.Addr
	if !e.cfg.NoDHCPDNS {
		rdnss = e.cfg.DNS6
	}
	var dnssl []byte
	if !e.cfg.NoDHCPSearch && len(rdnss) > 0 {
		// Search domains only with resolvers to search, as passt.
		dnssl = encodeDomains(e.cfg.Search)
	}
	l4len := header.NDPRALen + 32 + 8 // prefix, source link-layer
	if !e.cfg.NoMTUOption {
		l4len += 8
	}
	// The resolvers, then the search list, as many as the guest's MTU
	// and the options' length fields take: a host may name any number
	// of resolvers, and a guest drops an RA past its MTU whole.
	room := e.mtu() - header.IPv6Len - l4len
	if n := min(len(rdnss), 127, (room-8)/16); n > 0 {
		rdnss = rdnss[:n]
		l4len += 8 + 16*n
		room -= 8 + 16*n
	} else {
		rdnss, dnssl = nil, nil
	}
	if len(dnssl) > 0 && len(dnssl) <= 254*8 && 8+(len(dnssl)+7)/8*8 <= room {
		l4len += 8 + (len(dnssl)+7)/8*8
	} else {
		dnssl = nil
	}
	b := e.reserveIP(dst, l4len)
	if b == nil {
		return
	}
	m := header.ICMP(b[l4Off6 : l4Off6+l4len])
	clear(m)
	m.Encode(header.ICMPv6RouterAdv, 0)
	m[4] = 64 // the hop limit the guest should use
	if !e.cfg.NoDHCPv6 {
		m[5] = raFlagManaged | raFlagOther
	}
	binary.BigEndian.PutUint16(m[6:], raRouterLife)
	o := m[header.NDPRALen:]

	o[0], o[1], o[2], o[3] = header.NDPOptPrefix, 4, 64, prefixFlags
	binary.BigEndian.PutUint32(o[4:], raInfinite)
	binary.BigEndian.PutUint32(o[8:], raInfinite)
	// In local mode, with no address to give, the prefix is the link's
	// own, as passt's: a guest makes no address from it.
	p := netip.PrefixFrom(cmp.Or(e.cfg.Addr6, linkLocal6), 64).Masked().Addr().As16()
	copy(o[16:32], p[:])
	o = o[32:]

	if !e.cfg.NoMTUOption {
		o[0], o[1] = header.NDPOptMTU, 1
		binary.BigEndian.PutUint32(o[4:], uint32(e.mtu()))
		o = o[8:]
	}

	if n := len(rdnss); n > 0 {
		o[0], o[1] = header.NDPOptRDNSS, uint8(1+2*n)
		binary.BigEndian.PutUint32(o[4:], raInfinite)
		for i, d := range rdnss {
			a := d.As16()
			copy(o[8+16*i:], a[:])
		}
		o = o[8+16*n:]
	}
	if len(dnssl) > 0 {
		units := 1 + (len(dnssl)+7)/8
		o[0], o[1] = header.NDPOptDNSSL, uint8(units)
		binary.BigEndian.PutUint32(o[4:], raInfinite)
		copy(o[8:], dnssl)
		o = o[units*8:]
	}
	putLLOption(o, header.NDPOptSrcLL, e.cfg.OurMAC)
	e.sendICMP(b, e.cfg.OurMAC, e.cfg.OurLL6, dst, l4len)
}

// raTimer sends the periodic unsolicited advertisement.
func (e *Engine) raTimer() {
	if e.sendsRA() && e.now >= e.nextRA {
		e.sendRA(allNodes)
	}
}

// sendsRA tells whether a guest is there to hear unsolicited RAs.
func (e *Engine) sendsRA() bool {
	return e.cfg.has6() && !e.cfg.NoNDP && !e.cfg.NoRA && e.link != nil
}
