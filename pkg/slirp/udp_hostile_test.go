package slirp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// fillLink fills the guest's link until it takes no more: the guest never
// reads, so the queue stays full. Its frames are zeros (EtherType 0), so
// that a guest that reads later tells them from the engine's.
func fillLink(t *testing.T, te *testEngine) {
	t.Helper()
	for i := 0; ; i++ {
		if i > 1<<16 {
			t.Fatal("the link never filled")
		}
		b := te.reserve(1500)
		if b == nil {
			return
		}
		clear(b)
		te.commit(len(b))
		te.flush()
	}
}

// epollReady tells whether e's epoll set reports a descriptor of kind
// ready now.
func epollReady(e *Engine, kind uint8) bool {
	var evs [64]unix.EpollEvent
	n, _ := unix.EpollWait(e.epfd, evs[:], 0)
	for i := range n {
		if refOf(&evs[i]).kind == kind {
			return true
		}
	}
	return false
}

// udpFlowTo opens a guest UDP flow from sport to the loopback peer pc
// (through the gateway) and returns the flow and the address of its host
// socket as pc sees it.
func udpFlowTo(t *testing.T, te *testEngine, pc net.PacketConn, sport uint16) (*udpFlow, net.Addr) {
	t.Helper()
	from := udpSendVia(t, te, pc, testGuest4, testGW4, sport)
	_, f := te.udp.lookup(netip.AddrPortFrom(testGuest4, sport))
	if f == nil {
		t.Fatal("no flow")
	}
	return f, from
}

// udpSendVia sends a datagram from the guest at src, port sport, to
// the loopback peer pc through dst, which must lead there, and returns
// the address of the flow's host socket as pc sees it.
func udpSendVia(t *testing.T, te *testEngine, pc net.PacketConn, src, dst netip.Addr, sport uint16) net.Addr {
	t.Helper()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	te.tapInput(frameIP(src, dst, header.ProtoUDP, udp6(sport, port, []byte("hi"))))
	te.inputDone()
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	_, from, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	return from
}

// TestUDPLinkFull: a host peer keeps sending to a guest flow while the
// guest reads nothing and the link is full. Its datagrams are dropped and
// counted, as a full link drops them; they are not left in the socket,
// which epoll would report ready at every turn, with nothing to consume
// them: a spin for as long as the guest stalls.
func TestUDPLinkFull(t *testing.T) {
	pc := listenUDPLoopback(t)
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	f, from := udpFlowTo(t, te, pc, 5000)
	fillLink(t, te)
	const sent = 10
	for range sent {
		if _, err := pc.WriteTo(bytes.Repeat([]byte{'x'}, 1000), from); err != nil {
			t.Fatal(err)
		}
	}
	dropped := te.Stats.Dropped
	turnUntilDropped(t, te, dropped+sent, kindUDP)
	var b [1]byte
	if _, _, err := unix.Recvfrom(f.fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Errorf("the flow's socket is not drained: %v", err)
	}
}

// TestUDPLinkFullError: an ICMP error that finds the flow's receive
// buffer full sets the socket's error without queueing it (IP_RECVERR),
// so the error queue reads empty while epoll reports EPOLLERR. With the
// link full too, the engine must still clear it, or it spins.
func TestUDPLinkFullError(t *testing.T) {
	pc := listenUDPLoopback(t)
	cport := closedUDPPort(t, "udp4")
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	f, from := udpFlowTo(t, te, pc, 5001)
	fillLink(t, te)
	if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1); err != nil {
		t.Fatal(err)
	}
	for range 8 { // more than the smallest receive buffer holds
		pc.WriteTo(bytes.Repeat([]byte{'x'}, 1000), from)
	}
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5001, cport, []byte("refused"))))
	te.inputDone()
	for i := 0; epollReady(te.Engine, kindUDP); i++ {
		if i == 8 {
			t.Fatalf("the flow's socket is still ready after %d turns with the link full: nothing consumes it", i)
		}
		te.turn(0)
	}
	if e, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
		t.Errorf("socket error %d left (%v)", e, err)
	}
}

