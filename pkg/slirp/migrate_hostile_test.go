package slirp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/gopasst/gopasst/pkg/slirp/header"
	"golang.org/x/sys/unix"
)

// Whatever reaches the repair socket, and streams and timings a
// migration may meet: each case is played against the engine, which
// must neither crash, hang nor spin, and must serve a good helper or
// guest after it.

// repairSocket gives h's engine a repair socket, as the helper does,
// and returns a dial to it that lets the engine take the connection
// (the caller closes it).
func repairSocket(t *testing.T, h *hotPath) (path string, dial func() int) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "repair")
	lfd, err := qemusock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	h.e.cfg.RepairListen = os.NewFile(uintptr(lfd), "repair")
	t.Cleanup(func() { h.e.cfg.RepairListen.Close() })
	if err := h.e.epollAdd(lfd, unix.EPOLLIN, epollRef{kind: kindRepair, idx: repairListen}); err != nil {
		t.Fatal(err)
	}
	return path, func() int {
		fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		h.e.turn(10)
		return fd
	}
}

// TestRepairHostileGarbage: a helper that sends what nobody asked, while
// no migration runs, is dropped at once, so that the real one, which
// KubeVirt starts when it migrates, is not turned away as a second.
func TestRepairHostileGarbage(t *testing.T) {
	h := newHotPath(t, sinkServer)
	_, dial := repairSocket(t, h)
	bad := dial()
	defer unix.Close(bad)
	if h.e.repair == nil {
		t.Fatal("no helper taken")
	}
	unix.Write(bad, []byte{1, 2, 3})
	h.e.turn(10)
	if h.e.repair != nil {
		t.Fatal("a helper that sent what nobody asked is still the engine's")
	}
	var b [1]byte
	if _, _, err := unix.Recvfrom(bad, b[:], unix.MSG_DONTWAIT); err == unix.EAGAIN {
		t.Error("its connection is still open")
	}
	defer unix.Close(dial())
	if h.e.repair == nil {
		t.Error("the next helper was turned away")
	}
}

// TestRepairAcceptOutOfFds: a helper's connection that the engine has no
// descriptor to accept waits in the backlog, the listener out of the
// epoll set until the next tick, instead of being reported, and failing,
// at every turn.
func TestRepairAcceptOutOfFds(t *testing.T) {
	h := newHotPath(t, sinkServer)
	path, _ := repairSocket(t, h)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	c, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(c)
	next, _ := unix.Dup(0)
	unix.Close(next)
	low := lim
	low.Cur = uint64(next) // every descriptor below the next free one is open: none left
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	unix.Connect(c, &unix.SockaddrUnix{Name: path})
	before := h.e.evStats.counts[kindRepair]
	for range 50 {
		h.e.turn(1)
	}
	reported := h.e.evStats.counts[kindRepair] - before
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	if reported > 2 {
		t.Errorf("the repair socket was reported in %d of 50 turns while no descriptor was free", reported)
	}
	h.e.resumeAccept()
	h.e.turn(10)
	if h.e.repair == nil {
		t.Error("the waiting helper was not taken once descriptors were free")
	}
}

// TestMigrateLoadFailsForwards: on one host, a destination that binds
// the forwards it held and then fails to load the state (a stream cut
// short, from a source that failed or from anyone) gives them back: the
// migration fails, the guest goes on at its source, which binds them at
// its next frame, where it died of EADDRINUSE. Forwards the destination
// could not bind, or had not tried when one failed, stay held rather than
// forgotten.
func TestMigrateLoadFailsForwards(t *testing.T) {
	h := newHotPath(t, sinkServer)
	tcp, udp := freeForward(t, TCP, 22), freeForward(t, UDP, 53)
	add := func(e *Engine) error {
		if err := e.AddForwards(TCP, tcp, false); err != nil {
			return err
		}
		return e.AddForwards(UDP, udp, false)
	}
	if err := add(h.e); err != nil {
		t.Fatal(err)
	}
	d := h.destination(t)
	d.e.cfg.Migration = true
	if err := add(d.e); err != nil || len(d.e.fwd.held) != 2 {
		t.Fatalf("a destination's busy ports: %v, %d held", err, len(d.e.fwd.held))
	}
	d.e.running = true
	var stream bytes.Buffer
	if err := h.e.migrateSave(&stream); err != nil {
		t.Fatal(err)
	}
	if err := d.e.migrateLoad(bytes.NewReader(stream.Bytes()[:20])); err == nil {
		t.Fatal("a stream cut short loaded")
	}
	if len(d.e.fwd.held) != 2 {
		t.Errorf("the destination holds %d forwards after a failed load, want 2: %q", len(d.e.fwd.held), d.e.Forwards())
	}
	h.send(h.segment(header.TCPAck, 0))
	if _, err := h.e.turn(10); err != nil {
		t.Fatalf("the source's guest went on after the failed migration: %v", err)
	}
	if len(h.e.fwd.held) != 0 {
		t.Fatalf("the source's forwards: %q", h.e.Forwards())
	}

	// The source has its ports again: the destination's load fails on
	// the TCP one, and holds the UDP one, not tried, with it.
	if err := d.e.migrateLoad(&stream); err == nil || !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("a load whose forward is busy: %v", err)
	}
	if got := d.e.Forwards(); len(got) != 2 || !strings.Contains(got[0], "held") || !strings.Contains(got[1], "held") {
		t.Errorf("the destination's forwards after a load that could not bind one: %q", got)
	}
}

