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
	var frames [][]byte
	for {
		n, err := r.Fill(fd)
		if err == unix.EAGAIN || n == 0 {
			return frames, nil
		}
		if err != nil {
			t.Fatal(err)
		}
		for {
			f, err := r.Next()
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
	r := NewReader(0)
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
	for _, n := range []uint32{0, MaxFrame + 1, 0xffffffff} {
		rfd, wfd := pipePair(t)
		unix.Write(wfd, binary.BigEndian.AppendUint32(nil, n))
		if _, err := readAll(t, NewReader(0), rfd); !errors.Is(err, ErrFrameLength) {
			t.Errorf("length %d: err %v", n, err)
		}
	}
}

func TestWriterRoundTrip(t *testing.T) {
	rfd, wfd := pipePair(t)
	w := NewWriter(0)
	for i := 1; i <= 3; i++ {
		b := w.Reserve(LenSize + i)
		PutLen(b, i)
		copy(b[LenSize:], bytes.Repeat([]byte{byte(i)}, i))
		w.Commit(LenSize + i)
	}
	if err := w.Flush(wfd); err != nil || w.Pending() != 0 {
		t.Fatal(err)
	}
	got, err := readAll(t, NewReader(0), rfd)
	if err != nil || len(got) != 3 || !bytes.Equal(got[2], []byte{3, 3, 3}) {
		t.Fatalf("%v %v", got, err)
	}
}

// FuzzReader: any byte stream yields frames within bounds or a clean
// error, never a panic.
func FuzzReader(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 1, 9})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		rfd, wfd := pipePair(t)
		unix.Write(wfd, b)
		frames, err := readAll(t, NewReader(0), rfd)
		if err != nil && !errors.Is(err, ErrFrameLength) {
			t.Fatal(err)
		}
		for _, fr := range frames {
			if len(fr) == 0 || len(fr) > MaxFrame {
				t.Fatalf("frame of %d bytes", len(fr))
			}
		}
	})
}

// TestPacketTransport: frames from a packet device (here a SEQPACKET pair,
// one frame per call like a tap) come out of Next like stream frames, and
// queued frames go out one per write without their prefixes.
func TestPacketTransport(t *testing.T) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	frames := [][]byte{[]byte("first frame"), bytes.Repeat([]byte{7}, 1500), {1}}
	for _, f := range frames {
		unix.Write(pair[1], f)
	}
	r := NewReader(0)
	for _, want := range frames {
		if n, err := r.FillPacket(pair[0]); err != nil || n != len(want) {
			t.Fatalf("FillPacket: %d, %v", n, err)
		}
		got, err := r.Next()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Next: % x, %v", got, err)
		}
	}
	if _, err := r.FillPacket(pair[0]); err != unix.EAGAIN {
		t.Fatalf("empty device: %v", err)
	}

	w := NewWriter(0)
	for _, f := range frames {
		b := w.Reserve(LenSize + len(f))
		PutLen(b, len(f))
		copy(b[LenSize:], f)
		w.Commit(LenSize + len(f))
	}
	if err := w.FlushPackets(pair[0]); err != nil || w.Pending() != 0 {
		t.Fatalf("FlushPackets: %v, %d pending", err, w.Pending())
	}
	buf := make([]byte, 2048)
	for _, want := range frames {
		n, err := unix.Read(pair[1], buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("device got % x, %v", buf[:n], err)
		}
	}
}
