package slirp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// A guest made of raw frames, driving a real engine over a real unix
// socket to a real TCP sink on host loopback: the hot paths exactly as in
// production, without the network namespaces of the end-to-end tests.

var (
	hpGuest   = netip.MustParseAddr("192.0.2.2")
	hpGateway = netip.MustParseAddr("192.0.2.1")
	hpMAC     = [6]byte{2, 0, 0, 0, 0, 2}
)

type hotPath struct {
	e        *Engine
	rd       *qemusock.Reader
	guest    int // the guest's end of the stream socket
	frame    []byte
	seq, ack uint32
	wnd      uint16 // the window the guest advertises (scaled by 2^7)
	dport    uint16
}

// newHotPath connects a guest to an engine and opens one TCP connection
// through it to a server on 127.0.0.1 (the gateway, mapped) that serve
// runs.
func newHotPath(tb testing.TB, serve func(net.Conn)) *hotPath {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sink.Close() })
	go func() {
		if c, err := sink.Accept(); err == nil {
			serve(c)
		}
	}()
	path := filepath.Join(tb.TempDir(), "s")
	lfd, err := qemusock.Listen(path)
	if err != nil {
		tb.Fatal(err)
	}
	e, err := New(Config{Addr4: hpGuest, Prefix4: 24, Gateway4: hpGateway, NoUDP: true, NoICMP: true}, lfd)
	if err != nil {
		tb.Fatal(err)
	}
	g, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err := unix.Connect(g, &unix.SockaddrUnix{Name: path}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(g) })
	unix.SetNonblock(g, true)
	h := &hotPath{e: e, guest: g, frame: make([]byte, 4+qemusock.MaxFrame),
		rd: qemusock.NewReader(qemusock.QEMU, 4<<20), seq: 1000, wnd: 0xffff, dport: uint16(sink.Addr().(*net.TCPAddr).Port)}
	e.turn(100) // accept the guest

	syn := h.segment(header.TCPSyn, 0)
	h.send(syn)
	for h.ack == 0 {
		e.turn(100)
		h.readFrames(func(t header.TCP) {
			if t.Flags()&header.TCPSyn != 0 {
				h.ack = t.Seq() + 1
			}
		})
	}
	h.seq++
	h.send(h.segment(header.TCPAck, 0))
	e.turn(10)
	return h
}

