package slirp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TestNAT is every translation nat.go makes, each way.
func TestNAT(t *testing.T) {
	ap := netip.MustParseAddrPort
	resolver := netip.MustParseAddr("127.0.0.53")
	standIn6 := netip.MustParseAddr("2001:db8::53")
	cfg := Config{
		Addr4: testGuest4, Gateway4: testGW4,
		Addr6: testGuest6, Gateway6: testGW6, OurLL6: testLL6,
		DNSMap: map[netip.Addr]netip.AddrPort{
			testGW4:  netip.AddrPortFrom(resolver, 53),
			standIn6: netip.AddrPortFrom(resolver, 53),
		},
	}
	const tcp, udp, icmp = header.ProtoTCP, header.ProtoUDP, header.ProtoICMP
	from := []struct {
		name   string
		noMap  bool
		proto  uint8
		dst    string
		want   string // "" for unreachable
		toBack string // what a reply from want looks like, sent nowhere before
	}{
		{"gateway is host loopback", false, tcp, "192.0.2.1:80", "127.0.0.1:80", "192.0.2.1:80"},
		{"IPv6 gateway is host loopback", false, tcp, "[2001:db8::1]:80", "[::1]:80", "[2001:db8::1]:80"},
		{"our link-local address is the gateway", false, icmp, "[fe80::1]:0", "[::1]:0", "[2001:db8::1]:0"},
		{"other link-local has no scope", false, udp, "[fe80::2]:53", "", ""},
		{"DNS stand-in over UDP", false, udp, "192.0.2.1:53", "127.0.0.53:53", "192.0.2.1:53"},
		{"DNS stand-in over TCP", false, tcp, "192.0.2.1:53", "127.0.0.53:53", "192.0.2.1:53"},
		{"DNS over TLS to the stand-in", false, tcp, "192.0.2.1:853", "127.0.0.53:853", "192.0.2.1:853"},
		{"IPv6 stand-in to an IPv4 resolver", false, udp, "[2001:db8::53]:53", "127.0.0.53:53", "192.0.2.1:53"},
		{"ICMP is no DNS", false, icmp, "192.0.2.1:53", "127.0.0.1:53", "192.0.2.1:53"},
		{"other addresses are themselves", false, udp, "198.51.100.1:123", "198.51.100.1:123", "198.51.100.1:123"},
		{"no-map-gw: gateway is an address", true, tcp, "192.0.2.1:80", "192.0.2.1:80", "192.0.2.1:80"},
		{"no-map-gw: our link-local is the IPv6 gateway", true, tcp, "[fe80::1]:80", "[2001:db8::1]:80", "[2001:db8::1]:80"},
	}
	for _, c := range from {
		cfg.NoMapGW = c.noMap
		e := &Engine{cfg: cfg}
		got := e.natFromGuest(c.proto, ap(c.dst))
		if c.want == "" {
			if got.IsValid() {
				t.Errorf("%s: %s goes to %v, want unreachable", c.name, c.dst, got)
			}
			continue
		}
		if got != ap(c.want) {
			t.Errorf("%s: %s goes to %v, want %s", c.name, c.dst, got, c.want)
		}
		guest := testGuest4
		if ap(c.dst).Addr().Is6() {
			guest = testGuest6
		}
		// A reply to where the guest sent comes from there; from an
		// address the guest did not send to, by the reverse rules.
		if back := e.natToGuest(c.proto, got, guest, ap(c.dst)); back != ap(c.dst) {
			t.Errorf("%s: the reply from %v looks like %v to the guest, want %s", c.name, got, back, c.dst)
		}
		if back := e.natToGuest(c.proto, got, testGuest4, netip.AddrPort{}); back != ap(c.toBack) {
			t.Errorf("%s: unsolicited %v looks like %v to an IPv4 guest, want %s", c.name, got, back, c.toBack)
		}
	}

	cfg.NoMapGW = false
	e := &Engine{cfg: cfg, addrSeen4: cfg.Addr4}
	inbound := []struct {
		name, from   string
		seen6        bool
		remote, dest string
	}{
		{"host loopback appears as the gateway", "127.0.0.1:4000", false, "192.0.2.1:4000", "192.0.2.2:22"},
		{"the host's own address too", "192.0.2.2:4000", false, "192.0.2.1:4000", "192.0.2.2:22"},
		{"a remote IPv4 sender is itself", "198.51.100.7:4000", false, "198.51.100.7:4000", "192.0.2.2:22"},
		{"IPv6 before the guest uses IPv6 arrives over IPv4", "[2001:db8:5::7]:4000", false, "192.0.2.1:4000", "192.0.2.2:22"},
		{"IPv6 once it does", "[2001:db8:5::7]:4000", true, "[2001:db8:5::7]:4000", "[2001:db8::2]:22"},
		{"IPv6 loopback is the IPv6 gateway", "[::1]:4000", true, "[2001:db8::1]:4000", "[2001:db8::2]:22"},
		{"link-local senders are the IPv6 gateway", "[fe80::9]:4000", true, "[2001:db8::1]:4000", "[2001:db8::2]:22"},
	}
	for _, c := range inbound {
		e.addrSeen6 = netip.Addr{}
		if c.seen6 {
			e.addrSeen6 = testGuest6
		}
		remote, dest := e.inboundRoute(ap(c.from), 22)
		if remote != ap(c.remote) || dest != ap(c.dest) {
			t.Errorf("%s: %s -> %v to %v, want %s to %s", c.name, c.from, remote, dest, c.remote, c.dest)
		}
	}
	// A guest given Addr6 from the start (pasta's --config-net) is
	// reached over IPv6 by an IPv6 sender, which keeps its address.
	e.addrSeen6, e.cfg.Configured6 = netip.Addr{}, true
	if remote, dest := e.inboundRoute(ap("[2001:db8:5::7]:4000"), 22); remote != ap("[2001:db8:5::7]:4000") || dest != ap("[2001:db8::2]:22") {
		t.Errorf("IPv6 to a guest configured with it: %v to %v, want [2001:db8:5::7]:4000 to [2001:db8::2]:22", remote, dest)
	}
	// A guest that sends from an IPv4 address of its own is reached there.
	e.addrSeen4 = netip.MustParseAddr("192.0.2.123")
	if _, dest := e.inboundRoute(ap("198.51.100.7:4000"), 22); dest != ap("192.0.2.123:22") {
		t.Errorf("IPv4 to a guest that left its address: to %v, want 192.0.2.123:22", dest)
	}
}

