package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// vhost-user (QEMU's docs/interop/vhost-user.rst): the guest's virtio-net
// queues served straight from gopasst. QEMU, the front-end, connects to
// our socket and sends its memory table and the rings' addresses; frames
// then travel through guest memory, with one eventfd per ring to kick us
// (TX: the guest queued frames; RX: it added buffers) and one to
// interrupt it. No frame crosses a socket.
//
// Frames are copied once each way, between guest buffers and the link's
// own: the guest may rewrite a frame while it is parsed, so the engine
// never reads guest memory directly.

// Front-end requests (the subset a vhost-user-net front-end sends with
// the features we offer).
const (
	vuGetFeatures         = 1
	vuSetFeatures         = 2
	vuSetOwner            = 3
	vuResetOwner          = 4
	vuSetMemTable         = 5
	vuSetVringNum         = 8
	vuSetVringAddr        = 9
	vuSetVringBase        = 10
	vuGetVringBase        = 11
	vuSetVringKick        = 12
	vuSetVringCall        = 13
	vuSetVringErr         = 14
	vuGetProtocolFeatures = 15
	vuSetProtocolFeatures = 16
	vuGetQueueNum         = 17
	vuSetVringEnable      = 18
)

// Header flags.
const (
	vuVersion   = 0x1
	vuReply     = 0x4
	vuNeedReply = 0x8
)

// Feature bits.
const (
	virtioNetFCsum             = 1 << 0  // the guest may send partial checksums
	virtioNetFGuestCsum        = 1 << 1  // we may send partial checksums (we never do)
	virtioNetFHostTSO4         = 1 << 11 // the guest may send TCP segments over its MTU
	virtioNetFHostTSO6         = 1 << 12
	virtioNetFMrgRxbuf         = 1 << 15 // a frame to the guest may span buffers
	vhostUserFProtocolFeatures = 1 << 30
	virtioFVersion1            = 1 << 32

	vuProtocolReplyAck = 1 << 3

	virtioNetHdrDataValid = 2 // virtio-net header flag: the checksums are good
)

// VhostUserFeatures are the virtio features gopasst offers: passt's
// (VERSION_1, MRG_RXBUF, GUEST_CSUM, with which frames to the guest are
// marked as checked) and the guest's checksum and TCP segmentation
// offloads, which cost gopasst nothing (it never checks a guest's L4
// checksum, and takes a TCP segment of any size) and spare the guest
// both.
const VhostUserFeatures = virtioFVersion1 | virtioNetFMrgRxbuf | virtioNetFGuestCsum |
	virtioNetFCsum | virtioNetFHostTSO4 | virtioNetFHostTSO6 | vhostUserFProtocolFeatures

const (
	vuHeaderLen  = 12
	vuMaxPayload = 4096 // the largest request: a memory table of 8 regions is 264 bytes
	vuMaxFds     = 8
	vuMaxRegions = 8
	rxQueue      = 0 // the guest's receive queue: we write it
	txQueue      = 1 // the guest's transmit queue: we read it
)

// Link poller ids: the socket, then each ring's kick.
const (
	vuIDSocket = 0
	vuIDKick   = 1 // + queue index
)

// ErrVhostUser reports a front-end that broke the protocol; the
// connection is closed, and the next front-end is served.
var ErrVhostUser = errors.New("vhost-user")

// vhostLink is a Link over a vhost-user connection.
type vhostLink struct {
	fd     int
	poller Poller
	in     [vuHeaderLen + vuMaxPayload]byte // a request being received
	have   int
	fds    []int // descriptors that came with it

	features, protocol uint64
	mem                guestMemory
	vq                 [2]virtq
	hdrLen             int // the virtio-net header before each frame: 12, or 10 without VERSION_1 and MRG_RXBUF

	rd      *Reader
	q       *Queue
	dropped uint64
}

