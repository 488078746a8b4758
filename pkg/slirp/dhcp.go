package slirp

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
)

// DHCPv4 as passt does it: one client, one address (the host's), handed
// out with the host's routing so the guest needs no NAT of its own.

const (
	dhcpServerPort = 67
	dhcpClientPort = 68
	bootpLen       = 236 // fixed BOOTP part, before the magic cookie
	dhcpLeaseTime  = 3600
)

// DHCP message types (option 53).
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpDecline  = 4
	dhcpAck      = 5
	dhcpNak      = 6
	dhcpRelease  = 7
	dhcpInform   = 8
)

// DHCP option codes.
const (
	optPad         = 0
	optMask        = 1
	optRouter      = 3
	optDNS         = 6
	optHostname    = 12
	optDomainName  = 15
	optMTU         = 26
	optRequestedIP = 50
	optLeaseTime   = 51
	optMsgType     = 53
	optServerID    = 54
	optRapidCommit = 80 // RFC 4039
	optFQDN        = 81
	optSearch      = 119
	optRoutes      = 121 // classless static routes (RFC 3442)
	optEnd         = 255
)

var dhcpMagic = [4]byte{99, 130, 83, 99}

// dhcpBroadcast is the flag a client sets when it cannot take a unicast
// reply before it has its address (RFC 2131 4.1).
const dhcpBroadcast = 0x8000

// dhcpMsg holds what gopasst reads from a client message.
type dhcpMsg struct {
	xid         [4]byte
	flags       uint16
	ciaddr      netip.Addr
	chaddr      [6]byte
	msgType     uint8      // 0: a BOOTP request, without option 53
	rapid       bool       // it asks for rapid commit (RFC 4039)
	requestedIP netip.Addr // invalid when absent
	serverID    netip.Addr // invalid when absent
	askUpdate   bool       // its FQDN option asks us to update DNS (S)
}

var errDHCP = errors.New("malformed DHCP message")

