package slirp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
)

// DHCPv6 (RFC 8415) as passt does it: one client, one address (the
// host's), stateless answers. The guest's SOLICIT gets an ADVERTISE (or,
// when it asks for rapid commit, the REPLY at once); REQUEST, RENEW and
// REBIND get the address; CONFIRM learns whether its addresses are still
// on the link; INFORMATION-REQUEST gets resolvers and search list alone.
// The server's identity is a DUID-LL made of our MAC, so it stays the
// same across restarts and the guest renews with the new instance.

const (
	dhcpv6ServerPort = 547
	dhcpv6ClientPort = 546
	dhcpv6HdrLen     = 4 // message type and transaction ID
	dhcpv6MaxDUID    = 130
)

// DHCPv6 message types.
const (
	dhcpv6Solicit     = 1
	dhcpv6Advertise   = 2
	dhcpv6Request     = 3
	dhcpv6Confirm     = 4
	dhcpv6Renew       = 5
	dhcpv6Rebind      = 6
	dhcpv6Reply       = 7
	dhcpv6Release     = 8
	dhcpv6Decline     = 9
	dhcpv6InfoRequest = 11
)

// DHCPv6 option codes and status codes.
const (
	opt6ClientID    = 1
	opt6ServerID    = 2
	opt6IANA        = 3
	opt6IATA        = 4
	opt6IAAddr      = 5
	opt6Status      = 13
	opt6RapidCommit = 14
	opt6DNS         = 23
	opt6DomainList  = 24
	opt6FQDN        = 39

	status6Success   = 0
	status6NotOnLink = 4

	iaNALen     = 12 // IAID, T1, T2
	iaAddrLen   = 24 // address, preferred and valid lifetimes
	lifeForever = 0xffffffff
)

// dhcpv6Msg holds what gopasst reads from a client message; the byte
// slices point into the message.
type dhcpv6Msg struct {
	typ         uint8
	xid         [3]byte
	clientID    []byte
	serverID    []byte
	iaid        []byte // of the first IA_NA, nil when there is none
	iaOpts      []byte // the first IA_NA's options, well formed (eachAddr)
	iaTA        bool
	rapidCommit bool
	askUpdate   bool // its FQDN option asks us to update DNS (S)
}

var errDHCPv6 = errors.New("malformed DHCPv6 message")

// parseDHCPv6 reads a client message. Options must fit exactly; a message
// without a client identifier, or with identifiers of impossible size,
// is refused.
func parseDHCPv6(b []byte) (dhcpv6Msg, error) {
	var m dhcpv6Msg
	if len(b) < dhcpv6HdrLen {
		return m, errDHCPv6
	}
	m.typ = b[0]
	m.xid = [3]byte(b[1:4])
	err := dhcpv6Options(b[dhcpv6HdrLen:], func(code uint16, val []byte) error {
		switch code {
		case opt6ClientID:
			m.clientID = val
		case opt6ServerID:
			m.serverID = val
		case opt6IATA:
			m.iaTA = true
		case opt6RapidCommit:
			m.rapidCommit = true
		case opt6FQDN:
			m.askUpdate = len(val) > 0 && val[0]&fqdnServerUpdate != 0
		case opt6IANA:
			if m.iaid != nil {
				return nil
			}
			if len(val) < iaNALen {
				return errDHCPv6
			}
			m.iaid, m.iaOpts = val[:4], val[iaNALen:]
			return dhcpv6Options(m.iaOpts, func(code uint16, val []byte) error {
				if code == opt6IAAddr && len(val) < iaAddrLen {
					return errDHCPv6
				}
				return nil
			})
		}
		return nil
	})
	if err != nil || len(m.clientID) < 2 || len(m.clientID) > dhcpv6MaxDUID || len(m.serverID) > dhcpv6MaxDUID {
		return m, errDHCPv6
	}
	return m, nil
}

// eachAddr calls fn with each address of the first IA_NA, read where it
// lies: a message may hold thousands, which are not worth a copy.
func (m *dhcpv6Msg) eachAddr(fn func(netip.Addr)) {
	dhcpv6Options(m.iaOpts, func(code uint16, val []byte) error {
		if code == opt6IAAddr {
			fn(netip.AddrFrom16([16]byte(val)))
		}
		return nil
	})
}

// dhcpv6Options calls fn for each option in b, stopping at fn's error or
// at an option that does not fit.
func dhcpv6Options(b []byte, fn func(code uint16, val []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return errDHCPv6
		}
		l := int(binary.BigEndian.Uint16(b[2:]))
		if 4+l > len(b) {
			return errDHCPv6
		}
		if err := fn(binary.BigEndian.Uint16(b), b[4:4+l]); err != nil {
			return err
		}
		b = b[4+l:]
	}
	return nil
}

