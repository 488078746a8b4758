package slirp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// testEngine is an engine with a guest attached through a socket pair, so
// that what it answers can be read back and checked. Protocols that open
// host sockets are off, so fuzzed frames never leave the process.
type testEngine struct {
	*Engine
	guest int // the guest's end
	rd    *qemusock.Reader
}

var (
	testGuest4 = netip.MustParseAddr("192.0.2.2")
	testGW4    = netip.MustParseAddr("192.0.2.1")
	testGuest6 = netip.MustParseAddr("2001:db8::2")
	testGW6    = netip.MustParseAddr("2001:db8::1")
	testLL6    = netip.MustParseAddr("fe80::1")
	testMAC    = [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}
)

// setMTU gives the guest MTU mtu, with the configuration New would
// take with it: none for IPv6 below IPv6's minimum. An engine left with
// IPv6 there sends its periodic RA, larger than the MTU.
func (te *testEngine) setMTU(mtu int) {
	te.cfg.MTU = mtu
	if mtu < minMTU6 {
		te.cfg.Addr6 = netip.Addr{}
	}
}

func newTestEngine(t testing.TB) *testEngine {
	e, guest := attachedEngine(t, Config{
		OurMAC: testMAC,
		Addr4:  testGuest4, Prefix4: 24, Gateway4: testGW4,
		Addr6: testGuest6, Gateway6: testGW6, OurLL6: testLL6,
		DNS4:   []netip.Addr{testGW4},
		DNS6:   []netip.Addr{testGW6},
		Search: []string{"example.test", "lab.example"}, Hostname: "h", FQDN: "h.example.test",
		NoTCP: true, NoUDP: true, NoICMP: true,
	})
	return &testEngine{Engine: e, guest: guest, rd: qemusock.NewReader(qemusock.QEMU, 1<<20)}
}

// newUDPTestEngine is newTestEngine with UDP on, its flows closed when
// the test ends.
func newUDPTestEngine(t testing.TB) *testEngine {
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	t.Cleanup(func() { te.udp.closeAll(te.Engine) })
	return te
}

// newTemplatelessEngine is an engine as a host without a template gives
// it: an IPv4 address with no gateway (a host with no default route) and
// IPv6's local mode, the guest's link-local address alone with fe80::1
// for the host. Many paths take a gateway or a guest address as given.
func newTemplatelessEngine(t testing.TB) *testEngine {
	ll := netip.MustParseAddr("fe80::1")
	e, guest := attachedEngine(t, Config{
		OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, NoDHCP: true,
		Local6: true, Gateway6: ll, OurLL6: ll, DNS6: []netip.Addr{ll}, NoDHCPv6: true,
		NoTCP: true, NoUDP: true, NoICMP: true,
	})
	return &testEngine{Engine: e, guest: guest, rd: qemusock.NewReader(qemusock.QEMU, 1<<20)}
}

// attachedEngine is an engine for cfg with a guest already attached over
// a socket pair, with QEMU's framing; it returns the guest's end.
func attachedEngine(t testing.TB, cfg Config) (*Engine, int) {
	t.Helper()
	lfd, err := qemusock.Listen(filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(cfg, lfd)
	if err != nil {
		t.Fatal(err)
	}
	return e, attachStream(t, e)
}

// attachStream attaches a stream client to e and returns the guest's end
// of it.
func attachStream(t testing.TB, e *Engine) int {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pair[0]); unix.Close(pair[1]) })
	if err := e.attach(qemusock.NewStream(pair[0], qemusock.QEMU)); err != nil {
		t.Fatal(err)
	}
	return pair[1]
}

