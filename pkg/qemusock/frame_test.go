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
