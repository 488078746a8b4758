package qemusock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests play the front-end's part over a socket pair, with guest
// memory in a memfd, as QEMU does; TestQEMUGuest runs the real QEMU.
// They exist for what QEMU never sends: broken tables, rings and chains.

const (
	feMemSize = 1 << 20
	feUVA     = 0x7f00_0000_0000 // where the "front-end" has guest memory
	feQueue   = 256
	feBufs    = 0x10000 // buffers from here on
)

// feLinkQueue is what the link's queue holds, as in NewVhostUser. The
// fuzz targets make it the least a queue is (fuzzQueue): zeroing 8 MiB
// for each input was most of their time.
var feLinkQueue = 8 << 20

// fuzzQueue has a fuzz target's front-ends give their links the least
// queue, two of the largest frames, until the target ends.
func fuzzQueue(f *testing.F) {
	saved := feLinkQueue
	feLinkQueue = 0
	f.Cleanup(func() { feLinkQueue = saved })
}

// ring addresses (guest physical) of queue i.
func feRing(i int) (desc, avail, used uint64) {
	base := uint64(0x8000 * i)
	return base, base + 0x1000, base + 0x2000
}

type frontEnd struct {
	t     *testing.T
	sock  int
	l     *vhostLink
	mem   []byte
	memfd int
	kick  [2]int
	call  [2]int
	avail [2]uint16 // avail idx we published
}

type nopPoller struct{}

func (nopPoller) Add(int, uint32, uint32) error { return nil }
func (nopPoller) Mod(int, uint32, uint32) error { return nil }
func (nopPoller) Del(int) error                 { return nil }

func newFrontEnd(t *testing.T) *frontEnd {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(pair[1], true)
	memfd, err := unix.MemfdCreate("guest", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skipf("memfd: %v", err)
	}
	unix.Ftruncate(memfd, feMemSize)
	mem, err := unix.Mmap(memfd, 0, feMemSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	f := &frontEnd{t: t, sock: pair[0], mem: mem, memfd: memfd}
	f.l = newVhostLink(pair[1], feLinkQueue)
	f.l.Register(nopPoller{})
	for i := range 2 {
		f.kick[i], _ = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		f.call[i], _ = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	}
	t.Cleanup(func() {
		f.l.Close()
		unix.Munmap(mem)
		for _, fd := range []int{pair[0], memfd, f.kick[0], f.kick[1], f.call[0], f.call[1]} {
			unix.Close(fd)
		}
	})
	return f
}

// request sends one request and lets the link handle it.
func (f *frontEnd) request(req uint32, payload []byte, fds ...int) error {
	f.send(req, payload, fds...)
	_, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN)
	return err
}

// send sends one request.
func (f *frontEnd) send(req uint32, payload []byte, fds ...int) {
	f.sendFlags(req, 0, payload, fds...)
}

// sendFlags sends one request with flags beside the version.
func (f *frontEnd) sendFlags(req, flags uint32, payload []byte, fds ...int) {
	m := binary.LittleEndian.AppendUint32(nil, req)
	m = binary.LittleEndian.AppendUint32(m, vuVersion|flags)
	m = binary.LittleEndian.AppendUint32(m, uint32(len(payload)))
	m = append(m, payload...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(f.sock, m, oob, nil, 0); err != nil {
		f.t.Fatal(err)
	}
}

// TestVhostUserReplyAck: with REPLY_ACK, a request that asks for an
// answer gets one, and only then; a front-end that will not read it ends
// the link with ErrVhostUser, as any other broken request does.
func TestVhostUserReplyAck(t *testing.T) {
	f := newFrontEnd(t)
	f.must(vuSetProtocolFeatures, u64s(vuProtocolReplyAck))
	f.sendFlags(vuSetOwner, vuNeedReply, nil)
	if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); err != nil {
		t.Fatal(err)
	}
	if r := f.reply(); r != 0 {
		t.Fatalf("SET_OWNER answered %d", r)
	}
	f.must(vuSetOwner, nil)
	var b [1]byte
	if n, _, err := unix.Recvfrom(f.sock, b[:], unix.MSG_DONTWAIT); err != unix.EAGAIN {
		t.Fatalf("%d bytes (%v) after a request that asked for no answer", n, err)
	}
	unix.Shutdown(f.sock, unix.SHUT_RD)
	f.sendFlags(vuSetOwner, vuNeedReply, nil)
	if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); !errors.Is(err, ErrVhostUser) {
		t.Fatalf("answer to a front-end that shut its read side: %v, want ErrVhostUser", err)
	}
}

