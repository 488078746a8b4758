package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/gopasst/gopasst/pkg/slirp"
)

// Network configuration, copied from the host the way passt does it: for
// each family, the guest gets the address and default gateway of the
// host's template interface (the one with that family's default route, or
// --interface), and the host's resolvers. A family the host does not have
// is left out; only a host with neither is an error.

// hostFiles are where the host's routes and resolvers are read from
// (replaced in tests).
type hostFiles struct {
	route4, route6, resolv string
}

var procFiles = hostFiles{"/proc/net/route", "/proc/net/ipv6_route", "/etc/resolv.conf"}

// defaultRoute4 reads the IPv4 default route from /proc/net/route.
func defaultRoute4(routeFile string) (ifname string, gw netip.Addr, err error) {
	err = scanFields(routeFile, func(fl []string) bool {
		if len(fl) < 8 || fl[1] != "00000000" || fl[7] != "00000000" {
			return false
		}
		b, err := hex.DecodeString(fl[2])
		if err != nil || len(b) != 4 {
			return false
		}
		var a [4]byte
		binary.LittleEndian.PutUint32(a[:], binary.BigEndian.Uint32(b))
		ifname, gw = fl[0], netip.AddrFrom4(a)
		return true
	})
	if err == nil && !gw.IsValid() {
		err = errors.New("no IPv4 default route")
	}
	return ifname, gw, err
}

// rtfGateway is RTF_GATEWAY: the route goes through a next hop.
const rtfGateway = 0x2

// defaultRoute6 reads the IPv6 default route with the lowest metric from
// /proc/net/ipv6_route (the kernel's own unreachable defaults on lo have
// no next hop and are skipped).
func defaultRoute6(routeFile string) (ifname string, gw netip.Addr, err error) {
	best := uint64(1 << 32)
	err = scanFields(routeFile, func(fl []string) bool {
		if len(fl) < 10 || fl[0] != strings.Repeat("0", 32) || fl[1] != "00" {
			return false
		}
		flags, err1 := strconv.ParseUint(fl[8], 16, 32)
		metric, err2 := strconv.ParseUint(fl[5], 16, 32)
		hop, err3 := hex.DecodeString(fl[4])
		if err1 != nil || err2 != nil || err3 != nil || len(hop) != 16 || flags&rtfGateway == 0 || metric >= best {
			return false
		}
		best, ifname, gw = metric, fl[9], netip.AddrFrom16([16]byte(hop))
		return false // keep looking for a lower metric
	})
	if err == nil && !gw.IsValid() {
		err = errors.New("no IPv6 default route")
	}
	return ifname, gw, err
}

// scanFields calls fn with the fields of each line of path until fn
// reports true.
func scanFields(path string, fn func([]string) bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fn(strings.Fields(s.Text())) {
			break
		}
	}
	return s.Err()
}

// ifaceAddrs returns the first address of an interface that keep accepts.
func ifaceAddr(name string, keep func(netip.Addr) bool) netip.Prefix {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Prefix{}
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(n.String()); err == nil && keep(p.Addr()) {
				return p
			}
		}
	}
	return netip.Prefix{}
}

func isGlobal6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.IsGlobalUnicast()
}

// resolvConf holds the parts of resolv.conf gopasst uses.
type resolvConf struct {
	servers []netip.Addr
	search  []string
}

