// Package slirp is gopasst's engine: it terminates the guest's link layer
// (ARP, DHCP, NDP) and translates its TCP, UDP and ICMP traffic to ordinary
// host sockets, the way passt does.
//
// One goroutine runs the whole engine around a single epoll instance. Guest
// frames arrive on a link (qemusock.Link: QEMU's stream socket, a tap) and
// are dispatched to one file per protocol (arp.go, dhcp.go, icmp.go,
// udp.go, tcp.go). Host sockets report readiness through the same epoll
// set. No per-packet heap allocation
// happens in the steady state: frames are parsed through header views and
// built in place in the output queue.
package slirp

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"time"
	"unsafe"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// yieldEvery is how often an engine with recent traffic passes through
// the Go scheduler: just under the runtime's 10 ms bound (forcePreemptNS)
// on a goroutine's turn. A goroutine past it is preempted (wait), or,
// found in epoll_wait, loses its processor, and each such retake sets the
// runtime's monitor thread (sysmon) polling every 20 µs again: that thread
// cost 10-15% of the engine's CPU during a download. The engine's process
// has one processor (cmd/gopasst), so a yield with nothing else to run
// hands the goroutine back to its own thread: on a thread of its own
// (LockOSThread), each yield and each preemption took four futex calls
// and two other threads' wake-ups, a third of the CPU gopasst spent at
// 50 Mbit/s.
const yieldEvery = 9 * time.Millisecond

// rawWaitMax bounds a raw wait (wait), which keeps the engine's process's
// one processor: the control socket's goroutines and the signal handler
// run only when the loop yields, so while traffic is recent, a control
// request or a SIGTERM waits this long at most. Bursts at 50 Mbit/s come
// 10-20 ms apart: a raw wait that ended every yieldEvery woke the engine
// twice for nothing for each wake-up with traffic.
const rawWaitMax = 50 * time.Millisecond

// After a turn that moved TCP payload, the loop may poll epoll without
// blocking, for up to spinMax, before it sleeps. Where the next segment,
// ACK or answer mostly comes sooner, polling saves a sleep and a wake-up,
// which on a virtual CPU that halts when idle costs more than the turn:
//   - In bulk through the tap it costs the engine less CPU: on the netns
//     harness at MTU 65520, host to guest, 21,000 sleeps in 4 s became
//     5,000 and CPU per GB fell by a fifth; 300 µs cost more than it saved.
//   - In request/response traffic it buys latency with CPU. An engine that
//     polls throughout a transaction never sleeps: pasta's TCP_RR ran 1.3
//     times as fast as without it, at 1.4 times the CPU per transaction.
//   - Spliced bulk has no per-byte work of ours to save, and polling took
//     the CPU its two ends needed (ns to host 0.91 of the rate, at 1.26 of
//     the CPU per GB): only a turn that spliced a short message counts.
//   - Where the next event mostly comes later, polling is CPU thrown away:
//     a TCG guest's uploads cost twice the CPU with it.
//
// So a poll that catches an event scores one, one that runs out loses
// two, and the loop polls only while the score is at least spinOn, that
// is while two thirds or more catch one; below it, one turn in spinProbe
// that moved payload polls, to learn whether that has changed. The score
// starts at nothing: an engine polls once probes show that it pays (see
// docs/benchmarks.md). An idle engine never polls.
const (
	spinMax      = 100 * time.Microsecond
	spinOn       = 4
	spinScoreMax = 16
	spinProbe    = 64
)

// spin is the loop's polling state.
type spin struct {
	movedAt time.Duration // the last turn that moved payload
	polling bool          // since then, turns poll
	score   int
	skipped int // turns that moved payload and did not poll since the last that did
}

// poll tells whether the next turn polls rather than waits. A poll that
// has run out is a miss.
func (s *spin) poll(now time.Duration) bool {
	if s.polling && now-s.movedAt >= spinMax {
		s.polling = false
		s.score = max(s.score-2, 0)
	}
	return s.polling
}

