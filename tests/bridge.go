package tests

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bridge connects a tap device to a stream-socket backend (gopasst, passt)
// with QEMU's framing: it plays the part of QEMU's -netdev stream, and the
// kernel behind the tap plays the guest.
type Bridge struct {
	tap  *os.File
	conn net.Conn
	wg   sync.WaitGroup
	once sync.Once
}

// openTap creates a tap device (no packet information header) in the
// calling thread's network namespace.
func openTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// NewBridge creates tap device tapName in guest and connects it to the
// backend's unix socket.
func NewBridge(guest *Netns, tapName, sock string) (*Bridge, error) {
	var tap *os.File
	var err error
	if nsErr := guest.do(func() { tap, err = openTap(tapName) }); nsErr != nil {
		return nil, nsErr
	}
	if err != nil {
		return nil, err
	}
	// A backend's socket file appears at bind(), a moment before it
	// listens: a refused connect right after start-up is tried again.
	conn, err := net.Dial("unix", sock)
	for i := 0; i < 100 && errors.Is(err, syscall.ECONNREFUSED); i++ {
		time.Sleep(20 * time.Millisecond)
		conn, err = net.Dial("unix", sock)
	}
	if err != nil {
		tap.Close()
		return nil, err
	}
	b := &Bridge{tap: tap, conn: conn}
	b.wg.Add(2)
	go b.tapToSock()
	go b.sockToTap()
	return b, nil
}

// tapToSock frames each packet read from the tap.
func (b *Bridge) tapToSock() {
	defer b.wg.Done()
	defer b.Close()
	buf := make([]byte, 4+65536+14)
	for {
		n, err := b.tap.Read(buf[4:])
		if err != nil {
			return
		}
		binary.BigEndian.PutUint32(buf, uint32(n))
		if _, err := b.conn.Write(buf[:4+n]); err != nil {
			return
		}
	}
}

// sockToTap unframes the stream into tap writes.
func (b *Bridge) sockToTap() {
	defer b.wg.Done()
	defer b.Close()
	r := bufio.NewReaderSize(b.conn, 1<<20)
	buf := make([]byte, 65536+14)
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n == 0 || int(n) > len(buf) {
			return
		}
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return
		}
		// A tap write fails for a malformed frame or a down link; the
		// frame is dropped, as a NIC would drop it.
		if _, err := b.tap.Write(buf[:n]); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// Close tears the bridge down; the tap device disappears with it.
func (b *Bridge) Close() {
	b.once.Do(func() {
		b.conn.Close()
		b.tap.Close()
	})
}

// Wait returns when both directions have stopped.
func (b *Bridge) Wait() { b.wg.Wait() }
