package slirp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// fragFrames cuts the whole frame f (frameIP's) into IP fragments of
// identification id carrying size bytes each (the last one less), as a
// guest's stack sends a datagram past its MTU.
func fragFrames(f []byte, size int, id uint32) [][]byte {
	eth := header.Ethernet(f)
	var hdr, data []byte // what each fragment repeats, and what is cut
	v4 := eth.Type() == header.EtherTypeIPv4
	if v4 {
		hdr, data = f[:header.EthernetLen+header.IPv4MinLen], header.IPv4(eth.Payload()).Payload()
	} else {
		hdr, data = f[:header.EthernetLen+header.IPv6Len], header.IPv6(eth.Payload()).Payload()
	}
	var out [][]byte
	for off := 0; off < len(data); off += size {
		chunk := data[off:min(off+size, len(data))]
		more := off+len(chunk) < len(data)
		b := slices.Clone(hdr)
		ip := b[header.EthernetLen:]
		if v4 {
			b = append(b, chunk...)
			ip = b[header.EthernetLen:]
			header.IPv4(ip).SetTotalLen(header.IPv4MinLen + len(chunk))
			header.IPv4(ip).SetFragment(uint16(id), off, more)
		} else {
			proto := ip[6]
			ip[6] = header.IPv6Fragment
			header.IPv6(ip).SetPayloadLen(header.IPv6FragmentLen + len(chunk))
			fh := make([]byte, header.IPv6FragmentLen)
			header.EncodeFragment(fh, proto, off, more, id)
			b = append(append(b, fh...), chunk...)
		}
		out = append(out, b)
	}
	return out
}

// fragSize is the data a fragment of a's family carries at MTU 1500.
func fragSize(a netip.Addr) int {
	if a.Is4() {
		return 1500 - header.IPv4MinLen
	}
	return (1500 - header.IPv6Len - header.IPv6FragmentLen) &^ 7
}

// fragPeer is a loopback UDP peer that the guest reaches through gw.
func fragPeer(t testing.TB, gw netip.Addr) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", netip.AddrPortFrom(natFromGuestLoopback(gw), 0).String())
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// guestOf is the test guest's address of gw's family.
func guestOf(gw netip.Addr) netip.Addr {
	if gw.Is4() {
		return testGuest4
	}
	return testGuest6
}

// fragDatagram is a guest frame to pc through gw, from sport, of n
// bytes of payload that begin with tag.
func fragDatagram(pc net.PacketConn, gw netip.Addr, sport uint16, n int, tag byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) ^ tag
	}
	p[0] = tag
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	return frameIP(guestOf(gw), gw, header.ProtoUDP, udp6(sport, port, p))
}

// recvUDP reads the next datagram pc gets.
func recvUDP(t *testing.T, pc net.PacketConn) []byte {
	t.Helper()
	buf := make([]byte, 1<<16)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("%v: %v", pc.LocalAddr(), err)
	}
	return buf[:n]
}

// udpPayload is the payload of the UDP datagram in frame f.
func udpPayload(f []byte) []byte {
	eth := header.Ethernet(f)
	if eth.Type() == header.EtherTypeIPv4 {
		return header.UDP(header.IPv4(eth.Payload()).Payload()).Payload()
	}
	return header.UDP(header.IPv6(eth.Payload()).Payload()).Payload()
}

