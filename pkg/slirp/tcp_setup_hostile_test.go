package slirp

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Connection set-up and tear-down under attack, on both sides: inbound
// connections through a forward that the guest answers wrongly or not at
// all, or that the host client gives up on first; and guest connections
// whose host connect() fails, hangs, or is abandoned.

// inbound adds a forward to guest port 22 on an engine with a guest
// connection already open (tcpPeer), and returns a dialer for it.
func inbound(t *testing.T) (*hotPath, func() *net.TCPConn) {
	h, c := tcpPeer(t)
	c.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	if err := h.e.AddForwards(TCP, []portspec.Forward{{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: port, GuestPort: 22}}, false); err != nil {
		t.Fatal(err)
	}
	return h, func() *net.TCPConn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c.(*net.TCPConn)
	}
}

// inFlow is the engine's flow for an inbound connection whose SYN is syn.
func (h *hotPath) inFlow(syn header.TCP) *tcpFlow {
	var f *tcpFlow
	h.e.tcp.each(func(_ int32, fl *tcpFlow) {
		if fl.key.guest.Port() == 22 && fl.key.remote.Port() == syn.SrcPort() {
			f = fl
		}
	})
	return f
}

// guestSegs runs the engine until fn, which sees every segment to the
// guest, reports that it has what it waited for.
func (h *hotPath) guestSegs(t *testing.T, fn func(s header.TCP) bool) {
	t.Helper()
	for range 200 {
		h.e.turn(5)
		done := false
		h.readFrames(func(s header.TCP) { done = fn(s) || done })
		if done {
			return
		}
	}
	t.Fatal("the guest never got what it waited for")
}

// inSyn waits for the engine's SYN to the guest at port 22.
func (h *hotPath) inSyn(t *testing.T) header.TCP {
	t.Helper()
	var syn header.TCP
	h.guestSegs(t, func(s header.TCP) bool {
		if s.Flags() == header.TCPSyn && s.DstPort() == 22 && syn == nil {
			syn = append(header.TCP(nil), s...)
		}
		return syn != nil
	})
	return syn
}

// fromPort22 is a guest segment of the inbound connection that syn opens.
func (h *hotPath) fromPort22(syn header.TCP, flags header.TCPFlags, seq, ack uint32, payload string) []byte {
	return h.raw(rawSeg{flags: flags, seq: seq, ack: ack, wnd: 0xffff, sport: 22, dport: syn.SrcPort(), payload: []byte(payload)})
}

// jump moves the engine's clock d forward and makes its next turn tick.
func (h *hotPath) jump(d time.Duration) {
	h.e.start = h.e.start.Add(-d)
	h.e.lastTick = 0
}

// TestTCPInboundSockOpts: an accepted connection has hostSockOpts'
// options, which tcpAccept no longer sets: its listener passes them on.
func TestTCPInboundSockOpts(t *testing.T) {
	h, dial := inbound(t)
	dial()
	f := h.inFlow(h.inSyn(t))
	if f == nil {
		t.Fatal("no flow for the connection")
	}
	for _, o := range []struct {
		name       string
		level, opt int
	}{{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY}, {"SO_OOBINLINE", unix.SOL_SOCKET, unix.SO_OOBINLINE}} {
		if v, err := unix.GetsockoptInt(f.fd, o.level, o.opt); v == 0 || err != nil {
			t.Errorf("%s: %d, %v", o.name, v, err)
		}
	}
}

// TestTCPInboundGuestResets: the guest answers our SYN with a reset; the
// host client sees the connection reset, and the flow is gone.
func TestTCPInboundGuestResets(t *testing.T) {
	h, dial := inbound(t)
	c := dial()
	syn := h.inSyn(t)
	h.send(h.fromPort22(syn, header.TCPRst|header.TCPAck, 0, syn.Seq()+1, ""))
	h.e.turn(5)
	if h.inFlow(syn) != nil {
		t.Fatal("flow left after the guest reset it")
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client read %v, want a reset", err)
	}
}

