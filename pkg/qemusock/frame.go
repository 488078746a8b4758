// Package qemusock carries Ethernet frames between gopasst's engine and a
// guest: the framings of a byte stream (QEMU's "stream" netdev, which
// passt also speaks, and gvisor-tap-vsock's) and the transports that use
// them, behind one Link interface.
//
// Nothing here copies a frame more than once: a Reader hands out slices
// of its buffer, and a Queue lets the engine build frames in place.
package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Framing is how a byte stream delimits frames: each one is preceded by
// its length, LenSize bytes in Order.
type Framing struct {
	LenSize int
	Order   binary.ByteOrder
	Max     int // the largest frame the length can describe, and we accept
}

// MaxFrame is the largest frame accepted or sent: an Ethernet header plus a
// 64 KiB packet, which covers passt's default MTU of 65520.
const MaxFrame = 65536 + 14

// QEMU is the framing of QEMU's stream netdev and of passt: a 4-byte
// big-endian length.
var QEMU = Framing{LenSize: 4, Order: binary.BigEndian, Max: MaxFrame}

// Gvproxy is the framing of gvisor-tap-vsock's forwarder protocol: a
// 2-byte little-endian length, so no frame is over 65535 bytes.
var Gvproxy = Framing{LenSize: 2, Order: binary.LittleEndian, Max: 0xffff}

// maxPrefix is the longest length prefix of any framing.
const maxPrefix = 4

// ErrFrameLength is returned for a zero or oversize length prefix. The stream
// cannot be resynchronised after it, so the caller drops the client.
var ErrFrameLength = errors.New("qemusock: bad frame length")

func (f Framing) put(b []byte, n int) {
	if f.LenSize == 2 {
		f.Order.PutUint16(b, uint16(n))
	} else {
		f.Order.PutUint32(b, uint32(n))
	}
}

func (f Framing) get(b []byte) int {
	if f.LenSize == 2 {
		return int(f.Order.Uint16(b))
	}
	return int(f.Order.Uint32(b))
}

// Reader reassembles frames from a byte stream.
type Reader struct {
	framing    Framing
	buf        []byte
	start, end int
}

// NewReader returns a Reader of frames delimited by f, with a buffer of
// size bytes (at least two maximum-size frames, so one read can always
// make progress).
func NewReader(f Framing, size int) *Reader {
	return &Reader{framing: f, buf: make([]byte, max(size, 2*(MaxFrame+maxPrefix)))}
}

// Fill reads once from fd. It returns the number of bytes read; 0 with a nil
// error means end of stream. unix.EAGAIN is returned as is.
func (r *Reader) Fill(fd int) (int, error) {
	r.makeRoom()
	n, err := read(fd, r.buf[r.end:])
	r.end += n
	return n, err
}

// Buffered returns the bytes read but not yet taken by Next, for a
// transport that looks at the start of a stream before framing it.
func (r *Reader) Buffered() []byte { return r.buf[r.start:r.end] }

// Skip drops n buffered bytes.
func (r *Reader) Skip(n int) { r.start += n }

