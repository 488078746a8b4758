package slirp

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"slices"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TCP, translated the way passt does it: there is no TCP stack here and no
// buffer of our own. Each guest connection is a host socket, and a flow
// (tcpFlow) holds only sequence numbers, the guest's window, its state
// and its timers.
//
// Handshake. A guest SYN starts a non-blocking connect(); the guest gets
// its SYN-ACK only once the host side is connected, so a refused port is a
// refused connection in the guest (RST) and an unreachable one an ICMP
// error (tcpUnreachable). Inbound, at a forwarded port, the host
// connection is accepted first and our SYN goes to the guest.
//
// Guest to host, and the window rule. A segment's payload is written
// straight to the socket (consecutive segments of a batch in one writev)
// and acknowledged only as far as the kernel took it. The window we
// advertise is the room left in the socket's send buffer as the kernel
// counts it (SO_MEMINFO), so a write does not come up short, which would
// cost the guest a retransmission per round trip for all it sent after;
// when there is no room, EPOLLOUT reopens the window.
//
// ACK policy. One ACK per flow per batch of guest frames, at least for
// every second full segment (RFC 5681); less may wait tcpAckDelay for a
// reply to carry it, after which the flow is acknowledged at once for
// tcpQuickAck. A segment outside what we expect (a keepalive or window
// probe, a duplicate, one past a gap) is answered at once (RFC 9293).
//
// Host to guest: peek and discard. Host data is peeked (MSG_PEEK, from
// SO_PEEK_OFF where the kernel has it, else past a scratch read of what is
// in flight) straight into frames, as far as the guest's window and the
// link's room go, and stays in the socket until the guest acknowledges
// it; then MSG_TRUNC discards it.
//
// Retransmission. Three duplicate ACKs, or tcpRTO without progress
// (doubling, up to tcpMaxRetries, after which the flow is reset), rewind
// to the oldest unacknowledged byte: peeking again from there is the
// retransmission. An ACK of what was sent before the rewind moves past
// it. A closed window is probed on the same timer (tcpProbeWindow).
//
// Half-close. The guest's FIN shuts the socket for writing (tcpGuestFin);
// the host's end of stream becomes our FIN (tcpHostEOF, tcpFinSent), sent
// after all data before it. The flow ends once both FINs are acknowledged,
// or tcpFinTimeout after either without activity. A RST either way resets
// the other side (SO_LINGER 0 toward the host), once it has what we took
// from the side that reset before its reset (tcpHostError, tcpLinger).
//
// Timers and keepalives. connect() gets tcpSynTimeout. A guest keepalive
// probe is answered and turns SO_KEEPALIVE on for the host socket; a guest
// silent for tcpKeepIdle is probed in turn, as passt does, and its answer
// counts as activity, so tcpIdle only ends flows the guest no longer
// knows.

// tcpState is what has happened to a connection, as passt's TCP events
// are: together they are its state. Changes go through tcpSetState, which
// logs them at --trace.
type tcpState uint16

const (
	tcpConnecting  tcpState = 1 << iota // guest SYN seen, host connect() under way
	tcpSynAckSent                       // waiting for the guest to ACK our SYN
	tcpSynSent                          // inbound: our SYN is out, waiting for the guest
	tcpEstablished                      // handshake done both ways
	tcpGuestFin                         // guest sent FIN; host socket shut for writing
	tcpHostRdhup                        // the host peer shut down its sending side
	tcpHostEOF                          // ... and we read to the end of its stream
	tcpFinSent                          // FIN sent to the guest
	tcpFinAcked                         // ... and acknowledged
	tcpHostReset                        // the host peer reset: what it sent goes to the guest, then our RST
)

var tcpStateNames = []string{"CONNECTING", "SYN_ACK_SENT", "SYN_SENT", "ESTABLISHED",
	"GUEST_FIN", "HOST_RDHUP", "HOST_EOF", "FIN_SENT", "FIN_ACKED", "HOST_RST"}

func (s tcpState) String() string { return header.BitNames(uint32(s), tcpStateNames, "CLOSED") }

// tcpFlags is a connection's bookkeeping: which queues it is on, what it
// owes the guest, what it waits for.
type tcpFlags uint16

const (
	tcpAckPending tcpFlags = 1 << iota // queued in ackList
	tcpAckNow                          // the guest sent a segment that must be answered at once
	tcpAckDelayed                      // queued in ackDelayed, hoping to ride on a reply
	tcpWaitTap                         // queued in tapWaiters for output room
	tcpWaitWrite                       // small window advertised; EPOLLOUT armed to reopen it
	tcpShortWrite                      // guest data was refused: ask for a fast retransmit
	tcpWndFull                         // stopped sending at the guest's window
	tcpAcked                           // queued in ackedList
	tcpNotTCP                          // host end is a unix socket or a command's pipe
	tcpKeepalive                       // SO_KEEPALIVE is on: the guest probes this connection
	tcpInbound                         // a host peer opened it through a forward (-t): migrate.go names it so
	tcpInOff                           // EPOLLIN is off while the flow cannot send (tcpHoldIn)
	tcpRoomKnown                       // room is still a safe window: read, less what was written since (spendRoom)
	tcpUrgent                          // the host peer sent urgent data: a peek may stop short at it
	tcpLingerHost                      // the guest is gone: its socket may linger (tcpLinger)
)

const (
	tcpOurWS        = 8           // our window scale towards the guest
	tcpMaxSegs      = 128         // frames one peek fills: at MTU 1500, 16 cost five times the peeks
	tcpDiscardBatch = 256 << 10   // acknowledged bytes left in a host socket until a peek (tcpDiscardAcked)
	tcpRTO          = time.Second // first retransmission timeout
	tcpMaxRetries   = 8
	tcpSynTimeout   = 10 * time.Second
	tcpFinTimeout   = time.Minute
	tcpIdle         = 2 * time.Hour
	tcpKeepIdle     = 30 * time.Second // guest silence before we probe it, as passt does
	tcpDefaultMSS   = 536
	tcpMinMSS       = 48                     // Linux's tcp_min_snd_mss: a guest cannot ask for tinier segments
	tcpAckDelay     = time.Millisecond       // how long a small segment's ACK may wait
	tcpQuickAck     = 100 * time.Millisecond // no delaying for this long after one timed out
	tcpResetCopies  = 3                      // a RST to the guest is sent again this often (tcpReset)
	tcpResetGap     = 200 * time.Millisecond // ... first after this, each gap four times the one before
)

type tcpKey struct {
	guest  netip.AddrPort // the guest's end
	remote netip.AddrPort // the peer, as the guest sees it
}

type tcpFlow struct {
	key   tcpKey
	idx   int32
	fd    int
	state tcpState
	flags tcpFlags

	sndUna   uint32 // oldest byte sent to the guest and not acknowledged
	sndNxt   uint32 // next byte to send to the guest
	sndMax   uint32 // past the last byte ever sent: sndNxt, unless a rewind took it back
	rcvNxt   uint32 // next byte expected from the guest
	guestWnd uint32 // guest's receive window, in bytes
	wndSeq   uint32 // sequence number of the guest segment guestWnd came from (SND.WL1)
	guestWS  uint8
	ourWS    uint8
	dupAcks  uint8
	retries  uint8
	mss      int
	peekOff  bool   // SO_PEEK_OFF is in use
	unread   uint32 // acknowledged bytes still in the host socket, before sndUna

	ackSent  uint32        // last acknowledgement number sent
	wndSent  uint16        // last raw window sent
	edgeSent uint32        // the furthest right edge a window we sent reached (sentAck)
	room     uint16        // the raw window the send buffer still has room for (tcpRoomKnown)
	roomRead uint16        // room as last read, before writes spent it (spendRoom)
	ackDue   time.Duration // when a delayed ACK must go out
	quickTo  time.Duration // ACKs go out at once until then
	rtoAt    time.Duration // retransmission deadline, 0 when nothing is in flight
	lastAct  time.Duration // the guest's last segment
	kaSent   time.Duration // our last keepalive probe to the guest
	created  time.Duration

	mac remoteMAC // the remote's MAC to the guest, set by the first segment (flowMAC)
}

type tcpTable struct {
	flowTable[tcpKey, tcpFlow]
	ackList    []int32             // flows owing the guest an ACK after this batch
	ackedList  []int32             // flows the guest acknowledged in this batch
	ackDelayed []int32             // flows whose ACK waits for a reply to carry it
	ackDelay   time.Duration       // tcpAckDelay; tests make it long or zero
	tapWaiters []int32             // flows waiting for room in the output queue
	resets     [64]tcpReset        // RSTs sent to the guest, to send again (tcpReset)
	resetsOwed int                 // resets with copies left
	lingers    []tcpLinger         // sockets of flows whose guest is gone, until their peer has its data
	iov        [1024]unix.Iovec    // a peek's pieces (UIO_MAXIOV)
	frames     [tcpMaxSegs][]byte  // the frames a peek fills, from their start
	segIov     [tcpMaxSegs + 1]int // where each frame's pieces start in iov
	w          tcpWriteBatch
	ahead      [][]byte  // frames of this batch whose data lies past a gap (tcpRetryAhead)
	discardBuf []byte    // for kernels without SO_PEEK_OFF
	isnKey     [2]uint64 // RFC 6528's secret, random per process
	sndbuf     int       // SO_SNDBUF for host sockets, 0 to leave it to the kernel
}

