package qemusock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A front-end, or the guest behind it, that misbehaves: each test plays
// one way, found by playing a hostile front-end against gopasst, and
// checks that the link neither crashes, hangs nor spins, and that the
// rings go on.

// epollPoller is a real epoll set, for tests that look at what the link
// leaves watched.
type epollPoller struct{ fd int }

func newEpollPoller(t *testing.T) epollPoller {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return epollPoller{fd}
}

func (p epollPoller) Add(fd int, events uint32, id uint32) error {
	return unix.EpollCtl(p.fd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(id)})
}

func (p epollPoller) Mod(fd int, events uint32, id uint32) error {
	return unix.EpollCtl(p.fd, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: events, Fd: int32(id)})
}

func (p epollPoller) Del(fd int) error { return unix.EpollCtl(p.fd, unix.EPOLL_CTL_DEL, fd, nil) }

// ready lists the ids the set reports now.
func (p epollPoller) ready(t *testing.T) []int32 {
	var ev [8]unix.EpollEvent
	n, err := unix.EpollWait(p.fd, ev[:], 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int32
	for _, e := range ev[:n] {
		ids = append(ids, e.Fd)
	}
	return ids
}

func signal(fd int) { unix.Write(fd, eventfdOne[:]) }

// readable tells whether fd has something to read, without reading it.
func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, _ := unix.Poll(p, 0)
	return n > 0
}

// openFds counts the test process's open descriptors.
func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// sendFrame queues a frame for the guest, if the queue has room, and
// flushes the queue.
func (f *frontEnd) sendFrame(frame []byte) error {
	if b := f.l.Reserve(len(frame)); b != nil {
		copy(b, frame)
		f.l.Commit(len(frame))
	}
	return f.l.Flush()
}

// Item 1: an RX chain with a buffer of no length, met while TCP data is
// peeked into the guest's buffers, crashed the link (&b[0] of an empty
// slice). Buffers of no length are skipped, both ways.
func TestVhostUserZeroLength(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.desc(0, 0, 0x20000, 2048, descWrite|descNext, 1)
	f.desc(0, 1, 0x21000, 0, descWrite|descNext, 2)
	f.desc(0, 2, 0x22000, 2048, descWrite|descNext, 3)
	f.desc(0, 3, 0x23000, 0, descWrite, 0)
	f.offer(0, 0)
	const hdr = 54
	frame := testFrame(hdr + 3000)
	head, iov := f.l.ReserveV(hdr, len(frame), make([]unix.Iovec, 0, 8))
	if head == nil {
		t.Fatal("no room")
	}
	for _, v := range iov {
		if v.Len == 0 {
			t.Fatal("a piece of no length")
		}
	}
	copy(head, frame[:hdr])
	fillV(iov, frame[hdr:])
	f.l.Commit(len(frame))
	f.l.Cancel()
	if err := f.l.Flush(); err != nil {
		t.Fatal(err)
	}
	got := append(append([]byte(nil), f.mem[0x20000+12:0x20000+2048]...), f.mem[0x22000:0x22000+12+len(frame)-2048]...)
	if id, n := f.used(0, 0); f.usedIdx(0) != 1 || id != 0 || n != uint32(12+len(frame)) || !bytes.Equal(got, frame) {
		t.Errorf("used index %d, entry (%d, %d), frame intact %v", f.usedIdx(0), id, n, bytes.Equal(got, frame))
	}

	// From the guest: a frame whose chain has empty buffers.
	tx := testFrame(300)
	copy(f.mem[feBufs+12:], tx[:100])
	copy(f.mem[feBufs+0x1000:], tx[100:])
	f.desc(1, 0, feBufs, 0, descNext, 1)
	f.desc(1, 1, feBufs, 12+100, descNext, 2)
	f.desc(1, 2, feBufs+0x800, 0, descNext, 3)
	f.desc(1, 3, feBufs+0x1000, 200, 0, 0)
	f.offer(1, 0)
	if fr := f.readFrames(); len(fr) != 1 || !bytes.Equal(fr[0], tx) {
		t.Errorf("read %d frames, want the one sent", len(fr))
	}
}

