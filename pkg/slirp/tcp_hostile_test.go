package slirp

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// hostWrite writes p from the host peer c in the background. stalled
// counts the turns the guest waited for data with nothing more to come
// from the host, and tells when that was too many: the bound is on turns
// without progress once everything was written, not on time.
func hostWrite(c net.Conn, p []byte) (stalled func(progress bool) bool) {
	done := make(chan struct{})
	go func() { c.Write(p); close(done) }()
	idle, turns := 0, 0
	return func(progress bool) bool {
		turns++
		select {
		case <-done:
			if idle++; progress {
				idle = 0
			}
		default:
		}
		return idle > 2000 || turns > 100000
	}
}

// pattern is n bytes that differ from their neighbours, so a byte lost,
// repeated or moved shows.
func pattern(n, salt int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8 + salt)
	}
	return b
}

// uploadData sends p as the guest's data, in segments of up to 1400
// bytes, and lets the engine write it.
func (h *hotPath) uploadData(t *testing.T, p []byte) {
	t.Helper()
	for len(p) > 0 {
		n := min(len(p), 1400)
		seg := h.segment(header.TCPAck|header.TCPPsh, n)
		copy(seg[len(seg)-n:], p[:n])
		h.send(seg)
		h.seq += uint32(n)
		p = p[n:]
		h.e.turn(0)
		h.readFrames(func(header.TCP) {})
	}
	h.e.turn(10)
	h.readFrames(func(header.TCP) {})
	if f := h.flow(); f == nil || f.rcvNxt != h.seq {
		t.Fatalf("the engine took the guest's data up to %d, want %d", f.rcvNxt, h.seq)
	}
}

// TestTCPOrderlyCloseKeepsUpload: the guest uploads to a host peer that
// does not read yet, half-closes, then gets the peer's reply and FIN and
// acknowledges them in one ACK, which ends the flow. The host socket
// must close orderly: the upload still queued in it reaches the peer
// whole, then EOF, not a reset that throws it away.
func TestTCPOrderlyCloseKeepsUpload(t *testing.T) {
	for _, ackWithFin := range []bool{false, true} {
		name := "fin first"
		if ackWithFin {
			name = "fin with ack"
		}
		t.Run(name, func(t *testing.T) {
			h, c := tcpPeer(t)
			up := pattern(1<<20, 3)
			h.uploadData(t, up)
			if !ackWithFin {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
				h.e.turn(10)
				h.readFrames(func(header.TCP) {})
			}
			c.Write([]byte("reply"))
			c.(*net.TCPConn).CloseWrite()
			fin := false
			for i := 0; i < 200 && !fin; i++ {
				h.e.turn(10)
				h.readFrames(func(s header.TCP) {
					if p := s.Payload(); len(p) > 0 && s.Seq() == h.ack {
						h.ack += uint32(len(p))
					}
					if isFin(s) && s.Seq() == h.ack {
						h.ack++
						fin = true
					}
				})
			}
			if !fin {
				t.Fatal("no FIN from the host")
			}
			if ackWithFin {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			} else {
				h.send(h.segment(header.TCPAck, 0))
			}
			h.e.turn(10)
			if h.e.tcp.count != 0 {
				t.Fatalf("flow left after both FINs: %v", h.flow().state)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, up) {
				t.Fatalf("the host peer read %d of %d bytes (equal %v), then %v; want all, then EOF",
					len(got), len(up), bytes.Equal(got, up), err)
			}
		})
	}
}

// hostileGuest receives a host stream through a hotPath as an unusual
// guest would: it loses frames, leaves them unread so the link fills,
// acknowledges part of what it got, repeats ACKs, sends ACKs from the
// past and the future, shrinks its window to nothing or under a segment
// and opens it again, uploads now and then, and lets the retransmission
// timer run out. It checks every byte it gets against the stream.
type hostileGuest struct {
	t     *testing.T
	h     *hotPath
	f     *tcpFlow
	rng   *rand.Rand
	want  []byte
	base  uint32 // sequence number of the stream's first byte
	rcv   uint32 // next in-order byte
	edge  uint32 // the window's right edge, as the engine keeps to it
	fin   bool
	lossy bool

	parked, waitTap int // checks that found bytes parked, the flow waiting for the link
}

