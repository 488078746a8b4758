// Command udpecho is a UDP echo server for the QEMU test guest, whose
// busybox has no UDP server: it answers each datagram with "guest:" and
// the datagram.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: udpecho PORT")
		os.Exit(2)
	}
	c, err := net.ListenPacket("udp", ":"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			os.Exit(1)
		}
		c.WriteTo(append([]byte("guest:"), buf[:n]...), from)
	}
}