// Item 2: the rings' indexes are loaded atomically, which arm64 allows
// only at aligned addresses: an avail ring at a 2-byte boundary (virtio
// allows it) is read without a fault (make test-arm64 runs this on
// arm64), and alignment is checked where the rings are mapped, which a
// region's offset in its file moves.
func TestVhostUserMisaligned(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	const avail = 0x9002 // the TX avail ring, off a 4-byte boundary
	desc, _, used := feRing(1)
	f.must(vuSetVringAddr, append(u32s(1, 0), u64s(feUVA+desc, feUVA+used, feUVA+avail, 0)...))
	frame := testFrame(100)
	copy(f.mem[feBufs+12:], frame)
	f.desc(1, 0, feBufs, 12+100, 0, 0)
	for i := range 3 {
		binary.LittleEndian.PutUint16(f.mem[avail+4+2*i:], 0)
		binary.LittleEndian.PutUint16(f.mem[avail+2:], uint16(i+1))
		if got := f.readFrames(); len(got) != 1 || !bytes.Equal(got[0], frame) {
			t.Fatalf("read %d frames, want the one sent", len(got))
		}
	}
	if f.usedIdx(1) != 3 {
		t.Errorf("used index %d, want 3", f.usedIdx(1))
	}

	// A region mapped from offset 1 of its file: rings at aligned
	// addresses for the front-end are not aligned where we see them.
	g := newFrontEnd(t)
	g.must(vuSetMemTable, append(u32s(1, 0), u64s(0, feMemSize-1, feUVA, 1)...), g.memfd)
	g.must(vuSetVringNum, u32s(0, feQueue))
	d, a, u := feRing(0)
	err := g.request(vuSetVringAddr, append(u32s(0, 0), u64s(feUVA+d, feUVA+u, feUVA+a, 0)...))
	if !errors.Is(err, ErrVhostUser) {
		t.Errorf("rings misaligned in our mapping: %v, want refused", err)
	}
}

