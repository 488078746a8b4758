package slirp

import (
	"bytes"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// closedUDPPort is a loopback UDP port of network ("udp4", "udp6") that
// nothing listens on: a datagram to it gets "port unreachable". A socket
// connected elsewhere (port 9) holds it for the test, so that no other
// takes it, and hears none of the test's datagrams.
func closedUDPPort(t *testing.T, network string) uint16 {
	t.Helper()
	addr := "127.0.0.1:9"
	if network == "udp6" {
		addr = "[::1]:9"
	}
	raddr, _ := net.ResolveUDPAddr(network, addr)
	c, err := net.DialUDP(network, nil, raddr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { c.Close() })
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

// withTTL sets the TTL (hop limit) of a frame frameIP built, and its
// IPv4 header checksum.
func withTTL(f []byte, ttl uint8) []byte {
	eth := header.Ethernet(f)
	if eth.Type() == header.EtherTypeIPv6 {
		eth.Payload()[7] = ttl
		return f
	}
	ip := header.IPv4(eth.Payload())
	ip[8] = ttl
	ip[10], ip[11] = 0, 0
	c := header.Fold(header.Checksum(ip[:ip.HeaderLen()], 0))
	ip[10], ip[11] = byte(c>>8), byte(c)
	return f
}

// checkedFrames drains what the engine sent the guest, failing the test
// for a frame that is not well formed or is past the guest's MTU, and
// hands fn the others; fillLink's frames are skipped.
func checkedFrames(t *testing.T, te *testEngine, fn func(f []byte)) {
	t.Helper()
	drainFrames(te.rd, te.guest, func(f []byte) {
		if header.Ethernet(f).Type() == 0 {
			return // fillLink's
		}
		if err := checkFrame(f); err != nil {
			t.Fatalf("engine sent a bad frame of %d bytes: %v\n% x", len(f), err, f[:min(len(f), 120)])
		}
		if n := len(f) - header.EthernetLen; n > te.mtu() {
			t.Fatalf("a frame of %d bytes to a guest whose MTU is %d", n, te.mtu())
		}
		fn(f)
	})
}

// hostErrors runs the engine until the guest got an ICMP error from the
// host side, or 5 s passed (loopback may deliver the host's error late,
// from the kernel's softirq thread), and returns the L4 part of each
// ICMP and ICMPv6 message the guest got (checkedFrames).
func hostErrors(t *testing.T, te *testEngine) []header.ICMP {
	t.Helper()
	var msgs []header.ICMP
	for deadline := time.Now().Add(5 * time.Second); len(msgs) == 0 && time.Now().Before(deadline); {
		te.turn(10)
		checkedFrames(t, te, func(f []byte) {
			eth := header.Ethernet(f)
			switch {
			case eth.Type() == header.EtherTypeIPv4 && header.IPv4(eth.Payload()).Protocol() == header.ProtoICMP:
				msgs = append(msgs, header.ICMP(bytes.Clone(header.IPv4(eth.Payload()).Payload())))
			case eth.Type() == header.EtherTypeIPv6 && header.IPv6(eth.Payload()).NextHeader() == header.ProtoICMPv6:
				if m := header.ICMP(header.IPv6(eth.Payload()).Payload()); !isNDP(m.Type()) {
					msgs = append(msgs, header.ICMP(bytes.Clone(m)))
				}
			}
		})
	}
	return msgs
}

// ttlFamily is where TestUDPOddTTL sends in one family, and the socket
// option that holds the TTL there.
type ttlFamily struct {
	guest, gw  netip.Addr
	port       uint16
	level, opt int
}

// TestUDPOddTTL: a guest's datagrams with TTLs and hop limits of 0, 1
// and 255, flipping from one to the next, each leave, and each comes
// back as one "port unreachable" quoting it, within the guest's MTU,
// the smallest (68) too. The socket sends with the guest's TTL, but
// for IPv4's 0, which the kernel refuses (the last one holds, as in
// passt). Nothing is left for epoll to report, and the engine goes on
// answering ARP.
func TestUDPOddTTL(t *testing.T) {
	for _, mtu := range []int{MinMTU, 1500} {
		te := newTestEngine(t)
		te.cfg.NoUDP = false
		te.setMTU(mtu)
		fams := []ttlFamily{{testGuest4, testGW4, closedUDPPort(t, "udp4"), unix.IPPROTO_IP, unix.IP_TTL}}
		if te.cfg.has6() {
			fams = append(fams, ttlFamily{testGuest6, testGW6, closedUDPPort(t, "udp6"), unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS})
		}
		for _, fam := range fams {
			for _, ttl := range []uint8{0, 1, 255, 0, 1, 64, 0} {
				payload := bytes.Repeat([]byte{ttl}, 200)
				te.tapInput(withTTL(frameIP(fam.guest, fam.gw, header.ProtoUDP, udp6(6000, fam.port, payload)), ttl))
				te.inputDone()
				msgs := hostErrors(t, te)
				if len(msgs) != 1 {
					t.Fatalf("MTU %d, %v, TTL %d: %d ICMP messages, want one port unreachable", mtu, fam.guest, ttl, len(msgs))
				}
				quote := msgs[0][header.ICMPEchoLen+ipHdrLen(fam.guest):]
				if u := header.UDP(quote); len(u) < header.UDPLen || u.SrcPort() != 6000 || u.DstPort() != fam.port {
					t.Errorf("MTU %d, %v, TTL %d: the error quotes % x, not the guest's datagram", mtu, fam.guest, ttl, quote)
				}
				_, f := te.udp.lookup(netip.AddrPortFrom(fam.guest, 6000))
				if f == nil {
					t.Fatalf("MTU %d, %v: no flow", mtu, fam.guest)
				}
				if got, _ := unix.GetsockoptInt(f.fd, fam.level, fam.opt); ttl != 0 && got != int(ttl) {
					t.Errorf("MTU %d, %v, TTL %d: the socket sends with %d", mtu, fam.guest, ttl, got)
				}
				if epollReady(te.Engine, kindUDP) {
					t.Fatalf("MTU %d, %v, TTL %d: the flow's socket is still ready after its error was relayed", mtu, fam.guest, ttl)
				}
			}
		}
		te.tapInput(seedFrames()[0])
		if out := te.output(t); len(out) != 1 || header.Ethernet(out[0]).Type() != header.EtherTypeARP {
			t.Errorf("MTU %d: no ARP reply after the odd TTLs", mtu)
		}
	}
}

// oddDatagram is a guest datagram to port, in the family of guest, that
// is odd in every way a parser may trip on: IPv4 options, or IPv6
// hop-by-hop and destination options headers; a UDP length that ends it
// before the IP payload does, junk following; a zero UDP checksum.
func oddDatagram(guest, gw netip.Addr, port uint16, payload string) []byte {
	u := append(udp6(6001, port, []byte(payload)), bytes.Repeat([]byte{0xee}, 20)...)
	f := frameIP(guest, gw, header.ProtoUDP, u)
	eth := header.Ethernet(f)
	ip := eth.Payload()
	if guest.Is4() {
		// NOP, NOP, NOP, end of options: one more word of header.
		opts := slices.Concat(ip[:header.IPv4MinLen], []byte{1, 1, 1, 0}, ip[header.IPv4MinLen:])
		opts[0] = 0x46
		header.IPv4(opts).SetTotalLen(len(opts))
		f = withTTL(append(f[:header.EthernetLen:header.EthernetLen], opts...), 64)
	} else {
		// Hop-by-hop and destination options headers, PadN each.
		ext := []byte{60, 0, 1, 4, 0, 0, 0, 0, header.ProtoUDP, 0, 1, 4, 0, 0, 0, 0}
		ip[6] = 0
		header.IPv6(ip).SetPayloadLen(len(ext) + len(u))
		f = slices.Concat(f[:header.EthernetLen+header.IPv6Len], ext, u)
	}
	l4 := f[len(f)-len(u):]
	l4[6], l4[7] = 0, 0
	return f
}

// TestUDPOddDatagramErrors: odd datagrams (oddDatagram) to a closed host
// port, and to a link-local address no host socket can reach, each get
// one error that quotes them from their UDP header on; what the UDP
// length leaves out does not leave.
func TestUDPOddDatagramErrors(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	for _, c := range []struct{ guest, gw, ll netip.Addr }{
		{testGuest4, testGW4, netip.MustParseAddr("169.254.9.9")},
		{testGuest6, testGW6, netip.MustParseAddr("fe80::99")},
	} {
		network := map[bool]string{true: "udp4", false: "udp6"}[c.guest.Is4()]
		for _, dst := range []netip.Addr{c.gw, c.ll} {
			te.tapInput(oddDatagram(c.guest, dst, closedUDPPort(t, network), "hello"))
			te.inputDone()
			msgs := hostErrors(t, te)
			if len(msgs) != 1 {
				t.Fatalf("%v: %d ICMP messages, want one error", dst, len(msgs))
			}
			quote := header.UDP(msgs[0][header.ICMPEchoLen+ipHdrLen(c.guest):])
			if !quote.IsValid() || quote.SrcPort() != 6001 || string(quote.Payload()) != "hello" {
				t.Errorf("%v: the error quotes % x, not the guest's datagram", dst, quote)
			}
		}
	}
	if epollReady(te.Engine, kindUDP) {
		t.Error("a flow's socket is still ready after its errors were relayed")
	}
}
