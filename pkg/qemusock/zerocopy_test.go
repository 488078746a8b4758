package qemusock

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// zeroCopyPair is a zero-copy queue on a unix stream socket, and the
// peer's end, non-blocking.
func zeroCopyPair(t *testing.T, f Framing, size int) (q *Queue, link, peer int) {
	link, peer = streamPair(t)
	unix.SetNonblock(peer, true)
	if q = newZeroCopyQueue(f, size, link); q == nil {
		t.Fatal("no zero-copy queue on a unix socket")
	}
	return q, link, peer
}

// numbered fills frame b as the n-th: its number, then bytes that
// follow from it, so that a frame overwritten by a later one shows.
func numbered(b []byte, n int) {
	for i := range b {
		b[i] = byte(n + i)
	}
	if len(b) >= 4 {
		binary.BigEndian.PutUint32(b, uint32(n))
	}
}

// isNumbered tells whether f is the n-th frame as numbered fills it.
func isNumbered(f []byte, n int) bool {
	want := make([]byte, len(f))
	numbered(want, n)
	return string(f) == string(want)
}

// takeNumbered takes every whole frame r holds, each of which must be
// the next numbered one, and counts them in got.
func takeNumbered(t *testing.T, r *Reader, got *int) {
	t.Helper()
	for {
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if f == nil {
			return
		}
		if !isNumbered(f, *got) {
			t.Fatalf("frame %d of %d bytes arrived changed", *got, len(f))
		}
		*got++
	}
}

// queueStress builds frames in q as the engine does (several
// reservations open at once, the last committed short, the rest
// cancelled), of sizes that make the ring wrap at every place, flushes
// now and then to wfd, and reads rfd behind it: every frame committed
// must come out whole and in order.
func queueStress(t *testing.T, q *Queue, wfd, rfd int, batches int) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewReader(q.framing, 0)
	made, got := 0, 0
	read := func() {
		for {
			if n, err := r.Fill(rfd); n <= 0 || err != nil {
				return
			}
			takeNumbered(t, r, &got)
		}
	}
	flush := func() {
		if err := q.writeStream(wfd); err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
	}
	size := func() int {
		switch rng.IntN(3) {
		case 0:
			return 1 + rng.IntN(200)
		case 1:
			return 1514
		}
		return 1 + rng.IntN(q.framing.Max)
	}
	for range batches {
		var open [][]byte
		for range 1 + rng.IntN(8) {
			b := q.Reserve(size())
			if b == nil {
				break
			}
			open = append(open, b)
		}
		commit := rng.IntN(len(open) + 1)
		for i, b := range open[:commit] {
			if i == commit-1 && rng.IntN(2) == 0 {
				b = b[:1+rng.IntN(len(b))]
			}
			numbered(b, made)
			q.Commit(len(b))
			made++
		}
		q.Cancel()
		if rng.IntN(3) == 0 {
			flush()
		}
		if rng.IntN(4) == 0 {
			read()
		}
	}
	for range 10000 {
		if got == made {
			if q.Pending() != 0 {
				t.Fatalf("all frames arrived, %d bytes still pending", q.Pending())
			}
			return
		}
		flush()
		read()
	}
	t.Fatalf("%d frames of %d arrived", got, made)
}

// TestQueueRing: frames survive the ring's wraps and gaps, written by
// copy to a pipe.
func TestQueueRing(t *testing.T) {
	for _, f := range []Framing{QEMU, Gvproxy} {
		rfd, wfd := pipePair(t)
		queueStress(t, NewQueue(f, 0), wfd, rfd, 3000)
	}
}

// TestZeroCopyQueue: a queue that lends its pages to a unix socket
// writes none of them again before the peer has read them, with the
// reader far behind and the ring small enough to wrap under it, and
// starts over at the beginning only when the peer has read everything.
func TestZeroCopyQueue(t *testing.T) {
	for _, f := range []Framing{QEMU, Gvproxy} {
		q, a, b := zeroCopyPair(t, f, 2*hugePage)
		queueStress(t, q, a, b, 3000)
		if q.zc.copy {
			t.Error("the kernel did not lend the pages")
		}
		q.zc.close(q)
	}
}

// TestZeroCopyQueueClosed: frames lent to the socket and not yet read
// when the link closes reach the peer unchanged: the buffer goes with
// the link, its pages with the kernel.
func TestZeroCopyQueueClosed(t *testing.T) {
	q, a, b := zeroCopyPair(t, QEMU, 0)
	n := 0
	for ; n < 3; n++ {
		numbered(q.Reserve(copyBelow), n) // lent, not copied
		q.Commit(copyBelow)
	}
	if err := q.writeStream(a); err != nil || q.Pending() != 0 {
		t.Fatalf("flush: %v, %d pending", err, q.Pending())
	}
	at := fmt.Sprintf("%x-", unsafe.Pointer(&q.buf[0]))
	q.zc.close(q)
	if maps, _ := os.ReadFile("/proc/self/maps"); strings.Contains(string(maps), "\n"+at) {
		t.Fatalf("the buffer is still mapped:\n%s", maps)
	}
	big := make([][]byte, 64) // new heap objects, where the buffer was
	for i := range big {
		big[i] = make([]byte, 1<<16)
	}
	got, err := readAll(t, NewReader(QEMU, 0), b)
	if err != nil || len(got) != n {
		t.Fatalf("%d frames, %v", len(got), err)
	}
	for i, f := range got {
		if !isNumbered(f, i) {
			t.Fatalf("frame %d changed", i)
		}
	}
}

