package slirp

import (
	"crypto/rand"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp/header"
)

// IP fragments, both ways. The guest's UDP datagrams and echo requests
// past its MTU (a DNS server's DNSSEC answer, syslog, NFS over UDP,
// ping -s 4000) come in fragments, which are put together here, as
// libslirp and gVisor's stack do, and then take the path a whole
// datagram takes (l4Input); passt drops them. TCP never needs it, as the
// guest keeps to the MSS: its fragments are dropped. The other way,
// datagrams and echo replies past the guest's MTU leave in fragments
// (sendFragments).
//
// The guest is not trusted: a few reassemblies at a time, each in a
// buffer of the pool New allocates, none older than fragTimeout; a
// fragment that overlaps another (RFC 5722; for IPv4 too, where RFC 791
// would let the later one win: the safest reading), changes the
// datagram's length or protocol, or runs past what IP carries (65,535
// bytes, IPv4's header included) drops its datagram whole. A fragment
// identical to bytes already in place (a duplicate) changes nothing and
// is let be.

const (
	fragSlots   = 32               // reassemblies in progress; a new one past them takes the oldest's place
	fragMaxLen  = 0xffff           // what is reassembled: IPv6's largest fragmentable part without jumbograms; IPv4's is its header less
	fragTimeout = 30 * time.Second // RFC 791 and 8200 allow up to 60 s
	fragBlock   = 8                // fragments start, and all but the last end, on multiples of this
)

// fragSlot is one reassembly in progress.
type fragSlot struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8 // IPv4's protocol; IPv6's fragment header's next header
	ttl      uint8 // the first fragment's TTL or hop limit, which UDP passes on
	used     bool
	total    int // the datagram's length, once its last fragment came; -1 before
	have     int // bytes in place
	end      int // where the furthest fragment ends
	start    time.Duration
	blocks   [(fragMaxLen + fragBlock*64) / (fragBlock * 64)]uint64 // the 8-byte blocks in place
	buf      []byte                                                 // fragMaxLen bytes of the memory init took
}

type fragPool struct {
	slots [fragSlots]fragSlot
	count int
	outID uint32 // the identification of the last datagram sent the guest in fragments
}

// init gives each slot its buffer, at start: reassembly allocates
// nothing. The identifications of what goes to the guest in fragments
// start at random (RFC 7739), not where the engine before, whose
// fragments a migrated or reconnected guest may still hold, started.
func (p *fragPool) init() {
	mem := make([]byte, fragSlots*fragMaxLen)
	for i := range p.slots {
		p.slots[i].buf = mem[i*fragMaxLen : (i+1)*fragMaxLen : (i+1)*fragMaxLen]
	}
	var id [4]byte
	rand.Read(id[:])
	p.outID = binary.LittleEndian.Uint32(id[:])
}

// frag4Input takes an IPv4 fragment from the guest.
func (e *Engine) frag4Input(ip header.IPv4) {
	if ip.DontFragment() && ip.MoreFragments() {
		e.Stats.Malformed++
		return
	}
	e.fragInput(ip.Src(), ip.Dst(), uint32(ip.ID()), ip.Protocol(), ip.TTL(), ip.FragmentOffset(), ip.MoreFragments(), ip.Payload())
}

// frag6Input takes what follows an IPv6 fragment header from the guest.
// An atomic fragment (offset 0, no more: RFC 6946) is a whole packet.
func (e *Engine) frag6Input(src, dst netip.Addr, hop uint8, f header.IPv6Frag) {
	if !f.IsValid() {
		e.Stats.Malformed++
		return
	}
	if f.Offset() == 0 && !f.More() {
		proto, payload, ok := header.SkipExtensions(f.NextHeader(), f.Payload())
		if !ok {
			e.Stats.Malformed++
			return
		}
		e.fragDeliver(src, dst, proto, hop, payload)
		return
	}
	e.fragInput(src, dst, f.ID(), f.NextHeader(), hop, f.Offset(), f.More(), f.Payload())
}

