package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp"
)

func TestDefaultRoute6(t *testing.T) {
	ifname, gw, err := defaultRoute6("testdata/ipv6_route")
	// The lowest metric wins; lo's unreachable default has no next hop.
	if err != nil || ifname != "wlan0" || gw != netip.MustParseAddr("fe80::1") {
		t.Fatalf("got %s via %v, %v; want wlan0 via fe80::1", ifname, gw, err)
	}
	if _, _, err := defaultRoute6("/nonexistent"); err == nil {
		t.Fatal("no error for a missing route file")
	}
}

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

// TestBuildConfigFamilies: addresses given for one family only, and -4/-6.
func TestBuildConfigFamilies(t *testing.T) {
	files := hostFiles{"/nonexistent", "/nonexistent", "/nonexistent"}
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
	if err != nil || ns.Addr4.IsValid() || ns.Addr6.String() != "2001:db8::5" || ns.OurLL6.String() != "fe80::1" {
		t.Fatalf("IPv6 from options: %+v, %v", ns.Config, err)
	}
	if len(ns.notes) != 1 || !strings.HasPrefix(ns.notes[0], "IPv4 off:") {
		t.Errorf("notes %q", ns.notes)
	}
	o := base("-a", "192.0.2.9", "-g", "192.0.2.1", "-a", "2001:db8::5", "-g", "2001:db8::1")
	o.IPv4 = true
	if ns, err := buildConfig(o, files); err != nil || ns.Addr6.IsValid() || ns.Addr4.String() != "192.0.2.9" {
		t.Errorf("-4: %+v, %v", ns.Config, err)
	}
	o.IPv6 = true
	if _, err := buildConfig(o, files); err == nil {
		t.Error("-4 with -6 accepted")
	}
	o = base("-a", "2001:db8::5", "-g", "2001:db8::1")
	o.MTU = 1000
	if _, err := buildConfig(o, files); err == nil || !strings.Contains(err.Error(), "1280") {
		t.Errorf("IPv6 alone below its minimum MTU: %v", err)
	}
	if _, err := buildConfig(base(), files); err == nil {
		t.Error("no family at all accepted")
	}
}
