package slirp

import (
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// loopbackPair connects a TCP pair on loopback: one end for the test,
// the other's descriptor, non-blocking, for the engine to own.
func loopbackPair(t *testing.T) (net.Conn, int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := unix.Dup(int(f.Fd()))
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, fd
}

// TestSpinAfterSplicedMessage: on the loopback path, a turn that spliced
// a short message polls, as a request or an answer is mostly followed by
// the next soon; a turn that spliced bulk does not, as polling there
// took the CPU the two ends needed (spin).
func TestSpinAfterSplicedMessage(t *testing.T) {
	te := newTestEngine(t)
	client, a := loopbackPair(t)
	server, b := loopbackPair(t)
	te.spliceJoin(a, b)
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