// parseDHCP reads a BOOTREQUEST. It rejects anything it cannot read fully
// rather than guessing.
func parseDHCP(b []byte) (dhcpMsg, error) {
	var m dhcpMsg
	if len(b) < bootpLen+4 || b[0] != 1 || b[1] != 1 || b[2] != 6 ||
		[4]byte(b[bootpLen:bootpLen+4]) != dhcpMagic {
		return m, errDHCP
	}
	m.xid = [4]byte(b[4:8])
	m.flags = binary.BigEndian.Uint16(b[10:])
	m.ciaddr = netip.AddrFrom4([4]byte(b[12:16]))
	m.chaddr = [6]byte(b[28:34])
	opts := b[bootpLen+4:]
	for len(opts) > 0 {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == optPad {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || int(opts[1]) > len(opts)-2 {
			return m, errDHCP
		}
		val := opts[2 : 2+int(opts[1])]
		switch {
		case code == optMsgType && len(val) == 1:
			m.msgType = val[0]
		case code == optRequestedIP && len(val) == 4:
			m.requestedIP = netip.AddrFrom4([4]byte(val))
		case code == optServerID && len(val) == 4:
			m.serverID = netip.AddrFrom4([4]byte(val))
		case code == optFQDN && len(val) > 0:
			m.askUpdate = val[0]&fqdnServerUpdate != 0
		case code == optRapidCommit:
			m.rapid = true
		}
		opts = opts[2+len(val):]
	}
	return m, nil
}

func (e *Engine) dhcpInput(payload []byte) {
	m, err := parseDHCP(payload)
	if err != nil {
		e.Stats.Malformed++
		return
	}
	reply := uint8(0)
	switch m.msgType {
	case dhcpDiscover:
		reply = dhcpOffer
		if m.rapid {
			reply = dhcpAck // the lease in one exchange, as passt gives it
		}
	case 0:
		// A BOOTP client: its reply is its address, as passt gives it.
		reply = dhcpAck
	case dhcpRequest:
		if m.serverID.IsValid() && m.serverID != e.cfg.Gateway4 {
			return // the client chose another server
		}
		want := m.requestedIP
		if !want.IsValid() {
			want = m.ciaddr // renewing or rebinding
		}
		reply = dhcpAck
		if want != e.cfg.Addr4 {
			reply = dhcpNak
		}
	case dhcpInform:
		reply = dhcpAck
	case dhcpRelease, dhcpDecline:
		e.debugf("DHCP: client sent message type %d", m.msgType)
		return
	default:
		return
	}
	e.debugf("DHCP: type %d, answering %d", m.msgType, reply)
	if reply == dhcpAck && m.msgType != dhcpInform {
		// The guest now uses the lease, as after DHCPv6's: one that
		// left an address of its own for it (seen4), and then only
		// listens, is reached there, not where it sent from last.
		e.addrSeen4 = e.cfg.Addr4
	}
	out := e.buildDHCP(&m, reply)
	// RFC 2131 4.1: a NAK is broadcast; a client with an address gets
	// the reply there, one that asked for a broadcast gets one, and any
	// other gets it at the address it is given.
	dst := e.cfg.Addr4
	switch {
	case reply == dhcpNak || m.ciaddr.IsUnspecified() && m.flags&dhcpBroadcast != 0:
		dst = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	case !m.ciaddr.IsUnspecified():
		dst = m.ciaddr
	}
	e.sendUDP(e.cfg.Gateway4, dhcpServerPort, dst, dhcpClientPort, out)
}

// buildDHCP writes a reply into the engine's scratch buffer.
func (e *Engine) buildDHCP(m *dhcpMsg, typ uint8) []byte {
	b := e.dhcpBuf[:]
	clear(b)
	b[0], b[1], b[2] = 2, 1, 6
	copy(b[4:8], m.xid[:])
	binary.BigEndian.PutUint16(b[10:], m.flags)
	if m.ciaddr.IsValid() {
		c := m.ciaddr.As4()
		copy(b[12:16], c[:])
	}
	if typ != dhcpNak && m.msgType != dhcpInform {
		y := e.cfg.Addr4.As4()
		copy(b[16:20], y[:])
	}
	copy(b[28:34], m.chaddr[:])
	copy(b[bootpLen:], dhcpMagic[:])
	o := optWriter{b: b, n: bootpLen + 4}
	o.add(optMsgType, typ)
	if m.rapid && m.msgType == dhcpDiscover && typ == dhcpAck {
		o.add(optRapidCommit)
	}
	gw := e.cfg.Gateway4.As4()
	o.add(optServerID, gw[:]...)
	if typ != dhcpNak {
		if m.msgType != dhcpInform {
			o.add32(optLeaseTime, dhcpLeaseTime)
		}
		mask := netip.PrefixFrom(e.cfg.Addr4, e.cfg.Prefix4)
		var mb [4]byte
		binary.BigEndian.PutUint32(mb[:], ^uint32(0)<<(32-mask.Bits()))
		o.add(optMask, mb[:]...)
		o.add(optRouter, gw[:]...)
		if !mask.Contains(e.cfg.Gateway4) {
			// A router off the guest's subnet is reached through a
			// route to it on the link; a client that takes this
			// option ignores the router option, so the default route
			// comes with it (RFC 3442).
			o.add(optRoutes, 32, gw[0], gw[1], gw[2], gw[3], 0, 0, 0, 0, 0, gw[0], gw[1], gw[2], gw[3])
		}
		if len(e.cfg.DNS4) > 0 && !e.cfg.NoDHCPDNS {
			var dns []byte
			for _, d := range e.cfg.DNS4 {
				a := d.As4()
				dns = append(dns, a[:]...)
			}
			o.add(optDNS, dns...)
		}
		if !e.cfg.NoMTUOption {
			var mtu [2]byte
			binary.BigEndian.PutUint16(mtu[:], uint16(e.mtu()))
			o.add(optMTU, mtu[:]...)
		}
		if len(e.cfg.Search) > 0 && !e.cfg.NoDHCPSearch {
			o.add(optDomainName, []byte(e.cfg.Search[0])...)
		}
		if e.cfg.Hostname != "" {
			o.add(optHostname, []byte(e.cfg.Hostname)...)
		}
		if e.cfg.FQDN != "" {
			// A name in wire format (E), deprecated RCODEs of 255
			// (RFC 4702).
			o.add(optFQDN, append([]byte{fqdnFlags(m.askUpdate) | 0x04, 0xff, 0xff}, encodeDomains([]string{e.cfg.FQDN})...)...)
		}
		// Last, in the room left: as many whole names as fit, as passt
		// sends them. A list cut mid-name is one a client drops whole.
		if !e.cfg.NoDHCPSearch {
			names := e.cfg.Search
			for len(names) > 0 && !o.addLong(optSearch, encodeDomains(names)) {
				names = names[:len(names)-1]
			}
		}
	}
	o.b[o.n] = optEnd
	o.n++
	return b[:max(o.n, 300)] // BOOTP's minimum message size
}

// The client FQDN option's flags (RFC 4702, RFC 4704).
const (
	fqdnServerUpdate = 0x01 // S: the server updates the name's address records
	fqdnOverride     = 0x02 // O: the server overrode the client's S
)

// fqdnFlags are the flags of our answer to a client FQDN option: we
// update no DNS records (S clear), which overrides a client that asked
// us to (O).
func fqdnFlags(askUpdate bool) uint8 {
	if askUpdate {
		return fqdnOverride
	}
	return 0
}

// optWriter appends DHCP options and silently drops what does not fit.
type optWriter struct {
	b []byte
	n int
}

func (o *optWriter) add(code uint8, val ...byte) {
	if len(val) > 255 || o.n+2+len(val) >= len(o.b)-1 {
		return
	}
	o.b[o.n], o.b[o.n+1] = code, uint8(len(val))
	o.n += 2 + copy(o.b[o.n+2:], val)
}

func (o *optWriter) add32(code uint8, v uint32) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	o.add(code, b[:]...)
}

// addLong splits a value over several instances of the option, which
// clients concatenate (RFC 3396): all of it, or, if that does not fit,
// nothing, and it reports false.
func (o *optWriter) addLong(code uint8, val []byte) bool {
	if o.n+len(val)+2*((len(val)+254)/255) >= len(o.b)-1 {
		return false
	}
	for len(val) > 0 {
		n := min(len(val), 255)
		o.add(code, val[:n]...)
		val = val[n:]
	}
	return true
}

// encodeDomains writes names in DNS wire format, uncompressed.
func encodeDomains(names []string) []byte {
	var out []byte
	for _, n := range names {
		for _, label := range strings.Split(strings.TrimSuffix(n, "."), ".") {
			if label == "" || len(label) > 63 {
				continue
			}
			out = append(out, byte(len(label)))
			out = append(out, label...)
		}
		out = append(out, 0)
	}
	return out
}
