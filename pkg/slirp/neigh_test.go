package slirp

import (
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/rtnl"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// The host's neighbours as the guest sees them (neigh.go): entries fed
// in as the kernel's messages would bring them, then what ARP, NDP and
// flows tell the guest.

const testIfi = 7 // the template interface of both families

var (
	macA = [6]byte{2, 0, 0, 0, 0, 0xa}
	macB = [6]byte{2, 0, 0, 0, 0, 0xb}
	macR = [6]byte{2, 0, 0, 0, 0, 0x1} // the router's
)

// neighEngine is newTestEngine with cfg changed by set (if not nil), its
// neighbours heard on testIfi, and what it sent on attach read.
func neighEngine(t *testing.T, set func(*Config)) *testEngine {
	cfg := Config{
		OurMAC: testMAC,
		Addr4:  testGuest4, Prefix4: 24, Gateway4: testGW4,
		Addr6: testGuest6, Gateway6: testGW6, OurLL6: testLL6,
		NoTCP: true, NoUDP: true, NoICMP: true, NoRA: true,
	}
	if set != nil {
		set(&cfg)
	}
	e, guest := attachedEngine(t, cfg)
	e.neigh.if4, e.neigh.if6 = testIfi, testIfi
	te := &testEngine{Engine: e, guest: guest, rd: qemusock.NewReader(qemusock.QEMU, 1<<20)}
	te.output(t)
	return te
}

// hostNeigh is the kernel's message for a reachable neighbour a at mac
// on the template interface.
func hostNeigh(a netip.Addr, mac [6]byte) rtnl.Neigh {
	return rtnl.Neigh{Addr: a, Index: testIfi, State: unix.NUD_REACHABLE, Type: unix.RTN_UNICAST, MAC: mac, MACLen: 6}
}

// arpFor asks the engine for target's MAC and returns its answer's
// sender MAC, failing the test on no answer or one not from our MAC.
func (te *testEngine) arpFor(t *testing.T, target netip.Addr) [6]byte {
	t.Helper()
	b := make([]byte, header.EthernetLen+header.ARPLen)
	header.Ethernet(b).Encode(broadcastMAC, testGuestMAC, header.EtherTypeARP)
	g, tgt := testGuest4.As4(), target.As4()
	header.ARP(b[header.EthernetLen:]).Encode(header.ARPRequest, testGuestMAC[:], g[:], zeroMAC[:], tgt[:])
	te.tapInput(b)
	out := te.output(t)
	if len(out) != 1 || header.Ethernet(out[0]).Type() != header.EtherTypeARP {
		t.Fatalf("ARP for %v: %d frames", target, len(out))
	}
	if src := [6]byte(header.Ethernet(out[0]).Src()); src != testMAC {
		t.Errorf("ARP reply for %v from %x, not our MAC", target, src)
	}
	return [6]byte(header.ARP(header.Ethernet(out[0]).Payload()).SenderMAC())
}

// naFor sends a Neighbor Solicitation for target and returns the
// advertisement's target link-layer address.
func (te *testEngine) naFor(t *testing.T, target netip.Addr) [6]byte {
	t.Helper()
	te.tapInput(frameIP(testGuest6, target, header.ProtoICMPv6, ndpSolicit(target)))
	nas := icmp6Out(te.output(t))
	if len(nas) != 1 || nas[0].Type() != header.ICMPv6NeighAdv || header.NDPTarget(nas[0]) != target {
		t.Fatalf("NS for %v: %d answers", target, len(nas))
	}
	return [6]byte(nas[0][header.NDPNALen+2 : header.NDPNALen+8])
}

// announced returns the ARP announcements and unsolicited NAs the engine
// sent, as "address MAC" lines.
func (te *testEngine) announced(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, f := range te.output(t) {
		eth := header.Ethernet(f)
		switch eth.Type() {
		case header.EtherTypeARP:
			a := header.ARP(eth.Payload())
			if a.Op() != header.ARPRequest || [6]byte(eth.Dst()) != broadcastMAC ||
				[6]byte(eth.Src()) != [6]byte(a.SenderMAC()) || string(a.SenderIP()) != string(a.TargetIP()) {
				t.Errorf("not an ARP announcement: % x", f)
			}
			out = append(out, fmt.Sprintf("%v %x", netip.AddrFrom4([4]byte(a.SenderIP())), a.SenderMAC()))
		case header.EtherTypeIPv6:
			ip := header.IPv6(eth.Payload())
			m := header.ICMP(ip.Payload())
			if ip.Dst() != allNodes || m.Type() != header.ICMPv6NeighAdv || [6]byte(eth.Src()) != testMAC {
				t.Errorf("not an unsolicited NA from us: % x", f)
			}
			out = append(out, fmt.Sprintf("%v %x", header.NDPTarget(m), m[header.NDPNALen+2:header.NDPNALen+8]))
		default:
			t.Errorf("unexpected frame % x", f)
		}
	}
	return out
}

// awaitIPv4 runs the engine until it sends the guest an IPv4 frame that
// match accepts, and returns it, or nil after five seconds.
func (te *testEngine) awaitIPv4(t *testing.T, match func(header.IPv4) bool) []byte {
	t.Helper()
	return te.awaitFrame(t, func(eth header.Ethernet) bool {
		return eth.Type() == header.EtherTypeIPv4 && match(header.IPv4(eth.Payload()))
	})
}

// awaitIPv6 is awaitIPv4 for IPv6.
func (te *testEngine) awaitIPv6(t *testing.T, match func(header.IPv6) bool) []byte {
	t.Helper()
	return te.awaitFrame(t, func(eth header.Ethernet) bool {
		return eth.Type() == header.EtherTypeIPv6 && match(header.IPv6(eth.Payload()))
	})
}

// awaitFrame runs the engine until it sends the guest a frame that match
// accepts, and returns it, or nil after five seconds.
func (te *testEngine) awaitFrame(t *testing.T, match func(header.Ethernet) bool) []byte {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		te.turn(10)
		var found []byte
		err := drainFrames(te.rd, te.guest, func(f []byte) {
			if found == nil && match(header.Ethernet(f)) {
				found = append([]byte(nil), f...)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if found != nil {
			return found
		}
	}
	return nil
}

func srcMAC(f []byte) [6]byte { return [6]byte(header.Ethernet(f).Src()) }

// By default the gateway stands for the host: its entry is a blocker with
// our MAC, which the router's real MAC does not change, and the fallback
// for addresses the host has no entry for. A host neighbour the guest
// asks for comes with its own MAC, announced when it appears, changed
// silently, and gone with the entry.
func TestNeighARP(t *testing.T) {
	te := neighEngine(t, nil)
	other := netip.MustParseAddr("192.0.2.50")

	te.neighEvent(hostNeigh(testGW4, macR))
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("the blocked gateway was announced: %q", got)
	}
	if got := te.arpFor(t, testGW4); got != testMAC {
		t.Errorf("gateway at %x, want ours", got)
	}

	te.neighEvent(hostNeigh(other, macA))
	if got, want := te.announced(t), []string{"192.0.2.50 02000000000a"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("announced %q, want %q", got, want)
	}
	if got := te.arpFor(t, other); got != macA {
		t.Errorf("neighbour at %x, want %x", got, macA)
	}
	if got := te.arpFor(t, netip.MustParseAddr("192.0.2.60")); got != testMAC {
		t.Errorf("an address without an entry at %x, want the gateway's (ours)", got)
	}

	te.neighEvent(hostNeigh(other, macB))
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("a changed MAC was announced: %q", got)
	}
	if got := te.arpFor(t, other); got != macB {
		t.Errorf("neighbour at %x after the change, want %x", got, macB)
	}

	// Not the template interface, not unicast, not six bytes: ignored.
	for _, n := range []rtnl.Neigh{
		{Addr: other, Index: testIfi + 1, State: unix.NUD_REACHABLE, Type: unix.RTN_UNICAST, MAC: macA, MACLen: 6},
		{Addr: other, Index: testIfi, State: unix.NUD_REACHABLE, Type: unix.RTN_BROADCAST, MAC: macA, MACLen: 6},
		{Addr: other, Index: testIfi, State: unix.NUD_REACHABLE, Type: unix.RTN_UNICAST, MACLen: 8},
	} {
		te.neighEvent(n)
	}
	if got := te.arpFor(t, other); got != macB {
		t.Errorf("neighbour at %x after messages to ignore, want %x", got, macB)
	}

	// Failed, then deleted: our MAC (the gateway's) again.
	te.neighEvent(rtnl.Neigh{Addr: other, Index: testIfi, State: unix.NUD_FAILED})
	if got := te.arpFor(t, other); got != testMAC {
		t.Errorf("a failed neighbour at %x, want ours", got)
	}
	te.neighEvent(hostNeigh(other, macA))
	te.announced(t)
	te.neighEvent(rtnl.Neigh{Addr: other, Index: testIfi, Deleted: true})
	if got := te.arpFor(t, other); got != testMAC {
		t.Errorf("a deleted neighbour at %x, want ours", got)
	}
	// A deletion or failure never removes a blocker.
	te.neighEvent(rtnl.Neigh{Addr: testGW4, Index: testIfi, Deleted: true})
	if n, ok := te.neigh.entries[testGW4]; !ok || !n.permanent {
		t.Error("the gateway's blocker went with the host's entry")
	}
}

// With --no-map-gw the gateway is the router: the guest gets its real
// MAC, for it and for any address the host has no entry for, by ARP and
// by NDP, and each appearance is announced.
func TestNeighNoMapGW(t *testing.T) {
	te := neighEngine(t, func(c *Config) { c.NoMapGW = true })
	if len(te.neigh.entries) != 0 {
		t.Fatalf("blockers with --no-map-gw: %v", te.neigh.entries)
	}
	te.neighEvent(hostNeigh(testGW4, macR))
	te.neighEvent(hostNeigh(testGW6, macR))
	te.neighEvent(hostNeigh(testLL6, macA))
	want := []string{"192.0.2.1 020000000001", "2001:db8::1 020000000001", "fe80::1 02000000000a"}
	if got := te.announced(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("announced %q, want %q", got, want)
	}
	for _, c := range []struct {
		a    netip.Addr
		want [6]byte
	}{{testGW4, macR}, {netip.MustParseAddr("192.0.2.60"), macR}} {
		if got := te.arpFor(t, c.a); got != c.want {
			t.Errorf("ARP for %v: %x, want %x", c.a, got, c.want)
		}
	}
	for _, c := range []struct {
		a    netip.Addr
		want [6]byte
	}{{testGW6, macR}, {testLL6, macA}, {netip.MustParseAddr("2001:db8::99"), macR}} {
		if got := te.naFor(t, c.a); got != c.want {
			t.Errorf("NA for %v: %x, want %x", c.a, got, c.want)
		}
	}
}

// --map-host-loopback and --map-guest-addr get blockers; the gateway,
// no longer standing for the host, does not. The host's own address and
// the guest's, which are one, are no neighbour of the guest's.
func TestNeighBlockers(t *testing.T) {
	lo4, ga4 := netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("192.0.2.88")
	lo6, ga6 := netip.MustParseAddr("2001:db8::77"), netip.MustParseAddr("2001:db8::88")
	te := neighEngine(t, func(c *Config) {
		c.MapHostLoopback4, c.MapGuestAddr4, c.MapHostLoopback6, c.MapGuestAddr6 = lo4, ga4, lo6, ga6
	})
	for _, a := range []netip.Addr{lo4, ga4, lo6, ga6} {
		te.neighEvent(hostNeigh(a, macA))
		if n := te.neigh.entries[a]; !n.permanent || n.mac != testMAC {
			t.Errorf("%v: %+v, want a blocker with our MAC", a, n)
		}
	}
	// The host's loopback and own address map onto the blockers.
	te.neighEvent(hostNeigh(netip.MustParseAddr("127.0.0.1"), macA))
	te.neighEvent(hostNeigh(testGuest4, macA))
	te.neighEvent(hostNeigh(testGuest6, macA))
	te.neighEvent(hostNeigh(netip.MustParseAddr("127.0.0.2"), macA))
	te.neighEvent(hostNeigh(netip.IPv4Unspecified(), macA))
	if len(te.neigh.entries) != 4 {
		t.Errorf("entries %v, want the four blockers alone", te.neigh.entries)
	}
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("announced %q", got)
	}
	te.neighEvent(hostNeigh(testGW4, macR))
	te.announced(t)
	if got := te.arpFor(t, testGW4); got != macR {
		t.Errorf("gateway at %x, want the router's %x", got, macR)
	}
	if got := te.arpFor(t, lo4); got != testMAC {
		t.Errorf("the host's loopback at %x, want ours", got)
	}
}

