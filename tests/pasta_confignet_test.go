package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nsAddrRoutes lists the IPv4 addresses (ADDR/PLEN) of dev in ns and its
// IPv4 routes (DST or DST via GW).
func nsAddrRoutes(t *testing.T, ns *Netns, dev string) (addrs, routes []string) {
	t.Helper()
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ns.Run(t, "ip", "-j", "-4", "addr", "show", "dev", dev)), &links); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			addrs = append(addrs, a.Local+"/"+strconv.Itoa(a.PrefixLen))
		}
	}
	var rs []struct{ Dst, Gateway string }
	if err := json.Unmarshal([]byte(ns.Run(t, "ip", "-j", "-4", "route", "show", "dev", dev)), &rs); err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Gateway != "" {
			r.Dst += " via " + r.Gateway
		}
		routes = append(routes, r.Dst)
	}
	return addrs, routes
}

// configNet runs pasta --config-net on pid's network namespace from h,
// with args, and forwards nothing that args do not name: it returns once
// pasta is ready.
func configNet(t *testing.T, h *Netns, pid string, args ...string) {
	t.Helper()
	argv := []string{"--config-net", "--quiet"}
	for _, opt := range []string{"-t", "-u", "-T", "-U"} {
		if !slices.Contains(args, opt) {
			argv = append(argv, opt, "none")
		}
	}
	argv = append(append(argv, args...), "--netns-only", pid)
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta %q: %v: %s", argv, err, out)
	}
}

// --config-net with -a: the namespace gets that address alone, with the
// prefix length given, else its class's (pasta's -n default), and still
// the host's routes, the kernel's prefix route among them, so that the
// host's gateway stays reachable from another subnet, as with pasta.
func TestPastaConfigNetAddress(t *testing.T) {
	needRoot(t)
	for _, c := range []struct{ addr, want string }{
		{"192.0.2.5/28", "192.0.2.5/28"},
		{"10.1.2.3", "10.1.2.3/8"},
		{"172.16.1.2", "172.16.1.2/16"},
	} {
		t.Run(c.addr, func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			ns, pid, _ := pidNetns(t, h)
			configNet(t, h, pid, "-4", "-a", c.addr)
			addrs, routes := nsAddrRoutes(t, ns, "uplink")
			if !slices.Equal(addrs, []string{c.want}) {
				t.Errorf("-a %s: addresses %q, want %s alone", c.addr, addrs, c.want)
			}
			if !slices.Contains(routes, "default via "+hostGW) || !slices.Contains(routes, "198.51.100.0/24") {
				t.Errorf("-a %s: routes %q, want the host's default and prefix routes", c.addr, routes)
			}
		})
	}
}

// --config-net with -m 0 assigns no MTU: the tap keeps the kernel's
// (1500), as pasta's, rather than gopasst's default.
func TestPastaConfigNetMTUZero(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid, "-m", "0")
	var links []struct{ MTU int }
	if err := json.Unmarshal([]byte(ns.Run(t, "ip", "-j", "link", "show", "dev", "uplink")), &links); err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].MTU != 1500 {
		t.Errorf("-m 0: the tap's %+v, want MTU 1500", links)
	}
}

