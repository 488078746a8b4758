package slirp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// dhcpDiscover4 is a minimal DISCOVER from MAC 02:00:00:00:00:01.
func dhcpDiscover4() []byte {
	b := make([]byte, bootpLen+4, 300)
	b[0], b[1], b[2] = 1, 1, 6
	copy(b[4:], []byte{1, 2, 3, 4})
	copy(b[28:], []byte{2, 0, 0, 0, 0, 1})
	copy(b[bootpLen:], dhcpMagic[:])
	return append(b, optMsgType, 1, dhcpDiscover, optEnd)
}

func TestDHCPReplyCarriesConfig(t *testing.T) {
	e := newTestEngine(t)
	m, err := parseDHCP(dhcpDiscover4())
	if err != nil {
		t.Fatal(err)
	}
	out := e.buildDHCP(&m, dhcpOffer)
	opts := map[byte][]byte{}
	for o := out[bootpLen+4:]; len(o) > 1 && o[0] != optEnd; o = o[2+int(o[1]):] {
		opts[o[0]] = o[2 : 2+int(o[1])]
	}
	checks := map[byte][]byte{
		optMsgType: {dhcpOffer}, optMask: {255, 255, 255, 0}, optRouter: {192, 0, 2, 1},
		optDNS: {192, 0, 2, 1}, optMTU: {0xff, 0xf0}, optHostname: []byte("h"),
	}
	for code, want := range checks {
		if string(opts[code]) != string(want) {
			t.Errorf("option %d = %v, want %v", code, opts[code], want)
		}
	}
	if string(out[16:20]) != string([]byte{192, 0, 2, 2}) {
		t.Errorf("yiaddr = %v", out[16:20])
	}
}

// dhcpOptions maps a reply's options by code.
func dhcpOptions(out []byte) map[byte][]byte {
	opts := map[byte][]byte{}
	for o := out[bootpLen+4:]; len(o) > 1 && o[0] != optEnd; o = o[2+int(o[1]):] {
		opts[o[0]] = o[2 : 2+int(o[1])]
	}
	return opts
}

// TestDHCPRouterOffSubnet: a gateway outside the guest's subnet (-g with
// -a/-n, or a /32 address) comes with classless static routes to it and
// through it, as passt sends them; one on the subnet does not.
func TestDHCPRouterOffSubnet(t *testing.T) {
	e := newTestEngine(t)
	m, err := parseDHCP(dhcpDiscover4())
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := dhcpOptions(e.buildDHCP(&m, dhcpOffer))[optRoutes]; ok {
		t.Errorf("routes %v for a gateway on the subnet", r)
	}
	e.cfg.Gateway4 = netip.MustParseAddr("198.51.100.1")
	want := []byte{32, 198, 51, 100, 1, 0, 0, 0, 0, 0, 198, 51, 100, 1}
	if r := dhcpOptions(e.buildDHCP(&m, dhcpAck))[optRoutes]; string(r) != string(want) {
		t.Errorf("routes %v, want %v", r, want)
	}
}

// TestDHCPReplyDestination: replies go where RFC 2131 4.1 says, as
// passt sends them: to the address given unless the client asked for a
// broadcast, to the client's address when it has one, and NAKs to all.
func TestDHCPReplyDestination(t *testing.T) {
	e := newTestEngine(t)
	bcast := netip.MustParseAddr("255.255.255.255")
	renew := func(ciaddr netip.Addr) []byte {
		b := dhcpDiscover4()
		b[len(b)-2] = dhcpRequest
		c := ciaddr.As4()
		copy(b[12:16], c[:])
		return b
	}
	for _, c := range []struct {
		name string
		msg  []byte
		bc   bool
		want netip.Addr
	}{
		{"discover", dhcpDiscover4(), false, testGuest4},
		{"discover, broadcast flag", dhcpDiscover4(), true, bcast},
		{"renew", renew(testGuest4), false, testGuest4},
		{"renew, broadcast flag", renew(testGuest4), true, testGuest4},
		{"nak", renew(netip.MustParseAddr("192.0.2.99")), false, bcast},
	} {
		if c.bc {
			c.msg[10] = 0x80
		}
		e.dhcpInput(c.msg)
		out := e.output(t)
		if len(out) != 1 {
			t.Fatalf("%s: %d replies", c.name, len(out))
		}
		if dst := header.IPv4(out[0][header.EthernetLen:]).Dst(); dst != c.want {
			t.Errorf("%s: reply to %v, want %v", c.name, dst, c.want)
		}
	}
}