// The table holds neighMax entries, blockers included: the rest are left
// out (and fall back to the gateway's entry, ours). Announcements come a
// tick's worth at a time (TestNeighAnnounceBound).
func TestNeighBound(t *testing.T) {
	te := neighEngine(t, nil)
	base := netip.MustParseAddr("10.0.0.1")
	a := base
	announced := 0
	for i := range neighMax + 10 {
		te.neighEvent(hostNeigh(a, macA))
		a = a.Next()
		if i%neighAnnounceMax == 0 {
			announced += len(te.announced(t))
			te.neighTick()
		}
	}
	announced += len(te.announced(t))
	if len(te.neigh.entries) != neighMax {
		t.Errorf("%d entries, want %d", len(te.neigh.entries), neighMax)
	}
	if announced != neighMax-2 {
		t.Errorf("%d announced, want %d (the blockers are the gateways)", announced, neighMax-2)
	}
	if got := te.arpFor(t, a.Prev()); got != testMAC {
		t.Errorf("an entry past the bound at %x, want ours", got)
	}
	// A removal makes room.
	te.neighEvent(rtnl.Neigh{Addr: base, Index: testIfi, Deleted: true})
	te.neighEvent(hostNeigh(a.Prev(), macB))
	te.announced(t)
	if got := te.arpFor(t, a.Prev()); got != macB {
		t.Errorf("after a removal, the new entry at %x, want %x", got, macB)
	}
}

