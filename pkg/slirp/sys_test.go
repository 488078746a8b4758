package slirp

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSockaddrRoundTrip drives every use of the one sockaddr conversion
// (bind, connect, accept, sendto, recvfrom) against real loopback
// sockets, with Go's net package reading the same sockets as an
// independent check of addresses and ports, for both families.
func TestSockaddrRoundTrip(t *testing.T) {
	for _, lo := range []string{"127.0.0.1", "::1"} {
		t.Run(lo, func(t *testing.T) {
			ip := netip.MustParseAddr(lo)
			fam := socketFamily(ip)

			// bind + accept: Go dials our listener.
			lfd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(lfd)
			if err := bind(lfd, netip.AddrPortFrom(ip, 0)); err != nil {
				t.Fatal(err)
			}
			unix.Listen(lfd, 1)
			sa, _ := unix.Getsockname(lfd)
			lport := sockPort(sa)
			c, err := net.Dial("tcp", netip.AddrPortFrom(ip, lport).String())
			if err != nil {
				t.Fatalf("dial our listener on port %d: %v", lport, err)
			}
			defer c.Close()
			var fd int
			var peer netip.AddrPort
			for fd, peer, err = accept(lfd); err == unix.EAGAIN; fd, peer, err = accept(lfd) {
			}
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); peer != netip.AddrPortFrom(ip, want.Port()) {
				t.Errorf("accept: peer %v, Go's end is %v", peer, want)
			}

			// connect: to a Go listener.
			gl, err := net.Listen("tcp", net.JoinHostPort(lo, "0"))
			if err != nil {
				t.Fatal(err)
			}
			defer gl.Close()
			cfd, _ := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			defer unix.Close(cfd)
			if err := connect(cfd, gl.Addr().(*net.TCPAddr).AddrPort()); err != nil {
				t.Fatalf("connect to %v: %v", gl.Addr(), err)
			}

			// sendto and recvfrom, with a Go UDP socket at the other end.
			gu, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
			if err != nil {
				t.Fatal(err)
			}
			defer gu.Close()
			ufd, _ := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			defer unix.Close(ufd)
			if err := bind(ufd, netip.AddrPortFrom(ip, 0)); err != nil {
				t.Fatal(err)
			}
			usa, _ := unix.Getsockname(ufd)
			ours := netip.AddrPortFrom(ip, sockPort(usa))
			if err := sendto(ufd, []byte("hi"), gu.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			n, from, err := gu.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:n]) != "hi" || from != ours {
				t.Errorf("sendto: Go got %q from %v, %v; want \"hi\" from %v", buf[:n], from, err, ours)
			}
			gu.WriteToUDPAddrPort([]byte("yo"), ours)
			n, src, err := recvfrom(ufd, buf)
			if err != nil || string(buf[:n]) != "yo" || src != gu.LocalAddr().(*net.UDPAddr).AddrPort() {
				t.Errorf("recvfrom: %q from %v, %v; want \"yo\" from %v", buf[:n], src, err, gu.LocalAddr())
			}
		})
	}
}

// sockPort reads the port of x/sys's own sockaddr form.
func sockPort(sa unix.Sockaddr) uint16 {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(sa.Port)
	case *unix.SockaddrInet6:
		return uint16(sa.Port)
	}
	return 0
}

// Dropping more than a stream holds before its end is an error, never a
// loop: with a TCP socket (MSG_TRUNC) and with a unix socket or a
// command's (a read).
func TestDiscardPastTheEnd(t *testing.T) {
	var tcp tcpTable
	for _, unixFlow := range []bool{false, true} {
		var a, b int
		if unixFlow {
			pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			a, b = pair[0], pair[1]
		} else {
			l := listenLoopback(t)
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			s, err := l.Accept()
			if err != nil {
				t.Fatal(err)
			}
			f, _ := c.(*net.TCPConn).File()
			g, _ := s.(*net.TCPConn).File()
			c.Close()
			s.Close()
			a, b = int(f.Fd()), int(g.Fd())
			defer f.Close()
			defer g.Close()
		}
		unix.Write(b, []byte("four"))
		unix.Shutdown(b, unix.SHUT_WR)
		f := &tcpFlow{fd: a}
		if unixFlow {
			f.flags |= tcpNotTCP
			defer unix.Close(a)
			defer unix.Close(b)
		}
		// The data and the end are there before the drop.
		unix.Poll([]unix.PollFd{{Fd: int32(a), Events: unix.POLLRDHUP}}, 5000)
		if err := tcp.discard(f, 8); err != unix.EIO {
			t.Errorf("unix socket %v: %v, want EIO", unixFlow, err)
		}
	}
}

// loopbackPair connects a TCP pair on loopback: one end for the test,
// the other's descriptor, non-blocking, for the engine to own.
func loopbackPair(t *testing.T) (net.Conn, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, fd
}

