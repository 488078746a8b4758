package slirp

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// splicedPair joins two loopback connections as the loopback path does
// (spliceJoin): it returns the client's end, the server's, and the
// engine's socket to the server. The client's end of the pair has the
// options a -t listener passes on.
func splicedPair(t *testing.T, te *testEngine) (client, server net.Conn, b int) {
	t.Helper()
	client, a := loopbackPair(t)
	server, b = loopbackPair(t)
	spliceSockOpts(a)
	te.spliceJoin(a, b)
	return client, server, b
}

// TestSpinAfterSplicedMessage: on the loopback path, a turn that spliced
// a short message polls, as a request or an answer is mostly followed by
// the next soon; a turn that spliced bulk does not, as polling there
// took the CPU the two ends needed (spin).
func TestSpinAfterSplicedMessage(t *testing.T) {
	te := newTestEngine(t)
	client, server, _ := splicedPair(t, te)
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

// TestSpliceAnswerBeforeReset: a server that answers and resets (as a
// close with input unread does) before the engine's turn: the engine
// reads the answer before the reset, as a direct connection's client
// would, and the client gets both. The pair was reset at the error, the
// answer with it.
func TestSpliceAnswerBeforeReset(t *testing.T) {
	te := newTestEngine(t)
	client, server, b := splicedPair(t, te)
	server.Write([]byte("answer"))
	server.(*net.TCPConn).SetLinger(0)
	server.Close()
	// No events asked for: poll reports the error alone.
	if n, _ := unix.Poll([]unix.PollFd{{Fd: int32(b)}}, 10000); n != 1 {
		t.Fatal("the reset never reached the engine's socket")
	}
	for deadline := time.Now().Add(10 * time.Second); te.splice.count > 0 && time.Now().Before(deadline); {
		te.turn(100)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(client)
	if string(got) != "answer" || !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("the client read %q (%v), want %q and a reset", got, err, "answer")
	}
}
