package qemusock

import (
	"errors"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FuzzVhostUserRequests plays a hostile front-end: the fuzzer's bytes
// are a script of requests, well formed or raw, with descriptors of its
// choosing, mixed with what the guest (its rings and buffers) and the
// engine (frames both ways, kicks, turns over a real epoll set) do
// meanwhile. The link must neither crash (a fault in guest memory is
// the engine's to recover, GuestFault), hang nor spin; an error must say
// the front-end broke the protocol or hung up, and end the script, as
// it ends the connection; and once the link is closed, it must hold no
// descriptor or mapping, and have left no goroutine.
//
// Each step is an op byte, then its operands (missing bytes read as 0):
//
//	fuzzRequest: selector (fuzzRequests), descriptors (fuzzFdSets), flags,
//	             payload length (u16), payload
//	fuzzRaw:     descriptors, length (u16), bytes sent as they are
//	fuzzPoke:    guest memory offset (u16), length, bytes written there
//	fuzzTx:      descriptor index, length (u16): a TX chain offered
//	fuzzRx:      first descriptor, count, size (u16): RX chains offered
//	fuzzTurn:    the engine handles what epoll reports
//	fuzzSend:    length (u16): a frame queued, and flushed
//	fuzzSendV:   length (u16), how: a frame built in guest buffers
//	fuzzKick:    queue: the guest kicks, the engine takes the event
//	fuzzHangUp:  events: the front-end hangs up, epoll reports events
func FuzzVhostUserRequests(f *testing.F) {
	fuzzQueue(f)
	// No transfer of the device state waits for a stalled descriptor
	// (an eventfd, say) longer than this.
	defer func(idle time.Duration) { stateIdle = idle }(stateIdle)
	stateIdle = time.Millisecond
	f.Fuzz(func(t *testing.T, script []byte) {
		// A hang is a crash, with its input, not a fuzzer that stops.
		hung := time.AfterFunc(10*time.Second, func() {
			debug.SetTraceback("all")
			panic("FuzzVhostUserRequests: one input ran for 10 s")
		})
		defer hung.Stop()
		fds := openFds(t)
		h := &reqFuzz{t: t, f: newFrontEnd(t), p: newEpollPoller(t), in: script}
		h.f.l.Register(h.p)
		h.f.l.SetMigrator(&testMigrator{state: testFrame(100)})
		h.play()
		h.f.l.Close()
		h.f.l = newVhostLink(-1, 0)
		if n := openFds(t) - fds; n != 7 {
			t.Errorf("%d descriptors open once the link closed, want the front-end's 6 and the epoll set", n)
		}
		if n := len(mappings.ranges); n != 0 {
			t.Errorf("%d mappings of guest memory or logs left once the link closed", n)
		}
		if g := linkGoroutines(); g != "" {
			t.Errorf("a goroutine left running once the link closed:\n%s", g)
		}
	})
}

// linkGoroutines are the stacks of the goroutines the package's code
// started. Counting goroutines would not do: the fuzzing machinery's
// come and go.
func linkGoroutines() string {
	buf := make([]byte, 1<<18)
	stacks := strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n")
	var left []string
	for _, s := range stacks {
		if strings.Contains(s, "created by github.com/gopasst/gopasst/pkg/qemusock.") {
			left = append(left, s)
		}
	}
	return strings.Join(left, "\n\n")
}

// Script ops.
const (
	fuzzRequest = iota
	fuzzRaw
	fuzzPoke
	fuzzTx
	fuzzRx
	fuzzTurn
	fuzzSend
	fuzzSendV
	fuzzKick
	fuzzHangUp
	fuzzOps
)

// fuzzRequests are the requests a script's selector chooses among: all
// the link knows, and one it does not.
var fuzzRequests = [...]uint32{
	vuGetFeatures, vuSetFeatures, vuSetOwner, vuResetOwner, vuSetMemTable,
	vuSetLogBase, vuSetLogFd, vuSetVringNum, vuSetVringAddr, vuSetVringBase,
	vuGetVringBase, vuSetVringKick, vuSetVringCall, vuSetVringErr,
	vuGetProtocolFeatures, vuSetProtocolFeatures, vuGetQueueNum,
	vuSetVringEnable, vuSetDeviceStateFd, vuCheckDeviceState, 99,
}

// Descriptors a request may carry (a script's byte, modulo fuzzFdSets).
const (
	fuzzNoFd      = iota
	fuzzGuestMem  // the guest memory's memfd
	fuzzEventfd   // a new eventfd
	fuzzPipeRead  // a pipe's read end, its write end closed
	fuzzPipeWrite // a pipe's write end, its read end closed
	fuzzLog       // a new memfd of one page, for a log
	fuzzTooMany   // vuMaxFds new eventfds: too many with any other piece's
	fuzzKick0     // the front-end's kick and call eventfds, which the script signals
	fuzzKick1
	fuzzCall0
	fuzzCall1
	fuzzTwoRegions // the guest memory's memfd, twice
	fuzzFdSets
)

// reqFuzz runs one script.
type reqFuzz struct {
	t     *testing.T
	f     *frontEnd
	p     epollPoller
	in    []byte
	ended bool // the link reported an error: the engine closes it
}

func (h *reqFuzz) byte() byte {
	if len(h.in) == 0 {
		return 0
	}
	b := h.in[0]
	h.in = h.in[1:]
	return b
}

func (h *reqFuzz) u16() int { return int(h.byte()) | int(h.byte())<<8 }

// bytes takes the next n bytes of the script, or what is left.
func (h *reqFuzz) bytes(n int) []byte {
	b := h.in[:min(n, len(h.in))]
	h.in = h.in[len(b):]
	return b
}

// play runs the script, and a last engine turn, as the engine would:
// with faults in guest memory recovered, and the link's first error the
// end.
func (h *reqFuzz) play() {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil && !GuestFault(r) {
			panic(r)
		}
	}()
	for len(h.in) > 0 && !h.ended {
		h.step()
	}
	if !h.ended {
		h.turn()
	}
}

