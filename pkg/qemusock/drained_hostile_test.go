package qemusock

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A stream client that makes the link's reads come short in every way
// it can, against a link that takes a short read for the end of what
// the socket holds (fdLink.drained).

// linkLoop plays the engine's loop (slirp.Engine.linkEvent) over a
// level-triggered epoll set: at each event, up to 8 Reads until EAGAIN,
// every frame taken after each. It returns the frames, in order, once
// the client has closed, and counts the wake-ups that read nothing. A
// wait of 5 s with no event means frames were left in the socket with
// epoll silent, or the close was never seen.
func linkLoop(t *testing.T, l Link, p epollPoller, check func(f []byte, n int)) (frames, idle, busy int) {
	t.Helper()
	var ev [4]unix.EpollEvent
	for {
		n, err := unix.EpollWait(p.fd, ev[:], 5000)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Fatalf("no event for 5 s after %d frames: the link stalled", frames)
		}
		in, _, err := l.Event(0, ev[0].Events)
		if err != nil {
			return // the client is gone and everything was read
		}
		if idle > busy+10 {
			t.Fatalf("%d wake-ups read nothing, %d read", idle, busy)
		}
		got := false
		for i := 0; in && i < 8; i++ {
			n, err := l.Read()
			if err == unix.EAGAIN {
				break
			}
			if err != nil {
				t.Fatalf("Read after %d frames: %v", frames, err)
			}
			if n == 0 {
				return
			}
			got = true
			for {
				f, err := l.Next()
				if err != nil {
					t.Fatalf("after frame %d: %v", frames, err)
				}
				if f == nil {
					break
				}
				check(f, frames)
				frames++
			}
		}
		if got {
			busy++
		} else {
			idle++
		}
	}
}

// TestStreamDrainedHostile: a client writes numbered frames in pieces
// of every size, from one byte to more than the link reads at once,
// some carrying a descriptor (SCM_RIGHTS), where read(2) stops short
// with more queued, some after a pause, and then closes. The link, lent
// pages or not, hands every frame over whole and in order, the close
// is seen, epoll is never left silent with bytes unread, and wake-ups
// that read nothing are no more than those that read.
func TestStreamDrainedHostile(t *testing.T) {
	for _, lend := range []bool{false, true} {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.SetNonblock(p[0], true)
		// The smallest reader the link can have, so that the client can
		// fill it as well as leave it short.
		l := newStream(p[0], QEMU, lend, 0).(*fdLink)
		poll := newEpollPoller(t)
		if err := l.Register(poll); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(3, 4))
		var stream []byte
		const count = 3000
		for n := range count {
			size := 60
			switch rng.IntN(4) {
			case 0:
				size = 1 + rng.IntN(MaxFrame)
			case 1:
				size = MaxFrame
			case 2:
				size = 1 + rng.IntN(200)
			}
			f := make([]byte, 4+size)
			binary.BigEndian.PutUint32(f, uint32(size))
			numbered(f[4:], n)
			stream = append(stream, f...)
		}
		devNull, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		sent := make(chan error, 1)
		go func() {
			defer unix.Close(p[1])
			rights := unix.UnixRights(devNull)
			for b := stream; len(b) > 0; {
				var k int
				switch rng.IntN(5) {
				case 0:
					k = 1 + rng.IntN(8)
				case 1:
					k = 1 + rng.IntN(4096)
				case 2:
					k = 1 + rng.IntN(1<<20)
				default:
					k = 1 + rng.IntN(2*MaxFrame)
				}
				k = min(k, len(b))
				var err error
				if rng.IntN(4) == 0 {
					k, err = unix.SendmsgN(p[1], b[:k], rights, nil, 0)
				} else {
					k, err = unix.Write(p[1], b[:k])
				}
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					sent <- err
					return
				}
				b = b[k:]
				if rng.IntN(50) == 0 {
					time.Sleep(time.Millisecond) // the link reads the socket empty
				}
			}
			sent <- nil
		}()
		frames, idle, busy := linkLoop(t, l, poll, func(f []byte, n int) {
			if !isNumbered(f, n) {
				t.Fatalf("lend %v: frame %d of %d bytes arrived changed", lend, n, len(f))
			}
		})
		if err := <-sent; err != nil {
			t.Fatalf("client: %v", err)
		}
		unix.Close(devNull)
		l.Close()
		if frames != count {
			t.Fatalf("lend %v: %d frames of %d arrived", lend, frames, count)
		}
		t.Logf("lend %v: %d frames, %d wake-ups read, %d read nothing", lend, frames, busy, idle)
	}
}

