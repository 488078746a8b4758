package slirp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// The upload path under attack: a guest that sends its stream to a host
// peer as no honest guest would, mixed with junk the engine must never
// write. The host peer must read exactly the stream, in order, then EOF.

// rawSeg is a guest frame (length prefix included) with any header
// length, options, flags and numbers, and payload; ipLen, when not 0,
// is the IP total length to claim instead of the frame's, and pad is
// junk after the segment that no length covers.
type rawSeg struct {
	flags    header.TCPFlags
	seq, ack uint32
	wnd      uint16
	opts     []byte // padded to a multiple of 4
	payload  []byte
	ipLen    int
	pad      int
	sport    uint16 // 40000 if 0
	dport    uint16 // h.dport if 0
}

func (h *hotPath) raw(s rawSeg) []byte {
	opts := append([]byte(nil), s.opts...)
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptNop)
	}
	hl := header.TCPMinLen + len(opts)
	l4 := hl + len(s.payload)
	b := make([]byte, 4+header.EthernetLen+header.IPv4MinLen+l4+s.pad)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	header.Ethernet(b[4:]).Encode([6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55}, hpMAC, header.EtherTypeIPv4)
	ip := header.IPv4(b[18:])
	ip.Encode(hpGuest, hpGateway, header.ProtoTCP, 64, l4)
	if s.ipLen != 0 {
		ip.SetTotalLen(s.ipLen)
	}
	t := header.TCP(b[38:])
	if s.sport == 0 {
		s.sport = 40000
	}
	if s.dport == 0 {
		s.dport = h.dport
	}
	t.Encode(header.TCPFields{SrcPort: s.sport, DstPort: s.dport, Seq: s.seq, Ack: s.ack, Flags: s.flags, Window: s.wnd, HeaderLen: hl})
	copy(t[header.TCPMinLen:], opts)
	copy(t[hl:], s.payload)
	for i := range s.pad {
		b[len(b)-s.pad+i] = 0xa5
	}
	return b
}

// junk is n bytes that the stream never holds at the same offsets
// (pattern's bytes, inverted).
func junk(p []byte) []byte {
	j := make([]byte, len(p))
	for i := range p {
		j[i] = ^p[i]
	}
	return j
}

// TestTCPHostileUpload: a guest uploads a stream, in batches mixing new
// data (within the window we offer or past it) with retransmissions that
// reach into new data and carry different bytes where the engine already
// took them, data past a gap, junk in segments without ACK or with SYN,
// zero-length segments with odd flags and any sequence number, one-byte
// keepalives of junk, long headers with random options, IP lengths short
// of the frame (junk after) or past it, and ACKs of what was never sent.
// The host peer, reading in bursts, gets exactly the stream; a FIN, junk
// after it and a FIN carrying old bytes then give it EOF.
func TestTCPHostileUpload(t *testing.T) {
	for seed := range uint64(16) {
		t.Run(strconv.Itoa(int(seed)), func(t *testing.T) { hostileUpload(t, seed) })
	}
}