// Item 3: a front-end that shrinks its memory file after SET_MEM_TABLE
// makes any touch of guest memory fault. The fault is a panic on a
// goroutine that asked for it (the engine's), and GuestFault tells it
// from any other, for the engine to drop the client.
func TestVhostUserShrunkMemory(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.desc(1, 0, feBufs, 12+100, 0, 0)
	f.offer(1, 0)
	f.offer(1, 0)
	if _, err := f.l.Read(); err != nil { // the link holds the chains
		t.Fatal(err)
	}
	if err := unix.Ftruncate(f.memfd, 0); err != nil {
		t.Fatal(err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var r any
	func() {
		defer func() { r = recover() }()
		f.l.Read()
	}()
	// qemu-user reports a SIGBUS without its address (arm64), or with one
	// that no process has (s390x).
	if a, ok := r.(interface{ Addr() uintptr }); r != nil && (!ok || uint64(a.Addr()) >= 1<<56) {
		unix.Ftruncate(f.memfd, feMemSize) // for the link's Close, at cleanup
		t.Skipf("%v: a fault without a usable address, as under qemu-user", r)
	}
	if r == nil || !GuestFault(r) {
		t.Fatalf("recovered %v, want a fault in guest memory", r)
	}
	if GuestFault(errors.New("another panic")) {
		t.Error("any panic taken for a guest memory fault")
	}
	// The chains it holds cannot go back: Close lets go all the same,
	// as the engine's dropping the client needs.
	func() {
		defer func() { r = recover() }()
		f.l.Close()
	}()
	if r != nil {
		t.Errorf("Close after a fault: %v", r)
	}
	f.l = newVhostLink(-1, 0) // closed already
}

// Item 4: a kick is taken out of epoll before it is closed: the
// front-end holds the same file, so a kick replaced, stopped or reset
// would otherwise stay watched (a spin when signalled), and the same
// eventfd sent again would be refused (EEXIST).
func TestVhostUserKicksLeaveEpoll(t *testing.T) {
	f := newFrontEnd(t)
	p := newEpollPoller(t)
	f.l.Register(p)
	f.setUp()
	if ids := p.ready(t); len(ids) != 0 {
		t.Fatalf("ready before any kick: %v", ids)
	}
	signal(f.kick[0])
	if ids := p.ready(t); len(ids) != 1 || ids[0] != vuIDKick+rxQueue {
		t.Fatalf("RX kick: ready %v", ids)
	}
	f.l.Event(vuIDKick+rxQueue, unix.EPOLLIN)

	// Stopped, then started with the same eventfd. An event for a kick
	// can come after the ring stopped, in the same epoll batch.
	for i := range 2 {
		f.must(vuGetVringBase, u32s(uint32(i), 0))
		f.reply()
		_, _, err := f.l.Event(vuIDKick+uint32(i), unix.EPOLLIN)
		if _, e := f.l.Read(); err == nil && e != unix.EAGAIN {
			err = e
		}
		if err != nil {
			t.Fatalf("queue %d: a late event for a stopped ring's kick: %v", i, err)
		}
	}
	f.must(vuSetVringKick, u64s(1), f.kick[1])
	signal(f.kick[0])
	if ids := p.ready(t); len(ids) != 0 {
		t.Fatalf("a stopped ring's kick still watched: %v", ids)
	}
	f.must(vuSetVringKick, u64s(0), f.kick[0])
	if ids := p.ready(t); len(ids) != 1 {
		t.Fatalf("the same kick sent again: ready %v", ids)
	}
	f.l.Event(vuIDKick+rxQueue, unix.EPOLLIN)

	// Replaced by another.
	other, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	defer unix.Close(other)
	f.must(vuSetVringKick, u64s(0), other)
	signal(f.kick[0])
	if ids := p.ready(t); len(ids) != 0 {
		t.Fatalf("a replaced kick still watched: %v", ids)
	}

	// Reset, and sent again.
	f.must(vuResetOwner, nil)
	signal(other)
	signal(f.kick[1])
	if ids := p.ready(t); len(ids) != 0 {
		t.Fatalf("kicks still watched after RESET_OWNER: %v", ids)
	}
	f.setUp()
}

// Item 5: the call descriptor is made non-blocking, and one that cannot
// take an interrupt (an eventfd at its maximum count) ends the
// connection, where a blocking write hung the engine for good.
func TestVhostUserCallFull(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	call, _ := unix.Eventfd(0, unix.EFD_CLOEXEC) // blocking
	defer unix.Close(call)
	var max [8]byte
	binary.NativeEndian.PutUint64(max[:], 0xffff_ffff_ffff_fffe)
	unix.Write(call, max[:])
	f.must(vuSetVringCall, u64s(0), call)
	f.rxBufs(0, 1, 2048)
	if err := f.sendFrame(testFrame(100)); !errors.Is(err, ErrVhostUser) {
		t.Fatalf("Flush: %v, want a vhost-user error", err)
	}
	if f.usedIdx(0) != 1 {
		t.Errorf("used index %d: the frame is the guest's all the same", f.usedIdx(0))
	}
}

// Item 6: a kick that is not an eventfd (here an epoll descriptor, which
// is always readable once it holds something ready, and cannot be read;
// or a pipe at its end) ends the connection instead of spinning: at
// SET_VRING_KICK (Item 11), or at its first event.
func TestVhostUserBadKick(t *testing.T) {
	for _, q := range []int{rxQueue, txQueue} {
		f := newFrontEnd(t)
		f.setUp()
		ep, _ := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		defer unix.Close(ep)
		err := f.request(vuSetVringKick, u64s(uint64(q)), ep)
		if err == nil {
			_, _, err = f.l.Event(vuIDKick+uint32(q), unix.EPOLLIN)
		}
		if q == txQueue && err == nil {
			_, err = f.l.Read()
		}
		if !errors.Is(err, ErrVhostUser) {
			t.Errorf("queue %d, an epoll descriptor for a kick: %v", q, err)
		}

		var pipe [2]int
		unix.Pipe2(pipe[:], unix.O_CLOEXEC)
		defer unix.Close(pipe[0])
		unix.Close(pipe[1])
		f = newFrontEnd(t)
		f.setUp()
		if err = f.request(vuSetVringKick, u64s(uint64(q)), pipe[0]); err == nil {
			_, _, err = f.l.Event(vuIDKick+uint32(q), unix.EPOLLIN)
		}
		if q == txQueue && err == nil {
			_, err = f.l.Read()
		}
		if !errors.Is(err, ErrVhostUser) {
			t.Errorf("queue %d, a pipe at its end for a kick: %v", q, err)
		}
	}
}

// Item 7: a request sent a byte at a time, descriptors with each byte,
// keeps no more descriptors than a request can carry.
func TestVhostUserDescriptorFlood(t *testing.T) {
	f := newFrontEnd(t)
	efd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
	defer unix.Close(efd)
	base := openFds(t)
	m := u32s(vuSetMemTable, vuVersion, 264)
	for i := range m {
		if err := unix.Sendmsg(f.sock, m[i:i+1], unix.UnixRights(efd, efd, efd, efd), nil, 0); err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); err != nil {
			t.Fatal(err)
		}
	}
	if n := openFds(t) - base; n > vuMaxFds {
		t.Errorf("%d descriptors kept for one unfinished request, want at most %d", n, vuMaxFds)
	}
}

// Item 8: an RX chain that breaks the rules goes back to the guest,
// used with length 0, and the ring goes on, for queued frames and for
// frames built in the guest's buffers.
func TestVhostUserRxBadChain(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.desc(0, 0, 0x20000, 2048, 0, 0) // the device cannot write it
	f.desc(0, 1, 0x21000, 2048, descWrite, 0)
	f.offer(0, 0)
	f.offer(0, 1)
	f.sendFrame(testFrame(100))
	f.sendFrame(testFrame(200))
	id0, n0 := f.used(0, 0)
	id1, n1 := f.used(0, 1)
	if f.usedIdx(0) != 2 || id0 != 0 || n0 != 0 || id1 != 1 || n1 != 12+200 || f.l.Dropped() != 1 {
		t.Errorf("queued: used index %d, entries (%d, %d), (%d, %d), dropped %d",
			f.usedIdx(0), id0, n0, id1, n1, f.l.Dropped())
	}

	// Built in the guest's buffers: a bad chain first, then one second
	// in a frame's chains.
	f.desc(0, 2, 0x22000, 2048, descWrite, 0)
	f.desc(0, 3, 0x23000, 2048, descWrite|descIndirect, 0)
	f.desc(0, 4, 0x24000, 2048, descWrite, 0)
	f.desc(0, 5, 0x25000, 2048, descWrite, 0)
	f.offer(0, 0)
	for i := range 4 {
		f.offer(0, uint16(2+i))
	}
	head, _ := f.l.ReserveV(54, 3000, make([]unix.Iovec, 0, 8))
	if head == nil || &head[0] != &f.l.mem.regions[0].mem[0x24000+12] {
		t.Fatal("the frame is not in the chains after the bad ones")
	}
	f.l.Commit(3000)
	f.l.Cancel()
	f.l.Flush()
	want := [][2]uint32{{0, 0}, {2, 0}, {3, 0}, {4, 2048}, {5, 12 + 3000 - 2048}}
	for i, w := range want {
		if id, n := f.used(0, uint16(2+i)); id != w[0] || n != w[1] {
			t.Errorf("used entry %d: (%d, %d), want %v", 2+i, id, n, w)
		}
	}
	if f.usedIdx(0) != 7 || f.l.Dropped() != 3 {
		t.Errorf("used index %d, dropped %d", f.usedIdx(0), f.l.Dropped())
	}
}

// Item 9: TX chains are not left held when a Read empties the ring: the
// kick stays readable, so the engine comes back for the Read that gives
// them back, whatever the number of Reads in its turn.
func TestVhostUserTxChainsReturned(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	copy(f.mem[feBufs+12:], testFrame(100))
	f.desc(1, 0, feBufs, 12+100, 0, 0)
	for range 3 {
		f.offer(1, 0)
	}
	signal(f.kick[1])
	if _, err := f.l.Read(); err != nil {
		t.Fatal(err)
	}
	if f.usedIdx(1) != 0 || !readable(f.kick[1]) {
		t.Fatalf("chains held (used index %d) and the kick drained", f.usedIdx(1))
	}
	if _, err := f.l.Read(); err != unix.EAGAIN {
		t.Fatalf("second Read: %v", err)
	}
	if f.usedIdx(1) != 3 || readable(f.kick[1]) {
		t.Errorf("after the ring was found empty: used index %d, kick readable %v", f.usedIdx(1), readable(f.kick[1]))
	}
}

// Item 10: RX buffers filled and not yet published are published before
// a request stops or pauses the ring; an available index more than a
// ring ahead ends the connection.
func TestVhostUserStopPublishes(t *testing.T) {
	for _, req := range []uint32{vuGetVringBase, vuSetVringEnable} {
		f := newFrontEnd(t)
		f.setUp()
		f.rxBufs(0, 1, 2048)
		head, _ := f.l.ReserveV(54, 100, make([]unix.Iovec, 0, 8))
		if head == nil {
			t.Fatal("no room")
		}
		f.l.Commit(100)
		f.l.Cancel()
		f.must(req, u32s(0, 0))
		if req == vuGetVringBase {
			if base := f.reply() >> 32; base != 1 {
				t.Errorf("base %d, want 1", base)
			}
		}
		f.l.Flush()
		if f.usedIdx(0) != 1 || f.l.Pending() != 0 {
			t.Errorf("request %d: used index %d, pending %d", req, f.usedIdx(0), f.l.Pending())
		}
	}
}

func TestVhostUserAvailJump(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	_, a, _ := feRing(1)
	binary.LittleEndian.PutUint16(f.mem[a+2:], feQueue+1)
	if _, err := f.tryReadFrames(); !errors.Is(err, ErrVhostUser) {
		t.Errorf("TX index a ring and one ahead: %v", err)
	}
	f = newFrontEnd(t)
	f.setUp()
	_, a, _ = feRing(0)
	binary.LittleEndian.PutUint16(f.mem[a+2:], 0x8000)
	if h, _ := f.l.ReserveV(54, 100, make([]unix.Iovec, 0, 8)); h != nil {
		t.Error("room in a broken ring")
	}
	if err := f.l.Flush(); !errors.Is(err, ErrVhostUser) {
		t.Errorf("RX index far ahead: Flush: %v", err)
	}
	if _, _, err := f.l.Event(vuIDKick+rxQueue, unix.EPOLLIN); !errors.Is(err, ErrVhostUser) {
		t.Errorf("RX index far ahead: Event: %v", err)
	}
}

// pieceIn tells whether v is of some length and lies within b.
func pieceIn(v unix.Iovec, b []byte) bool {
	start := uintptr(unsafe.Pointer(v.Base))
	return v.Len > 0 && start >= addrOf(b) && start+uintptr(v.Len) <= addrOf(b)+uintptr(len(b))
}

// FuzzRxChains plays a guest's RX descriptors against the path TCP data
// takes into them (ReserveV, the peek's pieces, Commit short or whole,
// Cancel) mixed with queued frames (Flush): table is the RX descriptor
// table, offered in order as chains 0, 1, ..., and sizes the frames'.
// Every piece handed out must lie in guest memory (or the link's queue)
// and be of some length,
// and no chain may be given back more often than it was offered.
func FuzzRxChains(f *testing.F) {
	fuzzQueue(f)
	zero := make([]byte, 16*4)
	for i, d := range [][3]uint64{{0x20000, 2048, descWrite | descNext<<16 | 1<<32}, {0x21000, 0, descWrite | descNext<<16 | 2<<32}, {0x22000, 4096, descWrite}, {0x23000, 0, descWrite}} {
		binary.LittleEndian.PutUint64(zero[16*i:], d[0])
		binary.LittleEndian.PutUint32(zero[16*i+8:], uint32(d[1]))
		binary.LittleEndian.PutUint16(zero[16*i+12:], uint16(d[2])|uint16(d[2]>>16))
		binary.LittleEndian.PutUint16(zero[16*i+14:], uint16(d[2]>>32))
	}
	f.Add(zero, []byte{60, 5, 200})
	f.Add(zero[:32], []byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, table, sizes []byte) {
		fe := newFrontEnd(t)
		fe.setUp()
		d, _, _ := feRing(rxQueue)
		table = table[:min(len(table), 16*feQueue)]
		copy(fe.mem[d:], table)
		offered := len(table) / 16
		// A guest whose buffers cover its own rings has the back-end
		// write over them, as it asked: it corrupts only itself, and
		// its used index then says nothing. Such input counts for the
		// pieces' bounds below, not for the final count.
		ringsEnd, _, _ := feRing(2)
		selfHarm := false
		for i := range offered {
			fe.offer(rxQueue, uint16(i))
			addr := binary.LittleEndian.Uint64(table[16*i:])
			n := uint64(binary.LittleEndian.Uint32(table[16*i+8:]))
			selfHarm = selfHarm || addr < ringsEnd || addr+n < addr
		}
		// Where a piece may be: in guest memory, or in the link's
		// queue, for a frame that goes through it.
		inMem := func(v unix.Iovec) bool {
			return pieceIn(v, fe.l.mem.regions[0].mem) || pieceIn(v, fe.l.q.buf)
		}
		iov := make([]unix.Iovec, 0, 64)
		for i, s := range sizes {
			n := 54 + int(s)*100
			if s%7 == 3 {
				if err := fe.sendFrame(testFrame(n)); err != nil && !errors.Is(err, ErrVhostUser) {
					t.Fatal(err)
				}
				continue
			}
			head, v := fe.l.ReserveV(54, n, iov)
			if head == nil {
				fe.l.Cancel()
				fe.l.Flush()
				continue
			}
			clear(head[:min(len(head), 54)])
			for _, p := range v {
				if !inMem(p) {
					t.Fatalf("a piece outside guest memory, or empty: %+v", p)
				}
			}
			fillV(v, testFrame(n))
			fe.l.Commit(n - i%2*int(s))
			fe.l.Cancel()
			fe.l.Flush()
		}
		if used := fe.usedIdx(rxQueue); !selfHarm && int(used) > offered {
			t.Fatalf("%d chains given back of %d offered", used, offered)
		}
	})
}

