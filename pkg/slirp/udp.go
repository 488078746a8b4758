package slirp

import (
	"net/netip"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// UDP: one host socket per guest source address and port. The socket is
// not connected, so one guest socket can talk to many peers (a resolver
// and a NTP server, say); replies carry their source, which is mapped back
// to what the guest expects. Only the peers the guest sent to are heard,
// as passt, whose flow sockets are connected, hears only them: anyone
// else who reaches the host's port is dropped, or a guest that sent from
// a port would be open on it to the host's whole network.

const (
	udpIdle       = 3 * time.Minute  // older passt's UDP flow timeout; 2026.03 takes conntrack's: 30 s, 120 s once answered
	udpEvictAfter = 30 * time.Second // idle this long, a flow gives its place at --max-udp (udpEvictIdle)
	udpMaxRead    = 32               // datagrams read per readiness event
	udpMaxPeers   = 64               // peers a flow hears; the oldest goes first
)

type udpFlow struct {
	guest    netip.AddrPort
	sent     netip.AddrPort // where the guest last sent, as it sees it
	peers    []udpPeer      // the host peers it sent to
	nextPeer int            // the peer replaced next once peers is full
	ttl      uint8          // the TTL or hop limit the socket sends with, the guest's (0: the kernel's)
	idx      int32
	fd       int
	lastAct  time.Duration
}

// udpPeer is a host peer a flow sent to: what passt makes a flow of.
type udpPeer struct {
	addr netip.AddrPort // unmapped
	mac  remoteMAC      // its MAC to the guest, set by its first reply (flowMAC)
}

// addPeer records that the flow sent to the host peer to.
func (f *udpFlow) addPeer(to netip.AddrPort) {
	to = withoutZone(netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
	if f.hears(to) {
		return
	}
	if len(f.peers) < udpMaxPeers {
		f.peers = append(f.peers, udpPeer{addr: to})
		return
	}
	f.peers[f.nextPeer] = udpPeer{addr: to}
	f.nextPeer = (f.nextPeer + 1) % udpMaxPeers
}

// peer is the flow's peer from (unmapped), most recent first, or nil if
// it never sent there.
func (f *udpFlow) peer(from netip.AddrPort) *udpPeer {
	for i := len(f.peers) - 1; i >= 0; i-- {
		if f.peers[i].addr == from {
			return &f.peers[i]
		}
	}
	return nil
}

// hears tells whether the flow sent to from (unmapped).
func (f *udpFlow) hears(from netip.AddrPort) bool { return f.peer(from) != nil }

type udpTable struct {
	flowTable[netip.AddrPort, udpFlow]
	errBuf  [header.UDPLen + 1280]byte // an error's quoted datagram
	oob     [256]byte                  // its control message
	evictAt time.Duration              // no flow is idle enough for udpEvictIdle before this
	out     udpSendBatch
}

// udpBatchMax is how many datagrams one sendmmsg carries.
const udpBatchMax = 64

// udpSendBatch gathers consecutive guest datagrams of one flow, still in
// the input buffer, for one sendmmsg: a burst of small datagrams costs one
// system call instead of one each.
type udpSendBatch struct {
	flow  *udpFlow
	n     int
	msgs  [udpBatchMax]mmsghdr
	iovs  [udpBatchMax]unix.Iovec
	addrs [udpBatchMax]sockaddr
}

func (e *Engine) udpInput(src, dst netip.Addr, ttl uint8, u header.UDP) {
	// Flows are between ports, as passt's (and unicast addresses,
	// l4Input).
	if u.SrcPort() == 0 || u.DstPort() == 0 {
		e.Stats.Unhandled++
		return
	}
	guest := netip.AddrPortFrom(src, u.SrcPort())
	if _, in := e.fwd.udpIn.lookup(udpInKey{guest.Port(), netip.AddrPortFrom(dst, u.DstPort())}); in != nil {
		e.udpReply(in, u.Payload())
		return
	}
	sent := netip.AddrPortFrom(dst, u.DstPort())
	to := e.natFromGuest(header.ProtoUDP, sent)
	if !to.IsValid() {
		e.sendUnreachable(unix.ENETUNREACH, src, dst, header.ProtoUDP, u)
		return
	}
	_, f := e.udp.lookup(guest)
	if f == nil {
		if e.udpAtCap() {
			e.sendUnreachable(unix.EACCES, src, dst, header.ProtoUDP, u)
			return
		}
		if f = e.udpOpen(guest, to.Addr()); f == nil {
			return
		}
	}
	f.lastAct = e.now
	if e.cfg.Trace && u.DstPort() == dnsPort {
		if q, err := parseDNSQuery(u.Payload()); err == nil {
			e.logf("DNS query %#04x from %v: %q type %d", q.ID, guest, q.Name, q.Type)
		}
	}
	if ttl != f.ttl {
		e.udpSetTTL(f, ttl)
	}
	f.sent = sent
	f.addPeer(to)
	e.udpQueue(f, to, u.Payload())
}

// udpSetTTL has f's socket send with the TTL (or hop limit) the guest's
// datagrams came with, as passt does: a guest's traceroute then meets
// the routers it means to (udpErrors relays their answers). Datagrams
// batched before go first, with the TTL they came with.
func (e *Engine) udpSetTTL(f *udpFlow, ttl uint8) {
	if e.udp.out.flow == f {
		e.udpFlush()
	}
	level, opt := unix.IPPROTO_IP, unix.IP_TTL
	if f.guest.Addr().Is6() {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS
	}
	if err := unix.SetsockoptInt(f.fd, level, opt, int(ttl)); err != nil {
		e.debugf("UDP %v: TTL %d: %v", f.guest, ttl, err)
	}
	f.ttl = ttl
}

// udpFlows is what --max-udp caps: the guest's flows, the inbound peers
// and pasta's loopback senders (splice_udp.go) together.
func (e *Engine) udpFlows() int { return e.udp.count + e.fwd.udpIn.count + e.spliceUDP.count }

// udpQueue adds a datagram for to to the flow's batch.
func (e *Engine) udpQueue(f *udpFlow, to netip.AddrPort, payload []byte) {
	b := &e.udp.out
	if b.flow != f {
		e.udpFlush()
		b.flow = f
	}
	i := b.n
	b.n++
	b.iovs[i] = iovec(unsafe.SliceData(payload), len(payload))
	name, namelen := putSockaddr(&b.addrs[i], to)
	b.msgs[i] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(name), Namelen: namelen, Iov: &b.iovs[i], Iovlen: 1}}
	// A datagram made whole (frameInput) lies in a buffer that the next
	// such frame overwrites: it cannot wait for the batch.
	if b.n == udpBatchMax || e.inWhole(payload) {
		e.udpFlush()
	}
}

