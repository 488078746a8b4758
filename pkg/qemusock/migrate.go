package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Live migration over vhost-user. While the guest's memory is copied to
// the destination, the front-end asks (VHOST_F_LOG_ALL) that every page
// we write into it be marked in a log it shares (SET_LOG_BASE), so that
// the page is copied again. Once the guest is stopped, the front-end
// hands us a pipe (SET_DEVICE_STATE_FD) for our own state, which the
// engine writes on the source and reads on the destination (Migrator),
// and then asks how that went (CHECK_DEVICE_STATE). This is the part of
// the protocol passt implements, with its replies.

const (
	vuSetLogBase               = 6
	vuSetLogFd                 = 7
	vuSetDeviceStateFd         = 42
	vuCheckDeviceState         = 43
	vhostFLogAll               = 1 << 26 // virtio feature: log every write to guest memory
	vuProtocolLogShmfd         = 1 << 1  // the log is shared memory, given by descriptor
	vuProtocolDevState         = 1 << 19 // SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE
	vhostVringFLog             = 1 << 0  // SET_VRING_ADDR: log_guest_addr is the used ring's
	vuNoFd                     = 0x100   // a reply's u64: no descriptor comes with it
	logPage                    = 4096    // one bit of the log covers this much guest memory
	transferSave, transferLoad = 0, 1
)

// maxLogSize bounds the log: one for 2^51 bytes of guest memory, any
// real guest's, or for 2^36 where pointers are 32 bits wide, where a log
// of up to 2 GiB took the address space the Go runtime needs (maxMapped).
const maxLogSize = 1 << (addressBits - 11)

// vuProtocolFeatures are the protocol features we offer.
const vuProtocolFeatures = vuProtocolReplyAck | vuProtocolLogShmfd | vuProtocolDevState

// Migrator is what a link that carries the device state needs of the
// engine. SaveState and LoadState have the stream, which fails rather
// than wait for ever on the front-end (stateStream); Migrated says that
// the front-end checked a saved state: the guest now runs elsewhere.
type Migrator interface {
	SaveState(w io.Writer) error
	LoadState(r io.Reader) error
	Migrated()
}

// Migratable is a link that carries the device state (vhost-user).
type Migratable interface {
	SetMigrator(m Migrator)
}

// SetMigrator gives the link its engine.
func (l *vhostLink) SetMigrator(m Migrator) { l.migrator = m }

// dirtyLog is the front-end's log of written pages: one bit per page of
// guest physical memory, bit page%8 of byte page/8.
type dirtyLog struct {
	bitmap []byte
	mem    *guestMemory
	call   int // SET_LOG_FD's eventfd, told of each update; -1 if none
}

// mark logs the n bytes at guest physical address gpa. Pages beyond the
// log are not the guest's: nothing to mark.
func (d *dirtyLog) mark(gpa, n uint64) {
	if n == 0 {
		return
	}
	for page := gpa / logPage; page <= (gpa+n-1)/logPage; page++ {
		at := page / 8
		if at >= uint64(len(d.bitmap)) {
			break
		}
		// An atomic OR on the aligned 32-bit word that holds the byte:
		// the front-end clears bits as it copies pages.
		word := at &^ 3
		shift := 8*(at&3) + page%8
		if !littleEndian {
			shift = 8*(3-at&3) + page%8
		}
		atomic.OrUint32((*uint32)(unsafe.Pointer(&d.bitmap[word])), 1<<shift)
	}
	if d.call >= 0 {
		signalShared(d.call)
	}
}

var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// logUsed logs what putUsed wrote: the first n bytes of chain head's
// buffers (walked again: its descriptors are the guest's, and a guest
// that changed them meanwhile only loses its own pages) and the used
// element in slot.
func (d *dirtyLog) logUsed(q *virtq, head uint16, n uint32, slot uint64) {
	c := q.chain(d.mem, head)
	for left := uint64(n); left > 0; {
		b, err := c.buffer(true)
		if err != nil || b == nil {
			break
		}
		k := min(left, uint64(len(b)))
		d.mark(d.mem.gpaOf(b), k)
		left -= k
	}
	if q.logUsed {
		d.mark(q.usedGPA+4+8*slot, 8)
	}
}

// logUsedIdx logs publish's store of the used ring's flags and index.
func (d *dirtyLog) logUsedIdx(q *virtq) {
	if q.logUsed {
		d.mark(q.usedGPA, 4)
	}
}

// gpaOf is the guest physical address of b, a slice of a region.
func (m *guestMemory) gpaOf(b []byte) uint64 {
	p := addrOf(b)
	for i := range m.regions {
		r := &m.regions[i]
		if start := addrOf(r.mem); p >= start && p < start+uintptr(len(r.mem)) {
			return r.gpa + uint64(p-start)
		}
	}
	return 0
}

// setLogBase maps the log the front-end shares.
func (l *vhostLink) setLogBase(p []byte) error {
	fd := l.takeFd()
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if fd < 0 || len(p) < 16 {
		return errors.New("a log needs its size, offset and descriptor")
	}
	size, off := binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:])
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || size == 0 || size > maxLogSize || off > maxLogSize || off+size > uint64(st.Size) || off%uint64(unix.Getpagesize()) != 0 {
		return fmt.Errorf("log of %#x bytes at offset %#x of a %d-byte file", size, off, st.Size)
	}
	m, err := unix.Mmap(fd, int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		return err
	}
	l.unmapLog()
	l.log.bitmap = m
	mappings.add(m)
	l.updateLog()
	return nil
}

