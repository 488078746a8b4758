package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const transferSize = 256 << 20

// TestTCPTransfer moves 256 MiB each way between the guest and a server
// on host loopback, reached through the gateway address, and compares
// SHA-256 sums on both ends.
func TestTCPTransfer(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	tcpTransfer(t, w, "127.0.0.1:0", hostGW, transferSize)
}

// tcpTransfer moves size bytes each way between the guest and a server
// listening on host loopback at listen, which the guest reaches through
// gateway.
func tcpTransfer(t *testing.T, w *World, listen, gateway string, size int64) {
	l := w.Host.Listen(t, "tcp", listen)
	target := net.JoinHostPort(gateway, port(l.Addr()))
	want := sumStream(1, size)

	t.Run("download", func(t *testing.T) { tcpDownload(t, w, l, target, size) })

	t.Run("upload", func(t *testing.T) {
		type result struct {
			sum []byte
			n   int64
			err error
		}
		res := make(chan result, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				res <- result{err: err}
				return
			}
			defer c.Close()
			sum, n, err := hashCopy(c)
			res <- result{sum, n, err}
		}()
		c, err := w.Guest.Dial("tcp", target, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if _, err := io.Copy(c, newStream(1, size)); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		r := <-res
		c.Close()
		if r.err != nil || r.n != size || !bytes.Equal(r.sum, want) {
			t.Fatalf("upload: %d bytes, err %v, sha256 match %v", r.n, r.err, bytes.Equal(r.sum, want))
		}
		t.Logf("guest->host %d MiB in %v", r.n>>20, time.Since(start))
	})
}

// tcpDownload moves size bytes from a server on l, which the guest
// reaches at target, to the guest, checked by SHA-256.
func tcpDownload(t *testing.T, w *World, l net.Listener, target string, size int64) {
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		io.Copy(c, newStream(1, size))
		c.Close()
	}()
	c, err := w.Guest.Dial("tcp", target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	got, n, err := hashCopy(c)
	if want := sumStream(1, size); err != nil || n != size || !bytes.Equal(got, want) {
		t.Fatalf("download: %d bytes, err %v, sha256 match %v", n, err, bytes.Equal(got, want))
	}
	t.Logf("host->guest %d MiB in %v", n>>20, time.Since(start))
}

// TestTCPDownloadPastQueueRebase: 1.25 GiB to the guest through one
// stream client that is lent pages (--lend-pages), whose output queue
// never starts over at 0 while the client has bytes unread: it takes its
// offsets back once past 2^30 bytes (Queue.rebase, for an int is 32 bits
// wide on some machines), on this 64-bit machine too (seen by hand, with
// a panic there), and the stream arrives whole. A copying queue starts
// over whenever it is empty, as in a download it often is.
func TestTCPDownloadPastQueueRebase(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"--lend-pages"}})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	tcpDownload(t, w, l, net.JoinHostPort(hostGW, port(l.Addr())), 5<<28)
}

// TestTCPConcurrent opens 1,000 connections at once, each echoing its own
// data through the host.
func TestTCPConcurrent(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { io.Copy(c, c); c.Close() })
	target := net.JoinHostPort(hostGW, port(l.Addr()))
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := w.Guest.Dial("tcp", target, 20*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			msg := bytes.Repeat([]byte(fmt.Sprintf("conn %04d ", i)), 400)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: echo mismatch (%d bytes, %v)", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestTCPRefused: a closed host port must refuse the guest's connection
// promptly (the guest gets a RST), not let it hang.
func TestTCPRefused(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	p := port(l.Addr())
	l.Close()
	_, err := w.Guest.Dial("tcp", net.JoinHostPort(hostGW, p), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: got %v, want connection refused within 1 s", err)
	}
}

// TestTCPHostClose covers the host closing first, and half-close in both
// directions.
func TestTCPHostClose(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	target := net.JoinHostPort(hostGW, port(l.Addr()))

	t.Run("host closes", func(t *testing.T) {
		go func() {
			c, err := l.Accept()
			if err == nil {
				c.Write([]byte("bye"))
				c.Close()
			}
		}()
		c := w.guestConn(t, target)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "bye" {
			t.Fatalf("got %q, %v", got, err)
		}
	})

	t.Run("guest half-closes", func(t *testing.T) {
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			req, _ := io.ReadAll(c) // until the guest's FIN
			c.Write(append([]byte("re: "), req...))
		}()
		c := w.guestConn(t, target)
		c.Write([]byte("question"))
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "re: question" {
			t.Fatalf("got %q, %v", got, err)
		}
	})

	t.Run("host half-closes", func(t *testing.T) {
		done := make(chan string, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			c.Write([]byte("hello"))
			c.(*net.TCPConn).CloseWrite()
			rest, _ := io.ReadAll(c)
			done <- string(rest)
		}()
		c := w.guestConn(t, target)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "hello" {
			t.Fatalf("got %q, %v", got, err)
		}
		c.Write([]byte("still talking"))
		c.(*net.TCPConn).CloseWrite()
		if rest := <-done; rest != "still talking" {
			t.Fatalf("host got %q after its half-close", rest)
		}
	})
}