// --config-net marks the tap's link-local address NODAD, having brought
// the link up without duplicate address detection, as pasta does.
func TestPastaConfigNetLinkLocalNoDAD(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	var links []struct {
		AddrInfo []struct {
			Local string `json:"local"`
			NoDAD bool   `json:"nodad"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ns.Run(t, "ip", "-j", "-6", "addr", "show", "dev", "uplink", "scope", "link")), &links); err != nil {
		t.Fatal(err)
	}
	ll := 0
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if strings.HasPrefix(a.Local, "fe80:") {
				if ll++; !a.NoDAD {
					t.Errorf("the tap's link-local address %s is not NODAD", a.Local)
				}
			}
		}
	}
	if ll != 1 {
		t.Errorf("the tap's link-local addresses: %+v, want one", links)
	}
	if flags := ns.Run(t, "ip", "-o", "link", "show", "dev", "uplink"); strings.Contains(flags, "NOARP") {
		t.Errorf("the tap is left NOARP: %s", flags)
	}
}

// A host with no IPv4 (its template has IPv6 alone) gives the namespace
// passt's local mode for IPv4, as pasta does: 169.254.2.1/16 via
// 169.254.2.2, which stands for the host's loopback.
func TestPastaConfigNetLocalMode4(t *testing.T) {
	needRoot(t)
	h := newUplinkHost(t)
	h.Run(t, "ip", "-6", "addr", "add", host6Addr+"/64", "dev", "uplink", "nodad")
	h.Run(t, "ip", "-6", "route", "add", "default", "via", host6GW, "dev", "uplink")
	h.WriteEtc(t, "resolv.conf", "nameserver "+hostDNS+"\n")
	srv := h.Listen(t, "tcp", "127.0.0.1:0")
	echoGreeting(srv, "host loopback")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	addrs, routes := nsAddrRoutes(t, ns, "uplink")
	if !slices.Equal(addrs, []string{"169.254.2.1/16"}) || !slices.Contains(routes, "default via 169.254.2.2") {
		t.Errorf("IPv4 without a template: addresses %q, routes %q; want 169.254.2.1/16 via 169.254.2.2", addrs, routes)
	}
	if got := readGreeting(func() (net.Conn, error) {
		return ns.Dial("tcp", "169.254.2.2:"+port(srv.Addr()), 5*time.Second)
	}); got != "host loopback" {
		t.Errorf("169.254.2.2 answered %q, not the host's loopback", got)
	}
}

// A host with no default route takes, as pasta does, the interface with
// routes as the template: the namespace gets its name, addresses and
// routes, and no default route.
func TestPastaConfigNetNoDefaultRoute(t *testing.T) {
	needRoot(t)
	h := newUplinkHost(t)
	h.Run(t, "ip", "addr", "add", hostAddr+"/24", "dev", "uplink")
	h.Run(t, "ip", "route", "add", "203.0.113.0/24", "via", hostGW)
	h.Run(t, "ip", "-6", "addr", "add", host6Addr+"/64", "dev", "uplink", "nodad")
	h.Run(t, "ip", "-6", "route", "add", "2001:db8:77::/48", "via", host6GW)
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	addrs, routes := nsAddrRoutes(t, ns, "uplink")
	if !slices.Equal(addrs, []string{hostAddr + "/24"}) || !slices.Contains(routes, "203.0.113.0/24 via "+hostGW) {
		t.Errorf("IPv4: addresses %q, routes %q; want %s/24 and the route to 203.0.113.0/24", addrs, routes, hostAddr)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "dev", "uplink"); !strings.Contains(got, "2001:db8:77::/48 via "+host6GW) {
		t.Errorf("IPv6 routes %q, want the route to 2001:db8:77::/48", got)
	}
	for _, family := range []string{"-4", "-6"} {
		if got := ns.Run(t, "ip", family, "route", "show", "default"); got != "" {
			t.Errorf("a default route the host lacks: %q", got)
		}
	}
}

// A host with no IPv6 gives the namespace passt's local mode for IPv6,
// as pasta does: its link-local address alone, and a default route via
// fe80::1, which stands for the host's loopback.
func TestPastaConfigNetLocalMode6(t *testing.T) {
	needRoot(t)
	h := newUplinkHost(t)
	h.Run(t, "ip", "addr", "add", hostAddr+"/24", "dev", "uplink")
	h.Run(t, "ip", "route", "add", "default", "via", hostGW)
	h.WriteEtc(t, "resolv.conf", "nameserver "+hostDNS+"\n")
	srv := h.Listen(t, "tcp", "[::1]:0")
	echoGreeting(srv, "host loopback")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	if got := ns.Run(t, "ip", "-6", "addr", "show", "dev", "uplink", "scope", "global"); got != "" {
		t.Errorf("IPv6 without a template: global addresses %q", got)
	}
	if got := ns.Run(t, "ip", "-6", "addr", "show", "dev", "uplink", "scope", "link"); !strings.Contains(got, "nodad") {
		t.Errorf("IPv6 without a template: link-local address %q, want it NODAD", got)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "default"); !strings.HasPrefix(got, "default via fe80::1 dev uplink ") || strings.Contains(got, "onlink") {
		t.Errorf("IPv6 without a template: default route %q, want via fe80::1, as pasta says it", got)
	}
	if got := readGreeting(func() (net.Conn, error) {
		return ns.Dial("tcp", "[fe80::1%uplink]:"+port(srv.Addr()), 5*time.Second)
	}); got != "host loopback" {
		t.Errorf("fe80::1 answered %q, not the host's loopback", got)
	}
}

// An IPv6 client of a -t port, from outside the namespace's prefix,
// reaches the namespace over IPv6 with its own address, as with pasta,
// which configured the namespace's IPv6: not over IPv4 from the gateway
// until the namespace first sends over IPv6. So it does where the
// template lists a deprecated address first (an old temporary one), which
// pasta does not copy: the guest's address is not that one, as in passt.
func TestPastaConfigNetInboundIPv6(t *testing.T) {
	needRoot(t)
	for _, deprecated := range []bool{false, true} {
		t.Run(fmt.Sprint("deprecated=", deprecated), func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			h.Run(t, "ip", "-6", "addr", "add", "2001:db8:99::5/128", "dev", "lo")
			if deprecated {
				h.Run(t, "ip", "-6", "addr", "add", "2001:db8:1::3/64", "dev", "uplink", "nodad", "preferred_lft", "0")
			}
			ns, pid, _ := pidNetns(t, h)
			srv := ns.Listen(t, "tcp", ":18095")
			acceptLoop(srv, func(c net.Conn) { io.WriteString(c, c.RemoteAddr().String()+"\n"); c.Close() })
			configNet(t, h, pid, "-t", "18095")
			got := readGreeting(func() (net.Conn, error) {
				var c net.Conn
				var err error
				h.Do(t, func() {
					d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("2001:db8:99::5")}}
					c, err = d.Dial("tcp", "["+host6Addr+"]:18095")
				})
				return c, err
			})
			if host, _, _ := net.SplitHostPort(got); host != "2001:db8:99::5" {
				t.Errorf("the namespace's server saw the client as %q, want 2001:db8:99::5", got)
			}
		})
	}
}

// --config-net copies the host's addresses as pasta does: not a
// deprecated one (an old temporary address), and with their flags, so
// that a noprefixroute address brings no prefix route the host lacks.
func TestPastaConfigNetAddressFlags(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	h.Run(t, "ip", "addr", "add", "203.0.113.5/24", "dev", "uplink", "noprefixroute")
	h.Run(t, "ip", "-6", "addr", "add", "2001:db8:3::5/64", "dev", "uplink", "nodad", "preferred_lft", "0")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	var links []struct {
		AddrInfo []struct {
			Local         string `json:"local"`
			NoPrefixRoute bool   `json:"noprefixroute"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(ns.Run(t, "ip", "-j", "addr", "show", "dev", "uplink")), &links); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			got[a.Local] = a.NoPrefixRoute
		}
	}
	if npr, ok := got["203.0.113.5"]; !ok || !npr {
		t.Errorf("203.0.113.5 copied %v, noprefixroute %v; want both", ok, npr)
	}
	if _, ok := got["2001:db8:3::5"]; ok {
		t.Error("the deprecated 2001:db8:3::5 was copied")
	}
	if _, routes := nsAddrRoutes(t, ns, "uplink"); slices.Contains(routes, "203.0.113.0/24") {
		t.Errorf("routes %q: a prefix route for the noprefixroute address", routes)
	}
}

