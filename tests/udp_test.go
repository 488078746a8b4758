package tests

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestUDPEcho sends datagrams from the guest to an echo server on host
// loopback and checks each reply and its source.
func TestUDPEcho(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	udpEcho(t, w, "127.0.0.1:0", hostGW)
}

// guestUDP is a UDP socket of the guest's on any port, closed with t.
func guestUDP(t *testing.T, w *World) net.PacketConn {
	var c net.PacketConn
	w.Guest.Do(t, func() {
		var err error
		if c, err = net.ListenPacket("udp", ":0"); err != nil {
			t.Fatal(err)
		}
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// udpEcho runs an echo server on host loopback at listen and checks that
// the guest, sending through gateway, gets every datagram back from there.
func udpEcho(t *testing.T, w *World, listen, gateway string) {
	udpEchoSizes(t, w, listen, gateway, 1, 100, 1472, 9000, 60000)
}

// udpEchoSizes is udpEcho with datagrams of the sizes given.
func udpEchoSizes(t *testing.T, w *World, listen, gateway string, sizes ...int) {
	srv := w.Host.ListenPacket(t, "udp", listen)
	echoPackets(srv, "")
	target := net.JoinHostPort(gateway, port(srv.LocalAddr()))
	c := guestUDP(t, w)
	dst, _ := net.ResolveUDPAddr("udp", target)
	buf := make([]byte, 65536)
	for _, size := range sizes {
		msg := []byte(strings.Repeat("u", size))
		got := false
		for try := 0; try < 3 && !got; try++ {
			c.WriteTo(msg, dst)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				continue
			}
			if from.String() != target || n != size {
				t.Fatalf("reply of %d bytes from %v, want %d from %s", n, from, size, target)
			}
			got = true
		}
		if !got {
			t.Fatalf("no echo for %d bytes", size)
		}
	}
}

// startDNS runs a tiny authoritative server on the host namespace's
// loopback resolver address (what resolv.conf there names), answering A
// queries for name with addr.
func startDNS(t *testing.T, w *World, name string, addr [4]byte) {
	startDNSAt(t, w, net.JoinHostPort(hostDNS, "53"), name, addr)
}

// startDNSAt is startDNS at listen.
func startDNSAt(t *testing.T, w *World, listen, name string, addr [4]byte) {
	c := w.Host.ListenPacket(t, "udp", listen)
	servePackets(c, func(q []byte) []byte { return dnsAnswer(q, name, addr) })
}

// dnsAnswer builds a reply to a single-question query: an A record for
// name, NXDOMAIN for anything else.
func dnsAnswer(q []byte, name string, addr [4]byte) []byte {
	if len(q) < 12 {
		return nil
	}
	p := 12
	var labels []string
	for p < len(q) && q[p] != 0 {
		l := int(q[p])
		if p+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[p+1:p+1+l]))
		p += 1 + l
	}
	p += 5 // root label, type, class
	if p > len(q) {
		return nil
	}
	qtype := uint16(q[p-4])<<8 | uint16(q[p-3])
	resp := append([]byte{}, q[:p]...)
	resp[2] = 0x84 | q[2]&1 // QR, AA, RD copied
	resp[3] = 0x80          // RA
	resp[6], resp[7] = 0, 0
	resp[8], resp[9], resp[10], resp[11] = 0, 0, 0, 0
	if strings.Join(labels, ".") != name {
		resp[3] |= 3 // NXDOMAIN
		return resp
	}
	if qtype == 1 {
		resp[7] = 1
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
		resp = append(resp, addr[:]...)
	}
	return resp
}