// TestTCPInboundBadSynAck: a SYN-ACK acknowledging what we never sent is
// ignored; the right one, with data on it, completes the handshake; the
// data, taken only when sent again, reaches the client once; the client's
// data and close that came before the handshake reach the guest.
func TestTCPInboundBadSynAck(t *testing.T) {
	h, dial := inbound(t)
	c := dial()
	syn := h.inSyn(t)
	c.Write([]byte("early"))
	c.CloseWrite()
	for range 5 {
		h.e.turn(5)
	}
	for _, ack := range []uint32{syn.Seq(), syn.Seq() + 2, syn.Seq() + 1<<31} {
		h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, ack, ""))
	}
	h.send(h.fromPort22(syn, header.TCPAck, 5001, syn.Seq()+1, "junk")) // before any SYN-ACK took
	h.e.turn(5)
	if f := h.inFlow(syn); f == nil || f.state&(tcpSynSent|tcpEstablished) != tcpSynSent {
		t.Fatalf("after wrong SYN-ACKs: %v", f)
	}
	h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, syn.Seq()+1, "hello"))
	var got []byte
	fin := false
	h.guestSegs(t, func(s header.TCP) bool {
		if s.SrcPort() == syn.SrcPort() && s.DstPort() == 22 {
			got = append(got, s.Payload()...)
			fin = fin || isFin(s)
		}
		return fin
	})
	if string(got) != "early" {
		t.Fatalf("the guest got %q, want the client's early data", got)
	}
	h.send(h.fromPort22(syn, header.TCPAck, 5001, syn.Seq()+1+5+1, "hello"))
	h.send(h.fromPort22(syn, header.TCPAck|header.TCPFin, 5001, syn.Seq()+1+5+1, "hello"))
	h.e.turn(5)
	b, err := io.ReadAll(c)
	if string(b) != "hello" || err != nil {
		t.Fatalf("the client read %q, %v; want the guest's data once", b, err)
	}
	h.e.turn(5)
	if f := h.inFlow(syn); f != nil {
		t.Fatalf("flow left after both FINs: %v", f.state)
	}
}

// TestTCPInboundStaleGuestConnection: the guest answers our SYN with an
// ACK of its own, from a connection it still has on the same addresses
// (in TIME-WAIT, which answers so a SYN of a lower sequence number, or
// one whose flow we dropped, at a reconnection). We reset that
// connection (RFC 9293, 3.10.7.3: a RST at its ACK); ignored, it
// answered each SYN again for as long as it lived, up to minutes, and
// the client waited. The flow waits on, and connects on our next SYN.
func TestTCPInboundStaleGuestConnection(t *testing.T) {
	h, dial := inbound(t)
	c := dial()
	syn := h.inSyn(t)
	const staleSeq, staleAck = 7000, 123456789
	h.send(h.fromPort22(syn, header.TCPAck, staleSeq, staleAck, ""))
	var rst header.TCP
	h.guestSegs(t, func(s header.TCP) bool {
		if s.SrcPort() == syn.SrcPort() && s.DstPort() == 22 && s.Flags()&header.TCPRst != 0 {
			rst = append(header.TCP(nil), s...)
		}
		return rst != nil
	})
	if rst.Seq() != staleAck || rst.Flags() != header.TCPRst {
		t.Fatalf("the stale connection's ACK got %v seq %d, want a RST at its ACK, %d", rst.Flags(), rst.Seq(), staleAck)
	}
	if f := h.inFlow(syn); f == nil || f.state&(tcpSynSent|tcpEstablished) != tcpSynSent {
		t.Fatalf("after the stale connection's ACK: %v, want the flow still waiting", f)
	}
	h.jump(tcpRTO << 1)
	again := h.inSyn(t)
	if again.Seq() != syn.Seq() {
		t.Fatalf("SYN again with seq %d, was %d", again.Seq(), syn.Seq())
	}
	h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, syn.Seq()+1, ""))
	h.e.turn(5)
	if f := h.inFlow(syn); f == nil || f.state&tcpEstablished == 0 {
		t.Fatalf("after the SYN-ACK: %v, want established", f)
	}
	c.Write([]byte("hello"))
	var got []byte
	h.guestSegs(t, func(s header.TCP) bool {
		if s.SrcPort() == syn.SrcPort() && s.DstPort() == 22 {
			got = append(got, s.Payload()...)
		}
		return string(got) == "hello"
	})
}

