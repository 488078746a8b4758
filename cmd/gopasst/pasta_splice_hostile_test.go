package main

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The engine's side of the loopback path against an agent that answers
// wrong, compromised or buggy: whatever it sends, the engine keeps no
// descriptor it should not, waits no longer than its timeout, and a bad
// socket fails only the connection it was taken for, never to be
// spliced as if it were the namespace's TCP (or UDP) socket.

// agentMsg is one message of a fake agent's: the bytes, and descriptors
// it closes once sent.
type agentMsg struct {
	b   []byte
	fds []int
}

// fakeAgent answers each request of a splicer's on a socket pair with
// what answer returns for it, and stops once the splicer's end is
// closed; the splicer waits 300 ms for an answer.
func fakeAgent(t *testing.T, answer func(q spliceRequest) []agentMsg) *splicer {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((300 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(pair[1], unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer unix.Close(pair[1])
		for {
			var b [spliceMsgLen]byte
			n, fds, err := recvMsg(pair[1], b[:], 0)
			closeFds(fds)
			if err != nil || n == 0 {
				return
			}
			q, _ := parseSpliceRequest(b[:n])
			for _, m := range answer(q) {
				var oob []byte
				if len(m.fds) > 0 {
					oob = unix.UnixRights(m.fds...)
				}
				unix.Sendmsg(pair[1], m.b, oob, nil, 0)
				closeFds(m.fds)
			}
		}
	}()
	s := newSplicer(&spliceRules{HostLoToNsLo: true})
	s.take(pair[0], 300*time.Millisecond)
	t.Cleanup(func() {
		s.Idle()
		unix.Close(pair[0])
		<-done
	})
	return s
}

// answerOf is the agent's answer to the request of sequence number seq.
func answerOf(seq uint32, errno unix.Errno) []byte {
	b := make([]byte, spliceMsgLen)
	binary.BigEndian.PutUint32(b, seq)
	binary.BigEndian.PutUint32(b[4:], uint32(errno))
	return b
}

// openFds is how many descriptors the process has open.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// newFd is a descriptor of the kind open opens, which fails the test
// if it cannot.
func newFd(t *testing.T, open func() (int, error)) int {
	t.Helper()
	fd, err := open()
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func socketOf(family, typ int) func() (int, error) {
	return func() (int, error) { return unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0) }
}

var tcp4 = socketOf(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK)

// tcp4s are n unconnected TCP sockets, as the agent gives them.
func tcp4s(t *testing.T, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = newFd(t, tcp4)
	}
	return fds
}

func TestPastaSpliceHostileAgentTCP(t *testing.T) {
	l, port := listenLoopback(t)
	other, _ := listenLoopback(t) // where an already connected socket goes
	connected := func() (int, error) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, sockaddrOf(netip.MustParseAddrPort(other.Addr().String())))
		}
		return fd, err
	}
	listening := func() (int, error) { return listenTCP(netip.MustParseAddrPort("127.0.0.1:0")) }
	pipe := func() (int, error) {
		var p [2]int
		err := unix.Pipe2(p[:], unix.O_CLOEXEC)
		unix.Close(p[1])
		return p[0], err
	}
	eventfd := func() (int, error) { return unix.Eventfd(0, unix.EFD_CLOEXEC) }
	file := func() (int, error) { return unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0) }
	// one answers with one descriptor of a kind.
	one := func(kind func() (int, error)) func(*testing.T, spliceRequest) []agentMsg {
		return func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), []int{newFd(t, kind)}}}
		}
	}
	for _, tc := range []struct {
		name   string
		answer func(*testing.T, spliceRequest) []agentMsg
		want   error // nil: a TCP socket connecting to the port, from the first answer
		kept   int   // sockets the splicer keeps after
	}{
		{"the sockets asked for", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), tcp4s(t, int(q.n))}}
		}, nil, spliceSpares - 1},
		{"more sockets than asked for", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), tcp4s(t, int(q.n)+5)}}
		}, nil, spliceSpares - 1},
		{"fewer sockets than asked for", one(tcp4), nil, 0},
		{"a blocking socket", one(socketOf(unix.AF_INET, unix.SOCK_STREAM)), nil, 0},
		{"no descriptor, errno 0", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), nil}}
		}, unix.EPROTO, 0},
		{"an errno and sockets", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, unix.EPERM), tcp4s(t, 3)}}
		}, unix.EPERM, 0},
		{"a truncated answer with sockets", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0)[:4], tcp4s(t, 3)}}
		}, unix.EPROTO, 0},
		{"an answer to no request, with sockets", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq-1, 0), tcp4s(t, 3)}, {answerOf(q.seq, 0), tcp4s(t, 3)}}
		}, unix.EPROTO, 0},
		{"a pipe", one(pipe), unix.EPROTO, 0},
		{"an eventfd", one(eventfd), unix.EPROTO, 0},
		{"a file", one(file), unix.EPROTO, 0},
		{"a UDP socket", one(socketOf(unix.AF_INET, unix.SOCK_DGRAM)), unix.EPROTO, 0},
		{"a unix socket", one(socketOf(unix.AF_UNIX, unix.SOCK_STREAM)), unix.EPROTO, 0},
		{"an IPv6 socket", one(socketOf(unix.AF_INET6, unix.SOCK_STREAM)), unix.EINVAL, 0},
		{"a listening socket", one(listening), unix.EISCONN, 0},
		{"a connected socket", one(connected), unix.EISCONN, 0},
		{"a bad socket among good ones", func(t *testing.T, q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), append(tcp4s(t, 2), newFd(t, pipe))}} // the last is taken first
		}, unix.EPROTO, 2},
	} {
		before := openFds(t)
		t.Run(tc.name, func(t *testing.T) {
			s := fakeAgent(t, func(q spliceRequest) []agentMsg { return tc.answer(t, q) })
			fd, err := s.Dial(slirp.TCP, netip.MustParseAddrPort("127.0.0.1:40000"), port)
			defer closeFd(fd)
			if err != tc.want {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
			if kept := len(s.spares[0]); kept != tc.kept {
				t.Errorf("%s: %d sockets kept, want %d", tc.name, kept, tc.kept)
			}
			if err == nil {
				wantTCPTo(t, tc.name, fd, l)
			}
		})
		if after := openFds(t); after > before {
			t.Errorf("%s: %d descriptors open after, %d before", tc.name, after, before)
		}
	}
}