// udpFlush sends the batched datagrams. UDP may drop: a datagram the
// kernel refuses is skipped, and the rest still go.
//
// A refusal may be an earlier datagram's: an ICMP error about it sets the
// socket's error (IP_RECVERR), which the next send returns, and clears,
// instead of sending, whatever its peer. That datagram gets another try;
// the ICMP error stays queued for udpErrors.
func (e *Engine) udpFlush() {
	b := &e.udp.out
	for sent := 0; sent < b.n; {
		n, err := sendmmsg(b.flow.fd, b.msgs[sent:b.n])
		if err != nil && err != unix.EAGAIN {
			n, err = sendmmsg(b.flow.fd, b.msgs[sent:b.n])
		}
		if err != nil {
			e.debugf("UDP %v: send: %v", b.flow.guest, err)
			n = 1
		}
		sent += n
	}
	b.flow, b.n = nil, 0
}

// udpOpen creates the host socket for a guest source. It keeps the guest's
// source port when it is free, as passt does, so peers that care about
// ports see the same one. An IPv6 socket is dual-stack, so a query to a
// DNS stand-in can go on to an IPv4 resolver. Errors the host receives
// for the socket's datagrams (IP_RECVERR) go back to the guest as ICMP.
// dst, the host address of the first datagram, picks the outbound
// interface and source address.
func (e *Engine) udpOpen(guest netip.AddrPort, dst netip.Addr) *udpFlow {
	fam := socketFamily(guest.Addr())
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		e.logLimited(openUDP, "UDP: socket: %v", err)
		return nil
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	if fam == unix.AF_INET6 {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}
	if err := e.bindOutbound(fd, fam == unix.AF_INET6, dst, guest.Port()); err != nil {
		e.logLimited(openUDP, "UDP %v: %v", guest, err)
		unix.Close(fd)
		return nil
	}
	idx, f := e.udp.add(guest)
	*f = udpFlow{guest: guest, idx: idx, fd: fd, lastAct: e.now}
	if err := e.epollAdd(fd, unix.EPOLLIN, epollRef{kind: kindUDP, gen: e.udp.gen(idx), idx: idx}); err != nil {
		e.logLimited(openUDP, "UDP %v: %v", guest, err)
		e.udpClose(f)
		return nil
	}
	return f
}

