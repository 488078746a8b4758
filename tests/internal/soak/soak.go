// Package soak is the soak test's workload (tests/soak_test.go): its TCP
// protocol, served and spoken, its UDP exchanges, and the text form of
// each exchange ("an op"), which the test runs in a guest's namespace
// itself or sends to the agent in a QEMU guest (tests/cmd/soakguest).
package soak

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Stream is a deterministic pseudo-random byte stream of a given length.
// Both ends of a transfer can generate or verify it without storing it.
type Stream struct {
	rng  *rand.ChaCha8
	left int64
}

// NewStream is the stream of n bytes that seed makes.
func NewStream(seed byte, n int64) *Stream {
	var s [32]byte
	s[0] = seed
	return &Stream{rng: rand.NewChaCha8(s), left: n}
}

func (s *Stream) Read(p []byte) (int, error) {
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

// SumStream is the SHA-256 of a stream generated with seed and length.
func SumStream(seed byte, n int64) []byte {
	h := sha256.New()
	io.Copy(h, NewStream(seed, n))
	return h.Sum(nil)
}

// HashCopy reads r to the end and returns its SHA-256 and length.
func HashCopy(r io.Reader) ([]byte, int64, error) {
	var h hash.Hash = sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 1<<20))
	return h.Sum(nil), n, err
}

// Serve serves the workload's TCP protocol on l until it is closed: a
// line "get SEED N" is answered with NewStream(SEED, N) and a close;
// "put N" reads N bytes and answers their SHA-256; "echo" echoes until
// the client's FIN; "rst" resets.
func Serve(l net.Listener) { AcceptLoop(l, serveConn) }

// AcceptLoop serves every connection l accepts with handle, each in its
// own goroutine, until l is closed.
func AcceptLoop(l net.Listener, handle func(net.Conn)) {
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

func serveConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	var seed byte
	var n int64
	switch f := strings.Fields(line); {
	case len(f) == 3 && f[0] == "get":
		fmt.Sscan(f[1], &seed)
		fmt.Sscan(f[2], &n)
		io.Copy(c, NewStream(seed, n))
	case len(f) == 2 && f[0] == "put":
		fmt.Sscan(f[1], &n)
		sum, got, _ := HashCopy(io.LimitReader(r, n))
		fmt.Fprintf(c, "%x %d\n", sum, got)
	case len(f) == 1 && f[0] == "echo":
		io.Copy(c, r)
	case len(f) == 1 && f[0] == "rst":
		c.(*net.TCPConn).SetLinger(0)
	}
}

// Echo answers every datagram pc receives with itself, until pc is
// closed.
func Echo(pc net.PacketConn) { ServePackets(pc, func(req []byte) []byte { return req }) }

