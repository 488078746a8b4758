package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"
)

// vhost-user (QEMU's docs/interop/vhost-user.rst): the guest's virtio-net
// queues served straight from gopasst. QEMU, the front-end, connects to
// our socket and sends its memory table and the rings' addresses; frames
// then travel through guest memory, with one eventfd per ring to kick us
// (TX: the guest queued frames; RX: it added buffers) and one to
// interrupt it. No frame crosses a socket.
//
// One copy each way, the kernel's. From the guest, a frame's first
// HeadCopy bytes (its headers) are copied into the link's own buffer, so
// that the engine parses what the guest can no longer change; the rest
// stays in guest memory (Tail), and the engine writes TCP data from there
// to the host socket. To the guest, TCP data is peeked from the host
// socket straight into the guest's RX buffers (ReserveV); other frames
// wait in the link's queue and Flush copies them in.

// Front-end requests (the subset a vhost-user-net front-end sends with
// the features we offer).
const (
	vuGetFeatures         = 1
	vuSetFeatures         = 2
	vuSetOwner            = 3
	vuResetOwner          = 4
	vuSetMemTable         = 5
	vuSetVringNum         = 8
	vuSetVringAddr        = 9
	vuSetVringBase        = 10
	vuGetVringBase        = 11
	vuSetVringKick        = 12
	vuSetVringCall        = 13
	vuSetVringErr         = 14
	vuGetProtocolFeatures = 15
	vuSetProtocolFeatures = 16
	vuGetQueueNum         = 17
	vuSetVringEnable      = 18
)

// Header flags.
const (
	vuVersion   = 0x1
	vuReply     = 0x4
	vuNeedReply = 0x8
)

// Feature bits.
const (
	virtioNetFCsum             = 1 << 0 // the guest may send partial checksums
	virtioNetFGuestCsum        = 1 << 1 // we may send partial checksums (large receive does)
	virtioNetFGuestTSO4        = 1 << 7 // we may send TCP frames over the guest's MTU, to be taken as segments
	virtioNetFGuestTSO6        = 1 << 8
	virtioNetFHostTSO4         = 1 << 11 // the guest may send TCP segments over its MTU
	virtioNetFHostTSO6         = 1 << 12
	virtioNetFMrgRxbuf         = 1 << 15 // a frame to the guest may span buffers
	vhostUserFProtocolFeatures = 1 << 30
	virtioFVersion1            = 1 << 32

	vuProtocolReplyAck = 1 << 3

	virtioNetHdrNeedsCsum = 1 // virtio-net header flag: the checksum from csum_start is partial
	virtioNetHdrDataValid = 2 // virtio-net header flag: the checksums are good
	virtioNetGSOTCPv4     = 1 // virtio-net header gso_type
	virtioNetGSOTCPv6     = 4
	tcpChecksumOffset     = 16 // where TCP's checksum lies in its header
)

// VhostUserFeatures are the virtio features gopasst offers: passt's
// (VERSION_1, MRG_RXBUF, GUEST_CSUM, with which frames to the guest are
// marked as checked, LOG_ALL for live migration) and the guest's checksum and TCP segmentation
// offloads, which cost gopasst nothing (it never checks a guest's L4
// checksum, and takes a TCP segment of any size) and spare the guest
// both.
const VhostUserFeatures = virtioFVersion1 | virtioNetFMrgRxbuf | virtioNetFGuestCsum |
	virtioNetFCsum | virtioNetFHostTSO4 | virtioNetFHostTSO6 |
	virtioNetFGuestTSO4 | virtioNetFGuestTSO6 | vhostUserFProtocolFeatures | vhostFLogAll

const (
	vuHeaderLen  = 12
	vuMaxPayload = 4096 // the largest request: a memory table of 8 regions is 264 bytes
	vuMaxFds     = 8
	vuMaxRegions = 8
	rxQueue      = 0 // the guest's receive queue: we write it
	txQueue      = 1 // the guest's transmit queue: we read it
)

// Link poller ids: the socket, then each ring's kick.
const (
	vuIDSocket = 0
	vuIDKick   = 1 // + queue index
)

// ErrVhostUser reports a front-end that broke the protocol; the
// connection is closed, and the next front-end is served.
var ErrVhostUser = errors.New("vhost-user")

// vhostLink is a Link over a vhost-user connection.
type vhostLink struct {
	fd     int
	poller Poller
	in     [vuHeaderLen + vuMaxPayload]byte // a request being received
	have   int
	fds    []int // descriptors that came with it

	features, protocol uint64
	mem                guestMemory
	vq                 [2]virtq
	hdrLen             int // the virtio-net header before each frame: 12, or 10 without VERSION_1 and MRG_RXBUF

	rd      *Reader
	q       *Queue
	dropped uint64
	tx      txHeld
	rx      rxDirect
	noTSO   bool // a large frame went through the queue: no more (CommitTSO)
	rxKick  rxKick

	log      dirtyLog // migrate.go
	migrator Migrator
	stateErr error // the last device state transfer's
	saved    bool  // ... which saved the state, not yet checked
}