// turned records a turn: whether it had events, how much payload it
// moved. A poll that had events is a hit.
func (s *spin) turned(now time.Duration, events bool, moved int) {
	if s.polling && events {
		s.polling = false
		s.score = min(s.score+1, spinScoreMax)
	}
	if moved == 0 {
		return
	}
	s.movedAt = now
	if s.skipped++; s.score >= spinOn || s.skipped >= spinProbe {
		s.polling, s.skipped = true, 0
	}
}

// tick is the timer granularity for retransmissions and expiry.
const tick = 100 * time.Millisecond

// idleTick is the granularity when nothing is due sooner than in minutes
// (quiet): each wake-up of an idle engine wakes the Go runtime's monitor
// thread too, and at tick an engine waiting for its guest cost 2 to 4 ms
// of CPU a second, where passt's cost none measurable.
const idleTick = time.Second

// Stats counts what the engine has seen; malformed input is counted, not
// fatal.
type Stats struct {
	FramesIn, FramesOut uint64
	Malformed           uint64
	Unhandled           uint64
	Dropped             uint64 // host datagrams too large for the guest's MTU, with no room on the link, or from a peer the guest never sent to; guest datagrams whose fragments timed out or gave their place
	Clients             uint64
}

// Engine is one gopasst instance serving one guest at a time.
type Engine struct {
	cfg      Config
	epfd     int
	stopFd   int
	listenFd int

	// link is the guest's, nil while no guest is attached. When it has
	// no room, flows that had data to send wait in tcp.tapWaiters.
	link qemusock.Link

	logged [logKinds]time.Duration // when each message logged at most every 10 s (capTCP...) last was

	acceptPaused []epollRef // listeners out of the epoll set until the next tick (pauseAccept)

	guestMAC  [6]byte
	addrSeen4 netip.Addr    // the guest's IPv4 address in use (seen4)
	addrSeen6 netip.Addr    // the guest's global IPv6 address in use (seen6)
	nextRA    time.Duration // when the next unsolicited RA is due
	now       time.Duration // since start, monotonic, refreshed once per loop turn
	start     time.Time
	lastTick  time.Duration
	lastBusy  time.Duration // when a turn last had events
	yielded   time.Duration // when the loop last passed through the scheduler
	moved     int           // TCP payload this turn translated, either way
	spliced   int           // bytes this turn spliced, either way
	spin      spin

	tcp  tcpTable
	udp  udpTable
	icmp icmpTable
	frag fragPool // the guest's fragments in reassembly (frag.go)
	fwd  fwdTable
	host Host // binds forwards and reaches what is outside the sandbox

	splice   flowTable[int, spliceConn] // pasta's loopback path, by its first descriptor (splice.go)
	spliceLn []spliceListener           // -T and -U sockets in the namespace; fd -1 when closed

	spliceUDP   flowTable[spliceUDPKey, spliceUDPFlow] // -U's senders (splice_udp.go)
	spliceBuf   [1 << 16]byte                          // one -U datagram, or what spliceUrgent reads
	splicePipes splicePool                             // empty pipes closed pairs left, for the next

	repair *tcprepair.Client // the TCP_REPAIR helper, nil when none is connected

	neigh neighTable // the host's neighbours' MACs, as the guest should see them (neigh.go)

	running bool  // Run was called: a forward busy now is the caller's error
	fatal   error // ends Run: the guest is here and a held forward cannot be bound

	fdDir *os.File // /proc/self/fd, for fdRoom; nil without /proc

	callFd int         // eventfd: calls are queued for the loop
	calls  chan func() // functions to run on the loop (control plane)

	// tail is the data of the TCP segment at hand past the frame's head,
	// left in guest memory (frameInput); whole is where any other frame
	// with a tail is made whole. frame is the frame at hand (tapInput): a
	// segment past a gap keeps for the end of the batch (tcpRetryAhead).
	tail  []unix.Iovec
	whole [qemusock.MaxFrame]byte
	frame []byte

	dhcpBuf  [576 - header.IPv4MinLen - header.UDPLen]byte // a reply fits the 576-byte datagram every client takes (RFC 2131 2), as passt's
	dhcp6Buf [1024]byte
	duidBuf  [10]byte
	events   [128]unix.EpollEvent
	evStats  eventStats // --stats

	Stats Stats
}