// TestDNSLoopbackResolver: the host's resolver is on host loopback, as
// with systemd-resolved. The guest must be given a reachable address and
// still resolve names through it.
func TestDNSLoopbackResolver(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	startDNS(t, w, "test.gopasst.example", [4]byte{203, 0, 113, 7})
	dns := w.Lease["dns"]
	if dns == "" || strings.HasPrefix(dns, "127.") {
		t.Fatalf("guest was given DNS %q, which it cannot reach", dns)
	}
	out := w.Guest.Run(t, "busybox", "nslookup", "test.gopasst.example", dns)
	if !strings.Contains(out, "203.0.113.7") {
		t.Fatalf("nslookup through %s:\n%s", dns, out)
	}
}

// TestDNSHostAddressResolver: the host's resolver serves on the host's
// own address (a BIND or dnsmasq of its own, and resolv.conf names that
// address), which the guest shares: the guest is given the stand-in, not
// its own address, whose queries never leave it (passt gives it that).
func TestDNSHostAddressResolver(t *testing.T) {
	w := newWorld(t, WorldOpts{BeforeStart: func(h *Netns) {
		h.WriteEtc(t, "resolv.conf", "nameserver "+hostAddr+"\n")
	}})
	startDNSAt(t, w, net.JoinHostPort(hostAddr, "53"), "own.gopasst.example", [4]byte{203, 0, 113, 2})
	dns := w.Lease["dns"]
	out := w.Guest.Run(t, "busybox", "nslookup", "own.gopasst.example", dns)
	if dns != hostGW || !strings.Contains(out, "203.0.113.2") {
		t.Fatalf("lease DNS %q (want the stand-in %s); nslookup through it:\n%s", dns, hostGW, out)
	}
}

// TestDNSOverTCP: a TCP query to the DNS stand-in (what a resolver does
// after a truncated answer) reaches the loopback resolver, as UDP does,
// and so does port 853 (DNS over TLS).
func TestDNSOverTCP(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", net.JoinHostPort(hostDNS, "53"))
	acceptLoop(l, func(c net.Conn) {
		defer c.Close()
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		q := make([]byte, int(n[0])<<8|int(n[1]))
		if _, err := io.ReadFull(c, q); err != nil {
			return
		}
		r := dnsAnswer(q, "tcp.gopasst.example", [4]byte{203, 0, 113, 9})
		c.Write(append([]byte{byte(len(r) >> 8), byte(len(r))}, r...))
	})
	dot := w.Host.Listen(t, "tcp", net.JoinHostPort(hostDNS, "853"))
	acceptLoop(dot, func(c net.Conn) { c.Write([]byte("dot")); c.Close() })
	dns := w.Lease["dns"]

	c := w.guestConn(t, net.JoinHostPort(dns, "53"))
	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 't', 'c', 'p', 7, 'g', 'o', 'p', 'a', 's', 's', 't', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0, 0, 1, 0, 1}
	c.Write(append([]byte{0, byte(len(q))}, q...))
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		t.Fatalf("TCP query to the stand-in %s: %v", dns, err)
	}
	r := make([]byte, int(n[0])<<8|int(n[1]))
	if _, err := io.ReadFull(c, r); err != nil || !bytes.HasSuffix(r, []byte{203, 0, 113, 9}) {
		t.Fatalf("TCP answer % x, %v; want the A record 203.0.113.9", r, err)
	}
	if got, err := io.ReadAll(w.guestConn(t, net.JoinHostPort(dns, "853"))); err != nil || string(got) != "dot" {
		t.Fatalf("port 853 on the stand-in: %q, %v; want the resolver's", got, err)
	}
}

// TestDNSForwardAddress: --dns-forward names the stand-in address.
func TestDNSForwardAddress(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--dns-forward", "198.51.100.53"}})
	startDNS(t, w, "fwd.gopasst.example", [4]byte{203, 0, 113, 8})
	if w.Lease["dns"] != "198.51.100.53" {
		t.Fatalf("lease DNS = %q, want the --dns-forward address", w.Lease["dns"])
	}
	out := w.Guest.Run(t, "busybox", "nslookup", "fwd.gopasst.example", "198.51.100.53")
	if !strings.Contains(out, "203.0.113.8") {
		t.Fatalf("nslookup:\n%s", out)
	}
}

