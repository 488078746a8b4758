package main

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The helper passes on to the agent only what the command line asks
// for: a compromised engine binds no other port in the namespace, only
// on the loopback interface (any address there), and gets the loopback
// path's socket to the agent once. The agent is the real one, serving on
// a thread in a network namespace of its own, where port 18531 listens.
func TestPastaHelperChecks(t *testing.T) {
	sock := serveInTestNS(t, func(sock int, tables map[string]agentTable) {
		serveAgent(sock, -1, errors.New("no tap in this test"), tables)
	})
	hostL, err := net.Listen("tcp", "127.0.0.1:0") // -T auto may bind its port
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	hostPort := uint16(hostL.Addr().(*net.TCPAddr).Port)
	fwds := pastaForwards{tcp: portModes{auto: true, specs: []string{"18511"}},
		tcpNS: portModes{auto: true, specs: []string{"18521"}}, udp: portModes{specs: []string{"18512"}}}
	spliceFd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0) // stands for the splice socket
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPastaHelper(&agentConn{c: newHelperClient(sock), splice: spliceFd}, fwds)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	lo4 := netip.MustParseAddr("127.0.0.1")
	bindOn := func(proto slirp.Proto, a netip.Addr, iface string, port uint16) helperRequest {
		return helperRequest{Op: "nsbind", Proto: proto, Fwd: portspec.Forward{Addr: a, Iface: iface, HostPort: port}}
	}
	bind := func(proto slirp.Proto, port uint16) helperRequest { return bindOn(proto, netip.Addr{}, "lo", port) }
	for _, tc := range []struct {
		name   string
		req    helperRequest
		served bool
	}{
		{"-T port on lo", bind(slirp.TCP, 18521), true},
		{"-T port on lo, -4", bindOn(slirp.TCP, netip.IPv4Unspecified(), "lo", 18521), true},
		{"-T port on lo, -6", bindOn(slirp.TCP, netip.IPv6Unspecified(), "lo", 18521), true},
		{"-T auto: a port listening on the host", bind(slirp.TCP, hostPort), true},
		{"-T port on every interface", bindOn(slirp.TCP, netip.Addr{}, "", 18521), false},
		{"-T port on 127.0.0.1, any interface", bindOn(slirp.TCP, lo4, "", 18521), false},
		{"-T port on 127.0.0.2 on lo", bindOn(slirp.TCP, netip.MustParseAddr("127.0.0.2"), "lo", 18521), false},
		{"-T port on another interface", bindOn(slirp.TCP, netip.Addr{}, "eth0", 18521), false},
		{"low port", bind(slirp.TCP, 80), false},
		{"port not named, not listening on the host", bind(slirp.TCP, 18599), false},
		{"-U, not given", bind(slirp.UDP, 18521), false},
		{"the splice socket", helperRequest{Op: "nssplice"}, true},
		{"the splice socket again", helperRequest{Op: "nssplice"}, false},
		{"a connection through the helper", helperRequest{Op: "nssocket", Proto: slirp.TCP, Fwd: portspec.Forward{Addr: lo4, GuestPort: 18511}}, false},
	} {
		fd, err := p.handle(&tc.req)
		closeFd(fd)
		if served := err == nil; served != tc.served {
			t.Errorf("%s: served %v (%v), want %v", tc.name, served, err, tc.served)
		}
	}
}