// TestUDPSendAfterError: with IP_RECVERR, an ICMP error about a flow's
// datagram sets its socket's error, which the next send returns (and
// clears) instead of sending, even to another peer: that datagram is no
// less the guest's, and must go; the error stays queued for udpErrors.
func TestUDPSendAfterError(t *testing.T) {
	pc := listenUDPLoopback(t)
	cport := closedUDPPort(t, "udp4")
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	f, _ := udpFlowTo(t, te, pc, 5001)
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5001, cport, []byte("refused"))))
	te.inputDone()
	pfd := []unix.PollFd{{Fd: int32(f.fd)}}
	if n, _ := unix.Poll(pfd, 5000); n != 1 || pfd[0].Revents&unix.POLLERR == 0 {
		t.Fatal("no error for the datagram to a closed port")
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5001, port, []byte("after"))))
	te.inputDone()
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "after" {
		t.Fatalf("the datagram after the error: %q, %v", buf[:n], err)
	}
}

// TestICMPLinkFull: an echo reply that finds the link full is dropped
// and counted, not left in the ping socket for epoll to report at every
// turn. It needs ping sockets (net.ipv4.ping_group_range): where the
// host allows none it runs in a network namespace that does.
func TestICMPLinkFull(t *testing.T) {
	needPing(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	fillLink(t, te)
	dropped := te.Stats.Dropped
	for seq := range 3 {
		echo := []byte{header.ICMPv4Echo, 0, 0, 0, 0xff, 0xff, 0xff, byte(0xfd + seq), 'p', 'i', 'n', 'g'}
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoICMP, echo)) // the gateway: host loopback
	}
	if te.icmp.count != 1 {
		t.Fatalf("%d ICMP flows, want 1", te.icmp.count)
	}
	turnUntilDropped(t, te, dropped+3, kindICMP)
}

// turnUntilDropped runs the engine, its link full, until it counted want
// frames dropped in all, or 5 s passed: loopback may deliver what the
// host sent late, from the kernel's softirq thread. Then no socket of
// kind may be left ready: nothing would consume it, and the engine would
// spin as long as the guest stalls.
func turnUntilDropped(t *testing.T, te *testEngine, want uint64, kind uint8) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); te.Stats.Dropped < want && time.Now().Before(deadline); {
		te.turn(1)
	}
	if te.Stats.Dropped != want {
		t.Errorf("%d counted as dropped in all, want %d", te.Stats.Dropped, want)
	}
	if epollReady(te.Engine, kind) {
		t.Fatal("a socket is still ready with the link full: nothing consumes it")
	}
}