// tcpWriteBatch gathers consecutive in-order guest segments of one flow,
// still in the input buffer, for one writev.
type tcpWriteBatch struct {
	flow  *tcpFlow
	iov   [256]unix.Iovec
	n     int
	bytes int
}

func (t *tcpTable) init() {
	t.flowTable.init()
	var key [16]byte
	rand.Read(key[:])
	t.isnKey = [2]uint64{binary.LittleEndian.Uint64(key[:]), binary.LittleEndian.Uint64(key[8:])}
	t.sndbuf = fixedSndbuf()
	t.ackDelay = tcpAckDelay
	t.ahead = make([][]byte, 0, 2*tcpAheadMax) // a retry's round appends past what it reads
}

// tcpAheadMax bounds the frames of a batch kept for tcpRetryAhead.
const tcpAheadMax = 64

// tcpRetryAhead takes again, at the end of a batch, the segments that
// came past a gap in it, once frames after them have filled the gap, as
// passt does. A guest in loss recovery sends what it retransmits and
// what it marked lost out of order in one burst; dropped, the segments
// past the gap are lost again, the guest ignores our duplicate ACKs in
// that state, and each costs it a retransmission timeout, which it keeps
// doubling (Karn's algorithm): an upload after a 3 s outage stalled for
// minutes. The frames are still in the link's input buffer.
func (e *Engine) tcpRetryAhead() {
	if len(e.tcp.ahead) == 0 {
		return
	}
	all := e.tcp.ahead[:cap(e.tcp.ahead)]
	for n := len(e.tcp.ahead); n > 0; {
		frames := e.tcp.ahead // at all's start
		e.tcp.ahead = frames[n:n]
		for _, f := range frames[:n] {
			e.tapInput(f)
		}
		if len(e.tcp.ahead) == n {
			break // no gap filled
		}
		n = copy(frames, e.tcp.ahead)
		e.tcp.ahead = frames[:n]
	}
	// Nothing kept past the batch (a closed link's buffers go with it),
	// and all the room for the next.
	clear(all)
	e.tcp.ahead, e.frame = all[:0], nil
}

// hostSockOpts prepares a host TCP socket. Segments go out as the guest
// sent them (TCP_NODELAY), and the send buffer is as large as the system
// allows, because its free room is the window the guest may fill: with
// the kernel's autotuned buffer the guest spent a fifth of an upload
// waiting for window. A listening socket passes all three on to the
// connections it accepts, which then need no system call for them.
func (t *tcpTable) hostSockOpts(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	urgentInline(fd)
	if t.sndbuf > 0 {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, t.sndbuf)
	}
}

// urgentInline keeps a host socket's urgent data (the peer's MSG_OOB) in
// the stream, as a relay must. Out of line, a TCP peek skips the byte but
// SO_PEEK_OFF does not count it, and the next peek repeats a byte; a unix
// socket's peek from an offset reads the byte but a read drops it, so the
// drop of what the guest acknowledged takes a byte it never had.
func urgentInline(fd int) {
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
}

// isn is the initial sequence number of our side of a connection, as RFC
// 6528 (and passt) make it: a clock ticking every 4 µs plus a keyed hash
// of the connection's addresses and ports, so numbers neither repeat for
// a reused 4-tuple nor can be guessed from other connections, by the
// guest or by a host peer.
func (t *tcpTable) isn(key tcpKey, now time.Duration) uint32 {
	var b [36]byte
	g, r := key.guest.Addr().As16(), key.remote.Addr().As16()
	copy(b[:], g[:])
	copy(b[16:], r[:])
	binary.BigEndian.PutUint16(b[32:], key.guest.Port())
	binary.BigEndian.PutUint16(b[34:], key.remote.Port())
	return uint32(siphash(t.isnKey, b[:])) + uint32(now/(4*time.Microsecond))
}

func seqLT(a, b uint32) bool { return int32(a-b) < 0 }

// tcpInput handles one segment from the guest.
func (e *Engine) tcpInput(src, dst netip.Addr, t header.TCP) {
	if !t.IsValid() {
		e.Stats.Malformed++
		return
	}
	// Connections are between ports, as passt's (tcp_conn_from_tap),
	// and unicast addresses (l4Input).
	if t.SrcPort() == 0 || t.DstPort() == 0 {
		e.Stats.Unhandled++
		return
	}
	key := tcpKey{netip.AddrPortFrom(src, t.SrcPort()), netip.AddrPortFrom(dst, t.DstPort())}
	flags := t.Flags()
	payload, tail := t.Payload(), e.tail
	dataLen := len(payload) + iovLen(tail)
	if e.cfg.Trace {
		e.logf("TCP %v -> %v: %v seq %d ack %d win %d len %d", key.guest, key.remote, flags,
			t.Seq(), t.Ack(), t.Window(), dataLen)
	}
	_, f := e.tcp.lookup(key)
	if f == nil {
		switch {
		case flags&header.TCPRst != 0:
		case flags&(header.TCPSyn|header.TCPAck) == header.TCPSyn:
			e.tcpConnect(key, t)
		default:
			e.tcpRstReply(key, t)
		}
		return
	}
	f.lastAct = e.now
	if flags&header.TCPRst != 0 {
		e.debugf("TCP %v: reset by guest", key.remote)
		if e.tcp.w.flow == f {
			// What the guest sent before, in this batch, goes first.
			if e.tcpWriteFlush(); f.fd < 0 {
				return // the write failed: the flow is reset
			}
		}
		e.tcpGuestGone(f, false)
		return
	}
	if f.state&tcpSynSent != 0 && flags&header.TCPAck != 0 && t.Ack() != f.sndUna+1 {
		// An ACK of what our SYN never sent: the guest's answer from a
		// connection it still has on these addresses, in TIME-WAIT (a
		// SYN whose sequence number is below what it had), or one we
		// dropped with a client that was gone. It would answer our SYN
		// so for as long as that lives, up to minutes. A reset at its
		// ACK ends it (RFC 9293, 3.10.7.3, SYN-SENT), and our next SYN
		// connects; this flow goes on waiting.
		e.tcpRstReply(key, t)
		return
	}
	if flags&header.TCPSyn != 0 {
		switch {
		case f.state&tcpSynSent != 0 && flags&header.TCPAck != 0 && t.Ack() == f.sndUna+1:
			e.tcpSynAcked(f, t)
		case f.state&tcpSynAckSent != 0:
			e.tcpSendFlags(f, header.TCPSyn|header.TCPAck)
		case f.state&tcpEstablished != 0:
			// A challenge ACK (RFC 9293, 3.10.7.4): a guest that lost the
			// connection and reuses its port resets the flow it names,
			// and its next SYN connects; a guest whose SYN-ACK comes
			// again because our ACK was lost gets it.
			e.tcpAckNow(f)
		}
		return
	}
	if f.state&(tcpConnecting|tcpSynSent) != 0 || flags&header.TCPAck == 0 {
		return
	}
	fin := flags&header.TCPFin != 0
	if !e.tcpAck(f, t.Seq(), t.Ack(), t.Window(), dataLen > 0 || fin) {
		return
	}
	switch next := e.tcpRcvNext(f); {
	case dataLen > 0 || fin:
		e.tcpGuestData(f, t.Seq(), payload, tail, fin)
	case t.Seq() == next-1 && f.state&tcpEstablished != 0:
		// A keepalive (or zero-window) probe: one byte below what we
		// expect, no data. Answer it, and let the host socket probe the
		// host peer too, as passt does, so a dead peer ends the flow.
		if f.flags&(tcpKeepalive|tcpNotTCP) == 0 {
			f.flags |= tcpKeepalive
			unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		}
		e.tcpAckNow(f)
	case t.Seq() != next:
		e.tcpAckNow(f) // outside the window
	}
}

// tcpRcvNext is the next sequence number expected from the guest,
// counting data gathered for a write but not yet written.
func (e *Engine) tcpRcvNext(f *tcpFlow) uint32 {
	if e.tcp.w.flow == f {
		return f.rcvNxt + uint32(e.tcp.w.bytes)
	}
	return f.rcvNxt
}

// tcpAckNow answers, in this batch's ACKs, a segment that a TCP receiver
// must acknowledge at once (RFC 9293, 3.10.7.4): a keepalive probe, an
// old duplicate, a segment beyond a gap or outside the window. The ACK
// tells the guest where we are; without it a guest's keepalives go
// unanswered and it drops the connection.
func (e *Engine) tcpAckNow(f *tcpFlow) {
	f.flags |= tcpAckNow
	e.tcpScheduleAck(f)
}

