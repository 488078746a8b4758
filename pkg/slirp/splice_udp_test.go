package slirp

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// udpSocket is a non-blocking UDP socket of ap's family bound to ap,
// closed at the test's end unless keep.
func udpSocket(t *testing.T, ap netip.AddrPort, keep bool) int {
	t.Helper()
	fd, err := unix.Socket(socketFamily(ap.Addr()), unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !keep {
		t.Cleanup(func() { unix.Close(fd) })
	}
	if err := bind(fd, ap); err != nil {
		t.Fatal(err)
	}
	return fd
}

// boundPort is the port fd is bound to.
func boundPort(t *testing.T, fd int) uint16 {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return addrPortOf(sa).Port()
}

// TestSpliceUDPToAddressSentTo: a -U datagram to 127.0.0.2 goes to the
// host's 127.0.0.2, not 127.0.0.1, as pasta, through a dual-stack socket;
// one sender's datagrams to 127.0.0.1 and 127.0.0.2 are two flows, and
// each reply comes back from the address its datagram went to. Neither
// way allocates.
func TestSpliceUDPToAddressSentTo(t *testing.T) {
	te := newTestEngine(t)
	lo1, lo2 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	srv1 := udpSocket(t, netip.AddrPortFrom(lo1, 0), false)
	port := boundPort(t, srv1)
	srv2 := udpSocket(t, netip.AddrPortFrom(lo2, port), false)
	lfd := udpSocket(t, netip.AddrPortFrom(netip.IPv6Unspecified(), 0), true)
	if err := te.SpliceListen(UDP, lfd, port); err != nil {
		unix.Close(lfd)
		t.Fatal(err)
	}
	defer te.SpliceUnlisten(lfd)
	lport := boundPort(t, lfd)
	client := udpSocket(t, netip.AddrPortFrom(lo1, 0), false)
	var buf [64]byte
	for _, c := range []struct {
		to  netip.Addr
		srv int
	}{{lo1, srv1}, {lo2, srv2}} {
		to := netip.AddrPortFrom(c.to, lport)
		round := func() {
			if err := sendto(client, []byte("q"), to); err != nil {
				t.Fatal(err)
			}
			te.spliceListenEvent(0, unix.EPOLLIN)
			n, from, err := recvfrom(c.srv, buf[:])
			if err != nil || n != 1 {
				t.Fatalf("to %v: the host's %v got %d bytes: %v", to, c.to, n, err)
			}
			if err := sendto(c.srv, []byte("r"), from); err != nil {
				t.Fatal(err)
			}
			te.spliceUDP.each(func(i int32, f *spliceUDPFlow) { te.spliceUDPEvent(i, te.spliceUDP.gen(i), unix.EPOLLIN) })
			if n, from, err = recvfrom(client, buf[:]); err != nil || n != 1 || from != to {
				t.Fatalf("to %v: reply of %d bytes from %v: %v", to, n, from, err)
			}
		}
		round()
		if a := testing.AllocsPerRun(100, round); a != 0 {
			t.Errorf("to %v: %v allocations a round", to, a)
		}
	}
	if te.spliceUDP.count != 2 {
		t.Errorf("%d flows, want 2", te.spliceUDP.count)
	}
}

// TestSpliceUDPAfterRefusal: a -U datagram to a port nobody listens on
// is refused (ICMP), and its connected socket keeps the refusal for its
// next send, which returns it instead of sending. The sender's next
// datagram, to a service that came up meanwhile, must still go.
func TestSpliceUDPAfterRefusal(t *testing.T) {
	te := newTestEngine(t)
	lo := netip.MustParseAddr("127.0.0.1")
	srv := udpSocket(t, netip.AddrPortFrom(lo, 0), true)
	port := boundPort(t, srv)
	unix.Close(srv) // down, for the first datagram
	lfd := udpSocket(t, netip.AddrPortFrom(lo, 0), true)
	if err := te.SpliceListen(UDP, lfd, port); err != nil {
		unix.Close(lfd)
		t.Fatal(err)
	}
	defer te.SpliceUnlisten(lfd)
	to := netip.AddrPortFrom(lo, boundPort(t, lfd))
	client := udpSocket(t, netip.AddrPortFrom(lo, 0), false)
	if err := sendto(client, []byte("a"), to); err != nil {
		t.Fatal(err)
	}
	te.spliceListenEvent(0, unix.EPOLLIN)
	var flow int
	te.spliceUDP.each(func(_ int32, f *spliceUDPFlow) { flow = f.fd })
	if n, _ := unix.Poll([]unix.PollFd{{Fd: int32(flow), Events: unix.POLLERR}}, 5000); n != 1 {
		t.Fatal("the first datagram was not refused")
	}
	srv = udpSocket(t, netip.AddrPortFrom(lo, port), false) // up again
	if err := sendto(client, []byte("b"), to); err != nil {
		t.Fatal(err)
	}
	te.spliceListenEvent(0, unix.EPOLLIN)
	var buf [8]byte
	unix.Poll([]unix.PollFd{{Fd: int32(srv), Events: unix.POLLIN}}, 5000)
	if n, _, err := recvfrom(srv, buf[:]); err != nil || string(buf[:n]) != "b" {
		t.Fatalf("the service got %q: %v", buf[:n], err)
	}
}

// TestSpliceUDPErrorQueue: a -U socket, and a sender's, may be the
// namespace's agent's, which may have kept a copy and turned IP_RECVERR
// on through it. The ICMP errors the kernel then queues on it (a reply
// to a sender gone, a datagram to a service gone) have epoll report it
// (EPOLLERR) until they are read: left there, they spun the engine.
func TestSpliceUDPErrorQueue(t *testing.T) {
	te := newTestEngine(t)
	lo := netip.MustParseAddr("127.0.0.1")
	srv := udpSocket(t, netip.AddrPortFrom(lo, 0), true)
	port := boundPort(t, srv)
	lfd := udpSocket(t, netip.AddrPortFrom(lo, 0), true)
	unix.SetsockoptInt(lfd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	if err := te.SpliceListen(UDP, lfd, port); err != nil {
		unix.Close(lfd)
		t.Fatal(err)
	}
	defer te.SpliceUnlisten(lfd)
	to := netip.AddrPortFrom(lo, boundPort(t, lfd))
	flowEvents := func(events uint32) {
		te.spliceUDP.each(func(i int32, f *spliceUDPFlow) { te.spliceUDPEvent(i, te.spliceUDP.gen(i), events) })
	}
	erred := func(fd int, wait int) bool {
		p := []unix.PollFd{{Fd: int32(fd)}}
		unix.Poll(p, wait)
		return p[0].Revents&unix.POLLERR != 0
	}
	var buf [8]byte

	// A reply to a sender gone.
	gone := udpSocket(t, netip.AddrPortFrom(lo, 0), true)
	if err := sendto(gone, []byte("q"), to); err != nil {
		t.Fatal(err)
	}
	te.spliceListenEvent(0, unix.EPOLLIN)
	unix.Close(gone)
	unix.Poll([]unix.PollFd{{Fd: int32(srv), Events: unix.POLLIN}}, 5000)
	_, from, err := recvfrom(srv, buf[:])
	if err != nil {
		t.Fatal(err)
	}
	sendto(srv, []byte("r"), from)
	var flow int
	te.spliceUDP.each(func(_ int32, f *spliceUDPFlow) { flow = f.fd })
	unix.Poll([]unix.PollFd{{Fd: int32(flow), Events: unix.POLLIN}}, 5000)
	flowEvents(unix.EPOLLIN)
	if !erred(lfd, 5000) {
		t.Fatal("no error queued on the -U socket")
	}
	te.spliceListenEvent(0, unix.EPOLLIN|unix.EPOLLERR)
	if erred(lfd, 0) {
		t.Error("the -U socket's error queue left full: epoll reports it at every turn")
	}

	// A datagram to a service gone.
	unix.SetsockoptInt(flow, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	unix.Close(srv)
	unix.Write(flow, []byte("a")) // connected: to the service
	if !erred(flow, 5000) {
		t.Fatal("no error queued on the sender's socket")
	}
	flowEvents(unix.EPOLLIN | unix.EPOLLERR)
	if erred(flow, 0) {
		t.Error("the sender's error queue left full: epoll reports it at every turn")
	}
}