// The agent gives the engine's loopback path only what the command line
// asks for: TCP sockets of the namespace, unconnected, which the engine
// connects to the loopback path's address; and UDP sockets connected
// there, on a port -u names or, with auto, one that listens in the
// namespace. Anything else, a malformed request included, is refused and
// the agent goes on serving.
func TestPastaSpliceChecks(t *testing.T) {
	r := &spliceRules{Addr4: netip.MustParseAddr("192.0.2.1"), HostLoToNsLo: true, UDP: portRanges{{18512, 18512}}}
	sock := serveInTestNS(t, func(sock int, tables map[string]agentTable) {
		if l, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:18511")); err == nil {
			defer unix.Close(l)
		}
		serveSplice(sock, r, spliceTables(r, tables))
	})
	s := newSplicer(r)
	s.take(sock, helperTimeout)
	defer s.Idle()
	lo4, lo6 := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("[::1]:40000")
	for _, tc := range []struct {
		name   string
		proto  slirp.Proto
		from   netip.AddrPort
		port   uint16
		served netip.AddrPort // where the socket goes; invalid if refused
	}{
		{"TCP", slirp.TCP, lo4, 18511, netip.MustParseAddrPort("127.0.0.1:18511")},
		{"TCP over IPv6", slirp.TCP, lo6, 18531, netip.MustParseAddrPort("[::1]:18531")},
		{"-u port", slirp.UDP, lo6, 18512, netip.MustParseAddrPort("[::1]:18512")},
		{"UDP to a port -u does not name", slirp.UDP, lo4, 18511, netip.AddrPort{}},
		{"UDP, not auto, to a port listening", slirp.UDP, lo6, 18531, netip.AddrPort{}},
	} {
		fd, err := s.Dial(tc.proto, tc.from, tc.port)
		if !tc.served.IsValid() {
			closeFd(fd)
			if err != unix.EPERM {
				t.Errorf("%s: %v, want EPERM", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		to, err := peerOf(fd)
		unix.Close(fd)
		if err != nil || to != tc.served {
			t.Errorf("%s: connected to %v (%v), want %v", tc.name, to, err, tc.served)
		}
	}
	if n := len(s.spares[0]); n != spliceSpares-1 {
		t.Errorf("%d IPv4 sockets kept after one connection, want %d", n, spliceSpares-1)
	}
	for _, fd := range s.spares[0] {
		if _, err := peerOf(fd); err != unix.ENOTCONN {
			t.Errorf("a kept socket: %v, want ENOTCONN", err)
		}
	}
	// A malformed request is answered, refused, and the agent serves on.
	for _, b := range [][]byte{{0, 5, 0, 1, 0, 0, 0, 9}, {2, 4, 0x48, 0x4f, 0, 0, 0, 9}, {0, 4, 0x48},
		{0, 4, 0, 0, 0, 0, 0, 9}, {0, 4, 0, spliceSpares + 1, 0, 0, 0, 9}} {
		unix.Sendmsg(sock, b, nil, nil, 0)
		var reply [spliceMsgLen]byte
		n, fds, err := recvMsg(sock, reply[:], 1)
		closeFds(fds)
		if err != nil || n != spliceMsgLen || len(fds) != 0 || reply[7] != byte(unix.EPERM) {
			t.Errorf("request %v: answer %v (%d bytes, %d descriptors, %v), want EPERM", b, reply, n, len(fds), err)
		}
	}
	s.Idle()
	if fd, err := s.Dial(slirp.TCP, lo4, 18511); err != nil {
		t.Errorf("after malformed requests: %v", err)
	} else {
		unix.Close(fd)
	}
}

// With -t auto and -u auto (pasta's default), a port listening in the
// namespace for TCP alone is forwarded on the host for UDP too
// (TestAutoUDPFollowsTCP): the agent gives its loopback path's senders
// their socket. It refused them, and each datagram of a sender from the
// host's loopback then cost the engine a wait on the agent, which read the
// namespace's tables again each time: 10 ms each with 4,000 UDP sockets
// there, so that a flood of them on such a port stalled the engine. With
// -u auto alone that port is not forwarded for UDP, and is refused.
func TestPastaSpliceAutoUDPFollowsTCP(t *testing.T) {
	auto := portModes{auto: true}
	for _, tc := range []struct {
		name string
		f    pastaForwards
		want error
	}{
		{"-t auto -u auto", pastaForwards{tcp: auto, udp: auto}, nil},
		{"-u auto", pastaForwards{udp: auto}, unix.EPERM},
	} {
		r := newSpliceRules(&pastaOptions{HostLoToNsLo: true}, netSetup{}, tc.f)
		sock := serveInTestNS(t, func(sock int, tables map[string]agentTable) {
			serveSplice(sock, r, spliceTables(r, tables))
		})
		s := newSplicer(r)
		s.take(sock, helperTimeout)
		fd, err := s.Dial(slirp.UDP, netip.MustParseAddrPort("[::1]:40000"), 18531) // TCP listens there
		if err == nil {
			to, perr := peerOf(fd)
			unix.Close(fd)
			if want := netip.MustParseAddrPort("[::1]:18531"); perr != nil || to != want {
				t.Errorf("%s: connected to %v (%v), want %v", tc.name, to, perr, want)
			}
		}
		if err != tc.want {
			t.Errorf("%s: a sender to a port listening for TCP: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// peerOf is where fd is connected.
func peerOf(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getpeername(fd)
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), err
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), err
	}
	return netip.AddrPort{}, err
}

func TestSpliceTarget(t *testing.T) {
	a4, a6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	for _, tc := range []struct {
		r            spliceRules
		want4, want6 netip.Addr
	}{
		{spliceRules{Addr4: a4, Addr6: a6}, a4, a6},
		{spliceRules{Addr4: a4, Addr6: a6, HostLoToNsLo: true}, lo4, lo6},
		{spliceRules{Addr4: a4}, a4, lo6},
		{spliceRules{Addr6: a6}, lo4, a6},
	} {
		if got4, got6 := tc.r.target(false), tc.r.target(true); got4 != tc.want4 || got6 != tc.want6 {
			t.Errorf("%+v: %v, %v; want %v, %v", tc.r, got4, got6, tc.want4, tc.want6)
		}
	}
}

// serveInTestNS runs serve, with one end of a socket pair and the agent's
// tables, on a thread in a new network namespace where port 18531 listens
// on ::1, which ends with it (never unlocked), and returns the other end,
// which the test's end closes, ending serve. It skips without root.
func serveInTestNS(t *testing.T, serve func(sock int, tables map[string]agentTable)) int {
	if os.Getuid() != 0 {
		t.Skip("needs root, for a network namespace")
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	err = startInTestNS(done, func(tables map[string]agentTable) {
		serve(pair[1], tables)
		unix.Close(pair[1])
	})
	if err != nil {
		unix.Close(pair[0])
		unix.Close(pair[1])
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pair[0]); <-done })
	return pair[0]
}

// startInTestNS runs serve on a thread in a new network namespace where
// port 18531 listens on ::1, which ends with it (never unlocked), and
// closes done then. The process's main thread must stay in the host's:
// /proc/self/net is its.
func startInTestNS(done chan struct{}, serve func(map[string]agentTable)) error {
	for {
		up := make(chan error)
		go func() {
			runtime.LockOSThread()
			if unix.Gettid() == unix.Getpid() {
				runtime.UnlockOSThread()
				up <- errMainThread
				return
			}
			defer close(done)
			err := unix.Unshare(unix.CLONE_NEWNET)
			if err == nil {
				err = linkUp("lo", 0)
			}
			var l int
			if err == nil {
				l, err = listenTCP(netip.AddrPortFrom(netip.IPv6Loopback(), 18531))
			}
			up <- err
			if err == nil {
				tables := openAgentTables()
				serve(tables)
				for _, t := range tables {
					closeFd(t.fd)
				}
				unix.Close(l)
			}
		}()
		if err := <-up; err != errMainThread {
			return err
		}
	}
}

var errMainThread = errors.New("on the main thread")

func listenTCP(ap netip.AddrPort) (int, error) {
	family := unix.AF_INET6
	if ap.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, sockaddrOf(ap)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// A raw wait for the agent's answer holds its goroutine's processor, but
// the runtime's signal ends it: a collection, which stops the world,
// completes while the engine waits, before any answer.
func TestSpliceWaitLetsTheWorldStop(t *testing.T) {
	agent, answered := spliceWaiting(t, helperTimeout)
	var req [spliceMsgLen]byte
	if n, _, err := recvMsg(agent, req[:], 0); err != nil || n != spliceMsgLen {
		t.Fatalf("request: %d bytes, %v", n, err)
	}
	runtime.GC()
	select {
	case err := <-answered:
		t.Fatalf("the wait ended (%v) before the collection did", err)
	default:
	}
	reply := make([]byte, spliceMsgLen)
	copy(reply, req[4:8])
	reply[7] = byte(unix.EPERM)
	unix.Sendmsg(agent, reply, nil, nil, 0)
	if err := <-answered; err != unix.EPERM {
		t.Errorf("answer: %v, want EPERM", err)
	}
}

// An agent that never answers is given up on when the socket's receive
// timeout runs out, though the runtime signals the waiting thread (its
// preemption, every 10 ms or so, of a goroutine in a raw call it takes
// for running): each signal ended the wait with EINTR, and the wait that
// followed had the whole timeout again, so the engine waited for good.
func TestSpliceWaitTimesOut(t *testing.T) {
	_, answered := spliceWaiting(t, 200*time.Millisecond)
	select {
	case err := <-answered:
		if err != unix.EAGAIN {
			t.Errorf("no answer: %v, want EAGAIN", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting for an agent that never answers, past its 200 ms timeout")
	}
}

// spliceWaiting has the engine's splicer ask for sockets, waiting
// for the answer at most timeout, and returns the agent's end of their
// socket pair, and where the answer will come.
func spliceWaiting(t *testing.T, timeout time.Duration) (agent int, answered chan error) {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := newSplicer(&spliceRules{})
	s.take(pair[0], timeout)
	answered = make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		fd, err := s.Dial(slirp.TCP, netip.MustParseAddrPort("127.0.0.1:40000"), 18511)
		closeFd(fd)
		answered <- err
	}()
	t.Cleanup(func() {
		unix.Close(pair[1]) // ends a wait still under way
		<-done
		unix.Close(pair[0])
	})
	return pair[1], answered
}

// A --userns that does not exist is reported as such, before nsenter
// fails on it with a message of its own that the helper loses.
func TestStartAgentMissingUserns(t *testing.T) {
	_, _, err := startAgent(nsTarget{net: "/proc/self/ns/net", user: "/nonexistent/userns"}, nsPlan{})
	if err == nil || !strings.Contains(err.Error(), "user namespace") || !strings.Contains(err.Error(), "/nonexistent/userns") {
		t.Errorf("--userns /nonexistent/userns: %v", err)
	}
}

// FuzzSpliceRequest: whatever the engine sends, the agent answers it
// with its sequence number, and hands over only what the command line
// allows: TCP sockets, unconnected, no more than asked for; a UDP socket
// connected to a port -u names; else nothing. A request it takes comes
// out of marshal as it went in. An answer to a request it refuses
// carries the sequence number of none.
func FuzzSpliceRequest(f *testing.F) {
	for _, q := range []spliceRequest{{n: spliceSpares, seq: 1}, {v6: true, n: 1, seq: 2},
		{udp: true, port: 18512, seq: 3}, {udp: true, v6: true, port: 53, seq: 4}} {
		f.Add(q.marshal())
	}
	f.Add([]byte{0, 4, 0, 0, 0, 0, 0, 9})
	f.Add([]byte{2, 6, 0, 1})
	r := &spliceRules{Addr4: netip.MustParseAddr("127.0.0.1"), Addr6: netip.IPv6Loopback(), UDP: portRanges{{18512, 18512}}}
	f.Fuzz(func(t *testing.T, msg []byte) {
		if len(msg) == 0 {
			return // on a SOCK_SEQPACKET socket, the same as the engine's end closing
		}
		q, ok := parseSpliceRequest(msg)
		if ok && string(q.marshal()) != string(msg) {
			t.Fatalf("%x: parsed as %+v, which marshals to %x", msg, q, q.marshal())
		}
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { serveSplice(pair[1], r, nil); unix.Close(pair[1]); close(done) }()
		defer func() { unix.Close(pair[0]); <-done }()
		if err := unix.Sendmsg(pair[0], msg, nil, nil, 0); err != nil {
			t.Fatal(err)
		}
		var reply [spliceMsgLen]byte
		n, fds, err := recvMsg(pair[0], reply[:], spliceSpares+1)
		defer closeFds(fds)
		if err != nil || n != spliceMsgLen {
			t.Fatalf("%x: answer of %d bytes, %v", msg, n, err)
		}
		if ok && string(reply[:4]) != string(msg[4:spliceMsgLen]) {
			t.Errorf("%x: answered for sequence number %x", msg, reply[:4])
		}
		errno := unix.Errno(binary.BigEndian.Uint32(reply[4:]))
		switch {
		case !ok || q.udp && !r.UDP.contains(q.port):
			if errno != unix.EPERM || len(fds) != 0 {
				t.Errorf("%x: answered %v with %d descriptors, want EPERM", msg, errno, len(fds))
			}
		case errno != 0:
			if len(fds) != 0 {
				t.Errorf("%x: %v with %d descriptors", msg, errno, len(fds))
			}
		case q.udp:
			to, err := peerOf(fds[0])
			if len(fds) != 1 || err != nil || to != netip.AddrPortFrom(r.target(q.v6), q.port) {
				t.Errorf("%x: %d descriptors, the first connected to %v (%v)", msg, len(fds), to, err)
			}
		default:
			if len(fds) == 0 || len(fds) > int(q.n) {
				t.Errorf("%x: %d sockets for %d", msg, len(fds), q.n)
			}
			for _, fd := range fds {
				if _, err := peerOf(fd); err != unix.ENOTCONN {
					t.Errorf("%x: a socket given: %v, want ENOTCONN", msg, err)
				}
			}
		}
	})
}

// An -I name longer than an interface name may be is refused before the
// agent starts, naming the option, as upstream refuses it; 15 characters
// are taken.
func TestPlanNSIfnameLength(t *testing.T) {
	for name, ok := range map[string]bool{"abcdefghijklmno": true, "abcdefghijklmnop": false} {
		p, err := planNS(&pastaOptions{NSIfname: name}, netSetup{})
		if ok && (err != nil || p.Ifname != name) {
			t.Errorf("-I %s: %q, %v; want it taken", name, p.Ifname, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "--ns-ifname") || !strings.Contains(err.Error(), name)) {
			t.Errorf("-I %s: %v; want it refused, named", name, err)
		}
	}
}
