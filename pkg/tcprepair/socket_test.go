package tcprepair

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// netns runs functions on one OS thread in a network namespace of its
// own, with loopback up, so the sockets they make live there. The
// namespace goes away with its last socket once the thread ends.
type netns struct {
	do   chan func()
	done chan struct{}
}

func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace and sets TCP_REPAIR")
	}
	if emulated() {
		t.Skip("qemu-user does not translate TCP_INFO and TCP_REPAIR_WINDOW")
	}
	ns := &netns{do: make(chan func()), done: make(chan struct{})}
	errc := make(chan error)
	go func() {
		// The thread is never unlocked: the runtime ends it with the
		// goroutine, and the namespace with it.
		runtime.LockOSThread()
		defer close(ns.done)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- loopbackUp()
		for f := range ns.do {
			f()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(ns.do); <-ns.done })
	return ns
}

// emulated says the test runs under qemu-user: the kernel is of another
// architecture than the binary (qemu-user fakes uname, not this file).
func emulated() bool {
	b, _ := os.ReadFile("/proc/sys/kernel/arch")
	machine := strings.TrimSpace(string(b))
	native := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "s390x": "s390x"}[runtime.GOARCH]
	return machine != "" && native != "" && native != machine
}

func (ns *netns) run(f func()) {
	c := make(chan struct{})
	ns.do <- func() { f(); close(c) }
	<-c
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// pair is a connected pair of blocking TCP sockets over loopback in ns.
func pair(t *testing.T, ns *netns, family int) (a, b int, aAddr, bAddr unix.Sockaddr) {
	t.Helper()
	var err error
	ns.run(func() {
		var l int
		var any unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
		if family == unix.AF_INET6 {
			any = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
		}
		if l, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return
		}
		defer unix.Close(l)
		if err = unix.Bind(l, any); err != nil {
			return
		}
		unix.Listen(l, 1)
		bAddr, _ = unix.Getsockname(l)
		if a, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return
		}
		if err = unix.Connect(a, bAddr); err != nil {
			return
		}
		aAddr, _ = unix.Getsockname(a)
		b, _, err = unix.Accept4(l, unix.SOCK_CLOEXEC)
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, b, aAddr, bAddr
}

// repairer sets TCP_REPAIR on sockets: the test itself (it is root), or
// a helper over the protocol.
type repairer func(t *testing.T, cmd int8, fds ...int)

func direct(t *testing.T, cmd int8, fds ...int) {
	t.Helper()
	if err := setRepair(cmd, fds); err != nil {
		t.Fatal(err)
	}
}

// stream is one direction of a test connection: pseudo-random bytes,
// sent and received in pieces, compared at the end by SHA-256.
type stream struct {
	data     []byte
	sent     int
	received bytes.Buffer
}

func newStream(n int, seed uint64) *stream {
	s := &stream{data: make([]byte, n)}
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range s.data {
		s.data[i] = byte(r.Uint32())
	}
	return s
}

// push writes from fd without blocking until the kernel takes no more
// (or max bytes went).
func (s *stream) push(t *testing.T, fd, max int) {
	t.Helper()
	for s.sent < len(s.data) && max > 0 {
		n, err := unix.SendmsgN(fd, s.data[s.sent:s.sent+min(max, len(s.data)-s.sent, 16<<10)], nil, nil, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		s.sent += n
		max -= n
	}
}

// pushAll writes the rest of the stream from fd, blocking.
func (s *stream) pushAll(fd int) error {
	for s.sent < len(s.data) {
		n, err := unix.Write(fd, s.data[s.sent:])
		if err != nil && err != unix.EINTR && err != unix.EAGAIN {
			return err
		}
		s.sent += max(n, 0)
	}
	return nil
}

// pushRest writes on fd, a moved socket, what Resume left for the caller
// (rest: what the new socket did not take first), then the rest of s, as
// the peer drains it.
func (s *stream) pushRest(fd int, rest []byte) error {
	if _, err := unix.Write(fd, rest); err != nil {
		return err
	}
	return s.pushAll(fd)
}

// pull reads on fd until the stream is whole or the peer closes.
func (s *stream) pull(fd int) error {
	buf := make([]byte, 64<<10)
	for s.received.Len() < len(s.data) {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		s.received.Write(buf[:n])
	}
	return nil
}

func (s *stream) check(t *testing.T, name string) {
	t.Helper()
	if got, want := sha256.Sum256(s.received.Bytes()), sha256.Sum256(s.data); got != want {
		t.Errorf("%s: received %d bytes of %d, SHA-256 %x, want %x", name, s.received.Len(), len(s.data), got[:8], want[:8])
	}
}

// moveSocket dumps a (in repair mode), closes it and makes a new socket
// in ns that is the same connection. It returns the new socket, made
// blocking, and what Resume left for the caller to write.
func moveSocket(t *testing.T, ns *netns, repair repairer, a int, local, remote unix.Sockaddr, family int) (int, *State, []byte) {
	t.Helper()
	repair(t, On, a)
	st, err := Dump(a)
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	unix.Close(a)
	var fd int
	ns.run(func() { fd, err = NewSocket(family) })
	if err != nil {
		t.Fatal(err)
	}
	repair(t, On, fd)
	if err := Restore(fd, st, local, remote); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	repair(t, Off, fd)
	rest, err := Resume(fd, st)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	unix.SetNonblock(fd, false)
	return fd, st, rest
}

// TestMoveWithDataInFlight moves one end of a loopback connection while
// both directions have data queued: what a sent and b has not read, what
// b sent and a has not read. Every byte arrives once, in order.
func TestMoveWithDataInFlight(t *testing.T) {
	ns := newNetns(t)
	moveWithDataInFlight(t, ns, direct)
}

// TestMoveThroughHelper is TestMoveWithDataInFlight with TCP_REPAIR set
// by Serve, over the helper protocol.
func TestMoveThroughHelper(t *testing.T) {
	ns := newNetns(t)
	c, done := startHelper(t)
	moveWithDataInFlight(t, ns, func(t *testing.T, cmd int8, fds ...int) {
		t.Helper()
		if err := c.Set(cmd, fds); err != nil {
			t.Fatal(err)
		}
	})
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// startHelper runs Serve on one end of a socket pair and returns a
// Client on the other, and where Serve's result will come.
func startHelper(t *testing.T) (*Client, chan error) {
	t.Helper()
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Serve(sp[1]); unix.Close(sp[1]) }()
	return NewClient(sp[0]), done
}

func moveWithDataInFlight(t *testing.T, ns *netns, repair repairer) {
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		a, b, aAddr, bAddr := pair(t, ns, family)
		// Small receive buffers, so a's writes back up into its send
		// queue, some of them never sent.
		unix.SetsockoptInt(b, unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<10)
		ab, ba := newStream(8<<20, 1), newStream(8<<20, 2)
		ab.push(t, a, 4<<20)
		ba.push(t, b, 4<<20)
		// Read a little each way, so the streams are mid-way.
		var buf [1000]byte
		n, _ := unix.Read(b, buf[:])
		ab.received.Write(buf[:n])
		n, _ = unix.Read(a, buf[:])
		ba.received.Write(buf[:n])

		a2, st, rest := moveSocket(t, ns, direct, a, aAddr, bAddr, family)
		t.Logf("family %d: moved with %d bytes in the send queue (%d not sent, %d left to the caller), %d in the receive queue, state %d, options %#x, wscale %d/%d, mss %d",
			family, len(st.SendQ), st.NotSent, len(rest), len(st.RecvQ), st.TCPState, st.Options, st.SndWScale, st.RcvWScale, st.MSS)
		if len(st.SendQ) == 0 || len(st.RecvQ) == 0 {
			t.Errorf("no data in flight: send queue %d, receive queue %d bytes", len(st.SendQ), len(st.RecvQ))
		}
		errc := make(chan error, 4)
		go func() { errc <- ab.pushRest(a2, rest) }()
		go func() { errc <- ba.pushAll(b) }()
		go func() { errc <- ab.pull(b) }()
		go func() { errc <- ba.pull(a2) }()
		for range 4 {
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		}
		ab.check(t, "a to b")
		ba.check(t, "b to a")
		unix.Close(a2)
		unix.Close(b)
	}
}

// TestMoveAfterFIN moves a connection whose peer has shut down its side
// and one that has shut down its own: the data before the FIN arrives,
// and the connection stays in step with the peer.
func TestMoveAfterFIN(t *testing.T) {
	ns := newNetns(t)
	t.Run("peer FIN", func(t *testing.T) {
		a, b, aAddr, bAddr := pair(t, ns, unix.AF_INET)
		unix.Write(b, []byte("hello"))
		unix.Shutdown(b, unix.SHUT_WR)
		waitState(t, a, stateCloseWait)
		a2, _, _ := moveSocket(t, ns, direct, a, aAddr, bAddr, unix.AF_INET)
		// The FIN itself is not replayed to the reader (repair mode
		// cannot queue one; the flow's owner remembers it), but it stays
		// counted: the connection goes on in step with the peer.
		buf := make([]byte, 100)
		if n, _ := unix.Read(a2, buf); string(buf[:n]) != "hello" {
			t.Errorf("read %q, want hello", buf[:n])
		}
		unix.Write(a2, []byte("bye"))
		unix.Close(a2)
		n, _ := unix.Read(b, buf)
		if string(buf[:n]) != "bye" {
			t.Errorf("peer read %q, want bye", buf[:n])
		}
		unix.Close(b)
	})
	t.Run("own FIN", func(t *testing.T) {
		a, b, aAddr, bAddr := pair(t, ns, unix.AF_INET)
		unix.Write(a, []byte("hello"))
		unix.Shutdown(a, unix.SHUT_WR)
		waitState(t, a, stateFinWait2)
		a2, st, _ := moveSocket(t, ns, direct, a, aAddr, bAddr, unix.AF_INET)
		t.Logf("state %d", st.TCPState)
		var got bytes.Buffer
		buf := make([]byte, 100)
		for {
			n, err := unix.Read(b, buf)
			if err != nil || n == 0 {
				break
			}
			got.Write(buf[:n])
		}
		if got.String() != "hello" {
			t.Errorf("peer read %q before EOF, want hello", got.String())
		}
		unix.Write(b, []byte("bye"))
		unix.Close(b)
		n, _ := unix.Read(a2, buf)
		if string(buf[:n]) != "bye" {
			t.Errorf("read %q, want bye", buf[:n])
		}
		unix.Close(a2)
	})
}

// TestMoveUrgentInRecvQueue moves a socket whose receive queue holds
// urgent data its peer sent (MSG_OOB), kept in line (SO_OOBINLINE, as a
// relay keeps it): a peek stops short at the urgent mark, and the dump
// must still take the whole queue.
func TestMoveUrgentInRecvQueue(t *testing.T) {
	ns := newNetns(t)
	a, b, aAddr, bAddr := pair(t, ns, unix.AF_INET)
	unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1)
	unix.Write(b, []byte("hello"))
	unix.Sendto(b, []byte("!"), unix.MSG_OOB, nil)
	unix.Write(b, []byte("world"))
	for i := 0; ; i++ {
		if n, _ := ioctlUint32(a, unix.SIOCINQ); n == 11 {
			break
		} else if i == 10000 {
			t.Fatalf("%d bytes queued, want 11", n)
		}
		time.Sleep(time.Millisecond)
	}
	a2, st, _ := moveSocket(t, ns, direct, a, aAddr, bAddr, unix.AF_INET)
	defer unix.Close(a2)
	defer unix.Close(b)
	if string(st.RecvQ) != "hello!world" {
		t.Fatalf("dumped the receive queue as %q, want hello!world", st.RecvQ)
	}
	buf := make([]byte, 100)
	if n, _ := unix.Read(a2, buf); string(buf[:n]) != "hello!world" {
		t.Errorf("read %q after the move, want hello!world", buf[:n])
	}
}