func (f *frontEnd) must(req uint32, payload []byte, fds ...int) {
	f.t.Helper()
	if err := f.request(req, payload, fds...); err != nil {
		f.t.Fatalf("request %d: %v", req, err)
	}
}

// reply reads a 64-bit reply.
func (f *frontEnd) reply() uint64 {
	var b [vuHeaderLen + 8]byte
	n, err := unix.Read(f.sock, b[:])
	if err != nil || n != len(b) {
		f.t.Fatalf("reply: %d bytes, %v", n, err)
	}
	return binary.LittleEndian.Uint64(b[vuHeaderLen:])
}

func u32s(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func u64s(v ...uint64) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

// setUp does what QEMU does when the guest's driver starts.
func (f *frontEnd) setUp() {
	f.must(vuGetFeatures, nil)
	if got := f.reply(); got != VhostUserFeatures {
		f.t.Fatalf("features %#x", got)
	}
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf))
	f.must(vuSetMemTable, append(u32s(1, 0), u64s(0, feMemSize, feUVA, 0)...), f.memfd)
	f.setRings(false)
	f.l.Flush() // the interrupt each new call descriptor gets
}

// setRings sets both rings up: size, addresses, base, call and kick;
// logged as setRingAddr.
func (f *frontEnd) setRings(logged bool) {
	for i := range 2 {
		f.must(vuSetVringNum, u32s(uint32(i), feQueue))
		f.setRingAddr(i, logged)
		f.must(vuSetVringBase, u32s(uint32(i), 0))
		f.must(vuSetVringCall, u64s(uint64(i)), f.call[i])
		f.must(vuSetVringKick, u64s(uint64(i)), f.kick[i])
	}
}

// setRingAddr gives ring i its addresses; logged asks that what is
// written to its used ring be logged, at the used ring's own address.
func (f *frontEnd) setRingAddr(i int, logged bool) {
	desc, avail, used := feRing(i)
	flags, logAt := uint32(0), uint64(0)
	if logged {
		flags, logAt = vhostVringFLog, used
	}
	f.must(vuSetVringAddr, append(u32s(uint32(i), flags), u64s(feUVA+desc, feUVA+used, feUVA+avail, logAt)...))
}