// TestTCPInboundGuestSilent: a guest that never answers gets our SYN
// again with the timeout doubling, up to the retry limit; then the
// client sees a reset, the flow is gone, and a new client gets a new SYN.
func TestTCPInboundGuestSilent(t *testing.T) {
	h, dial := inbound(t)
	c := dial()
	syn := h.inSyn(t)
	syns := 1
	for i := 0; i < 4*tcpMaxRetries && h.inFlow(syn) != nil; i++ {
		h.jump(tcpRTO << 4)
		h.e.turn(0)
		h.readFrames(func(s header.TCP) {
			if s.Flags() == header.TCPSyn && s.DstPort() == 22 {
				if s.Seq() != syn.Seq() {
					t.Fatalf("SYN again with seq %d, was %d", s.Seq(), syn.Seq())
				}
				syns++
			}
		})
	}
	if h.inFlow(syn) != nil {
		t.Fatal("flow still waiting for a silent guest")
	}
	if syns != 1+tcpMaxRetries {
		t.Errorf("%d SYNs, want %d", syns, 1+tcpMaxRetries)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client read %v, want a reset", err)
	}
	dial()
	if h.inSyn(t).SrcPort() == syn.SrcPort() {
		t.Fatal("the second client has the first one's port")
	}
}

// TestTCPInboundClientResets: the client resets before the guest
// answered; the guest gets a reset, its late SYN-ACK a reset too, and
// the flow is gone.
func TestTCPInboundClientResets(t *testing.T) {
	h, dial := inbound(t)
	c := dial()
	syn := h.inSyn(t)
	c.SetLinger(0)
	c.Close()
	h.guestSegs(t, func(s header.TCP) bool { return isRst(s) && s.SrcPort() == syn.SrcPort() && s.DstPort() == 22 })
	if h.inFlow(syn) != nil {
		t.Fatal("flow left after the client's reset")
	}
	h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, syn.Seq()+1, ""))
	h.guestSegs(t, func(s header.TCP) bool {
		return isRst(s) && s.SrcPort() == syn.SrcPort() && s.DstPort() == 22 && s.Seq() == syn.Seq()+1
	})
	if h.inFlow(syn) != nil {
		t.Fatal("a late SYN-ACK made a flow")
	}
}

// TestTCPInboundAtCap: clients past --max-tcp are accepted and reset
// (refuse), without spinning; once the guest resets the flows, new clients get
// through again.
func TestTCPInboundAtCap(t *testing.T) {
	h, dial := inbound(t)
	base := h.e.tcp.count
	h.e.cfg.MaxTCP = base + 3
	var cs []*net.TCPConn
	for range 40 {
		cs = append(cs, dial())
	}
	// One SYN per flow: on a slow machine the turns outlast the SYN's
	// retransmission timeout, and a flow's SYN comes again.
	var syns []header.TCP
	for i := 0; i < 50; i++ {
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			if s.Flags() == header.TCPSyn && s.DstPort() == 22 &&
				!slices.ContainsFunc(syns, func(o header.TCP) bool { return o.SrcPort() == s.SrcPort() }) {
				syns = append(syns, append(header.TCP(nil), s...))
			}
		})
	}
	if len(syns) != 3 || h.e.tcp.count != base+3 {
		t.Fatalf("%d SYNs, %d flows at a cap of %d", len(syns), h.e.tcp.count, base+3)
	}
	refused := 0
	for _, c := range cs {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); errors.Is(err, unix.ECONNRESET) {
			refused++
		}
	}
	if refused != len(cs)-3 {
		t.Fatalf("%d clients reset, want %d", refused, len(cs)-3)
	}
	if n, _ := unix.EpollWait(h.e.epfd, make([]unix.EpollEvent, 8), 0); n != 0 {
		t.Fatalf("%d events still pending at the cap: the engine would spin", n)
	}
	for _, syn := range syns {
		h.send(h.fromPort22(syn, header.TCPRst|header.TCPAck, 0, syn.Seq()+1, ""))
	}
	h.e.turn(5)
	if h.e.tcp.count != base {
		t.Fatalf("%d flows after the resets, want %d", h.e.tcp.count, base)
	}
	dial()
	h.inSyn(t)
}

// pendingListener is a listener whose accept queue is full, so a
// connect() to it stays in progress: the kernel drops its SYNs.
func pendingListener(t *testing.T) uint16 {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port := sa.(*unix.SockaddrInet4).Port
	c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return uint16(port)
}