// segment builds a guest frame (length prefix included) with n bytes of
// payload.
func (h *hotPath) segment(flags header.TCPFlags, n int) []byte {
	optLen := 0
	if flags&header.TCPSyn != 0 {
		optLen = header.TCPSynOptionLen
	}
	l4 := header.TCPMinLen + optLen + n
	b := h.frame[:4+header.EthernetLen+header.IPv4MinLen+l4]
	binary.BigEndian.PutUint32(b, uint32(len(b)-4)) // QEMU's framing
	header.Ethernet(b[4:]).Encode([6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, hpMAC, header.EtherTypeIPv4)
	header.IPv4(b[18:]).Encode(hpGuest, hpGateway, header.ProtoTCP, 64, l4)
	t := header.TCP(b[38:])
	t.Encode(header.TCPFields{SrcPort: 40000, DstPort: h.dport, Seq: h.seq, Ack: h.ack, Flags: flags, Window: h.wnd, HeaderLen: header.TCPMinLen + optLen})
	if optLen > 0 {
		header.EncodeSynOptions(t[header.TCPMinLen:], 65480, 7)
	}
	return b
}

func (h *hotPath) send(b []byte) {
	for len(b) > 0 {
		n, err := unix.Write(h.guest, b)
		if err == unix.EAGAIN {
			h.e.turn(1) // let the engine read
			continue
		}
		if err != nil {
			panic(err)
		}
		b = b[n:]
	}
}

// readFrames drains what the engine sent to the guest and hands fn its
// TCP segments.
func (h *hotPath) readFrames(fn func(header.TCP)) {
	if err := drainFrames(h.rd, h.guest, func(f []byte) {
		if len(f) > 34 && f[12] == 8 && f[13] == 0 && f[23] == header.ProtoTCP {
			ip := header.IPv4(f[14:])
			fn(header.TCP(f[34 : 14+int(ip.TotalLen())])) // without Ethernet padding
		}
	}); err != nil {
		panic(err)
	}
}

// drainFrames reads from the guest's end of the socket until it would
// block, calling fn with each frame (valid until fn returns).
func drainFrames(rd *qemusock.Reader, fd int, fn func([]byte)) error {
	for {
		if n, err := rd.Fill(fd); err != nil || n == 0 {
			return nil
		}
		for {
			f, err := rd.Next()
			if err != nil {
				return err
			}
			if f == nil {
				break
			}
			fn(f)
		}
	}
}

// sinkServer reads and drops everything.
func sinkServer(c net.Conn) {
	buf := make([]byte, 1<<20)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// sourceServer writes until the connection breaks.
func sourceServer(c net.Conn) {
	buf := make([]byte, 1<<20)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// download lets the engine peek host data into frames, reads them as the
// guest and acknowledges them all; it returns the bytes received.
func (h *hotPath) download() int {
	h.e.turn(10)
	got := 0
	h.readFrames(func(t header.TCP) {
		if n := len(t.Payload()); n > 0 && t.Seq() == h.ack {
			h.ack += uint32(n)
			got += n
		}
	})
	h.send(h.segment(header.TCPAck, 0))
	return got
}

// TestSpinAfterPayload: a turn that moved payload, one byte as well as
// bulk, makes the next ones poll without waiting, for up to spinMax; a
// handshake and an idle engine wait.
func TestSpinAfterPayload(t *testing.T) {
	const size = 1 << 20
	answer, more := make(chan struct{}), make(chan struct{})
	h := newHotPath(t, func(c net.Conn) {
		<-answer
		c.Write([]byte{1}) // as in request/response traffic
		<-more
		c.Write(make([]byte, size))
	})
	h.e.spin.score = spinOn // as after polls that paid
	if h.e.pollTimeout() == 0 {
		t.Error("polls after a handshake")
	}
	close(answer)
	for got := 0; got == 0; {
		got = h.download()
	}
	if h.e.pollTimeout() != 0 {
		t.Error("does not poll after a one-byte answer")
	}
	close(more)
	got, spun := 0, false
	for got < size {
		got += h.download()
		spun = spun || h.e.pollTimeout() == 0
	}
	if !spun {
		t.Error("never polled during a 1 MiB download")
	}
	time.Sleep(2 * spinMax)
	h.e.turn(0)
	if h.e.pollTimeout() == 0 {
		t.Error("still polls once the transfer is over")
	}
}

// TestSpinScore: turns that move payload poll only while polls pay; with
// no score yet, or after misses, one such turn in spinProbe polls.
func TestSpinScore(t *testing.T) {
	var s spin
	now := time.Duration(0)
	moving := func() bool { // a turn that moved a byte: does the next one poll?
		now += time.Millisecond
		s.turned(now, true, 1)
		return s.poll(now)
	}
	for i := 1; i < spinProbe; i++ {
		if moving() {
			t.Fatalf("turn %d polls with no score", i)
		}
	}
	for i := 0; i < spinOn; i++ {
		if !moving() {
			t.Fatalf("probe %d does not poll", i)
		}
		s.turned(now, true, 0) // a hit
		for j := 1; j < spinProbe && s.score < spinOn; j++ {
			moving()
		}
	}
	if !moving() {
		t.Fatalf("does not poll at score %d", s.score)
	}
	s.turned(now, false, 0)
	if s.poll(now + spinMax); s.score >= spinOn || moving() {
		t.Errorf("polls after a miss (score %d)", s.score)
	}
}

// upload sends one data segment and lets the engine write it to the sink.
func (h *hotPath) upload(n int) {
	h.send(h.segment(header.TCPAck|header.TCPPsh, n))
	h.seq += uint32(n)
	h.e.turn(10)
	h.readFrames(func(header.TCP) {})
}

// TestGuestToHostAllocs: the guest-to-host TCP path, from frame to socket
// write and ACK, allocates nothing per segment.
func TestGuestToHostAllocs(t *testing.T) {
	h := newHotPath(t, sinkServer)
	for range 100 { // warm up: buffers, maps, ACK list
		h.upload(1400)
	}
	if a := testing.AllocsPerRun(1000, func() { h.upload(1400) }); a != 0 {
		t.Fatalf("%.1f allocations per segment", a)
	}
}

// TestGuestToHostTailAllocs: so does a segment whose data the link left
// in guest memory (vhost-user's tail), from frameInput to the writev.
func TestGuestToHostTailAllocs(t *testing.T) {
	h := newHotPath(t, sinkServer)
	const n = 4000
	head := make([]byte, qemusock.HeadCopy)
	tail := make([]unix.Iovec, 2)
	upload := func() {
		seg := h.segment(header.TCPAck|header.TCPPsh, n)[4:]
		copy(head, seg)
		rest := seg[qemusock.HeadCopy:]
		tail[0] = unix.Iovec{Base: &rest[0], Len: 1000}
		tail[1] = iovec(&rest[1000], len(rest)-1000)
		h.e.frameInput(head, tail)
		h.e.inputDone()
		h.e.turn(0)
		h.readFrames(func(header.TCP) {})
		// As a guest would, go on from what was acknowledged: on a
		// loaded machine the sink may lag, and the socket take less.
		h.seq = h.flow().rcvNxt
	}
	start := h.seq
	for range 100 {
		upload()
	}
	if a := testing.AllocsPerRun(1000, upload); a != 0 {
		t.Fatalf("%.1f allocations per segment", a)
	}
	if h.seq == start {
		t.Fatal("no data reached the host")
	}
}

// BenchmarkGuestToHost measures frame in to socket write, per 64 KiB
// segment, with its ACK out.
func BenchmarkGuestToHost(b *testing.B) {
	h := newHotPath(b, sinkServer)
	const n = 65480
	b.SetBytes(n)
	b.ReportAllocs()
	for b.Loop() {
		h.upload(n)
	}
}

// TestHostToGuestAllocs: the host-to-guest path, from socket peek to
// frames out and the guest's ACK in, allocates nothing.
func TestHostToGuestAllocs(t *testing.T) {
	h := newHotPath(t, sourceServer)
	// Wait for the host's first bytes: on a loaded machine the source
	// goroutine may not have run yet, and a turn with the guest's ACK to
	// read returns at once. Then warm up.
	deadline := time.Now().Add(10 * time.Second)
	for h.download() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no data reached the guest")
		}
	}
	for range 100 {
		h.download()
	}
	if a := testing.AllocsPerRun(200, func() { h.download() }); a != 0 {
		t.Fatalf("%.1f allocations per round", a)
	}
}

// BenchmarkHostToGuest measures socket peek to frames out, with the
// guest's ACK in, per round of one event-loop turn.
func BenchmarkHostToGuest(b *testing.B) {
	h := newHotPath(b, sourceServer)
	b.ReportAllocs()
	total := 0
	for b.Loop() {
		total += h.download()
	}
	b.SetBytes(int64(total / max(b.N, 1)))
}

// TestHostSendBuffer checks that a host socket gets the largest send
// buffer the system allows, when that beats autotuning: its room is the
// guest's window.
func TestHostSendBuffer(t *testing.T) {
	h := newHotPath(t, func(c net.Conn) {})
	want := 2 * h.e.tcp.sndbuf // the kernel doubles SO_SNDBUF for overhead
	if want == 0 {
		t.Skip("net.core.wmem_max does not beat TCP autotuning here; the kernel keeps its buffer")
	}
	flows := 0
	h.e.tcp.each(func(_ int32, f *tcpFlow) {
		flows++
		if got, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err != nil || got != want {
			t.Errorf("SO_SNDBUF = %d, %v; want %d", got, err, want)
		}
	})
	if flows != 1 {
		t.Fatalf("%d flows, want 1", flows)
	}
}

// TestSmallSegmentAck: the ACK of a small segment waits for the reply to
// carry it, and goes out alone once the wait is over, after which the flow
// is acknowledged at once; two full segments are acknowledged at once.
func TestSmallSegmentAck(t *testing.T) {
	conns := make(chan net.Conn, 1)
	h := newHotPath(t, func(c net.Conn) { conns <- c })
	srv := <-conns
	h.e.tcp.ackDelay = time.Hour // no ACK leaves by the clock
	h.readFrames(func(header.TCP) {})

	h.send(h.segment(header.TCPAck|header.TCPPsh, 1))
	h.seq++
	h.e.turn(10)
	var got []header.TCP
	collect := func(s header.TCP) { got = append(got, append(header.TCP(nil), s...)) }
	h.readFrames(collect)
	if len(got) != 0 {
		t.Fatalf("%d segments before the reply, want none (flags %#x)", len(got), got[0].Flags())
	}
	buf := make([]byte, 1)
	if _, err := srv.Read(buf); err != nil {
		t.Fatal(err)
	}
	srv.Write(buf)
	for i := 0; i < 100 && len(got) == 0; i++ {
		h.e.turn(10)
		h.readFrames(collect)
	}
	if len(got) != 1 || len(got[0].Payload()) != 1 || got[0].Ack() != h.seq {
		t.Fatalf("got %d segments, want one reply carrying ack %d", len(got), h.seq)
	}
	h.ack += 1

	// Two full segments are acknowledged at once.
	mss := h.e.tcp.flows[0].mss
	for range 2 {
		h.send(h.segment(header.TCPAck, mss))
		h.seq += uint32(mss)
	}
	got = got[:0]
	h.e.turn(10)
	h.readFrames(collect)
	if len(got) == 0 || got[len(got)-1].Ack() != h.seq {
		t.Fatalf("got %d segments, want an ACK of %d for two full segments", len(got), h.seq)
	}

	h.e.tcp.ackDelay = 0 // now due at once
	h.send(h.segment(header.TCPAck|header.TCPPsh, 1))
	h.seq++
	got = got[:0]
	for i := 0; i < 100 && len(got) == 0; i++ {
		h.e.turn(10)
		h.readFrames(collect)
	}
	if !pureAcksOf(got, h.seq) {
		t.Fatalf("got %d segments, want a lone ACK of %d (and window updates)", len(got), h.seq)
	}

	// No reply came in time, so the flow is no longer delayed: a guest
	// using Nagle's algorithm must not wait for every small write. The
	// period is stretched, lest a stalled machine outlast its 100 ms.
	f := h.e.tcp.flows[0]
	if f.quickTo <= h.e.now {
		t.Fatal("no quick-ACK period after an ACK that timed out")
	}
	f.quickTo = h.e.now + time.Hour
	h.e.tcp.ackDelay = time.Hour
	h.send(h.segment(header.TCPAck|header.TCPPsh, 1))
	h.seq++
	got = got[:0]
	h.e.turn(10)
	h.readFrames(collect)
	if !pureAcksOf(got, h.seq) {
		t.Fatalf("got %d segments, want an immediate ACK of %d", len(got), h.seq)
	}
}

// pureAcksOf reports whether segs are one or more ACKs of seq without
// data: an ACK, perhaps followed by window updates as the host drains.
func pureAcksOf(segs []header.TCP, seq uint32) bool {
	return len(segs) > 0 && !slices.ContainsFunc(segs, func(s header.TCP) bool {
		return len(s.Payload()) != 0 || s.Ack() != seq
	})
}

// TestKeepaliveProbeAnswered: a keepalive probe from the guest (no data,
// one below the next expected sequence number) and an old duplicate are
// each answered at once with an ACK of what we expect, as RFC 9293 asks;
// the probe also turns on SO_KEEPALIVE on the host socket.
func TestKeepaliveProbeAnswered(t *testing.T) {
	h := newHotPath(t, sinkServer)
	h.upload(100)
	var acks []uint32
	collect := func(s header.TCP) {
		if s.Flags() == header.TCPAck && len(s.Payload()) == 0 {
			acks = append(acks, s.Ack())
		}
	}
	h.readFrames(collect)
	acks = acks[:0]

	h.seq--
	h.send(h.segment(header.TCPAck, 0))
	h.seq++
	h.e.turn(10)
	h.readFrames(collect)
	if !acksOf(acks, h.seq) {
		t.Fatalf("keepalive probe: ACKs %v, want ACKs of %d", acks, h.seq)
	}
	var fd int
	h.e.tcp.each(func(_ int32, f *tcpFlow) { fd = f.fd })
	if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE); err != nil || on != 1 {
		t.Errorf("SO_KEEPALIVE on the host socket = %d, %v; want 1", on, err)
	}

	acks = acks[:0]
	h.seq -= 100
	h.send(h.segment(header.TCPAck|header.TCPPsh, 100)) // the last segment again
	h.seq += 100
	h.e.turn(10)
	h.readFrames(collect)
	if !acksOf(acks, h.seq) {
		t.Fatalf("old duplicate: ACKs %v, want ACKs of %d", acks, h.seq)
	}
}