// TestUDPForwardNoGuest: datagrams to a -u port while no guest is
// attached are dropped and counted, not left in the forward's socket for
// epoll to report at every turn until a guest comes.
func TestUDPForwardNoGuest(t *testing.T) {
	e, _, fwd := forwardEngine(t, UDP, 53)
	defer e.RemoveForwards(UDP, []portspec.Forward{fwd})
	c, err := net.Dial("udp", netip.AddrPortFrom(fwd.Addr, fwd.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 5 {
		if _, err := c.Write([]byte("query")); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; epollReady(e, kindUDPListen); i++ {
		if i == 4 {
			t.Fatalf("the -u socket is still ready after %d turns with no guest: nothing consumes it", i)
		}
		e.turn(0)
	}
	if e.Stats.Dropped != 5 {
		t.Errorf("%d datagrams counted as dropped, want 5", e.Stats.Dropped)
	}
}

// spliceUDPCapEngine is an engine with UDP on and --max-udp 2, the port
// of a loopback peer, and the key of a loopback sender from sport on
// pasta's splice path, whose flows close when the test ends.
func spliceUDPCapEngine(t *testing.T) (te *testEngine, port uint16, sender func(sport uint16) spliceUDPKey) {
	pc := listenUDPLoopback(t)
	port = uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	te = newUDPTestEngine(t)
	te.cfg.MaxUDP = 2
	t.Cleanup(func() {
		te.spliceUDPExpire(lfd)
		unix.Close(lfd)
	})
	lo := netip.MustParseAddr("127.0.0.1")
	return te, port, func(sport uint16) spliceUDPKey { return spliceUDPKey{lfd, lo, netip.AddrPortFrom(lo, sport)} }
}

// TestUDPCapCountsSpliceSenders: --max-udp bounds the host sockets of
// the guest's flows and of pasta's loopback senders together, as
// documented: with the senders at the cap, a guest's new flow is refused
// with "administratively prohibited".
func TestUDPCapCountsSpliceSenders(t *testing.T) {
	te, port, sender := spliceUDPCapEngine(t)
	for sport := range uint16(2) {
		te.spliceUDPSend(sender(40000+sport), []byte("x"), port, false)
	}
	if te.spliceUDP.count != 2 {
		t.Fatalf("%d loopback senders, want 2", te.spliceUDP.count)
	}
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5000, port, []byte("y"))))
	te.inputDone()
	prohibited := false
	for _, f := range te.output(t) {
		if f[23] == header.ProtoICMP {
			m := header.ICMP(f[l4Off4:])
			prohibited = prohibited || m.Type() == header.ICMPv4Unreachable && m.Code() == header.ICMPv4AdminProhibited
		}
	}
	if te.udp.count != 0 || !prohibited {
		t.Errorf("with %d loopback senders at --max-udp %d: %d guest flows opened, refused %v",
			te.spliceUDP.count, te.cfg.MaxUDP, te.udp.count, prohibited)
	}
}

// TestUDPSpliceEvictAtCap: at --max-udp, pasta's loopback senders and
// the guest's flows give way to each other once idle udpEvictAfter, as
// the guest's and the -u port's senders do: a host client to a
// container's -u port was refused for minutes once the container's own
// DNS queries held every place.
func TestUDPSpliceEvictAtCap(t *testing.T) {
	te, port, sender := spliceUDPCapEngine(t)
	for sport := range uint16(2) {
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5000+sport, port, []byte("guest"))))
	}
	te.inputDone()
	te.now += udpEvictAfter + time.Second
	te.spliceUDPSend(sender(40000), []byte("splice"), port, false)
	if te.udp.count != 1 || te.spliceUDP.count != 1 {
		t.Fatalf("a loopback sender at the cap, the guest's flows idle: %d guest flows, %d loopback senders; want 1 and 1", te.udp.count, te.spliceUDP.count)
	}
	te.spliceUDPSend(sender(40001), []byte("splice"), port, false)
	if te.spliceUDP.count != 2 || te.udp.count != 0 {
		t.Fatalf("a second: %d guest flows, %d loopback senders; want 0 and 2", te.udp.count, te.spliceUDP.count)
	}
	te.now += udpEvictAfter + time.Second
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5002, port, []byte("guest"))))
	te.inputDone()
	if te.udp.count != 1 || te.spliceUDP.count != 1 {
		t.Errorf("the guest at the cap, the loopback senders idle: %d guest flows, %d loopback senders; want 1 and 1", te.udp.count, te.spliceUDP.count)
	}
}

