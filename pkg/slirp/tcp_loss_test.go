package slirp

import (
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Data loss at the ends of a connection: bytes the host socket took and
// acknowledged for the guest must reach it however the connection ends.

// TestTCPHostResetDelivers: a host peer sends more than the guest's
// window, then resets (a server closing with the request's rest unread).
// Its socket took and acknowledged all of it, and a client of its own
// would read it all before the reset: the guest gets every byte, then
// the RST at the end of them, even though it acknowledges only after the
// reset came and sends more (which no one can take) meanwhile.
func TestTCPHostResetDelivers(t *testing.T) {
	want := pattern(48<<10, 5)
	reset := make(chan struct{})
	h := newHotPath(t, func(c net.Conn) {
		defer close(reset)
		c.Write(want)
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for queued := 1; queued > 0; time.Sleep(time.Millisecond) {
			raw.Control(func(fd uintptr) { queued, _ = sockQueued(int(fd), unix.SIOCOUTQ) })
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	h.wnd = 8 << 10 >> 7 // 8 KiB, scaled by 2^7
	h.send(h.segment(header.TCPAck, 0))
	h.readFrames(func(header.TCP) {})
	start := h.ack
	<-reset
	// The reset reached the host socket: it is closed, or gone with the
	// flow.
	for i := 0; ; i++ {
		h.e.turn(5)
		f := h.flow()
		if f == nil {
			break
		}
		if info, err := unix.GetsockoptTCPInfo(f.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.State == unix.BPF_TCP_CLOSE {
			break
		}
		if i == 1000 {
			t.Fatal("the host socket never saw the peer's reset")
		}
		time.Sleep(time.Millisecond)
	}
	seg := h.segment(header.TCPAck|header.TCPPsh, 100) // past the reset
	h.send(seg)
	var got []byte
	rst := false
	h.receive(t, false, func(s header.TCP) bool {
		if s.Seq() == start+uint32(len(got)) {
			got = append(got, s.Payload()...)
		}
		if isRst(s) {
			rst = s.Seq() == start+uint32(len(got))
			return true
		}
		return false
	})
	if string(got) != string(want) || !rst {
		t.Fatalf("the guest got %d of %d bytes (equal %v), then a RST at the end %v", len(got), len(want), string(got) == string(want), rst)
	}
	if h.e.tcp.count != 0 {
		t.Fatal("flow left after the RST")
	}
}