// acksOf reports whether acks holds at least one ACK and all are of seq
// (a window update may follow the answer).
func acksOf(acks []uint32, seq uint32) bool {
	return len(acks) > 0 && !slices.ContainsFunc(acks, func(a uint32) bool { return a != seq })
}

// TestKeepaliveToIdleGuest: after tcpKeepIdle of guest silence the engine
// probes the guest, and the guest's answer keeps the flow from expiring.
func TestKeepaliveToIdleGuest(t *testing.T) {
	h := newHotPath(t, sinkServer)
	h.readFrames(func(header.TCP) {})
	probes := 0
	collect := func(s header.TCP) {
		if len(s.Payload()) == 0 && s.Flags() == header.TCPAck && s.Seq() == h.ack-1 {
			probes++
		}
	}
	h.e.start = h.e.start.Add(-tcpKeepIdle - time.Second) // the guest was silent for longer
	h.e.lastTick = 0
	h.e.turn(1)
	h.readFrames(collect)
	if probes != 1 {
		t.Fatalf("%d probes with seq %d, want one", probes, h.ack-1)
	}
	h.send(h.segment(header.TCPAck, 0)) // the guest's answer
	h.e.turn(10)
	// Past tcpIdle since the handshake, within it since the answer.
	h.e.start = h.e.start.Add(-tcpIdle + 10*time.Second)
	h.e.lastTick = 0
	h.e.turn(1)
	if h.e.tcp.count != 1 {
		t.Fatal("the flow expired although the guest answered its keepalive")
	}
}

