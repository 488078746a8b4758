package slirp

import (
	"net/netip"
	"time"

	"github.com/gopasst/gopasst/pkg/rtnl"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// The host's neighbours, mirrored to the guest as passt 2026.03 mirrors
// them: a host on the template interface's link has, to the guest, the
// MAC the host's neighbour table has for it, so that a guest that sees
// its network's hosts (by ARP, NDP, or the source of the frames it gets
// from them) sees them as they are. The table is keyed by the address as
// the guest sees it (neighGuestAddr), and is heard from the kernel
// (WatchNeighbours): a dump at start, then every change, and a dump
// again when changes were lost (neighResync).
//
// Lookups (neighMAC) fall back to the gateway's entry, then to our MAC.
// The addresses that stand for the host (--map-host-loopback, by default
// the gateway, and --map-guest-addr) have a permanent entry with our MAC,
// a blocker: what the guest sends there is the host's, not the router's
// or that of whoever has the address on the host's link. A flow keeps
// the MAC it first sent with (flowMAC).

// neighMax bounds the table, as passt's: entries past it are ignored.
const neighMax = 512

// neighDumpTries bounds the dumps at start while changes are lost
// during them (ENOBUFS): a link churned that fast is not waited for.
const neighDumpTries = 3

type neighEntry struct {
	mac       [6]byte
	permanent bool // a blocker: no change touches it
	unseen    bool // not in the dump under way (neighDump)
}

// neighResyncEvery spaces the dumps that make up for lost changes
// (neighResync): a link churned faster than the engine reads costs a
// dump every 10 s at most.
const neighResyncEvery = 10 * time.Second

// neighAnnounceMax bounds the announcements a tick: a link that churns
// its neighbours as fast as a host on it can have it (made-up addresses,
// forced out of the host's table as fast) costs the guest 640 frames a
// second at most. An entry left unannounced is still given in answers.
const neighAnnounceMax = 64

type neighTable struct {
	entries  map[netip.Addr]neighEntry
	conn     *rtnl.Conn    // nil unless watching
	if4, if6 int           // the template interfaces whose neighbours count
	buf      []byte        // what one read of conn takes
	lost     bool          // changes were lost since the last dump
	unseen   int           // entries marked unseen (neighMark)
	nextDump time.Duration // when neighResync may dump again
	budget   int           // announcements left this tick
}

// neighInit puts in the blockers, in a table sized for its bound.
func (e *Engine) neighInit() {
	e.neigh.entries = make(map[netip.Addr]neighEntry, neighMax)
	e.neigh.budget = neighAnnounceMax
	for _, a := range []netip.Addr{e.cfg.HostLoopback(false), e.cfg.MapGuestAddr4,
		e.cfg.HostLoopback(true), e.cfg.MapGuestAddr6} {
		if a.IsValid() && !a.IsUnspecified() {
			e.neighUpdate(a, e.cfg.OurMAC, true)
		}
	}
}

// WatchNeighbours mirrors to the guest the neighbours of the template
// interfaces, if4 for IPv4 and if6 for IPv6 (0: none), as c hears them
// (rtnl.OpenNeigh), starting with a dump of both tables, dumped again
// while changes are lost: call it before Run, and before the sandbox,
// which opens no netlink socket. The engine owns c from then on, unless
// this fails.
func (e *Engine) WatchNeighbours(c *rtnl.Conn, if4, if6 int) error {
	e.neigh.if4, e.neigh.if6 = if4, if6
	err := e.neighDump(c)
	for try := 1; err == unix.ENOBUFS && try < neighDumpTries; try++ {
		err = e.neighDump(c)
	}
	lost := err == unix.ENOBUFS // neighResync tries again
	if err == nil || lost {
		// Changes heard during the dump wait in the socket: epoll
		// reports them at once.
		err = e.epollAdd(c.Fd(), unix.EPOLLIN, epollRef{kind: kindNeigh})
	}
	if err != nil {
		e.neighMark() // no change will update what the dump brought
		e.neighSweep()
		return err
	}
	if lost {
		e.logLimited(neighLost, "the host's neighbour table: %v", unix.ENOBUFS)
	}
	e.neigh.conn, e.neigh.buf, e.neigh.lost = c, make([]byte, 32<<10), lost
	return nil
}

// neighDump reads both tables afresh: an entry in neither is gone, and
// those in them come in, announced if new. unix.ENOBUFS says changes
// were lost meanwhile: an entry may be wrong, or gone.
func (e *Engine) neighDump(c *rtnl.Conn) error {
	e.neighMark()
	var lost error
	for _, d := range []struct{ family, index int }{{unix.AF_INET, e.neigh.if4}, {unix.AF_INET6, e.neigh.if6}} {
		if d.index == 0 {
			continue
		}
		switch err := c.DumpNeighs(d.family, d.index, e.neighEvent); err {
		case nil:
		case unix.ENOBUFS:
			lost = err
		default:
			return err
		}
	}
	e.neighSweep()
	return lost
}

// neighMark marks every entry but the blockers unseen; an update clears
// the mark.
func (e *Engine) neighMark() {
	for a, n := range e.neigh.entries {
		if !n.permanent && !n.unseen {
			n.unseen = true
			e.neigh.entries[a] = n
			e.neigh.unseen++
		}
	}
}

// neighSweep forgets the entries still unseen.
func (e *Engine) neighSweep() {
	for a, n := range e.neigh.entries {
		if n.unseen {
			delete(e.neigh.entries, a)
		}
	}
	e.neigh.unseen = 0
}

// neighEvict makes room in a full table, during a dump, by forgetting
// an entry the dump has not brought yet: the sweep would forget it
// anyway, unless the dump brings it later. Without, a table full of
// entries the host had dropped while changes were lost refused the ones
// it has now, which then stayed out after the sweep.
func (e *Engine) neighEvict() bool {
	if e.neigh.unseen == 0 {
		return false
	}
	for a, n := range e.neigh.entries {
		if n.unseen {
			delete(e.neigh.entries, a)
			e.neigh.unseen--
			return true
		}
	}
	return false
}

// neighRead takes in the changes heard, a bounded number of reads at a
// time so that the guest gets its turn.
func (e *Engine) neighRead() {
	for range 64 {
		switch err := e.neigh.conn.ReadNeighs(e.neigh.buf, e.neighEvent); err {
		case nil, unix.EINTR:
		case unix.EAGAIN:
			return
		default:
			// ENOBUFS: changes were lost, which the next tick's
			// dump makes up for; what comes next is still right.
			e.logLimited(neighLost, "the host's neighbour table: %v", err)
			if err != unix.ENOBUFS {
				return
			}
			e.neigh.lost = true
		}
	}
}

// neighTick renews the announcements' budget, and dumps the tables again
// if changes were lost.
func (e *Engine) neighTick() {
	e.neigh.budget = neighAnnounceMax
	e.neighResync()
}

// neighResync dumps the host's tables again once changes were lost, so
// that no entry stays wrong, or outlives the host's, for long.
func (e *Engine) neighResync() {
	if !e.neigh.lost || e.now < e.neigh.nextDump {
		return
	}
	e.neigh.nextDump = e.now + neighResyncEvery
	err := e.neighDump(e.neigh.conn)
	if e.neigh.lost = err != nil; err != nil {
		e.logLimited(neighLost, "the host's neighbour table: %v", err)
	}
}

// neighEvent takes one entry of the host's table, of the template
// interface of its family, into ours, or takes it out: gone, or at a MAC
// no frame may come from (zero, or a group's: the host's table takes
// what its link says, or root sets), which the guest is not to see.
func (e *Engine) neighEvent(n rtnl.Neigh) {
	ifi := e.neigh.if6
	if n.Addr.Is4() {
		ifi = e.neigh.if4
	}
	if ifi == 0 || n.Index != ifi {
		return
	}
	a, ok := e.neighGuestAddr(n.Addr)
	if !ok {
		return
	}
	switch mac, ok := n.Ethernet(); {
	case ok && stationMAC(mac):
		e.neighUpdate(a, mac, false)
	case ok || n.Gone():
		e.neighRemove(a)
	}
}

// neighGuestAddr is how the guest sees a host neighbour at a, as passt's
// nat_inbound maps it: the host's loopback (127.0.0.1 or ::1) and its own
// address are the addresses mapped to them, if any; any other address
// the guest could reach is itself; the guest's own (the address it
// sends from, seen4 and seen6, and guestEUI64 too), an unspecified, a
// loopback or an IPv4-mapped address is none (ok false).
func (e *Engine) neighGuestAddr(a netip.Addr) (_ netip.Addr, ok bool) {
	if a.Is4() && a.IsLoopback() && a != loopback4 || a.Is4In6() {
		return netip.Addr{}, false // not 127.0.0.1, the one passt maps; no IPv6 neighbour
	}
	if m := e.hostStandIn(a); m.IsValid() {
		return m, true
	}
	if a.IsUnspecified() || a.IsLoopback() || a == e.cfg.Addr4 || a == e.addrSeen4 || a == e.cfg.Addr6 || a == e.addrSeen6 || e.guestEUI64(a) {
		return netip.Addr{}, false
	}
	return a, true
}

// guestEUI64 tells whether a's interface identifier is the one the guest
// makes of its MAC (RFC 4291 2.5.1), in the link-local prefix and in
// ours, unless it autoconfigures otherwise. A host on the host's link
// that knows the guest's MAC (QEMU's default is one) can have the host's
// table hold such an address: announced while the guest checks it for
// duplicates, it would have the guest give it up (RFC 4862 5.4.5).
func (e *Engine) guestEUI64(a netip.Addr) bool {
	m, b := e.guestMAC, a.As16()
	return a.Is6() && [8]byte(b[8:]) == [8]byte{m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]}
}