// TestDNSLargeAnswer: at MTU 1500, a 4000-byte answer from the loopback
// resolver (EDNS, DNSSEC) reaches the guest's kernel in fragments it
// reassembles, through the IPv4 and the IPv6 stand-in. gopasst dropped
// it, so the guest's resolver timed out where passt's answered.
func TestDNSLargeAnswer(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--mtu", "1500"}})
	w.waitIPv6(t)
	answer := bytes.Repeat([]byte("large answer "), 300)
	srv := w.Host.ListenPacket(t, "udp", net.JoinHostPort(hostDNS, "53"))
	servePackets(srv, func([]byte) []byte { return answer })
	for _, dns := range []string{w.Lease["dns"], host6GW} {
		c := guestUDP(t, w)
		dst, _ := net.ResolveUDPAddr("udp", net.JoinHostPort(dns, "53"))
		buf := make([]byte, 65536)
		var n int
		var err error
		for try := 0; try < 3 && n == 0; try++ {
			c.WriteTo([]byte("query"), dst)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, _, err = c.ReadFrom(buf)
		}
		if !bytes.Equal(buf[:n], answer) {
			t.Errorf("through %s: %d bytes (%v), want the resolver's %d", dns, n, err, len(answer))
		}
	}
}

// TestGuestFragments: at MTU 1500 the guest's kernel sends datagrams
// of 8,000 and 60,000 bytes in IP fragments, which gopasst puts together
// for the host's echo server, whose answer comes back in fragments;
// "ping -s 4000" is answered too, over IPv4 and IPv6. At IPv4's least
// MTU, 68, the same with 8,000 bytes (60,000 are 1,250 fragments there,
// of which the guest's kernel sent too few to make up the datagram).
// gopasst dropped the guest's fragments, as passt does.
func TestGuestFragments(t *testing.T) {
	for _, c := range []struct {
		mtu   string
		sizes []int
	}{{"1500", []int{8000, 60000}}, {"68", []int{8000}}} {
		mtu := c.mtu
		t.Run("mtu "+mtu, func(t *testing.T) {
			w := newWorld(t, WorldOpts{Args: []string{"--mtu", mtu}})
			if out := w.Guest.Run(t, "ip", "link", "show", tapName); !strings.Contains(out, "mtu "+mtu+" ") {
				t.Fatalf("the guest's MTU is not %s:\n%s", mtu, out)
			}
			udpEchoSizes(t, w, "127.0.0.1:0", hostGW, c.sizes...)
			if out := w.Guest.Run(t, "busybox", "ping", "-c", "2", "-W", "5", "-s", "4000", hostGW); !strings.Contains(out, "2 packets received") {
				t.Errorf("ping -s 4000: %s", out)
			}
			if mtu == "68" {
				return // no IPv6 below 1280
			}
			w.waitIPv6(t)
			udpEchoSizes(t, w, "[::1]:0", host6GW, c.sizes...)
			if out := w.Guest.Run(t, "busybox", "ping", "-6", "-c", "2", "-W", "5", "-s", "4000", host6GW); !strings.Contains(out, "2 packets received") {
				t.Errorf("ping -6 -s 4000: %s", out)
			}
		})
	}
}

// TestNoMapGW: with --no-map-gw the gateway address is just an address on
// the host's network, not the host itself.
func TestNoMapGW(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--no-map-gw"}})
	if dns := w.Lease["dns"]; dns != "" {
		t.Errorf("guest was given DNS %q; a loopback resolver is unreachable without gateway mapping", dns)
	}
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	c, err := w.Guest.Dial("tcp", net.JoinHostPort(hostGW, port(l.Addr())), 2*time.Second)
	if err == nil {
		c.Close()
		t.Fatal("connection to the gateway reached host loopback despite --no-map-gw")
	}
	select {
	case <-accepted:
		t.Fatal("host loopback server accepted a connection")
	default:
	}
}

