package qemusock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// streamPair is a connected stream socket pair: the link's end, non
// blocking, and the client's.
func streamPair(t testing.TB) (link, client int) {
	t.Helper()
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(p[0], true)
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

// frames reads what the client sent and returns the frames, or the error.
func frames(t testing.TB, l Link) ([][]byte, error) { return collect(t, l.Read, l.Next) }

// gvforwarderHello is what gvforwarder v0.8.9 writes first: Go's
// http.Request.Write of a body-less POST to /connect.
const gvforwarderHello = "POST /connect HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n\r\n"

func le16(frames ...string) []byte {
	var b []byte
	for _, f := range frames {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

// TestDetectGvforwarder: a client that opens with gvforwarder's request,
// even split across reads, gets the 2-byte little-endian framing both
// ways, with a frame limit its receive buffer takes; nothing goes to it
// before it has spoken.
func TestDetectGvforwarder(t *testing.T) {
	lfd, cfd := streamPair(t)
	l := NewDetectStream(lfd)
	if l.Reserve(100) != nil {
		t.Fatal("room for frames before the client spoke")
	}
	stream := append([]byte(gvforwarderHello), le16("first", "second")...)
	var got [][]byte
	for _, part := range [][]byte{stream[:10], stream[10:40], stream[40:]} {
		unix.Write(cfd, part)
		f, err := frames(t, l)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f...)
	}
	if len(got) != 2 || string(got[0]) != "first" || string(got[1]) != "second" {
		t.Fatalf("frames %q", got)
	}
	if l.MaxFrame() != GvforwarderMTU+14 {
		t.Errorf("MaxFrame %d, want %d", l.MaxFrame(), GvforwarderMTU+14)
	}
	copy(l.Reserve(5), "reply")
	l.Commit(5)
	if err := l.Flush(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, _ := unix.Read(cfd, buf); !bytes.Equal(buf[:n], le16("reply")) {
		t.Fatalf("client got % x, want % x", buf[:n], le16("reply"))
	}
}

// TestDetectQEMU: a client whose first byte is a frame length's gets
// QEMU's framing.
func TestDetectQEMU(t *testing.T) {
	lfd, cfd := streamPair(t)
	l := NewDetectStream(lfd)
	unix.Write(cfd, append([]byte{0, 0, 0, 5}, "hello"...))
	got, err := frames(t, l)
	if err != nil || len(got) != 1 || string(got[0]) != "hello" || l.MaxFrame() != MaxFrame {
		t.Fatalf("frames %q, %v, MaxFrame %d", got, err, l.MaxFrame())
	}
}

// TestDetectBadRequest: a client that starts like gvforwarder and then
// sends something else, or a request without end, is refused with an
// error that says why.
func TestDetectBadRequest(t *testing.T) {
	for _, stream := range []string{
		"POST /other HTTP/1.1\r\n\r\n",
		"PUT /connect HTTP/1.1\r\n\r\n",
		"POST /connect HTTP/1.1\r\n" + strings.Repeat("X-Pad: y\r\n", 500),
	} {
		lfd, cfd := streamPair(t)
		l := NewDetectStream(lfd)
		unix.Write(cfd, []byte(stream))
		if _, err := frames(t, l); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%.20q...: err %v, want ErrBadRequest", stream, err)
		}
	}
}

// FuzzDetectStream: whatever a client sends first, in one piece or two,
// a detecting link settles on a framing and yields frames within its
// limit, or refuses the client with an error that says why; nothing goes
// to the client before its framing is known.
func FuzzDetectStream(f *testing.F) {
	f.Add([]byte(gvforwarderHello+"\x05\x00hello"), uint16(10))
	f.Add([]byte{0, 0, 0, 5, 'h', 'e', 'l', 'l', 'o'}, uint16(2))
	f.Add([]byte("POST /connect HTTP/1.1\r\n\r\n\xff\xff"), uint16(0))
	f.Add([]byte("POST /conn"), uint16(4))
	f.Fuzz(func(t *testing.T, b []byte, split uint16) {
		lfd, cfd := streamPair(t)
		// The least buffers a link takes: zeroing a stream link's 12 MiB
		// for each input would be most of the target's time.
		l := detectStream(newStream(lfd, QEMU, false, 0))
		cut := min(int(split), len(b))
		for _, part := range [][]byte{b[:cut], b[cut:]} {
			unix.Write(cfd, part)
			got, err := frames(t, l)
			if err != nil {
				if !errors.Is(err, ErrBadRequest) && !errors.Is(err, ErrFrameLength) {
					t.Fatal(err)
				}
				return
			}
			for _, fr := range got {
				if len(fr) == 0 || len(fr) > l.MaxFrame() {
					t.Fatalf("frame of %d bytes, limit %d", len(fr), l.MaxFrame())
				}
			}
		}
		switch room := l.Reserve(10) != nil; {
		case len(b) == 0 && room:
			t.Fatal("room for frames before the client spoke")
		case len(b) > 0 && b[0] != connectRequest[0] && !room:
			t.Fatal("no room once the client spoke with QEMU's framing")
		}
	})
}
