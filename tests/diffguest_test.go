package tests

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// Differential probes of what gopasst and upstream passt answer a guest:
// the same crafted frames to each, over the stream socket, and their
// answers decoded into one line per frame.

var (
	guestLL6  = netip.MustParseAddr("fe80::42")
	guestIP4  = netip.MustParseAddr(hostAddr)
	gw4       = netip.MustParseAddr(hostGW)
	bcast4    = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	any4      = netip.IPv4Unspecified()
	dhcp6Mcst = netip.MustParseAddr("ff02::1:2")
	allRtrs   = netip.MustParseAddr("ff02::2")
	fwd4      = netip.MustParseAddr("198.51.100.53") // --dns-forward, in the dns-forward case
	fwd6      = netip.MustParseAddr("2001:db8:1::53")
)

// sum16 is the Internet checksum of b, starting from s.
func sum16(s uint32, b []byte) uint16 {
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func pseudo(src, dst netip.Addr, proto uint8, n int) uint32 {
	var s uint32
	for _, b := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i < len(b); i += 2 {
			s += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	return s + uint32(proto) + uint32(n)
}

// ethFrame wraps an IP packet (or ARP) from mac.
func ethFrame(dst, src []byte, typ uint16, p []byte) []byte {
	b := append(slices.Clone(dst), src...)
	return append(binary.BigEndian.AppendUint16(b, typ), p...)
}

var bcastMAC = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
var ourMAC = []byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}

// ipPacket builds an IPv4 or IPv6 packet around l4, with its checksum
// filled in at csumOff (-1: none).
func ipPacket(src, dst netip.Addr, proto uint8, hlim uint8, l4 []byte, csumOff int) []byte {
	l4 = slices.Clone(l4)
	if csumOff >= 0 && (src.Is6() || proto != 1) {
		binary.BigEndian.PutUint16(l4[csumOff:], 0)
		binary.BigEndian.PutUint16(l4[csumOff:], sum16(pseudo(src, dst, proto, len(l4)), l4))
	} else if csumOff >= 0 {
		binary.BigEndian.PutUint16(l4[csumOff:], 0)
		binary.BigEndian.PutUint16(l4[csumOff:], sum16(0, l4))
	}
	if src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		h[6] = 0x40
		h[8], h[9] = hlim, proto
		copy(h[12:], src.AsSlice())
		copy(h[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(h[10:], sum16(0, h))
		return append(h, l4...)
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
	h[6], h[7] = proto, hlim
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, l4...)
}

func udpPacket(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, payload []byte) []byte {
	u := binary.BigEndian.AppendUint16(nil, sport)
	u = binary.BigEndian.AppendUint16(u, dport)
	u = binary.BigEndian.AppendUint16(u, uint16(8+len(payload)))
	u = append(u, 0, 0)
	return ipPacket(src, dst, 17, 64, append(u, payload...), 6)
}

func guestFrame(dstMAC []byte, p []byte) []byte {
	typ := uint16(0x0800)
	if p[0]>>4 == 6 {
		typ = 0x86dd
	}
	return ethFrame(dstMAC, testMAC, typ, p)
}

func arpFrame(op uint16, sha []byte, sip, tip netip.Addr) []byte {
	a := []byte{0, 1, 8, 0, 6, 4}
	a = binary.BigEndian.AppendUint16(a, op)
	a = append(a, sha...)
	a = append(a, sip.AsSlice()...)
	a = append(a, 0, 0, 0, 0, 0, 0)
	a = append(a, tip.AsSlice()...)
	return ethFrame(bcastMAC, sha, 0x0806, a)
}

// dhcpMsg is a BOOTREQUEST from chaddr; typ 0 leaves option 53 out.
func dhcpMsg(chaddr []byte, typ byte, flags uint16, ciaddr netip.Addr, opts ...[]byte) []byte {
	b := make([]byte, 236)
	b[0], b[1], b[2] = 1, 1, 6
	copy(b[4:], []byte{0xde, 0xad, 0xbe, 0xef})
	binary.BigEndian.PutUint16(b[10:], flags)
	copy(b[12:], ciaddr.AsSlice())
	copy(b[28:], chaddr)
	b = append(b, 99, 130, 83, 99)
	if typ != 0 {
		b = append(b, 53, 1, typ)
	}
	b = append(b, 55, 9, 1, 3, 6, 12, 15, 26, 28, 119, 121)
	for _, o := range opts {
		b = append(b, o...)
	}
	b = append(b, 255)
	for len(b) < 300 {
		b = append(b, 0)
	}
	return b
}

func dhcpFrame(chaddr []byte, src netip.Addr, msg []byte) []byte {
	return ethFrame(bcastMAC, chaddr, 0x0800, udpPacket(src, 68, bcast4, 67, msg))
}

func opt6(code uint16, val []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, code)
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	return append(b, val...)
}

var clientDUID = opt6(1, []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 0x42})

func iaNA(addrs ...netip.Addr) []byte {
	v := []byte{0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0}
	for _, a := range addrs {
		v = append(v, opt6(5, append(a.AsSlice(), make([]byte, 8)...))...)
	}
	return opt6(3, v)
}

func dhcp6Frame(typ byte, opts ...[]byte) []byte {
	m := []byte{typ, 0x12, 0x34, 0x56}
	for _, o := range opts {
		m = append(m, o...)
	}
	return guestFrame([]byte{0x33, 0x33, 0, 1, 0, 2}, udpPacket(guestLL6, 546, dhcp6Mcst, 547, m))
}

func icmp6Frame(src, dst netip.Addr, dstMAC []byte, m []byte) []byte {
	return guestFrame(dstMAC, ipPacket(src, dst, 58, 255, m, 2))
}

func nsMsg(target netip.Addr) []byte {
	m := append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, target.AsSlice()...)
	return append(m, 1, 1, 2, 0, 0, 0, 0, 0x42)
}

func echoMsg(v6 bool, id uint16) []byte {
	t := byte(8)
	if v6 {
		t = 128
	}
	m := []byte{t, 0, 0, 0}
	m = binary.BigEndian.AppendUint16(m, id)
	return append(binary.BigEndian.AppendUint16(m, 1), []byte("gopasst-probe")...)
}

func tcpSyn(sport, dport uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = append(b, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0)
	return b
}

