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

// get reads a length prefix. It stays unsigned, for a peer's length
// past 2^31 would be negative as an int where int is 32 bits wide.
func (f Framing) get(b []byte) uint32 {
	if f.LenSize == 2 {
		return uint32(f.Order.Uint16(b))
	}
	return f.Order.Uint32(b)
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
	return rawCall(trap, uintptr(fd), uintptr(base), uintptr(len(p)), 0, 0, 0)
}

// A vhost-user front-end's descriptors (kicks, calls, the device state's
// pipe) are files it shares with us: the O_NONBLOCK we set on one is the
// front-end's to clear again, and a read of an empty one, or a write to a
// full one, then waits, and the engine with it, for as long as the
// front-end likes. sharedRead and sharedWrite ask the kernel not to wait
// (RWF_NOWAIT), whatever the file says; for a file that takes no such
// request (an eventfd's write; any file before Linux 4.14), sharedWrite
// refuses one whose O_NONBLOCK was cleared (nonBlocking). Only a
// front-end that clears it between that check and the write, in a race
// it would have to win, holds the engine then.
func sharedRead(fd int, p []byte) (int, error) {
	return sharedIO(unix.SYS_PREADV2, unix.SYS_READ, fd, p)
}

func sharedWrite(fd int, p []byte) (int, error) {
	return sharedIO(unix.SYS_PWRITEV2, unix.SYS_WRITE, fd, p)
}

// signalShared adds one to an eventfd the front-end shares: a kick raised
// again, or a call. Its write never takes RWF_NOWAIT.
func signalShared(fd int) error {
	if err := nonBlocking(fd); err != nil {
		return err
	}
	_, err := write(fd, eventfdOne[:])
	return err
}

// iovec is the piece of n bytes at p. Its length is set through SetLen
// because the field is 32 bits wide on 32-bit machines.
func iovec(p *byte, n int) unix.Iovec {
	v := unix.Iovec{Base: p}
	v.SetLen(n)
	return v
}

func sharedIO(trapV, trap uintptr, fd int, p []byte) (int, error) {
	iov := iovec(unsafe.SliceData(p), len(p))
	// At the file's own position (-1), as read(2) and write(2).
	n, err := rawCall(trapV, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1, ^uintptr(0), ^uintptr(0), unix.RWF_NOWAIT)
	if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
		return n, err
	}
	if err := nonBlocking(fd); err != nil {
		return 0, err
	}
	return rawIO(trap, fd, p)
}

// errMadeBlocking is a shared descriptor's whose O_NONBLOCK the front-end
// cleared.
var errMadeBlocking = errors.New("the front-end made it blocking")

// nonBlocking refuses a shared descriptor whose O_NONBLOCK was cleared.
func nonBlocking(fd int) error {
	fl, err := rawCall(unix.SYS_FCNTL, uintptr(fd), unix.F_GETFL, 0, 0, 0, 0)
	switch {
	case err != nil:
		return err
	case fl&unix.O_NONBLOCK == 0:
		return errMadeBlocking
	}
	return nil
}