// TestNATMaps: --map-host-loopback moves host loopback off the gateway,
// which becomes an ordinary address, and --map-guest-addr names the
// host's own address, which the guest's shadows; both ways.
func TestNATMaps(t *testing.T) {
	ap := netip.MustParseAddrPort
	cfg := Config{
		Addr4: testGuest4, Gateway4: testGW4, Addr6: testGuest6, Gateway6: testGW6, OurLL6: testLL6,
		MapHostLoopback4: netip.MustParseAddr("192.0.2.77"), NoMapGW: true,
		MapGuestAddr4: netip.MustParseAddr("192.0.2.88"), MapGuestAddr6: netip.MustParseAddr("2001:db8::88"),
	}
	e := &Engine{cfg: cfg}
	for dst, want := range map[string]string{
		"192.0.2.77:80":      "127.0.0.1:80",
		"192.0.2.1:80":       "192.0.2.1:80",
		"192.0.2.88:80":      "192.0.2.2:80",
		"[2001:db8::88]:80":  "[2001:db8::2]:80",
		"[2001:db8::1]:80":   "[2001:db8::1]:80", // "none" for IPv6 after --no-map-gw
		"198.51.100.1:80":    "198.51.100.1:80",
		"[2001:db8::77]:443": "[2001:db8::77]:443",
	} {
		if got := e.natFromGuest(header.ProtoTCP, ap(dst)); got != ap(want) {
			t.Errorf("%s goes to %v, want %s", dst, got, want)
		}
	}
	for from, want := range map[string]string{
		"127.0.0.1:80":      "192.0.2.77:80",
		"192.0.2.2:80":      "192.0.2.88:80",
		"[2001:db8::2]:80":  "[2001:db8::88]:80",
		"198.51.100.1:80":   "198.51.100.1:80",
		"[::1]:80":          "[::1]:80",
		"[2001:db8::9]:123": "[2001:db8::9]:123",
	} {
		if got := e.natToGuest(header.ProtoTCP, ap(from), testGuest4, netip.AddrPort{}); got != ap(want) {
			t.Errorf("%s looks like %v to the guest, want %s", from, got, want)
		}
	}
	for from, want := range map[string]string{
		"127.0.0.1:4000": "192.0.2.77:4000",
		"192.0.2.2:4000": "192.0.2.88:4000",
	} {
		if remote, _ := e.inboundRoute(ap(from), 22); remote != ap(want) {
			t.Errorf("inbound from %s appears as %v, want %s", from, remote, want)
		}
	}
	e.addrSeen6 = testGuest6
	if remote, _ := e.inboundRoute(ap("[2001:db8::2]:4000"), 22); remote != ap("[2001:db8::88]:4000") {
		t.Errorf("inbound from the host's IPv6 address appears as %v", remote)
	}
}

