package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp"
)

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// TestGuestResolvers: what each family's guest is told, and where a
// stand-in's queries go.
func TestGuestResolvers(t *testing.T) {
	gw4, gw6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	for _, c := range []struct {
		name     string
		host     []netip.Addr
		noMapGW  bool
		want4    []netip.Addr
		want6    []netip.Addr
		standIns map[netip.Addr]string
	}{
		{name: "systemd-resolved", host: addrs("127.0.0.53"),
			want4: addrs("192.0.2.1"), want6: addrs("2001:db8::1"),
			standIns: map[netip.Addr]string{gw4: "127.0.0.53:53", gw6: "127.0.0.53:53"}},
		{name: "mixed", host: addrs("::1", "192.0.2.53", "2001:db8::53"),
			want4: addrs("192.0.2.53"), want6: addrs("2001:db8::1", "2001:db8::53"),
			standIns: map[netip.Addr]string{gw6: "[::1]:53"}},
		{name: "no gateway mapping", host: addrs("127.0.0.53", "2001:db8::53"), noMapGW: true,
			want6: addrs("2001:db8::53"), standIns: map[netip.Addr]string{}},
		{name: "the router is the resolver", host: addrs("192.0.2.1", "2001:db8::1"),
			want4: addrs("192.0.2.1"), want6: addrs("2001:db8::1"),
			standIns: map[netip.Addr]string{gw4: "192.0.2.1:53", gw6: "[2001:db8::1]:53"}},
		{name: "the router is the resolver, no gateway mapping", host: addrs("192.0.2.1"), noMapGW: true,
			want4: addrs("192.0.2.1"), standIns: map[netip.Addr]string{}},
	} {
		cfg := slirp.Config{Addr4: netip.MustParseAddr("192.0.2.2"), Gateway4: gw4,
			Addr6: netip.MustParseAddr("2001:db8::2"), Gateway6: gw6, NoMapGW: c.noMapGW}
		if err := dnsConfig(&cfg, &NetOptions{}, resolvConf{servers: c.host}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.DNS4, c.want4) || !slices.Equal(cfg.DNS6, c.want6) {
			t.Errorf("%s: DNS4 %v DNS6 %v, want %v %v", c.name, cfg.DNS4, cfg.DNS6, c.want4, c.want6)
		}
		got := map[netip.Addr]string{}
		for k, v := range cfg.DNSMap {
			got[k] = v.String()
		}
		if len(got) != len(c.standIns) {
			t.Errorf("%s: stand-ins %v, want %v", c.name, got, c.standIns)
		}
		for k, v := range c.standIns {
			if got[k] != v {
				t.Errorf("%s: stand-in %v -> %s, want %s", c.name, k, got[k], v)
			}
		}
	}
}

// Without a default route, the template passt falls back to gives the
// guest its address and no gateway, and so no DHCP.
func TestBuildConfigRoutedTemplate(t *testing.T) {
	files := hostState{"/nonexistent", func(int, string) (string, netip.Addr) { return "lo", netip.Addr{} }}
	ns, err := buildConfig(&NetOptions{MTU: 65520, MAC: "9a:55:9a:55:9a:55"}, files)
	if err != nil || ns.Addr4.String() != "127.0.0.1" || ns.Prefix4 != 8 || ns.Gateway4.IsValid() || !ns.NoDHCP || ns.ifname4 != "lo" {
		t.Errorf("template lo without a default route: %v/%d via %v, DHCP off %v, template %q, %v; want 127.0.0.1/8, no gateway, no DHCP, lo",
			ns.Addr4, ns.Prefix4, ns.Gateway4, ns.NoDHCP, ns.ifname4, err)
	}
}