// udpSockEvent forwards datagrams, and errors, from a host socket to the
// guest.
func (e *Engine) udpSockEvent(idx int32, gen uint32, events uint32) {
	f := e.udp.get(idx, gen)
	if f == nil {
		return
	}
	if events&unix.EPOLLERR != 0 {
		e.udpErrors(f)
	}
	off := l4Off(f.guest.Addr())
	e.udpToGuest(f.fd, &off, func(from netip.AddrPort, _ netip.Addr, _ []byte) (src, dst netip.AddrPort, mac [6]byte) {
		p := f.peer(from)
		if p == nil {
			e.Stats.Dropped++ // a peer the guest never sent to
			return from, netip.AddrPort{}, mac
		}
		f.lastAct = e.now
		src = e.natToGuest(header.ProtoUDP, from, f.guest.Addr(), f.sent)
		return src, f.guest, e.flowMAC(&p.mac, src.Addr())
	})
}

// udpErrors relays the ICMP errors queued on a flow's socket to the guest,
// as errors about the datagrams the guest sent: a closed port on the host
// side becomes "connection refused" in the guest instead of silence, and
// a router's "time exceeded" comes from that router, as passt relays it,
// so that traceroute works from the guest.
func (e *Engine) udpErrors(f *udpFlow) {
	buf := e.udp.errBuf[:]
	var ie icmpErr
	for {
		n, dst, ok, err := recvErr(f.fd, buf[header.UDPLen:], e.udp.oob[:], &ie)
		if err != nil {
			return
		}
		if !ok || !f.hears(dst) {
			continue // a local error, or one about a peer never sent to: forged
		}
		remote := e.natToGuest(header.ProtoUDP, dst, f.guest.Addr(), f.sent)
		quote := header.UDP(buf[:header.UDPLen+n])
		quote.Encode(f.guest.Port(), remote.Port(), n)
		e.debugf("UDP %v -> %v: ICMP type %d code %d from %v", f.guest, dst, ie.typ, ie.code, ie.offender)
		// The peer's own error comes from the address the guest sent
		// to; a router's from that router, as the guest would see it;
		// the host's own, for want of a mapped address, from the
		// gateway, as a router between them would send it.
		from := remote.Addr()
		if ie.offender != dst.Addr() {
			from = e.natToGuest(header.ProtoUDP, netip.AddrPortFrom(ie.offender, 0), f.guest.Addr(), netip.AddrPort{}).Addr()
			if from == f.guest.Addr() {
				from = e.gateway(from)
			}
		}
		if ie.v6 != f.guest.Addr().Is6() || !isUnicast(from) || from.Is4() != f.guest.Addr().Is4() {
			continue // no form the guest's family has, or no sender to give
		}
		e.sendICMPError(&ie, from, f.guest.Addr(), remote.Addr(), header.ProtoUDP, quote)
	}
}

