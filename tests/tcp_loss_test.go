package tests

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTCPLossOnReset: one side writes what the other does not read yet,
// then resets (closes with data of its own left unread, as a server that
// answers without reading the whole request does). What its kernel saw
// acknowledged, gopasst acknowledged: the other side reads all of that,
// in order, then the reset, as it would from a peer of its own. With the
// guest's kernel on one side and the host's on the other, both ways.
func TestTCPLossOnReset(t *testing.T) {
	w := newWorld(t, WorldOpts{})
	l := w.Host.Listen(t, "tcp", "127.0.0.1:0")
	data := lossData()
	for _, guestResets := range []bool{true, false} {
		name := map[bool]string{true: "guest resets", false: "host resets"}[guestResets]
		t.Run(name, func(t *testing.T) {
			guest, host := lossPair(t, w, l)
			from, to := host, guest
			if guestResets {
				from, to = guest, host
			}
			// Something for from to leave unread, so that its close resets.
			to.Write([]byte("unread"))
			waitQueued(t, from, unix.SIOCINQ, func(n int) bool { return n == 6 })
			acked := writeUntilFull(t, from, data)
			from.Close()
			got, err := io.ReadAll(to)
			if len(got) < acked || !bytes.Equal(got, data[:len(got)]) || !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read %d bytes (the stream's start: %v), then %v; want at least the %d the writer saw acknowledged, then a reset",
					len(got), bytes.Equal(got, data[:min(len(got), len(data))]), err, acked)
			}
		})
	}
}

// lossData is 4 MiB that no side reads at once, in a pattern that shows
// where a stream was cut.
func lossData() []byte {
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>8)
	}
	return data
}

// lossPair connects the guest to the host's listener l, through the
// gateway, and returns both ends; the host's reads give up after 20 s.
func lossPair(t *testing.T, w *World, l net.Listener) (guest, host net.Conn) {
	t.Helper()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	guest = w.guestConn(t, net.JoinHostPort(hostGW, port(l.Addr())))
	host = <-accepted
	if host == nil {
		t.Fatal("no connection on the host")
	}
	t.Cleanup(func() { host.Close() })
	host.SetDeadline(time.Now().Add(20 * time.Second))
	return guest, host
}

// writeUntilFull writes data to c, which its peer does not read, until
// the connection holds no more or all is written, and returns how much
// of it c's kernel saw acknowledged once nothing moved any more.
func writeUntilFull(t *testing.T, c net.Conn, data []byte) int {
	t.Helper()
	raw, _ := c.(*net.TCPConn).SyscallConn()
	written := 0
	var unacked int
	for stable := 0; stable < 20; time.Sleep(20 * time.Millisecond) {
		raw.Control(func(fd uintptr) {
			for written < len(data) {
				n, err := unix.Write(int(fd), data[written:])
				if err != nil {
					break
				}
				written += n
			}
		})
		was := unacked
		unacked = queued(c, unix.SIOCOUTQ)
		if stable++; unacked != was {
			stable = 0
		}
	}
	if written-unacked <= 0 {
		t.Fatalf("wrote %d bytes, none acknowledged", written)
	}
	return written - unacked
}

// waitQueued waits until c's queue (SIOCINQ, SIOCOUTQ) satisfies ok.
func waitQueued(t *testing.T, c net.Conn, req uint, ok func(int) bool) {
	t.Helper()
	for i := 0; !ok(queued(c, req)); i++ {
		if i == 1000 {
			t.Fatalf("queue %#x never got there", req)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func queued(c net.Conn, req uint) int {
	raw, _ := c.(*net.TCPConn).SyscallConn()
	n := -1
	raw.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetUint32(int(fd), req); err == nil {
			n = int(int32(v))
		}
	})
	return n
}

// TestTCPLossOnClientGone: the guest writes what its host peer does not
// read yet, then its VM is gone: the front-end's connection closes. What
// the guest's kernel saw acknowledged reaches the peer all the same, in
// order, then a reset, also from a one-off gopasst, which exits then: the
// guest never ended its upload, and an end of stream would pass it off as
// whole. Before, the disconnect reset every host socket at once and threw
// their data away. Upstream passt delivers it too (tried by hand: serving
// on, it keeps the flow, so the peer gets no end; one-off, its exit gives
// the end of stream). Answered, the host peer first writes what the guest
// does not read either, which fills gopasst's socket too: a one-off's exit
// closing it with that unread reset the peer at once and threw the upload
// away.
func TestTCPLossOnClientGone(t *testing.T) {
	data := lossData()
	for _, c := range []struct {
		name             string
		oneOff, answered bool
	}{{"serving on", false, false}, {"one-off", true, false}, {"one-off, answered", true, true}} {
		oneOff := c.oneOff
		t.Run(c.name, func(t *testing.T) {
			var args []string
			if oneOff {
				args = []string{"--one-off"}
			}
			w := newWorld(t, WorldOpts{Args: args})
			guest, host := lossPair(t, w, w.Host.Listen(t, "tcp", "127.0.0.1:0"))
			if c.answered {
				writeUntilFull(t, host, data)
			}
			acked := writeUntilFull(t, guest, data)
			w.Bridge.Close()
			got, err := io.ReadAll(host)
			if len(got) < acked || !bytes.Equal(got, data[:len(got)]) || !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read %d bytes (the stream's start: %v), then %v; want at least the %d the guest saw acknowledged, then a reset",
					len(got), bytes.Equal(got, data[:min(len(got), len(data))]), err, acked)
			}
		})
	}
}
