package tests

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// arpFrom is an ARP request framed for the socket, from a MAC that
// carries n: gopasst's reply goes to that MAC, so replies differ.
func arpFrom(n uint32) []byte {
	b := arpRequest()
	binary.BigEndian.PutUint32(b[8:], n)
	copy(b[22:28], b[6:12])
	return frame(b)
}

// arpReplyLen is an ARP reply on the wire: 60 bytes, padded, and a prefix.
const arpReplyLen = 64

// lentBatch is how many ARP requests, sent at once, make the engine's
// replies one flush of more than it copies (4 KiB, qemusock's copyBelow):
// a smaller flush is written by copy, not lent.
const lentBatch = 100

// streamDial is a raw, blocking client of the engine's socket. Its send
// and receive timeouts keep the kernel from restarting a call that a
// signal interrupts (socket(7)), and the Go runtime preempts this test's
// goroutines with signals: the helpers that read and write it try again
// on EINTR.
func streamDial(t *testing.T, sock string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return fd
}

func sendAll(t *testing.T, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue // a signal, not restarted (streamDial)
		}
		if err != nil {
			t.Fatalf("write to gopasst: %v", err)
		}
		b = b[n:]
	}
}

func readFull(t *testing.T, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue // a signal, not restarted (streamDial)
		}
		if err != nil || n == 0 {
			t.Fatalf("read from gopasst: %d, %v", n, err)
		}
		b = b[n:]
	}
}

// spliceIn moves n bytes from the socket into pipe p, as a client that
// keeps what it receives in a pipe of its own.
func spliceIn(t *testing.T, fd, p, n int) {
	t.Helper()
	for n > 0 {
		m, err := unix.Splice(fd, nil, p, nil, n, 0)
		if err == unix.EINTR {
			continue // a signal, not restarted (streamDial)
		}
		if err != nil || m == 0 {
			t.Fatalf("splice from gopasst: %d, %v", m, err)
		}
		n -= int(m)
	}
}

// arpRounds sends n ARP requests from MACs first.. and reads their
// replies, in rounds of a thousand.
func arpRounds(t *testing.T, fd int, first, n uint32) {
	t.Helper()
	var req bytes.Buffer
	reply := make([]byte, 1000*arpReplyLen)
	for i := uint32(0); i < n; i += 1000 {
		req.Reset()
		for j := range uint32(1000) {
			req.Write(arpFrom(first + i + j))
		}
		sendAll(t, fd, req.Bytes())
		readFull(t, fd, reply)
	}
}

// anonHuge is the engine's AnonHugePages, in KiB.
func anonHuge(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "AnonHugePages:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	return 0
}

// mappings is how many mappings the engine has.
func mappings(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// TestStreamLendsPages: the sandboxed engine lends its queue's pages to
// the socket (its seccomp filter lets vmsplice through): a client that
// splices its first frame into a pipe finds there, once the queue has
// gone round its ring, another frame, where a copy would have stayed as
// it was. The ring is on huge pages.
func TestStreamLendsPages(t *testing.T) {
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--lend-pages"}})
	pid := w.ServerPid(t)
	fd := streamDial(t, w.Sock)
	defer unix.Close(fd)
	var p, peek [2]int
	for _, pp := range []*[2]int{&p, &peek} {
		if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pp[0])
		defer unix.Close(pp[1])
	}
	sendAll(t, fd, arpStorm(lentBatch))
	spliceIn(t, fd, p[1], arpReplyLen)
	if _, err := unix.Tee(p[0], peek[1], arpReplyLen, 0); err != nil {
		t.Fatal(err)
	}
	first := make([]byte, arpReplyLen)
	readFull(t, peek[0], first)
	readFull(t, fd, make([]byte, (lentBatch-1)*arpReplyLen))
	if huge := anonHuge(t, pid); huge == 0 {
		t.Errorf("the engine has no huge pages")
	} else {
		t.Logf("engine AnonHugePages %d KiB", huge)
	}

	// Round the 8 MiB ring and a bit.
	arpRounds(t, fd, 1, (8<<20)/arpReplyLen+10000)
	later := make([]byte, arpReplyLen)
	readFull(t, p[0], later)
	if bytes.Equal(first, later) {
		t.Fatalf("the first frame, spliced to a pipe, is as it was: the queue was copied, not lent")
	}
	t.Logf("first frame to %x, the pipe now holds one to %x", first[4:10], later[4:10])
}

