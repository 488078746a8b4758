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
