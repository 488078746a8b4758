package slirp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"github.com/gopasst/gopasst/pkg/tcprepair"
	"golang.org/x/sys/unix"
)

// appendMigration is a whole stream: its head, then every flow's socket.
func appendMigration(b []byte, s *migStream) []byte {
	b = appendMigHead(b, s)
	for i := range s.flows {
		b = appendMigExt(b, &s.flows[i].sock)
	}
	return b
}

// testMigStream is a stream with one guest connection and one inbound
// one, the first with data queued both ways, the second not dumped.
func testMigStream() *migStream {
	s := &migStream{}
	copy(s.seen.addr4[:], testGuest4.AsSlice())
	copy(s.seen.addr6[:], testGuest6.AsSlice())
	s.seen.mac = [6]byte{2, 0, 0, 0, 0, 1}
	guest := migSide{oaddr: testGW4, eaddr: testGuest4, oport: 80, eport: 40000}
	host := migSide{oaddr: netip.MustParseAddr("127.0.0.1"), eaddr: netip.MustParseAddr("127.0.0.1"), oport: 51000, eport: 80}
	s.flows = []migFlow{{
		tcp: migTCP{pif: [2]uint8{pifTap, pifHost}, side: [2]migSide{guest, host}, wsFromTap: 7, wsToTap: 8,
			events: evEstablished, tapMSS: 1460, wndFromTap: 500, wndToTap: 1000,
			seqToTap: 1000, seqAckFromTap: 900, seqFromTap: 5000, seqAckToTap: 5000, seqInitFromTap: 4000},
		sock: tcprepair.State{TCPState: 1, Options: 7, SndWScale: 7, RcvWScale: 8, MSS: 1460, Timestamp: 12345,
			SeqSnd: 77, SeqRcv: 88, NotSent: 2, SendQ: []byte("queued"), RecvQ: []byte("unread")},
	}, {
		tcp: migTCP{pif: [2]uint8{pifHost, pifTap}, side: [2]migSide{
			{oaddr: testGW6, eaddr: netip.MustParseAddr("2001:db8::99"), oport: 8080, eport: 1234},
			{oaddr: testGW6, eaddr: testGuest6, oport: 5555, eport: 80}},
			events: evEstablished | evTapFinSent, tapMSS: 1440},
	}}
	return s
}

// readMigration reads a whole stream, each flow's queues its own: what
// the loader reads, for the tests to compare.
func readMigration(r io.Reader, maxFlows int) (*migStream, error) {
	s, err := readMigHead(r, maxFlows)
	if err != nil {
		return nil, err
	}
	for i := range s.flows {
		if err := readMigExt(r, &s.flows[i].sock); err != nil {
			return nil, migErr("flow %d's socket: %v", i, err)
		}
	}
	return s, nil
}

func TestMigrationRoundTrip(t *testing.T) {
	s := testMigStream()
	b := appendMigration(nil, s)
	if want := migHeaderLen + migSeenLen + 4 + 2*migTCPLen + 2*migExtLen + len("queued") + len("unread"); len(b) != want {
		t.Fatalf("stream of %d bytes, want %d", len(b), want)
	}
	got, err := readMigration(bytes.NewReader(b), 16)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, s) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, s)
	}
}