// desc writes descriptor n of queue q.
func (f *frontEnd) desc(q, n int, addr uint64, size uint32, flags, next uint16) {
	d, _, _ := feRing(q)
	b := f.mem[d+16*uint64(n):]
	binary.LittleEndian.PutUint64(b, addr)
	binary.LittleEndian.PutUint32(b[8:], size)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// offer makes chain head available on queue q.
func (f *frontEnd) offer(q int, head uint16) {
	_, a, _ := feRing(q)
	slot := uint64(f.avail[q] % feQueue)
	binary.LittleEndian.PutUint16(f.mem[a+4+2*slot:], head)
	f.avail[q]++
	binary.LittleEndian.PutUint16(f.mem[a+2:], f.avail[q])
}

func (f *frontEnd) usedIdx(q int) uint16 {
	_, _, u := feRing(q)
	return binary.LittleEndian.Uint16(f.mem[u+2:])
}

func (f *frontEnd) used(q int, n uint16) (id, size uint32) {
	_, _, u := feRing(q)
	e := f.mem[u+4+8*uint64(n%feQueue):]
	return binary.LittleEndian.Uint32(e), binary.LittleEndian.Uint32(e[4:])
}

// readFrames takes what the link reads from the TX ring, as the engine
// does: Read until there is nothing more, each frame its head and its
// tail.
func (f *frontEnd) readFrames() [][]byte {
	out, err := f.tryReadFrames()
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// tryReadFrames is readFrames for a ring that may be broken: the error
// ends the connection.
func (f *frontEnd) tryReadFrames() ([][]byte, error) {
	var out [][]byte
	for {
		if _, err := f.l.Read(); err == unix.EAGAIN {
			return out, nil
		} else if err != nil {
			return out, err
		}
		for {
			fr, err := f.l.Next()
			if err != nil {
				return out, err
			}
			if fr == nil {
				break
			}
			fr = append([]byte(nil), fr...)
			for _, v := range f.l.Tail() {
				fr = append(fr, unsafe.Slice(v.Base, v.Len)...)
			}
			out = append(out, fr)
		}
	}
}

func testFrame(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// TestVhostUserFrames: a frame from the guest in a chain split across
// its header; a frame to the guest across two receive buffers, with
// num_buffers and the used lengths as the driver reads them.
func TestVhostUserFrames(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	frame := testFrame(1000)
	copy(f.mem[feBufs+12:], frame[:300])
	copy(f.mem[feBufs+0x1000:], frame[300:])
	f.desc(1, 0, feBufs, 12+300, descNext, 1)
	f.desc(1, 1, feBufs+0x1000, 700, 0, 0)
	f.offer(1, 0)
	// The engine gets the frame's head, copied, and its tail where the
	// guest put it; the chain is the engine's until the next Read.
	f.l.Read()
	if head, _ := f.l.Next(); len(head) != HeadCopy || len(f.l.Tail()) != 2 || f.usedIdx(1) != 0 {
		t.Fatalf("head of %d bytes, tail of %d pieces, TX used index %d", len(head), len(f.l.Tail()), f.usedIdx(1))
	}
	if f.l.Tail()[1].Base != &f.l.mem.regions[0].mem[feBufs+0x1000] {
		t.Error("the tail is not in guest memory")
	}
	f.offer(1, 0) // the chain again, taken as the engine does
	got := f.readFrames()
	if len(got) != 1 || !bytes.Equal(got[0], frame) {
		t.Fatalf("read %d frames, want the one sent", len(got))
	}
	if f.usedIdx(1) != 2 {
		t.Errorf("TX used index %d, want 2", f.usedIdx(1))
	}

	rx := 0x20000
	for i := range 2 {
		f.desc(0, i, uint64(rx+0x1000*i), 800, descWrite, 0)
		f.offer(0, uint16(i))
	}
	b := f.l.Reserve(len(frame))
	copy(b, frame)
	f.l.Commit(len(frame))
	if err := f.l.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.l.Pending() != 0 || f.usedIdx(0) != 2 {
		t.Fatalf("pending %d, RX used index %d", f.l.Pending(), f.usedIdx(0))
	}
	id0, n0 := f.used(0, 0)
	id1, n1 := f.used(0, 1)
	if id0 != 0 || n0 != 800 || id1 != 1 || n1 != 12+1000-800 {
		t.Errorf("used entries (%d, %d), (%d, %d)", id0, n0, id1, n1)
	}
	if nb := binary.LittleEndian.Uint16(f.mem[rx+10:]); nb != 2 {
		t.Errorf("num_buffers %d, want 2", nb)
	}
	gotRX := append(append([]byte(nil), f.mem[rx+12:rx+800]...), f.mem[rx+0x1000:rx+0x1000+int(n1)]...)
	if !bytes.Equal(gotRX, frame) {
		t.Error("the frame in the guest's buffers differs")
	}

	// No buffers: the frame waits, and goes with the next one offered.
	f.l.Reserve(64)
	f.l.Commit(64)
	f.l.Flush()
	if f.l.Pending() == 0 {
		t.Fatal("a frame went with no buffer to go to")
	}
	f.offer(0, 0)
	f.l.Flush()
	if f.l.Pending() != 0 || f.usedIdx(0) != 3 {
		t.Errorf("after a buffer came: pending %d, used index %d", f.l.Pending(), f.usedIdx(0))
	}
}

// rxBufs offers n RX chains of one size-byte buffer each, from
// descriptor first on.
func (f *frontEnd) rxBufs(first, n int, size uint32) {
	for i := first; i < first+n; i++ {
		f.desc(0, i, uint64(0x20000+0x1000*i), size, descWrite, 0)
		f.offer(0, uint16(i))
	}
}

// fillV writes data across the pieces of iov, as the engine's peek does.
func fillV(iov []unix.Iovec, data []byte) {
	for _, v := range iov {
		data = data[copy(unsafe.Slice(v.Base, v.Len), data):]
	}
}

// TestVhostUserDirect: a frame built straight in the guest's RX buffers
// (ReserveV) spans the chains it needs, with num_buffers and the used
// lengths right; the guest sees it at Flush. Chains a short frame and
// cancelled frames did not fill go back to the ring, and with a queue
// waiting, or buffers too small for headers, nothing jumps ahead.
func TestVhostUserDirect(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.rxBufs(0, 4, 2048)
	iov := make([]unix.Iovec, 0, 64)
	const hdr = 54
	frame := testFrame(hdr + 4000)
	head, iov := f.l.ReserveV(hdr, len(frame), iov)
	if head == nil || len(head) != 2048-12 || len(iov) != 2 || iov[0].Len+iov[1].Len != 4000 {
		t.Fatalf("head of %d bytes and %d pieces", len(head), len(iov))
	}
	copy(head, frame[:hdr])
	fillV(iov, frame[hdr:])
	f.l.Commit(len(frame))
	if f.usedIdx(0) != 0 || f.l.Pending() != len(frame) {
		t.Fatalf("before Flush: used index %d, pending %d", f.usedIdx(0), f.l.Pending())
	}
	f.l.Cancel()
	f.l.Flush()
	if f.usedIdx(0) != 2 || f.l.Pending() != 0 {
		t.Fatalf("after Flush: used index %d, pending %d", f.usedIdx(0), f.l.Pending())
	}
	id0, n0 := f.used(0, 0)
	id1, n1 := f.used(0, 1)
	if id0 != 0 || n0 != 2048 || id1 != 1 || n1 != 12+uint32(len(frame))-2048 {
		t.Errorf("used entries (%d, %d), (%d, %d)", id0, n0, id1, n1)
	}
	if nb := binary.LittleEndian.Uint16(f.mem[0x20000+10:]); nb != 2 {
		t.Errorf("num_buffers %d, want 2", nb)
	}
	got := append(append([]byte(nil), f.mem[0x20000+12:0x20000+2048]...), f.mem[0x21000:0x21000+int(n1)]...)
	if !bytes.Equal(got, frame) {
		t.Error("the frame in the guest's buffers differs")
	}

	// Two frames reserved, the first committed short of one chain: the
	// rest goes back, and the next frame takes the chain after it.
	iov = iov[:0]
	h1, iov := f.l.ReserveV(hdr, 3000, iov)
	h2, iov := f.l.ReserveV(hdr, 100, iov)
	if h1 == nil || h2 != nil {
		t.Fatalf("with two chains left: first %v, second %v", h1 != nil, h2 != nil)
	}
	f.l.Commit(1000)
	f.l.Cancel()
	f.l.Flush()
	if id, n := f.used(0, 2); f.usedIdx(0) != 3 || id != 2 || n != 12+1000 {
		t.Fatalf("short frame: used index %d, entry (%d, %d)", f.usedIdx(0), id, n)
	}
	if h, _ := f.l.ReserveV(hdr, 100, iov[:0]); h == nil || &h[0] != &f.l.mem.regions[0].mem[0x23000+12] {
		t.Fatal("the chain the short frame left was not given back")
	}
	f.l.Cancel()

	// A queued frame goes first: no frame is built in guest buffers
	// until it has gone.
	copy(f.l.Reserve(100), frame)
	f.l.Commit(100)
	if h, _ := f.l.ReserveV(hdr, 100, iov[:0]); h != nil {
		t.Fatal("a frame jumped the queue")
	}
	f.l.Flush()
	if h, _ := f.l.ReserveV(hdr, 100, iov[:0]); h != nil {
		t.Fatal("room with no buffers left")
	}

	// Buffers too small for the headers: the frame goes through the
	// queue, whole, and is copied in.
	f.rxBufs(10, 2, 64)
	h, iov := f.l.ReserveV(hdr, 100, iov[:0])
	if len(h) != 100 || len(iov) != 1 {
		t.Fatalf("small buffers: head of %d bytes, %d pieces", len(h), len(iov))
	}
	f.l.Commit(100)
	f.l.Flush()
	if f.usedIdx(0) != 6 || f.l.Pending() != 0 {
		t.Errorf("small buffers: used index %d, pending %d", f.usedIdx(0), f.l.Pending())
	}
}

// TestVhostUserManyPieces: frames whose tails have more pieces than one
// Read holds wait for the next Read, and none is lost.
func TestVhostUserManyPieces(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	// One chain, offered 20 times: a header, 256 bytes, then 249 pieces
	// of one byte each.
	frame := testFrame(256 + 249)
	f.desc(1, 0, feBufs, 12, descNext, 1)
	f.desc(1, 1, feBufs+12, 256, descNext, 2)
	for i := 2; i < 251; i++ {
		next := uint16(i + 1)
		flags := uint16(descNext)
		if i == 250 {
			flags, next = 0, 0
		}
		f.desc(1, i, feBufs+12+256+uint64(i-2), 1, flags, next)
	}
	copy(f.mem[feBufs+12:], frame)
	for range 20 {
		f.offer(1, 0)
	}
	got := f.readFrames()
	if len(got) != 20 || f.l.Dropped() != 0 || f.usedIdx(1) != 20 {
		t.Fatalf("%d frames, %d dropped, used index %d", len(got), f.l.Dropped(), f.usedIdx(1))
	}
	for _, g := range got {
		if !bytes.Equal(g, frame) {
			t.Fatal("a frame differs")
		}
	}
}

// TestVhostUserGuestTSO: with GUEST_TSO4/6, a large frame built in the
// guest's buffers carries its segmentation and a partial checksum in its
// virtio-net header, as a NIC's large receive hands it over; one that
// had to go through the queue goes without, and ends large frames for
// that guest.
func TestVhostUserGuestTSO(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	if f.l.GuestTSO(false) {
		t.Fatal("large receive without GUEST_TSO4")
	}
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|virtioNetFGuestCsum|virtioNetFGuestTSO4|virtioNetFGuestTSO6))
	if !f.l.GuestTSO(false) || !f.l.GuestTSO(true) {
		t.Fatal("no large receive with GUEST_TSO4/6")
	}
	f.rxBufs(0, 2, 4096)
	const hdr, size = 74, 74 + 3*1440
	head, _ := f.l.ReserveV(hdr, size, make([]unix.Iovec, 0, 8))
	if head == nil {
		t.Fatal("no room")
	}
	f.l.CommitTSO(size, TSO{IPv6: true, L4: 54, MSS: 1440})
	f.l.Cancel()
	f.l.Flush()
	h := f.mem[0x20000:]
	if h[0] != virtioNetHdrNeedsCsum || h[1] != virtioNetGSOTCPv6 || binary.LittleEndian.Uint16(h[2:]) != hdr ||
		binary.LittleEndian.Uint16(h[4:]) != 1440 || binary.LittleEndian.Uint16(h[6:]) != 54 ||
		binary.LittleEndian.Uint16(h[8:]) != 16 || binary.LittleEndian.Uint16(h[10:]) != 2 {
		t.Errorf("virtio-net header % x", h[:12])
	}

	f.rxBufs(10, 1, 64) // too small for headers: the frame is queued
	head, _ = f.l.ReserveV(hdr, 200, make([]unix.Iovec, 0, 8))
	f.l.CommitTSO(len(head), TSO{L4: 34, MSS: 100})
	if f.l.GuestTSO(false) {
		t.Error("large receive goes on for a guest whose buffers cannot take it")
	}
}

// TestVhostUserGuestCsum: with GUEST_CSUM, a frame of one segment built
// in the guest's buffers carries a partial checksum and no segmentation
// in its virtio-net header; without it, or once such a frame had to go
// through the queue, frames carry complete checksums.
func TestVhostUserGuestCsum(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf))
	if f.l.GuestCsum() {
		t.Fatal("partial checksums without GUEST_CSUM")
	}
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|virtioNetFGuestCsum))
	if !f.l.GuestCsum() {
		t.Fatal("no partial checksums with GUEST_CSUM")
	}
	f.rxBufs(0, 1, 4096)
	const hdr, size = 54, 54 + 1000
	if head, _ := f.l.ReserveV(hdr, size, make([]unix.Iovec, 0, 8)); head == nil {
		t.Fatal("no room")
	}
	f.l.CommitTSO(size, TSO{L4: 34})
	f.l.Cancel()
	f.l.Flush()
	h := f.mem[0x20000:]
	if h[0] != virtioNetHdrNeedsCsum || h[1] != 0 || binary.LittleEndian.Uint16(h[4:]) != 0 ||
		binary.LittleEndian.Uint16(h[6:]) != 34 || binary.LittleEndian.Uint16(h[8:]) != 16 {
		t.Errorf("virtio-net header % x", h[:12])
	}

	f.rxBufs(10, 1, 64) // too small for headers: the frame is queued
	head, _ := f.l.ReserveV(hdr, 200, make([]unix.Iovec, 0, 8))
	f.l.CommitTSO(len(head), TSO{L4: 34})
	if f.l.GuestCsum() {
		t.Error("partial checksums go on for a guest whose buffers cannot take them")
	}
}