// tcpConnect starts the host side of a new guest connection. The guest
// gets its SYN-ACK only when connect() succeeds, so a refused port shows
// up in the guest as a refused connection, not as a reset after a
// successful handshake.
func (e *Engine) tcpConnect(key tcpKey, t header.TCP) {
	if e.atCap(capTCP, e.tcp.count, e.cfg.MaxTCP) {
		e.tcpRstReply(key, t)
		return
	}
	fd, notTCP, err := e.tcpDial(key)
	if err == unix.EAGAIN {
		// A unix socket's full backlog (dialUnix): the SYN is dropped,
		// as a host's full backlog drops one, and the guest's next
		// tries again.
		e.debugf("TCP %v: connect: %v", key.remote, err)
		return
	}
	if err != nil && err != unix.EINPROGRESS {
		if notTCP && e.logDue(dialSpecial) {
			// A unix socket or command the host named and gopasst
			// cannot reach (a socket's mode, a missing program):
			// the host's mistake, which no guest can cure.
			e.warnf("TCP port %d of the gateway (--unix-fwd, --cmd-fwd): %v", key.remote.Port(), err)
		}
		e.debugf("TCP %v: connect: %v", key.remote, err)
		if !e.tcpUnreachable(key, t.Seq(), err) {
			e.tcpRstReply(key, t)
		}
		return
	}
	f := e.tcpAddFlow(key, fd, tcpConnecting)
	if notTCP {
		f.flags |= tcpNotTCP
		urgentInline(fd) // a unix socket's or a command's, which hostSockOpts is not for
	}
	f.rcvNxt = t.Seq() + 1
	f.edgeSent = f.rcvNxt
	f.guestWnd, f.wndSeq = uint32(t.Window()), t.Seq()
	f.synOptions(header.ParseSynOptions(t.Options()))
	// EPOLLOUT until connected, then tcpEvents.
	if err := e.epollAdd(fd, unix.EPOLLOUT|unix.EPOLLET, e.tcpRef(f)); err != nil {
		e.logLimited(openTCP, "TCP %v: %v", key.remote, err)
		e.tcpClose(f, true, true)
		return
	}
	if err == nil {
		e.tcpConnected(f)
	}
}

// tcpSetState records what happened to a flow (set) and what no longer
// holds (clear), and logs the change at --trace.
func (e *Engine) tcpSetState(f *tcpFlow, set, clear tcpState) {
	old := f.state
	f.state = f.state&^clear | set
	if e.cfg.Trace && f.state != old {
		e.logf("TCP %v: %v -> %v", f.key.remote, old, f.state)
	}
}

// tcpAddFlow registers a host socket as a new flow.
func (e *Engine) tcpAddFlow(key tcpKey, fd int, state tcpState) *tcpFlow {
	idx, f := e.tcp.add(key)
	// Host data may arrive before the handshake completes and its EPOLLIN
	// edge would be lost: treat the flow as window-limited so the
	// handshake's last ACK triggers the first peek.
	*f = tcpFlow{
		key: key, idx: idx, fd: fd, state: state, flags: tcpWndFull,
		mss:     e.mtu() - ipHdrLen(key.guest.Addr()) - header.TCPMinLen,
		ourWS:   tcpOurWS,
		lastAct: e.now, created: e.now,
	}
	f.sndUna = e.tcp.isn(key, e.now)
	f.sndNxt, f.sndMax = f.sndUna, f.sndUna
	e.tcp.forgetReset(key)
	f.peekOff = unix.SetsockoptInt(fd, unix.SOL_SOCKET, soPeekOff, 0) == nil
	return f
}

// advMSS is the MSS our SYN or SYN-ACK offers the guest for mss: past a
// page, whole pages, as passt offers. Through a TCG QEMU on -netdev
// stream, where the guest's device has no offloads, its upload ran 1.22
// times as fast, at 0.89 of the CPU per GB, offered 61,440 bytes rather
// than 65,480 (MTU 65520), probably as each segment is then built in
// 64 KiB rather than the allocator's next size; over vhost-user and
// pasta's tap it made no difference beyond the noise.
func advMSS(mss int) uint16 {
	const page = 4096 // x86-64's, and arm64's usual
	if mss > page {
		mss -= mss % page
	}
	return uint16(mss)
}

// limitMSS takes the MSS the guest asked for (its SYN, or a migration's
// stream): no more than the link carries, and no less than Linux lets a
// peer ask for, unless the link carries less.
func (f *tcpFlow) limitMSS(asked int) {
	f.mss = min(f.mss, max(asked, tcpMinMSS))
}

// synOptions applies the options of the guest's SYN or SYN-ACK.
func (f *tcpFlow) synOptions(opts header.SynOptions) {
	if opts.MSS != 0 {
		f.limitMSS(int(opts.MSS))
	} else {
		f.mss = min(f.mss, tcpDefaultMSS)
	}
	f.guestWS, f.ourWS = 0, 0
	if opts.WSValid {
		f.guestWS, f.ourWS = opts.WS, tcpOurWS
	}
}

// tcpAccept opens a connection into the guest for a host connection
// waiting on a forwarded port. One an event, as passt: epoll, level-
// triggered, reports the next, and a loop would end at each event in an
// accept that fails (EAGAIN), a system call a connection.
func (e *Engine) tcpAccept(l *listener) {
	fd, from, err := accept(l.fd)
	if err != nil {
		if outOfFds(err) {
			e.pauseAccept(l.fd, epollRef{kind: kindTCPListen, idx: int32(slices.Index(e.fwd.listeners, l))})
		}
		return
	}
	if e.spliceAccept(fd, from, l.fwd.GuestPort) {
		return
	}
	var key tcpKey
	key.remote, key.guest = e.inboundRoute(from, l.fwd.GuestPort)
	if _, old := e.tcp.lookup(key); old != nil || !key.remote.IsValid() || e.link == nil || e.atCap(capTCP, e.tcp.count, e.cfg.MaxTCP) {
		refuse(fd)
		return
	}
	f := e.tcpAddFlow(key, fd, tcpSynSent) // its options from the listener (AddForwards)
	f.flags |= tcpInbound
	if err := e.epollAdd(fd, tcpEvents, e.tcpRef(f)); err != nil {
		e.warnf("TCP %v: %v", key.remote, err)
		e.tcpClose(f, false, true)
		return
	}
	e.debugf("TCP %v: inbound on port %d", key.remote, l.fwd.HostPort)
	e.tcpSendFlags(f, header.TCPSyn)
}

// tcpSynAcked completes an inbound handshake on the guest's SYN-ACK.
func (e *Engine) tcpSynAcked(f *tcpFlow, t header.TCP) {
	f.synOptions(header.ParseSynOptions(t.Options()))
	f.rcvNxt = t.Seq() + 1
	f.edgeSent = f.rcvNxt
	f.sndUna = f.sndNxt
	f.guestWnd, f.wndSeq = uint32(t.Window()), t.Seq()
	e.tcpSetState(f, tcpEstablished, tcpSynSent)
	f.rtoAt, f.retries = 0, 0
	e.tcpSendFlags(f, header.TCPAck)
	f.flags &^= tcpWndFull
	e.tcpSendToGuest(f)
}

// tcpConnected answers the guest's SYN once the host side is up.
func (e *Engine) tcpConnected(f *tcpFlow) {
	e.tcpSetState(f, tcpSynAckSent, tcpConnecting)
	e.tcpSendFlags(f, header.TCPSyn|header.TCPAck)
	e.tcpEpollMod(f)
}

// tcpSockEvent handles readiness of a flow's host socket.
func (e *Engine) tcpSockEvent(idx int32, gen uint32, events uint32) {
	f := e.tcp.get(idx, gen)
	if f == nil {
		return
	}
	if f.state&tcpConnecting != 0 {
		if err := sockError(f.fd); err != nil || events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			e.tcpConnectFailed(f, err)
			return
		}
		if events&unix.EPOLLOUT != 0 {
			e.tcpConnected(f)
		}
		return
	}
	if events&unix.EPOLLERR != 0 && !e.tcpHostError(f, sockError(f.fd)) { // taken, or a peek would return it
		return
	}
	if events&unix.EPOLLOUT != 0 && f.flags&tcpWaitWrite != 0 {
		// The host drained its send buffer: reopen the guest's window. If
		// we refused data, repeat the ACK three times so the guest
		// retransmits it at once (fast retransmit), as passt does,
		// instead of waiting for its retransmission timer.
		f.flags &^= tcpWaitWrite
		e.tcpEpollMod(f)
		e.tcpSendFlags(f, header.TCPAck)
		if f.flags&tcpShortWrite != 0 {
			f.flags &^= tcpShortWrite
			for range 3 {
				e.tcpSendSeg(f, header.TCPAck, f.sndNxt, f.wndSent)
			}
		}
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		e.tcpSetState(f, tcpHostRdhup, 0)
	}
	if events&unix.EPOLLPRI != 0 {
		f.flags |= tcpUrgent
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		e.tcpSendToGuest(f)
	}
}

// tcpHostError handles an error on a flow's host socket, taken from it
// by EPOLLERR, a write or a peek, whichever came first, and reports
// whether the flow goes on. A reset by the host peer ends its stream, but
// what it sent before, which the socket acknowledged, is still in the
// socket, as a client of the peer's own would read it before the reset:
// the guest gets it, and our RST once it has acknowledged it all
// (tcpResetDelivered), at once if it has. Any other error, or a reset
// before the handshake, ends the flow now.
func (e *Engine) tcpHostError(f *tcpFlow, err error) bool {
	if f.state&tcpHostReset != 0 {
		return true // reported again at each change of the flow's epoll events
	}
	if err != unix.ECONNRESET && err != unix.EPIPE || f.state&tcpEstablished == 0 {
		e.debugf("TCP %v: host socket error: %v", f.key.remote, err)
		e.tcpClose(f, true, false)
		return false
	}
	// EPIPE is a reset after the peer's FIN; a unix socket's peer that
	// closes with data unread resets it too. Either shuts the socket
	// down both ways: EPOLLHUP peeks what is left.
	e.debugf("TCP %v: reset by the host peer", f.key.remote)
	e.tcpSetState(f, tcpHostReset|tcpHostRdhup, 0)
	if e.tcpResetDelivered(f) {
		// No peek would tell: the guest had all, and the host's FIN
		// too, perhaps (tcpSendToGuest does not peek past it).
		e.tcpClose(f, true, false)
		return false
	}
	return true
}