// TestDiscardAtUrgentMarkWithSignal: a read that starts at urgent data
// (SO_OOBINLINE) fails with EAGAIN, having read nothing, if a signal is
// pending meanwhile (tcp_recvmsg), and the Go runtime signals its threads
// (SIGURG, to preempt). discard drops bytes the guest acknowledged, which
// are there: it must try again, not report the flow broken (it was reset).
func TestDiscardAtUrgentMarkWithSignal(t *testing.T) {
	c, fd := loopbackPair(t)
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
	craw, _ := c.(*net.TCPConn).SyscallConn()

	defer signalThread()()
	for i := range 2000 {
		c.Write([]byte("abc"))
		craw.Write(func(cfd uintptr) bool { unix.Sendto(int(cfd), []byte("d"), unix.MSG_OOB, nil); return true })
		for inq(fd) < 4 {
			runtime.Gosched()
		}
		// The first read stops at the mark; the second starts there.
		if err := discard(fd, 3); err != nil {
			t.Fatalf("round %d: dropping the bytes before the mark: %v", i, err)
		}
		if err := discard(fd, 1); err != nil {
			t.Fatalf("round %d: dropping the urgent byte: %v", i, err)
		}
	}
}

// signalThread pins the calling goroutine to its thread and has another
// send that thread SIGURG, the runtime's preemption signal, without
// pause, so that a system call on it often finds a signal pending, until
// the function it returns is called.
func signalThread() (stop func()) {
	runtime.LockOSThread()
	pid, tid := unix.Getpid(), unix.Gettid()
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			default:
				unix.Tgkill(pid, tid, unix.SIGURG)
			}
		}
	}()
	return func() {
		close(done)
		runtime.UnlockOSThread()
	}
}

// TestFdRoomAhead checks that the engine grows the descriptor table
// ahead, at its start and by as many as it is asked for, and keeps no
// descriptor open for it. The table's size is the kernel's FDSize.
func TestFdRoomAhead(t *testing.T) {
	e, err := New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}, -1)
	if err != nil {
		t.Fatal(err)
	}
	if got := fdSize(t); got < fdTableAhead {
		t.Errorf("after New, the table holds %d descriptors, want %d or more", got, fdTableAhead)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	n := 2 * fdSize(t)
	if uint64(n) > lim.Cur {
		t.Skipf("RLIMIT_NOFILE %d is below %d", lim.Cur, n)
	}
	before := openFds(t)
	e.fdRoomAhead(n)
	if got := fdSize(t); got < n {
		t.Errorf("after fdRoomAhead(%d), the table holds %d", n, got)
	}
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Errorf("left open: %v", leaked)
	}
}

// fdSize is the size of the process's descriptor table.
func fdSize(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "FDSize:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no FDSize in /proc/self/status")
	return 0
}

// TestSendmmsgBatch: one sendmmsg sends every datagram of a batch, laid
// out as udpQueue lays them. mmsghdr was 4 bytes longer than the
// kernel's on 32-bit machines, which read each message after the first
// 4 bytes off and refused it: a batch went one datagram a call.
func TestSendmmsgBatch(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	var b udpSendBatch
	const n = 3
	for i := range n {
		payload := []byte{byte('a' + i)}
		b.iovs[i] = iovec(&payload[0], len(payload))
		name, namelen := putSockaddr(&b.addrs[i], to)
		b.msgs[i] = mmsghdr{hdr: unix.Msghdr{Name: (*byte)(name), Namelen: namelen, Iov: &b.iovs[i], Iovlen: 1}}
	}
	if sent, err := sendmmsg(fd, b.msgs[:n]); sent != n || err != nil {
		t.Fatalf("sendmmsg of %d datagrams: %d sent, %v", n, sent, err)
	}
	buf := make([]byte, 16)
	for i := range n {
		k, err := rx.Read(buf)
		if err != nil || string(buf[:k]) != string(rune('a'+i)) {
			t.Fatalf("datagram %d: %q, %v", i, buf[:k], err)
		}
	}
}

// TestTCPWindowLargeSndbuf: a host socket's send buffer of 256 MiB, as
// fixedSndbuf sets it where net.core.wmem_max is 128 MiB (a common
// tuning), is offered to the guest as the largest window. Where int is
// 32 bits wide, 15/16 of it was computed past 2^31: negative, a closed
// window that no EPOLLOUT would reopen, and the guest's upload stalled.
func TestTCPWindowLargeSndbuf(t *testing.T) {
	_, fd := loopbackPair(t)
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 128<<20); err != nil {
		t.Skipf("SO_SNDBUFFORCE: %v", err)
	}
	f := &tcpFlow{fd: fd, ourWS: tcpOurWS, mss: 1460}
	if w := (&Engine{}).tcpWindow(f); w != 0xffff {
		t.Fatalf("window %d, want 65535", w)
	}
}