// TestUDPNotUnicast: a guest datagram to or from an address that is not
// unicast (multicast, broadcast, unspecified), or from or to port 0,
// opens no flow and no host socket: it is counted as unhandled, as
// IPv6's multicast is, and never sent on, as passt does. Its flow would
// have sent the guest's multicast (mDNS, SSDP) onto the host's network
// from the host's address. The flows' sockets are bound to loopback here,
// so that nothing leaves this machine even when the test fails.
func TestUDPNotUnicast(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	te.cfg.OutboundIf4 = "lo"
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.BindToDevice(fd, "lo")
	unix.Close(fd)
	if err != nil {
		t.Skipf("cannot bind a socket to lo: %v", err)
	}
	defer te.udp.closeAll(te.Engine)
	a := netip.MustParseAddr
	for _, c := range []struct {
		name         string
		src, dst     netip.Addr
		sport, dport uint16
	}{
		{"to multicast", testGuest4, a("224.0.0.251"), 5353, 5353},
		{"to broadcast", testGuest4, a("255.255.255.255"), 5000, 9},
		{"to unspecified", testGuest4, a("0.0.0.0"), 5001, 9},
		{"to port 0", testGuest4, a("192.0.2.77"), 5002, 0},
		{"from multicast", a("224.0.0.1"), testGW4, 5003, 9},
		{"from broadcast", a("255.255.255.255"), testGW4, 5004, 9},
		{"from unspecified", a("0.0.0.0"), testGW4, 5005, 9},
		{"from port 0", testGuest4, testGW4, 0, 9},
		{"to IPv4-mapped unspecified", testGuest6, a("::ffff:0.0.0.0"), 5006, 9},
		{"to IPv4-mapped broadcast", testGuest6, a("::ffff:255.255.255.255"), 5007, 9},
		{"to IPv6 unspecified", testGuest6, a("::"), 5008, 9},
	} {
		unhandled := te.Stats.Unhandled
		te.tapInput(frameIP(c.src, c.dst, header.ProtoUDP, udp6(c.sport, c.dport, []byte("x"))))
		te.inputDone()
		te.output(t)
		if te.udp.count != 0 || te.Stats.Unhandled != unhandled+1 {
			t.Errorf("%s: %d flows, %d unhandled, want none and 1", c.name, te.udp.count, te.Stats.Unhandled-unhandled)
			te.udp.closeAll(te.Engine)
		}
	}
}

// TestICMPNotUnicast: a guest's echo request to or from an address that
// is not unicast opens no flow and no ping socket, and is counted as
// unhandled, as its UDP is (TestUDPNotUnicast). Where the host allows
// no ping sockets it runs in a network namespace that does, so that a
// flow it opened would show.
func TestICMPNotUnicast(t *testing.T) {
	needPing(t)
	te := newTestEngine(t)
	te.cfg.NoICMP = false
	defer te.icmp.closeAll(te.Engine)
	a := netip.MustParseAddr
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
	}{
		{"to multicast", testGuest4, a("224.0.0.1")},
		{"to broadcast", testGuest4, a("255.255.255.255")},
		{"to unspecified", testGuest4, a("0.0.0.0")},
		{"from multicast", a("224.0.0.1"), testGW4},
		{"to IPv6 multicast", testGuest6, a("ff02::1")},
		{"to IPv4-mapped broadcast", testGuest6, a("::ffff:255.255.255.255")},
	} {
		typ, proto := byte(header.ICMPv4Echo), uint8(header.ProtoICMP)
		if c.src.Is6() && !c.src.Is4In6() {
			typ, proto = header.ICMPv6Echo, header.ProtoICMPv6
		}
		unhandled := te.Stats.Unhandled
		te.tapInput(frameIP(c.src, c.dst, proto, []byte{typ, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}))
		te.inputDone()
		te.output(t)
		if te.icmp.count != 0 || te.Stats.Unhandled != unhandled+1 {
			t.Errorf("%s: %d flows, %d unhandled, want none and 1", c.name, te.icmp.count, te.Stats.Unhandled-unhandled)
		}
	}
}