// TestZeroCopySmallCopied: a flush of a few small frames (the guest's
// ACKs) is written by copy, one system call, and a larger one is lent.
// Writing the buffer after the flush, as the queue itself never does
// while the kernel holds it, shows which: the peer reads lent pages as
// they are when it reads.
func TestZeroCopySmallCopied(t *testing.T) {
	q, a, b := zeroCopyPair(t, QEMU, 0)
	for _, size := range []int{100, copyBelow} {
		f := q.Reserve(size)
		numbered(f, 1)
		q.Commit(size)
		if err := q.writeStream(a); err != nil || q.Pending() != 0 {
			t.Fatalf("flush: %v, %d pending", err, q.Pending())
		}
		numbered(f, 2)
		got, err := readAll(t, NewReader(QEMU, 0), b)
		if err != nil || len(got) != 1 {
			t.Fatalf("%d frames, %v", len(got), err)
		}
		lent := size+QEMU.LenSize > copyBelow
		switch {
		case !lent && !isNumbered(got[0], 1):
			t.Fatalf("a frame of %d bytes was lent", size)
		case lent && !q.zc.copy && !isNumbered(got[0], 2):
			t.Fatalf("a frame of %d bytes was copied", size)
		}
	}
}

// TestZeroCopyOnlyUnix: other descriptors are written by copy.
func TestZeroCopyOnlyUnix(t *testing.T) {
	_, w := pipePair(t)
	if newZeroCopyQueue(QEMU, 0, w) != nil {
		t.Fatal("a pipe got a zero-copy queue")
	}
}

// TestZeroCopyRewind: an empty queue past its first huge page starts over
// at the beginning only when the peer has read all it was lent; until
// then the frames that follow go round the ring, clear of the one unread.
func TestZeroCopyRewind(t *testing.T) {
	q, a, b := zeroCopyPair(t, QEMU, 2*hugePage)
	r := NewReader(QEMU, 0)
	made, got := 0, 0
	add := func() bool {
		fr := q.Reserve(60000)
		if fr == nil {
			return false
		}
		numbered(fr, made)
		q.Commit(60000)
		made++
		return true
	}
	flush := func() {
		if err := q.writeStream(a); err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
	}
	read := func() {
		frames, err := readAll(t, r, b)
		if err != nil {
			t.Fatalf("after frame %d: %v", got+len(frames), err)
		}
		for _, f := range frames {
			if !isNumbered(f, got) {
				t.Fatalf("frame %d arrived changed", got)
			}
			got++
		}
	}
	// Past the first huge page, empty, the last frames lent and unread.
	for {
		add()
		flush()
		if made*60004 > hugePage {
			break
		}
		read()
	}
	if q.Pending() != 0 {
		t.Fatalf("%d bytes not lent", q.Pending())
	}
	for add() {
	}
	for range 1000 {
		flush()
		if read(); got == made {
			return
		}
	}
	t.Fatalf("%d frames of %d arrived", got, made)
}

// TestUnsent: SIOCOUTQ's count is read as the C int the kernel writes,
// on a big-endian machine too (make test-bigendian), where an 8-byte
// read put it in the upper half and the queue saw its pages held for ever.
func TestUnsent(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	unix.Write(fds[0], make([]byte, 1000))
	sndbuf, _ := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF)
	if n, err := unsent(fds[0]); err != nil || n < 1000 || n > sndbuf {
		t.Errorf("unsent after writing 1000 bytes: %d, %v (SO_SNDBUF %d)", n, err, sndbuf)
	}
	unix.Read(fds[1], make([]byte, 1000))
	if n, err := unsent(fds[0]); err != nil || n != 0 {
		t.Errorf("unsent once read: %d, %v", n, err)
	}
}

// TestZeroCopyQueuePastInt32: a lending queue goes on past 2^31 bytes,
// where an int is 32 bits wide (386, arm). It never starts over at 0
// while the peer leaves bytes unread, and its offsets only grow: they
// went negative there, and the next frame panicked on its slice bounds.
func TestZeroCopyQueuePastInt32(t *testing.T) {
	q, a, b := zeroCopyPair(t, QEMU, 2*hugePage)
	// As after 2^31 bytes, less a few buffers, all of them read.
	at := math.MaxInt32 - math.MaxInt32%len(q.buf) - 2*len(q.buf)
	q.head, q.tail, q.open, q.gap, q.gapAt = at, at, at, at, at
	q.zc.free, q.zc.asked = at, at
	queueStress(t, q, a, b, 3000)
	q.zc.close(q)
}