// memAvailable is the system's MemAvailable, in bytes.
func memAvailable(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	return 0
}

// TestStreamReconnectHolding: a client reconnects 200 times and keeps,
// spliced into one pipe, a lent frame of each connection. The engine's
// descriptors and mappings come back to what they were, and what the
// pipe holds keeps from the system about what the pipe says it holds,
// not a huge page for each frame: closing the pipe gives back little.
func TestStreamReconnectHolding(t *testing.T) {
	const conns, limit = 200, 100 << 20
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--lend-pages"}})
	pid := w.ServerPid(t)
	fd := streamDial(t, w.Sock)
	sendAll(t, fd, arpFrom(0))
	expectReply(t, fd)
	unix.Close(fd)
	waitFor(t, "the first client gone", func() bool { return strings.Count(w.Log.String(), "client disconnected") == 1 })
	fds0, maps0, rss0 := countFds(t, pid), mappings(t, pid), rss(t, pid)

	var hold [2]int
	if err := unix.Pipe2(hold[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(hold[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	for range conns {
		fd := streamDial(t, w.Sock)
		sendAll(t, fd, arpStorm(lentBatch))
		spliceIn(t, fd, hold[1], arpReplyLen)
		unix.Close(fd)
	}
	fd = streamDial(t, w.Sock)
	sendAll(t, fd, arpFrom(0))
	expectReply(t, fd)
	unix.Close(fd)
	waitFor(t, "the engine's descriptors back to "+strconv.Itoa(fds0), func() bool { return countFds(t, pid) <= fds0 })
	// The Go runtime's own mappings vary by a few; a ring left behind
	// would be one for each connection.
	waitFor(t, "the engine's mappings back to about "+strconv.Itoa(maps0), func() bool { return mappings(t, pid) <= maps0+8 })
	if r := rss(t, pid); r > rss0+16<<20 {
		t.Errorf("the engine's RSS grew from %d to %d MiB over %d connections", rss0>>20, r>>20, conns)
	} else {
		t.Logf("the engine's RSS: %d MiB, then %d MiB after %d connections", rss0>>20, r>>20, conns)
	}
	before := memAvailable(t)
	unix.Close(hold[0])
	unix.Close(hold[1])
	freed := memAvailable(t) - before
	t.Logf("closing a pipe holding %d frames of %d bytes, one per connection, freed %d MiB", conns, arpReplyLen, freed>>20)
	if freed > limit {
		t.Errorf("a pipe holding %d frames of %d bytes kept %d MiB from the system", conns, arpReplyLen, freed>>20)
	}
}

// expectReply reads one ARP reply.
func expectReply(t *testing.T, fd int) {
	t.Helper()
	b := make([]byte, arpReplyLen)
	readFull(t, fd, b)
	if binary.BigEndian.Uint32(b) != arpReplyLen-4 || b[16] != 0x08 || b[17] != 0x06 {
		t.Fatalf("not an ARP reply: %x", b)
	}
}

// arpStorm is n ARP requests from distinct MACs, framed.
func arpStorm(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		b.Write(arpFrom(uint32(i)))
	}
	return b.Bytes()
}

// sendSome writes what the socket takes of b within its send timeout.
func sendSome(fd int, b []byte) {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue // a signal, not restarted (streamDial)
		}
		if err != nil {
			return
		}
		b = b[n:]
	}
}

// idleEngine fails the test if the engine pid spins: it uses CPU through
// every second of five in which nothing asks it for anything. One quiet
// second is enough, because work already read (a flood the engine took
// from its socket but has not finished) may run into the first.
func idleEngine(t *testing.T, pid int, what string) {
	t.Helper()
	var used []string
	for range 5 {
		cpu := procCPU([]int{pid})
		time.Sleep(time.Second)
		u := procCPU([]int{pid}) - cpu
		if u <= 0.1 {
			return
		}
		used = append(used, fmt.Sprintf("%.2f", u))
	}
	t.Errorf("%s: the engine used CPU in every second of idling: %s s", what, strings.Join(used, ", "))
}

// TestStreamHostileClients plays stream clients that read their frames
// in every wrong way while making the engine answer a lot: never, a
// byte at a time, not at all once shut for reading, only after shutting
// their own sending side, with urgent data in between, or in
// gvforwarder's framing. During and after each the engine idles, and
// after each it serves a good client and is back to its descriptors and
// mappings.
func TestStreamHostileClients(t *testing.T) {
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--lend-pages"}})
	pid := w.ServerPid(t)
	good := func(after string) {
		t.Helper()
		// The engine serves one client at a time: the last must be gone.
		waitFor(t, "the engine done with the client before", func() bool {
			l := w.Log.String()
			return strings.Count(l, "client connected") == strings.Count(l, "client disconnected")
		})
		c, err := net.Dial("unix", w.Sock)
		if err != nil {
			t.Fatalf("after %s: %v", after, err)
		}
		c.Write(frame(arpRequest()))
		expectARPReply(t, c)
		c.Close()
	}
	good("start")
	waitFor(t, "the first client gone", func() bool { return strings.Contains(w.Log.String(), "client disconnected") })
	fds0, maps0 := countFds(t, pid), mappings(t, pid)
	idle := func(what string) { t.Helper(); idleEngine(t, pid, what) }
	check := func(after string) {
		t.Helper()
		good(after)
		waitFor(t, "the engine's descriptors back after "+after, func() bool { return countFds(t, pid) <= fds0 })
		waitFor(t, "the engine's mappings back after "+after, func() bool { return mappings(t, pid) <= maps0+8 })
		idle("after " + after)
	}
	storm := arpStorm(300000) // 19 MiB of answers, twice the ring

	t.Run("never reads", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		sendSome(fd, storm)
		idle("a client that never reads, its queue full")
		unix.Close(fd)
		check("a client that never read")
	})
	t.Run("byte at a time", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		sent := make(chan struct{})
		go func() { sendSome(fd, storm); close(sent) }()
		var b [1]byte
		for range 100000 {
			readFull(t, fd, b[:])
		}
		// The writer stops at the shutdown; closed before, its next
		// write could go to a descriptor opened since.
		unix.Shutdown(fd, unix.SHUT_RDWR)
		<-sent
		unix.Close(fd)
		check("a client that read a byte at a time")
	})
	t.Run("shut for reading", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		unix.Shutdown(fd, unix.SHUT_RD)
		sendSome(fd, storm)
		idle("a client shut for reading")
		unix.Close(fd)
		check("a client shut for reading")
	})
	t.Run("half-closed", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		sendAll(t, fd, storm[:1000*len(arpFrom(0))])
		unix.Shutdown(fd, unix.SHUT_WR)
		b := make([]byte, 1<<16)
		for {
			if n, err := unix.Read(fd, b); err != unix.EINTR && (n <= 0 || err != nil) {
				break
			}
		}
		unix.Close(fd)
		check("a half-closed client")
	})
	t.Run("urgent data", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		req := arpFrom(1)
		for i := range 100 {
			unix.Sendmsg(fd, req[:5], nil, nil, 0)
			unix.Sendmsg(fd, req[5:6], nil, nil, unix.MSG_OOB) // the stream goes on without it
			if i%50 == 0 {
				idle("a client that sent urgent data")
			}
		}
		unix.Close(fd)
		check("a client that sent urgent data")
	})
	t.Run("gvforwarder", func(t *testing.T) {
		fd := streamDial(t, w.Sock)
		sendAll(t, fd, []byte("POST /connect HTTP/1.1\r\nHost: x\r\n\r\n"))
		// Every answer comes whole and in order, in gvforwarder's framing,
		// round the ring and more.
		var reqs bytes.Buffer
		next := uint32(0)
		for round := range 200 {
			reqs.Reset()
			for i := range 1000 {
				f := arpFrom(uint32(round*1000 + i))[4:]
				reqs.Write(binary.LittleEndian.AppendUint16(nil, uint16(len(f))))
				reqs.Write(f)
			}
			sendAll(t, fd, reqs.Bytes())
			for next < uint32(round+1)*1000 {
				var hdr [2]byte
				readFull(t, fd, hdr[:])
				b := make([]byte, binary.LittleEndian.Uint16(hdr[:]))
				readFull(t, fd, b)
				if len(b) < 42 || b[12] != 0x08 || b[13] != 0x06 {
					continue // a router advertisement
				}
				if got := binary.BigEndian.Uint32(b[2:]); got != next {
					t.Fatalf("reply to request %d where %d was due", got, next)
				}
				next++
			}
		}
		unix.Close(fd)
		check("a gvforwarder client")
	})
}