// TestGuestFragmentsReassembled: a guest's UDP datagrams past its MTU
// (8,000 and 65,000 bytes at 1500), in IP fragments sent in order,
// reversed, each twice, or two datagrams' fragments interleaved, reach
// the host peer whole, over IPv4 and IPv6; an IPv6 atomic fragment is
// taken as the packet it is. They were dropped, as passt drops them.
func TestGuestFragmentsReassembled(t *testing.T) {
	for _, gw := range []netip.Addr{testGW4, testGW6} {
		pc := fragPeer(t, gw)
		te := newTestEngine(t)
		te.cfg.NoUDP = false
		id := uint32(0) // each datagram's own, as a stack gives them
		for _, n := range []int{8000, 65000} {
			a, b := fragDatagram(pc, gw, 5000, n, 'a'), fragDatagram(pc, gw, 5000, n, 'b')
			frags := func(f []byte) [][]byte { id++; return fragFrames(f, fragSize(gw), id) }
			var interleaved, twice [][]byte
			fa, fb := frags(a), frags(b)
			for i := range fa {
				interleaved = append(interleaved, fa[i], fb[i])
			}
			for _, f := range frags(a) {
				twice = append(twice, f, f)
			}
			for _, c := range []struct {
				name   string
				frames [][]byte
				want   [][]byte
			}{
				{"in order", frags(a), [][]byte{a}},
				{"reversed", reversed(frags(a)), [][]byte{a}},
				{"each twice", twice, [][]byte{a}},
				{"interleaved", interleaved, [][]byte{a, b}},
			} {
				for _, f := range c.frames {
					te.tapInput(f)
				}
				te.inputDone()
				for _, w := range c.want {
					if got := recvUDP(t, pc); !bytes.Equal(got, udpPayload(w)) {
						t.Errorf("%v, %d bytes %s: got %d bytes starting %q, want %q's", gw, n, c.name, len(got), got[:1], udpPayload(w)[:1])
					}
				}
			}
		}
		if gw.Is6() {
			// offset 0, M clear, behind a hop-by-hop header
			whole := fragDatagram(pc, gw, 5000, 100, 'c')
			at := fragFrames(whole, 1<<16, 3)[0]
			te.tapInput(at)
			te.inputDone()
			if got := recvUDP(t, pc); !bytes.Equal(got, udpPayload(whole)) {
				t.Errorf("atomic fragment: got %q", got)
			}
		}
		// A duplicate past the end starts a reassembly that expires.
		if te.frag.count != 2 || te.Stats.Malformed != 0 || te.Stats.Dropped != 0 {
			t.Errorf("%v: %d reassemblies left, %d malformed, %d dropped", gw, te.frag.count, te.Stats.Malformed, te.Stats.Dropped)
		}
		te.udp.closeAll(te.Engine)
	}
}

func reversed(fs [][]byte) [][]byte {
	r := slices.Clone(fs)
	slices.Reverse(r)
	return r
}

// marker sends a whole datagram after frames and checks that it is the
// first the peer gets: nothing of frames went through. Loopback keeps
// the order of one socket's datagrams, so no wait tells it.
func marker(t *testing.T, te *testEngine, pc net.PacketConn, gw netip.Addr, what string) {
	t.Helper()
	te.tapInput(fragDatagram(pc, gw, 5000, 10, 'm'))
	te.inputDone()
	if got := recvUDP(t, pc); got[0] != 'm' || len(got) != 10 {
		t.Errorf("%v, %s: the peer got %d bytes starting %q", gw, what, len(got), got[:1])
	}
}

