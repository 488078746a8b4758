package qemusock

import (
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroCopy sends a queue to a unix stream socket without copying it:
// vmsplice(2) lends the queue's pages to a pipe, and splice(2) hangs
// them on the socket's buffers, from which the guest's end (QEMU) reads
// them. Writing the frames to the socket would copy every byte once
// more, which is a fifth of what a download costs.
//
// The pages stay the kernel's to read until the guest's end has taken
// them, so the queue does not write there again before then: the kernel
// may hold what sits in the pipe and, at most, what the socket counts as
// unread (SIOCOUTQ, which counts each buffer's overhead too). The buffer
// is mapped apart from Go's heap, and unmapped on close, so that bytes
// the peer has not read yet are never any other object's.
type zeroCopy struct {
	fd     int // the socket
	pipe   [2]int
	inPipe int  // bytes lent to the pipe, not yet on the socket
	asked  int  // the queue's head when rewind last asked the kernel
	copy   bool // the kernel refused to lend: the queue is written by copy
	free   int  // the queue's offset up to which the kernel is done with the buffer
	iov    [1]unix.Iovec
}

// zeroCopySize is how much the pipe holds: a batch of 64 KiB frames.
const zeroCopySize = 1 << 20

// copyBelow is the most a flush copies rather than lends: one write(2)
// for the guest's ACKs of an upload, where lending takes two calls and
// a reference on each page, which cost more than copying a few frames.
const copyBelow = 4 << 10

// newZeroCopyQueue is a queue for unix stream socket fd that it sends
// from without copying, or nil where the kernel cannot (fd is not a unix
// socket, SIOCOUTQ fails, no pipe can be made, the memory cannot be
// mapped).
func newZeroCopyQueue(f Framing, size, fd int) *Queue {
	if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || d != unix.AF_UNIX {
		return nil
	}
	if _, err := unsent(fd); err != nil {
		return nil // no telling when the kernel is done with a page
	}
	z := &zeroCopy{fd: fd}
	if err := unix.Pipe2(z.pipe[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return nil
	}
	unix.FcntlInt(uintptr(z.pipe[1]), unix.F_SETPIPE_SZ, zeroCopySize) // best effort
	buf, err := hugeMap(queueSize(size))
	if err != nil {
		z.closePipe()
		return nil
	}
	return &Queue{framing: f, buf: buf, zc: z}
}

// hugePage is the size of a transparent huge page on amd64 and arm64's
// 4 KiB granule.
const hugePage = 2 << 20

// maxHugeRings is how many queues an engine maps on huge pages. A
// client may splice what it is lent into a pipe of its own and keep it
// after it leaves, and any piece of a huge page keeps all 2 MiB from the
// system, where the pipe counts 4 KiB: a client that reconnected in a
// loop would take 2 MiB a connection. Later queues are on small pages,
// whose cost a pipe counts.
const maxHugeRings = 8

// hugeRings counts the queues mapped on huge pages.
var hugeRings atomic.Int32

// hugeMap maps size bytes of anonymous memory (rounded up to huge
// pages) aligned to a huge page, and asks for huge pages there, for the
// first maxHugeRings maps: lending a huge page to a pipe takes one
// reference where 512 small pages take one each, which cost as much as
// half the copy saved.
func hugeMap(size int) ([]byte, error) {
	size = (size + hugePage - 1) &^ (hugePage - 1)
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(size+hugePage), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	skip := -uintptr(p) & (hugePage - 1)
	if skip > 0 {
		unix.MunmapPtr(p, skip)
	}
	unix.MunmapPtr(unsafe.Add(p, skip+uintptr(size)), hugePage-skip)
	buf := unsafe.Slice((*byte)(unsafe.Add(p, skip)), size)
	advice := unix.MADV_NOHUGEPAGE // where the kernel gives huge pages unasked
	if hugeRings.Add(1) <= maxHugeRings {
		advice = unix.MADV_HUGEPAGE
	}
	unix.Madvise(buf, advice) // best effort: the kernel may have no huge pages
	return buf, nil
}

// fits tells whether the queue may write its buffer up to offset end:
// whether the kernel is done with what was there a buffer's length
// before. It reads in order, so it is done with all but the last bytes
// handed over: those in the pipe and those the socket counts as unread,
// and one gap's worth more, since a gap among them takes room in the
// buffer without being counted. What it was done with stays done, so
// the kernel is asked again only when that is not enough.
func (z *zeroCopy) fits(q *Queue, end int) bool {
	if end <= z.free+len(q.buf) {
		return true
	}
	held := z.inPipe
	if outq, err := unsent(z.fd); err == nil {
		held += outq
	} else {
		held = len(q.buf) // unknown: wait until the stream is empty
	}
	if held > 0 {
		held += q.framing.LenSize + MaxFrame
	}
	z.free = max(z.free, q.head-held)
	return end <= z.free+len(q.buf)
}

// flush lends what is queued to the pipe and moves the pipe's contents
// to the socket, until all is on the socket or it is full
// (unix.EAGAIN).
func (z *zeroCopy) flush(q *Queue) error {
	for {
		for z.inPipe > 0 {
			n, err := rawCall(unix.SYS_SPLICE, uintptr(z.pipe[0]), 0, uintptr(z.fd), 0,
				uintptr(z.inPipe), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if err != nil {
				return err
			}
			z.inPipe -= n
		}
		if q.head == q.tail {
			z.rewind(q)
			return nil
		}
		if z.copy {
			return q.writeCopy(z.fd)
		}
		b := q.next()
		if len(b) <= copyBelow {
			// The pipe is empty, so a write keeps the stream's order.
			n, err := write(z.fd, b)
			if err != nil {
				return err
			}
			q.head += n
			continue
		}
		z.iov[0] = iovec(&b[0], len(b))
		n, err := rawCall(unix.SYS_VMSPLICE, uintptr(z.pipe[1]), uintptr(unsafe.Pointer(&z.iov[0])), 1,
			unix.SPLICE_F_NONBLOCK, 0, 0)
		if err == unix.ENOSYS || err == unix.EPERM || err == unix.EINVAL {
			z.copy = true // a kernel or a filter without vmsplice
			continue
		}
		if err != nil {
			return err
		}
		q.head += n
		z.inPipe += n
	}
}

// rewind starts an empty queue over at the buffer's beginning when the
// kernel is done with all of it, as a queue that copies does whenever it
// is empty: light traffic then keeps to the first huge page rather than
// going round all of them. It asks once the queue is past that page, and
// then once a page further on at most, since a busy socket is seldom
// empty.
func (z *zeroCopy) rewind(q *Queue) {
	at := q.head % len(q.buf)
	if q.open != q.tail || at <= hugePage || q.head-z.asked < hugePage {
		return
	}
	z.asked = q.head
	if outq, err := unsent(z.fd); err == nil && outq == 0 {
		q.head += len(q.buf) - at
		q.tail, q.open, z.free = q.head, q.head, q.head
	}
}

// rebase takes its offsets back with the queue's by d (Queue.rebase).
// Those further back than any the queue compares them with go no further
// back: they would mean the same, and after enough rebases overflow.
func (z *zeroCopy) rebase(q *Queue, d int) {
	z.free = max(z.free-d, q.head-len(q.buf))
	z.asked = max(z.asked-d, q.head-hugePage)
}

// unsent is what the socket counts as unread by its peer (SIOCOUTQ). The
// kernel writes a C int: IoctlGetInt would read 8 bytes, the count in
// the upper half on a 64-bit big-endian machine (as slirp's sendRoom
// knows).
func unsent(fd int) (int, error) {
	n, err := unix.IoctlGetUint32(fd, unix.SIOCOUTQ)
	return int(int32(n)), err
}

func (z *zeroCopy) closePipe() {
	unix.Close(z.pipe[0])
	unix.Close(z.pipe[1])
}

// close lets go of the pipe and the buffer. The pages the peer has not
// read yet stay with the kernel, and go when it is done with them.
func (z *zeroCopy) close(q *Queue) {
	z.closePipe()
	unix.MunmapPtr(unsafe.Pointer(&q.buf[0]), uintptr(len(q.buf)))
	q.buf = nil
}