// TestPeekWithoutPeekOff runs host-to-guest on the path for kernels
// without SO_PEEK_OFF (TCP has it since Linux 6.9), where each peek reads
// the bytes in flight again: the stream arrives whole and in order, a
// peek that finds nothing new sends no FIN, and the host's close does.
func TestPeekWithoutPeekOff(t *testing.T) {
	h, srv := tcpPeer(t)
	f := h.flow()
	// Turn SO_PEEK_OFF off (qemu-user, for the big-endian run, lacks it).
	if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, -1); err != nil && err != unix.ENOPROTOOPT {
		t.Fatal(err)
	}
	f.peekOff = false
	data := make([]byte, 3000)
	for i := range data {
		data[i] = byte(i % 251)
	}
	var got []byte
	fin := false
	collect := func(s header.TCP) {
		if s.Flags()&header.TCPFin != 0 {
			fin = true
		}
		if p := s.Payload(); len(p) > 0 && s.Seq() == h.ack {
			got = append(got, p...)
			h.ack += uint32(len(p))
		}
	}
	receive := func(want int) {
		t.Helper()
		for i := 0; i < 100 && len(got) < want; i++ {
			h.e.turn(10)
			h.readFrames(collect)
		}
	}

	srv.Write(data[:1000])
	receive(1000)
	h.ack -= 500 // acknowledge half, leaving 500 bytes in flight
	h.send(h.segment(header.TCPAck, 0))
	h.ack += 500
	h.e.turn(10)
	h.e.tcpSendToGuest(f) // a wake-up with nothing new to send
	h.readFrames(collect)
	if fin || len(got) != 1000 {
		t.Fatalf("after a peek with nothing new: %d bytes, FIN %v; want 1000 and no FIN", len(got), fin)
	}
	h.send(h.segment(header.TCPAck, 0))
	srv.Write(data[1000:])
	receive(len(data))
	srv.Close()
	for i := 0; i < 100 && !fin; i++ {
		h.e.turn(10)
		h.readFrames(collect)
		h.send(h.segment(header.TCPAck, 0))
	}
	if !bytes.Equal(got, data) || !fin {
		t.Fatalf("got %d bytes (equal %v), FIN %v; want the %d bytes sent, then FIN", len(got), bytes.Equal(got, data), fin, len(data))
	}
}