func hostileUpload(t *testing.T, seed uint64) {
	h, c := tcpPeer(t)
	f := h.flow()
	rng := rand.New(rand.NewPCG(seed, 77))
	if seed%2 == 1 { // a small send buffer: the window closes often
		unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10)
	}
	raw, _ := c.(*net.TCPConn).SyscallConn()
	up := pattern(1<<20+rng.IntN(4000), int(seed))
	base := h.seq
	sent := base  // the end of the stream the guest has sent, contiguously
	next := base  // where the guest sends from
	acked := base // what the engine acknowledged
	ahead := base // the furthest end of a segment sent past a gap
	peerAck := h.ack
	var got []byte
	buf := make([]byte, 256<<10)
	hostRead := func(most int) {
		raw.Read(func(fd uintptr) bool {
			n, _, _ := unix.Recvfrom(int(fd), buf[:most], unix.MSG_DONTWAIT)
			if n > 0 {
				if len(got)+n > len(up) || !bytes.Equal(buf[:n], up[len(got):len(got)+n]) {
					t.Fatalf("the host read %d bytes at %d that differ from the upload", n, len(got))
				}
				got = append(got, buf[:n]...)
			}
			return true
		})
	}
	off := func(seq uint32) int { return int(int32(seq - base)) }
	seg := func(from, n int) []byte { return up[from : from+n] }
	stale, step, shortWrites := 0, 0, 0
	for ; off(acked) < len(up); step++ {
		if step == 30000 || stale > 3000 {
			t.Fatalf("stuck: the engine took %d of %d bytes, the host read %d (state %v, flags %#x)",
				off(f.rcvNxt), len(up), len(got), f.state, f.flags)
		}
		taken := off(f.rcvNxt) // written: bytes before it may come back as junk
		var batch []byte
		add := func(s rawSeg) { batch = append(batch, h.raw(s)...) }
		wnd := uint16(rng.IntN(0x10000))
		for range 1 + rng.IntN(8) {
			from := off(next)
			switch k := rng.IntN(16); {
			case k < 6 && from < len(up): // new data, window or not
				n := min(1+rng.IntN(9000), len(up)-from)
				add(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: next, ack: peerAck, wnd: wnd, payload: seg(from, n)})
				next += uint32(n)
			case k == 6 && from > 0: // a retransmission reaching into new data: what was taken comes back different
				start := max(0, from-1-rng.IntN(6000))
				n := min(from-start+rng.IntN(3000), len(up)-start)
				p := append([]byte(nil), seg(start, n)...)
				copy(p, junk(p[:max(0, min(n, taken-start))]))
				add(rawSeg{flags: header.TCPAck, seq: base + uint32(start), ack: peerAck, wnd: wnd, payload: p})
				if e := base + uint32(start+n); seqLT(next, e) {
					next = e
				}
			case k == 7 && off(sent)+1 < len(up): // past a gap: taken only if the batch fills it
				at := min(off(sent)+1+rng.IntN(50000), len(up)-1)
				n := min(1+rng.IntN(2000), len(up)-at)
				add(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: base + uint32(at), ack: peerAck, wnd: wnd, payload: seg(at, n)})
				if e := base + uint32(at+n); seqLT(ahead, e) {
					ahead = e
				}
			case k == 8 && from < len(up): // in order without ACK, or with SYN: dropped
				n := min(1+rng.IntN(1000), len(up)-from)
				fl := []header.TCPFlags{header.TCPPsh, header.TCPSyn | header.TCPAck, header.TCPSyn, header.TCPFin | header.TCPPsh, header.TCPFlags(0x20)}[rng.IntN(5)]
				add(rawSeg{flags: fl, seq: next, ack: peerAck, wnd: wnd, payload: junk(seg(from, n))})
			case k == 9: // zero length, odd flags, any sequence number
				fl := header.TCPFlags(rng.IntN(256)) &^ (header.TCPRst | header.TCPFin)
				seq := []uint32{next, next - 1, sent + 1, base - 1, rng.Uint32()}[rng.IntN(5)]
				add(rawSeg{flags: fl, seq: seq, ack: peerAck, wnd: wnd})
			case k == 10 && off(f.rcvNxt) > 0: // a one-byte keepalive of junk
				add(rawSeg{flags: header.TCPAck, seq: f.rcvNxt - 1, ack: peerAck, wnd: wnd, payload: []byte{^up[off(f.rcvNxt)-1]}})
			case k == 11 && from < len(up): // options and a long header
				n := min(1+rng.IntN(3000), len(up)-from)
				opts := make([]byte, 4*rng.IntN(11))
				for i := range opts {
					opts[i] = byte(rng.IntN(256))
				}
				if len(opts) > 0 {
					opts[0] = header.TCPOptNop
				}
				add(rawSeg{flags: header.TCPAck, seq: next, ack: peerAck, wnd: wnd, opts: opts, payload: seg(from, n)})
				next += uint32(n)
			case k == 12 && from < len(up): // IP length shorter than the frame: the rest is junk
				n := min(2+rng.IntN(3000), len(up)-from)
				k := 1 + rng.IntN(n)
				if n == 1 {
					k = 1
				}
				p := append([]byte(nil), seg(from, n)...)
				copy(p[k:], junk(p[k:]))
				add(rawSeg{flags: header.TCPAck, seq: next, ack: peerAck, wnd: wnd, payload: p, ipLen: header.IPv4MinLen + header.TCPMinLen + k, pad: rng.IntN(40)})
				next += uint32(k)
			case k == 13 && from < len(up): // IP length longer than the frame: refused
				n := min(1+rng.IntN(1000), len(up)-from)
				add(rawSeg{flags: header.TCPAck, seq: next, ack: peerAck, wnd: wnd, payload: junk(seg(from, n)), ipLen: header.IPv4MinLen + header.TCPMinLen + n + 1 + rng.IntN(100)})
			case k == 14: // ACKs of what the engine never sent, and from long ago
				a := []uint32{peerAck + 1 + rng.Uint32()>>2, peerAck - 1 - rng.Uint32()>>2}[rng.IntN(2)]
				if from < len(up) {
					n := min(1+rng.IntN(2000), len(up)-from)
					add(rawSeg{flags: header.TCPAck, seq: next, ack: a, wnd: wnd, payload: seg(from, n)})
					next += uint32(n)
				}
			default: // a plain ACK
				add(rawSeg{flags: header.TCPAck, seq: next, ack: peerAck, wnd: wnd})
			}
			if seqLT(sent, next) {
				sent = next
			}
		}
		h.send(batch)
		h.e.turn(1)
		if f.flags&tcpShortWrite != 0 {
			shortWrites++
		}
		progress := false
		h.readFrames(func(s header.TCP) {
			if isRst(s) {
				t.Fatalf("reset at upload offset %d", off(s.Ack()))
			}
			if len(s.Payload()) > 0 || s.Flags()&header.TCPSyn != 0 {
				t.Fatalf("the host sent nothing, yet the guest got %v", s.Flags())
			}
			if seqLT(acked, s.Ack()) {
				acked, progress = s.Ack(), true
			}
		})
		if seqLT(sent, acked) && seqLT(ahead, acked) {
			t.Fatalf("the engine acknowledged %d, past the %d the guest sent", off(acked), off(max(sent, ahead)))
		}
		if progress {
			stale = 0
		} else if stale++; stale%4 == 0 || seqLT(next, acked) {
			next = acked // send again from what the engine took
		}
		switch r := rng.IntN(10); {
		case r < 3:
			hostRead(1 + rng.IntN(len(buf)))
		case r == 3 && stale > 20:
			hostRead(len(buf))
		}
	}
	t.Logf("%d bytes in %d steps, %d with a refused write", len(up), step, shortWrites)
	if off(f.rcvNxt) != len(up) {
		t.Fatalf("the engine took %d bytes, want %d", off(f.rcvNxt), len(up))
	}
	// FIN, then junk after it, and a FIN again further on.
	end := base + uint32(len(up))
	batch := h.raw(rawSeg{flags: header.TCPAck | header.TCPFin, seq: end, ack: peerAck, wnd: 0xffff})
	batch = append(batch, h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: end + 1, ack: peerAck, wnd: 0xffff, payload: []byte("after the FIN")})...)
	batch = append(batch, h.raw(rawSeg{flags: header.TCPAck | header.TCPFin, seq: end + 1, ack: peerAck, wnd: 0xffff, payload: []byte("more")})...)
	batch = append(batch, h.raw(rawSeg{flags: header.TCPAck | header.TCPFin | header.TCPPsh, seq: end - 3, ack: peerAck, wnd: 0xffff, payload: []byte("xyz")})...)
	h.send(batch)
	for range 2000 {
		h.e.turn(1)
		h.readFrames(func(header.TCP) {})
		before := len(got)
		hostRead(len(buf))
		if len(got) == before && len(got) == len(up) {
			break
		}
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("the host read %d bytes, want %d", len(got), len(up))
	}
	raw.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
		if n != 0 || err != nil {
			t.Fatalf("after the stream the host read %d bytes, %v; want EOF", n, err)
		}
		return true
	})
	if st := f.state; st&tcpGuestFin == 0 || f.rcvNxt != end+1 {
		t.Fatalf("after the FIN: state %v, rcvNxt at %d", st, off(f.rcvNxt))
	}
}

// TestTCPSynOnEstablished: a guest that lost a connection (it rebooted,
// say) and opens a new one from the same port sends a SYN that lands on
// the old flow. The engine must answer it with an ACK (RFC 9293,
// 3.10.7.4: a challenge ACK) so the guest resets the old flow and its
// next SYN connects; silently dropped, every SYN retry also counts as
// activity and holds off the keepalive that would find the flow stale,
// so the guest cannot connect for a minute or more, or never.
func TestTCPSynOnEstablished(t *testing.T) {
	for _, state := range []string{"established", "guest FIN", "host FIN"} {
		t.Run(state, func(t *testing.T) {
			h, c := tcpPeer(t)
			f := h.flow()
			switch state {
			case "guest FIN":
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			case "host FIN":
				c.(*net.TCPConn).CloseWrite()
				h.receive(t, false, isFin)
			}
			h.e.turn(5)
			h.readFrames(func(header.TCP) {})
			isn := h.seq + 1<<20
			syn := h.raw(rawSeg{flags: header.TCPSyn, seq: isn, wnd: 0xffff})
			var challenge header.TCP
			for range 3 { // the SYN and its retries
				h.send(syn)
				h.e.turn(5)
				h.readFrames(func(s header.TCP) {
					if s.Flags()&(header.TCPSyn|header.TCPRst) == 0 && s.Flags()&header.TCPAck != 0 {
						challenge = append(header.TCP(nil), s...)
					}
				})
				if challenge != nil {
					break
				}
			}
			if challenge == nil {
				t.Fatalf("a SYN on a flow in state %v got no answer", f.state)
			}
			if challenge.Ack() != f.rcvNxt {
				t.Errorf("challenge ACK acknowledges %d, want %d", challenge.Ack(), f.rcvNxt)
			}
			// The guest, in SYN-SENT, resets what the ACK names; its next
			// SYN opens a new connection.
			h.send(h.raw(rawSeg{flags: header.TCPRst, seq: challenge.Ack()}))
			h.e.turn(5)
			if h.e.tcp.count != 0 {
				t.Fatalf("flow left after the guest's reset: %v", h.flow().state)
			}
			h.send(syn)
			var synAck bool
			for i := 0; i < 200 && !synAck; i++ {
				h.e.turn(5)
				h.readFrames(func(s header.TCP) {
					synAck = synAck || s.Flags()&(header.TCPSyn|header.TCPAck) == header.TCPSyn|header.TCPAck && s.Ack() == isn+1
				})
			}
			if !synAck {
				t.Fatal("the new connection got no SYN-ACK")
			}
		})
	}
}