// --config-net copies a host route's metrics (its MTU), IPv6 router
// preference and IPv6 source prefix ("from", which was dropped, and the
// route widened), as pasta does.
func TestPastaConfigNetRouteAttributes(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	h.Run(t, "ip", "route", "add", "192.0.2.0/24", "via", "198.51.100.3", "mtu", "1400")
	h.Run(t, "ip", "-6", "route", "add", "2001:db8:77::/48", "via", "2001:db8:1::99", "pref", "high")
	h.Run(t, "ip", "-6", "route", "add", "2001:db8:66::/48", "from", "2001:db8:1::/64", "via", "2001:db8:1::98")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	if got := ns.Run(t, "ip", "route", "show", "192.0.2.0/24"); !strings.Contains(got, "mtu 1400") {
		t.Errorf("the route to 192.0.2.0/24 in the namespace: %q, want mtu 1400", got)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "2001:db8:77::/48"); !strings.Contains(got, "pref high") {
		t.Errorf("the route to 2001:db8:77::/48 in the namespace: %q, want pref high", got)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "2001:db8:66::/48"); !strings.Contains(got, "from 2001:db8:1::/64") {
		t.Errorf("the route to 2001:db8:66::/48 in the namespace: %q, want from 2001:db8:1::/64", got)
	}
}

// A host's multipath default route is copied with its paths and their
// weights, as pasta copies it, for each family, and the gateway that
// stands for the host's loopback is pasta's: the path of greatest weight.
func TestPastaConfigNetMultipathDefault(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	h.Run(t, "ip", "route", "replace", "default", "nexthop", "via", hostGW, "weight", "1", "nexthop", "via", "198.51.100.5", "weight", "2")
	h.Run(t, "ip", "-6", "route", "replace", "default", "nexthop", "via", host6GW, "weight", "1", "nexthop", "via", "2001:db8:1::5", "weight", "2")
	srv := h.Listen(t, "tcp", "127.0.0.1:0")
	echoGreeting(srv, "host loopback")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	for _, c := range []struct{ family, gw1, gw2 string }{{"-4", hostGW, "198.51.100.5"}, {"-6", host6GW, "2001:db8:1::5"}} {
		got := ns.Run(t, "ip", c.family, "route", "show", "default")
		for _, hop := range []string{"nexthop via " + c.gw1 + " dev uplink weight 1", "nexthop via " + c.gw2 + " dev uplink weight 2"} {
			if !strings.Contains(got, hop) {
				t.Errorf("the namespace's %s default route: %q, want %q", c.family, got, hop)
			}
		}
	}
	if got := readGreeting(func() (net.Conn, error) {
		return ns.Dial("tcp", "198.51.100.5:"+port(srv.Addr()), 5*time.Second)
	}); got != "host loopback" {
		t.Errorf("198.51.100.5 answered %q, not the host's loopback", got)
	}
}

