// Package rtnl speaks the few rtnetlink requests pasta's --config-net
// needs: dump a host interface's addresses and routes, and set a link's
// state, MTU and MAC, add addresses and add routes; and it hears the
// neighbour table (neigh.go), whose MACs the engine mirrors to the
// guest. The messages are written by hand on golang.org/x/sys/unix, as
// passt writes its own: the handful of fixed layouts does not justify a
// dependency, and the parser of the kernel's answers is fuzzed like
// every other parser in gopasst.
package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Addr is one interface address.
type Addr struct {
	Prefix netip.Prefix
	Index  int
	Flags  uint32 // IFA_F_*
	Scope  uint8
}

// Route is one route of the main table.
type Route struct {
	Dst      netip.Prefix // the family's zero-length prefix for a default route
	Src      netip.Prefix // an IPv6 source-specific route's source prefix ("from"), or invalid
	Gateway  netip.Addr   // invalid when on-link
	PrefSrc  netip.Addr
	Index    int
	Metric   uint32
	Protocol uint8
	Scope    uint8
	Type     uint8
	Flags    uint32 // RTNH_F_*
	Metrics  []byte // RTA_METRICS as the kernel gave them: mtu, advmss...
	Pref     uint8  // RTA_PREF, IPv6's router preference (0: medium)
	// Nexthops are a multipath route's paths; Gateway is then unset and
	// Index is the first path's interface, as passt takes it.
	Nexthops []Nexthop
}

// Nexthop is one path of a multipath route.
type Nexthop struct {
	Gateway netip.Addr
	Index   int
	Hops    uint8 // the path's weight, less one
	Flags   uint8 // RTNH_F_*
}

// Conn is a route netlink socket in the network namespace of the thread
// that opened it.
type Conn struct {
	fd  int
	seq uint32
}

// Open opens a route netlink socket.
func Open() (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Conn{fd: fd}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return unix.Close(c.fd) }

// Addrs returns the addresses of family (unix.AF_INET or AF_INET6) on
// interface index.
func (c *Conn) Addrs(family, index int) ([]Addr, error) {
	b, err := c.dump(unix.RTM_GETADDR, ifaddrmsg(family, 0, index, 0, 0))
	if err != nil {
		return nil, err
	}
	all, err := ParseAddrs(b)
	var out []Addr
	for _, a := range all {
		if a.Index == index {
			out = append(out, a)
		}
	}
	return out, err
}

// Routes returns the routes of family in the main table through interface
// index, or through any with index 0.
func (c *Conn) Routes(family, index int) ([]Route, error) {
	b, err := c.dump(unix.RTM_GETROUTE, rtmsg(family, 0, 0, 0, 0, 0))
	if err != nil {
		return nil, err
	}
	all, err := ParseRoutes(b)
	var out []Route
	for _, r := range all {
		if index == 0 || r.Index == index {
			out = append(out, r)
		}
	}
	return out, err
}

// SetLink sets interface index's MTU (unless 0) and MAC (unless nil),
// and brings it up if up.
func (c *Conn) SetLink(index int, up bool, mtu int, mac net.HardwareAddr) error {
	var flags uint32
	if up {
		flags = unix.IFF_UP
	}
	msg := ifinfomsg(index, flags, flags)
	if mtu != 0 {
		msg = attr(msg, unix.IFLA_MTU, binary.NativeEndian.AppendUint32(nil, uint32(mtu)))
	}
	if mac != nil {
		msg = attr(msg, unix.IFLA_ADDRESS, mac)
	}
	return c.do(unix.RTM_NEWLINK, 0, msg)
}

// SetFlags sets interface index's flags (IFF_*) that change selects to
// their values in flags.
func (c *Conn) SetFlags(index int, flags, change uint32) error {
	return c.do(unix.RTM_NEWLINK, 0, ifinfomsg(index, flags, change))
}

func ifinfomsg(index int, flags, change uint32) []byte {
	msg := make([]byte, unix.SizeofIfInfomsg)
	*(*unix.IfInfomsg)(unsafe.Pointer(&msg[0])) = unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(index), Flags: flags, Change: change}
	return msg
}

