package slirp

import (
	"net"
	"testing"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// The adaptive polling (spin) under attack: a guest whose segments move
// no payload either way must not have the engine poll, however well polls
// paid before, or it could keep a CPU busy with traffic that carries
// nothing.

// TestSpinNothingMoves: with polls at their best score, the guest sends
// old data again, duplicate ACKs with nothing in flight, keepalive
// probes, connections it resets at once, ACKs that keep its window closed
// on host data, and data into a host socket whose peer does not read. No
// such turn moves payload, and none is followed by polling.
func TestSpinNothingMoves(t *testing.T) {
	h, c := tcpPeer(t)
	f := h.flow()
	h.uploadData(t, pattern(3000, 1))
	try := func(what string, frames ...[]byte) {
		t.Helper()
		h.e.spin = spin{score: spinScoreMax}
		for _, b := range frames {
			h.send(b)
		}
		h.e.turn(10)
		h.readFrames(func(header.TCP) {})
		if h.e.pollTimeout() == 0 {
			t.Errorf("%s: the engine polls", what)
		}
	}
	old := func(wnd uint16) []byte {
		return h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: h.seq - 1400, ack: h.ack, wnd: wnd, payload: pattern(1400, 2)})
	}
	try("old data", old(h.wnd), old(h.wnd))
	dup := h.raw(rawSeg{flags: header.TCPAck, seq: h.seq, ack: h.ack, wnd: h.wnd})
	try("duplicate ACKs", dup, dup, dup, dup)
	try("keepalive probes", h.raw(rawSeg{flags: header.TCPAck, seq: h.seq - 1, ack: h.ack, wnd: h.wnd}))
	try("a connection reset at once", h.raw(rawSeg{flags: header.TCPSyn, seq: 5000, sport: 40001}),
		h.raw(rawSeg{flags: header.TCPRst, seq: 5001, sport: 40001}))

	closed := h.raw(rawSeg{flags: header.TCPAck, seq: h.seq, ack: h.ack})
	try("a closed window", closed)
	c.Write(pattern(5000, 3))
	try("host data behind a closed window", closed, old(0))

	// The host peer reads nothing, and the guest goes on sending.
	unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10)
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<10) })
	for step := 0; f.flags&tcpWaitWrite == 0; step++ {
		if step == 5000 {
			t.Fatal("the host socket never filled")
		}
		h.seq = f.rcvNxt
		h.upload(1400)
	}
	h.seq = f.rcvNxt
	data := h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: h.seq, ack: h.ack, payload: pattern(1400, 4)})
	try("data the host socket has no room for", data, data)
}