// udpToGuest reads up to udpMaxRead datagrams from fd, each straight into
// its frame in the output queue, and sends them to the guest with the
// source, destination and source MAC that route picks for each sender. *off predicts
// where the L4 header goes (it depends on the guest family route picks);
// a wrong guess costs one move of the payload and updates the guess.
// route sees the payload too (nil if it was cut short), and may take it
// elsewhere itself (splice_udp.go), giving no destination.
func (e *Engine) udpToGuest(fd int, off *int, route udpRoute) {
	for range udpMaxRead {
		o := *off + header.UDPLen
		// Room for either family's headers and the largest payload the
		// guest's MTU carries (IPv4's, whose header is smaller).
		max4 := e.mtu() - header.IPv4MinLen - header.UDPLen
		b := e.reserve(l4Off6 + header.UDPLen + max4)
		if b == nil {
			// No room, or no guest: the datagram is dropped, as a full
			// link drops it. Left in the socket, it would have epoll
			// report the socket at every turn with nothing to take it.
			if !e.udpDrop(fd, route) {
				return
			}
			continue
		}
		// What the frame cannot hold goes on in spliceBuf, after room
		// for the head and a UDP header (udpFragments).
		n, from, to, err := recvfromTo(fd, b[o:o+max4], e.spliceBuf[header.UDPLen+max4:])
		if err != nil {
			return
		}
		var payload []byte // nil: cut short
		switch {
		case n <= max4:
			payload = b[o : o+n]
		case header.UDPLen+n <= len(e.spliceBuf):
			copy(e.spliceBuf[header.UDPLen:], b[o:o+max4])
			payload = e.spliceBuf[header.UDPLen : header.UDPLen+n]
		}
		src, dst, mac := route(from, to, payload)
		if !dst.IsValid() || src.Addr().Is4() != dst.Addr().Is4() {
			continue
		}
		if n > e.mtu()-ipHdrLen(dst.Addr())-header.UDPLen {
			e.udpFragments(mac, src, dst, payload)
			continue
		}
		if *off = l4Off(dst.Addr()); *off+header.UDPLen != o {
			// Move the payload before the headers are written over it.
			copy(b[*off+header.UDPLen:], b[o:o+n])
		}
		e.commit(e.fillUDP(b, mac, src.Addr(), src.Port(), dst.Addr(), dst.Port(), n))
	}
}

// udpFragments sends the guest a datagram too large for its MTU (nil:
// cut short, dropped) in IP fragments (sendFragments).
func (e *Engine) udpFragments(mac [6]byte, src, dst netip.AddrPort, payload []byte) {
	if payload == nil {
		e.Stats.Dropped++
		return
	}
	d := e.spliceBuf[:header.UDPLen+len(payload)]
	copy(d[header.UDPLen:], payload)
	u := header.UDP(d)
	u.Encode(src.Port(), dst.Port(), len(payload))
	u.SetChecksum(header.Fold(header.Checksum(u, header.PseudoHeaderSum(header.ProtoUDP, src.Addr(), dst.Addr(), len(d)))))
	e.sendFragments(mac, src.Addr(), dst.Addr(), header.ProtoUDP, d)
}

// udpRoute is where a datagram from a host sender goes: src, dst and the
// source MAC of its frame to the guest; an invalid dst for none. to is
// the address it was sent to, where the socket asked the kernel to tell
// (recvPktinfo).
type udpRoute func(from netip.AddrPort, to netip.Addr, payload []byte) (src, dst netip.AddrPort, mac [6]byte)

// udpDrop reads one datagram from fd for which the guest has no room,
// and drops it if route gives it a destination in the guest (it may take
// it elsewhere itself). It reports false once fd has nothing to read.
func (e *Engine) udpDrop(fd int, route udpRoute) bool {
	n, from, to, err := recvfromTo(fd, e.spliceBuf[:], nil)
	if err != nil {
		return false
	}
	var payload []byte // nil: cut short
	if n <= len(e.spliceBuf) {
		payload = e.spliceBuf[:n]
	}
	if _, dst, _ := route(from, to, payload); dst.IsValid() {
		e.Stats.Dropped++
	}
	return true
}

// udpAtCap tells whether --max-udp refuses a new flow, once the flow
// idle longest has given its place, if it may (udpEvictIdle).
func (e *Engine) udpAtCap() bool {
	if e.udpFlows() >= e.cfg.MaxUDP {
		e.udpEvictIdle()
	}
	return e.atCap(capUDP, e.udpFlows(), e.cfg.MaxUDP)
}