func (l *vhostLink) unmapLog() {
	if l.log.bitmap != nil {
		mappings.remove(l.log.bitmap)
		unix.Munmap(l.log.bitmap)
		l.log.bitmap = nil
	}
}

// updateLog turns logging on for the rings while the front-end asks for
// it and has given the log.
func (l *vhostLink) updateLog() {
	l.log.mem = &l.mem
	var log *dirtyLog
	if l.features&vhostFLogAll != 0 && l.log.bitmap != nil {
		log = &l.log
	}
	for i := range l.vq {
		l.vq[i].log = log
	}
}

// setLogFd takes the eventfd to tell of log updates.
func (l *vhostLink) setLogFd() error {
	fd := l.takeFd()
	if fd < 0 {
		return errors.New("no descriptor")
	}
	if l.log.call >= 0 {
		unix.Close(l.log.call)
	}
	l.log.call = fd
	return unix.SetNonblock(fd, true)
}

// setDeviceStateFd answers SET_DEVICE_STATE_FD (we use the front-end's
// pipe, and give none back), then has the engine write or read the
// state through it, to the end, before anything else: the guest is
// stopped. The result waits for CHECK_DEVICE_STATE.
func (l *vhostLink) setDeviceStateFd(req uint32, p []byte) error {
	fd := l.takeFd()
	if fd >= 0 {
		defer unix.Close(fd)
	}
	if fd < 0 || len(p) < 8 {
		return errors.New("a transfer needs its direction, phase and descriptor")
	}
	dir, phase := binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])
	if phase != 0 || dir != transferSave && dir != transferLoad {
		return fmt.Errorf("transfer direction %d, phase %d: only saving or loading a stopped device", dir, phase)
	}
	if err := l.reply(req, vuNoFd); err != nil {
		return err
	}
	l.stateErr = errors.New("no engine to move the state")
	l.saved = false
	if l.migrator == nil {
		return nil
	}
	s := &stateStream{fd: fd, ctl: l.fd, deadline: time.Now().Add(stateMax)}
	if l.stateErr = unix.SetNonblock(fd, true); l.stateErr != nil {
		return nil
	}
	if dir == transferSave {
		l.stateErr = l.migrator.SaveState(s)
		l.saved = l.stateErr == nil
	} else {
		l.stateErr = l.migrator.LoadState(s)
	}
	return nil
}

// The engine waits on the device state's pipe, but the front-end at its
// other end is not trusted to keep it moving: a transfer fails when the
// pipe stalls for stateIdle, when it takes longer than stateMax, or when
// the front-end hangs up. The engine then goes on serving, and
// CHECK_DEVICE_STATE reports the failure. A real transfer is the guest's
// addresses and its connections' queues, moved in well under a second.
var (
	stateIdle = 10 * time.Second
	stateMax  = 2 * time.Minute
)

// stateStream is the front-end's pipe, non-blocking, as an io.Reader and
// io.Writer that wait for it within those bounds; ctl is the front-end's
// control connection, watched for its hang-up.
type stateStream struct {
	fd, ctl  int
	deadline time.Time
}

func (s *stateStream) Read(b []byte) (int, error) {
	for {
		n, err := sharedRead(s.fd, b)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			if err := s.wait(unix.POLLIN); err != nil {
				return 0, err
			}
		case err != nil:
			return 0, err
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

func (s *stateStream) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := sharedWrite(s.fd, b[n:])
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			if err := s.wait(unix.POLLOUT); err != nil {
				return n, err
			}
		case err != nil:
			return n, err
		default:
			n += k
		}
	}
	return n, nil
}

// wait waits for the pipe to be ready for events.
func (s *stateStream) wait(events int16) error {
	timeout := min(stateIdle, time.Until(s.deadline))
	if timeout <= 0 {
		return fmt.Errorf("device state: not moved within %v", stateMax)
	}
	pfd := []unix.PollFd{{Fd: int32(s.fd), Events: events}, {Fd: int32(s.ctl), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, int(timeout.Milliseconds())+1)
	switch {
	case err == unix.EINTR:
		return nil
	case err != nil:
		return err
	case pfd[1].Revents != 0:
		return errors.New("device state: the front-end hung up")
	case n == 0:
		return fmt.Errorf("device state: the front-end's pipe stalled for %v", timeout)
	}
	return nil
}

// errNoTransfer is CHECK_DEVICE_STATE's answer before any transfer:
// a failure, as passt's, not a state nobody moved taken as moved.
var errNoTransfer = errors.New("no device state transfer")

// checkDeviceState answers CHECK_DEVICE_STATE with the transfer's
// result; a source whose state the front-end took is done.
func (l *vhostLink) checkDeviceState(req uint32) error {
	var v uint64
	if l.stateErr != nil {
		v = 1
	}
	if err := l.reply(req, v); err != nil {
		return err
	}
	if l.saved && l.migrator != nil {
		l.saved = false
		l.migrator.Migrated()
	}
	return nil
}