// Item 11: a kick that is an eventfd in semaphore mode gives 1 at each
// read and stays readable while its count lasts (up to 2^64-2); a timer
// (timerfd) firing every nanosecond reads as a count, and is readable
// again at once. The TX kick, and the RX kick while a frame waited for
// buffers, were reported and drained for ever, the engine spinning on
// what the front-end did once. Only an eventfd that counts is taken
// (SET_VRING_KICK).
func TestVhostUserSpinningKick(t *testing.T) {
	semaphore := func(count uint64) func() int {
		return func() int {
			fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK|unix.EFD_SEMAPHORE)
			var b [8]byte
			binary.NativeEndian.PutUint64(b[:], count)
			if count > 0 {
				unix.Write(fd, b[:])
			}
			return fd
		}
	}
	kicks := map[string]func() int{
		"semaphore":         semaphore(0),
		"semaphore at 1":    semaphore(1),
		"semaphore at 2^40": semaphore(1 << 40),
		"semaphore at max":  semaphore(0xffff_ffff_ffff_fffe),
		"timer": func() int {
			fd, _ := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC|unix.TFD_NONBLOCK)
			ts := unix.ItimerSpec{Interval: unix.Timespec{Nsec: 1}, Value: unix.Timespec{Nsec: 1}}
			unix.TimerfdSettime(fd, 0, &ts, nil)
			return fd
		},
	}
	for name, open := range kicks {
		for _, q := range []int{rxQueue, txQueue} {
			f := newFrontEnd(t)
			f.setUp()
			f.sendFrame(testFrame(100)) // no RX buffers: the frame waits
			kick := open()
			defer unix.Close(kick)
			err := f.request(vuSetVringKick, u64s(uint64(q)), kick)
			if err == nil && !readable(kick) {
				signal(kick)
				signal(kick)
			}
			for i := 0; err == nil && i < 3 && readable(kick); i++ {
				var out bool
				_, out, err = f.l.Event(vuIDKick+uint32(q), unix.EPOLLIN)
				if q == txQueue && err == nil {
					if _, err = f.l.Read(); err == unix.EAGAIN {
						err = nil
					}
				}
				if out && err == nil {
					err = f.l.Flush()
				}
			}
			if !errors.Is(err, ErrVhostUser) {
				t.Errorf("queue %d, a kick that is a %s: %v, kick readable %v", q, name, err, readable(kick))
			}
		}
	}
}

