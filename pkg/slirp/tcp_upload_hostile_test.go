package slirp

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"strconv"
	"testing"

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
	t.Encode(header.TCPFields{SrcPort: 40000, DstPort: h.dport, Seq: s.seq, Ack: s.ack, Flags: s.flags, Window: s.wnd, HeaderLen: hl})
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
			case k == 7: // past a gap: dropped, so junk
				n := 1 + rng.IntN(2000)
				at := off(sent) + 1 + rng.IntN(50000)
				add(rawSeg{flags: header.TCPAck | header.TCPPsh, seq: base + uint32(at), ack: peerAck, wnd: wnd, payload: make([]byte, n)})
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
		if seqLT(sent, acked) {
			t.Fatalf("the engine acknowledged %d, past the %d the guest sent", off(acked), off(sent))
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