// TestDHCPLeaseSeen4: a guest that sent from an address of its own and
// then takes the lease (an ACK to a REQUEST, a rapid DISCOVER or BOOTP)
// is reached at the lease's address, as after DHCPv6's; an INFORM, from
// a client that keeps its own, and a NAK leave it be.
func TestDHCPLeaseSeen4(t *testing.T) {
	own := netip.MustParseAddr("192.0.2.77")
	msg := func(typ uint8, opts ...byte) []byte {
		b := dhcpDiscover4()
		b[len(b)-2] = typ
		return append(b[:len(b)-1], append(opts, optEnd)...)
	}
	for _, c := range []struct {
		name string
		msg  []byte
		take bool
	}{
		{"request", msg(dhcpRequest, optRequestedIP, 4, 192, 0, 2, 2), true},
		{"rapid discover", msg(dhcpDiscover, optRapidCommit, 0), true},
		{"bootp", msg(0), true}, // option 53 of 0: none
		{"discover", msg(dhcpDiscover), false},
		{"inform", msg(dhcpInform), false},
		{"nak", msg(dhcpRequest, optRequestedIP, 4, 192, 0, 2, 99), false},
	} {
		e := newTestEngine(t)
		u := make([]byte, header.UDPLen+1)
		header.UDP(u).Encode(40000, 9, 1)
		e.tapInput(frameIP(own, netip.MustParseAddr("198.51.100.1"), header.ProtoUDP, u))
		e.dhcpInput(c.msg)
		e.output(t)
		want := own
		if c.take {
			want = testGuest4
		}
		if _, to := e.inboundRoute(netip.MustParseAddrPort("198.51.100.7:4000"), 22); to.Addr() != want {
			t.Errorf("%s: inbound to %v, want %v", c.name, to.Addr(), want)
		}
	}
}

func TestDHCPParsesRequestedIP(t *testing.T) {
	b := dhcpDiscover4()
	b[len(b)-2] = dhcpRequest
	b = append(b[:len(b)-1], optRequestedIP, 4, 10, 9, 8, 7, optEnd)
	m, err := parseDHCP(b)
	if err != nil || m.requestedIP.String() != "10.9.8.7" {
		t.Fatalf("parse: %+v %v", m, err)
	}
}

// TestLeaveOut: passt's --no-dhcp-dns, --no-dhcp-search and -m 0 leave
// the resolvers, the search list and the MTU out of DHCP, DHCPv6 and the
// RA, and nothing else.
func TestLeaveOut(t *testing.T) {
	e := newTestEngine(t)
	e.cfg.NoDHCPDNS, e.cfg.NoDHCPSearch, e.cfg.NoMTUOption = true, true, true
	m, err := parseDHCP(dhcpDiscover4())
	if err != nil {
		t.Fatal(err)
	}
	out := e.buildDHCP(&m, dhcpOffer)
	opts := map[byte]bool{}
	for o := out[bootpLen+4:]; len(o) > 1 && o[0] != optEnd; o = o[2+int(o[1]):] {
		opts[o[0]] = true
	}
	for _, gone := range []byte{optDNS, optSearch, optDomainName, optMTU} {
		if opts[gone] {
			t.Errorf("DHCP carries option %d", gone)
		}
	}
	if !opts[optRouter] || !opts[optHostname] {
		t.Errorf("DHCP lost its other options: %v", opts)
	}

	v6 := e.buildDHCPv6(&dhcpv6Msg{typ: dhcpv6Solicit}, dhcpv6Advertise, e.duid(), -1, true)
	for o := v6[dhcpv6HdrLen:]; len(o) >= 4; o = o[4+int(binary.BigEndian.Uint16(o[2:])):] {
		if c := binary.BigEndian.Uint16(o); c == opt6DNS || c == opt6DomainList {
			t.Errorf("DHCPv6 carries option %d", c)
		}
	}

	e.sendRA(netip.MustParseAddr("fe80::2"))
	ras := icmp6Out(e.output(t))
	if len(ras) != 1 {
		t.Fatalf("%d RAs", len(ras))
	}
	o := ras[0][header.NDPRALen:]
	if !header.NDPOptionsValid(o) {
		t.Fatal("RA options do not parse")
	}
	for ; len(o) > 0; o = o[int(o[1])*8:] {
		if o[0] == header.NDPOptMTU || o[0] == header.NDPOptRDNSS || o[0] == header.NDPOptDNSSL {
			t.Errorf("RA carries option %d", o[0])
		}
	}
	if e.mtu() != DefaultMTU {
		t.Errorf("link MTU %d, want %d", e.mtu(), DefaultMTU)
	}
}

