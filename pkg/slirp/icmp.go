package slirp

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// ICMP echo through unprivileged "ping" sockets (SOCK_DGRAM, IPPROTO_ICMP).
// The kernel owns the echo identifier of such a socket, so each guest
// identifier gets its own socket and replies get the guest's identifier
// back. The host decides who may open ping sockets
// (net.ipv4.ping_group_range); when it says no, we say so once.

const (
	icmpIdle     = 60_000_000_000
	icmpMaxFlows = 1 << 10
)

type icmpKey struct {
	guest netip.Addr
	id    uint16
}

type icmpFlow struct {
	key     icmpKey
	idx     int32
	fd      int
	lastAct int64
}

type icmpTable struct {
	flowTable[icmpKey, icmpFlow]
	warned bool
}

func (e *Engine) icmpInput(src, dst netip.Addr, m header.ICMP) {
	if !m.IsValid() {
		e.Stats.Malformed++
		return
	}
	if m.Type() != header.ICMPv4Echo {
		e.Stats.Unhandled++
		return
	}
	key := icmpKey{src, m.Ident()}
	_, f := e.icmp.lookup(key)
	if f == nil {
		if f = e.icmpOpen(key); f == nil {
			return
		}
	}
	f.lastAct = e.now
	if err := unix.Sendto(f.fd, m, 0, e.setSA4(e.mapToHost(dst), 0)); err != nil {
		e.debugf("ICMP echo to %v: %v", dst, err)
	}
}

func (e *Engine) icmpOpen(key icmpKey) *icmpFlow {
	if e.icmp.count >= icmpMaxFlows {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		if !e.icmp.warned {
			e.icmp.warned = true
			e.logf("ICMP echo unavailable: cannot open a ping socket (%v); "+
				"the host's net.ipv4.ping_group_range must include our group", err)
		}
		return nil
	}
	idx, f := e.icmp.add(key)
	*f = icmpFlow{key: key, idx: idx, fd: fd, lastAct: e.now}
	e.epollAdd(fd, unix.EPOLLIN, epollTag(kindICMP, e.icmp.gen(idx)), idx)
	return f
}

// icmpSockEvent relays echo replies to the guest.
func (e *Engine) icmpSockEvent(idx int32, gen uint32) {
	f := e.icmp.get(idx, gen)
	if f == nil {
		return
	}
	for {
		b := e.reserve4(udpMaxData)
		if b == nil {
			return
		}
		m := b[l4Off4:]
		n, from, err := recvfrom(f.fd, m)
		if err != nil {
			return
		}
		if n < header.ICMPEchoLen {
			continue
		}
		m = m[:n]
		reply := header.ICMP(m)
		reply.SetIdent(f.key.id)
		reply.SetChecksum(0)
		reply.SetChecksum(header.Fold(header.Checksum(m, 0)))
		e.fill4(b, e.mapToGuest(from.Addr()), f.key.guest, header.ProtoICMP, n)
		e.wr.Commit(hdrRoom4 + n)
		e.Stats.FramesOut++
	}
}

func (e *Engine) icmpExpire() {
	e.icmp.each(func(_ int32, f *icmpFlow) {
		if e.now-f.lastAct > icmpIdle {
			e.icmpClose(f)
		}
	})
}

func (e *Engine) icmpClose(f *icmpFlow) {
	unix.Close(f.fd)
	e.icmp.remove(f.idx, f.key)
}

func (t *icmpTable) closeAll(e *Engine) { t.each(func(_ int32, f *icmpFlow) { e.icmpClose(f) }) }
