// Package qemusock carries Ethernet frames over QEMU's "stream" netdev
// framing: each frame is preceded by its length as a 4-byte big-endian
// integer. The same framing is used by passt, so any QEMU that can talk to
// passt can talk to gopasst.
//
// Reader and Writer work on non-blocking file descriptors and never copy a
// frame more than once: the reader hands out slices of its buffer, and the
// writer lets the caller build frames directly in its buffer.
package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// LenSize is the size of the length prefix.
const LenSize = 4

// MaxFrame is the largest frame accepted or sent: an Ethernet header plus a
// 64 KiB packet, which covers passt's default MTU of 65520.
const MaxFrame = 65536 + 14

// ErrFrameLength is returned for a zero or oversize length prefix. The stream
// cannot be resynchronised after it, so the caller drops the client.
var ErrFrameLength = errors.New("qemusock: bad frame length")

// Reader reassembles frames from a byte stream.
type Reader struct {
	buf        []byte
	start, end int
}

// NewReader returns a Reader with a buffer of size bytes (at least two
// maximum-size frames, so one read can always make progress).
func NewReader(size int) *Reader {
	return &Reader{buf: make([]byte, max(size, 2*(MaxFrame+LenSize)))}
}

// Fill reads once from fd. It returns the number of bytes read; 0 with a nil
// error means end of stream. unix.EAGAIN is returned as is.
func (r *Reader) Fill(fd int) (int, error) {
	r.makeRoom()
	n, err := read(fd, r.buf[r.end:])
	r.end += n
	return n, err
}

// FillPacket reads one frame from a packet device (a tap), which hands
// over whole frames without a length prefix, and stores it with one, so
// Next serves both transports. It returns the frame's size, and
// unix.EAGAIN as is.
func (r *Reader) FillPacket(fd int) (int, error) {
	r.makeRoom()
	n, err := read(fd, r.buf[r.end+LenSize:r.end+LenSize+MaxFrame])
	if n > 0 {
		PutLen(r.buf[r.end:], n)
		r.end += LenSize + n
	}
	return n, err
}

// makeRoom moves buffered bytes to the front when a maximum-size frame
// with its prefix would not fit after them.
func (r *Reader) makeRoom() {
	if r.start == r.end {
		r.start, r.end = 0, 0
	} else if len(r.buf)-r.end < MaxFrame+LenSize {
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.start = 0
	}
}

// read is unix.Read retried on EINTR, with n = 0 on error.
func read(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// Next returns the next complete frame, or nil when more bytes are needed.
// The slice is valid until the next call to Fill.
func (r *Reader) Next() ([]byte, error) {
	avail := r.buf[r.start:r.end]
	if len(avail) < LenSize {
		return nil, nil
	}
	n := int(binary.BigEndian.Uint32(avail))
	if n == 0 || n > MaxFrame {
		return nil, fmt.Errorf("%w: %d", ErrFrameLength, n)
	}
	if len(avail) < LenSize+n {
		return nil, nil
	}
	r.start += LenSize + n
	return avail[LenSize : LenSize+n], nil
}

// Reset discards buffered bytes, for a new client.
func (r *Reader) Reset() { r.start, r.end = 0, 0 }

// Writer queues frames for a non-blocking stream. Frames are built in place
// with Reserve and Commit, then sent in as few write calls as possible.
type Writer struct {
	buf        []byte
	head, tail int // pending bytes are buf[head:tail]
}

// NewWriter returns a Writer with a buffer of size bytes.
func NewWriter(size int) *Writer {
	return &Writer{buf: make([]byte, max(size, 2*(MaxFrame+LenSize)))}
}

// Reserve returns n bytes of raw queue space, or nil if the queue is too
// full. The caller writes one or more frames into it, each with its length
// prefix (PutLen), and then commits what it wrote. Only the latest
// reservation may be committed.
func (w *Writer) Reserve(n int) []byte {
	if len(w.buf)-w.tail < n && w.head > 0 {
		w.tail = copy(w.buf, w.buf[w.head:w.tail])
		w.head = 0
	}
	if len(w.buf)-w.tail < n {
		return nil
	}
	return w.buf[w.tail : w.tail+n]
}

// Commit queues the first n bytes of the latest reservation.
func (w *Writer) Commit(n int) { w.tail += n }

// PutLen writes the length prefix of a frame of n bytes at b[0:LenSize].
func PutLen(b []byte, n int) { binary.BigEndian.PutUint32(b, uint32(n)) }

// Pending is the number of queued bytes.
func (w *Writer) Pending() int { return w.tail - w.head }

// Room is the largest reservation that could succeed now.
func (w *Writer) Room() int { return len(w.buf) - w.Pending() }

// Flush writes queued bytes until done or the stream would block. It
// returns unix.EAGAIN in the latter case, with the rest still queued.
func (w *Writer) Flush(fd int) error {
	for w.head < w.tail {
		n, err := unix.Write(fd, w.buf[w.head:w.tail])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		w.head += n
	}
	w.head, w.tail = 0, 0
	return nil
}

// FlushPackets writes queued frames to a packet device (a tap), one
// write each and without their length prefixes, until done or the device
// would block (unix.EAGAIN, the rest still queued). A frame the device
// refuses is dropped, as a NIC drops what it cannot send.
func (w *Writer) FlushPackets(fd int) error {
	for w.head < w.tail {
		n := int(binary.BigEndian.Uint32(w.buf[w.head:]))
		_, err := unix.Write(fd, w.buf[w.head+LenSize:w.head+LenSize+n])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return err
		}
		w.head += LenSize + n
	}
	w.head, w.tail = 0, 0
	return nil
}

// Reset discards queued bytes, for a new client.
func (w *Writer) Reset() { w.head, w.tail = 0, 0 }
