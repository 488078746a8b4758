package main

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// The helper passes on to the agent only what the command line asks
// for: a compromised engine binds no other port in the namespace, no
// address but its loopback, no interface, and gets no connection there
// but the loopback path's. The agent is the real one, serving on a
// thread in a network namespace of its own, where port 18531 listens.
func TestPastaHelperChecks(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, for a network namespace")
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	defer func() { unix.Close(pair[0]); <-done }()
	if err := startTestAgent(pair[1], done); err != nil {
		t.Fatal(err)
	}
	hostL, err := net.Listen("tcp", "127.0.0.1:0") // -T auto may bind its port
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	hostPort := uint16(hostL.Addr().(*net.TCPAddr).Port)
	fwds := pastaForwards{tcp: portModes{auto: true, specs: []string{"18511"}},
		tcpNS: portModes{auto: true, specs: []string{"18521"}}, udp: portModes{specs: []string{"18512"}}}
	sp := &splicer{addr4: netip.MustParseAddr("192.0.2.1"), hostLoToNsLo: true}
	p, err := newPastaHelper(&agentConn{c: newHelperClient(pair[0])}, fwds, sp)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()
	bind := func(proto slirp.Proto, a netip.Addr, port uint16) helperRequest {
		return helperRequest{Op: "nsbind", Proto: proto, Fwd: portspec.Forward{Addr: a, HostPort: port}}
	}
	conn := func(proto slirp.Proto, a netip.Addr, port uint16) helperRequest {
		return helperRequest{Op: "nssocket", Proto: proto, Fwd: portspec.Forward{Addr: a, GuestPort: port}}
	}
	withIface := bind(slirp.TCP, lo4, 18521)
	withIface.Fwd.Iface = "lo"
	for _, tc := range []struct {
		name   string
		req    helperRequest
		served bool
	}{
		{"-T port on 127.0.0.1", bind(slirp.TCP, lo4, 18521), true},
		{"-T port on ::1", bind(slirp.TCP, lo6, 18521), true},
		{"-T auto: a port listening on the host", bind(slirp.TCP, lo4, hostPort), true},
		{"-T port on every address", bind(slirp.TCP, netip.Addr{}, 18521), false},
		{"-T port on 0.0.0.0", bind(slirp.TCP, netip.IPv4Unspecified(), 18521), false},
		{"-T port on 127.0.0.2", bind(slirp.TCP, netip.MustParseAddr("127.0.0.2"), 18521), false},
		{"-T port on an interface", withIface, false},
		{"low port", bind(slirp.TCP, lo4, 80), false},
		{"port not named, not listening on the host", bind(slirp.TCP, lo4, 18599), false},
		{"-U, not given", bind(slirp.UDP, lo4, 18521), false},
		{"-t port on the loopback", conn(slirp.TCP, lo4, 18511), true},
		{"-t auto: a port listening in the namespace", conn(slirp.TCP, lo6, 18531), true},
		{"-t port, not the loopback path's address", conn(slirp.TCP, sp.addr4, 18511), false},
		{"port -t does not forward", conn(slirp.TCP, lo4, 22), false},
		{"UDP to a -t port", conn(slirp.UDP, lo4, 18511), false},
		{"-u port on the loopback", conn(slirp.UDP, lo4, 18512), true},
		{"TCP to a -u port", conn(slirp.TCP, lo4, 18512), false},
	} {
		fd, err := p.handle(&tc.req)
		closeFd(fd)
		if served := err == nil; served != tc.served {
			t.Errorf("%s: served %v (%v), want %v", tc.name, served, err, tc.served)
		}
	}
	p.splice = nil // --no-splice
	fd, err := p.handle(&helperRequest{Op: "nssocket", Proto: slirp.TCP, Fwd: portspec.Forward{Addr: lo4, GuestPort: 18511}})
	closeFd(fd)
	if err == nil {
		t.Error("--no-splice: a connection in the namespace was served")
	}
}

// startTestAgent serves the agent on sock, on a thread in a new network
// namespace that ends with it (never unlocked), and closes done then. The
// process's main thread must stay in the host's: /proc/self/net is its.
func startTestAgent(sock int, done chan struct{}) error {
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
			defer unix.Close(sock)
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
				serveAgent(sock, -1, errors.New("no tap in this test"), tables)
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
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
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
