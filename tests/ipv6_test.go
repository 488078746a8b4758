package tests

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// IPv6 as the guest's kernel sees it: it autoconfigures from gopasst's
// Router Advertisements, takes an address by DHCPv6 with ISC dhclient,
// and reaches the host through the IPv6 gateway.

// waitIPv6 waits until the guest has autoconfigured a global address from
// the RA (past duplicate address detection) and a default route, and
// returns what "ip -6 addr" and "ip -6 route" show in the guest.
func (w *World) waitIPv6(t testing.TB) (addr, route string) {
	t.Helper()
	// Usually the guest's first Router Solicitation, a second after its
	// link comes up, gets the answer. Once in a loaded CI run it did not,
	// and Linux solicits again only 4 s later, then 8 s: so wait for
	// three solicitations, and show the guest's state if none worked.
	ok := pollUntil(30*time.Second, func() bool {
		addr = w.Guest.Run(t, "ip", "-6", "addr", "show", "dev", tapName)
		route = w.Guest.Run(t, "ip", "-6", "route")
		return strings.Contains(addr, "2001:db8:1:0:") && strings.Contains(addr, "scope global dynamic") &&
			!strings.Contains(addr, "tentative") && strings.Contains(route, "default via fe80::")
	})
	if !ok {
		t.Fatalf("timed out waiting for a SLAAC address and an IPv6 default route in the guest:\n%s\n%s", addr, route)
	}
	return addr, route
}

func TestIPv6Autoconf(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	addr, route := w.waitIPv6(t)
	t.Logf("guest ip -6 addr:\n%s\nguest ip -6 route:\n%s", addr, route)
	if !strings.Contains(addr, "inet6 fe80::") {
		t.Errorf("the guest lost its link-local address:\n%s", addr)
	}
	if !strings.Contains(route, "2001:db8:1::/64 dev "+tapName+" proto kernel") {
		t.Errorf("no on-link route for the advertised prefix:\n%s", route)
	}
	// The RA's MTU option sets the link's IPv6 MTU (the link itself got
	// 65520 from DHCPv4).
	if mtu := strings.TrimSpace(w.Guest.Run(t, "cat", "/proc/sys/net/ipv6/conf/"+tapName+"/mtu")); mtu != "65520" {
		t.Errorf("guest IPv6 MTU %s, want 65520 from the RA", mtu)
	}
}

// TestRouterAdvertisement solicits an RA from the guest namespace with a
// raw ICMPv6 socket and reads the options the kernel does not show: the
// managed and other flags, the resolvers (RDNSS) and the search list
// (DNSSL).
func TestRouterAdvertisement(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	w.waitIPv6(t)
	var ra []byte
	var from netip.Addr
	w.Guest.Do(t, func() { ra, from = solicitRA(t) })
	if !from.IsLinkLocalUnicast() {
		t.Errorf("RA from %v, want a link-local source", from)
	}
	if ra[5]&0xc0 != 0xc0 {
		t.Errorf("RA flags %#x: want managed and other configuration", ra[5])
	}
	opts := map[byte][]byte{}
	for o := ra[16:]; len(o) >= 8 && o[1] > 0 && int(o[1])*8 <= len(o); o = o[int(o[1])*8:] {
		opts[o[0]] = o[:int(o[1])*8]
	}
	if p := opts[3]; len(p) != 32 || p[2] != 64 || p[3]&0xc0 != 0xc0 || netip.AddrFrom16([16]byte(p[16:32])).String() != "2001:db8:1::" {
		t.Errorf("prefix option % x", p)
	}
	if m := opts[5]; len(m) != 8 || binary.BigEndian.Uint32(m[4:]) != 65520 {
		t.Errorf("MTU option % x", m)
	}
	if d := opts[25]; len(d) != 24 || netip.AddrFrom16([16]byte(d[8:24])).String() != host6GW {
		t.Errorf("RDNSS option % x, want the gateway %s (standing in for the host's loopback resolver)", d, host6GW)
	}
	if s := opts[31]; !strings.Contains(string(s), "\x07example\x04test\x00\x03lab\x07example\x00") {
		t.Errorf("DNSSL option %q", s)
	}
	if l := opts[1]; len(l) != 8 || net.HardwareAddr(l[2:8]).String() != "9a:55:9a:55:9a:55" {
		t.Errorf("source link-layer option % x", l)
	}
}

