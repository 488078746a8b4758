package slirp

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Kinds of descriptor the engine's epoll set watches.
const (
	kindStop = iota
	kindListen
	kindLink
	kindTCP
	kindUDP
	kindICMP
	kindTCPListen
	kindUDPListen
	kindCall
	kindRepair       // the TCP_REPAIR helper's listening socket (migrate.go)
	kindSplice       // one side of a spliced pair (splice.go)
	kindSpliceListen // a -T or -U socket in the namespace (splice.go)
	kindSpliceUDP    // a -U sender's host socket (splice_udp.go)
	kindNeigh        // the host's neighbour table changes (neigh.go)
)

// epollRef is what an epoll registration hands back with each event, in
// the event's 64 bits of user data, as passt's union epoll_ref does: the
// kind of descriptor; the index of its flow, listener, or the link's own
// id; and, for a flow, the generation of its table slot, so that a late
// event for a flow that was closed, and whose slot was taken again, is
// recognised (flowTable.get) and dropped.
type epollRef struct {
	kind uint8  // 4 bits
	gen  uint32 // 28 bits (genMask)
	idx  int32
}

// event packs r: the kind and generation in the first 32 bits, the
// index in the other 32.
func (r epollRef) event(events uint32) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: int32(r.kind) | int32(r.gen&genMask)<<4, Pad: r.idx}
}

// refOf unpacks what event packed.
func refOf(ev *unix.EpollEvent) epollRef {
	return epollRef{kind: uint8(ev.Fd & 0xf), gen: uint32(ev.Fd) >> 4, idx: ev.Pad}
}

func (e *Engine) epollAdd(fd int, events uint32, ref epollRef) error {
	ev := ref.event(events)
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

func (e *Engine) epollMod(fd int, events uint32, ref epollRef) error {
	ev := ref.event(events)
	return unix.EpollCtl(e.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
}

// linkPoller is the engine's epoll set as the guest's link uses it: a
// link's descriptors report as kindLink, with the link's own id.
type linkPoller struct{ e *Engine }

func (p linkPoller) Add(fd int, events uint32, id uint32) error {
	return p.e.epollAdd(fd, events, epollRef{kind: kindLink, idx: int32(id)})
}

func (p linkPoller) Mod(fd int, events uint32, id uint32) error {
	return p.e.epollMod(fd, events, epollRef{kind: kindLink, idx: int32(id)})
}

func (p linkPoller) Del(fd int) error {
	return unix.EpollCtl(p.e.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}
