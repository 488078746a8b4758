package slirp

import (
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Thin wrappers over system calls whose x/sys/unix forms allocate (they
// return a Sockaddr interface) or do not exist.

// soPeekOff is SO_PEEK_OFF: the kernel keeps a peek offset so consecutive
// MSG_PEEK reads return new data. TCP supports it since Linux 6.9.
const soPeekOff = 42

// recvmsgIov reads into iov with flags and returns the byte count.
func recvmsgIov(fd int, iov []unix.Iovec, flags int) (int, error) {
	var msg unix.Msghdr
	msg.Iov = &iov[0]
	msg.SetIovlen(len(iov))
	for {
		n, _, errno := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// writev writes iov with one system call (unix.Writev allocates).
func writev(fd int, iov []unix.Iovec) (int, error) {
	for {
		n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// discard drops n bytes from a TCP socket's receive queue without copying
// them: MSG_TRUNC on TCP means "throw away".
func discard(fd int, n int) error {
	_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), 0, uintptr(n),
		unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// recvfrom reads one datagram and its IPv4 or IPv6 source (IPv4-mapped
// sources are unmapped).
func recvfrom(fd int, p []byte) (int, netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6 // large enough for either family
	salen := uint32(unix.SizeofSockaddrInet6)
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd),
		uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_DONTWAIT,
		uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen)))
	if errno != 0 {
		return 0, netip.AddrPort{}, errno
	}
	port := uint16(sa.Port>>8 | sa.Port<<8)
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&sa))
		return int(n), netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), nil
	}
	return int(n), netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}

// outq is the number of bytes in a TCP socket's send queue (SIOCOUTQ).
func outq(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.TIOCOUTQ) // SIOCOUTQ has the same value
	if err != nil {
		return 0
	}
	return n
}

func sockError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v != 0 {
		return unix.Errno(v)
	}
	return nil
}