func (g *hostileGuest) take(s header.TCP) {
	p := s.Payload()
	off := int(int32(s.Seq() - g.base))
	if len(p) > 0 {
		if off < 0 || off+len(p) > len(g.want) {
			g.t.Fatalf("segment at stream offset %d, %d bytes, outside the %d-byte stream", off, len(p), len(g.want))
		}
		if !bytes.Equal(p, g.want[off:off+len(p)]) {
			g.t.Fatalf("segment at stream offset %d, %d bytes, differs from the stream", off, len(p))
		}
	}
	if g.lossy && g.rng.IntN(8) == 0 {
		return // lost
	}
	// In order, as far as the window goes: the guest drops what lies
	// past it, as a guest whose window shrank does.
	if end := s.Seq() + uint32(len(p)); len(p) > 0 && !seqLT(g.rcv, s.Seq()) && seqLT(g.rcv, end) {
		if seqLT(g.edge, end) {
			end = g.edge
		}
		if seqLT(g.rcv, end) {
			g.rcv = end
		}
	}
	if isFin(s) {
		if int(s.Seq()-g.base) != len(g.want) {
			g.t.Fatalf("FIN at stream offset %d, want %d", int(s.Seq()-g.base), len(g.want))
		}
		if s.Seq() == g.rcv && g.rcv != g.edge {
			g.rcv++
			g.fin = true
		}
	}
	if isRst(s) {
		g.t.Fatalf("reset at stream offset %d", int(s.Seq()-g.base))
	}
}

// check holds the engine's bookkeeping against the kernel's: the peek
// offset is where the guest's stream goes on, past the bytes parked.
func (g *hostileGuest) check() {
	f := g.f
	if f.fd < 0 || f.state == 0 {
		return
	}
	if !f.peekOff {
		if f.unread != 0 {
			g.t.Fatalf("%d bytes parked without SO_PEEK_OFF", f.unread)
		}
		return
	}
	off, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff)
	if err != nil {
		g.t.Fatal(err)
	}
	inflight := f.sndNxt - f.sndUna
	if f.state&tcpFinSent != 0 {
		inflight--
	}
	if uint32(off) != f.unread+inflight {
		g.t.Fatalf("peek offset %d, want %d parked + %d in flight (state %v, flags %#x)", off, f.unread, inflight, f.state, f.flags)
	}
	if f.unread > 0 {
		g.parked++
	}
	if f.flags&tcpWaitTap != 0 {
		g.waitTap++
	}
	if f.unread >= tcpDiscardBatch {
		g.t.Fatalf("%d bytes parked", f.unread)
	}
	if f.unread > 0 && f.flags&(tcpWndFull|tcpWaitTap) == 0 && f.state&tcpFinSent == 0 {
		g.t.Fatalf("%d bytes parked in a flow that peeks nothing soon (state %v, flags %#x)", f.unread, f.state, f.flags)
	}
}

// ackSeg is an ACK from the guest. It may acknowledge less than the
// guest got, or come from the past or the future; its window is any,
// but never shrinks below what the guest already took: a guest that
// takes bytes and then says they were past its window leaves the engine
// no way to tell what it has, and stalls itself.
func (g *hostileGuest) ackSeg() []byte {
	h, r := g.h, g.rng
	switch r.IntN(10) {
	case 0:
		h.ack = g.rcv - uint32(r.IntN(70000)) // the past, maybe before what it acknowledged
	case 1:
		h.ack = g.f.sndNxt + 1<<30 + uint32(r.IntN(70000)) // never sent, even after this turn's peeks
	case 2, 3:
		h.ack = g.rcv - uint32(r.IntN(int(g.rcv-g.f.sndUna)+1)) // part of what it got
	default:
		h.ack = g.rcv
	}
	switch r.IntN(8) {
	case 0:
		h.wnd = 0
	case 1:
		h.wnd = uint16(1 + r.IntN(600)) // under a segment
	case 2:
		h.wnd = uint16(1 + r.IntN(0xffff))
	case 3: // as it was: maybe a duplicate
	case 4:
		h.wnd = 0xffff
	default:
		h.wnd = uint16(8 + r.IntN(1024)) // 1 to 128 KiB: the flow stops at it
	}
	if got := int32(g.rcv - h.ack); got > 0 && int32(h.wnd)<<7 < got {
		h.wnd = uint16((got + 127) >> 7)
	}
	return append([]byte(nil), h.segment(header.TCPAck, 0)...)
}

