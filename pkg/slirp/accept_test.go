package slirp

import (
	"log"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/qemusock"
	"golang.org/x/sys/unix"
)

// TestAcceptOutOfFds: an accept that finds no descriptor free (EMFILE)
// takes its listener out of the epoll set until the next tick, rather
// than leave it reported ready, and failing, at every turn, which spun
// the engine; after the tick the pending connection is taken. Both the
// engine's own listener and a TCP forward's.
func TestAcceptOutOfFds(t *testing.T) {
	e, path, fwd := forwardEngine(t, TCP, 22)
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := net.Dial("tcp", netip.AddrPortFrom(fwd.Addr, fwd.HostPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	listeners := func() (n int) {
		var ev [16]unix.EpollEvent
		k, _ := unix.EpollWait(e.epfd, ev[:], 0)
		for i := range ev[:k] {
			if kind := refOf(&ev[i]).kind; kind == kindListen || kind == kindTCPListen {
				n++
			}
		}
		return n
	}
	if n := listeners(); n != 2 {
		t.Fatalf("%d listeners ready, want 2", n)
	}
	e.lastTick = time.Duration(1 << 62) // no tick in the turns below
	withoutFds(t, func() { e.turn(0) })
	if e.link != nil {
		t.Fatal("a client accepted without a descriptor")
	}
	if n := listeners(); n != 0 {
		t.Fatalf("%d listeners still reported after EMFILE: the engine would spin", n)
	}

	e.lastTick = e.now - tick // the next turn ticks
	e.turn(0)
	if n := listeners(); n != 2 {
		t.Fatalf("%d listeners ready after the tick, want 2", n)
	}
	e.turn(0)
	if e.link == nil {
		t.Fatal("the pending client was not taken after the tick")
	}
	e.closeClient("test over")
}

// TestSecondClientsLogged: while a guest is attached, each further client
// is turned away, and a peer that connects again and again (any process
// of a vsock guest may) is logged at most every 10 s, not once a
// connection: it filled the log at thousands of lines a second.
func TestSecondClientsLogged(t *testing.T) {
	e, path, _ := forwardEngine(t, TCP, 22)
	var logged strings.Builder
	e.cfg.Log = log.New(&logged, "", 0)
	guest, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	for e.link == nil {
		e.turn(100)
	}
	const tries = 100
	for range tries {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		e.turn(100) // accepts it, and turns it away
		c.Close()
	}
	if e.link == nil || e.Stats.Clients != 1 {
		t.Fatalf("guest attached %v, %d clients taken: want the first alone", e.link != nil, e.Stats.Clients)
	}
	// The test takes well under 10 s; a slow run may log a few more.
	if n := strings.Count(logged.String(), "rejecting a second client"); n == 0 || n > tries/10 {
		t.Errorf("%d lines for %d rejected clients, want one every 10 s", n, tries)
	}
	e.closeClient("test over")
}

// withoutFds runs fn with the descriptor limit at the next free
// descriptor: any descriptor fn opens fails with EMFILE.
func withoutFds(t *testing.T, fn func()) {
	defer fdLimit(t, 0)()
	fn()
}

// fdLimit lowers the descriptor limit so that spare more descriptors
// can be opened, and returns what restores it, which the test's end
// does too, should it fail before.
func fdLimit(t *testing.T, spare int) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	next, err := unix.Dup(0)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(next)
	lim := old
	lim.Cur = uint64(next + spare)
	restore = func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) }
	t.Cleanup(restore)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	return restore
}

// forwardEngine is an engine that serves a unix socket at path, with no
// guest yet, and forwards proto from a free port of the host's loopback
// to guestPort.
func forwardEngine(t *testing.T, proto Proto, guestPort uint16) (e *Engine, path string, fwd portspec.Forward) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "s")
	lfd, err := qemusock.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, err = New(Config{OurMAC: testMAC, Addr4: testGuest4, Prefix4: 24, Gateway4: testGW4}, lfd); err != nil {
		t.Fatal(err)
	}
	var free net.Addr
	if proto == UDP {
		pc := listenUDPLoopback(t)
		free = pc.LocalAddr()
		pc.Close()
	} else {
		l := listenLoopback(t)
		free = l.Addr()
		l.Close()
	}
	port := uint16(netip.MustParseAddrPort(free.String()).Port())
	fwd = portspec.Forward{Addr: netip.MustParseAddr("127.0.0.1"), HostPort: port, GuestPort: guestPort}
	if err := e.AddForwards(proto, []portspec.Forward{fwd}, false); err != nil {
		t.Fatal(err)
	}
	return e, path, fwd
}
