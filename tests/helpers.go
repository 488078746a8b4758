package tests

import (
	"net"
	"testing"
	"time"

	"github.com/gopasst/gopasst/tests/internal/soak"
)

// Listen opens a listener inside the namespace.
func (ns *Netns) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	ns.Do(t, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ListenPacket opens a packet socket inside the namespace.
func (ns *Netns) ListenPacket(t testing.TB, network, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	var err error
	ns.Do(t, func() { c, err = net.ListenPacket(network, addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial connects from inside the namespace.
func (ns *Netns) Dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	var err error
	if e := ns.do(func() { c, err = net.DialTimeout(network, addr, timeout) }); e != nil {
		return nil, e
	}
	return c, err
}

// port returns a listener's port as a string.
func port(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// The soak workload's, which its guest agent shares: newStream is a
// deterministic pseudo-random byte stream of a given length, which both
// ends of a transfer can generate or verify without storing it;
// sumStream its SHA-256; hashCopy reads a reader to its end and returns
// its SHA-256 and length.
var (
	newStream = soak.NewStream
	sumStream = soak.SumStream
	hashCopy  = soak.HashCopy
)

// guestConn connects from the guest namespace, failing the test if it
// cannot; the connection closes with the test and times out after 20 s.
func (w *World) guestConn(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := w.Guest.Dial("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

// acceptLoop and servePackets are the soak workload's too.
var (
	acceptLoop   = soak.AcceptLoop
	servePackets = soak.ServePackets
)

// echoPackets answers every datagram pc receives with prefix and the
// datagram, until pc is closed.
func echoPackets(pc net.PacketConn, prefix string) {
	servePackets(pc, func(req []byte) []byte { return append([]byte(prefix), req...) })
}