// A dump while the table is full, after changes were lost, takes in the
// host's neighbours of now: entries the dump has not brought yet make
// room for them, as the sweep at its end forgets those anyway. Before,
// the new entries were refused, and stayed out after the sweep.
func TestNeighDumpFull(t *testing.T) {
	te := neighEngine(t, nil)
	old := netip.MustParseAddr("10.0.0.1")
	for a := old; len(te.neigh.entries) < neighMax; a = a.Next() {
		te.neighEvent(hostNeigh(a, macA))
	}
	te.neighMark() // a dump starts: the host has other neighbours now
	fresh := netip.MustParseAddr("10.1.0.1")
	b := fresh
	for range 100 {
		te.neighEvent(hostNeigh(b, macB))
		b = b.Next()
	}
	te.neighSweep()
	for b := fresh; b != fresh.Next().Next(); b = b.Next() {
		if got := te.neighMAC(b); got != macB {
			t.Errorf("%v, new in the dump, at %x, want %x", b, got, macB)
		}
	}
	if got := te.neighMAC(b.Prev()); got != macB {
		t.Errorf("%v, last in the dump, at %x, want %x", b.Prev(), got, macB)
	}
	if got := te.neighMAC(old); got != testMAC {
		t.Errorf("%v, gone from the host, at %x, want ours", old, got)
	}
	if len(te.neigh.entries) > neighMax {
		t.Errorf("%d entries after the sweep", len(te.neigh.entries))
	}
}

