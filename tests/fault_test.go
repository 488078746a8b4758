package tests

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestFaults: whatever dies mid-transfer, gopasst ends what depended on
// it and keeps nothing: its descriptors go back to their count before.
func TestFaults(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	pid := w.ServerPid(t)
	fds0 := countFds(t, pid)
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	target := net.JoinHostPort(hostGW, port(l.Addr()))
	conns := make(chan net.Conn, 1)
	acceptLoop(l, func(c net.Conn) { conns <- c })
	settled := func(what string) {
		t.Helper()
		waitFor(t, what, func() bool { return countFds(t, pid) <= fds0 })
	}

	t.Run("host peer dies", func(t *testing.T) {
		g := w.guestConn(t, target)
		h := <-conns
		go func() { h.Write(make([]byte, 8<<20)) }()
		io.ReadFull(g, make([]byte, 1<<20))
		h.(*net.TCPConn).SetLinger(0)
		h.Close() // a reset, as from a process killed
		if _, err := io.Copy(io.Discard, g); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("guest read after the host peer died: %v, want a reset", err)
		}
		settled("the flow's socket closed")
	})

	t.Run("guest stops reading", func(t *testing.T) {
		g := w.guestConn(t, target)
		h := <-conns
		before := rss(t, pid)
		h.SetWriteDeadline(time.Now().Add(3 * time.Second))
		n, _ := io.Copy(h, zeros{}) // until the windows and buffers are full
		if grew := rss(t, pid) - before; grew > 8<<20 {
			t.Errorf("RSS grew by %d MiB while the guest read nothing", grew>>20)
		}
		t.Logf("the host got %d MiB into buffers before it had to wait", n>>20)
		g.Close()
		h.Close()
		settled("the flow's socket closed")
	})

	t.Run("guest link dies", func(t *testing.T) {
		g := w.guestConn(t, target)
		h := <-conns
		go func() { h.Write(make([]byte, 8<<20)) }()
		io.ReadFull(g, make([]byte, 1<<20))
		w.Bridge.Close() // QEMU killed: its socket closes mid-transfer
		h.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, h); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("host peer after the guest went: %v, want its connection ended", err)
		}
		settled("every flow of the gone guest closed")
	})
}

// zeros reads as an endless stream of zeros.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