// TestTCPChurn: a guest opens connections as fast as it can, to a
// listening port, a closed one and past the flow cap, and ends each
// badly: never completes the handshake, resets it, sends data on the SYN
// or a FIN before the handshake completes, closes and forgets, or
// abandons it with data in flight. Every SYN is answered, the cap holds,
// and once the timers run out no flow and no descriptor is left.
func TestTCPChurn(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	const maxTCP = 40
	h.e.cfg.MaxTCP = maxTCP
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello"))
			conns = append(conns, c)
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := uint16(closed.Addr().(*net.TCPAddr).Port)
	closed.Close()
	open := uint16(l.Addr().(*net.TCPAddr).Port)
	// The flow of the handshake above ends on its own, with the rest.
	before := openFds(t)

	rng := rand.New(rand.NewPCG(3, 4))
	type conn struct {
		port     uint16
		isn, ack uint32
		how      int
	}
	var pending []conn
	answered := map[uint16]bool{}
	sport := uint16(20000)
	atCap, most := 0, 0
	for round := range 150 {
		var batch []byte
		for range 1 + rng.IntN(12) {
			sport++
			c := conn{port: sport, isn: rng.Uint32(), how: rng.IntN(7)}
			dport := open
			if rng.IntN(5) == 0 {
				dport = closedPort
			}
			var data []byte
			if c.how == 6 {
				data = []byte("data on the SYN")
			}
			batch = append(batch, h.raw(rawSeg{flags: header.TCPSyn, seq: c.isn, wnd: 0xffff, sport: sport, dport: dport,
				opts:    []byte{header.TCPOptMSS, 4, byte(rng.IntN(256)), byte(rng.IntN(256)), header.TCPOptNop, header.TCPOptWS, 3, byte(rng.IntN(256))},
				payload: data})...)
			if dport == open {
				pending = append(pending, c)
			} else {
				answered[sport] = false
			}
		}
		h.send(batch)
		for range 3 {
			h.e.turn(2)
		}
		most = max(most, h.e.tcp.count)
		if h.e.tcp.count > maxTCP {
			t.Fatalf("%d flows, past the cap of %d", h.e.tcp.count, maxTCP)
		}
		// The guest answers what came back.
		batch = batch[:0]
		h.readFrames(func(s header.TCP) {
			p := s.DstPort()
			if _, ok := answered[p]; ok {
				if !isRst(s) {
					t.Fatalf("port %d: %v to a SYN to a closed port", p, s.Flags())
				}
				answered[p] = true
				return
			}
			i := slices.IndexFunc(pending, func(c conn) bool { return c.port == p })
			if i < 0 {
				return // a connection the guest is done with
			}
			c := &pending[i]
			switch {
			case isRst(s): // at the cap
				atCap++
				pending = slices.Delete(pending, i, i+1)
				return
			case s.Flags()&header.TCPSyn == 0:
				return
			}
			c.ack = s.Seq() + 1
			seq := c.isn + 1
			ack := func(fl header.TCPFlags, data string) {
				batch = append(batch, h.raw(rawSeg{flags: fl, seq: seq, ack: c.ack, wnd: 0xffff, sport: p, dport: open, payload: []byte(data)})...)
				seq += uint32(len(data))
			}
			switch c.how {
			case 0: // never completes the handshake
			case 1:
				ack(header.TCPRst, "")
			case 2: // a FIN with data before the handshake's ACK
				batch = append(batch, h.raw(rawSeg{flags: header.TCPFin, seq: seq, wnd: 0xffff, sport: p, dport: open, payload: []byte("early")})...)
			case 3: // closes, then forgets: never acknowledges the host's FIN
				ack(header.TCPAck, "")
				ack(header.TCPAck|header.TCPPsh, "bye")
				ack(header.TCPAck|header.TCPFin, "")
			case 4: // abandons it with the host's data unacknowledged
				ack(header.TCPAck, "")
				ack(header.TCPAck|header.TCPPsh, "then silence")
			case 5: // acknowledges the SYN-ACK, then resets with data
				ack(header.TCPAck, "")
				ack(header.TCPRst|header.TCPAck, "reset")
			case 6:
				ack(header.TCPAck, "")
			}
			pending = slices.Delete(pending, i, i+1)
		})
		h.send(batch)
		h.e.turn(2)
		if round%3 == 2 { // time passes: timers run out
			h.e.start = h.e.start.Add(-20 * time.Second)
			h.e.lastTick = 0
		}
	}
	t.Logf("%d SYNs, %d reset at the cap, %d flows at most", sport-20000, atCap, most)
	for p, ok := range answered {
		if !ok {
			t.Errorf("a SYN from port %d to a closed port got no reset", p)
		}
	}
	// Time passes: every flow ends, whatever its state.
	h.expireFlows(t, 200)
	l.Close()
	<-accepted
	for _, c := range conns {
		c.Close()
	}
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Errorf("descriptors left: %v", leaked)
	}
}

// TestTCPUploadPeerEnds: a guest uploads to a host peer that stops
// reading until the window closes, then half-closes, or resets, or
// closes without reading the rest, or reads on. A half-close is our FIN
// and the upload goes on, whole; a reset, or a close with data unread,
// resets the guest's connection, at once, with nothing left behind.
func TestTCPUploadPeerEnds(t *testing.T) {
	for _, end := range []string{"half-close", "reset", "close unread", "read on"} {
		t.Run(end, func(t *testing.T) {
			h, c := tcpPeer(t)
			f := h.flow()
			unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)
			raw, _ := c.(*net.TCPConn).SyscallConn()
			raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10) })
			before := openFds(t)
			up := pattern(2<<20, 3)
			base := h.seq
			next, acked := base, base
			var got []byte
			buf := make([]byte, 128<<10)
			read := func() {
				raw.Read(func(fd uintptr) bool {
					n, _, _ := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
					if n > 0 {
						if !bytes.Equal(buf[:n], up[len(got):len(got)+n]) {
							t.Fatalf("the host read %d bytes at %d that differ", n, len(got))
						}
						got = append(got, buf[:n]...)
					}
					return true
				})
			}
			reading, ended, rst, fin := false, false, false, false
			stale := 0
			for step := 0; int(acked-base) < len(up); step++ {
				if step == 20000 || stale > 2000 {
					t.Fatalf("stuck at %d of %d (state %v, flags %#x)", acked-base, len(up), f.state, f.flags)
				}
				// The guest fills what it thinks the window is, and more.
				var batch []byte
				for range 4 {
					o := int(next - base)
					n := min(1400*(1+(step*7919+step/3)%20), len(up)-o)
					if n <= 0 {
						break
					}
					h.seq = next
					s := h.segment(header.TCPAck|header.TCPPsh, n)
					copy(s[len(s)-n:], up[o:o+n])
					batch = append(batch, s...)
					next += uint32(n)
				}
				h.send(batch)
				h.e.turn(1)
				progress := false
				h.readFrames(func(s header.TCP) {
					if isRst(s) {
						rst = true
					}
					if isFin(s) && s.Seq() == h.ack {
						fin = true
						h.ack++
					}
					if seqLT(acked, s.Ack()) && !isRst(s) {
						acked, progress = s.Ack(), true
					}
				})
				if rst {
					break
				}
				if progress {
					stale = 0
				} else if stale++; stale%4 == 0 {
					next = acked
				}
				if seqLT(next, acked) {
					next = acked
				}
				if !ended && f.flags&tcpWaitWrite != 0 && stale > 10 {
					// The window is closed and the peer has not read: now it ends.
					ended = true
					switch end {
					case "half-close":
						c.(*net.TCPConn).CloseWrite()
						reading = true
					case "reset":
						c.(*net.TCPConn).SetLinger(0)
						c.Close()
					case "close unread":
						c.Close()
					case "read on":
						reading = true
					}
				}
				if reading {
					read()
				}
			}
			switch end {
			case "half-close", "read on":
				if rst {
					t.Fatal("reset")
				}
				if fin != (end == "half-close") {
					t.Errorf("FIN to the guest: %v", fin)
				}
				for range 1000 {
					if len(got) == len(up) {
						break
					}
					h.e.turn(1)
					read()
				}
				if !bytes.Equal(got, up) {
					t.Fatalf("the host read %d bytes, want %d", len(got), len(up))
				}
			default:
				if !ended || !rst {
					t.Fatalf("ended %v, reset to the guest %v", ended, rst)
				}
				if h.e.tcp.count != 0 {
					t.Fatalf("flow left: %v", f.state)
				}
				if leaked := leakedFds(t, before); len(leaked) > 0 {
					t.Errorf("descriptors left: %v", leaked)
				}
			}
		})
	}
}