// TestMigrationRefused: each fault is refused with its reason.
func TestMigrationRefused(t *testing.T) {
	good := appendMigration(nil, testMigStream())
	flow0 := migHeaderLen + migSeenLen + 4
	ext0 := flow0 + 2*migTCPLen
	patch := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	for _, tc := range []struct {
		name, want string
		b          []byte
	}{
		{"bad magic", "magic", patch(0, 0)},
		{"version 1", "not supported", patch(8, 0, 0, 0, 1, 0, 0, 0, 1)},
		{"version 3 only", "not supported", patch(8, 0, 0, 0, 3, 0, 0, 0, 3)},
		{"version 0", "invalid", patch(8, 0, 0, 0, 0)},
		{"too many flows", "more than the 16", patch(flow0-4, 0, 0, 1, 0)},
		{"truncated header", "truncated", good[:10]},
		{"truncated flow", "truncated", good[:flow0+50]},
		{"truncated queue", "truncated", good[:len(good)-3]},
		{"bad interface", "interfaces", patch(flow0, 3)},
		{"two guest sides", "interfaces", patch(flow0, pifTap, pifTap)},
		{"window scale", "window scale", patch(flow0+75, 15)},
		{"not established", "not an established", patch(flow0+77, 0)},
		{"queue too long", "more than", patch(ext0+8, 0x10, 0, 0, 0)},
		{"not sent beyond queue", "not sent", patch(ext0+12, 0, 0, 1, 0)},
		{"TCP state", "TCP state", patch(ext0+50, 12)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readMigration(bytes.NewReader(tc.b), 16)
			if err == nil || !errors.Is(err, errMigration) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// FuzzMigration feeds the loader any stream: it refuses or reads it,
// never panics, and what it reads it writes back the same.
func FuzzMigration(f *testing.F) {
	f.Add(appendMigration(nil, testMigStream()))
	f.Add(appendMigration(nil, &migStream{}))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := readMigration(bytes.NewReader(b), 16)
		if err != nil {
			return
		}
		back := appendMigration(nil, s)
		if s2, err := readMigration(bytes.NewReader(back), 16); err != nil || !reflect.DeepEqual(s, s2) {
			t.Fatalf("written back, read as %v", err)
		}
	})
}

// TestMigrateLoadMemory: a stream of many flows, each with full queues,
// costs the destination one flow's queues, not the stream's: each flow
// is restored (here, with no helper, reset) before the next is read.
func TestMigrateLoadMemory(t *testing.T) {
	const flows, queue = 32, 2 << 20
	m := testMigStream().flows[0]
	m.sock.SendQ, m.sock.RecvQ, m.sock.NotSent = make([]byte, queue), make([]byte, queue), 0
	ext := appendMigExt(nil, &m.sock)
	head := &migStream{flows: make([]migFlow, flows)}
	for i := range head.flows {
		head.flows[i].tcp = m.tcp
	}
	b := appendMigration(nil, head)
	parts := []io.Reader{bytes.NewReader(b[:len(b)-flows*migExtLen])}
	for range flows {
		parts = append(parts, bytes.NewReader(ext))
	}
	stream := io.MultiReader(parts...)

	h := newHotPath(t, sinkServer)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := h.e.migrateLoad(stream); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// Growing the two reused queues costs a few times their size; the
	// stream carried 32 times as much.
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d MiB of queues loaded with %.1f MiB allocated", flows*2*queue>>20, float64(alloc)/(1<<20))
	if limit := uint64(16 * queue); alloc > limit {
		t.Errorf("loading allocated %d bytes, more than %d", alloc, limit)
	}
}

// needRepair skips a test that moves sockets where they cannot be
// repaired.
func needRepair(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: sets TCP_REPAIR")
	}
	if emulated() {
		t.Skip("qemu-user does not translate TCP_INFO and TCP_REPAIR_WINDOW")
	}
}

// emulated says the test runs under qemu-user (make test-bigendian): the
// kernel is of another architecture than the binary (qemu-user fakes
// uname, not this file).
func emulated() bool {
	arch, _ := os.ReadFile("/proc/sys/kernel/arch")
	return runtime.GOARCH == "s390x" && string(arch) != "s390x\n"
}

// startRepairHelper serves the repair protocol in-process (the test is
// root) and returns the engine's end.
func startRepairHelper(t *testing.T) *tcprepair.Client {
	t.Helper()
	needRepair(t)
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tcprepair.Serve(sp[1]); unix.Close(sp[1]) }()
	c := tcprepair.NewClient(sp[0])
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("repair helper: %v", err)
		}
	})
	return c
}

// destination is h's guest moved to a new engine, as on the migration's
// destination: same addresses, nothing else carried over; the guest is
// attached at once, as a vhost-user guest is, with QEMU's framing.
func (h *hotPath) destination(t *testing.T) *hotPath {
	t.Helper()
	h2 := *h
	h2.e, h2.guest = attachedEngine(t, h.e.cfg)
	h2.rd = qemusock.NewReader(qemusock.QEMU, 4<<20)
	return &h2
}

