package slirp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"golang.org/x/sys/unix"
)

// splicedPair joins two loopback connections as the loopback path does
// (spliceJoin): it returns the client's end, the server's, and the
// engine's socket to the server. The client's end of the pair has the
// options a -t listener passes on.
func splicedPair(t *testing.T, te *testEngine) (client, server net.Conn, b int) {
	t.Helper()
	client, a := loopbackPair(t)
	server, b = loopbackPair(t)
	spliceSockOpts(a)
	te.spliceJoin(a, b)
	return client, server, b
}

// TestSpinAfterSplicedMessage: on the loopback path, a turn that spliced
// a short message polls, as a request or an answer is mostly followed by
// the next soon; a turn that spliced bulk does not, as polling there
// took the CPU the two ends needed (spin).
func TestSpinAfterSplicedMessage(t *testing.T) {
	te := newTestEngine(t)
	client, server, _ := splicedPair(t, te)
	te.spin.score = spinOn // as after polls that paid
	got := make([]byte, 1)
	client.Write([]byte{1})
	te.turn(1000)
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if te.pollTimeout() != 0 {
		t.Error("does not poll after a one-byte message")
	}
	go io.Copy(io.Discard, server)
	client.Write(make([]byte, 256<<10))
	te.turn(1000)
	if te.pollTimeout() == 0 {
		t.Error("polls after a turn that spliced bulk")
	}
}

// TestSpliceAnswerBeforeReset: a server that answers and resets (as a
// close with input unread does) before the engine's turn: the engine
// reads the answer before the reset, as a direct connection's client
// would, and the client gets both. The pair was reset at the error, the
// answer with it.
func TestSpliceAnswerBeforeReset(t *testing.T) {
	te := newTestEngine(t)
	client, server, b := splicedPair(t, te)
	server.Write([]byte("answer"))
	reset(server)
	// No events asked for: poll reports the error alone.
	if n, _ := unix.Poll([]unix.PollFd{{Fd: int32(b)}}, 10000); n != 1 {
		t.Fatal("the reset never reached the engine's socket")
	}
	turnUntil(t, te, "the pair closed", func() bool { return te.splice.count == 0 })
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "answer" || !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("the client read %q (%v), want %q and a reset", got, err, "answer")
	}
}

// dialSplicer is a Splicer whose "namespace" is the host's loopback: it
// connects, without waiting, to to (with a socket of the protocol
// asked), or fails with err; it counts the Idle calls.
type dialSplicer struct {
	to    netip.AddrPort
	err   error
	idles int
}

func (d *dialSplicer) Dial(proto Proto, from netip.AddrPort, port uint16) (int, error) {
	if d.err != nil {
		return -1, d.err
	}
	typ := unix.SOCK_STREAM
	if proto == UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = connect(fd, d.to); err == nil || err == unix.EINPROGRESS {
			return fd, nil
		}
		unix.Close(fd)
	}
	return -1, err
}

func (d *dialSplicer) Idle() { d.idles++ }

// spliceEchoes is a Splicer whose connections go to an echo server.
func spliceEchoes(t *testing.T) *dialSplicer {
	l := echoLoopback(t)
	return &dialSplicer{to: netip.MustParseAddrPort(l.Addr().String())}
}

// spliceForward gives te the Splicer sp and a -t forward on the host's
// 127.0.0.1, and returns the forward's address.
func spliceForward(t *testing.T, te *testEngine, sp Splicer) string {
	t.Helper()
	te.cfg.Splicer = sp
	lo := netip.MustParseAddr("127.0.0.1")
	if err := te.AddForwards(TCP, []portspec.Forward{{Addr: lo, GuestPort: 1}}, false); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(te.fwd.listeners[0].fd)
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(lo, addrPortOf(sa).Port()).String()
}