// TestAckedOncePerBatch: ACKs that arrive in one batch of guest frames
// drop what they acknowledge from the host socket once, after the batch,
// and a fast retransmit within the same batch still starts at the last
// byte the guest acknowledged.
func TestAckedOncePerBatch(t *testing.T) {
	h, srv := tcpPeer(t)
	f := h.flow()
	data := make([]byte, 3000)
	for i := range data {
		data[i] = byte(i % 253)
	}
	base := h.ack
	srv.Write(data)
	for i := 0; i < 100 && h.ack-base < 3000; i++ {
		h.e.turn(10)
		h.readFrames(func(s header.TCP) {
			if p := s.Payload(); len(p) > 0 && s.Seq() == h.ack {
				h.ack += uint32(len(p))
			}
		})
	}
	if h.ack-base != 3000 {
		t.Fatalf("%d bytes arrived, want 3000", h.ack-base)
	}
	// One batch: two ACKs, then three duplicates of the second.
	var batch []byte
	for _, ack := range []uint32{1000, 2000, 2000, 2000, 2000} {
		h.ack = base + ack
		batch = append(batch, h.segment(header.TCPAck, 0)...)
	}
	h.send(batch)
	h.e.turn(10)
	if inq, _ := unix.IoctlGetUint32(f.fd, unix.SIOCINQ); inq != 1000 || f.unread != 0 { // a C int, as in sendRoom
		t.Errorf("after the batch the host socket holds %d bytes (%d unread), want the 1000 unacknowledged", inq, f.unread)
	}
	var resent []byte
	h.readFrames(func(s header.TCP) {
		if p := s.Payload(); len(p) > 0 && s.Seq() == base+2000+uint32(len(resent)) {
			resent = append(resent, p...)
		}
	})
	if !bytes.Equal(resent, data[2000:]) {
		t.Errorf("fast retransmit sent %d bytes from the acknowledged point (equal %v), want the last 1000",
			len(resent), bytes.Equal(resent, data[2000:]))
	}
}