// TestTCPInboundSynAckAgain: at a forwarded port, the guest's SYN-ACK
// completes the handshake, but the ACK we send for it is lost (the link
// was full). The guest sends its SYN-ACK again; it must get an ACK, or a
// server that speaks first (its banner waits for the handshake) never
// gets going, and the guest gives up on the connection.
func TestTCPInboundSynAckAgain(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	if err := h.e.AddForwards(TCP, []portspec.Forward{{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: port, GuestPort: 22}}, false); err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var syn header.TCP
	for i := 0; i < 200 && syn == nil; i++ {
		h.e.turn(5)
		h.readFrames(func(s header.TCP) {
			if s.Flags() == header.TCPSyn && s.DstPort() == 22 {
				syn = append(header.TCP(nil), s...)
			}
		})
	}
	if syn == nil {
		t.Fatal("no SYN to the guest")
	}
	synAck := h.raw(rawSeg{flags: header.TCPSyn | header.TCPAck, seq: 5000, ack: syn.Seq() + 1, wnd: 0xffff, sport: 22, dport: syn.SrcPort(),
		opts: []byte{header.TCPOptMSS, 4, 5, 0xb4, header.TCPOptNop, header.TCPOptWS, 3, 7}})
	h.send(synAck)
	h.e.turn(5)
	h.readFrames(func(header.TCP) {}) // our ACK, lost
	h.send(synAck)
	h.e.turn(5)
	var acked bool
	h.readFrames(func(s header.TCP) {
		acked = acked || s.Flags()&(header.TCPSyn|header.TCPRst) == 0 && s.Flags()&header.TCPAck != 0 && s.Ack() == 5001
	})
	if !acked {
		t.Fatal("the guest's SYN-ACK, sent again, got no ACK")
	}
	h.send(h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: 5001, ack: syn.Seq() + 1, wnd: 0xffff, sport: 22, dport: syn.SrcPort(), payload: []byte("SSH-2.0-x\r\n")}))
	h.e.turn(5)
	client.SetDeadline(time.Now().Add(5 * time.Second))
	banner := make([]byte, 11)
	if _, err := io.ReadFull(client, banner); err != nil || string(banner) != "SSH-2.0-x\r\n" {
		t.Fatalf("the client read %q, %v", banner, err)
	}
}

// TestTCPHostileUploadInterleaved: three guest connections upload at
// once, their segments interleaved in each batch of frames, so a flow's
// gathered writes are cut by another's; each sends again what it sent
// (what the engine took comes back different), data past a gap, and more
// than the window. Each host peer reads exactly its own stream.
func TestTCPHostileUploadInterleaved(t *testing.T) { hostileUploadInterleaved(t, false) }

// TestTCPHostileUploadInterleavedTails is TestTCPHostileUploadInterleaved
// with frames as vhost-user hands them over: a frame past
// qemusock.HeadCopy bytes is its head, copied, and its tail in guest
// memory, cut in pieces anywhere, and some frames are padded past their
// IP length, so that they are made whole in one buffer, in turn
// (frameInput). Data from heads, tails and frames made whole is gathered
// into one write, and must reach each host peer as it was sent.
func TestTCPHostileUploadInterleavedTails(t *testing.T) { hostileUploadInterleaved(t, true) }

// hostileUploadInterleaved runs TestTCPHostileUploadInterleaved, its
// frames through the stream socket, or, with tails, handed to the engine
// as vhost-user does (vhostFrames).
func hostileUploadInterleaved(t *testing.T, tails bool) {
	h, c := tcpPeer(t)
	c.Close()
	l := listenLoopback(t)
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	type upFlow struct {
		sport            uint16
		f                *tcpFlow
		peer             syscall.RawConn
		conn             net.Conn
		up, got          []byte
		base, next, sent uint32
		acked            uint32
	}
	rng := rand.New(rand.NewPCG(1, 9))
	var flows []*upFlow
	for i := range 3 {
		u := &upFlow{sport: uint16(30001 + i), up: pattern(512<<10+rng.IntN(1000), 20+i)}
		u.base = 7000 + uint32(i)<<28
		h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: u.base - 1, wnd: 0xffff, sport: u.sport, dport: lport,
			opts: []byte{header.TCPOptMSS, 4, 5, 0xb4, header.TCPOptNop, header.TCPOptWS, 3, 7}}))
		var ack uint32
		for j := 0; j < 200 && ack == 0; j++ {
			h.e.turn(5)
			h.readFrames(func(s header.TCP) {
				if s.DstPort() == u.sport && s.Flags()&header.TCPSyn != 0 {
					ack = s.Seq() + 1
				}
			})
		}
		if ack == 0 {
			t.Fatal("no SYN-ACK")
		}
		h.send(h.raw(rawSeg{flags: header.TCPAck, seq: u.base, ack: ack, wnd: 0xffff, sport: u.sport, dport: lport}))
		h.e.turn(5)
		var err error
		if u.conn, err = l.Accept(); err != nil {
			t.Fatal(err)
		}
		defer u.conn.Close()
		u.peer, _ = u.conn.(*net.TCPConn).SyscallConn()
		_, u.f = h.e.tcp.lookup(tcpKey{netip.AddrPortFrom(hpGuest, u.sport), netip.AddrPortFrom(hpGateway, lport)})
		if u.f == nil {
			t.Fatal("no flow")
		}
		unix.SetsockoptInt(u.f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, (16+rng.IntN(64))<<10)
		u.next, u.sent, u.acked = u.base, u.base, u.base
		flows = append(flows, u)
	}
	buf := make([]byte, 64<<10)
	done := func() bool {
		for _, u := range flows {
			if len(u.got) < len(u.up) {
				return false
			}
		}
		return true
	}
	stale, step, refused := 0, 0, 0
	for ; !done(); step++ {
		if step == 40000 || stale > 3000 {
			for _, u := range flows {
				t.Errorf("port %d: host read %d of %d, engine took %d", u.sport, len(u.got), len(u.up), u.f.rcvNxt-u.base)
			}
			t.Fatal("stuck")
		}
		var batch [][]byte
		for range 1 + rng.IntN(12) {
			u := flows[rng.IntN(len(flows))]
			from, taken := int(u.next-u.base), int(u.f.rcvNxt-u.base)
			seg := func(seq uint32, p []byte) {
				pad := 0
				if tails && rng.IntN(4) == 0 {
					pad = qemusock.HeadCopy
				}
				batch = append(batch, h.raw(rawSeg{flags: header.TCPAck, seq: seq, ack: u.f.sndNxt, wnd: 0xffff, sport: u.sport, dport: lport, payload: p, pad: pad}))
			}
			switch k := rng.IntN(8); {
			case k < 5 && from < len(u.up):
				n := min(1+rng.IntN(6000), len(u.up)-from)
				seg(u.next, u.up[from:from+n])
				u.next += uint32(n)
			case k == 5 && from > 0:
				start := max(0, from-1-rng.IntN(5000))
				n := min(from-start+rng.IntN(2000), len(u.up)-start)
				p := append([]byte(nil), u.up[start:start+n]...)
				copy(p, junk(p[:max(0, min(n, taken-start))]))
				seg(u.base+uint32(start), p)
				if e := u.base + uint32(start+n); seqLT(u.next, e) {
					u.next = e
				}
			case k == 6 && int(u.sent-u.base)+1 < len(u.up): // past a gap: taken only if the batch fills it
				at := min(int(u.sent-u.base)+1+rng.IntN(9000), len(u.up)-1)
				seg(u.base+uint32(at), u.up[at:min(at+1+rng.IntN(1500), len(u.up))])
			}
			if seqLT(u.sent, u.next) {
				u.sent = u.next
			}
		}
		if tails {
			h.vhostFrames(batch, rng)
		} else {
			h.send(bytes.Join(batch, nil))
		}
		h.e.turn(1)
		for _, u := range flows {
			if u.f.flags&tcpShortWrite != 0 {
				refused++
			}
		}
		progress := false
		h.readFrames(func(s header.TCP) {
			for _, u := range flows {
				if s.DstPort() == u.sport && seqLT(u.acked, s.Ack()) {
					u.acked, progress = s.Ack(), true
				}
			}
		})
		if progress {
			stale = 0
		} else {
			stale++
		}
		for _, u := range flows {
			if stale%4 == 3 || seqLT(u.next, u.acked) {
				u.next = u.acked
			}
			if rng.IntN(3) != 0 && stale < 20 {
				continue
			}
			u.peer.Read(func(fd uintptr) bool {
				n, _, _ := unix.Recvfrom(int(fd), buf[:1+rng.IntN(len(buf))], unix.MSG_DONTWAIT)
				if n > 0 {
					if len(u.got)+n > len(u.up) || !bytes.Equal(buf[:n], u.up[len(u.got):len(u.got)+n]) {
						t.Fatalf("port %d: the host read %d bytes at %d that differ from the upload", u.sport, n, len(u.got))
					}
					u.got = append(u.got, buf[:n]...)
				}
				return true
			})
		}
	}
	t.Logf("%d steps, %d flows refused data", step, refused)
}

