package header

import "net/netip"

// Neighbor Discovery (RFC 4861) message layout and option types.
const (
	NDPNSLen     = 24 // ICMPv6 header, reserved, target address
	NDPRSLen     = 8  // ICMPv6 header, reserved
	NDPRALen     = 16 // ICMPv6 header, hop limit, flags, lifetime, timers
	NDPNALen     = 24 // ICMPv6 header, flags, target address
	NDPOptSrcLL  = 1
	NDPOptTgtLL  = 2
	NDPOptPrefix = 3
	NDPOptMTU    = 5
	NDPOptRDNSS  = 25 // RFC 8106
	NDPOptDNSSL  = 31 // RFC 8106
)

// NDPTarget is the target address of a Neighbor Solicitation or
// Advertisement, which must be at least NDPNSLen bytes.
func NDPTarget(m ICMP) netip.Addr { return netip.AddrFrom16([16]byte(m[8:24])) }

// NDPOptionsValid reports whether opts is a well-formed option list: every
// option has a non-zero length that fits. RFC 4861 has a node discard a
// message whose options are not.
func NDPOptionsValid(opts []byte) bool {
	for len(opts) > 0 {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return false
		}
		opts = opts[int(opts[1])*8:]
	}
	return true
}
