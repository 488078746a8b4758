package slirp

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// A host peer's reset (tcpHostError) met by what the guest does in the
// same turn, before the engine hears of the reset from epoll: the reset
// is the same whichever system call learns of it first.

// hostResetBehind has the host peer send data past the guest's window
// (8 KiB) and wait until our socket acknowledged it all; the engine
// sends the guest its window's worth. Then guest queues its frames on
// the link, which the engine has not read yet, and the host peer
// resets; it returns once our socket has the reset, the frames still
// unread. It returns the guest's first sequence number of the data.
func hostResetBehind(t *testing.T, h *hotPath, c net.Conn, data []byte, frames ...[]byte) uint32 {
	t.Helper()
	h.wnd = 8 << 10 >> 7
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	start := h.ack
	c.Write(data)
	raw, _ := c.(*net.TCPConn).SyscallConn()
	for queued := 1; queued > 0; time.Sleep(time.Millisecond) {
		raw.Control(func(fd uintptr) { queued, _ = sockQueued(int(fd), unix.SIOCOUTQ) })
	}
	for range 20 {
		h.e.turn(5)
	}
	f := h.flow()
	if f.sndNxt-f.sndUna != 8<<10 {
		t.Fatalf("%d bytes in flight before the reset, want the 8 KiB window", f.sndNxt-f.sndUna)
	}
	for _, b := range frames {
		h.send(b)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	waitHungUp(t, f.fd)
	return start
}

// hungUp tells whether a host socket had its peer's reset (or both
// FINs): poll says so without taking the error, and, unlike TCP_INFO,
// under qemu-user too.
func hungUp(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd)}}
	n, _ := unix.Poll(p, 0)
	return n == 1 && p[0].Revents&unix.POLLHUP != 0
}

// waitHungUp waits until hungUp(fd).
func waitHungUp(t *testing.T, fd int) {
	t.Helper()
	for i := 0; !hungUp(fd); i++ {
		if i == 1000 {
			t.Fatal("the host socket never saw the peer's reset")
		}
		time.Sleep(time.Millisecond)
	}
}

// receiveUntilRst acknowledges what the guest gets in order from start
// on, and returns it once a RST comes, and whether the RST came at its
// end.
func (h *hotPath) receiveUntilRst(t *testing.T, start uint32) (got []byte, atEnd bool) {
	t.Helper()
	h.wnd = 0xffff
	h.receive(t, false, func(s header.TCP) bool {
		if s.Seq() == start+uint32(len(got)) {
			got = append(got, s.Payload()...)
		}
		if isRst(s) {
			atEnd = s.Seq() == start+uint32(len(got))
			return true
		}
		return false
	})
	return got, atEnd
}

// TestTCPResetAttackWriteMeetsHostReset: the guest's data (the rest of
// a request the host peer does not read) reaches the engine just after
// the host peer's reset: the write fails with the reset before epoll
// reports it. The guest still gets all the host peer sent, then the
// RST, as when epoll reports the reset first (TestTCPHostResetDelivers).
func TestTCPResetAttackWriteMeetsHostReset(t *testing.T) {
	h, c := tcpPeer(t)
	want := pattern(48<<10, 21)
	h.wnd = 8 << 10 >> 7
	req := h.segment(header.TCPAck|header.TCPPsh, 100)
	start := hostResetBehind(t, h, c, want, append([]byte(nil), req...))
	got, atEnd := h.receiveUntilRst(t, start)
	if !bytes.Equal(got, want) || !atEnd {
		t.Fatalf("the guest got %d of %d bytes (equal %v), then a RST at the end %v", len(got), len(want), bytes.Equal(got, want), atEnd)
	}
}

// TestTCPResetAttackPeekMeetsHostReset: the guest's ACK of part of what
// is in flight reaches the engine just after the host peer's reset, and
// the peek it starts finds nothing new: the peek fails with the reset
// before epoll reports it. The rest in flight, which the guest did not
// get (lost on the way), still reaches it, then the RST.
func TestTCPResetAttackPeekMeetsHostReset(t *testing.T) {
	h, c := tcpPeer(t)
	want := pattern(8<<10, 22) // the window's worth: all in flight
	ack := h.raw(rawSeg{flags: header.TCPAck, seq: h.seq, ack: h.ack + 1000, wnd: 8 << 10 >> 7})
	start := hostResetBehind(t, h, c, want, ack)
	// The guest had only the first 1000 bytes: what it gets again from
	// there is the stream.
	h.ack = start + 1000
	for range 5 {
		h.e.turn(5)
		h.readFrames(func(header.TCP) {})
	}
	if h.flow() == nil {
		t.Fatal("the flow ended with 7 KiB in flight that the guest lacks")
	}
	h.jump(tcpRTO) // retransmits
	got, atEnd := h.receiveUntilRst(t, start+1000)
	if !bytes.Equal(got, want[1000:]) || !atEnd {
		t.Fatalf("the guest got %d of %d bytes (equal %v), then a RST at the end %v", len(got), len(want)-1000, bytes.Equal(got, want[1000:]), atEnd)
	}
}

