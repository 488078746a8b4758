package tests

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// impairFwd is the port forwarded into the guest for inbound flows.
const impairFwd = 18470

// impairments are the link faults the impaired tests run under, each way.
var impairments = []struct {
	name string
	imp  Impairment
}{
	{"drop", Impairment{Drop: 0.01}},
	{"reorder", Impairment{Reorder: 0.02, ReorderBy: 3}},
	{"dup", Impairment{Dup: 0.02}},
	{"burst", Impairment{Burst: 0.002, BurstLen: 20}},
	{"mix", Impairment{Drop: 0.005, Dup: 0.01, Reorder: 0.01, ReorderBy: 3, Burst: 0.001, BurstLen: 10}},
}

// impairedWorld starts gopasst with a forward into the guest, and impairs
// both ways with imp once DHCP is done.
func impairedWorld(t *testing.T, imp Impairment) *World {
	w := newWorld(t, WorldOpts{Args: []string{"-t", strconv.Itoa(impairFwd)}})
	w.Bridge.ToGuest.Impair(imp)
	imp.Seed++
	w.Bridge.ToHost.Impair(imp)
	return w
}

// duplex sends size bytes of stream out on c while it reads and checks
// size bytes of stream in from the peer, which does the same.
func duplex(c net.Conn, out, in byte, size int64) error {
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, newStream(out, size))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	sum, n, err := hashCopy(c)
	if err != nil {
		err = fmt.Errorf("after %d of %d bytes: %w", n, size, err)
	} else if n != size || !bytes.Equal(sum, sumStream(in, size)) {
		err = fmt.Errorf("got %d of %d bytes, sha256 match %v", n, size, bytes.Equal(sum, sumStream(in, size)))
	}
	if e := <-sent; err == nil && e != nil {
		err = fmt.Errorf("sending: %w", e)
	}
	return err
}

// impairedBulk runs flows connections each way at once, outbound to host
// loopback through the gateway and inbound through the forward, each
// moving size bytes both ways, and then checks that the engine holds no
// connection and idles.
func impairedBulk(t *testing.T, w *World, flows int, size int64) {
	hl := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	gl := w.Guest.Listen(t, "tcp", fmt.Sprintf(":%d", impairFwd))
	served := make(chan error, 2*flows)
	var mu sync.Mutex
	serving := map[string]bool{} // the servers' connections not ended, by peer
	serve := func(c net.Conn) {
		name := fmt.Sprintf("%v <- %v", c.LocalAddr(), c.RemoteAddr())
		mu.Lock()
		serving[name] = true
		mu.Unlock()
		err := duplex(c, 2, 1, size)
		mu.Lock()
		delete(serving, name)
		mu.Unlock()
		if err != nil {
			err = fmt.Errorf("%s: %w", name, err)
		}
		served <- err
		c.Close()
	}
	acceptLoop(hl, serve)
	acceptLoop(gl, serve)
	var wg sync.WaitGroup
	for i := range 2 * flows {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns, addr := w.Guest, net.JoinHostPort(w.HostVia, port(hl.Addr()))
			if i%2 == 1 {
				ns, addr = w.Host, net.JoinHostPort(hostAddr, strconv.Itoa(impairFwd))
			}
			c, err := ns.Dial("tcp", addr, 30*time.Second)
			if err != nil {
				t.Errorf("dial %s: %v", addr, err)
				return
			}
			defer c.Close()
			if err := duplex(c, 1, 2, size); err != nil {
				t.Errorf("flow %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	for range 2 * flows {
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("server: %v", err)
			}
		case <-time.After(time.Minute):
			mu.Lock()
			pending := fmt.Sprint(serving)
			mu.Unlock()
			t.Fatalf("a server never ended (%s, still serving); host:\n%s\nguest:\n%s",
				pending, w.Host.Run(t, "ss", "-tanoi"), w.Guest.Run(t, "ss", "-tanoi"))
		}
	}
	if t.Failed() {
		return
	}
	pid := w.ServerPid(t)
	if !pollUntil(2*time.Minute, func() bool { return connectedTCP(pid) == 0 }) {
		t.Errorf("%d host connections left", connectedTCP(pid))
	}
	idleEngine(t, pid, "after the transfers")
}