// oddName is a Windows-like host name: long, with characters a DNS
// label may not hold.
var oddName = []byte("DESKTOP-Ünïcode_name with spaces.and.dots-" + strings.Repeat("x", 40))

// tmp6 is a temporary (RFC 8981) address in the guest's prefix.
var tmp6 = netip.MustParseAddr("2001:db8:1:0:9d3c:41e2:7a0b:15f3")

var allNodes6 = netip.MustParseAddr("ff02::1")

// prlAll is a parameter request list asking for every option.
func prlAll() []byte {
	b := []byte{55, 254}
	for i := 1; i <= 254; i++ {
		b = append(b, byte(i))
	}
	return b
}

// withGiaddr sets a DHCP message's relay agent address.
func withGiaddr(m []byte) []byte {
	copy(m[24:28], []byte{192, 0, 2, 7})
	return m
}

// iaNAid is an empty IA_NA with the given IAID.
func iaNAid(id byte) []byte {
	return opt6(3, []byte{0, 0, 0, id, 0, 0, 0, 0, 0, 0, 0, 0})
}

// iaPD is an IA_PD (RFC 8415 21.21) hinting at a /56.
func iaPD() []byte {
	p := append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 56}, make([]byte, 16)...)
	return opt6(25, append([]byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}, opt6(26, p)...))
}

// solNode is a's solicited-node multicast address, solNodeMAC its MAC.
func solNode(a netip.Addr) netip.Addr {
	b := netip.MustParseAddr("ff02::1:ff00:0").As16()
	s := a.As16()
	copy(b[13:], s[13:])
	return netip.AddrFrom16(b)
}

func solNodeMAC(a netip.Addr) []byte {
	s := a.As16()
	return []byte{0x33, 0x33, 0xff, s[13], s[14], s[15]}
}

// probe is one exchange: the frames the guest sends, given what the
// backend answered so far (DHCPv6's server identifier).
type probe struct {
	name   string
	frames func(st *probeState) [][]byte
}

type probeState struct {
	serverID []byte     // the DHCPv6 server identifier option last seen
	routerLL netip.Addr // the backend's link-local address
}

// llName names the backend's link-local address, which is its host
// namespace's and differs from run to run.
func llName(a netip.Addr) string {
	if a.IsLinkLocalUnicast() && a != guestLL6 {
		return "ourLL"
	}
	return a.String()
}

func one(f []byte) func(*probeState) [][]byte {
	return func(*probeState) [][]byte { return [][]byte{f} }
}

// withSID sends a DHCPv6 message with the server's identifier.
func withSID(typ byte, opts ...[]byte) func(*probeState) [][]byte {
	return func(st *probeState) [][]byte {
		return [][]byte{dhcp6Frame(typ, append([][]byte{clientDUID, st.serverID}, opts...)...)}
	}
}