func (g *hostileGuest) step(hostile bool) {
	h, r := g.h, g.rng
	g.lossy = hostile
	if hostile && r.IntN(4) == 0 {
		h.e.turn(0) // leave the frames unread: the link fills
	} else {
		h.e.turn(1)
		if g.f.fd >= 0 {
			g.edge = g.f.sndUna + g.f.guestWnd
		}
		h.readFrames(g.take)
	}
	g.check()
	if !hostile {
		h.ack, h.wnd = g.rcv, 0xffff
		h.send(h.segment(header.TCPAck, 0))
		return
	}
	var batch []byte
	for range 1 + r.IntN(5) {
		batch = append(batch, g.ackSeg()...)
	}
	if r.IntN(3) == 0 { // the same ACK again, thrice
		for range 3 {
			batch = append(batch, h.segment(header.TCPAck, 0)...)
		}
	}
	h.send(batch)
	switch r.IntN(20) {
	case 0:
		if g.f.retries >= 4 {
			break // not so often that the engine gives up on the guest
		}
		h.e.start = h.e.start.Add(-tcpRTO << 2) // the retransmission timer runs out
		h.e.lastTick = 0
	case 1: // an upload: a write between peeks
		n := 1 + r.IntN(3000)
		h.ack = g.rcv
		h.send(h.segment(header.TCPAck|header.TCPPsh, n))
		h.seq += uint32(n)
	}
}

// shrinkLink makes the engine's end of the guest's socket hold little,
// so a guest that reads slowly fills the link.
func shrinkLink(t *testing.T, h *hotPath) {
	peer, err := unix.Getpeername(h.guest)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, d := range entries {
		fd, _ := strconv.Atoi(d.Name())
		sa, err := unix.Getsockname(fd)
		if fd == h.guest || err != nil {
			continue
		}
		if u, ok := sa.(*unix.SockaddrUnix); !ok || u.Name != peer.(*unix.SockaddrUnix).Name {
			continue
		}
		if l, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); l == 0 {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
			return
		}
	}
	t.Fatal("no engine end of the guest's socket")
}

// TestTCPHostileGuestDownload: whatever the guest does with its ACKs,
// windows and frames, a download reaches it byte for byte, then the
// FIN, and the engine's peek offset keeps track of the bytes it parks.
func TestTCPHostileGuestDownload(t *testing.T) {
	for seed := range uint64(24) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { hostileDownload(t, seed, 0) })
	}
}

// TestTCPHostUrgentData: urgent data from the host peer (MSG_OOB) is
// part of the stream the guest gets, in place, as a relay keeps it
// (SO_OOBINLINE): a peek or a drop that stops at the urgent mark must
// neither stall the flow, nor repeat, skip or shift a byte.
func TestTCPHostUrgentData(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { hostileDownload(t, seed, 100<<10+int(seed)*777) })
	}
}

// TestTCPHostUrgentDataSignals: as TestTCPHostUrgentData, while the
// engine's thread takes signals without pause. A read or a peek that
// starts at urgent data fails while one is pending (signalThread): the
// flow must neither be reset nor stall.
func TestTCPHostUrgentDataSignals(t *testing.T) {
	for _, seed := range []uint64{0, 3} { // with SO_PEEK_OFF, and without
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			defer signalThread()()
			hostileDownload(t, seed, 30<<10+int(seed)*777)
		})
	}
}

