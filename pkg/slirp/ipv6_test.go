package slirp

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

var testGuestMAC = [6]byte{2, 0, 0, 0, 0, 1}

// frameIP builds a guest frame of either family around an L4 payload,
// checksum included.
func frameIP(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	ipLen, etype, dmac := header.IPv6Len, uint16(header.EtherTypeIPv6), header.MulticastMAC(dst)
	if src.Is4() {
		ipLen, etype, dmac = header.IPv4MinLen, header.EtherTypeIPv4, testMAC
	}
	b := make([]byte, header.EthernetLen+ipLen+len(l4))
	header.Ethernet(b).Encode(dmac, testGuestMAC, etype)
	if src.Is4() {
		header.IPv4(b[header.EthernetLen:]).Encode(src, dst, proto, 64, len(l4))
	} else {
		header.IPv6(b[header.EthernetLen:]).Encode(src, dst, proto, 255, len(l4))
	}
	p := b[header.EthernetLen+ipLen:]
	copy(p, l4)
	var sum uint64
	if proto != header.ProtoICMP {
		sum = header.PseudoHeaderSum(proto, src, dst, len(p))
	}
	c := header.Fold(header.Checksum(p, sum))
	switch proto {
	case header.ProtoICMP, header.ProtoICMPv6:
		binary.BigEndian.PutUint16(p[2:], c)
	case header.ProtoUDP:
		header.UDP(p).SetChecksum(c)
	case header.ProtoTCP:
		header.TCP(p).SetChecksum(c)
	}
	return b
}

// ndpSolicit is a Neighbor Solicitation for target with our source
// link-layer option.
func ndpSolicit(target netip.Addr) []byte {
	m := make([]byte, header.NDPNSLen+8)
	m[0] = header.ICMPv6NeighSol
	t := target.As16()
	copy(m[8:24], t[:])
	m[24], m[25] = header.NDPOptSrcLL, 1
	copy(m[26:32], testGuestMAC[:])
	return m
}

// dhcpv6Msg1 is a client message of type typ with a DUID-LL client
// identifier, an IA_NA (IAID 1) and any extra options.
func dhcpv6Msg1(typ uint8, extra ...[]byte) []byte {
	b := []byte{typ, 0xab, 0xcd, 0xef}
	opt := func(code uint16, val []byte) {
		b = binary.BigEndian.AppendUint16(b, code)
		b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
		b = append(b, val...)
	}
	opt(opt6ClientID, append([]byte{0, 3, 0, 1}, testGuestMAC[:]...))
	opt(opt6IANA, make([]byte, iaNALen))
	for _, e := range extra {
		b = append(b, e...)
	}
	return b
}

func dhcpv6Solicit1() []byte { return dhcpv6Msg1(dhcpv6Solicit) }

// udp6 wraps a payload in a UDP header.
func udp6(sport, dport uint16, payload []byte) []byte {
	u := make([]byte, header.UDPLen+len(payload))
	header.UDP(u).Encode(sport, dport, len(payload))
	copy(u[header.UDPLen:], payload)
	return u
}

// seedFrames are well-formed frames for the fuzzers: ARP and DHCP over
// IPv4; NS, RS, DHCPv6, echo and a TCP SYN over IPv6.
func seedFrames() [][]byte {
	arp := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1}
	d := dhcpDiscover4()
	udp := binary.BigEndian.AppendUint16(nil, 68)
	udp = binary.BigEndian.AppendUint16(udp, 67)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(d)))
	udp = append(udp, 0, 0)
	udp = append(udp, d...)
	ip := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	eth := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 0}

	ll := netip.MustParseAddr("fe80::2")
	syn := make([]byte, header.TCPMinLen+header.TCPSynOptionLen)
	header.TCP(syn).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(syn)})
	header.EncodeSynOptions(syn[header.TCPMinLen:], 1440, 7)
	echo := []byte{header.ICMPv6Echo, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}
	return [][]byte{
		arp, append(append(eth, ip...), udp...),
		frameIP(ll, netip.MustParseAddr("ff02::1:ff00:1"), header.ProtoICMPv6, ndpSolicit(testGW6)),
		frameIP(ll, netip.MustParseAddr("ff02::2"), header.ProtoICMPv6, []byte{header.ICMPv6RouterSol, 0, 0, 0, 0, 0, 0, 0}),
		frameIP(ll, netip.MustParseAddr("ff02::1:2"), header.ProtoUDP, udp6(dhcpv6ClientPort, dhcpv6ServerPort, dhcpv6Solicit1())),
		frameIP(testGuest6, testGW6, header.ProtoICMPv6, echo),
		frameIP(testGuest6, testGW6, header.ProtoTCP, syn),
	}
}

