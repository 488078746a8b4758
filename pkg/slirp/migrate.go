package slirp

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// The migration stream is passt's, version 2 (migrate.c, flow.c, tcp.c),
// so that a guest can move between passt and gopasst either way:
//
//	header     magic 0xB1BB1D1B0BB1D1B0 (u64), version, compat version (u32)
//	addresses  IPv6, IPv6 link-local, IPv4, MAC the guest was seen using
//	count      TCP flows that follow (u32)
//	count ×    the flow's guest side: struct tcp_tap_transfer, 112 bytes
//	count ×    its socket: struct tcp_tap_transfer_ext, 52 bytes, then
//	           the send and the receive queue's bytes
//
// Numbers are big-endian, except the flows' ports, which passt copies
// from its flow table in the host's byte order: NativeEndian here, which
// is passt's on every machine it runs on. The stream comes from another
// host: readMigHead and readMigExt trust no length, count or index in it.

const (
	migrateMagic   = 0xB1BB1D1B0BB1D1B0
	migrateVersion = 2

	migHeaderLen = 16
	migSeenLen   = 16 + 16 + 4 + 6
	migTCPLen    = 112 // struct tcp_tap_transfer, packed, 4-aligned
	migExtLen    = 52  // struct tcp_tap_transfer_ext

	// passt's interfaces (pif.h).
	pifHost = 1
	pifTap  = 2

	// passt's TCP events (tcp_conn.h) that a moved flow can have.
	evEstablished = 1 << 2
	evSockFinRcvd = 1 << 3
	evSockFinSent = 1 << 4
	evTapFinRcvd  = 1 << 5
	evTapFinSent  = 1 << 6
	evTapFinAcked = 1 << 7
)

// migSeen is what the guest was seen using: struct migrate_seen_addrs_v2.
// An address passt has not seen is all zeros.
type migSeen struct {
	addr6, addr6LL [16]byte
	addr4          [4]byte
	mac            [6]byte
}

// migSide is one side of a flow, struct flowside: its own (o) and the
// far end's (e) address and port, as seen from that side.
type migSide struct {
	oaddr, eaddr netip.Addr
	oport, eport uint16
}

// migTCP is a flow's guest side, struct tcp_tap_transfer: passt's state
// of the connection with the guest.
type migTCP struct {
	pif                     [2]uint8
	side                    [2]migSide
	retries, wsFromTap      uint8
	wsToTap, events         uint8
	tapMSS                  uint32
	sndbuf                  uint32 // passt's own encoding, carried as is
	flags, dupAckApprox     uint8
	wndFromTap, wndToTap    uint16
	seqToTap, seqAckFromTap uint32
	seqFromTap, seqAckToTap uint32
	seqInitFromTap          uint32
}

// migFlow is one TCP flow: its guest side and its socket (sock.TCPState
// 0 when the source could not dump it: the destination resets it).
type migFlow struct {
	tcp  migTCP
	sock tcprepair.State
}

type migStream struct {
	seen  migSeen
	flows []migFlow
}

// tapSide and hostSide index a flow's sides: the side that opened the
// flow is first, so a guest's connection has its guest side first and an
// inbound one (-t) its host side.
func (f *migTCP) tapSide() int {
	if f.pif[1] == pifTap {
		return 1
	}
	return 0
}

func (f *migTCP) hostSide() int { return 1 - f.tapSide() }

// key is the flow's key on the destination, from its guest side.
func (f *migTCP) key() tcpKey {
	g := f.side[f.tapSide()]
	return tcpKey{guest: netip.AddrPortFrom(g.eaddr, g.eport), remote: netip.AddrPortFrom(g.oaddr, g.oport)}
}

func putAddr(b []byte, a netip.Addr) {
	if a.Is4() {
		a = netip.AddrFrom16(a.As16())
	}
	if a.IsValid() {
		s := a.As16()
		copy(b, s[:])
	}
}

// getAddr reads passt's union inany_addr: IPv4 is mapped.
func getAddr(b []byte) netip.Addr {
	return netip.AddrFrom16([16]byte(b)).Unmap()
}

// appendMigHead is the stream up to the flows' sockets: the header, the
// addresses and every flow's guest side.
func appendMigHead(b []byte, s *migStream) []byte {
	b = binary.BigEndian.AppendUint64(b, migrateMagic)
	b = binary.BigEndian.AppendUint32(b, migrateVersion)
	b = binary.BigEndian.AppendUint32(b, migrateVersion)
	b = append(b, s.seen.addr6[:]...)
	b = append(b, s.seen.addr6LL[:]...)
	b = append(b, s.seen.addr4[:]...)
	b = append(b, s.seen.mac[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(s.flows)))
	for i := range s.flows {
		b = appendMigTCP(b, &s.flows[i].tcp)
	}
	return b
}

