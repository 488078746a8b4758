package tests

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The options QEMU 10.1's -netdev passt can pass, each doing in the guest
// what passt's does (passt.1).

// whoServer answers each connection with the address it came from.
func whoServer(t *testing.T, ns *Netns, addr string) string {
	l := ns.Listen(t, "tcp", addr)
	acceptLoop(l, func(c net.Conn) {
		io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
		c.Close()
	})
	return port(l.Addr())
}

// TestMapHostLoopback: --map-host-loopback X makes X the host's
// loopback, seen there from loopback, and the stand-in for the host's
// loopback resolver; the gateway is then an ordinary address.
func TestMapHostLoopback(t *testing.T) {
	const x = "198.51.100.77"
	w := newWorld(t, WorldOpts{Args: []string{"--map-host-loopback", x}})
	p := whoServer(t, w.Host, "127.0.0.1:0")
	if got := guestAsk(t, w, net.JoinHostPort(x, p), ""); got != "127.0.0.1" {
		t.Errorf("host loopback server at %s saw %q, want 127.0.0.1", x, got)
	}
	if w.Lease["dns"] != x {
		t.Errorf("lease gives DNS %q; the loopback resolver's stand-in is %s", w.Lease["dns"], x)
	}
	startDNS(t, w, "map.gopasst.example", [4]byte{203, 0, 113, 7})
	if out := w.Guest.Run(t, "busybox", "nslookup", "map.gopasst.example", x); !strings.Contains(out, "203.0.113.7") {
		t.Errorf("DNS through %s:\n%s", x, out)
	}
}

// TestMapGuestAddr: the guest has the host's address as its own, so it
// reaches the host's (non-loopback) address through --map-guest-addr Y.
func TestMapGuestAddr(t *testing.T) {
	const y = "192.0.2.88"
	w := newWorld(t, WorldOpts{Args: []string{"--map-guest-addr", y}})
	if w.Lease["ip"] != hostAddr {
		t.Fatalf("the guest has %s, not the host's address", w.Lease["ip"])
	}
	p := whoServer(t, w.Host, net.JoinHostPort(hostAddr, "0"))
	if got := guestAsk(t, w, net.JoinHostPort(y, p), ""); got != hostAddr {
		t.Errorf("server on the host's %s, through %s, saw %q", hostAddr, y, got)
	}
}

// TestOutbound: -o sets the source address of the guest's flows on the
// host, for TCP and UDP alike; without it the kernel picks the address
// the server listens on.
func TestOutbound(t *testing.T) {
	const src, server = "198.51.100.3", "198.51.100.4"
	w := newWorld(t, WorldOpts{Args: []string{"-o", src}, BeforeStart: func(h *Netns) {
		h.Run(t, "ip", "addr", "add", src+"/24", "dev", "uplink")
		h.Run(t, "ip", "addr", "add", server+"/24", "dev", "uplink")
	}})
	p := whoServer(t, w.Host, net.JoinHostPort(server, "0"))
	if got := guestAsk(t, w, net.JoinHostPort(server, p), ""); got != src {
		t.Errorf("TCP server at %s saw %q, want %s", server, got, src)
	}
	// A UDP server that answers with the source it saw.
	pc := w.Host.ListenPacket(t, "udp", net.JoinHostPort(server, "0"))
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(from.(*net.UDPAddr).IP.String()), from)
		}
	}()
	u := w.Guest.ListenPacket(t, "udp", ":0")
	u.WriteTo([]byte("who"), pc.LocalAddr())
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, _, err := u.ReadFrom(buf)
	if err != nil || string(buf[:n]) != src {
		t.Errorf("UDP server at %s saw %q (%v), want %s", server, buf[:n], err, src)
	}
}