// fragInput puts a fragment of the datagram id from src to dst in place,
// and passes the datagram on once it is whole.
func (e *Engine) fragInput(src, dst netip.Addr, id uint32, proto, ttl uint8, off int, more bool, data []byte) {
	s := e.fragFind(src, dst, id)
	if s == nil && !e.fragWanted(proto, src.Is6()) {
		e.Stats.Unhandled++ // TCP's, or a protocol served to none
		return
	}
	end := off + len(data)
	limit := fragMaxLen
	if src.Is4() {
		limit -= header.IPv4MinLen // IPv4's total length counts its header
	}
	switch {
	case more && (len(data) == 0 || len(data)%fragBlock != 0), end > limit,
		s != nil && s.proto != proto,
		s != nil && !more && (s.total >= 0 && s.total != end || s.end > end),
		s != nil && more && s.total >= 0 && end > s.total:
		e.fragDrop(s)
		e.Stats.Malformed++
		return
	}
	if s == nil {
		s = e.fragNew(src, dst, id, proto)
	}
	if e.fragOverlaps(s, off, data) {
		return
	}
	if off == 0 {
		// The first fragment holds the upper layer's header whole
		// (RFC 7112, for IPv6; UDP's and an echo's are 8 bytes).
		p, l4, ok := proto, data, true
		if src.Is6() {
			p, l4, ok = header.SkipExtensions(proto, data)
		}
		if !ok || len(l4) < header.UDPLen || p != header.ProtoUDP && p != icmpProto(src) || !e.fragWanted(p, src.Is6()) {
			e.fragDrop(s)
			e.Stats.Malformed++
			return
		}
		s.ttl = ttl
	}
	copy(s.buf[off:], data)
	for b := off / fragBlock; b < (end+fragBlock-1)/fragBlock; b++ {
		s.blocks[b/64] |= 1 << (b % 64)
	}
	s.have += len(data)
	s.end = max(s.end, end)
	if !more {
		s.total = end
	}
	if s.have == s.total {
		d, p := s.buf[:s.total], s.proto
		if src.Is6() {
			p, d, _ = header.SkipExtensions(p, d) // walked at the first fragment
		}
		e.fragDeliver(src, dst, p, s.ttl, d)
		e.udpFlush() // a batched datagram in the slot goes before the slot is reused
		e.fragFree(s)
	}
}

// fragWanted tells whether datagrams of proto, the upper layer or an
// IPv6 extension header before it, are reassembled.
func (e *Engine) fragWanted(proto uint8, v6 bool) bool {
	switch proto {
	case header.ProtoUDP:
		return !e.cfg.NoUDP
	case header.ProtoICMP:
		return !v6 && !e.cfg.NoICMP
	case header.ProtoICMPv6:
		return v6 && !e.cfg.NoICMP
	}
	return v6 && header.IsExtension(proto) // checked again at the first fragment
}

// fragDeliver passes a whole datagram on as any other, DHCP's and
// DHCPv6's to their servers too: UDP and ICMP only, and of ICMPv6 no NDP
// (RFC 6980), which l4Input leaves alone.
func (e *Engine) fragDeliver(src, dst netip.Addr, proto, ttl uint8, payload []byte) {
	switch {
	case proto != header.ProtoUDP && proto != icmpProto(src):
		e.Stats.Unhandled++
	case src.Is4():
		e.ip4Deliver(src, dst, proto, ttl, payload)
	default:
		e.ip6Deliver(src, dst, proto, ttl, payload)
	}
}

// fragOverlaps tells whether data, at off in s's datagram, falls on
// bytes already in place. A fragment that is all such bytes, the same,
// is a duplicate and let be; one that overlaps otherwise drops the
// datagram (RFC 5722).
func (e *Engine) fragOverlaps(s *fragSlot, off int, data []byte) bool {
	in, out := 0, 0
	for b := off / fragBlock; b < (off+len(data)+fragBlock-1)/fragBlock; b++ {
		if s.blocks[b/64]&(1<<(b%64)) != 0 {
			in++
		} else {
			out++
		}
	}
	switch {
	case in == 0:
		return false
	case out == 0 && string(s.buf[off:off+len(data)]) == string(data):
		return true // a duplicate
	}
	e.fragDrop(s)
	e.Stats.Malformed++
	return true
}

