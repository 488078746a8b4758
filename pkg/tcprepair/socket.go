// Package tcprepair moves a connected TCP socket from one process (or
// host) to another with the kernel's TCP_REPAIR: the source reads what
// the connection is (sequence numbers, windows, options, queued data)
// from a socket in repair mode, the destination makes a socket that is
// the same connection without a handshake. Setting repair mode needs
// CAP_NET_ADMIN, which gopasst's engine never has: a helper sets it (see
// helper.go), as passt-repair does for passt.
//
// The facts are the kernel's (net/ipv4/tcp.c, do_tcp_setsockopt and
// do_tcp_getsockopt in repair mode), in the order passt uses them.
package tcprepair

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxQueue bounds each queue a State carries: a stream from another
// host that claims more is refused, and a source socket with more is not
// moved. It is passt's bound, so a stream passt accepts, this accepts.
const MaxQueue = 64 << 20

// TCP states (include/net/tcp_states.h) that change what is dumped.
const (
	stateEstablished = 1
	stateFinWait1    = 4
	stateFinWait2    = 5
	stateCloseWait   = 8
	stateLastAck     = 9
	stateClosing     = 11
)

// tcpi_options bits (include/uapi/linux/tcp.h).
const (
	OptTimestamps = 1
	OptSACK       = 2
)

// Queues selected with TCP_REPAIR_QUEUE.
const (
	recvQueue = 1
	sendQueue = 2
)

// State is one connection as a socket in repair mode tells it: passt's
// struct tcp_tap_transfer_ext, plus the queued bytes. Sequence numbers
// are those of the first queued byte, so the queues are re-sent from
// there.
type State struct {
	TCPState  uint8 // tcpi_state; 0 means the source could not dump it
	Options   uint8 // tcpi_options: OptTimestamps, OptSACK
	SndWScale uint8
	RcvWScale uint8
	MSS       uint32 // the MSS clamp (TCP_MAXSEG)
	Timestamp uint32 // RFC 7323 clock, if OptTimestamps

	SndWL1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32 // TCP_REPAIR_WINDOW

	SeqSnd  uint32 // sequence of SendQ[0]
	SeqRcv  uint32 // sequence of RecvQ[0]
	NotSent uint32 // the tail of SendQ that was never sent
	SendQ   []byte // sent but not acknowledged, then not sent
	RecvQ   []byte // received, not read

	// What Dump counted before its first dump (unsent), which Redump
	// counts from too.
	notsent0 uint32
	sent0    uint64
}

// repairWindow is struct tcp_repair_window.
type repairWindow struct {
	SndWL1, SndWnd, MaxWindow, RcvWnd, RcvWup uint32
}

func getsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) (int, error) {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(l), nil
}

