package slirp

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// TestStreamClientHostile: the clients --vsock hands over (AttachStream,
// whose framing the first bytes tell) that send garbage, a bad length,
// part of a prefix or of a frame and hang up, or an endless gvforwarder
// request, are dropped, a bad stream counted as malformed, and leave no
// descriptor behind; clients that come while one is attached are closed
// at once. After them all a well-behaved client is served.
func TestStreamClientHostile(t *testing.T) {
	e, err := New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}, -1)
	if err != nil {
		t.Fatal(err)
	}
	before := openFds(t)
	// client attaches a new client, which sends what and, if hangUp,
	// closes its end; it returns that end, or -1.
	client := func(what []byte, hangUp bool) int {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		e.AttachStream(pair[0])
		unix.Write(pair[1], what)
		if hangUp {
			unix.Close(pair[1])
			return -1
		}
		return pair[1]
	}
	// gone turns the engine until the client is gone.
	gone := func(name string) {
		for i := 0; e.link != nil; i++ {
			if i == 16 {
				t.Fatalf("%s: the client is still attached", name)
			}
			e.turn(0)
		}
	}
	arp := seedFrames()[0]
	for _, c := range []struct {
		name      string
		what      []byte
		hangUp    bool
		malformed bool
	}{
		{"zero length", []byte{0, 0, 0, 0, 1, 2, 3}, false, true},
		{"huge length", []byte{0x7f, 0xff, 0xff, 0xff, 1, 2, 3}, false, true},
		{"just over MaxFrame", []byte{0, 1, 0, 15}, false, true},
		{"garbage", bytes.Repeat([]byte{0xa5}, 4096), false, true},
		{"half a prefix, then hang up", []byte{0, 0}, true, false},
		{"half a frame, then hang up", append([]byte{0, 0, 0, byte(len(arp))}, arp[:10]...), true, false},
		{"not gvforwarder's request", []byte("POST /other HTTP/1.1\r\n\r\n"), false, true},
		{"a request without end", append([]byte("POST /connect HTTP/1.1\r\n"), bytes.Repeat([]byte("X: y\r\n"), 1000)...), false, true},
		{"hang up at once", nil, true, false},
	} {
		malformed := e.Stats.Malformed
		g := client(c.what, c.hangUp)
		if e.link == nil {
			t.Fatalf("%s: not attached", c.name)
		}
		// More clients while this one is attached: each is closed.
		for range 8 {
			if fd := client([]byte{0, 0, 0, 1, 0}, false); fd >= 0 {
				var b [1]byte
				if n, err := unix.Read(fd, b[:]); n != 0 || err != nil {
					t.Errorf("%s: a second client's socket reads %d, %v; want it closed", c.name, n, err)
				}
				unix.Close(fd)
			}
		}
		gone(c.name)
		if g >= 0 {
			unix.Close(g)
		}
		want := malformed
		if c.malformed {
			want++
		}
		if e.Stats.Malformed != want {
			t.Errorf("%s: %d counted as malformed, want %d", c.name, e.Stats.Malformed-malformed, want-malformed)
		}
		if leaked := leakedFds(t, before); len(leaked) != 0 {
			t.Fatalf("%s: descriptors left: %v", c.name, leaked)
		}
	}

	g := client(append([]byte{0, 0, 0, byte(len(arp))}, arp...), false)
	defer unix.Close(g)
	for range 4 {
		e.turn(0)
	}
	var reply []byte
	drainFrames(qemusock.NewReader(qemusock.QEMU, 1<<16), g, func(f []byte) { reply = append(reply, f...) })
	if header.Ethernet(reply).Type() != header.EtherTypeARP {
		t.Fatalf("the well-behaved client got % x, want an ARP reply", reply)
	}
}

// TestStreamClientCutBatch: a client whose batch of frames ends in a
// malformed one is dropped before the batch is done. The segments it had
// put aside past a gap (tcpRetryAhead) went on to the next client's first
// batch, which replayed them: the new guest got a RST for a connection of
// the old one's, and the old one's buffer was kept until then.
func TestStreamClientCutBatch(t *testing.T) {
	h, _ := tcpPeer(t)
	h.seq += 100 // past a gap: put aside
	b := append([]byte(nil), h.segment(header.TCPAck|header.TCPPsh, 10)...)
	h.send(append(b, 0, 0, 0, 0)) // then a frame of no length
	h.e.turn(10)
	if h.e.link != nil {
		t.Fatal("the malformed frame did not end the client")
	}
	h.guest = attachStream(t, h.e)
	h.rd = qemusock.NewReader(qemusock.QEMU, 4<<20)
	// The new guest's first frame: one the engine does not handle.
	frame := make([]byte, 4+header.EthernetLen)
	binary.BigEndian.PutUint32(frame, header.EthernetLen)
	header.Ethernet(frame[4:]).Encode([6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, hpMAC, 0x88b5)
	h.send(frame)
	h.e.turn(10)
	h.readFrames(func(s header.TCP) {
		t.Errorf("the new guest got a segment of the old one's connection: %v", s.Flags())
	})
}