// TestSpliceChurn: thousands of loopback clients of a -t port that come
// and go (reset at once, reset after a request, end in order after their
// echo, or close at once) leave no pair, no more pipes than the pool
// keeps, and once the loopback path idles, not those either: the
// process's descriptors are back where they were, and the Splicer was
// told to let its own go. Every echo comes back whole.
func TestSpliceChurn(t *testing.T) {
	te := newTestEngine(t)
	sp := spliceEchoes(t)
	to := spliceForward(t, te, sp)
	te.cfg.MaxTCP = 1 << 16
	before := openFds(t)
	const clients, each = 8, 250
	done := make(chan struct{})
	errs := make(chan error, clients*each)
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for g := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					c, err := net.DialTimeout("tcp", to, 10*time.Second)
					if err != nil {
						errs <- err
						return
					}
					switch (g + i) % 4 {
					case 0:
						reset(c)
					case 1:
						c.Write([]byte("request"))
						reset(c)
					case 2:
						msg := fmt.Sprintf("client %d, connection %d", g, i)
						c.Write([]byte(msg))
						c.(*net.TCPConn).CloseWrite()
						c.SetReadDeadline(time.Now().Add(10 * time.Second))
						if got, err := io.ReadAll(c); string(got) != msg {
							errs <- fmt.Errorf("%q came back %q (%v)", msg, got, err)
						}
						c.Close()
					case 3:
						c.Close()
					}
				}
			}()
		}
		wg.Wait()
	}()
	turnUntil(t, te, "the clients done, their pairs closed", func() bool {
		select {
		case <-done:
			return te.splice.count == 0
		default:
			return false
		}
	})
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(te.splicePipes.pipes); n > splicePipesKept {
		t.Errorf("%d pipes kept, at most %d", n, splicePipesKept)
	}
	turnUntil(t, te, "the loopback path idle", func() bool { return te.splicePipes.idle })
	if len(te.splicePipes.pipes) > 0 || sp.idles != 1 {
		t.Errorf("idle: %d pipes kept, the Splicer told %d times", len(te.splicePipes.pipes), sp.idles)
	}
	turnUntil(t, te, "the servers' ends closed", func() bool { return len(leakedFds(t, before)) == 0 })
}

// TestSpliceRefusedIsReset: a connection the loopback path cannot join,
// for want of its other end (--max-tcp reached, -t or -T; the Splicer
// failed, as on an agent's late answer; no descriptor for its pipes), is
// reset, as one whose other end is refused (nothing listening there) is:
// closed in order, it read as an empty answer, to a client that reads to
// the end all the server had.
func TestSpliceRefusedIsReset(t *testing.T) {
	te := newTestEngine(t)
	sp := spliceEchoes(t)
	to := spliceForward(t, te, sp)
	te.cfg.MaxTCP = 1
	lfd := tcpListener(t)
	if err := te.SpliceListen(TCP, lfd, sp.to.Port()); err != nil {
		t.Fatal(err)
	}
	defer te.SpliceUnlisten(lfd)
	sa, _ := unix.Getsockname(lfd)
	toNS := addrPortOf(sa).String() // -T, from the namespace
	dial := func(to string) net.Conn {
		c, err := net.DialTimeout("tcp", to, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	held := dial(to)
	turnUntil(t, te, "a pair joined", func() bool { return te.splice.count == 1 })
	// starve leaves the process room for the accepted connection and its
	// other end, not their pipes, the pool emptied.
	starve := func() (restore func()) {
		te.splicePipes.used = te.now - splicePipesIdle
		te.splicePipesExpire()
		return fdLimit(t, 2)
	}
	for _, tc := range []struct {
		name   string
		to     string
		err    error         // the Splicer's
		starve func() func() // before the engine accepts
	}{
		{"-t at --max-tcp", to, nil, nil},
		{"-T at --max-tcp", toNS, nil, nil},
		{"the Splicer failed", to, unix.EAGAIN, nil},
		{"no descriptor for pipes", to, nil, starve}, // the last: the echo server's accept may fail
	} {
		if tc.name == "the Splicer failed" {
			held.Close()
			turnUntil(t, te, "the pair closed", func() bool { return te.splice.count == 0 })
		}
		sp.err = tc.err
		c := dial(tc.to)
		raw, _ := c.(*net.TCPConn).SyscallConn()
		restore := func() {}
		if tc.starve != nil {
			restore = tc.starve()
		}
		turnUntil(t, te, tc.name+": the client's connection ended", func() bool {
			n := 0
			raw.Control(func(fd uintptr) { n, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0) })
			return n > 0
		})
		restore()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, unix.ECONNRESET) {
			t.Errorf("%s: the client read %v, want a reset", tc.name, err)
		}
	}
}

// tcpListener is a TCP socket listening on 127.0.0.1, for SpliceListen,
// which closes it.
func tcpListener(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		err = bind(fd, netip.MustParseAddrPort("127.0.0.1:0"))
	}
	if err == nil {
		err = unix.Listen(fd, 8)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// turnUntil runs the engine's turns until cond holds, failing the test
// after 20 s.
func turnUntil(t *testing.T, te *testEngine, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); te.turn(10) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 20 s", what)
		}
	}
}

