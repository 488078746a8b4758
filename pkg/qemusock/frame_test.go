package qemusock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

func pipePair(t testing.TB) (r, w int) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, 1<<20)
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// readAll drains what was written and returns the frames or the error.
func readAll(t testing.TB, r *Reader, fd int) ([][]byte, error) {
	return collect(t, func() (int, error) { return r.Fill(fd) }, r.Next)
}

// collect reads (fill) until there is nothing more and returns every
// frame next hands out, or next's error.
func collect(t testing.TB, fill func() (int, error), next func() ([]byte, error)) ([][]byte, error) {
	var frames [][]byte
	for {
		n, err := fill()
		if err == unix.EAGAIN || err == nil && n == 0 {
			return frames, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		for {
			f, err := next()
			if err != nil {
				return frames, err
			}
			if f == nil {
				break
			}
			frames = append(frames, append([]byte(nil), f...))
		}
	}
}

func TestReaderSplitsPartialWrites(t *testing.T) {
	rfd, wfd := pipePair(t)
	var stream []byte
	for i := 1; i <= 50; i++ {
		stream = binary.BigEndian.AppendUint32(stream, uint32(i*100))
		stream = append(stream, bytes.Repeat([]byte{byte(i)}, i*100)...)
	}
	r := NewReader(QEMU, 0)
	var got [][]byte
	for len(stream) > 0 { // dribble the stream in odd-sized pieces
		n := min(len(stream), 777)
		unix.Write(wfd, stream[:n])
		stream = stream[n:]
		f, err := readAll(t, r, rfd)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f...)
	}
	if len(got) != 50 {
		t.Fatalf("%d frames, want 50", len(got))
	}
	for i, f := range got {
		if len(f) != (i+1)*100 || f[0] != byte(i+1) {
			t.Fatalf("frame %d corrupt", i)
		}
	}
}

func TestReaderRejectsBadLengths(t *testing.T) {
	for _, c := range []struct {
		f      Framing
		prefix []byte
	}{
		{QEMU, []byte{0, 0, 0, 0}},
		{QEMU, binary.BigEndian.AppendUint32(nil, MaxFrame+1)},
		{QEMU, []byte{0xff, 0xff, 0xff, 0xff}},
		{Gvproxy, []byte{0, 0}},
	} {
		rfd, wfd := pipePair(t)
		unix.Write(wfd, c.prefix)
		if _, err := readAll(t, NewReader(c.f, 0), rfd); !errors.Is(err, ErrFrameLength) {
			t.Errorf("prefix % x: err %v", c.prefix, err)
		}
	}
}

// TestQueueRoundTrip: frames built in a queue come out of a reader of the
// same framing, for each framing.
func TestQueueRoundTrip(t *testing.T) {
	for _, f := range []Framing{QEMU, Gvproxy} {
		rfd, wfd := pipePair(t)
		q := NewQueue(f, 0)
		for i := 1; i <= 3; i++ {
			copy(q.Reserve(i), bytes.Repeat([]byte{byte(i)}, i))
			q.Commit(i)
		}
		if err := q.writeStream(wfd); err != nil || q.Pending() != 0 {
			t.Fatal(err)
		}
		got, err := readAll(t, NewReader(f, 0), rfd)
		if err != nil || len(got) != 3 || !bytes.Equal(got[2], []byte{3, 3, 3}) {
			t.Fatalf("%d-byte framing: %v %v", f.LenSize, got, err)
		}
	}
}

// TestQueueReservations: several reservations open at once, as a TCP peek
// fills them; a short frame is the last kept, and the rest are dropped.
func TestQueueReservations(t *testing.T) {
	rfd, wfd := pipePair(t)
	q := NewQueue(QEMU, 0)
	var open [][]byte
	for range 4 {
		open = append(open, q.Reserve(100))
	}
	for i, size := range []int{100, 100, 60} {
		copy(open[i], bytes.Repeat([]byte{byte(i + 1)}, size))
		q.Commit(size)
	}
	q.Cancel()
	copy(q.Reserve(10), "after")
	q.Commit(5)
	if err := q.writeStream(wfd); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, NewReader(QEMU, 0), rfd)
	if err != nil || len(got) != 4 || len(got[2]) != 60 || got[2][59] != 3 || string(got[3]) != "after" {
		t.Fatalf("frames %d, %v", len(got), err)
	}
}

// FuzzReader: any byte stream yields frames within bounds or a clean
// error, never a panic, in either framing.
func FuzzReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 9})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, fr := range []Framing{QEMU, Gvproxy} {
			rfd, wfd := pipePair(t)
			unix.Write(wfd, b)
			frames, err := readAll(t, NewReader(fr, 0), rfd)
			if err != nil && !errors.Is(err, ErrFrameLength) {
				t.Fatal(err)
			}
			for _, f := range frames {
				if len(f) == 0 || len(f) > fr.Max {
					t.Fatalf("frame of %d bytes", len(f))
				}
			}
		}
	})
}