// TestGuestFragmentsHostile: fragments that overlap others (RFC 5722:
// with other bytes, or only in part), a fragment not the last whose size
// is not a multiple of 8, one that runs past 65,535 bytes, two last ones
// that disagree on the length, one past the last, a change of protocol,
// and a first fragment without the UDP header drop the datagram, counted
// malformed; TCP's fragments are not reassembled at all, counted
// unhandled. Nothing reaches the peer and no reassembly is left.
func TestGuestFragmentsHostile(t *testing.T) {
	for _, gw := range []netip.Addr{testGW4, testGW6} {
		pc := fragPeer(t, gw)
		te := newTestEngine(t)
		te.cfg.NoUDP, te.cfg.NoTCP = false, false
		size := fragSize(gw)
		frags := func(n int) [][]byte { return fragFrames(fragDatagram(pc, gw, 5000, n, 'x'), size, 9) }
		// setOff moves fragment f to offset off, with more fragments
		// after it or not.
		setOff := func(f []byte, off int, more bool) []byte {
			f = slices.Clone(f)
			if gw.Is4() {
				header.IPv4(f[header.EthernetLen:]).SetFragment(9, off, more)
			} else {
				fh := f[header.EthernetLen+header.IPv6Len:]
				header.EncodeFragment(fh, fh[0], off, more, 9)
			}
			return f
		}
		// grow adds n bytes to fragment f's data.
		grow := func(f []byte, n int) []byte {
			f = append(slices.Clone(f), make([]byte, n)...)
			ip := f[header.EthernetLen:]
			if gw.Is4() {
				header.IPv4(ip).SetTotalLen(len(ip))
			} else {
				header.IPv6(ip).SetPayloadLen(len(ip) - header.IPv6Len)
			}
			return f
		}
		three := frags(3*size - header.UDPLen)
		changed := slices.Clone(three[1])
		if gw.Is4() {
			changed[header.EthernetLen+9] = header.ProtoICMP
		} else {
			changed[header.EthernetLen+header.IPv6Len] = header.ProtoICMPv6
		}
		other := slices.Clone(three[1])
		other[len(other)-1] ^= 0xff
		// half on the first fragment, with the same bytes
		w := fragDatagram(pc, gw, 5000, 3*size-header.UDPLen, 'x')
		h := size / 2 &^ 7
		span := setOff(three[1], h, true)
		copy(span[len(span)-size:], w[len(w)-3*size+h:])
		cases := []struct {
			name   string
			frames [][]byte
		}{
			{"overlap, other bytes", [][]byte{three[0], three[1], other, three[2]}},
			{"overlap in part", [][]byte{three[0], span, three[1], three[2]}},
			{"not a multiple of 8", [][]byte{three[0], grow(three[1], 1), three[2]}},
			{"past 65,535", [][]byte{three[0], setOff(three[2], 0xffff&^7, false)}},
			{"two lengths", [][]byte{three[2], setOff(three[2], 3*size, false), three[0], three[1]}},
			{"past the last", [][]byte{three[2], three[0], setOff(three[1], 3*size, true)}},
			{"protocol changed", [][]byte{three[0], changed, three[2]}},
		}
		if gw.Is6() {
			// The first fragment carries a destination options header
			// and nothing of UDP's.
			first := slices.Clone(three[0][:header.EthernetLen+header.IPv6Len+header.IPv6FragmentLen])
			first = append(first, header.ProtoUDP, 0, 1, 4, 0, 0, 0, 0)
			header.IPv6(first[header.EthernetLen:]).SetPayloadLen(16)
			first[header.EthernetLen+header.IPv6Len] = 60
			cases = append(cases, struct {
				name   string
				frames [][]byte
			}{"no UDP header in the first", [][]byte{first}})
		}
		for _, c := range cases {
			malformed := te.Stats.Malformed
			for _, f := range c.frames {
				te.tapInput(f)
			}
			te.inputDone()
			if te.Stats.Malformed == malformed || te.frag.count > 1 {
				t.Errorf("%v, %s: %d counted malformed, %d reassemblies left", gw, c.name, te.Stats.Malformed-malformed, te.frag.count)
			}
			te.fragDrop(te.fragFind(guestOf(gw), gw, 9)) // what came after the drop
			marker(t, te, pc, gw, c.name)
		}

		tcp := make([]byte, 2*size)
		header.TCP(tcp).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: 1, Flags: header.TCPAck, Window: 100, HeaderLen: header.TCPMinLen})
		unhandled := te.Stats.Unhandled
		for _, f := range fragFrames(frameIP(guestOf(gw), gw, header.ProtoTCP, tcp), size, 10) {
			te.tapInput(f)
		}
		if te.Stats.Unhandled != unhandled+2 || te.frag.count != 0 || te.tcp.count != 0 {
			t.Errorf("%v: TCP's fragments: %d unhandled, %d reassemblies, %d connections", gw, te.Stats.Unhandled-unhandled, te.frag.count, te.tcp.count)
		}
		te.udp.closeAll(te.Engine)
	}
}