// fragFind is the reassembly of the datagram id from src to dst, or nil.
func (e *Engine) fragFind(src, dst netip.Addr, id uint32) *fragSlot {
	if e.frag.count == 0 {
		return nil
	}
	for i := range e.frag.slots {
		if s := &e.frag.slots[i]; s.used && s.id == id && s.src == src && s.dst == dst {
			return s
		}
	}
	return nil
}

// fragNew starts a reassembly, in the place of the oldest when all are
// in use.
func (e *Engine) fragNew(src, dst netip.Addr, id uint32, proto uint8) *fragSlot {
	var s *fragSlot
	for i := range e.frag.slots {
		if c := &e.frag.slots[i]; !c.used {
			s = c
			break
		} else if s == nil || c.start < s.start {
			s = c
		}
	}
	if s.used {
		e.fragDrop(s)
		e.Stats.Dropped++
	}
	clear(s.blocks[:])
	s.src, s.dst, s.id, s.proto, s.used = src, dst, id, proto, true
	s.total, s.have, s.end, s.start = -1, 0, 0, e.now
	e.frag.count++
	return s
}

// fragDrop drops a reassembly, if any.
func (e *Engine) fragDrop(s *fragSlot) {
	if s != nil {
		e.fragFree(s)
	}
}

func (e *Engine) fragFree(s *fragSlot) {
	s.used = false
	e.frag.count--
}

// fragExpire drops the reassemblies older than fragTimeout.
func (e *Engine) fragExpire() { e.fragDropOlder(fragTimeout) }

// fragDropOlder drops the reassemblies older than age, counted; a
// negative age drops them all.
func (e *Engine) fragDropOlder(age time.Duration) {
	if e.frag.count == 0 {
		return
	}
	for i := range e.frag.slots {
		if s := &e.frag.slots[i]; s.used && e.now-s.start > age {
			e.fragFree(s)
			e.Stats.Dropped++
		}
	}
}

// sendFragments sends the guest, from src with the source MAC mac, the
// datagram d of protocol proto (its L4 header and checksum in place) in
// IP fragments within its MTU, as the host's own stack sends one over a
// link of that MTU: a DNS answer of a few KiB (EDNS, DNSSEC) reaches a
// guest at 1500. passt sends it as one frame past the MTU, which a NIC
// that keeps to its MTU drops.
func (e *Engine) sendFragments(mac [6]byte, src, dst netip.Addr, proto uint8, d []byte) {
	e.frag.outID++
	data := l4Off(dst) // where a fragment's data starts in its frame
	if dst.Is6() {
		data += header.IPv6FragmentLen
	}
	step := (e.mtu() - (data - ipOff)) &^ (fragBlock - 1)
	if !e.fragsFit(data, step, len(d)) {
		e.Stats.Dropped++
		return
	}
	for off := 0; off < len(d); off += step {
		chunk := d[off:min(off+step, len(d))]
		more := off+len(chunk) < len(d)
		b := e.reserve(data + len(chunk))
		if b == nil {
			e.Stats.Dropped++ // not expected: fragsFit saw the room
			return
		}
		copy(b[data:], chunk)
		var size int
		if dst.Is4() {
			size = e.fillIP(b, mac, src, dst, proto, len(chunk))
			header.IPv4(b[ipOff:]).SetFragment(uint16(e.frag.outID), off, more)
		} else {
			size = e.fillIP(b, mac, src, dst, header.IPv6Fragment, header.IPv6FragmentLen+len(chunk))
			header.EncodeFragment(b[l4Off6:], proto, off, more, e.frag.outID)
		}
		e.commit(size)
	}
}

// fragsFit tells whether the link takes every fragment of a datagram of
// n bytes, step bytes each after data bytes of headers: some of them
// alone (the link full midway) the guest could never put together, and
// they would take the room of what comes next. It reserves them all,
// and leaves no reservation open.
func (e *Engine) fragsFit(data, step, n int) bool {
	if e.link == nil {
		return false
	}
	e.link.Cancel()
	defer e.link.Cancel()
	for off := 0; off < n; off += step {
		if e.link.Reserve(max(data+min(step, n-off), minFrameLen)) == nil {
			return false
		}
	}
	return true
}