// Item 12: a guest that offers broken chains as fast as the link gives
// them back (one store of the available index buys a ring's worth) kept
// one ReserveV (RX), or one Read (TX), taking them for as long as it
// cared to: the engine never came back to its other work (here 200 ms;
// tens of thousands of chains). Either gives back at most a ring's
// worth of broken chains in one call.
func TestVhostUserBadChainFlood(t *testing.T) {
	for _, q := range []int{rxQueue, txQueue} {
		f := newFrontEnd(t)
		f.setUp()
		flags := uint16(0) // read-only: broken for RX
		if q == txQueue {
			flags = descWrite // write-only: broken for TX
		}
		f.desc(q, 0, 0x20000, 2048, flags, 0)
		stop, done := floodChains(f, q)
		// Call after call while the guest goes on, as the engine would:
		// none takes more than a ring's worth.
		most := uint64(0)
		for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
			before := f.l.Dropped()
			if q == rxQueue {
				var iov [4]unix.Iovec
				if head, _ := f.l.ReserveV(54, 200, iov[:0]); head != nil {
					t.Error("room in broken chains")
					break
				}
			} else if _, err := f.l.Read(); err != unix.EAGAIN {
				t.Errorf("Read of broken chains: %v", err)
				break
			}
			most = max(most, f.l.Dropped()-before)
		}
		close(stop)
		<-done
		if most > feQueue {
			t.Errorf("queue %d: one call took %d broken chains, while the guest offered them", q, most)
		}
	}
}

