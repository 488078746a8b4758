package slirp

import (
	"io"
	stdlog "log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// openFds lists this process's open descriptors, with what each names.
// One listed that no longer names anything is left out: it is the
// listing's own descriptor, closed by then, whose number varies.
func openFds(t testing.TB) map[string]string {
	t.Helper()
	d, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	fds := map[string]string{}
	for _, e := range d {
		if name, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds[e.Name()] = name
		}
	}
	return fds
}

// leakedFds lists the descriptors open now that were not before. One
// open before may have closed meanwhile: an earlier test's engine, never
// closed, lets the garbage collector close its /proc/self/fd.
func leakedFds(t testing.TB, before map[string]string) []string {
	t.Helper()
	var leaked []string
	for fd, name := range openFds(t) {
		if was, ok := before[fd]; !ok || was != name {
			leaked = append(leaked, fd+" "+name)
		}
	}
	return leaked
}

// notPollable is a descriptor epoll refuses (EPERM): a regular file.
func notPollable(t testing.TB) int {
	t.Helper()
	fd, err := unix.Open(filepath.Join(t.TempDir(), "file"), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestNewLeaksNothing: New that fails after creating its descriptors
// closes them all, and leaves the caller's listening socket alone.
func TestNewLeaksNothing(t *testing.T) {
	lfd := notPollable(t)
	before := openFds(t)
	if _, err := New(Config{Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}, lfd); err == nil {
		t.Fatal("New with a listening socket epoll refuses succeeded")
	}
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Fatalf("descriptors open after the failed New: %v", leaked)
	}
	if _, err := unix.FcntlInt(uintptr(lfd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("the caller's socket was closed: %v", err)
	}
}

// TestMTURange: an IPv4 guest takes an MTU down to IPv4's 68, as with
// passt; one below, or past 65520, is refused, and so is IPv6 below 1280.
func TestMTURange(t *testing.T) {
	for _, c := range []struct {
		mtu int
		v6  bool
		ok  bool
	}{{68, false, true}, {67, false, false}, {65521, false, false}, {1279, true, false}, {1280, true, true}} {
		cfg := Config{MTU: c.mtu, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}
		if c.v6 {
			cfg.Addr6, cfg.Gateway6, cfg.OurLL6 = testGuest6, testGW6, testLL6
		}
		if _, err := New(cfg, -1); (err == nil) != c.ok {
			t.Errorf("MTU %d, IPv6 %v: %v", c.mtu, c.v6, err)
		}
	}
}

// TestFailedAttach: a client that cannot be attached leaves the engine
// free for the next one, which is served.
func TestFailedAttach(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	lfd, err := qemusock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}, lfd)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.AttachTap(notPollable(t)); err == nil {
		t.Fatal("attaching a descriptor epoll refuses succeeded")
	}
	if e.link != nil {
		t.Fatal("after a failed attach the engine still has a link")
	}
	g, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(g)
	if err := unix.Connect(g, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	e.turn(100)
	arp := seedFrames()[0]
	unix.Write(g, append([]byte{0, 0, 0, byte(len(arp))}, arp...))
	for range 10 {
		e.turn(100)
	}
	unix.SetNonblock(g, true)
	var reply []byte
	drainFrames(qemusock.NewReader(qemusock.QEMU, 1<<16), g, func(f []byte) { reply = append(reply, f...) })
	if header.Ethernet(reply).Type() != header.EtherTypeARP {
		t.Fatalf("the next client got % x, want an ARP reply", reply)
	}
}

// TestEpollFailure: when the kernel refuses to watch a new socket, what
// it was for is undone: a forward is not added and its port is free, a
// guest connection is reset, a UDP or ICMP flow is not kept, and no
// descriptor leaks. The engine's epoll descriptor is swapped for one the
// kernel refuses, so every registration fails for real.
func TestEpollFailure(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoTCP, te.cfg.NoUDP, te.cfg.NoICMP = false, false, false
	ep := te.epfd
	te.epfd = notPollable(t)
	defer func() { te.epfd = ep }()
	before := openFds(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	fwd := portspec.Forward{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: port, GuestPort: 22}
	if err := te.AddForwards(TCP, []portspec.Forward{fwd}, false); err == nil {
		t.Error("AddForwards succeeded without epoll")
	}
	if l, err := net.Listen("tcp", l.Addr().String()); err != nil {
		t.Errorf("the forward's port stayed bound: %v", err)
	} else {
		l.Close()
	}

	syn := make([]byte, header.TCPMinLen+header.TCPSynOptionLen)
	header.TCP(syn).Encode(header.TCPFields{SrcPort: 40000, DstPort: 80, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(syn)})
	header.EncodeSynOptions(syn[header.TCPMinLen:], 1440, 7)
	echo := []byte{header.ICMPv6Echo, 0, 0, 0, 0, 7, 0, 1, 'p', 'i', 'n', 'g'}
	for _, f := range [][]byte{
		frameIP(testGuest6, testGW6, header.ProtoTCP, syn),
		frameIP(testGuest6, testGW6, header.ProtoUDP, udp6(5000, 9, []byte("x"))),
		frameIP(testGuest6, testGW6, header.ProtoICMPv6, echo),
	} {
		te.tapInput(f)
	}
	te.inputDone()
	rst := false
	for _, f := range te.output(t) {
		if f[12] == 0x86 && f[20] == header.ProtoTCP && header.TCP(f[54:]).Flags()&header.TCPRst != 0 {
			rst = true
		}
	}
	if !rst {
		t.Error("the guest's SYN got no reset")
	}
	if n := te.tcp.count + te.udp.count + te.icmp.count; n != 0 {
		t.Errorf("%d flows kept without epoll", n)
	}
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Errorf("descriptors left open: %v", leaked)
	}
}

// TestShortFramesPadded: a frame shorter than Ethernet's minimum (an ARP
// reply is 42 bytes) goes out padded with zeros to 60.
func TestShortFramesPadded(t *testing.T) {
	te := newTestEngine(t)
	te.tapInput(seedFrames()[0])
	out := te.output(t)
	if len(out) != 1 || len(out[0]) != minFrameLen || header.Ethernet(out[0]).Type() != header.EtherTypeARP {
		t.Fatalf("got %d frames (first %d bytes), want one ARP reply of %d", len(out), len(out[0]), minFrameLen)
	}
}

// TestFlowCaps: at its caps a guest's new TCP connection is reset and a
// new UDP flow gets ICMPv6 "administratively prohibited", each with one
// log line; the flows it has, and DHCPv6, go on working.
func TestFlowCaps(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoTCP, te.cfg.NoUDP = false, false
	te.cfg.MaxTCP, te.cfg.MaxUDP = 2, 2
	var log strings.Builder
	te.cfg.Log = stdlog.New(&log, "", 0)
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	syn := func(sport uint16) []byte {
		b := make([]byte, header.TCPMinLen+header.TCPSynOptionLen)
		header.TCP(b).Encode(header.TCPFields{SrcPort: sport, DstPort: lport, Seq: 1000, Flags: header.TCPSyn, Window: 0xffff, HeaderLen: len(b)})
		header.EncodeSynOptions(b[header.TCPMinLen:], 1440, 7)
		return frameIP(testGuest6, testGW6, header.ProtoTCP, b)
	}
	dgram := func(sport uint16) []byte {
		return frameIP(testGuest6, testGW6, header.ProtoUDP, udp6(sport, 9, []byte("x")))
	}
	for _, f := range [][]byte{syn(40001), syn(40002), dgram(5001), dgram(5002)} {
		te.tapInput(f)
	}
	te.inputDone()
	te.output(t)
	if te.tcp.count != 2 || te.udp.count != 2 {
		t.Fatalf("%d TCP and %d UDP flows below the caps, want 2 and 2", te.tcp.count, te.udp.count)
	}
	te.tapInput(syn(40003))
	te.tapInput(dgram(5003))
	te.tapInput(frameIP(testGuest6, testGW6, header.ProtoUDP, udp6(5001, 9, []byte("y")))) // an open flow
	te.inputDone()
	var rst, prohibited bool
	for _, f := range te.output(t) {
		switch f[20] {
		case header.ProtoTCP:
			rst = rst || header.TCP(f[54:]).Flags()&header.TCPRst != 0
		case header.ProtoICMPv6:
			m := header.ICMP(f[54:])
			prohibited = prohibited || m.Type() == header.ICMPv6Unreachable && m.Code() == header.ICMPv6AdminProhibited
		}
	}
	if !rst || !prohibited || te.tcp.count != 2 || te.udp.count != 2 {
		t.Errorf("past the caps: RST %v, ICMPv6 prohibited %v, flows %d/%d", rst, prohibited, te.tcp.count, te.udp.count)
	}
	if n := strings.Count(log.String(), "its cap"); n != 2 {
		t.Errorf("%d log lines about caps, want 2:\n%s", n, log.String())
	}
	te.tapInput(seedFrames()[4]) // a DHCPv6 solicit
	if out := te.output(t); len(out) != 1 || out[0][20] != header.ProtoUDP {
		t.Error("no DHCPv6 answer at the caps")
	}
	// A UDP flow idle udpEvictAfter gives its place to a new one, the
	// one idle longest: 5002, as 5001 sends again first.
	te.now += udpEvictAfter
	te.tapInput(dgram(5001))
	te.tapInput(dgram(5003))
	te.inputDone()
	te.output(t)
	for port, open := range map[uint16]bool{5001: true, 5002: false, 5003: true} {
		if _, f := te.udp.lookup(netip.AddrPortFrom(testGuest6, port)); (f != nil) != open {
			t.Errorf("after %v idle at --max-udp, UDP flow from port %d open: %v, want %v", udpEvictAfter, port, f != nil, open)
		}
	}
}

// TestQuietEngine: an engine with nothing due within idleTick waits for
// events that long, and one with a TCP flow, a paused listener or an RA
// due waits no longer than tick.
func TestQuietEngine(t *testing.T) {
	te := newTestEngine(t)
	ms := func(d time.Duration) int { return int(d / time.Millisecond) }
	te.nextRA = te.now // a guest's first frame came
	if got := te.pollTimeout(); got != ms(tick) {
		t.Errorf("with the first RA due: waits %d ms, want %d", got, ms(tick))
	}
	te.raTimer()
	te.output(t)
	if got := te.pollTimeout(); got != ms(idleTick) {
		t.Errorf("quiet: waits %d ms, want %d", got, ms(idleTick))
	}
	te.acceptPaused = append(te.acceptPaused, epollRef{kind: kindListen})
	if got := te.pollTimeout(); got != ms(tick) {
		t.Errorf("with a listener paused: waits %d ms, want %d", got, ms(tick))
	}
	te.acceptPaused = te.acceptPaused[:0]
	key := tcpKey{netip.AddrPortFrom(testGuest4, 40000), netip.AddrPortFrom(testGW4, 80)}
	idx, _ := te.tcp.add(key)
	if got := te.pollTimeout(); got != ms(tick) {
		t.Errorf("with a TCP flow: waits %d ms, want %d", got, ms(tick))
	}
	te.tcp.remove(idx, key)
	te.now += raRepeat
	if got := te.pollTimeout(); got != ms(tick) {
		t.Errorf("with the next RA due: waits %d ms, want %d", got, ms(tick))
	}
}

// listenLoopback is a TCP listener on the host's loopback, closed when
// the test ends.
func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// echoLoopback is a TCP echo server on the host's loopback, for the
// test's length.
func echoLoopback(t *testing.T) net.Listener {
	l := listenLoopback(t)
	go echo(l)
	return l
}

// echo answers each connection l accepts with what it reads, until l
// closes. Not io.Copy from a connection to itself: Go splices that, and
// keeps the pipes, which a count of descriptors sees.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}); c.Close() }()
	}
}

// listenUDPLoopback is a UDP socket on the host's loopback, closed when
// the test ends.
func listenUDPLoopback(t *testing.T) net.PacketConn {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}