func guestProbes() []probe {
	host6 := netip.MustParseAddr(host6Addr)
	other6 := netip.MustParseAddr("2001:db8:1::99")
	gw6 := netip.MustParseAddr(host6GW)
	mac2 := []byte{0x02, 0, 0, 0, 0, 0x43}
	rs := icmp6Frame(guestLL6, allRtrs, []byte{0x33, 0x33, 0, 0, 0, 2},
		[]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 0x42})
	return []probe{
		{"arp-gateway", one(arpFrame(1, testMAC, guestIP4, gw4))},
		{"arp-other", one(arpFrame(1, testMAC, guestIP4, netip.MustParseAddr("198.51.100.50")))},
		{"arp-own", one(arpFrame(1, testMAC, any4, guestIP4))},
		{"arp-probe-gw", one(arpFrame(1, testMAC, any4, gw4))},
		{"arp-probe-free", one(arpFrame(1, testMAC, any4, netip.MustParseAddr("198.51.100.60")))},
		{"arp-gratuitous", one(arpFrame(1, testMAC, guestIP4, guestIP4))},
		{"arp-offlink", one(arpFrame(1, testMAC, guestIP4, netip.MustParseAddr("203.0.113.9")))},
		{"dhcp-discover", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4)))},
		{"dhcp-discover-bcast", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0x8000, any4)))},
		{"dhcp-discover-rapid", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{80, 0})))},
		{"dhcp-discover-fqdn-s", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{81, 3, 1, 0, 0})))},
		{"dhcp-request", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 3, 0, any4,
			append([]byte{50, 4}, guestIP4.AsSlice()...), append([]byte{54, 4}, gw4.AsSlice()...))))},
		{"dhcp-request-other", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 3, 0, any4,
			[]byte{50, 4, 198, 51, 100, 99})))},
		{"dhcp-renew", one(dhcpFrame(testMAC, guestIP4, dhcpMsg(testMAC, 3, 0, guestIP4)))},
		{"dhcp-inform", one(dhcpFrame(testMAC, guestIP4, dhcpMsg(testMAC, 8, 0, guestIP4)))},
		{"dhcp-release", one(dhcpFrame(testMAC, guestIP4, dhcpMsg(testMAC, 7, 0, guestIP4)))},
		{"dhcp-decline", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 4, 0, any4, append([]byte{50, 4}, guestIP4.AsSlice()...))))},
		{"bootp", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 0, 0, any4)))},
		{"dhcp-other-mac", one(dhcpFrame(mac2, any4, dhcpMsg(mac2, 1, 0, any4)))},
		{"rs", one(rs)},
		{"rs-unspec", one(icmp6Frame(netip.IPv6Unspecified(), allRtrs, []byte{0x33, 0x33, 0, 0, 0, 2},
			[]byte{133, 0, 0, 0, 0, 0, 0, 0}))},
		{"ns-gateway", one(icmp6Frame(guestLL6, gw6, ourMAC, nsMsg(gw6)))},
		{"ns-other", one(icmp6Frame(host6, other6, ourMAC, nsMsg(other6)))},
		{"ns-own", one(icmp6Frame(host6, host6, ourMAC, nsMsg(host6)))},
		{"ns-dad", one(icmp6Frame(netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1:ff00:2"), []byte{0x33, 0x33, 0xff, 0, 0, 2}, nsMsg(host6)[:24]))},
		{"dhcp6-solicit", one(dhcp6Frame(1, clientDUID, iaNA(), opt6(6, []byte{0, 23, 0, 24}), opt6(8, []byte{0, 0})))},
		{"dhcp6-solicit-rapid", one(dhcp6Frame(1, clientDUID, iaNA(), opt6(14, nil)))},
		{"dhcp6-solicit-fqdn-s", one(dhcp6Frame(1, clientDUID, iaNA(), opt6(39, []byte{1, 0})))},
		{"dhcp6-request", withSID(3, iaNA(host6))},
		{"dhcp6-request-other", withSID(3, iaNA(other6))},
		{"dhcp6-renew", withSID(5, iaNA(host6))},
		{"dhcp6-rebind", one(dhcp6Frame(6, clientDUID, iaNA(host6)))},
		{"dhcp6-rebind-sid", withSID(6, iaNA(host6))},
		{"dhcp6-confirm", one(dhcp6Frame(4, clientDUID, iaNA(host6)))},
		{"dhcp6-confirm-other", one(dhcp6Frame(4, clientDUID, iaNA(netip.MustParseAddr("2001:db8:9::1"))))},
		{"dhcp6-info", one(dhcp6Frame(11, clientDUID))},
		{"dhcp6-release", withSID(8, iaNA(host6))},
		{"dhcp6-decline", withSID(9, iaNA(host6))},
		{"dhcp-discover-prl-huge", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, prlAll())))},
		{"dhcp-discover-windows", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4,
			[]byte{61, 7, 1, 2, 0, 0, 0, 0, 0x42}, append([]byte{12, byte(len(oddName))}, oddName...),
			append([]byte{81, byte(3 + len(oddName)), 0, 0, 0}, oddName...),
			[]byte{55, 14, 1, 3, 6, 15, 31, 33, 43, 44, 46, 47, 119, 121, 249, 252})))},
		{"dhcp-discover-fqdn-n", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{81, 8, 0x08 | 0x04, 0, 0, 3, 'v', 'm', '1', 0})))},
		{"dhcp-discover-v6only", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{55, 4, 1, 3, 6, 108})))},
		{"dhcp-discover-overload", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{52, 1, 3})))},
		{"dhcp-discover-want-other", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 1, 0, any4, []byte{50, 4, 198, 51, 100, 99})))},
		{"dhcp-request-giaddr", one(dhcpFrame(testMAC, any4, withGiaddr(dhcpMsg(testMAC, 3, 0, any4,
			append([]byte{50, 4}, guestIP4.AsSlice()...), append([]byte{54, 4}, gw4.AsSlice()...)))))},
		{"dhcp-request-cid1", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 3, 0, any4,
			append([]byte{50, 4}, guestIP4.AsSlice()...), []byte{61, 3, 0, 'a', 'b'})))},
		{"dhcp-request-cid2", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 3, 0x8000, any4,
			append([]byte{50, 4}, guestIP4.AsSlice()...), []byte{61, 3, 0, 'c', 'd'})))},
		{"dhcp-request-sid-other", one(dhcpFrame(testMAC, any4, dhcpMsg(testMAC, 3, 0, any4,
			append([]byte{50, 4}, guestIP4.AsSlice()...), []byte{54, 4, 192, 0, 2, 1})))},
		{"dhcp-inform-bcast", one(dhcpFrame(testMAC, guestIP4, dhcpMsg(testMAC, 8, 0x8000, guestIP4)))},
		{"dhcp6-solicit-pd", one(dhcp6Frame(1, clientDUID, iaNA(), iaPD(), opt6(20, nil),
			opt6(6, []byte{0, 23, 0, 24, 0, 17, 0, 82, 0, 64, 0, 94}), opt6(8, []byte{0, 0})))},
		{"dhcp6-solicit-pd-only", one(dhcp6Frame(1, clientDUID, iaPD(), opt6(8, []byte{0, 0})))},
		{"dhcp6-solicit-many-ia", one(dhcp6Frame(1, clientDUID, iaNA(), iaNAid(8), iaNAid(9), opt6(4, []byte{0, 0, 0, 10}), iaPD()))},
		{"dhcp6-solicit-no-ia", one(dhcp6Frame(1, clientDUID, opt6(6, []byte{0, 23})))},
		{"dhcp6-request-pd", withSID(3, iaNA(host6), iaPD(), opt6(20, nil))},
		{"dhcp6-renew-pd", withSID(5, iaNA(host6), iaPD())},
		{"dhcp6-rebind-pd", one(dhcp6Frame(6, clientDUID, iaNA(host6), iaPD()))},
		{"dhcp6-request-sid-other", one(dhcp6Frame(3, clientDUID, opt6(2, []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 1}), iaNA(host6)))},
		{"dhcp6-info-sid", withSID(11)},
		{"dhcp6-info-sid-other", one(dhcp6Frame(11, clientDUID, opt6(2, []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 1})))},
		{"dhcp6-info-oro", one(dhcp6Frame(11, clientDUID, opt6(6, []byte{0, 23, 0, 24, 0, 31, 0, 32, 0, 56, 0, 82}), opt6(8, []byte{0, 0})))},
		{"dhcp6-release-sid-other", one(dhcp6Frame(8, clientDUID, opt6(2, []byte{0, 3, 0, 1, 2, 0, 0, 0, 0, 1}), iaNA(host6)))},
		{"ns-dad-gw", one(icmp6Frame(netip.IPv6Unspecified(), solNode(gw6), solNodeMAC(gw6), nsMsg(gw6)[:24]))},
		{"ns-dad-ll", func(st *probeState) [][]byte {
			if !st.routerLL.IsValid() {
				return nil // no IPv6 from the backend (mtu68)
			}
			return [][]byte{icmp6Frame(netip.IPv6Unspecified(), solNode(st.routerLL), solNodeMAC(st.routerLL), nsMsg(st.routerLL)[:24])}
		}},
		{"ns-temp", one(icmp6Frame(tmp6, gw6, ourMAC, nsMsg(gw6)))},
		{"ns-offprefix", one(icmp6Frame(netip.MustParseAddr("2001:db8:9::5"), gw6, ourMAC, nsMsg(gw6)))},
		{"na-unsol-gw", one(icmp6Frame(guestLL6, allNodes6, []byte{0x33, 0x33, 0, 0, 0, 1},
			append(append([]byte{136, 0, 0, 0, 0x20, 0, 0, 0}, gw6.AsSlice()...), 2, 1, 2, 0, 0, 0, 0, 0x42)))},
		{"ra-from-guest", one(icmp6Frame(guestLL6, allNodes6, []byte{0x33, 0x33, 0, 0, 0, 1},
			append([]byte{134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 3, 4, 64, 0xc0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0},
				netip.MustParseAddr("2001:db8:77::").AsSlice()...)))},
		{"mld-report", one(guestFrame([]byte{0x33, 0x33, 0, 0, 0, 0x16}, ipPacket(guestLL6, netip.MustParseAddr("ff02::16"), 58, 1,
			append([]byte{143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0}, solNode(host6).AsSlice()...), 2)))},
		{"rs-storm", func(*probeState) [][]byte { return [][]byte{rs, rs, rs, rs, rs} }},
		{"ping6-temp", one(guestFrame(ourMAC, ipPacket(tmp6, gw6, 58, 64, echoMsg(true, 0x4249), 2)))},
		{"ping6-offprefix", one(guestFrame(ourMAC, ipPacket(netip.MustParseAddr("2001:db8:9::5"), gw6, 58, 64, echoMsg(true, 0x424a), 2)))},
		{"ping4-other-src", one(guestFrame(ourMAC, ipPacket(netip.MustParseAddr("198.51.100.123"), gw4, 1, 64, echoMsg(false, 0x424b), 2)))},
		{"ping4-other-mac", one(ethFrame(ourMAC, mac2, 0x0800, ipPacket(guestIP4, gw4, 1, 64, echoMsg(false, 0x424c), 2)))},
		{"arp-after-mac", one(arpFrame(1, testMAC, guestIP4, gw4))},
		{"ping4-gw", one(guestFrame(ourMAC, ipPacket(guestIP4, gw4, 1, 64, echoMsg(false, 0x4242), 2)))},
		{"ping6-gw", one(guestFrame(ourMAC, ipPacket(host6, gw6, 58, 64, echoMsg(true, 0x4243), 2)))},
		{"ping6-ll", func(st *probeState) [][]byte {
			return [][]byte{guestFrame(ourMAC, ipPacket(guestLL6, st.routerLL, 58, 64, echoMsg(true, 0x4245), 2))}
		}},
		{"ping4-big", one(guestFrame(ourMAC, ipPacket(guestIP4, gw4, 1, 64, append(echoMsg(false, 0x4246), make([]byte, 1400)...), 2)))},
		{"ping6-big", one(guestFrame(ourMAC, ipPacket(host6, gw6, 58, 64, append(echoMsg(true, 0x4247), make([]byte, 1400)...), 2)))},
		{"ping4-offlink", one(guestFrame(ourMAC, ipPacket(guestIP4, netip.MustParseAddr("203.0.113.9"), 1, 64, echoMsg(false, 0x4244), 2)))},
		{"udp4-gw-closed", one(guestFrame(ourMAC, udpPacket(guestIP4, 40000, gw4, 9, []byte("x"))))},
		{"udp6-gw-closed", one(guestFrame(ourMAC, udpPacket(host6, 40000, gw6, 9, []byte("x"))))},
		{"tcp4-gw-closed", one(guestFrame(ourMAC, ipPacket(guestIP4, gw4, 6, 64, tcpSyn(40001, 9), 16)))},
		{"tcp6-gw-closed", one(guestFrame(ourMAC, ipPacket(host6, gw6, 6, 64, tcpSyn(40001, 9), 16)))},
		{"udp6-ll-other", one(guestFrame(ourMAC, udpPacket(guestLL6, 40000, netip.MustParseAddr("fe80::77"), 9, []byte("x"))))},
		{"udp4-offlink", one(guestFrame(ourMAC, udpPacket(guestIP4, 40002, netip.MustParseAddr("203.0.113.9"), 9, []byte("x"))))},
		{"dns4-gw", one(guestFrame(ourMAC, udpPacket(guestIP4, 40010, gw4, 53, []byte("query"))))},
		{"dns6-gw", one(guestFrame(ourMAC, udpPacket(host6, 40010, gw6, 53, []byte("query"))))},
		{"dns4-fwd", one(guestFrame(ourMAC, udpPacket(guestIP4, 40011, fwd4, 53, []byte("query"))))},
		{"dns6-fwd", one(guestFrame(ourMAC, udpPacket(host6, 40011, fwd6, 53, []byte("query"))))},
		// Last: an address on the host's link that nobody has answers
		// late, if at all (ARP gives up after seconds), unless mapped.
		{"ping4-77", one(guestFrame(ourMAC, ipPacket(guestIP4, netip.MustParseAddr("198.51.100.77"), 1, 64, echoMsg(false, 0x4248), 2)))},
		{"tcp4-77-closed", one(guestFrame(ourMAC, ipPacket(guestIP4, netip.MustParseAddr("198.51.100.77"), 6, 64, tcpSyn(40003, 9), 16)))},
		{"tcp4-88-closed", one(guestFrame(ourMAC, ipPacket(guestIP4, netip.MustParseAddr("198.51.100.88"), 6, 64, tcpSyn(40004, 9), 16)))},
		{"tcp6-77-closed", one(guestFrame(ourMAC, ipPacket(host6, netip.MustParseAddr("2001:db8:1::77"), 6, 64, tcpSyn(40005, 9), 16)))},
	}
}

