package slirp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// The TCP state machine, driven by raw frames from a guest (hotPath)
// against a real host peer on loopback, one transition at a time.

// tcpPeer opens a connection through the engine and returns the host
// peer's end of it.
func tcpPeer(t *testing.T) (*hotPath, net.Conn) {
	conns := make(chan net.Conn, 1)
	h := newHotPath(t, func(c net.Conn) { conns <- c })
	c := <-conns
	t.Cleanup(func() { c.Close() })
	h.readFrames(func(header.TCP) {})
	return h, c
}

// flow is the engine's only flow, or nil.
func (h *hotPath) flow() *tcpFlow {
	var f *tcpFlow
	h.e.tcp.each(func(_ int32, fl *tcpFlow) { f = fl })
	return f
}

// receiveStream receives, in order, the stream from start on, after the
// part had, until it is as long as data, and checks it is data.
func (h *hotPath) receiveStream(t *testing.T, start uint32, had, data []byte) {
	t.Helper()
	stream := had
	h.receive(t, false, func(s header.TCP) bool {
		if s.Seq() == start+uint32(len(stream)) {
			stream = append(stream, s.Payload()...)
		}
		return len(stream) >= len(data)
	})
	if !bytes.Equal(stream, data) {
		t.Fatalf("the guest got %d bytes, not the stream", len(stream))
	}
}

// receive runs the engine until cond holds for what the guest got,
// acknowledging data (and a FIN) as a guest would, unless noAck.
func (h *hotPath) receive(t *testing.T, noAck bool, cond func(s header.TCP) bool) {
	t.Helper()
	for range 200 {
		h.e.turn(5)
		done := false
		h.readFrames(func(s header.TCP) {
			if n := len(s.Payload()); n > 0 && s.Seq() == h.ack && !noAck {
				h.ack += uint32(n)
			}
			if s.Flags()&header.TCPFin != 0 && s.Seq() == h.ack && !noAck {
				h.ack++
			}
			done = done || cond(s)
		})
		if !noAck {
			h.send(h.segment(header.TCPAck, 0))
		}
		if done {
			return
		}
	}
	t.Fatal("the guest never got what it waited for")
}

func isFin(s header.TCP) bool { return s.Flags()&header.TCPFin != 0 }
func isRst(s header.TCP) bool { return s.Flags()&header.TCPRst != 0 }

func TestTCPHandshake(t *testing.T) {
	h, _ := tcpPeer(t)
	if f := h.flow(); f == nil || f.state != tcpEstablished {
		t.Fatalf("after the handshake: %v", f)
	}
}

// TestTCPGuestHalfClose: the guest's FIN is the host's end of stream;
// the host can still send, and its close ends the flow.
func TestTCPGuestHalfClose(t *testing.T) {
	h, c := tcpPeer(t)
	h.send(h.segment(header.TCPFin|header.TCPAck, 0))
	h.seq++
	h.e.turn(10)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("host read %d, %v after the guest's FIN; want EOF", n, err)
	}
	if st := h.flow().state; st != tcpEstablished|tcpGuestFin {
		t.Fatalf("state %v", st)
	}
	c.Write([]byte("still here"))
	got := 0
	h.receive(t, false, func(s header.TCP) bool { got += len(s.Payload()); return got == 10 })
	c.Close()
	h.receive(t, false, isFin)
	h.e.turn(5)
	if h.e.tcp.count != 0 {
		t.Fatalf("flow left after both FINs: %v", h.flow().state)
	}
}

// TestTCPHostHalfClose: the host's end of stream is our FIN to the guest;
// the guest can still send, and its FIN ends the flow.
func TestTCPHostHalfClose(t *testing.T) {
	h, c := tcpPeer(t)
	c.(*net.TCPConn).CloseWrite()
	h.receive(t, false, isFin)
	h.e.turn(5)
	if st := h.flow().state; st&(tcpHostEOF|tcpFinSent|tcpFinAcked) != tcpHostEOF|tcpFinSent|tcpFinAcked {
		t.Fatalf("state %v", st)
	}
	h.upload(5)
	buf := make([]byte, 16)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); n != 5 || err != nil {
		t.Fatalf("host read %d, %v after its half-close", n, err)
	}
	h.send(h.segment(header.TCPFin|header.TCPAck, 0))
	h.seq++
	h.e.turn(5)
	if h.e.tcp.count != 0 {
		t.Fatalf("flow left after both FINs: %v", h.flow().state)
	}
}