// icmp6Out returns the ICMPv6 messages among frames.
func icmp6Out(frames [][]byte) []header.ICMP {
	var out []header.ICMP
	for _, f := range frames {
		ip := header.IPv6(f[header.EthernetLen:])
		if header.Ethernet(f).Type() == header.EtherTypeIPv6 && ip.NextHeader() == header.ProtoICMPv6 {
			out = append(out, header.ICMP(ip.Payload()))
		}
	}
	return out
}

func TestNDPAnswersSolicitations(t *testing.T) {
	e := newTestEngine(t)
	ll := netip.MustParseAddr("fe80::2")
	e.ndpInput(ll, ndpSolicit(testGW6), 255)
	out := e.output(t)
	na := icmp6Out(out)
	if len(na) != 1 || na[0].Type() != header.ICMPv6NeighAdv || na[0][4] != naRouter|naSolicited|naOverride ||
		header.NDPTarget(na[0]) != testGW6 || [6]byte(na[0][26:32]) != testMAC {
		t.Fatalf("answer to NS: % x", out)
	}
	if src := header.IPv6(out[0][header.EthernetLen:]).Src(); src != testLL6 {
		t.Errorf("NA from %v, want our link-local %v", src, testLL6)
	}
	for name, input := range map[string]func(){
		"duplicate address detection": func() { e.ndpInput(netip.IPv6Unspecified(), ndpSolicit(testGuest6), 255) },
		"the guest's own address":     func() { e.ndpInput(ll, ndpSolicit(ll), 255) },
		"from beyond the link":        func() { e.ndpInput(ll, ndpSolicit(testGW6), 254) },
		"a zero-length option":        func() { e.ndpInput(ll, append(ndpSolicit(testGW6), 1, 0, 0, 0, 0, 0, 0, 0), 255) },
	} {
		input()
		if out := e.output(t); len(out) != 0 {
			t.Errorf("%s: answered % x", name, out)
		}
	}
}

func TestRouterAdvertisement(t *testing.T) {
	e := newTestEngine(t)
	ll := netip.MustParseAddr("fe80::2")
	e.ndpInput(ll, []byte{header.ICMPv6RouterSol, 0, 0, 0, 0, 0, 0, 0}, 255)
	out := e.output(t)
	ras := icmp6Out(out)
	if len(ras) != 1 || ras[0].Type() != header.ICMPv6RouterAdv {
		t.Fatalf("answer to RS: % x", out)
	}
	ra := ras[0]
	ip := header.IPv6(out[0][header.EthernetLen:])
	if ip.Src() != testLL6 || ip.Dst() != ll || ip.HopLimit() != 255 {
		t.Errorf("RA %v -> %v, hop limit %d", ip.Src(), ip.Dst(), ip.HopLimit())
	}
	if ra[5] != raFlagManaged|raFlagOther || binary.BigEndian.Uint16(ra[6:]) != raRouterLife {
		t.Errorf("RA flags %#x, lifetime %d", ra[5], binary.BigEndian.Uint16(ra[6:]))
	}
	opts := map[uint8][]byte{}
	o := ra[header.NDPRALen:]
	if !header.NDPOptionsValid(o) {
		t.Fatal("RA options do not parse")
	}
	for ; len(o) > 0; o = o[int(o[1])*8:] {
		opts[o[0]] = o[:int(o[1])*8]
	}
	if p := opts[header.NDPOptPrefix]; p[2] != 64 || p[3] != prefixFlags || netip.AddrFrom16([16]byte(p[16:32])) != netip.MustParseAddr("2001:db8::") {
		t.Errorf("prefix option % x", p)
	}
	if m := opts[header.NDPOptMTU]; binary.BigEndian.Uint32(m[4:]) != DefaultMTU {
		t.Errorf("MTU option % x", m)
	}
	if d := opts[header.NDPOptRDNSS]; len(d) != 24 || netip.AddrFrom16([16]byte(d[8:24])) != testGW6 {
		t.Errorf("RDNSS option % x", d)
	}
	if s := opts[header.NDPOptDNSSL]; string(s[8:8+len(encodeDomains(e.cfg.Search))]) != string(encodeDomains(e.cfg.Search)) {
		t.Errorf("DNSSL option % x", s)
	}
	if l := opts[header.NDPOptSrcLL]; [6]byte(l[2:8]) != testMAC {
		t.Errorf("source link-layer option % x", l)
	}

	// Unsolicited: to all nodes, on the repeat timer.
	e.now = e.nextRA
	e.raTimer()
	out = e.output(t)
	if len(out) != 1 || header.IPv6(out[0][header.EthernetLen:]).Dst() != allNodes || [6]byte(out[0][:6]) != header.MulticastMAC(allNodes) {
		t.Fatalf("periodic RA: % x", out)
	}
}