// migrate saves h's state and loads it into a destination, with a
// repair helper when repair, as a migration does.
func (h *hotPath) migrate(t *testing.T, repair bool) *hotPath {
	t.Helper()
	var stream bytes.Buffer
	if err := h.e.migrateSave(&stream); err != nil {
		t.Fatal(err)
	}
	d := h.destination(t)
	if repair {
		d.e.repair = startRepairHelper(t)
	}
	if err := d.e.migrateLoad(&stream); err != nil {
		t.Fatal(err)
	}
	return d
}

// inFlight is a connection, with a repair helper when repair, whose host
// peer c sent "before," (the guest acknowledged it), "unacked," (the
// guest has it, unacknowledged) and "unread," (still in the host socket).
func inFlight(t *testing.T, repair bool) (*hotPath, net.Conn) {
	t.Helper()
	h, c := tcpPeer(t)
	if repair {
		h.e.repair = startRepairHelper(t)
	}
	c.Write([]byte("before,"))
	h.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "before," })
	c.Write([]byte("unacked,"))
	h.receive(t, true, func(s header.TCP) bool { return string(s.Payload()) == "unacked," })
	c.Write([]byte("unread,"))
	return h, c
}

// TestMigrateTCP moves an established connection from one engine to
// another through the repair helper, with data the guest has not
// acknowledged and data not yet read from the host: the guest gets it
// all once, in order, and the connection carries on both ways.
func TestMigrateTCP(t *testing.T) {
	h, c := inFlight(t, true)
	d := h.migrate(t, true)
	if h.e.tcp.count != 0 {
		t.Fatal("the source kept the flow")
	}
	c.Write([]byte("after"))
	var got []byte
	d.receive(t, false, func(s header.TCP) bool {
		if s.Seq() == d.ack-uint32(len(s.Payload())) {
			got = append(got, s.Payload()...)
		}
		return string(got) == "unacked,unread,after"
	})
	d.upload(5)
	buf := make([]byte, 16)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); n != 5 || err != nil {
		t.Fatalf("host read %d, %v from the destination", n, err)
	}
}

// failingWriter takes nothing, as a device state pipe whose reader went
// away.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, unix.EPIPE }

// TestMigrateSaveFails: when the state cannot be written, the source
// keeps its connections as they were: out of repair mode, the guest gets
// what it had not acknowledged again and what came since, once and in
// order, and its data reaches the host.
func TestMigrateSaveFails(t *testing.T) {
	for _, repair := range []bool{true, false} {
		t.Run(map[bool]string{true: "helper", false: "no helper"}[repair], func(t *testing.T) {
			h, c := inFlight(t, repair)
			if err := h.e.migrateSave(failingWriter{}); err == nil {
				t.Fatal("a save that could not be written succeeded")
			}
			if h.e.tcp.count != 1 {
				t.Fatal("the source let go of the flow")
			}
			c.Write([]byte("after"))
			const want = "unacked,unread,after"
			var got []byte
			base := h.ack
			h.receive(t, false, func(s header.TCP) bool {
				// Every segment must carry the stream's bytes at its
				// sequence: a guest keeps one out of order for later.
				p, off := s.Payload(), int(s.Seq()-base)
				if len(p) > 0 && (off < 0 || off+len(p) > len(want) || string(p) != want[off:off+len(p)]) {
					t.Fatalf("a segment at %d carries %q", off, p)
				}
				if s.Seq() == h.ack-uint32(len(p)) {
					got = append(got, p...)
				}
				return string(got) == want
			})
			h.upload(5)
			buf := make([]byte, 16)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if n, err := c.Read(buf); n != 5 || err != nil {
				t.Fatalf("host read %d, %v after the failed save", n, err)
			}
		})
	}
}

// headOnlyWriter takes the stream's head, every flow's guest side, and
// fails after: a front-end that went away once the sockets were closed.
type headOnlyWriter struct{ n int }

func (w *headOnlyWriter) Write(p []byte) (int, error) {
	if w.n++; w.n > 1 {
		return 0, unix.EPIPE
	}
	return len(p), nil
}