// No guest, no announcement, and no trouble.
func TestNeighNoGuest(t *testing.T) {
	e, err := New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4, NoMapGW: true}, -1)
	if err != nil {
		t.Fatal(err)
	}
	e.neigh.if4 = testIfi
	e.neighEvent(hostNeigh(testGW4, macR))
	if e.neighMAC(testGW4) != macR {
		t.Error("the entry was not taken")
	}
}

// A flow's frames come from the MAC its remote had when the flow sent
// its first: a change of the entry reaches new flows, not that one. An
// ICMP error comes from its sender's MAC at the time. The remote here is
// the gateway, which stands for the host's loopback, so its blocker is
// replaced by hand with what the host's table could have for an address
// on its link.
func TestNeighFlowMAC(t *testing.T) {
	te := neighEngine(t, func(c *Config) { c.NoUDP, c.NoTCP = false, false })
	te.neigh.entries[testGW4] = neighEntry{mac: macA}
	isProto := func(p uint8) func(header.IPv4) bool { return func(ip header.IPv4) bool { return ip.Protocol() == p } }

	pc := listenUDPLoopback(t)
	udpReply := func(sport uint16, want [6]byte) {
		t.Helper()
		_, from := udpFlowTo(t, te, pc, sport)
		pc.WriteTo([]byte("back"), from)
		if f := te.awaitIPv4(t, isProto(header.ProtoUDP)); f == nil {
			t.Fatalf("no UDP reply to port %d", sport)
		} else if got := srcMAC(f); got != want {
			t.Errorf("UDP reply to port %d from %x, want %x", sport, got, want)
		}
	}
	udpReply(5000, macA)
	te.neighEvent(hostNeigh(testGW4, macB)) // not a blocker now: taken
	udpReply(5000, macA)                    // the flow keeps its MAC
	udpReply(5001, macB)                    // a new one takes the new MAC

	// TCP: the SYN-ACK.
	l := listenLoopback(t)
	s := make([]byte, header.TCPMinLen)
	header.TCP(s).Encode(header.TCPFields{SrcPort: 6000, DstPort: uint16(l.Addr().(*net.TCPAddr).Port),
		Seq: 1, Flags: header.TCPSyn, Window: 65535, HeaderLen: header.TCPMinLen})
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoTCP, s))
	if f := te.awaitIPv4(t, isProto(header.ProtoTCP)); f == nil {
		t.Fatal("no SYN-ACK")
	} else if got := srcMAC(f); got != macB {
		t.Errorf("SYN-ACK from %x, want %x", got, macB)
	}

	// An ICMP error about a datagram to a closed port: from the
	// gateway's MAC of the moment.
	closed := listenUDPLoopback(t)
	cport := uint16(closed.LocalAddr().(*net.UDPAddr).Port)
	closed.Close()
	te.neighEvent(hostNeigh(testGW4, macR))
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5002, cport, []byte("x"))))
	te.inputDone()
	if f := te.awaitIPv4(t, isProto(header.ProtoICMP)); f == nil {
		t.Fatal("no ICMP error for a closed port")
	} else if got := srcMAC(f); got != macR {
		t.Errorf("ICMP error from %x, want %x", got, macR)
	}
}

// An echo reply comes from the MAC its source had at the flow's first
// reply from it.
func TestNeighEchoMAC(t *testing.T) {
	needPing(t)
	te := neighEngine(t, func(c *Config) { c.NoICMP = false })
	te.neigh.entries[testGW4] = neighEntry{mac: macA} // as TestNeighFlowMAC
	isEcho := func(ip header.IPv4) bool { return ip.Protocol() == header.ProtoICMP }
	for i, want := range [][6]byte{macA, macA} {
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echoRequest(header.ICMPv4Echo, 7, uint16(i))))
		if f := te.awaitIPv4(t, isEcho); f == nil {
			t.Fatal("no echo reply")
		} else if got := srcMAC(f); got != want {
			t.Errorf("echo reply %d from %x, want %x", i, got, want)
		}
		te.neighEvent(hostNeigh(testGW4, macB))
	}
}