func (e *Engine) dhcpv6Input(src netip.Addr, payload []byte) {
	m, err := parseDHCPv6(payload)
	if err != nil {
		e.Stats.Malformed++
		return
	}
	ours := e.duid()
	forUs := m.serverID == nil || bytes.Equal(m.serverID, ours)
	reply, status, giveAddr := uint8(dhcpv6Reply), -1, false
	switch m.typ {
	case dhcpv6Solicit:
		if m.serverID != nil {
			return
		}
		giveAddr = true
		if !m.rapidCommit {
			reply = dhcpv6Advertise
		}
	case dhcpv6Request, dhcpv6Renew:
		if m.serverID == nil || !forUs {
			return
		}
		giveAddr = true
	case dhcpv6Rebind:
		// RFC 8415 sends REBIND without a server identifier: any server
		// that can may answer.
		if !forUs {
			return
		}
		giveAddr = true
	case dhcpv6Confirm:
		if m.serverID != nil {
			return // RFC 8415 16.5: a CONFIRM is for any server, never one
		}
		status = status6Success
		onLink := netip.PrefixFrom(e.cfg.Addr6, 64).Masked()
		m.eachAddr(func(a netip.Addr) {
			if !onLink.Contains(a) {
				status = status6NotOnLink
			}
		})
	case dhcpv6InfoRequest:
		if !forUs || m.iaid != nil || m.iaTA {
			return
		}
	case dhcpv6Release, dhcpv6Decline:
		if m.serverID == nil || !forUs {
			return
		}
		status = status6Success
	default:
		return
	}
	e.debugf("DHCPv6: type %d from %v, answering %d", m.typ, src, reply)
	withAddr := giveAddr && m.iaid != nil
	if withAddr && reply == dhcpv6Reply {
		e.addrSeen6 = e.cfg.Addr6 // the guest now uses it
	}
	out := e.buildDHCPv6(&m, reply, ours, status, withAddr)
	e.sendUDP(e.cfg.OurLL6, dhcpv6ServerPort, src, dhcpv6ClientPort, out)
}

// duid is our server identifier: a DUID-LL (type 3, hardware type 1).
func (e *Engine) duid() []byte {
	b := e.duidBuf[:]
	b[0], b[1], b[2], b[3] = 0, 3, 0, 1
	copy(b[4:], e.cfg.OurMAC[:])
	return b
}

// buildDHCPv6 writes a reply into the engine's scratch buffer. status is
// the top-level status code to include, or -1 for none; withAddr adds the
// guest's address in the client's IA_NA.
func (e *Engine) buildDHCPv6(m *dhcpv6Msg, typ uint8, serverID []byte, status int, withAddr bool) []byte {
	w := opt6Writer{b: e.dhcp6Buf[:]}
	w.b[0] = typ
	copy(w.b[1:4], m.xid[:])
	w.n = dhcpv6HdrLen
	w.add(opt6ClientID, m.clientID)
	w.add(opt6ServerID, serverID)
	if m.rapidCommit && typ == dhcpv6Reply && m.typ == dhcpv6Solicit {
		w.add(opt6RapidCommit, nil)
	}
	if status >= 0 {
		w.add(opt6Status, []byte{0, byte(status)})
	}
	if withAddr {
		var ia [iaNALen + 4 + iaAddrLen]byte
		copy(ia[0:4], m.iaid)
		binary.BigEndian.PutUint32(ia[4:], lifeForever) // T1
		binary.BigEndian.PutUint32(ia[8:], lifeForever) // T2
		binary.BigEndian.PutUint16(ia[12:], opt6IAAddr)
		binary.BigEndian.PutUint16(ia[14:], iaAddrLen)
		a := e.cfg.Addr6.As16()
		copy(ia[16:32], a[:])
		binary.BigEndian.PutUint32(ia[32:], lifeForever)
		binary.BigEndian.PutUint32(ia[36:], lifeForever)
		w.add(opt6IANA, ia[:])
	}
	if status < 0 {
		var dns []byte
		for _, d := range e.cfg.DNS6 {
			a := d.As16()
			dns = append(dns, a[:]...)
		}
		if len(dns) > 0 && !e.cfg.NoDHCPDNS {
			w.add(opt6DNS, dns)
		}
		if len(e.cfg.Search) > 0 && !e.cfg.NoDHCPSearch {
			w.add(opt6DomainList, encodeDomains(e.cfg.Search))
		}
		if e.cfg.FQDN != "" {
			w.add(opt6FQDN, append([]byte{fqdnFlags(m.askUpdate)}, encodeDomains([]string{e.cfg.FQDN})...))
		}
	}
	return w.b[:w.n]
}

// opt6Writer appends DHCPv6 options and drops what does not fit.
type opt6Writer struct {
	b []byte
	n int
}

func (w *opt6Writer) add(code uint16, val []byte) {
	if w.n+4+len(val) > len(w.b) {
		return
	}
	binary.BigEndian.PutUint16(w.b[w.n:], code)
	binary.BigEndian.PutUint16(w.b[w.n+2:], uint16(len(val)))
	w.n += 4 + copy(w.b[w.n+4:], val)
}