// TestTCPKeepalive: 100 guest connections with TCP keepalive at 1 s idle,
// 1 s interval and 3 probes stay idle for 10 s (the guest kernel would
// have given up after 4 s of unanswered probes), then each still echoes.
func TestTCPKeepalive(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	acceptLoop(l, func(c net.Conn) { io.Copy(c, c); c.Close() })
	target := net.JoinHostPort(hostGW, port(l.Addr()))
	d := net.Dialer{Timeout: 5 * time.Second, KeepAliveConfig: net.KeepAliveConfig{
		Enable: true, Idle: time.Second, Interval: time.Second, Count: 3}}
	const n = 100
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	w.Guest.Do(t, func() {
		for range n {
			c, err := d.Dial("tcp", target)
			if err != nil {
				t.Error(err)
				return
			}
			conns = append(conns, c)
		}
	})
	if t.Failed() {
		return
	}
	time.Sleep(10 * time.Second)
	alive := 0
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := fmt.Sprintf("still here %d", i)
		buf := make([]byte, len(msg))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Errorf("conn %d: write after idle: %v", i, err)
			continue
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Errorf("conn %d: echo after idle: %q, %v", i, buf, err)
			continue
		}
		alive++
	}
	t.Logf("%d/%d keepalive connections alive after 10 s idle", alive, n)
}

// TestTCPInboundGuestTimeWait: a host client that reconnects through -t
// from the port of its last connection, which the guest closed first and
// holds in TIME-WAIT. After 4 MiB to the guest, our SYN's sequence
// number (RFC 6528's clock) is below what the guest had, and the guest
// answers it with an ACK of the old connection; we reset that (RFC 9293,
// 3.10.7.3), and our next SYN connects, a second later. Ignored, the
// ACK came back to each SYN until TIME-WAIT ran out: the client waited
// a minute. The two addresses it comes from are both the gateway to the
// guest, as TestSoakVhostUser's three are.
func TestTCPInboundGuestTimeWait(t *testing.T) {
	w := newWorld(t, WorldOpts{Args: []string{"-t", "18390:8390"}})
	l := w.Guest.Listen(t, "tcp", ":8390")
	acceptLoop(l, func(c net.Conn) {
		io.CopyN(io.Discard, c, 4<<20)
		io.WriteString(c, "done\n")
		c.Close() // first: the guest's side goes to TIME-WAIT
	})
	port := 0
	for i, src := range []string{"127.0.0.1", hostAddr, "127.0.0.1"} {
		var c net.Conn
		var err error
		w.Host.do(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src), Port: port}, Timeout: 5 * time.Second}
			c, err = d.Dial("tcp", net.JoinHostPort(src, "18390"))
		})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		port = c.LocalAddr().(*net.TCPAddr).Port
		// Well within TIME-WAIT's minute, and well over our SYN's second.
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(make([]byte, 4<<20))
		got, err := io.ReadAll(c)
		c.Close()
		if string(got) != "done\n" {
			t.Fatalf("connection %d from %s port %d: read %q, %v", i, src, port, got, err)
		}
		// The next connection comes once the guest's is in TIME-WAIT
		// and our flow is gone (it holds no socket for it): else, with
		// the flow's addresses taken, the client is refused.
		peer := func(l string) bool {
			return slices.ContainsFunc(strings.Fields(l), func(f string) bool { return strings.HasSuffix(f, fmt.Sprintf(":%d", port)) })
		}
		waitFor(t, "the guest's connection in TIME-WAIT", func() bool {
			out, _ := w.Guest.Cmd("ss", "-Htan", "state", "time-wait", "sport", "=", ":8390").Output()
			return slices.ContainsFunc(strings.Split(string(out), "\n"), peer)
		})
		waitFor(t, "the engine done with the flow", func() bool {
			out, _ := w.Host.Cmd("ss", "-Htanp", "sport", "=", ":18390").Output()
			return !slices.ContainsFunc(strings.Split(string(out), "\n"), func(l string) bool { return peer(l) && strings.Contains(l, "users:") })
		})
	}
}