// solicitRA sends a Router Solicitation on the tap and returns the first
// Router Advertisement that answers it, with its source.
func solicitRA(t testing.TB) ([]byte, netip.Addr) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifi, err := net.InterfaceByName(tapName)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255)
	unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifi.Index)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})
	rs := []byte{133, 0, 0, 0, 0, 0, 0, 0} // the kernel fills the checksum
	dst := &unix.SockaddrInet6{Addr: netip.MustParseAddr("ff02::2").As16(), ZoneId: uint32(ifi.Index)}
	buf := make([]byte, 1500)
	for try := 0; try < 5; try++ {
		if err := unix.Sendto(fd, rs, 0, dst); err != nil {
			t.Fatal(err)
		}
		for {
			n, sa, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				break
			}
			if n >= 16 && buf[0] == 134 {
				return buf[:n], netip.AddrFrom16(sa.(*unix.SockaddrInet6).Addr)
			}
		}
	}
	t.Fatal("no Router Advertisement")
	return nil, netip.Addr{}
}

// dhclientScript records what dhclient learned, one variable per line, in
// the file named by %s (dhclient gives its script a clean environment),
// and configures the address it was given.
const dhclientScript = `#!/bin/sh
env | grep -E '^(reason|new_[a-z0-9_]+)=' | sort >> '%s'
case "$reason" in
BOUND6|REBOOT6)
	ip -6 addr add "$new_ip6_address/$new_ip6_prefixlen" dev "$interface" nodad
	;;
esac
exit 0
`

// dhclient6 runs ISC dhclient -6 in the guest with extra arguments, with
// lease and PID files named after tag, and returns the variables its
// script saw. dhclient stays in the background, as it would on a host.
func (w *World) dhclient6(t testing.TB, tag string, extra ...string) map[string]string {
	t.Helper()
	script := filepath.Join(w.Dir, "dhclient6.sh")
	lease := filepath.Join(w.Dir, tag+".vars")
	os.WriteFile(script, []byte(fmt.Sprintf(dhclientScript, lease)), 0o755)
	args := append([]string{"-6", "-1", "-v", "-sf", script}, w.dhclientFiles(tag)...)
	w.Guest.Run(t, "dhclient", append(append(args, extra...), tapName)...)
	data, _ := os.ReadFile(lease)
	vars := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			vars[k] = v
		}
	}
	return vars
}

// dhclientFiles are dhclient's lease and PID file options for tag.
func (w *World) dhclientFiles(tag string) []string {
	return []string{"-lf", filepath.Join(w.Dir, tag+".leases"), "-pf", filepath.Join(w.Dir, tag+".pid")}
}

func needDhclient(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("dhclient"); err != nil {
		t.Skip("needs dhclient (Debian package isc-dhcp-client)")
	}
}