// TestTCPHostUrgentWhileHeld: urgent data and the host peer's FIN that
// come while the flow is held at the guest's window (tcpHoldIn, with
// EPOLLPRI unwatched) are reported as the FIN alone. Peeks at the urgent
// mark then fail (EAGAIN) while the engine's thread has a signal pending,
// and must not be taken for the end of the stream, or the guest has the
// FIN before the urgent byte and the bytes after it. The guest's
// duplicate ACKs at the mark rewind the flow there, again and again, so
// that some peek meets a signal (signalThread).
func TestTCPHostUrgentWhileHeld(t *testing.T) {
	h, c := tcpPeer(t)
	if !h.flow().peekOff {
		// Without, the flow peeks from the queue's head, and goes past
		// the mark only once the guest acknowledged what lies before.
		t.Skip("the rewind to the urgent mark needs SO_PEEK_OFF (qemu-user has none)")
	}
	h.wnd = 8 // 1 KiB at the guest's window scale (7)
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	start := h.ack
	want := pattern(4000, 0)
	var got []byte
	inOrder := func(s header.TCP) {
		if s.Seq() == start+uint32(len(got)) {
			got = append(got, s.Payload()...)
		}
	}
	c.Write(want[:3000])
	h.receive(t, true, func(s header.TCP) bool { inOrder(s); return len(got) >= 1024 })
	f := h.flow()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Write(func(fd uintptr) bool { unix.Sendto(int(fd), want[3000:3001], unix.MSG_OOB, nil); return true })
	c.Write(want[3001:])
	c.(*net.TCPConn).CloseWrite()
	for deadline := time.Now().Add(5 * time.Second); f.state&tcpHostRdhup == 0; h.e.turn(5) {
		if time.Now().After(deadline) {
			t.Fatal("the host peer's FIN never came")
		}
	}
	if f.flags&(tcpInOff|tcpUrgent) != tcpInOff {
		t.Fatalf("flags %#x: the flow should be held, the urgent data unseen", f.flags)
	}
	defer signalThread()()
	fin, fins := start+uint32(len(want)), 0
	checkFin := func(s header.TCP) {
		if !isFin(s) {
			return
		}
		if s.Seq() != fin {
			t.Fatalf("the guest had the FIN at byte %d of %d", s.Seq()-start, len(want))
		}
		fins++
	}
	h.ack, h.wnd = start+uint32(len(got)), 0xffff
	h.send(h.segment(header.TCPAck, 0))
	h.receive(t, true, func(s header.TCP) bool { inOrder(s); checkFin(s); return isFin(s) })
	if !bytes.Equal(got, want) {
		t.Fatalf("the guest had %d bytes of %d", len(got), len(want))
	}
	h.ack = start + 3000 // the urgent mark
	h.send(h.segment(header.TCPAck, 0))
	dups := bytes.Repeat(h.segment(header.TCPAck, 0), 3)
	// Each three are a rewind to the mark, and a peek there, then on to
	// the FIN.
	for deadline := time.Now().Add(2 * time.Second); fins < 15000 && time.Now().Before(deadline); {
		h.send(dups)
		h.e.turn(0)
		h.readFrames(checkFin)
	}
	if fins < 10 {
		t.Fatalf("%d rewinds to the urgent mark", fins)
	}
}

// TestTCPUnixForwardUrgentData: the unix socket behind a diverted
// gateway port (AddUnixForward) is a host peer too, and may send urgent
// data (MSG_OOB, which unix stream sockets take since Linux 5.15). Out of
// line, a peek from an offset reads the urgent byte, but a read drops it:
// the drop of the bytes the guest acknowledged came up short and reset
// the flow, or, with more queued, took a byte the guest never had. The
// byte must come in place, as from a TCP peer.
func TestTCPUnixForwardUrgentData(t *testing.T) {
	u, c := unixForwardConn(t, 0xffff)

	want := []byte("abcdefghij")
	start := u.ack
	var got []byte
	take := func(s header.TCP) {
		if isRst(s) {
			t.Fatalf("the flow was reset after %q", got)
		}
		if s.Seq() == start+uint32(len(got)) {
			got = append(got, s.Payload()...)
		}
	}
	c.Write(want[:3])
	raw, _ := c.(*net.UnixConn).SyscallConn()
	var err error
	raw.Write(func(fd uintptr) bool { err = unix.Sendto(int(fd), want[3:4], unix.MSG_OOB, nil); return true })
	if err != nil {
		t.Skipf("no urgent data on unix sockets: %v", err)
	}
	c.Write(want[4:7])
	u.receive(t, false, func(s header.TCP) bool { take(s); return len(got) >= 7 })
	u.e.turn(10) // the guest's ACK drops what it acknowledged
	c.Write(want[7:])
	c.(*net.UnixConn).CloseWrite()
	u.receive(t, false, func(s header.TCP) bool { take(s); return isFin(s) })
	if !bytes.Equal(got, want) {
		t.Fatalf("the guest had %q, want %q", got, want)
	}
}

// divertedPort diverts the gateway's port 2222 to the unix socket path
// (AddUnixForward), and returns a guest's connection to it, not yet
// opened, beside h's.
func divertedPort(t *testing.T, h *hotPath, path string) *hotPath {
	t.Helper()
	const port = 2222
	h.e.host.(*LocalHost).SetSpecial(port, &Special{Path: path})
	if err := h.e.AddUnixForward(port, path); err != nil {
		t.Fatal(err)
	}
	return &hotPath{e: h.e, rd: h.rd, guest: h.guest, frame: h.frame, seq: 7000, wnd: 0xffff, dport: port}
}

