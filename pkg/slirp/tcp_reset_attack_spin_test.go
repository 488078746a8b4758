package slirp

import (
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TestTCPResetAttackNoSpin: after the host peer's reset, with data left
// for the guest, a guest that keeps its window closed, or one that never
// acknowledges what is in flight, leaves the closed host socket silent:
// its EPOLLHUP, which a closed socket always has, is not reported turn
// after turn (tcpEvents are edge-triggered), and a hundred turns wake
// the engine for it a few times at most. (test only: it passes)
func TestTCPResetAttackNoSpin(t *testing.T) {
	for _, wnd := range []uint16{0, 8 << 10 >> 7} {
		h, c := tcpPeer(t)
		h.wnd = wnd
		h.send(h.segment(header.TCPAck, 0))
		h.e.turn(5)
		c.Write(pattern(64<<10, 25))
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for queued := 1; queued > 0; time.Sleep(time.Millisecond) {
			raw.Control(func(fd uintptr) { queued, _ = sockQueued(int(fd), unix.SIOCOUTQ) })
		}
		f := h.flow()
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		for i := 0; ; i++ {
			h.e.turn(5)
			if f.state&tcpHostReset != 0 {
				break
			}
			if i == 1000 {
				t.Fatal("the engine never saw the host peer's reset")
			}
			time.Sleep(time.Millisecond)
		}
		before := h.e.evStats.counts[kindTCP]
		for i := range 100 {
			if i%10 == 0 {
				h.send(h.segment(header.TCPAck, 0)) // the window, again; nothing acknowledged
			}
			h.e.turn(0)
			h.readFrames(func(header.TCP) {})
		}
		if n := h.e.evStats.counts[kindTCP] - before; n > 5 || h.flow() != f {
			t.Fatalf("window %d: %d events of the host socket in 100 turns, flow still there %v", wnd, n, h.flow() == f)
		}
	}
}