// waitState waits for fd's TCP state, which loopback reaches right after
// the calls that led to it; the loop only covers the softirq's lag.
func waitState(t *testing.T, fd int, want uint8) {
	t.Helper()
	for range 10000 {
		var info [8]byte
		if _, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, unsafe.Pointer(&info[0]), 8); err != nil {
			t.Fatal(err)
		}
		if info[0] == want {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("socket never reached TCP state %d", want)
}

// TestHelperBatches has the helper set repair mode on more sockets than
// one message carries, and checks each.
func TestHelperBatches(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sets TCP_REPAIR")
	}
	c, done := startHelper(t)
	var fds []int
	for range MaxFds + 47 {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		fds = append(fds, fd)
	}
	for _, cmd := range []int8{On, Off} {
		if err := c.Set(cmd, fds); err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			if v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR); err != nil || v != int(cmd) {
				t.Fatalf("TCP_REPAIR is %d (%v), want %d", v, err, cmd)
			}
		}
	}
	c.Close()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestHelperRefuses sends the helper what passt-repair refuses: it ends
// with an error, the client hears that it is gone, and the descriptors
// passed are closed.
func TestHelperRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  byte
		fds  int
	}{{"unknown command", 7, 1}, {"no sockets", byte(On), 0}, {"not a TCP socket", byte(On), -1}} {
		t.Run(tc.name, func(t *testing.T) {
			c, done := startHelper(t)
			defer c.Close()
			var oob []byte
			switch tc.fds {
			case 1:
				fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				defer unix.Close(fd)
				oob = unix.UnixRights(fd)
			case -1:
				oob = unix.UnixRights(0)
			}
			if err := unix.Sendmsg(c.fd, []byte{tc.cmd}, oob, nil, 0); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err == nil {
				t.Error("Serve took it")
			} else {
				t.Log(err)
			}
			var b [1]byte
			if n, _, _ := unix.Recvfrom(c.fd, b[:], 0); n != 0 {
				t.Errorf("helper answered %d", b[0])
			}
		})
	}
}