// runProbes starts one backend on argv, sends every probe and returns
// the decoded answers, keyed by probe name.
func runProbes(t *testing.T, argv []string, o WorldOpts) map[string][]string {
	o.NoGuest = true
	o.Backend = argv
	w := newWorld(t, o)
	// The host's loopback resolvers, which answer with what they got.
	echoPackets(w.Host.ListenPacket(t, "udp", net.JoinHostPort(hostDNS, "53")), "from "+hostDNS+": ")
	echoPackets(w.Host.ListenPacket(t, "udp", "[::1]:53"), "from ::1: ")
	c, frames := attachGuest(t, w)
	hungUp := false
	gather := func(d time.Duration) [][]byte {
		out, open := gatherFrames(frames, d)
		hungUp = hungUp || !open
		return out
	}
	gather(300 * time.Millisecond) // what comes on connect
	res := map[string][]string{}
	st := &probeState{}
	for _, p := range guestProbes() {
		for _, f := range p.frames(st) {
			c.Write(frame(f))
		}
		for _, f := range gather(250 * time.Millisecond) {
			line := decodeFrame(f, st)
			if unsolicited.MatchString(line) && p.name != "rs-unspec" {
				continue
			}
			res[p.name] = append(res[p.name], line)
		}
	}
	if hungUp {
		t.Errorf("%s hung up:\n%s", argv[0], w.Log.String())
	}
	return res
}