// TestTraceroute: a traceroute from the guest over UDP, IPv4 and IPv6,
// through a router of the test's own to a host behind it, lists the
// router and then the host: gopasst sends each datagram with the guest's
// TTL or hop limit, and relays the router's "time exceeded" from the
// router, as passt does. Before, every probe left with the host's
// default TTL and the first hop was already the far host.
func TestTraceroute(t *testing.T) {
	var router, far *Netns
	w := newWorld(t, WorldOpts{BeforeStart: func(h *Netns) {
		router, far = newNetns(t, "gpr"), newNetns(t, "gpf")
		h.Run(t, "ip", "link", "add", "trace0", "type", "veth", "peer", "name", "trace1", "netns", router.Name)
		router.Run(t, "ip", "link", "add", "trace2", "type", "veth", "peer", "name", "trace3", "netns", far.Name)
		ipBatch(t, h, `addr add 203.0.113.1/30 dev trace0
addr add 2001:db8:7::1/64 dev trace0 nodad
link set trace0 up
route add 203.0.113.8/30 via 203.0.113.2
route add 2001:db8:8::/64 via 2001:db8:7::2`)
		ipBatch(t, router, `addr add 203.0.113.2/30 dev trace1
addr add 2001:db8:7::2/64 dev trace1 nodad
addr add 203.0.113.9/30 dev trace2
addr add 2001:db8:8::1/64 dev trace2 nodad
link set trace1 up
link set trace2 up mtu 1280`)
		router.Sysctl(t, "net.ipv4.ip_forward", "1")
		router.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
		ipBatch(t, far, `addr add 203.0.113.10/30 dev trace3
addr add 2001:db8:8::2/64 dev trace3 nodad
link set trace3 up
route add default via 203.0.113.9
route add default via 2001:db8:8::1`)
	}})
	w.waitIPv6(t)
	for _, c := range []struct{ cmd, router, far string }{
		{"traceroute", "203.0.113.2", "203.0.113.10"},
		{"traceroute6", "2001:db8:7::2", "2001:db8:8::2"},
	} {
		out, _ := w.Guest.Cmd("busybox", c.cmd, "-n", "-q", "1", "-w", "2", "-m", "4", c.far).CombinedOutput()
		hops := map[string]string{}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) >= 2 {
				hops[f[0]] = f[1]
			}
		}
		if hops["1"] != c.router || hops["2"] != c.far {
			t.Errorf("%s %s: hop 1 %q, hop 2 %q, want %s then %s:\n%s", c.cmd, c.far, hops["1"], hops["2"], c.router, c.far, out)
		}
		// The router's link to the far host takes 1280 bytes: a larger
		// datagram meets "fragmentation needed" or "packet too big",
		// whose MTU the guest then keeps for the far host.
		// The guest's stack takes the error through the socket that
		// sent the datagram: it stays open.
		var u net.Conn
		w.Guest.Do(t, func() {
			var err error
			if u, err = net.Dial("udp", net.JoinHostPort(c.far, "9")); err != nil {
				t.Fatal(err)
			}
		})
		defer u.Close()
		u.Write(make([]byte, 1400))
		var route string
		if !pollUntil(5*time.Second, func() bool {
			route = w.Guest.Run(t, "ip", "route", "get", c.far)
			return strings.Contains(route, "mtu 1280")
		}) {
			t.Errorf("after 1,400 bytes to %s, the guest's route has no MTU of 1280:\n%s", c.far, route)
		}
	}
}

// ipBatch runs ip's commands, one a line, in ns.
func ipBatch(t testing.TB, ns *Netns, cmds string) {
	t.Helper()
	cmd := ns.Cmd("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(cmds + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -batch in %s: %v\n%s", ns.Name, err, out)
	}
}