// floodChains plays a guest that offers chain 0 on queue q again each
// time the link gives it back (it watches the used ring), until stop.
func floodChains(f *frontEnd, q int) (stop, done chan struct{}) {
	_, a, u := feRing(q)
	// Each used entry's id is watched (0xffff until the link writes chain
	// 0 there), with whole-word atomics, as the link may write it a byte
	// at a time (arm).
	var ids [feQueue]*uint32
	for s := range ids {
		ids[s] = (*uint32)(unsafe.Pointer(&f.mem[u+4+8*uint64(s)]))
		atomic.StoreUint32(ids[s], 0xffff)
	}
	// The avail ring's entries all name chain 0 (the memfd's zeroes); its
	// index is stored as the link stores its own, in either byte order.
	avail := f.mem[a : a+4]
	stop, done = make(chan struct{}), make(chan struct{})
	started := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		close(started)
		n := uint16(feQueue)
		storeUsedIdx(avail, n)
		taken := uint16(0)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for range feQueue {
				if !atomic.CompareAndSwapUint32(ids[taken%feQueue], 0, 0xffff) {
					break
				}
				taken++
				n++
			}
			storeUsedIdx(avail, n)
			drainCalls(f.call[q]) // and takes its interrupts, as a guest does
		}
	}()
	<-started
	return stop, done
}

// TestVhostUserTxChainShapes: TX chains of random shapes, offered in
// random order and some more than once: buffers of no length, a
// virtio-net header cut across buffers, a head (HeadCopy) that ends
// inside a buffer or at its end, and frames either side of MaxFrame. Each
// frame the engine is handed is exactly its chain's bytes past the
// header, from head and tail together, nothing before, after or between
// its buffers; a chain with no frame or too large a one is dropped; and
// every chain offered goes back to the guest once, as used and empty.
func TestVhostUserTxChainShapes(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	rng := rand.New(rand.NewPCG(7, 8))
	for i := feBufs; i < feMemSize; i++ {
		f.mem[i] = byte(rng.Uint32())
	}
	offered := uint16(0)
	for round := range 60 {
		// Chains over the ring's descriptors, each over its own memory;
		// one round in three has a chain near MaxFrame.
		type chain struct {
			head  uint16
			frame []byte // its bytes past the header; nil when dropped
		}
		var chains []chain
		at := uint64(feBufs)
		for d := 0; d < feQueue && at < feMemSize-MaxFrame-4096; {
			c := chain{head: uint16(d)}
			n := 1 + rng.IntN(min(12, feQueue-d))
			big := round%3 == 0 && len(chains) == 0
			var all []byte
			for k := range n {
				size := uint32(rng.IntN(3) * rng.IntN(300))
				switch {
				case big && k == 0:
					size = uint32(12 + MaxFrame - 1 + rng.IntN(3)) // one under, at or over
				case rng.IntN(8) == 0:
					size = uint32(1 + rng.IntN(12)) // within the header
				}
				flags, next := uint16(descNext), uint16(d+1)
				if k == n-1 {
					flags, next = 0, 0
				}
				f.desc(1, d, at, size, flags, next)
				all = append(all, f.mem[at:at+uint64(size)]...)
				at += uint64(size) + uint64(rng.IntN(64)) // gaps the frame must not read
				d++
			}
			if len(all) > 12 && len(all)-12 <= MaxFrame {
				c.frame = all[12:]
			}
			chains = append(chains, c)
		}
		var want [][]byte
		var heads []uint16
		dropped := f.l.Dropped()
		for range 1 + rng.IntN(40) {
			c := chains[rng.IntN(len(chains))]
			f.offer(1, c.head)
			heads = append(heads, c.head)
			if c.frame != nil {
				want = append(want, c.frame)
			} else {
				dropped++
			}
		}
		got := f.readFrames()
		if len(got) != len(want) || f.l.Dropped() != dropped {
			t.Fatalf("round %d: %d frames, %d dropped; want %d, %d", round, len(got), f.l.Dropped(), len(want), dropped)
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d: frame %d of %d bytes differs from its chain's %d", round, i, len(got[i]), len(want[i]))
			}
		}
		// Dropped chains go back at once, the others a Read later: as a
		// multiset, the used entries are the heads offered.
		var used []uint16
		for i := offered; i != f.usedIdx(1); i++ {
			id, n := f.used(1, i)
			if n != 0 {
				t.Fatalf("round %d: a TX chain used with %d bytes", round, n)
			}
			used = append(used, uint16(id))
		}
		slices.Sort(used)
		slices.Sort(heads)
		if !slices.Equal(used, heads) {
			t.Fatalf("round %d: chains %v offered, %v given back", round, heads, used)
		}
		offered = f.usedIdx(1)
	}
}