// attachGuest connects to the backend's stream socket as the guest and
// returns the connection and the frames the backend sends on it, until
// it hangs up. The connection closes when the test ends.
func attachGuest(t *testing.T, w *World) (net.Conn, <-chan []byte) {
	t.Helper()
	c, err := net.Dial("unix", w.Sock)
	for i := 0; i < 100 && err != nil; i++ {
		time.Sleep(20 * time.Millisecond)
		c, err = net.Dial("unix", w.Sock)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	frames := make(chan []byte, 256)
	go func() {
		defer close(frames)
		for {
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			frames <- b
		}
	}()
	return c, frames
}

// unsolicited matches what a backend sends of its own accord: its ARP
// and NDP requests for the guest's MAC, periodic RAs.
var unsolicited = regexp.MustCompile(`ARP op=1|type=135 |>ff02::1 ICMP type=134 `)

func macName(m []byte) string {
	switch {
	case slices.Equal(m, testMAC):
		return "guest"
	case slices.Equal(m, ourMAC):
		return "ours"
	case slices.Equal(m, bcastMAC):
		return "bcast"
	}
	return net.HardwareAddr(m).String()
}

func decodeFrame(f []byte, st *probeState) string {
	if len(f) < 14 {
		return fmt.Sprintf("short frame %x", f)
	}
	s := fmt.Sprintf("%s>%s ", macName(f[6:12]), macName(f[0:6]))
	p := f[14:]
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0806:
		return s + fmt.Sprintf("ARP op=%d sha=%s sip=%v tha=%s tip=%v", binary.BigEndian.Uint16(p[6:]),
			macName(p[8:14]), netip.AddrFrom4([4]byte(p[14:18])), macName(p[18:24]), netip.AddrFrom4([4]byte(p[24:28])))
	case 0x0800:
		src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		l4 := p[int(p[0]&15)*4 : binary.BigEndian.Uint16(p[2:])]
		s += fmt.Sprintf("IPv4 %v>%v ", src, dst)
		return s + decodeL4(p[9], l4, st)
	case 0x86dd:
		src, dst := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		if src.IsLinkLocalUnicast() && src != guestLL6 {
			st.routerLL = src
		}
		s += fmt.Sprintf("IPv6 %v>%v ", llName(src), llName(dst))
		if p[6] == 58 && p[7] != 255 {
			s += fmt.Sprintf("hlim=%d ", p[7])
		}
		return s + decodeL4(p[6], p[40:40+int(binary.BigEndian.Uint16(p[4:]))], st)
	}
	return s + "?"
}

func decodeL4(proto uint8, l4 []byte, st *probeState) string {
	switch proto {
	case 6:
		return fmt.Sprintf("TCP %d>%d flags=%#x", binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:]), l4[13])
	case 17:
		sp, dp := binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		s := fmt.Sprintf("UDP %d>%d ", sp, dp)
		switch {
		case sp == 67:
			return s + decodeDHCP(l4[8:])
		case sp == 547:
			return s + decodeDHCPv6(l4[8:], st)
		}
		return s + fmt.Sprintf("%q", l4[8:])
	case 1, 58:
		s := fmt.Sprintf("ICMP type=%d code=%d ", l4[0], l4[1])
		switch l4[0] {
		case 134:
			return s + fmt.Sprintf("RA curhl=%d flags=%#x life=%d reach=%d retrans=%d %s", l4[4], l4[5],
				binary.BigEndian.Uint16(l4[6:]), binary.BigEndian.Uint32(l4[8:]), binary.BigEndian.Uint32(l4[12:]), decodeNDOpts(l4[16:]))
		case 136:
			return s + fmt.Sprintf("NA flags=%#x target=%v %s", l4[4], netip.AddrFrom16([16]byte(l4[8:24])), decodeNDOpts(l4[24:]))
		case 135:
			return s + fmt.Sprintf("NS target=%v %s", netip.AddrFrom16([16]byte(l4[8:24])), decodeNDOpts(l4[24:]))
		case 0, 129:
			return s + fmt.Sprintf("echo-reply id=%#x seq=%d %d bytes", binary.BigEndian.Uint16(l4[4:]), binary.BigEndian.Uint16(l4[6:]), len(l4[8:]))
		}
		return s + fmt.Sprintf("len=%d", len(l4))
	}
	return fmt.Sprintf("proto %d", proto)
}

