package slirp

import (
	"net/netip"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// dhcpv6Confirm1 is a CONFIRM whose IA_NA holds n addresses, the last
// one off our link, the others on it.
func dhcpv6Confirm1(n int) []byte {
	ia := make([]byte, iaNALen)
	for i := range n {
		a := testGuest6
		if i == n-1 {
			a = netip.MustParseAddr("2001:db8:ffff::1")
		}
		val := make([]byte, iaAddrLen)
		copy(val, a.AsSlice())
		ia = append(ia, opt6(opt6IAAddr, val...)...)
	}
	m := dhcpv6Msg1(dhcpv6Confirm)
	return append(m[:len(m)-iaNALen-4], opt6(opt6IANA, ia...)...) // its IA_NA filled
}

// TestDHCPv6ConfirmManyAddresses: a CONFIRM of the largest size a frame
// holds, its IA_NA packed with some 2,300 addresses, costs the engine no
// more allocations than one with a single address. The parser copied
// every address into a slice grown as it went: 150 KB of garbage for each
// 56 KB frame, as fast as the guest sends them. The answer still sees the
// address off our link at the end.
func TestDHCPv6ConfirmManyAddresses(t *testing.T) {
	e := newTestEngine(t)
	ll, group := netip.MustParseAddr("fe80::2"), netip.MustParseAddr("ff02::1:2")
	one := frameIP(ll, group, header.ProtoUDP, udp6(dhcpv6ClientPort, dhcpv6ServerPort, dhcpv6Confirm1(1)))
	many := frameIP(ll, group, header.ProtoUDP, udp6(dhcpv6ClientPort, dhcpv6ServerPort, dhcpv6Confirm1(2300)))
	if len(many) > 0xffff {
		t.Fatalf("a frame of %d bytes", len(many))
	}
	for _, f := range [][]byte{one, many} {
		e.tapInput(f)
		out := e.output(t)
		if len(out) != 1 || statusOf(out[0][l4Off6+header.UDPLen:]) != status6NotOnLink {
			t.Fatalf("answer to CONFIRM of %d bytes: %d frames, want one saying not on link", len(f), len(out))
		}
	}
	base := testing.AllocsPerRun(20, func() { e.tapInput(one); e.link.Cancel() })
	if n := testing.AllocsPerRun(20, func() { e.tapInput(many); e.link.Cancel() }); n > base {
		t.Errorf("a CONFIRM with 2300 addresses: %v allocations, one with one address %v", n, base)
	}
}

// TestDHCPv6Unicast: a DHCPv6 message sent by unicast, to our link-local
// address or to a server past us, gets no answer, as from passt: RFC
// 8415 has a server that gives no Server Unicast option drop it. Only a
// message to a group is ours to answer.
func TestDHCPv6Unicast(t *testing.T) {
	e := newTestEngine(t)
	ll := netip.MustParseAddr("fe80::2")
	solicit := udp6(dhcpv6ClientPort, dhcpv6ServerPort, dhcpv6Solicit1())
	for _, dst := range []netip.Addr{testLL6, netip.MustParseAddr("2001:db8:1::547")} {
		e.tapInput(frameIP(ll, dst, header.ProtoUDP, solicit))
		if out := e.output(t); len(out) != 0 {
			t.Errorf("SOLICIT to %v answered: % x", dst, out[0])
		}
	}
	e.tapInput(frameIP(ll, netip.MustParseAddr("ff02::1:2"), header.ProtoUDP, solicit))
	if out := e.output(t); len(out) != 1 {
		t.Errorf("SOLICIT to the servers' group: %d answers, want 1", len(out))
	}
}

// TestDHCPv6ConfirmWithServerID: a CONFIRM that names a server, ours or
// another, gets no answer. RFC 8415 (16.5) has servers drop it, as passt
// does; it was answered, and one that named another server got ours.
func TestDHCPv6ConfirmWithServerID(t *testing.T) {
	e := newTestEngine(t)
	for _, id := range [][]byte{e.duid(), {0, 3, 0, 1, 1, 2, 3, 4, 5, 6}} {
		if r, _ := exchange6(t, e, dhcpv6Msg1(dhcpv6Confirm, opt6(opt6ServerID, id...))); r != nil {
			t.Errorf("CONFIRM for server % x answered: type %d", id, r.typ)
		}
	}
}

// TestIPv6FromMappedSource: an IPv6 packet from an IPv4-mapped address,
// which is never a source on the wire (RFC 6890), is dropped as
// malformed. It was taken: its source became the guest's address, where
// inbound connections went, and a flow from or to it made the migration
// stream one the destination refuses (IPv4 and IPv6 mixed in a flow).
func TestIPv6FromMappedSource(t *testing.T) {
	e := newTestEngine(t)
	mapped := netip.MustParseAddr("::ffff:192.0.2.2")
	e.tapInput(frameIP(testGuest6, testGW6, header.ProtoICMPv6, ndpSolicit(testGW6)))
	if out := e.output(t); len(out) != 1 || e.addrSeen6 != testGuest6 {
		t.Fatalf("NS from %v: %d answers, seen %v", testGuest6, len(out), e.addrSeen6)
	}
	malformed := e.Stats.Malformed
	e.tapInput(frameIP(mapped, testGW6, header.ProtoICMPv6, ndpSolicit(testGW6)))
	if out := e.output(t); len(out) != 0 {
		t.Errorf("NS from %v answered", mapped)
	}
	if e.addrSeen6 != testGuest6 {
		t.Errorf("the guest's address is now %v, want %v", e.addrSeen6, testGuest6)
	}
	if e.Stats.Malformed != malformed+1 {
		t.Errorf("%d frames counted malformed, want 1", e.Stats.Malformed-malformed)
	}
}