// TestMigrateSaveFailsLate: a stream that breaks after its head, when the
// connection's socket was already closed to be moved, leaves the guest
// here with a reset for it, at the sequence it expects, and no flow or
// descriptor behind.
func TestMigrateSaveFailsLate(t *testing.T) {
	h, c := inFlight(t, true)
	before := openFds(t)
	if err := h.e.migrateSave(&headOnlyWriter{}); err == nil {
		t.Fatal("a save that could not be written succeeded")
	}
	if h.e.tcp.count != 0 {
		t.Fatal("the source kept a flow whose socket it closed")
	}
	h.receive(t, true, func(s header.TCP) bool { return isRst(s) && s.Seq() == h.ack+uint32(len("unacked,")) })
	if leaked := leakedFds(t, before); len(leaked) > 0 {
		t.Errorf("descriptors left open: %v", leaked)
	}
	c.Close()
}

// TestMigrateWithoutHelper: with no repair helper the connection cannot
// move; the destination resets it for the guest, at the sequence the
// guest expects, and the host peer sees a reset.
func TestMigrateWithoutHelper(t *testing.T) {
	h, c := tcpPeer(t)
	d := h.migrate(t, false)
	d.receive(t, true, func(s header.TCP) bool { return isRst(s) && s.Seq() == d.ack })
	// The guest answers the probe after it with where it stands, and a
	// guest that missed frames of the source gets its reset then.
	d.ack -= 10
	d.send(d.segment(header.TCPAck, 0))
	d.receive(t, true, func(s header.TCP) bool { return isRst(s) && s.Seq() == d.ack })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("host read: %v, want a reset", err)
	}
}

// TestMigrateWithoutHelperKeepsUpload: with no repair helper the guest's
// connection cannot move, but its upload, which the source acknowledged
// and a host peer that does not read yet left in the host socket, still
// reaches the peer, then the reset, as after the guest's own reset.
func TestMigrateWithoutHelperKeepsUpload(t *testing.T) {
	h, c := tcpPeer(t)
	up := pattern(1<<20, 29)
	h.uploadData(t, up)
	h.migrate(t, false)
	h.peerReadsThenReset(t, c, up)
}

// TestMigrateGuestHalfClosed moves a connection the guest has shut down
// for writing: the host peer still sends, and the guest gets it from the
// destination.
func TestMigrateGuestHalfClosed(t *testing.T) {
	h, c := tcpPeer(t)
	h.e.repair = startRepairHelper(t)
	h.upload(5)
	h.send(h.segment(header.TCPFin|header.TCPAck, 0))
	h.seq++
	h.e.turn(5)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(c); len(b) != 5 || err != nil {
		t.Fatalf("host read %d bytes, %v before the guest's FIN", len(b), err)
	}
	// The host's ACK of the FIN must not be in flight when the socket
	// moves: on one host, what arrives between the source's close and the
	// destination's connect is answered with a reset by the kernel.
	for f, i := h.flow(), 0; i < 5000; i++ {
		if info, err := unix.GetsockoptTCPInfo(f.fd, unix.SOL_TCP, unix.TCP_INFO); err != nil || info.State == 5 {
			break // FIN_WAIT2
		}
		time.Sleep(time.Millisecond)
	}
	d := h.migrate(t, true)
	if f := d.flow(); f == nil || f.state != tcpEstablished|tcpGuestFin {
		t.Fatalf("moved flow %v", f)
	}
	c.Write([]byte("still open"))
	d.receive(t, false, func(s header.TCP) bool { return string(s.Payload()) == "still open" })
}

// TestRepairHelperReconnects: the engine takes one helper on its repair
// socket, refuses a second while the first is there, and takes a new one
// once the first has gone (KubeVirt restarts its helper).
func TestRepairHelperReconnects(t *testing.T) {
	h := newHotPath(t, sinkServer)
	_, dial := repairSocket(t, h)
	first := dial()
	if h.e.repair == nil {
		t.Fatal("the first helper was not taken")
	}
	taken := h.e.repair
	second := dial()
	var b [1]byte
	if n, _ := unix.Read(second, b[:]); n != 0 || h.e.repair != taken {
		t.Error("a second helper was not turned away")
	}
	unix.Close(second)
	unix.Close(first)
	h.e.turn(10)
	if h.e.repair != nil {
		t.Fatal("a helper that went away is still the engine's")
	}
	third := dial()
	defer unix.Close(third)
	if h.e.repair == nil {
		t.Error("a new helper was not taken")
	}
}