// rxKick is whether the RX ring's kick is watched, and whether anything
// waits for it. The guest kicks each time it adds RX buffers, which, as
// it takes our frames, is about as often as we send it one: guest to
// host, one wake-up of ours in two was for buffers nobody needed.
// passt never watches the RX kick. We watch it while a frame waits in
// the queue, or room was refused (short), for want of buffers; the
// first kick that finds nobody waiting stops the watch, and the next
// want of buffers restarts it. A kick meanwhile stays counted in the
// eventfd, which epoll then reports at once.
type rxKick struct {
	watched, short bool
}

// rxShort notes that something waits for RX buffers, and watches the
// RX kick. It also owes the guest an interrupt (virtq.mayInterrupt): a
// guest out of buffers that takes interrupts may have missed the one for
// the frames that used them up, however it was lost, and would then
// never give more. So while it stays so, it gets one once owedDelay
// passed with no other.
func (l *vhostLink) rxShort() {
	l.rxKick.short = true
	l.watchRxKick(true)
	l.vq[rxQueue].owe()
}

func (l *vhostLink) watchRxKick(on bool) {
	kick := l.vq[rxQueue].kick
	if kick < 0 || l.rxKick.watched == on {
		return
	}
	events := uint32(0)
	if on {
		events = unix.EPOLLIN
	}
	if l.poller.Mod(kick, events, vuIDKick+rxQueue) == nil {
		l.rxKick.watched = on
	}
}

// rxDirect holds the frames reserved in the guest's RX buffers and not
// yet committed (ReserveV), and what was committed but not published.
type rxDirect struct {
	start       uint16 // the RX ring's next available entry before them
	chains      [maxDirectChains]rxChain
	frames      [maxDirectFrames]rxFrame
	nChains     int
	nFrames     int
	committed   int // frames committed
	chainsUsed  int // chains the committed frames took
	unpublished int // bytes committed and not yet published
}

// rxChain is one RX chain taken for a frame, and how much of it is used.
type rxChain struct {
	head uint16
	size uint32
}

// rxFrame is one frame reserved in RX chains: its chains in
// rxDirect.chains, its virtio-net header in the first buffer, and the
// length of the headers the engine writes.
type rxFrame struct {
	first, n int
	hdr      []byte
	hdrs     int
}

// A batch of frames built in guest buffers holds a TCP peek: 16 frames
// of up to 64 KiB, in buffers of 4 KiB as Linux's mergeable ones are,
// or of 1.5 KiB at worst.
const (
	maxDirectFrames = 16
	maxDirectChains = 1024
)

// NewVhostUser is a link over a connected vhost-user socket, with room
// for 8 MiB of frames that wait for the guest's RX buffers.
func NewVhostUser(fd int) Link { return newVhostLink(fd, 8<<20) }

// newVhostLink is a vhost-user link whose queue holds queue bytes. Its
// reader holds only the heads of one Read's frames (maxTxFrames of
// HeadCopy), so the least reader NewReader makes is enough.
func newVhostLink(fd, queue int) *vhostLink {
	return &vhostLink{fd: fd, vq: [2]virtq{newVirtq(), newVirtq()}, hdrLen: 12, log: dirtyLog{call: -1},
		rd: NewReader(QEMU, 0), q: NewQueue(QEMU, queue), stateErr: errNoTransfer}
}

func (l *vhostLink) Register(p Poller) error {
	l.poller = p
	return p.Add(l.fd, linkEvents, vuIDSocket)
}

// Event handles requests on the socket (no frames come from it), and
// turns a TX kick into frames to read and an RX kick into room to send.
func (l *vhostLink) Event(id uint32, events uint32) (in, out bool, err error) {
	if err := l.fault(); err != nil {
		return false, false, err
	}
	switch id {
	case vuIDSocket:
		if events&unix.EPOLLIN == 0 && events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
			return false, false, ErrHangUp
		}
		if err := l.requests(); err != nil {
			return false, false, err
		}
		// A ring may start with frames queued: at a migration's
		// destination, those the guest kicked the source for, which
		// stopped before it took them. The guest kicks again only for
		// frames it adds, and its TCP may wait on those for a timer:
		// the engine reads the ring after any request, as if kicked.
		return l.vq[txQueue].kick >= 0, true, l.fault()
	case vuIDKick + rxQueue:
		// An event can come late, from the epoll batch that stopped
		// the ring: there is no kick to drain then.
		kick := l.vq[rxQueue].kick
		if kick < 0 {
			return false, true, nil
		}
		err := drainEventfd(kick)
		if !l.rxKick.short {
			l.watchRxKick(false)
			return false, false, err
		}
		l.rxKick.short = false // until the engine, trying again, is short again
		return false, true, err
	case vuIDKick + txQueue:
		// The kick is drained only once the ring is found empty (Read):
		// until then the eventfd stays readable and the engine comes back.
		return true, false, nil
	}
	return false, false, nil
}

// fault is how the front-end broke a ring, if it did.
func (l *vhostLink) fault() error {
	for i := range l.vq {
		if err := l.vq[i].err; err != nil {
			return err
		}
	}
	return nil
}

// HeadCopy is how much of a frame from the guest vhost-user copies for
// the engine to parse: all its headers, Ethernet, IP and TCP with
// options, take at most 134 bytes. The rest of a larger frame stays in
// guest memory (Tail), and the engine writes TCP data from there.
const HeadCopy = 256

