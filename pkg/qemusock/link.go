package qemusock

import (
	"bytes"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Link is the guest's end of the engine: one transport that carries
// Ethernet frames both ways. The engine reads frames and builds frames
// from the Ethernet header on; whatever goes before a frame on the wire
// (a length prefix, a virtio-net header) and how the transport is polled
// are the link's, so the protocol code never knows which one it talks to.
type Link interface {
	// Register adds the link's descriptors to the engine's poller.
	Register(p Poller) error
	// Event tells what the events the poller reported for the link's
	// descriptor id allow: in, frames to read; out, room to send. An
	// error means the guest is gone.
	Event(id uint32, events uint32) (in, out bool, err error)
	// Read takes in what arrived, once. It returns unix.EAGAIN when
	// nothing did, and 0 with a nil error at the end of the stream.
	Read() (int, error)
	// Next returns the next frame read, or nil when there is none; the
	// slice is valid until the next Read. An error means the guest broke
	// the framing, and the link cannot go on.
	Next() ([]byte, error)
	// Tail is the rest of the frame Next last returned, when the link
	// left it where it lay (vhost-user leaves all but a frame's first
	// HeadCopy bytes in guest memory): the frame is what Next returned
	// followed by these pieces. They are valid until the next Read or
	// Event, and the guest may change them meanwhile, so they are data
	// to pass on, never to parse.
	Tail() []unix.Iovec

	// Reserve returns room for one frame of up to n bytes, after any
	// reservations still open, or nil when there is none now.
	Reserve(n int) []byte
	// ReserveV is Reserve for a frame of n bytes whose headers (the
	// first hdr bytes) the engine writes and whose payload a scattered
	// read fills, as a TCP peek does: vhost-user takes the guest's own
	// buffers for it, so the data is copied once. head is the frame's
	// contiguous start, at least min(n, MinHead) bytes; the pieces that
	// cover the frame from hdr to n are appended to iov, which must have
	// room for one at least. head is nil, and iov as it was, when there
	// is no room now. ReserveV and Reserve are not mixed in one batch.
	ReserveV(hdr, n int, iov []unix.Iovec) (head []byte, _ []unix.Iovec)
	// Commit queues the oldest open reservation as a frame of size bytes.
	// A frame committed short of its reservation must be the last one
	// committed before Cancel drops the reservations after it.
	Commit(size int)
	// GuestTSO tells whether the guest takes TCP frames larger than its
	// MSS, of IPv6 or IPv4, and cuts them into segments itself (large
	// receive: vhost-user's GUEST_TSO4/6).
	GuestTSO(ipv6 bool) bool
	// GuestCsum tells whether the guest completes TCP checksums itself
	// (vhost-user's GUEST_CSUM), a frame of one segment's too.
	GuestCsum() bool
	// CommitTSO is Commit for a frame (a ReserveV reservation) whose TCP
	// checksum holds the pseudo-header's sum alone, as large frames'
	// always do: the guest completes it, or takes the data as checked.
	CommitTSO(size int, t TSO)
	// Cancel drops the open reservations.
	Cancel()
	// Flush sends queued frames. What cannot go yet stays queued
	// (Pending), and the link watches for room, which Event reports.
	Flush() error
	// Pending is how many bytes wait to be sent.
	Pending() int
	// MaxFrame is the largest frame the guest's end can take.
	MaxFrame() int
	// Dropped counts frames the transport itself dropped: ones the
	// guest's end refused, or vhost-user descriptor chains that broke
	// the rules.
	Dropped() uint64

	Close() error
}

// TSO describes a TCP frame to the guest whose checksum the guest
// completes (Link.CommitTSO); the zero TSO, one with a complete checksum.
type TSO struct {
	IPv6 bool
	L4   int // where the TCP header starts
	MSS  int // the guest's segment size; 0 for a frame of one segment
}

// Poller is the engine's event loop, as a link sees it: it watches a
// descriptor for events and reports them back with the id given.
type Poller interface {
	Add(fd int, events uint32, id uint32) error
	Mod(fd int, events uint32, id uint32) error
	// Del stops watching fd. Closing fd is not enough when another
	// process holds the same file (a vhost-user front-end its kicks).
	Del(fd int) error
}

// ErrHangUp reports a guest that closed its end.
var ErrHangUp = errors.New("hang-up")

// NewStream is a link over a connected stream socket (unix or vsock),
// with frames delimited by f, which it writes to the socket.
func NewStream(fd int, f Framing) Link { return newStream(fd, f, false, streamQueue) }

// NewLendingStream is NewStream that lends its frames' pages to a unix
// socket rather than copying them (zeroCopy), for a client that reads
// the socket itself, as QEMU does: a relay that splice(2)s what it reads
// on keeps the pages after the socket lets them go, and would pass on
// frames written there since.
func NewLendingStream(fd int, f Framing) Link { return newStream(fd, f, true, streamQueue) }

// streamQueue is what a stream link's queue holds; its reader holds half.
const streamQueue = 8 << 20

func newStream(fd int, f Framing, lend bool, queue int) Link {
	var q *Queue
	if lend {
		q = newZeroCopyQueue(f, queue, fd)
	}
	if q == nil {
		q = NewQueue(f, queue)
	}
	return &fdLink{fd: fd, rd: NewReader(f, queue/2), q: q, maxFrame: MaxFrame}
}

// NewDetectStream is a stream link whose framing the client's first bytes
// tell: gvisor-tap-vsock's forwarder (gvforwarder) starts with an HTTP
// "POST /connect" request and then uses the Gvproxy framing; anything
// else is QEMU's, whose first byte, the top of a frame length, is 0. No
// frame goes to the guest before the client has spoken.
func NewDetectStream(fd int) Link { return detectStream(NewStream(fd, QEMU)) }

// NewDetectLendingStream is NewDetectStream with NewLendingStream's queue.
func NewDetectLendingStream(fd int) Link { return detectStream(NewLendingStream(fd, QEMU)) }

func detectStream(l Link) Link {
	l.(*fdLink).detect = true
	return l
}

// GvforwarderMTU is the MTU a gvforwarder client is given: its receive
// buffer holds a frame of its -mtu (4000 by default) and no more.
const GvforwarderMTU = 4000

// connectRequest is what gvforwarder sends before its first frame (its
// -url path, /connect by default); nothing is sent back.
const connectRequest = "POST /connect HTTP/1."

// maxRequest bounds the HTTP request a client may send before framing.
const maxRequest = 4096

// ErrBadRequest reports a client that began like gvforwarder but did not
// send its request.
var ErrBadRequest = errors.New("not a gvforwarder connect request")

// NewTap is a link over a tap device (opened with IFF_NO_PI), which reads
// and writes one whole frame per call.
func NewTap(fd int) Link {
	// The buffers keep QEMU's prefix on each frame internally, as the
	// boundary between frames; it never reaches the device.
	return &fdLink{fd: fd, rd: NewReader(QEMU, 4<<20), q: NewQueue(QEMU, 8<<20), tap: true, maxFrame: MaxFrame}
}

// fdLink is a link over one non-blocking descriptor: a stream socket or
// a tap.
type fdLink struct {
	fd       int
	rd       *Reader
	q        *Queue
	tap      bool
	detect   bool // the framing is not known yet (NewDetectStream)
	maxFrame int
	poller   Poller
	blocked  bool // EPOLLOUT is armed: the descriptor was full
	drained  bool // the last read found nothing more
}

const linkEvents = unix.EPOLLIN | unix.EPOLLRDHUP

func (l *fdLink) Register(p Poller) error {
	l.poller = p
	return p.Add(l.fd, linkEvents, 0)
}

func (l *fdLink) Event(_ uint32, events uint32) (in, out bool, err error) {
	if events&unix.EPOLLIN == 0 && events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
		return false, false, ErrHangUp
	}
	return events&unix.EPOLLIN != 0, events&unix.EPOLLOUT != 0, nil
}

