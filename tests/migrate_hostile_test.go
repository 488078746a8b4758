package tests

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Live migration against untrusted parties, played against the real,
// sandboxed engine: a vhost-user front-end that sends the log's and the
// device state's requests as QEMU never does, states from "another
// host" that lie, and whatever connects to the repair socket. After each
// round the engine must be alive, back to the descriptors it had, idle
// with no CPU spent, and serve a good front-end (an ARP reply; its frame
// also binds the forward a save held).

const (
	vuSetLogBase       = 6
	vuSetDeviceStateFd = 42
	vuCheckDeviceState = 43
	vuLogAll           = 1 << 26
	stateSave          = 0
	stateLoad          = 1
	migFwdPort         = "18420"
)

// migStream is passt's stream, version 2: no address seen, and n
// guest-initiated TCP flows from 10.0.2.15:40000+i to 203.0.113.1:80,
// held on the host by 127.0.0.1:50000+i to 127.0.0.1:port; with dumped,
// their sockets' state claims an empty connection in TCP state 1,
// otherwise the source could not dump them (TCP state 0).
func migStream(n int, port uint16, dumped bool) []byte {
	b := binary.BigEndian.AppendUint64(nil, 0xB1BB1D1B0BB1D1B0)
	b = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(b, 2), 2)
	b = append(b, make([]byte, 16+16+4+6)...)
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	v4 := func(a ...byte) []byte { return append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, a...) }
	for i := range n {
		b = append(b, 2, 1) // the guest's side, then the host's
		b = append(append(b, v4(203, 0, 113, 1)...), v4(10, 0, 2, 15)...)
		b = binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(b, 80), uint16(40000+i))
		b = append(append(b, v4(127, 0, 0, 1)...), v4(127, 0, 0, 1)...)
		b = binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(b, uint16(50000+i)), port)
		b = append(b, 0, 7, 7, 1<<2) // retries, window scales, ESTABLISHED
		b = binary.BigEndian.AppendUint32(b, 1460)
		b = append(b, make([]byte, 4+2+4+20)...)
	}
	for range n {
		ext := make([]byte, 52)
		if dumped {
			binary.BigEndian.PutUint32(ext[20:], 1460) // MSS
			binary.BigEndian.PutUint32(ext[32:], 65535)
			ext[50] = 1
		}
		b = append(b, ext...)
	}
	return b
}

type migrateRig struct {
	w      *World
	engine int
	base   int // the engine's descriptors before any attack
	repair string
}

func newMigrateRig(t *testing.T) *migrateRig {
	w := newWorld(t, WorldOpts{NoGuest: true, Args: []string{"--vhost-user", "-t", "127.0.0.1/" + migFwdPort}})
	r := &migrateRig{w: w, engine: w.ServerPid(t), repair: w.Sock + ".repair"}
	r.base = openFdsOf(t, r.engine)
	return r
}

// transfer has the engine save its state into a pipe, or load state
// from one (the test writes it, in a goroutine, then closes its end),
// and returns what a save wrote and what CHECK_DEVICE_STATE answered.
func (f *vuFrontEnd) transfer(dir uint32, state []byte) (saved []byte, check uint64) {
	f.t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		f.t.Fatal(err)
	}
	give, mine := p[1], p[0]
	if dir == stateLoad {
		give, mine = p[0], p[1]
	}
	f.send(vuSetDeviceStateFd, binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, dir), 0), give)
	unix.Close(give)
	done := make(chan []byte, 1)
	go func() {
		defer unix.Close(mine)
		if dir == stateLoad {
			for b := state; len(b) > 0; {
				n, err := unix.Write(mine, b)
				if err != nil && err != unix.EINTR {
					break
				}
				b = b[max(n, 0):]
			}
			done <- nil
			return
		}
		var out bytes.Buffer
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(mine, buf)
			if err == unix.EINTR {
				continue
			}
			if n <= 0 {
				break
			}
			out.Write(buf[:n])
		}
		done <- out.Bytes()
	}()
	if r := f.reply(); r != 0x100 {
		f.t.Fatalf("SET_DEVICE_STATE_FD answered %#x", r)
	}
	saved = <-done
	f.send(vuCheckDeviceState, nil)
	return saved, f.reply()
}

// check is what must hold after a round: the engine alive, a good
// front-end served (its frame binds a held forward), the engine's
// descriptors back to the baseline, and no CPU spent idling.
func (r *migrateRig) check(t *testing.T, after string) {
	t.Helper()
	if syscall.Kill(r.engine, 0) != nil {
		t.Fatalf("the engine died after %s:\n%s", after, r.w.Log.String())
	}
	good := dialVhostUser(t, r.w.Sock)
	good.setUp()
	good.sendARP()
	waitFor(t, "an ARP reply to a good front-end after "+after, good.gotARPReply)
	good.close()
	waitFor(t, "the engine's descriptors back to "+strconv.Itoa(r.base)+" after "+after, func() bool {
		return openFdsOf(t, r.engine) == r.base
	})
	idleEngine(t, r.engine, "after "+after)
	if !tcpListens(r.w.Host, migFwdPort) {
		t.Errorf("after %s: the forward is not bound again", after)
	}
}