// TestUDPUnsolicitedPeer: a guest flow's host socket hears only the peers
// the guest sent to, as passt's connected flow sockets do. Anyone else
// who sends to its port, which is the host's on all its addresses, is
// dropped and counted: a guest that sent one datagram from a port is not
// open on it to the host's whole network. A flow remembers a bounded
// number of peers, the most recent.
func TestUDPUnsolicitedPeer(t *testing.T) {
	pc := listenUDPLoopback(t)
	te := newUDPTestEngine(t)
	f, hostSide := udpFlowTo(t, te, pc, 5000)
	other, err := net.DialUDP("udp", nil, hostSide.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	received := func() (got []string) {
		te.udpSockEvent(f.idx, te.udp.gen(f.idx), unix.EPOLLIN)
		for _, fr := range te.output(t) {
			if ip := header.IPv4(fr[header.EthernetLen:]); ip.Protocol() == header.ProtoUDP {
				got = append(got, string(header.UDP(ip.Payload()).Payload()))
			}
		}
		return got
	}
	if _, err := other.Write([]byte("unsolicited")); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.WriteTo([]byte("reply"), hostSide); err != nil {
		t.Fatal(err)
	}
	// Read in order, as loopback delivers them (late, at times, from
	// the kernel's softirq thread).
	dropped := te.Stats.Dropped
	var got []string
	for deadline := time.Now().Add(5 * time.Second); len(got)+int(te.Stats.Dropped-dropped) < 2 && time.Now().Before(deadline); {
		got = append(got, received()...)
	}
	if len(got) != 1 || got[0] != "reply" {
		t.Errorf("the guest got %q, want only the reply", got)
	}
	if te.Stats.Dropped != dropped+1 {
		t.Errorf("%d datagrams counted dropped, want 1", te.Stats.Dropped-dropped)
	}

	for i := range 2 * udpMaxPeers {
		f.addPeer(netip.AddrPortFrom(testGW4, uint16(1000+i)))
	}
	if len(f.peers) != udpMaxPeers || f.hears(netip.AddrPortFrom(testGW4, 1000)) || !f.hears(netip.AddrPortFrom(testGW4, uint16(999+2*udpMaxPeers))) {
		t.Errorf("after %d peers the flow keeps %d, the first heard %v", 2*udpMaxPeers, len(f.peers), f.hears(netip.AddrPortFrom(testGW4, 1000)))
	}
}

// TestUDPErrorAboutUnknownPeer: an ICMP error about a datagram to a peer
// the guest never sent to, which anyone can forge for a flow's port, is
// not relayed to the guest (TestUDPUnsolicitedPeer); one about a peer it
// sent to is. The errors are sent from a raw socket on loopback.
func TestUDPErrorAboutUnknownPeer(t *testing.T) {
	raw, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		t.Skipf("no raw socket: %v", err)
	}
	defer unix.Close(raw)
	pc := listenUDPLoopback(t)
	te := newUDPTestEngine(t)
	f, hostSide := udpFlowTo(t, te, pc, 5000)
	sport := uint16(hostSide.(*net.UDPAddr).Port)
	peer := netip.MustParseAddrPort(pc.LocalAddr().String())
	unreachable := func(about netip.AddrPort) int {
		quote := make([]byte, header.IPv4MinLen+header.UDPLen)
		header.IPv4(quote).Encode(netip.MustParseAddr("127.0.0.1"), about.Addr(), header.ProtoUDP, 64, header.UDPLen)
		header.UDP(quote[header.IPv4MinLen:]).Encode(sport, about.Port(), 0)
		m := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quote...) // port unreachable
		binary.BigEndian.PutUint16(m[2:], header.Fold(header.Checksum(m, 0)))
		if err := unix.Sendto(raw, m, 0, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		for range 100 { // the error is queued as the loopback delivers it
			if epollReady(te.Engine, kindUDP) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		te.udpSockEvent(f.idx, te.udp.gen(f.idx), unix.EPOLLERR)
		n := 0
		for _, fr := range te.output(t) {
			if header.IPv4(fr[header.EthernetLen:]).Protocol() == header.ProtoICMP {
				n++
			}
		}
		return n
	}
	if n := unreachable(netip.MustParseAddrPort("127.0.0.9:9999")); n != 0 {
		t.Errorf("%d ICMP errors about a peer the guest never sent to", n)
	}
	if n := unreachable(peer); n != 1 {
		t.Errorf("%d ICMP errors about the guest's peer, want 1", n)
	}
}

// TestUDPEvictAtCap: a guest at --max-udp that sends from a new port
// every second gets each new flow refused until its flow idle longest
// has idled udpEvictAfter, and then, one a datagram, the flows that
// have, oldest first; a flow that sent meanwhile keeps its place until
// its own time, to the second, as does the first flow let in. (udpEvictIdle searches only when a flow
// can be idle enough, not at each refused datagram.)
func TestUDPEvictAtCap(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.MaxUDP = false, 4
	sec := 0
	send := func(port uint16) {
		te.now = time.Duration(sec) * time.Second
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(port, 9, []byte("x"))))
		te.inputDone()
		te.output(t)
	}
	open := func(port uint16) bool {
		_, f := te.udp.lookup(netip.AddrPortFrom(testGuest4, port))
		return f != nil
	}
	for p := range uint16(4) {
		send(100 + p) // 100-103 at 0 s
	}
	next := uint16(200)
	for sec = 1; sec <= 60; sec++ {
		if sec == 20 {
			send(100) // 100 idles from 20 s on
		}
		send(next)
		want := map[int]uint16{30: 101, 31: 102, 32: 103, 50: 100, 60: 200}
		if gone, ok := want[sec]; ok != open(next) || ok && open(gone) {
			t.Fatalf("at %d s: the new flow open: %v, want %v (flow %d evicted)", sec, open(next), ok, gone)
		}
		if open(next) {
			next++
		}
		if te.udp.count != 4 {
			t.Fatalf("at %d s: %d flows at a cap of 4", sec, te.udp.count)
		}
	}
}

