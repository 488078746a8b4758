package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gopasst/gopasst/pkg/slirp"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// --vsock serves guests that reach the host over AF_VSOCK: "gopasst
// guest" or gvisor-tap-vsock's gvforwarder inside the VM. The listener
// is mdlayher/vsock's, on a goroutine of its own; each connection's
// descriptor goes to the engine, which serves it from its epoll loop
// like a unix socket client, one guest at a time.

// parseVsockAddr reads "[CID:]PORT"; without a CID it is any (listening)
// unless the CID is required (dialing).
func parseVsockAddr(s string, listen bool) (cid, port uint32, err error) {
	cidStr, portStr, hasCID := strings.Cut(s, ":")
	if !hasCID {
		if !listen {
			return 0, 0, fmt.Errorf("vsock address %q: want CID:PORT", s)
		}
		cidStr, portStr = "", s
	}
	cid = unix.VMADDR_CID_ANY
	if cidStr != "" {
		c, err := strconv.ParseUint(cidStr, 10, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("vsock address %q: bad CID", s)
		}
		cid = uint32(c)
	}
	p, err := strconv.ParseUint(portStr, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("vsock address %q: bad port", s)
	}
	return cid, uint32(p), nil
}

// listenVsock listens on --vsock's address and hands each guest that
// connects to eng until the listener is closed.
func listenVsock(addr string, eng *slirp.Engine, logger *log.Logger) (func(), error) {
	cid, port, err := parseVsockAddr(addr, true)
	if err != nil {
		return nil, err
	}
	l, err := vsock.ListenContextID(cid, port, nil)
	if err != nil {
		return nil, fmt.Errorf("--vsock: %w", err)
	}
	go serveVsock(l, eng, logger)
	return func() { l.Close() }, nil
}

// serveVsock hands each guest that connects to l to eng until l is
// closed. A failed accept is not the end: out of descriptors (EMFILE,
// which a guest's flows can bring about) or of memory, the listener
// waits, up to acceptRetryMax, and tries again, rather than take no
// guest ever after. A run of failures is logged once.
func serveVsock(l net.Listener, eng *slirp.Engine, logger *log.Logger) {
	var wait time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if wait == 0 {
				logger.Printf("vsock: %v", err)
			}
			wait = min(max(2*wait, acceptRetryMin), acceptRetryMax)
			time.Sleep(wait)
			continue
		}
		wait = 0
		fd, err := dupConn(c)
		c.Close()
		if err != nil {
			logger.Printf("vsock: %v", err)
			continue
		}
		eng.Call(func() { eng.AttachStream(fd) })
	}
}

// The wait after a failed accept doubles from acceptRetryMin to
// acceptRetryMax.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// dupConn returns a non-blocking duplicate of a connection's descriptor,
// for the engine's own event loop.
func dupConn(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); cerr != nil {
		return -1, cerr
	}
	if err != nil {
		return -1, err
	}
	return fd, unix.SetNonblock(fd, true)
}