// NewVhostUser is a link over a connected vhost-user socket.
func NewVhostUser(fd int) Link {
	return &vhostLink{fd: fd, vq: [2]virtq{newVirtq(), newVirtq()}, hdrLen: 12,
		rd: NewReader(QEMU, 4<<20), q: NewQueue(QEMU, 8<<20)}
}

func (l *vhostLink) Register(p Poller) error {
	l.poller = p
	return p.Add(l.fd, linkEvents, vuIDSocket)
}

// Event handles requests on the socket (no frames come from it), and
// turns a TX kick into frames to read and an RX kick into room to send.
func (l *vhostLink) Event(id uint32, events uint32) (in, out bool, err error) {
	switch id {
	case vuIDSocket:
		if events&unix.EPOLLIN == 0 && events&(unix.EPOLLHUP|unix.EPOLLERR|unix.EPOLLRDHUP) != 0 {
			return false, false, ErrHangUp
		}
		return false, true, l.requests()
	case vuIDKick + rxQueue:
		drainEventfd(l.vq[rxQueue].kick)
		return false, true, nil
	case vuIDKick + txQueue:
		// The kick is drained only once the ring is found empty (Read):
		// until then the eventfd stays readable and the engine comes back.
		return true, false, nil
	}
	return false, false, nil
}

func drainEventfd(fd int) {
	var b [8]byte
	read(fd, b[:])
}

// Read takes the frames the guest queued on its TX ring into the link's
// buffer, as many as fit, and returns their size, or EAGAIN if there
// were none.
func (l *vhostLink) Read() (int, error) {
	tx := &l.vq[txQueue]
	if !tx.ready() {
		drainEventfd(tx.kick)
		return 0, unix.EAGAIN
	}
	r := l.rd
	r.makeRoom()
	total := 0
	for len(r.buf)-r.end >= MaxFrame+maxPrefix {
		head, ok := tx.nextAvail()
		if !ok {
			// Drain the kick, then look again: a frame queued in
			// between would otherwise wait for the next kick.
			drainEventfd(tx.kick)
			if head, ok = tx.nextAvail(); !ok {
				break
			}
		}
		n, err := l.readChain(tx, head, r.buf[r.end+QEMU.LenSize:r.end+QEMU.LenSize+MaxFrame])
		tx.putUsed(head, 0)
		if err != nil || n == 0 {
			l.dropped++
			continue
		}
		QEMU.put(r.buf[r.end:], n)
		r.end += QEMU.LenSize + n
		total += n
	}
	tx.publish()
	if total == 0 {
		return 0, unix.EAGAIN
	}
	return total, nil
}

// readChain copies the frame in a TX chain, after its virtio-net header,
// to dst and returns its size.
func (l *vhostLink) readChain(q *virtq, head uint16, dst []byte) (int, error) {
	c := q.chain(&l.mem, head)
	skip, n := l.hdrLen, 0
	for {
		b, err := c.buffer(false)
		if err != nil || b == nil {
			return n, err
		}
		k := min(skip, len(b))
		skip -= k
		b = b[k:]
		if len(b) > len(dst)-n {
			return 0, errBadChain // a frame larger than any we take
		}
		n += copy(dst[n:], b)
	}
}

func (l *vhostLink) Next() ([]byte, error) { return l.rd.Next() }

func (l *vhostLink) Reserve(n int) []byte { return l.q.Reserve(n) }
func (l *vhostLink) Commit(size int)      { l.q.Commit(size) }
func (l *vhostLink) Cancel()              { l.q.Cancel() }
func (l *vhostLink) Room(n int) int       { return l.q.Room(n) }
func (l *vhostLink) Pending() int         { return l.q.Pending() }
func (l *vhostLink) MaxFrame() int        { return MaxFrame }
func (l *vhostLink) Dropped() uint64      { return l.dropped }

// Flush copies queued frames into the guest's RX buffers, while it has
// buffers; the rest waits for its next RX kick.
func (l *vhostLink) Flush() error {
	rx := &l.vq[rxQueue]
	if !rx.ready() {
		return nil
	}
	for {
		frame := l.q.front()
		if frame == nil {
			break
		}
		ok, err := l.writeFrame(rx, frame)
		if !ok {
			break
		}
		if err != nil {
			l.dropped++
		}
		l.q.pop()
	}
	rx.publish()
	return nil
}