// makeRoom moves buffered bytes to the front when a maximum-size frame
// with its prefix would not fit after them.
func (r *Reader) makeRoom() {
	if r.start == r.end {
		r.start, r.end = 0, 0
	} else if len(r.buf)-r.end < MaxFrame+maxPrefix {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
}

// read and write are read(2) and write(2) on the non-blocking
// descriptor of a link, retried on EINTR, with n = 0 on error. They are
// raw system calls: one that cannot wait needs none of the scheduler's
// bookkeeping, which costs more than the call on a busy link.
func read(fd int, p []byte) (int, error)  { return rawIO(unix.SYS_READ, fd, p) }
func write(fd int, p []byte) (int, error) { return rawIO(unix.SYS_WRITE, fd, p) }

func rawIO(trap uintptr, fd int, p []byte) (int, error) {
	var base unsafe.Pointer
	if len(p) > 0 {
		base = unsafe.Pointer(&p[0])
	}
	for {
		n, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(base), uintptr(len(p)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// Next returns the next complete frame, or nil when more bytes are needed.
// The slice is valid until the next call to Fill.
func (r *Reader) Next() ([]byte, error) {
	avail := r.buf[r.start:r.end]
	p := r.framing.LenSize
	if len(avail) < p {
		return nil, nil
	}
	n := r.framing.get(avail)
	if n == 0 || n > r.framing.Max || n > MaxFrame {
		return nil, fmt.Errorf("%w: %d", ErrFrameLength, n)
	}
	if len(avail) < p+n {
		return nil, nil
	}
	r.start += p + n
	return avail[p : p+n], nil
}

// Queue holds frames on their way to the guest, each preceded by its
// length prefix, which the queue writes: the engine builds frames in
// place from the Ethernet header on. Reservations are handed out one
// frame at a time and may stay open together (a TCP peek fills several
// frames with one call); Commit closes them in order, and a frame
// committed short of its reservation must be the last before Cancel.
type Queue struct {
	framing    Framing
	buf        []byte
	head, tail int    // committed frames are buf[head:tail]
	open       int    // end of the open reservations
	refused    uint64 // frames a packet device refused (writePackets)
}

// NewQueue returns a Queue of frames delimited by f, of size bytes.
func NewQueue(f Framing, size int) *Queue {
	return &Queue{framing: f, buf: make([]byte, max(size, 2*(MaxFrame+maxPrefix)))}
}

// Reserve returns room for one frame of up to n bytes after the open
// reservations, or nil when the queue is too full.
func (q *Queue) Reserve(n int) []byte {
	p := q.framing.LenSize
	if len(q.buf)-q.open < p+n {
		q.compact()
	}
	if len(q.buf)-q.open < p+n {
		return nil
	}
	b := q.buf[q.open+p : q.open+p+n]
	q.open += p + n
	return b
}

// Commit queues the oldest open reservation as a frame of size bytes. A
// frame committed short of its reservation must be the last committed
// before Cancel drops the reservations after it.
func (q *Queue) Commit(size int) {
	if q.tail+q.framing.LenSize+size > q.open {
		panic("qemusock: commit beyond the open reservations")
	}
	q.framing.put(q.buf[q.tail:], size)
	q.tail += q.framing.LenSize + size
}

// Cancel drops the open reservations.
func (q *Queue) Cancel() { q.open = q.tail }

// reserved tells whether reservations are open.
func (q *Queue) reserved() bool { return q.open > q.tail }

// Pending is the number of queued bytes.
func (q *Queue) Pending() int { return q.tail - q.head }

// compact moves the queued frames to the front of the buffer, when no
// reservation is open.
func (q *Queue) compact() {
	if q.open == q.tail && q.head > 0 {
		q.tail = copy(q.buf, q.buf[q.head:q.tail])
		q.head, q.open = 0, q.tail
	}
}

// Reset discards queued frames and reservations.
func (q *Queue) Reset() { q.head, q.tail, q.open = 0, 0, 0 }

// writeStream writes queued bytes, prefixes included, until done or the
// stream would block (unix.EAGAIN, the rest still queued).
func (q *Queue) writeStream(fd int) error {
	for q.head < q.tail {
		n, err := write(fd, q.buf[q.head:q.tail])
		if err != nil {
			return err
		}
		q.head += n
	}
	q.drained()
	return nil
}

// writePackets writes queued frames to a packet device (a tap), one
// write each and without their prefixes, until done or the device would
// block (unix.EAGAIN, the rest still queued). A frame the device refuses
// is dropped, as a NIC drops what it cannot send.
func (q *Queue) writePackets(fd int) error {
	for frame := q.front(); frame != nil; frame = q.front() {
		if _, err := write(fd, frame); err == unix.EAGAIN {
			return err
		} else if err != nil {
			q.refused++
		}
		q.pop()
	}
	return nil
}

// front is the oldest queued frame, without its prefix, or nil.
func (q *Queue) front() []byte {
	if q.head == q.tail {
		return nil
	}
	p := q.framing.LenSize
	n := q.framing.get(q.buf[q.head:])
	return q.buf[q.head+p : q.head+p+n]
}

// pop drops the oldest queued frame.
func (q *Queue) pop() {
	q.head += q.framing.LenSize + q.framing.get(q.buf[q.head:])
	if q.head == q.tail {
		q.drained()
	}
}

// drained rewinds an empty queue, unless reservations are open.
func (q *Queue) drained() {
	if q.open == q.tail {
		q.head, q.tail, q.open = 0, 0, 0
	}
}
