package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"time"

	"github.com/gopasst/gopasst/pkg/qemusock"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// "gopasst guest" is the guest's end of a network carried over vsock, for
// a VM with a vsock device and no network device (Firecracker,
// cloud-hypervisor, confidential VMs): it makes a tap in the current
// network namespace and relays its frames, in QEMU's framing, to gopasst
// on the host (--vsock), which serves it like any guest, so DHCP
// configures the tap. The host side may restart: the relay reconnects,
// and the tap, with its configuration, stays.

type guestOptions struct {
	Vsock  string `placeholder:"CID:PORT" help:"Host gopasst's vsock address (the host is CID 2)."`
	Socket string `short:"s" placeholder:"PATH" help:"Host gopasst's unix socket, instead of vsock."`
	Tap    string `default:"tap0" placeholder:"NAME" help:"Tap device to create."`
}

// guestRetry is how long the relay waits before it reconnects.
const guestRetry = time.Second

func runGuest(o *guestOptions, stderr io.Writer) int {
	dial, err := guestDialer(o)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	fd, err := openTap(o.Tap)
	if err != nil {
		return fail(stderr, "%v", err)
	}
	if err := linkUp(o.Tap, 0); err != nil {
		return fail(stderr, "%v", err)
	}
	tap := os.NewFile(uintptr(fd), o.Tap) // non-blocking: deadlines work
	defer tap.Close()
	logger := log.New(stderr, "gopasst guest: ", log.LstdFlags)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, unix.SIGTERM, unix.SIGINT)
	for {
		conn, err := dial()
		if err == nil {
			logger.Printf("%s: relaying to %v", o.Tap, conn.RemoteAddr())
			err = relay(conn, tap, stop)
			if err == nil {
				logger.Printf("exiting")
				return 0
			}
		}
		logger.Printf("%v; reconnecting in %v", err, guestRetry)
		select {
		case <-stop:
			return 0
		case <-time.After(guestRetry):
		}
	}
}

// guestDialer returns how to reach the host side.
func guestDialer(o *guestOptions) (func() (net.Conn, error), error) {
	switch {
	case (o.Vsock == "") == (o.Socket == ""):
		return nil, errors.New("give one of --vsock CID:PORT or --socket PATH")
	case o.Socket != "":
		return func() (net.Conn, error) { return net.Dial("unix", qemusock.FileName(o.Socket)) }, nil
	}
	cid, port, err := parseVsockAddr(o.Vsock, false)
	if err != nil {
		return nil, err
	}
	return func() (net.Conn, error) { return vsock.Dial(cid, port, nil) }, nil
}

// relay moves frames between the tap and the host until one side fails,
// which it returns, or a signal comes, when it returns nil. The host is
// no more trusted than any peer: a frame length out of bounds ends the
// connection, never the process.
func relay(conn net.Conn, tap *os.File, stop <-chan os.Signal) error {
	defer conn.Close()
	errs := make(chan error, 2)
	go func() { // tap to host
		buf := make([]byte, 4+qemusock.MaxFrame)
		for {
			n, err := tap.Read(buf[4:])
			if err != nil {
				errs <- fmt.Errorf("tap: %w", err)
				return
			}
			binary.BigEndian.PutUint32(buf, uint32(n))
			if _, err := conn.Write(buf[:4+n]); err != nil {
				errs <- fmt.Errorf("host: %w", err)
				return
			}
		}
	}()
	go func() { // host to tap
		buf := make([]byte, qemusock.MaxFrame)
		var hdr [4]byte
		for {
			if _, err := io.ReadFull(conn, hdr[:]); err != nil {
				errs <- fmt.Errorf("host: %w", err)
				return
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n == 0 || n > qemusock.MaxFrame {
				errs <- fmt.Errorf("host sent a frame length of %d", n)
				return
			}
			if _, err := io.ReadFull(conn, buf[:n]); err != nil {
				errs <- fmt.Errorf("host: %w", err)
				return
			}
			tap.Write(buf[:n]) // a frame the tap refuses is dropped, as a NIC would
		}
	}()
	var err error
	select {
	case err = <-errs:
	case <-stop:
	}
	conn.Close()
	tap.SetReadDeadline(time.Now())
	if err != nil {
		<-errs // the other direction, unblocked: the tap stays for the next connection
	}
	tap.SetReadDeadline(time.Time{})
	return err
}
