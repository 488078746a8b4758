package slirp

import (
	"io"
	"testing"
)

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