func (h *reqFuzz) step() {
	l := h.f.l
	switch h.byte() % fuzzOps {
	case fuzzRequest:
		req := fuzzRequests[int(h.byte())%len(fuzzRequests)]
		fds, flags := h.byte(), uint32(h.byte())
		p := h.bytes(h.u16())
		h.request(append(u32s(req, flags, uint32(len(p))), p...), fds)
	case fuzzRaw:
		fds := h.byte()
		h.request(h.bytes(h.u16()), fds)
	case fuzzPoke:
		at := h.u16()
		copy(h.f.mem[at:], h.bytes(int(h.byte())))
	case fuzzTx:
		i := int(h.byte())
		h.f.desc(txQueue, i, feBufs, uint32(h.u16()), 0, 0)
		h.f.offer(txQueue, uint16(i))
	case fuzzRx:
		first, n := int(h.byte()), int(h.byte()%16)
		h.f.rxBufs(first, n, uint32(h.u16()))
	case fuzzTurn:
		h.turn()
	case fuzzSend:
		n := min(h.u16(), MaxFrame)
		if b := l.Reserve(n); b != nil {
			clear(b)
			l.Commit(n)
		}
		h.ok(l.Flush())
	case fuzzSendV:
		h.sendV(min(h.u16(), MaxFrame-54), h.byte())
	case fuzzKick:
		q := int(h.byte() % 2)
		signal(h.f.kick[q])
		in, out, err := l.Event(vuIDKick+uint32(q), unix.EPOLLIN)
		h.handle(in, out, err)
	case fuzzHangUp:
		events := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
		if h.byte()%2 == 1 {
			events = unix.EPOLLHUP
		}
		unix.Shutdown(h.f.sock, unix.SHUT_WR)
		_, _, err := l.Event(vuIDSocket, events)
		if err == nil {
			h.t.Fatal("the front-end hung up, and the link goes on")
		}
		h.ok(err)
	}
}

// request sends m with the descriptors fds chooses, and has the link
// take what the socket holds, as the engine does when epoll reports it;
// the replies are read, so that the link never finds the socket full.
func (h *reqFuzz) request(m []byte, fds byte) {
	send, own := h.fds(fds)
	var oob []byte
	if len(send) > 0 {
		oob = unix.UnixRights(send...)
	}
	err := unix.Sendmsg(h.f.sock, m, oob, nil, unix.MSG_DONTWAIT)
	closeFds(own)
	if err != nil {
		h.t.Fatalf("sending a request: %v", err)
	}
	in, out, err := h.f.l.Event(vuIDSocket, unix.EPOLLIN)
	var b [256]byte
	for {
		if n, _, err := unix.Recvfrom(h.f.sock, b[:], unix.MSG_DONTWAIT); n <= 0 || err != nil {
			break
		}
	}
	h.handle(in, out, err)
}

