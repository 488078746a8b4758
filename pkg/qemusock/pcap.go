package qemusock

import (
	"encoding/binary"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pcap writes frames to a capture file in the classic libpcap format
// (Ethernet, microsecond timestamps), which tcpdump, tshark and Wireshark
// read. Each frame is one writev, straight from where the frame lies
// (but for a tail in more pieces than a writev takes, copied once into
// flat), so a capture loses nothing if gopasst dies and costs no
// allocation.
type Pcap struct {
	f    *os.File
	hdr  [16]byte
	iov  []unix.Iovec
	flat []byte
}

// maxIov is the most pieces one writev takes (the kernel's UIO_MAXIOV).
const maxIov = 1024

// pcapSnaplen is the largest frame recorded whole.
const pcapSnaplen = MaxFrame

// CreatePcap creates (or truncates) the capture file at path and writes
// its header.
func CreatePcap(path string) (*Pcap, error) {
	f, err := OpenPcapFile(path)
	if err != nil {
		return nil, err
	}
	return NewPcap(f)
}

// OpenPcapFile creates (or truncates) a capture file for NewPcap, which
// may run in another process: the sandboxed daemon gets the descriptor.
func OpenPcapFile(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
}

// NewPcap writes the capture header to the empty file f and records to it.
func NewPcap(f *os.File) (*Pcap, error) {
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], 0xa1b2c3d4) // microsecond timestamps
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], pcapSnaplen)
	binary.LittleEndian.PutUint32(h[20:], 1) // LINKTYPE_ETHERNET
	if _, err := f.Write(h[:]); err != nil {
		f.Close()
		return nil, err
	}
	return &Pcap{f: f}, nil
}

// Write records one frame: frame, then the pieces of its tail, if the
// link left one in guest memory (Link.Tail).
func (p *Pcap) Write(frame []byte, tail ...unix.Iovec) {
	if len(frame) == 0 {
		return
	}
	now := time.Now()
	size := len(frame)
	for _, v := range tail {
		size += int(v.Len)
	}
	binary.LittleEndian.PutUint32(p.hdr[0:], uint32(now.Unix()))
	binary.LittleEndian.PutUint32(p.hdr[4:], uint32(now.Nanosecond()/1000))
	if size > pcapSnaplen {
		return // no link carries such a frame
	}
	binary.LittleEndian.PutUint32(p.hdr[8:], uint32(size))
	binary.LittleEndian.PutUint32(p.hdr[12:], uint32(size))
	p.iov = append(p.iov[:0], iovec(&p.hdr[0], len(p.hdr)),
		iovec(&frame[0], len(frame)))
	if len(p.iov)+len(tail) <= maxIov {
		p.iov = append(p.iov, tail...)
	} else {
		// A vhost-user guest's chain may have thousands of buffers: the
		// writev would fail, and the frame would be missing from the
		// capture though the engine took it.
		if p.flat == nil {
			p.flat = make([]byte, pcapSnaplen)
		}
		n := 0
		for _, v := range tail {
			n += copy(p.flat[n:], unsafe.Slice(v.Base, v.Len))
		}
		p.iov = append(p.iov, iovec(&p.flat[0], n))
	}
	// A failed write (a full disk) loses that frame from the capture, not
	// the frame itself.
	unix.Syscall(unix.SYS_WRITEV, p.f.Fd(), uintptr(unsafe.Pointer(&p.iov[0])), uintptr(len(p.iov)))
}

// Close closes the capture file.
func (p *Pcap) Close() error { return p.f.Close() }

// WithPcap returns l with every frame it carries, both ways, recorded
// in p.
func WithPcap(l Link, p *Pcap) Link { return &pcapLink{Link: l, p: p} }

// pcapLink records frames read as Next returns them, and frames to the
// guest as they are committed, from the reservations it handed out.
type pcapLink struct {
	Link
	p    *Pcap
	open [64][]byte // reservations not yet committed, oldest first
	n    int
}

func (l *pcapLink) Next() ([]byte, error) {
	f, err := l.Link.Next()
	if f != nil {
		l.p.Write(f, l.Link.Tail()...)
	}
	return f, err
}

func (l *pcapLink) Reserve(n int) []byte {
	b := l.Link.Reserve(n)
	if b != nil && l.n < len(l.open) {
		l.open[l.n] = b
		l.n++
	}
	return b
}

// ReserveV takes one contiguous reservation, recorded as Reserve's are:
// a capture shows every frame whole, at the cost of vhost-user's
// one-copy path.
func (l *pcapLink) ReserveV(hdr, n int, iov []unix.Iovec) ([]byte, []unix.Iovec) {
	return splitV(l.Reserve(n), hdr, iov)
}

// GuestTSO is off: ReserveV goes through the queue, where frames carry
// no segmentation.
func (l *pcapLink) GuestTSO(bool) bool { return false }

// GuestCsum is off, so that a capture shows every checksum complete.
func (l *pcapLink) GuestCsum() bool { return false }

func (l *pcapLink) CommitTSO(size int, _ TSO) { l.Commit(size) }

func (l *pcapLink) Commit(size int) {
	l.Link.Commit(size)
	if l.n > 0 {
		l.p.Write(l.open[0][:size])
		copy(l.open[:], l.open[1:l.n])
		l.n--
	}
}

func (l *pcapLink) Cancel() {
	l.Link.Cancel()
	l.n = 0
}
