package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/gopasst/gopasst/pkg/slirp"
)

// Network configuration, copied from the host the way passt does it: the
// guest gets the address, prefix and default gateway of the host's
// template interface (the one with the default route, or --interface), and
// the host's resolvers.

// defaultRoute4 reads the IPv4 default route from /proc/net/route.
func defaultRoute4(routeFile string) (ifname string, gw netip.Addr, err error) {
	f, err := os.Open(routeFile)
	if err != nil {
		return "", gw, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 8 || fl[1] != "00000000" || fl[7] != "00000000" {
			continue
		}
		b, err := hex.DecodeString(fl[2])
		if err != nil || len(b) != 4 {
			continue
		}
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], binary.BigEndian.Uint32(b))
		return fl[0], netip.AddrFrom4(a), nil
	}
	return "", gw, fmt.Errorf("no IPv4 default route")
}

// ifaceAddr4 returns the first IPv4 address and prefix of an interface.
func ifaceAddr4(name string) (netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil && p.Addr().Is4() {
				return p, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("interface %s has no IPv4 address", name)
}

// resolvConf holds the parts of resolv.conf gopasst uses.
type resolvConf struct {
	servers []netip.Addr
	search  []string
}

func readResolvConf(path string) resolvConf {
	var rc resolvConf
	f, err := os.Open(path)
	if err != nil {
		return rc
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 2 {
			continue
		}
		switch fl[0] {
		case "nameserver":
			if a, err := netip.ParseAddr(fl[1]); err == nil {
				rc.servers = append(rc.servers, a.Unmap())
			}
		case "search", "domain":
			rc.search = fl[1:]
		}
	}
	return rc
}

// parseNetmask accepts a prefix length or a dotted mask.
func parseNetmask(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n <= 32 {
		return n, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("invalid netmask %q", s)
	}
	m := binary.BigEndian.Uint32(a.AsSlice())
	ones := 0
	for m&0x80000000 != 0 {
		ones++
		m <<= 1
	}
	if m != 0 {
		return 0, fmt.Errorf("non-contiguous netmask %q", s)
	}
	return ones, nil
}

// buildConfig turns options and host state into the engine's Config.
func buildConfig(o *Options, routeFile, resolvFile string) (slirp.Config, error) {
	cfg := slirp.Config{
		MTU: o.MTU, Search: o.Search, Hostname: o.Hostname, FQDN: o.FQDN,
		NoDHCP: o.NoDHCP, NoMapGW: o.NoMapGW, NoTCP: o.NoTCP, NoUDP: o.NoUDP,
		NoICMP: o.NoICMP, OneOff: o.OneOff,
	}
	if o.MTU < 576 || o.MTU > slirp.DefaultMTU {
		return cfg, fmt.Errorf("--mtu: %d is out of range 576-%d", o.MTU, slirp.DefaultMTU)
	}
	mac, err := net.ParseMAC(o.MAC)
	if err != nil || len(mac) != 6 {
		return cfg, fmt.Errorf("--mac-addr: invalid MAC address %q", o.MAC)
	}
	copy(cfg.OurMAC[:], mac)

	ifname, gw, routeErr := defaultRoute4(routeFile)
	if o.Interface != "" {
		if _, err := net.InterfaceByName(o.Interface); err != nil {
			return cfg, fmt.Errorf("--interface: %v", err)
		}
		if ifname != o.Interface {
			gw = netip.Addr{}
		}
		ifname = o.Interface
	}
	var addr netip.Prefix
	if ifname != "" {
		addr, _ = ifaceAddr4(ifname)
	}
	for _, a := range o.Address {
		p, err := netip.ParseAddr(a)
		if err != nil {
			return cfg, fmt.Errorf("--address: invalid address %q", a)
		}
		if p.Is4() {
			bits := 24
			if addr.IsValid() {
				bits = addr.Bits()
			}
			addr = netip.PrefixFrom(p, bits)
		}
	}
	if o.Netmask != "" {
		bits, err := parseNetmask(o.Netmask)
		if err != nil {
			return cfg, fmt.Errorf("--netmask: %v", err)
		}
		addr = netip.PrefixFrom(addr.Addr(), bits)
	}
	for _, g := range o.Gateway {
		a, err := netip.ParseAddr(g)
		if err != nil {
			return cfg, fmt.Errorf("--gateway: invalid address %q", g)
		}
		if a.Is4() {
			gw = a
		}
	}
	if !addr.IsValid() || !gw.IsValid() {
		why := "no template interface"
		if routeErr != nil && o.Interface == "" {
			why = routeErr.Error()
		}
		return cfg, fmt.Errorf("cannot pick the guest's IPv4 address and gateway (%s): use --address and --gateway", why)
	}
	cfg.Addr4, cfg.Prefix4, cfg.Gateway4 = addr.Addr(), addr.Bits(), gw

	rc := readResolvConf(resolvFile)
	if len(cfg.Search) == 0 {
		cfg.Search = rc.search
	}
	if len(cfg.Search) == 1 && cfg.Search[0] == "none" {
		cfg.Search = nil
	}
	return cfg, dnsConfig(&cfg, o, rc)
}

// dnsConfig decides what resolvers the guest is told about and where its
// queries really go. A loopback resolver is unreachable from the guest by
// its own address, so the guest is given a stand-in (--dns-forward, or the
// gateway) whose queries the engine redirects to it.
func dnsConfig(cfg *slirp.Config, o *Options, rc resolvConf) error {
	cfg.DNSMap = map[netip.Addr]netip.AddrPort{}
	var fwd netip.Addr
	if o.DNSForward != "" {
		a, err := netip.ParseAddr(o.DNSForward)
		if err != nil {
			return fmt.Errorf("--dns-forward: invalid address %q", o.DNSForward)
		}
		fwd = a
	}
	add := func(a netip.Addr) {
		for _, d := range cfg.DNS4 {
			if d == a {
				return
			}
		}
		cfg.DNS4 = append(cfg.DNS4, a)
	}
	var host4 []netip.Addr
	for _, s := range rc.servers {
		if s.Is4() {
			host4 = append(host4, s)
		}
	}
	if fwd.IsValid() && fwd.Is4() && len(host4) > 0 {
		cfg.DNSMap[fwd] = netip.AddrPortFrom(host4[0], 53)
	}
	if len(o.DNS) > 0 {
		for _, d := range o.DNS {
			if d == "none" {
				cfg.DNS4 = nil
				return nil
			}
			a, err := netip.ParseAddr(d)
			if err != nil {
				return fmt.Errorf("--dns: invalid address %q", d)
			}
			if a.Is4() {
				add(a)
			}
		}
		return nil
	}
	if fwd.IsValid() && fwd.Is4() {
		add(fwd)
		return nil
	}
	for _, s := range host4 {
		if !s.IsLoopback() {
			add(s)
			continue
		}
		if cfg.NoMapGW {
			continue // unreachable without a stand-in
		}
		if _, done := cfg.DNSMap[cfg.Gateway4]; !done {
			cfg.DNSMap[cfg.Gateway4] = netip.AddrPortFrom(s, 53)
			add(cfg.Gateway4)
		}
	}
	return nil
}
