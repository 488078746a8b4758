package main

import (
	"net/netip"

	"github.com/gopasst/gopasst/pkg/portspec"
	"github.com/gopasst/gopasst/pkg/slirp"
	"golang.org/x/sys/unix"
)

// pasta's loopback path for -t: the engine joins a connection from the
// host's loopback, socket to socket, to one the agent makes in the
// namespace, connected to the namespace's address (its loopback with
// --host-lo-to-ns-lo), as pasta does, and splices between them
// (slirp/splice.go).

// splicer is the engine's slirp.SpliceDial in pasta mode.
type splicer struct {
	h            *helperClient // set before the engine runs
	addr4, addr6 netip.Addr    // the namespace's addresses
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

// dial has the agent connect, in the namespace, the other end of a
// connection or of a UDP sender's datagrams to port from from.
func (s *splicer) dial(proto slirp.Proto, from netip.AddrPort, port uint16) (int, error) {
	to := s.target(from)
	return s.h.fdCall(helperRequest{Op: "nssocket", Proto: proto, Fwd: portspec.Forward{Addr: to, GuestPort: port}})
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

func sockaddrOf(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	}
	return &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
}