// TestTCPOutboundSetupFails: a guest connection to a closed port gets a
// reset acknowledging its SYN; one whose connect() hangs ignores the
// guest's SYN sent again, with the same or another sequence number, and
// ends at the SYN timeout with an ICMP error; one the guest resets while
// connect() is pending ends at once. No flow is left.
func TestTCPOutboundSetupFails(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	base := h.e.tcp.count
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := uint16(closed.Addr().(*net.TCPAddr).Port)
	closed.Close()
	h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 7000, wnd: 0xffff, sport: 41000, dport: refused}))
	h.guestSegs(t, func(s header.TCP) bool {
		return s.DstPort() == 41000 && s.Flags() == header.TCPRst|header.TCPAck && s.Ack() == 7001
	})
	if h.e.tcp.count != base {
		t.Fatal("flow left after a refused connect")
	}

	pend := pendingListener(t)
	for i, sport := range []uint16{41001, 41002} {
		h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 8000, wnd: 0xffff, sport: sport, dport: pend}))
		for range 3 {
			h.e.turn(5)
		}
		h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 8000, wnd: 0xffff, sport: sport, dport: pend}))
		h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 9000, wnd: 0xffff, sport: sport, dport: pend}))
		h.send(h.raw(rawSeg{flags: header.TCPAck, seq: 8001, ack: 1, wnd: 0xffff, sport: sport, dport: pend, payload: []byte("x")}))
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			if s.DstPort() == sport {
				t.Fatalf("the guest got %v while connect() is pending", s.Flags())
			}
		})
		if h.e.tcp.count != base+1 || h.flowOn(sport).state != tcpConnecting {
			t.Fatalf("connect %d: %d flows", i, h.e.tcp.count-base)
		}
		if i == 0 {
			h.send(h.raw(rawSeg{flags: header.TCPRst, seq: 8001, sport: sport, dport: pend}))
			h.e.turn(5)
		} else {
			h.jump(tcpSynTimeout + time.Second)
			h.e.turn(0)
		}
		if h.e.tcp.count != base {
			t.Fatalf("connect %d: flow left", i)
		}
	}
}

// flowOn is the flow of the guest's port p.
func (h *hotPath) flowOn(p uint16) *tcpFlow {
	var f *tcpFlow
	h.e.tcp.each(func(_ int32, fl *tcpFlow) {
		if fl.key.guest.Port() == p {
			f = fl
		}
	})
	return f
}

// TestTCPZeroWindowUnacked: the guest closes its window without
// acknowledging what is in flight (a receiver that shrinks its window,
// or drops what it has no memory for) and then answers every probe, its
// window still closed, for minutes. The retransmission timer finds no
// room to send in; it must not count that against the guest, which is
// alive (RFC 9293, 3.8.6.1: a sender keeps probing a zero window as long
// as the receiver answers). When the window opens, the data arrives
// once, in order.
func TestTCPZeroWindowUnacked(t *testing.T) {
	h, c := tcpPeer(t)
	data := pattern(3000, 7)
	c.Write(data)
	start := h.ack
	got := 0
	h.receive(t, true, func(s header.TCP) bool { got += len(s.Payload()); return got >= len(data) })
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0)) // acknowledges nothing, window closed
	for i := 0; i < 20; i++ {
		h.jump(17 * time.Second)
		h.e.turn(0)
		answer := false
		h.readFrames(func(s header.TCP) { answer = true })
		if answer {
			h.send(h.segment(header.TCPAck, 0))
		}
		h.e.turn(0)
		if h.flow() == nil {
			t.Fatalf("the flow was reset after %v at a zero window, the guest answering", time.Duration(i+1)*17*time.Second)
		}
	}
	h.wnd = 0xffff
	h.send(h.segment(header.TCPAck, 0))
	h.receiveStream(t, start, nil, data)
}