// TestFirstRA: a new guest gets its first unsolicited RA once it sends
// a frame, not when it attaches; a guest whose MAC a migration brought
// is no new guest, and resumes with no RA ahead of its own frames.
func TestFirstRA(t *testing.T) {
	hello := make([]byte, 60) // a frame of no protocol served: no answer
	header.Ethernet(hello).Encode(testMAC, testGuestMAC, 0x88b5)

	e := newTestEngine(t)
	e.raTimer()
	if out := e.output(t); len(out) != 0 {
		t.Fatalf("before the guest's first frame: % x", out)
	}
	e.tapInput(hello)
	e.raTimer()
	if ras := icmp6Out(e.output(t)); len(ras) != 1 || ras[0].Type() != header.ICMPv6RouterAdv {
		t.Fatalf("after the guest's first frame: %d frames, want an RA", len(ras))
	}

	moved := newTestEngine(t)
	var s migStream
	s.seen.mac = testGuestMAC
	if err := moved.migrateLoad(bytes.NewReader(appendMigration(nil, &s))); err != nil {
		t.Fatal(err)
	}
	moved.tapInput(hello)
	moved.raTimer()
	if out := moved.output(t); len(out) != 0 {
		t.Errorf("a migrated guest's first frame: % x", out)
	}
}

// exchange6 runs msg through the server and returns its answer, parsed
// and raw, or nil.
func exchange6(t *testing.T, e *testEngine, msg []byte) (*dhcpv6Msg, []byte) {
	t.Helper()
	e.dhcpv6Input(netip.MustParseAddr("fe80::2"), msg)
	out := e.output(t)
	if len(out) == 0 {
		return nil, nil
	}
	raw := out[0][l4Off6+header.UDPLen:]
	m, err := parseDHCPv6(raw)
	if err != nil {
		t.Fatal(err)
	}
	return &m, raw
}

func opt6(code uint16, val ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, code)
	b = binary.BigEndian.AppendUint16(b, uint16(len(val)))
	return append(b, val...)
}

func TestDHCPv6Exchanges(t *testing.T) {
	e := newTestEngine(t)
	ours := opt6(opt6ServerID, e.duid()...)
	theirs := opt6(opt6ServerID, 0, 3, 0, 1, 1, 2, 3, 4, 5, 6)
	offLink := make([]byte, 16+8)
	copy(offLink, netip.MustParseAddr("2001:db8:99::1").AsSlice())
	confirmOff := dhcpv6Msg1(dhcpv6Confirm)
	confirmOff = append(confirmOff[:len(confirmOff)-iaNALen-4], opt6(opt6IANA, append(make([]byte, iaNALen), opt6(opt6IAAddr, offLink...)...)...)...)

	for _, c := range []struct {
		name     string
		msg      []byte
		reply    uint8 // 0: no answer
		withAddr bool
		status   int
	}{
		{"solicit", dhcpv6Msg1(dhcpv6Solicit), dhcpv6Advertise, true, -1},
		{"solicit, rapid commit", dhcpv6Msg1(dhcpv6Solicit, opt6(opt6RapidCommit)), dhcpv6Reply, true, -1},
		{"request", dhcpv6Msg1(dhcpv6Request, ours), dhcpv6Reply, true, -1},
		{"request to another server", dhcpv6Msg1(dhcpv6Request, theirs), 0, false, -1},
		{"renew", dhcpv6Msg1(dhcpv6Renew, ours), dhcpv6Reply, true, -1},
		{"rebind", dhcpv6Msg1(dhcpv6Rebind), dhcpv6Reply, true, -1},
		{"confirm", dhcpv6Msg1(dhcpv6Confirm), dhcpv6Reply, false, status6Success},
		{"confirm, off link", confirmOff, dhcpv6Reply, false, status6NotOnLink},
		{"information request", []byte{dhcpv6InfoRequest, 1, 2, 3, 0, 1, 0, 2, 0, 0}, dhcpv6Reply, false, -1},
		{"information request with an IA", dhcpv6Msg1(dhcpv6InfoRequest), 0, false, -1},
		{"release", dhcpv6Msg1(dhcpv6Release, ours), dhcpv6Reply, false, status6Success},
	} {
		r, raw := exchange6(t, e, c.msg)
		if c.reply == 0 {
			if r != nil {
				t.Errorf("%s: answered %d", c.name, r.typ)
			}
			continue
		}
		if r == nil || r.typ != c.reply {
			t.Errorf("%s: reply %+v, want type %d", c.name, r, c.reply)
			continue
		}
		if string(r.serverID) != string(e.duid()) {
			t.Errorf("%s: server ID % x", c.name, r.serverID)
		}
		var addrs []netip.Addr
		r.eachAddr(func(a netip.Addr) { addrs = append(addrs, a) })
		if got := len(addrs) == 1 && addrs[0] == testGuest6; got != c.withAddr {
			t.Errorf("%s: addresses %v", c.name, addrs)
		}
		if c.msg[0] == dhcpv6Solicit && r.rapidCommit != (c.reply == dhcpv6Reply) {
			t.Errorf("%s: rapid commit %v", c.name, r.rapidCommit)
		}
		if st := statusOf(raw); st != c.status {
			t.Errorf("%s: status %d, want %d", c.name, st, c.status)
		}
	}
}