// AddAddr adds a.
func (c *Conn) AddAddr(a Addr) error {
	return c.newAddr(a, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
}

// ReplaceAddr sets the flags of a, which exists already.
func (c *Conn) ReplaceAddr(a Addr) error {
	return c.newAddr(a, unix.NLM_F_REPLACE)
}

func (c *Conn) newAddr(a Addr, nlflags uint16) error {
	family := unix.AF_INET6
	if a.Prefix.Addr().Is4() {
		family = unix.AF_INET
	}
	msg := ifaddrmsg(family, a.Prefix.Bits(), a.Index, uint8(a.Flags), a.Scope)
	ip := a.Prefix.Addr().AsSlice()
	msg = attr(msg, unix.IFA_LOCAL, ip)
	msg = attr(msg, unix.IFA_ADDRESS, ip)
	msg = attr(msg, unix.IFA_FLAGS, binary.NativeEndian.AppendUint32(nil, a.Flags))
	return c.do(unix.RTM_NEWADDR, nlflags, msg)
}

// AddRoute adds r to the main table, through interface r.Index, every
// path of it for a multipath route.
func (c *Conn) AddRoute(r Route) error {
	family := unix.AF_INET6
	if r.Dst.Addr().Is4() {
		family = unix.AF_INET
	}
	msg := rtmsg(family, r.Dst.Bits(), r.Protocol, r.Scope, r.Type, r.Flags)
	if r.Dst.Bits() > 0 {
		msg = attr(msg, unix.RTA_DST, r.Dst.Addr().AsSlice())
	}
	if r.Src.IsValid() {
		(*unix.RtMsg)(unsafe.Pointer(&msg[0])).Src_len = uint8(r.Src.Bits())
		msg = attr(msg, unix.RTA_SRC, r.Src.Addr().AsSlice())
	}
	if r.Gateway.IsValid() {
		msg = attr(msg, unix.RTA_GATEWAY, r.Gateway.AsSlice())
	}
	if r.PrefSrc.IsValid() {
		msg = attr(msg, unix.RTA_PREFSRC, r.PrefSrc.AsSlice())
	}
	if r.Metric != 0 {
		msg = attr(msg, unix.RTA_PRIORITY, binary.NativeEndian.AppendUint32(nil, r.Metric))
	}
	if len(r.Metrics) > 0 {
		msg = attr(msg, unix.RTA_METRICS, r.Metrics)
	}
	if r.Pref != 0 {
		msg = attr(msg, unix.RTA_PREF, []byte{r.Pref})
	}
	if len(r.Nexthops) == 0 {
		msg = attr(msg, unix.RTA_OIF, binary.NativeEndian.AppendUint32(nil, uint32(r.Index)))
	} else {
		var hops []byte
		for _, h := range r.Nexthops {
			var gw []byte
			if h.Gateway.IsValid() {
				gw = attr(nil, unix.RTA_GATEWAY, h.Gateway.AsSlice())
			}
			hops = binary.NativeEndian.AppendUint16(hops, uint16(unix.SizeofRtNexthop+len(gw)))
			hops = append(hops, h.Flags&unix.RTNH_F_ONLINK, h.Hops)
			hops = binary.NativeEndian.AppendUint32(hops, uint32(r.Index))
			hops = append(hops, gw...)
		}
		msg = attr(msg, unix.RTA_MULTIPATH, hops)
	}
	return c.do(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, msg)
}

func ifaddrmsg(family, bits, index int, flags, scope uint8) []byte {
	msg := make([]byte, unix.SizeofIfAddrmsg)
	*(*unix.IfAddrmsg)(unsafe.Pointer(&msg[0])) = unix.IfAddrmsg{
		Family: uint8(family), Prefixlen: uint8(bits), Flags: flags, Scope: scope, Index: uint32(index)}
	return msg
}

func rtmsg(family, bits int, proto, scope, typ uint8, flags uint32) []byte {
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	if proto == 0 {
		proto = unix.RTPROT_BOOT
	}
	msg := make([]byte, unix.SizeofRtMsg)
	*(*unix.RtMsg)(unsafe.Pointer(&msg[0])) = unix.RtMsg{
		Family: uint8(family), Dst_len: uint8(bits), Table: unix.RT_TABLE_MAIN,
		Protocol: proto, Scope: scope, Type: typ, Flags: flags}
	return msg
}

// attr appends a route attribute, padded to four bytes.
func attr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	return append(b, make([]byte, (4-l%4)%4)...)
}