// TestTCPInboundMany: two thousand clients, a hundred at a time, each
// reset by the guest or by the client itself, some before and some after
// the guest's SYN-ACK; every flow ends and no descriptor is left.
func TestTCPInboundMany(t *testing.T) {
	h, dial := inbound(t)
	base := h.e.tcp.count
	fds := func() int { d, _ := os.ReadDir("/proc/self/fd"); return len(d) }
	before := fds()
	syns := 0
	for round := range 20 {
		var cs []*net.TCPConn
		for range 100 {
			cs = append(cs, dial())
		}
		for i := 0; i < 300 && syns < 100*(round+1); i++ { // a connection a turn (tcpAccept)
			h.e.turn(5)
			h.readFrames(func(s header.TCP) {
				if s.Flags() != header.TCPSyn || s.DstPort() != 22 {
					return
				}
				syns++
				syn := append(header.TCP(nil), s...)
				switch syns % 4 {
				case 0:
					h.send(h.fromPort22(syn, header.TCPRst|header.TCPAck, 0, syn.Seq()+1, ""))
				case 1:
					h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, syn.Seq()+1, ""))
					h.send(h.fromPort22(syn, header.TCPRst, 5001, 0, ""))
				default:
					h.send(h.fromPort22(syn, header.TCPSyn|header.TCPAck, 5000, syn.Seq()+1, ""))
				}
			})
		}
		for _, c := range cs {
			c.SetLinger(0)
			c.Close()
		}
		for i := 0; i < 50 && h.e.tcp.count > base; i++ {
			h.e.turn(5)
			h.readFrames(func(header.TCP) {})
		}
		if h.e.tcp.count != base {
			t.Fatalf("round %d: %d flows left", round, h.e.tcp.count-base)
		}
	}
	if syns != 2000 {
		t.Fatalf("%d SYNs for 2000 clients", syns)
	}
	if n := fds(); n > before {
		t.Fatalf("%d descriptors left", n-before)
	}
}

// TestTCPReuseSameBatch: the guest resets a connection whose host peer
// has just sent data and, in the same batch of frames, opens a new one
// from the same port to the same server: the new flow takes the old
// one's slot (and likely its descriptor number) while the old socket's
// event is still queued. The new connection gets its own handshake and
// none of the old data; the old peer sees a reset.
func TestTCPReuseSameBatch(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	l := listenLoopback(t)
	l.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	seg := func(flags header.TCPFlags, seq, ack uint32, p string) []byte {
		return h.raw(rawSeg{flags: flags, seq: seq, ack: ack, wnd: 0xffff, sport: 41000, dport: port, payload: []byte(p)})
	}
	synAckFor := func(seq uint32) header.TCP {
		var synAck header.TCP
		h.guestSegs(t, func(s header.TCP) bool {
			if s.DstPort() != 41000 {
				return false
			}
			if len(s.Payload()) > 0 || isRst(s) {
				t.Fatalf("the guest got %v with %q on the new connection", s.Flags(), s.Payload())
			}
			if s.Flags() == header.TCPSyn|header.TCPAck && s.Ack() == seq+1 {
				synAck = append(header.TCP(nil), s...)
			}
			return synAck != nil
		})
		return synAck
	}
	h.send(seg(header.TCPSyn, 7000, 0, ""))
	sa := synAckFor(7000)
	h.send(seg(header.TCPAck, 7001, sa.Seq()+1, ""))
	h.e.turn(5)
	old, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	idx := h.flowOn(41000).idx
	for range 3 {
		old.Write([]byte("stale"))
	}
	h.send(append(seg(header.TCPRst, 7001, 0, ""), seg(header.TCPSyn, 90000, 0, "")...))
	sa = synAckFor(90000)
	if f := h.flowOn(41000); f == nil || f.idx != idx || f.state != tcpSynAckSent {
		t.Fatalf("new flow %+v, want the old slot %d", f, idx)
	}
	old.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(old); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the old peer read %v, want a reset", err)
	}
	h.send(seg(header.TCPAck, 90001, sa.Seq()+1, "new"))
	h.e.turn(5)
	nc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != "new" {
		t.Fatalf("the new peer read %q, %v", buf, err)
	}
	nc.Write([]byte("fresh"))
	var got []byte
	h.guestSegs(t, func(s header.TCP) bool {
		if s.DstPort() == 41000 {
			got = append(got, s.Payload()...)
		}
		return len(got) >= 5
	})
	if string(got) != "fresh" {
		t.Fatalf("the guest got %q on the new connection", got)
	}
}

