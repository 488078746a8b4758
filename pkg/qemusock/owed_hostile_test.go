package qemusock

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// engineFlush is slirp's Engine.flush over the link, with one flow that
// waits for room (kickEngine.waiting): Flush while something is pending,
// resume the flow once nothing is, and go round again while that left
// something pending. It reports whether the loop ended within rounds,
// and how many times the guest was interrupted.
func (e *kickEngine) engineFlush(rounds int) (ended bool, interrupts int) {
	l := e.f.l
	defer func() { interrupts = drainCalls(e.f.call[0]) }()
	for range rounds {
		if l.Pending() > 0 {
			if err := l.Flush(); err != nil {
				e.f.t.Fatal(err)
			}
			if l.Pending() > 0 {
				return true, 0
			}
		}
		if !e.waiting {
			return true, 0
		}
		// The flow resumed: as tcpSendToGuest, a reservation and, with
		// none, back to waiting. Its frame is the next Flush's.
		var iov [4]unix.Iovec
		head, _ := l.ReserveV(54, 200, iov[:0])
		if e.waiting = head == nil; !e.waiting {
			l.Commit(200)
			e.sent++
		}
		if l.Pending() == 0 {
			return true, 0
		}
	}
	return false, 0
}

// drainCalls tells how many reads an eventfd gave before it was empty:
// 1 if it was signalled (the count itself is not read, as qemu-user
// swaps it), 0 if not.
func drainCalls(fd int) int {
	var b [8]byte
	if n, err := unix.Read(fd, b[:]); err != nil || n != len(b) {
		return 0
	}
	return 1
}

// TestVhostUserOwedNoSpin: a guest out of RX buffers, with interrupts on,
// and a flow waiting for them. A failed reservation owes the guest an
// interrupt (rxShort), which Pending counts and Flush sends; the engine's
// flush then resumes the flow, which is refused again. The engine must
// not go round for ever, an interrupt each time, within one turn: at most
// one interrupt a turn, and the turn ends.
func TestVhostUserOwedNoSpin(t *testing.T) {
	e := newKickEngine(t)
	e.f.rxBufs(0, 1, 2048)
	e.sendV()                  // takes the only buffer
	if e.sendV(); !e.waiting { // none left
		t.Fatal("a flow was not refused room with no buffers")
	}
	drainCalls(e.f.call[0])
	for turn := range 3 {
		ended, n := e.engineFlush(1000)
		if !ended {
			t.Fatalf("turn %d: the engine's flush goes round for ever (pending %d)", turn, e.f.l.Pending())
		}
		if n > 1 {
			t.Fatalf("turn %d: %d interrupts", turn, n)
		}
	}
	// Turns as fast as events may come, for a while: the guest still
	// gets one a tick, and no more.
	start := time.Now()
	sum := 0
	for time.Since(start) < 4*engineTick {
		ended, n := e.engineFlush(1000)
		if !ended {
			t.Fatal("the engine's flush goes round for ever")
		}
		sum += n
		time.Sleep(engineTick / 10)
	}
	if most := 1 + int(time.Since(start)/engineTick); sum == 0 || sum > most {
		t.Errorf("%d interrupts in %v of turns, want 1 to %d", sum, time.Since(start), most)
	}
	// Buffers and a kick: the flow goes on.
	e.refill(1, 2)
	if ended, _ := e.engineFlush(1000); !ended || e.waiting {
		t.Errorf("after buffers came: loop ended %v, flow waiting %v", ended, e.waiting)
	}
}

// engineTick is slirp's tick, a turn's longest wait.
const engineTick = 100 * time.Millisecond

// TestVhostUserOwedCallIsKick: a front-end that gives the RX ring's kick
// as its call descriptor too, with no RX buffers and a frame waiting for
// one. Each interrupt the guest is owed for want of buffers is a kick,
// which has the engine flush again at once, and the flush owes another:
// the engine must not spin, turn after turn.
func TestVhostUserOwedCallIsKick(t *testing.T) {
	e := newKickEngine(t)
	e.req(vuSetVringCall, u64s(0), e.f.kick[0])
	e.queue()
	if e.f.l.Pending() == 0 {
		t.Fatal("a frame went to a ring with no buffers")
	}
	e.run() // fails on a spin
}