// tcpResetDelivered tells whether the guest acknowledged all that a
// reset host peer sent (tcpHostError): then our RST is due. The socket
// holds no more than what it acknowledged; sndUna == sndNxt alone holds
// after a rewind too.
func (e *Engine) tcpResetDelivered(f *tcpFlow) bool {
	return f.state&tcpHostReset != 0 && f.sndUna == f.sndNxt && inq(f.fd) <= int(f.unread)
}

// advance moves sndNxt past n bytes (or a SYN or FIN) just sent.
func (f *tcpFlow) advance(n uint32) {
	f.sndNxt += n
	if seqLT(f.sndMax, f.sndNxt) {
		f.sndMax = f.sndNxt
	}
}

// tcpAck processes the guest's acknowledgement and window, from a segment
// starting at seq. It reports false when the flow is gone.
func (e *Engine) tcpAck(f *tcpFlow, seq, ack uint32, rawWnd uint16, hasData bool) bool {
	wnd := uint32(rawWnd) << f.guestWS
	skip := seqLT(f.sndNxt, ack)
	if skip && (seqLT(f.sndMax, ack) || ack == f.sndMax && f.state&tcpHostEOF != 0) {
		// Acknowledges what we never sent (or a FIN that a rewind took
		// back, which goes again): ignore the ACK.
		return true
	}
	if skip {
		// Acknowledges what we sent before a rewind (tcpRewind), which
		// the guest had: go on from there, as passt does, rather than
		// wait for ACKs of what we send again, which the guest cannot
		// give before we get that far, and which a full link or a
		// smaller window can keep us from.
		f.sndNxt = ack
	}
	acked := ack - f.sndUna
	switch {
	case int32(acked) > 0:
		n := int(acked)
		if f.state&tcpSynAckSent != 0 {
			e.tcpSetState(f, tcpEstablished, tcpSynAckSent)
			n--
		}
		if f.state&tcpFinSent != 0 && ack == f.sndNxt {
			e.tcpSetState(f, tcpFinAcked, 0)
			n--
		}
		f.unread += uint32(max(n, 0))
		f.sndUna = ack
		f.dupAcks, f.retries = 0, 0
		f.rtoAt = 0
		if f.sndUna != f.sndNxt {
			f.rtoAt = e.now + tcpRTO
		}
	case acked == 0 && !hasData && wnd == f.guestWnd && f.sndUna != f.sndNxt && f.state&tcpEstablished != 0:
		// A duplicate ACK, counted once established: in the handshake
		// what is in flight is our SYN, and a rewind would take it back,
		// so the guest's right ACK would then acknowledge what was never
		// sent and be ignored, with its data, until the SYN-ACK went again.
		if f.dupAcks++; f.dupAcks == 3 {
			e.tcpRewind(f)
		}
	}
	if f.newWindow(seq, acked) {
		if f.guestWnd == 0 && wnd != 0 && f.sndUna == f.sndNxt {
			f.rtoAt, f.retries = 0, 0 // no probe due (tcpProbeWindow), and what goes next is timed afresh
		}
		f.guestWnd, f.wndSeq = wnd, seq
	}
	if skip && f.peekOff {
		// The next peek starts at the new sndNxt, past what the guest
		// acknowledged and we have not dropped yet.
		unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, int(f.unread))
	}
	if e.tcpResetDelivered(f) {
		e.tcpClose(f, true, false)
		return false
	}
	if f.state&tcpGuestFin != 0 && f.state&tcpFinAcked != 0 {
		if f.ackSent != f.rcvNxt {
			// The guest's FIN crossed ours and came in this batch: its
			// ACK is still owed, or the guest sends it again for a reset.
			e.tcpSendFlags(f, header.TCPAck)
		}
		e.tcpClose(f, false, false)
		return false
	}
	if (f.unread > 0 || f.flags&tcpWndFull != 0) && f.flags&tcpAcked == 0 {
		f.flags |= tcpAcked
		e.tcp.ackedList = append(e.tcp.ackedList, f.idx)
	}
	return true
}

// newWindow tells whether a segment's window is newer than the one we
// have (RFC 9293, 3.10.7.4, SND.WL1 and SND.WL2): its ACK moved on, or
// it has the same ACK and does not come earlier in the guest's stream. An
// older ACK, reordered behind a newer one, would otherwise take back the
// window the newer one opened, and a closed one would hold the flow until
// a probe. A segment past the window we offered is no segment of the
// guest's stream (RFC 9293 checks it before the ACK): its sequence
// number would leave every later window behind. That window is the
// furthest we offered (sentAck), not the last: had it shrunk since, the
// ACK behind data sent into the larger one would open the guest's window
// in vain, and its download would wait for a probe.
func (f *tcpFlow) newWindow(seq, acked uint32) bool {
	if seqLT(f.edgeSent, seq) {
		return false
	}
	return int32(acked) > 0 || acked == 0 && !seqLT(seq, f.wndSeq)
}

// tcpAckedFlush serves the flows the guest acknowledged in the last batch
// of frames: once per flow, not once per ACK, it drops the acknowledged
// bytes from the host socket and sends what the window now allows, as
// passt does. Each drop can send the host peer a window update; one per
// ACK had a loopback sender see its segments out of order and resend
// them needlessly, some hundred times in a 4 s download.
func (e *Engine) tcpAckedFlush() {
	for _, idx := range e.tcp.ackedList {
		f := e.tcp.flows[idx]
		if !e.tcp.used[idx] || f.flags&tcpAcked == 0 {
			continue
		}
		f.flags &^= tcpAcked
		// A flow stopped at the window or the link's room peeks again
		// soon, and drops what was acknowledged then.
		if !e.tcpDiscardAcked(f, f.flags&(tcpWndFull|tcpWaitTap) != 0) {
			continue
		}
		if f.flags&tcpWndFull != 0 && f.state&tcpEstablished != 0 {
			f.flags &^= tcpWndFull
			e.tcpSendToGuest(f)
		}
	}
	e.tcp.ackedList = e.tcp.ackedList[:0]
}

// tcpDiscardAcked drops the acknowledged bytes still in the host socket.
// It reports false when that failed and the flow is gone.
//
// Lazily, before a peek, it leaves up to tcpDiscardBatch of them where
// the kernel's peek offset (SO_PEEK_OFF) reads past them anyway: a drop
// costs a system call and, as it opens the socket's window, often a
// window update to the host peer, and a download had twice as many
// drops as peeks. Without the offset a peek starts at sndUna, so nothing
// waits. A peek that finds no new data drops what waits (tcpSendToGuest):
// the bytes must not keep the host peer from sending.
func (e *Engine) tcpDiscardAcked(f *tcpFlow, lazy bool) bool {
	if f.unread == 0 || lazy && f.peekOff && f.unread < tcpDiscardBatch && f.state&tcpFinSent == 0 {
		return true
	}
	if err := e.tcp.discard(f, int(f.unread)); err != nil {
		e.tcpClose(f, true, false)
		return false
	}
	f.unread = 0
	return true
}

// tcpGuestData writes the guest's payload to the host socket: the bytes
// in the frame, then its tail, the rest left in guest memory (vhost-user).
func (e *Engine) tcpGuestData(f *tcpFlow, seq uint32, payload []byte, tail []unix.Iovec, fin bool) {
	defer e.tcpScheduleAck(f)
	if f.state&tcpEstablished == 0 {
		return
	}
	if f.state&tcpGuestFin != 0 {
		e.tcpAckNow(f) // a retransmission: our ACK of the FIN was lost
		return
	}
	if f.state&tcpHostReset != 0 {
		return // no one to take it: the guest gets our RST (tcpHostError)
	}
	if e.tcp.w.flow != f {
		e.tcpWriteFlush() // another flow's batch
	}
	n := len(payload) + iovLen(tail)
	off := int(int32(e.tcpRcvNext(f) - seq))
	if off < 0 || off > n || off == n && !fin {
		if off < 0 && tail == nil && !e.inWhole(e.frame) && len(e.tcp.ahead) < tcpAheadMax {
			e.tcp.ahead = append(e.tcp.ahead, e.frame)
		}
		e.tcpAckNow(f) // a gap or an old duplicate: the ACK says where we are
		return
	}
	if off < len(payload) {
		if !e.tcpGather(f, &payload[off], len(payload)-off) {
			return
		}
		off = 0
	} else {
		off -= len(payload)
	}
	for _, v := range tail {
		if off >= int(v.Len) {
			off -= int(v.Len)
			continue
		}
		if !e.tcpGather(f, (*byte)(unsafe.Add(unsafe.Pointer(v.Base), off)), int(v.Len)-off) {
			return
		}
		off = 0
	}
	if fin {
		if !e.tcpWriteFlush() {
			return // the FIN comes again with the data we could not take
		}
		f.rcvNxt++
		e.tcpSetState(f, tcpGuestFin, 0)
		unix.Shutdown(f.fd, unix.SHUT_WR)
		if f.state&tcpFinAcked != 0 {
			e.tcpSendFlags(f, header.TCPAck)
			e.tcpClose(f, false, false)
		}
	}
}

// tcpGather adds n bytes at p to the flow's write batch, writing the
// batch when it is full, or when the bytes lie in a frame made whole
// (frameInput), whose buffer the next such frame overwrites before the
// batch ends. It reports false when that write came up short: the rest
// of the segment is dropped, and the guest sends it again.
func (e *Engine) tcpGather(f *tcpFlow, p *byte, n int) bool {
	w := &e.tcp.w
	w.flow = f
	w.iov[w.n] = iovec(p, n)
	w.n++
	w.bytes += n
	return w.n < len(w.iov) && !e.inWhole(unsafe.Slice(p, n)) || e.tcpWriteFlush()
}