func (l *fdLink) Read() (int, error) {
	if l.drained {
		// The last Read emptied the descriptor. Epoll, level-triggered,
		// reports it again once more comes.
		l.drained = false
		return 0, unix.EAGAIN
	}
	if !l.tap {
		// A read that left room in the buffer took all the socket had:
		// the engine's next Read would only be told EAGAIN, a system
		// call a wake-up in light traffic.
		n, err := l.rd.Fill(l.fd)
		l.drained = n > 0 && l.rd.end < len(l.rd.buf)
		return n, err
	}
	// A tap hands over one frame per read(2). Read until it has no more,
	// as pasta does, so that the frames of one wake-up are one batch: a
	// flow's segments go to its socket in one writev, and the guest gets
	// one ACK for them, not one per frame. Each frame is stored behind a
	// prefix, so that Next serves both kinds of link.
	r := l.rd
	r.makeRoom()
	p := r.framing.LenSize
	total := 0
	for range tapBatch {
		if len(r.buf)-r.end < p+MaxFrame {
			break // Next takes these first
		}
		n, err := read(l.fd, r.buf[r.end+p:r.end+p+MaxFrame])
		if n <= 0 {
			if total == 0 {
				return n, err
			}
			// The frames go first; an error other than EAGAIN comes
			// again at the next read.
			l.drained = err == unix.EAGAIN
			break
		}
		r.framing.put(r.buf[r.end:], n)
		r.end += p + n
		total += n
	}
	return total, nil
}