// TestMigrateForwards: on one host, the source lets go of its forwards
// when it saves its state, and takes them back at its guest's next frame
// if the guest goes on here; a destination started while they were
// bound holds them, without failing, and binds them when it loads the
// state. A source whose guest goes on here after that cannot bind them:
// its engine ends, as one that cannot bind a forward at start does. Held
// forwards are listed as such, and one removed is not bound later.
func TestMigrateForwards(t *testing.T) {
	h := newHotPath(t, sinkServer)
	fwds := freeForward(t, TCP, 22)
	if err := h.e.AddForwards(TCP, fwds, false); err != nil {
		t.Fatal(err)
	}
	save := func() *bytes.Buffer {
		t.Helper()
		var stream bytes.Buffer
		if err := h.e.migrateSave(&stream); err != nil {
			t.Fatal(err)
		}
		if got := h.e.Forwards(); len(got) != 1 || !strings.HasSuffix(got[0], "(held: bound when the guest is here)") {
			t.Fatalf("the source's forwards: %q", got)
		}
		return &stream
	}
	frame := func() error {
		h.send(h.segment(header.TCPAck, 0))
		_, err := h.e.turn(10)
		return err
	}
	save()
	if err := frame(); err != nil || len(h.e.Forwards()) != 1 {
		t.Fatalf("the guest went on at the source: %v, forwards %q", err, h.e.Forwards())
	}

	d := h.destination(t)
	if err := d.e.AddForwards(TCP, fwds, false); err == nil {
		t.Fatal("a busy port was taken without migration")
	}
	d.e.cfg.Migration = true
	if err := d.e.AddForwards(TCP, fwds, false); err != nil {
		t.Fatalf("a busy port at a destination's start: %v", err)
	}
	d.e.running = true
	if err := d.e.migrateLoad(save()); err != nil {
		t.Fatal(err)
	}
	if got := d.e.Forwards(); len(got) != 1 || strings.Contains(got[0], "held") {
		t.Fatalf("the destination's forwards: %q", got)
	}
	if err := frame(); err == nil || !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("the source's guest went on with the port the destination's: %v", err)
	}
	// A held forward removed is not bound later.
	e := h.destination(t).e
	e.cfg.Migration = true
	if err := e.AddForwards(TCP, fwds, false); err != nil || len(e.fwd.held) != 1 {
		t.Fatalf("held: %v, %d", err, len(e.fwd.held))
	}
	if err := e.RemoveForwards(TCP, fwds); err != nil || len(e.fwd.held) != 0 || len(e.Forwards()) != 0 {
		t.Fatalf("a held forward removed: %v, %q", err, e.Forwards())
	}
}

// TestMigrateManyFlows moves more connections than one message to the
// helper carries: the destination puts them in and out of repair mode by
// batches, and each one carries on, both ways, from its restored socket.
func TestMigrateManyFlows(t *testing.T) {
	h := newHotPath(t, sinkServer)
	h.e.repair = startRepairHelper(t)
	const n = 3*tcprepair.MaxFds + 241 // four batches: the ring of three wraps
	peers := manyFlows(t, h, n)
	d := h.migrate(t, true)
	moved := 0
	d.e.tcp.each(func(_ int32, f *tcpFlow) {
		c := peers[f.key]
		if c == nil {
			return // the hot path's own connection
		}
		moved++
		bothWays(t, f, c, "to")
	})
	if moved != n {
		t.Errorf("%d of %d connections moved", moved, n)
	}
}

// manyFlows adds n established flows to h's engine, each on a loopback
// connection to its host peer, by the flow's key.
func manyFlows(t *testing.T, h *hotPath, n int) map[tcpKey]net.Conn {
	return manyFlowsFrom(t, h, 20000, n)
}

// manyFlowsFrom is manyFlows with the guest's ports from base on.
func manyFlowsFrom(t *testing.T, h *hotPath, base uint16, n int) map[tcpKey]net.Conn {
	t.Helper()
	l := listenLoopback(t)
	peers := make(map[tcpKey]net.Conn, n)
	for i := range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		// The accepted end becomes a flow's host socket.
		var fd int
		raw, _ := s.(*net.TCPConn).SyscallConn()
		raw.Control(func(sfd uintptr) { fd, err = unix.Dup(int(sfd)) })
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		unix.SetNonblock(fd, true)
		key := tcpKey{guest: netip.AddrPortFrom(hpGuest, base+uint16(i)), remote: netip.AddrPortFrom(hpGateway, 8080)}
		f := h.e.tcpAddFlow(key, fd, tcpEstablished)
		f.flags, f.guestWnd = 0, 64<<10
		if err := h.e.epollAdd(fd, tcpEvents, h.e.tcpRef(f)); err != nil {
			t.Fatal(err)
		}
		peers[key] = c
	}
	return peers
}