// txHeld are the TX chains of the last Read: the frames in them, their
// tails still in guest memory, are the engine's until the next Read or
// Event, and only then go back to the guest.
type txHeld struct {
	heads   [maxTxFrames]uint16
	tails   [maxTxFrames]struct{ first, n int } // each frame's pieces
	pieces  [maxTxPieces]unix.Iovec
	n       int // frames read
	nPieces int
	next    int // frames Next returned
}

// A Read takes at most this many frames, and their tails at most this
// many pieces (a Linux guest's TSO frame has up to 17).
const (
	maxTxFrames = 256
	maxTxPieces = 4096
)

// maxWalk bounds the descriptors walked at a time. A chain may be as
// long as its ring, and buffers of no length cost a step each: a guest
// whose chains each took all of a ring of 32768 kept one Read walking
// 2^30 descriptors for seven seconds, for one store of its available
// index, and so did one ReserveV or Flush over such broken RX chains. A
// Read, or a Flush, walks no more past its first chain, or frame, and
// leaves the rest for later, the kick raised again; a frame to the guest
// whose RX chains take more is dropped, its chains given back empty, as
// broken ones are. A Linux guest's 256 frames take some 5000, and a
// frame to it, 16 at most.
const maxWalk = 1 << 14

// Read takes the frames the guest queued on its TX ring, their heads into
// the link's buffer and their tails left in place, and returns their
// size, or EAGAIN if there were none. The frames of the previous Read go
// back to the guest first.
//
// The kick is drained only by a Read that finds the ring empty and holds
// no chains: while chains are held it stays readable, so the engine comes
// back for another Read, which gives them back, however many Reads its
// turn allows.
func (l *vhostLink) Read() (int, error) {
	tx := &l.vq[txQueue]
	l.releaseTx()
	if err := l.fault(); err != nil {
		return 0, err
	}
	if !tx.ready() {
		if tx.kick >= 0 {
			if err := drainEventfd(tx.kick); err != nil {
				return 0, err
			}
		}
		return 0, unix.EAGAIN
	}
	r := l.rd
	r.makeRoom()
	h := &l.tx
	total, broken, walked := 0, 0, tx.walked
	for h.n < maxTxFrames && len(r.buf)-r.end >= HeadCopy+maxPrefix {
		if tx.walked-walked >= maxWalk {
			signalShared(tx.kick) // as for broken chains, below
			break
		}
		head, ok := tx.nextAvail()
		if !ok && h.n == 0 && tx.err == nil {
			// Drain the kick, then look again: a frame queued in
			// between would otherwise wait for the next kick. If
			// there is one, the kick is raised again for the Read
			// that gives its chain back.
			if err := drainEventfd(tx.kick); err != nil {
				return 0, err
			}
			if head, ok = tx.nextAvail(); ok {
				signalShared(tx.kick)
			}
		}
		if !ok {
			break
		}
		pieces := h.nPieces
		n, tail, err := l.readChain(tx, head, r.buf[r.end+QEMU.LenSize:r.end+QEMU.LenSize+HeadCopy])
		if err == errPiecesFull && h.n > 0 {
			tx.lastAvail-- // the next Read takes it
			break
		}
		if err != nil || n == 0 {
			h.nPieces = pieces
			tx.putUsed(head, 0)
			l.dropped++
			if broken++; broken == int(tx.num) {
				// A guest that offers broken chains as fast as they go
				// back would keep us here: the rest waits for the
				// kick, raised again, at the engine's next turn.
				signalShared(tx.kick)
				break
			}
			continue
		}
		h.heads[h.n] = head
		h.tails[h.n].first, h.tails[h.n].n = pieces, h.nPieces-pieces
		h.n++
		QEMU.put(r.buf[r.end:], n)
		r.end += QEMU.LenSize + n
		total += n + tail
	}
	tx.publish()
	if err := tx.err; err != nil {
		return 0, err
	}
	if total == 0 {
		return 0, unix.EAGAIN
	}
	return total, nil
}

// releaseTx gives the chains of the last Read back to the guest.
func (l *vhostLink) releaseTx() {
	h := &l.tx
	if h.n == 0 {
		return
	}
	tx := &l.vq[txQueue]
	if tx.used != nil {
		for _, head := range h.heads[:h.n] {
			tx.putUsed(head, 0)
		}
		tx.publish()
	}
	h.n, h.nPieces, h.next = 0, 0, 0
}

// readChain copies the first HeadCopy bytes of the frame in a TX chain,
// after its virtio-net header, to dst and adds the rest to the link's
// pieces. It returns the bytes copied and those left in place, and
// errPiecesFull, taking nothing, when the pieces ran out.
func (l *vhostLink) readChain(q *virtq, head uint16, dst []byte) (copied, left int, err error) {
	c := q.chain(&l.mem, head)
	h := &l.tx
	first := h.nPieces
	skip := l.hdrLen
	for {
		b, err := c.buffer(false)
		if err != nil || b == nil {
			return copied, left, err
		}
		k := min(skip, len(b))
		skip -= k
		b = b[k:]
		if copied+left+len(b) > MaxFrame {
			return 0, 0, errBadChain // a frame larger than any we take
		}
		if left == 0 {
			k := copy(dst[copied:], b)
			copied += k
			b = b[k:]
		}
		if len(b) > 0 {
			if h.nPieces == len(h.pieces) {
				h.nPieces = first
				return 0, 0, errPiecesFull
			}
			h.pieces[h.nPieces] = iovec(&b[0], len(b))
			h.nPieces++
			left += len(b)
		}
	}
}