// TestAdvMSS: past a page, the MSS we offer is whole pages.
func TestAdvMSS(t *testing.T) {
	for _, c := range [][2]int{{65480, 61440}, {65460, 61440}, {8960, 8192}, {4096, 4096}, {1460, 1460}, {536, 536}, {48, 48}} {
		if got := advMSS(c[0]); int(got) != c[1] {
			t.Errorf("advMSS(%d) = %d, want %d", c[0], got, c[1])
		}
	}
}

// TestTCPSynOptionExtremes: a guest's MSS of 0, 1 or 65535, window scale
// of 14, 255 or none, in any mix, still gives a connection that carries
// an echo both ways byte for byte, in segments no larger than the MSS
// allows (Linux's floor of 48 for a tiny one, the link's MTU for a huge
// one), with our window unscaled when the guest did not offer scaling
// and its own scaled by no more than 14; our SYN-ACK offers advMSS.
func TestTCPSynOptionExtremes(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	l := echoLoopback(t)
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	sport := uint16(31000)
	for _, mss := range []int{-1, 0, 1, 47, 65535} {
		for _, ws := range []int{-1, 0, 14, 255} {
			sport++
			var opts []byte
			if mss >= 0 {
				opts = append(opts, header.TCPOptMSS, 4, byte(mss>>8), byte(mss))
			}
			if ws >= 0 {
				opts = append(opts, header.TCPOptNop, header.TCPOptWS, 3, byte(ws))
			}
			wantMSS := h.e.mtu() - 40
			switch {
			case mss < 0 || mss == 0:
				wantMSS = tcpDefaultMSS
			case mss < tcpMinMSS:
				wantMSS = tcpMinMSS
			}
			scale := uint(0)
			if ws >= 0 {
				scale = uint(min(ws, 14))
			}
			name := fmt.Sprintf("mss %d ws %d", mss, ws)
			isn := uint32(sport) << 16
			h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: isn, wnd: 0xffff, sport: sport, dport: lport, opts: opts}))
			var ack uint32
			var offered uint16
			for i := 0; i < 200 && ack == 0; i++ {
				h.e.turn(5)
				h.readFrames(func(s header.TCP) {
					if s.DstPort() == sport && s.Flags()&header.TCPSyn != 0 {
						ack, offered = s.Seq()+1, header.ParseSynOptions(s.Options()).MSS
					}
				})
			}
			if ack == 0 {
				t.Fatalf("%s: no SYN-ACK", name)
			}
			if offered != advMSS(wantMSS) {
				t.Fatalf("%s: SYN-ACK offers MSS %d, want %d", name, offered, advMSS(wantMSS))
			}
			_, f := h.e.tcp.lookup(tcpKey{netip.AddrPortFrom(hpGuest, sport), netip.AddrPortFrom(hpGateway, lport)})
			if wantOurs := map[bool]uint8{true: 0, false: tcpOurWS}[ws < 0]; f == nil || f.mss != wantMSS || f.guestWS != uint8(scale) || f.ourWS != wantOurs {
				t.Fatalf("%s: flow %+v, want MSS %d, scales %d and %d", name, f, wantMSS, scale, wantOurs)
			}
			seq := isn + 1
			rawWnd := uint16(max(1, (256<<10)>>scale)) // 256 KiB, or the least the scale allows
			if scale == 0 {
				rawWnd = 0xffff
			}
			h.send(h.raw(rawSeg{flags: header.TCPAck, seq: seq, ack: ack, wnd: rawWnd, sport: sport, dport: lport}))
			up := pattern(32<<10, int(sport))
			var got []byte
			// The echo runs on another goroutine, so the bound is a
			// time: a count of turns runs out at once when every turn
			// finds the guest's own ACK waiting.
			for deadline := time.Now().Add(10 * time.Second); len(got) < len(up); {
				if time.Now().After(deadline) {
					t.Fatalf("%s: echoed %d of %d bytes, sent %d", name, len(got), len(up), seq-isn-1)
				}
				if off := int(seq - isn - 1); off < len(up) {
					n := min(wantMSS, 1400, len(up)-off)
					h.send(h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: seq, ack: ack, wnd: rawWnd, sport: sport, dport: lport, payload: up[off : off+n]}))
				}
				h.e.turn(1)
				h.readFrames(func(s header.TCP) {
					if s.DstPort() != sport {
						return
					}
					if isRst(s) {
						t.Fatalf("%s: reset", name)
					}
					if p := s.Payload(); len(p) > 0 {
						if len(p) > wantMSS {
							t.Fatalf("%s: a %d-byte segment, past the MSS of %d", name, len(p), wantMSS)
						}
						if s.Seq() == ack {
							if !bytes.Equal(p, up[len(got):len(got)+len(p)]) {
								t.Fatalf("%s: echo differs at %d", name, len(got))
							}
							got = append(got, p...)
							ack += uint32(len(p))
						}
					}
					if seqLT(seq, s.Ack()) {
						seq = s.Ack() // the engine took it: send on from there
					}
				})
				h.send(h.raw(rawSeg{flags: header.TCPAck, seq: seq, ack: ack, wnd: rawWnd, sport: sport, dport: lport}))
			}
			h.send(h.raw(rawSeg{flags: header.TCPRst, seq: seq, sport: sport, dport: lport}))
			h.e.turn(1)
		}
	}
}