// unixForwardConn opens a guest's connection through a diverted port
// (divertedPort) to a unix socket of its own, the guest's window wnd
// (scaled by 2^7), and returns it and the socket's accepted peer.
func unixForwardConn(t *testing.T, wnd uint16) (*hotPath, net.Conn) {
	t.Helper()
	h, _ := tcpPeer(t)
	path := filepath.Join(t.TempDir(), "svc")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u := divertedPort(t, h, path)
	u.send(u.segment(header.TCPSyn, 0))
	if acked, _ := u.synAnswer(5 * time.Second); !acked {
		t.Fatal("no SYN-ACK from the diverted port")
	}
	u.seq++
	u.wnd = wnd
	u.send(u.segment(header.TCPAck, 0))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return u, c
}

// synAnswer runs the engine until the guest's SYN to u's port is
// answered, for at most d: a SYN-ACK (acked, which sets u.ack) or a
// reset (refused).
func (u *hotPath) synAnswer(d time.Duration) (acked, refused bool) {
	for deadline := time.Now().Add(d); !acked && !refused && time.Now().Before(deadline); {
		u.e.turn(10)
		u.readFrames(func(s header.TCP) {
			switch {
			case s.SrcPort() != u.dport:
			case isRst(s):
				refused = true
			case s.Flags()&header.TCPSyn != 0:
				u.ack, acked = s.Seq()+1, true
			}
		})
	}
	return acked, refused
}

// TestTCPUnixForwardBacklogFull: a guest's SYN to a diverted gateway port
// whose unix socket has its backlog full (connect fails, EAGAIN) is
// dropped, as a host's full backlog drops a SYN, not refused: the guest's
// next SYN gets through once the service has taken the waiting client.
func TestTCPUnixForwardBacklogFull(t *testing.T) {
	h, _ := tcpPeer(t)
	path := filepath.Join(t.TempDir(), "svc")
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(l, 0) // room for one waiting client
	waiting, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(waiting)
	if err := unix.Connect(waiting, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	u := divertedPort(t, h, path)
	flows := h.e.tcp.count
	u.send(u.segment(header.TCPSyn, 0))
	if acked, refused := u.synAnswer(200 * time.Millisecond); acked || refused || h.e.tcp.count != flows {
		t.Fatalf("a SYN to a full backlog: answered %v, refused %v, %d flows more", acked, refused, h.e.tcp.count-flows)
	}
	c, _, err := unix.Accept(l)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(c)
	u.send(u.segment(header.TCPSyn, 0)) // the guest's retransmission
	if acked, refused := u.synAnswer(5 * time.Second); !acked {
		t.Fatalf("no SYN-ACK once the backlog had room (refused %v)", refused)
	}
}

// hostileDownload runs a hostileGuest on a download of 8 MiB, whose
// host peer sends every urgent-th byte as urgent data, unless urgent is
// 0. Seeds 3 and 7 (mod 4) peek without SO_PEEK_OFF; odd seeds have a
// small link.
func hostileDownload(t *testing.T, seed uint64, urgent int) {
	h, c := tcpPeer(t)
	f := h.flow()
	var logBuf bytes.Buffer
	h.e.cfg.Log, h.e.cfg.Debug = log.New(&logBuf, "", 0), true
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(logBuf.String())
		}
	})
	if seed%4 == 3 {
		if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, -1); err != nil && err != unix.ENOPROTOOPT {
			t.Fatal(err)
		}
		f.peekOff = false
	}
	if seed%2 == 1 {
		shrinkLink(t, h)
	}
	g := &hostileGuest{t: t, h: h, f: f, rng: rand.New(rand.NewPCG(seed, 7)),
		want: pattern(8<<20+12345, int(seed)), base: h.ack, rcv: h.ack, edge: h.ack + 0xffff<<7}
	written := make(chan struct{})
	go func() {
		defer io.Copy(io.Discard, c) // what the guest uploads
		defer close(written)
		defer c.(*net.TCPConn).CloseWrite()
		if urgent == 0 {
			c.Write(g.want)
			return
		}
		raw, _ := c.(*net.TCPConn).SyscallConn()
		for off := 0; off < len(g.want); off += urgent {
			end := min(off+urgent, len(g.want))
			if _, err := c.Write(g.want[off : end-1]); err != nil {
				return
			}
			var err error
			raw.Write(func(fd uintptr) bool {
				err = unix.Sendto(int(fd), g.want[end-1:end], unix.MSG_OOB, nil)
				return err != unix.EAGAIN
			})
			if err != nil {
				return
			}
		}
	}()
	steps := 0
	for range 3000 {
		steps++
		g.step(true)
		if g.fin {
			break
		}
	}
	// A well-behaved guest then, until the FIN; stuck is turns without
	// progress once the host wrote all, not time.
	for idle, last := 0, g.rcv; !g.fin; last = g.rcv {
		select {
		case <-written:
			if idle++; g.rcv != last {
				idle = 0
			}
		default:
		}
		if idle == 10000 {
			t.Fatalf("stuck at stream offset %d of %d (state %v, flags %#x, in flight %d, parked %d)",
				int(g.rcv-g.base), len(g.want), f.state, f.flags, f.sndNxt-f.sndUna, f.unread)
		}
		if idle%2000 == 1999 { // the retransmission timer runs out
			h.e.start = h.e.start.Add(-tcpRTO << 4)
			h.e.lastTick = 0
		}
		g.step(false)
	}
	t.Logf("%d hostile steps; parked in %d checks, waiting for the link in %d", steps, g.parked, g.waitTap)
}