// TestStreamDrainedThenClosed: a client that sends a frame, then
// another and closes while the link still takes its socket for empty,
// has both frames read and its close seen, without waiting for an event
// that does not come.
func TestStreamDrainedThenClosed(t *testing.T) {
	p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetNonblock(p[0], true)
	l := newStream(p[0], QEMU, false, streamQueue).(*fdLink)
	defer l.Close()
	poll := newEpollPoller(t)
	if err := l.Register(poll); err != nil {
		t.Fatal(err)
	}
	frame := []byte{0, 0, 0, 5, 0, 0, 0, 0, 0}
	numbered(frame[4:], 0)
	unix.Write(p[1], frame)
	if n, err := l.Read(); n != len(frame) || err != nil {
		t.Fatalf("Read: %d, %v", n, err)
	}
	if !l.drained {
		t.Fatal("a short read did not leave the link drained")
	}
	numbered(frame[4:], 1)
	unix.Write(p[1], frame)
	unix.Close(p[1])
	frames, _, _ := linkLoop(t, l, poll, func(f []byte, n int) {
		if !isNumbered(f, n) {
			t.Fatalf("frame %d arrived changed", n)
		}
	})
	if frames != 2 {
		t.Fatalf("%d frames of 2", frames)
	}
}

// TestZeroCopyShortWrites: with the socket's send buffer at its least
// and the peer reading a little at a time, flushes of a few small frames,
// written by copy, stop part-way through a frame (a short write, or
// EAGAIN) and lent flushes follow them, and the other way round: every
// frame still comes out whole, once and in order.
func TestZeroCopyShortWrites(t *testing.T) {
	for _, f := range []Framing{QEMU, Gvproxy} {
		q, a, b := zeroCopyPair(t, f, 2*hugePage)
		if err := unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF, 0); err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(5, 6))
		r := NewReader(f, 0)
		made, got := 0, 0
		read := func(most int) {
			for most > 0 {
				r.makeRoom()
				n, err := read(b, r.buf[r.end:r.end+min(most, len(r.buf)-r.end)])
				if n <= 0 || err != nil {
					return
				}
				r.end += n
				most -= n
				takeNumbered(t, r, &got)
			}
		}
		flush := func() {
			if err := q.writeStream(a); err != nil && err != unix.EAGAIN {
				t.Fatal(err)
			}
		}
		for range 20000 {
			// Mostly a few small frames, a flush that is copied; now
			// and then one that is lent.
			n, most := 1+rng.IntN(4), 900
			if rng.IntN(8) == 0 {
				most = f.Max
			}
			for range n {
				size := 1 + rng.IntN(most)
				fr := q.Reserve(size)
				if fr == nil {
					break
				}
				numbered(fr, made)
				q.Commit(size)
				made++
			}
			flush()
			if rng.IntN(2) == 0 {
				read(1 << 20) // the pipe empties, and the next flush may copy
			} else {
				read(1 + rng.IntN(3000))
			}
		}
		for range 100000 {
			if got == made {
				break
			}
			flush()
			read(1 << 20)
		}
		if got != made || q.Pending() != 0 {
			t.Fatalf("%d frames of %d arrived, %d bytes pending", got, made, q.Pending())
		}
		if q.zc.copy {
			t.Error("the kernel did not lend the pages")
		}
		q.zc.close(q)
	}
}
