package qemusock

import (
	"testing"

	"golang.org/x/sys/unix"
)

// kickEngine drives a link as the engine does, over a real epoll set:
// each event reported goes to Event, room to Flush (and to a flow that
// waits for room, as ReserveV), frames to Read.
type kickEngine struct {
	f *frontEnd
	p epollPoller
	// waiting is a flow refused room by ReserveV, which the engine
	// resumes when room is reported; sent counts the frames it sent.
	waiting bool
	sent    int
	// kicky: the guest kicks with each request, so that its kick comes
	// in the same epoll batch, before or after the request.
	kicky bool
}

func newKickEngine(t *testing.T) *kickEngine {
	f := newFrontEnd(t)
	p := newEpollPoller(t)
	f.l.Register(p)
	f.setUp()
	e := &kickEngine{f: f, p: p}
	e.run() // the first kick nobody waits for
	return e
}

// req sends a request and handles the socket's event as the engine does.
func (e *kickEngine) req(req uint32, payload []byte, fds ...int) {
	e.f.t.Helper()
	e.f.send(req, payload, fds...)
	if e.kicky {
		signal(e.f.kick[0])
	}
	e.run()
}

// run handles events until none is reported, and fails on a spin.
func (e *kickEngine) run() {
	t := e.f.t
	t.Helper()
	for range 100 {
		ids := e.p.ready(t)
		if len(ids) == 0 {
			return
		}
		for _, id := range ids {
			in, out, err := e.f.l.Event(uint32(id), unix.EPOLLIN)
			if err != nil {
				t.Fatalf("event %d: %v", id, err)
			}
			if out {
				e.flush()
			}
			if in {
				e.f.readFrames()
			}
		}
	}
	t.Fatalf("the link spins: still ready %v", e.p.ready(t))
}

func (e *kickEngine) flush() {
	if err := e.f.l.Flush(); err != nil {
		e.f.t.Fatal(err)
	}
	if e.waiting && e.f.l.Pending() == 0 {
		e.sendV()
	}
}

// sendV is a flow sending one frame built in the guest's buffers.
func (e *kickEngine) sendV() {
	var iov [4]unix.Iovec
	head, _ := e.f.l.ReserveV(54, 200, iov[:0])
	if e.waiting = head == nil; e.waiting {
		return
	}
	e.f.l.Commit(200)
	e.sent++
	if err := e.f.l.Flush(); err != nil {
		e.f.t.Fatal(err)
	}
}

// queue queues a small frame and flushes it.
func (e *kickEngine) queue() {
	if b := e.f.l.Reserve(60); b != nil {
		e.f.l.Commit(60)
	}
	e.flush()
}

// refill adds n RX buffers and kicks, as a guest does, and runs.
func (e *kickEngine) refill(first, n int) {
	e.f.rxBufs(first, n, 2048)
	signal(e.f.kick[0])
	e.run()
}

// TestVhostUserRxKickHostile: what a front-end does to the RX ring while
// a frame, or a flow, waits for the guest's buffers (the RX kick watched)
// or while nothing does (unwatched) never leaves the waiting one without
// the kick that brings buffers: stopped and restarted with the same
// eventfd or another, disabled and enabled, reset, features and the
// dirty log renegotiated, buffers added with no kick.
func TestVhostUserRxKickHostile(t *testing.T) {
	restart := func(e *kickEngine, kick int) {
		e.req(vuGetVringBase, u32s(0, 0))
		e.f.reply()
		e.req(vuSetVringKick, u64s(0), kick)
	}
	for _, tc := range []struct {
		name string
		do   func(e *kickEngine)
	}{
		{"nothing", func(e *kickEngine) {}},
		{"restarted same kick", func(e *kickEngine) { restart(e, e.f.kick[0]) }},
		{"restarted other kick", func(e *kickEngine) {
			other, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
			defer unix.Close(other)
			restart(e, other)
			restart(e, e.f.kick[0])
		}},
		{"kick replaced", func(e *kickEngine) { e.req(vuSetVringKick, u64s(0), e.f.kick[0]) }},
		{"kicked while stopped", func(e *kickEngine) {
			e.req(vuGetVringBase, u32s(0, 0))
			e.f.reply()
			signal(e.f.kick[0])
			e.run()
			e.req(vuSetVringKick, u64s(0), e.f.kick[0])
		}},
		{"disabled, kicked, enabled", func(e *kickEngine) {
			e.req(vuSetVringEnable, u32s(0, 0))
			signal(e.f.kick[0])
			e.run()
			signal(e.f.kick[0])
			e.run()
			e.req(vuSetVringEnable, u32s(0, 1))
		}},
		{"features", func(e *kickEngine) {
			e.req(vuSetFeatures, u64s(virtioFVersion1))
			e.req(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf))
		}},
		{"log all", func(e *kickEngine) {
			e.req(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
			e.req(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf))
		}},
		{"reset", func(e *kickEngine) {
			e.req(vuResetOwner, nil)
			signal(e.f.kick[0])
			e.run()
			e.f.setUp()
			e.run()
		}},
	} {
		for _, direct := range []bool{false, true} {
			for i := range 4 {
				watched, kicky := i&1 != 0, i&2 != 0
				e := newKickEngine(t)
				e.kicky = kicky
				if watched { // something waits before the front-end acts
					e.wait(direct)
				}
				tc.do(e)
				if !watched {
					e.wait(direct)
				}
				// Buffers with no kick: nothing to see until one comes.
				e.f.rxBufs(0, 1, 2048)
				e.run()
				signal(e.f.kick[0])
				e.run()
				e.refill(1, 4)
				if e.f.l.Pending() != 0 || direct && (e.waiting || e.sent == 0) {
					t.Errorf("%s (direct %v, watched before %v, kicky %v): pending %d, flow waiting %v, used %d",
						tc.name, direct, watched, kicky, e.f.l.Pending(), e.waiting, e.f.usedIdx(0))
				}
				// And again, now the ring is running.
				e.wait(direct)
				e.refill(5, 2)
				if e.f.l.Pending() != 0 || e.waiting {
					t.Errorf("%s (direct %v, watched before %v, kicky %v): afterwards, pending %d, flow waiting %v",
						tc.name, direct, watched, kicky, e.f.l.Pending(), e.waiting)
				}
			}
		}
	}
}

// wait leaves a frame queued, or a flow refused room, for want of RX
// buffers.
func (e *kickEngine) wait(direct bool) {
	for range 20 {
		if direct {
			if e.sendV(); e.waiting {
				return
			}
		} else if e.queue(); e.f.l.Pending() > 0 {
			return
		}
	}
	e.f.t.Fatal("no want of buffers")
}