var broadcastMAC = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// stationMAC tells whether m can be one station's: neither a group's
// (multicast, broadcast) nor all zeroes.
func stationMAC(m [6]byte) bool { return m[0]&1 == 0 && m != [6]byte{} }

// New creates an engine that accepts clients on the listening socket lfd,
// or, with lfd < 0, one that serves the tap given to AttachTap.
func New(cfg Config, lfd int) (_ *Engine, err error) {
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	cfg.MaxTCP = cmp.Or(cfg.MaxTCP, DefaultMaxTCP)
	cfg.MaxUDP = cmp.Or(cfg.MaxUDP, DefaultMaxUDP)
	cfg.MaxICMP = cmp.Or(cfg.MaxICMP, DefaultMaxICMP)
	if cfg.MTU < MinMTU || cfg.MTU > DefaultMTU {
		return nil, fmt.Errorf("MTU %d out of range %d-%d", cfg.MTU, MinMTU, DefaultMTU)
	}
	if cfg.has6() && cfg.MTU < minMTU6 {
		return nil, fmt.Errorf("MTU %d is below IPv6's minimum of %d", cfg.MTU, minMTU6)
	}
	if !cfg.has4() && !cfg.has6() {
		return nil, errors.New("neither IPv4 nor IPv6 is configured")
	}
	e := &Engine{
		cfg: cfg, epfd: -1, stopFd: -1, callFd: -1, listenFd: lfd,
		guestMAC:  broadcastMAC,
		addrSeen4: cfg.Addr4,
		start:     time.Now(),
		calls:     make(chan func(), 16),
		host:      cmp.Or[Host](cfg.Host, &LocalHost{Freebind: cfg.Freebind}),
	}
	defer func() {
		if err != nil { // the listening socket stays the caller's
			for _, fd := range []int{e.epfd, e.stopFd, e.callFd} {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
	}()
	if e.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	e.fdRoomAhead(fdTableAhead)
	if e.stopFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if e.callFd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := e.epollAdd(e.callFd, unix.EPOLLIN, epollRef{kind: kindCall}); err != nil {
		return nil, err
	}
	if err := e.epollAdd(e.stopFd, unix.EPOLLIN, epollRef{kind: kindStop}); err != nil {
		return nil, err
	}
	if cfg.RepairListen != nil {
		if err := e.epollAdd(int(cfg.RepairListen.Fd()), unix.EPOLLIN, epollRef{kind: kindRepair, idx: repairListen}); err != nil {
			return nil, err
		}
	}
	if lfd >= 0 {
		if err := e.epollAdd(lfd, unix.EPOLLIN, epollRef{kind: kindListen}); err != nil {
			return nil, err
		}
	}
	e.fdDir, _ = os.Open("/proc/self/fd")
	e.tcp.init()
	e.udp.init()
	e.icmp.init()
	e.frag.init()
	e.fwd.init()
	e.splice.init()
	e.spliceUDP.init()
	e.neighInit()
	return e, nil
}

// AttachTap makes the tap device fd (non-blocking, without packet
// information) the guest, for a program given its own network namespace.
// Call it before Run.
func (e *Engine) AttachTap(fd int) error {
	return e.attach(qemusock.NewTap(fd))
}

// AttachStream makes the connected stream socket fd (unix or vsock) the
// guest's link, with the framing its first bytes tell, unless a guest is
// already attached: then fd is closed. Call it on the engine's goroutine
// (Call), as the listener does.
func (e *Engine) AttachStream(fd int) {
	if e.link != nil {
		if e.logDue(secondClient) {
			e.logf("rejecting a second client: one guest at a time")
		}
		unix.Close(fd)
		return
	}
	newLink := e.cfg.NewLink
	if newLink == nil {
		newLink = qemusock.NewDetectStream
	}
	l := newLink(fd)
	if err := e.attach(l); err != nil {
		e.warnf("client rejected: %v", err)
		l.Close()
		return
	}
	e.logf("client connected")
}

// Messages a guest can set off again and again, so logged at most every
// 10 s (logLimited): the flow caps, for atCap, and a guest flow whose host
// socket could not be opened, or whose --unix-fwd or --cmd-fwd could not
// be reached; the host's neighbour changes lost or unread, and its
// neighbours past our table's bound, which a busy link can set off as
// often; and a second client, which any process of a vsock guest, or of
// the host, may connect again and again while the guest is attached.
const (
	capTCP = iota
	capUDP
	capICMP
	openTCP
	openUDP
	openICMP
	dialSpecial
	neighLost
	neighFull
	secondClient
	logKinds
)

var capNames = [...]string{"TCP connections (--max-tcp)", "UDP flows (--max-udp)", "ICMP echo identifiers (--max-icmp)"}

// atCap reports whether a guest with n flows of a kind may open no more,
// and says so in the log, at most every 10 s per kind.
func (e *Engine) atCap(kind, n, limit int) bool {
	if n < limit {
		return false
	}
	e.logLimited(kind, "the guest has %d %s, its cap: refusing new ones", n, capNames[kind])
	return true
}

// logLimited logs a message of a kind at most every 10 s.
func (e *Engine) logLimited(kind int, format string, args ...any) {
	if e.logDue(kind) {
		e.warnf(format, args...)
	}
}

// logDue tells whether a message of a kind may be logged now, and counts
// it logged if so. A caller whose arguments would be boxed, allocating
// on every call, asks it first.
func (e *Engine) logDue(kind int) bool {
	if e.logged[kind] == 0 || e.now-e.logged[kind] >= 10*time.Second {
		e.logged[kind] = max(e.now, 1)
		return true
	}
	return false
}

// mtu is the guest's MTU: the configured one, or less when the link
// carries no larger frames (a gvforwarder client).
func (e *Engine) mtu() int {
	if e.link != nil {
		return min(e.cfg.MTU, e.link.MaxFrame()-header.EthernetLen)
	}
	return e.cfg.MTU
}

// Call runs fn on the engine's goroutine and waits for it: the control
// socket changes forwards this way while Run is serving.
func (e *Engine) Call(fn func()) {
	done := make(chan struct{})
	e.calls <- func() { fn(); close(done) }
	wake(e.callFd)
	<-done
}

// runCalls runs the functions Call queued. Their callers' goroutines run
// at once after, not at the loop's next yield, which a raw wait can put
// off by rawWaitMax.
func (e *Engine) runCalls() {
	var buf [8]byte
	unix.Read(e.callFd, buf[:])
	for {
		select {
		case fn := <-e.calls:
			fn()
		default:
			runtime.Gosched()
			return
		}
	}
}

// Stop makes Run return; it is safe to call from any goroutine.
func (e *Engine) Stop() { wake(e.stopFd) }

// wake adds one to an eventfd's counter (a native-endian 64-bit value),
// which makes epoll report it.
func wake(fd int) {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	unix.Write(fd, one[:])
}

// logf logs an informational message, which Quiet leaves out.
func (e *Engine) logf(format string, args ...any) {
	if !e.cfg.Quiet {
		e.warnf(format, args...)
	}
}

// warnf logs what --quiet keeps: a warning or an error (something the
// guest lost), or what was asked for (--stats).
func (e *Engine) warnf(format string, args ...any) {
	if e.cfg.Log != nil {
		e.cfg.Log.Printf(format, args...)
	}
}

func (e *Engine) debugf(format string, args ...any) {
	if e.cfg.Debug {
		e.logf(format, args...)
	}
}

// Run serves clients until Stop is called or, in one-off mode, the first
// client goes away.
func (e *Engine) Run() error {
	// A vhost-user front-end may shrink the file under guest memory: a
	// touch of it then faults, which this makes a panic that turn
	// recovers from, rather than a crash.
	debug.SetPanicOnFault(true)
	e.running = true
	// As the engine ends, its flows end as when their guest goes: a peer
	// gets what the guest sent, then a reset, not the FIN that closing
	// their sockets at our exit would send for a guest that never did;
	// so do both ends of a spliced pair.
	defer e.tcpLingerRelease()
	defer e.spliceCloseAll()
	defer e.tcp.closeAll(e)
	for {
		if done, err := e.turn(e.pollTimeout()); done || err != nil {
			return err
		}
	}
}

// pollTimeout is how long, in milliseconds, the next turn may wait for
// events: until the next tick, a delayed ACK, or not at all right after
// payload moved (spin).
func (e *Engine) pollTimeout() int {
	switch {
	case e.spin.poll(e.now):
		return 0
	case len(e.tcp.ackDelayed) > 0:
		return int(tcpAckDelay / time.Millisecond)
	case e.quiet():
		return int(idleTick / time.Millisecond)
	}
	return int(tick / time.Millisecond)
}

// quiet tells whether no timer falls due within idleTick: no TCP flow
// (whose timers count in seconds), no listener paused for want of a
// descriptor, and no RA due. What is left expires in minutes.
func (e *Engine) quiet() bool {
	return e.tcp.count == 0 && len(e.acceptPaused) == 0 && (!e.sendsRA() || e.nextRA-e.now > idleTick)
}

// turn waits up to timeout milliseconds for events, handles them, runs
// due timers and sends queued frames. It reports whether Run should end.
func (e *Engine) turn(timeout int) (done bool, err error) {
	defer e.guestFault(&done)
	// Its own error: a guest fault recovered later in the turn returns
	// err as it is, and an interrupted wait is no reason to stop.
	n, werr := e.wait(timeout)
	if werr != nil && werr != unix.EINTR {
		return true, fmt.Errorf("epoll_wait: %w", werr)
	}
	e.now = time.Since(e.start)
	// Traffic keeps the waits raw (wait); a control request alone does
	// not, so that in an engine without traffic the next one finds the
	// processor free.
	if n > 1 || n == 1 && refOf(&e.events[0]).kind != kindCall {
		e.lastBusy = e.now
	}
	for i := 0; i < n; i++ {
		ev := &e.events[i]
		ref := refOf(ev)
		e.evStats.counts[ref.kind%uint8(len(kindNames))]++
		switch ref.kind {
		case kindStop:
			return true, nil
		case kindListen:
			e.acceptClient()
		case kindLink:
			if e.link == nil {
				break // the guest left earlier in this batch
			}
			if done := e.linkEvent(uint32(ref.idx), ev.Events); done && e.cfg.OneOff {
				return true, nil
			}
		case kindTCP:
			e.tcpSockEvent(ref.idx, ref.gen, ev.Events)
		case kindUDP:
			e.udpSockEvent(ref.idx, ref.gen, ev.Events)
		case kindICMP:
			e.icmpSockEvent(ref.idx, ref.gen)
		case kindTCPListen, kindUDPListen:
			e.listenerEvent(ref.idx)
		case kindCall:
			e.runCalls()
		case kindRepair:
			e.repairEvent(ref.idx)
		case kindSplice:
			e.spliceEvent(ref.idx, ref.gen, ev.Events)
		case kindSpliceListen:
			e.spliceListenEvent(ref.idx, ev.Events)
		case kindSpliceUDP:
			e.spliceUDPEvent(ref.idx, ref.gen, ev.Events)
		case kindNeigh:
			e.neighRead()
		}
	}
	if e.fatal != nil {
		return true, e.fatal
	}
	e.logStats(n)
	if e.now-e.lastTick >= tick {
		e.lastTick = e.now
		e.resumeAccept()
		e.tcpTimers()
		e.udpExpire()
		e.icmpExpire()
		e.udpInExpire()
		e.fragExpire()
		e.spliceUDPExpire(-1)
		e.splicePipesExpire()
		e.raTimer()
		e.neighTick()
	}
	if len(e.tcp.ackDelayed) > 0 {
		e.tcpDelayedAcks()
	}
	e.flush()
	moved := e.moved
	if e.spliced < spliceShort {
		moved += e.spliced // a short message, not bulk (spin)
	}
	e.spin.turned(e.now, n > 0, moved)
	e.moved, e.spliced = 0, 0
	return false, nil
}

// wait is epoll_wait. While traffic is recent (within a tick) it is a raw
// system call, which the Go runtime does not see as one. Seen, a wait of
// more than 10 ms since the engine's goroutine last passed through the
// scheduler had the runtime's monitor thread (sysmon) take the engine's
// processor and then poll every 20 µs for a millisecond and more: a
// sender paced at 50 Mbit/s, which pauses 10-20 ms between bursts, had
// that happen at each pause, and the monitor thread took two thirds of
// gopasst's CPU, five times passt's. Unseen, a wait that outlasts 10 ms
// has the runtime ask for the goroutine's preemption: the engine's
// process turns the preemption signal off (cmd/gopasst), so the wait goes
// on, and the goroutine yields at its next call after it. (With the
// signal, the wait ends early, as if interrupted, and the loop goes on.)
// No other goroutine of the process runs meanwhile, so a raw wait lasts
// rawWaitMax at most. An idle engine waits as a system call, so that the
// monitor thread, with nothing to do, sleeps too.
func (e *Engine) wait(timeout int) (int, error) {
	if e.now-e.lastBusy >= tick {
		return unix.EpollWait(e.epfd, e.events[:], timeout)
	}
	if e.now-e.yielded >= yieldEvery {
		runtime.Gosched()
		e.yielded = e.now
	}
	timeout = min(timeout, int(rawWaitMax/time.Millisecond))
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(e.epfd), uintptr(unsafe.Pointer(&e.events[0])),
		uintptr(len(e.events)), uintptr(timeout), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (e *Engine) acceptClient() {
	fd, err := qemusock.Accept(e.listenFd)
	if err != nil {
		if outOfFds(err) {
			e.pauseAccept(e.listenFd, epollRef{kind: kindListen})
		}
		return
	}
	e.AttachStream(fd)
}

// outOfFds tells whether an accept failed for want of a descriptor.
func outOfFds(err error) bool { return err == unix.EMFILE || err == unix.ENFILE }

// pauseAccept stops watching a listener whose accept found no descriptor
// free (outOfFds) until the next tick (resumeAccept): its pending
// connection stays queued, and the listener, reported ready at every turn
// and failing each time, would spin the loop.
func (e *Engine) pauseAccept(fd int, ref epollRef) {
	e.debugf("accept: out of descriptors: trying again in %v", tick)
	if e.epollMod(fd, 0, ref) == nil {
		e.acceptPaused = append(e.acceptPaused, ref)
	}
}

// resumeAccept watches the listeners pauseAccept left out again.
func (e *Engine) resumeAccept() {
	for _, ref := range e.acceptPaused {
		fd := e.listenFd
		switch ref.kind {
		case kindTCPListen:
			if int(ref.idx) >= len(e.fwd.listeners) || e.fwd.listeners[ref.idx] == nil {
				continue // the forward was removed meanwhile
			}
			fd = e.fwd.listeners[ref.idx].fd
		case kindSpliceListen:
			if fd = e.spliceLn[ref.idx].fd; fd < 0 {
				continue
			}
		case kindRepair:
			fd = int(e.cfg.RepairListen.Fd())
		}
		e.epollMod(fd, unix.EPOLLIN, ref)
	}
	e.acceptPaused = e.acceptPaused[:0]
}

// attach makes l the guest's link. On failure nothing changes, so the
// next client is served.
func (e *Engine) attach(l qemusock.Link) error {
	if err := l.Register(linkPoller{e}); err != nil {
		return err
	}
	if m, ok := l.(qemusock.Migratable); ok {
		m.SetMigrator(e)
	}
	if e.cfg.Pcap != nil {
		l = qemusock.WithPcap(l, e.cfg.Pcap)
	}
	e.link = l
	// A new guest hears from its router once it shows itself (tapInput),
	// not before: a frame queued for a link not yet running reaches the
	// guest only when it starts, which at a migration's destination is
	// the moment the moved guest resumes, and it has no use for an RA
	// then (docs/benchmarks.md).
	e.nextRA = e.now + raRepeat
	e.Stats.Clients++
	return nil
}

// closeClient forgets the guest and every flow it had: a new client is a
// new guest that knows none of them.
func (e *Engine) closeClient(why string) {
	e.logf("client disconnected: %s (frames in %d, out %d, malformed %d, unhandled %d, dropped by the link %d)",
		why, e.Stats.FramesIn, e.Stats.FramesOut, e.Stats.Malformed, e.Stats.Unhandled, e.link.Dropped())
	e.link.Close()
	e.link = nil
	e.guestMAC = broadcastMAC
	e.addrSeen4 = e.cfg.Addr4
	e.addrSeen6 = netip.Addr{}
	e.tcp.closeAll(e)
	e.udp.closeAll(e)
	e.icmp.closeAll(e)
	e.fragDropOlder(-1) // the next guest's fragments would complete them
}

// guestFault drops the client whose guest memory faulted under the engine
// (qemusock.GuestFault); any other panic goes on.
func (e *Engine) guestFault(done *bool) {
	if r := recover(); r != nil {
		if e.link == nil || !qemusock.GuestFault(r) {
			panic(r)
		}
		e.closeClient(fmt.Sprint("guest memory: ", r))
		*done = e.cfg.OneOff
	}
}

// linkEvent handles readiness of the guest's link and reports whether
// the guest is gone.
func (e *Engine) linkEvent(id uint32, events uint32) bool {
	in, out, err := e.link.Event(id, events)
	if err != nil {
		e.closeClient(err.Error())
		return true
	}
	if out {
		if e.flush(); e.link == nil {
			return true
		}
	}
	// Read a bounded number of times so host sockets get their turn.
	for i := 0; in && i < 8; i++ {
		n, err := e.link.Read()
		if err == unix.EAGAIN {
			break
		}
		if err != nil || n == 0 {
			if err == nil {
				err = errors.New("end of stream")
			}
			e.closeClient(err.Error())
			return true
		}
		for {
			frame, err := e.link.Next()
			if err != nil {
				e.Stats.Malformed++
				e.closeClient(err.Error())
				return true
			}
			if frame == nil {
				break
			}
			e.Stats.FramesIn++
			e.frameInput(frame, e.link.Tail())
		}
		e.inputDone()
	}
	return false
}

// inputDone ends a batch of guest frames: what they acknowledged, and
// what they owe an acknowledgement or a datagram, is acted on once per
// flow rather than once per frame.
func (e *Engine) inputDone() {
	e.tcpRetryAhead()
	e.tcpAckedFlush()
	e.tcpFlushAcks()
	e.udpFlush()
}

// flush sends queued frames, and lets flows that waited for room queue
// more, until the link is full or nobody waits. Flows resume even when
// nothing was queued: over vhost-user, room is the guest's RX buffers,
// which its kick announces, and frames built in them wait in no queue.
func (e *Engine) flush() {
	for e.link != nil {
		if e.link.Pending() > 0 {
			if err := e.link.Flush(); err != nil {
				e.closeClient(err.Error())
				return
			}
			if e.link.Pending() > 0 {
				return
			}
		}
		if len(e.tcp.tapWaiters) == 0 {
			return
		}
		e.tcpResumeWaiters()
		if e.link == nil || e.link.Pending() == 0 {
			return // no room came, or the flows had nothing to send
		}
	}
}

// socketFamily is the address family of a host socket that reaches a.
func socketFamily(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