// TestGuestFragmentsExpire: a reassembly that has not completed in 30 s
// is dropped and counted, and fragments that come later start another
// (which cannot complete); with every place taken, a new datagram takes
// the place of the oldest, which is dropped and counted. Nothing is
// kept past its bound.
func TestGuestFragmentsExpire(t *testing.T) {
	pc := fragPeer(t, testGW4)
	te := newUDPTestEngine(t)
	fs := fragFrames(fragDatagram(pc, testGW4, 5000, 3000, 'x'), fragSize(testGW4), 1)
	te.now = time.Second
	te.tapInput(fs[0])
	te.now += fragTimeout
	te.fragExpire()
	if te.frag.count != 1 || te.Stats.Dropped != 0 {
		t.Fatalf("at the timeout: %d reassemblies, %d dropped", te.frag.count, te.Stats.Dropped)
	}
	te.now++
	te.fragExpire()
	if te.frag.count != 0 || te.Stats.Dropped != 1 {
		t.Fatalf("past the timeout: %d reassemblies, %d dropped", te.frag.count, te.Stats.Dropped)
	}
	te.tapInput(fs[1])
	te.tapInput(fs[2])
	te.inputDone()
	marker(t, te, pc, testGW4, "expired")
	te.now += 2 * fragTimeout
	te.fragExpire()

	// One datagram more than there is room for, each started a
	// second after the one before.
	var pending [][][]byte
	for i := range fragSlots + 1 {
		te.now += time.Second
		fs := fragFrames(fragDatagram(pc, testGW4, 5000, 3000, byte(i)), fragSize(testGW4), uint32(100+i))
		te.tapInput(fs[0])
		pending = append(pending, fs[1:])
	}
	if te.frag.count != fragSlots || te.Stats.Dropped != 3 {
		t.Fatalf("%d datagrams started: %d reassemblies, %d dropped in all", fragSlots+1, te.frag.count, te.Stats.Dropped)
	}
	for _, i := range []int{0, fragSlots} { // the oldest, gone, then the newest
		for _, f := range pending[i] {
			te.tapInput(f)
		}
	}
	te.inputDone()
	if got := recvUDP(t, pc); got[0] != fragSlots {
		t.Errorf("the first datagram to arrive is number %d, want the newest, %d", got[0], fragSlots)
	}
	marker(t, te, pc, testGW4, "the oldest, after its place was taken")
}

// TestGuestFragmentsForgottenWithGuest: a client that leaves takes its
// reassemblies with it. The next guest's last fragment of a datagram of
// the same identification, kept, completed the datagram with the bytes
// the guest before it sent.
func TestGuestFragmentsForgottenWithGuest(t *testing.T) {
	pc := fragPeer(t, testGW4)
	te := newUDPTestEngine(t)
	fs := fragFrames(fragDatagram(pc, testGW4, 5000, 3000, 'o'), fragSize(testGW4), 1)
	te.tapInput(fs[0])
	te.tapInput(fs[1])
	te.inputDone()
	te.link = keptOpen{te.link} // its descriptor is the test's to close
	te.closeClient("test")
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	if err := te.attach(keptOpen{qemusock.NewStream(pair[0], qemusock.QEMU)}); err != nil {
		t.Fatal(err)
	}
	if te.frag.count != 0 {
		t.Errorf("%d reassemblies kept for the next guest", te.frag.count)
	}
	te.tapInput(fs[2])
	te.inputDone()
	marker(t, te, pc, testGW4, "the last fragment from the next guest")
}

