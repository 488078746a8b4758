package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pasta's loopback path (pkg/slirp/splice.go, splice_udp.go) against a
// hostile namespace and hostile clients on the host's loopback. After
// each attack the engine serves a good connection each way, holds no
// more descriptors than before it, and idles without spinning.

// The servers behind the forwards, by port offset: -t 1850x goes to the
// namespace's 850x, -T 1860x to the host's 860x.
const (
	srvEcho    = 1 // echoes
	srvClosed  = 2 // nothing listens
	srvBacklog = 3 // listens with a backlog of one, filled (fillBacklog)
	srvSource  = 4 // writes for ever and never reads
	srvScript  = 5 // what the attack sets (spliceWay.script)
	rigMaxTCP  = 64
	rigMaxUDP  = 64
)

// spliceWay is one direction of the loopback path: its clients' side,
// and its servers' side.
type spliceWay struct {
	name           string
	client, server *Netns
	fwd, srv       int // ports of the forwards, and of the servers, without the offset
	backlog        net.Listener
	script         atomic.Pointer[func(net.Conn)]
}

func (w *spliceWay) dial(off int) (net.Conn, error) {
	return w.client.Dial("tcp", "127.0.0.1:"+strconv.Itoa(w.fwd+off), 5*time.Second)
}

// serve has the scripted server run fn on each connection.
func (w *spliceWay) serve(fn func(net.Conn)) { w.script.Store(&fn) }