// errPiecesFull reports a chain with more pieces than a Read has room
// for: it waits for the next Read, or is dropped if it has more than any.
var errPiecesFull = errors.New("too many pieces")

func (l *vhostLink) Next() ([]byte, error) {
	f, err := l.rd.Next()
	if f != nil {
		l.tx.next++
	}
	return f, err
}

func (l *vhostLink) Tail() []unix.Iovec {
	h := &l.tx
	if h.next == 0 {
		return nil
	}
	t := h.tails[h.next-1]
	return h.pieces[t.first : t.first+t.n]
}

func (l *vhostLink) Reserve(n int) []byte {
	b := l.q.Reserve(n)
	if b == nil {
		l.rxShort()
	}
	return b
}

func (l *vhostLink) MaxFrame() int   { return MaxFrame }
func (l *vhostLink) Dropped() uint64 { return l.dropped }

// Pending counts frames built in guest buffers until they are published,
// and one more while either ring owes the guest an interrupt that is
// due and that it would now take (virtq.interruptOwed), which the
// engine's next Flush sends: the engine flushes at every turn, a tick
// apart at most while it has flows.
func (l *vhostLink) Pending() int {
	n := l.q.Pending() + l.rx.unpublished
	if l.vq[rxQueue].interruptOwed() || l.vq[txQueue].interruptOwed() {
		n++
	}
	return n
}

// ReserveV takes RX chains for the frame when it can: the ring runs
// with mergeable buffers, no queued frame must go first, and the
// guest's buffers are of a sane size. Otherwise the frame goes through
// the queue (and is copied in by Flush). With no buffers at all it
// reports no room: the data stays in the host socket until the guest
// adds buffers and kicks.
func (l *vhostLink) ReserveV(hdr, n int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	head, iov := l.reserveV(hdr, n, iov)
	if head == nil {
		l.rxShort()
	}
	return head, iov
}

func (l *vhostLink) reserveV(hdr, n int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	rx := &l.vq[rxQueue]
	d := &l.rx
	if d.nFrames > 0 && d.committed == d.nFrames {
		l.closeDirect() // a batch committed and never cancelled
	}
	if d.nFrames > 0 || !l.q.reserved() && l.features&virtioNetFMrgRxbuf != 0 && rx.ready() {
		if l.q.Pending() > 0 {
			return nil, iov // the queue goes first, in order
		}
		head, out, ok := l.reserveDirect(rx, hdr, n, iov)
		if ok || d.nFrames > 0 {
			return head, out
		}
	}
	return splitV(l.q.Reserve(n), hdr, iov)
}

// reserveDirect takes RX chains for hdrLen+n bytes. ok is false when the
// chains cannot take the frame as ReserveV promises (a first buffer too
// small for the headers, too many pieces); they are given back, and so
// they are when there are too few. A chain that breaks the rules, or has
// no room, goes back to the guest used and empty (with the chains before
// it in the batch, which have none of its frames yet), so that the ring
// goes on.
func (l *vhostLink) reserveDirect(rx *virtq, hdr, n int, iov []unix.Iovec) (head []byte, _ []unix.Iovec, ok bool) {
	d := &l.rx
	if d.nFrames == 0 {
		d.start = rx.lastAvail
	}
	if d.nFrames == len(d.frames) {
		return nil, iov, true
	}
	fr := rxFrame{first: d.nChains, hdrs: hdr}
	avail, pieces := rx.lastAvail, len(iov)
	undo := func(ok bool) ([]byte, []unix.Iovec, bool) {
		rx.lastAvail, d.nChains = avail, fr.first
		return nil, iov[:pieces], ok
	}
	need := l.hdrLen + n
	given := 0                           // broken chains given back, at most a ring's worth
	walked, from := rx.walked, rx.walked // where the call, and the frame's chains, started walking
	for need > 0 {
		h, more := rx.nextAvail()
		if !more {
			return undo(true)
		}
		if d.nChains == len(d.chains) {
			return undo(false)
		}
		c := rx.chain(&l.mem, h)
		size := 0
		var err error
		for need > 0 {
			var b []byte
			if b, err = c.buffer(true); err != nil || b == nil {
				break
			}
			b = b[:min(len(b), need)]
			switch {
			case head == nil:
				if len(b) < l.hdrLen+min(n, MinHead) {
					return undo(false)
				}
				fr.hdr, head = b[:l.hdrLen], b[l.hdrLen:]
				if len(head) > hdr {
					iov = append(iov, iovec(&head[hdr], len(head)-hdr))
				}
			case len(iov) == cap(iov):
				return undo(false)
			default:
				iov = append(iov, iovec(&b[0], len(b)))
			}
			size += len(b)
			need -= len(b)
		}
		if rx.walked-from > maxWalk {
			err = errBadChain
		}
		if err != nil || size == 0 {
			if d.nFrames > 0 {
				// The batch ends here, and the next one starts with
				// this frame.
				return undo(true)
			}
			rx.discard(d.start)
			l.dropped++
			given += int(rx.lastAvail - d.start)
			d.start, avail, d.nChains, from = rx.lastAvail, rx.lastAvail, 0, rx.walked
			if given >= int(rx.num) || rx.walked-walked > maxWalk {
				// A guest that offers broken chains as fast as they go
				// back would keep us here: no room, for now, and the
				// kick raised again for the rest (rxShort watches it),
				// at the engine's next turn.
				signalShared(rx.kick)
				return nil, iov[:pieces], true
			}
			fr, head, iov, need = rxFrame{hdrs: hdr}, nil, iov[:pieces], l.hdrLen+n
			continue
		}
		d.chains[d.nChains] = rxChain{head: h, size: uint32(size)}
		d.nChains++
		fr.n++
	}
	d.frames[d.nFrames] = fr
	d.nFrames++
	return head, iov, true
}