// output sends what the engine queued and returns each frame, failing the
// test for a frame that is not well formed.
func (te *testEngine) output(t testing.TB) [][]byte {
	t.Helper()
	var frames [][]byte
	for te.link.Pending() > 0 {
		te.flush()
		err := drainFrames(te.rd, te.guest, func(f []byte) {
			if err := checkFrame(f); err != nil {
				t.Fatalf("engine sent a bad frame: %v\n% x", err, f)
			}
			frames = append(frames, append([]byte(nil), f...))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return frames
}

// padded reports whether a frame whose packet ends at n is exactly that
// long, or padded with zeros to Ethernet's minimum.
func padded(f []byte, n int) bool {
	if n >= minFrameLen || n > len(f) {
		return n == len(f)
	}
	return len(f) == minFrameLen && !slices.ContainsFunc(f[n:], func(b byte) bool { return b != 0 })
}

// checkFrame verifies a frame the engine built: its IP header, and the
// checksum of its L4 part, pseudo-header included where the protocol has
// one.
func checkFrame(f []byte) error {
	if len(f) < minFrameLen {
		return fmt.Errorf("%d bytes, below Ethernet's minimum", len(f))
	}
	eth := header.Ethernet(f)
	var src, dst netip.Addr
	var proto uint8
	var l4 []byte
	switch eth.Type() {
	case header.EtherTypeARP:
		if !header.ARP(eth.Payload()).IsValid() {
			return fmt.Errorf("bad ARP")
		}
		return nil
	case header.EtherTypeIPv4:
		ip := header.IPv4(eth.Payload())
		if len(ip) >= header.IPv4MinLen && ip.IsFragment() {
			// The L4 checksum is the reassembled datagram's (reassemble).
			if ip[0] != 0x45 || !padded(f, header.EthernetLen+int(ip.TotalLen())) ||
				header.Fold(header.Checksum(ip[:header.IPv4MinLen], 0)) != 0 {
				return fmt.Errorf("bad IPv4 fragment header")
			}
			return nil
		}
		if !ip.IsValid() || !padded(f, header.EthernetLen+int(ip.TotalLen())) ||
			header.Fold(header.Checksum(ip[:ip.HeaderLen()], 0)) != 0 {
			return fmt.Errorf("bad IPv4 header")
		}
		src, dst, proto, l4 = ip.Src(), ip.Dst(), ip.Protocol(), ip.Payload()
	case header.EtherTypeIPv6:
		ip := header.IPv6(eth.Payload())
		if !ip.IsValid() || !padded(f, header.EthernetLen+header.IPv6Len+int(ip.PayloadLen())) {
			return fmt.Errorf("bad IPv6 header")
		}
		src, dst, proto, l4 = ip.Src(), ip.Dst(), ip.NextHeader(), ip.Payload()
		if proto == header.IPv6Fragment {
			return nil // the L4 checksum is the reassembled datagram's (reassemble)
		}
	default:
		return fmt.Errorf("EtherType %#04x", eth.Type())
	}
	var sum uint64
	if proto != header.ProtoICMP {
		sum = header.PseudoHeaderSum(proto, src, dst, len(l4))
	}
	if c := header.Fold(header.Checksum(l4, sum)); c != 0 {
		return fmt.Errorf("protocol %d checksum off by %#04x", proto, c)
	}
	return nil
}

// FuzzFrame feeds whole Ethernet frames to the engine's input path, as
// configured from a host with a template and from one without: none may
// crash it, and whatever it answers must be well formed.
func FuzzFrame(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	engines := []*testEngine{newTestEngine(f), newTemplatelessEngine(f)}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range engines {
			fuzzInput(e.Engine, b)
			e.output(t)
		}
	})
}

// fuzzInput hands b to the engine as a link would: an odd-sized frame
// whole, an even-sized one past qemusock.HeadCopy bytes as vhost-user
// does, its head copied and its tail in two pieces where it lies.
func fuzzInput(e *Engine, b []byte) {
	if len(b) <= qemusock.HeadCopy || len(b)%2 != 0 {
		e.frameInput(b, nil)
		return
	}
	head := append([]byte(nil), b[:qemusock.HeadCopy]...)
	rest := b[qemusock.HeadCopy:]
	tail := []unix.Iovec{iovec(&rest[0], len(rest))}
	if cut := len(rest) / 3; cut > 0 {
		tail = []unix.Iovec{iovec(&rest[0], cut), iovec(&rest[cut], len(rest)-cut)}
	}
	e.frameInput(head, tail)
}

// Fixed loopback ports for FuzzFlows' peers, so that seeds reach them.
const fuzzTCPPort, fuzzUDPPort = 18000, 18001

// FuzzFlows feeds whole frames to the engine with TCP, UDP and ICMP on,
// configured with a template and without (newTemplatelessEngine): the
// TCP and UDP translation, their state and their host sockets see
// fuzzed segments and datagrams, against peers on loopback. Anything a
// fuzzed frame names must stay on this machine, so the target runs only
// in a network namespace whose one interface is loopback ("make fuzz"
// starts it under unshare) and skips elsewhere.
func FuzzFlows(f *testing.F) {
	if ifs, err := net.Interfaces(); err != nil || len(ifs) != 1 || ifs[0].Flags&net.FlagLoopback == 0 {
		f.Skip("runs only in a network namespace with loopback alone (make fuzz: unshare -rn)")
	}
	// The fuzzing workers run this set-up too: the peers share their
	// ports (SO_REUSEPORT).
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return nil
	}}
	l, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", fuzzTCPPort))
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	pc, err := lc.ListenPacket(context.Background(), "udp", fmt.Sprintf("127.0.0.1:%d", fuzzUDPPort))
	if err != nil {
		f.Fatal(err)
	}
	defer pc.Close()
	go servePacketsEcho(pc)

	tcp4 := func(flags header.TCPFlags, seq uint32, payload string) []byte {
		t := make([]byte, header.TCPMinLen+len(payload))
		header.TCP(t).Encode(header.TCPFields{SrcPort: 40000, DstPort: fuzzTCPPort, Seq: seq, Ack: 1, Flags: flags, Window: 0xffff, HeaderLen: header.TCPMinLen})
		copy(t[header.TCPMinLen:], payload)
		return frameIP(testGuest4, testGW4, header.ProtoTCP, t)
	}
	f.Add(tcp4(header.TCPSyn, 1000, ""))
	f.Add(tcp4(header.TCPAck|header.TCPPsh, 1001, "hello"))
	f.Add(tcp4(header.TCPFin|header.TCPAck, 1006, ""))
	f.Add(tcp4(header.TCPRst, 1006, ""))
	u := make([]byte, header.UDPLen+4)
	header.UDP(u).Encode(5000, fuzzUDPPort, 4)
	copy(u[header.UDPLen:], "ping")
	f.Add(frameIP(testGuest4, testGW4, header.ProtoUDP, u))
	f.Add(frameIP(testGuest4, testGW4, header.ProtoICMP, []byte{header.ICMPv4Echo, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}))
	for _, s := range seedFrames() {
		f.Add(s)
	}
	// A datagram's IP fragments, each its own input (the engines keep
	// reassemblies from one input to the next), and an IPv6 atomic one.
	u = udp6(5000, fuzzUDPPort, bytes.Repeat([]byte("frag"), 100))
	for i, gw := range []netip.Addr{testGW4, testGW6} {
		for _, fr := range fragFrames(frameIP(guestOf(gw), gw, header.ProtoUDP, u), 256, uint32(i)) {
			f.Add(fr)
		}
	}
	f.Add(fragFrames(frameIP(testGuest6, testGW6, header.ProtoUDP, u), 1<<16, 2)[0])
	engines := []*testEngine{newTestEngine(f), newTemplatelessEngine(f)}
	for _, e := range engines {
		e.cfg.NoTCP, e.cfg.NoUDP, e.cfg.NoICMP = false, false, false
		e.cfg.MaxTCP, e.cfg.MaxUDP, e.cfg.MaxICMP = 64, 64, 16 // bounded, and the caps fuzzed too
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range engines {
			fuzzInput(e.Engine, b)
			e.inputDone()
			e.turn(0) // host sockets' events: connects, replies, resets
			e.output(t)
		}
	})
}