// fillBacklog makes the backlog listener's queue full: a connection to it
// then waits in SYN_SENT, its SYNs dropped, until one is accepted. It
// returns the connection that fills it.
func (w *spliceWay) fillBacklog(t *testing.T) net.Conn {
	t.Helper()
	c, err := w.server.Dial("tcp", "127.0.0.1:"+strconv.Itoa(w.srv+srvBacklog), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// acceptBacklog accepts from the backlog listener.
func (w *spliceWay) acceptBacklog(t *testing.T) net.Conn {
	t.Helper()
	w.backlog.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	c, err := w.backlog.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type spliceRig struct {
	h, ns  *Netns
	pid    string
	engine int
	ways   [2]*spliceWay // -t, then -T
	base   int           // the engine's descriptors before any attack
}

// newSpliceRig starts pasta with --max-tcp and --max-udp at rigMaxTCP and
// rigMaxUDP, the servers of both ways, and -U 18611 to an echo of the
// host's 8611 and 18612 to its 8612, where nothing listens.
func newSpliceRig(t *testing.T) *spliceRig {
	needRoot(t)
	if pastaExe() != gopasstBin {
		t.Skip("watches gopasst's engine")
	}
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	r := &spliceRig{h: h, ns: ns, pid: pid, ways: [2]*spliceWay{
		{name: "-t", client: h, server: ns, fwd: 18500, srv: 8500},
		{name: "-T", client: ns, server: h, fwd: 18600, srv: 8600},
	}}
	var tcpSpecs [2]string
	for i, w := range r.ways {
		listen := func(off int) net.Listener { return w.server.Listen(t, "tcp", ":"+strconv.Itoa(w.srv+off)) }
		acceptLoop(listen(srvEcho), func(c net.Conn) { io.Copy(c, c); c.Close() })
		acceptLoop(listen(srvSource), func(c net.Conn) { io.Copy(c, zeros{}); c.Close() })
		acceptLoop(listen(srvScript), func(c net.Conn) {
			if fn := w.script.Load(); fn != nil {
				(*fn)(c)
			}
			c.Close()
		})
		w.backlog = listen(srvBacklog)
		raw, _ := w.backlog.(*net.TCPListener).SyscallConn()
		raw.Control(func(fd uintptr) { unix.Listen(int(fd), 0) }) // a queue of one
		for off := srvEcho; off <= srvScript; off++ {
			if off > srvEcho {
				tcpSpecs[i] += ","
			}
			tcpSpecs[i] += fmt.Sprintf("%d:%d", w.fwd+off, w.srv+off)
		}
	}
	servePackets(h.ListenPacket(t, "udp", ":8611"), func(req []byte) []byte { return req })
	argv := []string{"--config-net", "--max-tcp", strconv.Itoa(rigMaxTCP), "--max-udp", strconv.Itoa(rigMaxUDP),
		"-t", tcpSpecs[0], "-T", tcpSpecs[1], "-u", "none", "-U", "18611:8611,18612:8612", pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	r.engine = pastaEngineOf(t, pid)
	r.base = r.fds(t)
	r.check(t, "start")
	return r
}

// pastaEngineOf is the PID of the engine of the pasta whose command line
// names pid: the one of its processes under seccomp.
func pastaEngineOf(t *testing.T, pid string) int {
	t.Helper()
	engine := 0
	waitFor(t, "pasta's engine", func() bool {
		for _, p := range mentioning(pid, gopasstBin) {
			if procStatus(t, strconv.Itoa(p))["Seccomp"] == "2" {
				engine = p
				return true
			}
		}
		return false
	})
	return engine
}

func (r *spliceRig) fds(t *testing.T) int { return countFds(t, r.engine) }

// good checks that a good connection each way is served, waiting for
// what an attack left to be closed.
func (r *spliceRig) good(t *testing.T, after string) {
	t.Helper()
	for _, w := range r.ways {
		waitLong(t, w.name+" to serve a good connection after "+after, 20*time.Second, func() bool {
			c, err := w.dial(srvEcho)
			if err != nil {
				return false
			}
			defer c.Close()
			return echoes(c, []byte("ping"))
		})
	}
}

// idle checks that the engine does not spin (idleEngine).
func (r *spliceRig) idle(t *testing.T, what string) {
	t.Helper()
	idleEngine(t, r.engine, what)
}

// check is what must hold once an attack is over: a good connection
// served each way, the engine's descriptors back to the baseline, and no
// spin.
func (r *spliceRig) check(t *testing.T, after string) {
	t.Helper()
	r.good(t, after)
	waitLong(t, "the engine's descriptors back to "+strconv.Itoa(r.base)+" after "+after, 20*time.Second,
		func() bool { return r.fds(t) <= r.base })
	r.idle(t, "after "+after)
}

// starve leaves the engine room for n more descriptors, and returns what
// gives it its limit back.
func (r *spliceRig) starve(t *testing.T, n int) (restore func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Prlimit(r.engine, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(lowestFreeFd(t, r.engine) + n)
	if err := unix.Prlimit(r.engine, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	return func() { unix.Prlimit(r.engine, unix.RLIMIT_NOFILE, &lim, nil) }
}

// echoes tells whether msg comes back on c.
func echoes(c net.Conn, msg []byte) bool {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return false
	}
	b := make([]byte, len(msg))
	_, err := io.ReadFull(c, b)
	return err == nil && bytes.Equal(b, msg)
}

func reset(c net.Conn) {
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// ended tells whether c's reads end (EOF or reset) rather than wait.
func ended(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		return errors.New("the connection hangs")
	}
	return nil
}

// stall writes to c until its writes block: nobody reads at the other end.
func stall(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// TestPastaHostileTCP: a hostile namespace, and hostile clients on the
// host's loopback, against -T and -t, each way: floods past --max-tcp,
// peers that never read, half-closes and resets at every stage (with the
// other end still connecting, or holding the data), closed ports, urgent
// data, and an engine out of descriptors.
func TestPastaHostileTCP(t *testing.T) {
	r := newSpliceRig(t)
	for _, a := range []struct {
		name   string
		attack func(t *testing.T, w *spliceWay)
	}{
		{"a flood past --max-tcp", func(t *testing.T, w *spliceWay) {
			var conns []net.Conn
			for range 3 * rigMaxTCP {
				if c, err := w.dial(srvEcho); err == nil {
					conns = append(conns, c)
				}
			}
			// Each pair is two sockets and two pipes: six descriptors.
			if n, most := r.fds(t), r.base+6*rigMaxTCP+16; n > most {
				t.Errorf("%d connections held: the engine has %d descriptors, more than %d", len(conns), n, most)
			}
			r.idle(t, "while a flood is held")
			for i, c := range conns {
				if i%2 == 0 {
					reset(c)
				} else {
					c.Close()
				}
			}
		}},
		{"peers that never read", func(t *testing.T, w *spliceWay) {
			var conns []net.Conn
			for range 8 {
				c, err := w.dial(srvSource)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			time.Sleep(time.Second) // the pipes and buffers fill
			r.idle(t, "with every pipe full")
			for _, c := range conns {
				c.Close() // unread data: a reset
			}
		}},
		{"both ends never read", func(t *testing.T, w *spliceWay) {
			var conns []net.Conn
			var wg sync.WaitGroup
			for range 8 {
				c, err := w.dial(srvEcho)
				if err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
				wg.Add(1)
				go func() { defer wg.Done(); stall(c) }()
			}
			wg.Wait()
			r.idle(t, "with both ends stalled")
			for _, c := range conns {
				c.Close()
			}
		}},
		{"half-closes in every order", func(t *testing.T, w *spliceWay) {
			readAll := func(c net.Conn) string {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				b, _ := io.ReadAll(c)
				return string(b)
			}
			// Each end either writes msg, half-closes and reads to the end,
			// or reads to the end and answers with what it read.
			first := func(msg string) func(c net.Conn) string {
				return func(c net.Conn) string {
					io.WriteString(c, msg)
					c.(*net.TCPConn).CloseWrite()
					return readAll(c)
				}
			}
			answer := func(c net.Conn) string {
				msg := readAll(c)
				io.WriteString(c, "got "+msg)
				c.(*net.TCPConn).CloseWrite()
				return msg
			}
			got := make(chan string, 1)
			for _, h := range []struct {
				name                   string
				server, client         func(c net.Conn) string
				wantServer, wantClient string
			}{
				{"client first", answer, first("abc"), "abc", "got abc"},
				{"client first, no data", answer, first(""), "", "got "},
				{"server first", first("hello"), answer, "got hello", "hello"},
				{"both at once", first("from server"), first("from client"), "from client", "from server"},
			} {
				w.serve(func(c net.Conn) { got <- h.server(c) })
				c, err := w.dial(srvScript)
				if err != nil {
					t.Fatal(err)
				}
				if s := h.client(c); s != h.wantClient {
					t.Errorf("%s: the client read %q, want %q", h.name, s, h.wantClient)
				}
				select {
				case s := <-got:
					if s != h.wantServer {
						t.Errorf("%s: the server read %q, want %q", h.name, s, h.wantServer)
					}
				case <-time.After(20 * time.Second):
					t.Errorf("%s: the server never finished", h.name)
				}
				c.Close()
			}
		}},
		{"a half-close while the other end connects", func(t *testing.T, w *spliceWay) {
			filler := w.fillBacklog(t)
			defer filler.Close()
			c, err := w.dial(srvBacklog)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.(*net.TCPConn).CloseWrite()
			time.Sleep(300 * time.Millisecond) // the FIN reaches the engine before the server accepts
			w.acceptBacklog(t).Close()         // the filler's
			s := w.acceptBacklog(t)            // the client's, once its SYN is sent again
			io.WriteString(s, "late")
			s.Close()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if b, err := io.ReadAll(c); string(b) != "late" {
				t.Errorf("a client that half-closed at once read %q (%v), want the server's answer", b, err)
			}
		}},
		{"a reset while the other end connects", func(t *testing.T, w *spliceWay) {
			filler := w.fillBacklog(t)
			defer func() { filler.Close(); w.acceptBacklog(t).Close() }()
			for range 4 {
				c, err := w.dial(srvBacklog)
				if err != nil {
					t.Fatal(err)
				}
				c.Write([]byte("never delivered"))
				reset(c)
			}
			waitLong(t, "the connecting ends closed", 20*time.Second, func() bool { return r.fds(t) <= r.base })
		}},
		{"a reset while the server holds the data", func(t *testing.T, w *spliceWay) {
			release := make(chan struct{})
			defer close(release)
			w.serve(func(c net.Conn) { <-release }) // never reads
			var wg sync.WaitGroup
			for range 2 {
				c, err := w.dial(srvScript)
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() { defer wg.Done(); stall(c); reset(c) }()
			}
			wg.Wait()
			waitLong(t, "the pairs closed while their servers hold them", 20*time.Second, func() bool { return r.fds(t) <= r.base })
		}},
		{"resets at every stage", func(t *testing.T, w *spliceWay) {
			// Clients: at once, after data, while the server sends.
			w.serve(func(c net.Conn) { io.Copy(c, c) })
			for range 16 {
				if c, err := w.dial(srvScript); err == nil {
					reset(c)
				}
				if c, err := w.dial(srvScript); err == nil {
					c.Write([]byte("data"))
					reset(c)
				}
			}
			w.serve(func(c net.Conn) { io.Copy(c, zeros{}) })
			for range 4 {
				if c, err := w.dial(srvScript); err == nil {
					io.ReadFull(c, make([]byte, 1<<20))
					reset(c)
				}
			}
			// Servers: at once, after data, while the client sends.
			for _, server := range []func(c net.Conn){
				func(c net.Conn) { reset(c) },
				func(c net.Conn) { c.Read(make([]byte, 4)); reset(c) },
				func(c net.Conn) { io.CopyN(io.Discard, c, 1<<20); reset(c) },
			} {
				w.serve(server)
				c, err := w.dial(srvScript)
				if err != nil {
					continue // reset before connect(2) returned
				}
				go func() {
					for {
						c.SetWriteDeadline(time.Now().Add(20 * time.Second))
						if _, err := c.Write(make([]byte, 64<<10)); err != nil {
							return
						}
					}
				}()
				if err := ended(c); err != nil {
					t.Error("a server reset:", err)
				}
				c.Close()
			}
		}},
		{"nothing listening", func(t *testing.T, w *spliceWay) {
			for range 32 {
				c, err := w.dial(srvClosed)
				if err != nil {
					continue
				}
				if err := ended(c); err != nil {
					t.Fatal("a connection to a closed port:", err)
				}
				c.Close()
			}
		}},
		{"urgent data", func(t *testing.T, w *spliceWay) {
			c, err := w.dial(srvEcho)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("a"))
			raw, _ := c.(*net.TCPConn).SyscallConn()
			urgent := func(b string) {
				raw.Write(func(fd uintptr) bool { unix.Sendto(int(fd), []byte(b), unix.MSG_OOB, nil); return true })
			}
			urgent("!")
			c.Write([]byte("bcd"))
			// Every byte in the stream, the urgent one too.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			b := make([]byte, 5)
			if _, err := io.ReadFull(c, b); err != nil || string(b) != "a!bcd" {
				t.Errorf("urgent data in the stream: read %q (%v), want %q", b, err, "a!bcd")
			}
			r.idle(t, "with urgent data passed")
			if !echoes(c, []byte("more")) {
				t.Error("the connection no longer echoes after urgent data")
			}
			// A storm of urgent bytes among data: the stream whole.
			var want []byte
			for i := range 2000 {
				want = append(append(want, strconv.Itoa(i)...), '!')
			}
			go func() {
				for i := range 2000 {
					c.Write([]byte(strconv.Itoa(i)))
					urgent("!")
				}
			}()
			got := make([]byte, len(want))
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
				t.Errorf("a storm of urgent data: the stream came back changed, or not whole (%v)", err)
			}
			// Urgent data, more, and the end of the stream at once.
			urgent("?")
			c.Write([]byte("tail"))
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(c); err != nil || string(b) != "?tail" {
				t.Errorf("urgent data before the end of the stream: read %q (%v), want %q", b, err, "?tail")
			}
		}},
		{"out of descriptors", func(t *testing.T, w *spliceWay) {
			// Room for a connection and its other end, not their pipes.
			restore := r.starve(t, 2)
			defer restore()
			var conns []net.Conn
			for range 16 {
				if c, err := w.dial(srvEcho); err == nil {
					conns = append(conns, c)
				}
			}
			r.idle(t, "out of descriptors for pipes")
			for _, c := range conns {
				if echoes(c, []byte("ping")) {
					t.Error("a connection was joined without descriptors for its pipes")
				}
				c.Close()
			}
			// Without one to accept with, connections wait in the
			// listener's backlog, and are served once there are.
			restore()
			restore = r.starve(t, 0)
			waiting, err := w.dial(srvEcho)
			if err != nil {
				t.Fatal(err)
			}
			defer waiting.Close()
			r.idle(t, "out of descriptors to accept with")
			restore()
			if !echoes(waiting, []byte("ping")) {
				t.Error("a connection that waited for descriptors was not served once there were")
			}
		}},
	} {
		t.Run(a.name, func(t *testing.T) {
			for _, w := range r.ways {
				t.Run(w.name, func(t *testing.T) {
					a.attack(t, w)
					r.check(t, a.name)
				})
			}
		})
	}
}

// udpAsk sends msg on c and reads the answer, sending again a few times
// (UDP may drop).
func udpAsk(c net.Conn, msg []byte) ([]byte, error) {
	buf := make([]byte, 1<<16)
	var err error
	for range 5 {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err = c.Write(msg); err != nil {
			continue
		}
		var n int
		if n, err = c.Read(buf); err == nil {
			return buf[:n], nil
		}
	}
	return nil, err
}

// TestPastaHostileUDP: a hostile namespace against -U. Senders stay for
// three idle minutes, so after each attack the engine holds at most
// --max-udp more descriptors than before any.
func TestPastaHostileUDP(t *testing.T) {
	r := newSpliceRig(t)
	// A sender from before the attacks, which they must not starve.
	old, err := r.ns.Dial("udp", "127.0.0.1:18611", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if b, err := udpAsk(old, []byte("hello")); string(b) != "hello" {
		t.Fatalf("-U: %q (%v)", b, err)
	}
	rss0 := rss(t, r.engine)
	// send sends msg n times from a new namespace socket to port, then
	// closes it.
	send := func(t *testing.T, port string, msg []byte, n int) {
		c, err := r.ns.Dial("udp", "127.0.0.1:"+port, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			c.Write(msg)
		}
		c.Close()
	}
	for _, a := range []struct {
		name   string
		attack func(t *testing.T)
	}{
		{"empty and largest datagrams", func(t *testing.T) {
			for _, d := range []struct {
				addr string
				size int
			}{{"127.0.0.1:18611", 0}, {"[::1]:18611", 0}, {"127.0.0.1:18611", 65507}, {"[::1]:18611", 65527}} {
				c, err := r.ns.Dial("udp", d.addr, 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				msg := bytes.Repeat([]byte{0xa5}, d.size)
				if b, err := udpAsk(c, msg); err != nil || !bytes.Equal(b, msg) {
					t.Errorf("%d bytes to %s: %d back (%v)", d.size, d.addr, len(b), err)
				}
				c.Close()
			}
		}},
		{"nothing listening on the host's port", func(t *testing.T) {
			send(t, "18612", []byte("anyone?"), 200) // each answered with ICMP port unreachable
		}},
		{"senders gone before the answer", func(t *testing.T) {
			for range 16 {
				send(t, "18611", []byte("gone"), 1) // the answer meets ICMP port unreachable
			}
		}},
		{"a sender that never reads its answers", func(t *testing.T) {
			send(t, "18611", make([]byte, 1400), 20000)
		}},
		{"out of descriptors", func(t *testing.T) {
			defer r.starve(t, 0)()
			for range 16 {
				send(t, "18611", []byte("no socket for me"), 4)
			}
			r.idle(t, "out of descriptors")
		}},
		{"a flood from thousands of ports", func(t *testing.T) {
			for range 4000 {
				send(t, "18611", []byte("flood"), 1)
			}
		}},
	} {
		t.Run(a.name, func(t *testing.T) {
			a.attack(t)
			r.good(t, a.name)
			if b, err := udpAsk(old, []byte("still there?")); string(b) != "still there?" {
				t.Errorf("after %s, a sender from before: %q (%v)", a.name, b, err)
			}
			// The senders stay; the pipes r.good's connections left go
			// after a second.
			most := r.base + rigMaxUDP
			waitLong(t, "the engine's descriptors down to "+strconv.Itoa(most)+" after "+a.name, 20*time.Second,
				func() bool { return r.fds(t) <= most })
			r.idle(t, "after "+a.name)
		})
	}
	if grown := rss(t, r.engine) - rss0; grown > 32<<20 {
		t.Errorf("the engine's resident memory grew by %d MiB", grown>>20)
	}
}

// -T auto and -U auto release a port in the namespace once the host
// stops listening on it, while the namespace still has connections and
// senders through it: the connections go on, the senders are forgotten,
// and once the connections end the engine holds what it held before the
// host listened; a port the host listens on again is forwarded again.
func TestPastaHostileAuto(t *testing.T) {
	needRoot(t)
	if pastaExe() != gopasstBin {
		t.Skip("watches gopasst's engine")
	}
	h := newHost(t, WorldOpts{})
	ns, pid, _ := pidNetns(t, h)
	argv := []string{"--config-net", "-t", "none", "-u", "none", "-T", "auto", "-U", "auto", pid}
	if out, err := h.Cmd(pastaLink(t), argv...).CombinedOutput(); err != nil {
		t.Fatalf("pasta: %v: %s", err, out)
	}
	engine := pastaEngineOf(t, pid)
	base := countFds(t, engine)
	const tcpPort, udpPort = "8701", "8702"
	listen := func() (net.Listener, net.PacketConn) {
		l := h.Listen(t, "tcp", ":"+tcpPort)
		acceptLoop(l, func(c net.Conn) { io.Copy(c, c); c.Close() })
		pc := h.ListenPacket(t, "udp", ":"+udpPort)
		servePackets(pc, func(req []byte) []byte { return req })
		return l, pc
	}
	l, pc := listen()
	var conn net.Conn
	waitLong(t, "-T auto to forward the host's port", 20*time.Second, func() bool {
		c, err := ns.Dial("tcp", "127.0.0.1:"+tcpPort, 5*time.Second)
		if err == nil && echoes(c, []byte("ping")) {
			conn = c
			return true
		}
		if c != nil {
			c.Close()
		}
		return false
	})
	defer conn.Close()
	var senders []net.Conn
	for i := range 8 {
		c, err := ns.Dial("udp", "127.0.0.1:"+udpPort, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		senders = append(senders, c)
		waitLong(t, "-U auto to forward the host's port", 20*time.Second, func() bool {
			b, _ := udpAsk(c, []byte{byte(i)})
			return bytes.Equal(b, []byte{byte(i)})
		})
	}

	// The host stops listening; its accepted connection stays.
	l.Close()
	pc.Close()
	waitLong(t, "the namespace's ports released", 20*time.Second, func() bool {
		var err error
		ns.Do(t, func() {
			var tl net.Listener
			var ul net.PacketConn
			if tl, err = net.Listen("tcp", "127.0.0.1:"+tcpPort); err == nil {
				tl.Close()
				if ul, err = net.ListenPacket("udp", "127.0.0.1:"+udpPort); err == nil {
					ul.Close()
				}
			}
		})
		return err == nil
	})
	if !echoes(conn, []byte("still here")) {
		t.Error("a connection through a released -T auto port was cut")
	}
	for _, c := range senders {
		c.Write([]byte("to a port gone")) // no longer relayed
	}
	conn.Close()
	waitLong(t, "the engine's descriptors back to "+strconv.Itoa(base), 20*time.Second, func() bool { return countFds(t, engine) <= base })
	idleEngine(t, engine, "with -T auto's port released")

	// Listening again, the host's ports are forwarded again.
	listen()
	waitLong(t, "-T auto to forward the port again", 20*time.Second, func() bool {
		c, err := ns.Dial("tcp", "127.0.0.1:"+tcpPort, 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return echoes(c, []byte("again"))
	})
	waitLong(t, "-U auto to forward the port again", 20*time.Second, func() bool {
		b, _ := udpAsk(senders[0], []byte("again"))
		return string(b) == "again"
	})
}