func setsockopt(fd, level, opt int, p unsafe.Pointer, size uintptr) error {
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(p), size, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// ioctlUint32 reads a C int the kernel writes (SIOCINQ, SIOCOUTQ, ...).
func ioctlUint32(fd int, req uint) (uint32, error) {
	return unix.IoctlGetUint32(fd, req)
}

// Dump reads the connection of fd, which must be in repair mode, and
// leaves it so: the caller then closes it (closing a socket in repair
// mode sends nothing to the peer) or keeps it until the destination has
// taken over. fd must not use SO_PEEK_OFF: the queues are peeked from
// their start.
//
// A socket in repair mode still takes what its peer sends, between the
// calls a dump makes: the receive queue's sequence, read last, would then
// be past the bytes peeked, and the TCP state and windows, read first,
// before a FIN. So a dump is taken again, a few times at most, until the
// receive sequence did not move while it was taken.
func Dump(fd int) (*State, error) {
	// The bytes not sent, counted before a dump selects the send queue
	// (see dump).
	notsent, sent, err := unsent(fd)
	if err != nil {
		return nil, err
	}
	return dumpFrom(fd, notsent, sent)
}

// Redump reads fd's connection again, as Dump read it into prev: the
// bytes not sent count from what Dump counted before prev's dumps, which
// may have had the kernel take them as sent (see dump).
func Redump(fd int, prev *State) (*State, error) {
	return dumpFrom(fd, prev.notsent0, prev.sent0)
}

func dumpFrom(fd int, notsent uint32, sent uint64) (*State, error) {
	for range 8 {
		start, err := recvSeq(fd)
		if err != nil {
			return nil, err
		}
		st, err := dump(fd, notsent, sent)
		if err != nil || st.rcvEnd() == start {
			return st, err
		}
	}
	return nil, errors.New("the peer kept sending while the socket was dumped")
}

// afterInfo, for tests, runs in each dump once it has read the TCP
// state: what the peer sends then arrives in the dump's midst.
var afterInfo func()

// afterSendQueue, for tests, runs in each dump once the send queue is
// selected: what the peer acknowledges then makes the kernel take the
// whole queue as sent.
var afterSendQueue func()

// dump takes the connection once; notsent0 and sent0 are what unsent
// read before any dump.
func dump(fd int, notsent0 uint32, sent0 uint64) (*State, error) {
	st := State{notsent0: notsent0, sent0: sent0}
	// struct tcp_info: state at 0, options at 5, the window scales at 6,
	// two 4-bit fields, snd first: the low nibble where bit-fields are
	// laid out from the least significant bit (little-endian ABIs).
	var info [8]byte
	if _, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, unsafe.Pointer(&info[0]), unsafe.Sizeof(info)); err != nil {
		return nil, fmt.Errorf("TCP_INFO: %w", err)
	}
	st.TCPState, st.Options = info[0], info[5]
	if afterInfo != nil {
		afterInfo()
	}
	st.SndWScale, st.RcvWScale = info[6]&0xf, info[6]>>4
	if one := uint16(1); *(*byte)(unsafe.Pointer(&one)) == 0 {
		st.SndWScale, st.RcvWScale = st.RcvWScale, st.SndWScale
	}
	mss, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_MAXSEG)
	if err != nil {
		return nil, fmt.Errorf("TCP_MAXSEG: %w", err)
	}
	st.MSS = uint32(mss)
	if st.Options&OptTimestamps != 0 {
		ts, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_TIMESTAMP)
		if err != nil {
			return nil, fmt.Errorf("TCP_TIMESTAMP: %w", err)
		}
		st.Timestamp = uint32(ts)
	}
	var w repairWindow
	if _, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, unsafe.Pointer(&w), unsafe.Sizeof(w)); err != nil {
		return nil, fmt.Errorf("TCP_REPAIR_WINDOW: %w", err)
	}
	st.SndWL1, st.SndWnd, st.MaxWindow, st.RcvWnd, st.RcvWup = w.SndWL1, w.SndWnd, w.MaxWindow, w.RcvWnd, w.RcvWup
	// A FIN received counts in the window as it does in the sequence.
	if st.FINReceived() {
		st.RcvWup--
		st.RcvWnd++
	}

	// The send queue: SIOCOUTQ and the bytes not sent count a FIN sent
	// as a byte. With the send queue selected, an acknowledgement that
	// comes has the kernel take all it has not sent as sent, sending
	// none of it (tcp_write_xmit in repair mode), and a new socket in
	// repair mode takes no more as sent than its small send buffer
	// holds. So Dump counted the bytes not sent before any dump selected
	// the queue: that count less what the kernel sent since, or the
	// count now, whichever is larger, is right (retransmissions only
	// make the first smaller: more is restored as sent, and sent again
	// anyway).
	if err := selectQueue(fd, sendQueue); err != nil {
		return nil, err
	}
	if afterSendQueue != nil {
		afterSendQueue()
	}
	sndq, err := ioctlUint32(fd, unix.SIOCOUTQ)
	if err != nil {
		return nil, fmt.Errorf("SIOCOUTQ: %w", err)
	}
	notsent, sent, err := unsent(fd)
	if err != nil {
		return nil, err
	}
	if sent -= sent0; uint64(notsent0) > sent {
		notsent = max(notsent, notsent0-uint32(sent))
	}
	finOut := false
	switch st.TCPState {
	case stateFinWait1, stateFinWait2, stateLastAck, stateClosing:
		finOut = true
		if sndq > 0 {
			sndq--
		}
		if notsent > 0 {
			notsent--
		}
	}
	if notsent > sndq {
		return nil, fmt.Errorf("send queue: %d bytes not sent of %d queued", notsent, sndq)
	}
	if st.SendQ, err = peekQueue(fd, sndq); err != nil {
		return nil, fmt.Errorf("send queue: %w", err)
	}
	st.NotSent = notsent
	if st.SeqSnd, err = queueSeq(fd); err != nil {
		return nil, err
	}

	if err := selectQueue(fd, recvQueue); err != nil {
		return nil, err
	}
	rcvq, err := ioctlUint32(fd, unix.SIOCINQ)
	if err != nil {
		return nil, fmt.Errorf("SIOCINQ: %w", err)
	}
	// Unlike SIOCOUTQ, SIOCINQ leaves a FIN received out (tcp_inq), so
	// the count is the bytes queued (passt takes one more off, and loses
	// the last unread byte before a FIN): TCP_QUEUE_SEQ is past the FIN,
	// which shifts the queue's start by one, and the window by one above.
	if st.RecvQ, err = peekQueue(fd, rcvq); err != nil {
		return nil, fmt.Errorf("receive queue: %w", err)
	}
	if st.SeqRcv, err = queueSeq(fd); err != nil {
		return nil, err
	}
	// TCP_QUEUE_SEQ is the sequence after each queue's end, past a FIN
	// sent: the restored socket sends its FIN again (Resume, or Restore
	// in repair mode) from where the first one was. (passt leaves the
	// FIN's one in, and its FIN lands one past the first.)
	st.SeqSnd -= sndq
	if finOut {
		st.SeqSnd--
	}
	st.SeqRcv -= rcvq
	return &st, nil
}

