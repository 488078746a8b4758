package slirp

import "net/netip"

// pasta's loopback path: a connection to a forwarded TCP port from the
// host's own loopback is not translated into the guest's TCP through
// the link; Config.Splice takes the accepted socket and joins it, socket
// to socket, to one on the namespace's loopback (cmd/gopasst's pasta,
// with splice(2)). --no-splice leaves Splice nil.

// SpliceFunc takes a connection accepted on a forwarded port whose
// guest port is port, from the host's loopback address from, and
// reports whether it took the descriptor. It runs on the engine's
// goroutine and must not block.
type SpliceFunc func(fd int, from netip.AddrPort, port uint16) bool

// spliceAccept offers an accepted connection to Config.Splice.
func (e *Engine) spliceAccept(fd int, from netip.AddrPort, port uint16) bool {
	return e.cfg.Splice != nil && from.Addr().Unmap().IsLoopback() && e.cfg.Splice(fd, from, port)
}