// TestTCPBadAcksInHandshake: ACKs in the handshake that acknowledge
// nothing (our SYN's own sequence number), or what was never sent, do
// not spoil it: the guest's right ACK then completes it at once.
func TestTCPBadAcksInHandshake(t *testing.T) {
	h, c := tcpPeer(t)
	c.Close()
	l := listenLoopback(t)
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	for i, bad := range []func(isn uint32) uint32{
		func(isn uint32) uint32 { return isn },
		func(isn uint32) uint32 { return isn + 2 },
		func(isn uint32) uint32 { return isn - 1000 },
	} {
		sport := uint16(32000 + i)
		h.send(h.raw(rawSeg{flags: header.TCPSyn, seq: 100, wnd: 0xffff, sport: sport, dport: lport}))
		var isn uint32
		var got bool
		for j := 0; j < 200 && !got; j++ {
			h.e.turn(5)
			h.readFrames(func(s header.TCP) {
				if s.DstPort() == sport && s.Flags()&header.TCPSyn != 0 {
					isn, got = s.Seq(), true
				}
			})
		}
		if !got {
			t.Fatal("no SYN-ACK")
		}
		var batch []byte
		for range 4 {
			batch = append(batch, h.raw(rawSeg{flags: header.TCPAck, seq: 101, ack: bad(isn), wnd: 0xffff, sport: sport, dport: lport})...)
		}
		h.send(batch)
		h.e.turn(1)
		h.readFrames(func(header.TCP) {})
		h.send(h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: 101, ack: isn + 1, wnd: 0xffff, sport: sport, dport: lport, payload: []byte("hi")}))
		h.e.turn(1)
		_, f := h.e.tcp.lookup(tcpKey{netip.AddrPortFrom(hpGuest, sport), netip.AddrPortFrom(hpGateway, lport)})
		if f == nil || f.state != tcpEstablished || f.rcvNxt != 103 {
			t.Errorf("bad ACK %d: after the right one, the flow is %+v", i, f)
		}
	}
}

// TestTCPUploadIPv6Lengths: over IPv6, guest segments behind extension
// headers, with a payload length short of the frame (junk after it), one
// past the frame, a truncated extension chain, or a long TCP header:
// the host reads exactly the stream.
func TestTCPUploadIPv6Lengths(t *testing.T) {
	te := newTestEngine(t)
	te.cfg.NoTCP = false
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conns := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			conns <- c
		}
	}()
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	// frame is a TCP segment behind ext (extension headers, their next
	// header fields filled in here), with the payload length plen, or
	// the true one if plen < 0, and junk bytes after it.
	frame := func(fl header.TCPFlags, seq, ack uint32, opts, data []byte, ext [][]byte, plen, junkLen int) []byte {
		tcp := make([]byte, header.TCPMinLen+len(opts)+len(data))
		header.TCP(tcp).Encode(header.TCPFields{SrcPort: 45000, DstPort: lport, Seq: seq, Ack: ack, Flags: fl, Window: 0xffff, HeaderLen: header.TCPMinLen + len(opts)})
		copy(tcp[header.TCPMinLen:], opts)
		copy(tcp[header.TCPMinLen+len(opts):], data)
		var l4 []byte
		first := uint8(header.ProtoTCP)
		for i := len(ext) - 1; i >= 0; i-- {
			h := append([]byte(nil), ext[i]...)
			h[0] = first
			first = []uint8{0, 60}[i%2] // hop-by-hop first, then destination options
			l4 = append(h, l4...)
		}
		l4 = append(l4, tcp...)
		b := make([]byte, header.EthernetLen+header.IPv6Len+len(l4)+junkLen)
		header.Ethernet(b).Encode(testMAC, testGuestMAC, header.EtherTypeIPv6)
		ip := header.IPv6(b[header.EthernetLen:])
		ip.Encode(testGuest6, testGW6, first, 64, len(l4))
		if plen >= 0 {
			ip.SetPayloadLen(plen)
		}
		copy(ip[header.IPv6Len:], l4)
		for i := range junkLen {
			b[len(b)-junkLen+i] = 0xee
		}
		return b
	}
	opt8 := []byte{0, 0, 1, 4, 0, 0, 0, 0} // a PadN filling 8 bytes
	out := func() [][]byte {               // what the engine queued or sent already
		frames := te.output(t)
		drainFrames(te.rd, te.guest, func(f []byte) { frames = append(frames, append([]byte(nil), f...)) })
		return frames
	}
	var isn uint32
	te.tapInput(frame(header.TCPSyn, 999, 0, nil, nil, nil, -1, 0))
	te.inputDone()
	for i := 0; i < 200 && isn == 0; i++ {
		te.turn(5)
		for _, f := range out() {
			if s := header.TCP(f[54:]); f[20] == header.ProtoTCP && s.Flags()&header.TCPSyn != 0 {
				isn = s.Seq()
			}
		}
	}
	if isn == 0 {
		t.Fatal("no SYN-ACK")
	}
	te.tapInput(frame(header.TCPAck, 1000, isn+1, nil, nil, nil, -1, 0))
	te.inputDone()
	te.turn(5)
	c := <-conns
	defer c.Close()
	up := pattern(64<<10, 5)
	rng := rand.New(rand.NewPCG(6, 6))
	seq := uint32(1000)
	for step := 0; int(seq-1000) < len(up); step++ {
		if step == 10000 {
			t.Fatalf("stuck at %d", seq-1000)
		}
		off := int(seq - 1000)
		n := min(1+rng.IntN(1400), len(up)-off)
		data := append([]byte(nil), up[off:off+n]...)
		ack := isn + 1
		var f []byte
		switch rng.IntN(6) {
		case 0:
			f = frame(header.TCPAck, seq, ack, nil, data, nil, -1, rng.IntN(30))
		case 1: // behind hop-by-hop and destination options
			f = frame(header.TCPAck, seq, ack, nil, data, [][]byte{opt8, opt8}, -1, 0)
		case 2: // the payload length covers part of the data: the rest is junk
			k := 1 + rng.IntN(n)
			copy(data[k:], junk(data[k:]))
			f = frame(header.TCPAck, seq, ack, nil, data, [][]byte{opt8}, 8+header.TCPMinLen+k, 0)
		case 3: // the payload length claims more than the frame holds
			f = frame(header.TCPAck, seq, ack, nil, junk(data), nil, header.TCPMinLen+n+1+rng.IntN(500), 0)
		case 4: // an extension header longer than what follows
			bad := append([]byte(nil), opt8...)
			bad[1] = 200
			f = frame(header.TCPAck, seq, ack, nil, junk(data), [][]byte{bad}, -1, 0)
		case 5: // a long TCP header
			f = frame(header.TCPAck, seq, ack, bytes.Repeat([]byte{header.TCPOptNop}, 40), data, nil, -1, 0)
		}
		te.tapInput(f)
		te.inputDone()
		te.turn(0)
		for _, fr := range out() {
			if s := header.TCP(fr[54:]); fr[20] == header.ProtoTCP && seqLT(seq, s.Ack()) {
				seq = s.Ack()
			}
		}
	}
	got := make([]byte, len(up))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, up) {
		t.Fatal("the host read bytes that differ from the upload")
	}
}

