package qemusock

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
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
		unix.Munmap(r.mapping)
	}
	m.regions = nil
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

	lastAvail uint16 // the next available entry we take
	usedIdx   uint16 // the next used entry we write
	published uint16 // usedIdx as the guest last saw it

	kick, call int  // eventfds, -1 when none
	started    bool // a kick descriptor was given (the ring runs)
	enabled    bool // SET_VRING_ENABLE, or on from the start without protocol features
}

func newVirtq() virtq { return virtq{kick: -1, call: -1} }

// ready tells whether the ring can be used.
func (q *virtq) ready() bool { return q.started && q.enabled && q.desc != nil }

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
	if desc == nil || avail == nil || used == nil || q.usedUVA%4 != 0 || q.availUVA%2 != 0 {
		return errors.New("a ring is outside guest memory or misaligned")
	}
	q.desc, q.avail, q.used = desc, avail, used
	return nil
}

// availIdx is the driver's available index, loaded with acquire order:
// the entries before it are complete when it is seen.
func (q *virtq) availIdx() uint16 {
	_, idx := loadRingHead(q.avail)
	return idx
}

// loadRingHead loads a ring's flags and index (little-endian 16-bit
// fields at its start) in one atomic 32-bit load, on hosts of either
// byte order; storeRingHead stores them so.
func loadRingHead(ring []byte) (flags, idx uint16) {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], atomic.LoadUint32((*uint32)(unsafe.Pointer(&ring[0]))))
	return binary.LittleEndian.Uint16(b[:]), binary.LittleEndian.Uint16(b[2:])
}

func storeRingHead(ring []byte, flags, idx uint16) {
	var b [4]byte
	binary.LittleEndian.PutUint16(b[:], flags)
	binary.LittleEndian.PutUint16(b[2:], idx)
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&ring[0])), binary.NativeEndian.Uint32(b[:]))
}

// nextAvail takes the next available chain's head, if any.
func (q *virtq) nextAvail() (uint16, bool) {
	if q.lastAvail == q.availIdx() {
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
}

// publish makes the used entries visible (the store orders the entries
// before the index) and interrupts the guest unless it asked not to be.
func (q *virtq) publish() {
	if q.usedIdx == q.published {
		return
	}
	q.published = q.usedIdx
	// used->flags is ours (0): store it with the index, in one word.
	storeRingHead(q.used, 0, q.usedIdx)
	if flags, _ := loadRingHead(q.avail); flags&availNoInterrupt == 0 && q.call >= 0 {
		signalEventfd(q.call)
	}
}

var eventfdOne = [8]byte{1}

func signalEventfd(fd int) { write(fd, eventfdOne[:]) }

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
// table (not offered) or outside guest memory.
func (c *chain) buffer(write bool) ([]byte, error) {
	if !c.more {
		return nil, nil
	}
	if c.next >= c.q.num || c.steps >= c.q.num {
		return nil, errBadChain
	}
	c.steps++
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
	return b, nil
}