// TestOutboundIf: --outbound-if4 binds the guest's flows to an interface
// (the host's sockets show it in ss as ADDR%IF), except flows to the
// host's loopback, which no other interface reaches. The host namespace
// gets a second link, "side0", to a namespace of the test's own.
func TestOutboundIf(t *testing.T) {
	var side *Netns
	w := newWorld(t, WorldOpts{Args: []string{"-i", "uplink", "--outbound-if4", "side0"}, BeforeStart: func(h *Netns) {
		side = newNetns(t, "gps")
		h.Run(t, "ip", "link", "add", "side0", "type", "veth", "peer", "name", "side1", "netns", side.Name)
		h.Run(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "side0")
		h.Run(t, "ip", "link", "set", "side0", "up")
		side.Run(t, "ip", "addr", "add", "203.0.113.1/24", "dev", "side1")
		side.Run(t, "ip", "link", "set", "side1", "up")
	}})
	if w.Lease["ip"] != hostAddr || w.Lease["router"] != hostGW {
		t.Fatalf("-i uplink: lease %v", w.Lease)
	}
	l := side.Listen(t, "tcp", "203.0.113.1:0")
	held := make(chan net.Conn, 1)
	acceptLoop(l, func(c net.Conn) { held <- c })
	c := w.guestConn(t, net.JoinHostPort("203.0.113.1", port(l.Addr())))
	c.Write([]byte("x"))
	defer (<-held).Close()
	out := w.Host.Run(t, "ss", "-tnH", "state", "established", "dst", "203.0.113.1")
	if !strings.Contains(out, "203.0.113.2%side0:") {
		t.Errorf("the host's socket is not bound to side0:\n%s", out)
	}
	p := whoServer(t, w.Host, "127.0.0.1:0")
	if got := guestAsk(t, w, net.JoinHostPort(hostGW, p), ""); got != "127.0.0.1" {
		t.Errorf("host loopback through the gateway: %q", got)
	}
}

// TestLeaveOutOfLease: --no-dhcp-dns, --no-dhcp-search and -m 0 leave
// the resolvers, the search list and the MTU out of the DHCP lease, and
// the guest keeps the rest.
func TestLeaveOutOfLease(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--no-dhcp-dns", "--no-dhcp-search", "-m", "0"}})
	for _, k := range []string{"dns", "search", "domain", "mtu"} {
		if v, ok := w.Lease[k]; ok {
			t.Errorf("lease has %s=%q", k, v)
		}
	}
	if w.Lease["ip"] != hostAddr || w.Lease["router"] != hostGW {
		t.Errorf("lease %v", w.Lease)
	}
	// The link MTU is still the default: a 60000-byte datagram goes
	// through whole to a host server, as it does without -m 0.
	w.Guest.Run(t, "ip", "link", "set", tapName, "mtu", "65520")
	pc := w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	echoPackets(pc, "")
	u := w.Guest.ListenPacket(t, "udp", ":0")
	dst := &net.UDPAddr{IP: net.ParseIP(hostGW), Port: pc.LocalAddr().(*net.UDPAddr).Port}
	u.WriteTo(make([]byte, 60000), dst)
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	if n, _, err := u.ReadFrom(buf); err != nil || n != 60000 {
		t.Errorf("60000-byte datagram: %d back, %v", n, err)
	}
}

// TestFreebind: --freebind binds a forward to an address the host does
// not have yet; once the address is there, the forward works.
func TestFreebind(t *testing.T) {
	const later = "198.51.100.99"
	w := newWorld(t, WorldOpts{Args: []string{"--freebind", "-t", later + "/18099:80"}})
	guestServe(t, w, 80)
	w.Host.Run(t, "ip", "addr", "add", later+"/24", "dev", "uplink")
	expectAnswer(t, w, later+":18099", 80)
}