// TestTapLink: frames from a packet device (here a SEQPACKET pair, one
// frame per call like a tap) come out of Next like stream frames, all
// that waited taken by one Read, and queued frames go out one per write
// without any prefix.
func TestTapLink(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[1])
	l := NewTap(pair[0])
	defer l.Close()
	frames := [][]byte{[]byte("first frame"), bytes.Repeat([]byte{7}, 1500), {1}}
	for _, f := range frames {
		unix.Write(pair[1], f)
	}
	if n, err := l.Read(); err != nil || n != 1512 {
		t.Fatalf("Read: %d, %v", n, err)
	}
	for _, want := range frames {
		got, err := l.Next()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Next: % x, %v", got, err)
		}
	}
	if _, err := l.Read(); err != unix.EAGAIN {
		t.Fatalf("empty device: %v", err)
	}
	// More than one batch: the rest waits for the next Read.
	for range tapBatch + 6 {
		unix.Write(pair[1], frames[0])
	}
	for _, want := range []int{tapBatch, 6} {
		if n, err := l.Read(); err != nil || n != want*len(frames[0]) {
			t.Fatalf("Read: %d, %v; want %d frames", n, err, want)
		}
		for range want {
			if got, err := l.Next(); err != nil || !bytes.Equal(got, frames[0]) {
				t.Fatalf("Next: % x, %v", got, err)
			}
		}
	}
	if f, err := l.Next(); f != nil || err != nil {
		t.Fatalf("Next after the batch: % x, %v", f, err)
	}
	// That Read found the device empty: the next says so without a
	// read(2), even though a frame came since, and the one after reads.
	unix.Write(pair[1], frames[0])
	if _, err := l.Read(); err != unix.EAGAIN {
		t.Fatalf("Read after the device ran dry: %v, want EAGAIN", err)
	}
	if n, err := l.Read(); err != nil || n != len(frames[0]) {
		t.Fatalf("Read: %d, %v", n, err)
	}
	l.Next()

	for _, f := range frames {
		copy(l.Reserve(len(f)), f)
		l.Commit(len(f))
	}
	if err := l.Flush(); err != nil || l.Pending() != 0 {
		t.Fatalf("Flush: %v, %d pending", err, l.Pending())
	}
	buf := make([]byte, 2048)
	for _, want := range frames {
		n, err := unix.Read(pair[1], buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("device got % x, %v", buf[:n], err)
		}
	}
}

// TestStreamLinkDrained: a Read that leaves room in the reader took all
// the socket had, so the next says EAGAIN without a read(2), even though
// a frame came since, and the one after reads; a Read that filled the
// reader leaves the next to read on.
func TestStreamLinkDrained(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[1])
	// The smallest reader, which the socket's buffer can overfill.
	l := &fdLink{fd: pair[0], rd: NewReader(QEMU, 0), q: NewQueue(QEMU, 0), maxFrame: MaxFrame}
	defer l.Close()
	frame := []byte{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}
	unix.Write(pair[1], frame)
	if n, err := l.Read(); err != nil || n != len(frame) {
		t.Fatalf("Read: %d, %v", n, err)
	}
	unix.Write(pair[1], frame)
	if _, err := l.Read(); err != unix.EAGAIN {
		t.Fatalf("Read after a short read: %v, want EAGAIN", err)
	}
	if n, err := l.Read(); err != nil || n != len(frame) {
		t.Fatalf("Read: %d, %v", n, err)
	}
	for range 2 {
		if got, err := l.Next(); err != nil || string(got) != "hello" {
			t.Fatalf("Next: %q, %v", got, err)
		}
	}
	l.Read() // that Read was short too
	// More than the reader holds: the Read that fills it is not short.
	big := make([]byte, 4+MaxFrame)
	binary.BigEndian.PutUint32(big, MaxFrame)
	for range 3 {
		if n, err := unix.Write(pair[1], big); n != len(big) {
			t.Fatalf("write: %d, %v", n, err)
		}
	}
	if n, err := l.Read(); err != nil || n != len(l.rd.buf) {
		t.Fatalf("Read: %d, %v; want the reader's %d", n, err, len(l.rd.buf))
	}
	for i := 0; i < 3; {
		for f, _ := l.Next(); f != nil; f, _ = l.Next() {
			i++
		}
		if _, err := l.Read(); i < 3 && err != nil {
			t.Fatalf("Read with frame %d of 3 waiting: %v", i+1, err)
		}
	}
}

// TestQueueReserveAfterPartialWrite: when a stream took only part of the
// queue (the rest waits at an offset) and the tail has no room left, a
// reservation moves what waits to the front rather than fail.
func TestQueueReserveAfterPartialWrite(t *testing.T) {
	rfd, wfd := pipePair(t)
	unix.FcntlInt(uintptr(wfd), unix.F_SETPIPE_SZ, 1<<16)
	q := NewQueue(QEMU, 1<<20)
	for q.Reserve(60000) != nil {
		q.Commit(60000)
	}
	if err := q.writeStream(wfd); err != unix.EAGAIN || q.head == 0 {
		t.Fatalf("want a partial write: %v, head %d", err, q.head)
	}
	unix.Read(rfd, make([]byte, 1<<16))
	if q.Reserve(60000) == nil {
		t.Fatal("no room made at the front")
	}
	q.Commit(60000)
	if err := q.writeStream(wfd); err != unix.EAGAIN && err != nil {
		t.Fatal(err)
	}
}
