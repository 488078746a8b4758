package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Split virtqueues (virtio 1.x, section 2.7) in guest memory that the
// vhost-user front-end shares with us. The guest writes these rings and
// may change them at any time, or lie in them: every index is reduced
// modulo the ring size, every address and length is checked against the
// mapped regions before it is touched, a chain is followed for at most
// the ring's size, and each field is read once into a local.

// memRegion is one region of guest memory, mapped shared.
type memRegion struct {
	gpa, uva uint64 // where it starts, as the guest and as QEMU see it
	mem      []byte // the region
	mapping  []byte // what was mapped (the region and the offset before it)
}

// guestMemory is the guest's RAM, from VHOST_USER_SET_MEM_TABLE.
type guestMemory struct{ regions []memRegion }

// translate returns the n bytes at addr in the guest's physical address
// space (byUVA false) or QEMU's (byUVA true), or nil if they are not all
// within one region.
func (m *guestMemory) translate(addr, n uint64, byUVA bool) []byte {
	for i := range m.regions {
		r := &m.regions[i]
		base := r.gpa
		if byUVA {
			base = r.uva
		}
		size := uint64(len(r.mem))
		if addr >= base && addr-base <= size && n <= size-(addr-base) {
			off := addr - base
			return r.mem[off : off+n : off+n]
		}
	}
	return nil
}

func (m *guestMemory) unmap() {
	for _, r := range m.regions {
		mappings.remove(r.mapping)
		unix.Munmap(r.mapping)
	}
	m.regions = nil
}

// mappings are where guest memory is mapped, for every vhost-user link
// in the process: GuestFault looks a fault's address up there.
var mappings mappingSet

type mappingSet struct {
	sync.Mutex
	ranges [][2]uintptr // start, end
}

func (s *mappingSet) add(m []byte) {
	s.Lock()
	s.ranges = append(s.ranges, [2]uintptr{addrOf(m), addrOf(m) + uintptr(len(m))})
	s.Unlock()
}

func (s *mappingSet) remove(m []byte) {
	s.Lock()
	s.ranges = slices.DeleteFunc(s.ranges, func(r [2]uintptr) bool { return r[0] == addrOf(m) })
	s.Unlock()
}

// GuestFault tells whether r, a value recovered from a panic, is a fault
// in guest memory that a vhost-user front-end shares: what a front-end
// that shrank the file under it, after SET_MEM_TABLE, brings about.
// A fault is a panic, not a crash, only on a goroutine that called
// debug.SetPanicOnFault(true), as the engine does.
//
// Why recover rather than require F_SEAL_SHRINK: QEMU seals the memfds it
// creates, but guest memory may as well be a file (memory-backend-file,
// libvirt's default memory_backing_dir, hugetlbfs), which cannot be sealed
// against shrinking; refusing those would refuse legitimate front-ends,
// while no seal check covers them all.
func GuestFault(r any) bool {
	f, ok := r.(interface{ Addr() uintptr })
	if !ok {
		return false
	}
	addr := f.Addr()
	mappings.Lock()
	defer mappings.Unlock()
	for _, m := range mappings.ranges {
		if addr >= m[0] && addr < m[1] {
			return true
		}
	}
	return false
}

// Descriptor flags.
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// Ring flags.
const (
	availNoInterrupt = 1 // the driver needs no interrupt for used buffers
)

// maxQueueSize is virtio's largest split queue.
const maxQueueSize = 32768

// errBadChain reports a descriptor chain that cannot be followed.
var errBadChain = errors.New("bad descriptor chain")

// virtq is one split virtqueue.
type virtq struct {
	num                        uint16 // ring size, a power of two
	descUVA, availUVA, usedUVA uint64
	desc, avail, used          []byte // the rings, in guest memory; nil until translated

	lastAvail uint16        // the next available entry we take
	walked    int           // descriptors walked, ever: a call bounds what it walks by the difference (maxWalk)
	usedIdx   uint16        // the next used entry we write
	published uint16        // usedIdx as the guest last saw it
	owed      bool          // an interrupt to send once the guest takes them (publish, rxShort, a new call descriptor)
	owedAt    time.Duration // when an owed interrupt falls due (clock)

	kick, call int  // eventfds, -1 when none
	started    bool // a kick descriptor was given (the ring runs)
	enabled    bool // SET_VRING_ENABLE, or on from the start without protocol features

	// log, while the front-end asks for one (migration), gets every
	// write to guest memory; the used ring is logged at usedGPA when
	// SET_VRING_ADDR gave it (logUsed).
	log     *dirtyLog
	usedGPA uint64
	logUsed bool

	// err is how the front-end broke the ring (an available index that
	// jumped, a call descriptor that took no interrupt); the link then
	// ends the connection at its next Event, Read or Flush.
	err error
}

func newVirtq() virtq { return virtq{kick: -1, call: -1} }

// ready tells whether the ring can be used.
func (q *virtq) ready() bool { return q.started && q.enabled && q.desc != nil && q.err == nil }