func appendMigTCP(b []byte, f *migTCP) []byte {
	b = append(b, f.pif[0], f.pif[1])
	for _, sd := range f.side {
		var a [32]byte
		putAddr(a[:16], sd.oaddr)
		putAddr(a[16:], sd.eaddr)
		b = append(b, a[:]...)
		b = binary.NativeEndian.AppendUint16(b, sd.oport)
		b = binary.NativeEndian.AppendUint16(b, sd.eport)
	}
	b = append(b, f.retries, f.wsFromTap, f.wsToTap, f.events)
	b = binary.BigEndian.AppendUint32(b, f.tapMSS)
	b = binary.BigEndian.AppendUint32(b, f.sndbuf)
	b = append(b, f.flags, f.dupAckApprox)
	b = binary.BigEndian.AppendUint16(b, f.wndFromTap)
	b = binary.BigEndian.AppendUint16(b, f.wndToTap)
	for _, v := range []uint32{f.seqToTap, f.seqAckFromTap, f.seqFromTap, f.seqAckToTap, f.seqInitFromTap} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

func appendMigExt(b []byte, st *tcprepair.State) []byte {
	for _, v := range []uint32{st.SeqSnd, st.SeqRcv, uint32(len(st.SendQ)), st.NotSent, uint32(len(st.RecvQ)),
		st.MSS, st.Timestamp, st.SndWL1, st.SndWnd, st.MaxWindow, st.RcvWnd, st.RcvWup} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	b = append(b, st.SndWScale, st.RcvWScale, st.TCPState, st.Options)
	if st.TCPState == 0 {
		return b // no queues follow a flow the source could not dump
	}
	b = append(b, st.SendQ...)
	return append(b, st.RecvQ...)
}

// errMigration is wrapped by every reason a stream is refused.
var errMigration = errors.New("migration stream")

func migErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errMigration}, args...)...)
}

// readMigHead reads a stream up to its flows' sockets, refusing it at
// its first fault: a magic or version not passt's, a count past
// maxFlows, a field out of range, or an end before the stream's. The
// flows' sockets, with their queues, follow one by one (readMigExt):
// the destination restores each as it reads it, so that what it holds
// at once is bounded by one flow's queues, whatever the stream claims.
func readMigHead(r io.Reader, maxFlows int) (*migStream, error) {
	var h [migHeaderLen + migSeenLen + 4]byte
	if _, err := io.ReadFull(r, h[:migHeaderLen]); err != nil {
		return nil, migErr("header: %v", truncated(err))
	}
	magic := binary.BigEndian.Uint64(h[:])
	version, compat := binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
	switch {
	case magic != migrateMagic:
		return nil, migErr("magic %#x is not passt's", magic)
	case version == 0 || compat == 0:
		return nil, migErr("version %d, compatible with %d: invalid", version, compat)
	case version < migrateVersion || compat > migrateVersion:
		// passt's rule: version 2 reads any stream that says it is
		// readable as 2.
		return nil, migErr("version %d (compatible with %d) is not supported: only %d", version, compat, migrateVersion)
	}
	if _, err := io.ReadFull(r, h[migHeaderLen:]); err != nil {
		return nil, migErr("addresses: %v", truncated(err))
	}
	s := &migStream{}
	p := h[migHeaderLen:]
	copy(s.seen.addr6[:], p)
	copy(s.seen.addr6LL[:], p[16:])
	copy(s.seen.addr4[:], p[32:])
	copy(s.seen.mac[:], p[36:])
	n := binary.BigEndian.Uint32(p[42:])
	if n > uint32(maxFlows) {
		return nil, migErr("%d TCP flows, more than the %d this gopasst takes", n, maxFlows)
	}
	var buf [migTCPLen]byte
	s.flows = make([]migFlow, 0, min(n, 1024))
	for i := range n {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			return nil, migErr("flow %d: %v", i, truncated(err))
		}
		var f migFlow
		if err := parseMigTCP(&f.tcp, buf[:]); err != nil {
			return nil, migErr("flow %d: %v", i, err)
		}
		s.flows = append(s.flows, f)
	}
	return s, nil
}

func truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.New("truncated")
	}
	return err
}

func parseMigTCP(f *migTCP, b []byte) error {
	f.pif = [2]uint8{b[0], b[1]}
	if f.pif != [2]uint8{pifTap, pifHost} && f.pif != [2]uint8{pifHost, pifTap} {
		return fmt.Errorf("interfaces %d, %d: not one guest and one host side", f.pif[0], f.pif[1])
	}
	p := b[2:]
	for i := range f.side {
		f.side[i] = migSide{oaddr: getAddr(p[:16]), eaddr: getAddr(p[16:32]),
			oport: binary.NativeEndian.Uint16(p[32:]), eport: binary.NativeEndian.Uint16(p[34:])}
		p = p[36:]
	}
	is4 := f.side[0].eaddr.Is4()
	for _, sd := range f.side {
		if sd.oaddr.Is4() != is4 || sd.eaddr.Is4() != is4 {
			return errors.New("IPv4 and IPv6 addresses mixed")
		}
	}
	if g := f.side[f.tapSide()]; g.eport == 0 || g.oport == 0 || g.eaddr.IsUnspecified() {
		return errors.New("no guest address or port")
	}
	if h := f.side[f.hostSide()]; h.eport == 0 || h.eaddr.IsUnspecified() {
		return errors.New("no host peer address or port")
	}
	f.retries, f.wsFromTap, f.wsToTap, f.events = p[0], p[1], p[2], p[3]
	f.tapMSS = binary.BigEndian.Uint32(p[4:])
	f.sndbuf = binary.BigEndian.Uint32(p[8:])
	f.flags, f.dupAckApprox = p[12], p[13]
	f.wndFromTap = binary.BigEndian.Uint16(p[14:])
	f.wndToTap = binary.BigEndian.Uint16(p[16:])
	seq := p[18:]
	f.seqToTap = binary.BigEndian.Uint32(seq)
	f.seqAckFromTap = binary.BigEndian.Uint32(seq[4:])
	f.seqFromTap = binary.BigEndian.Uint32(seq[8:])
	f.seqAckToTap = binary.BigEndian.Uint32(seq[12:])
	f.seqInitFromTap = binary.BigEndian.Uint32(seq[16:])
	switch {
	case f.wsFromTap > 14 || f.wsToTap > 14:
		return fmt.Errorf("window scale %d/%d beyond 14", f.wsFromTap, f.wsToTap)
	case f.events&evEstablished == 0:
		return fmt.Errorf("events %#x: not an established connection", f.events)
	case f.tapMSS > 65535:
		return fmt.Errorf("MSS %d", f.tapMSS)
	case f.seqToTap-f.seqAckFromTap > 1<<30:
		return errors.New("the guest acknowledged data never sent to it")
	}
	return nil
}