// TestQEMUOptions: gopasst starts with every option QEMU 10.1's
// -netdev passt names (net/passt.c), less those that turn a protocol
// off, and the guest gets what they say: passt once refused the lot.
func TestQEMUOptions(t *testing.T) {
	const out4, mapLo, mapGuest = "198.51.100.3", "198.51.100.77", "192.0.2.88"
	w := newWorld(t, WorldOpts{Args: []string{"--quiet", "--mtu", "1500", "--address", hostAddr, "--netmask", "25",
		"--mac-addr", "9a:55:9a:55:9a:56", "--gateway", hostGW, "--interface", "uplink", "--outbound", out4,
		"--outbound-if4", "uplink", "--outbound-if6", "uplink", "--dns", "192.0.2.53", "--fqdn", "vm.example.test",
		"--no-dhcp-search", "--map-host-loopback", mapLo, "--map-guest-addr", mapGuest,
		"--dns-forward", "192.0.2.3", "--dns-host", hostDNS, "--freebind", "--ipv4-only",
		"--search", "example.test lab.example", "--tcp-ports", "18077,18078:80", "--udp-ports", "15353",
		"--pid", "{dir}/pid"},
		BeforeStart: func(h *Netns) { h.Run(t, "ip", "addr", "add", out4+"/24", "dev", "uplink") }})
	for k, v := range map[string]string{"ip": hostAddr, "mask": "25", "router": hostGW, "dns": "192.0.2.53", "mtu": "1500"} {
		if w.Lease[k] != v {
			t.Errorf("lease %s = %q, want %q", k, w.Lease[k], v)
		}
	}
	if _, ok := w.Lease["search"]; ok {
		t.Errorf("lease has search %q despite --no-dhcp-search", w.Lease["search"])
	}
	p := whoServer(t, w.Host, "127.0.0.1:0")
	if got := guestAsk(t, w, net.JoinHostPort(mapLo, p), ""); got != "127.0.0.1" {
		t.Errorf("host loopback through %s: %q", mapLo, got)
	}
	p = whoServer(t, w.Host, net.JoinHostPort(hostAddr, "0"))
	if got := guestAsk(t, w, net.JoinHostPort(mapGuest, p), ""); got != out4 {
		t.Errorf("the host's address through %s: server saw %q, want -o's %s", mapGuest, got, out4)
	}
	guestServe(t, w, 80)
	expectAnswer(t, w, "127.0.0.1:18078", 80)
}

// TestAddressPrefix: -a ADDR/PLEN, passt's prefix form, sets the
// lease's netmask.
func TestAddressPrefix(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-a", hostAddr + "/26"}})
	if w.Lease["ip"] != hostAddr || w.Lease["mask"] != "26" {
		t.Errorf("lease %v, want %s/26", w.Lease, hostAddr)
	}
}

// TestStatsOption: --stats logs the engine's event counts, by kind.
func TestStatsOption(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--stats", "1"}})
	waitFor(t, "event counts in the log", func() bool {
		return strings.Contains(w.Log.String(), "stats:") && strings.Contains(w.Log.String(), "guest")
	})
}

// TestPointToPointHost: on a host whose default route names no gateway
// (a VPN's tun, PPP), the guest still gets its IPv4 over DHCP: the
// template's address, and local mode's gateway, 169.254.2.2, reached
// through a classless route (RFC 3442), which stands for the host's
// loopback as a gateway does. passt turns DHCP off there.
func TestPointToPointHost(t *testing.T) {
	w := newWorld(t, WorldOpts{BeforeStart: func(h *Netns) {
		h.Run(t, "ip", "route", "del", "default")
		h.Run(t, "ip", "tuntap", "add", "tun0", "mode", "tun")
		h.Run(t, "ip", "link", "set", "tun0", "up")
		h.Run(t, "ip", "addr", "add", "10.8.0.2/32", "peer", "10.8.0.1", "dev", "tun0")
		h.Run(t, "ip", "route", "add", "default", "dev", "tun0")
		h.Run(t, "ip", "addr", "add", "192.0.2.77/32", "dev", "lo")
	}})
	if l := w.Lease; l["ip"] != "10.8.0.2" || l["mask"] != "32" || l["router"] != "169.254.2.2" || l["staticroutes"] == "" {
		t.Fatalf("lease %v: want 10.8.0.2/32 via 169.254.2.2, with classless routes", l)
	}
	p := whoServer(t, w.Host, "192.0.2.77:0")
	if got := guestAsk(t, w, net.JoinHostPort("192.0.2.77", p), ""); got == "" {
		t.Error("a server on the host's 192.0.2.77 was not reached")
	}
	p = whoServer(t, w.Host, "127.0.0.1:0")
	if got := guestAsk(t, w, net.JoinHostPort("169.254.2.2", p), ""); got != "127.0.0.1" {
		t.Errorf("the host's loopback through the gateway: %q", got)
	}
}
