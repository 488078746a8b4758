package slirp

import (
	"log"
	"net/netip"
	"os"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
)

// Config is what the engine needs to know about the guest's network. The
// command line fills it, copying the host's template interface as passt
// does, so the guest sees the same address and gateway as the host.
type Config struct {
	MTU      int
	OurMAC   [6]byte
	Addr4    netip.Addr // the guest's address; invalid when IPv4 is off
	Prefix4  int
	Gateway4 netip.Addr

	// Addr6 is the guest's global address (the host's, as passt copies
	// it), offered by DHCPv6; its /64 is the prefix the RA announces.
	// Invalid when IPv6 is off. Gateway6 is the address that stands for
	// the host's loopback. OurLL6 is gopasst's link-local address: the
	// source of RAs, DHCPv6 replies, and the guest's IPv6 router.
	Addr6    netip.Addr
	Gateway6 netip.Addr
	OurLL6   netip.Addr
	// Local6 is passt's local mode for IPv6: the host has none to copy,
	// the guest has its link-local address (and Addr6, if given) and
	// OurLL6 as its router, which stands for the host's loopback.
	Local6 bool
	// Configured6 says the guest has Addr6 from the start (pasta's
	// --config-net): an IPv6 sender reaches it over IPv6 at once, not
	// over IPv4 until the guest is seen to use IPv6.
	Configured6 bool

	// MapHostLoopback4 and MapHostLoopback6 are the guest addresses that
	// stand for the host's loopback (passt's --map-host-loopback); unset,
	// the gateway does, unless NoMapGW (passt's --no-map-gw, which
	// "--map-host-loopback none" implies). HostLoopback says which holds.
	// MapGuestAddr4 and MapGuestAddr6 stand for the host's own address,
	// Addr4 or Addr6, which the guest cannot reach by its address: that is
	// its own (--map-guest-addr).
	MapHostLoopback4, MapHostLoopback6 netip.Addr
	NoMapGW                            bool
	MapGuestAddr4, MapGuestAddr6       netip.Addr

	// Outbound4 and Outbound6 are the source addresses of the host sockets
	// that carry the guest's flows, and OutboundIf4 and OutboundIf6 the
	// interfaces those sockets are bound to (passt's -o, --outbound-if4,
	// --outbound-if6): unset, the routing table decides. Neither applies
	// to a flow to the host's loopback, which no other interface reaches.
	Outbound4, Outbound6     netip.Addr
	OutboundIf4, OutboundIf6 string

	// DNS4 and DNS6 are the resolvers advertised to the guest. DNSMap redirects
	// guest queries sent to one of them to a host resolver: this is how a
	// guest reaches a resolver on host loopback (systemd-resolved, dnsmasq),
	// or at a link-local address of the host's link, whose zone is its
	// interface's index, that it could never reach directly.
	DNS4   []netip.Addr
	DNS6   []netip.Addr
	DNSMap map[netip.Addr]netip.AddrPort
	Search []string

	Hostname string
	FQDN     string

	NoDHCP, NoTCP, NoUDP, NoICMP bool
	NoNDP, NoRA, NoDHCPv6        bool

	// NoDHCPDNS and NoDHCPSearch leave the resolvers and the search list
	// out of DHCP, DHCPv6 and RAs; NoMTUOption leaves the MTU out of DHCP
	// and RAs (passt's -m 0), while the link keeps MTU.
	NoDHCPDNS, NoDHCPSearch, NoMTUOption bool

	// Freebind lets forwards bind addresses the host does not have
	// (IP_FREEBIND), as passt's --freebind.
	Freebind bool

	// MaxTCP, MaxUDP and MaxICMP cap the flows a guest may have open at
	// once (0: the defaults), each a host descriptor: past a cap, a new
	// flow is refused with a RST or an ICMP error and a line in the log.
	MaxTCP, MaxUDP, MaxICMP int

	// OneOff ends Run when the first client disconnects.
	OneOff bool

	// RepairListen is the listening unix socket a TCP_REPAIR helper
	// (passt-repair, gopasst repair) connects to, for live migration;
	// nil for none. MigrateExit ends Run once the guest's state has
	// moved to the destination (passt's --migrate-exit).
	RepairListen *os.File
	MigrateExit  bool

	// Migration says the guest may arrive by live migration (vhost-user):
	// a forwarded port busy at start, as the source's are on one host, is
	// then held until the guest is here (fwd.go's holdForwards).
	Migration bool

	// NewLink makes the link for a client accepted on the listening socket
	// (or given to AttachStream); nil means qemusock.NewDetectStream. The
	// vhost-user back-end passes qemusock.NewVhostUser.
	NewLink func(fd int) qemusock.Link

	// Host binds forwarded ports, reaches host unix sockets and runs
	// commands for the engine; nil means in this process (LocalHost).
	Host Host

	// Splicer, when set, connects the namespace's end of a connection
	// or a UDP sender to a forwarded port from the host's loopback, which
	// the engine then splices (pasta's loopback path, splice.go).
	Splicer Splicer

	// Pcap, when set, records every frame to and from the guest.
	Pcap *qemusock.Pcap

	Log          *log.Logger
	Debug, Trace bool
	// Quiet leaves informational messages out of Log, keeping warnings
	// and errors, as passt's --quiet does.
	Quiet bool
	// Stats, when positive, logs event counts at most this often (passt's
	// --stats).
	Stats time.Duration
}

// Default flow caps: far more than a VM uses, far less than the file
// descriptors a host gives a process.
const (
	DefaultMaxTCP  = 32768
	DefaultMaxUDP  = 4096
	DefaultMaxICMP = 256
)

// DefaultMTU is passt's: the largest that fits a 64 KiB frame.
const DefaultMTU = 65520

// MinMTU is the smallest MTU IPv4 works with (RFC 791), and DHCP may
// give (option 26); passt takes it too.
const MinMTU = 68

// minMTU6 is the smallest MTU IPv6 works with (RFC 8200).
const minMTU6 = 1280

// has4 and has6 report whether the guest gets that family at all.
func (c *Config) has4() bool { return c.Addr4.IsValid() }
func (c *Config) has6() bool { return c.Addr6.IsValid() || c.Local6 }

// HostLoopback is the guest address of one family (IPv6 if v6) that
// stands for the host's loopback, or none (invalid).
func (c *Config) HostLoopback(v6 bool) netip.Addr {
	m, gw, on := c.MapHostLoopback4, c.Gateway4, c.has4()
	if v6 {
		m, gw, on = c.MapHostLoopback6, c.Gateway6, c.has6()
	}
	switch {
	case !on:
		return netip.Addr{}
	case m.IsValid() || c.NoMapGW:
		return m
	}
	return gw
}