// statusOf finds the top-level status code of a reply, or -1.
func statusOf(reply []byte) int {
	st := -1
	dhcpv6Options(reply[dhcpv6HdrLen:], func(code uint16, val []byte) error {
		if code == opt6Status && len(val) >= 2 {
			st = int(binary.BigEndian.Uint16(val))
		}
		return nil
	})
	return st
}

func TestUnreachableQuotesThePacket(t *testing.T) {
	e := newTestEngine(t)
	for _, c := range []struct {
		guest, remote netip.Addr
		err           unix.Errno
		typ, code     uint8
	}{
		{testGuest4, netip.MustParseAddr("203.0.113.9"), unix.EHOSTUNREACH, header.ICMPv4Unreachable, header.ICMPv4HostUnreachable},
		{testGuest6, netip.MustParseAddr("2001:db8:dead::9"), unix.ENETUNREACH, header.ICMPv6Unreachable, header.ICMPv6NoRoute},
		{testGuest6, testGW6, unix.ECONNREFUSED, header.ICMPv6Unreachable, header.ICMPv6PortUnreachable},
	} {
		quote := udp6(5000, 53, []byte("query"))
		if !e.sendUnreachable(c.err, c.guest, c.remote, header.ProtoUDP, quote) {
			t.Fatalf("%v: no ICMP form", c.err)
		}
		out := e.output(t)
		if len(out) != 1 {
			t.Fatalf("%v: %d frames", c.err, len(out))
		}
		l4 := out[0][l4Off(c.guest):]
		m := header.ICMP(l4)
		inner := l4[header.ICMPEchoLen+ipHdrLen(c.guest):]
		if m.Type() != c.typ || m.Code() != c.code || string(inner) != string(quote) {
			t.Errorf("%v: type %d code %d, quoting % x", c.err, m.Type(), m.Code(), inner)
		}
	}
	if e.sendUnreachable(unix.EIO, testGuest4, testGW4, header.ProtoTCP, nil) {
		t.Error("EIO has no ICMP form")
	}

	// An IPv4 guest's MTU may be as small as 68 bytes: the error, quote
	// and all, still fits it.
	e.setMTU(68)
	quote := make([]byte, 200)
	e.sendUnreachable(unix.EHOSTUNREACH, testGuest4, testGW4, header.ProtoUDP, quote)
	out := e.output(t)
	if len(out) != 1 {
		t.Fatalf("%d frames", len(out))
	}
	if n := header.IPv4(out[0][header.EthernetLen:]).TotalLen(); n > 68 {
		t.Errorf("error of %d bytes to a guest whose MTU is 68", n)
	}
}

// TestRAManyResolvers: a host with more resolvers than an RA carries
// (the RDNSS option's length counts to 127 of them; the guest's MTU may
// hold fewer) gets a well-formed RA within the MTU, with as many as fit.
// The length field wrapped at 128, and the RA ran past a small MTU.
func TestRAManyResolvers(t *testing.T) {
	for _, mtu := range []int{1280, 9000, DefaultMTU} {
		e := newTestEngine(t)
		e.setMTU(mtu)
		e.cfg.DNS6 = nil
		for i := range 200 {
			e.cfg.DNS6 = append(e.cfg.DNS6, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}))
		}
		e.ndpInput(netip.MustParseAddr("fe80::2"), []byte{header.ICMPv6RouterSol, 0, 0, 0, 0, 0, 0, 0}, 255)
		out := e.output(t)
		ras := icmp6Out(out)
		if len(ras) != 1 || len(out[0])-header.EthernetLen > mtu {
			t.Fatalf("MTU %d: %d RAs, frame of %d bytes", mtu, len(ras), len(out[0]))
		}
		o := ras[0][header.NDPRALen:]
		if !header.NDPOptionsValid(o) {
			t.Fatalf("MTU %d: RA options do not parse", mtu)
		}
		n := 0
		for ; len(o) > 0; o = o[int(o[1])*8:] {
			if o[0] == header.NDPOptRDNSS {
				n = (int(o[1]) - 1) / 2
			}
		}
		if want := min(127, (mtu-header.IPv6Len-header.NDPRALen-32-8-8-8)/16); n != want {
			t.Errorf("MTU %d: %d resolvers, want %d", mtu, n, want)
		}
	}
}