// mapRings translates the rings' addresses through mem; it fails when a
// ring is not within guest memory.
func (q *virtq) mapRings(mem *guestMemory) error {
	q.desc, q.avail, q.used = nil, nil, nil
	if q.num == 0 || q.descUVA == 0 {
		return nil // not set up yet
	}
	n := uint64(q.num)
	desc := mem.translate(q.descUVA, 16*n, true)
	avail := mem.translate(q.availUVA, 6+2*n, true)
	used := mem.translate(q.usedUVA, 6+8*n, true)
	// The alignment virtio asks for, checked where the rings are mapped:
	// a region's offset in its file moves them from where the front-end
	// put them, and the index words are loaded atomically (availIdx).
	if desc == nil || avail == nil || used == nil || addrOf(used)%4 != 0 || addrOf(avail)%2 != 0 {
		return errors.New("a ring is outside guest memory or misaligned")
	}
	q.desc, q.avail, q.used = desc, avail, used
	return nil
}

// availIdx is the driver's available index, loaded with acquire order:
// the entries before it are complete when it is seen.
func (q *virtq) availIdx() uint16 { return loadIdx(q.avail) }

// addrOf is where b starts in memory.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// loadIdx loads a ring's index, the little-endian 16-bit field after its
// flags, atomically, on hosts of either byte order. An atomic load must
// be aligned to its size (arm64 faults otherwise), and the avail ring is
// only 2-byte aligned: the index is loaded as half of whichever aligned
// 32-bit word holds it within the ring, the one at its start or the one
// at the index itself.
func loadIdx(ring []byte) uint16 {
	at := 0
	if addrOf(ring[2:])%4 == 0 {
		at = 2
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], atomic.LoadUint32((*uint32)(unsafe.Pointer(&ring[at]))))
	return binary.LittleEndian.Uint16(b[2-at:])
}

// storeUsedIdx stores the used ring's flags (ours: 0) and index in one
// atomic 32-bit store, which orders the entries before it; the used
// ring is 4-byte aligned (mapRings).
func storeUsedIdx(ring []byte, idx uint16) {
	var b [4]byte
	binary.LittleEndian.PutUint16(b[2:], idx)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&ring[0])), binary.NativeEndian.Uint32(b[:]))
}

// errAvailJump reports an available index more than a ring ahead of the
// last one seen: entries the guest never wrote, or a driver that lost
// count.
var errAvailJump = fmt.Errorf("%w: the available index jumped past the ring's size", ErrVhostUser)

// nextAvail takes the next available chain's head, if any.
func (q *virtq) nextAvail() (uint16, bool) {
	idx := q.availIdx()
	if idx == q.lastAvail || q.err != nil {
		return 0, false
	}
	if idx-q.lastAvail > q.num {
		q.err = errAvailJump
		return 0, false
	}
	slot := uint64(q.lastAvail & (q.num - 1))
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	q.lastAvail++
	return head, true
}