// Grew tells whether fd, dumped as st and still in repair mode, has
// taken more from its peer since: a socket in repair mode still receives
// and acknowledges what arrives, which st lacks.
func Grew(fd int, st *State) (bool, error) {
	seq, err := recvSeq(fd)
	return err == nil && seq != st.rcvEnd(), err
}

// unsent reads, in one TCP_INFO, the bytes fd has queued and not sent,
// and the bytes it has sent in all, retransmissions included (a kernel
// before 4.19 leaves that count zero).
func unsent(fd int) (notsent uint32, sent uint64, err error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	return info.Notsent_bytes, info.Bytes_sent, nil
}

// recvSeq is the sequence after what fd has received, in repair mode.
func recvSeq(fd int) (uint32, error) {
	if err := selectQueue(fd, recvQueue); err != nil {
		return 0, err
	}
	return queueSeq(fd)
}

// rcvEnd is the sequence after what st received: what a socket dumped
// as st reports (recvSeq) until it takes more.
func (st *State) rcvEnd() uint32 { return st.SeqRcv + uint32(len(st.RecvQ)) }

func selectQueue(fd, q int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR_QUEUE, q); err != nil {
		return fmt.Errorf("TCP_REPAIR_QUEUE %d: %w", q, err)
	}
	return nil
}

func queueSeq(fd int) (uint32, error) {
	v, err := unix.GetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return 0, fmt.Errorf("TCP_QUEUE_SEQ: %w", err)
	}
	return uint32(v), nil
}

// peekQueue reads the n bytes of the selected queue, which a socket in
// repair mode gives only with MSG_PEEK.
func peekQueue(fd int, n uint32) ([]byte, error) {
	if n > MaxQueue {
		return nil, fmt.Errorf("%d bytes queued, more than %d", n, MaxQueue)
	}
	if n == 0 {
		return nil, nil
	}
	// A peek stops short at urgent data the peer sent (MSG_OOB), kept in
	// line, and the next one from the queue's start stops there again:
	// the rest is peeked from a peek offset (TCP has them since Linux
	// 6.9), which each peek moves on. One that starts at the urgent mark
	// fails (EAGAIN) while a signal is pending: it is tried again. A
	// socket has one urgent mark at most, so few peeks are needed.
	buf := make([]byte, n)
	got, offset := 0, false
	for tries := 0; got < int(n) && tries < 100; tries++ {
		if got > 0 && !offset {
			if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, got) != nil {
				break
			}
			offset = true
			defer unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEEK_OFF, -1)
		}
		m, _, err := unix.Recvfrom(fd, buf[got:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		got += m
	}
	if got < int(n) {
		return nil, fmt.Errorf("read %d of %d bytes", got, n)
	}
	return buf, nil
}