// TestGuestFragmentsServed: a DHCP or DHCPv6 message in fragments goes
// where the whole one goes: to gopasst's server, answered the same, or,
// DHCPv6's by unicast, nowhere. It went on to l4Input, which dropped
// those to a group or broadcast and sent those to the gateway's address
// to the host's port 67 or 547.
func TestGuestFragmentsServed(t *testing.T) {
	te := newUDPTestEngine(t)
	ll := netip.MustParseAddr("fe80::2")
	for _, c := range []struct {
		name     string
		frame    []byte
		answered bool
	}{
		{"DHCP, broadcast", frameIP(netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), header.ProtoUDP, udp6(68, dhcpServerPort, dhcpDiscover4())), true},
		{"DHCP, to the gateway", frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(68, dhcpServerPort, dhcpDiscover4())), true},
		{"DHCPv6, to the group", frameIP(ll, netip.MustParseAddr("ff02::1:2"), header.ProtoUDP, udp6(546, dhcpv6ServerPort, dhcpv6Solicit1())), true},
		{"DHCPv6, to the gateway", frameIP(ll, testGW6, header.ProtoUDP, udp6(546, dhcpv6ServerPort, dhcpv6Solicit1())), false},
	} {
		te.tapInput(c.frame)
		te.inputDone()
		want := te.output(t)
		if len(want) > 0 != c.answered {
			t.Fatalf("%s: %d frames in answer to the whole message", c.name, len(want))
		}
		for _, f := range fragFrames(c.frame, 64, 1) {
			te.tapInput(f)
		}
		te.inputDone()
		if got := te.output(t); len(got) != len(want) || len(got) > 0 && !bytes.Equal(got[0], want[0]) {
			t.Errorf("%s: %d frames in answer to the fragments, %d to the whole message", c.name, len(got), len(want))
		}
		if te.udp.count != 0 || te.frag.count != 0 {
			t.Errorf("%s: %d UDP flows, %d reassemblies", c.name, te.udp.count, te.frag.count)
		}
	}
}

// TestGuestFragmentsIPv4Largest: IPv4's total length, 16 bits, counts
// its header, so the guest's fragments make up 65,515 bytes after it at
// most: a UDP datagram of 65,507 bytes reaches the peer, and one more
// byte drops the datagram, counted. Reassembled up to 65,535, such a
// datagram, which IPv4 cannot carry, opened a flow and then failed to
// leave it (EMSGSIZE), unseen.
func TestGuestFragmentsIPv4Largest(t *testing.T) {
	pc := fragPeer(t, testGW4)
	te := newUDPTestEngine(t)
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	for _, n := range []int{65507, 65508, 65527} {
		d := udp6(uint16(n), port, bytes.Repeat([]byte{'l'}, n))
		u := header.UDP(d)
		u.SetChecksum(header.Fold(header.Checksum(u, header.PseudoHeaderSum(header.ProtoUDP, testGuest4, testGW4, len(d)))))
		malformed := te.Stats.Malformed
		for off := 0; off < len(d); off += 1480 {
			chunk := d[off:min(off+1480, len(d))]
			f := frameIP(testGuest4, testGW4, 253, chunk) // no checksum put in the chunk
			ip := header.IPv4(f[header.EthernetLen:])
			ip[9] = header.ProtoUDP
			ip.SetFragment(uint16(n), off, off+len(chunk) < len(d))
			te.tapInput(f)
		}
		te.inputDone()
		if n == 65507 {
			if got := recvUDP(t, pc); len(got) != n {
				t.Errorf("%d bytes: the peer got %d", n, len(got))
			}
			continue
		}
		if _, f := te.udp.lookup(netip.AddrPortFrom(testGuest4, uint16(n))); te.Stats.Malformed != malformed+1 || f != nil || te.frag.count != 0 {
			t.Errorf("%d bytes: %d counted malformed, a flow %v, %d reassemblies", n, te.Stats.Malformed-malformed, f != nil, te.frag.count)
		}
		marker(t, te, pc, testGW4, "past IPv4's largest")
	}
}

// TestFragmentsLinkFull: a datagram to the guest in fragments goes
// whole or not at all. With room on the link for 3 of its 10 fragments
// (IPv4 at MTU 68), the first 3 went, which the guest could never make
// into a datagram, and which took the room of what came next.
func TestFragmentsLinkFull(t *testing.T) {
	te := newTestEngine(t)
	te.setMTU(MinMTU)
	const frame = l4Off4 + 48 // a fragment's frame at MTU 68
	k := 0                    // how many such frames the queue takes, never flushed
	for ; te.link.Reserve(frame) != nil; k++ {
	}
	te.link.Cancel()
	for range k - 3 {
		clear(te.reserve(frame))
		te.commit(frame)
	}
	pending, dropped := te.link.Pending(), te.Stats.Dropped
	te.sendFragments(testMAC, testGW4, testGuest4, header.ProtoUDP, make([]byte, 10*48))
	if got := te.link.Pending() - pending; got != 0 || te.Stats.Dropped != dropped+1 {
		t.Errorf("%d bytes of fragments queued, %d dropped", got, te.Stats.Dropped-dropped)
	}
	te.sendFragments(testMAC, testGW4, testGuest4, header.ProtoUDP, make([]byte, 3*48))
	if got := te.link.Pending() - pending; got == 0 {
		t.Errorf("3 fragments that fit not queued")
	}
}

