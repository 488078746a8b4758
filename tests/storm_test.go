package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestStorm sends gopasst, through its real socket, 1,000,000 frames:
// valid-looking ARP, DHCP, DHCPv6, NDP, ICMP, DNS, UDP and TCP frames
// (to the gateway, which is host loopback) with bytes flipped, headers
// cut short, lengths wrong, IPv6 extension chains, and plain noise; then
// fresh clients with impossible length prefixes. Afterwards the daemon
// is alive, answers DHCP and a new TCP connection, holds no more
// descriptors than before, and its RSS stays under 64 MiB. It all stays
// in the test's namespaces: the host namespace's one link leads nowhere.
func TestStorm(t *testing.T) {
	const frames, rssLimit = 1_000_000, 64 << 20
	w := newWorld(t, WorldOpts{NoGuest: true})
	pid := w.ServerPid(t)
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { c.Close() })
	w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	fds0 := countFds(t, pid)

	templates := stormTemplates(uint16(l.Addr().(*net.TCPAddr).Port))
	rng := rand.New(rand.NewPCG(42, 7))
	c, err := net.Dial("unix", w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, c) // gopasst's answers
	out := bufio.NewWriterSize(c, 1<<16)
	buf := make([]byte, 0, 2048)
	for i := range frames {
		f := append(buf[:0], templates[rng.IntN(len(templates))]...)
		switch rng.IntN(8) {
		case 0, 1, 2: // flip a few bytes past the Ethernet header
			for range 1 + rng.IntN(4) {
				if len(f) > 14 {
					f[14+rng.IntN(len(f)-14)] ^= byte(1 + rng.IntN(255))
				}
			}
		case 3: // cut short
			f = f[:rng.IntN(len(f))+1]
		case 4: // garbage after the packet
			for range rng.IntN(64) {
				f = append(f, byte(rng.Uint32()))
			}
		case 5: // noise
			f = f[:14+rng.IntN(200)]
			for j := 14; j < len(f); j++ {
				f[j] = byte(rng.Uint32())
			}
		}
		binary.Write(out, binary.BigEndian, uint32(len(f)))
		out.Write(f)
		if i%100000 == 0 && rss(t, pid) > rssLimit {
			t.Fatalf("RSS %d MiB after %d frames", rss(t, pid)>>20, i)
		}
	}
	if err := out.Flush(); err != nil {
		t.Fatalf("gopasst stopped reading: %v", err)
	}
	c.Close()
	for _, prefix := range [][]byte{{0xff, 0xff, 0xff, 0xff}, {0, 0, 0, 0}, {0, 1, 0, 15}} {
		bad, err := net.Dial("unix", w.Sock)
		if err != nil {
			t.Fatalf("after the storm: %v", err)
		}
		bad.Write(prefix)
		bad.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, bad) // gopasst hangs up on it
		bad.Close()
	}

	// A well-behaved guest is served as before.
	g := newNetns(t, "gpg")
	b, err := NewBridge(g, tapName, w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	w.Guest = g
	g.Run(t, "ip", "link", "set", tapName, "up")
	w.DHCP(t)
	if conn, err := g.Dial("tcp", net.JoinHostPort(hostGW, port(l.Addr())), 5*time.Second); err != nil {
		t.Fatalf("TCP after the storm: %v", err)
	} else {
		conn.Close()
	}
	b.Close()
	waitFor(t, "gopasst's descriptors back to their count before the storm", func() bool { return countFds(t, pid) <= fds0 })
	if r := rss(t, pid); r > rssLimit {
		t.Errorf("RSS %d MiB after the storm, want under %d", r>>20, rssLimit>>20)
	}
	t.Logf("after %d frames: RSS %d MiB, %d descriptors (%d before)", frames, rss(t, pid)>>20, countFds(t, pid), fds0)
	for _, line := range strings.Split(w.Log.String(), "\n") {
		if strings.Contains(line, "client disconnected") {
			t.Log(line) // gopasst's own count of what the storm sent
			break
		}
	}
}