// TestVhostUserRefuses: a front-end that breaks the protocol gets an
// error that says what it did (and the connection is closed), never a
// crash.
func TestVhostUserRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		req  uint32
		p    []byte
		fds  bool
	}{
		{"queue size not a power of two", vuSetVringNum, u32s(0, 100), false},
		{"queue size 0", vuSetVringNum, u32s(0, 0), false},
		{"queue size over 32768", vuSetVringNum, u32s(0, 65536), false},
		{"a third queue", vuSetVringNum, u32s(2, 256), false},
		{"ring outside guest memory", vuSetVringAddr, append(u32s(0, 0), u64s(feUVA+feMemSize, feUVA, feUVA, 0)...), false},
		{"ring past the end of memory", vuSetVringAddr, append(u32s(0, 0), u64s(feUVA+feMemSize-16, feUVA, feUVA, 0)...), false},
		{"ring address wrapping around", vuSetVringAddr, append(u32s(0, 0), u64s(^uint64(0)-8, feUVA, feUVA, 0)...), false},
		{"memory table without descriptors", vuSetMemTable, append(u32s(1, 0), u64s(0, feMemSize, feUVA, 0)...), false},
		{"memory table of 0 regions", vuSetMemTable, u32s(0, 0), true},
		{"memory table of 9 regions", vuSetMemTable, u32s(9, 0), true},
		{"memory table of 2^31 regions", vuSetMemTable, u32s(1<<31, 0), true},
		{"region of absurd size", vuSetMemTable, append(u32s(1, 0), u64s(0, 1<<60, feUVA, 0)...), true},
		{"region beyond its descriptor", vuSetMemTable, append(u32s(1, 0), u64s(0, feMemSize, feUVA, 1<<40)...), true},
		{"kick without descriptor", vuSetVringKick, u64s(0), false},
		{"polling mode", vuSetVringKick, u64s(0x100), false},
		{"features never offered", vuSetFeatures, u64s(1 << 63), false},
		{"unknown request", 99, nil, false},
		{"short payload", vuSetVringNum, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFrontEnd(t)
			f.must(vuSetMemTable, append(u32s(1, 0), u64s(0, feMemSize, feUVA, 0)...), f.memfd)
			f.must(vuSetVringNum, u32s(0, feQueue))
			var fds []int
			if c.fds {
				fds = []int{f.memfd}
			}
			err := f.request(c.req, c.p, fds...)
			if !errors.Is(err, ErrVhostUser) {
				t.Fatalf("%v, want a vhost-user error", err)
			}
			t.Log(err)
		})
	}
	// A request larger than any the protocol has; 2^31 bytes and more
	// were a negative int where int is 32 bits wide.
	for _, size := range []uint32{vuMaxPayload + 1, 1 << 31, ^uint32(0)} {
		f := newFrontEnd(t)
		unix.Write(f.sock, u32s(vuSetMemTable, vuVersion, size))
		if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); !errors.Is(err, ErrVhostUser) {
			t.Errorf("request of %d bytes: %v", size, err)
		}
	}
}