func decodeNDOpts(b []byte) string {
	var out []string
	for len(b) >= 8 && b[1] > 0 && int(b[1])*8 <= len(b) {
		o := b[:int(b[1])*8]
		switch o[0] {
		case 1, 2:
			out = append(out, fmt.Sprintf("ll%d=%s", o[0], macName(o[2:8])))
		case 3:
			p, _ := netip.AddrFrom16([16]byte(o[16:32])).Prefix(int(o[2]))
			out = append(out, fmt.Sprintf("prefix=%v flags=%#x valid=%d pref=%d", p, o[3],
				binary.BigEndian.Uint32(o[4:]), binary.BigEndian.Uint32(o[8:])))
		case 5:
			out = append(out, fmt.Sprintf("mtu=%d", binary.BigEndian.Uint32(o[4:])))
		case 25:
			var a []string
			for i := 8; i+16 <= len(o); i += 16 {
				a = append(a, netip.AddrFrom16([16]byte(o[i:i+16])).String())
			}
			out = append(out, fmt.Sprintf("rdnss life=%d %v", binary.BigEndian.Uint32(o[4:]), a))
		case 31:
			out = append(out, fmt.Sprintf("dnssl life=%d %v", binary.BigEndian.Uint32(o[4:]), names(o[8:])))
		default:
			out = append(out, fmt.Sprintf("opt%d=%x", o[0], o[2:]))
		}
		b = b[len(o):]
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// names decodes DNS names in wire format, following compression within b.
func names(b []byte) []string {
	var out []string
	for i := 0; i < len(b); {
		var labels []string
		j, jumped, end := i, false, i
		for j < len(b) && b[j] != 0 {
			if b[j]&0xc0 == 0xc0 && j+1 < len(b) {
				if !jumped {
					end = j + 2
				}
				jumped, j = true, int(b[j+1])
				continue
			}
			l := int(b[j])
			if j+1+l > len(b) {
				break
			}
			labels = append(labels, string(b[j+1:j+1+l]))
			j += 1 + l
		}
		if !jumped {
			end = j + 1
		}
		if len(labels) == 0 && end == i+1 {
			i = end
			if slices.ContainsFunc(b[i:], func(c byte) bool { return c != 0 }) {
				out = append(out, ".")
			}
			continue
		}
		out = append(out, strings.Join(labels, "."))
		i = end
	}
	return out
}

func decodeDHCP(b []byte) string {
	if len(b) < 240 {
		return "short DHCP"
	}
	s := fmt.Sprintf("BOOTP op=%d flags=%#x ciaddr=%v yiaddr=%v siaddr=%v chaddr=%s len=%d", b[0], binary.BigEndian.Uint16(b[10:]),
		netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20])), netip.AddrFrom4([4]byte(b[20:24])), macName(b[28:34]), len(b))
	var opts []string
	for o := b[240:]; len(o) >= 2 && o[0] != 255; {
		if o[0] == 0 {
			o = o[1:]
			continue
		}
		v := o[2 : 2+int(o[1])]
		var d string
		switch o[0] {
		case 1, 3, 6, 54, 50:
			var a []string
			for i := 0; i+4 <= len(v); i += 4 {
				a = append(a, netip.AddrFrom4([4]byte(v[i:i+4])).String())
			}
			d = strings.Join(a, ",")
		case 51, 58, 59:
			d = fmt.Sprint(binary.BigEndian.Uint32(v))
		case 26:
			d = fmt.Sprint(binary.BigEndian.Uint16(v))
		case 12, 15:
			d = fmt.Sprintf("%q", v)
		case 119:
			d = fmt.Sprint(names(v))
		case 81:
			d = fmt.Sprintf("flags=%#x rc=%d,%d %v", v[0], v[1], v[2], names(v[3:]))
		default:
			d = fmt.Sprintf("%x", v)
		}
		opts = append(opts, fmt.Sprintf("%d=%s", o[0], d))
		o = o[2+len(v):]
	}
	slices.Sort(opts)
	return s + " " + strings.Join(opts, " ")
}

func decodeDHCPv6(b []byte, st *probeState) string {
	s := fmt.Sprintf("DHCPv6 type=%d xid=%x", b[0], b[1:4])
	return s + " " + decodeOpts6(b[4:], st)
}

func decodeOpts6(b []byte, st *probeState) string {
	var opts []string
	for len(b) >= 4 {
		code, l := binary.BigEndian.Uint16(b), int(binary.BigEndian.Uint16(b[2:]))
		if 4+l > len(b) {
			opts = append(opts, "truncated")
			break
		}
		v := b[4 : 4+l]
		var d string
		switch code {
		case 1:
			d = fmt.Sprintf("%x", v)
		case 2:
			d = fmt.Sprintf("duid-type=%d len=%d", binary.BigEndian.Uint16(v), len(v))
			if st != nil {
				st.serverID = slices.Clone(b[:4+l])
			}
		case 3:
			d = fmt.Sprintf("iaid=%x t1=%d t2=%d {%s}", v[:4], binary.BigEndian.Uint32(v[4:]), binary.BigEndian.Uint32(v[8:]), decodeOpts6(v[12:], nil))
		case 5:
			d = fmt.Sprintf("%v pref=%d valid=%d {%s}", netip.AddrFrom16([16]byte(v)), binary.BigEndian.Uint32(v[16:]), binary.BigEndian.Uint32(v[20:]), decodeOpts6(v[24:], nil))
		case 13:
			d = fmt.Sprintf("status=%d %q", binary.BigEndian.Uint16(v), v[2:])
		case 23:
			var a []string
			for i := 0; i+16 <= len(v); i += 16 {
				a = append(a, netip.AddrFrom16([16]byte(v[i:i+16])).String())
			}
			d = strings.Join(a, ",")
		case 24:
			d = fmt.Sprint(names(v))
		case 39:
			d = fmt.Sprintf("flags=%#x %v", v[0], names(v[1:]))
		default:
			d = fmt.Sprintf("%x", v)
		}
		opts = append(opts, fmt.Sprintf("%d=%s", code, d))
		b = b[4+l:]
	}
	slices.Sort(opts)
	return strings.Join(opts, " ")
}

// diffCase is one command line (and host set-up) run through both.
type diffCase struct {
	name   string
	args   []string
	before func(t *testing.T, h *Netns)
}

var diffCases = []diffCase{
	{name: "default"},
	{name: "gw-offnet", args: []string{"-a", "192.0.2.10", "-n", "24", "-g", "198.51.100.1"}},
	{name: "mtu68", args: []string{"--mtu", "68"}},
	{name: "mtu1280", args: []string{"--mtu", "1280"}},
	{name: "mtu0", args: []string{"-m", "0"}},
	{name: "dns-forward", args: []string{"--dns-forward", fwd4.String(), "--dns-forward", fwd6.String()}},
	{name: "dns", args: []string{"-D", "192.0.2.53", "-D", "2001:db8:5::53", "-S", "one.example", "-S", "two.example"}},
	{name: "no-dhcp-dns", args: []string{"--no-dhcp-dns", "--no-dhcp-search"}},
	{name: "names", args: []string{"-H", "guest1", "--fqdn", "guest1.example.test"}},
	{name: "v6only", args: []string{"-6"}},
	{name: "no-ra", args: []string{"--no-ra", "--no-dhcpv6"}},
	{name: "no-ndp", args: []string{"--no-ndp", "--no-dhcp"}},
	{name: "no-map-gw", args: []string{"--no-map-gw"}},
	{name: "map", args: []string{"--map-host-loopback", "198.51.100.77", "--map-guest-addr", "198.51.100.88"}},
	{name: "resolver-v4lo", before: func(t *testing.T, h *Netns) {
		h.WriteEtc(t, "resolv.conf", "nameserver "+hostDNS+"\nsearch example.test\n")
	}},
	{name: "host-v6only", before: func(t *testing.T, h *Netns) {
		h.Run(t, "ip", "-4", "addr", "flush", "dev", "uplink")
	}},
	// IPv6's local mode: the guest's link-local address, fe80::1 for the
	// host's loopback.
	{name: "host-v4only", before: func(t *testing.T, h *Netns) {
		h.Run(t, "ip", "-6", "addr", "flush", "dev", "uplink", "scope", "global")
	}},
	// A template with no default route: addresses, no gateway.
	{name: "host-noroute", before: func(t *testing.T, h *Netns) {
		h.Run(t, "ip", "-4", "route", "del", "default")
		h.Run(t, "ip", "-6", "route", "del", "default")
	}},
}