func (c *Conn) send(typ uint16, flags uint16, body []byte) (uint32, error) {
	c.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	*(*unix.NlMsghdr)(unsafe.Pointer(&msg[0])) = unix.NlMsghdr{
		Len: uint32(unix.SizeofNlMsghdr + len(body)), Type: typ, Seq: c.seq,
		Flags: unix.NLM_F_REQUEST | flags}
	msg = append(msg, body...)
	return c.seq, unix.Sendto(c.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// do sends one request and waits for its acknowledgement.
func (c *Conn) do(typ uint16, flags uint16, body []byte) error {
	seq, err := c.send(typ, flags|unix.NLM_F_ACK, body)
	if err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			return err
		}
		done, err := scan(buf[:n], seq, func(uint16, []byte) {})
		if err != nil || done {
			return err
		}
	}
}

// dump sends a dump request and returns every message of the answer, up
// to and without NLMSG_DONE. On a socket that hears a group (OpenNeigh),
// a read may fail with unix.ENOBUFS: changes the socket could not hold
// were lost, not the dump, which the kernel goes on with as the socket
// is read. The dump is then read to its end, and returned with
// unix.ENOBUFS: left unread, it would hold the socket (a dump at a time)
// and its answer would mix with what is read next.
func (c *Conn) dump(typ uint16, body []byte) ([]byte, error) {
	seq, err := c.send(typ, unix.NLM_F_DUMP, body)
	if err != nil {
		return nil, err
	}
	var out []byte
	var lost error
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err == unix.ENOBUFS {
			lost = err
			continue
		}
		if err != nil {
			return nil, err
		}
		done, err := scan(buf[:n], seq, func(uint16, []byte) {})
		if err != nil {
			return nil, err
		}
		out = append(out, buf[:n]...)
		if done {
			return out, lost
		}
	}
}

// ErrTruncated is a message that ends before its header says.
var ErrTruncated = errors.New("netlink: truncated message")

// scan calls fn with the type and body of each message in b that answers
// seq (any, if 0) and reports whether the answer is complete: NLMSG_DONE,
// or an acknowledgement, which comes back as the error it carries.
func scan(b []byte, seq uint32, fn func(typ uint16, body []byte)) (bool, error) {
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b))
		typ := binary.NativeEndian.Uint16(b[4:])
		s := binary.NativeEndian.Uint32(b[8:])
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return false, ErrTruncated
		}
		body := b[unix.SizeofNlMsghdr:l]
		if next := (l + 3) &^ 3; next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		if seq != 0 && s != seq {
			continue
		}
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(body) < 4 {
				return false, ErrTruncated
			}
			if code := int32(binary.NativeEndian.Uint32(body)); code != 0 {
				return true, unix.Errno(-code)
			}
			return true, nil
		}
		fn(typ, body)
	}
	return false, nil
}

// attrs calls fn with each route attribute in b.
func attrs(b []byte, fn func(typ uint16, data []byte)) error {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return ErrTruncated
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^unix.NLA_F_NESTED, b[unix.SizeofRtAttr:l])
		if next := (l + 3) &^ 3; next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
	}
	return nil
}

// ip is an attribute's address, if it is one of family's.
func ip(family uint8, data []byte) netip.Addr {
	switch {
	case family == unix.AF_INET && len(data) == 4:
		return netip.AddrFrom4([4]byte(data))
	case family == unix.AF_INET6 && len(data) == 16:
		return netip.AddrFrom16([16]byte(data))
	}
	return netip.Addr{}
}