// reset closes c with a reset.
func reset(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// TestSpliceListenerShutDown: a -T or -U socket, or one a -U sender's
// datagrams go on through, that whoever else holds it (the namespace's
// agent hands the engine these) shuts down reports readable for ever,
// with nothing to accept or read: the engine lets it go instead of
// waking for it on every turn.
func TestSpliceListenerShutDown(t *testing.T) {
	lo := netip.MustParseAddrPort("127.0.0.1:0")
	for _, c := range []struct {
		name  string
		proto Proto
		fd    func(te *testEngine, lfd int) int // the socket shut down
	}{
		{"TCP", TCP, func(_ *testEngine, lfd int) int { return lfd }},
		{"UDP", UDP, func(_ *testEngine, lfd int) int { return lfd }},
		{"UDP sender", UDP, func(te *testEngine, lfd int) int {
			client := udpSocket(t, lo, false)
			if err := sendto(client, []byte("q"), netip.AddrPortFrom(lo.Addr(), boundPort(t, lfd))); err != nil {
				t.Fatal(err)
			}
			fd := -1
			turnUntil(t, te, "a sender's socket", func() bool {
				te.spliceUDP.each(func(_ int32, f *spliceUDPFlow) { fd = f.fd })
				return fd >= 0
			})
			return fd
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			te := newTestEngine(t)
			lfd := udpSocket(t, lo, true)
			if c.proto == TCP {
				unix.Close(lfd)
				lfd = tcpListener(t)
			}
			if err := te.SpliceListen(c.proto, lfd, boundPort(t, udpSocket(t, lo, false))); err != nil {
				t.Fatal(err)
			}
			defer te.SpliceUnlisten(lfd)
			other, err := unix.Dup(c.fd(te, lfd))
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(other)
			unix.Shutdown(other, unix.SHUT_RD)
			busy := 0
			for range 100 {
				te.turn(1)
				if te.hadEvents() {
					busy++
				}
			}
			if busy > 2 {
				t.Errorf("%d of 100 turns had events", busy)
			}
		})
	}
}

// TestSpliceStoppedResets: a pair still joined as the engine is stopped
// (pasta's SIGTERM) ends for both its ends with a reset, after what its
// pipes and sockets hold, as the guest's flows do (closeAll): neither end
// closed, and an end of stream would pass the cut stream off as whole.
// Before, the pair was left to the process's exit, whose close sent
// each end a FIN (here, the sockets are closed as that exit would).
func TestSpliceStoppedResets(t *testing.T) {
	for _, held := range []bool{false, true} {
		t.Run(fmt.Sprint("held ", held), func(t *testing.T) {
			te := newTestEngine(t)
			client, server, b := splicedPair(t, te)
			sent := []byte("a request")
			wrote := make(chan error, 1)
			if held {
				// More than the server's queues take, kept small: the
				// rest waits in the pipe, or in the client's queues.
				server.(*net.TCPConn).SetReadBuffer(64 << 10)
				unix.SetsockoptInt(b, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
				sent = pattern(4<<20, 5)
				go func() { _, err := client.Write(sent); wrote <- err }()
				turnUntil(t, te, "the pipe full", func() bool {
					full := false
					te.splice.each(func(_ int32, c *spliceConn) { full = c.held[0] > 0 })
					return full
				})
			} else {
				client.Write(sent)
				got, n := make([]byte, len(sent)), 0
				turnUntil(t, te, "the request through", func() bool {
					server.SetReadDeadline(time.Now().Add(time.Millisecond))
					m, _ := server.Read(got[n:])
					n += m
					return n == len(got)
				})
				sent = sent[:0] // the server has it
				client.SetReadDeadline(time.Now().Add(10 * time.Second))
				go func() { _, err := client.Read(make([]byte, 1)); wrote <- err }()
			}
			te.Stop()
			if err := te.Run(); err != nil {
				t.Fatal(err)
			}
			// The process's exit closes what the engine left open.
			te.splice.each(func(_ int32, c *spliceConn) { unix.Close(c.fd[0]); unix.Close(c.fd[1]) })
			server.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(server)
			if !bytes.HasPrefix(sent, got) || !errors.Is(err, unix.ECONNRESET) {
				t.Errorf("the server read %d bytes (a prefix of those sent: %v), then %v; want a reset", len(got), bytes.HasPrefix(sent, got), err)
			}
			err = <-wrote
			if err == nil { // all written before the stop: read the reset
				client.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = client.Read(make([]byte, 1))
			}
			if !errors.Is(err, unix.ECONNRESET) {
				t.Errorf("the client's write or read: %v; want a reset", err)
			}
		})
	}
}

// TestSpliceStoppedAfterFin: a client that sent its last words and its
// FIN just before the engine is stopped, with no turn between (pasta's
// command exits, and the stop follows), has its server read both, not a
// reset as if the client had been cut short (TestSpliceStoppedResets).
func TestSpliceStoppedAfterFin(t *testing.T) {
	te := newTestEngine(t)
	client, server, _ := splicedPair(t, te)
	client.Write([]byte("last words"))
	client.(*net.TCPConn).CloseWrite()
	te.Stop()
	if err := te.Run(); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(server); string(got) != "last words" || err != nil {
		t.Errorf("the server read %q, then %v; want %q and the end of stream", got, err, "last words")
	}
}