// fds are the descriptors to send for a script's choice, and those of
// them the script opened for it, to close once sent.
func (h *reqFuzz) fds(choice byte) (send, own []int) {
	f := h.f
	eventfd := func() int {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			h.t.Fatal(err)
		}
		return fd
	}
	switch choice % fuzzFdSets {
	case fuzzGuestMem:
		return []int{f.memfd}, nil
	case fuzzEventfd:
		fd := eventfd()
		return []int{fd}, []int{fd}
	case fuzzPipeRead, fuzzPipeWrite:
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			h.t.Fatal(err)
		}
		return p[choice%fuzzFdSets-fuzzPipeRead : choice%fuzzFdSets-fuzzPipeRead+1], p[:]
	case fuzzLog:
		fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC)
		if err != nil {
			h.t.Fatal(err)
		}
		unix.Ftruncate(fd, logPage)
		return []int{fd}, []int{fd}
	case fuzzTooMany:
		// Not more: those a message has beyond the room the link
		// gives them are the kernel's to drop (qemu-user, which runs
		// the seeds on s390x, leaks them).
		for range vuMaxFds {
			own = append(own, eventfd())
		}
		return own, own
	case fuzzKick0, fuzzKick1:
		return []int{f.kick[choice%fuzzFdSets-fuzzKick0]}, nil
	case fuzzCall0, fuzzCall1:
		return []int{f.call[choice%fuzzFdSets-fuzzCall0]}, nil
	case fuzzTwoRegions:
		return []int{f.memfd, f.memfd}, nil
	}
	return nil, nil
}

// handle does what the engine does with an event's outcome: an error
// ends the link; room is flushed into; frames are read.
func (h *reqFuzz) handle(in, out bool, err error) {
	if !h.ok(err) {
		return
	}
	if out && !h.ok(h.f.l.Flush()) {
		return
	}
	for i := 0; in && i < 8; i++ { // as many Reads as the engine's turn allows
		if !h.read() {
			return
		}
	}
}

// turn handles what the epoll set reports until it reports nothing. The
// guest does nothing meanwhile, so a link still reported after as many
// rounds as a ring of the largest size takes spins.
func (h *reqFuzz) turn() {
	for range 64 {
		ids := h.p.ready(h.t)
		if len(ids) == 0 {
			return
		}
		for _, id := range ids {
			in, out, err := h.f.l.Event(uint32(id), unix.EPOLLIN)
			if h.handle(in, out, err); h.ended {
				return
			}
		}
	}
	h.t.Fatalf("the link spins: still ready %v", h.p.ready(h.t))
}

// read reads once, and takes the frames as the engine does; each frame's
// tail must lie in guest memory. It reports whether there may be more.
func (h *reqFuzz) read() bool {
	l := h.f.l
	if _, err := l.Read(); err == unix.EAGAIN || !h.ok(err) {
		return false
	}
	for {
		fr, err := l.Next()
		if !h.ok(err) || fr == nil {
			return !h.ended
		}
		for _, v := range l.Tail() {
			if !h.inGuest(v) {
				h.t.Fatalf("a tail piece outside guest memory: %+v", v)
			}
		}
	}
}

// inGuest tells whether v lies in one region of guest memory.
func (h *reqFuzz) inGuest(v unix.Iovec) bool {
	return slices.ContainsFunc(h.f.l.mem.regions, func(r memRegion) bool { return pieceIn(v, r.mem) })
}

// sendV builds up to two frames of 54+n bytes in the guest's buffers, as
// a TCP peek does, and flushes: how's bits choose a short commit, a
// large frame's segmentation, and a second frame.
func (h *reqFuzz) sendV(n int, how byte) {
	l := h.f.l
	const hdr = 54
	iov := make([]unix.Iovec, 0, 64)
	for range 1 + int(how>>7) {
		head, v := l.ReserveV(hdr, hdr+n, iov)
		if head == nil {
			break
		}
		clear(head[:min(len(head), hdr)])
		for _, p := range v[len(iov):] {
			clear(unsafe.Slice(p.Base, p.Len))
		}
		iov = v
		size := hdr + n - int(how&1)*n/2
		switch {
		case how&2 != 0 && l.GuestTSO(how&4 != 0):
			l.CommitTSO(size, TSO{IPv6: how&4 != 0, L4: 34, MSS: 1400})
		case how&8 != 0 && l.GuestCsum():
			l.CommitTSO(size, TSO{L4: 34})
		default:
			l.Commit(size)
		}
	}
	l.Cancel()
	h.ok(l.Flush())
}

// ok checks an error from the link: none, or one that ends the
// connection for what the front-end did (ended).
func (h *reqFuzz) ok(err error) bool {
	if err == nil {
		return true
	}
	if !errors.Is(err, ErrVhostUser) && !errors.Is(err, ErrHangUp) {
		h.t.Fatalf("%v: an error that is neither the front-end's nor a hang-up", err)
	}
	h.ended = true
	return false
}
