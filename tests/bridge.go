package tests

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bridge connects a tap device to a stream-socket backend (gopasst, passt)
// with QEMU's framing: it plays the part of QEMU's -netdev stream, and the
// kernel behind the tap plays the guest.
type Bridge struct {
	tap  *os.File
	conn net.Conn
	once sync.Once
	// ToGuest and ToHost spoil each direction of the link when set
	// (Impair); by default every frame passes, in order, once.
	ToGuest, ToHost impairer
	blackout        blackout
}

// blackout cuts both ways of a link from a point in the guest's frames
// until the guest has retransmitted a number of segments, not for a
// time, so that a run sees the same outage whatever the machine's load:
// the guest's retransmission timer has backed off as far each time.
type blackout struct {
	mu      sync.Mutex
	from    int               // the guest's frames, counted from Blackout's call, that pass first
	retrans int               // the guest's retransmissions lost before its next passes
	n       int               // the guest's frames so far
	sent    map[uint32]uint32 // the furthest sequence number each of the guest's flows sent, by ports
	on      bool              // the link is cut
}

// Blackout drops every frame both ways after the guest's from'th frame
// from this call, until retrans of the guest's TCP segments that repeat
// data it sent before have been dropped: the next one passes, and with
// it the link.
func (b *Bridge) Blackout(from, retrans int) {
	o := &b.blackout
	o.mu.Lock()
	defer o.mu.Unlock()
	o.from, o.retrans, o.n, o.sent, o.on = from, retrans, 0, map[uint32]uint32{}, false
}

// cut tells whether the link is blacked out for frame, counting the
// guest's frames and retransmissions.
func (o *blackout) cut(frame []byte, fromGuest bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.sent == nil {
		return false
	}
	if !fromGuest {
		return o.on
	}
	if o.n++; o.n == o.from+1 {
		o.on = true
	}
	if o.on && o.isRetransmission(frame) {
		if o.retrans--; o.retrans < 0 {
			o.on, o.sent = false, nil
		}
	}
	return o.on
}

// isRetransmission tells whether frame is an IPv4 TCP segment whose data
// its flow sent before, and notes how far the flow sent.
func (o *blackout) isRetransmission(frame []byte) bool {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 || frame[14+9] != 6 {
		return false
	}
	ip := frame[14:]
	ihl := int(ip[0]&15) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || ihl+20 > total {
		return false
	}
	tcp := ip[ihl:total]
	data := len(tcp) - int(tcp[12]>>4)*4
	if data <= 0 {
		return false
	}
	ports := binary.BigEndian.Uint32(tcp)
	end := binary.BigEndian.Uint32(tcp[4:]) + uint32(data)
	last, seen := o.sent[ports]
	if !seen || int32(end-last) > 0 {
		o.sent[ports] = end
		return false
	}
	return true
}

// Impairment spoils one direction of a bridge's link as netem would,
// which this kernel lacks, from its own seeded random source, so a
// failure can be run again.
type Impairment struct {
	Seed      uint64
	Drop      float64 // fraction of frames lost
	Dup       float64 // fraction of frames sent twice
	Reorder   float64 // fraction of frames held back behind the next ReorderBy
	ReorderBy int     // frames a held-back one waits for (at most 10 ms)
	Burst     float64 // fraction of frames that start a total loss...
	BurstLen  int     // ...of this many frames, within burstSpan
}

// burstSpan ends a burst that its frames have not ended: a burst of loss
// is an event in time. Counted in frames alone, one that began at a
// flow's last frames went on to swallow its retransmissions, which come
// ever further apart, for a minute and more: a blackout that no sender
// comes out of, not a burst.
const burstSpan = 100 * time.Millisecond

// impairer applies an Impairment to the frames one direction writes.
type impairer struct {
	mu    sync.Mutex
	imp   Impairment
	rng   *rand.Rand
	write func([]byte) error
	burst int       // frames left to lose in this burst
	until time.Time // when this burst ends, if its frames have not ended it
	held  [][]byte  // frames held back, oldest first
	wait  int       // frames to pass before the held ones go
	timer *time.Timer
}

// Impair sets the impairment of one direction of the link.
func (i *impairer) Impair(imp Impairment) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.imp, i.rng, i.burst = imp, rand.New(rand.NewPCG(imp.Seed, 0x9e3779b97f4a7c15)), 0
}

