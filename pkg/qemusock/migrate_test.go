package qemusock

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// logPages is the set of pages marked in a dirty log.
func logPages(log []byte) map[uint64]bool {
	out := map[uint64]bool{}
	for i, b := range log {
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				out[uint64(8*i+bit)] = true
			}
		}
	}
	return out
}

// newDirtyLog is a one-page dirty log, as a front-end shares it: its
// descriptor, to send, and the front-end's view of it.
func newDirtyLog(t *testing.T) (int, []byte) {
	fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	unix.Ftruncate(fd, 4096)
	log, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(log) })
	return fd, log
}

// TestVhostUserDirtyLog plays a migrating front-end: it turns logging on
// (LOG_ALL, SET_LOG_BASE with a memfd, the used rings' log addresses) and
// checks that exactly the pages gopasst wrote are marked: RX buffers as
// far as the frame went, not the rest of a buffer, and the used rings'
// entries and indices; nothing before logging was on or after it was
// turned off.
func TestVhostUserDirtyLog(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.must(vuGetProtocolFeatures, nil)
	if got := f.reply(); got&(vuProtocolLogShmfd|vuProtocolDevState) != vuProtocolLogShmfd|vuProtocolDevState {
		t.Fatalf("protocol features %#x lack LOG_SHMFD and DEVICE_STATE", got)
	}
	f.must(vuSetProtocolFeatures, u64s(vuProtocolReplyAck|vuProtocolLogShmfd|vuProtocolDevState))
	logfd, log := newDirtyLog(t)

	// A frame before logging is on marks nothing.
	f.rxBufs(0, 1, 2048)
	f.l.Reserve(100)
	f.l.Commit(100)
	f.l.Flush()

	f.must(vuSetLogBase, u64s(4096, 0), logfd)
	if r := f.reply(); r != 0 {
		t.Fatalf("SET_LOG_BASE answered %d", r)
	}
	if len(logPages(log)) != 0 {
		t.Fatalf("pages %v marked before LOG_ALL", logPages(log))
	}
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))
	for i := range 2 {
		f.setRingAddr(i, true)
	}

	// A frame across two buffers, the first straddling a page boundary,
	// the second (two pages long) filled only in its first page.
	f.desc(0, 1, 0x20f00, 0x200, descWrite, 0)
	f.desc(0, 2, 0x30000, 0x2000, descWrite, 0)
	f.offer(0, 1)
	f.offer(0, 2)
	frame := testFrame(0x200 - 12 + 100)
	copy(f.l.Reserve(len(frame)), frame)
	f.l.Commit(len(frame))
	if err := f.l.Flush(); err != nil {
		t.Fatal(err)
	}
	// A frame from the guest: only the TX used ring is written.
	f.desc(1, 0, 0x40000, 12+60, 0, 0)
	f.offer(1, 0)
	if got := f.readFrames(); len(got) != 1 {
		t.Fatalf("read %d frames", len(got))
	}
	_, _, rxUsed := feRing(0)
	_, _, txUsed := feRing(1)
	want := map[uint64]bool{0x20: true, 0x21: true, 0x30: true, rxUsed / logPage: true, txUsed / logPage: true}
	if got := logPages(log); !equalSets(got, want) {
		t.Errorf("pages marked %v, want %v", keys(got), keys(want))
	}

	// Logging off: a frame marks nothing more.
	clear(log)
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf))
	f.rxBufs(3, 1, 2048)
	f.l.Reserve(100)
	f.l.Commit(100)
	f.l.Flush()
	if f.usedIdx(0) != 4 || len(logPages(log)) != 0 {
		t.Errorf("used index %d, pages %v marked after LOG_ALL went off", f.usedIdx(0), keys(logPages(log)))
	}
}

// TestVhostUserDirtyLogAfterResetOwner: RESET_OWNER drops the rings but
// not the features, so rings set up again while LOG_ALL stands log what
// is written to them, without another SET_FEATURES.
func TestVhostUserDirtyLogAfterResetOwner(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	f.must(vuSetProtocolFeatures, u64s(vuProtocolReplyAck|vuProtocolLogShmfd))
	logfd, log := newDirtyLog(t)
	f.must(vuSetLogBase, u64s(4096, 0), logfd)
	f.reply()
	f.must(vuSetFeatures, u64s(virtioFVersion1|virtioNetFMrgRxbuf|vhostFLogAll))

	f.must(vuResetOwner, nil)
	f.setRings(true)
	f.rxBufs(0, 1, 2048)
	f.l.Reserve(100)
	f.l.Commit(100)
	if err := f.l.Flush(); err != nil {
		t.Fatal(err)
	}
	_, _, rxUsed := feRing(0)
	want := map[uint64]bool{0x20: true, rxUsed / logPage: true}
	if got := logPages(log); !equalSets(got, want) {
		t.Errorf("pages marked %v, want %v", keys(got), keys(want))
	}
}

func equalSets(a, b map[uint64]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[uint64]bool) []uint64 {
	var out []uint64
	for k := range m {
		out = append(out, k)
	}
	return out
}