// TestDHCPv6 takes the address by DHCPv6 (SOLICIT, ADVERTISE, REQUEST,
// REPLY), asks for configuration alone (INFORMATION-REQUEST), and
// releases the address.
func TestDHCPv6(t *testing.T) {
	needDhclient(t)
	w := newWorld(t, WorldOpts{Args: []string{"--fqdn", "guest1.example.test", "--debug"}})
	w.waitIPv6(t)
	lease := w.dhclient6(t, "bound")
	want := map[string]string{
		"reason":                  "BOUND6",
		"new_ip6_address":         host6Addr,
		"new_dhcp6_name_servers":  host6GW,
		"new_dhcp6_domain_search": "example.test. lab.example.",
		"new_fqdn_fqdn":           "guest1.example.test",
	}
	for k, v := range want {
		if lease[k] != v {
			t.Errorf("%s = %q, want %q", k, lease[k], v)
		}
	}
	if lease["new_dhcp6_server_id"] != "0:3:0:1:9a:55:9a:55:9a:55" {
		t.Errorf("server DUID %q, want a DUID-LL of gopasst's MAC", lease["new_dhcp6_server_id"])
	}
	t.Logf("DHCPv6 lease: %v", lease)
	addr := w.Guest.Run(t, "ip", "-6", "addr", "show", "dev", tapName)
	if !strings.Contains(addr, host6Addr+"/") {
		t.Errorf("DHCPv6 address not configured:\n%s", addr)
	}
	// dhclient -r stops the running client, sends RELEASE and waits for
	// the REPLY: it fails when none comes.
	w.Guest.Run(t, "dhclient", append(append([]string{"-6", "-r", "-v", "-sf", "/bin/true"}, w.dhclientFiles("bound")...), tapName)...)

	info := w.dhclient6(t, "info", "-S")
	if info["new_dhcp6_name_servers"] != host6GW || info["new_ip6_address"] != "" {
		t.Errorf("INFORMATION-REQUEST answered with %v", info)
	}
	t.Logf("DHCPv6 information: %v", info)
	for _, exchange := range []string{"type 1 ", "type 3 ", "type 8 ", "type 11 "} {
		if !strings.Contains(w.Log.String(), "DHCPv6: "+exchange) {
			t.Errorf("gopasst never answered DHCPv6 message %s", exchange)
		}
	}
}

func TestPing6Gateway(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	_, route := w.waitIPv6(t)
	out := w.Guest.Run(t, "busybox", "ping", "-6", "-c", "3", "-W", "5", host6GW)
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping: %s", out)
	}
	// The default router, gopasst's link-local address, answers too.
	router := strings.Fields(route[strings.Index(route, "default via ")+len("default via "):])[0]
	out = w.Guest.Run(t, "busybox", "ping", "-6", "-c", "3", "-W", "5", "-I", tapName, router)
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping to the router %s: %s", router, out)
	}
}

// TestTCPTransfer6 moves 64 MiB each way over IPv6, to host ::1 through
// the IPv6 gateway.
func TestTCPTransfer6(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	w.waitIPv6(t)
	tcpTransfer(t, w, "[::1]:0", host6GW, 64<<20)
}

func TestUDPEcho6(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	w.waitIPv6(t)
	udpEcho(t, w, "[::1]:0", host6GW)
}

// TestDNS6LoopbackResolver: a guest resolving over IPv6 reaches the
// host's IPv4 loopback resolver (systemd-resolved's 127.0.0.53) through
// the IPv6 gateway, which the RA and DHCPv6 advertise as its resolver.
func TestDNS6LoopbackResolver(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	w.waitIPv6(t)
	startDNS(t, w, "six.gopasst.example", [4]byte{203, 0, 113, 6})
	out := w.Guest.Run(t, "busybox", "nslookup", "six.gopasst.example", host6GW)
	if !strings.Contains(out, "203.0.113.6") {
		t.Fatalf("nslookup through %s:\n%s", host6GW, out)
	}
}

