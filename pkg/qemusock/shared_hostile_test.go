package qemusock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestVhostUserSharedBlocking: the front-end's descriptors (kicks, calls,
// the device state's pipe) are files it shares with the link, and the
// O_NONBLOCK the link sets on them is the front-end's to clear again. A
// front-end that did so hung the engine for good: in the read that
// drains an empty kick (after any request), in the interrupt written to
// a call at its maximum count, in the read of a state pipe it never
// writes. None of them waits now.
func TestVhostUserSharedBlocking(t *testing.T) {
	for _, q := range []int{rxQueue, txQueue} {
		t.Run(fmt.Sprintf("kick %d", q), func(t *testing.T) {
			f := newFrontEnd(t)
			f.setUp()
			var b [8]byte
			unix.Read(f.kick[q], b[:]) // empty
			unix.SetNonblock(f.kick[q], false)
			kick := f.l.vq[q].kick
			notBlocked(t, unix.SYS_READ, kick, func() { signal(f.kick[q]) }, func() {
				if q == txQueue {
					f.l.Read() // an empty ring: the kick is drained
				} else {
					f.l.Event(vuIDKick+rxQueue, unix.EPOLLIN)
				}
			})
		})
	}
	t.Run("call", func(t *testing.T) {
		f := newFrontEnd(t)
		f.setUp()
		var max [8]byte
		unix.Read(f.call[rxQueue], max[:]) // the interrupt each new call gets
		unix.SetNonblock(f.call[rxQueue], false)
		binary.NativeEndian.PutUint64(max[:], 0xffff_ffff_ffff_fffe)
		unix.Write(f.call[rxQueue], max[:])
		f.rxBufs(0, 1, 2048)
		var err error
		call := f.l.vq[rxQueue].call
		notBlocked(t, unix.SYS_WRITE, call, func() { unix.Read(f.call[rxQueue], max[:]) }, func() {
			err = f.sendFrame(testFrame(100))
		})
		if !errors.Is(err, ErrVhostUser) {
			t.Errorf("Flush: %v, want a vhost-user error", err)
		}
	})
	t.Run("state", func(t *testing.T) {
		defer func(idle time.Duration) { stateIdle = idle }(stateIdle)
		stateIdle = 50 * time.Millisecond
		f := newFrontEnd(t)
		f.setUp()
		var p [2]int
		unix.Pipe2(p[:], unix.O_CLOEXEC)
		defer unix.Close(p[1])
		m := &blockingMigrator{t: t, unblock: func() { unix.Write(p[1], []byte{0}) }}
		f.l.SetMigrator(m)
		f.send(vuSetDeviceStateFd, u32s(transferLoad, 0), p[0])
		unix.Close(p[0])
		if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); err != nil {
			t.Fatal(err)
		}
		f.reply()
		f.must(vuCheckDeviceState, nil)
		if r := f.reply(); r == 0 {
			t.Error("CHECK_DEVICE_STATE answered success for a pipe nobody wrote")
		}
	})
}

// blockingMigrator's front-end clears its state pipe's O_NONBLOCK once
// the link has set it, and never writes to it.
type blockingMigrator struct {
	testMigrator
	t       *testing.T
	unblock func()
}

func (m *blockingMigrator) LoadState(r io.Reader) error {
	fd := r.(*stateStream).fd
	unix.SetNonblock(fd, false)
	var err error
	notBlocked(m.t, unix.SYS_READ, fd, m.unblock, func() { _, err = r.Read(make([]byte, 1)) })
	return err
}

// notBlocked runs fn on a thread of its own and fails if that thread
// waits in system call nr on fd, as /proc tells: it then calls unblock,
// which lets the call return, and waits for fn.
func notBlocked(t *testing.T, nr uintptr, fd int, unblock, fn func()) {
	t.Helper()
	// fn's raw system call keeps its processor while it waits, and a
	// collection would wait for it to stop the world, for ever: none
	// starts, and the one under way, if any, ends first.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(2, runtime.GOMAXPROCS(0))))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	tid, done := make(chan int), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		fn()
		close(done)
	}()
	path := fmt.Sprintf("/proc/self/task/%d/syscall", <-tid)
	waiting := fmt.Sprintf("%d %#x ", nr, fd)
	for {
		select {
		case <-done:
			return
		case <-time.After(time.Millisecond):
		}
		if b, err := os.ReadFile(path); err != nil {
			t.Skip(err)
		} else if strings.HasPrefix(string(b), waiting) {
			unblock()
			<-done
			t.Fatalf("blocked in system call %d on descriptor %d", nr, fd)
		}
	}
}
