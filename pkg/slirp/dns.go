package slirp

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// DNS forwarding. Queries go to the host's resolvers over ordinary UDP
// (udp.go); this file only decides where. When a host resolver lives on
// host loopback the guest cannot reach it by its address, so the command
// line advertises a reachable stand-in (the gateway, or --dns-forward) and
// Config.DNSMap sends queries for the stand-in to the real resolver.
// Replies from the resolver are given the stand-in's address again.

const dnsPort = 53

// dnsRedirect returns the host resolver for a guest query to dst, or the
// zero AddrPort when dst is not a stand-in.
func (e *Engine) dnsRedirect(dst netip.AddrPort) netip.AddrPort {
	if dst.Port() != dnsPort || len(e.cfg.DNSMap) == 0 {
		return netip.AddrPort{}
	}
	return e.cfg.DNSMap[dst.Addr()]
}

// dnsReverse returns the stand-in, of guest's family, for a reply from a
// host resolver, or the zero AddrPort.
func (e *Engine) dnsReverse(from netip.AddrPort, guest netip.Addr) netip.AddrPort {
	if from.Port() != dnsPort {
		return netip.AddrPort{}
	}
	for standIn, real := range e.cfg.DNSMap {
		if real == from && standIn.Is4() == guest.Is4() {
			return netip.AddrPortFrom(standIn, dnsPort)
		}
	}
	return netip.AddrPort{}
}

var errDNS = errors.New("malformed DNS message")

// dnsQuestion is the first question of a DNS message.
type dnsQuestion struct {
	ID    uint16
	Name  string
	Type  uint16
	Class uint16
}

// parseDNSQuery reads the header and first question of a query, refusing
// compression pointers (a query has nothing to point back to) and names
// longer than RFC 1035 allows. gopasst uses it to log what the guest asks.
func parseDNSQuery(b []byte) (dnsQuestion, error) {
	var q dnsQuestion
	if len(b) < 12 {
		return q, errDNS
	}
	q.ID = binary.BigEndian.Uint16(b)
	if b[2]&0x80 != 0 || binary.BigEndian.Uint16(b[4:]) == 0 {
		return q, errDNS // a response, or no question
	}
	p := 12
	var name []byte
	for {
		if p >= len(b) {
			return q, errDNS
		}
		l := int(b[p])
		p++
		if l == 0 {
			break
		}
		if l > 63 || p+l > len(b) || len(name)+l+1 > 255 {
			return q, errDNS
		}
		name = append(name, b[p:p+l]...)
		name = append(name, '.')
		p += l
	}
	if p+4 > len(b) {
		return q, errDNS
	}
	if len(name) == 0 {
		name = []byte{'.'}
	}
	q.Name = string(name)
	q.Type = binary.BigEndian.Uint16(b[p:])
	q.Class = binary.BigEndian.Uint16(b[p+2:])
	return q, nil
}