// TestUDPBurst: a burst of guest datagrams reaches the host as the same
// datagrams in order, without an allocation, whether the link left them
// in its buffer or all but their heads in guest memory.
func TestUDPBurst(t *testing.T) {
	pc := listenUDPLoopback(t)
	te := newTestEngine(t)
	te.cfg.NoUDP = false
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	var frames [][]byte
	for i := range 10 {
		size := 1000
		if i == 9 {
			size = 300
		}
		frames = append(frames, frameIP(testGuest4, testGW4, header.ProtoUDP, udp6(5000, port, bytes.Repeat([]byte{byte(i)}, size))))
	}
	burst := func() {
		for _, f := range frames {
			te.tapInput(f)
		}
		te.inputDone()
	}
	// Over vhost-user, the link leaves all but a frame's head in guest
	// memory, and the engine copies such a datagram into one buffer of
	// its own.
	tails := make([][]unix.Iovec, len(frames))
	for i, f := range frames {
		tails[i] = []unix.Iovec{iovec(&f[qemusock.HeadCopy], len(f)-qemusock.HeadCopy)}
	}
	burstTails := func() {
		for i, f := range frames {
			te.frameInput(f[:qemusock.HeadCopy], tails[i])
		}
		te.inputDone()
	}
	check := func() {
		t.Helper()
		buf := make([]byte, 2000)
		for i := range frames {
			pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
			if want := len(frames[i]) - header.EthernetLen - header.IPv4MinLen - header.UDPLen; n != want || buf[0] != byte(i) || buf[n-1] != byte(i) {
				t.Fatalf("datagram %d: %d bytes starting %d, want %d of %d", i, n, buf[0], want, i)
			}
		}
	}
	burst()
	check()
	burstTails()
	check()
	if a := testing.AllocsPerRun(20, burst); a != 0 {
		t.Errorf("%.1f allocations per burst", a)
	}
}