// TestVhostUserMemoryTableTooLarge: a memory table whose mappings, the
// file offsets before its regions included, would take more address
// space than maxMapped is refused and leaves nothing mapped, in one
// region or in two, the second within bounds alone: a front-end that had
// the process's address space all mapped made the Go runtime die for
// want of room to grow its heap (fatal error: out of memory), which no
// recover catches. Nothing large is mapped unless the test fails (under
// qemu-user, that would take memory for each page).
func TestVhostUserMemoryTableTooLarge(t *testing.T) {
	const half = maxMapped / 2
	for _, table := range [][]uint64{
		{half, half + 4096},   // one region (size, offset), its offset past half of it
		{4096, 0, half, half}, // two regions, the second of maxMapped alone
	} {
		f := newFrontEnd(t)
		if err := unix.Ftruncate(f.memfd, 2*half+4096); err != nil {
			t.Skip(err) // a file system that will not have so large a file
		}
		n := len(table) / 2
		p := u32s(uint32(n), 0)
		fds := make([]int, n)
		for i := range n {
			p = append(p, u64s(uint64(i)*half, table[2*i], feUVA+uint64(i)*half, table[2*i+1])...)
			fds[i] = f.memfd
		}
		before := len(mappings.ranges)
		if err := f.request(vuSetMemTable, p, fds...); !errors.Is(err, ErrVhostUser) {
			t.Errorf("table %#x: %v, want refused", table, err)
		}
		if len(mappings.ranges) != before {
			t.Errorf("table %#x: %d mappings left", table, len(mappings.ranges)-before)
		}
		unix.Ftruncate(f.memfd, feMemSize)
	}
}

// TestVhostUserLongChains: a chain may be as long as its ring, and
// buffers of no length cost a step each: one Read of a ring of 32768
// whose chains each take all its descriptors, offered by one store of
// the available index, walked 2^30 of them, seven seconds in which the
// engine did nothing else. A Read walks at most maxWalk descriptors
// past its first chain, broken chains or good; the rest waits for the
// next Read, and no chain is lost.
func TestVhostUserLongChains(t *testing.T) {
	for _, broken := range []bool{false, true} {
		f, used := longChains(t, txQueue, broken)
		frames := 0
		for reads := 1; used() != longChainsOffered; reads++ {
			if reads > 2*longChainsOffered {
				t.Fatalf("broken %v: %d Reads gave back %d chains of %d", broken, reads, used(), longChainsOffered)
			}
			dropped := f.l.Dropped()
			if _, err := f.l.Read(); err != nil && err != unix.EAGAIN {
				t.Fatal(err)
			}
			n := 0
			for fr, _ := f.l.Next(); fr != nil; fr, _ = f.l.Next() {
				n++
			}
			if took := n + int(f.l.Dropped()-dropped); took > 1+maxWalk/maxQueueSize {
				t.Fatalf("broken %v: one Read took %d chains of %d descriptors", broken, took, maxQueueSize)
			}
			frames += n
		}
		if want := map[bool]int{false: longChainsOffered, true: 0}[broken]; frames != want || int(f.l.Dropped()) != longChainsOffered-want {
			t.Errorf("broken %v: %d frames, %d dropped", broken, frames, f.l.Dropped())
		}
	}
}