// TestDumpWhilePeerSends: the peer sends data and its FIN while the
// socket is being dumped, after its TCP state was read. The dump must
// still agree with itself: the state has the FIN, which the sequence
// counts (Dump starts the queue one byte later for it), and every byte.
// A dump with the state from before the FIN and the sequence from after
// loses the FIN, as one with the queue's length from before data and the
// sequence from after loses the data.
func TestDumpWhilePeerSends(t *testing.T) {
	ns := newNetns(t)
	a, b, _, _ := pair(t, ns, unix.AF_INET)
	defer unix.Close(a)
	defer unix.Close(b)
	unix.Write(b, []byte("before,"))
	direct(t, On, a)
	st0, err := Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	afterInfo = func() {
		afterInfo = nil
		unix.Write(b, []byte("during"))
		unix.Shutdown(b, unix.SHUT_WR)
		waitState(t, b, stateFinWait2) // a took both
	}
	defer func() { afterInfo = nil }()
	st, err := Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	if st.SeqRcv != st0.SeqRcv+1 || string(st.RecvQ) != "before,during" || !st.FINReceived() {
		t.Errorf("dumped %q from %d, state %d; want the queue from %d+1 and the FIN",
			st.RecvQ, st.SeqRcv, st.TCPState, st0.SeqRcv)
	}
	if grew, err := Grew(a, st); grew || err != nil {
		t.Errorf("Grew: %v, %v right after the dump", grew, err)
	}
}