// TestGuestLoopbackDropped: a guest that addresses the host's loopback
// itself (127/8, ::1, or IPv4's mapped into IPv6), or claims it as its
// source, reaches nothing, with --no-map-gw or not: its frames are
// dropped and counted, as passt drops them, and no flow opens. The
// gateway, mapped to loopback, still reaches the same listener.
func TestGuestLoopbackDropped(t *testing.T) {
	pc := listenUDPLoopback(t)
	l := listenLoopback(t)
	uport := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	tport := uint16(l.Addr().(*net.TCPAddr).Port)
	syn := make([]byte, header.TCPMinLen)
	header.TCP(syn).Encode(header.TCPFields{SrcPort: 40000, DstPort: tport, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(syn)})
	a := netip.MustParseAddr
	frames := [][]byte{
		frameIP(testGuest4, a("127.0.0.1"), header.ProtoUDP, udp6(5000, uport, []byte("x"))),
		frameIP(testGuest4, a("127.1.2.3"), header.ProtoUDP, udp6(5001, uport, []byte("x"))),
		frameIP(testGuest6, a("::ffff:127.0.0.1"), header.ProtoUDP, udp6(5002, uport, []byte("x"))),
		frameIP(testGuest6, a("::1"), header.ProtoUDP, udp6(5003, uport, []byte("x"))),
		frameIP(a("127.0.0.1"), testGW4, header.ProtoUDP, udp6(5004, uport, []byte("x"))),
		frameIP(testGuest4, a("127.0.0.1"), header.ProtoTCP, syn),
		frameIP(testGuest6, a("::ffff:127.0.0.1"), header.ProtoTCP, syn),
	}
	buf := make([]byte, 16)
	for _, noMap := range []bool{true, false} {
		te := newTestEngine(t)
		te.cfg.NoTCP, te.cfg.NoUDP, te.cfg.NoMapGW = false, false, noMap
		for _, f := range frames {
			te.tapInput(f)
		}
		te.inputDone()
		if te.Stats.Unhandled != uint64(len(frames)) {
			t.Errorf("no-map-gw %v: %d frames counted unhandled, want %d", noMap, te.Stats.Unhandled, len(frames))
		}
		if n := te.tcp.count + te.udp.count; n != 0 {
			t.Errorf("no-map-gw %v: %d flows opened", noMap, n)
		}
		// Anything sent would be there at once: the wait only bounds
		// the read of nothing.
		pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, from, err := pc.ReadFrom(buf); err == nil {
			t.Errorf("no-map-gw %v: the loopback listener got %q from %v", noMap, buf[:n], from)
		}
		if !noMap {
			udpFlowTo(t, te, pc, 5005) // through the gateway: reached
		}
	}
}