// readMigExt reads a flow's socket. Its queues are read into st.SendQ
// and st.RecvQ, whose storage is reused: one flow's queues at a time.
func readMigExt(r io.Reader, st *tcprepair.State) error {
	var b [migExtLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return truncated(err)
	}
	var v [12]uint32
	for i := range v {
		v[i] = binary.BigEndian.Uint32(b[4*i:])
	}
	st.SndWScale, st.RcvWScale, st.TCPState, st.Options = b[48], b[49], b[50], b[51]
	if st.TCPState == 0 {
		return nil // the source could not dump it; no queues follow
	}
	st.SeqSnd, st.SeqRcv, st.NotSent = v[0], v[1], v[3]
	st.MSS, st.Timestamp = v[5], v[6]
	st.SndWL1, st.SndWnd, st.MaxWindow, st.RcvWnd, st.RcvWup = v[7], v[8], v[9], v[10], v[11]
	sndq, rcvq := v[2], v[4]
	switch {
	case st.TCPState > 11:
		return fmt.Errorf("TCP state %d", st.TCPState)
	case sndq > tcprepair.MaxQueue || rcvq > tcprepair.MaxQueue:
		return fmt.Errorf("queues of %d and %d bytes, more than %d", sndq, rcvq, tcprepair.MaxQueue)
	case st.NotSent > sndq:
		return fmt.Errorf("%d bytes not sent of a %d-byte send queue", st.NotSent, sndq)
	case st.SndWScale > 14 || st.RcvWScale > 14:
		return fmt.Errorf("window scale %d/%d beyond 14", st.SndWScale, st.RcvWScale)
	}
	var err error
	if st.SendQ, err = readQueue(r, sndq, st.SendQ[:0]); err != nil {
		return fmt.Errorf("send queue: %v", err)
	}
	if st.RecvQ, err = readQueue(r, rcvq, st.RecvQ[:0]); err != nil {
		return fmt.Errorf("receive queue: %v", err)
	}
	return nil
}

// readQueue reads n bytes appended to b, growing it as they arrive: a
// stream that announces 64 MiB and ends costs what it sent.
func readQueue(r io.Reader, n uint32, b []byte) ([]byte, error) {
	const chunk = 64 << 10
	for len(b) < int(n) {
		m := min(int(n)-len(b), chunk)
		b = slices.Grow(b, m)[:len(b)+m] // not append(make): the race detector allocates that
		if _, err := io.ReadFull(r, b[len(b)-m:]); err != nil {
			return nil, truncated(err)
		}
	}
	return b, nil
}

// Moving the engine's state: migrateSave writes it on the source when the
// front-end asks for the device state, migrateLoad reads it on the
// destination. Established TCP connections to host sockets move, the
// guest's half-closed ones too, with their host socket's state and
// queued data, through the repair helper (e.repair). Every other
// established connection (the host's end closing, a unix socket or a
// command's pipe at the host's end), and every one when there is no
// helper, is in the stream as not dumped: the destination resets it for
// the guest, which would otherwise wait on it for ever, and the source
// resets it for the host peer. Connections still opening, and UDP and
// ICMP flows, are dropped as passt drops them: the guest's next segment
// on them is answered with a reset or goes to a new flow. So are an IPv6
// guest's connections to IPv4-mapped addresses, which the stream cannot
// hold.

// movable says whether f's host socket can move: a TCP connection the
// host has not closed (a FIN it sent could not be replayed).
func movable(f *tcpFlow) bool {
	return f.state&^tcpGuestFin == tcpEstablished && f.flags&tcpNotTCP == 0
}