// TestTCPTimeJump: the clock jumps three hours with a flow in every
// stage of set-up and tear-down (an inbound SYN unanswered, a connect()
// pending, data in flight, a half-closed flow): each ends, with a reset
// to its peers, within a few ticks, and the engine goes quiet.
func TestTCPTimeJump(t *testing.T) {
	h, dial := inbound(t)
	base := h.e.tcp.count
	client := dial()
	h.inSyn(t)
	pend := pendingListener(t)
	h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 8000, wnd: 0xffff, sport: 41001, dport: pend}))
	h.e.turn(5)

	up, c := tcpPeer(t) // a second engine: data in flight, then half-closed
	c.Write([]byte("in flight"))
	up.receive(t, true, func(s header.TCP) bool { return len(s.Payload()) > 0 })
	h.send(h.segment(header.TCPFin|header.TCPAck, 0)) // the first engine's own flow, half-closed
	h.e.turn(5)
	if h.e.tcp.count < base+2 {
		t.Fatalf("%d flows before the jump", h.e.tcp.count)
	}
	for _, hp := range []*hotPath{h, up} {
		hp.jump(3 * time.Hour)
		for i := 0; i < 2*tcpMaxRetries+2 && hp.e.tcp.count > 0; i++ {
			hp.jump(tick)
			hp.e.turn(0)
			hp.readFrames(func(header.TCP) {})
		}
		if hp.e.tcp.count != 0 {
			t.Fatalf("%d flows left after the jump", hp.e.tcp.count)
		}
		if !hp.e.quiet() {
			t.Fatal("the engine is not quiet with no flow left")
		}
	}
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the inbound client read %v, want a reset", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the peer with data in flight read %v, want a reset", err)
	}
}

// TestTCPZeroWindowProbe: the host sends while the guest's window is
// closed, and the guest's update that opens it is lost. The closed window
// is probed after a retransmission timeout (RFC 9293, 3.8.6.1), backing
// off, so the guest's answer, with its window, lets the data through
// within seconds, not at the next keepalive, as with upstream passt.
func TestTCPZeroWindowProbe(t *testing.T) {
	h, c := tcpPeer(t)
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0))
	h.e.turn(5)
	c.Write([]byte("held"))
	h.e.turn(5)
	h.readFrames(func(s header.TCP) {})
	h.wnd = 0xffff // opened, but the guest says so only when asked
	probes := 0
	for i := 0; i < 4; i++ {
		h.jump(tcpRTO << i)
		h.e.turn(0)
		got := ""
		h.readFrames(func(s header.TCP) {
			if len(s.Payload()) == 0 && s.Seq() == h.ack-1 {
				probes++
				h.send(h.segment(header.TCPAck, 0))
			}
			got += string(s.Payload())
		})
		h.e.turn(5)
		h.readFrames(func(s header.TCP) { got += string(s.Payload()) })
		if got == "held" {
			if probes != 1 {
				t.Errorf("%d probes before the data, want 1", probes)
			}
			return
		}
	}
	t.Fatalf("no data %v after the window opened, %d probes", tcpRTO*15, probes)
}

// TestTCPAckPastRewind: the guest has what we sent but its ACK comes
// only after a retransmission timeout took us back to its last ACK, and
// before we could send that far again (here its window had closed; a full
// link does the same). The ACK is for data we sent, and we go on from
// there, as passt does; ignoring it, we waited for ACKs that the guest
// would never send, until the retransmissions gave up and reset. With
// SO_PEEK_OFF and without.
func TestTCPAckPastRewind(t *testing.T) {
	for _, peekOff := range []bool{true, false} {
		t.Run(map[bool]string{true: "peekoff", false: "nopeekoff"}[peekOff], func(t *testing.T) { ackPastRewind(t, peekOff) })
	}
}

func ackPastRewind(t *testing.T, peekOff bool) {
	h, c := tcpPeer(t)
	if f := h.flow(); !peekOff {
		if err := unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, -1); err != nil && err != unix.ENOPROTOOPT {
			t.Fatal(err)
		}
		f.peekOff = false
	}
	data := pattern(6000, 3)
	c.Write(data[:3000])
	start := h.ack
	got := 0
	h.receive(t, true, func(s header.TCP) bool { got += len(s.Payload()); return got >= 3000 })
	h.wnd = 0
	h.send(h.segment(header.TCPAck, 0)) // nothing acknowledged yet, window closed
	h.jump(tcpRTO + time.Millisecond)
	h.e.turn(5)
	h.readFrames(func(header.TCP) {})
	h.ack, h.wnd = start+3000, 0xffff
	h.send(h.segment(header.TCPAck, 0)) // everything, at last
	c.Write(data[3000:])
	h.receiveStream(t, start, data[:3000:3000], data)
}