// diffHost is every case's host: resolvers on host loopback for both
// families (runProbes answers there), and the gateways' MACs known, so
// that nothing routed waits for neighbour resolution and no error comes
// late, in another probe's turn. (Both give the guest the host's
// neighbours' MACs: TestDiffNeighbours.)
func diffHost(t *testing.T, h *Netns) {
	h.WriteEtc(t, "resolv.conf", "nameserver "+hostDNS+"\nnameserver ::1\nsearch example.test lab.example\n")
	h.Run(t, "ip", "neigh", "add", hostGW, "lladdr", "02:00:00:00:00:01", "dev", "uplink", "nud", "permanent")
	h.Run(t, "ip", "neigh", "add", host6GW, "lladdr", "02:00:00:00:00:01", "dev", "uplink", "nud", "permanent")

}

// harmless are differences in every answer that no guest minds: the
// TTL or hop limit (passt's 255, gopasst's 64, RAs' current hop limit
// alike), the lease time (passt's infinite, gopasst's hour), DHCP's
// length and option 15 (gopasst's first search domain), DHCP's search
// list (passt compresses "lab.example" after "example.test" into
// "lab.example.test"), RA flags (passt's M alone, or M after
// --no-dhcpv6), the DUID (passt's DUID-LLT, gopasst's DUID-LL, both of
// our MAC) and the length of an ICMP error's quote.
var harmless = []*regexp.Regexp{
	regexp.MustCompile(` len=\d+`), regexp.MustCompile(` 15="[^"]*"`), regexp.MustCompile(` 51=\d+`),
	regexp.MustCompile(` 119=\[[^\]]*\]`), regexp.MustCompile(`curhl=\d+ flags=0x[0-9a-f]+ `),
	regexp.MustCompile(`duid-type=\d+`),
}

// knownDiffs are the differences judged and kept, by probe, or by case
// and probe ("*": every probe of the case), with the reason.
var knownDiffs = map[string]string{
	"dhcp-discover-fqdn-s":          "gopasst sets O when it overrides the client's S (RFC 4702 2.1); passt never does",
	"dhcp6-solicit-fqdn-s":          "gopasst sets O when it overrides the client's S (RFC 4704 4.1); passt only for a client option as long as its own",
	"dhcp-request-other":            "gopasst NAKs a requested address that is not the guest's (RFC 2131 4.3.2); passt ACKs its own",
	"dhcp-inform":                   "gopasst ACKs an INFORM (RFC 2131 4.3.5); passt ignores it",
	"rs-unspec":                     "passt answers an RS from :: to :: (RFC 4861 6.2.6: to all-nodes)",
	"arp-probe-free":                "gopasst leaves a probe (RFC 5227) for an address nobody holds unanswered, so that the guest may take it; passt answers it",
	"ns-own":                        "passt answers an NS for the guest's own address",
	"dhcp6-solicit-rapid":           "gopasst takes rapid commit (RFC 8415 18.3.1); passt advertises",
	"dhcp-request-sid-other":        "gopasst leaves a REQUEST for another server's offer alone (RFC 2131 4.3.2); passt ACKs it",
	"dhcp-inform-bcast":             "gopasst ACKs an INFORM (RFC 2131 4.3.5); passt ignores it",
	"dhcp6-solicit-pd-only":         "passt puts an IA_NA the client did not ask for, with the IAID of an earlier message, in its answer; gopasst none",
	"dhcp6-solicit-no-ia":           "passt puts an IA_NA the client did not ask for, with the IAID of an earlier message, in its answer; gopasst none",
	"dhcp6-rebind-pd":               "passt ignores a REBIND without server ID, as RFC 8415 18.2.5 sends it",
	"dhcp6-info-sid":                "passt puts an IA_NA in its answer to an INFORMATION-REQUEST",
	"dhcp6-info-oro":                "passt puts an IA_NA in its answer to an INFORMATION-REQUEST",
	"dhcp6-info-sid-other":          "gopasst drops an INFORMATION-REQUEST for another server (RFC 8415 16.12); passt answers it",
	"dhcp6-request-other":           "passt says NotOnLink for an on-link address not its own; gopasst gives its address",
	"dhcp6-rebind":                  "passt ignores a REBIND without server ID, as RFC 8415 18.2.5 sends it",
	"dhcp6-confirm":                 "gopasst answers a CONFIRM with a status alone (RFC 8415 18.3.3); passt with the lease",
	"dhcp6-confirm-other":           "gopasst's NotOnLink is the message's (RFC 8415 18.3.3); passt's the IA's",
	"dhcp6-info":                    "passt puts an IA_NA in its answer to an INFORMATION-REQUEST",
	"dhcp6-release":                 "gopasst answers a RELEASE with Success (RFC 8415 18.3.7); passt ignores it",
	"dhcp6-decline":                 "gopasst answers a DECLINE with Success (RFC 8415 18.3.8); passt ignores it",
	"dns6-gw":                       "gopasst's IPv6 stand-in leads to the host's first loopback resolver, of either family; passt's to its first IPv6 one",
	"dns-forward/dns6-fwd":          "gopasst's IPv6 stand-in leads to the host's first loopback resolver, of either family; passt's to its first IPv6 one",
	"udp6-ll-other":                 "gopasst: no route to a link-local address not its own; passt drops the datagram",
	"host-noroute/ping6-ll":         "with no IPv6 gateway, passt sends a ping to its link-local address to the host's own on the template; gopasst has no host address for it",
	"mtu1280/ping4-big":             "gopasst sends an echo reply past the guest's MTU in fragments within it; passt as one frame past it",
	"mtu1280/ping6-big":             "gopasst sends an echo reply past the guest's MTU in fragments within it; passt as one frame past it",
	"mtu68/ping4-big":               "gopasst sends an echo reply past the guest's MTU in fragments within it; passt as one frame past it",
	"mtu68/rs":                      noIPv6Below1280,
	"mtu68/rs-*":                    noIPv6Below1280,
	"mtu68/ns-*":                    noIPv6Below1280,
	"mtu68/dhcp6-*":                 noIPv6Below1280,
	"mtu68/ping6-*":                 noIPv6Below1280,
	"mtu68/udp6-*":                  noIPv6Below1280,
	"mtu68/tcp6-*":                  noIPv6Below1280,
	"no-map-gw/ping6-ll":            "our link-local address is the IPv6 gateway to gopasst, an address like any with --no-map-gw; passt's is the host's own",
	"resolver-v4lo/rs":              "an IPv6 stand-in for the host's IPv4 loopback resolver: gopasst advertises one, passt none",
	"resolver-v4lo/rs-*":            "an IPv6 stand-in for the host's IPv4 loopback resolver: gopasst advertises one, passt none",
	"resolver-v4lo/dhcp6-*":         "an IPv6 stand-in for the host's IPv4 loopback resolver: gopasst advertises one, passt none",
	"gw-offnet/dhcp-request":        "gopasst NAKs a requested address that is not the guest's (RFC 2131 4.3.2); passt ACKs its own",
	"gw-offnet/arp-own":             "the probes' guest address is not this case's guest's: gopasst leaves a probe (RFC 5227) for an address nobody holds unanswered; passt answers it",
	"gw-offnet/dhcp-renew":          "gopasst NAKs a renewal from an address that is not the guest's; passt ACKs its own",
	"gw-offnet/dhcp-request-giaddr": "gopasst NAKs a requested address that is not the guest's (RFC 2131 4.3.2); passt ACKs its own",
	"gw-offnet/dhcp-request-cid1":   "gopasst NAKs a requested address that is not the guest's (RFC 2131 4.3.2); passt ACKs its own",
	"gw-offnet/dhcp-request-cid2":   "gopasst NAKs a requested address that is not the guest's (RFC 2131 4.3.2); passt ACKs its own",
	"no-map-gw/rs":                  "no resolver is reachable: gopasst still sends the search list (DNSSL), passt only with RDNSS",
	"no-map-gw/rs-*":                "no resolver is reachable: gopasst still sends the search list (DNSSL), passt only with RDNSS",
	"host-v6only/*":                 "a host without IPv4, both in local mode (169.254.2.1): the probes' addresses are the other cases', which gopasst refuses (a NAK, no route) and passt takes",
	"host-noroute/dhcp-*":           "a template without a gateway: gopasst gives the guest local mode's, 169.254.2.2, and answers DHCP; passt turns DHCP off",
	"host-noroute/bootp":            "a template without a gateway: gopasst gives the guest local mode's, 169.254.2.2, and answers BOOTP; passt turns DHCP off",
}