// TestMigrateParked moves, or fails to move, a connection whose flow
// stopped at the guest's window with acknowledged bytes parked in the
// host socket (lazy discard): the queues the destination restores, or
// the peek offset the source takes back, start at the first byte the
// guest has not acknowledged, and the guest gets the rest of the stream
// once, in order, byte for byte.
func TestMigrateParked(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(map[bool]string{false: "moved", true: "save fails"}[fail], func(t *testing.T) {
			h, c := tcpPeer(t)
			h.e.repair = startRepairHelper(t)
			want := pattern(600<<10, 5)
			stalled := hostWrite(c, want)
			base := h.ack
			var got []byte
			take := func(d *hotPath) func(header.TCP) {
				return func(s header.TCP) {
					p, off := s.Payload(), int(int32(s.Seq()-base))
					if len(p) > 0 && (off < 0 || off+len(p) > len(want) || !bytes.Equal(p, want[off:off+len(p)])) {
						t.Fatalf("a segment at stream offset %d, %d bytes, differs from the stream", off, len(p))
					}
					if len(p) > 0 && s.Seq() == d.ack {
						got = append(got, p...)
						d.ack += uint32(len(p))
					}
				}
			}
			h.wnd = 64 // 8 KiB at the guest's scale
			f := h.flow()
			for last := 0; f.unread == 0 || f.sndNxt == f.sndUna; last = len(got) {
				if stalled(len(got) != last) {
					t.Fatalf("nothing parked: %d bytes received", len(got))
				}
				h.e.turn(5)
				h.readFrames(take(h))
				h.send(h.segment(header.TCPAck, 0))
				h.e.turn(0)
			}
			t.Logf("%d bytes parked, %d in flight, %d received", f.unread, f.sndNxt-f.sndUna, len(got))
			d := h
			if fail {
				if err := h.e.migrateSave(failingWriter{}); err == nil {
					t.Fatal("a save that could not be written succeeded")
				}
			} else {
				d = h.migrate(t, true)
			}
			// What the host peer sent the source's socket after the save
			// reaches the destination's only when the peer retransmits it,
			// at its own timeout (200 ms at least): the guest acknowledges
			// only what came, so that a turn with nothing waits for events
			// rather than for its own ACK, and the bound on idle turns
			// outlasts that timeout.
			d.wnd = 0xffff
			d.send(d.segment(header.TCPAck, 0))
			for last := len(got); len(got) < len(want); last = len(got) {
				if stalled(len(got) != last) {
					t.Fatalf("%d of %d bytes received", len(got), len(want))
				}
				d.e.turn(5)
				if d.readFrames(take(d)); len(got) != last {
					d.send(d.segment(header.TCPAck, 0))
				}
			}
		})
	}
}

// piecesLink hands out each frame's payload in pieces, as vhost-user does
// with a guest's small RX buffers.
type piecesLink struct {
	qemusock.Link
	pieces int
}