// TestGuestUnspecifiedDropped: a guest that addresses 0.0.0.0 or ::,
// which a host socket's connect() takes for the host itself, reaches
// nothing, with --no-map-gw: its frames are dropped and counted, as
// passt drops a SYN or datagram between endpoints that are not unicast,
// and no flow opens. So is a SYN from such a source, or from port 0, to
// the address mapped to the host's loopback.
func TestGuestUnspecifiedDropped(t *testing.T) {
	l := listenLoopback(t)
	l6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { l6.Close() })
	pc := listenUDPLoopback(t)
	a := netip.MustParseAddr
	port, port6 := uint16(l.Addr().(*net.TCPAddr).Port), uint16(l6.Addr().(*net.TCPAddr).Port)
	uport := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	mapped := a("192.0.2.77") // --map-host-loopback: a way in, for bad sources
	syn := func(sport, dport uint16) []byte {
		b := make([]byte, header.TCPMinLen)
		header.TCP(b).Encode(header.TCPFields{SrcPort: sport, DstPort: dport, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(b)})
		return b
	}
	frames := [][]byte{
		frameIP(testGuest4, a("0.0.0.0"), header.ProtoTCP, syn(40000, port)),
		frameIP(testGuest6, a("::"), header.ProtoTCP, syn(40001, port6)),
		frameIP(testGuest6, a("::ffff:0.0.0.0"), header.ProtoTCP, syn(40002, port)),
		frameIP(a("0.0.0.0"), mapped, header.ProtoTCP, syn(40003, port)),
		frameIP(a("224.0.0.1"), mapped, header.ProtoTCP, syn(40004, port)),
		frameIP(testGuest4, mapped, header.ProtoTCP, syn(0, port)),
		frameIP(testGuest4, a("0.0.0.0"), header.ProtoUDP, udp6(5000, uport, []byte("x"))),
		frameIP(testGuest6, a("::"), header.ProtoUDP, udp6(5001, uport, []byte("x"))),
	}
	te := newTestEngine(t)
	te.cfg.NoTCP, te.cfg.NoUDP, te.cfg.NoMapGW = false, false, true
	te.cfg.MapHostLoopback4 = mapped
	for _, f := range frames {
		te.tapInput(f)
	}
	te.inputDone()
	if te.Stats.Unhandled != uint64(len(frames)) {
		t.Errorf("%d frames counted unhandled, want %d", te.Stats.Unhandled, len(frames))
	}
	if n := te.tcp.count + te.udp.count; n != 0 {
		t.Errorf("%d flows opened", n)
	}
	// Anything sent would be there at once: the wait only bounds the
	// wait for nothing.
	for _, l := range []net.Listener{l, l6} {
		l.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond))
		if c, err := l.Accept(); err == nil {
			t.Errorf("the host's %v accepted %v", l.Addr(), c.RemoteAddr())
			c.Close()
		}
	}
	pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, from, err := pc.ReadFrom(make([]byte, 16)); err == nil {
		t.Errorf("the loopback listener got %d bytes from %v", n, from)
	}
}

