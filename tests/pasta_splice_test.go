package tests

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The loopback path under load, in the engine's own loop: 16 connections
// each way at once, host to namespace through -t and namespace to host
// through -T, each echoing 2 MiB whole through half-closes; a server that
// resets its connection resets the client's instead of leaving it
// waiting; 64 short connections after, each its own bytes back through
// pipes the earlier ones left (the engine keeps up to 16 empty ones for
// a second); and once all are closed, gopasst holds no more descriptors
// than before (each pair is two sockets and two pipes).
func TestPastaSpliceMany(t *testing.T) {
	needRoot(t)
	if pastaExe() != gopasstBin {
		t.Skip("counts gopasst's own descriptors")
	}
	const size, conns = 2 << 20, 16
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	echo := func(c net.Conn) { io.Copy(c, c); c.Close() }
	acceptLoop(ns.Listen(t, "tcp", ":8403"), echo)
	hostSrv := h.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(hostSrv, echo)
	acceptLoop(ns.Listen(t, "tcp", ":8405"), func(c net.Conn) {
		c.Read(make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	argv := []string{"--config-net", "-t", "18403:8403,18405:8405", "-T", "18404:" + port(hostSrv.Addr()), "-u", "none", "-U", "none", pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	fds := func() (n int) {
		for _, p := range mentioning(pid, gopasstBin) {
			n += countFds(t, p)
		}
		return n
	}
	before := fds()

	var wg sync.WaitGroup
	errs := make(chan error, 2*conns)
	for i := range 2 * conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dial := func() (net.Conn, error) { return h.Dial("tcp", "127.0.0.1:18403", 5*time.Second) }
			if i%2 == 1 {
				dial = func() (net.Conn, error) { return ns.Dial("tcp", "127.0.0.1:18404", 5*time.Second) }
			}
			c, err := dial()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(120 * time.Second))
			go func() { io.Copy(c, newStream(byte(i), size)); c.(*net.TCPConn).CloseWrite() }()
			sum, n, err := hashCopy(c)
			if err != nil || n != size || !bytes.Equal(sum, sumStream(byte(i), size)) {
				errs <- fmt.Errorf("connection %d: %d bytes back (%v), SHA-256 equal: %v", i, n, err, bytes.Equal(sum, sumStream(byte(i), size)))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	c, err := h.Dial("tcp", "127.0.0.1:18405", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadAll(c); err == nil || isTimeout(err) {
		t.Errorf("a connection its server reset: %v, want a reset", err)
	}
	c.Close()

	for i := range 64 {
		c, err := h.Dial("tcp", "127.0.0.1:18403", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		msg := fmt.Sprintf("short connection %d", i)
		c.Write([]byte(msg))
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); string(got) != msg {
			t.Errorf("%q came back %q (%v)", msg, got, err)
		}
		c.Close()
	}

	waitLong(t, "gopasst's descriptors back to where they were", 10*time.Second, func() bool { return fds() <= before })
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// The namespace is as untrusted as a guest: spliced pairs count against
// --max-tcp, and a connection past it is reset at once, not joined.
func TestPastaSpliceCap(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	hostSrv := h.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(hostSrv, func(c net.Conn) { io.Copy(c, c); c.Close() })
	argv := []string{"--config-net", "--max-tcp", "2", "-t", "none", "-T", "18406:" + port(hostSrv.Addr()), "-u", "none", "-U", "none", pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	echoes := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping"))
		b := make([]byte, 4)
		_, err := io.ReadFull(c, b)
		return err == nil && string(b) == "ping"
	}
	// joined tells whether a new connection is joined: one past the cap
	// is reset, its connect too if the reset comes first.
	joined := func() (net.Conn, bool) {
		c, err := ns.Dial("tcp", "127.0.0.1:18406", 5*time.Second)
		if err != nil {
			return nil, false
		}
		t.Cleanup(func() { c.Close() })
		return c, echoes(c)
	}
	first, ok1 := joined()
	if _, ok2 := joined(); !ok1 || !ok2 {
		t.Fatal("the connections within the cap are not joined")
	}
	if _, ok := joined(); ok {
		t.Error("a third connection with --max-tcp 2 was joined")
	}
	first.Close()
	waitLong(t, "a connection to be joined once one closed", 10*time.Second, func() bool { _, ok := joined(); return ok })
}

// -U in the engine's loop: each namespace sender has a host socket of
// its own, so each gets its own replies, however many talk at once.
func TestPastaSpliceUDP(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	srv := h.ListenPacket(t, "udp", "127.0.0.1:0")
	echoPackets(srv, "host: ")
	argv := []string{"--config-net", "-t", "none", "-T", "none", "-u", "none", "-U", "18407:" + port(srv.LocalAddr()), pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	udpSenders(t, func() (net.Conn, error) { return ns.Dial("udp", "127.0.0.1:18407", 5*time.Second) }, "host: ")
}

// udpSenders has eight senders at once, from sockets of their own, each
// send five datagrams and get each back with prefix. A datagram whose
// answer is late is sent again, so its first answer may come while the
// sender waits for the next one's: such a late answer is passed over,
// and any other is an error.
func udpSenders(t *testing.T, dial func() (net.Conn, error), prefix string) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			buf := make([]byte, 100)
			owed := map[string]int{} // answers still to come, by what was sent
			for k := range 5 {
				msg := fmt.Sprintf("sender %d, datagram %d", i, k)
				var got string
				for try := 0; try < 5 && got == ""; try++ { // UDP may drop
					c.SetDeadline(time.Now().Add(time.Second))
					c.Write([]byte(msg))
					owed[msg]++
					for got == "" {
						n, err := c.Read(buf)
						if err != nil {
							break
						}
						if answer, ok := strings.CutPrefix(string(buf[:n]), prefix); ok && owed[answer] > 0 {
							owed[answer]--
							if answer != msg {
								continue // late, to one sent again
							}
						}
						got = string(buf[:n])
					}
				}
				if got != prefix+msg {
					t.Errorf("%s: got %q", msg, got)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// -u from the host's loopback goes socket to socket too, as pasta's: each
// host sender gets a socket of its own in the namespace, connected from
// the namespace's own address, and its own replies; with --no-splice the
// datagrams come through the tap, from elsewhere.
func TestPastaSpliceUDPIn(t *testing.T) {
	needRoot(t)
	for _, mode := range []string{"splice", "no-splice"} {
		t.Run(mode, func(t *testing.T) {
			h := newHost(t, WorldOpts{})
			ns, pid, _ := pidNetns(t, h)
			seen := make(chan string, 64)
			srv := ns.ListenPacket(t, "udp", ":8408")
			go func() {
				buf := make([]byte, 1500)
				for {
					n, from, err := srv.ReadFrom(buf)
					if err != nil {
						return
					}
					host, _, _ := net.SplitHostPort(from.String())
					select {
					case seen <- host:
					default:
					}
					srv.WriteTo(append([]byte("ns: "), buf[:n]...), from)
				}
			}()
			argv := []string{"--config-net", "-t", "none", "-u", "18408:8408", "-T", "none", "-U", "none", pid}
			if mode == "no-splice" {
				argv = append([]string{"--no-splice"}, argv...)
			}
			if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
				t.Fatalf("pasta: %v: %s", err, out)
			}
			udpSenders(t, func() (net.Conn, error) { return h.Dial("udp", "127.0.0.1:18408", 5*time.Second) }, "ns: ")
			if spliced := <-seen == hostAddr; spliced != (mode == "splice") {
				t.Errorf("%s: the namespace's server saw datagrams from another address (its own, %s, means spliced)", mode, hostAddr)
			}
		})
	}
}

// The loopback path passes bytes on as they come, TCP_NODELAY on both
// sockets of every pair, as pasta: with Nagle's algorithm, a small write
// that follows one not yet acknowledged would wait for the receiver's
// delayed ACK, which a direct connection does not. Checked on the
// sockets themselves, taken from the back-end's processes with
// pidfd_getfd: a pair each way, through -t and through -T.
func TestPastaSpliceNoDelay(t *testing.T) {
	needRoot(t)
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	hold := func(c net.Conn) { io.Copy(io.Discard, c); c.Close() }
	acceptLoop(ns.Listen(t, "tcp", ":8406"), hold)
	hostSrv := h.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(hostSrv, hold)
	hostPort := port(hostSrv.Addr())
	argv := []string{"--config-net", "-t", "18406:8406", "-T", "18407:" + hostPort, "-u", "none", "-U", "none", pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	for _, dial := range []func() (net.Conn, error){
		func() (net.Conn, error) { return h.Dial("tcp", "127.0.0.1:18406", 5*time.Second) },
		func() (net.Conn, error) { return ns.Dial("tcp", "127.0.0.1:18407", 5*time.Second) },
	} {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x")) // the pair is joined, its far side connected
	}
	hp, _ := strconv.Atoi(hostPort)
	ports := map[uint16]bool{18406: true, 8406: true, 18407: true, uint16(hp): true}
	var socks []tcpSocket
	waitLong(t, "the two pairs' four sockets", 10*time.Second, func() bool {
		socks = nil
		for _, p := range mentioning(pid, pastaExe()) {
			for _, s := range connectedTCPSockets(p) {
				if ports[s.local.Port()] || ports[s.peer.Port()] {
					socks = append(socks, s)
				}
			}
		}
		return len(socks) == 4
	})
	for _, s := range socks {
		if !s.nodelay {
			t.Errorf("%v -> %v: no TCP_NODELAY", s.local, s.peer)
		}
	}
}

// tcpSocket is a connected TCP socket of another process.
type tcpSocket struct {
	local, peer netip.AddrPort
	nodelay     bool // TCP_NODELAY
}

// connectedTCPSockets is the connected TCP sockets process pid holds,
// each taken with pidfd_getfd to read its addresses and options.
func connectedTCPSockets(pid int) []tcpSocket {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(pidfd)
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var socks []tcpSocket
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue
		}
		proto, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		peer, perr := unix.Getpeername(fd)
		local, _ := unix.Getsockname(fd)
		nodelay, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY)
		unix.Close(fd)
		if proto == unix.IPPROTO_TCP && perr == nil {
			socks = append(socks, tcpSocket{addrPortOf(local), addrPortOf(peer), nodelay == 1})
		}
	}
	return socks
}

// addrPortOf is an inet socket address as a netip.AddrPort.
func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}