// TestTCPGuestReset: the guest's RST resets the host connection.
func TestTCPGuestReset(t *testing.T) {
	h, c := tcpPeer(t)
	h.send(h.segment(header.TCPRst, 0))
	h.e.turn(10)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("host read after the guest's RST: %v, want a reset", err)
	}
	if h.e.tcp.count != 0 {
		t.Fatal("flow left after the guest's RST")
	}
}

// TestTCPHostReset: the host's RST resets the guest's connection.
func TestTCPHostReset(t *testing.T) {
	h, c := tcpPeer(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	h.receive(t, true, isRst)
	if h.e.tcp.count != 0 {
		t.Fatal("flow left after the host's RST")
	}
}

// TestTCPRetransmission: data the guest does not acknowledge is sent
// again from the same sequence number after the retransmission timeout,
// peeked again from the socket.
func TestTCPRetransmission(t *testing.T) {
	h, c := tcpPeer(t)
	c.Write([]byte("lost once"))
	var first uint32
	h.receive(t, true, func(s header.TCP) bool { first = s.Seq(); return len(s.Payload()) == 9 })
	h.e.start = h.e.start.Add(-tcpRTO - time.Second)
	h.e.lastTick = 0
	again := false
	h.receive(t, true, func(s header.TCP) bool {
		again = string(s.Payload()) == "lost once" && s.Seq() == first
		return again
	})
	if f := h.flow(); f.retries != 1 {
		t.Errorf("retries %d after one timeout, want 1", f.retries)
	}
}

// TestTCPZeroWindow: nothing goes to a guest whose window is closed; its
// window update lets the data through.
func TestTCPZeroWindow(t *testing.T) {
	h, c := tcpPeer(t)
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	c.Write([]byte("wait for it"))
	for range 20 {
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			if len(s.Payload()) > 0 {
				t.Fatalf("data sent into a zero window: %q", s.Payload())
			}
		})
	}
	h.wnd = 0xffff
	h.send(h.segment(header.TCPAck, 0))
	h.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "wait for it" })
}

// TestTCPStaleWindow: an older ACK, reordered behind a newer one, does
// not take back the window the newer one gave; the newer segment again
// can.
func TestTCPStaleWindow(t *testing.T) {
	h, c := tcpPeer(t)
	old := h.ack
	c.Write([]byte("first"))
	h.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "first" })
	want := h.flow().guestWnd
	ack, wnd := h.ack, h.wnd
	h.ack, h.wnd = old, 0
	h.send(h.segment(header.TCPAck, 0))
	h.ack, h.wnd = ack, wnd
	h.e.turn(5)
	if got := h.flow().guestWnd; got != want {
		t.Fatalf("window %d after an older ACK, want %d", got, want)
	}
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	if got := h.flow().guestWnd; got != 0 {
		t.Fatalf("window %d after the guest closed it, want 0", got)
	}
}

// TestTCPSmallWindowUpdate: a window smaller than a segment, offered
// because the host socket's buffer is nearly full, is updated once the
// buffer drains, with nothing from the guest to answer. A guest does not
// send a segment that its window cannot take whole; it would wait for
// its persist timer, 200 ms and more, each time.
func TestTCPSmallWindowUpdate(t *testing.T) {
	h, c := tcpPeer(t)
	f := h.flow()
	if _, ok := sockMeminfo(f.fd); !ok {
		t.Skip("no SO_MEMINFO (qemu-user): without the kernel's counts, the guest's probe asks for the window")
	}
	unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 256<<10)
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	wnd := func(s header.TCP) int { return int(s.Window()) << f.ourWS }
	last := f.mss
	for range 10000 {
		if last < f.mss {
			break
		}
		h.send(h.segment(header.TCPAck|header.TCPPsh, 1400))
		h.seq += 1400
		h.e.turn(0)
		h.readFrames(func(s header.TCP) { last = wnd(s) })
	}
	if last == 0 || last >= f.mss {
		t.Skipf("the window went from a segment to %d at once", last)
	}
	go io.Copy(io.Discard, c)
	h.receive(t, true, func(s header.TCP) bool { return wnd(s) >= f.mss })
}