// NewSocket is the destination's socket for a connection of family
// (AF_INET or AF_INET6): non-blocking, and SO_REUSEADDR so it binds
// the address the source may still hold (with repair mode on, the kernel
// then lets it bind even a port in use). Repair mode is to be set next.
func NewSocket(family int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Check refuses a State no source could have made: it may come from
// another host.
func (st *State) Check() error {
	switch {
	case st.TCPState == 0:
		return errors.New("the source could not dump this connection")
	case len(st.SendQ) > MaxQueue || len(st.RecvQ) > MaxQueue:
		return fmt.Errorf("queues of %d and %d bytes, more than %d", len(st.SendQ), len(st.RecvQ), MaxQueue)
	case uint64(st.NotSent) > uint64(len(st.SendQ)): // not int(NotSent): 32 bits wide on some machines
		return fmt.Errorf("%d bytes not sent of a %d-byte send queue", st.NotSent, len(st.SendQ))
	case st.SndWScale > 14 || st.RcvWScale > 14:
		return fmt.Errorf("window scale %d/%d beyond 14", st.SndWScale, st.RcvWScale)
	}
	return nil
}

// Restore makes fd, from NewSocket and already in repair mode, the
// connection st from local to remote, without a handshake: the kernel
// takes the sequence numbers, queues, options and windows as they are.
// The caller then turns repair mode off and calls Resume.
func Restore(fd int, st *State, local, remote unix.Sockaddr) error {
	if err := st.Check(); err != nil {
		return err
	}
	if err := unix.Bind(fd, local); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if st.Options&OptTimestamps != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_TIMESTAMP, int(int32(st.Timestamp))); err != nil {
			return fmt.Errorf("TCP_TIMESTAMP: %w", err)
		}
	}
	for _, q := range []struct {
		queue int
		seq   uint32
	}{{sendQueue, st.SeqSnd}, {recvQueue, st.SeqRcv}} {
		if err := selectQueue(fd, q.queue); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_QUEUE_SEQ, int(int32(q.seq))); err != nil {
			return fmt.Errorf("TCP_QUEUE_SEQ: %w", err)
		}
	}
	// In repair mode connect sends nothing: the socket is established.
	if err := unix.Connect(fd, remote); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// The receive queue is still selected; writes to it are received data.
	if err := fill(fd, st.RecvQ); err != nil {
		return fmt.Errorf("receive queue: %w", err)
	}
	if err := selectQueue(fd, sendQueue); err != nil {
		return err
	}
	// What was sent goes in now, as sent; what was not is written after
	// repair mode, so the kernel sends it.
	sent := st.SendQ[:len(st.SendQ)-int(st.NotSent)]
	if err := fill(fd, sent); err != nil {
		return fmt.Errorf("send queue, %d bytes as sent: %w", len(sent), err)
	}
	opts := []unix.TCPRepairOpt{
		{Code: unix.TCPOPT_WINDOW, Val: uint32(st.SndWScale) | uint32(st.RcvWScale)<<16},
		{Code: unix.TCPOPT_MAXSEG, Val: st.MSS},
	}
	if st.Options&OptSACK != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_SACK_PERMITTED})
	}
	if st.Options&OptTimestamps != 0 {
		opts = append(opts, unix.TCPRepairOpt{Code: unix.TCPOPT_TIMESTAMP})
	}
	if err := unix.SetsockoptTCPRepairOpt(fd, unix.SOL_TCP, unix.TCP_REPAIR_OPTIONS, opts); err != nil {
		return fmt.Errorf("TCP_REPAIR_OPTIONS: %w", err)
	}
	// A FIN sent and acknowledged: shutdown in repair mode moves the
	// socket on without sending one again.
	if st.TCPState == stateFinWait2 {
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	w := repairWindow{st.SndWL1, st.SndWnd, st.MaxWindow, st.RcvWnd, st.RcvWup}
	if err := setsockopt(fd, unix.SOL_TCP, unix.TCP_REPAIR_WINDOW, unsafe.Pointer(&w), unsafe.Sizeof(w)); err != nil {
		return fmt.Errorf("TCP_REPAIR_WINDOW: %w", err)
	}
	return nil
}

// Resume finishes Restore once repair mode is off: the data never sent
// is sent now, and a FIN that may not have reached the peer is sent
// again. The new socket's send buffer starts small (it grows as the
// connection runs), so it may not take all that the old one held: Resume
// returns what it did not take, which the caller writes as the socket
// drains, and then shuts the socket down for writing if FINPending.
func Resume(fd int, st *State) ([]byte, error) {
	rest := st.SendQ[len(st.SendQ)-int(st.NotSent):]
	for len(rest) > 0 {
		n, err := unix.Write(fd, rest)
		if err == unix.EAGAIN {
			return rest, nil
		}
		if err != nil && err != unix.EINTR {
			return nil, fmt.Errorf("unsent data: %w", err)
		}
		rest = rest[max(n, 0):]
	}
	if st.FINPending() {
		if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
			return nil, fmt.Errorf("shutdown: %w", err)
		}
	}
	return nil, nil
}

// FINReceived says that the source's socket had its peer's FIN. A
// restored socket does not: repair mode cannot queue one, though its
// sequence counts it. The flow's owner ends the stream where the
// restored receive queue ends.
func (st *State) FINReceived() bool {
	return st.TCPState == stateCloseWait || st.TCPState == stateLastAck
}

// FINPending says that the source had sent a FIN the peer may not have
// had: the destination sends it (again) once the data is written.
func (st *State) FINPending() bool { return st.TCPState == stateFinWait1 }

// fill writes b whole: in repair mode a queue takes what it is given
// (in smaller pieces if the kernel cannot allocate a large one); after
// it, the send buffer has room for what the old socket held.
func fill(fd int, b []byte) error {
	chunk := len(b)
	for len(b) > 0 {
		n, err := unix.Write(fd, b[:min(len(b), chunk)])
		switch {
		case (err == unix.ENOBUFS || err == unix.ENOMEM) && chunk > 1024:
			chunk /= 2
			continue
		case err == unix.EINTR:
			continue
		case err != nil:
			return err
		}
		b = b[n:]
	}
	return nil
}