// Commit commits the oldest open reservation: in guest buffers, it puts
// the chains the frame fills on the used ring (the guest sees them at
// the next Flush).
func (l *vhostLink) Commit(size int) { l.CommitTSO(size, TSO{}) }

// GuestTSO tells whether the guest takes large TCP frames (GUEST_TSO4/6)
// of the family, built in its buffers.
func (l *vhostLink) GuestTSO(ipv6 bool) bool {
	bit := uint64(virtioNetFGuestTSO4)
	if ipv6 {
		bit = virtioNetFGuestTSO6
	}
	return l.features&bit != 0 && l.features&virtioNetFMrgRxbuf != 0 && !l.noTSO && l.vq[rxQueue].ready()
}

// GuestCsum tells whether the guest takes frames whose TCP checksum it
// completes (GUEST_CSUM), built in its buffers.
func (l *vhostLink) GuestCsum() bool {
	return l.features&virtioNetFGuestCsum != 0 && !l.noTSO && l.vq[rxQueue].ready()
}

// CommitTSO is Commit with the frame's partial checksum, and its
// segmentation, in its virtio-net header. Such a frame that went through
// the queue (a guest whose buffers are too small for headers) goes
// without, marked as checked: such a guest gets no more of them
// (GuestTSO, GuestCsum).
func (l *vhostLink) CommitTSO(size int, t TSO) {
	d := &l.rx
	if d.committed == d.nFrames {
		l.q.Commit(size)
		l.noTSO = l.noTSO || t.L4 > 0
		return
	}
	fr := &d.frames[d.committed]
	d.committed++
	rx := &l.vq[rxQueue]
	left, used := l.hdrLen+size, 0
	for left > 0 && used < fr.n {
		c := d.chains[fr.first+used]
		k := min(int(c.size), left)
		rx.putUsed(c.head, uint32(k))
		left -= k
		used++
	}
	d.chainsUsed = fr.first + used
	l.netHeader(fr.hdr, uint16(used))
	if t.L4 > 0 {
		h := fr.hdr
		h[0] = virtioNetHdrNeedsCsum
		binary.LittleEndian.PutUint16(h[6:], uint16(t.L4))
		binary.LittleEndian.PutUint16(h[8:], tcpChecksumOffset)
		if t.MSS > 0 {
			h[1] = virtioNetGSOTCPv4
			if t.IPv6 {
				h[1] = virtioNetGSOTCPv6
			}
			binary.LittleEndian.PutUint16(h[2:], uint16(fr.hdrs))
			binary.LittleEndian.PutUint16(h[4:], uint16(t.MSS))
		}
	}
	d.unpublished += size
}

// Cancel drops the open reservations; RX chains they took and did not
// fill go back to the guest's ring, unused.
func (l *vhostLink) Cancel() {
	l.q.Cancel()
	l.closeDirect()
}

func (l *vhostLink) closeDirect() {
	d := &l.rx
	if d.nFrames > 0 {
		l.vq[rxQueue].lastAvail = d.start + uint16(d.chainsUsed)
	}
	d.nFrames, d.nChains, d.committed, d.chainsUsed = 0, 0, 0, 0
}

// netHeader writes the virtio-net header of a frame to the guest that
// spans buffers RX chains.
func (l *vhostLink) netHeader(h []byte, buffers uint16) {
	clear(h)
	if l.features&virtioNetFGuestCsum != 0 {
		// Every checksum in our frames is complete: the guest need not
		// check them (no small saving for a guest under emulation).
		h[0] = virtioNetHdrDataValid
	}
	if len(h) == 12 {
		binary.LittleEndian.PutUint16(h[10:], buffers) // num_buffers
	}
}

// Flush copies queued frames into the guest's RX buffers, while it has
// buffers; the rest waits for its next RX kick.
func (l *vhostLink) Flush() error {
	if tx := &l.vq[txQueue]; tx.interruptOwed() {
		tx.publish()
	}
	rx := &l.vq[rxQueue]
	if !rx.ready() {
		return l.fault()
	}
	walked := rx.walked
	for {
		frame := l.q.front()
		if frame == nil {
			break
		}
		if rx.walked-walked >= maxWalk {
			// The rest at the engine's next turn: the kick it watches
			// now is raised again.
			l.rxShort()
			signalShared(rx.kick)
			break
		}
		ok, err := l.writeFrame(rx, frame)
		if !ok {
			l.rxShort()
			break
		}
		if err != nil {
			l.dropped++
		}
		l.q.pop()
	}
	rx.publish()
	l.rx.unpublished = 0
	return l.fault()
}

