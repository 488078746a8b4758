package slirp

import (
	"encoding/binary"
	"errors"
)

// DNS forwarding. Queries go to the host's resolvers over ordinary UDP
// and TCP sockets (udp.go, tcp.go). When a host resolver lives on host
// loopback the guest cannot reach it by its address, so the command line
// advertises a reachable stand-in (the gateway, or --dns-forward) and
// Config.DNSMap names the real resolver behind it; nat.go redirects. This
// file only reads queries, to log what the guest asks.

// DNS ports: plain DNS, and DNS over TLS (RFC 7858).
const (
	dnsPort    = 53
	dnsTLSPort = 853
)

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