// TestUDPInboundEvictAtCap: host senders to a -u port that fill
// --max-udp and go quiet give their places as the guest's own idle
// flows do: after udpEvictAfter, the guest's new flow, and a new sender,
// each takes the place of the one idle longest. They held it for
// udpIdle (three minutes), during which the guest could open no UDP
// flow at all: one datagram from each of 4096 ports denied a guest its
// DNS for three minutes.
func TestUDPInboundEvictAtCap(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.MaxUDP = false, 4
	fwd := freeForward(t, UDP, 53)
	if err := te.AddForwards(UDP, fwd, false); err != nil {
		t.Fatal(err)
	}
	lidx := te.fwd.byKey[fwdKey{UDP, fwd[0].Addr, fwd[0].HostPort}]
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(fwd[0].HostPort)}
	dial := func() *net.UDPConn {
		c, err := net.DialUDP("udp", nil, to)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// A new sender's datagram, then one from the first sender, whose
	// arrival in the guest tells that the new one was read.
	var first *net.UDPConn
	hostSends := func(sec int) bool {
		te.now = time.Duration(sec) * time.Second
		c := dial()
		c.Write([]byte("new"))
		if first == nil {
			first = c
		} else {
			first.Write([]byte("mark"))
		}
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			te.listenerEvent(lidx)
			for _, f := range te.output(t) {
				if f[23] != header.ProtoUDP {
					continue
				}
				if p := header.UDP(f[l4Off4:]).Payload(); string(p) == "mark" || first == c && string(p) == "new" {
					from := netip.MustParseAddrPort(c.LocalAddr().String())
					_, f := te.fwd.udpIn.lookup(udpInKey{53, netip.AddrPortFrom(testGW4, from.Port())})
					return f != nil
				}
			}
		}
		t.Fatalf("at %d s: the datagrams were never read", sec)
		return false
	}
	for range 4 {
		if !hostSends(0) {
			t.Fatal("a host sender below the cap was dropped")
		}
	}
	if hostSends(10) {
		t.Fatal("a fifth host sender got past --max-udp 4")
	}
	peer := listenUDPLoopback(t)
	te.now = 40 * time.Second
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5000, uint16(peer.LocalAddr().(*net.UDPAddr).Port), []byte("x"))))
	te.inputDone()
	te.output(t)
	defer te.udp.closeAll(te.Engine)
	if te.udp.count != 1 {
		t.Errorf("at 40 s, host senders idle since 0 s at the cap: the guest's new flow refused")
	}
	if !hostSends(40) {
		t.Errorf("at 40 s, host senders idle since 0 s at the cap: a new sender dropped")
	}
	if n := te.udpFlows(); n != 4 {
		t.Errorf("%d UDP flows at --max-udp 4", n)
	}
}

