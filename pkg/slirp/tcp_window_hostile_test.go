package slirp

import (
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TestTCPClosedWindowPersists: the host has data, and the guest keeps its
// window closed for ten minutes, answering each of our probes and then
// some, with its closed window, an ACK past what we sent, one long
// behind, a sequence number far outside our window or one below it. The
// probes back off to one every tcpRTO<<4, the host socket is not left
// ready for the loop to spin on, no data goes past the closed window,
// and the flow, whose guest answers, lives on: once the window opens,
// the data flows.
func TestTCPClosedWindowPersists(t *testing.T) {
	h, c := tcpPeer(t)
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	c.Write(make([]byte, 100000))
	h.e.turn(5)
	h.readFrames(func(header.TCP) {})
	const persist = 10 * time.Minute
	probes, data := 0, 0
	for i := range int(persist / tick) {
		h.jump(tick)
		h.e.turn(0)
		h.readFrames(func(s header.TCP) {
			if len(s.Payload()) == 0 && s.Seq() == h.ack-1 {
				probes++
			}
			data += len(s.Payload())
		})
		ack, seq := h.ack, h.seq
		switch i % 5 {
		case 1:
			h.ack += 1000
		case 2:
			h.ack -= 5000
		case 3:
			h.seq += 1 << 30
		case 4:
			h.seq--
		}
		h.send(h.segment(header.TCPAck, 0))
		h.ack, h.seq = ack, seq
		if epollReady(h.e, kindTCP) {
			t.Fatalf("after %v: the host socket is ready while the guest's window is closed", time.Duration(i)*tick)
		}
	}
	if most := int(persist/(tcpRTO<<4)) + 5; probes == 0 || probes > most {
		t.Errorf("%d probes in %v, want some, and no more than %d", probes, persist, most)
	}
	if data != 0 || h.flow() == nil {
		t.Fatalf("%d bytes past the closed window; flow alive: %v", data, h.flow() != nil)
	}
	h.wnd = 0xffff
	h.send(h.segment(header.TCPAck, 0))
	got := 0
	h.receive(t, false, func(s header.TCP) bool { got += len(s.Payload()); return got >= 100000 })
}

// TestTCPWindowUpdateAfterShrink: the guest's window is closed and the
// host has data for it. The guest uploads a small segment, whose write
// shrinks the window we offer (spendRoom charges what the kernel may
// take past its bytes), while the rest of what it sent into the window
// it had, and then the ACK that opens its own window, are on their way.
// That ACK lies past the right edge we last offered, but not past the
// furthest we offered (sentAck): it opens the window, and the download
// goes on at once, not at our next probe, a second later.
func TestTCPWindowUpdateAfterShrink(t *testing.T) {
	h, c := tcpPeer(t)
	f := h.flow()
	// A small send buffer, so that the guest's window ends near, and a
	// large write, so that its room is read again.
	unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
	edge := func() (e uint32) {
		for range 5 {
			h.e.turn(1)
			h.readFrames(func(s header.TCP) { e = s.Ack() + uint32(s.Window())<<f.ourWS })
		}
		return e
	}
	h.wnd = 0
	h.send(h.segment(header.TCPAck|header.TCPPsh, tcpSmallWrite+1))
	h.seq += tcpSmallWrite + 1
	c.Write(make([]byte, 100000))
	was := edge()
	h.send(h.segment(header.TCPAck|header.TCPPsh, 100))
	h.seq += 100
	t.Logf("the right edge moved by %d", int32(edge()-was))
	var batch []byte
	for seqLT(h.seq, was) {
		n := min(16000, int(was-h.seq))
		batch = append(batch, h.segment(header.TCPAck|header.TCPPsh, n)...)
		h.seq += uint32(n)
	}
	h.wnd = 0xffff
	h.send(append(batch, h.segment(header.TCPAck, 0)...))
	got := 0
	for range 20 {
		h.e.turn(1)
		h.readFrames(func(s header.TCP) { got += len(s.Payload()) })
	}
	if got == 0 {
		t.Fatalf("the guest opened its window, and got nothing (its window as we keep it: %d)", f.guestWnd)
	}
}