// servePacketsEcho sends each datagram back until pc is closed.
func servePacketsEcho(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(buf[:n], from)
	}
}

// FuzzDHCP feeds client messages to the DHCP server, of an engine as
// the tests configure it and of one whose gateway is off the guest's
// subnet (classless routes) with a search list, host name and FQDN past
// the room a reply has: every reply is a well formed message of 300 to
// 548 bytes (a 576-byte datagram), its options whole up to their end.
func FuzzDHCP(f *testing.F) {
	f.Add(dhcpDiscover4())
	long := newTestEngine(f)
	long.cfg.Gateway4 = netip.MustParseAddr("198.51.100.1")
	long.cfg.Hostname = strings.Repeat("h", 63)
	long.cfg.FQDN = strings.Repeat("f", 63) + "." + strings.Repeat("e", 63) + ".test"
	long.cfg.Search = nil
	for i := range 12 {
		long.cfg.Search = append(long.cfg.Search, fmt.Sprintf("%s%d.example.test", strings.Repeat("s", 40), i))
	}
	engines := []*testEngine{newTestEngine(f), long}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range engines {
			e.dhcpInput(b)
			for _, fr := range e.output(t) {
				ip := header.IPv4(header.Ethernet(fr).Payload())
				u := header.UDP(ip.Payload())
				d := u.Payload()
				if ip.Src() != e.cfg.Gateway4 || u.SrcPort() != dhcpServerPort || u.DstPort() != dhcpClientPort ||
					len(d) < 300 || len(d) > len(e.dhcpBuf) || d[0] != 2 || [4]byte(d[bootpLen:]) != dhcpMagic {
					t.Fatalf("a reply of %d bytes from %v:%d to port %d", len(d), ip.Src(), u.SrcPort(), u.DstPort())
				}
				o := d[bootpLen+4:]
				for len(o) > 0 && o[0] != optEnd {
					if len(o) < 2 || 2+int(o[1]) > len(o) {
						t.Fatalf("an option cut short: % x", o)
					}
					o = o[2+int(o[1]):]
				}
				if len(o) == 0 {
					t.Fatal("a reply without its end option")
				}
			}
		}
	})
}