// TestBuildConfigFamilies: addresses given for one family only, and -4/-6.
func TestBuildConfigFamilies(t *testing.T) {
	files := hostState{"/nonexistent", nil}
	base := func(args ...string) *NetOptions {
		o := &NetOptions{MTU: 65520, MAC: "9a:55:9a:55:9a:55"}
		for i := 0; i+1 < len(args); i += 2 {
			switch args[i] {
			case "-a":
				o.Address = append(o.Address, args[i+1])
			case "-g":
				o.Gateway = append(o.Gateway, args[i+1])
			}
		}
		return o
	}
	ns, err := buildConfig(base("-a", "2001:db8::5", "-g", "fe80::1"), files)
	if err != nil || ns.Addr6.String() != "2001:db8::5" || ns.OurLL6.String() != "fe80::1" {
		t.Fatalf("IPv6 from options: %+v, %v", ns.Config, err)
	}
	// No IPv4 template: passt's local mode.
	if ns.Addr4.String() != "169.254.2.1" || ns.Prefix4 != 16 || ns.Gateway4.String() != "169.254.2.2" {
		t.Errorf("IPv4 without a template: %v/%d via %v, want 169.254.2.1/16 via 169.254.2.2", ns.Addr4, ns.Prefix4, ns.Gateway4)
	}
	if len(ns.notes) != 1 || !strings.HasPrefix(ns.notes[0], "IPv4 in local mode:") {
		t.Errorf("notes %q", ns.notes)
	}
	if ns, err := buildConfig(base("-a", "192.0.2.9"), files); err != nil || ns.Addr4.String() != "192.0.2.9" || ns.Gateway4.String() != "169.254.2.2" {
		t.Errorf("-a without a template: %v via %v, %v; want 192.0.2.9 via local mode's gateway", ns.Addr4, ns.Gateway4, err)
	}
	o := base("-a", "192.0.2.9", "-g", "192.0.2.1", "-a", "2001:db8::5", "-g", "2001:db8::1")
	o.IPv4 = true
	if ns, err := buildConfig(o, files); err != nil || ns.Addr6.IsValid() || ns.Addr4.String() != "192.0.2.9" {
		t.Errorf("-4: %+v, %v", ns.Config, err)
	}
	// As passt: a forward bound to the other family's address is refused.
	for _, spec := range []string{"::1/8080", "[2001:db8::5]/22"} {
		o.TCPPorts = []string{spec}
		if _, err := buildConfig(o, files); err == nil {
			t.Errorf("-4 -t %s accepted", spec)
		}
	}
	o.TCPPorts = []string{"127.0.0.1/8080"}
	if _, err := buildConfig(o, files); err != nil {
		t.Errorf("-4 -t 127.0.0.1/8080: %v", err)
	}
	o.IPv4, o.IPv6 = false, true
	if _, err := buildConfig(o, files); err == nil {
		t.Error("-6 -t 127.0.0.1/8080 accepted")
	}
	o.TCPPorts = nil
	o.IPv4 = true
	if _, err := buildConfig(o, files); err == nil {
		t.Error("-4 with -6 accepted")
	}
	// As passt: no forward of a disabled protocol, though "none" goes.
	o = base("-a", "192.0.2.9", "-g", "192.0.2.1")
	o.NoTCP, o.NoUDP = true, true
	for _, f := range []struct{ tcp, udp []string }{{[]string{"8080"}, nil}, {nil, []string{"none", "5353"}}} {
		o.TCPPorts, o.UDPPorts = f.tcp, f.udp
		if _, err := buildConfig(o, files); err == nil {
			t.Errorf("--no-tcp --no-udp -t %q -u %q accepted", f.tcp, f.udp)
		}
	}
	o.TCPPorts, o.UDPPorts = []string{"none"}, []string{"none"}
	if _, err := buildConfig(o, files); err != nil {
		t.Errorf("--no-tcp -t none: %v", err)
	}
	o = base("-a", "2001:db8::5", "-g", "2001:db8::1")
	o.MTU, o.IPv6 = 1000, true
	if _, err := buildConfig(o, files); err == nil || !strings.Contains(err.Error(), "1280") {
		t.Errorf("IPv6 alone below its minimum MTU: %v", err)
	}
	// -6 without IPv6: passt's local mode, the guest's link-local
	// address via fe80::1, and no DHCPv6, which would have none to give.
	o = base()
	o.IPv6 = true
	if ns, err := buildConfig(o, files); err != nil || !ns.Local6 || ns.Addr6.IsValid() || ns.Gateway6.String() != "fe80::1" ||
		ns.OurLL6.String() != "fe80::1" || !ns.NoDHCPv6 {
		t.Errorf("-6 without IPv6: %+v, %v; want local mode via fe80::1", ns.Config, err)
	}
	// As passt: an --outbound-if6 with no IPv6 to give is an error, not
	// local mode, unless IPv6 is off anyway.
	o = base()
	o.OutboundIf6 = "lo"
	if _, err := buildConfig(o, files); err == nil || !strings.Contains(err.Error(), "not usable") {
		t.Errorf("--outbound-if6 lo: %v, want not usable", err)
	}
	o.IPv4 = true
	if _, err := buildConfig(o, files); err != nil {
		t.Errorf("-4 --outbound-if6 lo: %v", err)
	}
}