// writeFrame copies frame, after a virtio-net header, into as many RX
// chains as it needs (one without MRG_RXBUF). It reports false, taking
// nothing, when the guest has too few buffers; a chain that breaks the
// rules drops the frame (with an error) and goes back to the guest.
func (l *vhostLink) writeFrame(rx *virtq, frame []byte) (bool, error) {
	var hdr [12]byte
	if l.features&virtioNetFGuestCsum != 0 {
		// Every checksum in our frames is complete: the guest need not
		// check them (no small saving for a guest under emulation).
		hdr[0] = virtioNetHdrDataValid
	}
	src := [2][]byte{hdr[:l.hdrLen], frame}
	mergeable := l.features&virtioNetFMrgRxbuf != 0
	start := [2]uint16{rx.lastAvail, rx.usedIdx}
	buffers := uint16(0)
	var firstBuf []byte
	for len(src[0])+len(src[1]) > 0 {
		if buffers > 0 && !mergeable {
			l.rewind(rx, start)
			return true, errBadChain // one chain must hold the whole frame
		}
		head, ok := rx.nextAvail()
		if !ok {
			l.rewind(rx, start)
			return false, nil
		}
		c := rx.chain(&l.mem, head)
		written := 0
		for len(src[0])+len(src[1]) > 0 {
			b, err := c.buffer(true)
			if err != nil {
				l.rewind(rx, start)
				return true, err
			}
			if b == nil {
				break
			}
			if buffers == 0 && written == 0 {
				firstBuf = b
			}
			for len(b) > 0 && len(src[0])+len(src[1]) > 0 {
				s := &src[0]
				if len(*s) == 0 {
					s = &src[1]
				}
				k := copy(b, *s)
				*s, b = (*s)[k:], b[k:]
				written += k
			}
		}
		rx.putUsed(head, uint32(written))
		buffers++
	}
	if l.hdrLen == 12 && len(firstBuf) >= 12 {
		binary.LittleEndian.PutUint16(firstBuf[10:], buffers) // num_buffers
	}
	return true, nil
}

// rewind gives back the chains taken since start (the available and used
// indexes then), unused: nothing was published.
func (l *vhostLink) rewind(rx *virtq, start [2]uint16) {
	rx.lastAvail, rx.usedIdx = start[0], start[1]
}

func (l *vhostLink) Close() error {
	for i := range l.vq {
		l.resetQueue(i)
	}
	l.mem.unmap()
	closeFds(l.fds)
	return unix.Close(l.fd)
}

