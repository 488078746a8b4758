package tests

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"
)

var testMAC = []byte{0x02, 0, 0, 0, 0, 0x42}

func frame(b []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(b)))
	return append(out, b...)
}

// arpRequest asks who has 198.51.100.1, from the guest's address.
func arpRequest() []byte {
	b := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, testMAC...)
	b = append(b, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1)
	b = append(b, testMAC...)
	b = append(b, 198, 51, 100, 2, 0, 0, 0, 0, 0, 0, 198, 51, 100, 1)
	return b
}

// expectARPReply reads frames until an ARP reply arrives.
func expectARPReply(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			t.Fatalf("waiting for ARP reply: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		if len(b) >= 42 && b[12] == 0x08 && b[13] == 0x06 && b[21] == 2 {
			if !bytes.Equal(b[0:6], testMAC) {
				t.Fatalf("ARP reply to %x", b[0:6])
			}
			return
		}
	}
}

// TestBadFrames feeds gopasst garbage: every malformed frame is dropped
// and counted, a bad length prefix drops only that client, and the daemon
// keeps serving.
func TestBadFrames(t *testing.T) {
	w := newWorld(t, WorldOpts{NoGuest: true})
	c, err := net.Dial("unix", w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var junk bytes.Buffer
	eth := func(typ uint16, payload []byte) []byte {
		b := append([]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, testMAC...)
		return append(binary.BigEndian.AppendUint16(b, typ), payload...)
	}
	junk.Write(frame([]byte{1, 2, 3}))                                        // shorter than Ethernet
	junk.Write(frame(eth(0x0800, []byte{0x45, 0, 0xff, 0xff})))               // truncated IPv4
	junk.Write(frame(eth(0x0800, append([]byte{0x4f}, make([]byte, 30)...)))) // bad IHL
	junk.Write(frame(eth(0x0806, []byte{0, 1})))                              // truncated ARP
	tcp := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1,
		0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x02, 0, 0, 0, 0, 0, 0}
	junk.Write(frame(eth(0x0800, tcp))) // TCP data offset past the end
	udp := []byte{0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 2, 198, 51, 100, 1,
		0, 68, 0, 67, 0xff, 0xff, 0, 0}
	junk.Write(frame(eth(0x0800, udp))) // UDP length past the end
	for range 200 {
		b := make([]byte, 14+rng.IntN(200))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		junk.Write(frame(b))
	}
	junk.Write(frame(arpRequest()))
	if _, err := c.Write(junk.Bytes()); err != nil {
		t.Fatal(err)
	}
	expectARPReply(t, c)

	// A zero length cannot be resynchronised: that client is dropped.
	c.Write([]byte{0, 0, 0, 0})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("client with a bad length was not disconnected: %v", err)
	}
	c.Close()

	// The daemon still serves the next client.
	c2, err := net.Dial("unix", w.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(frame(arpRequest()))
	expectARPReply(t, c2)
	waitFor(t, "malformed count in the log", func() bool {
		return strings.Contains(w.Log.String(), "bad frame length")
	})
	// Six malformed frames above, plus the bad length prefix.
	if !strings.Contains(w.Log.String(), "malformed 7,") {
		t.Errorf("malformed frames not counted:\n%s", w.Log.String())
	}
}