// writeFrame copies frame, after a virtio-net header, into as many RX
// chains as it needs (one without MRG_RXBUF). It reports false, taking
// nothing, when the guest has too few buffers; a chain that breaks the
// rules drops the frame (with an error) and goes back to the guest, as
// used and empty.
func (l *vhostLink) writeFrame(rx *virtq, frame []byte) (bool, error) {
	var hdr [12]byte
	l.netHeader(hdr[:l.hdrLen], 1)
	src := [2][]byte{hdr[:l.hdrLen], frame}
	mergeable := l.features&virtioNetFMrgRxbuf != 0
	start := [2]uint16{rx.lastAvail, rx.usedIdx}
	walked := rx.walked
	buffers := uint16(0)
	var firstBuf []byte
	for len(src[0])+len(src[1]) > 0 {
		if buffers > 0 && !mergeable {
			l.rewind(rx, start)
			return true, errBadChain // one chain must hold the whole frame
		}
		head, ok := rx.nextAvail()
		if !ok {
			l.rewind(rx, start)
			return false, nil
		}
		c := rx.chain(&l.mem, head)
		written := 0
		for len(src[0])+len(src[1]) > 0 {
			b, err := c.buffer(true)
			if err == nil && rx.walked-walked > maxWalk {
				err = errBadChain // chains too long to walk for one frame (maxWalk)
			}
			if err != nil {
				// The chains the frame took, the broken one last, go
				// back to the guest used and empty.
				rx.usedIdx = start[1]
				rx.discard(start[0])
				return true, err
			}
			if b == nil {
				break
			}
			if buffers == 0 && written == 0 {
				firstBuf = b
			}
			for len(b) > 0 && len(src[0])+len(src[1]) > 0 {
				s := &src[0]
				if len(*s) == 0 {
					s = &src[1]
				}
				k := copy(b, *s)
				*s, b = (*s)[k:], b[k:]
				written += k
			}
		}
		rx.putUsed(head, uint32(written))
		buffers++
	}
	if len(firstBuf) >= l.hdrLen {
		l.netHeader(firstBuf[:l.hdrLen], buffers)
	}
	return true, nil
}

// rewind gives back the chains taken since start (the available and used
// indexes then), unused: nothing was published.
func (l *vhostLink) rewind(rx *virtq, start [2]uint16) {
	rx.lastAvail, rx.usedIdx = start[0], start[1]
}

// Close gives the guest back the TX chains the link holds, unless its
// memory faults (a front-end that shrank it: GuestFault, recovered as the
// engine does), then lets go of everything.
func (l *vhostLink) Close() error {
	func() {
		defer func() {
			if r := recover(); r != nil && !GuestFault(r) {
				panic(r)
			}
		}()
		l.releaseTx()
	}()
	for i := range l.vq {
		l.resetQueue(i)
	}
	l.mem.unmap()
	l.unmapLog()
	closeFds(append(l.fds, l.log.call))
	return unix.Close(l.fd)
}

func (l *vhostLink) resetQueue(i int) {
	q := &l.vq[i]
	l.closeKick(q)
	if q.call >= 0 {
		unix.Close(q.call)
	}
	l.vq[i] = newVirtq()
}