// noIPv6Below1280: with an MTU below IPv6's minimum, gopasst leaves IPv6
// out; passt keeps it, and advertises the MTU in RAs, which a guest then
// ignores (RFC 4861 6.3.4).
const noIPv6Below1280 = "an MTU below IPv6's 1280: gopasst leaves IPv6 out, passt keeps it"

// knownDiff is the reason a probe of a case may differ, or "".
func knownDiff(c, probe string) string {
	for _, k := range []string{c + "/" + probe, probe, c + "/*"} {
		if r := knownDiffs[k]; r != "" {
			return r
		}
	}
	if p, _, ok := strings.Cut(probe, "-"); ok {
		return knownDiffs[c+"/"+p+"-*"]
	}
	return ""
}

func normalize(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		for _, re := range harmless {
			l = re.ReplaceAllString(l, "")
		}
		out[i] = l
	}
	return out
}

// TestDiffGuest runs every probe through gopasst and upstream passt
// 2026.03 for each command line of diffCases (GOPASST_DIFF selects some,
// by name, comma-separated) and fails on an answer that differs, past
// the harmless differences and the known ones, which it logs. Each probe
// has a fixed time for its answers, and on a loaded machine one may come
// after it and be taken for the next probe's: a case that differs runs
// once more, and fails only if it differs again.
func TestDiffGuest(t *testing.T) {
	passt := upstreamPasst(t)
	only := os.Getenv("GOPASST_DIFF")
	for _, c := range diffCases {
		if only != "" && !slices.Contains(strings.Split(only, ","), c.name) {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			o := WorldOpts{BeforeStart: func(h *Netns) {
				diffHost(t, h)
				if c.before != nil {
					c.before(t, h)
				}
			}}
			for try := 1; ; try++ {
				var up, gp map[string][]string
				t.Run("run", func(t *testing.T) {
					t.Run("passt", func(t *testing.T) {
						t.Parallel()
						up = runProbes(t, append([]string{passt, "-f", "-s", "{sock}"}, c.args...), o)
					})
					t.Run("gopasst", func(t *testing.T) {
						t.Parallel()
						gp = runProbes(t, append([]string{gopasstBin, "-f", "-s", "{sock}"}, c.args...), o)
					})
				})
				if up == nil || gp == nil {
					return
				}
				known, differ := compareProbes(c.name, up, gp)
				if len(differ) > 0 && try == 1 {
					t.Logf("run again, as these differ:\n%s", strings.Join(differ, "\n"))
					continue
				}
				for _, l := range known {
					t.Log(l)
				}
				for _, l := range differ {
					t.Error(l)
				}
				return
			}
		})
	}
}

// compareProbes compares passt's answers (up) with gopasst's (gp) for
// case c: the probes that differ for a known reason, and those that
// differ otherwise.
func compareProbes(c string, up, gp map[string][]string) (known, differ []string) {
	for _, p := range guestProbes() {
		a, b := normalize(up[p.name]), normalize(gp[p.name])
		switch why := knownDiff(c, p.name); {
		case slices.Equal(a, b):
		case why != "":
			known = append(known, fmt.Sprintf("%s differs, known: %s", p.name, why))
		default:
			differ = append(differ, fmt.Sprintf("%s differs:\n  passt:   %s\n  gopasst: %s", p.name, strings.Join(a, "\n\t   "), strings.Join(b, "\n\t   ")))
		}
	}
	return known, differ
}

// gatherFrames collects the frames that come from frames within d, and
// tells whether the backend still had the guest attached at the end.
func gatherFrames(frames <-chan []byte, d time.Duration) (out [][]byte, open bool) {
	for timer := time.After(d); ; {
		select {
		case f, ok := <-frames:
			if !ok {
				return out, false
			}
			out = append(out, f)
		case <-timer:
			return out, true
		}
	}
}