func (l *vhostLink) resetQueue(i int) {
	q := &l.vq[i]
	for _, fd := range []int{q.kick, q.call} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	l.vq[i] = newVirtq()
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// requests receives what the socket holds and handles each whole request.
// It never reads past the request at hand, so the descriptors that come
// with a request (passed with its first bytes) are that request's.
func (l *vhostLink) requests() error {
	oob := make([]byte, unix.CmsgSpace(4*vuMaxFds))
	for {
		want := vuHeaderLen
		if l.have >= vuHeaderLen {
			size := int(binary.LittleEndian.Uint32(l.in[8:]))
			if size > vuMaxPayload {
				return fmt.Errorf("%w: request of %d bytes", ErrVhostUser, size)
			}
			want += size
		}
		if l.have == want {
			err := l.request(l.in[:want])
			closeFds(l.fds) // what the request did not take
			l.fds, l.have = l.fds[:0], 0
			if err != nil {
				return err
			}
			continue
		}
		n, oobn, _, _, err := unix.Recvmsg(l.fd, l.in[l.have:want], oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return ErrHangUp
		}
		if cms, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(cms) > 0 {
			for i := range cms {
				fds, _ := unix.ParseUnixRights(&cms[i])
				l.fds = append(l.fds, fds...)
			}
		}
		l.have += n
	}
}

// takeFd hands over the first descriptor that came with the request.
func (l *vhostLink) takeFd() int {
	if len(l.fds) == 0 {
		return -1
	}
	fd := l.fds[0]
	l.fds = l.fds[1:]
	return fd
}

// request handles one request (header and payload).
func (l *vhostLink) request(m []byte) error {
	req := binary.LittleEndian.Uint32(m)
	flags := binary.LittleEndian.Uint32(m[4:])
	p := m[vuHeaderLen:]
	u64 := func() uint64 {
		if len(p) < 8 {
			return 0
		}
		return binary.LittleEndian.Uint64(p)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: request %d: %s", ErrVhostUser, req, fmt.Sprintf(format, args...))
	}
	// The ring a request names, checked.
	ring := func() (*virtq, int, error) {
		if len(p) < 4 {
			return nil, 0, bad("short payload")
		}
		i := int(binary.LittleEndian.Uint32(p) & 0xff)
		if i >= len(l.vq) {
			return nil, 0, bad("no queue %d (one queue pair)", i)
		}
		return &l.vq[i], i, nil
	}
	var err error
	replied := false
	switch req {
	case vuGetFeatures:
		replied, err = true, l.reply(req, VhostUserFeatures)
	case vuSetFeatures:
		f := u64()
		if f&^VhostUserFeatures != 0 {
			return bad("features %#x beyond those offered", f)
		}
		l.features = f
		l.hdrLen = 10
		if f&(virtioFVersion1|virtioNetFMrgRxbuf) != 0 {
			l.hdrLen = 12
		}
	case vuGetProtocolFeatures:
		replied, err = true, l.reply(req, vuProtocolReplyAck)
	case vuSetProtocolFeatures:
		l.protocol = u64() & vuProtocolReplyAck
	case vuGetQueueNum:
		replied, err = true, l.reply(req, 1)
	case vuSetOwner:
	case vuResetOwner:
		for i := range l.vq {
			l.resetQueue(i)
		}
	case vuSetMemTable:
		err = l.setMemTable(p)
	case vuSetVringNum:
		q, _, e := ring()
		if e != nil {
			return e
		}
		num := uint32(0)
		if len(p) >= 8 {
			num = binary.LittleEndian.Uint32(p[4:])
		}
		if num == 0 || num > maxQueueSize || num&(num-1) != 0 {
			return bad("queue size %d is not a power of two up to %d", num, maxQueueSize)
		}
		q.num = uint16(num)
		err = q.mapRings(&l.mem)
	case vuSetVringAddr:
		q, _, e := ring()
		if e != nil {
			return e
		}
		if len(p) < 40 {
			return bad("short payload")
		}
		q.descUVA = binary.LittleEndian.Uint64(p[8:])
		q.usedUVA = binary.LittleEndian.Uint64(p[16:])
		q.availUVA = binary.LittleEndian.Uint64(p[24:])
		if err = q.mapRings(&l.mem); err == nil && q.used != nil {
			q.usedIdx = binary.LittleEndian.Uint16(q.used[2:])
			q.published = q.usedIdx
		}
	case vuSetVringBase:
		q, _, e := ring()
		if e != nil {
			return e
		}
		if len(p) >= 8 {
			q.lastAvail = uint16(binary.LittleEndian.Uint32(p[4:]))
		}
	case vuGetVringBase:
		q, i, e := ring()
		if e != nil {
			return e
		}
		base := q.lastAvail
		l.stopQueue(i)
		var b [8]byte
		binary.LittleEndian.PutUint32(b[:], uint32(i))
		binary.LittleEndian.PutUint32(b[4:], uint32(base))
		replied, err = true, l.send(req, b[:])
	case vuSetVringKick, vuSetVringCall, vuSetVringErr:
		q, i, e := ring()
		if e != nil {
			return e
		}
		fd := -1
		if u64()&0x100 == 0 { // bit 8: no descriptor (polling, not offered)
			if fd = l.takeFd(); fd < 0 {
				return bad("no descriptor")
			}
		} else if req == vuSetVringKick {
			return bad("polling mode is not supported")
		}
		switch req {
		case vuSetVringKick:
			l.stopQueue(i)
			q.kick, q.started = fd, true
			if l.features&vhostUserFProtocolFeatures == 0 {
				q.enabled = true
			}
			unix.SetNonblock(fd, true)
			err = l.poller.Add(fd, unix.EPOLLIN, vuIDKick+uint32(i))
		case vuSetVringCall:
			if q.call >= 0 {
				unix.Close(q.call)
			}
			q.call = fd
		default:
			if fd >= 0 {
				unix.Close(fd) // errors on the ring are never reported
			}
		}
	case vuSetVringEnable:
		q, _, e := ring()
		if e != nil {
			return e
		}
		q.enabled = len(p) >= 8 && binary.LittleEndian.Uint32(p[4:]) != 0
	default:
		return fmt.Errorf("%w: unsupported request %d", ErrVhostUser, req)
	}
	if err != nil {
		return fmt.Errorf("%w: request %d: %v", ErrVhostUser, req, err)
	}
	if !replied && flags&vuNeedReply != 0 && l.protocol&vuProtocolReplyAck != 0 {
		return l.reply(req, 0)
	}
	return nil
}

// stopQueue stops a ring: no more kicks are watched until the next
// SET_VRING_KICK.
func (l *vhostLink) stopQueue(i int) {
	q := &l.vq[i]
	if q.kick >= 0 {
		unix.Close(q.kick) // which also takes it out of epoll
		q.kick = -1
	}
	q.started = false
}

// setMemTable maps the regions the front-end shares, replacing the old.
func (l *vhostLink) setMemTable(p []byte) error {
	if len(p) < 8 {
		return errors.New("short memory table")
	}
	n := int(binary.LittleEndian.Uint32(p))
	if n == 0 || n > vuMaxRegions || len(p) < 8+32*n || len(l.fds) < n {
		return fmt.Errorf("memory table of %d regions with %d descriptors", n, len(l.fds))
	}
	var mem guestMemory
	for i := range n {
		r := p[8+32*i:]
		gpa, size := binary.LittleEndian.Uint64(r), binary.LittleEndian.Uint64(r[8:])
		uva, off := binary.LittleEndian.Uint64(r[16:]), binary.LittleEndian.Uint64(r[24:])
		fd := l.takeFd()
		// Past the end of its file, a mapping faults (SIGBUS) when
		// touched: the region must lie within the file.
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || size == 0 || size > 1<<46 || off > 1<<46 || off+size > uint64(st.Size) {
			unix.Close(fd)
			mem.unmap()
			return fmt.Errorf("region %d: size %#x at offset %#x of a %d-byte file", i, size, off, st.Size)
		}
		m, err := unix.Mmap(fd, 0, int(size+off), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
		unix.Close(fd)
		if err != nil {
			mem.unmap()
			return fmt.Errorf("region %d: mmap: %v", i, err)
		}
		mem.regions = append(mem.regions, memRegion{gpa: gpa, uva: uva, mem: m[off:], mapping: m})
	}
	old := l.mem
	l.mem = mem
	var err error
	for i := range l.vq {
		if e := l.vq[i].mapRings(&l.mem); e != nil {
			err = e
		}
	}
	old.unmap()
	return err
}

// reply sends a 64-bit answer.
func (l *vhostLink) reply(req uint32, v uint64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], v)
	return l.send(req, b[:])
}

func (l *vhostLink) send(req uint32, payload []byte) error {
	var m [vuHeaderLen + 8]byte
	binary.LittleEndian.PutUint32(m[0:], req)
	binary.LittleEndian.PutUint32(m[4:], vuVersion|vuReply)
	binary.LittleEndian.PutUint32(m[8:], uint32(len(payload)))
	n := vuHeaderLen + copy(m[vuHeaderLen:], payload)
	_, err := unix.Write(l.fd, m[:n])
	return err
}
