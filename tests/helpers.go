package tests

import (
	"crypto/sha256"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
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

// stream is a deterministic pseudo-random byte stream of a given length.
// Both ends of a transfer can generate or verify it without storing it.
type stream struct {
	rng  *rand.ChaCha8
	left int64
}

func newStream(seed byte, n int64) *stream {
	var s [32]byte
	s[0] = seed
	return &stream{rng: rand.NewChaCha8(s), left: n}
}

func (s *stream) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	s.rng.Read(p)
	s.left -= int64(len(p))
	return len(p), nil
}

// sumStream is the SHA-256 of a stream generated with seed and length.
func sumStream(seed byte, n int64) []byte {
	h := sha256.New()
	io.Copy(h, newStream(seed, n))
	return h.Sum(nil)
}

// hashCopy reads r to the end and returns its SHA-256 and length.
func hashCopy(r io.Reader) ([]byte, int64, error) {
	var h hash.Hash = sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	return h.Sum(nil), n, err
}

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

// acceptLoop serves every connection l accepts with handle, each in its
// own goroutine, until l is closed.
func acceptLoop(l net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// echoPackets answers every datagram pc receives with prefix and the
// datagram, until pc is closed.
func echoPackets(pc net.PacketConn, prefix string) {
	servePackets(pc, func(req []byte) []byte { return append([]byte(prefix), req...) })
}

// servePackets answers each datagram pc receives with reply's result (none
// when it is nil), until pc is closed.
func servePackets(pc net.PacketConn, reply func(req []byte) []byte) {
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := reply(buf[:n]); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
}
