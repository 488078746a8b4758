package tests

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// arpFrom is an ARP request framed for the socket, from a MAC that
// carries n: gopasst's reply goes to that MAC, so replies differ.
func arpFrom(n uint32) []byte {
	b := arpRequest()
	binary.BigEndian.PutUint32(b[8:], n)
	copy(b[22:28], b[6:12])
	return frame(b)
}

// arpReplyLen is an ARP reply on the wire: 60 bytes, padded, and a prefix.
const arpReplyLen = 64

// streamDial is a raw, blocking client of the engine's socket.
func streamDial(t *testing.T, sock string) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return fd
}

func sendAll(t *testing.T, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			t.Fatalf("write to gopasst: %v", err)
		}
		b = b[n:]
	}
}

func readFull(t *testing.T, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		if err != nil || n == 0 {
			t.Fatalf("read from gopasst: %d, %v", n, err)
		}
		b = b[n:]
	}
}

// spliceIn moves n bytes from the socket into pipe p, as a client that
// keeps what it receives in a pipe of its own.
func spliceIn(t *testing.T, fd, p, n int) {
	t.Helper()
	for n > 0 {
		m, err := unix.Splice(fd, nil, p, nil, n, 0)
		if err != nil || m == 0 {
			t.Fatalf("splice from gopasst: %d, %v", m, err)
		}
		n -= int(m)
	}
}

// arpRounds sends n ARP requests from MACs first.. and reads their
// replies, in rounds of a thousand.
func arpRounds(t *testing.T, fd int, first, n uint32) {
	t.Helper()
	var req bytes.Buffer
	reply := make([]byte, 1000*arpReplyLen)
	for i := uint32(0); i < n; i += 1000 {
		req.Reset()
		for j := range uint32(1000) {
			req.Write(arpFrom(first + i + j))
		}
		sendAll(t, fd, req.Bytes())
		readFull(t, fd, reply)
	}
}

// anonHuge is the engine's AnonHugePages, in KiB.
func anonHuge(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "AnonHugePages:" {
			kb, _ := strconv.Atoi(f[1])
			return kb
		}
	}
	return 0
}

// mappings is how many mappings the engine has.
func mappings(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte("\n"))
}

// TestStreamLendsPages: the sandboxed engine lends its queue's pages to
// the socket (its seccomp filter lets vmsplice through): a client that
// splices its first frame into a pipe finds there, once the queue has
// gone round its ring, another frame, where a copy would have stayed as
// it was. The ring is on huge pages.
func TestStreamLendsPages(t *testing.T) {
	w := newWorld(t, WorldOpts{NoGuest: true})
	pid := w.ServerPid(t)
	fd := streamDial(t, w.Sock)
	defer unix.Close(fd)
	var p, peek [2]int
	for _, pp := range []*[2]int{&p, &peek} {
		if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(pp[0])
		defer unix.Close(pp[1])
	}
	sendAll(t, fd, arpFrom(0))
	spliceIn(t, fd, p[1], arpReplyLen)
	if _, err := unix.Tee(p[0], peek[1], arpReplyLen, 0); err != nil {
		t.Fatal(err)
	}
	first := make([]byte, arpReplyLen)
	readFull(t, peek[0], first)
	if huge := anonHuge(t, pid); huge == 0 {
		t.Errorf("the engine has no huge pages")
	} else {
		t.Logf("engine AnonHugePages %d KiB", huge)
	}

	// Round the 8 MiB ring and a bit.
	arpRounds(t, fd, 1, (8<<20)/arpReplyLen+10000)
	later := make([]byte, arpReplyLen)
	readFull(t, p[0], later)
	if bytes.Equal(first, later) {
		t.Fatalf("the first frame, spliced to a pipe, is as it was: the queue was copied, not lent")
	}
	t.Logf("first frame to %x, the pipe now holds one to %x", first[4:10], later[4:10])
}

// memAvailable is the system's MemAvailable, in bytes.
func memAvailable(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	return 0
}

// TestStreamReconnectHolding: a client reconnects 200 times and keeps,
// spliced into one pipe, a frame of each connection. The engine's
// descriptors and mappings come back to what they were, and what the
// pipe holds keeps from the system about what the pipe says it holds,
// not a huge page for each frame: closing the pipe gives back little.
func TestStreamReconnectHolding(t *testing.T) {
	const conns, limit = 200, 100 << 20
	w := newWorld(t, WorldOpts{NoGuest: true})
	pid := w.ServerPid(t)
	fd := streamDial(t, w.Sock)
	sendAll(t, fd, arpFrom(0))
	expectReply(t, fd)
	unix.Close(fd)
	waitFor(t, "the first client gone", func() bool { return strings.Count(w.Log.String(), "client disconnected") == 1 })
	fds0, maps0 := countFds(t, pid), mappings(t, pid)

	var hold [2]int
	if err := unix.Pipe2(hold[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.FcntlInt(uintptr(hold[1]), unix.F_SETPIPE_SZ, 1<<20); err != nil {
		t.Fatal(err)
	}
	for i := range conns {
		fd := streamDial(t, w.Sock)
		sendAll(t, fd, arpFrom(uint32(i)))
		spliceIn(t, fd, hold[1], arpReplyLen)
		unix.Close(fd)
	}
	fd = streamDial(t, w.Sock)
	sendAll(t, fd, arpFrom(0))
	expectReply(t, fd)
	unix.Close(fd)
	waitFor(t, "the engine's descriptors back to "+strconv.Itoa(fds0), func() bool { return countFds(t, pid) <= fds0 })
	// The Go runtime's own mappings vary by a few; a ring left behind
	// would be one for each connection.
	waitFor(t, "the engine's mappings back to about "+strconv.Itoa(maps0), func() bool { return mappings(t, pid) <= maps0+8 })
	before := memAvailable(t)
	unix.Close(hold[0])
	unix.Close(hold[1])
	freed := memAvailable(t) - before
	t.Logf("closing a pipe holding %d frames of %d bytes, one per connection, freed %d MiB", conns, arpReplyLen, freed>>20)
	if freed > limit {
		t.Errorf("a pipe holding %d frames of %d bytes kept %d MiB from the system", conns, arpReplyLen, freed>>20)
	}
}

// expectReply reads one ARP reply.
func expectReply(t *testing.T, fd int) {
	t.Helper()
	b := make([]byte, arpReplyLen)
	readFull(t, fd, b)
	if binary.BigEndian.Uint32(b) != arpReplyLen-4 || b[16] != 0x08 || b[17] != 0x06 {
		t.Fatalf("not an ARP reply: %x", b)
	}
}