// WatchNeighbours with the kernel's own socket, in a network namespace of
// the test's: the dump's entries are there before Run, and a change made
// while the engine runs reaches it through the epoll loop, announced.
func TestWatchNeighbours(t *testing.T) {
	ip, ifi := neighNetns(t)
	ip("neigh replace 192.0.2.50 lladdr 02:00:00:00:00:0a dev v0 nud permanent")
	te := neighEngine(t, nil)
	c := openNeigh(t, ifi)
	if err := te.WatchNeighbours(c, ifi, 0); err != nil {
		t.Fatal(err)
	}
	if got := te.neighMAC(netip.MustParseAddr("192.0.2.50")); got != macA {
		t.Errorf("after the dump: %x, want %x", got, macA)
	}
	te.output(t) // the guest is attached already, so the dump's entry was announced: not the point here
	ip("neigh replace 192.0.2.51 lladdr 02:00:00:00:00:0b dev v0 nud reachable")
	var got []string
	for deadline := time.Now().Add(5 * time.Second); len(got) == 0 && time.Now().Before(deadline); {
		te.turn(10)
		drainFrames(te.rd, te.guest, func(f []byte) {
			if header.Ethernet(f).Type() == header.EtherTypeARP {
				a := header.ARP(header.Ethernet(f).Payload())
				got = append(got, fmt.Sprintf("%v %x", netip.AddrFrom4([4]byte(a.SenderIP())), a.SenderMAC()))
			}
		})
	}
	if want := "192.0.2.51 02000000000b"; len(got) != 1 || got[0] != want {
		t.Errorf("announced %q, want %q", got, want)
	}
}

// One UDP flow reaches the host's loopback both by the gateway and by our
// link-local address, which both stand for it: a reply comes from the
// address the guest last sent to, and from that address's MAC, not from
// the MAC of whichever the peer's first reply came from. (The entries are
// put in by hand, as in TestNeighFlowMAC.)
func TestNeighUDPPeerMAC(t *testing.T) {
	te := neighEngine(t, func(c *Config) { c.NoUDP = false })
	te.neigh.entries[testGW6] = neighEntry{mac: macA}
	te.neigh.entries[testLL6] = neighEntry{mac: macB}
	pc, err := net.ListenPacket("udp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	for _, c := range []struct {
		to   netip.Addr
		want [6]byte
	}{{testGW6, macA}, {testLL6, macB}, {testGW6, macA}} {
		pc.WriteTo([]byte("back"), udpSendVia(t, te, pc, testGuest6, c.to, 5000))
		f := te.awaitIPv6(t, func(ip header.IPv6) bool { return ip.NextHeader() == header.ProtoUDP })
		if f == nil {
			t.Fatalf("no reply to the datagram to %v", c.to)
		}
		if src := header.IPv6(header.Ethernet(f).Payload()).Src(); src != c.to {
			t.Errorf("reply from %v, want %v", src, c.to)
		}
		if got := srcMAC(f); got != c.want {
			t.Errorf("reply from %v at %x, want %x", c.to, got, c.want)
		}
	}
}

// neighNetns moves the test's goroutine, for good, to a new network
// namespace with an interface v0 (a veth) up at 192.0.2.100/24, and
// returns v0's index and a function that runs ip -batch there (a
// command a line).
func neighNetns(t *testing.T) (ip func(cmds ...string), ifi int) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace")
	}
	if emulated() {
		t.Skip("qemu-user translates neither a socket filter on netlink nor Go's interface dumps")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	// Never unlocked: the thread goes with the test's goroutine, never
	// back to our namespace. ip, started from it, runs in its namespace.
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("no network namespace: %v", err)
	}
	ip = func(cmds ...string) {
		t.Helper()
		c := exec.Command("ip", "-batch", "-")
		c.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch: %v\n%s", err, out)
		}
	}
	ip("link add v0 type veth peer name v1", "link set v0 up", "addr add 192.0.2.100/24 dev v0")
	v0, err := net.InterfaceByName("v0")
	if err != nil {
		t.Fatal(err)
	}
	return ip, v0.Index
}