func readResolvConf(path string) resolvConf {
	var rc resolvConf
	scanFields(path, func(fl []string) bool {
		if len(fl) < 2 {
			return false
		}
		switch fl[0] {
		case "nameserver":
			// A scoped address (fe80::1%eth0) names the host's link,
			// which the guest's is not: leave it out.
			if a, err := netip.ParseAddr(fl[1]); err == nil && a.Zone() == "" {
				rc.servers = append(rc.servers, a.Unmap())
			}
		case "search", "domain":
			rc.search = fl[1:]
		}
		return false
	})
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

// parseAddrs parses the values of an address option (--address,
// --gateway, --dns, --dns-forward) into IPv4 and IPv6 addresses; the last
// of each family wins where only one is wanted.
func parseAddrs(opt string, vals []string) (v4, v6 []netip.Addr, err error) {
	for _, s := range vals {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, nil, fmt.Errorf("--%s: invalid address %q", opt, s)
		}
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	return v4, v6, nil
}

func last(a []netip.Addr) netip.Addr {
	if len(a) == 0 {
		return netip.Addr{}
	}
	return a[len(a)-1]
}

// family is what one address family needs from the host and options.
type family struct {
	name   string
	route  func(string) (string, netip.Addr, error)
	file   string
	keep   func(netip.Addr) bool
	addrs  []netip.Addr // from --address
	gws    []netip.Addr // from --gateway
	bits   int          // prefix when --address gives the only address
	ifname string       // the template interface, filled by pick
}

// pick chooses the guest's address and gateway for one family: the
// options where given, else the template interface's. It returns why the
// family is unavailable, or nil.
func (f *family) pick(iface string) (netip.Prefix, netip.Addr, error) {
	ifname, gw, routeErr := f.route(f.file)
	if iface != "" {
		if ifname != iface {
			gw = netip.Addr{}
		}
		ifname = iface
	}
	f.ifname = ifname
	var addr netip.Prefix
	if ifname != "" {
		addr = ifaceAddr(ifname, f.keep)
	}
	if a := last(f.addrs); a.IsValid() {
		bits := f.bits
		if addr.IsValid() {
			bits = addr.Bits()
		}
		addr = netip.PrefixFrom(a, bits)
	}
	if g := last(f.gws); g.IsValid() {
		gw = g
	}
	if addr.IsValid() && gw.IsValid() {
		return addr, gw, nil
	}
	why := "no template interface"
	if routeErr != nil && iface == "" {
		why = routeErr.Error()
	} else if !addr.IsValid() {
		why = "interface " + ifname + " has no " + f.name + " address"
	}
	return addr, gw, errors.New(why)
}

// netSetup is the engine's Config and what the daemon should log about
// how it was chosen (a family left out, and why).
type netSetup struct {
	slirp.Config
	notes []string
}

// buildConfig turns options and host state into the engine's Config.
func buildConfig(o *NetOptions, files hostFiles) (netSetup, error) {
	var notes []string
	cfg := slirp.Config{
		MTU: o.MTU, Search: o.Search, Hostname: o.Hostname, FQDN: o.FQDN,
		NoDHCP: o.NoDHCP, NoMapGW: o.NoMapGW, NoTCP: o.NoTCP, NoUDP: o.NoUDP,
		NoICMP: o.NoICMP,
		NoNDP:  o.NoNDP, NoRA: o.NoRA, NoDHCPv6: o.NoDHCPv6,
		MaxTCP: o.MaxTCP, MaxUDP: o.MaxUDP, MaxICMP: o.MaxICMP,
	}
	if o.MTU < 576 || o.MTU > slirp.DefaultMTU {
		return netSetup{}, fmt.Errorf("--mtu: %d is out of range 576-%d", o.MTU, slirp.DefaultMTU)
	}
	if o.IPv4 && o.IPv6 {
		return netSetup{}, errors.New("-4 and -6 leave no address family")
	}
	mac, err := net.ParseMAC(o.MAC)
	if err != nil || len(mac) != 6 {
		return netSetup{}, fmt.Errorf("--mac-addr: invalid MAC address %q", o.MAC)
	}
	copy(cfg.OurMAC[:], mac)
	if o.Interface != "" {
		if _, err := net.InterfaceByName(o.Interface); err != nil {
			return netSetup{}, fmt.Errorf("--interface: %v", err)
		}
	}
	addr4, addr6, err := parseAddrs("address", o.Address)
	if err != nil {
		return netSetup{}, err
	}
	gw4, gw6, err := parseAddrs("gateway", o.Gateway)
	if err != nil {
		return netSetup{}, err
	}

	if !o.IPv6 {
		f := family{name: "IPv4", route: defaultRoute4, file: files.route4, keep: netip.Addr.Is4,
			addrs: addr4, gws: gw4, bits: 24}
		p, gw, why := f.pick(o.Interface)
		if o.Netmask != "" && p.IsValid() {
			bits, err := parseNetmask(o.Netmask)
			if err != nil {
				return netSetup{}, fmt.Errorf("--netmask: %v", err)
			}
			p = netip.PrefixFrom(p.Addr(), bits)
		}
		if why == nil {
			cfg.Addr4, cfg.Prefix4, cfg.Gateway4 = p.Addr(), p.Bits(), gw
		} else {
			notes = append(notes, "IPv4 off: "+why.Error())
		}
	}
	if !o.IPv4 {
		f := family{name: "IPv6", route: defaultRoute6, file: files.route6, keep: isGlobal6,
			addrs: addr6, gws: gw6, bits: 64}
		p, gw, why := f.pick(o.Interface)
		if why == nil && o.MTU < 1280 {
			why = fmt.Errorf("--mtu %d is below IPv6's minimum of 1280", o.MTU)
		}
		if why == nil {
			cfg.Addr6, cfg.Gateway6 = p.Addr(), gw
			cfg.OurLL6 = ourLinkLocal(gw, f.ifname)
		} else {
			notes = append(notes, "IPv6 off: "+why.Error())
		}
	}
	if !cfg.Addr4.IsValid() && !cfg.Addr6.IsValid() {
		return netSetup{}, fmt.Errorf("cannot pick the guest's addresses and gateways (%s): use --address and --gateway",
			strings.Join(notes, "; "))
	}

	rc := readResolvConf(files.resolv)
	if len(cfg.Search) == 0 {
		cfg.Search = rc.search
	}
	if len(cfg.Search) == 1 && cfg.Search[0] == "none" {
		cfg.Search = nil
	}
	err = dnsConfig(&cfg, o, rc)
	return netSetup{cfg, notes}, err
}

// ourLinkLocal is gopasst's link-local address, as passt picks it: the
// gateway's when that is link-local (so the guest's router is the host's),
// else the template interface's, else fe80::1.
func ourLinkLocal(gw netip.Addr, ifname string) netip.Addr {
	if gw.IsLinkLocalUnicast() {
		return gw.WithZone("")
	}
	if p := ifaceAddr(ifname, netip.Addr.IsLinkLocalUnicast); p.IsValid() {
		return p.Addr().WithZone("")
	}
	return netip.MustParseAddr("fe80::1")
}

// dnsConfig decides what resolvers the guest is told about, per family,
// and where its queries really go. A loopback resolver is unreachable
// from the guest by its own address, so the guest is given a stand-in
// (--dns-forward, or the gateway) whose queries the engine redirects to
// it. An IPv6 stand-in may lead to an IPv4 resolver: a guest with IPv6
// alone still resolves through systemd-resolved's 127.0.0.53.
func dnsConfig(cfg *slirp.Config, o *NetOptions, rc resolvConf) error {
	cfg.DNSMap = map[netip.Addr]netip.AddrPort{}
	fwd4, fwd6, err := parseAddrs("dns-forward", o.DNSForward)
	if err != nil {
		return err
	}
	explicit := len(o.DNS) > 0
	var dns4, dns6 []netip.Addr
	if explicit && !(len(o.DNS) == 1 && o.DNS[0] == "none") {
		if dns4, dns6, err = parseAddrs("dns", o.DNS); err != nil {
			return err
		}
	}
	if cfg.Addr4.IsValid() {
		cfg.DNS4 = guestResolvers(cfg, rc.servers, cfg.Gateway4, last(fwd4), dns4, explicit)
	}
	if cfg.Addr6.IsValid() {
		cfg.DNS6 = guestResolvers(cfg, rc.servers, cfg.Gateway6, last(fwd6), dns6, explicit)
	}
	return nil
}

// guestResolvers picks the resolvers of gateway's family for the guest
// and records the stand-ins it needs in cfg.DNSMap.
func guestResolvers(cfg *slirp.Config, host []netip.Addr, gateway, fwd netip.Addr, given []netip.Addr, explicit bool) []netip.Addr {
	is6 := gateway.Is6()
	// Resolvers a host socket of this family can reach: an IPv6 socket is
	// dual-stack, an IPv4 one is not.
	var reach []netip.Addr
	for _, s := range host {
		if is6 || s.Is4() {
			reach = append(reach, s)
		}
	}
	if fwd.IsValid() && len(reach) > 0 {
		cfg.DNSMap[fwd] = netip.AddrPortFrom(reach[0], 53)
	}
	if explicit {
		return given
	}
	if fwd.IsValid() {
		return []netip.Addr{fwd}
	}
	var out []netip.Addr
	for _, s := range reach {
		// A resolver at the gateway's own address (a home router) is
		// shadowed: to the guest that address is the host's loopback. As
		// passt does, the gateway then stands in for the real resolver.
		shadowed := s == gateway && !cfg.NoMapGW
		switch {
		case !s.IsLoopback() && !shadowed:
			if s.Is6() == is6 {
				out = append(out, s)
			}
		case cfg.NoMapGW:
			// unreachable without a stand-in
		case cfg.DNSMap[gateway] == netip.AddrPort{}:
			cfg.DNSMap[gateway] = netip.AddrPortFrom(s, 53)
			out = append(out, gateway)
		}
	}
	return out
}