// TestDNSLinkLocalResolver: the host's resolver at a link-local address
// of one of its interfaces, as NetworkManager writes a router's
// (nameserver fe80::53%lan0), which the guest's link does not have: the
// guest is told the IPv6 stand-in, whose queries, over UDP and TCP, reach
// the resolver on that interface. gopasst left such a resolver out: a
// host with no other IPv6 resolver gave the guest none.
func TestDNSLinkLocalResolver(t *testing.T) {
	w := newWorld(t, WorldOpts{BeforeStart: func(h *Netns) {
		ipBatch(t, h, `link add lan0 type veth peer name lan1
link set lan0 up
link set lan1 up
addr add fe80::53/64 dev lan0 nodad`)
		h.WriteEtc(t, "resolv.conf", "nameserver fe80::53%lan0\n")
	}})
	w.waitIPv6(t)
	startDNSAt(t, w, "[fe80::53%lan0]:53", "ll.gopasst.example", [4]byte{203, 0, 113, 53})
	out := w.Guest.Run(t, "busybox", "nslookup", "ll.gopasst.example", host6GW)
	if !strings.Contains(out, "203.0.113.53") {
		t.Fatalf("nslookup through %s:\n%s", host6GW, out)
	}
	dot := w.Host.Listen(t, "tcp", "[fe80::53%lan0]:853")
	acceptLoop(dot, func(c net.Conn) { c.Write([]byte("dot")); c.Close() })
	if got, err := io.ReadAll(w.guestConn(t, net.JoinHostPort(host6GW, "853"))); err != nil || string(got) != "dot" {
		t.Fatalf("TCP to port 853 on the stand-in: %q, %v; want the resolver's", got, err)
	}
}

// TestForward6: inbound forwards reach the guest over IPv6 from IPv6
// senders, for an unbound forward and one bound to ::1 (ADDR/ with an
// IPv6 address); the guest sees the host as the IPv6 gateway.
func TestForward6(t *testing.T) {
	needDhclient(t)
	w := newWorld(t, WorldOpts{Args: []string{"-t", "18080:8080", "-t", "::1/18081:8081", "-u", "15353:5353"}})
	w.waitIPv6(t)
	w.dhclient6(t, "bound")
	for _, p := range []string{"8080", "8081"} {
		l := w.Guest.Listen(t, "tcp", "[::]:"+p)
		acceptLoop(l, func(c net.Conn) {
			c.Write([]byte("hello " + c.RemoteAddr().String() + " -> " + c.LocalAddr().String()))
			c.Close()
		})
	}
	for _, host := range []string{"[::1]:18080", "[::1]:18081", "[" + host6Addr + "]:18080"} {
		c, err := w.Host.Dial("tcp", host, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		got := string(b)
		// The guest's own address is the one it last used, as with passt:
		// its SLAAC address or the DHCPv6 one, both in the prefix.
		if !strings.HasPrefix(got, "hello ["+host6GW+"]:") || !strings.Contains(got, "-> [2001:db8:1:") {
			t.Errorf("%s: guest said %q", host, got)
		}
	}
	checkUDPForward(t, w, "[::1]:0")
}

// TestUnreachable: when the host cannot reach a destination, the guest
// hears so at once through ICMP or ICMPv6, as "no route to host" for TCP
// and "connection refused" for UDP to a closed port, instead of waiting
// for its own timeouts.
func TestUnreachable(t *testing.T) {
	w := newWorld(t, WorldOpts{BeforeStart: func(h *Netns) {
		h.Run(t, "ip", "route", "add", "unreachable", "203.0.113.0/24")
		h.Run(t, "ip", "-6", "route", "add", "unreachable", "2001:db8:dead::/48")
	}})
	w.waitIPv6(t)
	for _, dst := range []string{"203.0.113.9:80", "[2001:db8:dead::9]:80"} {
		start := time.Now()
		_, err := w.Guest.Dial("tcp", dst, 10*time.Second)
		if !errors.Is(err, syscall.EHOSTUNREACH) || time.Since(start) > 5*time.Second {
			t.Errorf("TCP to %s: %v after %v, want an immediate EHOSTUNREACH", dst, err, time.Since(start))
		}
	}
	// A port nobody listens on, on host loopback, through each gateway.
	closed := w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	closedPort := port(closed.LocalAddr())
	closed.Close()
	for _, gw := range []string{hostGW, host6GW} {
		var c net.Conn
		var err error
		w.Guest.Do(t, func() { c, err = net.Dial("udp", net.JoinHostPort(gw, closedPort)) })
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("anyone?"))
		_, err = c.Read(make([]byte, 16))
		c.Close()
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("UDP to closed port through %s: %v, want ECONNREFUSED", gw, err)
		}
	}
}