// shortExchanges makes n connections, conc at a time, half outbound to
// host loopback and half inbound through the forward. Each sends a
// request and reads the answer; then the client closes, or resets
// (every third), or the server resets (every fifth). No side may be left
// waiting: every read ends within two minutes, and then the engine holds
// no connection and idles.
func shortExchanges(t *testing.T, w *World, n, conc int) {
	var servers sync.WaitGroup // each ends within its deadline, and before the test
	answer := func(c net.Conn) {
		servers.Add(1)
		defer servers.Done()
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		req := make([]byte, 5)
		if _, err := io.ReadFull(c, req); err != nil {
			t.Errorf("server: request: %v", err)
			return
		}
		c.Write(append([]byte("re:"), req...))
		if req[0] == 'R' {
			// Once the client has the answer, which a reset would
			// throw away: it says so.
			io.ReadFull(c, req[:1])
			c.(*net.TCPConn).SetLinger(0)
			return
		}
		if _, err := io.Copy(io.Discard, c); os.IsTimeout(err) {
			t.Errorf("server: never saw the client's end: %v", err)
		}
	}
	hl := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(hl, answer)
	acceptLoop(w.Guest.Listen(t, "tcp", fmt.Sprintf(":%d", impairFwd)), answer)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ns, addr := w.Guest, net.JoinHostPort(w.HostVia, port(hl.Addr()))
			if i%2 == 1 {
				ns, addr = w.Host, net.JoinHostPort(hostAddr, strconv.Itoa(impairFwd))
			}
			c, err := ns.Dial("tcp", addr, time.Minute)
			if err != nil {
				t.Errorf("exchange %d: dial: %v", i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			req := fmt.Sprintf("q%04d", i)
			if i%5 == 0 {
				req = fmt.Sprintf("R%04d", i)
			}
			c.Write([]byte(req))
			got := make([]byte, 8)
			if _, err := io.ReadFull(c, got); err != nil || string(got) != "re:"+req {
				t.Errorf("exchange %d: got %q, %v", i, got, err)
				return
			}
			switch {
			case i%5 == 0:
				c.Write([]byte("k"))
				if _, err := io.Copy(io.Discard, c); os.IsTimeout(err) {
					t.Errorf("exchange %d: never saw the server's reset: %v", i, err)
				}
			case i%3 == 0:
				c.(*net.TCPConn).SetLinger(0)
			}
		}()
	}
	wg.Wait()
	servers.Wait()
	pid := w.ServerPid(t)
	if !pollUntil(2*time.Minute, func() bool { return connectedTCP(pid) == 0 }) {
		t.Errorf("%d host connections left", connectedTCP(pid))
	}
	idleEngine(t, pid, "after the exchanges")
}

// impairedUDP sends datagrams from the guest to a host echo server until
// replies come back, through a link that loses and duplicates some of
// them: what comes back is what was sent, and the engine then idles.
func impairedUDP(t *testing.T, w *World) {
	srv := w.Host.ListenPacket(t, "udp", "127.0.0.1:0")
	echoPackets(srv, "re:")
	dst, _ := net.ResolveUDPAddr("udp", net.JoinHostPort(w.HostVia, port(srv.LocalAddr())))
	c := guestUDP(t, w)
	buf := make([]byte, 65536)
	got := 0
	for i := range 300 {
		c.WriteTo(bytes.Repeat([]byte{byte(i)}, 1+i%256*200), dst)
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				break
			}
			if n < 4 || string(buf[:3]) != "re:" || n-3 != 1+int(buf[3])*200 {
				t.Fatalf("reply %d: %d bytes, %q...", got, n, buf[:min(n, 8)])
			}
			got++
		}
	}
	if got == 0 {
		t.Fatal("no reply came back")
	}
	idleEngine(t, w.ServerPid(t), "after the datagrams")
}