// keptOpen is a link whose Close leaves its descriptor open.
type keptOpen struct{ qemusock.Link }

func (keptOpen) Close() error { return nil }

// TestGuestFragmentsAllocs: a datagram put together from its fragments
// costs no allocation.
func TestGuestFragmentsAllocs(t *testing.T) {
	pc := fragPeer(t, testGW4)
	te := newUDPTestEngine(t)
	fs := fragFrames(fragDatagram(pc, testGW4, 5000, 4000, 'a'), fragSize(testGW4), 1)
	send := func() {
		for _, f := range fs {
			te.tapInput(f)
		}
		te.inputDone()
	}
	send()
	recvUDP(t, pc)
	if a := testing.AllocsPerRun(20, send); a != 0 {
		t.Errorf("%.1f allocations per datagram", a)
	}
	for range 21 {
		if got := recvUDP(t, pc); len(got) != 4000 {
			t.Fatalf("%d bytes, want 4000", len(got))
		}
	}
}

// TestGuestEchoFragmented: an echo request past the guest's MTU, in
// fragments, goes out through a ping socket, and its reply, as large,
// comes back in fragments within the MTU that make it up again, over
// IPv4 and IPv6.
func TestGuestEchoFragmented(t *testing.T) {
	needPing(t)
	for _, gw := range []netip.Addr{testGW4, testGW6} {
		te := newTestEngine(t)
		te.cfg.NoICMP = false
		te.setMTU(1500)
		typ, reply := uint8(header.ICMPv4Echo), uint8(header.ICMPv4EchoReply)
		if gw.Is6() {
			typ, reply = header.ICMPv6Echo, header.ICMPv6EchoReply
		}
		echo := append(echoRequest(typ, 7, 1), make([]byte, 4000)...)
		for i := range 4000 {
			echo[12+i] = byte(i)
		}
		for _, f := range fragFrames(frameIP(guestOf(gw), gw, icmpProto(gw), echo), fragSize(gw), 5) {
			te.tapInput(f)
		}
		te.inputDone()
		var frames [][]byte
		var got []byte
		for deadline := time.Now().Add(5 * time.Second); got == nil && time.Now().Before(deadline); {
			te.turn(10)
			checkedFrames(t, te, func(f []byte) { frames = append(frames, slices.Clone(f)) })
			got = reassemble(t, frames, gw, guestOf(gw), icmpProto(gw))
		}
		if m := header.ICMP(got); len(got) != len(echo) || m.Type() != reply || m.Ident() != 7 || !bytes.Equal(got[8:], echo[8:]) {
			t.Errorf("%v: %d frames made up %d bytes, want an echo reply of %d", gw, len(frames), len(got), len(echo))
		}
		for _, f := range frames {
			if len(f)-header.EthernetLen > 1500 {
				t.Errorf("%v: a frame of %d bytes past the MTU", gw, len(f))
			}
		}
		te.icmp.closeAll(te.Engine)
	}
}