// wantTCPTo checks that fd, from Dial, is a non-blocking TCP socket
// that connects to l.
func wantTCPTo(t *testing.T, name string, fd int, l net.Listener) {
	t.Helper()
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Errorf("%s: the socket is blocking (%v)", name, err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	unix.Poll(pfd, 2000)
	if to, err := peerOf(fd); err != nil || to.String() != l.Addr().String() {
		t.Errorf("%s: connected to %v (%v), want %v", name, to, err, l.Addr())
		return
	}
	l.(*net.TCPListener).SetDeadline(time.Now().Add(2 * time.Second))
	c, err := l.Accept()
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	c.Close()
}

// A second splicer's request finds the answers to the first's, which
// timed out: it skips them, as many as timed out, their sockets closed;
// an agent that answers only with stale sequence numbers is not waited
// on through them all.
func TestPastaSpliceHostileAgentStale(t *testing.T) {
	l, port := listenLoopback(t)
	from := netip.MustParseAddrPort("127.0.0.1:40000")
	before := openFds(t)
	t.Run("late", func(t *testing.T) {
		timedOut := make(chan struct{}, 2)
		s := fakeAgent(t, func(q spliceRequest) []agentMsg {
			if q.seq <= 2 {
				<-timedOut // answered once the splicer gave up
			}
			return []agentMsg{{answerOf(q.seq, 0), tcp4s(t, int(q.n))}}
		})
		for range 2 {
			if _, err := s.Dial(slirp.TCP, from, port); err != unix.EAGAIN {
				t.Fatalf("an answer that comes late: %v, want EAGAIN", err)
			}
			timedOut <- struct{}{}
		}
		fd, err := s.Dial(slirp.TCP, from, port)
		if err != nil {
			t.Fatalf("after two answers that came late: %v", err)
		}
		wantTCPTo(t, "after late answers", fd, l)
		unix.Close(fd)
		if s.late != 0 || len(s.spares[0]) != spliceSpares-1 {
			t.Errorf("%d answers still due, %d sockets kept; want 0, %d", s.late, len(s.spares[0]), spliceSpares-1)
		}
	})
	if after := openFds(t); after > before {
		t.Errorf("%d descriptors open after, %d before", after, before)
	}
	t.Run("stale only", func(t *testing.T) {
		s := fakeAgent(t, func(q spliceRequest) []agentMsg {
			ms := make([]agentMsg, 2000)
			for i := range ms {
				ms[i].b = answerOf(q.seq-1, 0)
				if i < 200 {
					ms[i].fds = tcp4s(t, 1)
				}
			}
			return ms
		})
		start := time.Now()
		if _, err := s.Dial(slirp.TCP, from, port); err != unix.EPROTO {
			t.Errorf("stale answers only: %v, want EPROTO", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("stale answers only: the splicer waited %v", d)
		}
	})
	if after := openFds(t); after > before {
		t.Errorf("stale answers: %d descriptors open after, %d before", after, before)
	}
}

// A UDP sender's socket is the one UDP socket the agent connected.
func TestPastaSpliceHostileAgentUDP(t *testing.T) {
	udp := socketOf(unix.AF_INET, unix.SOCK_DGRAM)
	for _, tc := range []struct {
		name string
		fds  []func() (int, error)
		want error
	}{
		{"a blocking UDP socket", []func() (int, error){udp}, nil},
		{"two UDP sockets", []func() (int, error){udp, udp}, errCtrunc},
		{"a TCP socket", []func() (int, error){tcp4}, unix.EPROTO},
	} {
		before := openFds(t)
		t.Run(tc.name, func(t *testing.T) {
			s := fakeAgent(t, func(q spliceRequest) []agentMsg {
				var fds []int
				for _, kind := range tc.fds {
					fds = append(fds, newFd(t, kind))
				}
				return []agentMsg{{answerOf(q.seq, 0), fds}}
			})
			fd, err := s.Dial(slirp.UDP, netip.MustParseAddrPort("127.0.0.1:40000"), 18512)
			defer closeFd(fd)
			if err != tc.want {
				t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			}
			if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK == 0 {
				t.Errorf("%s: the socket is blocking", tc.name)
			}
		})
		if after := openFds(t); after > before {
			t.Errorf("%s: %d descriptors open after, %d before", tc.name, after, before)
		}
	}
}

// An engine with no descriptor free for the agent's sockets (MSG_CTRUNC)
// keeps those that came, the kernel closes the rest, and it asks again
// once it has room.
func TestPastaSpliceOutOfFds(t *testing.T) {
	l, port := listenLoopback(t)
	from := netip.MustParseAddrPort("127.0.0.1:40000")
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	defer unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	before := openFds(t)
	t.Run("", func(t *testing.T) {
		// The agent's sockets, above the limit: closing them once sent
		// makes no room under it.
		batches := make(chan []int, 3)
		for range cap(batches) {
			fds := tcp4s(t, spliceSpares)
			for i, fd := range fds {
				fds[i] = newFd(t, func() (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 1000) })
				unix.Close(fd)
			}
			batches <- fds
		}
		defer func() {
			for len(batches) > 0 {
				closeFds(<-batches)
			}
		}()
		s := fakeAgent(t, func(q spliceRequest) []agentMsg {
			return []agentMsg{{answerOf(q.seq, 0), <-batches}}
		})
		next, err := unix.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(next)
		for _, room := range []int{5, 0} {
			lim := old
			lim.Cur = uint64(next + room)
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
			fd, err := s.Dial(slirp.TCP, from, port)
			unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
			if room == 0 {
				if err == nil {
					unix.Close(fd)
					t.Errorf("no room: a socket")
				}
				continue
			}
			if err != nil {
				t.Fatalf("room for %d: %v", room, err)
			}
			wantTCPTo(t, "room for some", fd, l)
			unix.Close(fd)
			// At most what room was left: other goroutines of the
			// test process may take some of it meanwhile.
			if n := len(s.spares[0]); n > room-1 {
				t.Errorf("room for %d: %d kept, want at most %d", room, n, room-1)
			}
			s.Idle()
		}
		fd, err := s.Dial(slirp.TCP, from, port)
		if err != nil {
			t.Fatalf("room again: %v", err)
		}
		wantTCPTo(t, "room again", fd, l)
		unix.Close(fd)
	})
	if after := openFds(t); after > before {
		t.Errorf("%d descriptors open after, %d before", after, before)
	}
}

// spliceEngine runs an engine whose loopback path is s, forwarding the
// host's 127.0.0.1 on a free port to the namespace's port, and returns
// that host port.
func spliceEngine(t *testing.T, s *splicer, port uint16) uint16 {
	t.Helper()
	l, hostPort := listenLoopback(t)
	l.Close()
	eng, err := slirp.New(slirp.Config{OurMAC: [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55},
		Addr4: netip.MustParseAddr("192.0.2.2"), Prefix4: 24, Gateway4: netip.MustParseAddr("192.0.2.1"), Splicer: s}, -1)
	if err != nil {
		t.Fatal(err)
	}
	fwd := portspec.Forward{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: hostPort, GuestPort: port}
	if err := eng.AddForwards(slirp.TCP, []portspec.Forward{fwd}, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { eng.Run(); close(done) }()
	t.Cleanup(func() { eng.Stop(); <-done })
	return hostPort
}

// echoOnce connects to port on the host's loopback and reports whether
// what it sent came back.
func echoOnce(port uint16) error {
	c, err := net.DialTimeout("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	var b [4]byte
	_, err = io.ReadFull(c, b[:])
	return err
}

// settles waits until the process has at most want descriptors open, or
// a while, and returns how many it has. Fewer is no leak: the test
// process's other goroutines (an earlier test's agent thread, ending)
// may close theirs meanwhile.
func settles(t *testing.T, want int, within time.Duration) int {
	t.Helper()
	n := openFds(t)
	for end := time.Now().Add(within); n > want && time.Now().Before(end); n = openFds(t) {
		time.Sleep(50 * time.Millisecond)
	}
	return n
}

// After a burst of connections on the loopback path and a second with
// none, the engine holds none of the agent's sockets and no pipe; and
// the next connection, which asks the agent again, goes through. The
// agent is the real one, in a namespace of its own, where an echo server
// listens.
func TestPastaSpliceIdleExpiry(t *testing.T) {
	const nsPort = 18541
	r := &spliceRules{HostLoToNsLo: true}
	sock := serveInTestNS(t, func(sock int, tables map[string]agentTable) {
		fd, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:18541"))
		if err != nil {
			t.Error(err)
			return
		}
		unix.Listen(fd, 64)
		f := os.NewFile(uintptr(fd), "echo")
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Error(err)
			return
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				// Not with splice(2): Go keeps the pipes it takes,
				// which the count of descriptors would see.
				go func() { io.Copy(io.MultiWriter(c), c); c.Close() }()
			}
		}()
		serveSplice(sock, r, nil)
		l.Close()
	})
	s := newSplicer(r)
	s.take(sock, 2*time.Second)
	t.Cleanup(s.Idle) // once the engine stopped
	hostPort := spliceEngine(t, s, nsPort)
	if err := echoOnce(hostPort); err != nil {
		t.Fatalf("the first connection: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // the engine idle, its pool emptied
	base := openFds(t)
	for i := range 40 {
		if err := echoOnce(hostPort); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if n := openFds(t); n < base+spliceSpares/2 {
		t.Errorf("%d descriptors open after the burst, %d before: nothing kept?", n, base)
	}
	if n := settles(t, base, 3*time.Second); n > base {
		t.Errorf("%d descriptors open a while after the burst, %d before", n, base)
	}
	if err := echoOnce(hostPort); err != nil {
		t.Errorf("the connection after the engine let go of its sockets: %v", err)
	}
}

// A connection whose socket from the agent was bad fails, and the good
// sockets that came with it still go once the path idles: they were
// kept for good when no pair came of that connection, none after.
func TestPastaSpliceIdleAfterBadSocket(t *testing.T) {
	s := fakeAgent(t, func(q spliceRequest) []agentMsg {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Error(err)
			return nil
		}
		unix.Close(p[1])
		return []agentMsg{{answerOf(q.seq, 0), append(tcp4s(t, int(q.n)-1), p[0])}}
	})
	s.take(s.fd, 2*time.Second)
	hostPort := spliceEngine(t, s, 18541)
	time.Sleep(1500 * time.Millisecond) // the engine idle, its pool emptied
	base := openFds(t)
	if err := echoOnce(hostPort); err == nil {
		t.Fatal("a connection spliced to a pipe")
	}
	if n := settles(t, base, 3*time.Second); n > base {
		t.Errorf("%d descriptors open a while after, %d before", n, base)
	}
}

// An empty request is malformed too: refused, and the agent serves on.
// It read as the engine's end closed, and the agent stopped.
func TestPastaSpliceEmptyRequest(t *testing.T) {
	r := &spliceRules{HostLoToNsLo: true}
	sock := serveInTestNS(t, func(sock int, tables map[string]agentTable) {
		serveSplice(sock, r, nil)
	})
	s := newSplicer(r)
	s.take(sock, 2*time.Second)
	defer s.Idle()
	unix.Sendmsg(sock, nil, nil, nil, 0)
	var reply [spliceMsgLen]byte
	n, fds, err := recvMsg(sock, reply[:], 1)
	closeFds(fds)
	if err != nil || n != spliceMsgLen || binary.BigEndian.Uint32(reply[4:]) != uint32(unix.EPERM) {
		t.Errorf("an empty request: answer %v (%d bytes, %d descriptors, %v), want EPERM", reply, n, len(fds), err)
	}
	if fd, err := s.Dial(slirp.TCP, netip.MustParseAddrPort("[::1]:40000"), 18531); err != nil {
		t.Errorf("after an empty request: %v", err)
	} else {
		unix.Close(fd)
	}
}

// listenLoopback is a TCP listener on the host's loopback, closed when
// the test ends, and its port.
func listenLoopback(t *testing.T) (net.Listener, uint16) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, uint16(l.Addr().(*net.TCPAddr).Port)
}