func (l *piecesLink) ReserveV(hdr, n int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	if len(iov)+l.pieces > cap(iov) {
		return nil, iov // no room for its pieces: vhost-user gives the chains back
	}
	head, out := l.Link.ReserveV(hdr, n, iov)
	if head == nil || len(out) == len(iov) {
		return head, out
	}
	p := out[len(iov)]
	out = out[:len(iov)]
	size := int(p.Len)
	step := (size + l.pieces - 1) / l.pieces
	for off := 0; off < size; off += step {
		out = append(out, iovec((*byte)(unsafe.Add(unsafe.Pointer(p.Base), off)), min(step, size-off)))
	}
	return head, out
}

// TestTCPPeekIovFull: a peek whose frames took all the pieces a peek
// has room for (UIO_MAXIOV) before the window was full is not a
// drained socket: the rest of what the host sent reaches the guest,
// with no new data from the host to wake the flow.
func TestTCPPeekIovFull(t *testing.T) {
	h, c := tcpPeer(t)
	// 1024 pieces are 64 frames, 4 MiB: less than the window, and than
	// what the host sends.
	h.e.link = &piecesLink{Link: h.e.link, pieces: 16}
	want := pattern(6<<20, 1)
	// All of it reaches the host socket before the engine looks, the
	// flow watching it (EPOLLIN, edge-triggered): its first event is the
	// only one, as no new data comes after.
	f := h.flow()
	if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
		t.Skip(err)
	}
	if f.flags&tcpInOff != 0 {
		t.Fatal("the flow does not watch its socket")
	}
	stalled := hostWrite(c, want)
	for n := 0; inq(f.fd) < len(want); n++ {
		if n == 2000 {
			t.Fatalf("the host socket took %d of %d bytes", inq(f.fd), len(want))
		}
		time.Sleep(time.Millisecond) // the host's kernel sends; nothing to do here
	}
	base := h.ack
	for last := base; h.ack-base < uint32(len(want)); last = h.ack {
		if stalled(h.ack != last) {
			f := h.flow()
			t.Fatalf("%d of %d bytes arrived (state %v, flags %#x, in flight %d)", h.ack-base, len(want), f.state, f.flags, f.sndNxt-f.sndUna)
		}
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			p, off := s.Payload(), int(s.Seq()-base)
			if len(p) > 0 && s.Seq() == h.ack {
				if !bytes.Equal(p, want[off:off+len(p)]) {
					t.Fatalf("a segment at %d differs from the stream", off)
				}
				h.ack += uint32(len(p))
			}
		})
		h.send(h.segment(header.TCPAck, 0))
	}
}

