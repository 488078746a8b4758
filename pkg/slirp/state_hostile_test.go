package slirp

import (
	stdlog "log"
	"net/netip"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// TestFlowOpenFailureLogBounded: when a guest flow's host socket cannot
// be bound (here, to an --outbound-if4 interface that does not exist),
// each datagram or echo request that would open it is dropped. The log
// says so once, not once per frame: a guest sending fast would otherwise
// write a line per frame at the default verbosity. passt logs this at
// debug only. The sockets are never bound, so nothing is sent.
func TestFlowOpenFailureLogBounded(t *testing.T) {
	pingNetns(t) // for ping sockets; and the interface is surely absent
	te := newTestEngine(t)
	te.cfg.NoUDP, te.cfg.NoICMP = false, false
	te.cfg.OutboundIf4 = "gopasst-none0"
	var log strings.Builder
	te.cfg.Log = stdlog.New(&log, "", 0)
	dst := netip.MustParseAddr("192.0.2.77")
	for i := range 100 {
		te.tapInput(frameIP(testGuest4, dst, header.ProtoUDP, udp6(uint16(5000+i), 9, []byte("x"))))
		te.tapInput(frameIP(testGuest4, dst, header.ProtoICMP, echoRequest(header.ICMPv4Echo, uint16(i), 1)))
	}
	te.inputDone()
	te.output(t)
	if te.udp.count != 0 || te.icmp.count != 0 {
		t.Fatalf("%d UDP and %d ICMP flows opened, want none", te.udp.count, te.icmp.count)
	}
	if n := strings.Count(log.String(), "\n"); n > 2 {
		t.Errorf("%d log lines for 200 frames, want at most one per protocol:\n%.400s", n, log.String())
	}
}

// TestGuestStateFollowsLastFrame: a guest that changes its source MAC and
// its global IPv6 source address with every frame is answered at the
// last of each, as passt answers it: an NA goes to the last unicast MAC,
// and a connection from the host side to the last global address, in
// the guest's prefix or not. A multicast source MAC, and a link-local,
// unspecified or multicast source address, change neither.
func TestGuestStateFollowsLastFrame(t *testing.T) {
	te := newTestEngine(t)
	solicit := func(mac [6]byte, src netip.Addr) {
		f := frameIP(src, testLL6, header.ProtoICMPv6, ndpSolicit(testLL6))
		copy(f[6:12], mac[:])
		te.tapInput(f)
	}
	var last [6]byte
	var lastAddr netip.Addr
	for i := range 200 {
		last = [6]byte{0x02, 0, 0, 0, byte(i >> 8), byte(i)}
		lastAddr = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, byte(i), 15: byte(i)})
		solicit(last, lastAddr)
		te.output(t)
	}
	for _, src := range []netip.Addr{
		netip.MustParseAddr("fe80::99"), netip.IPv6Unspecified(), netip.MustParseAddr("ff02::1"),
	} {
		solicit([6]byte{0x01, 0, 0x5e, 0, 0, 1}, src)
	}
	te.output(t)
	_, guest := te.inboundRoute(netip.MustParseAddrPort("[2001:db8:ff::9]:1234"), 22)
	if guest.Addr() != lastAddr {
		t.Errorf("an inbound connection goes to %v, want the last global source %v", guest.Addr(), lastAddr)
	}
	solicit(last, testGuest6)
	out := te.output(t)
	if len(out) != 1 || [6]byte(out[0][0:6]) != last {
		t.Fatalf("%d answers to a solicitation, want one, to %x", len(out), last)
	}
}

// TestEpollFailureLogBounded: when the kernel refuses to watch a new
// flow's socket (TestEpollFailure), every frame that would open one says
// so in the log at most once per protocol, not once per frame.
func TestEpollFailureLogBounded(t *testing.T) {
	pingNetns(t)
	te := newTestEngine(t)
	te.cfg.NoTCP, te.cfg.NoUDP, te.cfg.NoICMP = false, false, false
	var log strings.Builder
	te.cfg.Log = stdlog.New(&log, "", 0)
	ep := te.epfd
	te.epfd = notPollable(t)
	defer func() { te.epfd = ep }()
	for i := range 50 {
		syn := make([]byte, header.TCPMinLen+header.TCPSynOptionLen)
		header.TCP(syn).Encode(header.TCPFields{SrcPort: uint16(40000 + i), DstPort: 80, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(syn)})
		header.EncodeSynOptions(syn[header.TCPMinLen:], 1440, 7)
		te.tapInput(frameIP(testGuest6, testGW6, header.ProtoTCP, syn))
		te.tapInput(frameIP(testGuest6, testGW6, header.ProtoUDP, udp6(uint16(5000+i), 9, []byte("x"))))
		te.tapInput(frameIP(testGuest6, testGW6, header.ProtoICMPv6, echoRequest(header.ICMPv6Echo, uint16(i), 1)))
		te.inputDone()
		te.output(t)
	}
	if n := te.tcp.count + te.udp.count + te.icmp.count; n != 0 {
		t.Errorf("%d flows kept without epoll", n)
	}
	if n := strings.Count(log.String(), "\n"); n > 3 {
		t.Errorf("%d log lines for 150 frames, want at most one per protocol:\n%.400s", n, log.String())
	}
}