// bothWays checks that f's host socket and its peer c talk both ways:
// f reads what c had sent (queued), then "to"; c reads "from".
func bothWays(t *testing.T, f *tcpFlow, c net.Conn, queued string) {
	t.Helper()
	c.Write([]byte("to"))
	if _, err := unix.Write(f.fd, []byte("from")); err != nil {
		t.Errorf("%v: write: %v", f.key, err)
	}
	buf := make([]byte, 8)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if k, err := io.ReadFull(c, buf[:4]); err != nil || string(buf[:k]) != "from" {
		t.Errorf("%v: the peer read %q, %v", f.key, buf[:k], err)
	}
	var got []byte
	for i := 0; i < 500 && len(got) < len(queued); i++ {
		b := make([]byte, len(queued)-len(got))
		if k, _ := unix.Read(f.fd, b); k > 0 {
			got = append(got, b[:k]...)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	if string(got) != queued {
		t.Errorf("%v: read %d bytes from the peer, want %d", f.key, len(got), len(queued))
	}
}

// hookWriter runs hook once, before its first write to w.
type hookWriter struct {
	w    io.Writer
	hook func()
}

func (h *hookWriter) Write(p []byte) (int, error) {
	if h.hook != nil {
		h.hook()
		h.hook = nil
	}
	return h.w.Write(p)
}

// TestMigrateDataDuringSave: the host peer sends while the source saves.
// A socket in repair mode still takes and acknowledges what arrives, so
// bytes that came after its dump were acknowledged to the peer and not
// in the stream: lost, and the moved connection stalled for good at the
// hole. Each socket is now checked, and dumped again if it took more,
// just before it is closed: the guest gets every byte, once, in order.
func TestMigrateDataDuringSave(t *testing.T) {
	h, c := inFlight(t, true)
	var cfd int
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) { cfd = int(fd) })
	var stream bytes.Buffer
	sent := false
	during := func() {
		c.Write([]byte("during,"))
		for range 2000 { // until the source's kernel acknowledged it
			if q, err := unix.IoctlGetInt(cfd, unix.SIOCOUTQ); err == nil && q == 0 {
				sent = true
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := h.e.migrateSave(&hookWriter{w: &stream, hook: during}); err != nil {
		t.Fatal(err)
	}
	if !sent {
		t.Fatal("the source's socket never acknowledged what the peer sent during the save")
	}
	d := h.destination(t)
	d.e.repair = startRepairHelper(t)
	if err := d.e.migrateLoad(&stream); err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("after"))
	var got []byte
	d.receive(t, false, func(s header.TCP) bool {
		if s.Seq() == d.ack-uint32(len(s.Payload())) {
			got = append(got, s.Payload()...)
		}
		return string(got) == "unacked,unread,during,after"
	})
}

// TestMigrateFinDuringSave: the host peer shuts down its side while the
// source saves, after the socket's dump and before its close, with data
// before its FIN or none. The source's socket, in repair mode, takes the
// FIN and acknowledges it, and the guest's side in the stream, written
// first, does not have it: the guest still gets every byte, then the FIN,
// once, from the destination, and its own data and FIN reach the peer.
func TestMigrateFinDuringSave(t *testing.T) {
	for _, during := range []string{"", "during,"} {
		t.Run(fmt.Sprintf("%q", during), func(t *testing.T) {
			h, c := inFlight(t, true)
			fd := h.flow().fd
			var stream bytes.Buffer
			hook := func() {
				if during != "" {
					c.Write([]byte(during))
				}
				c.(*net.TCPConn).CloseWrite()
				for range 5000 {
					if info, err := unix.GetsockoptTCPInfo(fd, unix.SOL_TCP, unix.TCP_INFO); err != nil || info.State == 8 {
						return // CLOSE_WAIT
					}
					time.Sleep(time.Millisecond)
				}
			}
			if err := h.e.migrateSave(&hookWriter{w: &stream, hook: hook}); err != nil {
				t.Fatal(err)
			}
			d := h.destination(t)
			d.e.repair = startRepairHelper(t)
			if err := d.e.migrateLoad(&stream); err != nil {
				t.Fatal(err)
			}
			want := "unacked,unread," + during
			var got []byte
			fins := 0
			d.receive(t, false, func(s header.TCP) bool {
				if isRst(s) {
					t.Fatal("the guest got a reset")
				}
				if n := len(s.Payload()); n > 0 && s.Seq() == d.ack-uint32(n) {
					got = append(got, s.Payload()...)
				}
				if isFin(s) {
					if string(got) != want {
						t.Fatalf("FIN after %q, want after %q", got, want)
					}
					fins++
				}
				return fins > 0
			})
			for range 5 {
				d.e.turn(5)
				d.readFrames(func(s header.TCP) {
					if isFin(s) || len(s.Payload()) > 0 {
						t.Errorf("after the FIN: flags %#x, %d bytes at %d", s.Flags(), len(s.Payload()), s.Seq())
					}
				})
			}
			d.upload(5)
			d.send(d.segment(header.TCPFin|header.TCPAck, 0))
			d.seq++
			d.e.turn(5)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if b, err := io.ReadAll(c); len(b) != 5 || err != nil {
				t.Fatalf("host read %d bytes, %v, then the guest's FIN", len(b), err)
			}
			if f := d.flow(); f != nil {
				t.Errorf("the flow stays after both FINs: %v", f.state)
			}
			c.Close()
		})
	}
}

// failAtWriter takes writes until its nth, which fails.
type failAtWriter struct{ n, at int }

func (w *failAtWriter) Write(p []byte) (int, error) {
	if w.n++; w.n >= w.at {
		return 0, unix.EPIPE
	}
	return len(p), nil
}

// TestMigrateManyFlowsFailLate: a save of more flows than one helper
// message and one chunk of sockets carry, whose peers send during it,
// breaks at its second chunk or later. The flows closed so far are reset
// for the guest, once each; the others are out of repair mode, with
// every byte their peers sent, and work both ways; no descriptor is
// left behind. If the helper died after the head, the others cannot
// leave repair mode: they are reset for the guest too, once each.
func TestMigrateManyFlowsFailLate(t *testing.T) {
	for _, tc := range []struct {
		at   int // the failing write; the head is the first
		dies bool
	}{{3, false}, {5, false}, {3, true}} {
		t.Run(fmt.Sprintf("write %d, helper dies %v", tc.at, tc.dies), func(t *testing.T) {
			needRepair(t)
			h := newHotPath(t, sinkServer)
			// The helper, in-process, which the hook may stop.
			sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- tcprepair.Serve(sp[1]) }()
			t.Cleanup(func() {
				unix.Shutdown(sp[1], unix.SHUT_RDWR)
				<-done
				unix.Close(sp[1])
			})
			h.e.repair = tcprepair.NewClient(sp[0])
			const n = tcprepair.MaxFds + 47
			peers := manyFlows(t, h, n)
			before := strings.Repeat("x", 1000) // a chunk is some 60 flows
			for _, c := range peers {
				c.Write([]byte(before))
			}
			hook := func() {
				for _, c := range peers {
					c.Write([]byte("during,"))
				}
				if tc.dies {
					unix.Shutdown(sp[1], unix.SHUT_RDWR)
				}
				time.Sleep(20 * time.Millisecond) // for the source's kernel to take it
			}
			fds := openFds(t)
			if err := h.e.migrateSave(&hookWriter{w: &failAtWriter{at: tc.at}, hook: hook}); err == nil {
				t.Fatal("a save that could not be written succeeded")
			}
			kept := map[tcpKey]bool{}
			h.e.tcp.each(func(_ int32, f *tcpFlow) {
				if c := peers[f.key]; c != nil {
					kept[f.key] = true
					bothWays(t, f, c, before+"during,to")
				}
			})
			if tc.dies && len(kept) > 0 || !tc.dies && (len(kept) == 0 || len(kept) == n) {
				t.Fatalf("%d of %d flows kept", len(kept), n)
			}
			// Distinct resets, by sequence number: a copy of one (tcpReset)
			// falls due within these turns on a slow machine.
			rst := map[uint16]map[uint32]bool{}
			for range 3 {
				h.e.turn(5)
				h.readFrames(func(s header.TCP) {
					if isRst(s) {
						if rst[s.DstPort()] == nil {
							rst[s.DstPort()] = map[uint32]bool{}
						}
						rst[s.DstPort()][s.Seq()] = true
					}
				})
			}
			for key := range peers {
				if got, want := len(rst[key.guest.Port()]), map[bool]int{true: 0, false: 1}[kept[key]]; got != want {
					t.Errorf("%v: %d resets to the guest, want %d", key, got, want)
				}
			}
			if leaked := leakedFds(t, fds); len(leaked) > 0 {
				t.Errorf("descriptors left open: %v", leaked)
			}
		})
	}
}

// TestMigrateAckedDuringSave: the host peer acknowledges, during the
// save, data the source's socket had sent it, and sends more, so that
// the socket is dumped again with a shorter send queue. The guest's side,
// written first, says where that queue starts in the guest's sequence
// (seqInitFromTap: passt's destination counts what its restored socket
// has acknowledged from there): the socket's record must start there
// too. The peer's ACKs are held back by a firewall rule, in a network
// namespace, until the save.
func TestMigrateAckedDuringSave(t *testing.T) {
	h := newHotPath(t, sinkServer)
	h.e.repair = startRepairHelper(t)
	pingNetns(t) // this thread's network namespace, loopback up
	peers := manyFlows(t, h, 1)
	var f *tcpFlow
	var c net.Conn
	for key, conn := range peers {
		_, f = h.e.tcp.lookup(key)
		c = conn
	}
	port := fmt.Sprint(c.RemoteAddr().(*net.TCPAddr).Port)
	iptables := func(op string) {
		t.Helper()
		if out, err := exec.Command("iptables", op, "INPUT", "-p", "tcp", "--dport", port, "-j", "DROP").CombinedOutput(); err != nil {
			t.Skipf("iptables: %v: %s", err, out)
		}
	}
	iptables("-A")
	if _, err := unix.Write(f.fd, []byte("sent, not yet acknowledged")); err != nil {
		t.Fatal(err)
	}
	var cfd int
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) { cfd = int(fd) })
	hook := func() {
		iptables("-D")
		c.Write([]byte("during,")) // with the ACK of what the source sent
		for range 2000 {           // until the source's kernel took it
			if q, err := unix.IoctlGetInt(cfd, unix.SIOCOUTQ); err == nil && q == 0 {
				return
			}
			time.Sleep(time.Millisecond)
		}
		t.Error("the source's socket never acknowledged what the peer sent during the save")
	}
	var stream bytes.Buffer
	if err := h.e.migrateSave(&hookWriter{w: &stream, hook: hook}); err != nil {
		t.Fatal(err)
	}
	s, err := readMigration(bytes.NewReader(stream.Bytes()), 10)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, m := range s.flows {
		if m.tcp.side[m.tcp.tapSide()].eport != 20000 {
			continue
		}
		found = true
		if string(m.sock.RecvQ) != "during," {
			t.Errorf("receive queue %q", m.sock.RecvQ)
		}
		if start := m.tcp.seqFromTap - uint32(len(m.sock.SendQ)); start != m.tcp.seqInitFromTap {
			t.Errorf("the send queue (%d bytes) starts at %d in the guest's sequence, the guest's side says %d",
				len(m.sock.SendQ), start, m.tcp.seqInitFromTap)
		}
	}
	if !found {
		t.Fatal("the flow is not in the stream")
	}
	// The destination sends again what the peer acknowledged: the peer
	// reads it once, then what follows.
	d := h.destination(t)
	d.e.repair = startRepairHelper(t)
	if err := d.e.migrateLoad(&stream); err != nil {
		t.Fatal(err)
	}
	_, f = d.e.tcp.lookup(f.key)
	if f == nil {
		t.Fatal("the flow did not move")
	}
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadFull(c, buf[:26]); string(buf[:n]) != "sent, not yet acknowledged" {
		t.Fatalf("the peer read %q, %v", buf[:n], err)
	}
	bothWays(t, f, c, "during,to")
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _ := c.Read(buf); n > 0 {
		t.Errorf("the peer read %q again", buf[:n])
	}
}