// TestTCPImpaired runs the guest's kernel TCP through a link that loses,
// reorders, duplicates and blacks out frames (Impairment), each way:
// transfers both ways at once, outbound and inbound, arrive whole
// (SHA-256); short exchanges, whose handshakes, FINs and resets are lost
// or duplicated, leave no side waiting and no flow in the engine;
// datagrams come back as sent. Each ends with the engine holding no
// connection and idle. The same runs at MTU 1500 lose most of an upload
// to the guest's retransmission timer, with upstream passt too: neither
// keeps segments past a gap beyond a batch of frames, nor offers SACK or
// timestamps, so every loss in the guest's loss recovery doubles its
// timeout (Karn's algorithm).
func TestTCPImpaired(t *testing.T) {
	for _, im := range impairments {
		t.Run(im.name, func(t *testing.T) {
			t.Parallel()
			impairedBulk(t, impairedWorld(t, im.imp), 1, 4<<20)
		})
	}
	t.Run("exchanges", func(t *testing.T) {
		t.Parallel()
		shortExchanges(t, impairedWorld(t, Impairment{Drop: 0.03, Dup: 0.03,
			Reorder: 0.03, ReorderBy: 2, Burst: 0.005, BurstLen: 5}), 60, 10)
	})
	t.Run("udp", func(t *testing.T) {
		t.Parallel()
		w := impairedWorld(t, impairments[len(impairments)-1].imp)
		impairedUDP(t, w)
	})
}

// TestTCPImpairedBlackout runs TestTCPImpaired's transfers through a link
// that passes the guest's first 30 frames and then nothing either way
// until the guest has retransmitted 8 segments (Bridge.Blackout): about
// 6.5 s, both flows' timers backed off to 6.4 s. It is left out of the
// suite (GOPASST_BLACKOUT=1 runs it; =passt runs upstream passt, from
// $PASST): it passes, but the guest's upload then stalls for one or two
// more of its backed-off timeouts (15-29 s in all over five runs; passt
// 12-29 s over three), and within passt's design (nothing of the guest's
// kept past a gap, no SACK) nothing the engine could send gets it out.
// The captures show why. The guest, Linux without SACK, retransmits its
// first lost segment at its timeout; our ACK of it opens the window past
// what the guest had sent, which nothing has told us yet, and F-RTO (RFC
// 5682) has the guest send two new segments there. They lie past the
// gap and are dropped. The guest sends everything lost again, in order,
// in slow start, and we take it, up to exactly where it stood at the
// timeout; without SACK it leaves loss recovery only when data past that
// point is acknowledged (RFC 6582), so it counts none of our duplicate
// ACKs, and the two segments go again only at its next timeout, kept
// backed off (Karn's algorithm), where F-RTO sends two new ones again.
// A window ending where the guest had sent would keep F-RTO from
// sending, but at the end of a blackout the first segment the engine
// sees is that retransmission. See docs/benchmarks.md's lossy-link stall.
func TestTCPImpairedBlackout(t *testing.T) {
	backend := os.Getenv("GOPASST_BLACKOUT")
	if backend == "" {
		t.Skip("the guest stalls at its backed-off timeout (see the comment); GOPASST_BLACKOUT=1 or =passt runs it")
	}
	o := WorldOpts{Args: []string{"-t", strconv.Itoa(impairFwd)}}
	if backend == "passt" {
		p, err := passtPath()
		if err != nil {
			t.Skip(err)
		}
		o.Backend = []string{"setsid", p, "-f", "-q", "-s", "{sock}", "-t", strconv.Itoa(impairFwd)}
	}
	w := newWorld(t, o)
	w.Bridge.Blackout(30, 8)
	impairedBulk(t, w, 1, 4<<20)
}