var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	zeroMAC   [6]byte
)

// neighUpdate sets a's MAC, unless a's entry is a blocker. A new entry
// whose MAC is not ours is announced to the guest, within the tick's
// budget: an ARP announcement or an unsolicited Neighbor Advertisement,
// as passt sends them, which a guest that knew a with our MAC takes.
func (e *Engine) neighUpdate(a netip.Addr, mac [6]byte, permanent bool) {
	if n, ok := e.neigh.entries[a]; ok {
		if !n.permanent {
			e.neigh.entries[a] = neighEntry{mac: mac}
			if n.unseen {
				e.neigh.unseen--
			}
		}
		return
	}
	if len(e.neigh.entries) >= neighMax && !e.neighEvict() {
		// A link with more neighbours sets this off with each change.
		if e.cfg.Debug && e.logDue(neighFull) {
			e.logf("neighbour table full (%d entries): %v left out", neighMax, a)
		}
		return
	}
	e.neigh.entries[a] = neighEntry{mac: mac, permanent: permanent}
	if mac == e.cfg.OurMAC || e.neigh.budget == 0 {
		return
	}
	e.neigh.budget--
	if a.Is4() {
		e.arpAnnounce(a, mac)
	} else {
		e.sendNA(allNodes, a)
	}
}

// neighRemove forgets a's entry, unless it is a blocker.
func (e *Engine) neighRemove(a netip.Addr) {
	if n, ok := e.neigh.entries[a]; ok && !n.permanent {
		delete(e.neigh.entries, a)
		if n.unseen {
			e.neigh.unseen--
		}
	}
}