// TestMigrateHostileFrontEnd: a front-end's migration requests out of
// order, short, with descriptors that are not what they should be, and
// states that lie.
func TestMigrateHostileFrontEnd(t *testing.T) {
	r := newMigrateRig(t)
	memfd := func(f *vuFrontEnd, size int64) int {
		fd, err := unix.MemfdCreate("log", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		unix.Ftruncate(fd, size)
		return fd
	}
	for _, round := range []struct {
		name string
		play func(f *vuFrontEnd)
	}{
		{"short SET_LOG_BASE and SET_DEVICE_STATE_FD, with descriptors", func(f *vuFrontEnd) {
			log := memfd(f, 4096)
			defer unix.Close(log)
			f.send(vuSetLogBase, le(4096), log)
			f = dialVhostUser(t, r.w.Sock)
			f.setUp()
			f.send(vuSetDeviceStateFd, le(stateSave)[:4], f.memfd)
			f.hangUp()
		}},
		{"LOG_ALL without a log", func(f *vuFrontEnd) {
			f.send(vuSetFeatures, le(vuFeatures|vuLogAll))
			f.sendARP()
			waitFor(t, "an ARP reply", f.gotARPReply)
		}},
		{"a log shrunk under the engine", func(f *vuFrontEnd) {
			log := memfd(f, 4096)
			defer unix.Close(log)
			f.send(vuSetLogBase, le(4096, 0), log)
			f.reply()
			f.send(vuSetFeatures, le(vuFeatures|vuLogAll))
			unix.Ftruncate(log, 0)
			f.sendARP()
			waitFor(t, "the engine to drop the front-end", func() bool { return strings.Contains(r.w.Log.String(), "guest memory:") })
		}},
		{"CHECK_DEVICE_STATE before any transfer", func(f *vuFrontEnd) {
			f.send(vuCheckDeviceState, nil)
			if v := f.reply(); v == 0 {
				t.Error("answered success")
			}
		}},
		{"save to a pipe nobody reads", func(f *vuFrontEnd) {
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			unix.Close(p[0])
			f.send(vuSetDeviceStateFd, le(stateSave), p[1])
			unix.Close(p[1])
			f.reply()
			f.send(vuCheckDeviceState, nil)
			if v := f.reply(); v == 0 {
				t.Error("CHECK_DEVICE_STATE answered success")
			}
		}},
		{"save twice, checked twice", func(f *vuFrontEnd) {
			for range 2 {
				if st, v := f.transfer(stateSave, nil); v != 0 || len(st) == 0 {
					t.Errorf("save: %d bytes, CHECK_DEVICE_STATE answered %d", len(st), v)
				}
			}
		}},
		{"load junk", func(f *vuFrontEnd) {
			if _, v := f.transfer(stateLoad, junk(1<<16)); v == 0 {
				t.Error("junk loaded")
			}
		}},
		{"load a state that claims a million flows", func(f *vuFrontEnd) {
			if _, v := f.transfer(stateLoad, migStream(1000000, 80, false)[:16+42+4]); v == 0 {
				t.Error("loaded")
			}
		}},
		{"load a state cut short in its flows", func(f *vuFrontEnd) {
			b := migStream(300, 80, false)
			if _, v := f.transfer(stateLoad, b[:len(b)-1000]); v == 0 {
				t.Error("loaded")
			}
		}},
		{"load a state of an unknown version", func(f *vuFrontEnd) {
			b := migStream(0, 80, false)
			binary.BigEndian.PutUint32(b[8:], 3)
			binary.BigEndian.PutUint32(b[12:], 3)
			if _, v := f.transfer(stateLoad, b); v == 0 {
				t.Error("loaded")
			}
		}},
		{"load, twice, duplicate flows at the forward's port", func(f *vuFrontEnd) {
			port, _ := strconv.Atoi(migFwdPort)
			b := migStream(2, uint16(port), true)
			n := 16 + 42 + 4
			copy(b[n+112:n+224], b[n:n+112]) // flow 1 is flow 0
			for range 2 {
				if _, v := f.transfer(stateLoad, b); v != 0 {
					t.Errorf("CHECK_DEVICE_STATE answered %d", v)
				}
			}
		}},
		{"load, the front-end gone before the state came", func(f *vuFrontEnd) {
			var p [2]int
			unix.Pipe2(p[:], unix.O_CLOEXEC)
			defer unix.Close(p[1])
			f.send(vuSetDeviceStateFd, le(stateLoad), p[0])
			unix.Close(p[0])
			f.reply()
			f.hangUp()
			waitFor(t, "the engine to give up the load", func() bool { return strings.Contains(r.w.Log.String(), "hung up") })
		}},
	} {
		f := dialVhostUser(t, r.w.Sock)
		f.setUp()
		round.play(f)
		f.close()
		r.check(t, round.name)
	}
}

// TestMigrateHostileRepair: whatever connects to the repair socket
// while no migration runs, and helpers that fail during one: the engine
// drops them, moves what it can without them (here: nothing; the flows
// are reset), and takes gopasst repair afterwards.
func TestMigrateHostileRepair(t *testing.T) {
	r := newMigrateRig(t)
	dial := func() int {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: r.repair}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	closed := func(fd int) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT|unix.MSG_PEEK)
		return err != unix.EAGAIN
	}
	load := func(n int) uint64 {
		f := dialVhostUser(t, r.w.Sock)
		// The answer waits for the helper's time to run out.
		unix.SetsockoptTimeval(f.sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 60})
		f.setUp()
		_, v := f.transfer(stateLoad, migStream(n, 80, false))
		f.close()
		return v
	}
	connected := func() int { return strings.Count(r.w.Log.String(), "TCP_REPAIR helper connected") }
	// take connects a helper and waits for the engine to take it.
	take := func() int {
		n := connected()
		fd := dial()
		waitFor(t, "the helper taken", func() bool { return connected() > n })
		return fd
	}
	for _, round := range []struct {
		name string
		play func()
	}{
		{"a helper that sends junk, descriptors with it", func() {
			fd := take()
			unix.Sendmsg(fd, junk(64), unix.UnixRights(fd, fd), nil, 0)
			waitFor(t, "the junk sender dropped", func() bool { return closed(fd) })
		}},
		{"a second helper", func() {
			first := take()
			second := dial()
			waitFor(t, "the second turned away", func() bool { return closed(second) })
			if closed(first) {
				t.Error("the first was dropped")
			}
			// Gone for the engine; dial's cleanup closes it.
			unix.Shutdown(first, unix.SHUT_RDWR)
		}},
		{"a helper that never answers, in a migration of 300 flows", func() {
			fd := take()
			if v := load(300); v != 0 {
				t.Errorf("CHECK_DEVICE_STATE answered %d", v)
			}
			waitFor(t, "the silent helper dropped", func() bool { return closed(fd) })
		}},
		{"a helper that answered ahead and never reads, in a migration of 600 flows", func() {
			fd := take()
			// Answers sent now would be dropped at once as junk: they go
			// as the first message arrives.
			go func() {
				p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
				unix.Poll(p, 30000)
				unix.Write(fd, bytes.Repeat([]byte{1}, 1<<16))
			}()
			if v := load(600); v != 0 {
				t.Errorf("CHECK_DEVICE_STATE answered %d", v)
			}
			waitFor(t, "the helper dropped", func() bool { return closed(fd) })
		}},
		{"a helper that answers with another byte", func() {
			fd := take()
			go func() {
				var b [1]byte
				oob := make([]byte, unix.CmsgSpace(4*253))
				if _, _, _, _, err := unix.Recvmsg(fd, b[:], oob, unix.MSG_CMSG_CLOEXEC); err == nil {
					unix.Write(fd, []byte{b[0] + 1})
				}
			}()
			if v := load(10); v != 0 {
				t.Errorf("CHECK_DEVICE_STATE answered %d", v)
			}
			waitFor(t, "the helper dropped", func() bool { return closed(fd) })
		}},
	} {
		round.play()
		r.check(t, round.name)
	}

	// gopasst repair is taken after all that, and serves a migration.
	n, dropped := connected(), strings.Count(r.w.Log.String(), "TCP_REPAIR helper: ")
	helper := exec.Command(gopasstBin, "repair", r.repair)
	var stderr bytes.Buffer
	helper.Stderr = &stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- helper.Wait() }()
	t.Cleanup(func() { helper.Process.Kill(); <-exited })
	waitFor(t, "gopasst repair taken", func() bool { return connected() > n })
	if v := load(300); v != 0 {
		t.Errorf("CHECK_DEVICE_STATE answered %d", v)
	}
	select {
	case err := <-exited:
		t.Fatalf("gopasst repair exited during the migration: %v: %s", err, stderr.String())
	default:
	}
	if strings.Count(r.w.Log.String(), "TCP_REPAIR helper: ") != dropped {
		t.Errorf("gopasst repair was dropped:\n%s", r.w.Log.String())
	}
	helper.Process.Signal(syscall.SIGTERM)
	r.check(t, "a migration through gopasst repair, and its end")
}

func junk(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
