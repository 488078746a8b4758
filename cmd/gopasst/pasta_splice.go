package main

import (
	"log"
	"net"
	"net/netip"
	"os"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// pasta's loopback path for -t: a connection from the host's loopback is
// joined, socket to socket, to one the agent makes in the namespace,
// connected to the namespace's address (its loopback with
// --host-lo-to-ns-lo), as pasta does; Go's io.Copy between two TCP
// sockets moves the data with splice(2) through a pipe, never through
// the tap and the TCP translation.

// splicer is the engine's slirp.SpliceFunc in pasta mode.
type splicer struct {
	h            *helperClient // set before the engine runs
	logger       *log.Logger
	addr4, addr6 netip.Addr // the namespace's addresses
	hostLoToNsLo bool
}

// newSplicer is the loopback path the options ask for, nil with
// --no-splice; the helper allows the connections its targets make.
func newSplicer(o *pastaOptions, cfg netSetup) *splicer {
	if o.NoSplice {
		return nil
	}
	return &splicer{addr4: cfg.Addr4, addr6: cfg.Addr6, hostLoToNsLo: o.HostLoToNsLo}
}

func (s *splicer) splice(fd int, from netip.AddrPort, port uint16) bool {
	go s.join(fd, from, port)
	return true
}

// target is where a connection from from goes in the namespace.
func (s *splicer) target(from netip.AddrPort) netip.Addr {
	v6 := from.Addr().Is6() && !from.Addr().Is4In6()
	switch {
	case s.hostLoToNsLo || (v6 && !s.addr6.IsValid()) || (!v6 && !s.addr4.IsValid()):
		return loopback(from.Addr())
	case v6:
		return s.addr6
	}
	return s.addr4
}

func (s *splicer) join(fd int, from netip.AddrPort, port uint16) {
	f := os.NewFile(uintptr(fd), "spliced")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return
	}
	defer c.Close()
	to := netip.AddrPortFrom(s.target(from), port)
	// The agent connects: a refused connection ends the copy, and the
	// client sees its connection closed.
	nfd, err := s.h.fdCall(helperRequest{Op: "nssocket", Proto: slirp.TCP, Fwd: portspec.Forward{Addr: to.Addr(), GuestPort: port}})
	if err != nil {
		s.logger.Printf("-t %d from %v: %v", port, from, err)
		return
	}
	nf := os.NewFile(uintptr(nfd), "ns")
	defer nf.Close()
	up, err := net.FileConn(nf)
	if err != nil {
		return
	}
	defer up.Close()
	joinConns(c, up)
}

func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}