// tapBatch bounds the frames one Read takes from a tap, so that a busy
// guest leaves host sockets their turn.
const tapBatch = 64

func (l *fdLink) Next() ([]byte, error) {
	if l.detect {
		if done, err := l.detectFraming(); !done || err != nil {
			return nil, err
		}
	}
	return l.rd.Next()
}

// detectFraming looks at what the client sent first and settles the
// framing both ways; done is false while that needs more bytes.
func (l *fdLink) detectFraming() (done bool, err error) {
	b := l.rd.Buffered()
	switch {
	case len(b) == 0:
		return false, nil
	case b[0] != connectRequest[0]:
		l.detect = false // QEMU's framing, as set up
		return true, nil
	}
	if n := min(len(b), len(connectRequest)); string(b[:n]) != connectRequest[:n] {
		return false, fmt.Errorf("%w: %q", ErrBadRequest, b[:n])
	}
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) >= maxRequest {
			return false, fmt.Errorf("%w: no end in %d bytes", ErrBadRequest, maxRequest)
		}
		return false, nil
	}
	l.rd.Skip(end + 4)
	l.rd.framing = Gvproxy
	l.q.framing = Gvproxy // nothing is queued before the framing is known
	l.maxFrame = GvforwarderMTU + 14
	l.detect = false
	return true, nil
}

// Until the framing is known there is no room for frames to the guest.

func (l *fdLink) Reserve(n int) []byte {
	if l.detect {
		return nil
	}
	return l.q.Reserve(n)
}

func (l *fdLink) ReserveV(hdr, n int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	return splitV(l.Reserve(n), hdr, iov)
}

// MinHead is the least of a frame that ReserveV keeps contiguous: room
// for the largest headers the engine writes (Ethernet, IPv6, TCP) and
// for padding to Ethernet's minimum.
const MinHead = 128

// splitV serves ReserveV from one contiguous reservation b.
func splitV(b []byte, hdr int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	if b == nil {
		return nil, iov
	}
	if len(b) > hdr {
		iov = append(iov, iovec(&b[hdr], len(b)-hdr))
	}
	return b, iov
}

func (l *fdLink) Tail() []unix.Iovec { return nil }
func (l *fdLink) Commit(size int)    { l.q.Commit(size) }

// A stream or a tap carries no segmentation offload: frames to the guest
// are of its MTU.
func (l *fdLink) GuestTSO(bool) bool        { return false }
func (l *fdLink) GuestCsum() bool           { return false }
func (l *fdLink) CommitTSO(size int, _ TSO) { l.q.Commit(size) }
func (l *fdLink) Cancel()                   { l.q.Cancel() }
func (l *fdLink) Pending() int              { return l.q.Pending() }
func (l *fdLink) MaxFrame() int             { return l.maxFrame }
func (l *fdLink) Dropped() uint64           { return l.q.refused }

func (l *fdLink) Flush() error {
	var err error
	if l.tap {
		err = l.q.writePackets(l.fd)
	} else {
		err = l.q.writeStream(l.fd)
	}
	switch {
	case err == unix.EAGAIN:
		if !l.blocked {
			l.blocked = true
			return l.poller.Mod(l.fd, linkEvents|unix.EPOLLOUT, 0)
		}
		return nil
	case err != nil:
		return err
	case l.blocked:
		l.blocked = false
		return l.poller.Mod(l.fd, linkEvents, 0)
	}
	return nil
}

func (l *fdLink) Close() error {
	if l.q.zc != nil {
		l.q.zc.close(l.q)
	}
	return unix.Close(l.fd)
}