// TestTCPResetAttackHostResetAfterFin: the host peer sent its answer and
// FIN, which the guest acknowledged, and then resets (it got more of
// the guest's data after closing). Nothing is left for the guest but
// the RST: it goes at once, not when the guest next sends (which a
// guest that only waits does not), nor tcpFinTimeout later.
func TestTCPResetAttackHostResetAfterFin(t *testing.T) {
	h, c := tcpPeer(t)
	c.Write([]byte("answer"))
	c.(*net.TCPConn).CloseWrite()
	h.receive(t, false, isFin)
	h.e.turn(5) // the guest's ACK of the FIN
	if f := h.flow(); f == nil || f.state&tcpFinAcked == 0 {
		t.Fatal("the guest's ACK of the FIN did not arrive")
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	rst := false
	for i := 0; i < 200 && !rst; i++ {
		h.e.turn(5)
		h.readFrames(func(s header.TCP) { rst = rst || isRst(s) })
	}
	if !rst || h.e.tcp.count != 0 {
		t.Fatalf("after the host peer's reset: RST to the guest %v, %d flows left", rst, h.e.tcp.count)
	}
}

// TestTCPResetAttackNoLingerAfterHostReset: the host peer answers and
// resets with the guest's upload unread, and the guest resets too,
// after the engine saw the host peer's reset or in frames it reads
// before. The socket is closed, its queue thrown away, though SIOCOUTQ
// still counts what its peer never acknowledged: it does not linger for
// tcpFinTimeout, taking the place of a socket that has a peer.
func TestTCPResetAttackNoLingerAfterHostReset(t *testing.T) {
	for _, seen := range []bool{true, false} {
		h, c := tcpPeer(t)
		h.uploadData(t, pattern(1<<20, 23))
		f := h.flow()
		if !seen {
			h.send(h.segment(header.TCPRst|header.TCPAck, 0))
		}
		c.Write([]byte("answer")) // keeps the flow for the guest to get it
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		waitHungUp(t, f.fd)
		if seen {
			h.e.turn(5)
			if f.state&tcpHostReset == 0 {
				t.Fatal("the engine did not see the host peer's reset")
			}
			h.send(h.segment(header.TCPRst|header.TCPAck, 0))
		}
		h.e.turn(5)
		if h.e.tcp.count != 0 || len(h.e.tcp.lingers) != 0 {
			t.Fatalf("host reset seen first %v: %d flows, %d sockets lingering; want none", seen, h.e.tcp.count, len(h.e.tcp.lingers))
		}
	}
}

// TestTCPResetAttackLingerPeerResets: the host peer of a lingering
// socket resets it: the next tick closes it, not tcpFinTimeout later.
func TestTCPResetAttackLingerPeerResets(t *testing.T) {
	h, c := resetUpload(t, 24)
	fd := h.e.tcp.lingers[0].fd
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	waitHungUp(t, fd)
	h.jump(tick)
	h.e.turn(5)
	if len(h.e.tcp.lingers) != 0 {
		t.Fatal("a socket its peer reset still lingers")
	}
}

// TestTCPResetAttackUnixWriteMeetsClose: a --unix-fwd peer answers past
// the guest's window and closes with the request unread, while more of
// the request waits on the link: the write fails (EPIPE) before epoll
// reports the close. The guest still gets the whole answer, then the
// RST, as TestTCPUnixForwardResetDelivers.
func TestTCPResetAttackUnixWriteMeetsClose(t *testing.T) {
	u, c := unixForwardConn(t, 8) // 1 KiB: the answer waits in the socket

	u.send(u.segment(header.TCPAck|header.TCPPsh, 3)) // never read
	u.seq += 3
	want := pattern(20<<10, 4)
	c.Write(want)
	for range 10 {
		u.e.turn(5)
	}
	start := u.ack
	u.send(u.segment(header.TCPAck|header.TCPPsh, 100)) // the request's rest, on the link
	c.Close()
	got, atEnd := u.receiveUntilRst(t, start)
	if !bytes.Equal(got, want) || !atEnd {
		t.Fatalf("the guest got %d of %d bytes (equal %v), then a RST at the end %v", len(got), len(want), bytes.Equal(got, want), atEnd)
	}
}