// Changes lost before the first dump, as a link churned faster than the
// socket is read loses them, cost no neighbour: the dump is read to its
// end and taken, and the engine watches on.
func TestWatchNeighboursOverrun(t *testing.T) {
	ip, ifi := neighNetns(t)
	c := openNeigh(t, ifi)
	// The smallest buffer the kernel allows: a few changes fill it.
	if err := unix.SetsockoptInt(c.Fd(), unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for i := range 90 {
		cmds = append(cmds, fmt.Sprintf("neigh replace 192.0.2.%d lladdr 02:00:00:00:00:%02x dev v0 nud permanent", i+10, i+10))
	}
	ip(append(cmds, "neigh del 192.0.2.10 dev v0")...)
	te := neighEngine(t, nil)
	if err := te.WatchNeighbours(c, ifi, 0); err != nil {
		t.Fatal(err)
	}
	if got, want := te.neighMAC(netip.MustParseAddr("192.0.2.99")), [6]byte{2, 0, 0, 0, 0, 99}; got != want {
		t.Errorf("the last entry at %x, want %x", got, want)
	}
	if got := te.neighMAC(netip.MustParseAddr("192.0.2.10")); got != testMAC {
		t.Errorf("the deleted entry at %x, want ours", got)
	}
}

// Changes lost while the engine runs (the socket overran) are made up for
// by a dump at the next tick: an entry deleted meanwhile goes, one added
// comes, announced.
func TestNeighResync(t *testing.T) {
	ip, ifi := neighNetns(t)
	ip("neigh replace 192.0.2.9 lladdr 02:00:00:00:00:09 dev v0 nud permanent")
	te := neighEngine(t, nil)
	c := openNeigh(t, ifi)
	if err := te.WatchNeighbours(c, ifi, 0); err != nil {
		t.Fatal(err)
	}
	te.output(t)
	if err := unix.SetsockoptInt(c.Fd(), unix.SOL_SOCKET, unix.SO_RCVBUF, 0); err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for i := range 90 {
		cmds = append(cmds, fmt.Sprintf("neigh replace 192.0.2.%d lladdr 02:00:00:00:00:%02x dev v0 nud permanent", i+10, i+10))
	}
	ip(append(cmds, "neigh del 192.0.2.9 dev v0")...) // the last changes are lost
	gone, last, lastMAC := netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.99"), [6]byte{2, 0, 0, 0, 0, 99}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		te.turn(10)
		if te.neighMAC(gone) == testMAC && te.neighMAC(last) == lastMAC && !te.neigh.lost {
			break
		}
	}
	if got := te.neighMAC(gone); got != testMAC {
		t.Errorf("the entry deleted at %x, want ours", got)
	}
	if got := te.neighMAC(last); got != lastMAC {
		t.Errorf("the last entry added at %x, want %x", got, lastMAC)
	}
}

// The host's table churned at its bound, or asked about for every
// address (ARP, NS), allocates nothing: the table is sized for its bound, "table
// full" is logged (with --debug) once, and an answer is built in the
// output queue.
func TestNeighAllocs(t *testing.T) {
	var logged strings.Builder
	e, err := New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4,
		Debug: true, Log: log.New(&logged, "", 0)}, -1)
	if err != nil {
		t.Fatal(err)
	}
	e.neigh.if4 = testIfi
	a := netip.MustParseAddr("10.0.0.1")
	churn := func() {
		for range neighMax + 10 {
			e.neighEvent(hostNeigh(a, macA))
			e.neighEvent(rtnl.Neigh{Addr: a, Index: testIfi, State: unix.NUD_FAILED})
			e.neighEvent(hostNeigh(a, macB))
			a = a.Next()
		}
		for range neighMax {
			a = a.Prev()
			e.neighEvent(rtnl.Neigh{Addr: a, Index: testIfi, Deleted: true})
		}
		a = a.Next()
	}
	churn() // the table at its largest once
	if n := testing.AllocsPerRun(20, churn); n != 0 {
		t.Errorf("churning the table: %v allocations", n)
	}
	if n := strings.Count(logged.String(), "neighbour table full"); n != 1 {
		t.Errorf("the full table logged %d times, want once", n)
	}

	te := neighEngine(t, nil)
	req := make([]byte, header.EthernetLen+header.ARPLen)
	header.Ethernet(req).Encode(broadcastMAC, testGuestMAC, header.EtherTypeARP)
	g := testGuest4.As4()
	ask := func() {
		for i := range 256 {
			header.ARP(req[header.EthernetLen:]).Encode(header.ARPRequest, testGuestMAC[:], g[:], zeroMAC[:], []byte{10, 1, byte(i), 1})
			te.tapInput(req)
		}
		te.flush()
	}
	ask()
	if n := testing.AllocsPerRun(20, ask); n != 0 {
		t.Errorf("ARP for every address: %v allocations", n)
	}
	var nss [][]byte
	for i := range 256 {
		target := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)})
		nss = append(nss, frameIP(testGuest6, target, header.ProtoICMPv6, ndpSolicit(target)))
	}
	solicit := func() {
		for _, f := range nss {
			te.tapInput(f)
		}
		te.flush()
	}
	solicit()
	if n := testing.AllocsPerRun(20, solicit); n != 0 {
		t.Errorf("NS for every address: %v allocations", n)
	}
}