// migrateSave writes the guest's state to w and lets go of the host
// sockets of the connections it moved and of its forwards: the
// destination takes their addresses, on this host too.
func (e *Engine) migrateSave(w io.Writer) error {
	if e.repair != nil {
		e.repair.Begin()
	}
	e.holdForwards()
	var s migStream
	if e.guestMAC != broadcastMAC {
		s.seen.mac = e.guestMAC
	}
	if e.cfg.has4() {
		s.seen.addr4 = e.addrSeen4.As4()
	}
	if e.addrSeen6.IsValid() {
		s.seen.addr6 = e.addrSeen6.As16()
	}
	var flows []*tcpFlow
	var fds []int
	left := 0   // flows not in the stream, still open here
	closed := 0 // flows reset before the stream: their host socket failed
	e.tcp.each(func(_ int32, f *tcpFlow) {
		if f.state&tcpEstablished == 0 || f.key.remote.Addr().Is4In6() {
			// An IPv6 guest's connection to an IPv4-mapped address
			// has no place in the stream, which holds IPv4 mapped
			// into IPv6: it would read back as IPv4 beside an IPv6
			// guest, and the destination refuse it whole.
			left++
			return
		}
		if movable(f) && e.tcpDiscardAcked(f, false) {
			// Dump peeks the queues from their start.
			if f.peekOff {
				unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, -1)
			}
			fds = append(fds, f.fd)
		} else if f.fd < 0 {
			closed++ // tcpDiscardAcked reset it
			return
		}
		flows = append(flows, f)
	})
	repaired := e.repair != nil && len(fds) > 0
	if repaired {
		if err := e.repair.Set(tcprepair.On, fds); err != nil {
			e.dropRepair(fmt.Errorf("%v: the guest's connections will be reset", err))
			repaired = false
		}
	}
	s.flows = make([]migFlow, len(flows))
	dumped := make([]bool, len(flows))
	moving := 0
	for i, f := range flows {
		m := &s.flows[i]
		e.migTCPOf(&m.tcp, f)
		if !repaired || !movable(f) {
			e.debugf("TCP %v: %v: not moved, reset", f.key.remote, f.state)
			continue
		}
		st, err := tcprepair.Dump(f.fd)
		if err != nil {
			e.warnf("TCP %v: migration: %v: reset", f.key.remote, err)
			continue
		}
		m.sock, dumped[i] = *st, true
		moving++
		e.debugf("TCP %v: moves in TCP state %d with %d bytes to send (%d never sent), %d received", f.key.remote, st.TCPState, len(st.SendQ), st.NotSent, len(st.RecvQ))
		m.tcp.seqInitFromTap = f.rcvNxt - uint32(len(st.SendQ))
	}
	// What a guest whose connections come back reset asks first.
	e.logf("migration: %d TCP connections move, %d are reset, %d are left out (not established, or IPv4-mapped)", moving, len(flows)-moving+closed, left)
	if _, err := w.Write(appendMigHead(nil, &s)); err != nil {
		// A stream cut short serves no destination, and the guest goes
		// on here: its connections too, as they were.
		e.migrateRollback(flows, fds, repaired)
		return err
	}
	// Then each socket, closed before it is written: a socket in repair
	// mode still takes and acknowledges what its peer sends, which a
	// dump taken earlier lacks and the peer never sends again. So each is
	// dumped again if it took more (migrateSeal), and closed at once. In
	// repair mode, closing sends the peer nothing, even a reset (the
	// kernel's tcp_disconnect): a connection that did not move is reset
	// for its peer only if it was not in repair mode (not movable, or no
	// helper), after what the guest sent that its socket still holds, as
	// after the guest's reset (tcpGuestGone); one whose dump failed is
	// closed silently, and the peer hears a reset when it next sends. The
	// destination, on this host too, then takes its address.
	var b []byte
	for i, f := range flows {
		m := &s.flows[i]
		if dumped[i] {
			dumped[i] = e.migrateSeal(f, m)
		}
		if !dumped[i] && !(repaired && movable(f)) {
			e.tcpGuestGone(f, false)
		} else {
			e.tcpClose(f, false, !dumped[i])
		}
		b = appendMigExt(b, &m.sock)
		if len(b) < migWriteAt && i+1 < len(flows) {
			continue
		}
		if _, err := w.Write(b); err != nil {
			// The guest goes on here, without the connections closed so
			// far: it hears they are reset. The others stay as they were.
			for j := range flows[:i+1] {
				e.tcpResetMoved(flows[j].key, &s.flows[j].tcp)
			}
			rest := flows[i+1:]
			e.migrateRollback(rest, repairedFds(rest), repaired)
			return err
		}
		b = b[:0]
	}
	return nil
}

// migWriteAt is how many bytes of sockets the source gathers before it
// writes them.
const migWriteAt = 64 << 10