// oddConn reads the engine's stream in pieces of every size, from a
// byte to a buffer's worth, and now and then stops a moment, as a slow
// guest's end does.
type oddConn struct {
	net.Conn
	rng *rand.Rand
}

func (c *oddConn) Read(p []byte) (int, error) {
	switch c.rng.IntN(20) {
	case 0:
		time.Sleep(time.Millisecond)
	case 1, 2, 3, 4, 5:
		p = p[:min(len(p), 1+c.rng.IntN(7))]
	case 6, 7, 8, 9, 10, 11:
		p = p[:min(len(p), 8+c.rng.IntN(1500))]
	case 12, 13, 14, 15, 16, 17, 18:
		p = p[:min(len(p), 1500+c.rng.IntN(1<<16))]
	}
	return c.Conn.Read(p)
}

// TestStreamOddReader: downloads through a guest whose end of the
// socket reads the engine's frames in odd pieces, between pauses, arrive
// intact.
func TestStreamOddReader(t *testing.T) {
	const size = 64 << 20
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--lend-pages"}})
	g := newNetns(t, "gpg")
	var tap *os.File
	var err error
	if nsErr := g.do(func() { tap, err = openTap(tapName) }); nsErr != nil || err != nil {
		t.Fatal(nsErr, err)
	}
	c, err := net.Dial("unix", w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	b := startBridge(tap, &oddConn{Conn: c, rng: rand.New(rand.NewPCG(3, 4))})
	t.Cleanup(b.Close)
	w.Guest, w.Bridge = g, b
	g.Run(t, "ip", "link", "set", tapName, "up")
	w.DHCP(t)
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { io.Copy(c, newStream(7, size)); c.Close() })
	for i := range 3 {
		conn := w.guestConn(t, net.JoinHostPort(hostGW, port(l.Addr())))
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		sum, n, err := hashCopy(conn)
		if err != nil || n != size || !bytes.Equal(sum, sumStream(7, size)) {
			t.Fatalf("download %d: %d bytes of %d, %v, SHA-256 %x", i, n, size, err, sum)
		}
	}
}