// What the host's table may hold but no frame to the guest may carry: a
// MAC no frame comes from (zero, multicast, broadcast), which takes an
// entry out; an IPv6 entry at an IPv4-mapped address, which is no IPv6
// neighbour and no IPv4 one either.
func TestNeighOddEntries(t *testing.T) {
	te := neighEngine(t, func(c *Config) { c.NoMapGW = true })
	a := netip.MustParseAddr("192.0.2.50")
	for _, mac := range [][6]byte{zeroMAC, broadcastMAC, {1, 0, 0x5e, 0, 0, 1}, {0x33, 0x33, 0, 0, 0, 1}} {
		te.neighEvent(hostNeigh(a, mac))
	}
	te.neighEvent(hostNeigh(netip.MustParseAddr("::ffff:192.0.2.51"), macA))
	if len(te.neigh.entries) != 0 {
		t.Errorf("entries taken: %v", te.neigh.entries)
	}
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("announced %q", got)
	}
	te.neighEvent(hostNeigh(a, macA))
	te.announced(t)
	te.neighEvent(hostNeigh(a, broadcastMAC))
	if got := te.arpFor(t, a); got != testMAC {
		t.Errorf("an entry now at the broadcast MAC at %x, want ours", got)
	}
}

// An announcement reaches a real guest: the engine's ARP announcement
// and unsolicited NA, written into a tap in a namespace whose kernel
// knew each address by our MAC, change its entry to the neighbour's. (An
// NA to a multicast address with the solicited flag set is dropped, as
// RFC 4861 7.1.2 has it.)
func TestNeighAnnounceKernel(t *testing.T) {
	ip, _ := neighNetns(t)
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no tap: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	ifr, err := unix.NewIfreq("g0")
	if err != nil {
		t.Fatal(err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		t.Skipf("no tap: %v", err)
	}
	n4, n6 := netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("2001:db8::50")
	guestMAC := net.HardwareAddr(testGuestMAC[:]).String()
	ip("link set g0 address "+guestMAC, "addr add 192.0.2.2/24 dev g0", "addr add 2001:db8::2/64 dev g0 nodad",
		"link set g0 up", "neigh replace 192.0.2.50 lladdr 9a:55:9a:55:9a:55 dev g0 nud stale",
		"neigh replace 2001:db8::50 lladdr 9a:55:9a:55:9a:55 dev g0 nud stale")

	te := neighEngine(t, nil)
	te.neighEvent(hostNeigh(n4, macA))
	te.neighEvent(hostNeigh(n6, macA))
	frames := te.output(t)
	if len(frames) != 2 {
		t.Fatalf("%d announcements, want 2", len(frames))
	}
	for _, f := range frames {
		if _, err := unix.Write(fd, f); err != nil {
			t.Fatal(err)
		}
	}
	want := net.HardwareAddr(macA[:]).String()
	for _, a := range []netip.Addr{n4, n6} {
		out, err := exec.Command("ip", "neigh", "show", a.String(), "dev", "g0").Output()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), want) {
			t.Errorf("the kernel has %q for %v, want %s", out, a, want)
		}
	}
}

// A guest autoconfigures its addresses from its MAC (EUI-64), in the
// link-local prefix and in ours, and a hostile host on the host's link
// can have the host's table hold an entry for either: announced to the
// guest while it checks the address for duplicates, it would give the
// address up (RFC 4862 5.4.5). Such an entry is not taken.
func TestNeighGuestEUI64(t *testing.T) {
	te := neighEngine(t, nil)
	te.arpFor(t, testGW4) // the engine learns the guest's MAC
	iid := [8]byte{testGuestMAC[0] ^ 2, testGuestMAC[1], testGuestMAC[2], 0xff, 0xfe, testGuestMAC[3], testGuestMAC[4], testGuestMAC[5]}
	for _, prefix := range []netip.Addr{netip.MustParseAddr("fe80::"), netip.MustParseAddr("2001:db8::")} {
		a := prefix.As16()
		copy(a[8:], iid[:])
		te.neighEvent(hostNeigh(netip.AddrFrom16(a), macA))
	}
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("announced %q", got)
	}
	other := netip.MustParseAddr("2001:db8::50")
	te.neighEvent(hostNeigh(other, macA))
	if got := te.announced(t); len(got) != 1 {
		t.Errorf("another address: announced %q, want it", got)
	}
}