// migrateSeal dumps f's socket again, into m, while it took more from
// its peer since m was dumped, and tells whether m holds it all: else
// the destination resets the connection for the guest. A peer that keeps
// sending through migSealDumps dumps is given up on.
func (e *Engine) migrateSeal(f *tcpFlow, m *migFlow) bool {
	for dumps := 0; ; dumps++ {
		grew, err := tcprepair.Grew(f.fd, &m.sock)
		if err == nil && !grew {
			return true
		}
		if err == nil && dumps == migSealDumps {
			err = errors.New("its peer kept sending")
		}
		var st *tcprepair.State
		if err == nil {
			st, err = tcprepair.Redump(f.fd, &m.sock)
		}
		if err != nil {
			e.warnf("TCP %v: migration: %v: reset", f.key.remote, err)
			m.sock = tcprepair.State{}
			return false
		}
		// The guest's side, written, counts the send queue from where
		// it started (seqInitFromTap): what the peer acknowledged since
		// stays in it, sent again, which the peer ignores.
		if acked := st.SeqSnd - m.sock.SeqSnd; acked > 0 && acked <= uint32(len(m.sock.SendQ)) {
			st.SendQ = append(m.sock.SendQ[:acked:acked], st.SendQ...)
			st.SeqSnd = m.sock.SeqSnd
		}
		m.sock = *st
	}
}

// migSealDumps is how many times migrateSeal dumps a socket again.
const migSealDumps = 4

// repairedFds are the sockets of the flows that the source put in repair
// mode, which a rollback takes out of it.
func repairedFds(flows []*tcpFlow) []int {
	var fds []int
	for _, f := range flows {
		if movable(f) {
			fds = append(fds, f.fd)
		}
	}
	return fds
}

// migrateRollback takes back, after a save that could not be written,
// the connections it was to move: out of repair mode, each peeks again
// past what is in flight to the guest. The forwards come back with the
// guest's next frame (bindHeld).
func (e *Engine) migrateRollback(flows []*tcpFlow, fds []int, repaired bool) {
	if repaired {
		if err := e.repair.Set(tcprepair.Off, fds); err != nil {
			// A socket left in repair mode sends nothing: reset them.
			e.dropRepair(fmt.Errorf("%v: the guest's connections will be reset", err))
			for _, f := range flows {
				if movable(f) {
					e.tcpClose(f, true, true)
				}
			}
			return
		}
	}
	for _, f := range flows {
		if movable(f) && f.peekOff {
			unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, soPeekOff, int(f.sndNxt-f.sndUna))
		}
	}
}

// migTCPOf is f as passt keeps a flow's guest side.
func (e *Engine) migTCPOf(m *migTCP, f *tcpFlow) {
	local, _ := unix.Getsockname(f.fd)
	peer, _ := unix.Getpeername(f.fd)
	// passt puts the side that opened the flow first: the host's for a
	// connection through a forward.
	tap, host := 0, 1
	m.pif = [2]uint8{pifTap, pifHost}
	if f.flags&tcpInbound != 0 {
		tap, host = 1, 0
		m.pif = [2]uint8{pifHost, pifTap}
	}
	m.side[tap] = migSide{oaddr: f.key.remote.Addr(), oport: f.key.remote.Port(),
		eaddr: f.key.guest.Addr(), eport: f.key.guest.Port()}
	l, p := addrPortOf(local), addrPortOf(peer)
	if f.flags&tcpNotTCP != 0 {
		// A unix socket or a pipe has no address in passt's terms: the
		// flow is named by its guest side alone, to be reset.
		l, p = f.key.remote, f.key.remote
	}
	m.side[host] = migSide{oaddr: l.Addr(), oport: l.Port(), eaddr: p.Addr(), eport: p.Port()}
	m.retries, m.wsFromTap, m.wsToTap = f.retries, f.guestWS, f.ourWS
	m.events = evEstablished
	for _, b := range []struct {
		state tcpState
		ev    uint8
	}{{tcpGuestFin, evTapFinRcvd | evSockFinSent}, {tcpHostRdhup, evSockFinRcvd},
		{tcpFinSent, evTapFinSent}, {tcpFinAcked, evTapFinAcked}} {
		if f.state&b.state != 0 {
			m.events |= b.ev
		}
	}
	m.tapMSS = uint32(f.mss)
	if sb, err := unix.GetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil {
		m.sndbuf = uint32(sb) >> 8 // passt's SNDBUF_SET
	}
	m.dupAckApprox = uint8(f.ackSent)
	m.wndFromTap = uint16(min(f.guestWnd>>f.guestWS, 0xffff))
	m.wndToTap = f.wndSent
	m.seqToTap, m.seqAckFromTap = f.sndNxt, f.sndUna
	m.seqFromTap, m.seqAckToTap = f.rcvNxt, f.ackSent
	m.seqInitFromTap = f.rcvNxt
}