// ServePackets answers each datagram pc receives with reply's result
// (none when it is nil), until pc is closed.
func ServePackets(pc net.PacketConn, reply func(req []byte) []byte) {
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

// Request runs one exchange of Serve's protocol over c: kind 0 reads a
// short answer whole, 1 resets before the answer, 2 abandons it mid
// transfer (a close with unread data), 3 half-closes an echo, 4 has the
// server reset.
func Request(c net.Conn, kind int, seed byte) error {
	defer c.Close()
	n := int64(1000 + int(seed)*300)
	switch kind {
	case 0:
		return Transfer(c, false, seed, n)
	case 1:
		fmt.Fprintf(c, "get %d %d\n", seed, 4<<20)
		c.(*net.TCPConn).SetLinger(0)
	case 2:
		fmt.Fprintf(c, "get %d %d\n", seed, 4<<20)
		if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil {
			return fmt.Errorf("get 4 MiB, 64 KiB of it: %v", err)
		}
	case 3:
		msg := bytes.Repeat([]byte{seed}, int(n))
		io.WriteString(c, "echo\n")
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); err != nil || !bytes.Equal(got, msg) {
			return fmt.Errorf("echo after a half-close: %d bytes of %d back (%v)", len(got), n, err)
		}
	case 4:
		io.WriteString(c, "rst\n")
		if got, err := io.ReadAll(c); len(got) != 0 || err == nil || isTimeout(err) {
			return fmt.Errorf("a server's reset: %d bytes, %v", len(got), err)
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Transfer moves size bytes one way and checks them by SHA-256.
func Transfer(c net.Conn, up bool, seed byte, size int64) error {
	defer c.Close()
	if up {
		fmt.Fprintf(c, "put %d\n", size)
		if _, err := io.Copy(c, NewStream(seed, size)); err != nil {
			return fmt.Errorf("put: %v", err)
		}
		got, err := io.ReadAll(c)
		if want := fmt.Sprintf("%x %d\n", SumStream(seed, size), size); string(got) != want {
			return fmt.Errorf("put %d: the server read %q (%v), want %q", size, got, err, want)
		}
		return nil
	}
	fmt.Fprintf(c, "get %d %d\n", seed, size)
	sum, n, err := HashCopy(c)
	if err != nil || n != size || !bytes.Equal(sum, SumStream(seed, size)) {
		return fmt.Errorf("get %d: %d bytes (%v), SHA-256 equal: %v", size, n, err, bytes.Equal(sum, SumStream(seed, size)))
	}
	return nil
}

// Ask sends msg from the socket listen opens to addr until an answer
// comes (three tries), and checks it with want.
func Ask(listen func() (net.PacketConn, error), addr string, msg []byte, want func([]byte) bool) error {
	c, err := listen()
	if err != nil {
		return err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	buf := make([]byte, 65536)
	for range 3 {
		c.WriteTo(msg, dst)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := c.ReadFrom(buf)
		if err == nil && want(buf[:n]) {
			return nil
		}
	}
	return fmt.Errorf("%d bytes to %s: no good answer in three tries", len(msg), addr)
}

// DNSName is what the workload's queries ask for, and DNSAddr the
// answer the test's resolver gives.
const DNSName = "soak.gopasst.example"

var DNSAddr = [4]byte{203, 0, 113, 5}

// dnsQuery asks for DNSName's A record, with id.
func dnsQuery(id int) []byte {
	q := []byte{byte(id >> 8), byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(DNSName, ".") {
		q = append(append(q, byte(len(l))), l...)
	}
	return append(q, 0, 0, 1, 0, 1)
}

// An Env is where ops run: how they dial, open UDP sockets and start
// commands.
type Env struct {
	Dial         func(network, addr string, timeout time.Duration) (net.Conn, error)
	ListenPacket func() (net.PacketConn, error)
	Command      func(name string, args ...string) *exec.Cmd
}

// Here is the process's own network.
var Here = Env{
	Dial:         net.DialTimeout,
	ListenPacket: func() (net.PacketConn, error) { return net.ListenPacket("udp", ":0") },
	Command:      exec.Command,
}

func (e Env) dial(addr string) (net.Conn, error) {
	c, err := e.Dial("tcp", addr, 10*time.Second)
	if err == nil {
		c.SetDeadline(time.Now().Add(time.Minute))
	}
	return c, err
}

// Run runs an op, one exchange, and returns what a command printed:
//
//	req ADDR KIND SEED       Request over a connection to ADDR
//	xfer ADDR up|down SEED SIZE   Transfer
//	udp ADDR SIZE SEED       SIZE bytes of SEED echoed back
//	dns ADDR ID              a query for DNSName answered with DNSAddr
//	exec NAME ARG...         a command that must exit 0
func (e Env) Run(op string) (string, error) {
	f := strings.Fields(op)
	num := func(i int) int64 {
		if i >= len(f) {
			return -1
		}
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return -1
		}
		return n
	}
	bad := fmt.Errorf("bad op %q", op)
	switch {
	case len(f) == 4 && f[0] == "req" && num(2) >= 0 && num(3) >= 0:
		c, err := e.dial(f[1])
		if err != nil {
			return "", err
		}
		return "", Request(c, int(num(2)), byte(num(3)))
	case len(f) == 5 && f[0] == "xfer" && num(3) >= 0 && num(4) >= 0:
		c, err := e.dial(f[1])
		if err != nil {
			return "", err
		}
		return "", Transfer(c, f[2] == "up", byte(num(3)), num(4))
	case len(f) == 4 && f[0] == "udp" && num(2) >= 0 && num(3) >= 0:
		msg := bytes.Repeat([]byte{byte(num(3))}, int(num(2)))
		return "", Ask(e.ListenPacket, f[1], msg, func(a []byte) bool { return bytes.Equal(a, msg) })
	case len(f) == 3 && f[0] == "dns" && num(2) >= 0:
		q := dnsQuery(int(num(2)))
		return "", Ask(e.ListenPacket, f[1], q, func(a []byte) bool {
			return len(a) > 4 && bytes.HasSuffix(a, DNSAddr[:]) && a[0] == q[0] && a[1] == q[1]
		})
	case len(f) >= 2 && f[0] == "exec":
		out, err := e.Command(f[1], f[2:]...).CombinedOutput()
		return string(out), err
	}
	return "", bad
}