// stormTemplates are well-formed guest frames for the storm to mutate.
func stormTemplates(tcpPort uint16) [][]byte {
	g4, gw4 := netip.MustParseAddr(hostAddr), netip.MustParseAddr(hostGW)
	g6, gw6 := netip.MustParseAddr(host6Addr), netip.MustParseAddr(host6GW)
	ll := netip.MustParseAddr("fe80::42")
	udp := func(sport, dport uint16, payload []byte) []byte {
		u := binary.BigEndian.AppendUint16(nil, sport)
		u = binary.BigEndian.AppendUint16(u, dport)
		u = binary.BigEndian.AppendUint16(u, uint16(8+len(payload)))
		return append(append(u, 0, 0), payload...)
	}
	tcp := func(flags byte, payload string) []byte {
		t := binary.BigEndian.AppendUint16(nil, 40000)
		t = binary.BigEndian.AppendUint16(t, tcpPort)
		t = append(t, 0, 0, 3, 232, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0)
		return append(t, payload...)
	}
	dns := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, 's', 't', 'o', 'r', 0, 0, 1, 0, 1}
	discover := make([]byte, 240)
	discover[0], discover[1], discover[2] = 1, 1, 6
	copy(discover[28:], testMAC)
	copy(discover[236:], []byte{99, 130, 83, 99})
	discover = append(discover, 53, 1, 1, 255)
	echo := []byte{8, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}
	echo6 := []byte{128, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}
	rs := []byte{133, 0, 0, 0, 0, 0, 0, 0}
	ns := append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, gw6.AsSlice()...)
	solicit := []byte{1, 0xab, 0xcd, 0xef, 0, 1, 0, 10, 0, 3, 0, 1, 2, 0, 0, 0, 0, 0x42}
	hopByHop := append([]byte{58, 0, 5, 2, 0, 0, 1, 0}, echo6...) // router alert, then ICMPv6
	return [][]byte{
		arpRequest(),
		ip4(netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255"), 17, udp(68, 67, discover)),
		ip4(g4, gw4, 1, echo),
		ip4(g4, gw4, 17, udp(5353, 53, dns)),
		ip4(g4, gw4, 17, udp(5000, 9, []byte("datagram"))),
		ip4(g4, gw4, 6, tcp(0x02, "")),
		ip4(g4, gw4, 6, tcp(0x18, "data")),
		ip4(g4, gw4, 6, tcp(0x11, "")),
		ip6(ll, netip.MustParseAddr("ff02::2"), 58, rs),
		ip6(ll, netip.MustParseAddr("ff02::1:ff00:1"), 58, ns),
		ip6(ll, netip.MustParseAddr("ff02::1:2"), 17, udp(546, 547, solicit)),
		ip6(g6, gw6, 58, echo6),
		ip6(g6, gw6, 17, udp(5001, 53, dns)),
		ip6(g6, gw6, 6, tcp(0x02, "")),
		ip6(g6, gw6, 0, hopByHop),
	}
}

// ip4 wraps an L4 payload in IPv4 (header checksum included) and
// Ethernet.
func ip4(src, dst netip.Addr, proto byte, l4 []byte) []byte {
	h := []byte{0x45, 0}
	h = binary.BigEndian.AppendUint16(h, uint16(20+len(l4)))
	h = append(h, 0, 0, 0x40, 0, 64, proto, 0, 0)
	h = append(append(h, src.AsSlice()...), dst.AsSlice()...)
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	return eth(0x0800, append(h, l4...))
}

func ip6(src, dst netip.Addr, next byte, l4 []byte) []byte {
	h := []byte{0x60, 0, 0, 0}
	h = binary.BigEndian.AppendUint16(h, uint16(len(l4)))
	h = append(h, next, 255)
	h = append(append(h, src.AsSlice()...), dst.AsSlice()...)
	return eth(0x86dd, append(h, l4...))
}

func eth(typ uint16, payload []byte) []byte {
	b := append([]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, testMAC...)
	return append(binary.BigEndian.AppendUint16(b, typ), payload...)
}

func countFds(t testing.TB, pid int) int {
	d, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("gopasst is gone: %v", err)
	}
	return len(d)
}

func rss(t testing.TB, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("gopasst is gone: %v", err)
	}
	for _, l := range bytes.Split(data, []byte("\n")) {
		if f := strings.Fields(string(l)); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	return 0
}
