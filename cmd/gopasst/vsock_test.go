package main

import (
	"encoding/binary"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// TestVsockListener serves a guest over vsock CID 1 (vsock_loopback): an
// ARP request in QEMU's framing gets its reply. Where the kernel has no
// vsock loopback (as on this project's machine) it skips; the QEMU
// guest test runs the same path on a kernel that has one.
func TestVsockListener(t *testing.T) {
	probe, err := vsock.ListenContextID(unix.VMADDR_CID_LOCAL, unix.VMADDR_PORT_ANY, nil)
	if err != nil {
		t.Skipf("no vsock loopback here (module vsock_loopback): %v", err)
	}
	probe.Close()
	eng, err := slirp.New(slirp.Config{OurMAC: [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55},
		Addr4: netip.MustParseAddr("192.0.2.2"), Prefix4: 24, Gateway4: netip.MustParseAddr("192.0.2.1")}, -1)
	if err != nil {
		t.Fatal(err)
	}
	go eng.Run()
	defer eng.Stop()
	port := uint32(40000 + os.Getpid()%20000)
	stop, err := listenVsock("1:"+strconv.Itoa(int(port)), eng, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := vsock.Dial(unix.VMADDR_CID_LOCAL, port, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantARPReply(t, c, "")
}

// TestVsockAcceptOutOfFds: an accept that finds no descriptor free
// (EMFILE: a guest's flows can use them all) does not end --vsock's
// listener, which then took no guest ever after; it tries again, and the
// pending client is served once descriptors are free. The accept loop
// runs on a unix listener here: it is the same for any net.Listener.
func TestVsockAcceptOutOfFds(t *testing.T) {
	eng, err := slirp.New(slirp.Config{OurMAC: [6]byte{0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55},
		Addr4: netip.MustParseAddr("192.0.2.2"), Prefix4: 24, Gateway4: netip.MustParseAddr("192.0.2.1")}, -1)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { eng.Run(); close(done) }()
	defer func() { eng.Stop(); <-done }()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	logged := make(chan string, 16)
	logger := log.New(chanWriter(logged), "", 0)
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
	lim.Cur = uint64(next)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { serveVsock(l, eng, logger); close(served) }()
	defer func() { l.Close(); <-served }()
	var msg string
	select {
	case msg = <-logged:
	case <-time.After(10 * time.Second):
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "too many open files") {
		t.Fatalf("logged %q, want the accept's EMFILE", msg)
	}

	wantARPReply(t, c, ": the listener took no client after EMFILE")
}

// wantARPReply sends an ARP request for the gateway on c, QEMU's framing,
// and fails the test, saying why, unless an ARP reply comes back.
func wantARPReply(t *testing.T, c net.Conn, why string) {
	t.Helper()
	arp := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6,
		0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 192, 0, 2, 1}
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(arp))), arp...))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	reply := make([]byte, 4+60)
	if _, err := io.ReadFull(c, reply); err != nil || reply[4+12] != 8 || reply[4+13] != 6 {
		t.Fatalf("reply % x, %v; want an ARP reply%s", reply, err, why)
	}
}

// chanWriter sends each write, a logged line, on a channel.
type chanWriter chan<- string

func (w chanWriter) Write(p []byte) (int, error) {
	select {
	case w <- string(p):
	default:
	}
	return len(p), nil
}