// spliceRelay is a relay between stream clients and the engine's socket
// that moves the engine's bytes on with splice(2), as
// systemd-socket-proxyd does: through a pipe, without reading them.
func spliceRelay(t *testing.T, sock string) (path string) {
	t.Helper()
	path = sock + ".relay"
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", sock)
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() {
				defer c.Close()
				defer up.Close()
				var p [2]int
				if unix.Pipe2(p[:], unix.O_CLOEXEC) != nil {
					return
				}
				defer unix.Close(p[0])
				defer unix.Close(p[1])
				ufd, _ := up.(*net.UnixConn).File()
				cfd, _ := c.(*net.UnixConn).File()
				defer ufd.Close()
				defer cfd.Close()
				for {
					n, err := unix.Splice(int(ufd.Fd()), nil, p[1], nil, 1<<16, 0)
					if n <= 0 || err != nil {
						return
					}
					for n > 0 {
						m, err := unix.Splice(p[0], nil, int(cfd.Fd()), nil, int(n), 0)
						if m <= 0 || err != nil {
							return
						}
						n -= m
					}
				}
			}()
		}
	}()
	return path
}

// TestStreamSpliceRelay: behind a relay that splices the engine's bytes
// on, as systemd-socket-proxyd does, a client that reads late still
// gets every frame whole and in order: without --lend-pages the engine
// copies its frames into the socket. (With it, the relay's pipe and
// socket keep the pages after the engine's socket lets them go, and the
// client gets frames written there since: the option is for a client
// that reads the socket itself.)
func TestStreamSpliceRelay(t *testing.T) {
	const n = 200000 // 12 MiB of answers: round the ring
	w := newWorld(t, WorldOpts{NoGuest: true})
	fd := streamDial(t, spliceRelay(t, w.Sock))
	defer unix.Close(fd)
	sendAll(t, fd, arpStorm(n))
	// Replies the engine had no room for are dropped; the rest come in
	// order, until none has come for a second.
	tv := unix.Timeval{Sec: 1}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	next, bad, got := uint32(0), 0, 0
	r := bufio.NewReader(fdReader(fd))
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size < 14 || size > 65550 {
			t.Fatalf("after the reply to request %d: a frame of %d bytes (%x)", next, size, hdr)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			t.Fatal(err)
		}
		if b[12] != 0x08 || b[13] != 0x06 {
			continue // a router advertisement
		}
		got++
		to := binary.BigEndian.Uint32(b[2:])
		if to < next || !bytes.Equal(b[2:6], b[34:38]) {
			bad++
			if bad < 5 {
				t.Errorf("reply to request %d (target %x) where %d or later was due", to, b[34:38], next)
			}
		}
		next = to + 1
	}
	t.Logf("%d replies to %d requests, %d out of order", got, n, bad)
	if bad > 0 || got == 0 {
		t.Fatalf("%d of %d replies wrong", bad, got)
	}
}