// tcpWriteFlush writes the guest data gathered for one flow with a single
// writev, and acknowledges (later) as much as the kernel took. It reports
// whether everything was written.
func (e *Engine) tcpWriteFlush() bool {
	w := &e.tcp.w
	f, want := w.flow, w.bytes
	if f == nil {
		return true
	}
	n, err := writev(f.fd, w.iov[:w.n])
	w.flow, w.n, w.bytes = nil, 0, 0
	if err == unix.EAGAIN {
		n, err = 0, nil
	}
	if err != nil {
		e.tcpHostError(f, err)
		return false
	}
	f.rcvNxt += uint32(n)
	e.moved += n
	if n < want {
		// The rest will come again once the window reopens.
		f.flags &^= tcpRoomKnown
		f.flags |= tcpShortWrite
		e.tcpWatchWrite(f)
		return false
	}
	f.spendRoom(n)
	return true
}

// Small writes keep the room known (tcpRoomKnown) up to what they cost.
const (
	tcpSmallWrite = 4 << 10 // larger writes have the room read again
	tcpSkbCost    = 2 << 10 // the kernel's memory for one send buffer past its data: 832 bytes on Linux 6.18, x86-64
)

// spendRoom takes a write of n bytes from the room last read (tcpWindow)
// so that a flow of small writes (requests and answers, keystrokes) reads
// its send buffer once in many writes, not once a write, which was a
// system call in nine of a request and answer's. A write costs the kernel
// its bytes and, for each buffer it starts (one a segment, no smaller
// than tcpDefaultMSS where there is no segmentation offload, and one it
// may not append to), tcpSkbCost: charged that, the room left is still a
// safe window. Past a quarter of what was read, or under a segment, the
// room is read again, which also reopens the window as the host peer
// acknowledges; a large write, or one to a unix socket, whose buffers
// cost as the allocator rounds them, has it read at once.
func (f *tcpFlow) spendRoom(n int) {
	if f.flags&tcpRoomKnown == 0 {
		return
	}
	cost := n + (n/tcpDefaultMSS+2)*tcpSkbCost
	room := int(f.room)<<f.ourWS - cost
	if n > tcpSmallWrite || f.flags&tcpNotTCP != 0 || 4*room < 3*int(f.roomRead)<<f.ourWS || room < f.mss {
		f.flags &^= tcpRoomKnown
		return
	}
	f.room = uint16(room >> f.ourWS)
}

func (e *Engine) tcpScheduleAck(f *tcpFlow) {
	if f.flags&tcpAckPending == 0 && f.fd >= 0 {
		f.flags |= tcpAckPending
		e.tcp.ackList = append(e.tcp.ackList, f.idx)
	}
}

// tcpFlushAcks sends one ACK per flow that received data in the last
// batch of guest frames, instead of one per segment, or delays it
// (tcpDelayAck).
func (e *Engine) tcpFlushAcks() {
	e.tcpWriteFlush()
	for _, idx := range e.tcp.ackList {
		f := e.tcp.flows[idx]
		if !e.tcp.used[idx] || f.flags&tcpAckPending == 0 {
			continue
		}
		now := f.flags&tcpAckNow != 0
		f.flags &^= tcpAckPending | tcpAckNow
		wnd := e.tcpWindow(f)
		switch {
		case now:
			e.tcpSendSeg(f, header.TCPAck, f.sndNxt, wnd)
		case f.ackSent == f.rcvNxt && f.wndSent == wnd:
		case f.rcvNxt-f.ackSent <= uint32(f.mss) && f.ackSent != f.rcvNxt && wnd != 0 &&
			f.state&tcpGuestFin == 0 && f.flags&tcpShortWrite == 0 && e.now >= f.quickTo:
			e.tcpDelayAck(f)
		default:
			e.tcpSendSeg(f, header.TCPAck, f.sndNxt, wnd)
		}
	}
	e.tcp.ackList = e.tcp.ackList[:0]
}

// tcpDelayAck holds back the ACK of at most one segment's worth of data,
// as RFC 5681 lets a receiver do: ACK at least every second full-sized
// segment. A small segment is usually a request, and the reply that
// follows within microseconds carries the ACK, which saves the guest a
// frame per exchange; in bulk transfers it saves about one ACK in six.
//
// The wait is short (tcpAckDelay, not the 40 ms and more of a kernel)
// because a guest using Nagle's algorithm holds its next small segment
// until this ACK arrives. After a wait that no reply cut short, the flow
// is acknowledged at once for tcpQuickAck, so such a guest pays the wait
// at most ten times a second, not once per write. (A kernel leaves its
// "pingpong" mode the same way but re-enters it at the next reply, which
// is how Nagle's algorithm and delayed ACKs cost 40 ms per exchange.)
func (e *Engine) tcpDelayAck(f *tcpFlow) {
	if f.flags&tcpAckDelayed == 0 {
		f.flags |= tcpAckDelayed
		f.ackDue = e.now + e.tcp.ackDelay
		e.tcp.ackDelayed = append(e.tcp.ackDelayed, f.idx)
	}
}

// tcpDelayedAcks sends the delayed ACKs that are due and no reply has
// carried.
func (e *Engine) tcpDelayedAcks() {
	keep := e.tcp.ackDelayed[:0]
	for _, idx := range e.tcp.ackDelayed {
		f := e.tcp.flows[idx]
		if !e.tcp.used[idx] || f.flags&tcpAckDelayed == 0 {
			continue
		}
		switch {
		case f.ackSent == f.rcvNxt:
		case e.now >= f.ackDue:
			e.tcpSendFlags(f, header.TCPAck)
			f.quickTo = e.now + tcpQuickAck
		default:
			keep = append(keep, idx)
			continue
		}
		f.flags &^= tcpAckDelayed
	}
	e.tcp.ackDelayed = keep
}

// tcpWindow is the raw window field to advertise: the room left in the
// host socket's send buffer, so the guest never sends what the kernel
// would refuse. A write that comes up short is costly: everything the
// guest sent after it is lost and it recovers one segment per round trip.
// When there is no room, EPOLLOUT tells us when to reopen the window;
// nothing else would, and the guest would sit in zero-window probing.
func (e *Engine) tcpWindow(f *tcpFlow) uint16 {
	if f.state&(tcpGuestFin|tcpHostReset) != 0 {
		return 0
	}
	if f.flags&tcpRoomKnown != 0 {
		return f.room
	}
	// The room is counted with the kernel's per-buffer overhead, a few
	// percent for the large buffers a busy flow writes: offer 15/16,
	// reckoned in 64 bits: 15 times a send buffer of 256 MiB (fixedSndbuf,
	// with a tuned net.core.wmem_max) is past 2^31, negative where int is
	// 32 bits wide, and the window was closed for good.
	room, full := sendRoom(f.fd, f.flags&tcpNotTCP != 0)
	w := uint16(min(max(int64(room)*15/16, 0)>>f.ourWS, 0xffff))
	if full && int(w)<<f.ourWS < f.mss {
		// A window closed, or too small for the guest to send a segment
		// into: it waits for an update, which EPOLLOUT brings.
		e.tcpWatchWrite(f)
	}
	// Only our writes take room, and each takes what it costs off what
	// we keep (spendRoom) or has it read again, so what we keep stays
	// safe to offer, and a download, which writes nothing, asks the
	// kernel once instead of once per peek. A window
	// under a segment is read each time, since the guest may wait for it
	// to grow without sending anything that would make us read it.
	if int(w)<<f.ourWS >= f.mss {
		f.room, f.roomRead = w, w
		f.flags |= tcpRoomKnown
	}
	return w
}

// tcpEvents are what a connected flow's socket reports, edge-triggered:
// data, urgent data (tcpUrgent) and the peer's FIN. EPOLLOUT joins them
// only while a window update waits for room (tcpWatchWrite), and EPOLLIN
// leaves them while the flow cannot send (tcpHoldIn), with EPOLLPRI, for
// which the kernel would wake the engine at every segment; urgent data
// that came meanwhile is reported when they come back.
const tcpEvents = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLET

// tcpEpollMod tells epoll what the flow's flags say it waits for.
func (e *Engine) tcpEpollMod(f *tcpFlow) {
	ev := uint32(tcpEvents)
	if f.flags&tcpInOff != 0 {
		ev &^= unix.EPOLLIN | unix.EPOLLPRI
	}
	if f.flags&tcpWaitWrite != 0 {
		ev |= unix.EPOLLOUT
	}
	e.epollMod(f.fd, ev, e.tcpRef(f))
}

// tcpHoldIn stops or restarts EPOLLIN (and EPOLLPRI). A flow stopped at
// the guest's window or the link's room has nothing to do with new host
// data until the guest acknowledges or the link drains, and both call
// tcpSendToGuest, which reads what came meanwhile. Watching it anyway
// would wake the engine for every segment the host peer sent meanwhile;
// passt stops watching too. It restarts only once a peek drains the
// socket, so a flow held by the guest's window stays held from one ACK
// to the next. Restarting re-arms the edge: epoll reports data already
// there, and urgent data too.
func (e *Engine) tcpHoldIn(f *tcpFlow, hold bool) {
	if (f.flags&tcpInOff != 0) != hold {
		f.flags ^= tcpInOff
		e.tcpEpollMod(f)
	}
}