// TestTCPUploadWindow: a guest uploads to a host peer that reads in
// bursts, while the host sends too, so peeks come between the guest's
// writes (the send buffer's room, tcpRoomKnown, is read once between
// large writes, and small ones spend it: spendRoom). A guest that keeps
// to the window we offer never has a segment refused; one that does not
// gets its data through all the same, byte for byte, by sending again
// from our ACK.
func TestTCPUploadWindow(t *testing.T) {
	// With small segments the host reads less than comes, so that the
	// send buffer fills while small writes spend its room; with tiny
	// ones, each costs the room far more than its bytes.
	for _, tc := range []struct {
		name                  string
		respect               bool
		size, maxSeg, maxRead int
	}{
		{"keeps to the window", true, 6 << 20, 32000, 256 << 10},
		{"ignores the window", false, 6 << 20, 32000, 256 << 10},
		{"keeps to the window, small segments", true, 1 << 20, tcpSmallWrite, 8 << 10},
		{"ignores the window, small segments", false, 1 << 20, tcpSmallWrite, 8 << 10},
		{"keeps to the window, tiny segments", true, 64 << 10, 64, 512},
	} {
		respect := tc.respect
		t.Run(tc.name, func(t *testing.T) {
			h, c := tcpPeer(t)
			f := h.flow()
			unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 128<<10)
			f.flags &^= tcpRoomKnown // read from the buffer as it was
			raw, _ := c.(*net.TCPConn).SyscallConn()
			raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 256<<10) })
			rng := rand.New(rand.NewPCG(1, 2))
			up := pattern(tc.size, 11)
			base := h.seq
			next, acked, edge := base, base, base+uint32(f.wndSent)<<f.ourWS
			var got []byte
			buf := make([]byte, tc.maxRead)
			stale, refused, small, spent := 0, 0, 0, 0
			for step := 0; len(got) < len(up); step++ {
				if step == 20000 {
					room, _ := sendRoom(f.fd, false)
					t.Fatalf("the host got %d of %d bytes (engine took %d, guest next %d, acked %d, edge %d; state %v flags %#x, room %d)",
						len(got), len(up), f.rcvNxt-base, next-base, acked-base, int32(edge-base), f.state, f.flags, room)
				}
				// The guest sends a few segments.
				for range rng.IntN(6) {
					off := int(next - base)
					n := min(1+rng.IntN(tc.maxSeg), len(up)-off)
					if respect {
						n = min(n, int(int32(edge-next)))
					}
					if n <= 0 {
						break
					}
					h.seq = next
					h.ack = f.sndNxt // all the host sent: the guest takes it
					seg := h.segment(header.TCPAck|header.TCPPsh, n)
					copy(seg[len(seg)-n:], up[off:off+n])
					h.send(seg)
					next += uint32(n)
				}
				h.ack = f.sndNxt
				h.send(h.segment(header.TCPAck, 0))
				if rng.IntN(4) == 0 { // the host talks too
					raw.Write(func(fd uintptr) bool {
						unix.Sendto(int(fd), up[:1+rng.IntN(20000)], unix.MSG_DONTWAIT, nil)
						return true
					})
				}
				h.e.turn(1)
				if f.flags&tcpShortWrite != 0 {
					refused++
				}
				if f.flags&tcpRoomKnown != 0 {
					if room, _ := sendRoom(f.fd, false); int(f.room)<<f.ourWS > room {
						t.Fatalf("room kept as %d, but the send buffer has room for %d", int(f.room)<<f.ourWS, room)
					}
					if f.room != f.roomRead {
						spent++
					}
				}
				progress := false
				h.readFrames(func(s header.TCP) {
					if seqLT(acked, s.Ack()) {
						acked, progress = s.Ack(), true
					}
					if s.Ack() == acked && s.Window() < 8 {
						small++
					}
					if s.Ack() == acked {
						edge = acked + uint32(s.Window())<<f.ourWS
					}
				})
				if progress {
					stale = 0
				} else if stale++; stale > 10 || seqLT(next, acked) {
					next, stale = acked, 0 // send again from what the engine took
				}
				if rng.IntN(3) == 0 { // the host reads a burst
					raw.Read(func(fd uintptr) bool {
						n, _, _ := unix.Recvfrom(int(fd), buf[:rng.IntN(len(buf))+1], unix.MSG_DONTWAIT)
						if n > 0 {
							if !bytes.Equal(buf[:n], up[len(got):len(got)+n]) {
								t.Fatalf("the host read %d bytes at %d that differ from the upload", n, len(got))
							}
							got = append(got, buf[:n]...)
						}
						return true
					})
				}
			}
			t.Logf("segments refused in %d turns; windows under 2 KiB offered %d times; room kept past writes in %d turns", refused, small, spent)
			if respect && refused > 0 {
				t.Errorf("a guest that kept to the window had data refused in %d turns", refused)
			}
			if tc.maxSeg <= tcpSmallWrite && spent == 0 {
				t.Error("small writes never kept the room known")
			}
		})
	}
}

// TestTCPUnixForwardUnreachableLogged: a guest's connection to a diverted
// gateway port whose unix socket cannot be reached is refused, and says
// why in the log without --debug, once per 10 s however often the guest
// tries: a socket's mode that the engine's user may not connect with
// was found only with --debug.
func TestTCPUnixForwardUnreachableLogged(t *testing.T) {
	h, _ := tcpPeer(t)
	var logBuf bytes.Buffer
	h.e.cfg.Log = log.New(&logBuf, "", 0)
	u := divertedPort(t, h, filepath.Join(t.TempDir(), "nobody-listens"))
	for i := range 3 {
		u.seq += uint32(i) * 100
		u.send(u.segment(header.TCPSyn, 0))
		if acked, refused := u.synAnswer(2 * time.Second); acked || !refused {
			t.Fatalf("SYN %d to an unreachable socket: answered %v, refused %v", i, acked, refused)
		}
	}
	if n := strings.Count(logBuf.String(), "TCP port 2222 of the gateway"); n != 1 || !strings.Contains(logBuf.String(), "no such file") {
		t.Errorf("%d log lines for 3 refused connections:\n%s", n, logBuf.String())
	}
}
