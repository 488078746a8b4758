package slirp

import (
	"log"
	"net/netip"
)

// Config is what the engine needs to know about the guest's network. The
// command line fills it, copying the host's template interface as passt
// does, so the guest sees the same address and gateway as the host.
type Config struct {
	MTU      int
	OurMAC   [6]byte
	Addr4    netip.Addr // the guest's address
	Prefix4  int
	Gateway4 netip.Addr

	// DNS4 are the resolvers advertised to the guest. DNSMap redirects
	// guest queries sent to one of them to a host resolver: this is how a
	// guest reaches a resolver on host loopback (systemd-resolved, dnsmasq)
	// that it could never reach directly.
	DNS4   []netip.Addr
	DNSMap map[netip.Addr]netip.AddrPort
	Search []string

	Hostname string
	FQDN     string

	NoDHCP, NoMapGW, NoTCP, NoUDP, NoICMP bool

	// OneOff ends Run when the first client disconnects.
	OneOff bool

	Log          *log.Logger
	Debug, Trace bool
}

// DefaultMTU is passt's: the largest that fits a 64 KiB frame.
const DefaultMTU = 65520
