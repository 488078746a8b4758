package tests

import (
	"encoding/binary"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A vhost-user front-end played by the test against gopasst's socket,
// with guest memory in a memfd: what pkg/qemusock's unit tests play
// against the link alone, here against the whole sandboxed engine, for
// what only a process shows: its descriptors, its CPU time, whether it
// lives.

// Requests and flags (QEMU's docs/interop/vhost-user.rst).
const (
	vuGetFeatures  = 1
	vuSetFeatures  = 2
	vuResetOwner   = 4
	vuSetMemTable  = 5
	vuSetVringNum  = 8
	vuSetVringAddr = 9
	vuSetVringBase = 10
	vuGetVringBase = 11
	vuSetVringKick = 12
	vuSetVringCall = 13
	vuVersion      = 1
	vuMemSize      = 1 << 20
	vuUVA          = 0x7f00_0000_0000
	vuQueueSize    = 256
	vuTxBuf        = 0x10000       // the TX frame's buffer
	vuRxBufs       = 0x20000       // RX buffers, 4 KiB apart
	vuFeatures     = 1<<32 | 1<<15 // VERSION_1, MRG_RXBUF
	descWrite      = 2
)

type vuFrontEnd struct {
	t     *testing.T
	sock  int
	memfd int
	mem   []byte
	kick  [2]int
	call  [2]int
	avail [2]uint16
}

// vuRing is where queue i's rings lie in guest memory.
func vuRing(i int) (desc, avail, used uint64) {
	base := uint64(0x8000 * i)
	return base, base + 0x1000, base + 0x2000
}

func dialVhostUser(t *testing.T, path string) *vuFrontEnd {
	t.Helper()
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(sock, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
	memfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Ftruncate(memfd, vuMemSize)
	mem, err := unix.Mmap(memfd, 0, vuMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	f := &vuFrontEnd{t: t, sock: sock, memfd: memfd, mem: mem}
	for i := range 2 {
		f.kick[i] = f.eventfd()
		f.call[i] = f.eventfd()
	}
	t.Cleanup(f.close)
	return f
}

func (f *vuFrontEnd) eventfd() int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		f.t.Fatal(err)
	}
	return fd
}

// hangUp closes the connection, and nothing else: the front-end's
// eventfds stay open, as a front-end's would.
func (f *vuFrontEnd) hangUp() {
	if f.sock >= 0 {
		unix.Close(f.sock)
		f.sock = -1
	}
}

func (f *vuFrontEnd) close() {
	f.hangUp()
	if f.mem != nil {
		unix.Munmap(f.mem)
		f.mem = nil
		for _, fd := range append([]int{f.memfd}, append(f.kick[:], f.call[:]...)...) {
			unix.Close(fd)
		}
	}
}

func (f *vuFrontEnd) send(req uint32, payload []byte, fds ...int) {
	f.t.Helper()
	m := binary.LittleEndian.AppendUint32(nil, req)
	m = binary.LittleEndian.AppendUint32(m, vuVersion)
	m = binary.LittleEndian.AppendUint32(m, uint32(len(payload)))
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	err := unix.Sendmsg(f.sock, append(m, payload...), oob, nil, 0)
	for err == unix.EINTR {
		err = unix.Sendmsg(f.sock, append(m, payload...), oob, nil, 0)
	}
	if err != nil {
		f.t.Fatalf("request %d: %v", req, err)
	}
}

func (f *vuFrontEnd) reply() uint64 {
	f.t.Helper()
	var b [20]byte
	n, err := unix.Read(f.sock, b[:])
	for err == unix.EINTR { // SO_RCVTIMEO: a signal is never restarted
		n, err = unix.Read(f.sock, b[:])
	}
	if n != len(b) {
		f.t.Fatalf("reply: %d bytes, %v", n, err)
	}
	return binary.LittleEndian.Uint64(b[12:])
}

func le(v ...uint64) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

// queue is a ring's index and a 32-bit argument, as SET_VRING_NUM and
// SET_VRING_BASE take them.
func queue(i int, arg uint32) []byte { return le(uint64(i) | uint64(arg)<<32) }

// setUp does what QEMU does when the guest's driver starts.
func (f *vuFrontEnd) setUp() {
	f.send(vuGetFeatures, nil)
	f.reply()
	f.send(vuSetFeatures, le(vuFeatures))
	f.send(vuSetMemTable, append(le(1), le(0, vuMemSize, vuUVA, 0)...), f.memfd)
	for i := range 2 {
		desc, avail, used := vuRing(i)
		f.send(vuSetVringNum, queue(i, vuQueueSize))
		f.send(vuSetVringAddr, append(le(uint64(i)), le(vuUVA+desc, vuUVA+used, vuUVA+avail, 0)...))
		f.send(vuSetVringBase, queue(i, 0))
		f.send(vuSetVringCall, le(uint64(i)), f.call[i])
		f.send(vuSetVringKick, le(uint64(i)), f.kick[i])
	}
}

func (f *vuFrontEnd) desc(q, n int, addr uint64, size uint32, flags, next uint16) {
	d, _, _ := vuRing(q)
	b := f.mem[d+16*uint64(n):]
	binary.LittleEndian.PutUint64(b, addr)
	binary.LittleEndian.PutUint32(b[8:], size)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

func (f *vuFrontEnd) offer(q int, head uint16) {
	_, a, _ := vuRing(q)
	binary.LittleEndian.PutUint16(f.mem[a+4+2*uint64(f.avail[q]%vuQueueSize):], head)
	f.avail[q]++
	binary.LittleEndian.PutUint16(f.mem[a+2:], f.avail[q])
}

// sendARP offers RX buffers and sends an ARP request for the gateway.
func (f *vuFrontEnd) sendARP() {
	for i := range 8 {
		f.desc(0, i, vuRxBufs+0x1000*uint64(i), 2048, descWrite, 0)
		f.offer(0, uint16(i))
	}
	signal(f.kick[0])
	arp := arpRequest()
	copy(f.mem[vuTxBuf+12:], arp)
	f.desc(1, 0, vuTxBuf, uint32(12+len(arp)), 0, 0)
	f.offer(1, 0)
	signal(f.kick[1])
}

// gotARPReply tells whether an ARP reply is in the RX buffers used.
func (f *vuFrontEnd) gotARPReply() bool {
	_, _, u := vuRing(0)
	used := binary.LittleEndian.Uint16(f.mem[u+2:])
	for i := range used {
		id := binary.LittleEndian.Uint32(f.mem[u+4+8*uint64(i%vuQueueSize):])
		if id >= 8 {
			continue
		}
		b := f.mem[vuRxBufs+0x1000*uint64(id)+12:]
		if b[12] == 0x08 && b[13] == 0x06 && b[21] == 2 {
			return true
		}
	}
	return false
}

func signal(fd int) {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(fd, one[:])
}

func openFdsOf(t *testing.T, pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestVhostUserHostileReconnect: front-ends that misbehave, in 20 rounds,
// each ending with the front-end gone. After each, gopasst's engine is
// back to the descriptors it had before any front-end, burns no CPU
// while idle though every eventfd it was ever given is signalled again,
// and serves a well-behaved front-end (an ARP request answered).
func TestVhostUserHostileReconnect(t *testing.T) {
	const fwdPort = "18410"
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "-t", "127.0.0.1/" + fwdPort}})
	pid := w.ServerPid(t)
	base := openFdsOf(t, pid)
	rounds := []struct {
		name string
		play func(f *vuFrontEnd)
	}{
		{"kicks and calls replaced", func(f *vuFrontEnd) {
			for i := range 2 {
				k, c := f.eventfd(), f.eventfd()
				f.send(vuSetVringKick, le(uint64(i)), k)
				f.send(vuSetVringCall, le(uint64(i)), c)
				unix.Close(k) // the front-end's copies closed mid-flight
				unix.Close(c)
			}
		}},
		{"the same kick after GET_VRING_BASE", func(f *vuFrontEnd) {
			for i := range 2 {
				f.send(vuGetVringBase, queue(i, 0))
				f.reply()
				f.send(vuSetVringKick, le(uint64(i)), f.kick[i])
			}
			f.sendARP()
			waitFor(f.t, "an ARP reply", f.gotARPReply)
		}},
		{"RESET_OWNER and the same eventfds again", func(f *vuFrontEnd) {
			f.send(vuResetOwner, nil)
			f.setUp()
		}},
		{"a kick that is not an eventfd", func(f *vuFrontEnd) {
			ep, _ := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			defer unix.Close(ep)
			unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, f.kick[0], &unix.EpollEvent{Events: unix.EPOLLIN})
			f.send(vuSetVringKick, le(0), ep)
			signal(f.kick[0]) // the epoll descriptor is readable now
		}},
		{"a call eventfd at its maximum", func(f *vuFrontEnd) {
			c, _ := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking
			defer unix.Close(c)
			var max [8]byte
			binary.NativeEndian.PutUint64(max[:], 0xffff_ffff_ffff_fffe)
			unix.Write(c, max[:])
			f.send(vuSetVringCall, le(0), c)
			f.sendARP()
		}},
		{"guest memory shrunk", func(f *vuFrontEnd) {
			copy(f.mem[vuTxBuf+12:], arpRequest())
			f.desc(1, 0, vuTxBuf, 12+42, 0, 0)
			f.offer(1, 0)
			unix.Ftruncate(f.memfd, 0)
			signal(f.kick[1])
		}},
		{"descriptors with every byte of a request", func(f *vuFrontEnd) {
			m := binary.LittleEndian.AppendUint32(nil, vuSetMemTable)
			m = binary.LittleEndian.AppendUint32(m, vuVersion)
			m = binary.LittleEndian.AppendUint32(m, 264)
			m = append(m, make([]byte, 100)...)
			for i := range m {
				unix.Sendmsg(f.sock, m[i:i+1], unix.UnixRights(f.kick[0], f.kick[1], f.call[0], f.call[1]), nil, 0)
			}
		}},
		{"an available index that jumps", func(f *vuFrontEnd) {
			_, a, _ := vuRing(1)
			binary.LittleEndian.PutUint16(f.mem[a+2:], 1000)
			signal(f.kick[1])
		}},
	}
	for r := range 20 {
		round := rounds[r%len(rounds)]
		f := dialVhostUser(t, w.Sock)
		f.setUp()
		round.play(f)
		f.hangUp()
		waitFor(t, "the engine's descriptors back to "+strconv.Itoa(base)+" after "+round.name, func() bool {
			return openFdsOf(t, pid) == base
		})
		// Idle, with every eventfd the engine was given signalled: a
		// kick left in its epoll set would spin it.
		for _, fd := range append(f.kick[:], f.call[:]...) {
			signal(fd)
		}
		idleEngine(t, pid, "after "+round.name)
		f.close()

		good := dialVhostUser(t, w.Sock)
		good.setUp()
		good.sendARP()
		waitFor(t, "an ARP reply to a well-behaved front-end after "+round.name, good.gotARPReply)
		good.close()
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("the engine died after %s", round.name)
		}
	}

	// Out of descriptors: a front-end and a connection to a forwarded
	// port wait in their listeners' backlogs, and the engine does not
	// spin on them; with descriptors again, it serves the front-end.
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(lowestFreeFd(t, pid))
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	f := dialVhostUser(t, w.Sock)
	c, err := w.Host.Dial("tcp", "127.0.0.1:"+fwdPort, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	idleEngine(t, pid, "out of descriptors")
	unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil)
	f.setUp()
	f.sendARP()
	waitFor(t, "an ARP reply once descriptors are free again", f.gotARPReply)
	f.close()
	waitFor(t, "the engine's descriptors back", func() bool { return openFdsOf(t, pid) == base })
}

// lowestFreeFd is the descriptor pid would open next.
func lowestFreeFd(t *testing.T, pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	open := map[int]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		open[n] = true
	}
	fd := 0
	for open[fd] {
		fd++
	}
	return fd
}