// FuzzMigrateLoad has an engine load any stream, as a destination with
// no repair helper does (one would make sockets to whatever the stream
// names, and a window probe leaves as they leave repair mode): it
// refuses or takes it, resets what it names for the guest, and never
// panics.
func FuzzMigrateLoad(f *testing.F) {
	f.Add(appendMigration(nil, testMigStream()))
	dup := testMigStream()
	dup.flows = append(dup.flows, dup.flows...)
	f.Add(appendMigration(nil, dup))
	e, guest := attachedEngine(f, Config{Addr4: hpGuest, Prefix4: 24, Gateway4: hpGateway, Addr6: testGuest6, Gateway6: testGW6})
	rd := qemusock.NewReader(qemusock.QEMU, 1<<20)
	f.Fuzz(func(t *testing.T, b []byte) {
		e.migrateLoad(bytes.NewReader(b))
		e.flush()
		drainFrames(rd, guest, func([]byte) {})
	})
}

// freeForward is a forward of a port of 127.0.0.1 free for proto now.
func freeForward(t *testing.T, proto Proto, guestPort uint16) []portspec.Forward {
	t.Helper()
	var port int
	if proto == TCP {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	} else {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = c.LocalAddr().(*net.UDPAddr).Port
		c.Close()
	}
	return []portspec.Forward{{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: uint16(port), GuestPort: guestPort}}
}

// TestMigrateMappedPeer: a guest's IPv6 connection to an IPv4-mapped
// address (here the host's own, so that nothing leaves it) goes over
// IPv4, and has no place in passt's stream, which holds IPv4 mapped into
// IPv6: written there, it read back as IPv4 beside the guest's IPv6
// address, and the destination refused the whole stream, every other
// connection with it. It is left out, as a connection still opening is.
func TestMigrateMappedPeer(t *testing.T) {
	var own netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			own = p.Addr()
		}
	}
	if !own.IsValid() {
		t.Skip("no IPv4 address of the host's own but loopback")
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(own, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	te := newTestEngine(t)
	te.cfg.NoTCP = false
	mapped := netip.AddrFrom16(own.As16())
	seg := func(flags header.TCPFlags, seq, ack uint32) []byte {
		b := make([]byte, header.TCPMinLen)
		header.TCP(b).Encode(header.TCPFields{SrcPort: 40000, DstPort: uint16(l.Addr().(*net.TCPAddr).Port),
			Seq: seq, Ack: ack, Flags: flags, Window: 0xffff, HeaderLen: len(b)})
		return frameIP(testGuest6, mapped, header.ProtoTCP, b)
	}
	te.tapInput(seg(header.TCPSyn, 1000, 0))
	te.inputDone()
	synAck := te.awaitIPv6(t, func(ip header.IPv6) bool {
		return ip.NextHeader() == header.ProtoTCP && header.TCP(ip.Payload()).Flags()&header.TCPSyn != 0
	})
	if synAck == nil {
		t.Fatal("no SYN-ACK")
	}
	te.tapInput(seg(header.TCPAck, 1001, header.TCP(header.IPv6(header.Ethernet(synAck).Payload()).Payload()).Seq()+1))
	te.inputDone()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	te.turn(10)

	var stream bytes.Buffer
	if err := te.migrateSave(&stream); err != nil {
		t.Fatal(err)
	}
	d, _ := attachedEngine(t, te.cfg)
	if err := d.migrateLoad(&stream); err != nil {
		t.Fatalf("destination: %v", err)
	}
	if d.tcp.count != 0 {
		t.Errorf("the destination has %d connections", d.tcp.count)
	}
}

// TestMigrateLoadSeenAddresses: the guest's addresses in a stream pass the
// checks its frames' do, since the stream comes from another host: a
// broadcast, multicast or loopback IPv4 address, or a link-local or
// IPv4-mapped IPv6 one, leaves the destination's as they were; good ones are taken.
func TestMigrateLoadSeenAddresses(t *testing.T) {
	for _, tc := range []struct {
		a4, a6 string
		take   bool
	}{
		{"255.255.255.255", "fe80::1", false},
		{"224.0.0.1", "ff02::1", false},
		{"127.0.0.1", "::1", false},
		{"0.0.0.0", "::ffff:192.0.2.77", false},
		{"192.0.2.77", "2001:db8::77", true},
	} {
		te := newTestEngine(t)
		s := &migStream{}
		copy(s.seen.addr4[:], netip.MustParseAddr(tc.a4).AsSlice())
		copy(s.seen.addr6[:], netip.MustParseAddr(tc.a6).AsSlice())
		want4, want6 := te.addrSeen4, te.addrSeen6
		if tc.take {
			want4, want6 = netip.MustParseAddr(tc.a4), netip.MustParseAddr(tc.a6)
		}
		if err := te.migrateLoad(bytes.NewReader(appendMigration(nil, s))); err != nil {
			t.Fatal(err)
		}
		if te.addrSeen4 != want4 || te.addrSeen6 != want6 {
			t.Errorf("seen %s, %s loaded: %v, %v, want %v, %v", tc.a4, tc.a6, te.addrSeen4, te.addrSeen6, want4, want6)
		}
	}
	// So does its MAC: a group's is none, a unicast one is taken.
	for _, tc := range []struct {
		mac  [6]byte
		take bool
	}{{broadcastMAC, false}, {[6]byte{1, 0, 0x5e, 0, 0, 1}, false}, {[6]byte{2, 0, 0, 0, 0, 7}, true}} {
		te := newTestEngine(t)
		want := te.guestMAC
		if tc.take {
			want = tc.mac
		}
		if err := te.migrateLoad(bytes.NewReader(appendMigration(nil, &migStream{seen: migSeen{mac: tc.mac}}))); err != nil {
			t.Fatal(err)
		}
		if te.guestMAC != want {
			t.Errorf("MAC %x loaded: %x, want %x", tc.mac, te.guestMAC, want)
		}
	}
}