// udpEvictIdle makes room at --max-udp for a new flow by closing the
// flow idle longest, the guest's, a host sender's to a -u port or a
// loopback sender's on pasta's splice path, if it has been idle
// udpEvictAfter (passt's timeout for a flow never answered): a guest
// that resolves names from a new port each time, as most do, leaves a
// flow a query, and would be refused for minutes at the cap; so would
// one whose -u port heard once from thousands of ports, and the host's
// loopback senders to a container's -u port. A search that finds none tells when the first could be
// (evictAt: flows only grow younger), and none runs before: one per
// datagram, a guest sending from new ports at the cap cost the engine a
// scan of every flow each, 17 times the datagram's own cost at 4000
// flows.
func (e *Engine) udpEvictIdle() {
	if e.now < e.udp.evictAt {
		return
	}
	last := e.now // the oldest activity found
	var out *udpFlow
	e.udp.each(func(_ int32, f *udpFlow) {
		if f.lastAct < last {
			out, last = f, f.lastAct
		}
	})
	var in *udpInFlow
	e.fwd.udpIn.each(func(_ int32, f *udpInFlow) {
		if f.lastAct < last {
			in, out, last = f, nil, f.lastAct
		}
	})
	var sp *spliceUDPFlow
	e.spliceUDP.each(func(_ int32, f *spliceUDPFlow) {
		if f.lastAct < last {
			sp, in, out, last = f, nil, nil, f.lastAct
		}
	})
	switch {
	case e.now-last < udpEvictAfter:
		e.udp.evictAt = last + udpEvictAfter // none yet; from now on, a flow opened
	case sp != nil:
		e.spliceUDPClose(sp)
	case in != nil:
		e.fwd.udpIn.remove(in.idx, in.key)
	default:
		e.udpClose(out)
	}
}

func (e *Engine) udpExpire() {
	e.udp.each(func(_ int32, f *udpFlow) {
		if e.now-f.lastAct > udpIdle {
			e.udpClose(f)
		}
	})
}

func (e *Engine) udpClose(f *udpFlow) {
	if e.udp.out.flow == f {
		e.udpFlush()
	}
	unix.Close(f.fd)
	e.udp.remove(f.idx, f.guest)
}

func (t *udpTable) closeAll(e *Engine) { t.each(func(_ int32, f *udpFlow) { e.udpClose(f) }) }

// Inbound UDP (-u): a datagram to a forwarded host port goes to the guest;
// the guest's replies, from that port to the sender as the guest saw it,
// leave through the same host socket to the real sender.

type udpInKey struct {
	guestPort uint16
	remote    netip.AddrPort // the sender as the guest sees it
}

type udpInFlow struct {
	key      udpInKey
	idx      int32
	listener *listener      // the forward it came through, whose socket replies go out of
	peer     netip.AddrPort // the real sender
	local    netip.Addr     // the address it sent to, if the forward has none (udpReply)
	lastAct  time.Duration
	mac      remoteMAC // the sender's MAC to the guest, set by its first datagram (flowMAC)
}

func (e *Engine) udpInbound(l *listener) {
	e.udpToGuest(l.fd, &l.off, func(from netip.AddrPort, to netip.Addr, payload []byte) (_, _ netip.AddrPort, mac [6]byte) {
		if e.cfg.Splicer != nil && from.Addr().IsLoopback() {
			if payload != nil {
				e.spliceUDPSend(spliceUDPKey{l.fd, to, from}, payload, l.fwd.GuestPort, true)
			}
			return from, netip.AddrPort{}, mac // not the guest's
		}
		remote, guest := e.inboundRoute(from, l.fwd.GuestPort)
		if !remote.IsValid() {
			return remote, netip.AddrPort{}, mac // no address stands for the sender
		}
		key := udpInKey{l.fwd.GuestPort, remote}
		_, f := e.fwd.udpIn.lookup(key)
		if f == nil {
			if e.udpAtCap() {
				return remote, netip.AddrPort{}, mac // dropped
			}
			var idx int32
			idx, f = e.fwd.udpIn.add(key)
			*f = udpInFlow{key: key, idx: idx}
		}
		f.listener, f.peer, f.local, f.lastAct = l, from, to, e.now
		return remote, guest, e.flowMAC(&f.mac, remote.Addr())
	})
}

func (e *Engine) udpReply(f *udpInFlow, payload []byte) {
	f.lastAct = e.now
	if f.listener.fd < 0 {
		return // the forward was removed
	}
	// From the address the sender sent to: a socket bound to a
	// wildcard would pick its own by the host's routes, and a sender's
	// connected socket drops what comes from another.
	var err error
	if f.local.IsValid() {
		err = sendtoFrom(f.listener.fd, payload, f.local, f.peer)
	} else {
		err = sendto(f.listener.fd, payload, f.peer)
	}
	if err != nil {
		e.debugf("UDP reply to %v: %v", f.peer, err)
	}
}

func (e *Engine) udpInExpire() {
	e.fwd.udpIn.each(func(_ int32, f *udpInFlow) {
		if e.now-f.lastAct > udpIdle {
			e.fwd.udpIn.remove(f.idx, f.key)
		}
	})
}