// FuzzFragments feeds the engine fragments of a UDP datagram to a
// loopback peer, cut where the fuzzer says: each 4 bytes of input pick
// a fragment, by its index and size in 8-byte blocks, its flags (more
// fragments flipped, IPv6, another identification, a byte changed) and
// the change. Whatever the cuts, nothing crashes, the reassemblies stay
// within their bound, and what reaches the peer unchanged is the
// datagram sent.
func FuzzFragments(f *testing.F) {
	peers := []net.PacketConn{fragPeer(f, testGW4), fragPeer(f, testGW6)}
	te := newTestEngine(f)
	te.cfg.NoUDP = false
	type cut struct {
		size  int
		flags uint8 // IPv6, the other identification
	}
	cuts := map[cut][][]byte{} // each cut's fragments, made once
	var sent [2][]byte         // each family's datagram
	for fam, gw := range []netip.Addr{testGW4, testGW6} {
		sent[fam] = udpPayload(fragDatagram(peers[fam], gw, 5000, 3000, 'f'))
	}
	buf := make([]byte, 1<<16)
	f.Fuzz(func(t *testing.T, b []byte) {
		changed := false
		for ; len(b) >= 4; b = b[4:] {
			c := cut{max(int(b[1])*8, 8), b[2] & 6}
			fam, gw := 0, testGW4
			if c.flags&2 != 0 {
				fam, gw = 1, testGW6
			}
			fs, ok := cuts[c]
			if !ok {
				fs = fragFrames(fragDatagram(peers[fam], gw, 5000, 3000, 'f'), c.size, uint32(c.flags>>2))
				cuts[c] = fs
			}
			fr := slices.Clone(fs[int(b[0])%len(fs)])
			if b[2]&1 != 0 {
				if gw.Is4() {
					fr[header.EthernetLen+6] ^= 0x20
				} else {
					fr[header.EthernetLen+header.IPv6Len+3] ^= 1
				}
			}
			if b[2]&8 != 0 {
				fr[len(fr)-1] ^= b[3]
				changed = changed || b[3] != 0
			}
			te.tapInput(fr)
			te.inputDone()
		}
		used := 0
		for i := range te.frag.slots {
			if s := &te.frag.slots[i]; s.used {
				used++
				if s.end > fragMaxLen || s.have > s.end || s.total >= 0 && s.end > s.total {
					t.Fatalf("a reassembly holds %d bytes up to %d of %d", s.have, s.end, s.total)
				}
			}
		}
		if used != te.frag.count || used > fragSlots {
			t.Fatalf("%d reassemblies counted, %d in use", te.frag.count, used)
		}
		for fam, pc := range peers {
			for {
				pc.SetReadDeadline(time.Now())
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				if !changed && !bytes.Equal(buf[:n], sent[fam]) {
					t.Fatalf("the peer got %d bytes, not the %d sent", n, len(sent[fam]))
				}
			}
		}
	})
}

// reassemble puts the fragments of protocol proto among frames, from src
// to dst, together as a guest's stack would, and returns the L4 datagram
// once it is whole and its checksum right, else nil.
func reassemble(t *testing.T, frames [][]byte, src, dst netip.Addr, proto uint8) []byte {
	t.Helper()
	var d []byte
	have, total := 0, -1
	for _, f := range frames {
		var off int
		var more bool
		var data []byte
		switch eth := header.Ethernet(f); eth.Type() {
		case header.EtherTypeIPv4:
			ip := header.IPv4(eth.Payload())
			if ip.Src() != src || ip.Dst() != dst || ip.Protocol() != proto {
				continue
			}
			fo := binary.BigEndian.Uint16(ip[6:])
			off, more, data = int(fo&0x1fff)*8, fo&0x2000 != 0, ip.Payload()
		case header.EtherTypeIPv6:
			ip := header.IPv6(eth.Payload())
			if ip.Src() != src || ip.Dst() != dst || ip.NextHeader() != header.IPv6Fragment || ip[header.IPv6Len] != proto {
				continue
			}
			fo := binary.BigEndian.Uint16(ip[header.IPv6Len+2:])
			off, more, data = int(fo&^7), fo&1 != 0, ip.Payload()[header.IPv6FragmentLen:]
		default:
			continue
		}
		if len(d) < off+len(data) {
			d = append(d, make([]byte, off+len(data)-len(d))...)
		}
		copy(d[off:], data)
		have += len(data)
		if !more {
			total = off + len(data)
		}
	}
	if total < header.UDPLen || have != total || len(d) != total {
		return nil
	}
	var sum uint64
	if proto != header.ProtoICMP {
		sum = header.PseudoHeaderSum(proto, src, dst, len(d))
	}
	if header.Fold(header.Checksum(d, sum)) != 0 {
		t.Fatalf("the reassembled datagram's checksum is wrong")
	}
	return d
}
