package slirp

import (
	"log"
	"net/netip"

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

	// DNS4 and DNS6 are the resolvers advertised to the guest. DNSMap redirects
	// guest queries sent to one of them to a host resolver: this is how a
	// guest reaches a resolver on host loopback (systemd-resolved, dnsmasq)
	// that it could never reach directly.
	DNS4   []netip.Addr
	DNS6   []netip.Addr
	DNSMap map[netip.Addr]netip.AddrPort
	Search []string

	Hostname string
	FQDN     string

	NoDHCP, NoMapGW, NoTCP, NoUDP, NoICMP bool
	NoNDP, NoRA, NoDHCPv6                 bool

	// MaxTCP, MaxUDP and MaxICMP cap the flows a guest may have open at
	// once (0: the defaults), each a host descriptor: past a cap, a new
	// flow is refused with a RST or an ICMP error and a line in the log.
	MaxTCP, MaxUDP, MaxICMP int

	// OneOff ends Run when the first client disconnects.
	OneOff bool

	// NewLink makes the link for a client accepted on the listening socket
	// (or given to AttachStream); nil means qemusock.NewDetectStream. The
	// vhost-user back-end passes qemusock.NewVhostUser.
	NewLink func(fd int) qemusock.Link

	// Host binds forwarded ports, reaches host unix sockets and runs
	// commands for the engine; nil means in this process (LocalHost).
	Host Host

	// Pcap, when set, records every frame to and from the guest.
	Pcap *qemusock.Pcap

	Log          *log.Logger
	Debug, Trace bool
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

// minMTU6 is the smallest MTU IPv6 works with (RFC 8200).
const minMTU6 = 1280

// has4 and has6 report whether the guest gets that family at all.
func (c *Config) has4() bool { return c.Addr4.IsValid() }
func (c *Config) has6() bool { return c.Addr6.IsValid() }