// TestBuildConfigPasstOptions: passt's spellings of the address options,
// and --no-map-gw and --map-host-loopback none being one thing.
func TestBuildConfigPasstOptions(t *testing.T) {
	files := hostState{"testdata/resolv.conf", nil}
	build := func(o NetOptions) (slirp.Config, error) {
		o.MAC = "9a:55:9a:55:9a:55"
		o.Gateway = append(o.Gateway, "192.0.2.1", "2001:db8::1")
		if o.Address == nil {
			o.Address = []string{"192.0.2.2", "2001:db8::2"}
		}
		if o.MTU == -1 {
			o.MTU = 0
		} else if o.MTU == 0 {
			o.MTU = 65520
		}
		ns, err := buildConfig(&o, files)
		return ns.Config, err
	}
	a := netip.MustParseAddr
	if cfg, err := build(NetOptions{Address: []string{"192.0.2.9/26", "2001:db8::9/96"}}); err != nil ||
		cfg.Addr4 != a("192.0.2.9") || cfg.Prefix4 != 26 || cfg.Addr6 != a("2001:db8::9") {
		t.Errorf("-a ADDR/PLEN: %v/%d %v, %v", cfg.Addr4, cfg.Prefix4, cfg.Addr6, err)
	}
	// Without a prefix length, passt gives an IPv4 address its class's.
	for addr, bits := range map[string]int{"10.1.2.3": 8, "172.16.1.2": 16, "192.0.2.9": 24, "240.0.0.1": 32} {
		if cfg, err := build(NetOptions{Address: []string{addr}}); err != nil || cfg.Prefix4 != bits {
			t.Errorf("-a %s: prefix %d, want %d (%v)", addr, cfg.Prefix4, bits, err)
		}
	}
	for _, bad := range []NetOptions{
		{Address: []string{"192.0.2.9/24"}, Netmask: "24"},
		{Address: []string{"192.0.2.9/33"}},
		{Address: []string{"127.0.0.1"}},
		{Outbound: []string{"224.0.0.1"}},
		{MapHostLoopback: []string{"127.0.0.1"}},
		{MapGuestAddr: []string{"::"}},
		{DNSHost: []string{"resolver"}},
		{OutboundIf4: "no-such-interface0"},
		{MTU: 67},
	} {
		if _, err := build(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if cfg, err := build(NetOptions{MTU: 68}); err != nil || cfg.MTU != 68 || !cfg.Addr4.IsValid() || cfg.Addr6.IsValid() {
		t.Errorf("--mtu 68: MTU %d, IPv4 %v, IPv6 %v, %v", cfg.MTU, cfg.Addr4, cfg.Addr6, err)
	}
	if cfg, err := build(NetOptions{MTU: -1}); err != nil || cfg.MTU != slirp.DefaultMTU || !cfg.NoMTUOption {
		t.Errorf("-m 0: MTU %d, option left out %v, %v", cfg.MTU, cfg.NoMTUOption, err)
	}

	// The host's resolver is on loopback (testdata/resolv.conf): the
	// address standing for host loopback stands in for it.
	def, _ := build(NetOptions{})
	if def.HostLoopback(false) != a("192.0.2.1") || def.HostLoopback(true) != a("2001:db8::1") ||
		!slices.Equal(def.DNS4, addrs("192.0.2.1")) {
		t.Errorf("default: host loopback at %v and %v, DNS %v", def.HostLoopback(false), def.HostLoopback(true), def.DNS4)
	}
	moved, _ := build(NetOptions{MapHostLoopback: []string{"192.0.2.77"}, MapGuestAddr: []string{"2001:db8::88"}})
	if moved.HostLoopback(false) != a("192.0.2.77") || moved.HostLoopback(true) != a("2001:db8::1") ||
		!slices.Equal(moved.DNS4, addrs("192.0.2.77")) || moved.MapGuestAddr6 != a("2001:db8::88") {
		t.Errorf("--map-host-loopback 192.0.2.77: %v and %v, DNS %v", moved.HostLoopback(false), moved.HostLoopback(true), moved.DNS4)
	}
	noMap, _ := build(NetOptions{NoMapGW: true})
	none, _ := build(NetOptions{MapHostLoopback: []string{"none"}})
	for name, cfg := range map[string]slirp.Config{"--no-map-gw": noMap, "--map-host-loopback none": none} {
		if cfg.HostLoopback(false).IsValid() || cfg.HostLoopback(true).IsValid() || len(cfg.DNS4) != 0 {
			t.Errorf("%s: host loopback at %v and %v, DNS %v", name, cfg.HostLoopback(false), cfg.HostLoopback(true), cfg.DNS4)
		}
	}
	// An address after "none" maps its family alone, as in passt.
	if cfg, _ := build(NetOptions{MapHostLoopback: []string{"none", "192.0.2.77"}}); cfg.HostLoopback(false) != a("192.0.2.77") ||
		cfg.HostLoopback(true).IsValid() {
		t.Errorf("none, then 192.0.2.77: %v and %v", cfg.HostLoopback(false), cfg.HostLoopback(true))
	}

	cfg, _ := build(NetOptions{DNSForward: []string{"192.0.2.3"}, DNSHost: []string{"192.0.2.53"}, Search: []string{"a.example b.example", "c.example"}})
	if cfg.DNSMap[a("192.0.2.3")] != netip.MustParseAddrPort("192.0.2.53:53") || !slices.Equal(cfg.DNS4, addrs("192.0.2.3")) {
		t.Errorf("--dns-forward with --dns-host: DNS %v, map %v", cfg.DNS4, cfg.DNSMap)
	}
	if !slices.Equal(cfg.Search, []string{"a.example", "b.example", "c.example"}) {
		t.Errorf("-S takes space-separated lists: %q", cfg.Search)
	}
	if cfg, _ := build(NetOptions{DNSHost: []string{"192.0.2.53"}}); cfg.DNSMap[a("192.0.2.1")] != netip.MustParseAddrPort("192.0.2.53:53") {
		t.Errorf("--dns-host: the gateway's queries go to %v", cfg.DNSMap)
	}
	out, _ := build(NetOptions{Outbound: []string{"192.0.2.9", "2001:db8::9"}, OutboundIf4: "lo"})
	if out.Outbound4 != a("192.0.2.9") || out.Outbound6 != a("2001:db8::9") || out.OutboundIf4 != "lo" {
		t.Errorf("-o: %v %v %q", out.Outbound4, out.Outbound6, out.OutboundIf4)
	}
}
