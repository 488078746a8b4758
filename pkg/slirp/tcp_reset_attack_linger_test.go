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
// rest, and the engine's end lets them go: those the guest shut (every
// other one here) to the kernel, whose close sends their data and the
// FIN (their peers read to the end of stream), the others, whose peers
// read nothing meanwhile, with a reset once tcpLingerDrain is over; none
// is left open.
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
	for i := range tcpLingerMax + 1 {
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
		// As tcpClose leaves it: shut for writing if the guest sent its
		// FIN, and a close resets the peer.
		fin := i%2 == 1
		if fin {
			unix.Shutdown(fd, unix.SHUT_WR)
		}
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		if !h.e.tcpLingerAdd(fd, fin) {
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
		i++
		p.SetDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, p)
		if fin := i%2 == 1; fin && err != nil || !fin && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer %d (guest's FIN %v) read %d bytes, then %v, after the engine's end; want the end of stream with the FIN, else a reset", i, fin, n, err)
		}
	}
}