// neighMAC is the MAC the guest should know a by: its entry's, else the
// gateway's entry's, else ours.
func (e *Engine) neighMAC(a netip.Addr) [6]byte {
	if n, ok := e.neigh.entries[a]; ok {
		return n.mac
	}
	if n, ok := e.neigh.entries[e.gateway(a)]; ok {
		return n.mac
	}
	return e.cfg.OurMAC
}

// remoteMAC is a flow's remote's MAC to the guest, and the address it
// is for (invalid: not looked up yet).
type remoteMAC struct {
	mac [6]byte
	of  netip.Addr
}

// flowMAC is the source MAC of a flow's frames from remote a: m's, which
// the first frame from a sets (neighMAC) and the flow keeps, as passt's
// flows keep theirs. A frame from another address looks it up anew: a
// UDP or echo flow's replies come from where the guest last sent, and
// to passt each of those is a flow of its own.
func (e *Engine) flowMAC(m *remoteMAC, a netip.Addr) [6]byte {
	if m.of != a {
		m.mac, m.of = e.neighMAC(a), a
	}
	return m.mac
}

// arpAnnounce tells the guest that a is at mac: an ARP request from a
// for a itself (RFC 5227's announcement), from mac, broadcast.
func (e *Engine) arpAnnounce(a netip.Addr, mac [6]byte) {
	b := e.reserve(header.EthernetLen + header.ARPLen)
	if b == nil {
		return
	}
	ip := a.As4()
	header.Ethernet(b).Encode(broadcastMAC, mac, header.EtherTypeARP)
	header.ARP(b[header.EthernetLen:]).Encode(header.ARPRequest, mac[:], ip[:], zeroMAC[:], ip[:])
	e.commit(pad(b, header.EthernetLen+header.ARPLen))
}