// TestVhostUserLongRxChains: so with RX chains, which one ReserveV, or
// one Flush, walked 2^30 of when broken. A frame to the guest whose
// chains take more than maxWalk descriptors is dropped, its chains given
// back empty, as broken ones are, and one call walks no more.
func TestVhostUserLongRxChains(t *testing.T) {
	for _, broken := range []bool{false, true} {
		f, used := longChains(t, rxQueue, broken)
		for call := 0; used() != longChainsOffered; call++ {
			if call > 2*longChainsOffered {
				t.Fatalf("broken %v: %d calls gave back %d chains of %d", broken, call, used(), longChainsOffered)
			}
			dropped := f.l.Dropped()
			if call%2 == 0 {
				if head, _ := f.l.ReserveV(54, 1000, make([]unix.Iovec, 0, 8)); head != nil {
					t.Fatalf("broken %v: a frame in chains of %d descriptors", broken, maxQueueSize)
				}
			} else {
				for range 2 {
					f.l.Reserve(100)
					f.l.Commit(100)
				}
				if err := f.l.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			if took := f.l.Dropped() - dropped; took > 1+maxWalk/maxQueueSize {
				t.Fatalf("broken %v: one call dropped %d frames over chains of %d descriptors", broken, took, maxQueueSize)
			}
		}
	}
}

// longChainsOffered is how many chains longChains offers.
const longChainsOffered = 4

// longChains sets queue q up as a ring of maxQueueSize descriptors, all
// of them in chain 0: of no length, but for the last, which takes a frame
// or, broken, leads back to the first. It offers chain 0
// longChainsOffered times, by one store of the available index, and
// returns the front-end and the used index.
func longChains(t *testing.T, q int, broken bool) (*frontEnd, func() uint16) {
	const num, desc, avail, used, buf = maxQueueSize, 0, 0x80000, 0x92000, 0xf0000
	f := newFrontEnd(t)
	f.setUp()
	f.must(vuSetVringNum, u32s(uint32(q), num))
	f.must(vuSetVringAddr, append(u32s(uint32(q), 0), u64s(feUVA+desc, feUVA+used, feUVA+avail, 0)...))
	flags := uint16(0)
	if q == rxQueue {
		flags = descWrite
	}
	for i := range num {
		d := f.mem[desc+16*i:]
		binary.LittleEndian.PutUint64(d, buf)
		binary.LittleEndian.PutUint32(d[8:], 0)
		binary.LittleEndian.PutUint16(d[12:], flags|descNext)
		binary.LittleEndian.PutUint16(d[14:], uint16(i+1))
	}
	last := f.mem[desc+16*(num-1):]
	if broken {
		binary.LittleEndian.PutUint16(last[14:], 0) // loops
	} else {
		binary.LittleEndian.PutUint32(last[8:], 4096) // ends in a buffer
		binary.LittleEndian.PutUint16(last[12:], flags)
	}
	binary.LittleEndian.PutUint16(f.mem[avail+2:], longChainsOffered) // the ring's zeroes: chain 0
	return f, func() uint16 { return binary.LittleEndian.Uint16(f.mem[used+2:]) }
}

// TestVhostUserRegionPastInt: a region that, with its offset in its
// file, is 2^32 + 8 KiB long. Where int is 32 bits that length was cut to
// 8 KiB and the region's offset, 12 KiB, then crashed the engine; it is
// refused there, and mapped where int is 64 bits.
func TestVhostUserRegionPastInt(t *testing.T) {
	fd, err := unix.MemfdCreate("region", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 1<<32+16384); err != nil {
		t.Fatal(err)
	}
	f := newFrontEnd(t)
	err = f.request(vuSetMemTable, append(u32s(1, 0), u64s(0, 1<<32-4096, feUVA, 12288)...), fd)
	if wide := strconv.IntSize == 64; wide && err != nil {
		t.Errorf("a region of 4 GiB: %v", err)
	} else if !wide && !errors.Is(err, ErrVhostUser) {
		t.Errorf("a region past int's reach: %v, want a vhost-user error", err)
	}
}

// TestVhostUserAddressSpace32: where pointers are 32 bits wide, a dirty
// log of 1 GiB, or a memory table of 3 GiB, is refused, and leaves
// nothing mapped. maxMapped's 32 TiB bounded nothing there, where a
// process has 4 GiB at most: a front-end that had 3 GiB mapped left the
// Go runtime too little to grow its heap in, and the process died
// (fatal error: out of memory), which no recover catches.
func TestVhostUserAddressSpace32(t *testing.T) {
	if strconv.IntSize == 64 {
		t.Skip("64-bit: TestVhostUserMemoryTableTooLarge")
	}
	const region = 1 << 30
	table := u32s(3, 0)
	for i := range uint64(3) {
		table = append(table, u64s(i*region, region-4096, feUVA+i*region, 4096)...)
	}
	for _, c := range []struct {
		name string
		req  uint32
		p    []byte
		fds  int
	}{
		{"a log of 1 GiB", vuSetLogBase, u64s(region, 0), 1},
		{"a table of 3 GiB", vuSetMemTable, table, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFrontEnd(t)
			if err := unix.Ftruncate(f.memfd, 3*region); err != nil {
				t.Fatal(err)
			}
			before := len(mappings.ranges)
			if err := f.request(c.req, c.p, slices.Repeat([]int{f.memfd}, c.fds)...); !errors.Is(err, ErrVhostUser) {
				t.Errorf("%v, want refused", err)
			}
			if len(mappings.ranges) != before {
				t.Errorf("%d mappings left", len(mappings.ranges)-before)
			}
		})
	}
}