// TestTCPHoldIn: a flow stopped at the guest's window stops watching its
// host socket, so host data does not wake the engine; the guest's ACK
// sends what came meanwhile, and once drained the flow watches again.
func TestTCPHoldIn(t *testing.T) {
	h, c := tcpPeer(t)
	h.wnd = 8 // 1 KiB at the guest's window scale (7)
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	start := h.ack
	c.Write(make([]byte, 4000))
	h.receive(t, true, func(s header.TCP) bool { return len(s.Payload()) > 0 })
	f := h.flow()
	if f.flags&tcpInOff == 0 {
		t.Fatal("a flow at the guest's window still watches its host socket")
	}
	c.Write(make([]byte, 4000))
	time.Sleep(20 * time.Millisecond)
	if h.e.turn(5); h.e.hadEvents() {
		t.Error("host data woke the engine while the guest's window was full")
	}
	h.wnd = 0xffff
	h.receive(t, false, func(header.TCP) bool { return h.ack == start+8000 })
	if f.flags&tcpInOff != 0 {
		t.Error("the flow still ignores its host socket after draining it")
	}
	c.Write([]byte("more"))
	h.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "more" })
}

// TestIovSum: a payload summed in pieces of odd and even sizes, cut
// short in its last piece, as a peek into guest buffers leaves it, sums
// as the bytes would in one run.
func TestIovSum(t *testing.T) {
	data := make([]byte, 9001)
	for i := range data {
		data[i] = byte(i*13 + i>>7)
	}
	var iov []unix.Iovec
	for off, size := 0, 1; off < len(data); off, size = off+size, size*3+1 {
		size = min(size, len(data)-off)
		iov = append(iov, iovec(&data[off], size))
	}
	for _, n := range []int{1, 2, 5, 1000, 8999, 9001} {
		if got, want := header.Fold(iovSum(iov, n)), header.Fold(header.Checksum(data[:n], 0)); got != want {
			t.Errorf("%d bytes in pieces: %#04x, want %#04x", n, got, want)
		}
	}
	if got := trimIov(iov, 2, 6); len(got) != 3 || got[2].Len != 6 {
		t.Errorf("trimmed to 6 bytes from piece 2: %d pieces, the last of %d", len(got), got[len(got)-1].Len)
	}
}

// TestTCPDataFromTail: a segment whose data runs on past the frame's
// head into a tail (vhost-user leaves it in guest memory) reaches the
// host whole, in order, without the padding after it; one whose IP
// length claims more than head and tail hold is refused and writes
// nothing.
func TestTCPDataFromTail(t *testing.T) {
	h, c := tcpPeer(t)
	const n = 3000
	split := func() ([]byte, []unix.Iovec) {
		seg := h.segment(header.TCPAck|header.TCPPsh, n)[4:]
		for i := range n {
			seg[54+i] = byte(i * 7)
		}
		head := append([]byte(nil), seg[:qemusock.HeadCopy]...)
		rest := append(append([]byte(nil), seg[qemusock.HeadCopy:]...), make([]byte, 11)...) // and padding
		return head, []unix.Iovec{{Base: &rest[0], Len: 1001}, {Base: &rest[1001], Len: 998},
			iovec(&rest[1999], len(rest)-1999)}
	}
	head, tail := split()
	h.e.frameInput(head, tail)
	h.e.inputDone()
	h.seq += n
	got := make([]byte, n)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != byte(i*7) {
			t.Fatalf("byte %d differs", i)
		}
	}

	// Data to no flow, without ACK: the reset acknowledges all of it,
	// tail included.
	head, tail = split()
	header.TCP(head[34:]).Encode(header.TCPFields{SrcPort: 40001, DstPort: h.dport, Seq: 7000, Flags: header.TCPPsh, Window: 1, HeaderLen: header.TCPMinLen})
	h.e.frameInput(head, tail)
	h.e.turn(0)
	var rst header.TCP
	h.readFrames(func(s header.TCP) {
		if isRst(s) {
			rst = append(header.TCP(nil), s...)
		}
	})
	if rst == nil || rst.Ack() != 7000+n {
		t.Errorf("reset to data in a tail: %v", rst)
	}

	malformed := h.e.Stats.Malformed
	head, tail = split()
	h.e.frameInput(head, tail[:2])
	h.e.inputDone()
	if h.e.Stats.Malformed != malformed+1 {
		t.Error("a truncated segment was not refused")
	}
	c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if k, _ := c.Read(got); k > 0 {
		t.Errorf("%d bytes of a truncated segment reached the host", k)
	}
}