// rawCall is a raw system call that cannot wait, retried on EINTR, with
// n = 0 on error.
func rawCall(trap, a1, a2, a3, a4, a5, a6 uintptr) (int, error) {
	for {
		n, _, errno := unix.RawSyscall6(trap, a1, a2, a3, a4, a5, a6)
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
	v := r.framing.get(avail)
	if v == 0 || v > uint32(r.framing.Max) || v > MaxFrame {
		return nil, fmt.Errorf("%w: %d", ErrFrameLength, v)
	}
	n := int(v)
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
//
// The buffer is a ring, so that nothing queued is ever moved: a frame
// that would not fit before the buffer's end starts over at its
// beginning, and the end left over is a gap that is never sent. Offsets
// only grow, but for rebase; an offset's place in the buffer is the
// offset modulo its size.
type Queue struct {
	framing    Framing
	buf        []byte
	head, tail int    // committed frames are [head, tail)
	open       int    // end of the open reservations
	gap, gapAt int    // the gap [gap, gapAt) before a frame that starts over; gap == gapAt when none
	refused    uint64 // frames a packet device refused (writePackets)
	zc         *zeroCopy
}

// NewQueue returns a Queue of frames delimited by f, of size bytes.
func NewQueue(f Framing, size int) *Queue {
	return &Queue{framing: f, buf: make([]byte, queueSize(size))}
}

// queueSize is the least a queue holds: two of the largest frames.
func queueSize(size int) int { return max(size, 2*(MaxFrame+maxPrefix)) }

// Reserve returns room for one frame of up to n bytes after the open
// reservations, or nil when the queue is too full.
func (q *Queue) Reserve(n int) []byte {
	q.rebase()
	p, size := q.framing.LenSize, len(q.buf)
	at := q.open
	if o := at % size; o+p+n > size {
		at += size - o // the frame starts over at the buffer's beginning
	}
	if !q.fits(at + p + n) {
		return nil
	}
	if at != q.open {
		q.gap, q.gapAt = q.open, at
	}
	o := at % size
	q.open = at + p + n
	return q.buf[o+p : o+p+n]
}

// rebaseAt is how far the head grows before rebase takes the offsets
// back.
const rebaseAt = 1 << 30

// rebase takes the offsets back by a multiple of the buffer's size, where
// they name the same bytes, once the head is past rebaseAt: a queue that
// is never empty, or lends its pages (zeroCopy), never starts over at 0,
// and an int is 32 bits wide on some machines, where past 2^31 bytes the
// offsets went negative and frames came out garbled. A gap behind the
// new start was passed already: it goes.
func (q *Queue) rebase() {
	if q.head < rebaseAt {
		return
	}
	d := q.head - q.head%len(q.buf)
	q.head, q.tail, q.open = q.head-d, q.tail-d, q.open-d
	if q.gap < d {
		q.gap, q.gapAt = 0, 0
	} else {
		q.gap, q.gapAt = q.gap-d, q.gapAt-d
	}
	if q.zc != nil {
		q.zc.rebase(q, d)
	}
}

// fits tells whether the buffer may be written up to offset end: what
// was there a buffer's length before has been sent, and the kernel does
// not read it from there any more (zeroCopy).
func (q *Queue) fits(end int) bool {
	if q.zc != nil {
		return q.zc.fits(q, end)
	}
	return end <= q.head+len(q.buf)
}

// skipGap is where the frame at offset at really starts: past the gap,
// when one lies there.
func (q *Queue) skipGap(at int) int {
	if at == q.gap {
		return q.gapAt
	}
	return at
}

// Commit queues the oldest open reservation as a frame of size bytes. A
// frame committed short of its reservation must be the last committed
// before Cancel drops the reservations after it.
func (q *Queue) Commit(size int) {
	at := q.skipGap(q.tail)
	if at+q.framing.LenSize+size > q.open {
		panic("qemusock: commit beyond the open reservations")
	}
	q.framing.put(q.buf[at%len(q.buf):], size)
	q.tail = at + q.framing.LenSize + size
}

// Cancel drops the open reservations, and the gap before them.
func (q *Queue) Cancel() {
	q.open = q.tail
	if q.gap >= q.tail {
		q.gap, q.gapAt = 0, 0
	}
}

// reserved tells whether reservations are open.
func (q *Queue) reserved() bool { return q.open > q.tail }

// Pending is the number of queued bytes.
func (q *Queue) Pending() int {
	n := q.tail - q.head
	if q.head <= q.gap && q.gapAt <= q.tail {
		n -= q.gapAt - q.gap
	}
	if q.zc != nil {
		n += q.zc.inPipe
	}
	return n
}

// next is the queued bytes from head that lie together in the buffer:
// up to the tail, the gap or the buffer's end. It moves head past a gap.
func (q *Queue) next() []byte {
	q.head = q.skipGap(q.head)
	end := min(q.tail, q.head-q.head%len(q.buf)+len(q.buf))
	if q.gap > q.head {
		end = min(end, q.gap)
	}
	o := q.head % len(q.buf)
	return q.buf[o : o+end-q.head]
}

// drained starts an empty queue over at the buffer's beginning, where
// its bytes are still in the cache, unless reservations are open or the
// kernel may still read what was sent from the buffer.
func (q *Queue) drained() {
	if q.open == q.tail && q.zc == nil {
		q.head, q.tail, q.open, q.gap, q.gapAt = 0, 0, 0, 0, 0
	}
}

// writeStream writes queued bytes, prefixes included, until done or the
// stream would block (unix.EAGAIN, the rest still queued).
func (q *Queue) writeStream(fd int) error {
	if q.zc != nil {
		return q.zc.flush(q)
	}
	return q.writeCopy(fd)
}

// writeCopy is writeStream by write(2), which copies.
func (q *Queue) writeCopy(fd int) error {
	for q.head < q.tail {
		n, err := write(fd, q.next())
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
	q.head = q.skipGap(q.head)
	p, o := q.framing.LenSize, q.head%len(q.buf)
	return q.buf[o+p : o+p+int(q.framing.get(q.buf[o:]))]
}

// pop drops the oldest queued frame, which front returned.
func (q *Queue) pop() {
	q.head += q.framing.LenSize + int(q.framing.get(q.buf[q.head%len(q.buf):]))
	if q.head == q.tail {
		q.drained()
	}
}