// ParseAddrs reads the RTM_NEWADDR messages of a dump; other messages and
// malformed entries are skipped, and a malformed stream ends the parse
// with ErrTruncated and what was read so far.
func ParseAddrs(b []byte) ([]Addr, error) {
	var out []Addr
	var bad error
	_, err := scan(b, 0, func(typ uint16, body []byte) {
		if typ != unix.RTM_NEWADDR || len(body) < unix.SizeofIfAddrmsg {
			return
		}
		m := (*unix.IfAddrmsg)(unsafe.Pointer(&body[0]))
		a := Addr{Index: int(m.Index), Flags: uint32(m.Flags), Scope: m.Scope}
		var local, address netip.Addr
		if err := attrs(body[unix.SizeofIfAddrmsg:], func(t uint16, d []byte) {
			switch t {
			case unix.IFA_LOCAL:
				local = ip(m.Family, d)
			case unix.IFA_ADDRESS:
				address = ip(m.Family, d)
			case unix.IFA_FLAGS:
				if len(d) == 4 {
					a.Flags = binary.NativeEndian.Uint32(d)
				}
			}
		}); err != nil {
			bad = err
			return
		}
		if !local.IsValid() {
			local = address // IPv6 has no IFA_LOCAL
		}
		if p, err := local.Prefix(int(m.Prefixlen)); err == nil && local.IsValid() {
			a.Prefix = netip.PrefixFrom(local, p.Bits())
			out = append(out, a)
		}
	})
	if err == nil {
		err = bad
	}
	return out, err
}

// ParseRoutes reads the RTM_NEWROUTE messages of a dump for the main
// table, as ParseAddrs does addresses.
func ParseRoutes(b []byte) ([]Route, error) {
	var out []Route
	var bad error
	_, err := scan(b, 0, func(typ uint16, body []byte) {
		if typ != unix.RTM_NEWROUTE || len(body) < unix.SizeofRtMsg {
			return
		}
		m := (*unix.RtMsg)(unsafe.Pointer(&body[0]))
		r := Route{Protocol: m.Protocol, Scope: m.Scope, Type: m.Type, Flags: m.Flags}
		table := uint32(m.Table)
		dst := netip.IPv4Unspecified()
		if m.Family == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		} else if m.Family != unix.AF_INET {
			return
		}
		if err := attrs(body[unix.SizeofRtMsg:], func(t uint16, d []byte) {
			switch t {
			case unix.RTA_DST:
				if a := ip(m.Family, d); a.IsValid() {
					dst = a
				}
			case unix.RTA_SRC:
				if a := ip(m.Family, d); a.IsValid() && int(m.Src_len) <= a.BitLen() {
					r.Src = netip.PrefixFrom(a, int(m.Src_len))
				}
			case unix.RTA_GATEWAY:
				r.Gateway = ip(m.Family, d)
			case unix.RTA_PREFSRC:
				r.PrefSrc = ip(m.Family, d)
			case unix.RTA_OIF:
				if len(d) == 4 {
					r.Index = int(binary.NativeEndian.Uint32(d))
				}
			case unix.RTA_PRIORITY:
				if len(d) == 4 {
					r.Metric = binary.NativeEndian.Uint32(d)
				}
			case unix.RTA_TABLE:
				if len(d) == 4 {
					table = binary.NativeEndian.Uint32(d)
				}
			case unix.RTA_MULTIPATH:
				r.Nexthops = nexthops(m.Family, d)
				if len(r.Nexthops) > 0 {
					r.Index = r.Nexthops[0].Index
				}
			case unix.RTA_METRICS:
				r.Metrics = append([]byte(nil), d...)
			case unix.RTA_PREF:
				if len(d) == 1 {
					r.Pref = d[0]
				}
			}
		}); err != nil {
			bad = err
			return
		}
		p, err := dst.Prefix(int(m.Dst_len))
		if err != nil || table != unix.RT_TABLE_MAIN {
			return
		}
		r.Dst = p
		out = append(out, r)
	})
	if err == nil {
		err = bad
	}
	return out, err
}

// nexthops reads an RTA_MULTIPATH attribute's paths, up to a malformed one.
func nexthops(family uint8, b []byte) []Nexthop {
	var out []Nexthop
	for len(b) >= unix.SizeofRtNexthop {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofRtNexthop || l > len(b) {
			break
		}
		h := Nexthop{Flags: b[2], Hops: b[3], Index: int(binary.NativeEndian.Uint32(b[4:]))}
		attrs(b[unix.SizeofRtNexthop:l], func(t uint16, d []byte) {
			if t == unix.RTA_GATEWAY {
				h.Gateway = ip(family, d)
			}
		})
		out = append(out, h)
		b = b[min((l+3)&^3, len(b)):]
	}
	return out
}