// migrateLoad binds the forwards held for the guest (fwd.go), then reads
// a stream from r and takes over its guest state and connections. Each
// connection is restored as its socket is read, as passt does: the
// stream comes from another host, and holding every flow's queues until
// the end would let it claim up to 128 MiB a flow. Only the bytes a flow
// never sent wait, up to maxUnsent in all, for their batch to leave
// repair mode. A stream refused part-way keeps the connections restored
// before the fault. A load that fails gives back the forwards it bound:
// the guest goes on at its source, which binds them again, on one host
// too.
func (e *Engine) migrateLoad(r io.Reader) (err error) {
	if e.repair != nil {
		e.repair.Begin()
	}
	if len(e.fwd.held) > 0 {
		defer func() {
			if err != nil {
				e.holdForwards()
			}
		}()
		if err := e.bindHeld(); err != nil {
			return err
		}
	}
	s, err := readMigHead(r, max(e.cfg.MaxTCP-e.tcp.count, 0))
	if err != nil {
		return err
	}
	// The MAC and addresses pass the checks a guest's frame's would
	// (tapInput: a group's MAC is none): the stream comes from another
	// host.
	if m := s.seen.mac; stationMAC(m) {
		e.guestMAC = m
	}
	if e.cfg.has4() {
		e.seen4(netip.AddrFrom4(s.seen.addr4))
	}
	if e.cfg.has6() {
		e.seen6(netip.AddrFrom16(s.seen.addr6))
	}
	e.fdRoomAhead(len(s.flows))
	e.logf("migration: the stream holds %d TCP connections", len(s.flows))
	var sendQ, recvQ []byte // one flow's queues, reused for the next
	// The helper works while the engine does: while batch k (cur, in
	// ring[k%3]) is restored, the helper takes batch k-1 (prev) out of
	// repair mode and puts batch k+1 (next) in. Waiting for each answer
	// in turn kept a destination waiting 7 ms in 1,000 connections; now
	// 1-2 ms.
	var ring [3]movedBatch
	prev, cur, next := &ring[2], &ring[0], &ring[1]
	defer func() {
		// What is still in hand, after a stream refused part-way too:
		// the flows restored stay, and the sockets made for flows not
		// read go.
		e.tcpHelperDone(prev, next)
		e.tcpFlushMoved(cur)
		for _, b := range ring {
			for _, fd := range b.fds {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
		}
	}()
	batch := func(k int) []migFlow {
		return s.flows[min(k*tcprepair.MaxFds, len(s.flows)):min((k+1)*tcprepair.MaxFds, len(s.flows))]
	}
	e.tcpRepairSockets(cur, batch(0))
	e.tcpRepairWait(cur)
	for k := 0; k*tcprepair.MaxFds < len(s.flows); k++ {
		prev, cur, next = &ring[(k+2)%3], &ring[k%3], &ring[(k+1)%3]
		e.tcpMovedOff(prev)
		e.tcpRepairSockets(next, batch(k+1))
		for j := range batch(k) {
			i := k*tcprepair.MaxFds + j
			m := &s.flows[i]
			m.sock.SendQ, m.sock.RecvQ = sendQ[:0], recvQ[:0]
			if err := readMigExt(r, &m.sock); err != nil {
				return migErr("flow %d's socket: %v", i, err)
			}
			sendQ, recvQ = m.sock.SendQ, m.sock.RecvQ
			e.tcpLoadMoved(cur, prev, j, m)
			m.sock.SendQ, m.sock.RecvQ = nil, nil
			if len(prev.unsent)+len(cur.unsent) > maxUnsent {
				e.tcpHelperDone(prev, next)
				e.tcpFlushMoved(cur)
			}
		}
		e.tcpHelperDone(prev, next)
	}
	return nil
}

// maxUnsent bounds the bytes never sent that a batch of restored flows
// holds until they leave repair mode.
const maxUnsent = 4 << 20

// movedBatch is up to MaxFds flows being restored: their sockets go into
// repair mode together, and out of it together (tcpMovedOff), one
// message to the helper each way rather than two a flow, as passt
// batches them. fds are the sockets, by index in the batch (-1: none, or
// restored and moved to done); done are those restored, whose bytes
// never sent wait in unsent. on and off are requests with the helper,
// not answered yet.
type movedBatch struct {
	fds     []int
	done    []movedFlow
	unsent  []byte
	on, off bool
}

type movedFlow struct {
	key tcpKey
	fd  int
	m   migFlow // its queues dropped: the bytes never sent are unsent[at:]
	at  int
}

// restorable says whether a flow of the stream can have its socket
// restored: one established, whose host side may have been shut for
// writing by the guest's FIN.
func restorable(t *migTCP) bool {
	return t.events&^(evTapFinRcvd|evSockFinSent) == evEstablished
}

// tcpRepairSockets makes the sockets of the flows that may be restored
// and asks the helper to put them all in repair mode (tcpRepairWait).
func (e *Engine) tcpRepairSockets(b *movedBatch, flows []migFlow) {
	b.fds = b.fds[:0]
	var on []int
	for i := range flows {
		fd := -1
		t := &flows[i].tcp
		if e.repair != nil && restorable(t) {
			var err error
			if fd, err = tcprepair.NewSocket(socketFamily(t.side[t.hostSide()].oaddr)); err != nil {
				e.warnf("migration: %v", err)
				fd = -1
			} else {
				e.tcp.hostSockOpts(fd)
				on = append(on, fd)
			}
		}
		b.fds = append(b.fds, fd)
	}
	if len(on) > 0 {
		b.on = true
		if err := e.repair.Send(tcprepair.On, on); err != nil {
			b.on = false
			e.tcpRepairFailed(b, err)
		}
	}
}

// tcpRepairWait takes the helper's answer for b's sockets.
func (e *Engine) tcpRepairWait(b *movedBatch) {
	if !b.on {
		return
	}
	b.on = false
	if e.repair == nil {
		// It failed on the batch before, and was dropped.
		e.tcpRepairFailed(b, nil)
	} else if err := e.repair.Wait(); err != nil {
		e.tcpRepairFailed(b, err)
	}
}

// tcpRepairFailed drops the helper for err, if not nil, and b's sockets,
// not in repair mode: its flows are reset for the guest.
func (e *Engine) tcpRepairFailed(b *movedBatch, err error) {
	if err != nil {
		e.dropRepair(fmt.Errorf("%v: the guest's connections are reset", err))
	}
	for i, fd := range b.fds {
		if fd >= 0 {
			unix.Close(fd)
			b.fds[i] = -1
		}
	}
}

// tcpHelperDone takes the helper's answers for prev and next, in the
// order asked, and makes prev's flows.
func (e *Engine) tcpHelperDone(prev, next *movedBatch) {
	e.tcpMovedAdd(prev)
	e.tcpRepairWait(next)
}

// tcpLoadMoved restores the flow m on the socket at index i of the
// batch b, in repair mode, or resets it for the guest. A flow restored
// already, in b or in the batch before it, is not restored twice.
func (e *Engine) tcpLoadMoved(b, prev *movedBatch, i int, m *migFlow) {
	h := m.tcp.side[m.tcp.hostSide()]
	key := m.tcp.key()
	fd := b.fds[i]
	b.fds[i] = -1
	_, old := e.tcp.lookup(key)
	same := func(d movedFlow) bool { return d.key == key }
	if old != nil || slices.ContainsFunc(b.done, same) || slices.ContainsFunc(prev.done, same) {
		if fd >= 0 {
			unix.Close(fd) // in repair mode: the peer hears nothing
		}
		return
	}
	if m.sock.TCPState != 0 && fd >= 0 {
		local, peer := netip.AddrPortFrom(h.oaddr, h.oport), netip.AddrPortFrom(h.eaddr, h.eport)
		if err := tcprepair.Restore(fd, &m.sock, sockaddrOf(local), sockaddrOf(peer)); err != nil {
			e.warnf("TCP %v: migration: %v (TCP state %d): reset", key.remote, err, m.sock.TCPState)
			m.sock.TCPState = 0
		}
	}
	if m.sock.TCPState == 0 || fd < 0 {
		if fd >= 0 {
			unix.Close(fd)
		}
		if m.sock.TCPState != 0 && !restorable(&m.tcp) {
			e.warnf("TCP %v: migration: dumped, but its events (%#x) are not an established connection's: reset", key.remote, m.tcp.events)
		}
		e.tcpResetMoved(key, &m.tcp)
		return
	}
	d := movedFlow{key: key, fd: fd, m: *m, at: len(b.unsent)}
	b.unsent = append(b.unsent, m.sock.SendQ[len(m.sock.SendQ)-int(m.sock.NotSent):]...)
	d.m.sock.SendQ, d.m.sock.RecvQ = nil, nil
	b.done = append(b.done, d)
}

// tcpFlushMoved has the helper turn repair mode off for the flows the
// batch restored, and makes them flows.
func (e *Engine) tcpFlushMoved(b *movedBatch) {
	e.tcpMovedOff(b)
	e.tcpMovedAdd(b)
}

// tcpMovedOff asks the helper to turn repair mode off for the flows b
// restored (tcpMovedAdd takes the answer).
func (e *Engine) tcpMovedOff(b *movedBatch) {
	var off []int
	for _, d := range b.done {
		off = append(off, d.fd)
	}
	if len(off) > 0 && e.repair != nil {
		b.off = true
		if err := e.repair.Send(tcprepair.Off, off); err != nil {
			b.off = false
			e.dropRepair(err)
		}
	}
}

// tcpMovedAdd takes the helper's answer for b's flows and makes them
// flows. Without that answer, their sockets may still be in repair mode,
// where they send nothing: those flows are reset instead.
func (e *Engine) tcpMovedAdd(b *movedBatch) {
	off := b.off && e.repair != nil
	if off {
		if err := e.repair.Wait(); err != nil {
			e.dropRepair(err)
			off = false
		}
	}
	b.off = false
	for i := range b.done {
		d := &b.done[i]
		if !off {
			unix.SetsockoptLinger(d.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
			unix.Close(d.fd)
			e.tcpResetMoved(d.key, &d.m.tcp)
			continue
		}
		end := len(b.unsent)
		if i+1 < len(b.done) {
			end = b.done[i+1].at
		}
		d.m.sock.SendQ = b.unsent[d.at:end]
		e.tcpAddMoved(d.key, d.fd, &d.m)
	}
	b.done, b.unsent = b.done[:0], b.unsent[:0]
}

// tcpAddMoved makes a restored socket the flow m: its sequence numbers,
// windows and MSS with the guest as they were on the source. What was
// sent to the guest and not acknowledged goes again, peeked from the
// restored receive queue.
func (e *Engine) tcpAddMoved(key tcpKey, fd int, m *migFlow) {
	rest, err := tcprepair.Resume(fd, &m.sock)
	if err == nil && len(rest) > 0 {
		// What the guest sent and we acknowledged must reach the peer;
		// a socket that cannot take it now would lose it, as passt's does.
		err = fmt.Errorf("%d bytes the new socket has no room for", len(rest))
	}
	if err != nil {
		e.warnf("TCP %v: migration: %v (TCP state %d): reset", key.remote, err, m.sock.TCPState)
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
		unix.Close(fd)
		e.tcpResetMoved(key, &m.tcp)
		return
	}
	t := &m.tcp
	f := e.tcpAddFlow(key, fd, tcpEstablished)
	if t.events&evTapFinRcvd != 0 {
		f.state |= tcpGuestFin
	}
	if m.sock.FINReceived() {
		// The peer's FIN came after the source last looked at its
		// socket (it does not move one it saw): the guest gets it where
		// the restored queue ends (tcpSendToGuest).
		f.state |= tcpHostRdhup
	}
	f.flags = 0
	if t.pif[0] == pifHost {
		f.flags = tcpInbound
	}
	f.sndUna, f.sndNxt, f.sndMax = t.seqAckFromTap, t.seqAckFromTap, t.seqAckFromTap
	f.rcvNxt, f.ackSent, f.wndSent = t.seqFromTap, t.seqAckToTap, t.wndToTap
	f.guestWS, f.ourWS = t.wsFromTap, t.wsToTap
	// The edge as far as the window reaches from what we received, not
	// from the stream's last ACK, which a hostile stream may put anywhere.
	f.edgeSent = f.rcvNxt + uint32(f.wndSent)<<f.ourWS
	f.guestWnd = uint32(t.wndFromTap) << t.wsFromTap
	f.wndSeq = f.rcvNxt - 1 // any segment the guest sends next may set the window
	f.limitMSS(int(t.tapMSS))
	if err := e.epollAdd(fd, tcpEvents, e.tcpRef(f)); err != nil {
		e.warnf("TCP %v: migration: %v", key.remote, err)
		e.tcpClose(f, true, true)
		return
	}
	e.tcpSendFlags(f, header.TCPAck)
	e.tcpSendToGuest(f)
}

// tcpResetMoved tells the guest that a connection it had on the source
// is gone. A reset counts only at the exact sequence the guest expects,
// which lies between what it acknowledged and what the source sent it
// (frames still queued on the source were lost with it): the reset goes
// at the latter, and an old segment, as a keepalive probe is, makes the
// guest answer with where it stands, which the reset to a segment of no
// flow then matches (tcpRstReply).
func (e *Engine) tcpResetMoved(key tcpKey, t *migTCP) {
	e.debugf("TCP %v: not moved: reset", key.remote)
	f := tcpFlow{key: key, sndNxt: t.seqToTap, rcvNxt: t.seqFromTap}
	if b := e.reserveIP(key.guest.Addr(), header.TCPMinLen); b != nil {
		e.commit(e.tcpFill(b, &f, header.TCPRst|header.TCPAck, f.sndNxt, 0, tcpPayload{}, 0))
	}
	if b := e.reserveIP(key.guest.Addr(), header.TCPMinLen); b != nil {
		e.commit(e.tcpFill(b, &f, header.TCPAck, t.seqAckFromTap-1, 0, tcpPayload{}, 0))
	}
}

func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// Events of kindRepair: on the listening socket, and on the helper's
// connection, watched for its end.
const (
	repairListen = 0
	repairConn   = 1
)

// repairEvent takes a TCP_REPAIR helper's connection: one at a time, as
// passt does, a second one is closed at once (the helper exits); and
// forgets a helper that went away, or that sent what nobody asked (it
// answers only during a migration, within Set), so that the next one
// may connect.
func (e *Engine) repairEvent(idx int32) {
	if idx == repairConn {
		if e.repair != nil {
			e.dropRepair(errors.New("gone, or sent what was not asked"))
		}
		return
	}
	lfd := int(e.cfg.RepairListen.Fd())
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		if outOfFds(err) {
			e.pauseAccept(lfd, epollRef{kind: kindRepair, idx: repairListen})
		}
		return
	}
	if e.repair != nil || e.epollAdd(fd, unix.EPOLLIN|unix.EPOLLRDHUP, epollRef{kind: kindRepair, idx: repairConn}) != nil {
		unix.Close(fd)
		return
	}
	e.logf("TCP_REPAIR helper connected")
	e.repair = tcprepair.NewClient(fd)
}

// dropRepair forgets a helper that failed: the next one may connect.
func (e *Engine) dropRepair(err error) {
	e.warnf("TCP_REPAIR helper: %v", err)
	e.repair.Close()
	e.repair = nil
}

// SaveState writes the guest's state to w, the front-end's pipe
// (qemusock.Migrator), on the migration's source.
func (e *Engine) SaveState(w io.Writer) error {
	err := e.migrateSave(w)
	e.logf("migration: state saved: %v", cmp.Or[any](err, "ok"))
	return err
}

// LoadState reads the guest's state from r on the destination.
func (e *Engine) LoadState(r io.Reader) error {
	err := e.migrateLoad(r)
	e.logf("migration: state loaded: %v (%d TCP connections)", cmp.Or[any](err, "ok"), e.tcp.count)
	return err
}

// Migrated is told that the destination has the guest's state: with
// MigrateExit, this gopasst is done.
func (e *Engine) Migrated() {
	e.logf("migration complete")
	if e.cfg.MigrateExit {
		e.Stop()
	}
}