// FuzzDHCPv6 feeds client messages to the DHCPv6 server: a message that
// parses gets a reply that parses too, with the client's identifier.
func FuzzDHCPv6(f *testing.F) {
	f.Add(dhcpv6Solicit1())
	e := newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseDHCPv6(b)
		e.dhcpv6Input(testLL6, b)
		out := e.output(t)
		if err != nil {
			if len(out) > 0 {
				t.Fatal("answered a malformed message")
			}
			return
		}
		for _, fr := range out {
			reply, err := parseDHCPv6(fr[l4Off6+header.UDPLen:])
			if err != nil || string(reply.clientID) != string(m.clientID) || reply.xid != m.xid {
				t.Fatalf("reply does not parse or lost the client's identity: %v", err)
			}
		}
	})
}

// FuzzNDP feeds ICMPv6 messages to Neighbor Discovery.
func FuzzNDP(f *testing.F) {
	f.Add(ndpSolicit(testGW6))
	f.Add([]byte{header.ICMPv6RouterSol, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 1})
	e := newTestEngine(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < header.ICMPEchoLen {
			return
		}
		e.ndpInput(netip.MustParseAddr("fe80::2"), header.ICMP(b), 255)
		e.output(t)
	})
}

func FuzzDNS(f *testing.F) {
	f.Add([]byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := parseDNSQuery(b)
		if err == nil && len(q.Name) > 255 {
			t.Fatalf("name of %d bytes", len(q.Name))
		}
	})
}