// TestForwardSlotsReused: forwards added and removed without end (pasta's
// -t/-u auto follows ports a container binds and closes, each second)
// take no more room than those bound at once; each added took a slot for
// good. A host sender's flow outlives its forward, and the guest's
// answer then goes nowhere, not out of the forward that took its slot.
func TestForwardSlotsReused(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	a, b := freeForward(t, UDP, 53), freeForward(t, UDP, 54)
	// A port free for TCP: one free for UDP may be another TCP socket's
	// (a client's, of another package's tests running meanwhile).
	tcp := freeForward(t, TCP, 53)
	for range 1000 {
		if err := te.AddForwards(TCP, tcp, false); err != nil {
			t.Fatal(err)
		}
		if err := te.RemoveForwards(TCP, tcp); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(te.fwd.listeners); n > 1 {
		t.Errorf("%d listener slots after 1000 forwards added and removed one at a time", n)
	}
	if err := te.AddForwards(UDP, a, false); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(a[0].HostPort)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("q"))
	from := hostSenderSeen(t, te, fwdKey{UDP, a[0].Addr, a[0].HostPort}, c)
	if err := te.RemoveForwards(UDP, a); err != nil {
		t.Fatal(err)
	}
	if err := te.AddForwards(UDP, b, false); err != nil {
		t.Fatal(err)
	}
	te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(53, from.Port(), []byte("answer"))))
	te.inputDone()
	te.output(t)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, src, err := c.ReadFromUDP(make([]byte, 64)); err == nil {
		t.Errorf("the answer through a removed forward: %d bytes from %v (the forward now in its slot: port %d)", n, src, b[0].HostPort)
	}
}

// hostSenderSeen has the engine read the -u forward k, to guest port
// 53, until the datagram c sent reached the guest, and returns c's
// address.
func hostSenderSeen(t *testing.T, te *testEngine, k fwdKey, c *net.UDPConn) netip.AddrPort {
	t.Helper()
	from := netip.MustParseAddrPort(c.LocalAddr().String())
	key := udpInKey{53, netip.AddrPortFrom(testGW4, from.Port())}
	for deadline := time.Now().Add(5 * time.Second); ; {
		te.listenerEvent(te.fwd.byKey[k])
		te.output(t)
		if _, f := te.fwd.udpIn.lookup(key); f != nil {
			return from
		}
		if time.Now().After(deadline) {
			t.Fatal("the host sender's datagram never reached the guest")
		}
	}
}

