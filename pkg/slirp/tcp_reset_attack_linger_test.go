package slirp

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTCPResetAttackLingerCap: sockets lingering with data their peers
// do not read are kept tcpLingerMax at most: one more resets the oldest
// (its peer reads to a reset). The guest's going (closeClient) keeps the
// rest, and the engine's end hands them to the kernel, whose close sends
// their data and a FIN (the peers read to the end of stream); none is
// left open. (test only: it passes)
func TestTCPResetAttackLingerCap(t *testing.T) {
	h, _ := tcpPeer(t)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<10) })
	}}
	ln, err := lc.Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sa := &unix.SockaddrInet4{Port: ln.Addr().(*net.TCPAddr).Port, Addr: [4]byte{127, 0, 0, 1}}
	var peers []net.Conn
	for range tcpLingerMax + 1 {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, sa); err != nil {
			t.Fatal(err)
		}
		p, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		peers = append(peers, p)
		unix.SetNonblock(fd, true)
		for {
			if _, err := unix.Write(fd, make([]byte, 64<<10)); err != nil {
				break
			}
		}
		// As tcpClose leaves it: a close resets the peer.
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		if !h.e.tcpLingerAdd(fd, false) {
			t.Fatal("a socket with data its peer has not read does not linger")
		}
	}
	if len(h.e.tcp.lingers) != tcpLingerMax {
		t.Fatalf("%d sockets lingering, want %d", len(h.e.tcp.lingers), tcpLingerMax)
	}
	resetSeen := func(p net.Conn) bool {
		p.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, p)
		return errors.Is(err, syscall.ECONNRESET)
	}
	if !resetSeen(peers[0]) {
		t.Fatal("the oldest socket, past the cap, did not reset its peer")
	}
	h.e.closeClient("test")
	if len(h.e.tcp.lingers) != tcpLingerMax {
		t.Fatalf("%d sockets lingering after the guest left, want %d", len(h.e.tcp.lingers), tcpLingerMax)
	}
	h.e.tcpLingerRelease()
	if len(h.e.tcp.lingers) != 0 {
		t.Fatalf("%d sockets lingering after the engine's end", len(h.e.tcp.lingers))
	}
	for i, p := range peers[1:] {
		p.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := io.Copy(io.Discard, p); err != nil {
			t.Fatalf("peer %d read %d bytes, then %v, after the engine's end; want the end of stream", i+1, n, err)
		}
	}
}
