package slirp

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TestTCPResetAttackHostileGuest: the host peer sends 256 KiB, which our
// socket acknowledges, and resets; the guest meanwhile loses frames,
// leaves the link full, acknowledges part of what it got, from the past
// and the future, repeats ACKs (retransmissions from the queue's head),
// shrinks and opens its window, lets the retransmission timer run out
// and sends data no one takes; then, after 2000 such steps, behaves. It
// gets the stream byte for byte before any RST, and no byte after it,
// with SO_PEEK_OFF and without. (test only: it passes)
func TestTCPResetAttackHostileGuest(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { hostileAfterHostReset(t, seed) })
	}
}

func hostileAfterHostReset(t *testing.T, seed uint64) {
	h, c := tcpPeer(t)
	f := h.flow()
	if seed%2 == 1 {
		if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, -1); err != nil && err != unix.ENOPROTOOPT {
			t.Fatal(err)
		}
		f.peekOff = false
	}
	if seed%4 >= 2 {
		shrinkLink(t, h)
	}
	g := &hostileGuest{t: t, h: h, f: f, rng: rand.New(rand.NewPCG(seed, 11)),
		want: pattern(256<<10, int(seed)), base: h.ack, rcv: h.ack, edge: h.ack + 0xffff<<7}
	end := g.base + uint32(len(g.want))
	go func() {
		c.Write(g.want)
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for queued := 1; queued > 0; time.Sleep(time.Millisecond) {
			raw.Control(func(fd uintptr) { queued, _ = sockQueued(int(fd), unix.SIOCOUTQ) })
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	rst := false
	take := func(s header.TCP) {
		switch {
		case rst && len(s.Payload()) > 0:
			t.Fatalf("%d bytes at stream offset %d after the RST", len(s.Payload()), int(s.Seq()-g.base))
		case isRst(s):
			// The flow's, at the stream's end, or, that one lost on a
			// full link, the answer to an ACK once the flow is gone.
			if s.Seq() != end && h.flow() != nil || g.rcv != end {
				t.Fatalf("RST at stream offset %d, the guest having %d of %d bytes", int(s.Seq()-g.base), int(g.rcv-g.base), len(g.want))
			}
			rst = true
		case !rst:
			g.take(s)
		}
	}
	r := g.rng
	for i := 0; !rst; i++ {
		if i == 20000 {
			t.Fatalf("no RST after %d steps: the guest has %d of %d bytes (state %v, flags %#x, in flight %d)",
				i, int(g.rcv-g.base), len(g.want), f.state, f.flags, f.sndNxt-f.sndUna)
		}
		hostile := i < 2000
		g.lossy = hostile
		if hostile && r.IntN(4) == 0 {
			h.e.turn(0) // the link fills
		} else {
			h.e.turn(1)
			if f.fd >= 0 {
				g.edge = f.sndUna + f.guestWnd
			}
			h.readFrames(take)
		}
		if rst {
			break
		}
		if !hostile {
			h.ack, h.wnd = g.rcv, 0xffff
			h.send(h.segment(header.TCPAck, 0))
			if i%2000 == 1999 {
				h.jump(tcpRTO << 4)
			}
			continue
		}
		var batch []byte
		for range 1 + r.IntN(5) {
			batch = append(batch, g.ackSeg()...)
		}
		if r.IntN(3) == 0 {
			for range 3 {
				batch = append(batch, h.segment(header.TCPAck, 0)...)
			}
		}
		h.send(batch)
		switch r.IntN(20) {
		case 0:
			if f.retries < 4 {
				h.jump(tcpRTO << 2)
			}
		case 1: // data no one takes
			h.ack = g.rcv
			h.send(h.segment(header.TCPAck|header.TCPPsh, 1+r.IntN(3000)))
		}
	}
	h.jump(time.Minute)
	h.e.turn(5)
	h.readFrames(take)
	if h.e.tcp.count != 0 || len(h.e.tcp.lingers) != 0 {
		t.Fatalf("%d flows, %d sockets lingering after the RST", h.e.tcp.count, len(h.e.tcp.lingers))
	}
}
