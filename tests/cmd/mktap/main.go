// Command mktap makes persistent tap devices and exits, for the QEMU
// test guest, whose busybox ip has no "tuntap": gvforwarder's -preexisting
// wants its tap made, and raised, before it starts.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// main makes each tap named on the command line.
func main() {
	for _, name := range os.Args[1:] {
		if err := mktap(name); err != nil {
			fmt.Fprintln(os.Stderr, "mktap:", err)
			os.Exit(1)
		}
	}
}

func mktap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI) // as gvforwarder's water opens it
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	return unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1)
}