// testMigrator writes or reads its state as the engine would.
type testMigrator struct {
	state    []byte
	loaded   []byte
	loadErr  error
	migrated bool
}

func (m *testMigrator) SaveState(w io.Writer) error {
	_, err := w.Write(m.state)
	return err
}

func (m *testMigrator) LoadState(r io.Reader) error {
	b, err := io.ReadAll(r)
	m.loaded = b
	if err == nil {
		err = m.loadErr
	}
	return err
}

func (m *testMigrator) Migrated() { m.migrated = true }

// TestVhostUserDeviceState: SET_DEVICE_STATE_FD hands the engine the
// front-end's pipe to save or load through, answered with "no descriptor
// back"; CHECK_DEVICE_STATE tells how it went, and a checked save tells
// the engine it is done.
func TestVhostUserDeviceState(t *testing.T) {
	f := newFrontEnd(t)
	f.setUp()
	m := &testMigrator{state: []byte("the engine's state")}
	f.l.SetMigrator(m)

	var p [2]int
	unix.Pipe2(p[:], unix.O_CLOEXEC)
	f.must(vuSetDeviceStateFd, u32s(transferSave, 0), p[1])
	unix.Close(p[1])
	if r := f.reply(); r != vuNoFd {
		t.Fatalf("SET_DEVICE_STATE_FD answered %#x", r)
	}
	got, _ := io.ReadAll(os.NewFile(uintptr(p[0]), "pipe"))
	if !bytes.Equal(got, m.state) {
		t.Fatalf("saved %q", got)
	}
	f.must(vuCheckDeviceState, nil)
	if r := f.reply(); r != 0 || !m.migrated {
		t.Fatalf("CHECK_DEVICE_STATE answered %d, migrated %v", r, m.migrated)
	}

	for _, loadErr := range []error{nil, errors.New("refused")} {
		m.loadErr, m.migrated = loadErr, false
		unix.Pipe2(p[:], unix.O_CLOEXEC)
		unix.Write(p[1], []byte("from the source"))
		unix.Close(p[1])
		f.must(vuSetDeviceStateFd, u32s(transferLoad, 0), p[0])
		unix.Close(p[0])
		if r := f.reply(); r != vuNoFd || string(m.loaded) != "from the source" {
			t.Fatalf("load: answered %#x, loaded %q", r, m.loaded)
		}
		f.must(vuCheckDeviceState, nil)
		if r := f.reply(); (r != 0) != (loadErr != nil) || m.migrated {
			t.Errorf("load with error %v: CHECK_DEVICE_STATE answered %d, migrated %v", loadErr, r, m.migrated)
		}
	}

	unix.Pipe2(p[:], unix.O_CLOEXEC)
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	if err := f.request(vuSetDeviceStateFd, u32s(transferSave, 1), p[1]); !errors.Is(err, ErrVhostUser) {
		t.Errorf("a transfer in phase 1: %v", err)
	}
}

// TestVhostUserDeviceStateStalled: a front-end that never moves its end
// of the device state's pipe, or that hangs up during the transfer, makes
// the transfer fail, reported by CHECK_DEVICE_STATE; it does not hold the
// engine for ever.
func TestVhostUserDeviceStateStalled(t *testing.T) {
	defer func(idle time.Duration) { stateIdle = idle }(stateIdle)
	stateIdle = 50 * time.Millisecond
	big := make([]byte, 1<<20) // more than a pipe holds
	for _, c := range []struct {
		name   string
		dir    uint32
		hangUp bool
	}{{"save, never read", transferSave, false}, {"load, never written", transferLoad, false},
		{"load, front-end gone", transferLoad, true}} {
		t.Run(c.name, func(t *testing.T) {
			f := newFrontEnd(t)
			f.setUp()
			m := &testMigrator{state: big}
			f.l.SetMigrator(m)
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			give := p[1]
			if c.dir == transferLoad {
				give = p[0]
			}
			f.send(vuSetDeviceStateFd, u32s(c.dir, 0), give)
			if c.hangUp {
				stateIdle = 5 * time.Second
				defer func() { stateIdle = 50 * time.Millisecond }()
				unix.Shutdown(f.sock, unix.SHUT_WR)
			}
			_, _, err := f.l.Event(vuIDSocket, unix.EPOLLIN)
			if c.hangUp {
				// The link then reads the front-end's end, and drops it.
				if f.l.stateErr == nil || !strings.Contains(f.l.stateErr.Error(), "hung up") {
					t.Fatalf("the front-end hung up during the transfer: %v", f.l.stateErr)
				}
				return
			}
			if r := f.reply(); err != nil || r != vuNoFd {
				t.Fatalf("SET_DEVICE_STATE_FD answered %#x: %v", r, err)
			}
			f.must(vuCheckDeviceState, nil)
			if r := f.reply(); r == 0 || m.migrated {
				t.Fatalf("CHECK_DEVICE_STATE answered %d, migrated %v: %v", r, m.migrated, f.l.stateErr)
			}
		})
	}
}