// putUsed records chain head as used, with len bytes written to it; the
// guest sees it at publish.
func (q *virtq) putUsed(head uint16, n uint32) {
	slot := uint64(q.usedIdx & (q.num - 1))
	binary.LittleEndian.PutUint32(q.used[4+8*slot:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[8+8*slot:], n)
	q.usedIdx++
	if q.log != nil {
		q.log.logUsed(q, head, n, slot)
	}
}

// discard gives back the chains taken since the available index was
// from, as used and empty: what their heads were is read again from the
// available ring, where the guest may have changed it, which harms only
// the guest.
func (q *virtq) discard(from uint16) {
	for i := from; i != q.lastAvail; i++ {
		q.putUsed(binary.LittleEndian.Uint16(q.avail[4+2*uint64(i&(q.num-1)):]), 0)
	}
}

// publish makes the used entries visible (the store orders the entries
// before the index) and interrupts the guest unless it asked not to be.
// What it publishes while the guest asks not to be, and an interrupt
// owed for another reason, goes once due (mayInterrupt). A call
// descriptor that cannot take the interrupt now (non-blocking: a
// counter at its maximum, a full pipe) or at all breaks the ring: only
// the front-end could have made it so.
func (q *virtq) publish() {
	fresh := q.usedIdx != q.published
	if fresh {
		q.published = q.usedIdx
		storeUsedIdx(q.used, q.usedIdx)
		if q.log != nil {
			q.log.logUsedIdx(q)
		}
	}
	switch {
	case !q.mayInterrupt():
		if fresh {
			q.owe()
		}
		return
	case !fresh && !q.owedDue():
		return
	}
	q.owed = false
	if q.call >= 0 && q.err == nil {
		if err := signalShared(q.call); err != nil {
			q.err = fmt.Errorf("%w: interrupt: %v", ErrVhostUser, err)
		}
	}
}

// owedDelay is how long an owed interrupt waits for one that would make
// it needless (mayInterrupt): the engine's tick, so that a guest out of
// RX buffers (rxShort) is interrupted at most ten times a second however
// fast the engine turns, and a kick that each interrupt caused could not
// make it spin (TestVhostUserOwedNoSpin, TestVhostUserOwedCallIsKick).
const owedDelay = 100 * time.Millisecond

// owe makes the ring owe the guest an interrupt, due after owedDelay if
// it owed none.
func (q *virtq) owe() {
	if !q.owed {
		q.owed, q.owedAt = true, clock()+owedDelay
	}
}

// owedDue tells whether an owed interrupt is due.
func (q *virtq) owedDue() bool {
	return q.owed && clock() >= q.owedAt
}

// mayInterrupt tells whether the guest takes interrupts now. The flag is
// a hint, read plainly: a driver that turns interrupts back on looks at
// the used ring itself afterwards, and so finds what was published while
// they were off. Should that look and our read of the flag cross (its
// store of the flag not yet seen here, our store of the index not yet
// seen there), the guest would wait for an interrupt that never comes,
// and a guest whose RX buffers are all used sends nothing that would end
// the wait. So what was published while its interrupts were off leaves
// an interrupt owed (q.owed), which interruptOwed has sent once they are
// on again and owedDelay has passed with no other: at worst, one the
// guest did not need. Sent at once, it would be one more interrupt each
// time the guest stops polling: in a download, four times the interrupts
// a TCG guest takes otherwise (docs/benchmarks.md).
func (q *virtq) mayInterrupt() bool {
	return binary.LittleEndian.Uint16(q.avail)&availNoInterrupt == 0
}

// interruptOwed tells whether the ring owes the guest an interrupt
// (publish) that is due and that it would take now.
func (q *virtq) interruptOwed() bool {
	return q.owedDue() && q.ready() && q.mayInterrupt()
}

// clockStart and clock time owed interrupts.
var clockStart = time.Now()

func clock() time.Duration { return time.Since(clockStart) }

// eventfdOne is what signals an eventfd: 1, as a native-endian 64-bit
// count.
var eventfdOne = func() (b [8]byte) {
	binary.NativeEndian.PutUint64(b[:], 1)
	return b
}()

// drainEventfd clears a kick. A kick that cannot be read (not an eventfd,
// or at its end) would be reported ready for ever: an error, for the
// caller to end the connection with.
func drainEventfd(fd int) error {
	var b [8]byte
	n, err := sharedRead(fd, b[:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return nil
	case err != nil:
		return fmt.Errorf("%w: kick: %v", ErrVhostUser, err)
	case n != len(b):
		return fmt.Errorf("%w: kick: a read of %d bytes: not an eventfd", ErrVhostUser, n)
	}
	return nil
}

// probeKick refuses a kick that is not an eventfd counting kicks. One in
// semaphore mode gives 1 at each read and takes 1, so that with a count
// (up to 2^64-2, from a single write of the front-end's) it stays
// readable through as many reads; a timer (timerfd) reads as a count and
// can fire every nanosecond: drained one read per event, either would
// be reported for ever. In counting mode a read takes the whole count,
// so that, after one, a write of probeCount reads back as probeCount, or
// more with a kick meanwhile; a semaphore's reads back as 1, or takes no
// write (a count near its maximum), and a timer takes none. The kicks
// the probe read are given back as one.
func probeKick(fd int) error {
	var b [8]byte
	n, err := sharedRead(fd, b[:])
	kicked := err == nil && n == len(b)
	binary.NativeEndian.PutUint64(b[:], probeCount)
	if n, err = sharedWrite(fd, b[:]); err == nil && n == len(b) {
		n, err = sharedRead(fd, b[:])
	}
	v := binary.NativeEndian.Uint64(b[:])
	if err != nil || n != len(b) || v < probeCount {
		return errors.New("the kick is not an eventfd that counts (a semaphore, a timer, a pipe?)")
	}
	if kicked || v > probeCount {
		signalShared(fd)
	}
	return nil
}

// probeCount reads the same in either byte order, so that the probe holds
// where the kernel and this process disagree on it: under qemu-user (make
// test-bigendian) an eventfd received from another process is not
// translated.
const probeCount = 1<<56 | 1

// chain walks one descriptor chain.
type chain struct {
	q     *virtq
	mem   *guestMemory
	next  uint16
	more  bool
	steps uint16
}

func (q *virtq) chain(mem *guestMemory, head uint16) chain {
	return chain{q: q, mem: mem, next: head, more: true}
}

// buffer returns the chain's next buffer, or nil at its end. write says
// what the device does with it: buffers the device writes must follow
// those it reads, and the walk fails otherwise, on a loop, on an indirect
// table (not offered) or outside guest memory. Buffers of no length are
// skipped: no caller has a use for them.
func (c *chain) buffer(write bool) ([]byte, error) {
	for c.more {
		if c.next >= c.q.num || c.steps >= c.q.num {
			return nil, errBadChain
		}
		c.steps++
		c.q.walked++
		d := c.q.desc[16*uint64(c.next):]
		addr := binary.LittleEndian.Uint64(d)
		n := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		c.next = binary.LittleEndian.Uint16(d[14:])
		c.more = flags&descNext != 0
		if flags&descIndirect != 0 || (flags&descWrite != 0) != write {
			return nil, errBadChain
		}
		b := c.mem.translate(addr, uint64(n), false)
		if b == nil {
			return nil, errBadChain
		}
		if len(b) > 0 {
			return b, nil
		}
	}
	return nil, nil
}
