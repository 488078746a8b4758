package rtnl

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Neigh is one entry of the kernel's neighbour table (ARP, NDP), as a
// dump or a change (RTM_NEWNEIGH, RTM_DELNEIGH) tells it.
type Neigh struct {
	Addr    netip.Addr
	Index   int
	State   uint16 // NUD_*
	Type    uint8  // ndm_type: the address's route type (RTN_*)
	MAC     [6]byte
	MACLen  int  // NDA_LLADDR's length, 0 without one; MAC holds it only at 6
	Deleted bool // RTM_DELNEIGH
}

// nudValid are the states whose link-layer address holds (the kernel's
// NUD_VALID).
const nudValid = unix.NUD_PERMANENT | unix.NUD_NOARP | unix.NUD_REACHABLE |
	unix.NUD_PROBE | unix.NUD_STALE | unix.NUD_DELAY

// Gone tells whether the entry is no more: deleted, or in a state whose
// link-layer address does not hold (failed, incomplete).
func (n *Neigh) Gone() bool { return n.Deleted || n.State&nudValid == 0 }

// Ethernet returns the entry's MAC if it is one to use: the entry is not
// Gone, of route type unicast, with six bytes of link-layer address.
// (passt compares the type with ARPHRD_ETHER, which is 1 as RTN_UNICAST
// is: the kernel puts the route type there.)
func (n *Neigh) Ethernet() ([6]byte, bool) {
	return n.MAC, !n.Gone() && n.Type == unix.RTN_UNICAST && n.MACLen == 6
}

// OpenNeigh opens a route netlink socket that hears the changes to the
// neighbour tables of interfaces if4 and if6 (the neighbour group,
// RTMGRP_NEIGH, which an unprivileged process may join, filtered). The
// socket takes in nothing but IPv4 and IPv6 neighbour messages, of
// changes only those of if4 and if6, and the ends of answers
// (neighFilter), for good: the engine keeps it in its sandbox, where a
// compromised engine could ask it, or join it to a group, for the host's
// links, addresses and routes.
func OpenNeigh(if4, if6 int) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	prog := neighFilter(if4, if6)
	err = unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]})
	if err == nil {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_LOCK_FILTER, 1)
	}
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_NEIGH})
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Conn{fd: fd}, nil
}

// neighFilter is a socket filter that keeps a datagram whose first
// message is NLMSG_DONE, NLMSG_ERROR, or RTM_NEWNEIGH or RTM_DELNEIGH of
// family AF_INET or AF_INET6, on interface if4 or if6 if it is a change
// (sequence number 0), and drops any other. A change's datagram holds one
// message, a dump's messages of one type and family, and a dump's last
// may end with NLMSG_DONE: a dump is kept whole whatever interface it
// brings (DumpNeighs asks for one, which an older kernel may not
// honour), or its end could be dropped and the dump wait for it for
// ever. A bridge's forwarding entries (family AF_BRIDGE) share the
// neighbour group: a host on a bridged link sets one off with every
// source MAC it makes up. Those, and another interface's changes, never
// wake us nor fill the socket. Classic BPF loads in network order,
// netlink is in the host's: the values are compared as loaded.
func neighFilter(if4, if6 int) []unix.SockFilter {
	u16 := func(v uint16) uint32 {
		return uint32(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)))
	}
	u32 := func(v int) uint32 {
		return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, uint32(v)))
	}
	const family, index = unix.SizeofNlMsghdr, unix.SizeofNlMsghdr + 4 // ndm_family, ndm_ifindex
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 4}, // nlmsg_type
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 12, K: u16(unix.NLMSG_DONE)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 11, K: u16(unix.NLMSG_ERROR)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: u16(unix.RTM_NEWNEIGH)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 8, K: u16(unix.RTM_DELNEIGH)},
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: family},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: unix.AF_INET},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 5, K: unix.AF_INET6},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 8}, // nlmsg_seq
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 4, K: 0},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: index},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 2, K: u32(if4)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: u32(if6)},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff},
	}
}

// Fd is the socket's descriptor, to poll and read changes from.
func (c *Conn) Fd() int { return c.fd }

// DumpNeighs calls fn with family's neighbours on interface index, one
// the socket hears (OpenNeigh), and with every change the socket heard
// meanwhile, in the order they came. The kernel takes the interface from
// the NDA_IFINDEX attribute, not from the header.
// unix.ENOBUFS, after all that, says changes were lost before or during
// the dump (which may then hold an entry since gone): dump again.
func (c *Conn) DumpNeighs(family, index int, fn func(Neigh)) error {
	msg := make([]byte, unix.SizeofNdMsg)
	*(*unix.NdMsg)(unsafe.Pointer(&msg[0])) = unix.NdMsg{Family: uint8(family), Ifindex: int32(index)}
	msg = attr(msg, unix.NDA_IFINDEX, binary.NativeEndian.AppendUint32(nil, uint32(index)))
	b, err := c.dump(unix.RTM_GETNEIGH, msg)
	if err != nil && err != unix.ENOBUFS {
		return err
	}
	if _, perr := ParseNeighs(b, fn); perr != nil {
		return perr
	}
	return err
}

// ParseNeighs calls fn with each neighbour message of b, a dump's answer
// or changes heard, of family AF_INET or AF_INET6 with an address of that
// family; it skips other messages, and reports whether b ends a dump
// (NLMSG_DONE, or an error, which it returns). A malformed stream ends
// the parse with ErrTruncated.
func ParseNeighs(b []byte, fn func(Neigh)) (done bool, err error) {
	var bad error
	done, err = scan(b, 0, func(typ uint16, body []byte) {
		if typ != unix.RTM_NEWNEIGH && typ != unix.RTM_DELNEIGH || len(body) < unix.SizeofNdMsg {
			return
		}
		m := (*unix.NdMsg)(unsafe.Pointer(&body[0]))
		n := Neigh{Index: int(m.Ifindex), State: m.State, Type: m.Type, Deleted: typ == unix.RTM_DELNEIGH}
		if err := attrs(body[unix.SizeofNdMsg:], func(t uint16, d []byte) {
			switch t {
			case unix.NDA_DST:
				n.Addr = ip(m.Family, d)
			case unix.NDA_LLADDR:
				n.MACLen, n.MAC = len(d), [6]byte{} // the last one counts
				if len(d) == 6 {
					n.MAC = [6]byte(d)
				}
			}
		}); err != nil {
			bad = err
			return
		}
		if n.Addr.IsValid() {
			fn(n)
		}
	})
	if err == nil {
		err = bad
	}
	return done, err
}

// ReadNeighs reads what changes the socket has heard, without waiting,
// into buf, and calls fn with each; it returns unix.EAGAIN once there is
// nothing more to read. Only the kernel's messages are taken: another
// process with the right to send to our port is not the neighbour table.
// unix.ENOBUFS says changes were lost: the kernel had more than the
// socket's buffer holds.
func (c *Conn) ReadNeighs(buf []byte, fn func(Neigh)) error {
	n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_DONTWAIT)
	if err != nil {
		return err
	}
	if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
		return nil
	}
	_, err = ParseNeighs(buf[:n], fn)
	return err
}