// send writes frame (which the caller may reuse) as the impairment has it.
func (i *impairer) send(frame []byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.rng == nil {
		return i.write(frame)
	}
	imp := i.imp
	now := time.Now()
	if i.burst > 0 && now.After(i.until) {
		i.burst = 0
	}
	if i.burst == 0 && i.rng.Float64() < imp.Burst {
		i.burst, i.until = imp.BurstLen, now.Add(burstSpan)
	}
	if i.burst > 0 {
		i.burst--
		return nil
	}
	if i.rng.Float64() < imp.Drop {
		return nil
	}
	if len(i.held) == 0 && i.rng.Float64() < imp.Reorder {
		i.held, i.wait = append(i.held, append([]byte(nil), frame...)), max(imp.ReorderBy, 1)
		i.timer = time.AfterFunc(10*time.Millisecond, i.flush)
		return nil
	}
	n := 1
	if i.rng.Float64() < imp.Dup {
		n = 2
	}
	for range n {
		if err := i.write(frame); err != nil {
			return err
		}
	}
	if len(i.held) > 0 {
		if i.wait--; i.wait == 0 {
			i.timer.Stop()
			return i.release()
		}
	}
	return nil
}

// flush sends what is held back when no frames came to pass it.
func (i *impairer) flush() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.release()
}

func (i *impairer) release() error {
	held := i.held
	i.held = nil
	for _, f := range held {
		if err := i.write(f); err != nil {
			return err
		}
	}
	return nil
}

// openTap creates a tap device (no packet information header) in the
// calling thread's network namespace.
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// NewBridge creates tap device tapName in guest and connects it to the
// backend's unix socket.
func NewBridge(guest *Netns, tapName, sock string) (*Bridge, error) {
	var tap *os.File
	var err error
	if nsErr := guest.do(func() { tap, err = openTap(tapName) }); nsErr != nil {
		return nil, nsErr
	}
	if err != nil {
		return nil, err
	}
	// A backend's socket file appears at bind(), a moment before it
	// listens: a refused connect right after start-up is tried again.
	conn, err := net.Dial("unix", sock)
	for i := 0; i < 100 && errors.Is(err, syscall.ECONNREFUSED); i++ {
		time.Sleep(20 * time.Millisecond)
		conn, err = net.Dial("unix", sock)
	}
	if err != nil {
		tap.Close()
		return nil, err
	}
	return startBridge(tap, conn), nil
}

// startBridge relays between tap and conn until either ends.
func startBridge(tap *os.File, conn net.Conn) *Bridge {
	b := &Bridge{tap: tap, conn: conn}
	b.ToHost.write = func(f []byte) error {
		if b.blackout.cut(f[4:], true) { // past the stream's length
			return nil
		}
		_, err := conn.Write(f)
		return err
	}
	b.ToGuest.write = func(f []byte) error {
		if b.blackout.cut(f, false) {
			return nil
		}
		// A tap write fails for a malformed frame or a down link; the
		// frame is dropped, as a NIC would drop it.
		if _, err := tap.Write(f); errors.Is(err, os.ErrClosed) {
			return err
		}
		return nil
	}
	go b.tapToSock()
	go b.sockToTap()
	return b
}

// tapToSock frames each packet read from the tap.
func (b *Bridge) tapToSock() {
	defer b.Close()
	buf := make([]byte, 4+65536+14)
	for {
		n, err := b.tap.Read(buf[4:])
		if err != nil {
			return
		}
		binary.BigEndian.PutUint32(buf, uint32(n))
		if err := b.ToHost.send(buf[:4+n]); err != nil {
			return
		}
	}
}

// sockToTap unframes the stream into tap writes.
func (b *Bridge) sockToTap() {
	defer b.Close()
	r := bufio.NewReaderSize(b.conn, 1<<20)
	buf := make([]byte, 65536+14)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || int(n) > len(buf) {
			return
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return
		}
		if err := b.ToGuest.send(buf[:n]); err != nil {
			return
		}
	}
}

// Close tears the bridge down; the tap device disappears with it.
func (b *Bridge) Close() {
	b.once.Do(func() {
		b.conn.Close()
		b.tap.Close()
	})
}