// TestFQDNFlags: the client FQDN option, in DHCP and DHCPv6, says we
// update no DNS records (S clear, as passt says), and that we overrode a
// client that asked us to (O); the DHCP one gives the name in wire
// format (E).
func TestFQDNFlags(t *testing.T) {
	e := newTestEngine(t)
	for _, askUpdate := range []bool{false, true} {
		b := dhcpDiscover4()
		if askUpdate {
			b = append(b[:len(b)-1], optFQDN, 3, fqdnServerUpdate, 0, 0, optEnd)
		}
		m, err := parseDHCP(b)
		if err != nil {
			t.Fatal(err)
		}
		want := uint8(0x04)
		if askUpdate {
			want |= fqdnOverride
		}
		if f := dhcpOptions(e.buildDHCP(&m, dhcpOffer))[optFQDN]; len(f) < 3 || f[0] != want {
			t.Errorf("DHCP, client asks for updates %v: option % x, want flags %#x", askUpdate, f, want)
		}

		var extra [][]byte
		if askUpdate {
			extra = append(extra, opt6(opt6FQDN, fqdnServerUpdate, 0))
		}
		_, raw := exchange6(t, e, dhcpv6Msg1(dhcpv6Solicit, extra...))
		want &^= 0x04
		var got []byte
		dhcpv6Options(raw[dhcpv6HdrLen:], func(code uint16, val []byte) error {
			if code == opt6FQDN {
				got = val
			}
			return nil
		})
		if len(got) < 1 || got[0] != want {
			t.Errorf("DHCPv6, client asks for updates %v: option % x, want flags %#x", askUpdate, got, want)
		}
	}
}

// TestDHCPRapidCommitAndBOOTP: a DISCOVER asking for rapid commit (RFC
// 4039) gets its lease at once, an ACK that says so, and a BOOTP request
// (no option 53) gets its address, as passt answers both.
func TestDHCPRapidCommitAndBOOTP(t *testing.T) {
	e := newTestEngine(t)
	rapid := append(dhcpDiscover4()[:bootpLen+7], optRapidCommit, 0, optEnd)
	bootp := dhcpDiscover4()[:bootpLen+4]
	for name, c := range map[string]struct {
		msg   []byte
		typ   byte
		rapid bool
	}{"discover": {dhcpDiscover4(), dhcpOffer, false}, "rapid commit": {rapid, dhcpAck, true}, "bootp": {bootp, dhcpAck, false}} {
		e.dhcpInput(c.msg)
		out := e.output(t)
		if len(out) != 1 {
			t.Fatalf("%s: %d replies", name, len(out))
		}
		msg := out[0][header.EthernetLen+header.IPv4MinLen+header.UDPLen:]
		opts := dhcpOptions(msg)
		_, rc := opts[optRapidCommit]
		if string(opts[optMsgType]) != string([]byte{c.typ}) || rc != c.rapid || string(msg[16:20]) != string([]byte{192, 0, 2, 2}) {
			t.Errorf("%s: type %v, rapid commit %v, yiaddr %v", name, opts[optMsgType], rc, msg[16:20])
		}
	}
}

// TestDHCPLongSearchList: a search list longer than the room a DHCP
// reply has left goes in whole names, as many as fit, and the host name
// and FQDN still go. It was cut wherever the room ended, mid-name, which
// a client drops whole (udhcpc), and what came after it went missing.
func TestDHCPLongSearchList(t *testing.T) {
	e := newTestEngine(t)
	e.cfg.Hostname, e.cfg.FQDN = "guest", "guest.example"
	e.cfg.Search = nil
	for i := range 8 {
		e.cfg.Search = append(e.cfg.Search, fmt.Sprintf("d%d.%s.example", i, strings.Repeat("x", 40)))
	}
	m, err := parseDHCP(dhcpDiscover4())
	if err != nil {
		t.Fatal(err)
	}
	out := e.buildDHCP(&m, dhcpOffer)
	var list []byte
	got := map[byte]bool{}
	for o := out[bootpLen+4:]; len(o) > 1 && o[0] != optEnd; o = o[2+int(o[1]):] {
		got[o[0]] = true
		if o[0] == optSearch {
			list = append(list, o[2:2+int(o[1])]...)
		}
	}
	var names []string
	for p := 0; p < len(list); {
		var labels []string
		for list[p] != 0 {
			l := int(list[p])
			if l > 63 || p+1+l >= len(list) {
				t.Fatalf("the search list is cut: % x", list)
			}
			labels = append(labels, string(list[p+1:p+1+l]))
			p += 1 + l
		}
		names = append(names, strings.Join(labels, "."))
		p++
	}
	if len(names) == 0 || !slices.Equal(names, e.cfg.Search[:len(names)]) {
		t.Errorf("search list %q, want the first of %q", names, e.cfg.Search)
	}
	// RFC 2131 2: every client takes a 576-byte datagram.
	if size := len(out) + header.IPv4MinLen + header.UDPLen; !got[optHostname] || !got[optFQDN] || size > 576 {
		t.Errorf("host name %v, FQDN %v, a %d-byte datagram; want both within 576", got[optHostname], got[optFQDN], size)
	}
}