// TestVhostUserBadChains: chains that loop, leave guest memory, point to
// an indirect table or have the wrong direction are dropped and counted;
// the ring goes on.
func TestVhostUserBadChains(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	frame := testFrame(100)
	f.desc(1, 0, feBufs, 50, descNext, 0) // loops on itself
	f.desc(1, 1, feMemSize-10, 100, 0, 0) // past the end of memory
	f.desc(1, 2, feBufs, 1<<31, 0, 0)     // absurd length
	f.desc(1, 3, feBufs, 112, descIndirect, 0)
	f.desc(1, 4, feBufs, 112, descWrite, 0) // the device cannot read it
	f.desc(1, 5, feBufs, 50, descNext, 999) // next beyond the ring
	f.desc(1, 6, feBufs, 12+100, 0, 0)      // good
	copy(f.mem[feBufs+12:], frame)
	for i := range 7 {
		f.offer(1, uint16(i))
	}
	f.offer(1, 4000) // a head beyond the ring
	f.offer(1, 6)
	got := f.readFrames()
	if len(got) != 2 || !bytes.Equal(got[0], frame) || !bytes.Equal(got[1], frame) {
		t.Errorf("read %d frames, want the 2 good ones", len(got))
	}
	if f.l.Dropped() != 7 {
		t.Errorf("dropped %d, want 7", f.l.Dropped())
	}
	if f.usedIdx(1) != 9 {
		t.Errorf("used index %d: every chain goes back to the guest", f.usedIdx(1))
	}

	// RX chains the device cannot write drop the frame, not the link.
	f.desc(0, 0, feBufs, 2000, 0, 0)
	f.offer(0, 0)
	f.l.Reserve(100)
	f.l.Commit(100)
	f.l.Flush()
	if f.l.Pending() != 0 || f.l.Dropped() != 8 {
		t.Errorf("pending %d, dropped %d", f.l.Pending(), f.l.Dropped())
	}
}