// fdReader reads a blocking descriptor.
type fdReader int

func (f fdReader) Read(p []byte) (int, error) {
	n, err := unix.Read(int(f), p)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	return max(n, 0), err
}

// udpFrom is a UDP datagram from the guest (198.51.100.2) to the gateway,
// host loopback, with the TTL given, framed for the socket. The IPv4
// header's checksum is left zero: gopasst checks none.
func udpFrom(sport, dport uint16, ttl uint8, payload []byte) []byte {
	b := append([]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, testMAC...)
	b = append(b, 0x08, 0x00, 0x45, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(28+len(payload)))
	b = append(b, 0, 0, 0x40, 0, ttl, 17, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, dport)
	b = binary.BigEndian.AppendUint16(b, uint16(8+len(payload)))
	return frame(append(append(b, 0, 0), payload...))
}

// TestStreamHostileUDPErrors: a guest at the smallest MTU (68) that
// floods closed ports on the host from many source ports, its TTLs
// flipping between 0, 1 and 2, past its cap of UDP flows, and never
// reads what it is sent: every datagram has an ICMP error for it, or
// none for want of room. The engine idles while the guest stalls, and
// after it leaves, serves the next guest with its descriptors back.
func TestStreamHostileUDPErrors(t *testing.T) {
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--mtu", "68", "--max-udp", "32"}})
	pid := w.ServerPid(t)
	closed := w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	cport := uint16(closed.LocalAddr().(*net.UDPAddr).Port)
	closed.Close()
	fds0 := countFds(t, pid)
	fd := streamDial(t, w.Sock)
	var b bytes.Buffer
	for i := range 20000 {
		b.Write(udpFrom(uint16(40000+i%64), cport, uint8(i%3), bytes.Repeat([]byte{'x'}, i%100)))
	}
	sendSome(fd, b.Bytes())
	// What the socket still holds is work, not idling: on a loaded
	// machine the engine may still be at it.
	waitFor(t, "the engine to read the flood", func() bool {
		n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		return err == nil && n == 0
	})
	idleEngine(t, pid, "a guest flooding closed ports that never reads")
	if !strings.Contains(w.Log.String(), "UDP flows (--max-udp), its cap") {
		t.Errorf("the flood never reached the cap of UDP flows:\n%s", w.Log.String())
	}
	unix.Close(fd)
	waitFor(t, "the guest gone", func() bool { return strings.Contains(w.Log.String(), "client disconnected") })
	c, err := net.Dial("unix", w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(frame(arpRequest()))
	expectARPReply(t, c)
	c.Close()
	waitFor(t, "the engine's descriptors back", func() bool { return countFds(t, pid) <= fds0 })
	idleEngine(t, pid, "after the flood")
}