// TestTCPUploadStalledQuiet: an upload stalled on a host peer that does
// not read, then the guest's FIN, then the peer's FIN: in each state the
// engine, with nothing new from either side, has no events to handle. A
// flow that woke it for nothing would spin.
func TestTCPUploadStalledQuiet(t *testing.T) {
	h, c := tcpPeer(t)
	f := h.flow()
	unix.SetsockoptInt(f.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 32<<10)
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 32<<10) })
	quiet := func(what string) {
		t.Helper()
		for range 20 { // settle
			h.e.turn(0)
			h.readFrames(func(header.TCP) {})
		}
		busy := 0
		for range 200 {
			if h.e.turn(0); h.e.hadEvents() {
				busy++
			}
			h.readFrames(func(header.TCP) {})
		}
		if busy > 0 {
			t.Errorf("%s: %d of 200 turns had events (state %v, flags %#x)", what, busy, f.state, f.flags)
		}
	}
	up := pattern(4<<20, 1)
	sent := 0
	for step := 0; f.flags&tcpWaitWrite == 0; step++ {
		if step == 5000 {
			t.Fatal("the window never closed")
		}
		h.seq = f.rcvNxt
		sent = int(h.seq - 1001)
		n := 1400
		s := h.segment(header.TCPAck|header.TCPPsh, n)
		copy(s[len(s)-n:], up[sent:sent+n])
		h.send(s)
		h.e.turn(0)
		h.readFrames(func(header.TCP) {})
	}
	quiet("window closed")
	h.seq = f.rcvNxt
	h.send(h.segment(header.TCPAck|header.TCPFin, 0))
	h.e.turn(0)
	if f.state&tcpGuestFin == 0 {
		t.Fatalf("the guest's FIN was not taken: %v", f.state)
	}
	h.seq++
	quiet("guest FIN")
	c.(*net.TCPConn).CloseWrite()
	quiet("both FINs, ours unacknowledged")
	// The peer reads it all: the upload is whole.
	got := make([]byte, int(f.rcvNxt-1001-1))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, up[:len(got)]) {
		t.Fatalf("the host read %d bytes, %v, that differ from the upload", len(got), err)
	}
}

// TestTCPHalfClosedIdle: a connection half-closed either way, then
// silent for minutes (a server thinking over its answer), lives on while
// the guest answers our keepalive probes, and carries the answer; a guest
// that stops answering loses it.
func TestTCPHalfClosedIdle(t *testing.T) {
	for _, who := range []string{"guest", "host"} {
		t.Run(who, func(t *testing.T) {
			h, c := tcpPeer(t)
			if who == "guest" {
				h.send(h.segment(header.TCPFin|header.TCPAck, 0))
				h.seq++
			} else {
				c.(*net.TCPConn).CloseWrite()
				h.receive(t, false, isFin)
			}
			h.e.turn(5)
			h.readFrames(func(header.TCP) {})
			probes := 0
			for range 30 { // five minutes, in ten seconds
				h.e.start = h.e.start.Add(-10 * time.Second)
				h.e.lastTick = 0
				h.e.turn(1)
				h.readFrames(func(s header.TCP) {
					if isRst(s) {
						t.Fatalf("reset after %d probes", probes)
					}
					if s.Seq() == h.ack-1 && len(s.Payload()) == 0 {
						probes++
						h.send(h.segment(header.TCPAck, 0)) // a guest answers
					}
				})
			}
			if h.e.tcp.count != 1 || probes == 0 {
				t.Fatalf("%d flows after five silent minutes, %d probes", h.e.tcp.count, probes)
			}
			if who == "guest" {
				c.Write([]byte("the answer"))
				h.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "the answer" })
			} else {
				h.upload(10)
				buf := make([]byte, 10)
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatal(err)
				}
			}
			for range 30 { // the guest is gone
				h.e.start = h.e.start.Add(-10 * time.Second)
				h.e.lastTick = 0
				h.e.turn(1)
				h.readFrames(func(header.TCP) {})
			}
			if h.e.tcp.count != 0 {
				t.Fatalf("flow left after the guest went silent: %v", h.flow().state)
			}
		})
	}
}

// TestTCPStateRandom walks many connections through random events on
// both sides: the guest connects, sends (in order, again, past gaps),
// acknowledges, half-closes, resets, sends SYNs on live flows; host peers
// write, read, half-close, close and reset; time jumps. Whatever happens,
// every byte either side reads is its peer's stream at its offset, the
// cap holds, and once time has run out no flow and no descriptor is left.
func TestTCPStateRandom(t *testing.T) {
	for seed := range uint64(2) {
		t.Run(strconv.Itoa(int(seed)), func(t *testing.T) { tcpStateRandom(t, seed) })
	}
}