// TestVhostUserAllocs: frames both ways allocate nothing.
func TestVhostUserAllocs(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	frame := testFrame(1500)
	copy(f.mem[feBufs+12:], frame)
	f.desc(1, 0, feBufs, 12+1500, 0, 0)
	f.desc(0, 0, feBufs+0x10000, 4096, descWrite, 0)
	iov := make([]unix.Iovec, 0, 8)
	allocs := testing.AllocsPerRun(100, func() {
		f.offer(1, 0)
		f.l.Read()
		for fr, _ := f.l.Next(); fr != nil; fr, _ = f.l.Next() {
		}
		f.offer(0, 0)
		copy(f.l.Reserve(1500), frame)
		f.l.Commit(1500)
		f.l.Flush()
		f.offer(0, 0) // and one built in the guest's buffer
		head, v := f.l.ReserveV(54, 1500, iov)
		copy(head, frame)
		fillV(v, frame[54:])
		f.l.Commit(1500)
		f.l.Cancel()
		f.l.Flush()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per frame each way", allocs)
	}
}

// FuzzVirtq fills both rings' descriptor tables and available rings with
// the fuzzer's bytes, then moves frames both ways: whatever the guest
// wrote, the link must not crash or touch memory outside the region.
func FuzzVirtq(f *testing.F) {
	fuzzQueue(f)
	f.Add([]byte{}, uint16(1))
	seed := make([]byte, 16*4+8)
	binary.LittleEndian.PutUint64(seed, feBufs)
	binary.LittleEndian.PutUint32(seed[8:], 200)
	binary.LittleEndian.PutUint16(seed[12:], descNext)
	binary.LittleEndian.PutUint16(seed[14:], 1)
	binary.LittleEndian.PutUint64(seed[16:], feBufs+0x1000)
	binary.LittleEndian.PutUint32(seed[24:], 0xffffffff)
	f.Add(seed, uint16(3))
	f.Fuzz(func(t *testing.T, tables []byte, n uint16) {
		fe := newFrontEnd(t)
		fe.setUp()
		for q := range 2 {
			d, a, _ := feRing(q)
			copy(fe.mem[d:d+16*feQueue], tables)
			copy(fe.mem[a+4:a+4+2*feQueue], tables)
			binary.LittleEndian.PutUint16(fe.mem[a+2:], n)
		}
		if _, err := fe.tryReadFrames(); err != nil && !errors.Is(err, ErrVhostUser) {
			t.Fatal(err)
		}
		for range 4 {
			if b := fe.l.Reserve(9000); b != nil {
				fe.l.Commit(len(b))
			}
		}
		fe.l.Flush()
		// Frames built in the guest's buffers: every piece handed out
		// must lie in guest memory, and the one short commit is kept.
		iov := make([]unix.Iovec, 0, 64)
		payload := make([]byte, 20000-54)
		for i := range 3 {
			head, v := fe.l.ReserveV(54, 20000, iov)
			if head == nil {
				break
			}
			clear(head)
			fillV(v[len(iov):], payload)
			iov = v
			if i == 0 {
				fe.l.Commit(20000 - int(n%1000))
			}
		}
		fe.l.Cancel()
		fe.l.Flush()
	})
}

// The RX kick is watched only while something waits for the guest's RX
// buffers; guest to host, the kick that follows each frame we send would
// otherwise wake us for nothing. A kick while unwatched is not lost.
func TestVhostUserRxKickWatch(t *testing.T) {
	f := newFrontEnd(t)
	p := newEpollPoller(t)
	f.l.Register(p)
	f.setUp()
	rxReady := func() bool { return slices.Contains(p.ready(t), vuIDKick+rxQueue) }
	event := func() bool {
		t.Helper()
		_, out, err := f.l.Event(vuIDKick+rxQueue, unix.EPOLLIN)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	signal(f.kick[0])
	if !rxReady() {
		t.Fatal("the RX kick is not watched at first")
	}
	if event() {
		t.Error("a kick nobody waited for reported room")
	}
	signal(f.kick[0])
	if rxReady() {
		t.Fatal("the RX kick is still watched, with nothing waiting")
	}

	// A frame, and no buffers: the frame waits, the kick is watched
	// again, and the one that came meanwhile is reported.
	copy(f.l.Reserve(60), "frame")
	f.l.Commit(60)
	if f.l.Flush(); f.l.Pending() == 0 {
		t.Fatal("a frame went to a ring with no buffers")
	}
	if !rxReady() || !event() {
		t.Fatal("the kick that came while the frame had no buffers was lost")
	}
	if f.l.Flush(); rxReady() {
		t.Fatal("a drained kick was reported again")
	}
	f.rxBufs(0, 1, 2048)
	signal(f.kick[0])
	if !rxReady() || !event() {
		t.Fatal("the guest's buffers were not reported to the waiting frame")
	}
	if f.l.Flush(); f.l.Pending() != 0 || f.usedIdx(0) != 1 {
		t.Fatalf("pending %d, used index %d", f.l.Pending(), f.usedIdx(0))
	}
	signal(f.kick[0])
	if !rxReady() || event() {
		t.Fatal("with nothing waiting, a kick still reports room")
	}
	if signal(f.kick[0]); rxReady() {
		t.Fatal("the RX kick is still watched, with nothing waiting")
	}

	// Room refused (the queue full) watches the kick too.
	for f.l.Reserve(MaxFrame) != nil {
		f.l.Commit(MaxFrame)
	}
	if !rxReady() || !event() {
		t.Fatal("room refused, and the kick not watched")
	}
}

// TestVhostUserInterruptOwed: what is published while the guest takes no
// interrupts (it polls) is owed one. Once it takes them again and
// owedDelay has passed with no other, the link reports something
// pending, and the next Flush sends the interrupt, once: a guest whose
// look at the used ring came too early, with all its RX buffers used,
// would otherwise wait for ever. Before then, a guest that stops polling
// gets none: it found what was published itself.
func TestVhostUserInterruptOwed(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.rxBufs(0, 2, 2048)
	_, avail, _ := feRing(0)
	flags := func(v uint16) { binary.LittleEndian.PutUint16(f.mem[avail:], v) }
	interrupts := func() int { return drainCalls(f.call[0]) }
	interrupts()
	flags(availNoInterrupt)
	f.l.Reserve(64)
	f.l.Commit(64)
	owed := time.Now()
	f.l.Flush()
	if n, p := interrupts(), f.l.Pending(); n != 0 || p != 0 || f.usedIdx(0) != 1 {
		t.Fatalf("published while the guest polls: %d interrupts, pending %d, used index %d", n, p, f.usedIdx(0))
	}
	flags(0)
	f.l.Flush()
	early := interrupts()
	// Unless this ran slower than owedDelay (qemu-user, a loaded machine).
	if early != 0 && time.Since(owed) < owedDelay {
		t.Fatal("the guest stopped polling: interrupted before the owed one was due")
	}
	if early == 0 {
		time.Sleep(owedDelay)
		if f.l.Pending() == 0 {
			t.Fatal("the owed interrupt is not pending once due")
		}
		f.l.Flush()
		if n, p := interrupts(), f.l.Pending(); n != 1 || p != 0 {
			t.Fatalf("after the flush: %d interrupts, pending %d; want 1, 0", n, p)
		}
	}
	f.l.Flush()
	if n := interrupts(); n != 0 {
		t.Errorf("%d more interrupts for nothing new", n)
	}

	// Out of buffers, with interrupts on: one whenever owedDelay passed
	// with no other, however the one for the frames that used them up
	// was lost: flushed each owedDelay, one flush in two.
	f.l.Reserve(64)
	f.l.Commit(64)
	f.l.Reserve(64)
	f.l.Commit(64)
	f.l.Flush() // the second frame finds no buffer
	interrupts()
	for i := range 2 {
		n := 0
		for range 2 {
			if f.l.Pending() == 0 {
				t.Fatal("nothing pending with a frame queued")
			}
			time.Sleep(owedDelay)
			f.l.Flush()
			n += interrupts()
		}
		if n != 1 {
			t.Fatalf("out of buffers, tick %d: %d interrupts, want 1", i, n)
		}
	}
	// A new call descriptor gets one too.
	f.must(vuSetVringCall, u64s(0), f.call[0])
	f.l.Flush()
	if n := interrupts(); n != 1 {
		t.Errorf("a new call descriptor: %d interrupts, want 1", n)
	}
}

// TestVhostUserStartsWithQueuedFrames: a migration's destination gets
// its rings with frames the guest queued and kicked for the source,
// which stopped before it took them; the guest kicks again only for
// frames it adds. So the link reports its TX ring readable after the
// front-end's requests, and a Read finds the frame with no kick.
func TestVhostUserStartsWithQueuedFrames(t *testing.T) {
	f := newFrontEnd(t)
	frame := testFrame(200)
	copy(f.mem[feBufs+12:], frame)
	f.desc(1, 0, feBufs, 12+uint32(len(frame)), 0, 0)
	f.offer(1, 0)
	f.setUp()
	f.send(vuSetVringEnable, u32s(txQueue, 1))
	if in, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); err != nil || !in {
		t.Fatal("the TX ring is not reported readable after a request")
	}
	if got := f.readFrames(); len(got) != 1 || !bytes.Equal(got[0], frame) {
		t.Fatalf("read %d frames, want the one queued before the ring started", len(got))
	}
}