// TestDumpWhilePeerAcks: the peer acknowledges while the send queue is
// selected, which in repair mode has the kernel take every byte queued
// as sent, none of them sent (tcp_write_xmit). The dump must still count
// them as never sent, taken again too (the peer sent as well): restored
// as sent, the megabytes a's queue holds do not fit the new socket's
// send buffer, and the move fails.
func TestDumpWhilePeerAcks(t *testing.T) {
	ns := newNetns(t)
	a, b, aAddr, bAddr := pair(t, ns, unix.AF_INET)
	ab := newStream(8<<20, 3)
	ab.push(t, a, 8<<20) // b reads none of it yet: most is never sent
	ackDuringDump(t, a, b, ab)
	a2, st, rest := moveSocket(t, ns, direct, a, aAddr, bAddr, unix.AF_INET)
	defer unix.Close(a2)
	defer unix.Close(b)
	t.Logf("moved with %d bytes in the send queue, %d not sent", len(st.SendQ), st.NotSent)
	errc := make(chan error, 2)
	go func() { errc <- ab.pushRest(a2, rest) }()
	go func() { errc <- ab.pull(b) }()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	ab.check(t, "a to b")
}

// ackDuringDump has b, a's peer, read some of ab and send, once, while
// the next dump of a has the send queue selected: what b reads opens its
// window, and a takes the update; what b sends has the dump taken again.
// It waits until the kernel takes a's whole queue as sent.
func ackDuringDump(t *testing.T, a, b int, ab *stream) {
	afterSendQueue = func() {
		afterSendQueue = nil
		buf := make([]byte, 1<<20)
		n, _ := unix.Read(b, buf)
		ab.received.Write(buf[:n])
		unix.Write(b, []byte("during"))
		for range 1000 {
			if info, err := unix.GetsockoptTCPInfo(a, unix.SOL_TCP, unix.TCP_INFO); err != nil || info.Notsent_bytes == 0 {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Log("the kernel kept the queue as not sent")
	}
	t.Cleanup(func() { afterSendQueue = nil })
}

// TestRedumpAfterAcks: taken again (Redump, as the engine's migrateSeal
// takes it when the peer sent meanwhile), a dump still counts as never
// sent what an acknowledgement during the first had the kernel take as
// sent. Dump, counting afresh, cannot.
func TestRedumpAfterAcks(t *testing.T) {
	ns := newNetns(t)
	a, b, _, _ := pair(t, ns, unix.AF_INET)
	defer unix.Close(a)
	defer unix.Close(b)
	ab := newStream(8<<20, 4)
	ab.push(t, a, 8<<20)
	direct(t, On, a)
	ackDuringDump(t, a, b, ab)
	first, err := Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Redump(a, first)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Dump(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("not sent: %d of %d queued in the first dump, %d taken again, %d afresh", first.NotSent, len(first.SendQ), again.NotSent, fresh.NotSent)
	if again.NotSent < first.NotSent {
		t.Errorf("taken again, %d bytes not sent, fewer than the first dump's %d", again.NotSent, first.NotSent)
	}
}