func tcpStateRandom(t *testing.T, seed uint64) {
	h, c0 := tcpPeer(t)
	c0.Close()
	h.e.cfg.MaxTCP = 8
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lport := uint16(l.Addr().(*net.TCPAddr).Port)
	accepted := make(chan *net.TCPConn, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.(*net.TCPConn)
		}
	}()
	before := openFds(t)
	type conn struct {
		sport     uint16
		isn, next uint32 // the guest's first byte's sequence number, and where it sends on
		sent      uint32 // the end of what it sent in order
		ack       uint32 // the next byte it expects from us (0 before the SYN-ACK)
		peer      *net.TCPConn
		up, down  []byte // the guest's stream, the host peer's
		upGot     int    // read by the host peer
		downOff   int    // written by the host peer
		downGot   int    // received in order by the guest
		finSent   bool
		peerGone  bool
	}
	rng := rand.New(rand.NewPCG(seed, 1234))
	var conns []*conn
	byPort := map[uint16]*conn{}
	var peers []*net.TCPConn
	sport := uint16(50000)
	buf := make([]byte, 64<<10)
	seg := func(c *conn, fl header.TCPFlags, seq uint32, p []byte) []byte {
		return h.raw(rawSeg{flags: fl, seq: seq, ack: c.ack, wnd: uint16(rng.IntN(0x10000)), sport: c.sport, dport: lport, payload: p})
	}
	for range 2000 {
		var batch []byte
		for range 1 + rng.IntN(6) {
			if len(conns) == 0 || rng.IntN(10) == 0 {
				sport++
				c := &conn{sport: sport, isn: rng.Uint32(), up: pattern(200<<10, int(sport)), down: pattern(200<<10, int(sport)+99)}
				c.next, c.sent = c.isn+1, c.isn+1
				conns = append(conns, c)
				byPort[sport] = c
				batch = append(batch, h.raw(rawSeg{flags: header.TCPSyn, seq: c.isn, wnd: 0xffff, sport: sport, dport: lport,
					opts: []byte{header.TCPOptMSS, 4, 5, 0xb4, header.TCPOptNop, header.TCPOptWS, 3, 7}})...)
				continue
			}
			c := conns[rng.IntN(len(conns))]
			if c.ack == 0 {
				continue
			}
			off := int(min(c.next-c.isn-1, 1<<30)) // past the FIN, even where int is 32 bits
			switch k := rng.IntN(20); {
			case k < 8 && off < len(c.up) && !c.finSent:
				n := min(1+rng.IntN(4000), len(c.up)-off)
				batch = append(batch, seg(c, header.TCPAck|header.TCPPsh, c.next, c.up[off:off+n])...)
				c.next += uint32(n)
				if seqLT(c.sent, c.next) {
					c.sent = c.next
				}
			case k < 10: // again, from before
				back := min(off, rng.IntN(5000))
				n := min(back+rng.IntN(2000), len(c.up)-(off-back))
				if n > 0 && !c.finSent {
					batch = append(batch, seg(c, header.TCPAck, c.next-uint32(back), c.up[off-back:off-back+n])...)
				}
			case k == 10: // past a gap
				g := off + 1 + rng.IntN(3000)
				if g < len(c.up)-10 {
					batch = append(batch, seg(c, header.TCPAck, c.isn+1+uint32(g), c.up[g:g+10])...)
				}
			case k == 11 && rng.IntN(3) == 0:
				batch = append(batch, seg(c, header.TCPAck|header.TCPFin, c.sent, nil)...)
				c.finSent = true
			case k == 12 && rng.IntN(4) == 0:
				batch = append(batch, seg(c, header.TCPRst, c.sent, nil)...)
			case k == 13:
				batch = append(batch, h.raw(rawSeg{flags: header.TCPSyn, seq: rng.Uint32(), wnd: 0xffff, sport: c.sport, dport: lport})...)
			default:
				batch = append(batch, seg(c, header.TCPAck, c.sent, nil)...)
			}
		}
		h.send(batch)
		h.e.turn(1)
		if h.e.tcp.count > 8 {
			t.Fatalf("%d flows past the cap of 8", h.e.tcp.count)
		}
		h.readFrames(func(s header.TCP) {
			c := byPort[s.DstPort()]
			if c == nil {
				return
			}
			if s.Flags()&header.TCPSyn != 0 && c.ack == 0 {
				c.ack = s.Seq() + 1
				batch = append(batch[:0], seg(c, header.TCPAck, c.next, nil)...)
				h.send(batch)
				return
			}
			if p := s.Payload(); len(p) > 0 && c.ack != 0 && s.Seq() == c.ack {
				if c.downGot+len(p) > len(c.down) || !bytes.Equal(p, c.down[c.downGot:c.downGot+len(p)]) {
					t.Fatalf("port %d: the guest got %d bytes at %d that differ from the host's stream", c.sport, len(p), c.downGot)
				}
				c.downGot += len(p)
				c.ack += uint32(len(p))
			}
			if isFin(s) && s.Seq() == c.ack {
				c.ack++
			}
			if !isRst(s) && seqLT(c.next, s.Ack()) && seqLT(s.Ack(), c.sent+2) {
				c.next = s.Ack() // a guest sends on from what was acknowledged
			}
			if rng.IntN(4) == 0 && !seqLT(s.Ack(), c.next) {
				c.next = s.Ack()
			}
		})
		// New host peers: match them by the engine's socket's port.
	match:
		for {
			select {
			case p := <-accepted:
				if p == nil {
					break match
				}
				peers = append(peers, p)
				port := p.RemoteAddr().(*net.TCPAddr).Port
				h.e.tcp.each(func(_ int32, f *tcpFlow) {
					if sa, err := unix.Getsockname(f.fd); err == nil && sa.(*unix.SockaddrInet4).Port == port {
						if c := byPort[f.key.guest.Port()]; c != nil && c.peer == nil {
							c.peer = p
						}
					}
				})
			default:
				break match
			}
		}
		// The host peers act.
		for _, c := range conns {
			if c.peer == nil || c.peerGone {
				continue
			}
			raw, _ := c.peer.SyscallConn()
			switch k := rng.IntN(40); {
			case k < 12:
				raw.Read(func(fd uintptr) bool {
					n, _, _ := unix.Recvfrom(int(fd), buf[:1+rng.IntN(len(buf))], unix.MSG_DONTWAIT)
					if n > 0 {
						if c.upGot+n > len(c.up) || !bytes.Equal(buf[:n], c.up[c.upGot:c.upGot+n]) {
							t.Fatalf("port %d: the host read %d bytes at %d that differ from the guest's stream", c.sport, n, c.upGot)
						}
						c.upGot += n
					}
					return true
				})
			case k < 18 && c.downOff < len(c.down):
				raw.Write(func(fd uintptr) bool {
					n, _ := unix.SendmsgN(int(fd), c.down[c.downOff:min(len(c.down), c.downOff+1+rng.IntN(20000))], nil, nil, unix.MSG_DONTWAIT)
					c.downOff += max(n, 0)
					return true
				})
			case k == 18:
				c.peer.CloseWrite()
			case k == 19 && rng.IntN(3) == 0:
				c.peer.SetLinger(0)
				c.peer.Close()
				c.peerGone = true
			case k == 20 && rng.IntN(3) == 0:
				c.peer.Close()
				c.peerGone = true
			}
		}
		if rng.IntN(50) == 0 {
			h.e.start = h.e.start.Add(-time.Duration(1+rng.IntN(20)) * time.Second)
			h.e.lastTick = 0
		}
	}
	h.expireFlows(t, 300)
	l.Close()
	for p := range accepted {
		p.Close()
	}
	for _, p := range peers {
		p.Close()
	}
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Errorf("descriptors left: %v", leaked)
	}
	up, down := 0, 0
	for _, c := range conns {
		up += c.upGot
		down += c.downGot
	}
	t.Logf("%d connections; the host read %d bytes, the guest %d", len(conns), up, down)
}

// expireFlows lets time pass, a minute a turn, until every flow has
// ended, in at most turns turns: whatever its state, none lives for ever.
func (h *hotPath) expireFlows(t *testing.T, turns int) {
	t.Helper()
	for i := 0; h.e.tcp.count > 0; i++ {
		if i == turns {
			h.e.tcp.each(func(_ int32, f *tcpFlow) { t.Errorf("flow %v left: %v", f.key, f.state) })
			t.Fatalf("%d flows left", h.e.tcp.count)
		}
		h.e.start = h.e.start.Add(-time.Minute)
		h.e.lastTick = 0
		h.e.turn(1)
		h.readFrames(func(header.TCP) {})
	}
}

// TestTCPUploadWholeFrames: over vhost-user, segments whose frames run
// on into a tail of padding past their IP length are made whole
// (frameInput) in a buffer that the next such frame overwrites; a batch
// of them, in one read of the link, reaches the host as the guest sent
// it, not as the last frame made whole left that buffer.
func TestTCPUploadWholeFrames(t *testing.T) {
	h, c := tcpPeer(t)
	up := pattern(40, 3)
	for i := 0; i < len(up); i += 10 {
		b := h.raw(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: h.seq + uint32(i), ack: h.ack, wnd: h.wnd,
			payload: up[i : i+10], pad: qemusock.HeadCopy})[4:]
		head := append([]byte(nil), b[:qemusock.HeadCopy]...)
		h.e.frameInput(head, []unix.Iovec{iovec(&b[qemusock.HeadCopy], len(b)-qemusock.HeadCopy)})
	}
	h.e.inputDone()
	got := make([]byte, len(up))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, up) {
		t.Fatalf("the host read %x, want %x", got, up)
	}
}

// vhostFrames hands the engine a batch of frames (length prefixes
// included) as one read of a vhost-user link does: each past
// qemusock.HeadCopy bytes as its head, copied, and its tail, left where
// it lies, in up to four pieces cut at random.
func (h *hotPath) vhostFrames(batch [][]byte, rng *rand.Rand) {
	for _, b := range batch {
		b = b[4:]
		if len(b) <= qemusock.HeadCopy {
			h.e.frameInput(b, nil)
			continue
		}
		head := append([]byte(nil), b[:qemusock.HeadCopy]...)
		rest := b[qemusock.HeadCopy:]
		var tail []unix.Iovec
		for len(rest) > 0 {
			n := len(rest)
			if len(tail) < 3 {
				n = 1 + rng.IntN(n)
			}
			tail = append(tail, iovec(&rest[0], n))
			rest = rest[n:]
		}
		h.e.frameInput(head, tail)
	}
	h.e.inputDone()
}
