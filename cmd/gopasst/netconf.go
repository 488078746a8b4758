package main

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gopasst/gopasst/pkg/rtnl"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// Network configuration, copied from the host the way passt does it: for
// each family, the guest gets the address and default gateway of the
// host's template interface (the one with that family's default route, or
// --interface, else the first with a route: then the guest has no
// gateway), and the host's resolvers. Without a template, the guest gets
// passt's local mode: 169.254.2.1/16 via 169.254.2.2 for IPv4, its
// link-local address via fe80::1 for IPv6.

// hostState is where the host's resolvers are read from and how a
// family's template interface and gateway are found (replaced in tests;
// no template without one).
type hostState struct {
	resolv   string
	template func(family int, ifname string) (string, netip.Addr)
}

var thisHost = hostState{"/etc/resolv.conf", hostTemplate}

// hostTemplate finds a family's template as passt does, unless ifname
// names it: the interface of the first default route, else the first
// with a route (loopback and routes to link-local addresses aside). The
// gateway is that of the template's first default route (of a multipath
// one, the last path of the greatest weight), or none.
func hostTemplate(family int, ifname string) (string, netip.Addr) {
	c, err := rtnl.Open()
	if err != nil {
		return ifname, netip.Addr{}
	}
	defer c.Close()
	routes, _ := c.Routes(family, 0)
	routes = slices.DeleteFunc(routes, func(r rtnl.Route) bool {
		return r.Type != unix.RTN_UNICAST || r.Index <= 1 || r.Dst.Bits() > 0 && r.Dst.Addr().IsLinkLocalUnicast()
	})
	index := 0
	if ifi, err := net.InterfaceByName(ifname); err == nil {
		index = ifi.Index
	} else if i := slices.IndexFunc(routes, func(r rtnl.Route) bool { return r.Dst.Bits() == 0 }); i >= 0 {
		index = routes[i].Index
	} else if len(routes) > 0 {
		index = routes[0].Index
	}
	if ifi, err := net.InterfaceByIndex(index); err == nil && ifname == "" {
		ifname = ifi.Name
	}
	for _, r := range routes {
		if r.Dst.Bits() > 0 || r.Index != index && !slices.ContainsFunc(r.Nexthops, func(h rtnl.Nexthop) bool { return h.Index == index }) {
			continue
		}
		gw, weight := r.Gateway, -1
		for _, h := range r.Nexthops {
			if int(h.Hops) >= weight && h.Gateway.IsValid() {
				gw, weight = h.Gateway, int(h.Hops)
			}
		}
		return ifname, gw
	}
	return ifname, netip.Addr{}
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

// ifaceAddr returns the first address of an interface that keep
// accepts, as the kernel lists them (IPv4's primary first), but not a
// deprecated one (an old temporary address), as passt: pasta does not
// copy those into the namespace, where inbound connections then went to
// an address it lacked. passt takes the one of the longest prefix: a /32
// alias (a floating address a cluster moves between hosts) over the
// address of the interface's own subnet; gopasst keeps the primary.
func ifaceAddr(name string, keep func(netip.Addr) bool) netip.Prefix {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Prefix{}
	}
	c, err := rtnl.Open()
	if err != nil {
		return netip.Prefix{}
	}
	defer c.Close()
	addrs, _ := c.Addrs(unix.AF_UNSPEC, ifi.Index)
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_DEPRECATED == 0 && keep(a.Prefix.Addr()) {
			return a.Prefix
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
			// A link-local address names its interface (fe80::1%eth0,
			// as NetworkManager writes a router's), kept by index for
			// the queries a stand-in leads there (forGuest).
			a, err := netip.ParseAddr(fl[1])
			if err != nil {
				break
			}
			if z := a.Zone(); z != "" && a.IsLinkLocalUnicast() {
				if ifi, err := net.InterfaceByName(z); err == nil {
					a = a.WithZone(strconv.Itoa(ifi.Index))
				} else if _, err := strconv.ParseUint(z, 10, 32); err != nil {
					break
				}
			} else {
				a = a.WithZone("")
			}
			rc.servers = append(rc.servers, a.Unmap())
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

// parseAddrs parses the values of an address option (--gateway, --dns,
// --dns-forward, ...) into IPv4 and IPv6 addresses; the last of each
// family wins where only one is wanted.
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

// parseAddress parses --address values, each ADDR or ADDR/PLEN as
// passt takes them; bits4 is the last IPv4 prefix length given (0 if
// none). An IPv6 prefix length is accepted and, as in passt, not used:
// the guest's prefix is always a /64.
func parseAddress(vals []string) (v4, v6 []netip.Addr, bits4 int, err error) {
	for _, s := range vals {
		a, plen, cidr := strings.Cut(s, "/")
		got4, got6, err := parseAddrs("address", []string{a})
		if err != nil {
			return nil, nil, 0, err
		}
		if ad := append(got4, got6...)[0]; ad.IsUnspecified() || ad.IsMulticast() || ad.IsLoopback() {
			return nil, nil, 0, fmt.Errorf("--address: invalid address %q", s)
		}
		if cidr {
			bits, err := strconv.Atoi(plen)
			if err != nil || bits < 0 || bits > map[bool]int{true: 32, false: 128}[len(got4) > 0] {
				return nil, nil, 0, fmt.Errorf("--address: invalid prefix length in %q", s)
			}
			if len(got4) > 0 {
				bits4 = bits
			}
		}
		v4, v6 = append(v4, got4...), append(v6, got6...)
	}
	return v4, v6, bits4, nil
}

// parseMap parses --map-host-loopback or --map-guest-addr: the last
// address of each family, in order, and "none", which unsets both and
// says so.
func parseMap(opt string, vals []string) (v4, v6 netip.Addr, none bool, err error) {
	for _, s := range vals {
		if s == "none" {
			v4, v6, none = netip.Addr{}, netip.Addr{}, true
			continue
		}
		a4, a6, err := parseAddrs(opt, []string{s})
		if err != nil {
			return v4, v6, none, err
		}
		if a := append(a4, a6...)[0]; a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() {
			return v4, v6, none, fmt.Errorf("--%s: %v cannot stand for the host", opt, a)
		}
		if len(a4) > 0 {
			v4 = a4[0]
		} else {
			v6 = a6[0]
		}
	}
	return v4, v6, none, nil
}

func last(a []netip.Addr) netip.Addr {
	if len(a) == 0 {
		return netip.Addr{}
	}
	return a[len(a)-1]
}

// family is what one address family needs from the host and options.
type family struct {
	name     string
	template func(ifname string) (string, netip.Addr)
	keep     func(netip.Addr) bool
	addrs    []netip.Addr         // from --address
	gws      []netip.Addr         // from --gateway
	bits     func(netip.Addr) int // the prefix of an --address given without one
	ifname   string               // the template interface, filled by pick
}

// pick chooses the guest's address and gateway for one family: the
// options where given, else the template interface's; a template with
// no default route leaves the guest without a gateway, as passt does. It
// returns why the family is unavailable, or nil.
func (f *family) pick(iface string) (netip.Prefix, netip.Addr, error) {
	ifname, gw := f.template(iface)
	f.ifname = ifname
	var addr netip.Prefix
	if ifname != "" {
		addr = ifaceAddr(ifname, f.keep)
	}
	if a := last(f.addrs); a.IsValid() {
		addr = netip.PrefixFrom(a, f.bits(a))
	}
	if g := last(f.gws); g.IsValid() {
		gw = g
	}
	if addr.IsValid() && (gw.IsValid() || ifname != "") {
		return addr, gw, nil
	}
	why := "no template interface"
	if ifname != "" {
		why = "interface " + ifname + " has no " + f.name + " address"
	}
	return addr, gw, errors.New(why)
}

// classBits is the prefix length of an IPv4 address's network class (A,
// B, C, else 32), which passt gives an --address without one, whatever
// the host's.
func classBits(a netip.Addr) int {
	switch b := a.As4()[0]; {
	case b < 128:
		return 8
	case b < 192:
		return 16
	case b < 224:
		return 24
	}
	return 32
}

// netSetup is the engine's Config and what the daemon should log about
// how it was chosen: notes (a family in local mode, and why), and
// warnings, which --quiet keeps (a family left out, and why).
type netSetup struct {
	slirp.Config
	notes, warnings  []string
	ifname4, ifname6 string // the template interfaces, "" for none
	gw4Local         bool   // Gateway4 is local mode's, the template having none
}

// buildConfig turns options and host state into the engine's Config.
func buildConfig(o *NetOptions, host hostState) (netSetup, error) {
	var notes, warnings []string
	cfg := slirp.Config{
		MTU: o.MTU, Hostname: o.Hostname, FQDN: o.FQDN,
		NoDHCP: o.NoDHCP, NoTCP: o.NoTCP, NoUDP: o.NoUDP, NoICMP: o.NoICMP,
		NoNDP: o.NoNDP, NoRA: o.NoRA, NoDHCPv6: o.NoDHCPv6,
		NoDHCPDNS: o.NoDHCPDNS, NoDHCPSearch: o.NoDHCPSearch, Freebind: o.Freebind,
		OutboundIf4: o.OutboundIf4, OutboundIf6: o.OutboundIf6,
		MaxTCP: o.MaxTCP, MaxUDP: o.MaxUDP, MaxICMP: o.MaxICMP,
		Stats: time.Duration(o.Stats) * time.Second,
	}
	if o.MTU == 0 {
		// passt's -m 0: advertise no MTU; the link keeps the default.
		cfg.MTU, cfg.NoMTUOption = slirp.DefaultMTU, true
	}
	// IPv6 is left out below its 1280 (below).
	if cfg.MTU < slirp.MinMTU || cfg.MTU > slirp.DefaultMTU {
		return netSetup{}, fmt.Errorf("--mtu: %d is out of range %d-%d (or 0: none advertised)", o.MTU, slirp.MinMTU, slirp.DefaultMTU)
	}
	if err := forwardsOff(o); err != nil {
		return netSetup{}, err
	}
	mac, err := net.ParseMAC(o.MAC)
	if err != nil || len(mac) != 6 {
		return netSetup{}, fmt.Errorf("--mac-addr: invalid MAC address %q", o.MAC)
	}
	copy(cfg.OurMAC[:], mac)
	for _, i := range []struct{ opt, name string }{{"interface", o.Interface},
		{"outbound-if4", o.OutboundIf4}, {"outbound-if6", o.OutboundIf6}} {
		if i.name == "" {
			continue
		}
		if _, err := net.InterfaceByName(i.name); err != nil {
			return netSetup{}, fmt.Errorf("--%s: %v", i.opt, err)
		}
	}
	addr4, addr6, bits4, err := parseAddress(o.Address)
	if err != nil {
		return netSetup{}, err
	}
	if bits4 > 0 && o.Netmask != "" {
		return netSetup{}, errors.New("--address with a prefix length and --netmask: one of them")
	}
	gw4, gw6, err := parseAddrs("gateway", o.Gateway)
	if err != nil {
		return netSetup{}, err
	}
	out4, out6, err := parseAddrs("outbound", o.Outbound)
	if err != nil {
		return netSetup{}, err
	}
	for _, a := range append(out4, out6...) {
		if a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || a.Is6() && a.IsLoopback() {
			return netSetup{}, fmt.Errorf("--outbound: %v cannot be a source address", a)
		}
	}
	cfg.Outbound4, cfg.Outbound6 = last(out4), last(out6)
	template := func(af int) func(string) (string, netip.Addr) {
		return func(ifname string) (string, netip.Addr) {
			if host.template == nil {
				return ifname, netip.Addr{}
			}
			return host.template(af, ifname)
		}
	}
	var ifname4, ifname6 string
	var gw4Local bool

	if !o.IPv6 {
		f := family{name: "IPv4", template: template(unix.AF_INET), keep: netip.Addr.Is4,
			addrs: addr4, gws: gw4, bits: classBits}
		p, gw, why := f.pick(cmp.Or(o.Interface, o.OutboundIf4))
		if why != nil && o.OutboundIf4 != "" {
			return netSetup{}, outboundUnusable("4", o.OutboundIf4, why)
		}
		if bits4 > 0 && p.IsValid() {
			p = netip.PrefixFrom(p.Addr(), bits4)
		}
		if o.Netmask != "" && p.IsValid() {
			bits, err := parseNetmask(o.Netmask)
			if err != nil {
				return netSetup{}, fmt.Errorf("--netmask: %v", err)
			}
			p = netip.PrefixFrom(p.Addr(), bits)
		}
		switch {
		case why == nil:
			cfg.Addr4, cfg.Prefix4, cfg.Gateway4 = p.Addr(), p.Bits(), gw
			ifname4 = f.ifname
			switch {
			case gw.IsValid():
			case p.Addr().IsGlobalUnicast():
				// The template's default route names no gateway (a
				// point-to-point link: a VPN's tun, PPP), or it has none
				// (-i). passt then turns DHCP off, and its guest has no
				// IPv4 unless configured by hand; gopasst gives it local
				// mode's gateway, which no host on a real link holds,
				// reached through a classless route.
				cfg.Gateway4, gw4Local = netip.AddrFrom4([4]byte{169, 254, 2, 2}), true
				notes = append(notes, "IPv4: "+f.ifname+" has no gateway: the guest's is 169.254.2.2")
			default:
				// As passt: no gateway, no DHCP (its answer names a
				// router), for an address no guest should be offered
				// (the host's loopback, as the last template).
				cfg.NoDHCP = true
			}
		default:
			// passt's local mode: with no template, the guest gets a
			// link-local address and gateway, where options give none.
			// Upstream (2026.03) gives them even over -a and -g: on an
			// offline host, rootlesskit's -a 10.0.2.100 -g 10.0.2.2
			// became 169.254.2.1 via 169.254.2.2; gopasst keeps them.
			if !p.IsValid() {
				p = netip.MustParsePrefix("169.254.2.1/16")
			}
			cfg.Addr4, cfg.Prefix4 = p.Addr(), p.Bits()
			cfg.Gateway4 = cmp.Or(gw, netip.AddrFrom4([4]byte{169, 254, 2, 2}))
			notes = append(notes, "IPv4 in local mode: "+why.Error())
		}
	}
	if !o.IPv4 {
		f := family{name: "IPv6", template: template(unix.AF_INET6), keep: isGlobal6,
			addrs: addr6, gws: gw6, bits: func(netip.Addr) int { return 64 }}
		p, gw, why := f.pick(cmp.Or(o.Interface, o.OutboundIf6))
		if why != nil && o.OutboundIf6 != "" {
			return netSetup{}, outboundUnusable("6", o.OutboundIf6, why)
		}
		if why == nil && cfg.MTU < 1280 {
			why = fmt.Errorf("--mtu %d is below IPv6's minimum of 1280", o.MTU)
		}
		switch {
		case why == nil:
			cfg.Addr6, cfg.Gateway6 = p.Addr(), gw
			cfg.OurLL6 = ourLinkLocal(gw, f.ifname)
			ifname6 = f.ifname
		case cfg.MTU >= 1280:
			// passt's local mode: the guest keeps its link-local
			// address, and fe80::1, standing for the host's loopback,
			// is its router.
			cfg.Addr6, cfg.Local6 = p.Addr(), true
			cfg.Gateway6 = cmp.Or(last(gw6), netip.MustParseAddr("fe80::1")) // not the template's: no route leads there
			cfg.OurLL6 = ourLinkLocal(cfg.Gateway6, "")
			cfg.NoDHCPv6 = cfg.NoDHCPv6 || !p.IsValid()
			notes = append(notes, "IPv6 in local mode: "+why.Error())
		default:
			warnings = append(warnings, "IPv6 off: "+why.Error())
		}
	}
	if !cfg.Addr4.IsValid() && !cfg.Addr6.IsValid() && !cfg.Local6 {
		return netSetup{}, fmt.Errorf("cannot pick the guest's addresses and gateways (%s): use --address and --gateway",
			strings.Join(append(notes, warnings...), "; "))
	}
	if err := mapConfig(&cfg, o); err != nil {
		return netSetup{}, err
	}

	rc := readResolvConf(host.resolv)
	for _, l := range o.Search {
		cfg.Search = append(cfg.Search, strings.Fields(l)...) // passt's -S takes a space-separated list
	}
	if len(cfg.Search) == 0 {
		cfg.Search = rc.search
	}
	if len(cfg.Search) == 1 && cfg.Search[0] == "none" {
		cfg.Search = nil
	}
	err = dnsConfig(&cfg, o, rc)
	return netSetup{cfg, notes, warnings, ifname4, ifname6, gw4Local}, err
}

// mapConfig sets the guest addresses that stand for the host, as passt
// does: --map-host-loopback, by default the gateway of each family, none
// with --no-map-gw or "none" (the same thing); --map-guest-addr, by
// default none.
func mapConfig(cfg *slirp.Config, o *NetOptions) error {
	lo4, lo6, none, err := parseMap("map-host-loopback", o.MapHostLoopback)
	if err != nil {
		return err
	}
	g4, g6, _, err := parseMap("map-guest-addr", o.MapGuestAddr)
	if err != nil {
		return err
	}
	cfg.MapHostLoopback4, cfg.MapHostLoopback6, cfg.NoMapGW = lo4, lo6, none || o.NoMapGW
	cfg.MapGuestAddr4, cfg.MapGuestAddr6 = g4, g6
	return nil
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
// (--dns-forward, or the address mapped to host loopback) whose queries
// the engine redirects to it, or to --dns-host. An IPv6 stand-in may lead
// to an IPv4 resolver: a guest with IPv6 alone still resolves through
// systemd-resolved's 127.0.0.53.
func dnsConfig(cfg *slirp.Config, o *NetOptions, rc resolvConf) error {
	cfg.DNSMap = map[netip.Addr]netip.AddrPort{}
	fwd4, fwd6, err := parseAddrs("dns-forward", o.DNSForward)
	if err != nil {
		return err
	}
	host4, host6, err := parseAddrs("dns-host", o.DNSHost)
	if err != nil {
		return err
	}
	// As passt refuses them: no guest query reaches a stand-in on its
	// own loopback, and no resolver answers at these.
	bcast := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	for _, a := range append(fwd4, fwd6...) {
		if a.IsUnspecified() || a.IsLoopback() || a == bcast {
			return fmt.Errorf("--dns-forward: %v cannot stand for a resolver", a)
		}
	}
	for _, a := range append(host4, host6...) {
		if a.IsUnspecified() || a == bcast {
			return fmt.Errorf("--dns-host: %v is no resolver's address", a)
		}
	}
	// As in passt, --dns none gives no resolver of either family, and
	// addresses after it those given, of their family: the other
	// family's come from the host.
	var dns4, dns6 []netip.Addr
	none := false
	for _, s := range o.DNS {
		if s == "none" {
			dns4, dns6, none = nil, nil, true
			continue
		}
		a4, a6, err := parseAddrs("dns", []string{s})
		if err != nil {
			return err
		}
		dns4, dns6, none = append(dns4, a4...), append(dns6, a6...), false
	}
	if cfg.Addr4.IsValid() {
		r := resolvers{host: rc.servers, dnsHost: last(host4), fwd: last(fwd4), given: dns4, explicit: none || len(dns4) > 0}
		cfg.DNS4 = r.forGuest(cfg, cfg.HostLoopback(false), false)
	}
	if cfg.Addr6.IsValid() || cfg.Local6 {
		r := resolvers{host: rc.servers, dnsHost: cmp.Or(last(host6), last(host4)), fwd: last(fwd6), given: dns6, explicit: none || len(dns6) > 0}
		cfg.DNS6 = r.forGuest(cfg, cfg.HostLoopback(true), true)
	}
	return nil
}

// resolvers is what one family's guest resolvers are chosen from: the
// host's (resolv.conf), --dns-host, --dns-forward, and --dns (given,
// explicit if --dns gave this family's or none).
type resolvers struct {
	host         []netip.Addr
	dnsHost, fwd netip.Addr
	given        []netip.Addr
	explicit     bool
}

// forGuest picks the resolvers of one family for the guest and records
// the stand-ins it needs in cfg.DNSMap. hostLo is the address that stands
// for host loopback in that family (invalid for none).
func (r resolvers) forGuest(cfg *slirp.Config, hostLo netip.Addr, is6 bool) []netip.Addr {
	// Resolvers a host socket of this family can reach: an IPv6 socket is
	// dual-stack, an IPv4 one is not.
	var reach []netip.Addr
	for _, s := range r.host {
		if is6 || s.Is4() {
			reach = append(reach, s)
		}
	}
	// behind is where a stand-in's queries go: --dns-host, else s.
	behind := func(s netip.Addr) netip.AddrPort { return netip.AddrPortFrom(cmp.Or(r.dnsHost, s), 53) }
	if r.fwd.IsValid() && len(reach) > 0 {
		cfg.DNSMap[r.fwd] = behind(reach[0])
	} else if r.fwd.IsValid() && r.dnsHost.IsValid() {
		cfg.DNSMap[r.fwd] = behind(r.dnsHost)
	}
	if r.explicit {
		return r.given
	}
	if r.fwd.IsValid() {
		return []netip.Addr{r.fwd}
	}
	var out []netip.Addr
	for _, s := range reach {
		// A resolver at the address mapped to host loopback (a home
		// router's, when that is the gateway) is shadowed, and so is
		// one at the guest's own address (the host's, which it shares:
		// a resolver serving there); one at a link-local address of the
		// host's link (its zone) is not on the guest's. As passt does
		// for the first, that address then stands in for the real
		// resolver.
		switch {
		case !s.IsLoopback() && s.Zone() == "" && s != hostLo && s != cfg.Addr4 && s != cfg.Addr6:
			if s.Is6() == is6 {
				out = append(out, s)
			}
		case !hostLo.IsValid():
			// unreachable without a stand-in
		case cfg.DNSMap[hostLo] == netip.AddrPort{}:
			cfg.DNSMap[hostLo] = behind(s)
			out = append(out, hostLo)
		}
	}
	return out
}

// outboundUnusable is passt's refusal of an --outbound-if4 or -6 whose
// interface has no address or route of that family to give the guest:
// the user asked for that interface, so its family is not quietly left
// out (or put in local mode) instead.
func outboundUnusable(family, ifname string, why error) error {
	return fmt.Errorf("--outbound-if%s %s: external interface not usable for IPv%s: %v", family, ifname, family, why)
}
