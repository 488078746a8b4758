package tests

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTCPCloseKeepsUpload: the guest uploads to a host server that reads
// only later, shuts down its side, then reads the server's reply to its
// end and closes. gopasst ends the connection at the guest's ACK of the
// reply and its FIN; the upload still queued in gopasst's host socket
// reaches the server whole, then its end, not a reset that drops it.
func TestTCPCloseKeepsUpload(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	target := net.JoinHostPort(hostGW, port(l.Addr()))
	// A small receive buffer keeps most of the upload in gopasst's
	// socket until the server reads.
	lraw, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	lraw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
	const size = 2 << 20
	finIn := make(chan struct{})
	type result struct {
		sum []byte
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		select {
		case <-finIn:
		case <-time.After(30 * time.Second):
		}
		c.Write([]byte("reply"))
		c.(*net.TCPConn).CloseWrite()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		sum, n, err := hashCopy(c)
		done <- result{sum, n, err}
	}()
	c := w.guestConn(t, target)
	if _, err := io.Copy(c, newStream(7, size)); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	// gopasst has taken the upload and the FIN once the guest's send
	// queue is empty; the server has read none of it.
	raw, _ := c.(*net.TCPConn).SyscallConn()
	for i := 0; ; i++ {
		var outq uint32
		raw.Control(func(fd uintptr) { outq, _ = unix.IoctlGetUint32(int(fd), unix.SIOCOUTQ) })
		if outq == 0 {
			break
		}
		if i == 4000 {
			t.Fatalf("gopasst left %d bytes of the upload in the guest", outq)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(finIn)
	if got, err := io.ReadAll(c); err != nil || string(got) != "reply" {
		t.Fatalf("guest read %q, %v; want the reply, then EOF", got, err)
	}
	c.Close()
	r := <-done
	if r.err != nil || r.n != size || !bytes.Equal(r.sum, sumStream(7, size)) {
		t.Fatalf("server read %d of %d bytes (sum equal %v), then %v; want all, then EOF",
			r.n, size, bytes.Equal(r.sum, sumStream(7, size)), r.err)
	}
}

// TestTCPHostUrgentData: urgent data (MSG_OOB) from a host server reaches
// a guest with a real kernel in its place in the stream, and what follows
// it too, while the server waits; so do many urgent bytes among bulk
// data.
func TestTCPHostUrgentData(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	target := net.JoinHostPort(hostGW, port(l.Addr()))
	const bulk = 4 << 20
	want := make([]byte, 0, bulk+16)
	want = append(want, "abc!def"...)
	rest, _ := io.ReadAll(newStream(9, bulk))
	want = append(want, rest...)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		raw, _ := c.(*net.TCPConn).SyscallConn()
		urgent := func(b []byte) {
			raw.Write(func(fd uintptr) bool { return unix.Sendto(int(fd), b, unix.MSG_OOB, nil) != unix.EAGAIN })
		}
		c.Write(want[:3])
		urgent(want[3:4])
		c.Write(want[4:7])
		// The guest reads up to here before there is more.
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			return
		}
		for off := 7; off < len(want); off += 50000 {
			end := min(off+50000, len(want))
			c.Write(want[off : end-1])
			urgent(want[end-1 : end])
		}
	}()
	c := w.guestConn(t, target)
	got := make([]byte, 7)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "abc!def" {
		t.Fatalf("guest read %q, %v; want %q", got, err, "abc!def")
	}
	c.Write([]byte("k"))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, want[7:]) {
		t.Fatalf("guest read %d of %d bytes (equal %v), then %v", len(got), len(want)-7, bytes.Equal(got, want[7:]), err)
	}
}