// A template without carrier (a cable unplugged, a VPN's tun that no
// process holds) has routes the kernel marks linkdown, a flag it reports
// but refuses in a new route: pasta copies them without it, as upstream
// does, instead of failing to start.
func TestPastaConfigNetLinkDown(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	h.Run(t, "ip", "link", "set", "uplink-peer", "down")
	if got := h.Run(t, "ip", "route", "show", "default"); !strings.Contains(got, "linkdown") {
		t.Fatalf("the host's default route %q is not linkdown", got)
	}
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	addrs, routes := nsAddrRoutes(t, ns, "uplink")
	if !slices.Equal(addrs, []string{hostAddr + "/" + hostPrefix}) || !slices.Contains(routes, "default via "+hostGW) {
		t.Errorf("addresses %q, routes %q; want %s/%s via %s", addrs, routes, hostAddr, hostPrefix, hostGW)
	}
	if got := ns.Run(t, "ip", "-6", "route", "show", "default"); !strings.Contains(got, "via "+host6GW) {
		t.Errorf("IPv6 default route %q, want via %s", got, host6GW)
	}
}

// A point-to-point template (WireGuard, a VPN's tun, PPP) has a default
// route with no gateway: the namespace gets it as it is, as with pasta,
// and reaches the host's addresses through it, every one answered for.
func TestPastaConfigNetPointToPoint(t *testing.T) {
	needRoot(t)
	h := newNetns(t, "gph")
	h.Run(t, "ip", "tuntap", "add", "tun0", "mode", "tun")
	h.Run(t, "ip", "link", "set", "tun0", "up")
	h.Run(t, "ip", "addr", "add", "10.8.0.2/32", "peer", "10.8.0.1", "dev", "tun0")
	h.Run(t, "ip", "-6", "addr", "add", "fd00:8::2/128", "dev", "tun0")
	h.Run(t, "ip", "route", "add", "default", "dev", "tun0")
	h.Run(t, "ip", "-6", "route", "add", "default", "dev", "tun0")
	h.Run(t, "ip", "addr", "add", "192.0.2.77/32", "dev", "lo")
	srv := h.Listen(t, "tcp", "192.0.2.77:0")
	echoGreeting(srv, "host")
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	addrs, routes := nsAddrRoutes(t, ns, "tun0")
	if !slices.Equal(addrs, []string{"10.8.0.2/32"}) || !slices.Contains(routes, "default") {
		t.Errorf("addresses %q, routes %q; want 10.8.0.2/32 and a default route without a gateway", addrs, routes)
	}
	if got := readGreeting(func() (net.Conn, error) {
		return ns.Dial("tcp", "192.0.2.77:"+port(srv.Addr()), 5*time.Second)
	}); got != "host" {
		t.Errorf("192.0.2.77 answered %q, not the host", got)
	}
}

// A template with thousands of routes (a BGP-fed or docker-heavy host)
// has them all in the namespace: the agent's plan went in its
// environment, where nsenter's exec refused it past 128 KiB (E2BIG,
// from about 850 routes). Upstream's pasta fails from about 500 ("Too
// many routes to duplicate").
func TestPastaConfigNetManyRoutes(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	const n = 1500
	var b4, b6 strings.Builder
	for i := range n {
		fmt.Fprintf(&b4, "route add 10.%d.%d.0/24 via 198.51.100.%d\n", i/250, i%250, 3+i%200)
		fmt.Fprintf(&b6, "route add 2001:db8:8:%x::/64 via 2001:db8:1::%x\n", i, 3+i%200)
	}
	dir := t.TempDir()
	for _, b := range []struct{ family, name, text string }{{"-4", "routes4", b4.String()}, {"-6", "routes6", b6.String()}} {
		path := filepath.Join(dir, b.name)
		if err := os.WriteFile(path, []byte(b.text), 0o644); err != nil {
			t.Fatal(err)
		}
		h.Run(t, "ip", b.family, "-batch", path)
	}
	ns, pid, _ := pidNetns(t, h)
	configNet(t, h, pid)
	for _, c := range []struct{ family, prefix, gw string }{{"-4", "10.", hostGW}, {"-6", "2001:db8:8:", host6GW}} {
		got := ns.Run(t, "ip", c.family, "route", "show", "dev", "uplink")
		if m := strings.Count("\n"+got, "\n"+c.prefix); m != n || !strings.Contains(got, "default via "+c.gw) {
			t.Errorf("%s: %d of the host's %d routes, default route %v", c.family, m, n, strings.Contains(got, "default via "+c.gw))
		}
	}
}