// TestOutboundMapped: a guest's IPv6 flow to an IPv4-mapped address
// leaves the host over IPv4, so -o and --outbound-if4, which say how IPv4
// leaves, apply to it, as passt applies them: it does not go out as the
// kernel likes instead. It runs in a network namespace of its own, whose
// loopback has the addresses the flows reach and leave from.
func TestOutboundMapped(t *testing.T) {
	pingNetns(t)
	a := netip.MustParseAddr
	peer, out := a("198.51.100.1"), a("198.51.100.2")
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for i, addr := range []netip.Addr{peer, out} {
		ifr, err := unix.NewIfreq(fmt.Sprintf("lo:%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		if err := ifr.SetInet4Addr(addr.AsSlice()); err != nil {
			t.Fatal(err)
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, ifr); err != nil {
			t.Skipf("cannot add %v to lo: %v", addr, err)
		}
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(peer, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(peer, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	mapped := netip.AddrFrom16(peer.As16())
	syn := make([]byte, header.TCPMinLen)
	header.TCP(syn).Encode(header.TCPFields{SrcPort: 40000, DstPort: uint16(l.Addr().(*net.TCPAddr).Port),
		Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(syn)})
	te := newTestEngine(t)
	te.cfg.NoTCP, te.cfg.NoUDP, te.cfg.Outbound4 = false, false, out
	defer te.tcp.closeAll(te.Engine)
	defer te.udp.closeAll(te.Engine)
	te.tapInput(frameIP(testGuest6, mapped, header.ProtoTCP, syn))
	te.tapInput(frameIP(testGuest6, mapped, header.ProtoUDP, udp6(5000, uint16(pc.LocalAddr().(*net.UDPAddr).Port), []byte("x"))))
	te.inputDone()
	l.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	if c, err := l.Accept(); err != nil {
		t.Errorf("TCP: %v", err)
	} else {
		if from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); from != out {
			t.Errorf("TCP to %v came from %v, want %v (-o)", mapped, from, out)
		}
		c.Close()
	}
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, from, err := pc.ReadFrom(make([]byte, 16)); err != nil {
		t.Errorf("UDP: %v", err)
	} else if from := from.(*net.UDPAddr).AddrPort().Addr().Unmap(); from != out {
		t.Errorf("UDP to %v came from %v, want %v (-o)", mapped, from, out)
	}
}

// TestGuestFragmentsDropped: TCP's fragments, IPv4's first or not and
// IPv6's, an IPv4 fragment that says both "don't fragment" and "more
// fragments", and an IPv6 jumbogram (payload length 0) reach nothing
// and open no flow, as passt drops them: they are counted as malformed
// or unhandled. (UDP's and ICMP's are reassembled: frag_test.go.) Extension headers gopasst skips (hop-by-hop,
// destination options) do not hide a datagram, which goes where it would
// without them.
func TestGuestFragmentsDropped(t *testing.T) {
	pc := listenUDPLoopback(t)
	pc6, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { pc6.Close() })
	uport, uport6 := uint16(pc.LocalAddr().(*net.UDPAddr).Port), uint16(pc6.LocalAddr().(*net.UDPAddr).Port)
	syn := make([]byte, header.TCPMinLen)
	header.TCP(syn).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: header.TCPSyn, Window: 100, HeaderLen: header.TCPMinLen})
	frag4 := func(proto uint8, flags uint16) []byte {
		l4 := syn
		if proto == header.ProtoUDP {
			l4 = udp6(5000, uport, []byte("frag"))
		}
		f := frameIP(testGuest4, testGW4, proto, l4)
		binary.BigEndian.PutUint16(f[header.EthernetLen+6:], flags)
		return f
	}
	u := udp6(5001, uport6, []byte("frag"))
	fragHdr := []byte{header.ProtoTCP, 0, 0, 1, 0, 0, 0, 7} // offset 0, more fragments
	jumbo := []byte{header.ProtoUDP, 0, 0xc2, 4, 0, 0, 0, byte(8 + len(u))}
	jf := frameIP(testGuest6, testGW6, 0, append(jumbo, u...))
	binary.BigEndian.PutUint16(jf[header.EthernetLen+4:], 0)
	frames := [][]byte{
		frag4(header.ProtoTCP, 0x2000), // more fragments
		frag4(header.ProtoTCP, 0x0001), // offset 8
		frag4(header.ProtoUDP, 0x6000), // don't fragment and more fragments
		frameIP(testGuest6, testGW6, 44, append(fragHdr, syn...)),
		jf,
	}
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.NoTCP = false, false
	defer te.udp.closeAll(te.Engine)
	for _, f := range frames {
		te.tapInput(f)
	}
	te.inputDone()
	if n := te.Stats.Malformed + te.Stats.Unhandled; n != uint64(len(frames)) {
		t.Errorf("%d frames counted malformed or unhandled, want %d", n, len(frames))
	}
	if te.udp.count != 0 || te.tcp.count != 0 || te.frag.count != 0 {
		t.Errorf("%d UDP flows, %d TCP connections, %d reassemblies", te.udp.count, te.tcp.count, te.frag.count)
	}
	buf := make([]byte, 16)
	// Anything sent would be there at once: the wait only bounds the
	// wait for nothing.
	for _, pc := range []net.PacketConn{pc, pc6} {
		pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, from, err := pc.ReadFrom(buf); err == nil {
			t.Errorf("%v got %q from %v", pc.LocalAddr(), buf[:n], from)
		}
	}

	opts := []byte{60, 0, 1, 4, 0, 0, 0, 0, header.ProtoUDP, 0, 1, 4, 0, 0, 0, 0} // hop-by-hop, destination options: PadN
	te.tapInput(frameIP(testGuest6, testGW6, 0, append(opts, u...)))
	te.inputDone()
	pc6.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err := pc6.ReadFrom(buf); err != nil || string(buf[:n]) != "frag" {
		t.Errorf("behind extension headers: got %q, %v", buf[:n], err)
	}
}
