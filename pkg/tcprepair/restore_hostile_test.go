package tcprepair

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRestoreAddressesInUse: a stream from another host names the
// addresses a restored socket takes. In repair mode the kernel binds a
// port in use (here a connection's), but never connects a 4-tuple
// another socket has: a restored socket cannot stand in for a live
// connection of this host.
func TestRestoreAddressesInUse(t *testing.T) {
	ns := newNetns(t)
	a, b, aAddr, bAddr := pair(t, ns, unix.AF_INET)
	defer unix.Close(a)
	defer unix.Close(b)
	var err error
	st := &State{TCPState: 1, MSS: 1460, SeqSnd: 1000, SeqRcv: 2000, SndWL1: 2000, SndWnd: 65535, MaxWindow: 65535, RcvWnd: 65535, RcvWup: 2000}
	restore := func(local, remote unix.Sockaddr) error {
		var fd int
		ns.run(func() { fd, err = NewSocket(unix.AF_INET) })
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd) // in repair mode: nothing is sent
		direct(t, On, fd)
		return Restore(fd, st, local, remote)
	}
	// b's connection, from its port to a's.
	if err := restore(bAddr, aAddr); !errors.Is(err, unix.EADDRNOTAVAIL) {
		t.Errorf("a restored socket on a connection in use: %v, want EADDRNOTAVAIL", err)
	}
	free := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: aAddr.(*unix.SockaddrInet4).Port + 1}
	if err := restore(bAddr, free); err != nil {
		t.Errorf("a restored socket on a port in use, to a free peer: %v", err)
	}
}

// TestCheckNotSent: a state whose unsent tail is longer than its send
// queue is refused before Restore slices the queue with it, however
// long: 2^31 bytes and more were a negative int where int is 32 bits.
func TestCheckNotSent(t *testing.T) {
	for _, n := range []uint32{11, 1 << 31, ^uint32(0)} {
		st := &State{TCPState: 1, SendQ: make([]byte, 10), NotSent: n}
		if err := st.Check(); err == nil {
			t.Errorf("%d bytes not sent of 10: no error", n)
		}
	}
}