// The address the guest sends from is its own, as its DHCP address is
// (seen4): a host neighbour there, announced, had the guest see its
// address taken (RFC 5227's conflict), as one at its IPv6 address would.
func TestNeighGuestSeen4(t *testing.T) {
	te := neighEngine(t, nil)
	own := netip.MustParseAddr("192.0.2.77")
	u := make([]byte, header.UDPLen+1)
	header.UDP(u).Encode(40000, 9, 1)
	te.tapInput(frameIP(own, netip.MustParseAddr("198.51.100.1"), header.ProtoUDP, u))
	te.output(t)
	te.neighEvent(hostNeigh(own, macA))
	if got := te.announced(t); len(got) != 0 {
		t.Errorf("announced %q", got)
	}
	if _, ok := te.neigh.entries[own]; ok {
		t.Errorf("the guest's address %v taken as a neighbour's", own)
	}
}

// A host's link that churns its neighbours (entries made and forced out
// again, as a host flooding the link with made-up addresses has them)
// costs the guest at most neighAnnounceMax announcements a tick; an
// entry left unannounced is still given in answers.
func TestNeighAnnounceBound(t *testing.T) {
	te := neighEngine(t, nil)
	a := netip.MustParseAddr("10.0.0.1")
	churn := func() {
		for range 1000 {
			te.neighEvent(hostNeigh(a, macA))
			te.neighEvent(rtnl.Neigh{Addr: a, Index: testIfi, Deleted: true})
			a = a.Next()
		}
		te.neighEvent(hostNeigh(a, macB))
	}
	churn()
	if got := len(te.announced(t)); got != neighAnnounceMax {
		t.Errorf("%d announced in a tick, want %d", got, neighAnnounceMax)
	}
	if got := te.arpFor(t, a); got != macB {
		t.Errorf("the entry left unannounced at %x, want %x", got, macB)
	}
	te.neighTick()
	churn()
	if got := len(te.announced(t)); got != neighAnnounceMax {
		t.Errorf("%d announced in the next tick, want %d", got, neighAnnounceMax)
	}
}

// A dump that fails leaves the blockers alone: no entry stays that no
// change would ever update.
func TestWatchNeighboursFails(t *testing.T) {
	te := neighEngine(t, nil)
	te.neighEvent(hostNeigh(netip.MustParseAddr("192.0.2.50"), macA)) // as a first family's dump would
	te.output(t)
	c, err := rtnl.OpenNeigh(testIfi, testIfi)
	if err != nil {
		t.Skipf("no netlink socket: %v", err)
	}
	c.Close()
	if err := te.WatchNeighbours(c, testIfi, testIfi); err == nil {
		t.Fatal("watching with a closed socket worked")
	}
	for a, n := range te.neigh.entries {
		if !n.permanent {
			t.Errorf("%v stayed after the failure", a)
		}
	}
}

// Watching that fails once the dump is in (epoll refuses the socket)
// leaves the blockers alone too, and nothing for the ticks after it to
// dump again with.
func TestWatchNeighboursEpollFails(t *testing.T) {
	ip, ifi := neighNetns(t)
	ip("neigh replace 192.0.2.50 lladdr 02:00:00:00:00:0a dev v0 nud permanent")
	te := neighEngine(t, nil)
	c := openNeigh(t, ifi)
	ep := te.epfd
	te.epfd = notPollable(t)
	defer func() { te.epfd = ep }()
	if err := te.WatchNeighbours(c, ifi, 0); err == nil {
		t.Fatal("watching worked without epoll")
	}
	te.neighTick()
	for a, n := range te.neigh.entries {
		if !n.permanent {
			t.Errorf("%v stayed after the failure", a)
		}
	}
}

// openNeigh opens a socket that hears interface ifi's neighbours, closed
// when the test ends.
func openNeigh(t *testing.T, ifi int) *rtnl.Conn {
	c, err := rtnl.OpenNeigh(ifi, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestARPProbe: a probe (RFC 5227, from 0.0.0.0) is answered for an
// address someone holds, the gateway or a host neighbour, and for no
// other, which the guest may then take; a request from the guest's
// address is answered for any, as gopasst stands for the network.
func TestARPProbe(t *testing.T) {
	te := neighEngine(t, nil)
	held, free := netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("192.0.2.60")
	te.neighEvent(hostNeigh(held, macA))
	te.announced(t)
	probe := func(target netip.Addr) int {
		b := make([]byte, header.EthernetLen+header.ARPLen)
		header.Ethernet(b).Encode(broadcastMAC, testGuestMAC, header.EtherTypeARP)
		tgt := target.As4()
		header.ARP(b[header.EthernetLen:]).Encode(header.ARPRequest, testGuestMAC[:], make([]byte, 4), zeroMAC[:], tgt[:])
		te.tapInput(b)
		return len(te.output(t))
	}
	for _, c := range []struct {
		target  netip.Addr
		replies int
	}{{testGW4, 1}, {held, 1}, {free, 0}, {testGuest4, 0}} {
		if got := probe(c.target); got != c.replies {
			t.Errorf("a probe for %v: %d replies, want %d", c.target, got, c.replies)
		}
	}
	if got := te.arpFor(t, free); got != testMAC {
		t.Errorf("a request for %v from the guest's address: %x, want ours", free, got)
	}
}