// TestTCPSimultaneousClose: the host peer closes and the guest sends its
// FIN before it has our FIN; its ACK of our FIN follows in the same batch.
// The guest's FIN is acknowledged before the flow ends: a guest left in
// CLOSING would send it again and get a reset.
func TestTCPSimultaneousClose(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	var finSeq uint32
	h.receive(t, true, func(s header.TCP) bool { finSeq = s.Seq(); return isFin(s) })
	h.send(h.segment(header.TCPFin|header.TCPAck, 0)) // crosses our FIN
	h.seq++
	h.ack = finSeq + 1
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(10)
	acked := false
	h.readFrames(func(s header.TCP) { acked = acked || s.Flags()&header.TCPAck != 0 && s.Ack() == h.seq })
	if !acked {
		t.Error("the guest's FIN was never acknowledged")
	}
	if h.e.tcp.count != 0 {
		t.Errorf("flow left after both FINs: %v", h.flow().state)
	}
}

// hadEvents tells whether the engine's last turn had events other than a
// control call alone (turn's lastBusy).
func (e *Engine) hadEvents() bool { return e.lastBusy == e.now }

// TestTCPGapFilledInBatch: a batch of guest frames whose second segment
// fills the gap before its first, as a guest in loss recovery sends
// them, gets both to the host peer, acknowledged at once; a segment past
// a gap that the batch leaves open is dropped.
func TestTCPGapFilledInBatch(t *testing.T) {
	h, c := tcpPeer(t)
	seg := func(at int, p string) []byte {
		return h.raw(rawSeg{flags: header.TCPAck, seq: h.seq + uint32(at), ack: h.ack, wnd: 0xffff, payload: []byte(p)})
	}
	h.send(bytes.Join([][]byte{seg(6, "second"), seg(20, "lost"), seg(0, "first ")}, nil))
	h.e.turn(1)
	acked := h.seq
	h.readFrames(func(s header.TCP) {
		if seqLT(acked, s.Ack()) {
			acked = s.Ack()
		}
	})
	if acked != h.seq+12 {
		t.Fatalf("the engine acknowledged %d bytes, not 12", acked-h.seq)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	got := make([]byte, 12)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "first second" {
		t.Fatalf("the host read %q, %v", got, err)
	}
}

// TestTCPHostResetRepeated: the host's RST reaches the guest again, with
// the same sequence number, tcpResetCopies times at growing gaps, as one
// lost would leave a guest that only reads waiting; then no more. A new
// connection on the same addresses gets none of the old one's.
func TestTCPHostResetRepeated(t *testing.T) {
	h, c := tcpPeer(t)
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	var seq uint32
	h.receive(t, true, func(s header.TCP) bool { seq = s.Seq(); return isRst(s) })
	resets := func(d time.Duration) (n int) {
		h.jump(d)
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			if !isRst(s) || s.Seq() != seq || s.Flags()&header.TCPAck != 0 {
				t.Fatalf("after the RST: %v seq %d, want the RST again at %d", s.Flags(), s.Seq(), seq)
			}
			n++
		})
		return n
	}
	if n := resets(tcpResetGap / 2); n != 0 {
		t.Fatalf("%d RSTs again before tcpResetGap", n)
	}
	for i := range tcpResetCopies {
		if n := resets(tcpResetGap << (2 * i)); n != 1 {
			t.Fatalf("copy %d: %d RSTs, want 1", i+1, n)
		}
	}
	if n := resets(time.Minute); n != 0 || h.e.tcp.resetsOwed != 0 {
		t.Fatalf("%d RSTs after the last copy, %d owed", n, h.e.tcp.resetsOwed)
	}

	h.e.tcp.keepReset(&tcpFlow{key: tcpKey{guest: netip.AddrPortFrom(hpGuest, 40000),
		remote: netip.AddrPortFrom(hpGateway, h.dport)}, sndNxt: seq}, h.e.now)
	h.seq += 1000
	h.send(h.segment(header.TCPSyn, 0))
	h.e.turn(20)
	if h.flow() == nil || h.e.tcp.resetsOwed != 0 {
		t.Fatalf("a new flow on the same addresses: flow %v, %d RSTs still owed", h.flow(), h.e.tcp.resetsOwed)
	}
}