// closeKick stops watching a ring's kick and closes it. It leaves the
// epoll set first: the front-end holds the same file, so closing ours
// alone would leave it watched, and reported, for good.
func (l *vhostLink) closeKick(q *virtq) {
	if q.kick >= 0 {
		l.poller.Del(q.kick)
		unix.Close(q.kick)
		q.kick = -1
	}
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// requests receives what the socket holds and handles each whole request.
// It never reads past the request at hand, so the descriptors that come
// with a request (passed with its first bytes) are that request's.
func (l *vhostLink) requests() error {
	l.settle()
	oob := make([]byte, unix.CmsgSpace(4*vuMaxFds))
	for {
		want := vuHeaderLen
		if l.have >= vuHeaderLen {
			size := binary.LittleEndian.Uint32(l.in[8:]) // checked before it is an int
			if size > vuMaxPayload {
				return fmt.Errorf("%w: request of %d bytes", ErrVhostUser, size)
			}
			want += int(size)
		}
		if l.have == want {
			err := l.request(l.in[:want])
			closeFds(l.fds) // what the request did not take
			l.fds, l.have = l.fds[:0], 0
			if err != nil {
				return err
			}
			continue
		}
		n, oobn, _, _, err := unix.Recvmsg(l.fd, l.in[l.have:want], oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrHangUp
		}
		// A request carries at most vuMaxFds descriptors; more, sent
		// with its later pieces, are closed at once, or a request sent
		// a byte at a time could take every descriptor we may open.
		if cms, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(cms) > 0 {
			for i := range cms {
				fds, _ := unix.ParseUnixRights(&cms[i])
				for _, fd := range fds {
					if len(l.fds) < vuMaxFds {
						l.fds = append(l.fds, fd)
					} else {
						unix.Close(fd)
					}
				}
			}
		}
		l.have += n
	}
}

// settle gives the guest what is its before a request may stop a ring,
// move it, or unmap the memory under it: the chains of the last Read,
// the RX chains reserved and not filled, and the RX buffers filled and
// not yet published.
func (l *vhostLink) settle() {
	l.releaseTx()
	l.closeDirect()
	if rx := &l.vq[rxQueue]; rx.started && rx.used != nil {
		rx.publish()
	}
	l.rx.unpublished = 0
}

// takeFd hands over the first descriptor that came with the request.
func (l *vhostLink) takeFd() int {
	if len(l.fds) == 0 {
		return -1
	}
	fd := l.fds[0]
	l.fds = l.fds[1:]
	return fd
}

// request handles one request (header and payload).
func (l *vhostLink) request(m []byte) error {
	req := binary.LittleEndian.Uint32(m)
	flags := binary.LittleEndian.Uint32(m[4:])
	p := m[vuHeaderLen:]
	u64 := func() uint64 {
		if len(p) < 8 {
			return 0
		}
		return binary.LittleEndian.Uint64(p)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: request %d: %s", ErrVhostUser, req, fmt.Sprintf(format, args...))
	}
	// The ring a request names, checked.
	ring := func() (*virtq, int, error) {
		if len(p) < 4 {
			return nil, 0, bad("short payload")
		}
		i := int(binary.LittleEndian.Uint32(p) & 0xff)
		if i >= len(l.vq) {
			return nil, 0, bad("no queue %d (one queue pair)", i)
		}
		return &l.vq[i], i, nil
	}
	var err error
	replied := false
	switch req {
	case vuGetFeatures:
		replied, err = true, l.reply(req, VhostUserFeatures)
	case vuSetFeatures:
		f := u64()
		if f&^VhostUserFeatures != 0 {
			return bad("features %#x beyond those offered", f)
		}
		l.features, l.noTSO = f, false
		l.updateLog()
		l.hdrLen = 10
		if f&(virtioFVersion1|virtioNetFMrgRxbuf) != 0 {
			l.hdrLen = 12
		}
	case vuGetProtocolFeatures:
		replied, err = true, l.reply(req, vuProtocolFeatures)
	case vuSetProtocolFeatures:
		l.protocol = u64() & vuProtocolFeatures
	case vuGetQueueNum:
		replied, err = true, l.reply(req, 1)
	case vuSetOwner:
	case vuResetOwner:
		for i := range l.vq {
			l.resetQueue(i)
		}
		// The features stand until the next SET_FEATURES, LOG_ALL with
		// them: rings set up again must log what they write.
		l.updateLog()
	case vuSetMemTable:
		err = l.setMemTable(p)
	case vuSetVringNum:
		q, _, e := ring()
		if e != nil {
			return e
		}
		num := uint32(0)
		if len(p) >= 8 {
			num = binary.LittleEndian.Uint32(p[4:])
		}
		if num == 0 || num > maxQueueSize || num&(num-1) != 0 {
			return bad("queue size %d is not a power of two up to %d", num, maxQueueSize)
		}
		q.num = uint16(num)
		err = q.mapRings(&l.mem)
	case vuSetVringAddr:
		q, _, e := ring()
		if e != nil {
			return e
		}
		if len(p) < 40 {
			return bad("short payload")
		}
		q.descUVA = binary.LittleEndian.Uint64(p[8:])
		q.usedUVA = binary.LittleEndian.Uint64(p[16:])
		q.availUVA = binary.LittleEndian.Uint64(p[24:])
		q.logUsed = binary.LittleEndian.Uint32(p[4:])&vhostVringFLog != 0
		q.usedGPA = binary.LittleEndian.Uint64(p[32:])
		if err = q.mapRings(&l.mem); err == nil && q.used != nil {
			q.usedIdx = binary.LittleEndian.Uint16(q.used[2:])
			q.published = q.usedIdx
		}
	case vuSetVringBase:
		q, _, e := ring()
		if e != nil {
			return e
		}
		if len(p) >= 8 {
			q.lastAvail = uint16(binary.LittleEndian.Uint32(p[4:]))
		}
	case vuGetVringBase:
		q, i, e := ring()
		if e != nil {
			return e
		}
		base := q.lastAvail
		l.stopQueue(i)
		var b [8]byte
		binary.LittleEndian.PutUint32(b[:], uint32(i))
		binary.LittleEndian.PutUint32(b[4:], uint32(base))
		replied, err = true, l.send(req, b[:])
	case vuSetVringKick, vuSetVringCall, vuSetVringErr:
		q, i, e := ring()
		if e != nil {
			return e
		}
		fd := -1
		if u64()&0x100 == 0 { // bit 8: no descriptor (polling, not offered)
			if fd = l.takeFd(); fd < 0 {
				return bad("no descriptor")
			}
		} else if req == vuSetVringKick {
			return bad("polling mode is not supported")
		}
		switch req {
		case vuSetVringKick:
			unix.SetNonblock(fd, true)
			if err = probeKick(fd); err != nil {
				unix.Close(fd)
				break
			}
			l.stopQueue(i)
			q.kick, q.started = fd, true
			if l.features&vhostUserFProtocolFeatures == 0 {
				q.enabled = true
			}
			err = l.poller.Add(fd, unix.EPOLLIN, vuIDKick+uint32(i))
			if i == rxQueue {
				l.rxKick.watched = err == nil
			}
		case vuSetVringCall:
			if q.call >= 0 {
				unix.Close(q.call)
			}
			q.call = fd
			if fd >= 0 {
				// An interrupt never waits: a call that cannot take
				// one breaks the ring (publish).
				err = unix.SetNonblock(fd, true)
				// One may have gone to the old descriptor after the
				// front-end last looked at it: the new one gets one,
				// as passt and libvhost-user give it.
				q.owed, q.owedAt = true, 0
			}
		default:
			if fd >= 0 {
				unix.Close(fd) // errors on the ring are never reported
			}
		}
	case vuSetVringEnable:
		q, _, e := ring()
		if e != nil {
			return e
		}
		q.enabled = len(p) >= 8 && binary.LittleEndian.Uint32(p[4:]) != 0
	case vuSetLogBase:
		// Answered whether or not asked: the front-end waits for it.
		if err = l.setLogBase(p); err == nil {
			replied, err = true, l.reply(req, 0)
		}
	case vuSetLogFd:
		err = l.setLogFd()
	case vuSetDeviceStateFd:
		replied, err = true, l.setDeviceStateFd(req, p)
	case vuCheckDeviceState:
		replied, err = true, l.checkDeviceState(req)
	default:
		return fmt.Errorf("%w: unsupported request %d", ErrVhostUser, req)
	}
	if err == nil && !replied && flags&vuNeedReply != 0 && l.protocol&vuProtocolReplyAck != 0 {
		err = l.reply(req, 0)
	}
	if err != nil {
		return fmt.Errorf("%w: request %d: %v", ErrVhostUser, req, err)
	}
	return nil
}

// stopQueue stops a ring: no more kicks are watched until the next
// SET_VRING_KICK.
func (l *vhostLink) stopQueue(i int) {
	q := &l.vq[i]
	l.closeKick(q)
	q.started = false
}

// maxMapped bounds what one memory table maps: its regions and, mapped
// with them, the file offsets before them. Go cannot do without address
// space: a front-end that had nearly all of it mapped (eight regions
// of up to 2^47 bytes each with its offset, where a process has 2^47
// with 4-level page tables) left the runtime none to grow its heap in,
// and the process died (fatal error: out of memory), which no recover
// catches. A table that replaces another is mapped before the old one
// goes: the two then take at most half the space. 32 TiB is as much
// memory as the largest machines have; where pointers are 32 bits wide
// it is 1 GiB, and a larger guest is refused rather than the process
// left to die.
const maxMapped = 1 << (addressBits - 2)

// addressBits is how wide a process's address space is: 2^47 bytes with
// 4-level page tables, 2^32 at most where pointers are 32 bits wide.
const addressBits = 32 + 15*(bits.UintSize/64)

// setMemTable maps the regions the front-end shares, replacing the old.
func (l *vhostLink) setMemTable(p []byte) error {
	if len(p) < 8 {
		return errors.New("short memory table")
	}
	count := binary.LittleEndian.Uint32(p) // checked before it is an int
	if count == 0 || count > vuMaxRegions {
		return fmt.Errorf("memory table of %d regions", count)
	}
	n := int(count)
	if len(p) < 8+32*n || len(l.fds) < n {
		return fmt.Errorf("memory table of %d regions with %d descriptors", n, len(l.fds))
	}
	var mem guestMemory
	mapped := uint64(0)
	for i := range n {
		r := p[8+32*i:]
		gpa, size := binary.LittleEndian.Uint64(r), binary.LittleEndian.Uint64(r[8:])
		uva, off := binary.LittleEndian.Uint64(r[16:]), binary.LittleEndian.Uint64(r[24:])
		fd := l.takeFd()
		// Past the end of its file, a mapping faults (SIGBUS) when
		// touched: the region must lie within the file. Its length, an
		// int, is within maxMapped, which an int holds where it is 32
		// bits wide too.
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || size == 0 || size > 1<<46 || off > 1<<46 || off+size > uint64(st.Size) {
			unix.Close(fd)
			mem.unmap()
			return fmt.Errorf("region %d: size %#x at offset %#x of a %d-byte file", i, size, off, st.Size)
		}
		if mapped += size + off; mapped > maxMapped {
			unix.Close(fd)
			mem.unmap()
			return fmt.Errorf("regions of %#x bytes in all with their offsets, over %#x", mapped, uint64(maxMapped))
		}
		m, err := unix.Mmap(fd, 0, int(size+off), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		unix.Close(fd)
		if err != nil {
			mem.unmap()
			return fmt.Errorf("region %d: mmap: %v", i, err)
		}
		mappings.add(m)
		mem.regions = append(mem.regions, memRegion{gpa: gpa, uva: uva, mem: m[off:], mapping: m})
	}
	old := l.mem
	l.mem = mem
	var err error
	for i := range l.vq {
		if e := l.vq[i].mapRings(&l.mem); e != nil {
			err = e
		}
	}
	old.unmap()
	return err
}

// reply sends a 64-bit answer.
func (l *vhostLink) reply(req uint32, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return l.send(req, b[:])
}

func (l *vhostLink) send(req uint32, payload []byte) error {
	var m [vuHeaderLen + 8]byte
	binary.LittleEndian.PutUint32(m[0:], req)
	binary.LittleEndian.PutUint32(m[4:], vuVersion|vuReply)
	binary.LittleEndian.PutUint32(m[8:], uint32(len(payload)))
	n := vuHeaderLen + copy(m[vuHeaderLen:], payload)
	_, err := unix.Write(l.fd, m[:n])
	return err
}
