package main

import (
	"strings"
	"testing"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// newHelperPair serves a helper on one end of a socket pair and returns a
// client on the other.
func newHelperPair(t *testing.T, srv *helperServer) *helperClient {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv.fd = pair[0]
	done := make(chan struct{})
	go func() { srv.serve(); close(done) }()
	t.Cleanup(func() { unix.Close(pair[1]); <-done; unix.Close(pair[0]) })
	return newHelperClient(pair[1])
}

// TestHelperRefuses: without --unix-fwd, --cmd-fwd or --control, the
// helper does neither for the engine, whatever it asks.
func TestHelperRefuses(t *testing.T) {
	c := newHelperPair(t, &helperServer{})
	if _, err := c.DialUnix("/run/any.sock"); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Errorf("unix: %v", err)
	}
	if _, err := c.Command([]string{"/bin/true"}); err == nil || !strings.Contains(err.Error(), "not enabled") {
		t.Errorf("cmd: %v", err)
	}
	if _, _, err := c.call(helperRequest{Op: "format-disk"}); err == nil || !strings.Contains(err.Error(), "unknown request") {
		t.Errorf("unknown request: %v", err)
	}
}

// TestHelperBind: a bound descriptor comes back, and errors keep their
// errno (the engine tells a busy port by it).
func TestHelperBind(t *testing.T) {
	c := newHelperPair(t, &helperServer{})
	fd, err := c.Bind(slirp.TCP, portspec.Forward{})
	if err != nil {
		t.Skipf("cannot bind an ephemeral port here: %v", err)
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	port := 0
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		port = a.Port
	case *unix.SockaddrInet6:
		port = a.Port
	}
	_, err = c.Bind(slirp.TCP, portspec.Forward{HostPort: uint16(port)})
	if err != unix.EADDRINUSE {
		t.Errorf("binding port %d twice: %v, want EADDRINUSE", port, err)
	}
}
