package qemusock

import (
	"errors"
	"io"
	"runtime/debug"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A front-end that misbehaves while migrating: the log and the device
// state's requests with what QEMU never sends. Each case checks that the
// link neither crashes nor hangs, keeps no descriptor it was given, and
// that a frame still goes to the guest after it when the request was not
// refused outright.

// TestVhostUserMigrateHostileRequests: the log's and the device state's
// requests, short, without their descriptor, with one that is no log, or
// out of order.
func TestVhostUserMigrateHostileRequests(t *testing.T) {
	pipe := func() (r, w int) {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		return p[0], p[1]
	}
	memfd := func(size int64) int {
		fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC)
		if err != nil {
			t.Skip(err)
		}
		unix.Ftruncate(fd, size)
		return fd
	}
	for _, c := range []struct {
		name    string
		refused bool // the request ends the connection
		play    func(f *frontEnd) error
	}{
		// A short payload with its descriptor: the descriptor was taken
		// and never closed (one leaked each time).
		{"SET_LOG_BASE short, with a descriptor", true, func(f *frontEnd) error {
			fd := memfd(4096)
			defer unix.Close(fd)
			return f.request(vuSetLogBase, u64s(4096), fd)
		}},
		{"SET_DEVICE_STATE_FD short, with a descriptor", true, func(f *frontEnd) error {
			r, w := pipe()
			defer unix.Close(r)
			defer unix.Close(w)
			return f.request(vuSetDeviceStateFd, u32s(transferSave), w)
		}},
		{"SET_LOG_BASE without a descriptor", true, func(f *frontEnd) error {
			return f.request(vuSetLogBase, u64s(4096, 0))
		}},
		{"SET_LOG_BASE larger than its file", true, func(f *frontEnd) error {
			fd := memfd(4096)
			defer unix.Close(fd)
			return f.request(vuSetLogBase, u64s(8192, 0), fd)
		}},
		{"SET_LOG_BASE at an offset past its file", true, func(f *frontEnd) error {
			fd := memfd(4096)
			defer unix.Close(fd)
			return f.request(vuSetLogBase, u64s(4096, 1<<63), fd)
		}},
		{"SET_LOG_BASE of a pipe", true, func(f *frontEnd) error {
			r, w := pipe()
			defer unix.Close(r)
			defer unix.Close(w)
			return f.request(vuSetLogBase, u64s(4096, 0), r)
		}},
		{"LOG_ALL without a log", false, func(f *frontEnd) error {
			return f.request(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
		}},
		{"SET_LOG_FD twice, a pipe that fills", false, func(f *frontEnd) error {
			r, w := pipe()
			defer unix.Close(r)
			defer unix.Close(w)
			if err := f.request(vuSetLogFd, nil, w); err != nil {
				return err
			}
			if err := f.request(vuSetLogFd, nil, w); err != nil {
				return err
			}
			log := memfd(4096)
			defer unix.Close(log)
			if err := f.request(vuSetLogBase, u64s(4096, 0), log); err != nil {
				return err
			}
			f.reply()
			return f.request(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
		}},
		{"SET_LOG_FD without a descriptor", true, func(f *frontEnd) error {
			return f.request(vuSetLogFd, nil)
		}},
		{"SET_LOG_BASE twice", false, func(f *frontEnd) error {
			for range 2 {
				fd := memfd(8192)
				err := f.request(vuSetLogBase, u64s(4096, 4096), fd)
				unix.Close(fd)
				if err != nil {
					return err
				}
				f.reply()
			}
			return f.request(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := openFds(t)
			f := newFrontEnd(t)
			f.setUp()
			err := c.play(f)
			if c.refused != errors.Is(err, ErrVhostUser) {
				t.Fatalf("%v, want refused %v", err, c.refused)
			}
			if !c.refused {
				f.rxBufs(0, 1, 2048)
				if err := f.sendFrame(testFrame(100)); err != nil || f.usedIdx(0) != 1 {
					t.Errorf("a frame after it: %v, used index %d", err, f.usedIdx(0))
				}
			}
			f.l.Close()
			f.l = newVhostLink(-1, 0)
			if n := openFds(t) - base; n != 6 { // the front-end's own
				t.Errorf("%d descriptors open once the link closed, want the front-end's 6", n)
			}
		})
	}
}

// TestVhostUserLogShrunk: a front-end that shrinks the log's file after
// SET_LOG_BASE makes the link's marks fault, as shrunk guest memory
// does; GuestFault takes it for one, and the link closes.
func TestVhostUserLogShrunk(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	log, _ := unix.MemfdCreate("log", unix.MFD_CLOEXEC)
	defer unix.Close(log)
	unix.Ftruncate(log, 4096)
	f.must(vuSetLogBase, u64s(4096, 0), log)
	f.reply()
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
	unix.Ftruncate(log, 0)
	f.rxBufs(0, 1, 2048)
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	var r any
	func() {
		defer func() { r = recover() }()
		f.sendFrame(testFrame(100))
	}()
	if a, ok := r.(interface{ Addr() uintptr }); r != nil && (!ok || uint64(a.Addr()) >= 1<<56) {
		t.Skipf("%v: a fault without a usable address, as under qemu-user", r)
	}
	if r == nil || !GuestFault(r) {
		t.Fatalf("recovered %v, want a fault in the log", r)
	}
	func() {
		defer func() { r = recover() }()
		f.l.Close()
	}()
	if r != nil {
		t.Errorf("Close after a fault in the log: %v", r)
	}
	f.l = newVhostLink(-1, 0)
}

// TestVhostUserDeviceStateHostile: CHECK_DEVICE_STATE before any
// transfer, and transfers through descriptors that are no pipe, or a
// pipe whose other end is gone: each is reported, none holds the link
// past its bounds, and the link goes on.
func TestVhostUserDeviceStateHostile(t *testing.T) {
	defer func(idle time.Duration) { stateIdle = idle }(stateIdle)
	stateIdle = 50 * time.Millisecond
	state := make([]byte, 1<<20) // more than a pipe or a socket holds
	for _, c := range []struct {
		name string
		ok   bool // the transfer succeeds
		play func(f *frontEnd) (dir uint32, fd int, done func())
	}{
		{"save to a pipe read by no one", false, func(f *frontEnd) (uint32, int, func()) {
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			unix.Close(p[0])
			return transferSave, p[1], func() { unix.Close(p[1]) }
		}},
		{"load from a pipe written by no one", false, func(f *frontEnd) (uint32, int, func()) {
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			unix.Close(p[1])
			return transferLoad, p[0], func() { unix.Close(p[0]) }
		}},
		{"save to a socket whose peer closed", false, func(f *frontEnd) (uint32, int, func()) {
			sp, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			unix.Close(sp[1])
			return transferSave, sp[0], func() { unix.Close(sp[0]) }
		}},
		{"save to a socket that never reads", false, func(f *frontEnd) (uint32, int, func()) {
			sp, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			return transferSave, sp[0], func() { unix.Close(sp[0]); unix.Close(sp[1]) }
		}},
		{"load from a listening socket", false, func(f *frontEnd) (uint32, int, func()) {
			s, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			unix.Bind(s, &unix.SockaddrUnix{Name: "@gopasst-test-state"})
			unix.Listen(s, 1)
			return transferLoad, s, func() { unix.Close(s) }
		}},
		{"load from an eventfd", false, func(f *frontEnd) (uint32, int, func()) {
			e, _ := unix.Eventfd(1, unix.EFD_CLOEXEC)
			return transferLoad, e, func() { unix.Close(e) }
		}},
		{"save to an eventfd", false, func(f *frontEnd) (uint32, int, func()) {
			e, _ := unix.Eventfd(0, unix.EFD_CLOEXEC)
			return transferSave, e, func() { unix.Close(e) }
		}},
		{"save to a regular file", true, func(f *frontEnd) (uint32, int, func()) {
			m, _ := unix.MemfdCreate("state", unix.MFD_CLOEXEC)
			return transferSave, m, func() { unix.Close(m) }
		}},
		{"load from a regular file", true, func(f *frontEnd) (uint32, int, func()) {
			m, _ := unix.MemfdCreate("state", unix.MFD_CLOEXEC)
			unix.Write(m, state)
			unix.Seek(m, 0, io.SeekStart)
			return transferLoad, m, func() { unix.Close(m) }
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := openFds(t)
			f := newFrontEnd(t)
			f.setUp()
			m := &wholeMigrator{testMigrator{state: state}}
			f.l.SetMigrator(m)
			f.must(vuCheckDeviceState, nil)
			if r := f.reply(); r == 0 {
				t.Error("CHECK_DEVICE_STATE before any transfer answered success")
			}
			dir, fd, done := c.play(f)
			f.send(vuSetDeviceStateFd, u32s(dir, 0), fd)
			done()
			if _, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN); err != nil {
				t.Fatal(err)
			}
			if r := f.reply(); r != vuNoFd {
				t.Fatalf("SET_DEVICE_STATE_FD answered %#x", r)
			}
			f.must(vuCheckDeviceState, nil)
			if r := f.reply(); (r == 0) != c.ok || m.migrated != (c.ok && dir == transferSave) {
				t.Errorf("CHECK_DEVICE_STATE answered %d, migrated %v (%v), want success %v", r, m.migrated, f.l.stateErr, c.ok)
			}
			f.rxBufs(0, 1, 2048)
			if err := f.sendFrame(testFrame(100)); err != nil || f.usedIdx(0) != 1 {
				t.Errorf("a frame after it: %v, used index %d", err, f.usedIdx(0))
			}
			f.l.Close()
			f.l = newVhostLink(-1, 0)
			if n := openFds(t) - base; n != 6 {
				t.Errorf("%d descriptors open once the link closed, want the front-end's 6", n)
			}
		})
	}
}

// wholeMigrator loads only the whole state it saves, as the engine's
// loader refuses a stream cut short.
type wholeMigrator struct{ testMigrator }

func (m *wholeMigrator) LoadState(r io.Reader) error {
	m.loaded = make([]byte, len(m.state))
	_, err := io.ReadFull(r, m.loaded)
	return err
}