// tcpRef is the epoll reference of a flow's host socket.
func (e *Engine) tcpRef(f *tcpFlow) epollRef {
	return epollRef{kind: kindTCP, gen: e.tcp.gen(f.idx), idx: f.idx}
}

// tcpWatchWrite arms EPOLLOUT to learn when the host socket has room.
func (e *Engine) tcpWatchWrite(f *tcpFlow) {
	if f.flags&tcpWaitWrite == 0 {
		f.flags |= tcpWaitWrite
		e.tcpEpollMod(f)
	}
}

// tcpSendToGuest peeks host data into segments for the guest, as far as
// the guest's window and the link's room allow. Over vhost-user the
// frames are the guest's own RX buffers, so the peek is the only copy.
func (e *Engine) tcpSendToGuest(f *tcpFlow) {
	if f.state&(tcpEstablished|tcpFinSent) != tcpEstablished || f.flags&tcpWaitTap != 0 || e.link == nil ||
		!e.tcpDiscardAcked(f, true) {
		return
	}
	dst := f.key.guest.Addr()
	hdr := l4Off(dst) + header.TCPMinLen
	seg := f.mss // the payload of one frame
	if e.link.GuestTSO(dst.Is6()) {
		// Large receive: as many segments as a 64 KiB frame holds go as
		// one, and the guest cuts them.
		seg = max(1, (maxTSOFrame-hdr)/f.mss) * f.mss
	}
	wnd := e.tcpWindow(f)
	guestCsum := e.link.GuestCsum()
	for {
		inflight := f.sndNxt - f.sndUna
		if inflight >= f.guestWnd {
			f.flags |= tcpWndFull // the guest's next ACK calls us again
			if f.guestWnd == 0 && f.rtoAt == 0 {
				f.rtoAt = e.now + tcpRTO // tcpProbeWindow
			}
			e.tcpHoldIn(f, true)
			return
		}
		want := int(min(f.guestWnd-inflight, uint32(tcpMaxSegs*seg)))
		e.link.Cancel() // frames here are the only ones open
		iov := e.tcp.iov[:0]
		skip := 0 // bytes already in flight that this peek reads again
		if !f.peekOff && inflight > 0 {
			skip = int(inflight)
			iov = append(iov, e.tcp.skipIov(skip))
		}
		// One frame per segment, its payload in one or more pieces (the
		// guest's own buffers, over vhost-user), as many as there is room.
		segs := 0
		for ; segs*seg < want && len(iov) < cap(iov); segs++ {
			l := min(seg, want-segs*seg)
			e.tcp.segIov[segs] = len(iov)
			b, more := e.link.ReserveV(hdr, max(hdr+l, minFrameLen), iov)
			if b == nil {
				want = segs * seg
				break
			}
			e.tcp.frames[segs] = b
			iov = trimIov(more, len(iov), l) // a frame padded to the minimum reads no more than l
		}
		// Frames whose pieces filled the peek's iovecs hold less than
		// the window: a peek that fills them is not a drained socket.
		want = min(want, segs*seg)
		e.tcp.segIov[segs] = len(iov)
		if segs == 0 {
			f.flags |= tcpWaitTap
			e.tcp.tapWaiters = append(e.tcp.tapWaiters, f.idx)
			e.tcpHoldIn(f, true)
			return
		}
		n, err := recvmsgIov(f.fd, iov, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN && (f.flags&tcpUrgent != 0 || f.state&tcpHostRdhup != 0) {
			// Perhaps at urgent data with a signal pending (blockSignals):
			// taken for drained, or for the end of the stream, the rest
			// would wait for a segment that may never come, or be lost.
			// After the peer's FIN, urgent data may be there unflagged:
			// a held flow (tcpHoldIn) does not watch EPOLLPRI, and
			// epoll reports the FIN alone.
			old := blockSignals()
			n, err = recvmsgIov(f.fd, iov, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			unblockSignals(old)
		}
		if err == unix.EAGAIN && f.state&tcpHostRdhup != 0 {
			// A socket that had its peer's FIN gives the end of the
			// stream (0), except one restored after it (tcpAddMoved),
			// which cannot hold the FIN: its queue's end is the stream's.
			n, err = 0, nil
		}
		if err == unix.EAGAIN {
			e.link.Cancel()
			e.tcpDrained(f)
			return
		}
		if err != nil {
			e.link.Cancel()
			switch {
			case f.state&tcpHostReset != 0:
				e.debugf("TCP %v: peek: %v", f.key.remote, err)
				e.tcpClose(f, true, false)
			case e.tcpHostError(f, err):
				continue // the reset, taken: the next peek finds the stream's end
			}
			return
		}
		// Nothing at all is the end of the stream. Without SO_PEEK_OFF,
		// only what is in flight is nothing new: the stream ends there
		// only if the peer has shut down, and if no urgent data stopped
		// the peek short of the rest.
		eof := n == 0 || n <= skip && f.state&tcpHostRdhup != 0 && inq(f.fd) <= skip
		if n -= skip; n <= 0 {
			e.link.Cancel()
			if !eof {
				e.tcpShortPeek(f)
				return
			}
			e.tcpSetState(f, tcpHostEOF, 0)
			if f.state&tcpHostReset != 0 {
				if e.tcpResetDelivered(f) {
					e.tcpClose(f, true, false)
				}
				return
			}
			if f.state&tcpFinSent == 0 {
				e.tcpSendFlags(f, header.TCPFin|header.TCPAck)
				e.tcpSetState(f, tcpFinSent, 0)
				f.advance(1)
				if f.rtoAt == 0 {
					f.rtoAt = e.now + tcpRTO
				}
			}
			return
		}
		for i, sent := 0, 0; sent < n; i++ {
			l := min(seg, n-sent)
			fl := header.TCPAck
			if sent+l == n {
				fl |= header.TCPPsh
			}
			// A frame of several segments is a large receive: the guest
			// cuts it and completes its checksum, as it completes any
			// frame's that can (vhost-user's GUEST_CSUM).
			p, tso := tcpPayload{n: l, partial: l > f.mss || guestCsum}, qemusock.TSO{}
			if p.partial {
				tso = qemusock.TSO{IPv6: dst.Is6(), L4: l4Off(dst)}
				if l > f.mss {
					tso.MSS = f.mss
				}
			} else {
				p.sum = iovSum(iov[e.tcp.segIov[i]:e.tcp.segIov[i+1]], l)
			}
			e.link.CommitTSO(e.tcpFill(e.tcp.frames[i], f, fl, f.sndNxt+uint32(sent), 0, p, wnd), tso)
			sent += l
		}
		e.link.Cancel() // frames the peek did not fill
		e.Stats.FramesOut += uint64((n + seg - 1) / seg)
		e.moved += n
		f.advance(uint32(n))
		f.sentAck(wnd)
		if f.rtoAt == 0 {
			f.rtoAt = e.now + tcpRTO
		}
		if n < want {
			switch {
			case f.flags&tcpUrgent != 0 && f.peekOff:
				// Maybe stopped at urgent data: the next peek starts
				// there and goes past it, or finds nothing.
			case f.flags&tcpUrgent != 0, f.state&tcpHostRdhup == 0:
				e.tcpShortPeek(f)
				return
			}
		}
	}
}

// tcpShortPeek follows a peek that found less than it asked for: the
// host socket is drained, unless the peek stopped at urgent data. Then,
// with SO_PEEK_OFF, the next peek starts there and goes past it
// (tcpSendToGuest peeks again); without, each peek from the queue's head
// stops there until the guest acknowledges the bytes before it, and its
// ACK peeks again.
func (e *Engine) tcpShortPeek(f *tcpFlow) {
	if f.flags&tcpUrgent != 0 && !f.peekOff {
		f.flags |= tcpWndFull
		e.tcpHoldIn(f, true)
		return
	}
	e.tcpDrained(f)
}

// tcpDrained follows a peek that emptied the host socket: no peek comes
// to drop what the guest acknowledged, so it goes now, and the next
// EPOLLIN edge brings more.
func (e *Engine) tcpDrained(f *tcpFlow) {
	if !e.tcpDiscardAcked(f, false) {
		return
	}
	if f.sndUna == f.sndNxt {
		f.flags &^= tcpUrgent // dropped: no peek goes back to it
	}
	e.tcpHoldIn(f, false)
}

// discard drops n acknowledged bytes from the host socket. TCP sockets
// drop them without copying; unix sockets need a real read.
func (t *tcpTable) discard(f *tcpFlow, n int) error {
	if f.flags&tcpNotTCP == 0 {
		return discard(f.fd, n)
	}
	for n > 0 {
		if len(t.discardBuf) == 0 {
			t.discardBuf = make([]byte, 1<<20)
		}
		r, err := unix.Read(f.fd, t.discardBuf[:min(n, len(t.discardBuf))])
		if err != nil {
			return err
		}
		if r == 0 {
			return unix.EIO // as discard: the stream ended before bytes the guest acknowledged
		}
		n -= r
	}
	return nil
}

// skipIov is the first iovec of a peek on kernels without SO_PEEK_OFF: it
// soaks up the bytes already in flight to the guest.
func (t *tcpTable) skipIov(n int) unix.Iovec {
	if len(t.discardBuf) < n {
		t.discardBuf = make([]byte, max(n, 1<<20))
	}
	return iovec(&t.discardBuf[0], n)
}

// tcpResumeWaiters restarts flows that stopped for lack of output room.
func (e *Engine) tcpResumeWaiters() {
	w := e.tcp.tapWaiters
	e.tcp.tapWaiters = w[len(w):]
	for _, idx := range w {
		f := e.tcp.flows[idx]
		if e.tcp.used[idx] && f.flags&tcpWaitTap != 0 {
			f.flags &^= tcpWaitTap
			e.tcpSendToGuest(f)
		}
	}
	if len(e.tcp.tapWaiters) == 0 {
		e.tcp.tapWaiters = w[:0]
	}
}

// tcpRewind goes back to the oldest unacknowledged byte: the data is still
// in the socket, so retransmitting is peeking again.
func (e *Engine) tcpRewind(f *tcpFlow) {
	if !e.tcpDiscardAcked(f, false) { // the peek starts over at the queue's head
		return
	}
	f.sndNxt = f.sndUna
	e.tcpSetState(f, 0, tcpFinSent)
	f.dupAcks = 0
	if f.peekOff {
		unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, 0)
	}
	e.tcpSendToGuest(f)
}

// tcpTimers runs retransmissions and expiry for every flow.
func (e *Engine) tcpTimers() {
	e.tcpRepeatResets()
	e.tcpLingerExpire()
	e.tcp.each(func(_ int32, f *tcpFlow) {
		switch {
		case f.state&tcpConnecting != 0 && e.now-f.created > tcpSynTimeout:
			e.tcpConnectFailed(f, unix.ETIMEDOUT)
		case f.rtoAt != 0 && e.now >= f.rtoAt && f.sndNxt == f.sndUna && f.guestWnd == 0 &&
			f.state&tcpEstablished != 0:
			e.tcpProbeWindow(f)
		case f.rtoAt != 0 && e.now >= f.rtoAt:
			if f.retries++; f.retries > tcpMaxRetries {
				e.debugf("TCP %v: guest stopped acknowledging", f.key.remote)
				e.tcpGuestGone(f, true)
				return
			}
			f.rtoAt = e.now + tcpRTO<<min(f.retries, 4)
			switch {
			case f.state&tcpSynSent != 0:
				e.tcpSendFlags(f, header.TCPSyn)
			case f.state&tcpSynAckSent != 0:
				e.tcpSendFlags(f, header.TCPSyn|header.TCPAck)
			default:
				e.tcpRewind(f)
				if f.sndNxt == f.sndUna && f.guestWnd == 0 {
					// Nothing fits in the guest's closed window: no
					// retransmission is due, and none unanswered counts
					// against it. Its window is probed instead.
					f.retries = 0
					e.tcpProbeWindow(f)
				}
			}
		case f.state&(tcpGuestFin|tcpFinSent) != 0 && e.now-f.lastAct > tcpFinTimeout,
			e.now-f.lastAct > tcpIdle:
			e.tcpGuestGone(f, true)
		case f.state&tcpEstablished != 0 && f.sndUna == f.sndNxt &&
			e.now-max(f.lastAct, f.kaSent) > tcpKeepIdle:
			// The guest has been silent: probe it, one byte below what
			// it has acknowledged, as passt does. A guest that still has
			// the connection answers, and its ACK counts as activity, so
			// tcpIdle only ends connections the guest no longer knows.
			f.kaSent = e.now
			e.tcpSendSeg(f, header.TCPAck, f.sndNxt-1, e.tcpWindow(f))
		}
	})
}

// tcpProbeWindow probes the guest's closed window (RFC 9293, 3.8.6.1):
// its update that opens it may be lost, and only its answer would tell.
// As Linux does, the probe is a segment just below the window, which the
// guest acknowledges with its window. Probes back off as retransmissions
// do, up to tcpRTO<<4, and never end the flow: a guest that answers is
// alive, and one that does not idles out (tcpIdle).
func (e *Engine) tcpProbeWindow(f *tcpFlow) {
	f.retries = min(f.retries+1, 4)
	f.rtoAt = e.now + tcpRTO<<f.retries
	e.tcpSendSeg(f, header.TCPAck, f.sndNxt-1, e.tcpWindow(f))
}

// tcpClose ends a flow. rstGuest tells the guest with a RST; rstHost makes
// the host peer see a reset instead of an orderly close.
func (e *Engine) tcpClose(f *tcpFlow, rstGuest, rstHost bool) {
	if rstGuest {
		if f.state&tcpConnecting != 0 {
			e.tcpSendFlags(f, header.TCPRst|header.TCPAck) // a lost one: the guest's SYN comes again
		} else {
			e.tcpSendFlags(f, header.TCPRst)
			if f.state&tcpEstablished != 0 { // before, the guest sends again until answered
				e.tcp.keepReset(f, e.now)
			}
		}
	}
	if !rstHost && f.unread > 0 {
		// Closing a socket with bytes left unread resets the peer and
		// throws away what the socket has not sent yet: the guest's
		// data, which we acknowledged. The guest acknowledged these.
		e.tcp.discard(f, int(f.unread))
	}
	if f.flags&tcpNotTCP != 0 {
		e.host.EndCommand(f.fd)
	}
	if rstHost {
		unix.SetsockoptLinger(f.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	if e.tcp.w.flow == f {
		e.tcp.w = tcpWriteBatch{}
	}
	if f.flags&(tcpLingerHost|tcpNotTCP) != tcpLingerHost || !e.tcpLingerAdd(f.fd, f.state&tcpGuestFin != 0) {
		unix.Close(f.fd)
	}
	f.fd = -1
	f.state, f.flags = 0, 0
	e.tcp.remove(f.idx, f.key)
}

// tcpLinger is the host socket of a flow the guest reset, or that ended
// as the guest no longer answered (tcpGuestGone), while the socket still
// held data the guest sent, which we acknowledged. A peer of the guest's
// own would have had that data, and read it before the reset; closed at
// once, the socket would throw it away. A guest's kernel forgets a
// connection it closed a minute after our ACK of its FIN, which comes
// long before a slow peer has read an upload from our socket. So it stays
// open, out of the flow table and out of epoll, until its peer has
// acknowledged it all, or does not for tcpFinTimeout; then closing it
// resets the peer (SO_LINGER 0, set by tcpClose). Kept in a small table:
// when it is full, the oldest is reset at once.
type tcpLinger struct {
	fd  int
	end time.Duration
	fin bool // the socket is shut for writing: its FIN counts in SIOCOUTQ
}

// unsent is how much of the guest's data l's peer has not acknowledged:
// none once its peer reset it (or the kernel gave up on it), which threw
// the rest away, though SIOCOUTQ still counts it, and would for
// tcpFinTimeout. Out of epoll, the socket keeps that error for us.
func (l tcpLinger) unsent() int {
	q, err := sockQueued(l.fd, unix.SIOCOUTQ)
	if err != nil || sockError(l.fd) != nil {
		return 0
	}
	if l.fin {
		q--
	}
	return q
}

const tcpLingerMax = 64

// tcpLingerAdd keeps fd (tcpLinger), shut for writing if fin, if it
// still has data to send, and reports whether it did.
func (e *Engine) tcpLingerAdd(fd int, fin bool) bool {
	l := tcpLinger{fd: fd, end: e.now + tcpFinTimeout, fin: fin}
	if l.unsent() <= 0 {
		return false
	}
	unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	t := &e.tcp
	if len(t.lingers) == tcpLingerMax {
		unix.Close(t.lingers[0].fd)
		t.lingers = slices.Delete(t.lingers, 0, 1)
	}
	t.lingers = append(t.lingers, l)
	return true
}

// tcpLingerExpire closes the lingering sockets whose peer has all their
// data, or whose time is up.
func (e *Engine) tcpLingerExpire() {
	keep := e.tcp.lingers[:0]
	for _, l := range e.tcp.lingers {
		if l.unsent() > 0 && e.now < l.end {
			keep = append(keep, l)
			continue
		}
		unix.Close(l.fd)
	}
	clear(e.tcp.lingers[len(keep):])
	e.tcp.lingers = keep
}

// tcpLingerRelease lets the lingering sockets go as the engine ends.
// One the guest shut ends as the guest ended it: the kernel sends what it
// holds, then the FIN (passt's exit does the same for every socket).
// Closed with SO_LINGER 0 instead, its data would be thrown away; so
// would it be by a close that finds bytes the guest never read from the
// peer (tcp_close resets then), which are thrown away first, and by one
// that gets more from the peer after it (tcp_rcv_state_process resets
// then): the receive buffer shrinks to the least first, so that the
// window stays shut, not opened by the bytes thrown away, to a peer that
// has more to send. The others' peers must hear a reset, not a FIN, which
// would pass a cut upload off as whole (the guest reset it, or was gone
// before it ended it): they have tcpLingerDrain to take the data first.
func (e *Engine) tcpLingerRelease() {
	reset := e.tcp.lingers[:0]
	for _, l := range e.tcp.lingers {
		if !l.fin {
			reset = append(reset, l)
			continue
		}
		unix.SetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
		discard(l.fd, inq(l.fd))
		unix.SetsockoptLinger(l.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{})
		unix.Close(l.fd)
	}
	end := time.Now().Add(tcpLingerDrain)
	for len(reset) > 0 {
		keep := reset[:0]
		for _, l := range reset {
			if l.unsent() > 0 && time.Now().Before(end) {
				keep = append(keep, l)
				continue
			}
			unix.Close(l.fd) // SO_LINGER 0 (tcpClose): a reset
		}
		if reset = keep; len(reset) > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	clear(e.tcp.lingers)
	e.tcp.lingers = e.tcp.lingers[:0]
}

// tcpLingerDrain bounds how long an ending engine waits for the peers of
// lingering sockets to take their data: well within the 5 s its helper
// gives it to stop.
const tcpLingerDrain = 2 * time.Second

// tcpGuestGone ends a flow that the guest reset, or that it stopped
// answering; its host socket lingers (tcpLinger), and the peer gets the
// reset after what the guest sent.
func (e *Engine) tcpGuestGone(f *tcpFlow, rstGuest bool) {
	if f.state&tcpHostReset == 0 { // else its peer has nothing more of the guest's
		f.flags |= tcpLingerHost
	}
	e.tcpClose(f, rstGuest, true)
}

// tcpReset is a RST sent to the guest for a flow that is gone, kept to be
// sent again: nothing acknowledges a RST, and the guest's connection
// would outlive one lost on the way (a full ring, a lossy link) for as
// long as the guest only waits to read, since only its own segments
// would meet our answer to a segment of no flow. A guest that got the
// first drops the copies (RFC 9293, 3.10.7.1), and a new flow on the
// same addresses cancels them. Kept in a small table: when it is full, a
// new RST takes the place of the one with the fewest copies left.
type tcpReset struct {
	key  tcpKey
	mac  remoteMAC
	seq  uint32
	due  time.Duration
	left uint8 // copies still to send; the slot is free at 0
}

// keepReset keeps the RST just sent for f (tcpReset).
func (t *tcpTable) keepReset(f *tcpFlow, now time.Duration) {
	slot := &t.resets[0]
	for i := range t.resets {
		if r := &t.resets[i]; r.left < slot.left {
			slot = r
		}
	}
	if slot.left == 0 {
		t.resetsOwed++
	}
	*slot = tcpReset{key: f.key, mac: f.mac, seq: f.sndNxt, due: now + tcpResetGap, left: tcpResetCopies}
}

// forgetReset drops the copies of a RST for key: a new flow has it.
func (t *tcpTable) forgetReset(key tcpKey) {
	for i := 0; t.resetsOwed > 0 && i < len(t.resets); i++ {
		if r := &t.resets[i]; r.left > 0 && r.key == key {
			r.left = 0
			t.resetsOwed--
		}
	}
}

// tcpRepeatResets sends the kept RSTs that are due again.
func (e *Engine) tcpRepeatResets() {
	for i := 0; e.tcp.resetsOwed > 0 && i < len(e.tcp.resets); i++ {
		r := &e.tcp.resets[i]
		if r.left == 0 || e.now < r.due {
			continue
		}
		f := tcpFlow{key: r.key, mac: r.mac}
		e.tcpSendSeg(&f, header.TCPRst, r.seq, 0)
		if r.left--; r.left == 0 {
			e.tcp.resetsOwed--
		}
		r.due = e.now + tcpResetGap<<(2*(tcpResetCopies-r.left))
	}
}

// tcpSendFlags sends a segment without data, with the current window.
func (e *Engine) tcpSendFlags(f *tcpFlow, flags header.TCPFlags) {
	seq := f.sndNxt
	wnd := uint16(0xffff) // unscaled in a SYN; the real window follows
	if flags&header.TCPSyn != 0 {
		seq = f.sndUna
		f.sndNxt = f.sndUna
		f.advance(1)
		if f.rtoAt == 0 {
			f.rtoAt = e.now + tcpRTO
		}
	} else {
		wnd = e.tcpWindow(f)
	}
	e.tcpSendSeg(f, flags, seq, wnd)
}

// tcpSendSeg queues a segment without data.
func (e *Engine) tcpSendSeg(f *tcpFlow, flags header.TCPFlags, seq uint32, wnd uint16) {
	optLen := 0
	if flags&header.TCPSyn != 0 {
		optLen = header.TCPSynOptionLen
	}
	b := e.reserveIP(f.key.guest.Addr(), header.TCPMinLen+optLen)
	if b == nil {
		return
	}
	e.commit(e.tcpFill(b, f, flags, seq, optLen, tcpPayload{}, wnd))
	f.sentAck(wnd)
}

// sentAck notes the acknowledgement and the window of a segment we sent,
// and how far the window let the guest send. Our window can shrink (a
// small write takes more room than its bytes, spendRoom), and data the
// guest sent into the larger one, and the ACKs behind it, may still come:
// they are the guest's stream up to the furthest edge we offered.
func (f *tcpFlow) sentAck(wnd uint16) {
	f.ackSent, f.wndSent = f.rcvNxt, wnd
	if edge := f.rcvNxt + uint32(wnd)<<f.ourWS; seqLT(f.edgeSent, edge) {
		f.edgeSent = edge
	}
}

// tcpPayload is the data of a segment whose headers tcpFill writes: n
// bytes already in place, summed to sum; or, partial, left for the guest
// to sum, as a NIC's large receive leaves it (the guest takes the data as
// checked, or completes the sum if it forwards it).
type tcpPayload struct {
	n       int
	sum     uint64
	partial bool
}

// tcpFill writes the headers of a segment at the start of b and returns
// the frame's size.
func (e *Engine) tcpFill(b []byte, f *tcpFlow, flags header.TCPFlags, seq uint32, optLen int, p tcpPayload, wnd uint16) int {
	l4len := header.TCPMinLen + optLen + p.n
	src, dst := f.key.remote.Addr(), f.key.guest.Addr()
	size := e.fillIP(b, e.flowMAC(&f.mac, src), src, dst, header.ProtoTCP, l4len)
	t := header.TCP(b[l4Off(dst) : l4Off(dst)+header.TCPMinLen+optLen])
	ack := f.rcvNxt
	if flags&header.TCPAck == 0 {
		ack = 0
	}
	t.Encode(header.TCPFields{SrcPort: f.key.remote.Port(), DstPort: f.key.guest.Port(),
		Seq: seq, Ack: ack, Flags: flags, Window: wnd, HeaderLen: header.TCPMinLen + optLen})
	if optLen > 0 {
		header.EncodeSynOptions(t[header.TCPMinLen:], advMSS(f.mss), f.ourWS)
	}
	sum := header.PseudoHeaderSum(header.ProtoTCP, src, dst, l4len)
	if p.partial {
		t.SetChecksum(^header.Fold(sum)) // the pseudo-header's sum alone
	} else {
		t.SetChecksum(header.Fold(header.Checksum(t, sum+p.sum)))
	}
	return size
}

// maxTSOFrame bounds a large frame to the guest: the IP length field's
// 64 KiB.
const maxTSOFrame = header.EthernetLen + 0xffff

// tcpRstReply answers a segment that belongs to no flow, per RFC 793.
func (e *Engine) tcpRstReply(key tcpKey, in header.TCP) {
	f := tcpFlow{key: key, mac: remoteMAC{e.cfg.OurMAC, key.remote.Addr()}} // from us, as passt's, not from the remote
	flags := header.TCPRst
	if in.Flags()&header.TCPAck != 0 {
		f.sndNxt = in.Ack()
	} else {
		flags |= header.TCPAck
		// The segment at hand is its payload and any tail (frameInput).
		f.rcvNxt = in.Seq() + uint32(len(in.Payload())+iovLen(e.tail))
		if in.Flags()&header.TCPSyn != 0 {
			f.rcvNxt++
		}
		if in.Flags()&header.TCPFin != 0 {
			f.rcvNxt++
		}
	}
	b := e.reserveIP(key.guest.Addr(), header.TCPMinLen)
	if b == nil {
		return
	}
	e.commit(e.tcpFill(b, &f, flags, f.sndNxt, 0, tcpPayload{}, 0))
}

// tcpConnectFailed ends a flow whose host connect() failed with err: with
// an ICMP error where err has one, else with a reset.
func (e *Engine) tcpConnectFailed(f *tcpFlow, err error) {
	e.debugf("TCP %v: connect failed: %v", f.key.remote, err)
	e.tcpClose(f, !e.tcpUnreachable(f.key, f.rcvNxt-1, err), false)
}

// tcpUnreachable sends the guest the ICMP error that matches a failed
// connect(), quoting its SYN, so the guest's connect fails at once with
// "no route to host" and the like. It reports false when err is not
// about reachability: a refused port, among others, is answered with a
// reset by the caller.
func (e *Engine) tcpUnreachable(key tcpKey, synSeq uint32, err error) bool {
	if err == unix.ECONNREFUSED {
		return false
	}
	var quote [header.TCPMinLen]byte
	header.TCP(quote[:]).Encode(header.TCPFields{SrcPort: key.guest.Port(), DstPort: key.remote.Port(),
		Seq: synSeq, Flags: header.TCPSyn, HeaderLen: header.TCPMinLen})
	return e.sendUnreachable(err, key.guest.Addr(), key.remote.Addr(), header.ProtoTCP, quote[:])
}

// closeAll ends every flow when the guest is gone with its front-end: a
// VM powered off right after its upload. What the guest sent, which we
// acknowledged, still reaches its peers (tcpGuestGone), and the sockets
// already lingering go on. The segments put aside in a batch that the
// client's going cut short (tcpRetryAhead) go too: the next client's
// first batch would replay them.
func (t *tcpTable) closeAll(e *Engine) {
	t.each(func(_ int32, f *tcpFlow) { e.tcpGuestGone(f, false) })
	clear(t.ahead[:cap(t.ahead)])
	t.ahead = t.ahead[:0]
	t.ackList = t.ackList[:0]
	t.ackedList = t.ackedList[:0]
	t.tapWaiters = t.tapWaiters[:0]
	t.resets, t.resetsOwed = [len(t.resets)]tcpReset{}, 0
}