// TestUDPInboundReplySource: the guest's answer to a host sender of a -u
// port bound to no address leaves from the address the sender sent to,
// not from the one the host's routes would pick, which a sender's
// connected socket (any resolver's, or NTP client's) drops: a host with
// more than one address on a link (IPv6's temporary and stable ones),
// or a loopback client of 127.0.0.2, heard nothing back. So does the
// answer on pasta's loopback path (a Splicer's socket, here to an echo
// server).
func TestUDPInboundReplySource(t *testing.T) {
	for _, splice := range []bool{false, true} {
		te := newTestEngine(t)
		te.cfg.NoUDP = false
		if splice {
			pc := listenUDPLoopback(t)
			go servePacketsEcho(pc)
			te.cfg.Splicer = &dialSplicer{to: netip.MustParseAddrPort(pc.LocalAddr().String())}
		}
		fwd := freeForward(t, UDP, 53)
		fwd[0].Addr = netip.Addr{}
		if err := te.AddForwards(UDP, fwd, false); err != nil {
			t.Skip(err) // the port, free on 127.0.0.1, is busy on another address
		}
		c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: int(fwd[0].HostPort)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("answer"))
		if splice {
			n := 0
			for deadline := time.Now().Add(5 * time.Second); n == 0 && time.Now().Before(deadline); {
				te.turn(10)
				c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
				n, _ = c.Read(make([]byte, 64))
			}
			if n != len("answer") {
				t.Errorf("the answer to a sender of 127.0.0.2, spliced: %d bytes (%d spliced senders)", n, te.spliceUDP.count)
			}
			continue
		}
		from := hostSenderSeen(t, te, fwdKey{UDP, netip.Addr{}, fwd[0].HostPort}, c)
		te.tapInput(frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(53, from.Port(), []byte("answer"))))
		te.inputDone()
		te.output(t)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 64)); err != nil || n != len("answer") {
			t.Errorf("the answer to a sender of 127.0.0.2: %d bytes, %v", n, err)
		}
	}
}

// TestUDPPastMTUFragmented: a host peer's datagram too large for the
// guest's MTU (a DNS answer of 4000 bytes, with EDNS, at 1500; the
// largest UDP takes at 65520) reaches the guest in IP fragments, each
// within the MTU, that make it up again, over IPv4 and IPv6. It was
// dropped: a resolver asking over UDP never got a large answer, and
// never a truncated one to retry over TCP.
func TestUDPPastMTUFragmented(t *testing.T) {
	for _, c := range []struct {
		mtu  int
		gw   netip.Addr
		size int
	}{
		{1500, testGW4, 4000}, {MinMTU, testGW4, 4000}, {576, testGW4, 4000}, {DefaultMTU, testGW4, 65507},
		{1500, testGW6, 4000}, {1280, testGW6, 4000}, {DefaultMTU, testGW6, 65500},
	} {
		pc, err := net.ListenPacket("udp", netip.AddrPortFrom(natFromGuestLoopback(c.gw), 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		te := newTestEngine(t)
		te.cfg.NoUDP = false
		te.setMTU(c.mtu)
		guest := testGuest4
		if c.gw.Is6() {
			guest = testGuest6
		}
		from := udpSendVia(t, te, pc, guest, c.gw, 5300)
		want := make([]byte, c.size)
		for i := range want {
			want[i] = byte(i * 7)
		}
		if _, err := pc.WriteTo(want, from); err != nil {
			t.Fatal(err)
		}
		var frames [][]byte
		var got []byte
		for deadline := time.Now().Add(5 * time.Second); got == nil && time.Now().Before(deadline); {
			te.turn(10)
			checkedFrames(t, te, func(f []byte) { frames = append(frames, append([]byte(nil), f...)) })
			got = reassembleUDP(t, frames, c.gw, guest)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("MTU %d, %v: %d frames made up %d bytes, want the peer's %d", c.mtu, c.gw, len(frames), len(got), len(want))
		}
		te.udp.closeAll(te.Engine)
	}
}

// natFromGuestLoopback is the host loopback address a guest reaches at
// the gateway gw.
func natFromGuestLoopback(gw netip.Addr) netip.Addr {
	if gw.Is4() {
		return netip.MustParseAddr("127.0.0.1")
	}
	return netip.IPv6Loopback()
}

// reassembleUDP puts the UDP fragments among frames, from src to dst,
// together as a guest's stack would, and returns the datagram's payload
// once it is whole and its checksum right, else nil.
func reassembleUDP(t *testing.T, frames [][]byte, src, dst netip.Addr) []byte {
	t.Helper()
	if d := reassemble(t, frames, src, dst, header.ProtoUDP); d != nil {
		return header.UDP(d).Payload()
	}
	return nil
}
